#!/usr/bin/env bash
# Peer benchmark: our bench_gguf against llama.cpp's llama-bench on the same GGUF files, in
# the same session, alternating the two ROUNDS times per file; each side's figure is its
# best round. Prints a Markdown table of pp / tg tokens/s and the ratios (ours / llama.cpp).
# llama-bench is a binary of a llama.cpp build you supply (LLAMA_BENCH); its defaults are
# kept (flash attention auto, f16 KV cache, mmap), as a user runs it.
#
#   LLAMA_BENCH=/path/to/llama-bench bench/peer/llama_bench.sh
#   THREADS=2 ROUNDS=3 PP=512 TG=64 DIR=build/gguf-bench \
#     CASES="golf15x3e2:f32 golf15x3e2:q8_0 lfm2_350m_L6:f32 lfm2_350m_L6:q8_0" \
#     LLAMA_BENCH=... bench/peer/llama_bench.sh
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
cd "$root"

: "${LLAMA_BENCH:?set LLAMA_BENCH to the llama-bench binary of a llama.cpp build}"
THREADS="${THREADS:-2}"
ROUNDS="${ROUNDS:-3}"
PP="${PP:-512}"
TG="${TG:-64}"
BUILD="${BUILD:-build}"
DIR="${DIR:-$BUILD/gguf-bench}"
CASES="${CASES:-golf15x3e2:f32 golf15x3e2:q8_0 lfm2_350m_L6:f32 lfm2_350m_L6:q8_0}"
ours="$BUILD/bench/bench_gguf"
[[ -x "$ours" ]] || { echo "build $ours first (cmake -DHYBRID_BUILD_BENCH=ON)"; exit 1; }
mkdir -p "$DIR"

best() { sort -g | tail -1; }
field() { sed -n "s/.*\"case\":\"$1\".*\"tokens_per_s\":\([0-9.]*\).*/\1/p"; }

echo "| file | ours pp$PP | llama.cpp pp$PP | ratio | ours tg$TG | llama.cpp tg$TG | ratio | load before / after |"
echo "|---|---|---|---|---|---|---|---|"
for c in $CASES; do
  model="${c%%:*}"; type="${c##*:}"
  file="$DIR/$model-$type.gguf"
  [[ -f "$file" ]] || OMP_NUM_THREADS="$THREADS" "$ours" --model "$model" --type "$type" --save "$file" \
    --pp 16 --tg 4 --reps 1 --threads "$THREADS" >/dev/null
  op=(); ot=(); lp=(); lt=()
  l0="$(cut -d' ' -f1 /proc/loadavg)"
  for ((r = 0; r < ROUNDS; ++r)); do
    out="$(OMP_NUM_THREADS="$THREADS" "$ours" --gguf "$file" --threads "$THREADS" --pp "$PP" --tg "$TG" --reps 3)"
    op+=("$(echo "$out" | field "pp$PP")"); ot+=("$(echo "$out" | field "tg$TG")")
    js="$("$LLAMA_BENCH" -m "$file" -t "$THREADS" -p "$PP" -n "$TG" -r 3 -o jsonl 2>/dev/null)"
    lp+=("$(echo "$js" | grep "\"n_prompt\": *$PP" | sed -n 's/.*"avg_ts": *\([0-9.]*\).*/\1/p')")
    lt+=("$(echo "$js" | grep "\"n_gen\": *$TG" | sed -n 's/.*"avg_ts": *\([0-9.]*\).*/\1/p')")
  done
  l1="$(cut -d' ' -f1 /proc/loadavg)"
  bop="$(printf '%s\n' "${op[@]}" | best)"; bot="$(printf '%s\n' "${ot[@]}" | best)"
  blp="$(printf '%s\n' "${lp[@]}" | best)"; blt="$(printf '%s\n' "${lt[@]}" | best)"
  awk -v f="$model $type" -v a="$bop" -v b="$blp" -v c="$bot" -v d="$blt" -v l="$l0 / $l1" \
    'BEGIN { printf "| %s | %.0f | %.0f | %.2fx | %.1f | %.1f | %.2fx | %s |\n", f, a, b, a / b, c, d, c / d, l }'
done
