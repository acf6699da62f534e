#!/usr/bin/env bash
# The GPU check: build the CUDA kernels, their tests and benchmark, then run the kernel
# tests (every kernel against its CPU op, every Tiny layout against the CPU model), the same tests under compute-sanitizer's
# memcheck and racecheck, and the benchmark. Output goes to stdout and, when LOG_DIR is set,
# to files there. Needs nvcc and a CUDA device; exits non-zero on any failure.
#   bash scripts/cuda_check.sh            # build in build-cuda/
#   LOG_DIR=/tmp/logs bash scripts/cuda_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
nvcc_bin="$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)"
[ -x "$nvcc_bin" ] || { echo "cuda_check: nvcc not found (install the CUDA toolkit)" >&2; exit 1; }
log() { if [ -n "${LOG_DIR:-}" ]; then mkdir -p "$LOG_DIR"; tee "$LOG_DIR/$1"; else cat; fi; }
cmake -S . -B build-cuda -DCMAKE_BUILD_TYPE=Release -DHYBRID_CUDA=ON -DCMAKE_CUDA_COMPILER="$nvcc_bin" \
  -DHYBRID_BUILD_TESTS=ON -DHYBRID_BUILD_BENCH=ON >/dev/null
cmake --build build-cuda -j"$(nproc)" --target hybrid_cuda_tests bench_cuda_kernels 2>&1 | log build.txt
nvidia-smi 2>&1 | log device.txt || true
./build-cuda/tests/hybrid_cuda_tests 2>&1 | log kernels.txt
sanitizer="$(command -v compute-sanitizer || echo "$(dirname "$nvcc_bin")/compute-sanitizer")"
if [ -x "$sanitizer" ]; then
  "$sanitizer" --tool memcheck --error-exitcode 1 ./build-cuda/tests/hybrid_cuda_tests 2>&1 | log memcheck.txt
  "$sanitizer" --tool racecheck --error-exitcode 1 ./build-cuda/tests/hybrid_cuda_tests 2>&1 | log racecheck.txt
else
  echo "cuda_check: compute-sanitizer not found; memcheck and racecheck not run" | log memcheck.txt
fi
./build-cuda/bench/bench_cuda_kernels 2>&1 | log bench.txt
