#!/usr/bin/env bash
# eval: a saved tiny model evaluated on the corpus by sliding windows, with score-first
# test-time training, on text and on shards of the same bytes (the same nats), as a table and
# as JSON; bad inputs fail with exit 2 and a message naming what was wrong.
# Usage: eval_cli.sh EVAL_BINARY CONVERT_BINARY DATA_FILE [QUANTIZE_BINARY|-] [SENTENCEPIECE_MODEL]
set -euo pipefail
eval_bin="$1"; convert="$2"; data="$3"; quantize="${4:--}"; sp_model="${5:-}"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"  # expect_error

fail() { echo "FAIL: $*"; exit 1; }
# json_field NAME FILE: the value of a top-level "NAME": value line of eval's --json output.
json_field() { sed -n "s/^  \"$1\": \(.*\),\{0,1\}\$/\1/p" "$2" | sed 's/,$//'; }

# A parameter-golf shard of byte-level ids: FILE, then the bytes of a text file (one uint16
# per byte), after the 256 int32 header [20240520, 1, n_tokens, 0, ...].
le32() { printf "\\x$(printf %02x $(($1 & 255)))\\x$(printf %02x $((($1 >> 8) & 255)))\\x$(printf %02x $((($1 >> 16) & 255)))\\x$(printf %02x $((($1 >> 24) & 255)))"; }
write_shard() {
  local out="$1" src="$2" n
  n=$(wc -c <"$src")
  { le32 20240520; le32 1; le32 "$n"; head -c $((253 * 4)) /dev/zero
    for b in $(od -An -v -tx1 "$src"); do printf "\\x$b\\x00"; done; } >"$out"
}

"$convert" --model TinyMamba --seed 3 --to-weights "$tmp/m.safetensors" 2>/dev/null

# Sliding windows on the validation split: a table and the same figures as JSON.
"$eval_bin" --weights "$tmp/m.safetensors" --text "$data" --window 64 --stride 16 --max-tokens 512 \
  --json "$tmp/r.json" >"$tmp/table" 2>"$tmp/log"
grep -qF "| tokens | 512 |" "$tmp/table" && grep -qF "| bits per byte |" "$tmp/table" ||
  { cat "$tmp/table"; fail "eval table"; }
grep -qF "eval: 512 tokens scored (window 29/29)" "$tmp/log" || { cat "$tmp/log"; fail "progress line"; }
[[ "$(json_field tokens "$tmp/r.json")" == 512 && "$(json_field bytes "$tmp/r.json")" == 512.0 &&
   "$(json_field windows "$tmp/r.json")" == 29 ]] || { cat "$tmp/r.json"; fail "JSON fields"; }
bpb=$(json_field bpb "$tmp/r.json")
grep -qF "| bits per byte | $(printf %.6f "$bpb") |" "$tmp/table" || fail "table and JSON disagree ($bpb)"

# Score-first test-time training: 4 chunks, 3 of them adapted on (not the last).
"$eval_bin" --weights "$tmp/m.safetensors" --text "$data" --window 64 --max-tokens 512 --ttt-steps 2 \
  --ttt-chunk 128 --ttt-lr 1e-3 --json - --quiet >"$tmp/t.json"
grep -qF '"chunks": 4' "$tmp/t.json" && grep -qF '"adapt_steps": 6' "$tmp/t.json" ||
  { cat "$tmp/t.json"; fail "test-time training JSON"; }

# Shards holding the same bytes as a text file give the same nats (a read crossing shards).
head -c 300 "$data" >"$tmp/a.txt"; head -c 500 "$data" | tail -c 200 >"$tmp/b.txt"
cat "$tmp/a.txt" "$tmp/b.txt" >"$tmp/ab.txt"
write_shard "$tmp/s_000.bin" "$tmp/a.txt"; write_shard "$tmp/s_001.bin" "$tmp/b.txt"
"$eval_bin" --weights "$tmp/m.safetensors" --text "$tmp/ab.txt" --split all --window 100 --stride 40 --json - --quiet >"$tmp/x.json"
"$eval_bin" --weights "$tmp/m.safetensors" --shards "$tmp/s_*.bin" --window 100 --stride 40 --json - --quiet >"$tmp/y.json"
[[ "$(json_field nats "$tmp/x.json")" == "$(json_field nats "$tmp/y.json")" && "$(json_field tokens "$tmp/y.json")" == 499 ]] ||
  { cat "$tmp/x.json" "$tmp/y.json"; fail "text and shards of the same bytes differ"; }

# The same model as a GGUF file (f32, byte vocabulary) scores the same.
"$convert" --weights "$tmp/m.safetensors" --to-gguf "$tmp/m.gguf" 2>/dev/null
"$eval_bin" --gguf "$tmp/m.gguf" --text "$tmp/ab.txt" --split all --window 100 --stride 40 --json - --quiet >"$tmp/g.json"
[[ "$(json_field nats "$tmp/g.json")" == "$(json_field nats "$tmp/x.json")" ]] ||
  { cat "$tmp/g.json" "$tmp/x.json"; fail "GGUF and checkpoint of the same model differ"; }

