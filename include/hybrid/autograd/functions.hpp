// Differentiable functions on tape Vars: each computes its forward with the ops/ function
// and, when the tape records, pushes one node (tagged with its OpId) whose backward calls
// the matching ops/<op>_backward, which accumulates into the input gradients.
// Row-wise and element-wise functions here; sequence mixers are in seq_functions.hpp.
// Parameters come in as Param handles and resolve against the tape's bound store.
// On a tape with a backend (autograd/backend.hpp) each forward runs there instead; such a
// tape never records, so nothing is pushed.
#pragma once
#include <cmath>

#include "../ops/activation.hpp"
#include "../ops/elementwise.hpp"
#include "../ops/embedding.hpp"
#include "../ops/head_loss.hpp"
#include "../ops/kd_loss.hpp"
#include "../ops/linear.hpp"
#include "../ops/loss.hpp"
#include "../ops/norm.hpp"
#include "../ops/qlinear.hpp"
#include "../layers/weight_store.hpp"
#include "tape.hpp"

namespace hybrid::ag {

namespace detail {
// The losses are training code on host values; a tape on a backend has none to give.
template <class S>
void host_only(const Tape<S>& t, const char* what) {
  HYBRID_CHECK(!t.backend(), what, ": runs on host values (training, evaluation); this tape's values "
               "are on ", t.backend() ? t.backend()->name() : "", "; use a host tape");
}
}  // namespace detail

// y = x (a copy into an existing activation, e.g. a block's output into its buffer).
template <class S>
void copy_into(Tape<S>& t, Var<S> x, Var<S> y) {
  if (Backend<S>* d = t.backend()) d->copy(x.value(), y.value());
  else ops::copy<S>(x.value(), y.value());
}

// y = x w^T with a weight that is a tape Var rather than a Param of the bound store (an
// adapter's matrices, train/lora.hpp). x: (R, in); w: (out, in), strided or not.
template <class S>
Var<S> linear(Tape<S>& t, Var<S> x, Var<S> w) {
  Var<S> y = t.var(x.rows, w.rows);
  if (Backend<S>* d = t.backend()) return d->linear(x.value(), w.value(), View<S>(), y.value()), y;
  ops::linear_forward<S>(x.value(), w.value(), View<S>(), y.value());
  t.push(OpId::Linear, [x, y, w] {
    ops::linear_backward<S>(x.value(), w.value(), y.gradient(), x.gradient(), w.gradient(), View<S>());
  });
  return y;
}

// y = x W^T + b. x: (R, in); W: (out, in); b: (1, out) or absent.
// With stored weights bound (a non-recording tape, Tape::bind_values), W is read in its
// storage type (ops/qlinear.hpp) and nothing is recorded. A tape's linear adapter
// (Tape::set_linear_adapter) then sees x and y and may add its branch.
template <class S>
Var<S> linear(Tape<S>& t, Var<S> x, const Param& W, const Param& b) {
  HYBRID_CHECK(!(t.linear_observer() && t.backend()), "linear: a linear observer reads host inputs; "
               "this tape runs on ", t.backend() ? t.backend()->name() : "");
  if (t.linear_observer()) t.linear_observer()(W, x.value());
  auto adapt = [&](Var<S> y) { return t.linear_adapter() ? t.linear_adapter()(t, W, x, y) : y; };
  if constexpr (std::is_same_v<S, float>)
    if (t.packed())
      if (const ops::QWeight q = t.packed()->find(W)) {
        Var<S> y = t.var(x.rows, W.rows);
        ops::qlinear_forward(x.value(), q, t.param(b).value(), y.value());
        return adapt(y);
      }
  const Var<S> w = t.param(W), bb = t.param(b);
  Var<S> y = t.var(x.rows, W.rows);
  if (Backend<S>* d = t.backend()) {
    d->linear(x.value(), w.value(), bb.value(), y.value());
    return adapt(y);
  }
  ops::linear_forward<S>(x.value(), w.value(), bb.value(), y.value());
  t.push(OpId::Linear, [x, y, w, bb] {
    ops::linear_backward<S>(x.value(), w.value(), y.gradient(), x.gradient(), w.gradient(), bb.gradient());
  });
  return adapt(y);
}

// out = mult * table[ids]. table: (V, D); ids: R ids (validated by the caller).
template <class S>
Var<S> embedding(Tape<S>& t, const Param& table, const int* ids, Index R, S mult) {
  if constexpr (std::is_same_v<S, float>)
    if (t.packed())
      if (const ops::QWeight q = t.packed()->find(table)) {
        Var<S> y = t.var(R, table.cols);
        ops::qembedding_forward(q, ids, R, mult, y.value());
        return y;
      }
  const Var<S> w = t.param(table);
  Var<S> y = t.var(R, table.cols);
  if (Backend<S>* d = t.backend()) return d->embedding(w.value(), ids, R, mult, y.value()), y;
  ops::embedding_forward<S>(w.value(), ids, R, mult, y.value());
  int* saved = nullptr;
  if (t.recording()) {
    saved = t.scratch_int(R);
    std::copy(ids, ids + R, saved);
  }
  t.push(OpId::Embedding, [y, w, saved, R, mult] {
    ops::embedding_backward<S>(saved, R, mult, y.gradient(), w.gradient());
  });
  return y;
}

template <class S>
Var<S> rmsnorm(Tape<S>& t, Var<S> x, const Param& w, S eps) {
  const Var<S> wv = t.param(w);
  Var<S> y = t.var(x.rows, x.cols);
  if (Backend<S>* d = t.backend()) return d->rmsnorm(x.value(), wv.value(), eps, y.value()), y;
  S* rstd = t.recording() ? t.scratch(x.rows) : nullptr;
  ops::rmsnorm_forward<S>(x.value(), wv.value(), eps, y.value(), rstd);
  Tape<S>* tp = &t;
  t.push(OpId::RmsNorm, [tp, x, y, wv, rstd] {
    ops::rmsnorm_backward<S>(x.value(), wv.value(), rstd, y.gradient(), x.gradient(), wv.gradient(),
                             tp->workspace(ops::rmsnorm_backward_scratch(x.rows, x.cols)).data);
  });
  return y;
}

template <class S>
Var<S> layernorm(Tape<S>& t, Var<S> x, const Param& w, const Param& b, S eps) {
  const Var<S> wv = t.param(w), bv = t.param(b);
  Var<S> y = t.var(x.rows, x.cols);
  if (Backend<S>* d = t.backend()) return d->layernorm(x.value(), wv.value(), bv.value(), eps, y.value()), y;
  S* mean = t.recording() ? t.scratch(x.rows) : nullptr;
  S* rstd = t.recording() ? t.scratch(x.rows) : nullptr;
  ops::layernorm_forward<S>(x.value(), wv.value(), bv.value(), eps, y.value(), mean, rstd);
  t.push(OpId::LayerNorm, [x, y, wv, bv, mean, rstd] {
    ops::layernorm_backward<S>(x.value(), wv.value(), mean, rstd, y.gradient(), x.gradient(),
                               wv.gradient(), bv.gradient());
  });
  return y;
}

// Mamba-2's gated RMSNorm: out = w * v / rms(v) per group, v = y * silu(z).
template <class S>
Var<S> gated_rmsnorm(Tape<S>& t, Var<S> y, Var<S> z, const Param& w, Index group, S eps) {
  const Var<S> wv = t.param(w);
  Var<S> out = t.var(y.rows, y.cols);
  if (Backend<S>* d = t.backend())
    return d->gated_rmsnorm(y.value(), z.value(), wv.value(), group, eps, out.value()), out;
  S* rstd = t.recording() ? t.scratch(y.rows * (y.cols / group)) : nullptr;
  ops::gated_rmsnorm_forward<S>(y.value(), z.value(), wv.value(), group, eps, out.value(), rstd);
  Tape<S>* tp = &t;
  t.push(OpId::GatedRmsNorm, [tp, y, z, out, wv, group, rstd] {
    ops::gated_rmsnorm_backward<S>(y.value(), z.value(), wv.value(), group, rstd, out.gradient(),
                                   y.gradient(), z.gradient(), wv.gradient(),
                                   tp->workspace(ops::gated_rmsnorm_backward_scratch(y.rows, y.cols)).data);
  });
  return out;
}

// Rows idx[0..n) of x (e.g. the last position of each sequence).
template <class S>
Var<S> gather_rows(Tape<S>& t, Var<S> x, const Index* idx, Index n) {
  Var<S> y = t.var(n, x.cols);
  if (Backend<S>* d = t.backend()) return d->gather_rows(x.value(), idx, n, y.value()), y;
  Index* saved = t.scratch_index(n);
  std::copy(idx, idx + n, saved);
  ops::gather_rows_forward<S>(x.value(), saved, n, y.value());
  t.push(OpId::GatherRows, [x, y, saved, n] { ops::gather_rows_backward<S>(saved, n, y.gradient(), x.gradient()); });
  return y;
}

// x + alpha * y
template <class S>
Var<S> add(Tape<S>& t, Var<S> x, Var<S> y, S alpha = S(1)) {
  Var<S> z = t.var(x.rows, x.cols);
  if (Backend<S>* d = t.backend()) return d->add(x.value(), y.value(), alpha, z.value()), z;
  ops::add_forward<S>(x.value(), y.value(), alpha, z.value());
  t.push(OpId::Add, [x, y, z, alpha] { ops::add_backward<S>(z.gradient(), alpha, x.gradient(), y.gradient()); });
  return z;
}

template <class S>
Var<S> scale(Tape<S>& t, Var<S> x, S alpha) {
  Var<S> z = t.var(x.rows, x.cols);
  if (Backend<S>* d = t.backend()) return d->scale(x.value(), alpha, z.value()), z;
  ops::scale_forward<S>(x.value(), alpha, z.value());
  t.push(OpId::Scale, [x, z, alpha] { ops::scale_backward<S>(z.gradient(), alpha, x.gradient()); });
  return z;
}

// Row r of x multiplied by s[r] (drop-path masks). s: x.rows values, copied to the tape.
template <class S>
Var<S> scale_rows(Tape<S>& t, Var<S> x, const S* s) {
  Var<S> y = t.var(x.rows, x.cols);
  if (Backend<S>* d = t.backend()) return d->scale_rows(x.value(), s, y.value()), y;
  S* saved = t.scratch(x.rows);
  std::copy(s, s + x.rows, saved);
  ops::scale_rows_forward<S>(x.value(), saved, y.value());
  t.push(OpId::ScaleRows, [x, y, saved] { ops::scale_rows_backward<S>(saved, y.gradient(), x.gradient()); });
  return y;
}

// Element-wise product.
template <class S>
Var<S> mul(Tape<S>& t, Var<S> a, Var<S> b) {
  Var<S> z = t.var(a.rows, a.cols);
  if (Backend<S>* d = t.backend()) return d->mul(a.value(), b.value(), z.value()), z;
  ops::mul_forward<S>(a.value(), b.value(), z.value());
  t.push(OpId::Mul, [a, b, z] {
    ops::mul_backward<S>(a.value(), b.value(), z.gradient(), a.gradient(), b.gradient());
  });
  return z;
}

template <class S>
Var<S> silu(Tape<S>& t, Var<S> x) {
  Var<S> y = t.var(x.rows, x.cols);
  if (Backend<S>* d = t.backend()) return d->silu(x.value(), y.value()), y;
  ops::silu_forward<S>(x.value(), y.value());
  t.push(OpId::Silu, [x, y] { ops::silu_backward<S>(x.value(), y.gradient(), x.gradient()); });
  return y;
}

// o * sigmoid(g): the output gate of gated attention.
template <class S>
Var<S> sigmoid_gate(Tape<S>& t, Var<S> o, Var<S> g) {
  Var<S> y = t.var(o.rows, o.cols);
  if (Backend<S>* d = t.backend()) return d->sigmoid_gate(o.value(), g.value(), y.value()), y;
  ops::sigmoid_gate_forward<S>(o.value(), g.value(), y.value());
  t.push(OpId::SigmoidGate, [o, g, y] {
    ops::sigmoid_gate_backward<S>(o.value(), g.value(), y.gradient(), o.gradient(), g.gradient());
  });
  return y;
}

// h = silu(a) * u
template <class S>
Var<S> swiglu(Tape<S>& t, Var<S> a, Var<S> u) {
  Var<S> h = t.var(a.rows, a.cols);
  if (Backend<S>* d = t.backend()) return d->swiglu(a.value(), u.value(), h.value()), h;
  ops::swiglu_forward<S>(a.value(), u.value(), h.value());
  t.push(OpId::Swiglu, [a, u, h] {
    ops::swiglu_backward<S>(a.value(), u.value(), h.gradient(), a.gradient(), u.gradient());
  });
  return h;
}

template <class S>
Var<S> relu2(Tape<S>& t, Var<S> x) {
  Var<S> y = t.var(x.rows, x.cols);
  if (Backend<S>* d = t.backend()) return d->relu2(x.value(), y.value()), y;
  ops::relu2_forward<S>(x.value(), y.value());
  t.push(OpId::Relu2, [x, y] { ops::relu2_backward<S>(x.value(), y.gradient(), x.gradient()); });
  return y;
}

// Mamba-2 dt = clamp(softplus(raw + bias), lo, hi). raw: (R, H); bias: (1, H).
template <class S>
Var<S> dt_softplus(Tape<S>& t, Var<S> raw, const Param& bias, S lo, S hi) {
  const Var<S> b = t.param(bias);
  Var<S> dt = t.var(raw.rows, raw.cols);
  if (Backend<S>* d = t.backend()) return d->dt_softplus(raw.value(), b.value(), lo, hi, dt.value()), dt;
  ops::dt_softplus_forward<S>(raw.value(), b.value(), lo, hi, dt.value());
  t.push(OpId::DtSoftplus, [raw, b, dt, lo, hi] {
    ops::dt_softplus_backward<S>(raw.value(), b.value(), lo, hi, dt.gradient(), raw.gradient(), b.gradient());
  });
  return dt;
}

// c * tanh(x / c)
template <class S>
Var<S> softcap(Tape<S>& t, Var<S> x, S cap) {
  Var<S> y = t.var(x.rows, x.cols);
  if (Backend<S>* d = t.backend()) {
    d->copy(x.value(), y.value());
    d->softcap(y.value(), cap);
    return y;
  }
  ops::copy<S>(x.value(), y.value());
  ops::softcap_forward<S>(y.value(), cap);
  t.push(OpId::Softcap, [x, y, cap] {
    if (!x.g) return;
    ops::softcap_backward<S>(y.value(), cap, y.gradient());  // y's gradient is consumed here only
    ops::add_backward<S>(y.gradient(), S(1), x.gradient(), View<S>());
  });
  return y;
}

// Mean softmax cross-entropy over rows whose target is not -1 (+ z_loss * lse^2), as a
// 1x1 Var. targets: R ids, copied to the tape.
template <class S>
Var<S> cross_entropy(Tape<S>& t, Var<S> logits, const int* targets, double z_loss = 0) {
  detail::host_only(t, "cross_entropy");
  const Index R = logits.rows;
  Index n = 0;
  for (Index i = 0; i < R; ++i) n += targets[i] != -1;
  HYBRID_CHECK(n > 0, "cross_entropy: every target is ignored (-1); nothing to score");
  S* lse = t.scratch(R);
  int* saved = t.scratch_int(R);
  std::copy(targets, targets + R, saved);
  Var<S> loss = t.var(1, 1);
  loss.v[0] = S(ops::cross_entropy_forward<S>(logits.value(), saved, lse, z_loss) / double(n));
  t.push(OpId::CrossEntropy, [logits, loss, saved, lse, n, z_loss] {
    ops::cross_entropy_backward<S>(logits.value(), saved, lse, double(loss.g[0]) / double(n), z_loss,
                                   logits.gradient());
  });
  return loss;
}

// Mean squared error of two activations (feature distillation), as a 1x1 Var:
// sum((x - y)^2) / (R * C). x, y: (R, C), strided or not; either may have no gradient (a
// teacher's features are a Var without one). y is read in the backward, so it must live on
// the tape (or outlive it).
template <class S>
Var<S> mse(Tape<S>& t, Var<S> x, Var<S> y) {
  HYBRID_CHECK(x.rows == y.rows && x.cols == y.cols && x.size() > 0, "mse: x is (", x.rows, ", ", x.cols,
               "), y is (", y.rows, ", ", y.cols, "); expected the same non-empty shape");
  detail::host_only(t, "mse");
  const double n = double(x.size());
  Var<S> loss = t.var(1, 1);
  loss.v[0] = S(ops::mse_forward<S>(x.value(), y.value()) / n);
  t.push(OpId::Mse, [x, y, loss, n] {
    ops::mse_backward<S>(x.value(), y.value(), double(loss.g[0]) / n, x.gradient(), y.gradient());
  });
  return loss;
}

// The LM head fused with its loss (ops/head_loss.hpp): the mean over rows whose target is
// not -1 of the cross-entropy (+ z_loss * lse^2) of softcap((x W^T) / divisor), as a 1x1
// Var, with only a chunk of logits in memory at a time. x: (R, D) final-norm output; W:
// (V, D) (the embedding table when tied); targets: R ids, copied to the tape. The forward
// and the backward take one chunk of logits from the tape's workspace.
template <class S>
Var<S> head_loss(Tape<S>& t, Var<S> x, const Param& W, const int* targets, const ops::HeadLoss& h) {
  detail::host_only(t, "head_loss");
  const Index R = x.rows;
  if constexpr (std::is_same_v<S, float>)
    HYBRID_CHECK(!(t.packed() && t.packed()->find(W)),
                 "head_loss: the head reads float weights; this model holds them in a storage "
                 "type for inference (call set_weight_storage(DType::F32) first)");
  Index n = 0;
  for (Index i = 0; i < R; ++i) n += targets[i] != -1;
  HYBRID_CHECK(n > 0, "head_loss: every target is ignored (-1); nothing to score");
  const Var<S> w = t.param(W);
  S* lse = t.recording() ? t.scratch(R) : nullptr;
  int* saved = t.recording() ? t.scratch_int(R) : nullptr;
  if (saved) std::copy(targets, targets + R, saved);
  Var<S> loss = t.var(1, 1);
  {
    auto ws = t.workspace(ops::head_loss_scratch(R, W.rows, h));
    loss.v[0] = S(ops::head_loss_forward<S>(x.value(), w.value(), targets, h, lse, ws.data) / double(n));
  }
  Tape<S>* tp = &t;
  t.push(OpId::HeadLoss, [tp, x, w, loss, saved, lse, n, h] {
    auto ws = tp->workspace(ops::head_loss_scratch(x.rows, w.rows, h));
    ops::head_loss_backward<S>(x.value(), w.value(), saved, lse, double(loss.g[0]) / double(n), h,
                               x.gradient(), w.gradient(), ws.data);
  });
  return loss;
}

// Knowledge distillation fused with the LM head (ops/kd_loss.hpp): the mean over rows whose
// target is not -1 of alpha * cross-entropy (+ z-loss) + beta * tau^2 * KL(teacher || student)
// at temperature tau, as a 1x1 Var. x: (R, D) final-norm output; W: (V, D); targets: R ids;
// teacher: R rows of full logits (R, V) or top-k ids + log-probs (R, k); targets and teacher
// are copied to the tape (no gradient reaches the teacher). parts: nullptr, or receives the
// two means (cross-entropy, KL) without their weights.
template <class S>
Var<S> kd_head_loss(Tape<S>& t, Var<S> x, const Param& W, const int* targets, const ops::HeadLoss& h,
                    const ops::KdLoss& kd, const ops::KdTeacher<S>& teacher, ops::KdSums* parts = nullptr) {
  detail::host_only(t, "kd_head_loss");
  const Index R = x.rows;
  if constexpr (std::is_same_v<S, float>)
    HYBRID_CHECK(!(t.packed() && t.packed()->find(W)),
                 "kd_head_loss: the head reads float weights; this model holds them in a storage "
                 "type for inference (call set_weight_storage(DType::F32) first)");
  Index n = 0;
  for (Index i = 0; i < R; ++i) n += targets[i] != -1;
  HYBRID_CHECK(n > 0, "kd_head_loss: every target is ignored (-1); nothing to score");
  const Var<S> w = t.param(W);
  S* stats = t.scratch(2 * R);
  int* saved = t.scratch_int(R);
  std::copy(targets, targets + R, saved);
  ops::KdTeacher<S> tc;  // the tape's copy
  if (teacher.topk()) {
    const Index k = teacher.logp.cols;
    HYBRID_CHECK(teacher.logp.rows == R && k > 0, "kd_head_loss: teacher top-k (", teacher.logp.rows, ", ", k,
                 "); expected (", R, ", k >= 1)");
    int* ids = t.scratch_int(R * k);
    std::copy(teacher.ids, teacher.ids + R * k, ids);
    const View<S> lp(t.scratch(R * k), R, k, k);
    ops::copy<S>(teacher.logp, lp);
    tc.ids = ids, tc.logp = lp;
  } else {
    HYBRID_CHECK(teacher.logits.rows == R && teacher.logits.cols == W.rows, "kd_head_loss: teacher logits (",
                 teacher.logits.rows, ", ", teacher.logits.cols, "); expected (R, V) = (", R, ", ", W.rows, ")");
    const View<S> u(t.scratch(R * W.rows), R, W.rows, W.rows);
    ops::copy<S>(teacher.logits, u);
    tc.logits = u;
  }
  Var<S> loss = t.var(1, 1);
  ops::KdSums sums;
  {
    auto ws = t.workspace(ops::kd_loss_scratch(R, W.rows, h));
    sums = ops::kd_loss_forward<S>(x.value(), w.value(), saved, h, kd, tc, stats, ws.data);
  }
  if (parts) *parts = {sums.ce / double(n), sums.kl / double(n)};
  loss.v[0] = S((kd.alpha * sums.ce + kd.beta * kd.tau * kd.tau * sums.kl) / double(n));
  Tape<S>* tp = &t;
  t.push(OpId::KdLoss, [tp, x, w, loss, saved, stats, tc, n, h, kd] {
    auto ws = tp->workspace(ops::kd_loss_scratch(x.rows, w.rows, h));
    ops::kd_loss_backward<S>(x.value(), w.value(), saved, h, kd, tc, stats, double(loss.g[0]) / double(n),
                             x.gradient(), w.gradient(), ws.data);
  });
  return loss;
}

}  // namespace hybrid::ag
