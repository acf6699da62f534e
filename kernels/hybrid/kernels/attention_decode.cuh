// CUDA twin of ops/attention_decode.hpp: one query row per sequence over its KV cache, keys
// and values in S or bf16 (widened on load). A block takes one (sequence, query head, slice
// of keys); its 4 warps stride over the slice's keys (lanes over the head dim, one warp sum
// per key, an online softmax per warp), then merge in shared memory into the slice's
// partial (max, sum, o). A second kernel merges the slices by log-sum-exp (split-K, as
// flash-decoding does). The visibility rule is ops/attention_mask.hpp's. nvcc only.
#pragma once
#include <cmath>
#include <cstdint>
#include <type_traits>

#include "common.cuh"

namespace hybrid::kernels {

inline constexpr int kDecodeWarps = 4;
inline constexpr Index kDecodeMinSlice = 256;  // fewest keys worth a slice of their own

template <class S>
__device__ inline S widen_bf16(std::uint16_t h) { return S(__uint_as_float(std::uint32_t(h) << 16)); }

template <class S, class KT, int U>
__global__ void __launch_bounds__(kDecodeWarps * 32)
    decode_kernel(ops::DecodeDims d, const S* q, const ops::KvSpan<S>* kv, const Index* qpos, S* parts, int splits,
                  S scale, int window) {
  extern __shared__ unsigned char smem_raw[];
  const int P = d.P, rep = d.H / d.G;
  const Index bh = blockIdx.x, b = bh / d.H;
  const int h = int(bh % d.H), g = h / rep, s = blockIdx.y;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const ops::KvSpan<S> c = kv[b];
  Index lo, hi;
  ops::detail::attn_row_range(qpos[b], c.kpos0, c.len, window, lo, hi);
  const Index n = hi > lo ? hi - lo : 0;
  const Index j0 = lo + n * s / splits, j1 = lo + n * (s + 1) / splits;
  const Index ld = c.row_stride(d.G, P), hs = c.head_stride(P);
  const KT* K;
  const KT* V;
  if constexpr (std::is_same_v<KT, S>) {
    K = c.k;
    V = c.v;
  } else {
    K = c.kh;
    V = c.vh;
  }
  S qr[U], acc[U];
#pragma unroll
  for (int u = 0; u < U; ++u) {
    const int dd = lane + 32 * u;
    qr[u] = dd < P ? q[b * Index(d.H) * P + Index(h) * P + dd] : S(0);
    acc[u] = 0;
  }
  constexpr S kInf = S(INFINITY);
  S m = -kInf, l = 0;
  for (Index j = j0 + warp; j < j1; j += kDecodeWarps) {
    const KT* kr = K + j * ld + Index(g) * hs;
    const KT* vr = V + j * ld + Index(g) * hs;
    S dot = 0;
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int dd = lane + 32 * u;
      if (dd < P) {
        if constexpr (std::is_same_v<KT, S>) dot += qr[u] * kr[dd];
        else dot += qr[u] * widen_bf16<S>(kr[dd]);
      }
    }
    const S sc = warp_sum(dot) * scale;
    const S mnew = m > sc ? m : sc;
    const S corr = dev_exp(m - mnew), p = dev_exp(sc - mnew);
    l = l * corr + p;
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int dd = lane + 32 * u;
      if (dd < P) {
        S vv;
        if constexpr (std::is_same_v<KT, S>) vv = vr[dd];
        else vv = widen_bf16<S>(vr[dd]);
        acc[u] = acc[u] * corr + p * vv;
      }
    }
    m = mnew;
  }
  // Merge the warps: (m, l, acc) of each in shared memory, runs of P + 2.
  S* wp = reinterpret_cast<S*>(smem_raw) + Index(warp) * (P + 2);
  if (lane == 0) {
    wp[0] = m;
    wp[1] = l;
  }
#pragma unroll
  for (int u = 0; u < U; ++u) {
    const int dd = lane + 32 * u;
    if (dd < P) wp[2 + dd] = acc[u];
  }
  __syncthreads();
  const S* all = reinterpret_cast<const S*>(smem_raw);
  S M = -kInf;
  for (int w = 0; w < kDecodeWarps; ++w)
    if (all[w * (P + 2) + 1] > S(0) && all[w * (P + 2)] > M) M = all[w * (P + 2)];
  S* out = parts + (bh * splits + s) * Index(P + 2);
  for (int dd = threadIdx.x; dd < P + 2; dd += blockDim.x) {
    S v = 0;
    if (dd == 0) v = M;
    else if (M != -kInf)
      for (int w = 0; w < kDecodeWarps; ++w) {
        const S* pw = all + w * (P + 2);
        if (pw[1] > S(0)) v += dev_exp(pw[0] - M) * pw[dd];  // dd = 1: the sums; dd >= 2: o
      }
    out[dd] = v;
  }
}

