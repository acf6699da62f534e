// Differentiable sequence mixers on tape Vars, for B sequences of T tokens stored as
// (B*T, C) rows: causal depthwise conv, the SSD scan, RoPE and causal attention. Each
// optionally continues from per-sequence decode state (inference only: a tape that
// records refuses state, since training starts every sequence fresh), or runs over packed
// documents (Segments: each document a fresh sequence of its own).
#pragma once
#include <algorithm>
#include <cstdint>
#include <span>
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

// Packed documents: the (R, C) rows cut into n segments, segment i = rows [start[i],
// start[i+1]) (start[0] = 0, start[n] = R, strictly increasing; every sequence start b*T is
// a segment start). Each sequence mixer runs on every segment as on a fresh sequence of
// that length: conv and SSD from zero state, attention causal within it, RoPE from position
// 0; nothing crosses a segment start. A null Segments* means the B sequences of T rows.
struct Segments {
  const Index* start = nullptr;  // (n + 1) row offsets
  Index n = 0;
  Index max_len = 0;             // the longest segment, which sizes the workspaces

  Index row0(Index i) const { return start[i]; }
  Index len(Index i) const { return start[i + 1] - start[i]; }
};

// The segments of B sequences of T tokens with documents starting at the flat token
// indices doc_starts (into the B*T tokens; sorted, strictly increasing, each in [0, B*T);
// the sequence starts b*T are segment starts whether listed or not). On the tape's scratch
// (the table and the struct), so it lives as long as the nodes that keep a pointer to it.
template <class S>
const Segments* make_segments(Tape<S>& t, std::span<const Index> doc_starts, Index B, Index T) {
  const Index R = B * T;
  for (std::size_t i = 0; i < doc_starts.size(); ++i) {
    HYBRID_CHECK(doc_starts[i] >= 0 && doc_starts[i] < R, "packed documents: document start ",
                 doc_starts[i], " (entry ", i, ") is outside the batch's B*T = ", R,
                 " token positions [0, ", R, ")");
    HYBRID_CHECK(i == 0 || doc_starts[i] > doc_starts[i - 1], "packed documents: document "
                 "starts must be strictly increasing, got ", doc_starts[i - 1], " then ",
                 doc_starts[i], " (entries ", i - 1, " and ", i, ")");
  }
  // Merge the sequence starts into the document starts.
  Index n = 0;
  {
    std::size_t j = 0;
    for (Index b = 0; b < B; ++b) {
      for (; j < doc_starts.size() && doc_starts[j] < (b + 1) * T; ++j) n += doc_starts[j] != b * T;
      ++n;
    }
  }
  Index* st = t.scratch_index(n + 1);
  Index k = 0;
  std::size_t j = 0;
  for (Index b = 0; b < B; ++b) {
    st[k++] = b * T;
    for (; j < doc_starts.size() && doc_starts[j] < (b + 1) * T; ++j)
      if (doc_starts[j] != b * T) st[k++] = doc_starts[j];
  }
  st[n] = R;
  Segments* s = t.template scratch_as<Segments>(1);
  *s = Segments{st, n, 0};
  for (Index i = 0; i < n; ++i) s->max_len = std::max(s->max_len, s->len(i));
  return s;
}

namespace detail {
// Segment i of either form: rows [r0, r0 + len).
inline Index seg_count(const Segments* seg, Index B) { return seg ? seg->n : B; }
inline Index seg_row0(const Segments* seg, Index T, Index i) { return seg ? seg->row0(i) : i * T; }
inline Index seg_len(const Segments* seg, Index T, Index i) { return seg ? seg->len(i) : T; }
}  // namespace detail

