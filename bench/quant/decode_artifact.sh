#!/usr/bin/env bash
# Decode rate from a quantised artifact (the int8 storage holding its integers) against the
# float model it came from, in the same run: the two alternate ROUNDS times, each side's best
# round counts. Prints one JSON line per round and a summary line.
# Usage: decode_artifact.sh CONVERT QUANTIZE GENERATE [MODEL_ALIAS]
#   e.g. bash bench/quant/decode_artifact.sh build/examples/convert build/examples/quantize \
#          build/examples/generate Golf15x3
# Environment: ROUNDS (3), TOKENS (128 new tokens), THREADS (2), BITS (6), GROUP (row).
set -euo pipefail
convert="$1"; quantize="$2"; generate="$3"; alias="${4:-Golf15x3}"
rounds="${ROUNDS:-3}"; tokens="${TOKENS:-128}"; threads="${THREADS:-2}"; bits="${BITS:-6}"; group="${GROUP:-row}"
tmp="$(mktemp -d)"; trap 'rm -rf "$tmp"' EXIT
"$convert" --model "$alias" --seed 1 --to-weights "$tmp/m.safetensors" >/dev/null 2>&1
"$quantize" --weights "$tmp/m.safetensors" --out "$tmp/m.hybq" --bits "$bits" --rule sdclip --sd-k 12 \
  --group "$group" --fast >"$tmp/q"
rate() {  # decode tokens/s from generate's stderr summary
  sed -n 's/.*decode: [0-9]* tokens, \([0-9.]*\) tokens\/s.*/\1/p' "$1" | tail -1
}
best_f=0; best_a=0
for r in $(seq 1 "$rounds"); do
  "$generate" --weights "$tmp/m.safetensors" --prompt "ROMEO:" --temperature 0 --max-new-tokens "$tokens" \
    --threads "$threads" >/dev/null 2>"$tmp/f"
  "$generate" --artifact "$tmp/m.hybq" --prompt "ROMEO:" --temperature 0 --max-new-tokens "$tokens" \
    --threads "$threads" >/dev/null 2>"$tmp/a"
  f=$(rate "$tmp/f"); a=$(rate "$tmp/a")
  echo "{\"round\": $r, \"float_tok_s\": $f, \"artifact_tok_s\": $a}"
  best_f=$(awk -v x="$best_f" -v y="$f" 'BEGIN { print (y > x ? y : x) }')
  best_a=$(awk -v x="$best_a" -v y="$a" 'BEGIN { print (y > x ? y : x) }')
done
echo "{\"model\": \"$alias\", \"bits\": $bits, \"group\": \"$group\", \"threads\": $threads, \"float_tok_s\": $best_f, \"artifact_tok_s\": $best_a, \"ratio\": $(awk -v a="$best_a" -v f="$best_f" 'BEGIN { printf "%.3f", a / f }'), \"load\": \"$(cut -d' ' -f1-3 /proc/loadavg)\"}"
