// The LM head and its loss fused, by chunks of rows: logits = softcap((x W^T) / divisor),
// then softmax cross-entropy (+ z-loss) against targets, without ever holding the (R, V)
// logits: the forward keeps one log-sum-exp per row, the backward recomputes each chunk's
// logits in the workspace and turns them into that chunk's dlogits there.
// head_loss_backward accumulates (+=) into dx and dW; an empty view skips one.
#pragma once
#include <algorithm>
#include <cmath>

#include "../core/error.hpp"
#include "../core/gemm.hpp"
#include "../core/tensor.hpp"
#include "loss.hpp"

namespace hybrid::ops {

// What follows the head's product, as RuntimeModel's head() applies it.
struct HeadLoss {
  Index chunk = 0;     // rows per chunk; 0: head_loss_chunk's choice
  double divisor = 1;  // logits divided by this (ModelSpec::logits_divisor)
  double softcap = 0;  // > 0: logits -> softcap * tanh(logits / softcap)
  double z_loss = 0;   // + z_loss * lse^2 per scored row
};

// Rows per chunk: the given chunk, or about 2^19 logits (2 MB in float: 512 rows at
// V = 1024), at least 16 rows so that the chunk's GEMMs stay efficient; never above R.
inline Index head_loss_chunk(Index R, Index V, Index chunk = 0) {
  const Index c = chunk > 0 ? chunk : std::max<Index>(16, (Index(1) << 19) / std::max<Index>(V, 1));
  return std::max<Index>(1, std::min(c, R));
}
// Workspace (elements) of the forward and the backward: one chunk of logits (c, V).
inline Index head_loss_scratch(Index R, Index V, const HeadLoss& h) {
  return head_loss_chunk(R, V, h.chunk) * V;
}

namespace detail {
// y (n, V) = softcap((x W^T) / divisor) for x (n, D), W (V, D); the scale and the cap as
// separate passes, in the unfused head's order, so that both give the same values.
template <class S>
void head_logits(CView<S> x, CView<S> W, const HeadLoss& h, View<S> y) {
  blas::gemm<S>(blas::Op::N, blas::Op::T, x.rows, W.rows, W.cols, S(1), x.data, x.ld, W.data, W.ld,
                S(0), y.data, y.ld);
  auto l = emap(y);
  if (h.divisor != 1) l *= S(1 / h.divisor);
  if (h.softcap > 0) softcap_forward<S>(y, S(h.softcap));
}

inline void check_head(Index xr, Index xc, Index wr, Index wc) {
  HYBRID_CHECK(xc == wc && wr > 0, "head_loss: x (", xr, ", ", xc, "), W (", wr, ", ", wc,
               "); expected x (R, D) and W (V, D)");
}
}  // namespace detail

// x: (R, D) final-norm output; W: (V, D); targets: (R), -1 = ignore; ws: head_loss_scratch
// elements. lse: (R) or nullptr, receives every row's log-sum-exp for the backward.
// correct: nullptr, or receives the number of scored rows whose largest logit (the first,
// on ties) is the target's. Returns the SUM over scored rows of lse - logit[target] +
// z_loss * lse^2, in double; the caller divides.
template <class S>
double head_loss_forward(CView<S> x, CView<S> W, const int* targets, const HeadLoss& h, S* lse,
                         S* ws, Index* correct = nullptr) {
  const Index R = x.rows, V = W.rows, c = head_loss_chunk(R, V, h.chunk);
  detail::check_head(x.rows, x.cols, W.rows, W.cols);
  detail::check_targets(targets, R, V);
  const double z = h.z_loss;
  double total = 0;
  Index right = 0;
  for (Index r0 = 0; r0 < R; r0 += c) {
    const Index n = std::min(c, R - r0);
    const View<S> y(ws, n, V, V);  // (n, V) logits of rows [r0, r0 + n)
    detail::head_logits<S>(x.row_range(r0, n), W, h, y);
    const auto l = emap(y);
    const int* tg = targets + r0;
    HYBRID_LOSS_OMP(omp parallel for schedule(static) reduction(+ : total, right) if (n * V > (1 << 16)))
    for (Index i = 0; i < n; ++i) {
      const double s = detail::row_lse(l.row(i));
      if (lse) lse[r0 + i] = S(s);
      if (tg[i] < 0) continue;
      total += s - double(l(i, tg[i])) + z * s * s;
      if (correct) {
        Eigen::Index arg = 0;
        l.row(i).maxCoeff(&arg);
        right += arg == tg[i];
      }
    }
  }
  if (correct) *correct = right;
  return total;
}

// dloss: dL/d(returned sum), e.g. 1/n_scored. lse: (R) from the forward. ws: as forward.
// dx (R, D) += G W and dW (V, D) += G^T x, chunk by chunk, where G = dL/d(x W^T): per
// scored row dloss * ((1 + 2 z_loss lse) softmax(row) - onehot(target)) through the cap
// and the divisor, 0 for an ignored row.
template <class S>
void head_loss_backward(CView<S> x, CView<S> W, const int* targets, const S* lse, double dloss,
                        const HeadLoss& h, View<S> dx, View<S> dW, S* ws) {
  if (!dx && !dW) return;
  const Index R = x.rows, V = W.rows, D = W.cols, c = head_loss_chunk(R, V, h.chunk);
  detail::check_head(x.rows, x.cols, W.rows, W.cols);
  const double z = h.z_loss;
  const S cap = S(h.softcap), inv = S(1 / h.divisor), dl = S(dloss);
  for (Index r0 = 0; r0 < R; r0 += c) {
    const Index n = std::min(c, R - r0);
    const View<S> y(ws, n, V, V);  // (n, V) logits, then their gradient in place
    const CView<S> xc = x.row_range(r0, n);
    detail::head_logits<S>(xc, W, h, y);
    auto g = emap(y);
    const int* tg = targets + r0;
    HYBRID_LOSS_OMP(omp parallel for schedule(static) if (n * V > (1 << 16)))
    for (Index i = 0; i < n; ++i) {
      const int t = tg[i];
      auto row = g.row(i).array();
      if (t < 0) {
        row.setZero();
        continue;
      }
      const S l = lse[r0 + i];
      const S a = S(dloss * (1 + 2 * z * double(l)));
      const S yt = row(t);
      if (cap > 0) {  // d capped / d uncapped = 1 - (y / cap)^2, y the capped logit
        row = a * (row - l).exp() * (S(1) - (row / cap).square());
        row(t) -= dl * (S(1) - (yt / cap) * (yt / cap));
      } else {
        row = a * (row - l).exp();
        row(t) -= dl;
      }
      if (h.divisor != 1) row *= inv;
    }
    if (dx)
      blas::gemm<S>(blas::Op::N, blas::Op::N, n, D, V, S(1), y.data, y.ld, W.data, W.ld, S(1),
                    dx.row_ptr(r0), dx.ld);
    if (dW)
      blas::gemm<S>(blas::Op::T, blas::Op::N, V, D, n, S(1), y.data, y.ld, xc.data, xc.ld, S(1),
                    dW.data, dW.ld);
  }
}

}  // namespace hybrid::ops