// grid (B * H): o[b, h] = sum_s e^(m_s - M) o_s / sum_s e^(m_s - M) l_s, 0 where nothing is visible.
template <class S>
__global__ void decode_merge_kernel(ops::DecodeDims d, const S* parts, int splits, S* o) {
  const Index bh = blockIdx.x;
  const int P = d.P;
  const S* p = parts + bh * splits * Index(P + 2);
  constexpr S kInf = S(INFINITY);
  S M = -kInf;
  for (int s = 0; s < splits; ++s)
    if (p[s * (P + 2) + 1] > S(0) && p[s * (P + 2)] > M) M = p[s * (P + 2)];
  S L = 0;
  if (M != -kInf)
    for (int s = 0; s < splits; ++s)
      if (p[s * (P + 2) + 1] > S(0)) L += dev_exp(p[s * (P + 2)] - M) * p[s * (P + 2) + 1];
  S* orow = o + (bh / d.H) * Index(d.H) * P + (bh % d.H) * P;
  for (int dd = threadIdx.x; dd < P; dd += blockDim.x) {
    S v = 0;
    if (M != -kInf) {
      for (int s = 0; s < splits; ++s)
        if (p[s * (P + 2) + 1] > S(0)) v += dev_exp(p[s * (P + 2)] - M) * p[s * (P + 2) + 2 + dd];
      v /= L;
    }
    orow[dd] = v;
  }
}

template <class S, class KT, int U, class Shapes>
void launch_decode(const cuda::Context& ctx, const ops::DecodeDims& d, const S* q, const ops::KvSpan<S>* kv,
                   const Index* qpos, S* parts, int splits, S scale, int window, const Shapes& shapes) {
  const std::size_t smem = std::size_t(kDecodeWarps) * (d.P + 2) * sizeof(S);
  decode_kernel<S, KT, U><<<dim3(unsigned(d.B * d.H), unsigned(splits)), kDecodeWarps * 32, smem,
                            ctx.raw_stream()>>>(d, q, kv, qpos, parts, splits, scale, window);
  HYBRID_CUDA_LAUNCHED("decode_kernel", shapes());
}

}  // namespace hybrid::kernels

namespace hybrid::ops {

template <class S>
void attention_decode(const Context& ctx, const DecodeDims& d, const S* q, const KvSpan<S>* kv, const Index* qpos,
                      S* o, S scale, int window) {
  HYBRID_CHECK(d.H > 0 && d.G > 0 && d.H % d.G == 0, "attention: (H, G) = (", d.H, ", ", d.G,
               "); expected positive head counts with G dividing H");
  HYBRID_CHECK(d.P > 0 && d.P <= 256, "attention decode (CUDA): head dim ", d.P, " outside [1, 256]");
  if (d.B == 0) return;
  HYBRID_CHECK(d.B * d.H <= Index(0x7fffffff), "attention decode: ", d.B * d.H, " (sequence, head) pairs");
  Index kmax = 0;
  bool bf16 = kv[0].bf16();
  for (Index b = 0; b < d.B; ++b) {
    HYBRID_CHECK(kv[b].bf16() == bf16, "attention decode: sequence ", b, "'s cache is ",
                 kv[b].bf16() ? "bf16" : "full precision", ", sequence 0's is not; one storage type per call");
    if (kv[b].len > kmax) kmax = kv[b].len;
  }
  // Slices: enough blocks to fill the device twice over (132 SMs on an H100/H200), never
  // slices under kDecodeMinSlice keys, at most 64.
  const Index want = (264 + d.B * d.H - 1) / (d.B * d.H);
  Index splits = kmax / kernels::kDecodeMinSlice;
  splits = splits < want ? splits : want;
  splits = splits < 1 ? 1 : (splits > 64 ? 64 : splits);
  cuda::Scratch sc(ctx);
  const KvSpan<S>* dkv = sc.upload(kv, std::size_t(d.B), "cache spans");
  const Index* dpos = sc.upload(qpos, std::size_t(d.B), "positions");
  S* parts = sc.get<S>(std::size_t(d.B * d.H * splits * (d.P + 2)));
  const cudaStream_t st = ctx.raw_stream();
  const auto shapes = [&] { return hybrid::detail::concat_str("(B, H, G, P) = (", d.B, ", ", d.H, ", ", d.G, ", ", d.P,
                                                 "), longest cache ", kmax, ", ", splits, " slices"); };
  const int U = (d.P + 31) / 32;
  const int sp = int(splits);
  auto go = [&](auto kt_tag) {
    using KT = decltype(kt_tag);
    if (U <= 2) kernels::launch_decode<S, KT, 2>(ctx, d, q, dkv, dpos, parts, sp, scale, window, shapes);
    else if (U <= 4) kernels::launch_decode<S, KT, 4>(ctx, d, q, dkv, dpos, parts, sp, scale, window, shapes);
    else kernels::launch_decode<S, KT, 8>(ctx, d, q, dkv, dpos, parts, sp, scale, window, shapes);
  };
  if (bf16) go(std::uint16_t{});
  else go(S{});
  kernels::decode_merge_kernel<S><<<unsigned(d.B * d.H), 128, 0, st>>>(d, parts, sp, o);
  HYBRID_CUDA_LAUNCHED("decode_merge_kernel", shapes());
}

}  // namespace hybrid::ops
