#!/usr/bin/env bash
# eval --mc: multiple-choice scoring from the command line. A random-init byte-level model on
# the committed fixture gives a table and JSON with acc / acc_norm / acc_bytes and their
# standard errors; with tokenizer support, the LFM2 fixture reproduces lm-evaluation-harness's
# metrics (tests/fixtures/mc/expected.json); bad files and flags exit 2 with a message.
# Usage: eval_mc.sh EVAL_BINARY FIXTURES_DIR [with-tokenizers]
set -euo pipefail
eval_bin="$1"; fx="$2"; tokenizers="${3:-}"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"  # expect_error

fail() { echo "FAIL: $*"; exit 1; }
json_field() { sed -n "s/^  \"$1\": \(.*\),\{0,1\}\$/\1/p" "$2" | sed 's/,$//'; }

"$eval_bin" --model TinyMamba --mc "$fx/mc/piqa.jsonl" --mc-limit 5 --quiet >"$tmp/table"
for w in "| acc |" "| acc_norm |" "| acc_bytes |" "5 items"; do
  grep -qF -- "$w" "$tmp/table" || { cat "$tmp/table"; fail "the table lacks '$w'"; }
done
"$eval_bin" --model TinyMamba --mc "$fx/mc/piqa.jsonl" --mc-limit 5 --quiet --json "$tmp/r.json" >/dev/null
[[ "$(json_field items "$tmp/r.json")" == 5 ]] || fail "--json: items is not 5"
[[ "$(json_field choices "$tmp/r.json")" == 10 ]] || fail "--json: choices is not 10"
grep -q '"acc_norm_stderr"' "$tmp/r.json" || fail "--json: no acc_norm_stderr"

if [[ "$tokenizers" == with-tokenizers ]]; then
  "$eval_bin" --hf "$fx/hf/lfm2_bpe_tokenizer" --mc "$fx/mc/arc_easy.jsonl" --bos --quiet --json "$tmp/arc.json" >/dev/null
  if command -v python3 >/dev/null; then
    python3 - "$tmp/arc.json" "$fx/mc/expected.json" <<'PY' || fail "--hf LFM2 fixture: metrics differ from lm-evaluation-harness's"
import json, sys
ours, ex = json.load(open(sys.argv[1])), json.load(open(sys.argv[2]))["tasks"]["arc_easy"]
for m in ("acc", "acc_norm", "acc_bytes"):
    assert abs(ours[m] - ex[m]) < 1e-12 and abs(ours[m + "_stderr"] - ex[m + "_stderr"]) < 1e-9, m
PY
  fi
fi

printf '{"context": "a", "choices": ["b", "c"], "gold": 0}\n{"context": "a", "choices": ["b"], "gold": 1}\n' >"$tmp/bad.jsonl"
expect_error "line 2: gold: 1 is out of range for 1 choice" "$eval_bin" --model TinyMamba --mc "$tmp/bad.jsonl"
printf '{"context": "a", "choices": [], "gold": 0}\n' >"$tmp/empty.jsonl"
expect_error "choices: the array is empty" "$eval_bin" --model TinyMamba --mc "$tmp/empty.jsonl"
expect_error "give exactly one data source" "$eval_bin" --model TinyMamba --mc "$fx/mc/piqa.jsonl" --text "$fx/mc/piqa.jsonl"
expect_error "--window goes with --text or --shards, not --mc" "$eval_bin" --model TinyMamba --mc "$fx/mc/piqa.jsonl" --window 8
expect_error "--mc-limit goes with --mc" "$eval_bin" --model TinyMamba --text "$fx/mc/piqa.jsonl" --mc-limit 3
expect_error "longer than the maximum length 3" "$eval_bin" --model TinyMamba --mc "$fx/mc/piqa.jsonl" --mc-max-length 3
echo "eval --mc: ok"
