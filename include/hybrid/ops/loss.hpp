// Losses: softmax cross-entropy over rows of logits with an optional z-loss (PaLM: z * lse^2
// keeps the log-normaliser near 0), Gemma-style logit soft-capping, and the mean squared
// error of two activations (feature distillation). cross_entropy_backward and mse_backward
// accumulate (+=) into their gradients (empty skips one); softcap_backward is the exception:
// it rescales a gradient in place, as the chain rule's next factor.
#pragma once
#include <algorithm>
#include <cmath>

#include "../core/error.hpp"
#include "../core/tensor.hpp"

#if defined(_OPENMP)
#define HYBRID_LOSS_OMP(directive) _Pragma(#directive)
#else
#define HYBRID_LOSS_OMP(directive)
#endif

namespace hybrid::ops {

namespace detail {
// Target -1 marks a row to ignore (padding, a prompt we do not score).
inline void check_targets(const int* targets, Index R, Index V) {
  for (Index r = 0; r < R; ++r)
    HYBRID_CHECK(targets[r] >= -1 && targets[r] < V, "cross_entropy: target id ", targets[r],
                 " at row ", r, " is outside the vocabulary [0, ", V, ") (-1 marks ignore)");
}
// log(sum(exp(row))) with the max subtracted and the sum in double.
template <class Row>
double row_lse(const Row& x) {
  const double m = double(x.maxCoeff());
  double s = 0;
  for (Index j = 0; j < x.size(); ++j) s += std::exp(double(x(j)) - m);
  return m + std::log(s);
}
}  // namespace detail

// logits: (R, V); targets: (R), -1 = ignore. lse: (R) or nullptr, receives every row's
// log-sum-exp for the backward. Returns the SUM over scored rows of
// lse - logit[target] + z_loss * lse^2, accumulated in double; the caller divides.
template <class S>
double cross_entropy_forward(CView<S> lv, const int* targets, S* lse, double z_loss = 0) {
  const Index R = lv.rows, V = lv.cols;
  const auto logits = emap(lv);
  detail::check_targets(targets, R, V);  // throws, so outside the parallel region
  double total = 0;
  HYBRID_LOSS_OMP(omp parallel for schedule(static) reduction(+ : total) if (R * V > (1 << 16)))
  for (Index r = 0; r < R; ++r) {
    const double l = detail::row_lse(logits.row(r));
    if (lse) lse[r] = S(l);
    if (targets[r] >= 0) total += l - double(logits(r, targets[r])) + z_loss * l * l;
  }
  return total;
}

// dloss: dL/d(returned sum), e.g. 1/n_scored. lse: (R) from the forward, or nullptr to
// recompute. dlogits (R, V) += dloss * ((1 + 2 z_loss lse) softmax(row) - onehot(target)).
template <class S>
void cross_entropy_backward(CView<S> lv, const int* targets, const S* lse, double dloss,
                            double z_loss, View<S> dlogits) {
  if (!dlogits) return;
  const Index R = lv.rows, V = lv.cols;
  const auto logits = emap(lv);
  detail::check_targets(targets, R, V);
  auto d = emap(dlogits);
  HYBRID_LOSS_OMP(omp parallel for schedule(static) if (R * V > (1 << 16)))
  for (Index r = 0; r < R; ++r) {
    const int t = targets[r];
    if (t < 0) continue;
    const S l = lse ? lse[r] : S(detail::row_lse(logits.row(r)));
    const S a = S(dloss * (1 + 2 * z_loss * double(l)));
    d.row(r).array() += a * (logits.row(r).array() - l).exp();
    d(r, t) -= S(dloss);
  }
}

// logits: (R, V), in place: x -> cap * tanh(x / cap).
template <class S>
void softcap_forward(View<S> logits, S cap) {
  auto l = emap(logits);
  l = l.unaryExpr([cap](S v) { return cap * std::tanh(v / cap); });
}

// capped: (R, V), softcap_forward's output y. dlogits: (R, V), in place: dL/dy -> dL/dx,
// multiplying by dy/dx = 1 - (y / cap)^2 (no tanh recomputed).
template <class S>
void softcap_backward(CView<S> capped, S cap, View<S> dlogits) {
  emap(dlogits).array() *= S(1) - (emap(capped).array() / cap).square();
}

// x, y: (R, C), strided or not. Returns the SUM over every entry of (x - y)^2, accumulated
// in double; the caller divides (mean: by R * C).
template <class S>
double mse_forward(CView<S> x, CView<S> y) {
  HYBRID_CHECK(x.rows == y.rows && x.cols == y.cols, "mse: x is (", x.rows, ", ", x.cols, "), y is (", y.rows,
               ", ", y.cols, "); expected the same shape");
  const Index R = x.rows, C = x.cols;
  double total = 0;
  HYBRID_LOSS_OMP(omp parallel for schedule(static) reduction(+ : total) if (R * C > (1 << 16)))
  for (Index r = 0; r < R; ++r) {
    const S* a = x.data + r * x.ld;
    const S* b = y.data + r * y.ld;
    double s = 0;
    for (Index c = 0; c < C; ++c) {
      const double d = double(a[c]) - double(b[c]);
      s += d * d;
    }
    total += s;
  }
  return total;
}

// dloss: dL/d(returned sum), e.g. 1/(R*C). dx += 2 dloss (x - y); dy -= 2 dloss (x - y)
// (backward accumulates; an empty gradient is skipped).
template <class S>
void mse_backward(CView<S> x, CView<S> y, double dloss, View<S> dx, View<S> dy) {
  const Index R = x.rows, C = x.cols;
  const S a = S(2 * dloss);
  HYBRID_LOSS_OMP(omp parallel for schedule(static) if (R * C > (1 << 16)))
  for (Index r = 0; r < R; ++r) {
    const S* xr = x.data + r * x.ld;
    const S* yr = y.data + r * y.ld;
    S* gx = dx ? dx.data + r * dx.ld : nullptr;
    S* gy = dy ? dy.data + r * dy.ld : nullptr;
    for (Index c = 0; c < C; ++c) {
      const S d = a * (xr[c] - yr[c]);
      if (gx) gx[c] += d;
      if (gy) gy[c] -= d;
    }
  }
}

}  // namespace hybrid::ops
