// Normalisations over the last dimension of row-major activations (rows = tokens).
//   RMSNorm:   y = w * x * rsqrt(mean(x^2) + eps)
//   LayerNorm: y = w * (x - mean) * rsqrt(var + eps) + b
//   Gated RMSNorm (Mamba-2, gate before norm): v = y * silu(z), normalised per group of
//   `group` columns (group = width for the whole-width variant HF's torch path uses).
#pragma once
#include <cmath>

#include "../core/tensor.hpp"
#include "activation.hpp"

namespace hybrid::ops {

// x, y: (R, D); w: (1, D). y may alias x.
template <class S>
void rmsnorm_forward(const Mat<S>& x, const Mat<S>& w, S eps, Mat<S>& y) {
  const Index R = x.rows(), D = x.cols();
  y.resize(R, D);
  for (Index r = 0; r < R; ++r) {
    const S ms = x.row(r).squaredNorm() / S(D);
    const S inv = S(1) / std::sqrt(ms + eps);
    y.row(r) = (x.row(r).array() * inv * w.row(0).array()).matrix();
  }
}

// x, y: (R, D); w, b: (1, D).
template <class S>
void layernorm_forward(const Mat<S>& x, const Mat<S>& w, const Mat<S>& b, S eps, Mat<S>& y) {
  const Index R = x.rows(), D = x.cols();
  y.resize(R, D);
  for (Index r = 0; r < R; ++r) {
    const S mean = x.row(r).sum() / S(D);
    const auto c = (x.row(r).array() - mean);
    const S var = c.square().sum() / S(D);
    const S inv = S(1) / std::sqrt(var + eps);
    y.row(r) = (c * inv * w.row(0).array() + b.row(0).array()).matrix();
  }
}

// y, z: (R, W) with W = n_groups * group; w: (1, W). out: (R, W).
template <class S>
void gated_rmsnorm_forward(const Mat<S>& y, const Mat<S>& z, const Mat<S>& w, Index group,
                           S eps, Mat<S>& out) {
  const Index R = y.rows(), W = y.cols();
  out.resize(R, W);
  for (Index r = 0; r < R; ++r) {
    for (Index c = 0; c < W; ++c) out(r, c) = y(r, c) * silu(z(r, c));
    for (Index g0 = 0; g0 < W; g0 += group) {
      auto seg = out.row(r).segment(g0, group);
      const S inv = S(1) / std::sqrt(seg.squaredNorm() / S(group) + eps);
      seg = (seg.array() * inv * w.row(0).segment(g0, group).array()).matrix();
    }
  }
}

}  // namespace hybrid::ops
