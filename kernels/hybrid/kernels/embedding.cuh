// CUDA twin of ops/embedding.hpp (forward): out = mult * table[ids]. nvcc only.
#pragma once
#include <cuda_runtime.h>

#include "common.cuh"

namespace hybrid::kernels {

template <class S>
__global__ void embedding_kernel(ops::DCView<S> table, const int* ids, Index R, S mult, ops::DView<S> out) {
  const Index D = table.cols, n = R * D;
  for (Index i = Index(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += Index(gridDim.x) * blockDim.x) {
    const Index r = i / D, c = i % D;
    out(r, c) = mult * table(ids[r], c);
  }
}

}  // namespace hybrid::kernels

namespace hybrid::ops {

template <class S>
void embedding_forward(const Context& ctx, DCView<S> table, const int* ids, Index R, S mult, DView<S> out) {
  const Index V = table.rows;
  HYBRID_CHECK(out.rows == R && out.cols == table.cols, "embedding: out (", out.rows, ", ", out.cols,
               "), expected (R, D) = (", R, ", ", table.cols, ")");
  for (Index r = 0; r < R; ++r)  // the CPU op's check, on the host ids before they travel
    HYBRID_CHECK(ids[r] >= 0 && ids[r] < V, "embedding: token id ", ids[r], " at row ", r,
                 " is outside the vocabulary [0, ", V, ")");
  if (R == 0) return;
  cuda::Scratch sc(ctx);
  const int* dids = sc.upload(ids, std::size_t(R), "token ids");
  kernels::embedding_kernel<<<kernels::grid_for(R * table.cols), kernels::kThreads, 0, ctx.raw_stream()>>>(
      table, dids, R, mult, out);
  HYBRID_CUDA_LAUNCHED("embedding_kernel", "R ", R, ", (V, D) = (", V, ", ", table.cols, ")");
}

}  // namespace hybrid::ops
