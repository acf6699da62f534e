// Greedy decoding on the device: the argmax of each row of logits, the lowest id on ties,
// skipping ids outside an allowed mask and -inf logits, as infer/sampling.hpp's Sampler
// does at temperature 0. One block per row; a NaN or +inf logit, or a row with nothing to
// pick, is reported on the host naming the row and the id, as the CPU sampler does. nvcc only.
#pragma once
#include <cmath>
#include <cstdint>
#include <vector>

#include "common.cuh"

namespace hybrid::kernels {

// out[r] = the id, or -1 when nothing can be picked; bad[r] = the first NaN / +inf id + 1, or 0.
template <class S>
__global__ void greedy_kernel(ops::DCView<S> logits, const std::uint8_t* allowed, Index n_allowed, int* out,
                              long long* bad) {
  __shared__ S best_v[kThreads];
  __shared__ int best_i[kThreads];
  __shared__ long long bad_i[kThreads];
  const Index r = blockIdx.x, V = logits.cols;
  const S* row = logits.row_ptr(r);
  S bv = -S(INFINITY);
  int bi = -1;
  long long first_bad = 0;
  for (Index i = threadIdx.x; i < V; i += blockDim.x) {
    const S v = row[i];
    if (isnan(v) || v == S(INFINITY)) {
      if (first_bad == 0) first_bad = i + 1;
      continue;
    }
    const bool ok = allowed == nullptr || (i < n_allowed && allowed[i] != 0);
    if (ok && v > -S(INFINITY) && (bi < 0 || v > bv)) bv = v, bi = int(i);  // ids ascend per thread
  }
  best_v[threadIdx.x] = bv;
  best_i[threadIdx.x] = bi;
  bad_i[threadIdx.x] = first_bad;
  __syncthreads();
  for (int s = blockDim.x / 2; s > 0; s >>= 1) {
    if (int(threadIdx.x) < s) {
      const S ov = best_v[threadIdx.x + s];
      const int oi = best_i[threadIdx.x + s];
      const int mi = best_i[threadIdx.x];
      if (oi >= 0 && (mi < 0 || ov > best_v[threadIdx.x] || (ov == best_v[threadIdx.x] && oi < mi)))
        best_v[threadIdx.x] = ov, best_i[threadIdx.x] = oi;
      const long long ob = bad_i[threadIdx.x + s], mb = bad_i[threadIdx.x];
      if (ob != 0 && (mb == 0 || ob < mb)) bad_i[threadIdx.x] = ob;
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    out[r] = best_i[0];
    bad[r] = bad_i[0];
  }
}

}  // namespace hybrid::kernels

namespace hybrid::ops {

template <class S>
void greedy_rows(const Context& ctx, DCView<S> logits, const std::uint8_t* allowed, Index n_allowed, int* ids) {
  const Index R = logits.rows, V = logits.cols;
  HYBRID_CHECK(V > 0, "sampling: the logits row is empty");
  if (R == 0) return;
  HYBRID_CHECK(R <= Index(0x7fffffff), "greedy_rows: ", R, " rows exceed the grid");
  cuda::Scratch sc(ctx);
  int* dout = sc.get<int>(std::size_t(R));
  long long* dbad = sc.get<long long>(std::size_t(R));
  kernels::greedy_kernel<S><<<unsigned(R), kernels::kThreads, 0, ctx.raw_stream()>>>(logits, allowed, n_allowed,
                                                                                      dout, dbad);
  HYBRID_CUDA_LAUNCHED("greedy_kernel", "(", R, ", ", V, ")");
  std::vector<long long> bad(static_cast<std::size_t>(R));
  HYBRID_CUDA_CHECK(cudaMemcpyAsync(ids, dout, std::size_t(R) * sizeof(int), cudaMemcpyDeviceToHost, ctx.raw_stream()),
                    R, " ids");
  HYBRID_CUDA_CHECK(cudaMemcpyAsync(bad.data(), dbad, std::size_t(R) * sizeof(long long), cudaMemcpyDeviceToHost,
                                    ctx.raw_stream()),
                    R, " flags");
  ctx.sync();
  for (Index r = 0; r < R; ++r) {
    HYBRID_CHECK(bad[r] == 0, "sampling: the logit at position ", bad[r] - 1, " (token id ", bad[r] - 1, ") of row ",
                 r, " is NaN or +inf; the model produced non-finite logits");
    HYBRID_CHECK(ids[r] >= 0, "sampling: nothing can be sampled in row ", r,
                 ": every allowed token id has logit -inf, or none is allowed");
  }
}

}  // namespace hybrid::ops
