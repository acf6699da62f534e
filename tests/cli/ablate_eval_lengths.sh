#!/usr/bin/env bash
# ablate --eval-lengths: bad lists fail before training with a message naming the flag and
# the entry, and a tiny run writes length.csv (sorted lengths, one row per layout and length).
# Then seeds, the learning-rate sweep and the text column: mean ± std in the table, one
# results.csv row per run, the best scale marked, parameter counts within --match-tol.
# Usage: ablate_eval_lengths.sh ABLATE_BINARY DATA_DIR
set -euo pipefail
ablate="$1"; data="$2"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

expect_error() {  # expect_error MESSAGE ARGS...: exit status 2 and MESSAGE on stderr
  local msg="$1"; shift
  local rc=0
  "$ablate" "$@" --dry-run >"$tmp/out" 2>"$tmp/err" || rc=$?
  if [[ $rc -ne 2 ]] || ! grep -qF -- "$msg" "$tmp/err"; then
    echo "FAIL: ablate $* gave exit $rc, expected 2 and: $msg"; cat "$tmp/err"; exit 1
  fi
}
expect_error "--eval-lengths: 'abc' is not a positive integer" --eval-lengths 128,abc
expect_error "--eval-lengths: '0' is not a positive integer" --eval-lengths 0,128
expect_error "--eval-lengths: '-64' is not a positive integer" --eval-lengths=-64
expect_error "--eval-lengths: '64,,128' has an empty entry" --eval-lengths 64,,128
expect_error "--eval-lengths: '64,' has an empty entry" --eval-lengths 64,
expect_error "--eval-lengths: the length 128 appears twice" --eval-lengths 128,64,128
expect_error "--eval-lengths: the data cannot give sequences of length 16" --eval-lengths 64,16
expect_error "--eval-seqs must be positive" --eval-lengths 64 --eval-seqs 0
expect_error "--eval-batch must be positive" --eval-lengths 64 --eval-batch 0
expect_error "--eval-lengths: the data cannot give sequences of length 100000000" \
  --data "$data/tinyshakespeare.txt" --eval-lengths 64,100000000
"$ablate" --eval-lengths 4096,128,512 --dry-run >"$tmp/out"
grep -qF "lengths 128 512 4096" "$tmp/out" || { echo "FAIL: lengths not sorted"; cat "$tmp/out"; exit 1; }

# Two layouts on two jobs, lengths given out of order; 3 sequences in forwards of 2.
"$ablate" --layouts m=MM,a=AA --target-params 6000 --tokens 2048 --batch 4 --seq-len 32 \
  --eval-every 0 --eval-lengths 64,32 --eval-seqs 3 --eval-batch 2 --decode-tokens 2 \
  --jobs 2 --out "$tmp/run" >"$tmp/out" 2>&1 || { cat "$tmp/out"; exit 1; }
expected="layout,length,accuracy,accuracy_std,loss,loss_std,scored_positions
m,32
m,64
a,32
a,64"
got="$(head -1 "$tmp/run/length.csv"; tail -n +2 "$tmp/run/length.csv" | cut -d, -f1,2)"
if [[ "$got" != "$expected" ]]; then
  echo "FAIL: length.csv"; cat "$tmp/run/length.csv"; exit 1
fi
# MQAR's 12 queries in each of 3 sequences are scored at every length.
if [[ "$(tail -n +2 "$tmp/run/length.csv" | cut -d, -f7 | sort -u)" != 36 ]]; then
  echo "FAIL: scored positions"; cat "$tmp/run/length.csv"; exit 1
fi
grep -qF "| layout: val acc | L=32 (train) | L=64 |" "$tmp/run/results.md" ||
  { echo "FAIL: no length table in results.md"; cat "$tmp/run/results.md"; exit 1; }
test -s "$tmp/run/length.gnuplot"

expect_error "--lr-sweep: 'x' is not a positive number" --lr-sweep 1,x
expect_error "--lr-sweep: the scale 1 appears twice" --lr-sweep 1,1
expect_error "--seeds must be positive" --seeds 0
expect_error "--init-std must be a positive number" --init-std 0
expect_error "--match-tol must be in (0, 1)" --match-tol 0
expect_error "--lm-data adds a text column" --data "$data/tinyshakespeare.txt" --lm-data "$data/tinyshakespeare.txt"
# Matching: every default layout lands within 3 % of the target.
"$ablate" --dry-run >"$tmp/match"
if grep -q "outside --match-tol" "$tmp/match"; then echo "FAIL: matching"; cat "$tmp/match"; exit 1; fi
# 2 layouts x (MQAR + text) x 2 scales x 2 seeds = 16 runs.
"$ablate" --layouts m=MM,a=AA --target-params 6000 --tokens 1024 --batch 4 --seq-len 32 --eval-every 0 \
  --eval-batches 1 --decode-tokens 2 --seeds 2 --lr-sweep 0.5,2 --lm-data "$data/tinyshakespeare.txt" \
  --jobs 2 --out "$tmp/sweep" >"$tmp/out" 2>&1 || { cat "$tmp/out"; exit 1; }
[[ "$(tail -n +2 "$tmp/sweep/results.csv" | wc -l)" == 16 ]] || { echo "FAIL: results.csv rows"; cat "$tmp/sweep/results.csv"; exit 1; }
[[ "$(grep -c ' ± ' "$tmp/sweep/results.md")" -ge 4 ]] || { echo "FAIL: no mean ± std"; cat "$tmp/sweep/results.md"; exit 1; }
grep -qF "Learning-rate sweep" "$tmp/sweep/results.md" || { echo "FAIL: no sweep table"; exit 1; }
grep -qF "text val bpb" "$tmp/sweep/results.md" || { echo "FAIL: no text column"; exit 1; }
# One best scale per layout and data kind: 4 runs (2 seeds) flagged per (layout, data).
[[ "$(tail -n +2 "$tmp/sweep/results.csv" | awk -F, '$6 == 1' | wc -l)" == 8 ]] || { echo "FAIL: best_lr flags"; exit 1; }
for f in curves_train.csv curves_val.csv curves_text_val.csv curves.gnuplot; do test -s "$tmp/sweep/$f"; done
echo "ablate --eval-lengths, --seeds, --lr-sweep, --lm-data: ok"
