#!/usr/bin/env bash
# prepare and train on its output: a SentencePiece tokenizer trained twice is the same file,
# its shards start each document with BOS 1 (byte-level shards with 256), train reads them
# with --tokenizer and runs quantisation-aware steps; bad flags and inputs fail with exit 2
# and a message, and a failed training leaves the existing model file as it was.
# Usage: prepare_cli.sh PREPARE_BINARY TRAIN_BINARY DATA_FILE
set -euo pipefail
prepare="$1"; train="$2"; data="$3"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"  # expect_error

fail() { echo "FAIL: $1"; cat "$tmp/log" 2>/dev/null || true; exit 1; }
first_token() { od -An -t u2 -j 1024 -N 2 "$1" | tr -d ' '; }  # after the 256-int32 header

head -c 150000 "$data" >"$tmp/corpus.txt"
"$prepare" --train-tokenizer "$tmp/corpus.txt" --format paragraphs --vocab 400 --tokenizer "$tmp/tok.model" \
  --to-shards "$tmp/corpus.txt" --prefix "$tmp/sp/d" >"$tmp/log"
grep -qF "tokenizer: 400 pieces" "$tmp/log" || fail "tokenizer line"
grep -qE "train +[0-9]+ documents" "$tmp/log" || fail "shard summary"
[[ -f "$tmp/sp/d_train_000000.bin" && -f "$tmp/sp/d_val_000000.bin" ]] || fail "no shards"
[[ "$(first_token "$tmp/sp/d_train_000000.bin")" == 1 ]] || fail "train shard does not start with BOS 1"
[[ "$(first_token "$tmp/sp/d_val_000000.bin")" == 1 ]] || fail "val shard does not start with BOS 1"
"$prepare" --train-tokenizer "$tmp/corpus.txt" --format paragraphs --vocab 400 --tokenizer "$tmp/tok2.model" >/dev/null
cmp -s "$tmp/tok.model" "$tmp/tok2.model" || fail "two trainings gave different models"

"$prepare" --to-shards "$tmp/corpus.txt" --prefix "$tmp/b/d" >"$tmp/log"
[[ "$(first_token "$tmp/b/d_train_000000.bin")" == 256 ]] || fail "byte shard does not start with BOS 256"
grep -qE "train +1 documents, 135001 tokens" "$tmp/log" || fail "byte-level train split (BOS + 90% of 150000)"

"$train" --layout MA --d-model 32 --tokenizer "$tmp/tok.model" --shards-train "$tmp/sp/d_train_*.bin" \
  --shards-val "$tmp/sp/d_val_*.bin" --batch 2 --seq-len 32 --steps 3 --warmup 1 --qat-start 1 --qat-bits 6 \
  --eval-batches 2 --save "$tmp/m.safetensors" >"$tmp/log" 2>&1 || fail "train on SentencePiece shards"
grep -qF "tokenizer: $tmp/tok.model (400 ids" "$tmp/log" || fail "train did not take the tokenizer"
grep -qF "quantisation-aware training from here on" "$tmp/log" || fail "no QAT"
grep -qE "quantised: loss [0-9.]+ bpb" "$tmp/log" || fail "no quantised evaluation"
grep -qF "embedding (tied head)" "$tmp/log" && grep -qE "^model: [0-9]+ parameters" "$tmp/log" || fail "summary"

expect_error "nothing to do" "$prepare"
expect_error "--train-tokenizer needs --tokenizer" "$prepare" --train-tokenizer "$tmp/corpus.txt"
expect_error "--vocab must be 5 to 65536" "$prepare" --train-tokenizer "$tmp/corpus.txt" --tokenizer "$tmp/x.model" --vocab 70000
expect_error "--vocab: 'abc' is not an integer" "$prepare" --train-tokenizer "$tmp/corpus.txt" --tokenizer "$tmp/x.model" --vocab abc
expect_error "--format: document format 'csv' is not text, paragraphs or jsonl" "$prepare" --to-shards "$tmp/corpus.txt" --format csv
expect_error "--val-docs counts documents" "$prepare" --to-shards "$tmp/corpus.txt" --val-docs 3
expect_error "--val-fraction must be in [0, 1)" "$prepare" --to-shards "$tmp/corpus.txt" --val-fraction 1
expect_error "cannot open '$tmp/none.model'" "$prepare" --to-shards "$tmp/corpus.txt" --tokenizer "$tmp/none.model"
printf '{"text": "a"}\n{"body": "b"}\n' >"$tmp/bad.jsonl"
expect_error "'$tmp/bad.jsonl' line 2: field \"text\" is missing" "$prepare" --to-shards "$tmp/bad.jsonl" --format jsonl
expect_error "trainer failed" "$prepare" --train-tokenizer "$tmp/corpus.txt" --tokenizer "$tmp/tok2.model" --vocab 100
cmp -s "$tmp/tok.model" "$tmp/tok2.model" || fail "a failed training changed the existing model"
[[ ! -e "$tmp/x.model" ]] || fail "a model was written for bad flags"
leftover=$(ls "$tmp")  # whole listing first: grep -q in a pipe can SIGPIPE the writer
grep -q '\.tmp\.' <<<"$leftover" && fail "a temporary file was left behind"
expect_error "raise --vocab" "$train" --layout MA --d-model 32 --vocab 300 --shards-train "$tmp/sp/d_train_*.bin" \
  --shards-val "$tmp/sp/d_val_*.bin" --steps 1
expect_error "--qat-bits must be 2 to 8, got 1" "$train" --layout M --d-model 32 --steps 2 --qat-start 0 --qat-bits 1
expect_error "--qat-bits has no effect without --qat-start STEP or --eval-quantized" "$train" --layout M --d-model 32 \
  --steps 2 --qat-bits 4
echo "prepare_cli: OK"
