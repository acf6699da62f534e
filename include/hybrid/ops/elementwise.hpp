// Element-wise and row-wise ops on views: add, scale, mul, scale_rows, gather_rows, SiLU and
// the sigmoid output gate, each a forward/backward pair. Every buffer is a (R, C) view and
// may be strided (a column range of a wider activation); outputs may not alias inputs
// unless stated. Backward accumulates (+=) into every gradient it is given; an empty view
// skips one. Large calls split their rows across threads (par::for_rows).
#pragma once
#include "../core/error.hpp"
#include "../core/parallel.hpp"
#include "../core/tensor.hpp"
#include "activation.hpp"

namespace hybrid::ops {

namespace detail {
inline void check_same(const char* op, Index r0, Index c0, Index r1, Index c1) {
  HYBRID_CHECK(r0 == r1 && c0 == c1, op, ": shapes (", r0, ", ", c0, ") and (", r1, ", ", c1,
               ") differ; expected equal shapes");
}
// f(r0, n) over row ranges of a (R, C) op.
template <class F>
void rows(Index R, Index C, F&& f) {
  par::for_rows(R, C, [&](Index r0, Index r1) { f(r0, r1 - r0); });
}
}  // namespace detail

// z = x + alpha * y. x, y, z: (R, C).
template <class S>
void add_forward(CView<S> x, CView<S> y, S alpha, View<S> z) {
  detail::check_same("add", x.rows, x.cols, y.rows, y.cols);
  detail::rows(x.rows, x.cols, [&](Index r0, Index n) {
    auto Z = emap(z.row_range(r0, n));
    if (alpha == S(1)) Z = emap(x.row_range(r0, n)) + emap(y.row_range(r0, n));
    else Z = emap(x.row_range(r0, n)) + alpha * emap(y.row_range(r0, n));
  });
}
// dx += dz; dy += alpha dz.
template <class S>
void add_backward(CView<S> dz, S alpha, View<S> dx, View<S> dy) {
  detail::rows(dz.rows, dz.cols, [&](Index r0, Index n) {
    const auto D = emap(dz.row_range(r0, n));
    if (dx) emap(dx.row_range(r0, n)) += D;
    if (dy) emap(dy.row_range(r0, n)) += alpha * D;
  });
}

// z = alpha * x.
template <class S>
void scale_forward(CView<S> x, S alpha, View<S> z) {
  detail::rows(x.rows, x.cols, [&](Index r0, Index n) {
    emap(z.row_range(r0, n)) = alpha * emap(x.row_range(r0, n));
  });
}
// dx += alpha dz.
template <class S>
void scale_backward(CView<S> dz, S alpha, View<S> dx) {
  if (!dx) return;
  detail::rows(dz.rows, dz.cols, [&](Index r0, Index n) {
    emap(dx.row_range(r0, n)) += alpha * emap(dz.row_range(r0, n));
  });
}

// z = a * b (element-wise).
template <class S>
void mul_forward(CView<S> a, CView<S> b, View<S> z) {
  detail::check_same("mul", a.rows, a.cols, b.rows, b.cols);
  detail::rows(a.rows, a.cols, [&](Index r0, Index n) {
    emap(z.row_range(r0, n)) = emap(a.row_range(r0, n)).cwiseProduct(emap(b.row_range(r0, n)));
  });
}
// da += dz * b; db += dz * a.
template <class S>
void mul_backward(CView<S> a, CView<S> b, CView<S> dz, View<S> da, View<S> db) {
  detail::rows(a.rows, a.cols, [&](Index r0, Index n) {
    const auto D = emap(dz.row_range(r0, n));
    if (da) emap(da.row_range(r0, n)) += D.cwiseProduct(emap(b.row_range(r0, n)));
    if (db) emap(db.row_range(r0, n)) += D.cwiseProduct(emap(a.row_range(r0, n)));
  });
}

// y[r] = s[r] * x[r] (drop-path masks). s: (R).
template <class S>
void scale_rows_forward(CView<S> x, const S* s, View<S> y) {
  for (Index r = 0; r < x.rows; ++r) emap(y.row_range(r, 1)) = s[r] * emap(x.row_range(r, 1));
}
// dx[r] += s[r] * dy[r].
template <class S>
void scale_rows_backward(const S* s, CView<S> dy, View<S> dx) {
  if (!dx) return;
  for (Index r = 0; r < dy.rows; ++r) emap(dx.row_range(r, 1)) += s[r] * emap(dy.row_range(r, 1));
}

// y[i] = x[idx[i]] for i < n (the last position of each sequence). idx: (n) in [0, R).
template <class S>
void gather_rows_forward(CView<S> x, const Index* idx, Index n, View<S> y) {
  for (Index i = 0; i < n; ++i) {
    HYBRID_CHECK(idx[i] >= 0 && idx[i] < x.rows, "gather_rows: row ", idx[i], " of a tensor of ",
                 x.rows, " rows");
    emap(y.row_range(i, 1)) = emap(x.row_range(idx[i], 1));
  }
}
// dx[idx[i]] += dy[i]; repeated rows accumulate.
template <class S>
void gather_rows_backward(const Index* idx, Index n, CView<S> dy, View<S> dx) {
  if (!dx) return;
  for (Index i = 0; i < n; ++i) emap(dx.row_range(idx[i], 1)) += emap(dy.row_range(i, 1));
}

// y = silu(x) = x * sigmoid(x).
template <class S>
void silu_forward(CView<S> x, View<S> y) {
  detail::rows(x.rows, x.cols, [&](Index r0, Index n) {
    emap(y.row_range(r0, n)).array() = silu_array(emap(x.row_range(r0, n)).array());
  });
}
// dx += dy * silu'(x).
template <class S>
void silu_backward(CView<S> x, CView<S> dy, View<S> dx) {
  if (!dx) return;
  using A1 = Eigen::Map<const Eigen::Array<S, Eigen::Dynamic, 1>>;
  par::for_rows(x.rows, x.cols, [&](Index r0, Index r1) {
    with_sigmoid_chunks<S>(x, r0, r1, [&](Index r, Index c0, Index n, const auto& sg) {
      Eigen::Map<Eigen::Array<S, Eigen::Dynamic, 1>>(dx.row_ptr(r) + c0, n) +=
          A1(dy.row_ptr(r) + c0, n) * silu_grad_given_sigmoid(A1(x.row_ptr(r) + c0, n), sg);
    });
  });
}

// y = o * sigmoid(g): the output gate of gated attention.
template <class S>
void sigmoid_gate_forward(CView<S> o, CView<S> g, View<S> y) {
  detail::check_same("sigmoid_gate", o.rows, o.cols, g.rows, g.cols);
  detail::rows(o.rows, o.cols, [&](Index r0, Index n) {
    emap(y.row_range(r0, n)).array() =
        emap(o.row_range(r0, n)).array() * sigmoid_array(emap(g.row_range(r0, n)).array());
  });
}
// do += dy * sigmoid(g); dg += dy * o * sigmoid(g) (1 - sigmoid(g)).
template <class S>
void sigmoid_gate_backward(CView<S> o, CView<S> g, CView<S> dy, View<S> dout, View<S> dg) {
  using A1 = Eigen::Map<const Eigen::Array<S, Eigen::Dynamic, 1>>;
  using M1 = Eigen::Map<Eigen::Array<S, Eigen::Dynamic, 1>>;
  par::for_rows(o.rows, o.cols, [&](Index r0, Index r1) {
    with_sigmoid_chunks<S>(g, r0, r1, [&](Index r, Index c0, Index n, const auto& sg) {
      const A1 D(dy.row_ptr(r) + c0, n);
      if (dout) M1(dout.row_ptr(r) + c0, n) += D * sg;
      if (dg) M1(dg.row_ptr(r) + c0, n) += D * A1(o.row_ptr(r) + c0, n) * sg * (S(1) - sg);
    });
  });
}

// y = x (a copy between views of the same shape).
template <class S>
void copy(CView<S> x, View<S> y) {
  detail::check_same("copy", x.rows, x.cols, y.rows, y.cols);
  detail::rows(x.rows, x.cols, [&](Index r0, Index n) { emap(y.row_range(r0, n)) = emap(x.row_range(r0, n)); });
}

}  // namespace hybrid::ops
