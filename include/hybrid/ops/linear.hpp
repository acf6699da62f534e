// Linear layer: y = x W^T (+ b). x: (R, in), W: (out, in) row-major as in PyTorch, y: (R, out).
// Backward accumulates (+=) into every gradient it is given; nullptr skips one.
#pragma once
#include "../core/gemm.hpp"
#include "../core/parallel.hpp"
#include "../core/tensor.hpp"

namespace hybrid::ops {

// bias: (1, out) or empty. y: (R, out), sized by the caller.
// Many rows: one GEMM (core/gemm.hpp). Few rows (decode: one token per sequence) make this
// a matrix-vector product, bound by reading W; Eigen runs those on one thread, so the
// output columns (rows of W) are split across the threads here, each reading its own slice
// of W once.
template <class S>
void linear_forward(CRef<S> x, CRef<S> W, CRef<S> bias, Ref<S> y) {
  const Index R = x.rows(), out = W.rows(), in = W.cols();
  constexpr Index kGemvRows = 4;  // above this, one threaded GEMM
  if (R <= kGemvRows) {
    par::for_ranges(
        out, par::threads_for(out * in, Index(1) << 16),
        [&](Index c0, Index c1) {  // Eigen's GEMV: BLAS GEMM with one row packs W first
          y.middleCols(c0, c1 - c0).noalias() = x * W.middleRows(c0, c1 - c0).transpose();
        },
        16);
  } else {
    blas::gemm<S>(blas::Op::N, blas::Op::T, R, out, in, S(1), x.data(), x.outerStride(), W.data(),
                  W.outerStride(), S(0), y.data(), y.outerStride());
  }
  if (bias.size()) y.rowwise() += bias.row(0);
}

// dy: (R, out). dx (R, in) += dy W; dW (out, in) += dy^T x; db (out) += column sums of dy.
template <class S>
void linear_backward(CRef<S> x, CRef<S> W, CRef<S> dy, S* dx, S* dW, S* db) {
  const Index R = x.rows(), in = x.cols(), out = W.rows();
  if (dx)
    blas::gemm<S>(blas::Op::N, blas::Op::N, R, in, out, S(1), dy.data(), dy.outerStride(),
                  W.data(), W.outerStride(), S(1), dx, in);
  if (dW)
    blas::gemm<S>(blas::Op::T, blas::Op::N, out, in, R, S(1), dy.data(), dy.outerStride(),
                  x.data(), x.outerStride(), S(1), dW, in);
  if (db) VecMap<S>(db, out) += dy.colwise().sum().transpose();
}

}  // namespace hybrid::ops
