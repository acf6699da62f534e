#!/usr/bin/env bash
# convert --to-gguf and generate --gguf: a model exported to GGUF generates the same greedy
# text as the same weights from our checkpoint; Q8_0 runs on int8 storage; layouts the
# architecture cannot express and bad flags fail with exit 2, a message, and no file.
# With HF_FIXTURE (a Hugging Face directory with a tokenizer.json; builds with tokenizers),
# the tokenizer is carried over: text prompts generate the same text from the GGUF file,
# and from the file llama.cpp's converter wrote from that directory.
# Usage: gguf_convert.sh CONVERT_BINARY GENERATE_BINARY [HF_FIXTURE]
set -euo pipefail
convert="$1"; generate="$2"; hf="${3:-}"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"  # expect_error

"$convert" --model TinyLfm2 --seed 5 --to-gguf "$tmp/m.gguf" --to-weights "$tmp/m.safetensors" 2>"$tmp/log"
grep -qF "wrote $tmp/m.gguf: lfm2" "$tmp/log" || { echo "FAIL: no lfm2 export line"; cat "$tmp/log"; exit 1; }
gen=(--prompt "ROMEO:" --temperature 0 --max-new-tokens 24 --quiet --raw)
"$generate" --gguf "$tmp/m.gguf" "${gen[@]}" >"$tmp/a.txt"
"$generate" --weights "$tmp/m.safetensors" "${gen[@]}" >"$tmp/b.txt"
cmp "$tmp/a.txt" "$tmp/b.txt" || { echo "FAIL: GGUF and checkpoint generate different text"; exit 1; }

# GGUF → GGUF in Q8_0 keeps the tokenizer and runs on int8 weights.
"$convert" --gguf "$tmp/m.gguf" --to-gguf "$tmp/q.gguf" --type q8_0 2>"$tmp/log"
grep -qF "Q8_0; the source file's tokenizer" "$tmp/log" || { echo "FAIL: Q8_0 export line"; cat "$tmp/log"; exit 1; }
"$generate" --gguf "$tmp/q.gguf" --prompt "ROMEO:" --max-new-tokens 4 >/dev/null 2>"$tmp/log"
grep -qF "weights stored as int8, a scale per 32 columns" "$tmp/log" || { echo "FAIL: Q8_0 not int8"; cat "$tmp/log"; exit 1; }
grep -qE "MiB of their float values given back" "$tmp/log" || { echo "FAIL: float copy kept"; cat "$tmp/log"; exit 1; }

expect_error "cannot express this model: block 0 has no channel" "$convert" --model TinyGolf15x3 --to-gguf "$tmp/bad.gguf"
[[ ! -e "$tmp/bad.gguf" ]] || { echo "FAIL: a file was written for an inexpressible layout"; exit 1; }
expect_error "'llama' cannot express this model: block 0 is ShortConv" "$convert" --model TinyLfm2 --to-gguf "$tmp/x.gguf" --arch llama
expect_error "--type: 'q4_k' is not f32, f16, bf16 or q8_0" "$convert" --model TinyLfm2 --to-gguf "$tmp/x.gguf" --type q4_k
expect_error "give exactly one source" "$convert" --model TinyLfm2 --gguf "$tmp/m.gguf" --to-gguf "$tmp/x.gguf"
expect_error "--type goes with --to-gguf" "$convert" --model TinyLfm2 --to-weights "$tmp/x.safetensors" --type f16
expect_error "cannot open" "$generate" --gguf "$tmp/missing.gguf" --ids 1
printf 'GGUF\x03\x00\x00\x00' >"$tmp/short.gguf"
expect_error "too short for the 24-byte GGUF header" "$generate" --gguf "$tmp/short.gguf" --ids 1
# Whole output first: grep -q stops reading at the first match, and the writer's SIGPIPE
# would fail the pipeline under pipefail.
"$convert" --help >"$tmp/help.txt"
grep -qF -- "--to-gguf" "$tmp/help.txt" || { echo "FAIL: convert --help"; exit 1; }

if [[ -n "$hf" ]]; then
  "$convert" --hf "$hf" --to-gguf "$tmp/h.gguf" 2>"$tmp/log"
  grep -qF "tokenizer from $hf/tokenizer.json" "$tmp/log" || { echo "FAIL: tokenizer not carried"; cat "$tmp/log"; exit 1; }
  hgen=(--prompt "Hello world, again" --temperature 0 --max-new-tokens 12 --quiet --raw)
  "$generate" --gguf "$tmp/h.gguf" "${hgen[@]}" >"$tmp/c.txt"
  "$generate" --hf "$hf" "${hgen[@]}" >"$tmp/d.txt"
  cmp "$tmp/c.txt" "$tmp/d.txt" || { echo "FAIL: GGUF and HF directory generate different text"; exit 1; }
  # The file llama.cpp's own converter wrote from the same directory (tests/fixtures/gguf).
  if [[ "$(basename "$hf")" == lfm2_bpe_tokenizer ]]; then
    lc="$(dirname "$(dirname "$hf")")/gguf/llamacpp_lfm2_bpe.gguf"
    "$generate" --gguf "$lc" "${hgen[@]}" >"$tmp/e.txt"
    cmp "$tmp/e.txt" "$tmp/d.txt" || { echo "FAIL: llama.cpp's GGUF and the HF directory generate different text"; exit 1; }
  fi
fi
echo "gguf_convert: OK"
