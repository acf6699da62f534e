#!/usr/bin/env bash
# Installs the system packages hybrid needs, only those that are missing (Debian/Ubuntu).
set -euo pipefail
pkgs=(cmake g++ make libeigen3-dev doctest-dev libcxxopts-dev nlohmann-json3-dev gnuplot-nox
      libsentencepiece-dev libpcre2-dev pkg-config clang libclang-rt-dev
      libopenblas-openmp-dev liblzma-dev libzstd-dev libbrotli-dev)
missing=()
for p in "${pkgs[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}"
fi
