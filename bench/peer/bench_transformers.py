#!/usr/bin/env python3
"""The transformers side of the peer benchmark (bench/bench_peer.cpp is ours).

Builds the same models as bench_peer from config objects with random weights (nothing is
downloaded) and measures, in float32 on the CPU with torch.set_num_threads(threads):
  forward  B sequences of T tokens, all logits, eval mode, torch.no_grad()
  train    one step: forward + cross-entropy + backward + torch.optim.AdamW (betas 0.9/0.95,
           eps 1e-8, weight decay 0.1 on the 2-D projection matrices, 0 elsewhere, no
           clipping: the same settings as bench_peer)
  decode   batch 1, greedy, after a prefill of P tokens: N single-token forwards through the
           model's cache (no model.generate)
Models:
  golf15x3e2      GraniteMoeHybridConfig equal to hybrid's Golf15x3E2 alias
  lfm2_350m_L<n>  Lfm2Config with LFM2-350M's widths and its first n layers
Prints one JSON object per line, the same fields as bench_peer, plus a torch float GEMM
rate for the same shapes as the C++ side's reference.
"""

import argparse
import json
import os
import statistics
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import transformers  # noqa: E402
from transformers import (  # noqa: E402
    GraniteMoeHybridConfig,
    GraniteMoeHybridForCausalLM,
    Lfm2Config,
    Lfm2ForCausalLM,
)

GOLF15X3E2_PARAMS = 55_519_120  # hybrid::Golf15x3E2::n_params
LFM2_350M_ATTN = (2, 5, 8, 10, 12, 14)  # attention layers of the published 16


def lfm2_params(n_layers):
    """hybrid's parameter count of Lfm2_350M cut after n_layers blocks (desc.hpp's formulas)."""
    D, V, ff, L, hd, heads, kv = 1024, 65536, 4608, 3, 64, 16, 8
    conv = 4 * D * D + D * L
    attn = 2 * heads * hd * D + 2 * kv * hd * D + 2 * hd
    block_rest = 3 * D * ff + 2 * D  # SwiGLU + two norms
    n = V * D + D  # tied embedding + final norm
    for i in range(n_layers):
        n += (attn if i in LFM2_350M_ATTN else conv) + block_rest
    return n


def build(name, attn_impl):
    """(model, expected parameter count, description of the configuration)."""
    if name == "golf15x3e2":
        cfg = GraniteMoeHybridConfig(
            vocab_size=1024,
            hidden_size=512,
            num_hidden_layers=18,
            layer_types=["linear_attention"] * 12 + ["full_attention"] * 3 + ["linear_attention"] * 3,
            num_attention_heads=8,
            num_key_value_heads=4,
            attention_multiplier=64**-0.5,  # Granite's attention scale; ours is 1/sqrt(head_dim)
            shared_intermediate_size=1024,
            intermediate_size=1024,
            num_local_experts=0,  # dense: only the shared SwiGLU MLP
            num_experts_per_tok=0,
            mamba_n_heads=16,
            mamba_d_head=64,
            mamba_d_state=32,
            mamba_n_groups=1,
            mamba_d_conv=4,
            mamba_expand=2,
            mamba_chunk_size=256,  # Mamba2Spec's default chunk, as in the alias
            mamba_conv_bias=True,
            mamba_proj_bias=False,
            rms_norm_eps=1e-5,
            position_embedding_type="rope",
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
            tie_word_embeddings=True,
            max_position_embeddings=4096,
            pad_token_id=0,
        )
        cfg._attn_implementation = attn_impl
        model = GraniteMoeHybridForCausalLM(cfg)
        return model, GOLF15X3E2_PARAMS, cfg
    if name.startswith("lfm2_350m_L"):
        n = int(name[len("lfm2_350m_L"):])
        if not 1 <= n <= 16:
            sys.exit(f"lfm2_350m_L<n> needs 1 <= n <= 16, got {name}")
        cfg = Lfm2Config(
            vocab_size=65536,
            hidden_size=1024,
            num_hidden_layers=n,
            num_attention_heads=16,
            num_key_value_heads=8,
            # LFM2-350M's published block_ff_dim with its auto-adjust: int(2 * 6656 / 3) = 4437,
            # rounded up to a multiple of 256 = 4608 = our SwiGLU hidden width.
            intermediate_size=6656,
            block_auto_adjust_ff_dim=True,
            block_ffn_dim_multiplier=1.0,
            block_multiple_of=256,
            layer_types=["full_attention" if i in LFM2_350M_ATTN else "conv" for i in range(n)],
            conv_L_cache=3,
            conv_bias=False,
            norm_eps=1e-5,
            rope_parameters={"rope_type": "default", "rope_theta": 1e6},
            tie_word_embeddings=True,
            max_position_embeddings=4096,
        )
        cfg._attn_implementation = attn_impl
        model = Lfm2ForCausalLM(cfg)
        w1 = model.model.layers[0].feed_forward.w1.weight
        assert tuple(w1.shape) == (4608, 1024), f"LFM2 w1 is {tuple(w1.shape)}, expected (4608, 1024)"
        return model, lfm2_params(n), cfg
    sys.exit(f"unknown model {name!r} (expected golf15x3e2 or lfm2_350m_L<n>)")


