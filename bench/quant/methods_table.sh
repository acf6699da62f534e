#!/usr/bin/env bash
# One table of quantisation methods x widths for a trained checkpoint: artifact bytes and
# bits per byte of the float model and of the artifact's model, from quantize's own report.
# gptq and gptq+lqer use RowMax scales, gptq+sdclip SDClip's (k = SD_K at every width).
# Usage: methods_table.sh QUANTIZE_BINARY CHECKPOINT TEXT [BITS...]
#   e.g. bash bench/quant/methods_table.sh build/examples/quantize run/model.safetensors \
#          data/tinyshakespeare.txt 8 6 5 4
# Environment: GROUP (row), SD_K (12), EVAL_SEQS (128), SEQ_LEN (256), CALIB_SEQS (32).
set -euo pipefail
quantize="$1"; ckpt="$2"; text="$3"; shift 3
bits=("$@"); [[ ${#bits[@]} -gt 0 ]] || bits=(8 6 5 4)
group="${GROUP:-row}"; sdk="${SD_K:-12}"; evals="${EVAL_SEQS:-128}"; len="${SEQ_LEN:-256}"; calib="${CALIB_SEQS:-32}"
tmp="$(mktemp -d)"; trap 'rm -rf "$tmp"' EXIT
gptq="--method gptq --calib $text --calib-seqs $calib"
declare -A flags=(
  [rowmax]="--rule rowmax"
  [mse]="--rule mse"
  [sdclip]="--rule sdclip --sd-k $sdk"
  [gptq]="--rule rowmax $gptq"
  [gptq+sdclip]="--rule sdclip --sd-k $sdk $gptq"
  [gptq+lqer]="--rule rowmax $gptq --lqer-rank 4"
)
order=(rowmax mse sdclip gptq gptq+sdclip gptq+lqer)
echo "| method | bits | artifact bytes | bytes per million parameters | bpb float | bpb artifact | delta |"
echo "|---|---|---|---|---|---|---|"
for b in "${bits[@]}"; do
  for m in "${order[@]}"; do
    # shellcheck disable=SC2086
    "$quantize" --weights "$ckpt" --out "$tmp/a.hybq" --bits "$b" --group "$group" --fast \
      --eval "$text" --eval-seqs "$evals" --seq-len "$len" ${flags[$m]} >"$tmp/t"
    bytes=$(sed -n 's/^| artifact | .*: \([0-9]*\) bytes |$/\1/p' "$tmp/t")
    per=$(sed -n 's/^| bytes per million parameters | \([0-9]*\) |$/\1/p' "$tmp/t")
    f=$(sed -n 's/^| bits per byte, float | \([0-9.]*\) |$/\1/p' "$tmp/t")
    q=$(sed -n 's/^| bits per byte, artifact | \([0-9.]*\) (\([-+0-9.]*\)) |$/\1 | \2/p' "$tmp/t")
    echo "| $m | $b | $bytes | $per | $f | $q |"
  done
done
