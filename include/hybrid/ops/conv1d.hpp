// Causal depthwise convolution over time, as Mamba-2 (kernel d_conv, over x|B|C) and
// LFM2's ShortConv (kernel L) use it. Weight column 0 multiplies the oldest sample:
//   y_t[c] = b[c] + sum_k w[c, k] * u_{t-K+1+k}[c]
// Samples before t = 0 come from `hist` (the previous call's last K raw inputs, oldest
// first — the decode cache) or are zero.
// Every buffer is a view (u may be a column range of a wider projection). Backward
// accumulates (+=) into every gradient it is given; an empty view skips one.
// Channels are independent, so both directions split the channels across threads.
#pragma once
#include <algorithm>
#include <cstring>

#include "../core/buffer.hpp"
#include "../core/error.hpp"
#include "../core/parallel.hpp"
#include "../core/tensor.hpp"

namespace hybrid::ops {

// u: (T, C) raw input; w: (C, K); bias: (1, C) or empty; hist: (C, K) or empty (zeros).
// y: (T, C), sized by the caller. If hist_out is given it receives the last K raw inputs (C, K), oldest first,
// zero-padded on the left when fewer than K were ever seen; it may alias hist.
// wt: scratch for the taps transposed, K*C values (causal_conv1d_scratch), or nullptr to
// allocate it here.
inline Index causal_conv1d_scratch(Index C, Index K) { return C * K; }

template <class S>
void causal_conv1d_forward(CView<S> uv, CView<S> wv, CView<S> biasv, CView<S> hist, View<S> yv,
                           View<S> hist_out, S* wt_scratch = nullptr) {
  const Index T = uv.rows, C = uv.cols, K = wv.cols;
  const auto u = emap(uv);
  const auto w = emap(wv);
  auto y = emap(yv);
  const bool has_bias = !biasv.empty();
  if (T == 1) {  // a decode step: one pass over each channel's taps and history, no transpose
    HYBRID_CHECK(!hist_out || (hist_out.rows == C && hist_out.cols == K), "causal_conv1d: history is (",
                 hist_out.rows, ", ", hist_out.cols, "), expected (C, K) = (", C, ", ", K, ")");
    const S* u0 = uv.data;
    S* y0 = yv.data;
    if (hist && hist_out && hist.data == hist_out.data && hist.ld == K && hist_out.ld == K &&
        wv.ld == K) {
      // The decode cache updated in place: shift the whole (C, K) block left by one value,
      // write u over each row's last column (which the shift filled with the next row's
      // first value); each output is then its row of taps times its row of the cache.
      S* h = hist_out.data;
      std::memmove(h, h + 1, std::size_t(C * K - 1) * sizeof(S));
      for (Index c = 0; c < C; ++c) h[c * K + K - 1] = u0[c];
      for (Index c = 0; c < C; ++c) {
        const S* wc = wv.data + c * K;
        const S* hc = h + c * K;
        S acc = has_bias ? biasv.data[c] : S(0);  // the order of the general path below
        for (Index k = 0; k < K; ++k) acc += wc[k] * hc[k];
        y0[c] = acc;
      }
      return;
    }
    for (Index c = 0; c < C; ++c) {
      const S* wc = wv.data + c * wv.ld;
      const S* hc = hist ? hist.data + c * hist.ld : nullptr;
      S acc = has_bias ? biasv.data[c] : S(0);  // the order of the general path below
      if (hc)
        for (Index k = 0; k + 1 < K; ++k) acc += wc[k] * hc[k + 1];
      acc += wc[K - 1] * u0[c];
      y0[c] = acc;
      if (hist_out) {  // shift left by one; may alias hist (column k reads k + 1 first)
        S* ho = hist_out.data + c * hist_out.ld;
        for (Index k = 0; k + 1 < K; ++k) ho[k] = hc ? hc[k + 1] : S(0);
        ho[K - 1] = u0[c];
      }
    }
    return;
  }
  // window(t, j) = raw sample at time t - (K-1) + j, j in [0, K)
  auto sample = [&](Index t, Index c) -> S {
    if (t >= 0) return u(t, c);
    return hist ? hist(c, K + t) : S(0);  // t in [-K+1, -1] -> hist column K + t
  };
  Buffer<S> own;
  MatMap<S> wt(scratch_or_own(wt_scratch, K * C, own), K, C);  // (K, C): taps contiguous over channels
  wt = w.transpose();
  par::for_ranges(C, par::threads_for(T * C * K), [&](Index c0, Index c1) {
    const Index n = c1 - c0;
    for (Index t = 0; t < T; ++t) {
      auto yt = y.row(t).segment(c0, n);
      if (has_bias) yt = emap(biasv).row(0).segment(c0, n); else yt.setZero();
      if (t >= K - 1) {
        for (Index k = 0; k < K; ++k)  // every tap inside u: vectorised over channels
          yt.array() += wt.row(k).segment(c0, n).array() * u.row(t - K + 1 + k).segment(c0, n).array();
      } else {
        for (Index c = c0; c < c1; ++c)
          for (Index k = 0; k < K; ++k) y(t, c) += wt(k, c) * sample(t - K + 1 + k, c);
      }
    }
  }, 16);
  if (hist_out) {  // ascending j: column j reads history column T + j > j, not yet written
    HYBRID_CHECK(hist_out.rows == C && hist_out.cols == K, "causal_conv1d: history is (",
                 hist_out.rows, ", ", hist_out.cols, "), expected (C, K) = (", C, ", ", K, ")");
    for (Index j = 0; j < K; ++j) {
      const Index t = T - K + j;
      for (Index c = 0; c < C; ++c) hist_out(c, j) = sample(t, c);
    }
  }
}

// Backward of a call that started from zero history (training): the taps that read
// before t = 0 read zeros, so they carry no gradient. Tap k pairs output t with input
// s = t - o, o = K-1-k, so for each tap the whole sum is one shifted block of rows.
// dy: (T, C). du: (T, C) += sum_k w[:, k] * dy_{s+o}; dw: (C, K); db: (C).
// scratch: causal_conv1d_backward_scratch(C, K) values, or nullptr to allocate them here.
inline Index causal_conv1d_backward_scratch(Index C, Index K) { return 2 * K * C + C; }

template <class S>
void causal_conv1d_backward(CView<S> uv, CView<S> wv, CView<S> dyv, View<S> du, View<S> dw,
                            View<S> db, S* scratch = nullptr) {
  const Index T = uv.rows, C = uv.cols, K = wv.cols;
  const auto u = emap(uv);
  const auto w = emap(wv);
  const auto dy = emap(dyv);
  Buffer<S> own;
  scratch = scratch_or_own(scratch, causal_conv1d_backward_scratch(C, K), own);
  MatMap<S> wt(scratch, K, C);  // taps contiguous over channels
  if (du) wt = w.transpose();
  // Sums over time run row by row (contiguous over channels, vectorised) into accumulators:
  // db (1, C) and the taps' dw transposed, (K, C); each thread owns a range of columns.
  Eigen::Map<RowVec<S>> acc(scratch + K * C, C);
  MatMap<S> dwt_all(scratch + K * C + C, K, C);
  par::for_ranges(C, par::threads_for(T * C * K), [&](Index c0, Index c1) {
    const Index nc = c1 - c0;
    if (db) {
      auto a = acc.segment(c0, nc);
      a.setZero();
      for (Index t = 0; t < T; ++t) a += dy.row(t).segment(c0, nc);
      emap(db).row(0).segment(c0, nc) += a;
    }
    auto dwt = dwt_all.middleCols(c0, nc);
    if (dw) dwt.setZero();
    for (Index k = 0; k < K; ++k) {
      const Index o = K - 1 - k, n = T - o;  // n: output rows whose tap k lands inside u
      if (n <= 0) continue;
      if (du)
        emap(du).topRows(n).middleCols(c0, nc).array() +=
            dy.middleRows(o, n).middleCols(c0, nc).array().rowwise() * wt.row(k).segment(c0, nc).array();
      if (dw)
        for (Index s = 0; s < n; ++s)
          dwt.row(k).array() += dy.row(s + o).segment(c0, nc).array() * u.row(s).segment(c0, nc).array();
    }
    if (dw) emap(dw).middleRows(c0, nc) += dwt.transpose();
  }, 16);
}

}  // namespace hybrid::ops
