#!/usr/bin/env python3
"""Markdown table of a peer-benchmark run: reads the JSON lines that bench_peer and
bench_transformers.py wrote into one directory (compare.sh's layout:
<model>.hybrid.<round>.jsonl, <model>.transformers.<round>.jsonl, load.txt) and prints
per model and measurement: ours tok/s, transformers tok/s, ratio, target.

With several rounds, each side's figure is its best round (highest tokens/s): the round
least disturbed by other jobs on a shared machine. Each round's figure is already the
median of that run's repetitions.
    table.py RESULTS_DIR
"""

import glob
import json
import os
import sys

TARGETS = {"train": 2.0, "decode": 3.0}
WHAT = [("forward", "forward (no grad, all logits)"), ("train", "training step (fwd+bwd+AdamW)"),
        ("decode", "decode (batch 1, greedy)")]


def load(path):
    out = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line.startswith("{"):
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError:
                    pass
    return out


def main():
    d = sys.argv[1]
    runs = {}  # (model, side) -> list of rounds (list of records)
    for p in sorted(glob.glob(os.path.join(d, "*.jsonl"))):
        model, side, _ = os.path.basename(p)[: -len(".jsonl")].rsplit(".", 2)
        runs.setdefault((model, side), []).append(load(p))
    models = sorted({m for m, _ in runs}, key=lambda m: (not m.startswith("golf"), m))

    def best(model, side, what):
        recs = [r for rnd in runs.get((model, side), []) for r in rnd if r.get("what") == what]
        return max(recs, key=lambda r: r["tokens_per_s"]) if recs else None

    def ref(side, case, key):
        vals = [r[key] for (m, s), rnds in runs.items() if s == side for rnd in rnds for r in rnd
                if r.get("case") == case]
        return (min(vals), max(vals)) if vals else None

    print("| model | measurement | shape | ours tok/s | transformers tok/s | ratio | target |")
    print("|---|---|---|---:|---:|---:|---|")
    verdicts = []
    for m in models:
        for what, label in WHAT:
            o, t = best(m, "hybrid", what), best(m, "transformers", what)
            if not o or not t:
                continue
            shape = (f"P={o['prefill']}, N={o['steps']}" if what == "decode" else f"B={o['B']}, T={o['T']}")
            ratio = o["tokens_per_s"] / t["tokens_per_s"]
            tgt = TARGETS.get(what)
            if tgt:
                ok = ratio >= tgt
                verdicts.append(ok)
                tcell = f"≥ {tgt:g}×: {'met' if ok else '**not met**'}"
            else:
                tcell = "—"
            print(f"| {m} | {label} | {shape} | {o['tokens_per_s']:,.1f} | {t['tokens_per_s']:,.1f} | "
                  f"**{ratio:.2f}×** | {tcell} |")
    print()
    for m in models:
        for side in ("hybrid", "transformers"):
            p = [r for rnd in runs.get((m, side), []) for r in rnd if r.get("what") == "params"]
            if p:
                print(f"- {m} parameters ({side}): {p[0]['params']:,}")
    print()
    backends = sorted({r.get("backend", "eigen") for rnds in runs.values() for rnd in rnds for r in rnd
                       if r.get("case") == "gemm_f32_best" and r.get("side") == "hybrid"})
    print(f"Same-run references (min–max over the runs; ours: {', '.join(backends) or '?'} GEMM as the "
          "linear layers use it, transformers: torch/MKL):")
    print()
    print("| reference | ours | transformers |")
    print("|---|---:|---:|")
    for case, key, label in (("gemm_f32_best", "gflops", "float GEMM GFLOP/s (best of 3 shapes)"),
                             ("mem_read", "gbps", "read bandwidth GB/s (256 MiB sum)")):
        cells = []
        for side in ("hybrid", "transformers"):
            r = ref(side, case, key)
            cells.append("—" if r is None else (f"{r[0]:.1f}" if r[0] == r[1] else f"{r[0]:.1f}–{r[1]:.1f}"))
        print(f"| {label} | {cells[0]} | {cells[1]} |")
    vers = [r for rnds in runs.values() for rnd in rnds for r in rnd if r.get("case") == "versions"]
    if vers:
        v = vers[0]
        print()
        print(f"Versions: torch {v['torch']}, transformers {v['transformers']}, Python {v['python']}; "
              f"torch threads {v['threads']}, attention `{v['attn']}`.")
    checks = [r for rnds in runs.values() for rnd in rnds for r in rnd if r.get("what") == "decode_check"]
    if checks:
        worst = max(c["max_abs_diff"] for c in checks)
        print(f"Decode-loop check (transformers cache vs full forward, last position): "
              f"{'all ok' if all(c['ok'] for c in checks) else 'FAILED'}, max |Δlogit| {worst:.2e}.")
    lp = os.path.join(d, "load.txt")
    if os.path.exists(lp):
        print()
        print("Load (`uptime`) around the runs:")
        print()
        print("```")
        with open(lp) as f:
            print(f.read().rstrip())
        print("```")


if __name__ == "__main__":
    main()
