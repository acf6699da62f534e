// CUDA twin of ops/attention.hpp (forward), flash-attention style: a block takes 16 query
// rows of one head; key/value tiles of 32 rows stream through shared memory; each warp
// keeps 4 query rows' running max, sum and output (lane l holds dims l, l + 32, ...), one key
// per lane per tile, an online softmax; no (Tq, Tk) matrix exists. The visibility rule is
// ops/attention_mask.hpp's, shared with the CPU op. Softmax and sums in the scalar type.
// nvcc only.
#pragma once
#include <cmath>

#include "common.cuh"

namespace hybrid::kernels {

inline constexpr int kAttnWarps = 4, kAttnRowsPerWarp = 4, kAttnKeys = 32;
inline constexpr int kAttnRows = kAttnWarps * kAttnRowsPerWarp;  // query rows per block

// U = dims per lane (ceil(P / 32)).
template <class S, int U>
__global__ void __launch_bounds__(kAttnWarps * 32)
    attention_kernel(const S* q, const S* k, const S* v, S* o, ops::AttnDims d, S scale, Index qpos0, Index kpos0,
                     int window, S* lse) {
  extern __shared__ unsigned char smem_raw[];
  const int P = d.P, kst = P + 1;  // K rows padded: lanes read different rows
  S* Qs = reinterpret_cast<S*>(smem_raw);  // (kAttnRows, P)
  S* Ks = Qs + kAttnRows * P;              // (kAttnKeys, P + 1)
  S* Vs = Ks + kAttnKeys * kst;             // (kAttnKeys, P)
  const int h = blockIdx.y, gkv = h / (d.H / d.G);
  const Index i0 = Index(blockIdx.x) * kAttnRows;
  const Index i1 = i0 + kAttnRows < d.Tq ? i0 + kAttnRows : d.Tq;
  const Index ldq = Index(d.H) * P, kld = d.key_ld(), khs = d.key_hs();
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  for (Index e = threadIdx.x; e < Index(kAttnRows) * P; e += blockDim.x) {
    const Index i = i0 + e / P;
    Qs[e] = i < i1 ? q[i * ldq + Index(h) * P + e % P] : S(0);
  }
  Index j0, j1;
  ops::detail::attn_key_range(d, i0, i1, qpos0, kpos0, window, j0, j1);
  constexpr S kInf = S(INFINITY);
  S m[kAttnRowsPerWarp], l[kAttnRowsPerWarp], acc[kAttnRowsPerWarp][U];
#pragma unroll
  for (int r = 0; r < kAttnRowsPerWarp; ++r) {
    m[r] = -kInf;
    l[r] = 0;
#pragma unroll
    for (int u = 0; u < U; ++u) acc[r][u] = 0;
  }
  for (Index kt = j0; kt < j1; kt += kAttnKeys) {
    __syncthreads();  // the previous tile is consumed (and, first time, Qs is written)
    for (Index e = threadIdx.x; e < Index(kAttnKeys) * P; e += blockDim.x) {
      const Index j = kt + e / P;
      const int dd = int(e % P);
      const bool in = j < j1;
      Ks[(e / P) * kst + dd] = in ? k[j * kld + Index(gkv) * khs + dd] : S(0);
      Vs[e] = in ? v[j * kld + Index(gkv) * khs + dd] : S(0);
    }
    __syncthreads();
    const Index j = kt + lane;
#pragma unroll
    for (int r = 0; r < kAttnRowsPerWarp; ++r) {
      const int row = warp * kAttnRowsPerWarp + r;
      const Index i = i0 + row;
      if (i >= i1) continue;  // warp-uniform
      const bool vis = j < j1 && ops::detail::attn_visible(qpos0 + i, kpos0 + j, window);
      S s = -kInf;
      if (vis) {
        S dot = 0;
        const S* qr = Qs + row * P;
        const S* kr = Ks + lane * kst;
        for (int dd = 0; dd < P; ++dd) dot += qr[dd] * kr[dd];
        s = dot * scale;
      }
      const S tmax = warp_max(s);
      if (tmax == -kInf) continue;  // no key of this tile is visible from row i (warp-uniform)
      const S mnew = m[r] > tmax ? m[r] : tmax;
      const S p = vis ? dev_exp(s - mnew) : S(0);
      const S corr = dev_exp(m[r] - mnew);  // 0 while m is -inf
      l[r] = l[r] * corr + warp_sum(p);
#pragma unroll
      for (int u = 0; u < U; ++u) acc[r][u] *= corr;
      for (int jj = 0; jj < kAttnKeys; ++jj) {
        const S pj = __shfl_sync(0xffffffffu, p, jj);
        if (pj == S(0)) continue;  // warp-uniform: every lane read the same pj
        const S* vr = Vs + jj * P;
#pragma unroll
        for (int u = 0; u < U; ++u) {
          const int dd = lane + 32 * u;
          if (dd < P) acc[r][u] += pj * vr[dd];
        }
      }
      m[r] = mnew;
    }
  }
#pragma unroll
  for (int r = 0; r < kAttnRowsPerWarp; ++r) {
    const Index i = i0 + warp * kAttnRowsPerWarp + r;
    if (i >= i1) continue;
    const S inv = l[r] > S(0) ? S(1) / l[r] : S(0);
    S* orow = o + i * ldq + Index(h) * P;
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int dd = lane + 32 * u;
      if (dd < P) orow[dd] = acc[r][u] * inv;
    }
    if (lse && lane == 0) lse[i * d.H + h] = l[r] > S(0) ? m[r] + log(l[r]) : -kInf;
  }
}

