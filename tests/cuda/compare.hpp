// What the GPU tests compare with: the relative error of a device result against the CPU's.
#pragma once
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include <hybrid/core/tensor.hpp>

namespace hybrid::cuda_test {

// max |a - b| / max(1, max |b|); infinite where either side has a NaN (Eigen's maxCoeff
// would skip it) or an infinity the other side does not have.
template <class S>
double rel_err(const Mat<S>& a, const Mat<S>& b) {
  REQUIRE(a.rows() == b.rows());
  REQUIRE(a.cols() == b.cols());
  if (a.size() == 0) return 0;
  for (Index i = 0; i < a.size(); ++i) {
    const S x = a.data()[i], y = b.data()[i];
    if (std::isnan(x) || std::isnan(y) || ((std::isinf(x) || std::isinf(y)) && x != y))
      return std::numeric_limits<double>::infinity();
  }
  const Mat<S> d = (a - b).unaryExpr([](S v) { return std::isinf(v) || std::isnan(v) ? S(0) : std::abs(v); });
  const Mat<S> m = b.unaryExpr([](S v) { return std::isinf(v) ? S(0) : std::abs(v); });
  const double scale = std::max<double>(1.0, double(m.maxCoeff()));
  return double(d.maxCoeff()) / scale;
}

}  // namespace hybrid::cuda_test
