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

// x, y: (R, D), y sized by the caller, may alias x; w: (1, D).
// rstd: (R) or nullptr — receives 1/sqrt(mean(x^2) + eps) per row for the backward.
template <class S>
void rmsnorm_forward(CRef<S> x, CRef<S> w, S eps, Ref<S> y, S* rstd = nullptr) {
  const Index R = x.rows(), D = x.cols();
  for (Index r = 0; r < R; ++r) {
    const S ms = x.row(r).squaredNorm() / S(D);
    const S inv = S(1) / std::sqrt(ms + eps);
    if (rstd) rstd[r] = inv;
    y.row(r) = (x.row(r).array() * inv * w.row(0).array()).matrix();
  }
}

// x, y: (R, D); w, b: (1, D). mean, rstd: (R) or nullptr, saved for the backward.
template <class S>
void layernorm_forward(CRef<S> x, CRef<S> w, CRef<S> b, S eps, Ref<S> y, S* mean = nullptr,
                       S* rstd = nullptr) {
  const Index R = x.rows(), D = x.cols();
  for (Index r = 0; r < R; ++r) {
    const S mu = x.row(r).sum() / S(D);
    const auto c = (x.row(r).array() - mu);
    const S var = c.square().sum() / S(D);
    const S inv = S(1) / std::sqrt(var + eps);
    if (mean) mean[r] = mu;
    if (rstd) rstd[r] = inv;
    y.row(r) = (c * inv * w.row(0).array() + b.row(0).array()).matrix();
  }
}

// y, z: (R, W) with W = n_groups * group; w: (1, W). out: (R, W), sized by the caller.
// rstd: (R, W / group) or nullptr, saved for the backward.
template <class S>
void gated_rmsnorm_forward(CRef<S> y, CRef<S> z, CRef<S> w, Index group, S eps, Ref<S> out,
                           S* rstd = nullptr) {
  const Index R = y.rows(), W = y.cols(), ng = W / group;
  for (Index r = 0; r < R; ++r) {
    for (Index c = 0; c < W; ++c) out(r, c) = y(r, c) * silu(z(r, c));
    for (Index g = 0; g < ng; ++g) {
      auto seg = out.row(r).segment(g * group, group);
      const S inv = S(1) / std::sqrt(seg.squaredNorm() / S(group) + eps);
      if (rstd) rstd[r * ng + g] = inv;
      seg = (seg.array() * inv * w.row(0).segment(g * group, group).array()).matrix();
    }
  }
}

}  // namespace hybrid::ops
