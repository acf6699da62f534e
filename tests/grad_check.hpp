// Finite-difference gradient checks in double precision, shared by the op and model tests.
//   L(theta) = sum(r ⊙ f(theta)) with a fixed random r, so every output entry matters;
//   dL/dtheta_i ≈ (L(theta + h e_i) - L(theta - h e_i)) / 2h (central differences).
#pragma once
#include <algorithm>
#include <cmath>
#include <functional>
#include <vector>

#include <hybrid/core/rng.hpp>
#include <hybrid/core/tensor.hpp>

#include "test_util.hpp"

namespace hybrid::testing {

struct FdResult {
  double max_abs_err = 0;  // max |analytic - numeric|
  double max_rel_err = 0;  // max |analytic - numeric| / max(|numeric|, scale)
  Index checked = 0;
};

// x: n parameters (perturbed in place and restored); analytic: dL/dx (n); loss(): L at the
// current x. Checks up to max_coords coordinates (all if n <= max_coords, else a random
// sample). `scale` floors the relative error's denominator (gradients near 0).
inline FdResult fd_check(double* x, const double* analytic, Index n,
                         const std::function<double()>& loss, Index max_coords = 64,
                         double h = 1e-6, double scale = 1e-3, std::uint64_t seed = 7) {
  std::vector<Index> idx;
  if (n <= max_coords) {
    for (Index i = 0; i < n; ++i) idx.push_back(i);
  } else {
    Rng rng(seed);
    for (Index k = 0; k < max_coords; ++k) idx.push_back(Index(rng.below(n)));
  }
  FdResult r;
  for (Index i : idx) {
    const double x0 = x[i];
    x[i] = x0 + h;
    const double lp = loss();
    x[i] = x0 - h;
    const double lm = loss();
    x[i] = x0;
    const double num = (lp - lm) / (2 * h);
    const double err = std::abs(num - analytic[i]);
    r.max_abs_err = std::max(r.max_abs_err, err);
    r.max_rel_err = std::max(r.max_rel_err, err / std::max(std::abs(num), scale));
    ++r.checked;
  }
  return r;
}

// A fixed random weighting r for L = sum(r ⊙ y).
inline Mat<double> random_weights(Index rows, Index cols, std::uint64_t seed) {
  return test_util::random_mat<double>(rows, cols, seed);
}

inline Mat<double> random_normal(Index rows, Index cols, std::uint64_t seed, double std = 1) {
  return random_weights(rows, cols, seed) * std;
}

}  // namespace hybrid::testing