template <class S, int U>
void launch_attention(const cuda::Context& ctx, const S* q, const S* k, const S* v, S* o, const ops::AttnDims& d,
                      S scale, Index qpos0, Index kpos0, int window, S* lse) {
  const std::size_t smem =
      (std::size_t(kAttnRows) * d.P + std::size_t(kAttnKeys) * (d.P + 1) + std::size_t(kAttnKeys) * d.P) * sizeof(S);
  const auto shapes = [&] { return detail::concat_str("(Tq, Tk, H, G, P) = (", d.Tq, ", ", d.Tk, ", ", d.H, ", ", d.G, ", ",
                                         d.P, "), ", smem, " bytes of shared memory"); };
  // Once per instantiation (thread-safe static init): the most any head dim of this U needs.
  static const cudaError_t attr = [] {
    const std::size_t P = 32 * U, most = (std::size_t(kAttnRows) * P + std::size_t(kAttnKeys) * (P + 1) +
                                           std::size_t(kAttnKeys) * P) * sizeof(S);
    return cudaFuncSetAttribute(attention_kernel<S, U>, cudaFuncAttributeMaxDynamicSharedMemorySize, int(most));
  }();
  HYBRID_CUDA_CHECK(attr, shapes());
  const dim3 grid(unsigned((d.Tq + kAttnRows - 1) / kAttnRows), unsigned(d.H));
  attention_kernel<S, U><<<grid, kAttnWarps * 32, smem, ctx.raw_stream()>>>(q, k, v, o, d, scale, qpos0, kpos0,
                                                                          window, lse);
  HYBRID_CUDA_LAUNCHED("attention_kernel", shapes());
}

}  // namespace hybrid::kernels

namespace hybrid::ops {

template <class S>
void attention_forward(const Context& ctx, const S* q, const S* k, const S* v, S* o, const AttnDims& d, S scale,
                       Index qpos0, Index kpos0, int window, S* lse) {
  HYBRID_CHECK(d.H > 0 && d.G > 0 && d.H % d.G == 0, "attention: (H, G) = (", d.H, ", ", d.G,
               "); expected positive head counts with G dividing H");
  HYBRID_CHECK(d.P > 0 && d.P <= 256, "attention (CUDA): head dim ", d.P, " outside [1, 256]");
  HYBRID_CHECK(d.H <= 65535, "attention (CUDA): ", d.H, " query heads exceed 65535");
  if (d.Tq == 0) return;
  const int U = (d.P + 31) / 32;
  if (U <= 2) kernels::launch_attention<S, 2>(ctx, q, k, v, o, d, scale, qpos0, kpos0, window, lse);
  else if (U <= 4) kernels::launch_attention<S, 4>(ctx, q, k, v, o, d, scale, qpos0, kpos0, window, lse);
  else kernels::launch_attention<S, 8>(ctx, q, k, v, o, d, scale, qpos0, kpos0, window, lse);
}

}  // namespace hybrid::ops