// u: (B*T, C), may be a column range; w: (C, K); b: (1, C) or absent. hist: nullptr or B
// pointers to (C, K) conv caches that the call starts from and updates. seg: packed
// documents (each starts from zero history), or nullptr.
template <class S>
Var<S> causal_conv1d(Tape<S>& t, Var<S> u, const Param& w, const Param& b, Index B, Index T,
                     S* const* hist, const Segments* seg = nullptr) {
  HYBRID_CHECK(!(hist && t.recording()), "causal_conv1d: decode state cannot be used while recording");
  HYBRID_CHECK(!(hist && seg), "causal_conv1d: packed documents run from zero state, not from decode state");
  const Var<S> wv = t.param(w), bv = t.param(b);
  const Index C = u.cols, K = w.cols;
  Var<S> y = t.var(u.rows, u.cols);
  if (Backend<S>* d = t.backend()) {
    HYBRID_CHECK(!hist, "causal_conv1d: decode state is host memory and this tape runs on ", d->name());
    for (Index s = 0; s < detail::seg_count(seg, B); ++s) {
      const Index r0 = detail::seg_row0(seg, T, s), n = detail::seg_len(seg, T, s);
      const View<S> h = hist ? View<S>(hist[s], C, K) : View<S>();
      d->causal_conv1d(u.row_range(r0, n).value(), wv.value(), bv.value(), h, y.row_range(r0, n).value(), h);
    }
    return y;
  }
  {  // the workspace is given back before anything else is taken from the tape
    const auto wt = t.workspace(ops::causal_conv1d_scratch(C, K));
    for (Index s = 0; s < detail::seg_count(seg, B); ++s) {
      const Index r0 = detail::seg_row0(seg, T, s), n = detail::seg_len(seg, T, s);
      const View<S> h = hist ? View<S>(hist[s], C, K) : View<S>();
      ops::causal_conv1d_forward<S>(u.row_range(r0, n).value(), wv.value(), bv.value(), h,
                                    y.row_range(r0, n).value(), h, wt.data);
    }
  }
  Tape<S>* tp = &t;
  t.push(OpId::CausalConv1d, [tp, u, y, wv, bv, B, T, C, K, seg] {
    const auto work = tp->workspace(ops::causal_conv1d_backward_scratch(C, K));
    for (Index s = 0; s < detail::seg_count(seg, B); ++s) {
      const Index r0 = detail::seg_row0(seg, T, s), n = detail::seg_len(seg, T, s);
      ops::causal_conv1d_backward<S>(u.row_range(r0, n).value(), wv.value(),
                                     y.row_range(r0, n).gradient(),
                                     u.row_range(r0, n).gradient(), wv.gradient(), bv.gradient(),
                                     work.data);
    }
  });
  return y;
}

struct SsdConfig {
  int H, P, N, G, chunk;  // chunk 0: the device's rule (ops::ssd_chunk on the host)
  ScanPath path;
};

