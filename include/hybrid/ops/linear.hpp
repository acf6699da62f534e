// Linear layer: y = x W^T (+ b). x: (R, in), W: (out, in) row-major as in PyTorch, y: (R, out).
// Views may be strided (a column range of a wider activation). Backward accumulates (+=)
// into every gradient it is given; an empty view (nullptr) skips one.
#pragma once
#include "../core/gemm.hpp"
#include "../core/parallel.hpp"
#include "../core/error.hpp"
#include "../core/tensor.hpp"
#include "qlinear.hpp"

namespace hybrid::ops {

// bias: (1, out) or empty. y: (R, out), sized by the caller.
// Many rows: one GEMM (core/gemm.hpp). Few rows (decode: one token per sequence) make this
// a matrix-vector product, bound by reading W: the output columns (rows of W) are split
// across the threads, each reading its own slice of W once (float: qlinear.hpp's GEMV over
// the rows; double: Eigen's product, which runs on one thread per slice).
template <class S>
void linear_forward(CView<S> xv, CView<S> Wv, CView<S> bias, View<S> yv) {
  HYBRID_CHECK(xv.cols == Wv.cols && yv.rows == xv.rows && yv.cols == Wv.rows,
               "linear: x (", xv.rows, ", ", xv.cols, "), W (", Wv.rows, ", ", Wv.cols, "), y (",
               yv.rows, ", ", yv.cols, "); expected x (R, in), W (out, in), y (R, out)");
  const Index R = xv.rows, out = Wv.rows, in = Wv.cols;
  const auto x = emap(xv);
  const auto W = emap(Wv);
  auto y = emap(yv);
  constexpr Index kGemvRows = 4;  // above this, one threaded GEMM
  if constexpr (std::is_same_v<S, float>) {
    // Float weights in rows: the stored-weight GEMV (one stream per row of W, AVX-512 where
    // the build targets it), measured 1.2-1.5x Eigen's product for batch-1 decode.
    if (R <= kGemvRows && Wv.ld == in && R > 0 && out > 0) {
      const QWeight w{DType::F32, out, in, 0, Wv.data, nullptr};
      par::for_ranges(
          out, par::threads_for(out * in, Index(1) << 16),
          [&](Index o0, Index o1) { qdetail::gemv(xv, w, o0, o1, yv); }, 16);
      if (!bias.empty()) y.rowwise() += emap(bias).row(0);
      return;
    }
  }
  if (R <= kGemvRows) {
    par::for_ranges(
        out, par::threads_for(out * in, Index(1) << 16),
        [&](Index c0, Index c1) {  // Eigen's GEMV: BLAS GEMM with one row packs W first
          y.middleCols(c0, c1 - c0).noalias() = x * W.middleRows(c0, c1 - c0).transpose();
        },
        16);
  } else {
    blas::gemm<S>(blas::Op::N, blas::Op::T, R, out, in, S(1), xv.data, xv.ld, Wv.data, Wv.ld, S(0),
                  yv.data, yv.ld);
  }
  if (!bias.empty()) y.rowwise() += emap(bias).row(0);
}

// dy: (R, out). dx (R, in) += dy W; dW (out, in) += dy^T x; db (out) += column sums of dy.
template <class S>
void linear_backward(CView<S> x, CView<S> W, CView<S> dy, View<S> dx, View<S> dW, View<S> db) {
  const Index R = x.rows, in = x.cols, out = W.rows;
  if (dx)
    blas::gemm<S>(blas::Op::N, blas::Op::N, R, in, out, S(1), dy.data, dy.ld, W.data, W.ld, S(1),
                  dx.data, dx.ld);
  if (dW)
    blas::gemm<S>(blas::Op::T, blas::Op::N, out, in, R, S(1), dy.data, dy.ld, x.data, x.ld, S(1),
                  dW.data, dW.ld);
  if (db) emap(db).row(0) += emap(dy).colwise().sum();
}

}  // namespace hybrid::ops
