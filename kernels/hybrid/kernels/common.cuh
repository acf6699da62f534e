// What every kernel file shares: launch checks, grid sizes with 64-bit element counts,
// warp and block reductions. nvcc only.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "hybrid/cuda/ops.hpp"

namespace hybrid::kernels {

// After a launch: a bad configuration (grid too large, too much shared memory) is reported
// here, naming the kernel and the shapes.
#define HYBRID_CUDA_LAUNCHED(kernel, ...) HYBRID_CUDA_CHECK(cudaGetLastError(), "launching " kernel ": " __VA_OPT__(, ) __VA_ARGS__)

inline constexpr int kThreads = 256;

// Blocks for a grid-stride loop over n elements: enough to fill the device, never more
// than the grid allows (the loop covers the rest; n may exceed 2^31).
inline unsigned grid_for(Index n, int threads = kThreads) {
  const Index want = (n + threads - 1) / threads;
  return unsigned(want < 1 ? 1 : (want > 65535 * 8 ? 65535 * 8 : want));
}

template <class S>
__device__ inline S warp_sum(S v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
template <class S>
__device__ inline S warp_max(S v) {
  for (int o = 16; o > 0; o >>= 1) {
    const S w = __shfl_xor_sync(0xffffffffu, v, o);
    v = w > v ? w : v;
  }
  return v;
}

// Sum over the block (blockDim.x a multiple of 32, at most 1024); every thread gets it.
// `smem`: 32 values of shared memory; the call synchronises the block.
template <class S>
__device__ inline S block_sum(S v, S* smem) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
  v = warp_sum(v);
  __syncthreads();  // smem may still be read by a previous call
  if (lane == 0) smem[warp] = v;
  __syncthreads();
  S t = lane < nw ? smem[lane] : S(0);
  return warp_sum(t);
}

// Element i of a (R, C) view with row stride ld.
HYBRID_HOST_DEVICE inline Index at(Index i, Index C, Index ld) { return (i / C) * ld + i % C; }

template <class S>
__device__ inline S dev_exp(S v) { return exp(v); }
template <>
__device__ inline float dev_exp<float>(float v) { return expf(v); }

template <class S>
__device__ inline S dev_sigmoid(S v) { return S(1) / (S(1) + dev_exp(-v)); }

}  // namespace hybrid::kernels
