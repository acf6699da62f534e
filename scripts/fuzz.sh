#!/usr/bin/env bash
# Fuzzing job: builds the libFuzzer targets under fuzz/ with clang (ASan + UBSan) in their
# own build dir and runs every one of them for FUZZ_SECONDS seconds each. Fails if any
# target crashes (a sanitizer report, an uncaught exception, a broken invariant, a timeout
# or running out of memory); the input that did it is kept as build-fuzz/artifacts/<target>-*
# and can be replayed with `build-fuzz/fuzz/bin/<target> <file>`.
#
#   FUZZ_SECONDS=60        time per target
#   FUZZ_TARGETS="a b"     only these targets (default: every binary in build-fuzz/fuzz/bin)
#   FUZZ_BUILD=build-fuzz  build directory
# Needs clang and its runtime libraries (Debian: clang, libclang-rt-dev).
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${FUZZ_SECONDS:-60}"
build="${FUZZ_BUILD:-build-fuzz}"
CC="${CC_FUZZ:-clang}" CXX="${CXX_FUZZ:-clang++}" cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DHYBRID_BUILD_FUZZ=ON -DHYBRID_NATIVE=OFF >/dev/null
cmake --build "$build" -j"$(nproc)" --target all
bin="$build/fuzz/bin"
seeds="$build/fuzz/seeds"
"$build/fuzz/hybrid_fuzz_seeds" "$seeds"
mkdir -p "$build/artifacts"

targets="${FUZZ_TARGETS:-$(cd "$bin" && ls)}"
failed=()
for t in $targets; do
  [ -x "$bin/$t" ] || { echo "fuzz.sh: no fuzz target $bin/$t" >&2; exit 1; }
  # The first corpus dir gathers what the fuzzer finds (kept between runs); the others
  # are read-only seeds: committed ones under fuzz/corpus/<t>, generated ones.
  work="$build/corpus/$t"
  mkdir -p "$work"
  dirs=("$work")
  [ -d "fuzz/corpus/$t" ] && dirs+=("fuzz/corpus/$t")
  [ -d "$seeds/$t" ] && dirs+=("$seeds/$t")
  opts=(-max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1
        -artifact_prefix="$build/artifacts/$t-")
  [ -f "fuzz/$t.dict" ] && opts+=(-dict="fuzz/$t.dict")
  echo "=== $t: ${seconds}s"
  if ! ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1}" UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1}" \
      "$bin/$t" "${opts[@]}" "${dirs[@]}" 2>"$build/$t.log"; then
    tail -n 60 "$build/$t.log" >&2
    failed+=("$t")
  else
    grep -E "^stat::(number_of_executed_units|new_units_added|peak_rss_mb)" "$build/$t.log" || true
  fi
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz.sh: crashes in: ${failed[*]} (inputs in $build/artifacts/)" >&2
  exit 1
fi
echo "fuzz.sh: every target ran ${seconds}s without a crash"
