// CUDA twin of ops/conv1d.hpp (forward): causal depthwise convolution over time, samples
// before t = 0 from the history (the decode cache) or zero. One thread per output element;
// the new history is written by one thread per channel, oldest column first, so that it may
// alias the history it reads (as on the CPU). nvcc only.
#pragma once
#include "common.cuh"

namespace hybrid::kernels {

template <class S>
__device__ inline S conv_sample(const ops::DCView<S>& u, const ops::DCView<S>& hist, Index K, Index t, Index c) {
  if (t >= 0) return u(t, c);
  return hist.data ? hist(c, K + t) : S(0);
}

template <class S>
__global__ void conv1d_kernel(ops::DCView<S> u, ops::DCView<S> w, ops::DCView<S> bias, ops::DCView<S> hist,
                              ops::DView<S> y) {
  const Index T = u.rows, C = u.cols, K = w.cols, n = T * C;
  for (Index i = Index(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += Index(gridDim.x) * blockDim.x) {
    const Index t = i / C, c = i % C;
    S acc = bias.data ? bias(0, c) : S(0);
    for (Index k = 0; k < K; ++k) acc += w(c, k) * conv_sample(u, hist, K, t - K + 1 + k, c);
    y(t, c) = acc;
  }
}

template <class S>
__global__ void conv1d_history_kernel(ops::DCView<S> u, ops::DCView<S> hist, Index K, ops::DView<S> hist_out) {
  const Index T = u.rows, C = u.cols;
  for (Index c = Index(blockIdx.x) * blockDim.x + threadIdx.x; c < C; c += Index(gridDim.x) * blockDim.x)
    for (Index j = 0; j < K; ++j) hist_out(c, j) = conv_sample(u, hist, K, T - K + j, c);
}

}  // namespace hybrid::kernels

namespace hybrid::ops {

template <class S>
void causal_conv1d_forward(const Context& ctx, DCView<S> u, DCView<S> w, DCView<S> bias, DCView<S> hist,
                           DView<S> y, DView<S> hist_out) {
  const Index T = u.rows, C = u.cols, K = w.cols;
  HYBRID_CHECK(w.rows == C && y.rows == T && y.cols == C, "causal_conv1d: u (", T, ", ", C, "), w (", w.rows,
               ", ", w.cols, "), y (", y.rows, ", ", y.cols, "); expected w (C, K) and y (T, C)");
  HYBRID_CHECK(bias.empty() || (bias.rows == 1 && bias.cols == C), "causal_conv1d: bias (", bias.rows, ", ",
               bias.cols, "), expected (1, ", C, ")");
  HYBRID_CHECK(!hist.data || (hist.rows == C && hist.cols == K), "causal_conv1d: history is (", hist.rows, ", ",
               hist.cols, "), expected (C, K) = (", C, ", ", K, ")");
  HYBRID_CHECK(!hist_out.data || (hist_out.rows == C && hist_out.cols == K), "causal_conv1d: history is (",
               hist_out.rows, ", ", hist_out.cols, "), expected (C, K) = (", C, ", ", K, ")");
  if (bias.empty()) bias = DCView<S>(nullptr);  // the kernel tests the pointer, the CPU op emptiness
  if (T > 0 && C > 0) {
    kernels::conv1d_kernel<<<kernels::grid_for(T * C), kernels::kThreads, 0, ctx.raw_stream()>>>(u, w, bias, hist,
                                                                                                y);
    HYBRID_CUDA_LAUNCHED("conv1d_kernel", "(T, C, K) = (", T, ", ", C, ", ", K, ")");
  }
  if (hist_out.data && C > 0) {
    kernels::conv1d_history_kernel<<<kernels::grid_for(C), kernels::kThreads, 0, ctx.raw_stream()>>>(u, hist, K,
                                                                                                    hist_out);
    HYBRID_CUDA_LAUNCHED("conv1d_history_kernel", "(T, C, K) = (", T, ", ", C, ", ", K, ")");
  }
}

}  // namespace hybrid::ops
