// Dense matrix aliases used throughout: activations are row-major (rows = tokens),
// weights are row-major [out, in] as in PyTorch, so a linear layer is y = x W^T. Ops take
// views (core/view.hpp); emap() turns a host view into the Eigen map their bodies use.
#pragma once
#include <Eigen/Dense>
#include <cstdint>

#include "index.hpp"
#include "view.hpp"

namespace hybrid {

template <class S>
using Mat = Eigen::Matrix<S, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
template <class S>
using Vec = Eigen::Matrix<S, Eigen::Dynamic, 1>;
template <class S>
using RowVec = Eigen::Matrix<S, 1, Eigen::Dynamic>;
template <class S>
using MatMap = Eigen::Map<Mat<S>>;
template <class S>
using CMatMap = Eigen::Map<const Mat<S>>;
template <class S>
using VecMap = Eigen::Map<Vec<S>>;
template <class S>
using CVecMap = Eigen::Map<const Vec<S>>;

// A host view as an Eigen matrix with its row stride: what CPU op bodies compute on.
template <class S>
using EMap = Eigen::Map<Mat<std::remove_const_t<S>>, 0, Eigen::OuterStride<>>;
template <class S>
using CEMap = Eigen::Map<const Mat<std::remove_const_t<S>>, 0, Eigen::OuterStride<>>;

template <class S>
EMap<S> emap(View<S, Cpu> v) {
  return EMap<S>(v.data, v.rows, v.cols, Eigen::OuterStride<>(v.ld));
}
template <class S>
CEMap<S> emap(View<const S, Cpu> v) {
  return CEMap<S>(v.data, v.rows, v.cols, Eigen::OuterStride<>(v.ld));
}

}  // namespace hybrid
