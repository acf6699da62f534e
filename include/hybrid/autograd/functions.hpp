// Differentiable functions on tape Vars: each computes its forward with the ops/ function
// and, when the tape records, pushes one node whose backward calls the matching
// ops/<op>_backward (which accumulates into the input gradients).
// Row-wise and element-wise functions here; sequence mixers are in seq_functions.hpp.
#pragma once
#include <cmath>

#include "../ops/activation.hpp"
#include "../ops/embedding.hpp"
#include "../ops/linear.hpp"
#include "../ops/loss.hpp"
#include "../ops/norm.hpp"
#include "tape.hpp"

namespace hybrid::ag {

// y = x W^T + b. x: (R, in); W: (out, in); b: (1, out) or empty.
template <class S>
Var<S> linear(Tape<S>& t, Var<S> x, const Mat<S>& W, const Mat<S>& b) {
  Var<S> y = t.var(x.rows, W.rows());
  ops::linear_forward<S>(x.val(), W, b, y.val());
  const Var<S> w = t.param(W), bb = b.size() ? t.param(b) : Var<S>{};
  t.push([x, y, w, bb] { ops::linear_backward<S>(x.val(), w.val(), y.grad(), x.g, w.g, bb.g); });
  return y;
}

// out = mult * table[ids]. table: (V, D); ids: R ids (validated by the caller).
template <class S>
Var<S> embedding(Tape<S>& t, const Mat<S>& table, const int* ids, Index R, S mult) {
  Var<S> y = t.var(R, table.cols());
  ops::embedding_forward<S>(table, ids, R, mult, y.val());
  const Var<S> w = t.param(table);
  int* saved = nullptr;
  if (t.recording()) {
    saved = t.scratch_int(R);
    std::copy(ids, ids + R, saved);
  }
  t.push([y, w, saved, R, mult] {
    if (w.g) ops::embedding_backward<S>(saved, R, mult, y.grad(), w.g);
  });
  return y;
}

template <class S>
Var<S> rmsnorm(Tape<S>& t, Var<S> x, const Mat<S>& w, S eps) {
  Var<S> y = t.var(x.rows, x.cols);
  S* rstd = t.recording() ? t.scratch(x.rows) : nullptr;
  ops::rmsnorm_forward<S>(x.val(), w, eps, y.val(), rstd);
  const Var<S> wv = t.param(w);
  t.push([x, y, wv, rstd] { ops::rmsnorm_backward<S>(x.val(), wv.val(), rstd, y.grad(), x.g, wv.g); });
  return y;
}

template <class S>
Var<S> layernorm(Tape<S>& t, Var<S> x, const Mat<S>& w, const Mat<S>& b, S eps) {
  Var<S> y = t.var(x.rows, x.cols);
  S* mean = t.recording() ? t.scratch(x.rows) : nullptr;
  S* rstd = t.recording() ? t.scratch(x.rows) : nullptr;
  ops::layernorm_forward<S>(x.val(), w, b, eps, y.val(), mean, rstd);
  const Var<S> wv = t.param(w), bv = t.param(b);
  t.push([x, y, wv, bv, mean, rstd] {
    ops::layernorm_backward<S>(x.val(), wv.val(), mean, rstd, y.grad(), x.g, wv.g, bv.g);
  });
  return y;
}

// Mamba-2's gated RMSNorm: out = w * v / rms(v) per group, v = y * silu(z).
template <class S>
Var<S> gated_rmsnorm(Tape<S>& t, Var<S> y, Var<S> z, const Mat<S>& w, Index group, S eps) {
  Var<S> out = t.var(y.rows, y.cols);
  S* rstd = t.recording() ? t.scratch(y.rows * (y.cols / group)) : nullptr;
  ops::gated_rmsnorm_forward<S>(y.val(), z.val(), w, group, eps, out.val(), rstd);
  const Var<S> wv = t.param(w);
  t.push([y, z, out, wv, group, rstd] {
    ops::gated_rmsnorm_backward<S>(y.val(), z.val(), wv.val(), group, rstd, out.grad(), y.g, z.g, wv.g);
  });
  return out;
}

// Columns [c0, c0 + n) of x as a new contiguous Var (the backward adds into that range).
template <class S>
Var<S> cols(Tape<S>& t, Var<S> x, Index c0, Index n) {
  Var<S> y = t.var(x.rows, n);
  par::for_rows(x.rows, n, [&](Index r0, Index r1) {
    y.val().middleRows(r0, r1 - r0) = x.val().middleRows(r0, r1 - r0).middleCols(c0, n);
  });
  t.push([x, y, c0, n] {
    par::for_rows(x.rows, n, [&](Index r0, Index r1) {
      x.grad().middleRows(r0, r1 - r0).middleCols(c0, n) += y.grad().middleRows(r0, r1 - r0);
    });
  });
  return y;
}

// Rows idx[0..n) of x (e.g. the last position of each sequence).
template <class S>
Var<S> gather_rows(Tape<S>& t, Var<S> x, const Index* idx, Index n) {
  Var<S> y = t.var(n, x.cols);
  Index* saved = t.scratch_index(n);
  std::copy(idx, idx + n, saved);
  for (Index i = 0; i < n; ++i) y.val().row(i) = x.val().row(idx[i]);
  t.push([x, y, saved, n] {
    for (Index i = 0; i < n; ++i) x.grad().row(saved[i]) += y.grad().row(i);
  });
  return y;
}

// x + alpha * y
template <class S>
Var<S> add(Tape<S>& t, Var<S> x, Var<S> y, S alpha = S(1)) {
  Var<S> z = t.var(x.rows, x.cols);
  par::for_rows(x.rows, x.cols, [&](Index r0, Index r1) {
    const Index n = r1 - r0;
    if (alpha == S(1)) z.val().middleRows(r0, n) = x.val().middleRows(r0, n) + y.val().middleRows(r0, n);
    else z.val().middleRows(r0, n) = x.val().middleRows(r0, n) + alpha * y.val().middleRows(r0, n);
  });
  t.push([x, y, z, alpha] {
    par::for_rows(x.rows, x.cols, [&](Index r0, Index r1) {
      const Index n = r1 - r0;
      if (x.g) x.grad().middleRows(r0, n) += z.grad().middleRows(r0, n);
      if (y.g) y.grad().middleRows(r0, n) += alpha * z.grad().middleRows(r0, n);
    });
  });
  return z;
}

template <class S>
Var<S> scale(Tape<S>& t, Var<S> x, S alpha) {
  Var<S> z = t.var(x.rows, x.cols);
  z.val() = alpha * x.val();
  t.push([x, z, alpha] { if (x.g) x.grad() += alpha * z.grad(); });
  return z;
}

// Row r of x multiplied by s[r] (drop-path masks). s: x.rows values, copied to the tape.
template <class S>
Var<S> scale_rows(Tape<S>& t, Var<S> x, const S* s) {
  Var<S> y = t.var(x.rows, x.cols);
  S* saved = t.scratch(x.rows);
  std::copy(s, s + x.rows, saved);
  for (Index r = 0; r < x.rows; ++r) y.val().row(r) = saved[r] * x.val().row(r);
  t.push([x, y, saved] {
    if (x.g)
      for (Index r = 0; r < x.rows; ++r) x.grad().row(r) += saved[r] * y.grad().row(r);
  });
  return y;
}

// Element-wise product.
template <class S>
Var<S> mul(Tape<S>& t, Var<S> a, Var<S> b) {
  Var<S> z = t.var(a.rows, a.cols);
  par::for_rows(a.rows, a.cols, [&](Index r0, Index r1) {
    const Index n = r1 - r0;
    z.val().middleRows(r0, n) = a.val().middleRows(r0, n).cwiseProduct(b.val().middleRows(r0, n));
  });
  t.push([a, b, z] {
    par::for_rows(a.rows, a.cols, [&](Index r0, Index r1) {
      const Index n = r1 - r0;
      if (a.g) a.grad().middleRows(r0, n) += z.grad().middleRows(r0, n).cwiseProduct(b.val().middleRows(r0, n));
      if (b.g) b.grad().middleRows(r0, n) += z.grad().middleRows(r0, n).cwiseProduct(a.val().middleRows(r0, n));
    });
  });
  return z;
}

template <class S>
Var<S> silu(Tape<S>& t, Var<S> x) {
  Var<S> y = t.var(x.rows, x.cols);
  par::for_rows(x.rows, x.cols, [&](Index r0, Index r1) {
    y.val().middleRows(r0, r1 - r0).array() = ops::silu_array(x.val().middleRows(r0, r1 - r0).array());
  });
  t.push([x, y] {
    if (!x.g) return;
    par::for_rows(x.rows, x.cols, [&](Index r0, Index r1) {
      const Index n = r1 - r0;
      x.grad().middleRows(r0, n).array() +=
          y.grad().middleRows(r0, n).array() * ops::silu_grad_array(x.val().middleRows(r0, n).array());
    });
  });
  return y;
}

// o * sigmoid(g): the output gate of gated attention.
template <class S>
Var<S> sigmoid_gate(Tape<S>& t, Var<S> o, Var<S> g) {
  Var<S> y = t.var(o.rows, o.cols);
  par::for_rows(o.rows, o.cols, [&](Index r0, Index r1) {
    const Index n = r1 - r0;
    y.val().middleRows(r0, n).array() =
        o.val().middleRows(r0, n).array() * ops::sigmoid_array(g.val().middleRows(r0, n).array());
  });
  t.push([o, g, y] {
    par::for_ranges(y.size(), par::threads_for(y.size()), [&](Index b, Index e) {
      for (Index i = b; i < e; ++i) {
        const S s = ops::sigmoid(g.v[i]);
        if (o.g) o.g[i] += y.g[i] * s;
        if (g.g) g.g[i] += y.g[i] * o.v[i] * s * (S(1) - s);
      }
    });
  });
  return y;
}

// h = silu(a) * u
template <class S>
Var<S> swiglu(Tape<S>& t, Var<S> a, Var<S> u) {
  Var<S> h = t.var(a.rows, a.cols);
  ops::swiglu_forward<S>(a.val(), u.val(), h.val());
  t.push([a, u, h] { ops::swiglu_backward<S>(a.val(), u.val(), h.grad(), a.g, u.g); });
  return h;
}

template <class S>
Var<S> relu2(Tape<S>& t, Var<S> x) {
  Var<S> y = t.var(x.rows, x.cols);
  ops::relu2_forward<S>(x.val(), y.val());
  t.push([x, y] { ops::relu2_backward<S>(x.val(), y.grad(), x.g); });
  return y;
}

// Mamba-2 dt = clamp(softplus(raw + bias), lo, hi). raw: (R, H); bias: (1, H).
template <class S>
Var<S> dt_softplus(Tape<S>& t, Var<S> raw, const Mat<S>& bias, S lo, S hi) {
  Var<S> dt = t.var(raw.rows, raw.cols);
  ops::dt_softplus_forward<S>(raw.val(), bias, lo, hi, dt.val());
  const Var<S> b = t.param(bias);
  t.push([raw, b, dt, lo, hi] {
    ops::dt_softplus_backward<S>(raw.val(), b.val(), lo, hi, dt.grad(), raw.g, b.g);
  });
  return dt;
}

// c * tanh(x / c)
template <class S>
Var<S> softcap(Tape<S>& t, Var<S> x, S cap) {
  Var<S> y = t.var(x.rows, x.cols);
  y.val() = x.val();
  ops::softcap_forward<S>(y.val(), cap);
  t.push([x, y, cap] {
    if (!x.g) return;
    ops::softcap_backward<S>(y.val(), cap, y.grad());  // y's gradient is consumed here only
    x.grad() += y.grad();
  });
  return y;
}

// Mean softmax cross-entropy over rows whose target is not -1 (+ z_loss * lse^2), as a
// 1x1 Var. targets: R ids, copied to the tape.
template <class S>
Var<S> cross_entropy(Tape<S>& t, Var<S> logits, const int* targets, double z_loss = 0) {
  const Index R = logits.rows;
  Index n = 0;
  for (Index i = 0; i < R; ++i) n += targets[i] != -1;
  HYBRID_CHECK(n > 0, "cross_entropy: every target is ignored (-1); nothing to score");
  S* lse = t.scratch(R);
  int* saved = t.scratch_int(R);
  std::copy(targets, targets + R, saved);
  Var<S> loss = t.var(1, 1);
  loss.v[0] = S(ops::cross_entropy_forward<S>(logits.val(), saved, lse, z_loss) / double(n));
  t.push([logits, loss, saved, lse, n, z_loss] {
    if (logits.g)
      ops::cross_entropy_backward<S>(logits.val(), saved, lse, double(loss.g[0]) / double(n), z_loss,
                                     logits.g);
  });
  return loss;
}

}  // namespace hybrid::ag
