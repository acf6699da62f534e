// Differentiable sequence mixers on tape Vars, for B sequences of T tokens stored as
// (B*T, C) rows: causal depthwise conv, the SSD scan, RoPE and causal attention. Each
// optionally continues from per-sequence decode state (inference only: a tape that
// records refuses state, since training starts every sequence fresh).
#pragma once
#include <vector>

#include "../config.hpp"
#include "../ops/attention.hpp"
#include "../ops/conv1d.hpp"
#include "../ops/rope.hpp"
#include "../ops/ssd.hpp"
#include "../ops/ssd_backward.hpp"
#include "tape.hpp"

namespace hybrid::ag {

// u: (B*T, C); w: (C, K); b: (1, C) or empty. hist: nullptr or B pointers to (C, K)
// conv caches that the call starts from and updates.
template <class S>
Var<S> causal_conv1d(Tape<S>& t, Var<S> u, const Mat<S>& w, const Mat<S>& b, Index B, Index T,
                     Mat<S>* const* hist) {
  HYBRID_CHECK(!(hist && t.recording()), "causal_conv1d: decode state cannot be used while recording");
  Var<S> y = t.var(u.rows, u.cols);
  for (Index s = 0; s < B; ++s) {
    Mat<S>* h = hist ? hist[s] : nullptr;
    ops::causal_conv1d_forward<S>(u.val().middleRows(s * T, T), w, b, h,
                                  y.val().middleRows(s * T, T), h);
  }
  const Var<S> wv = t.param(w), bv = b.size() ? t.param(b) : Var<S>{};
  t.push([u, y, wv, bv, B, T] {
    for (Index s = 0; s < B; ++s)
      ops::causal_conv1d_backward<S>(u.val().middleRows(s * T, T), wv.val(),
                                     y.grad().middleRows(s * T, T),
                                     u.g ? u.g + s * T * u.cols : nullptr, wv.g, bv.g);
  });
  return y;
}

struct SsdConfig {
  int H, P, N, G, chunk;
  ScanPath path;
};

// The Mamba-2 scan with A = -exp(A_log) and D skip. x: (B*T, H*P); dt: (B*T, H);
// Bm, Cm: (B*T, G*N); A_log, D: (1, H). states: nullptr or B pointers to (H, P*N) SSM
// states to start from and update (inference only).
template <class S>
Var<S> ssd(Tape<S>& t, Var<S> x, Var<S> dt, const Mat<S>& A_log, Var<S> Bm, Var<S> Cm,
           const Mat<S>& Dskip, const SsdConfig& c, Index B, Index T, S* const* states) {
  HYBRID_CHECK(!(states && t.recording()), "ssd: decode state cannot be used while recording");
  Var<S> y = t.var(x.rows, x.cols);
  S* A = t.scratch(c.H);
  for (int h = 0; h < c.H; ++h) A[h] = -std::exp(A_log(0, h));
  const ops::SsdDims d{T, c.H, c.P, c.N, c.G};
  const Index ldx = Index(c.H) * c.P, ldb = Index(c.G) * c.N;
  for (Index s = 0; s < B; ++s) {
    S* st = states ? states[s] : nullptr;
    ops::SsdArgs<S> a{x.v + s * T * ldx, dt.v + s * T * c.H, A, Bm.v + s * T * ldb,
                      Cm.v + s * T * ldb, Dskip.data(), st, y.v + s * T * ldx, st};
    ops::ssd_forward<S>(d, c.chunk, c.path, a);
  }
  const Var<S> al = t.param(A_log), dv = t.param(Dskip);
  t.push([x, dt, Bm, Cm, y, al, dv, A, c, B, T] {
    const ops::SsdDims d{T, c.H, c.P, c.N, c.G};
    const Index ldx = Index(c.H) * c.P, ldb = Index(c.G) * c.N;
    // dA accumulates over sequences; A = -exp(A_log) so dA_log = dA * A.
    std::vector<S> dA(c.H, S(0));
    for (Index s = 0; s < B; ++s) {
      ops::SsdArgs<S> a{x.v + s * T * ldx, dt.v + s * T * c.H, A, Bm.v + s * T * ldb,
                        Cm.v + s * T * ldb, dv.v, nullptr, y.v + s * T * ldx, nullptr};
      ops::SsdGrads<S> g{x.g ? x.g + s * T * ldx : nullptr, dt.g ? dt.g + s * T * c.H : nullptr,
                         dA.data(), Bm.g ? Bm.g + s * T * ldb : nullptr,
                         Cm.g ? Cm.g + s * T * ldb : nullptr, dv.g};
      ops::ssd_backward<S>(d, c.chunk, a, y.g + s * T * ldx, g);
    }
    if (al.g)
      for (int h = 0; h < c.H; ++h) al.g[h] += dA[h] * A[h];
  });
  return y;
}

// RoPE on x: (B*T, H*hd); sequence s starts at position pos0[s] (nullptr: all at 0).
template <class S>
Var<S> rope(Tape<S>& t, Var<S> x, int H, int hd, Index B, Index T, const Index* pos0, double base) {
  Var<S> y = t.var(x.rows, x.cols);
  y.val() = x.val();
  Index* p = t.scratch_index(B);
  for (Index s = 0; s < B; ++s) {
    p[s] = pos0 ? pos0[s] : 0;
    ops::rope_forward<S>(y.val().middleRows(s * T, T), H, hd, p[s], base);
  }
  t.push([x, y, H, hd, B, T, p, base] {
    if (!x.g) return;
    for (Index s = 0; s < B; ++s)  // y's gradient is consumed here only: rotate it in place
      ops::rope_backward<S>(y.grad().middleRows(s * T, T), H, hd, p[s], base);
    x.grad() += y.grad();
  });
  return y;
}

// Causal (optionally windowed) attention of B fresh sequences. q: (B*T, Hq*hd);
// k, v: (B*T, Hkv*hd).
template <class S>
Var<S> attention(Tape<S>& t, Var<S> q, Var<S> k, Var<S> v, int Hq, int Hkv, int hd, Index B,
                 Index T, S scale, int window) {
  Var<S> o = t.var(q.rows, q.cols);
  S* lse = t.recording() ? t.scratch(B * T * Hq) : nullptr;
  const ops::AttnDims d{T, T, Hq, Hkv, hd};
  const Index ldq = Index(Hq) * hd, ldk = Index(Hkv) * hd;
  for (Index s = 0; s < B; ++s)
    ops::attention_forward<S>(q.v + s * T * ldq, k.v + s * T * ldk, v.v + s * T * ldk,
                              o.v + s * T * ldq, d, scale, 0, 0, window,
                              lse ? lse + s * T * Hq : nullptr);
  t.push([q, k, v, o, lse, d, B, T, scale, window, ldq, ldk, Hq] {
    for (Index s = 0; s < B; ++s)
      ops::attention_backward<S>(q.v + s * T * ldq, k.v + s * T * ldk, v.v + s * T * ldk,
                                 o.v + s * T * ldq, lse + s * T * Hq, o.g + s * T * ldq,
                                 q.g ? q.g + s * T * ldq : nullptr, k.g ? k.g + s * T * ldk : nullptr,
                                 v.g ? v.g + s * T * ldk : nullptr, d, scale, 0, 0, window);
  });
  return o;
}

}  // namespace hybrid::ag
