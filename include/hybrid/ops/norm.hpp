// Normalisations over the last dimension of row-major activations (rows = tokens). Rows are
// split across threads (par::for_rows); the weight gradients are summed per row range and
// then added in range order (par::for_rows_reduce). Activations and their gradients are
// views (possibly strided); backward accumulates (+=), an empty view skips a gradient.
//   RMSNorm:   y = w * x * rsqrt(mean(x^2) + eps)
//   LayerNorm: y = w * (x - mean) * rsqrt(var + eps) + b
//   Gated RMSNorm (Mamba-2, gate before norm): v = y * silu(z), normalised per group of
//   `group` columns (group = width for the whole-width variant HF's torch path uses).
#pragma once
#include <cmath>

#include "../core/buffer.hpp"
#include "../core/parallel.hpp"
#include "../core/tensor.hpp"
#include "activation.hpp"

namespace hybrid::ops {

// x, y: (R, D), y sized by the caller, may alias x; w: (1, D).
// rstd: (R) or nullptr — receives 1/sqrt(mean(x^2) + eps) per row for the backward.
template <class S>
void rmsnorm_forward(CView<S> xv, CView<S> wv, S eps, View<S> yv, S* rstd = nullptr) {
  const Index R = xv.rows, D = xv.cols;
  const auto x = emap(xv);
  const auto w = emap(wv);
  auto y = emap(yv);
  par::for_rows(R, D, [&](Index r0, Index r1) {
    for (Index r = r0; r < r1; ++r) {
      const S ms = x.row(r).squaredNorm() / S(D);
      const S inv = S(1) / std::sqrt(ms + eps);
      if (rstd) rstd[r] = inv;
      y.row(r) = (x.row(r).array() * inv * w.row(0).array()).matrix();
    }
  });
}

// x, y: (R, D); w, b: (1, D). mean, rstd: (R) or nullptr, saved for the backward.
template <class S>
void layernorm_forward(CView<S> xv, CView<S> wv, CView<S> bv, S eps, View<S> yv, S* mean = nullptr,
                       S* rstd = nullptr) {
  const Index R = xv.rows, D = xv.cols;
  const auto x = emap(xv);
  const auto w = emap(wv);
  const auto b = emap(bv);
  auto y = emap(yv);
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
void gated_rmsnorm_forward(CView<S> yv, CView<S> zv, CView<S> wv, Index group, S eps,
                           View<S> outv, S* rstd = nullptr) {
  const Index R = yv.rows, W = yv.cols, ng = W / group;
  const auto y = emap(yv);
  const auto z = emap(zv);
  const auto w = emap(wv);
  auto out = emap(outv);
  par::for_rows(R, W, [&](Index r0, Index r1) {
    for (Index r = r0; r < r1; ++r) {
      out.row(r).array() = y.row(r).array() * silu_array(z.row(r).array());
      for (Index g = 0; g < ng; ++g) {
        auto seg = out.row(r).segment(g * group, group);
        const S inv = S(1) / std::sqrt(seg.squaredNorm() / S(group) + eps);
        if (rstd) rstd[r * ng + g] = inv;
        seg = (seg.array() * inv * w.row(0).segment(g * group, group).array()).matrix();
      }
    }
  });
}

// With g = dy * w and xh = x * rstd (the normalised row):
//   dx = rstd * (g - xh * mean(g * xh)),  dw = sum over rows of dy * xh.
// rstd: (R) from rmsnorm_forward. dy: (R, D). dx: (R, D); dw: (1, D).
// scratch: rmsnorm_backward_scratch(R, D) values (per-thread dw sums), or nullptr.
inline Index rmsnorm_backward_scratch(Index R, Index D) { return par::reduce_scratch(R, D, D); }

template <class S>
void rmsnorm_backward(CView<S> xv, CView<S> wv, const S* rstd, CView<S> dyv, View<S> dx,
                      View<S> dw, S* scratch = nullptr) {
  const Index R = xv.rows, D = xv.cols;
  const auto x = emap(xv);
  const auto w = emap(wv);
  const auto dy = emap(dyv);
  par::for_rows_reduce(R, D, dw.data, D, [&](Index r0, Index r1, S* dw_part, int) {
    for (Index r = r0; r < r1; ++r) {
      const auto xh = x.row(r).array() * rstd[r];
      if (dw_part) VecMap<S>(dw_part, D).array() += (dy.row(r).array() * xh).transpose();
      if (dx) {
        const auto g = dy.row(r).array() * w.row(0).array();
        const S m = (g * xh).sum() / S(D);
        emap(dx).row(r).array() += rstd[r] * (g - xh * m);
      }
    }
  }, scratch);
}

// As RMSNorm with xh = (x - mean) * rstd, plus the centring term:
//   dx = rstd * (g - mean(g) - xh * mean(g * xh)),  db = sum over rows of dy.
// mean, rstd: (R) from layernorm_forward. dx: (R, D); dw, db: (D).
template <class S>
void layernorm_backward(CView<S> xv, CView<S> wv, const S* mean, const S* rstd, CView<S> dyv,
                        View<S> dx, View<S> dw, View<S> db) {
  const Index R = xv.rows, D = xv.cols;
  const auto x = emap(xv);
  const auto w = emap(wv);
  const auto dy = emap(dyv);
  if (db) emap(db).row(0) += dy.colwise().sum();
  for (Index r = 0; r < R; ++r) {
    const auto xh = (x.row(r).array() - mean[r]) * rstd[r];
    if (dw) VecMap<S>(dw.data, D).array() += (dy.row(r).array() * xh).transpose();
    if (dx) {
      const auto g = dy.row(r).array() * w.row(0).array();
      const S mg = g.sum() / S(D), mgx = (g * xh).sum() / S(D);
      emap(dx).row(r).array() += rstd[r] * (g - mg - xh * mgx);
    }
  }
}

// The RMSNorm backward per group on v = y * silu(z), then through the gate:
//   dy += dv * silu(z),  dz += dv * y * silu'(z).
// rstd: (R, W / group) from gated_rmsnorm_forward. dout: (R, W). dy, dz: (R, W); dw: (W).
// scratch: gated_rmsnorm_backward_scratch(R, W) values, or nullptr to allocate them here.
inline Index gated_rmsnorm_backward_scratch(Index R, Index W) {
  return par::reduce_scratch(R, W, W) + 4 * par::reduce_parts(R, W) * W;
}

template <class S>
void gated_rmsnorm_backward(CView<S> yv, CView<S> zv, CView<S> wv, Index group, const S* rstd,
                            CView<S> doutv, View<S> dy, View<S> dz, View<S> dw,
                            S* scratch = nullptr) {
  const Index R = yv.rows, W = yv.cols, ng = W / group;
  const auto y = emap(yv);
  const auto z = emap(zv);
  const auto w = emap(wv);
  const auto dout = emap(doutv);
  Buffer<S> own;
  scratch = scratch_or_own(scratch, gated_rmsnorm_backward_scratch(R, W), own);
  S* rows_buf = scratch + par::reduce_scratch(R, W, W);  // 4 W per range
  par::for_rows_reduce(R, W, dw.data, W, [&](Index r0, Index r1, S* dw_part, int part) {
    S* b = rows_buf + Index(part) * 4 * W;  // sigmoid(z), silu(z), normalised v, dL/dv of a row
    Eigen::Map<RowVec<S>> sg(b, W), sz(b + W, W), vh(b + 2 * W, W), dv(b + 3 * W, W);
    for (Index r = r0; r < r1; ++r) {
      sg.array() = sigmoid_array(z.row(r).array());
      sz.array() = z.row(r).array() * sg.array();
      for (Index g = 0; g < ng; ++g) {
        const Index c0 = g * group;
        const S inv = rstd[r * ng + g];
        auto vhs = vh.segment(c0, group);
        vhs.array() = y.row(r).segment(c0, group).array() * sz.segment(c0, group).array() * inv;
        const auto gs = dout.row(r).segment(c0, group).array() * w.row(0).segment(c0, group).array();
        const S m = (gs * vhs.array()).sum() / S(group);
        dv.segment(c0, group).array() = inv * (gs - vhs.array() * m);
      }
      if (dw_part) VecMap<S>(dw_part, W).array() += (dout.row(r).array() * vh.array()).transpose();
      if (dy) emap(dy).row(r).array() += dv.array() * sz.array();
      if (dz)
        emap(dz).row(r).array() +=
            dv.array() * y.row(r).array() * silu_grad_given_sigmoid(z.row(r).array(), sg.array());
    }
  }, scratch);
}

}  // namespace hybrid::ops