def emit(obj):
    print(json.dumps(obj), flush=True)


def gemm_gflops(m, k, n, reps):
    a, b = torch.randn(m, k), torch.randn(n, k)
    c = a @ b.t()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        c = torch.mm(a, b.t())
        ts.append(time.perf_counter() - t0)
    del c
    return 2.0 * m * k * n / statistics.median(ts) / 1e9


def read_gbps(reps):
    """Median read bandwidth of torch.sum over a 256 MiB float tensor (all threads)."""
    buf = torch.ones(64 << 20)
    buf.sum()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        buf.sum()
        ts.append(time.perf_counter() - t0)
    return buf.numel() * 4 / statistics.median(ts) / 1e9


def decode_loop(model, prompt, steps):
    """Greedy decode through the cache. Returns (prefill seconds, decode seconds, last logits)."""
    t0 = time.perf_counter()
    out = model(input_ids=prompt, use_cache=True, logits_to_keep=1)
    cache = out.past_key_values
    tok = out.logits[:, -1].argmax(-1, keepdim=True)
    t1 = time.perf_counter()
    logits = out.logits[:, -1]
    for _ in range(steps):
        out = model(input_ids=tok, past_key_values=cache, use_cache=True)
        cache = out.past_key_values
        logits = out.logits[:, -1]
        tok = logits.argmax(-1, keepdim=True)
    t2 = time.perf_counter()
    return t1 - t0, t2 - t1, logits, tok


