// CUDA twins of ops/norm.hpp (forward): one block per row (per row and group for the gated
// norm), sums in the scalar type over a block reduction. y may alias x, as on the CPU:
// every element is read and written by the same thread after the reduction. nvcc only.
#pragma once
#include "common.cuh"

namespace hybrid::kernels {

template <class S>
__global__ void rmsnorm_kernel(ops::DCView<S> x, ops::DCView<S> w, S eps, ops::DView<S> y, S* rstd) {
  __shared__ S red[32];
  const Index r = blockIdx.x, D = x.cols;
  const S* xr = x.row_ptr(r);
  S ss = 0;
  for (Index c = threadIdx.x; c < D; c += blockDim.x) ss += xr[c] * xr[c];
  ss = block_sum(ss, red);
  const S inv = S(1) / sqrt(ss / S(D) + eps);
  if (rstd && threadIdx.x == 0) rstd[r] = inv;
  S* yr = y.row_ptr(r);
  for (Index c = threadIdx.x; c < D; c += blockDim.x) yr[c] = xr[c] * inv * w(0, c);
}

template <class S>
__global__ void layernorm_kernel(ops::DCView<S> x, ops::DCView<S> w, ops::DCView<S> b, S eps, ops::DView<S> y,
                                 S* mean, S* rstd) {
  __shared__ S red[32];
  const Index r = blockIdx.x, D = x.cols;
  const S* xr = x.row_ptr(r);
  S s = 0;
  for (Index c = threadIdx.x; c < D; c += blockDim.x) s += xr[c];
  const S mu = block_sum(s, red) / S(D);
  S ss = 0;
  for (Index c = threadIdx.x; c < D; c += blockDim.x) ss += (xr[c] - mu) * (xr[c] - mu);
  const S inv = S(1) / sqrt(block_sum(ss, red) / S(D) + eps);
  if (threadIdx.x == 0) {
    if (mean) mean[r] = mu;
    if (rstd) rstd[r] = inv;
  }
  S* yr = y.row_ptr(r);
  const bool bias = !b.empty();
  for (Index c = threadIdx.x; c < D; c += blockDim.x)
    yr[c] = (xr[c] - mu) * inv * w(0, c) + (bias ? b(0, c) : S(0));
}

// grid (R, W / group): v = y * silu(z) over the group, normalised by its RMS, times w.
template <class S>
__global__ void gated_rmsnorm_kernel(ops::DCView<S> y, ops::DCView<S> z, ops::DCView<S> w, Index group, S eps,
                                     ops::DView<S> out, S* rstd) {
  __shared__ S red[32];
  const Index r = blockIdx.x, g = blockIdx.y, c0 = g * group, ng = gridDim.y;
  const S* yr = y.row_ptr(r);
  const S* zr = z.row_ptr(r);
  S ss = 0;
  for (Index c = c0 + threadIdx.x; c < c0 + group; c += blockDim.x) {
    const S v = yr[c] * zr[c] * dev_sigmoid(zr[c]);
    ss += v * v;
  }
  const S inv = S(1) / sqrt(block_sum(ss, red) / S(group) + eps);
  if (rstd && threadIdx.x == 0) rstd[r * ng + g] = inv;
  S* outr = out.row_ptr(r);
  for (Index c = c0 + threadIdx.x; c < c0 + group; c += blockDim.x)
    outr[c] = yr[c] * zr[c] * dev_sigmoid(zr[c]) * inv * w(0, c);
}

inline void check_rows(const char* op, Index R) {
  HYBRID_CHECK(R <= Index(0x7fffffff), op, ": ", R, " rows exceed the grid's 2^31 - 1 blocks");
}

}  // namespace hybrid::kernels

namespace hybrid::ops {

template <class S>
void rmsnorm_forward(const Context& ctx, DCView<S> x, DCView<S> w, S eps, DView<S> y, S* rstd) {
  HYBRID_CHECK(w.rows == 1 && w.cols == x.cols && y.rows == x.rows && y.cols == x.cols, "rmsnorm: x (", x.rows,
               ", ", x.cols, "), w (", w.rows, ", ", w.cols, "), y (", y.rows, ", ", y.cols,
               "); expected w (1, D) and y the shape of x");
  if (x.rows == 0) return;
  kernels::check_rows("rmsnorm", x.rows);
  kernels::rmsnorm_kernel<<<unsigned(x.rows), kernels::kThreads, 0, ctx.raw_stream()>>>(x, w, eps, y, rstd);
  HYBRID_CUDA_LAUNCHED("rmsnorm_kernel", "(", x.rows, ", ", x.cols, ")");
}

template <class S>
void layernorm_forward(const Context& ctx, DCView<S> x, DCView<S> w, DCView<S> b, S eps, DView<S> y, S* mean,
                       S* rstd) {
  HYBRID_CHECK(w.rows == 1 && w.cols == x.cols && y.rows == x.rows && y.cols == x.cols &&
                   (b.empty() || (b.rows == 1 && b.cols == x.cols)),
               "layernorm: x (", x.rows, ", ", x.cols, "), w (", w.rows, ", ", w.cols, "), b (", b.rows, ", ",
               b.cols, "), y (", y.rows, ", ", y.cols, "); expected w, b (1, D) and y the shape of x");
  if (x.rows == 0) return;
  kernels::check_rows("layernorm", x.rows);
  kernels::layernorm_kernel<<<unsigned(x.rows), kernels::kThreads, 0, ctx.raw_stream()>>>(x, w, b, eps, y, mean,
                                                                                          rstd);
  HYBRID_CUDA_LAUNCHED("layernorm_kernel", "(", x.rows, ", ", x.cols, ")");
}

template <class S>
void gated_rmsnorm_forward(const Context& ctx, DCView<S> y, DCView<S> z, DCView<S> w, Index group, S eps,
                           DView<S> out, S* rstd) {
  const Index R = y.rows, W = y.cols;
  HYBRID_CHECK(group > 0 && W % group == 0, "gated_rmsnorm: group ", group, " does not divide the width ", W);
  HYBRID_CHECK(z.rows == R && z.cols == W && out.rows == R && out.cols == W && w.rows == 1 && w.cols == W,
               "gated_rmsnorm: y (", R, ", ", W, "), z (", z.rows, ", ", z.cols, "), w (", w.rows, ", ", w.cols,
               "), out (", out.rows, ", ", out.cols, "); expected z and out the shape of y, w (1, W)");
  if (R == 0) return;
  kernels::check_rows("gated_rmsnorm", R);
  HYBRID_CHECK(W / group <= 65535, "gated_rmsnorm: ", W / group, " groups per row exceed 65535");
  const dim3 grid(unsigned(R), unsigned(W / group));
  kernels::gated_rmsnorm_kernel<<<grid, kernels::kThreads, 0, ctx.raw_stream()>>>(y, z, w, group, eps, out, rstd);
  HYBRID_CUDA_LAUNCHED("gated_rmsnorm_kernel", "(", R, ", ", W, "), group ", group);
}

}  // namespace hybrid::ops
