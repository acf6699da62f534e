#!/usr/bin/env bash
# The research workflow end to end on the tiny LFM2 fixture: a hybrid initialised from it
# (convert --replace: its first ShortConv block becomes Mamba-2, the rest copied), distilled
# from the original (train --init-from --teacher: the KL to the teacher falls; with
# --kd-features the new mixer's block output approaches the replaced one's), fine-tuned
# with LoRA (adapters saved in PEFT's layout, the merged model saved), and scored on the
# committed multiple-choice fixture with the fixture's tokenizer; then packed-document
# training on byte-level shards.
# Usage: research_workflow.sh CONVERT TRAIN EVAL FIXTURES_DIR TEXT [with-tokenizers]
set -euo pipefail
convert="$1"; train="$2"; eval_bin="$3"; fx="$4"; text="$5"; tokenizers="${6:-}"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"  # expect_error
fail() { echo "FAIL: $*"; exit 1; }
base="$fx/hf/lfm2_bpe_tokenizer"  # conv, conv, attention; vocabulary 1026 with tokenizer.json

# 1. Initialise: block 0's ShortConv becomes a fresh Mamba-2 mixer; the record says so.
"$convert" --hf "$base" --replace 0:mamba2 --mamba-d-state 8 --mamba-headdim 16 \
  --to-weights "$tmp/student.safetensors" 2>"$tmp/convert.log"
grep -q "layout CCA -> MCA" "$tmp/convert.log" || { cat "$tmp/convert.log"; fail "convert --replace: no CCA -> MCA"; }
head -c 65536 "$tmp/student.safetensors" | grep -aq 'init_record' || fail "the checkpoint has no init_record"
head -c 65536 "$tmp/student.safetensors" | grep -aq 'replaced_blocks' || fail "the init_record lacks replaced_blocks"
expect_error "block 7 does not exist" "$convert" --hf "$base" --replace 7:mamba2 --to-weights "$tmp/x.safetensors"
expect_error "is not one this program makes" "$convert" --hf "$base" --replace 0:gru --to-weights "$tmp/x.safetensors"

# 2. Distil from the original (KL only): the KL to the teacher falls.
"$train" --init-from "$tmp/student.safetensors" --teacher "$base" --data "$text" --batch 4 --seq-len 32 \
  --steps 40 --kd-alpha 0 --kd-beta 1 --kd-temp 1 --log-every 1 --eval-every 0 --eval-batches 1 \
  --save "$tmp/distilled.safetensors" >"$tmp/kd.log"
grep -o 'kl [0-9.]*' "$tmp/kd.log" | awk '{print $2}' >"$tmp/kl"
[[ "$(wc -l <"$tmp/kl")" -ge 40 ]] || { cat "$tmp/kd.log"; fail "no kd lines in the train log"; }
first="$(head -n 5 "$tmp/kl" | awk '{s += $1} END {print s / NR}')"
last="$(tail -n 5 "$tmp/kl" | awk '{s += $1} END {print s / NR}')"
awk -v a="$first" -v b="$last" 'BEGIN {exit !(b < 0.8 * a)}' || fail "distillation: KL $first -> $last did not fall by 20 %"
# 2b. Feature distillation: the new Mamba-2 mixer's block output against the ShortConv block
# it replaced (same width: no map), with a little KL; the feature MSE falls.
"$train" --init-from "$tmp/student.safetensors" --teacher "$base" --data "$text" --batch 4 --seq-len 32 \
  --steps 30 --kd-alpha 0 --kd-beta 0.1 --kd-temp 1 --kd-features 0:0 --kd-gamma 1 --log-every 1 \
  --eval-every 0 --eval-batches 1 >"$tmp/feat.log"
grep -q "feature distillation: 1 block pair" "$tmp/feat.log" || { cat "$tmp/feat.log"; fail "no feature line"; }
grep -o 'feat [0-9.]*' "$tmp/feat.log" | awk '{print $2}' >"$tmp/feat"
[[ "$(wc -l <"$tmp/feat")" -ge 30 ]] || { cat "$tmp/feat.log"; fail "no feature terms in the train log"; }
f_first="$(head -n 5 "$tmp/feat" | awk '{s += $1} END {print s / NR}')"
f_last="$(tail -n 5 "$tmp/feat" | awk '{s += $1} END {print s / NR}')"
awk -v a="$f_first" -v b="$f_last" 'BEGIN {exit !(b < 0.8 * a)}' ||
  fail "feature distillation: MSE $f_first -> $f_last did not fall by 20 %"
