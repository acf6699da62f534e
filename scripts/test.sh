#!/usr/bin/env bash
# The test job: install what is missing, build and run every test (Release), then build and
# run them again under AddressSanitizer + UndefinedBehaviorSanitizer. The Release build runs
# the linear layers on OpenBLAS, the sanitizer build on Eigen's product, so both backends
# of include/hybrid/core/gemm.hpp pass the same tests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
jobs="$(nproc)"
# Where the CUDA toolkit is installed the kernels are compiled too (their tests skip without
# a device); the CPU build does not need it.
cuda=()
nvcc_bin="$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)"
if [ -x "$nvcc_bin" ]; then cuda=(-DHYBRID_CUDA=ON -DCMAKE_CUDA_COMPILER="$nvcc_bin"); fi
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DHYBRID_BUILD_TESTS=ON -DHYBRID_BUILD_EXAMPLES=ON \
  -DHYBRID_BUILD_BENCH=ON "${cuda[@]}" >/dev/null
cmake --build build -j"$jobs"
(cd build && ctest --output-on-failure --parallel "$jobs")
./build/bench/bench_model --quick
cmake -S . -B build-san -DCMAKE_BUILD_TYPE=Debug -DHYBRID_BUILD_TESTS=ON -DHYBRID_SANITIZE=ON \
  -DHYBRID_BLAS=OFF -DCMAKE_CXX_FLAGS_DEBUG="-O1 -g1" >/dev/null  # -g1: line tables for the reports
cmake --build build-san -j"$jobs" --target hybrid_tests
(cd build-san && ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 ctest --output-on-failure -R unit)
FUZZ_SECONDS="${FUZZ_SECONDS:-20}" bash scripts/fuzz.sh  # libFuzzer targets under fuzz/ (clang), 20 s each