// The Mamba-2 scan with A = -exp(A_log) and D skip. x: (B*T, H*P); dt: (B*T, H)
// contiguous; Bm, Cm: (B*T, G*N) with one row stride (column ranges of one tensor); A_log,
// D: (1, H). states: nullptr or B pointers to (H, P*N) SSM states to start from and update
// (inference only). seg: packed documents (each scanned from a zero state; any length, the
// chunked path's last chunk short), or nullptr.
template <class S>
Var<S> ssd(Tape<S>& t, Var<S> x, Var<S> dt, const Param& A_log, Var<S> Bm, Var<S> Cm,
           const Param& Dskip, const SsdConfig& c, Index B, Index T, S* const* states,
           const Segments* seg = nullptr) {
  HYBRID_CHECK(!(states && t.recording()), "ssd: decode state cannot be used while recording");
  HYBRID_CHECK(!(states && seg), "ssd: packed documents run from zero state, not from decode state");
  HYBRID_CHECK(dt.contiguous() && Bm.ld == Cm.ld, "ssd: dt must be contiguous and B, C share a row stride");
  const Var<S> al = t.param(A_log), dv = t.param(Dskip);
  Var<S> y = t.var(x.rows, x.cols);
  const Index ldy = Index(c.H) * c.P, nseg = detail::seg_count(seg, B);
  auto dims = [c](Index len) { return ops::SsdDims{len, c.H, c.P, c.N, c.G}; };
  if (Backend<S>* d = t.backend()) {
    HYBRID_CHECK(!states, "ssd: decode state is host memory and this tape runs on ", d->name());
    const Var<S> A = t.var(1, c.H);
    d->neg_exp(al.value(), A.value());
    for (Index s = 0; s < nseg; ++s) {
      const Index r0 = detail::seg_row0(seg, T, s);
      S* st = states ? states[s] : nullptr;
      ops::SsdArgs<S> a{x.v + r0 * x.ld, dt.v + r0 * c.H, A.v, Bm.v + r0 * Bm.ld,
                        Cm.v + r0 * Cm.ld, dv.v, st, y.v + r0 * ldy, st, x.ld, Bm.ld};
      d->ssd(dims(detail::seg_len(seg, T, s)), c.chunk, c.path, a);
    }
    return y;
  }
  const int Q = ops::ssd_chunk(c.chunk);
  S* A = t.scratch(c.H);
  S* dA = t.recording() ? t.scratch(c.H) : nullptr;  // the backward's sum over sequences
  for (int h = 0; h < c.H; ++h) A[h] = -std::exp(al.v[h]);
  {  // the workspace is given back before anything else is taken from the tape
    Index need = 0;  // segments of different lengths may resolve to different paths
    for (Index s = 0; s < nseg; ++s)
      need = std::max(need, ops::ssd_forward_scratch(dims(detail::seg_len(seg, T, s)), Q,
                                                     c.path, sizeof(S), par::threads()));
    const auto work = t.workspace(need);
    for (Index s = 0; s < nseg; ++s) {
      const Index r0 = detail::seg_row0(seg, T, s);
      S* st = states ? states[s] : nullptr;
      ops::SsdArgs<S> a{x.v + r0 * x.ld, dt.v + r0 * c.H, A, Bm.v + r0 * Bm.ld,
                        Cm.v + r0 * Cm.ld, dv.v, st, y.v + r0 * ldy, st, x.ld, Bm.ld};
      ops::ssd_forward<S>(dims(detail::seg_len(seg, T, s)), Q, c.path, a, work.data);
    }
  }
  Tape<S>* tp = &t;
  t.push(OpId::Ssd, [tp, x, dt, Bm, Cm, y, al, dv, A, dA, c, Q, B, T, ldy, nseg, seg, dims] {
    Index need = 0;
    for (Index s = 0; s < nseg; ++s)
      need = std::max(need, ops::ssd_backward_scratch(dims(detail::seg_len(seg, T, s)), Q));
    const auto work = tp->workspace(need);
    // dA accumulates over sequences; A = -exp(A_log) so dA_log = dA * A.
    std::fill(dA, dA + c.H, S(0));
    for (Index s = 0; s < nseg; ++s) {
      const Index r0 = detail::seg_row0(seg, T, s);
      ops::SsdArgs<S> a{x.v + r0 * x.ld, dt.v + r0 * c.H, A, Bm.v + r0 * Bm.ld,
                        Cm.v + r0 * Cm.ld, dv.v, nullptr, y.v + r0 * ldy, nullptr, x.ld, Bm.ld};
      ops::SsdGrads<S> g{x.g ? x.g + r0 * x.ld : nullptr, dt.g ? dt.g + r0 * c.H : nullptr,
                         dA, Bm.g ? Bm.g + r0 * Bm.ld : nullptr,
                         Cm.g ? Cm.g + r0 * Cm.ld : nullptr, dv.g};
      ops::ssd_backward<S>(dims(detail::seg_len(seg, T, s)), Q, a, y.g + r0 * ldy, g,
                           work.data);
    }
    if (al.g)
      for (int h = 0; h < c.H; ++h) al.g[h] += dA[h] * A[h];
  });
  return y;
}

