#!/usr/bin/env bash
# Peer benchmark: hybrid (bench_peer) against PyTorch + transformers (bench_transformers.py)
# on this machine, same models, shapes and thread count; prints a Markdown table of
# tokens/s and ratios (ours / transformers).
#
#   bench/peer/compare.sh                 # defaults below
#   THREADS=2 B=4 T=256 P=64 N=64 REPS=5 ROUNDS=1 MODELS="golf15x3e2 lfm2_350m_L6" \
#     PYTHON=python3 BUILD=build-peer OUT=build-peer/peer-results \
#     bench/peer/compare.sh
#
# ROUNDS > 1 alternates the two sides that many times per model; each side's figure is its
# best round (the one least disturbed by other jobs). `uptime` is recorded around every run.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
cd "$root"

THREADS="${THREADS:-2}"
B="${B:-4}"
T="${T:-256}"
P="${P:-64}"
N="${N:-64}"
REPS="${REPS:-5}"
ROUNDS="${ROUNDS:-1}"
MODELS="${MODELS:-golf15x3e2 lfm2_350m_L6}"
PYTHON="${PYTHON:-python3}"   # with torch, transformers, safetensors installed (pip)
BUILD="${BUILD:-build-peer}"
OUT="${OUT:-$BUILD/peer-results}"
JOBS="${JOBS:-1}"

"$PYTHON" -c "import torch, transformers" || { echo "compare.sh: $PYTHON cannot import torch and transformers" >&2; exit 1; }
cmake -S . -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DHYBRID_BUILD_BENCH=ON >/dev/null
cmake --build "$BUILD" --target bench_peer -j"$JOBS" >/dev/null

rm -rf "$OUT"
mkdir -p "$OUT"
export OMP_NUM_THREADS="$THREADS" MKL_NUM_THREADS="$THREADS"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1

common=(--B "$B" --T "$T" --prefill "$P" --decode "$N" --threads "$THREADS" --reps "$REPS")
note() { echo "$(date -u +%H:%M:%S) $1: $(uptime | sed 's/.*load/load/')" >>"$OUT/load.txt"; }

note "start"
for m in $MODELS; do
  for r in $(seq 1 "$ROUNDS"); do
    echo ">> $m round $r: hybrid" >&2
    note "$m hybrid round $r before"
    "$BUILD/bench/bench_peer" --model "$m" "${common[@]}" | tee "$OUT/$m.hybrid.$r.jsonl" >&2
    echo ">> $m round $r: transformers" >&2
    note "$m transformers round $r before"
    "$PYTHON" "$here/bench_transformers.py" --model "$m" "${common[@]}" \
      2> >(grep -v "falling back to its reference" >&2) | tee "$OUT/$m.transformers.$r.jsonl" >&2
  done
done
note "end"

echo
echo "Peer benchmark: $THREADS threads, float32; forward/train B=$B T=$T; decode after a prefill of $P, $N steps; median of $REPS reps per run, best of $ROUNDS round(s)."
echo
"$PYTHON" "$here/table.py" "$OUT"