def check_decode(model, vocab, gen):
    """Decode-loop logits vs a full forward over the same tokens, at the last position."""
    prompt = torch.randint(0, vocab, (1, 9), generator=gen)
    toks = [prompt]
    out = model(input_ids=prompt, use_cache=True)
    cache = out.past_key_values
    tok = out.logits[:, -1].argmax(-1, keepdim=True)
    for _ in range(5):
        toks.append(tok)
        out = model(input_ids=tok, past_key_values=cache, use_cache=True)
        cache = out.past_key_values
        tok = out.logits[:, -1].argmax(-1, keepdim=True)
    full = model(input_ids=torch.cat(toks, dim=1), use_cache=False).logits[:, -1]
    step = out.logits[:, -1]
    diff = (full - step).abs().max().item()
    scale = full.abs().max().item()
    return diff, scale


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--B", type=int, default=4)
    ap.add_argument("--T", type=int, default=256)
    ap.add_argument("--prefill", type=int, default=64)
    ap.add_argument("--decode", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--only", default="forward,train,decode")
    ap.add_argument("--attn", default="eager", choices=["eager", "sdpa"],
                    help="attention implementation (default eager)")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()

    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    gen = torch.Generator().manual_seed(a.seed + 1)
    side = "transformers" if a.attn == "eager" else "transformers_sdpa"
    emit({"side": side, "case": "versions", "torch": torch.__version__,
          "transformers": transformers.__version__, "python": sys.version.split()[0],
          "threads": torch.get_num_threads(), "attn": a.attn,
          "mkldnn": torch.backends.mkldnn.is_available()})

    best = 0.0
    for m, k, n in ((1024, 512, 1612), (1024, 768, 512), (2048, 1024, 2048)):
        g = gemm_gflops(m, k, n, a.reps)
        emit({"side": side, "case": "gemm_f32", "m": m, "k": k, "n": n, "gflops": round(g, 2),
              "threads": a.threads})
        best = max(best, g)
    emit({"side": side, "case": "gemm_f32_best", "gflops": round(best, 2), "threads": a.threads})

    emit({"side": side, "case": "mem_read", "mib": 256, "gbps": round(read_gbps(a.reps), 2),
          "threads": a.threads})

    model, expected, cfg = build(a.model, a.attn)
    model = model.float()
    params = sum(p.numel() for p in model.parameters())  # tied head counted once
    emit({"side": side, "model": a.model, "what": "params", "params": params,
          "hybrid_params": expected, "equal": params == expected,
          "attn_implementation": model.config._attn_implementation,
          "layer_types": list(cfg.layer_types)})
    if params != expected:
        sys.exit(f"parameter count {params} != hybrid's {expected}")
    V = cfg.vocab_size
    tokens = torch.randint(0, V, (a.B, a.T), generator=gen)
    targets = torch.randint(0, V, (a.B, a.T), generator=gen)
    BT = a.B * a.T
    base = {"side": side, "model": a.model, "threads": a.threads, "reps": a.reps}

    if "forward" in a.only:
        model.eval()
        with torch.no_grad():
            model(input_ids=tokens, use_cache=False)  # warm-up
            ts = []
            for _ in range(a.reps):
                t0 = time.perf_counter()
                logits = model(input_ids=tokens, use_cache=False).logits
                ts.append(time.perf_counter() - t0)
            assert logits.shape == (a.B, a.T, V) and torch.isfinite(logits[0, 0]).all()
        s = statistics.median(ts)
        emit({**base, "what": "forward", "B": a.B, "T": a.T, "tokens_per_s": round(BT / s, 2),
              "seconds": round(s, 5)})

    if "train" in a.only:
        model.train()
        decay = [p for n_, p in model.named_parameters() if p.ndim == 2 and "embed" not in n_]
        rest = [p for n_, p in model.named_parameters() if not (p.ndim == 2 and "embed" not in n_)]
        opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                                 {"params": rest, "weight_decay": 0.0}],
                                lr=3e-4, betas=(0.9, 0.95), eps=1e-8)

        def step():
            opt.zero_grad(set_to_none=True)
            logits = model(input_ids=tokens, use_cache=False).logits
            loss = F.cross_entropy(logits.view(-1, V), targets.view(-1))
            loss.backward()
            opt.step()
            return loss.item()

        loss0 = step()  # warm-up
        ts = []
        loss = loss0
        for _ in range(a.reps):
            t0 = time.perf_counter()
            loss = step()
            ts.append(time.perf_counter() - t0)
        s = statistics.median(ts)
        emit({**base, "what": "train", "B": a.B, "T": a.T, "tokens_per_s": round(BT / s, 2),
              "seconds": round(s, 5), "loss_first": round(loss0, 4), "loss_last": round(loss, 4),
              "optimizer": "torch.optim.AdamW (default implementation)"})
        opt = None

    if "decode" in a.only:
        model.eval()
        with torch.no_grad():
            diff, scale = check_decode(model, V, gen)
            ok = diff <= 1e-4 * max(1.0, scale)
            emit({**base, "what": "decode_check", "max_abs_diff": diff, "max_abs_logit": scale, "ok": ok})
            if not ok:
                sys.exit("decode-loop logits differ from the full forward's")
            prompt = torch.randint(0, V, (1, a.prefill), generator=gen)
            decode_loop(model, prompt, 4)  # warm-up
            ts, tp = [], []
            for _ in range(a.reps):
                p, d, _, _ = decode_loop(model, prompt, a.decode)
                tp.append(p)
                ts.append(d)
        s, sp = statistics.median(ts), statistics.median(tp)
        emit({**base, "what": "decode", "B": 1, "T": a.decode, "tokens_per_s": round(a.decode / s, 2),
              "seconds": round(s, 5), "prefill": a.prefill, "steps": a.decode,
              "prefill_seconds": round(sp, 5), "prefill_tokens_per_s": round(a.prefill / sp, 2)})


if __name__ == "__main__":
    main()