// RoPE on x: (B*T, H*P); sequence s starts at position pos0[s] (nullptr: all at 0). rot:
// the rotated dims of each head (0 = all P; fewer is partial RoPE, ops/rope.hpp). seg:
// packed documents (positions restart at 0 in each; pos0 must then be nullptr), or nullptr.
template <class S>
Var<S> rope(Tape<S>& t, Var<S> x, int H, int P, Index B, Index T, const Index* pos0, double base,
            int rot = 0, const Segments* seg = nullptr) {
  HYBRID_CHECK(!(pos0 && seg), "rope: packed documents start at position 0, not at given positions");
  Var<S> y = t.var(x.rows, x.cols);
  const Index nseg = detail::seg_count(seg, B);
  if (Backend<S>* d = t.backend()) {
    d->copy(x.value(), y.value());
    for (Index s = 0; s < nseg; ++s)
      d->rope(y.row_range(detail::seg_row0(seg, T, s), detail::seg_len(seg, T, s)).value(), H, P,
              pos0 ? pos0[s] : 0, base, rot);
    return y;
  }
  ops::copy<S>(x.value(), y.value());
  Index* p = t.scratch_index(nseg);
  for (Index s = 0; s < nseg; ++s) {
    p[s] = pos0 ? pos0[s] : 0;
    ops::rope_forward<S>(y.row_range(detail::seg_row0(seg, T, s), detail::seg_len(seg, T, s)).value(),
                         H, P, p[s], base, rot);
  }
  t.push(OpId::Rope, [x, y, H, P, T, nseg, seg, p, base, rot] {
    if (!x.g) return;
    for (Index s = 0; s < nseg; ++s)  // y's gradient is consumed here only: rotate it in place
      ops::rope_backward<S>(
          y.row_range(detail::seg_row0(seg, T, s), detail::seg_len(seg, T, s)).gradient(), H, P,
          p[s], base, rot);
    ops::add_backward<S>(y.gradient(), S(1), x.gradient(), View<S>());
  });
  return y;
}

// Causal (optionally windowed) attention of B fresh sequences. q: (B*T, H*P);
// k, v: (B*T, G*P); all contiguous. seg: packed documents (a block-diagonal causal mask:
// each attends within itself only, the window too), or nullptr.
template <class S>
Var<S> attention(Tape<S>& t, Var<S> q, Var<S> k, Var<S> v, int H, int G, int P, Index B,
                 Index T, S scale, int window, const Segments* seg = nullptr) {
  HYBRID_CHECK(q.contiguous() && k.contiguous() && v.contiguous(),
               "attention: q, k and v must be contiguous");
  Var<S> o = t.var(q.rows, q.cols);
  const Index L = seg ? seg->max_len : T, nseg = detail::seg_count(seg, B);
  auto dims = [H, G, P](Index len) { return ops::AttnDims{len, len, H, G, P}; };
  const Index ldq = Index(H) * P, ldk = Index(G) * P;
  if (Backend<S>* d = t.backend()) {
    for (Index s = 0; s < nseg; ++s) {
      const Index r0 = detail::seg_row0(seg, T, s);
      d->attention(q.v + r0 * ldq, k.v + r0 * ldk, v.v + r0 * ldk, o.v + r0 * ldq,
                   dims(detail::seg_len(seg, T, s)), scale, 0, 0, window);
    }
    return o;
  }
  S* lse = t.recording() ? t.scratch(B * T * H) : nullptr;
  {  // the workspace is given back before anything else is taken from the tape
    const auto scores = t.workspace(ops::attention_scratch(dims(L), par::threads()));
    for (Index s = 0; s < nseg; ++s) {
      const Index r0 = detail::seg_row0(seg, T, s);
      ops::attention_forward<S>(q.v + r0 * ldq, k.v + r0 * ldk, v.v + r0 * ldk, o.v + r0 * ldq,
                                dims(detail::seg_len(seg, T, s)), scale, 0, 0, window,
                                lse ? lse + r0 * H : nullptr, scores.data);
    }
  }
  Tape<S>* tp = &t;
  t.push(OpId::Attention, [tp, q, k, v, o, lse, dims, L, nseg, seg, T, scale, window, ldq, ldk, H] {
    const auto work = tp->workspace(ops::attention_backward_scratch(dims(L), par::threads()));
    for (Index s = 0; s < nseg; ++s) {
      const Index r0 = detail::seg_row0(seg, T, s);
      ops::attention_backward<S>(q.v + r0 * ldq, k.v + r0 * ldk, v.v + r0 * ldk, o.v + r0 * ldq,
                                 lse + r0 * H, o.g + r0 * ldq, q.g ? q.g + r0 * ldq : nullptr,
                                 k.g ? k.g + r0 * ldk : nullptr, v.g ? v.g + r0 * ldk : nullptr,
                                 dims(detail::seg_len(seg, T, s)), scale, 0, 0, window, work.data);
    }
  });
  return o;
}

