// Dense matrix aliases used throughout: activations are row-major (rows = tokens),
// weights are row-major [out, in] as in PyTorch, so a linear layer is y = x W^T.
#pragma once
#include <Eigen/Dense>
#include <cstdint>

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

// Op arguments: any row-major block with unit inner stride (a Mat, a Map over an arena
// buffer, a column range of a wider matrix) binds to these without a copy.
template <class S>
using CRef = Eigen::Ref<const Mat<S>>;
template <class S>
using Ref = Eigen::Ref<Mat<S>>;

using Index = std::int64_t;

}  // namespace hybrid