expect_error "teacher block 9 does not exist" "$train" --init-from "$tmp/student.safetensors" --teacher "$base" \
  --data "$text" --kd-features 0:9 --steps 1
expect_error "student block 5 does not exist" "$train" --init-from "$tmp/student.safetensors" --teacher "$base" \
  --data "$text" --kd-features 5:0 --steps 1 --warmup 0
expect_error "--kd-cache holds the teacher's top-k logits only" "$train" --init-from "$tmp/student.safetensors" \
  --teacher "$base" --data "$text" --kd-topk 4 --kd-cache "$tmp/kd.bin" --kd-features 0:0 --steps 1
expect_error "--kd-gamma weighs the feature terms" "$train" --init-from "$tmp/student.safetensors" --teacher "$base" \
  --data "$text" --kd-gamma 2 --steps 1
expect_error "is not a teacher block index" "$train" --init-from "$tmp/student.safetensors" --teacher "$base" \
  --data "$text" --kd-features 0:x --steps 1
expect_error "--init-from takes the model's description" "$train" --init-from "$tmp/student.safetensors" --model TinyMamba

# 3. LoRA on the distilled hybrid: adapters alone (PEFT layout) and the merged model.
"$train" --init-from "$tmp/distilled.safetensors" --data "$text" --batch 4 --seq-len 32 --steps 8 --warmup 2 \
  --lora-rank 4 --lora-targets attn,mlp --eval-every 0 --eval-batches 1 \
  --lora-save "$tmp/adapter" --save "$tmp/merged.safetensors" >"$tmp/lora.log"
grep -q "LoRA: rank 4" "$tmp/lora.log" || { cat "$tmp/lora.log"; fail "no LoRA line"; }
for f in adapter_config.json adapter_model.safetensors; do
  [[ -s "$tmp/adapter/$f" ]] || fail "--lora-save wrote no $f"
done
grep -q '"peft_type": *"LORA"' "$tmp/adapter/adapter_config.json" || fail "adapter_config.json is not LORA"
[[ -s "$tmp/merged.safetensors" ]] || fail "--save wrote no merged model"
expect_error "LoRA: --ckpt-dir / --resume" "$train" --init-from "$tmp/distilled.safetensors" --data "$text" \
  --lora-rank 4 --ckpt-dir "$tmp/ck"
expect_error "matches no projection" "$train" --init-from "$tmp/distilled.safetensors" --data "$text" \
  --lora-rank 4 --lora-targets conv.in,mamba.in,attn.gate --steps 1 --warmup 0

# 4. Score the fine-tuned model on the multiple-choice fixture with the base's tokenizer.
if [[ "$tokenizers" == with-tokenizers ]]; then
  "$eval_bin" --weights "$tmp/merged.safetensors" --tokenizer "$base/tokenizer.json" \
    --mc "$fx/mc/arc_easy.jsonl" --quiet >"$tmp/mc"
  grep -qF "| acc_norm |" "$tmp/mc" || { cat "$tmp/mc"; fail "eval --mc printed no table"; }
fi
# 5. Packed documents: byte-level shards (each document starts with BOS 256), trained packed.
head -c 20000 "$text" >"$tmp/small.txt"
"$train" --text-to-shards "$tmp/small.txt" --shard-prefix "$tmp/sh/data" >/dev/null
"$train" --shards-train "$tmp/sh/data_train_*" --shards-val "$tmp/sh/data_val_*" --layout MA --d-model 32 \
  --heads 2 --kv-heads 2 --head-dim 16 --batch 2 --seq-len 64 --steps 3 --warmup 0 --pack-documents \
  --eval-every 0 --eval-batches 1 >"$tmp/pack.log"
grep -q "packed documents: each starts at id 256" "$tmp/pack.log" || { cat "$tmp/pack.log"; fail "no packing line"; }
grep -q "step      3/3" "$tmp/pack.log" || { cat "$tmp/pack.log"; fail "packed training did not run 3 steps"; }
expect_error "--pack-documents: only shards hold documents" "$train" --data "$tmp/small.txt" --pack-documents --steps 1
expect_error "--bos-id has no effect without --pack-documents" "$train" --data "$tmp/small.txt" --bos-id 3 --steps 1
echo "research workflow: ok (KL $first -> $last, feature MSE $f_first -> $f_last)"
