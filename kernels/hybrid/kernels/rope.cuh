// CUDA twin of ops/rope.hpp (forward): NeoX pairing (i, i + k/2) of the first k dims of each
// head, angles pos * base^(-2i/k) in the scalar type, one thread per pair. nvcc only.
#pragma once
#include "common.cuh"

namespace hybrid::kernels {

template <class S>
__global__ void rope_kernel(ops::DView<S> x, int n_heads, int P, Index pos0, S base, int k) {
  const int half = k / 2;
  const Index n = x.rows * n_heads * half;
  for (Index i = Index(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += Index(gridDim.x) * blockDim.x) {
    const Index t = i / (Index(n_heads) * half);
    const int h = int(i / half % n_heads), p = int(i % half);
    const S inv_freq = S(1) / pow(base, S(2 * p) / S(k));
    const S ang = S(pos0 + t) * inv_freq;
    const S c = cos(ang), s = sin(ang);
    S* v = x.row_ptr(t) + Index(h) * P;
    const S a = v[p], b = v[p + half];
    v[p] = a * c - b * s;
    v[p + half] = b * c + a * s;
  }
}

}  // namespace hybrid::kernels

namespace hybrid::ops {

template <class S>
void rope_forward(const Context& ctx, DView<S> x, int n_heads, int P, Index pos0, double base, int rot) {
  HYBRID_CHECK(P % 2 == 0, "rope: head dim ", P, " must be even");
  HYBRID_CHECK(x.cols == Index(n_heads) * P, "rope: x has ", x.cols, " columns, expected n_heads * P = ",
               Index(n_heads) * P);
  const int k = rot > 0 ? rot : P;
  HYBRID_CHECK(k % 2 == 0 && k <= P, "rope: the rotated dims ", k, " must be even and at most the head dim ", P);
  const Index n = x.rows * n_heads * (k / 2);
  if (n == 0) return;
  kernels::rope_kernel<<<kernels::grid_for(n), kernels::kThreads, 0, ctx.raw_stream()>>>(x, n_heads, P, pos0,
                                                                                         S(base), k);
  HYBRID_CUDA_LAUNCHED("rope_kernel", "(T, heads, P) = (", x.rows, ", ", n_heads, ", ", P, "), rotated ", k);
}

}  // namespace hybrid::ops
