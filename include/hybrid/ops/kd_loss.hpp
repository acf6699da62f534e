// Knowledge distillation fused with the LM head, by chunks of rows as ops/head_loss.hpp:
// per scored row (target not -1), with z = softcap((x W^T) / divisor) the student's logits,
//   alpha * (lse(z) - z[target] + z_loss * lse(z)^2)  +  beta * tau^2 * KL(p || q),
// q = softmax(z / tau), p the teacher's distribution at temperature tau: softmax(u / tau) of
// full teacher logits u (R, V), or, from a teacher's top-k (ids + log-probs at tau), the
// teacher's probability renormalised over those k ids (the truncated KL, below). The (R, V)
// student logits are never held: one chunk of them at a time, recomputed in the backward.
// kd_loss_backward accumulates (+=) into dx and dW; an empty view skips one.
//
// Truncated KL (top-k): with S the k ids and p~_j = exp(lp_j) / sum_{m in S} exp(lp_m),
//   KL~ = sum_{j in S} p~_j (log p~_j - log q_j),   q the student's softmax over all V.
// It is the KL from p~ (supported on S) to q: >= 0, and its gradient in z/tau is q - p~.
// With P = sum_{j in S} p_j the teacher's mass on S and eps = 1 - P, the full KL is
//   KL = P (KL~ + log P) + sum_{j not in S} p_j log(p_j / q_j),
// hence |KL - KL~| <= eps * (KL~ + 1 + max_{j not in S} |log p_j - log q_j|)
// (kd_truncation_bound computes it; -P log P <= eps). When the teacher is the student,
// KL~ = -log P, not 0: the student is pulled to put all its mass on the teacher's top k.
#pragma once
#include <algorithm>
#include <cmath>
#include <limits>

#include "../core/error.hpp"
#include "../core/gemm.hpp"
#include "../core/tensor.hpp"
#include "head_loss.hpp"