if [[ "$quantize" != - ]]; then
  "$quantize" --weights "$tmp/m.safetensors" --out "$tmp/m.hybq" --bits 8 --fast >/dev/null
  "$eval_bin" --artifact "$tmp/m.hybq" --text "$data" --window 64 --max-tokens 256 --quiet >"$tmp/q"
  grep -qF "| model | quantised artifact $tmp/m.hybq |" "$tmp/q" || { cat "$tmp/q"; fail "artifact"; }
  # Score-first TTT on LoRA adapters over the artifact's frozen weights: 3 chunks adapted
  # on, and the total differs from the plain evaluation's (tests/test_eval.cpp checks each
  # chunk's score).
  "$eval_bin" --artifact "$tmp/m.hybq" --text "$data" --window 64 --max-tokens 512 --json - --quiet >"$tmp/q0.json"
  "$eval_bin" --artifact "$tmp/m.hybq" --text "$data" --window 64 --max-tokens 512 --ttt-steps 2 --ttt-chunk 128 \
    --ttt-lr 3e-3 --ttt-lora-rank 4 --ttt-lora-targets mamba.in,mamba.out --json - --quiet >"$tmp/ql.json"
  grep -qF '"rank": 4' "$tmp/ql.json" && grep -qF '"adapt_steps": 6' "$tmp/ql.json" ||
    { cat "$tmp/ql.json"; fail "LoRA test-time training JSON"; }
  [[ "$(json_field nats "$tmp/ql.json")" != "$(json_field nats "$tmp/q0.json")" ]] ||
    { cat "$tmp/ql.json"; fail "LoRA test-time training changed nothing"; }
  "$eval_bin" --artifact "$tmp/m.hybq" --text "$data" --window 64 --max-tokens 512 --ttt-steps 1 --ttt-chunk 128 \
    --ttt-lora-rank 2 >"$tmp/qt"
  grep -qF "| adapted | LoRA rank 2, alpha 16 on all (" "$tmp/qt" || { cat "$tmp/qt"; fail "LoRA table line"; }
fi

# Bad input.
m=(--weights "$tmp/m.safetensors")
expect_error "--text: cannot open '$tmp/none.txt': no such file" "$eval_bin" "${m[@]}" --text "$tmp/none.txt"
expect_error "--weights '$tmp/none.safetensors': no such file (expected our checkpoint" "$eval_bin" --weights "$tmp/none.safetensors" --text "$data"
expect_error "--stride (32) must be between 1 and --window (16)" "$eval_bin" "${m[@]}" --text "$data" --window 16 --stride 32
expect_error "is 300 tokens, but --window 512 needs at least 513" "$eval_bin" "${m[@]}" --text "$tmp/a.txt" --split all --window 512
expect_error "--split: 'test' is not val, train or all" "$eval_bin" "${m[@]}" --text "$data" --split test
expect_error "give exactly one model" "$eval_bin" "${m[@]}" --model TinyMamba --text "$data"
expect_error "give exactly one data source" "$eval_bin" "${m[@]}"
expect_error "--ttt-lr goes with --ttt-steps" "$eval_bin" "${m[@]}" --text "$data" --ttt-lr 1e-3
expect_error "--ttt-lora-rank goes with --ttt-steps" "$eval_bin" "${m[@]}" --text "$data" --ttt-lora-rank 4
expect_error "--ttt-lora-alpha goes with --ttt-lora-rank" "$eval_bin" "${m[@]}" --text "$data" --ttt-steps 1 --ttt-lora-alpha 8
expect_error "lora: target 'conv' matches no projection" "$eval_bin" "${m[@]}" --text "$data" --window 64 \
  --ttt-steps 1 --ttt-lora-rank 4 --ttt-lora-targets conv
expect_error "--max-tokens (10) must be at least --window (64)" "$eval_bin" "${m[@]}" --text "$data" --window 64 --max-tokens 10
expect_error "--window: 'x' is not an integer" "$eval_bin" "${m[@]}" --text "$data" --window x
printf '\xe8\x03' >"$tmp/high.bin"  # id 1000, outside the model's 258
{ le32 20240520; le32 1; le32 1; head -c $((253 * 4)) /dev/zero; cat "$tmp/high.bin"; } >"$tmp/h_001.bin"
expect_error "token id 1000 at position 500 of 3 shards" "$eval_bin" "${m[@]}" --shards "$tmp/s_*.bin,$tmp/h_001.bin" --window 64
head -c 1000 "$tmp/s_000.bin" >"$tmp/cut.bin"
expect_error "shard '$tmp/cut.bin': file too short" "$eval_bin" "${m[@]}" --shards "$tmp/cut.bin"
if [[ -n "$sp_model" ]]; then
  expect_error "outside the model's vocabulary [0, 258)" "$eval_bin" "${m[@]}" --text "$data" --tokenizer "$sp_model"
fi
echo "eval_cli: OK (bpb $bpb; text and shards: $(json_field nats "$tmp/y.json") nats)"
