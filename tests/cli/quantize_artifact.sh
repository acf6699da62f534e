#!/usr/bin/env bash
# quantize and generate --artifact: a checkpoint quantised to an artifact generates the same
# greedy text from the file as from the model read back in memory would (the artifact's
# int8 storage), bad flags and a damaged artifact fail with exit 2 and a message.
# Usage: quantize_artifact.sh CONVERT_BINARY QUANTIZE_BINARY GENERATE_BINARY DATA_FILE
set -euo pipefail
convert="$1"; quantize="$2"; generate="$3"; data="$4"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"  # expect_error

"$convert" --model TinyGolf15x3E2 --seed 4 --to-weights "$tmp/m.safetensors" 2>/dev/null
"$quantize" --weights "$tmp/m.safetensors" --out "$tmp/m.hybq" --bits 6 --rule sdclip --group 32 --fast \
  --eval "$data" --eval-seqs 2 --seq-len 64 >"$tmp/table"
grep -qF "| tensors |" "$tmp/table" && grep -qF "bits per byte, artifact" "$tmp/table" || {
  echo "FAIL: quantize table"; cat "$tmp/table"; exit 1; }
"$generate" --artifact "$tmp/m.hybq" --prompt "ROMEO:" --temperature 0 --max-new-tokens 8 >/dev/null 2>"$tmp/log"
grep -qF "weights stored as int8" "$tmp/log" || { echo "FAIL: not int8"; cat "$tmp/log"; exit 1; }

# GPTQ from the corpus and from the model's own samples: the table reports its error ratio.
for calib in "--calib $data" "--calib-self"; do
  # shellcheck disable=SC2086
  "$quantize" --weights "$tmp/m.safetensors" --out "$tmp/g.hybq" --bits 4 --fast --method gptq $calib \
    --calib-seqs 4 --calib-len 32 >"$tmp/gtable"
  grep -qE "^\| GPTQ \| [0-9]+ projections" "$tmp/gtable" || { echo "FAIL: gptq table ($calib)"; cat "$tmp/gtable"; exit 1; }
done
"$generate" --artifact "$tmp/g.hybq" --prompt "ROMEO:" --temperature 0 --max-new-tokens 4 >/dev/null 2>&1
# Code bytes count toward the budget: the table totals them with the artifact.
"$quantize" --weights "$tmp/m.safetensors" --out "$tmp/c.hybq" --fast --code "$tmp/m.safetensors,$tmp/table" >"$tmp/ctable"
grep -qE "^\| code \| 2 files, [0-9]+ bytes \(raw\) \|" "$tmp/ctable" && grep -qF "| total (artifact + code) |" "$tmp/ctable" || {
  echo "FAIL: code bytes"; cat "$tmp/ctable"; exit 1; }
expect_error "--code: '$tmp/none' does not exist" "$quantize" --weights "$tmp/m.safetensors" --out "$tmp/x.hybq" --code "$tmp/none"
expect_error "add --method gptq" "$quantize" --weights "$tmp/m.safetensors" --out "$tmp/x.hybq" --calib "$data"
expect_error "needs exactly one of --calib FILE" "$quantize" --weights "$tmp/m.safetensors" --out "$tmp/x.hybq" --method gptq
expect_error "--method: 'awq' is not rtn or gptq" "$quantize" --weights "$tmp/m.safetensors" --out "$tmp/x.hybq" --method awq
expect_error "--bits must be 2 to 8, got 9" "$quantize" --weights "$tmp/m.safetensors" --out "$tmp/x.hybq" --bits 9
expect_error "--group: '48' is not row, 32, 64 or 128" "$quantize" --weights "$tmp/m.safetensors" --out "$tmp/x.hybq" --group 48
expect_error "--out FILE is required" "$quantize" --weights "$tmp/m.safetensors"
[[ ! -e "$tmp/x.hybq" ]] || { echo "FAIL: a file was written for bad flags"; exit 1; }
head -c 200 "$tmp/m.hybq" >"$tmp/cut.hybq"
expect_error "quantised artifact '$tmp/cut.hybq'" "$generate" --artifact "$tmp/cut.hybq" --ids 1
echo "quantize_artifact: OK"
