// Linear layer: y = x W^T (+ b). x: (R, in), W: (out, in) row-major as in PyTorch, y: (R, out).
// Backward accumulates (+=) into every gradient it is given; nullptr skips one.
#pragma once
#include "../core/tensor.hpp"

namespace hybrid::ops {

// bias: (1, out) or empty. y: (R, out), sized by the caller.
template <class S>
void linear_forward(CRef<S> x, CRef<S> W, CRef<S> bias, Ref<S> y) {
  y.noalias() = x * W.transpose();
  if (bias.size()) y.rowwise() += bias.row(0);
}

// dy: (R, out). dx (R, in) += dy W; dW (out, in) += dy^T x; db (out) += column sums of dy.
template <class S>
void linear_backward(CRef<S> x, CRef<S> W, CRef<S> dy, S* dx, S* dW, S* db) {
  const Index R = x.rows(), in = x.cols(), out = W.rows();
  if (dx) MatMap<S>(dx, R, in).noalias() += dy * W;
  if (dW) MatMap<S>(dW, out, in).noalias() += dy.transpose() * x;
  if (db) VecMap<S>(db, out) += dy.colwise().sum().transpose();
}

}  // namespace hybrid::ops
