#!/usr/bin/env bash
# Parameter golf on this machine, end to end: a 1024-piece SentencePiece tokenizer and
# shards from the shipped corpus, a Golf-shaped hybrid (Mamba-2 blocks with attention every
# third block, tied embedding) trained for a few minutes, quantised by round-to-nearest and
# by GPTQ at 6 and 4 bits, and a table of what each costs and scores: parameters, artifact
# and code bytes against the 16,000,000-byte budget, bits per byte on the validation shards
# before and after quantisation, plainly and by sliding windows.
#
#   bash scripts/golf.sh                 # everything under golf_out/ (about 10 minutes on 2 cores)
#   STEPS=200 bash scripts/golf.sh       # train for another number of steps (300: the best
#                                        # validation loss; the 400K-token corpus overfits past it)
#   SKIP_TRAIN=1 bash scripts/golf.sh    # reuse golf_out/model.safetensors
#   SEED=1 OUT=golf_s1 bash scripts/golf.sh   # another training run: weights seeded 1, batches
#                                        # seeded 2 (SEED 0: seeds 0 and 1, train's defaults)
#
# Environment: OUT (golf_out), SEED (0), STEPS (300), D_MODEL (192), LAYOUT (MMAMMAMMA), SEQ_LEN (256),
# BATCH (16), WINDOW (256), STRIDE (64), EVAL_TOKENS (0 = the whole val split), THREADS.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-golf_out}"; steps="${STEPS:-300}"; d="${D_MODEL:-192}"; layout="${LAYOUT:-MMAMMAMMA}"
seq="${SEQ_LEN:-256}"; batch="${BATCH:-16}"; window="${WINDOW:-256}"; stride="${STRIDE:-64}"
evtok="${EVAL_TOKENS:-0}"; seed="${SEED:-0}"; threads=(); [[ -n "${THREADS:-}" ]] && threads=(--threads "$THREADS")
bash scripts/deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DHYBRID_BUILD_EXAMPLES=ON >/dev/null
cmake --build build -j"$(nproc)" --target prepare train quantize eval
bin=build/examples
mkdir -p "$out"

# 1. Tokenizer and shards (documents = the corpus's paragraphs, BOS 1 before each).
"$bin/prepare" --train-tokenizer data/tinyshakespeare.txt --format paragraphs --tokenizer "$out/sp1024.model" \
  --to-shards data/tinyshakespeare.txt --prefix "$out/shards/sp1024"
train_glob="$out/shards/sp1024_train_*.bin"; val_glob="$out/shards/sp1024_val_*.bin"

# 2. A Golf-shaped model: Mamba-2 blocks (expand 2) and GQA + SwiGLU blocks, Muon + AdamW, EMA.
if [[ -z "${SKIP_TRAIN:-}" ]]; then
  "$bin/train" --layout "$layout" --d-model "$d" --d-state 32 --expand 2 --headdim 32 --heads 6 --kv-heads 2 \
    --mlp swiglu --mamba-mlp swiglu --mlp-hidden $((3 * d)) --tokenizer "$out/sp1024.model" \
    --shards-train "$train_glob" --shards-val "$val_glob" --batch "$batch" --seq-len "$seq" --steps "$steps" \
    --seed "$seed" --data-seed $((seed + 1)) --ema 0.99 --eval-every $((steps / 4)) --csv "$out/curve.csv" --save "$out/model.safetensors" "${threads[@]}"
fi

# 3. Artifacts: round-to-nearest and GPTQ (calibrated on train shards) at 6 and 4 bits with
#    RowMax scales per row, and GPTQ int6 with parameter golf's SDClip (k = 12) scales.
code="include,examples/eval.cpp,examples/cli.hpp"
quant() {  # name bits extra...
  local name="$1" bits="$2"; shift 2
  "$bin/quantize" --weights "$out/model.safetensors" --out "$out/$name.hybq" --bits "$bits" --code "$code" "$@" \
    >"$out/$name.quant.md"
}
gptq=(--method gptq --calib-shards "$train_glob" --calib-seqs 64 --calib-len "$seq")
quant rtn6 6 --rule rowmax
quant gptq6 6 --rule rowmax "${gptq[@]}"
quant gptq6_sdclip12 6 --rule sdclip --sd-k 12 "${gptq[@]}"
quant rtn4 4 --rule rowmax
quant gptq4 4 --rule rowmax "${gptq[@]}"

# 4. Bits per byte on the val shards: the float checkpoint and each artifact, plain
#    (stride = window) and by sliding windows.
ev() {  # source-flag file stride -> bpb
  "$bin/eval" "$1" "$2" --shards "$val_glob" --tokenizer "$out/sp1024.model" --window "$window" --stride "$3" \
    --max-tokens "$evtok" --quiet --json - "${threads[@]}" | sed -n 's/^  "bpb": \([0-9.eE+-]*\),*$/\1/p' |
    awk '{ printf "%.4f\n", $1 }'
}
field() { sed -n "s/^| $2 | \(.*\) |$/\1/p" "$out/$1.quant.md"; }
f_plain=$(ev --weights "$out/model.safetensors" "$window"); f_slide=$(ev --weights "$out/model.safetensors" "$stride")
params=$(sed -n 's/^| parameters | \([0-9]*\) |$/\1/p' "$out/rtn6.quant.md")
{
  echo "| model | $layout, d_model $d, $params parameters, $steps steps; val bpb float $f_plain (sliding $f_slide) |"
  echo "|---|---|"
  echo
  echo "| artifact | bytes | bytes per million parameters | code, total, left of 16,000,000 | bpb plain (delta) | bpb sliding, stride $stride (delta) |"
  echo "|---|---|---|---|---|---|"
  for a in rtn6 gptq6 gptq6_sdclip12 rtn4 gptq4; do
    p=$(ev --artifact "$out/$a.hybq" "$window"); s=$(ev --artifact "$out/$a.hybq" "$stride")
    bytes=$(field "$a" artifact | sed 's/.*: \([0-9]*\) bytes/\1/')
    echo "| $a | $bytes | $(field "$a" "bytes per million parameters") | $(field "$a" code); $(field "$a" "total (artifact + code)") |" \
         "$p ($(awk -v a="$p" -v b="$f_plain" 'BEGIN { printf "%+.4f", a - b }')) |" \
         "$s ($(awk -v a="$s" -v b="$f_slide" 'BEGIN { printf "%+.4f", a - b }')) |"
  done
} | tee "$out/table.md"
