// Differentiable sequence mixers on tape Vars, for B sequences of T tokens stored as
// (B*T, C) rows: causal depthwise conv, the SSD scan, RoPE and causal attention. Each
// optionally continues from per-sequence decode state (inference only: a tape that
// records refuses state, since training starts every sequence fresh).
#pragma once
#include <algorithm>
#include <cstdint>
#include <vector>

#include "../config.hpp"
#include "../ops/attention.hpp"
#include "../ops/attention_decode.hpp"
#include "../ops/conv1d.hpp"
#include "../ops/elementwise.hpp"
#include "../ops/rope.hpp"
#include "../ops/ssd.hpp"
#include "../ops/ssd_backward.hpp"
#include "tape.hpp"

namespace hybrid::ag {

// u: (B*T, C), may be a column range; w: (C, K); b: (1, C) or absent. hist: nullptr or B
// pointers to (C, K) conv caches that the call starts from and updates.
template <class S>
Var<S> causal_conv1d(Tape<S>& t, Var<S> u, const Param& w, const Param& b, Index B, Index T,
                     S* const* hist) {
  HYBRID_CHECK(!(hist && t.recording()), "causal_conv1d: decode state cannot be used while recording");
  const Var<S> wv = t.param(w), bv = t.param(b);
  const Index C = u.cols, K = w.cols;
  Var<S> y = t.var(u.rows, u.cols);
  {  // the workspace is given back before anything else is taken from the tape
    const auto wt = t.workspace(ops::causal_conv1d_scratch(C, K));
    for (Index s = 0; s < B; ++s) {
      const View<S> h = hist ? View<S>(hist[s], C, K) : View<S>();
      ops::causal_conv1d_forward<S>(u.row_range(s * T, T).value(), wv.value(), bv.value(), h,
                                    y.row_range(s * T, T).value(), h, wt.data);
    }
  }
  Tape<S>* tp = &t;
  t.push(OpId::CausalConv1d, [tp, u, y, wv, bv, B, T, C, K] {
    const auto work = tp->workspace(ops::causal_conv1d_backward_scratch(C, K));
    for (Index s = 0; s < B; ++s)
      ops::causal_conv1d_backward<S>(u.row_range(s * T, T).value(), wv.value(),
                                     y.row_range(s * T, T).gradient(),
                                     u.row_range(s * T, T).gradient(), wv.gradient(), bv.gradient(),
                                     work.data);
  });
  return y;
}

struct SsdConfig {
  int H, P, N, G, chunk;
  ScanPath path;
};

// The Mamba-2 scan with A = -exp(A_log) and D skip. x: (B*T, H*P); dt: (B*T, H)
// contiguous; Bm, Cm: (B*T, G*N) with one row stride (column ranges of one tensor); A_log,
// D: (1, H). states: nullptr or B pointers to (H, P*N) SSM states to start from and update
// (inference only).
template <class S>
Var<S> ssd(Tape<S>& t, Var<S> x, Var<S> dt, const Param& A_log, Var<S> Bm, Var<S> Cm,
           const Param& Dskip, const SsdConfig& c, Index B, Index T, S* const* states) {
  HYBRID_CHECK(!(states && t.recording()), "ssd: decode state cannot be used while recording");
  HYBRID_CHECK(dt.contiguous() && Bm.ld == Cm.ld, "ssd: dt must be contiguous and B, C share a row stride");
  const Var<S> al = t.param(A_log), dv = t.param(Dskip);
  Var<S> y = t.var(x.rows, x.cols);
  S* A = t.scratch(c.H);
  S* dA = t.recording() ? t.scratch(c.H) : nullptr;  // the backward's sum over sequences
  for (int h = 0; h < c.H; ++h) A[h] = -std::exp(al.v[h]);
  const ops::SsdDims d{T, c.H, c.P, c.N, c.G};
  const Index ldy = Index(c.H) * c.P;
  {  // the workspace is given back before anything else is taken from the tape
    const auto work = t.workspace(ops::ssd_forward_scratch(d, c.chunk, c.path, sizeof(S), par::threads()));
    for (Index s = 0; s < B; ++s) {
      S* st = states ? states[s] : nullptr;
      ops::SsdArgs<S> a{x.v + s * T * x.ld, dt.v + s * T * c.H, A, Bm.v + s * T * Bm.ld,
                        Cm.v + s * T * Cm.ld, dv.v, st, y.v + s * T * ldy, st, x.ld, Bm.ld};
      ops::ssd_forward<S>(d, c.chunk, c.path, a, work.data);
    }
  }
  Tape<S>* tp = &t;
  t.push(OpId::Ssd, [tp, x, dt, Bm, Cm, y, al, dv, A, dA, c, B, T, ldy] {
    const ops::SsdDims d{T, c.H, c.P, c.N, c.G};
    const auto work = tp->workspace(ops::ssd_backward_scratch(d, c.chunk));
    // dA accumulates over sequences; A = -exp(A_log) so dA_log = dA * A.
    std::fill(dA, dA + c.H, S(0));
    for (Index s = 0; s < B; ++s) {
      ops::SsdArgs<S> a{x.v + s * T * x.ld, dt.v + s * T * c.H, A, Bm.v + s * T * Bm.ld,
                        Cm.v + s * T * Cm.ld, dv.v, nullptr, y.v + s * T * ldy, nullptr, x.ld, Bm.ld};
      ops::SsdGrads<S> g{x.g ? x.g + s * T * x.ld : nullptr, dt.g ? dt.g + s * T * c.H : nullptr,
                         dA, Bm.g ? Bm.g + s * T * Bm.ld : nullptr,
                         Cm.g ? Cm.g + s * T * Cm.ld : nullptr, dv.g};
      ops::ssd_backward<S>(d, c.chunk, a, y.g + s * T * ldy, g, work.data);
    }
    if (al.g)
      for (int h = 0; h < c.H; ++h) al.g[h] += dA[h] * A[h];
  });
  return y;
}

// RoPE on x: (B*T, H*hd); sequence s starts at position pos0[s] (nullptr: all at 0). rot:
// the rotated dims of each head (0 = all hd; fewer is partial RoPE, ops/rope.hpp).
template <class S>
Var<S> rope(Tape<S>& t, Var<S> x, int H, int hd, Index B, Index T, const Index* pos0, double base,
            int rot = 0) {
  Var<S> y = t.var(x.rows, x.cols);
  ops::copy<S>(x.value(), y.value());
  Index* p = t.scratch_index(B);
  for (Index s = 0; s < B; ++s) {
    p[s] = pos0 ? pos0[s] : 0;
    ops::rope_forward<S>(y.row_range(s * T, T).value(), H, hd, p[s], base, rot);
  }
  t.push(OpId::Rope, [x, y, H, hd, B, T, p, base, rot] {
    if (!x.g) return;
    for (Index s = 0; s < B; ++s)  // y's gradient is consumed here only: rotate it in place
      ops::rope_backward<S>(y.row_range(s * T, T).gradient(), H, hd, p[s], base, rot);
    ops::add_backward<S>(y.gradient(), S(1), x.gradient(), View<S>());
  });
  return y;
}

// Causal (optionally windowed) attention of B fresh sequences. q: (B*T, Hq*hd);
// k, v: (B*T, Hkv*hd); all contiguous.
template <class S>
Var<S> attention(Tape<S>& t, Var<S> q, Var<S> k, Var<S> v, int Hq, int Hkv, int hd, Index B,
                 Index T, S scale, int window) {
  HYBRID_CHECK(q.contiguous() && k.contiguous() && v.contiguous(),
               "attention: q, k and v must be contiguous");
  Var<S> o = t.var(q.rows, q.cols);
  S* lse = t.recording() ? t.scratch(B * T * Hq) : nullptr;
  const ops::AttnDims d{T, T, Hq, Hkv, hd};
  const Index ldq = Index(Hq) * hd, ldk = Index(Hkv) * hd;
  {  // the workspace is given back before anything else is taken from the tape
    const auto scores = t.workspace(ops::attention_scratch(d, par::threads()));
    for (Index s = 0; s < B; ++s)
      ops::attention_forward<S>(q.v + s * T * ldq, k.v + s * T * ldk, v.v + s * T * ldk,
                                o.v + s * T * ldq, d, scale, 0, 0, window,
                                lse ? lse + s * T * Hq : nullptr, scores.data);
  }
  Tape<S>* tp = &t;
  t.push(OpId::Attention, [tp, q, k, v, o, lse, d, B, T, scale, window, ldq, ldk, Hq] {
    const auto work = tp->workspace(ops::attention_backward_scratch(d, par::threads()));
    for (Index s = 0; s < B; ++s)
      ops::attention_backward<S>(q.v + s * T * ldq, k.v + s * T * ldk, v.v + s * T * ldk,
                                 o.v + s * T * ldq, lse + s * T * Hq, o.g + s * T * ldq,
                                 q.g ? q.g + s * T * ldq : nullptr, k.g ? k.g + s * T * ldk : nullptr,
                                 v.g ? v.g + s * T * ldk : nullptr, d, scale, 0, 0, window, work.data);
  });
  return o;
}

// Attention of B decoding sequences over their KV caches: q: (B*T, Hq*hd) contiguous,
// queries of sequence b at positions qpos0[b] + [0, T); kv[b]: the cache's (len, Hkv*hd)
// keys and values (in S or bf16) from position kv[b].kpos0; cap: the largest cache
// capacity, which sizes the workspace (a pre-sized cache keeps it constant from step to
// step). T == 1 runs the decode kernel (split-K over long caches); T > 1 the blocked
// attention_forward, over a bf16 cache after widening the keys the chunk can see into the
// workspace (2 * cap * Hkv*hd values). Inference only (no node).
template <class S>
Var<S> attention_cached(Tape<S>& t, Var<S> q, int Hq, int Hkv, int hd, Index B, Index T,
                        const ops::KvSpan<S>* kv, const Index* qpos0, Index cap, S scale,
                        int window) {
  HYBRID_CHECK(!t.recording(), "attention: decode state cannot be used while recording");
  HYBRID_CHECK(q.contiguous(), "attention: q must be contiguous");
  Var<S> o = t.var(q.rows, q.cols);
  if (T == 1) {
    const ops::DecodeDims d{B, Hq, Hkv, hd};
    const auto work = t.workspace(ops::attention_decode_scratch(d, par::threads()));
    ops::attention_decode<S>(d, q.v, kv, qpos0, o.v, scale, window, work.data);
    return o;
  }
  const Index ldq = Index(Hq) * hd, ldk = Index(Hkv) * hd;
  bool any_bf16 = false;
  for (Index b = 0; b < B; ++b) any_bf16 = any_bf16 || kv[b].bf16();
  const Index nscores = ops::attention_scratch(ops::AttnDims{T, cap, Hq, Hkv, hd}, par::threads());
  const auto work = t.workspace(nscores + (any_bf16 ? 2 * cap * ldk : 0));
  for (Index b = 0; b < B; ++b) {
    const ops::KvSpan<S>& c = kv[b];
    if (!c.bf16()) {
      const ops::AttnDims d{T, c.len, Hq, Hkv, hd};
      ops::attention_forward<S>(q.v + b * T * ldq, c.k, c.v, o.v + b * T * ldq, d, scale,
                                qpos0[b], c.kpos0, window, nullptr, work.data);
      continue;
    }
    Index j0, j1;  // keys some query of the chunk sees, widened to S
    ops::detail::attn_key_range(ops::AttnDims{T, c.len, Hq, Hkv, hd}, 0, T, qpos0[b], c.kpos0,
                                window, j0, j1);
    j1 = std::max(j1, j0);
    S* kf = work.data + nscores;  // (j1 - j0, Hkv*hd)
    S* vf = kf + cap * ldk;       // (j1 - j0, Hkv*hd)
    const std::uint16_t* ks = c.kh + j0 * ldk;
    const std::uint16_t* vs = c.vh + j0 * ldk;
    for (Index i = 0; i < (j1 - j0) * ldk; ++i) kf[i] = S(bf16_to_f32(ks[i]));
    for (Index i = 0; i < (j1 - j0) * ldk; ++i) vf[i] = S(bf16_to_f32(vs[i]));
    const ops::AttnDims d{T, j1 - j0, Hq, Hkv, hd};
    ops::attention_forward<S>(q.v + b * T * ldq, kf, vf, o.v + b * T * ldq, d, scale, qpos0[b],
                              c.kpos0 + j0, window, nullptr, work.data);
  }
  return o;
}

}  // namespace hybrid::ag
