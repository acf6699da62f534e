// Linear layer: y = x W^T (+ b). x: (R, in), W: (out, in) row-major as in PyTorch, y: (R, out).
#pragma once
#include "../core/tensor.hpp"

namespace hybrid::ops {

// bias: (1, out) or empty.
template <class S>
void linear_forward(const Eigen::Ref<const Mat<S>>& x, const Mat<S>& W, const Mat<S>& bias,
                    Mat<S>& y) {
  y.resize(x.rows(), W.rows());
  y.noalias() = x * W.transpose();
  if (bias.size()) y.rowwise() += bias.row(0);
}

}  // namespace hybrid::ops