// Attention of B decoding sequences over their KV caches: q: (B*T, H*P) contiguous,
// queries of sequence b at positions qpos0[b] + [0, T); kv[b]: the cache's keys and values
// (in S or bf16, strided as the span says) from position kv[b].kpos0; cap: the largest cache
// capacity, which sizes the workspace (a pre-sized cache keeps it constant from step to
// step). T == 1 runs the decode kernel (split-K over long caches); T > 1 the blocked
// attention_forward on the cache's strides, over a bf16 cache after widening the keys the
// chunk can see into the workspace (2 * cap * G*P values, row-major). Inference only (no node).
template <class S>
Var<S> attention_cached(Tape<S>& t, Var<S> q, int H, int G, int P, Index B, Index T,
                        const ops::KvSpan<S>* kv, const Index* qpos0, Index cap, S scale,
                        int window) {
  HYBRID_CHECK(!t.recording(), "attention: decode state cannot be used while recording");
  HYBRID_CHECK(q.contiguous(), "attention: q must be contiguous");
  HYBRID_CHECK(!t.backend(), "attention: the KV caches of decode state are host memory and this tape "
               "runs on ", t.backend() ? t.backend()->name() : "", "; continue sequences on a host tape");
  Var<S> o = t.var(q.rows, q.cols);
  if (T == 1) {
    const ops::DecodeDims d{B, H, G, P};
    const auto work = t.workspace(ops::attention_decode_scratch(d, par::threads()));
    ops::attention_decode<S>(d, q.v, kv, qpos0, o.v, scale, window, work.data);
    return o;
  }
  const Index ldq = Index(H) * P, ldk = Index(G) * P;
  bool any_bf16 = false;
  for (Index b = 0; b < B; ++b) any_bf16 = any_bf16 || kv[b].bf16();
  const Index nscores = ops::attention_scratch(ops::AttnDims{T, cap, H, G, P}, par::threads());
  const auto work = t.workspace(nscores + (any_bf16 ? 2 * cap * ldk : 0));
  for (Index b = 0; b < B; ++b) {
    const ops::KvSpan<S>& c = kv[b];
    if (!c.bf16()) {
      const ops::AttnDims d{T, c.len, H, G, P, c.row_stride(G, P), c.head_stride(P)};
      ops::attention_forward<S>(q.v + b * T * ldq, c.k, c.v, o.v + b * T * ldq, d, scale,
                                qpos0[b], c.kpos0, window, nullptr, work.data);
      continue;
    }
    Index j0, j1;  // keys some query of the chunk sees, widened to S
    ops::detail::attn_key_range(ops::AttnDims{T, c.len, H, G, P}, 0, T, qpos0[b], c.kpos0,
                                window, j0, j1);
    j1 = std::max(j1, j0);
    S* kf = work.data + nscores;  // (j1 - j0, G*P)
    S* vf = kf + cap * ldk;       // (j1 - j0, G*P)
    const Index ld = c.row_stride(G, P), hs = c.head_stride(P);
    for (int g = 0; g < G; ++g)
      for (Index j = j0; j < j1; ++j) {
        const std::uint16_t* ks = c.kh + Index(g) * hs + j * ld;
        const std::uint16_t* vs = c.vh + Index(g) * hs + j * ld;
        S* kd = kf + (j - j0) * ldk + Index(g) * P;
        S* vd = vf + (j - j0) * ldk + Index(g) * P;
        for (int e = 0; e < P; ++e) kd[e] = S(bf16_to_f32(ks[e]));
        for (int e = 0; e < P; ++e) vd[e] = S(bf16_to_f32(vs[e]));
      }
    const ops::AttnDims d{T, j1 - j0, H, G, P};
    ops::attention_forward<S>(q.v + b * T * ldq, kf, vf, o.v + b * T * ldq, d, scale, qpos0[b],
                              c.kpos0 + j0, window, nullptr, work.data);
  }
  return o;
}

}  // namespace hybrid::ag