namespace hybrid::ops {

// The weights of the two terms and the temperature.
struct KdLoss {
  double alpha = 1;  // cross-entropy against the targets
  double beta = 1;   // tau^2 * KL(teacher || student)
  double tau = 1;    // temperature of both softmaxes in the KL
};

// The teacher of R rows: full logits, or top-k ids and log-probs (not both).
template <class S>
struct KdTeacher {
  CView<S> logits;           // (R, V) teacher logits (before the temperature), or empty
  const int* ids = nullptr;  // (R, k) row-major: the teacher's top-k ids of each row
  CView<S> logp;             // (R, k) the teacher's log-probs of those ids at temperature tau
  bool topk() const { return ids != nullptr; }
};

// Sums over the scored rows of the two terms (unweighted): cross-entropy (+ z-loss) and KL.
struct KdSums {
  double ce = 0, kl = 0;
};

// Workspace (elements) of the forward and the backward: two chunks of logits (c, V).
inline Index kd_loss_scratch(Index R, Index V, const HeadLoss& h) {
  return 2 * head_loss_chunk(R, V, h.chunk) * V;
}

namespace detail {
template <class S>
void check_kd(Index R, Index V, const KdLoss& kd, const KdTeacher<S>& t) {
  HYBRID_CHECK(std::isfinite(kd.tau) && kd.tau > 0, "kd_loss: temperature tau = ", kd.tau,
               "; expected a finite tau > 0");
  HYBRID_CHECK(std::isfinite(kd.alpha) && std::isfinite(kd.beta) && kd.alpha >= 0 && kd.beta >= 0,
               "kd_loss: alpha = ", kd.alpha, ", beta = ", kd.beta, "; expected finite weights >= 0");
  if (t.topk()) {
    HYBRID_CHECK(!t.logits, "kd_loss: the teacher is given as full logits and as top-k; give one");
    HYBRID_CHECK(t.logp.rows == R && t.logp.cols > 0 && t.logp.cols <= V, "kd_loss: teacher top-k log-probs (",
                 t.logp.rows, ", ", t.logp.cols, "); expected (R, k) = (", R, ", k) with 1 <= k <= V = ", V);
    const Index k = t.logp.cols;
    for (Index i = 0; i < R * k; ++i)
      HYBRID_CHECK(t.ids[i] >= 0 && t.ids[i] < V, "kd_loss: teacher top-k id ", t.ids[i], " at row ", i / k,
                   " is outside the vocabulary [0, ", V, ")");
  } else {
    HYBRID_CHECK(t.logits.rows == R && t.logits.cols == V, "kd_loss: teacher logits (", t.logits.rows, ", ",
                 t.logits.cols, "); expected (R, V) = (", R, ", ", V, ") (the student's vocabulary)");
  }
}

// log-sum-exp of a[0..n) * s in double (s = 1/tau), the max subtracted.
template <class Get>
double scaled_lse(Index n, Get&& a) {
  double m = -std::numeric_limits<double>::infinity();
  for (Index j = 0; j < n; ++j) m = std::max(m, a(j));
  if (!std::isfinite(m)) return m;
  double s = 0;
  for (Index j = 0; j < n; ++j) s += std::exp(a(j) - m);
  return m + std::log(s);
}

// The teacher's row r at temperature tau: calls f(j, p_j, log p_j) for every id j of its
// support (all V ids, or the k top ids with p renormalised over them).
template <class S, class F>
void teacher_row(const KdTeacher<S>& t, Index r, double itau, F&& f) {
  if (t.topk()) {
    const Index k = t.logp.cols;
    const S* lp = t.logp.row_ptr(r);
    const double m = scaled_lse(k, [&](Index j) { return double(lp[j]); });
    for (Index j = 0; j < k; ++j) {
      const double l = double(lp[j]) - m;
      f(Index(t.ids[r * k + j]), std::exp(l), l);
    }
  } else {
    const S* u = t.logits.row_ptr(r);
    const Index V = t.logits.cols;
    const double m = scaled_lse(V, [&](Index j) { return double(u[j]) * itau; });
    for (Index j = 0; j < V; ++j) {
      const double l = double(u[j]) * itau - m;
      f(j, std::exp(l), l);
    }
  }
}
}  // namespace detail

// x: (R, D) final-norm output; W: (V, D); targets: (R), -1 = not scored (by either term);
// teacher: R rows; ws: kd_loss_scratch elements. stats: (R, 2) or nullptr, receives each
// row's lse(z) and lse(z / tau) for the backward. Returns the sums over scored rows of the
// cross-entropy (+ z-loss) and of the KL (exact, or truncated for a top-k teacher), in
// double; the loss is (alpha * ce + beta * tau^2 * kl) / n_scored, formed by the caller.
template <class S>
KdSums kd_loss_forward(CView<S> x, CView<S> W, const int* targets, const HeadLoss& h, const KdLoss& kd,
                       const KdTeacher<S>& teacher, S* stats, S* ws) {
  const Index R = x.rows, V = W.rows, c = head_loss_chunk(R, V, h.chunk);
  detail::check_head(x.rows, x.cols, W.rows, W.cols);
  detail::check_targets(targets, R, V);
  detail::check_kd(R, V, kd, teacher);
  const double z = h.z_loss, itau = 1 / kd.tau;
  double ce = 0, kl = 0;
  for (Index r0 = 0; r0 < R; r0 += c) {
    const Index n = std::min(c, R - r0);
    const View<S> y(ws, n, V, V);  // (n, V) student logits of rows [r0, r0 + n)
    detail::head_logits<S>(x.row_range(r0, n), W, h, y);
    const auto l = emap(y);
    HYBRID_LOSS_OMP(omp parallel for schedule(static) reduction(+ : ce, kl) if (n * V > (1 << 16)))
    for (Index i = 0; i < n; ++i) {
      const S* yr = y.row_ptr(i);
      const double s = detail::row_lse(l.row(i));
      const double st = detail::scaled_lse(V, [&](Index j) { return double(yr[j]) * itau; });
      if (stats) stats[2 * (r0 + i)] = S(s), stats[2 * (r0 + i) + 1] = S(st);
      const int tg = targets[r0 + i];
      if (tg < 0) continue;
      ce += s - double(yr[tg]) + z * s * s;
      double row = 0;
      detail::teacher_row(teacher, r0 + i, itau, [&](Index j, double p, double lp) {
        if (p > 0) row += p * (lp - (double(yr[j]) * itau - st));
      });
      kl += row;
    }
  }
  return {ce, kl};
}

// dloss: dL/d(loss per scored row sum), e.g. 1/n_scored; stats: (R, 2) from the forward.
// dx (R, D) += G W and dW (V, D) += G^T x, chunk by chunk, where G = dL/d(x W^T): per scored
// row dloss * (alpha ((1 + 2 z_loss lse) softmax(z) - onehot(target)) + beta tau (q - p))
// through the cap and the divisor, 0 for an ignored row.
template <class S>
void kd_loss_backward(CView<S> x, CView<S> W, const int* targets, const HeadLoss& h, const KdLoss& kd,
                      const KdTeacher<S>& teacher, const S* stats, double dloss, View<S> dx, View<S> dW,
                      S* ws) {
  if (!dx && !dW) return;
  const Index R = x.rows, V = W.rows, D = W.cols, c = head_loss_chunk(R, V, h.chunk);
  detail::check_head(x.rows, x.cols, W.rows, W.cols);
  const double z = h.z_loss, itau = 1 / kd.tau;
  const S cap = S(h.softcap), inv = S(1 / h.divisor), st = S(itau);
  for (Index r0 = 0; r0 < R; r0 += c) {
    const Index n = std::min(c, R - r0);
    const View<S> y(ws, n, V, V);          // (n, V) logits
    const View<S> g(ws + n * V, n, V, V);  // (n, V) their gradient
    const CView<S> xc = x.row_range(r0, n);
    detail::head_logits<S>(xc, W, h, y);
    const auto l = emap(y);
    auto gm = emap(g);
    HYBRID_LOSS_OMP(omp parallel for schedule(static) if (n * V > (1 << 16)))
    for (Index i = 0; i < n; ++i) {
      const int t = targets[r0 + i];
      auto row = gm.row(i).array();
      if (t < 0) {
        row.setZero();
        continue;
      }
      const S s = stats[2 * (r0 + i)], s_tau = stats[2 * (r0 + i) + 1];
      const S a = S(dloss * kd.alpha * (1 + 2 * z * double(s)));
      const S b = S(dloss * kd.beta * kd.tau);
      const auto yr = l.row(i).array();
      row = a * (yr - s).exp() + b * (yr * st - s_tau).exp();
      row(t) -= S(dloss * kd.alpha);
      detail::teacher_row(teacher, r0 + i, itau, [&](Index j, double p, double) { row(j) -= b * S(p); });
      if (cap > 0) row *= S(1) - (yr / cap).square();  // d capped / d uncapped, y the capped logit
      if (h.divisor != 1) row *= inv;
    }
    if (dx)
      blas::gemm<S>(blas::Op::N, blas::Op::N, n, D, V, S(1), g.data, g.ld, W.data, W.ld, S(1),
                    dx.row_ptr(r0), dx.ld);
    if (dW)
      blas::gemm<S>(blas::Op::T, blas::Op::N, V, D, n, S(1), g.data, g.ld, xc.data, xc.ld, S(1),
                    dW.data, dW.ld);
  }
}

// The bound on |KL - KL~| of one row (see the top of this file), from the teacher's full
// logits u (V) and the student's z (V), both before the temperature, and the k top ids.
inline double kd_truncation_bound(const double* u, const double* zs, Index V, const int* ids, Index k,
                                  double tau) {
  const double lu = detail::scaled_lse(V, [&](Index j) { return u[j] / tau; });
  const double lz = detail::scaled_lse(V, [&](Index j) { return zs[j] / tau; });
  double P = 0, m = -std::numeric_limits<double>::infinity();
  for (Index j = 0; j < k; ++j) P += std::exp(u[ids[j]] / tau - lu);
  const double lP = std::log(P);
  double klt = 0;
  for (Index j = 0; j < k; ++j) {
    const double lpt = u[ids[j]] / tau - lu - lP;  // log p~_j
    klt += std::exp(lpt) * (lpt - (zs[ids[j]] / tau - lz));
  }
  for (Index v = 0; v < V; ++v) {
    if (std::find(ids, ids + k, int(v)) != ids + k) continue;
    m = std::max(m, std::abs((u[v] / tau - lu) - (zs[v] / tau - lz)));
  }
  return (1 - P) * (klt + 1 + (std::isfinite(m) ? m : 0));
}

}  // namespace hybrid::ops
