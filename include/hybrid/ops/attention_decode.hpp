// Attention of one query row per sequence over its KV cache (decode), keys and values read
// in the cache's storage type (S, or bf16 widened to S on the fly). Work items are (sequence,
// kv head, slice of keys): the rep query heads of a group share each key row they read, and
// a long cache of a batch with few heads is cut into slices across threads (split-K, as
// flash-decoding does), each slice giving a partial (max, sum, o) merged by log-sum-exp.
// A work item reads one head's rows; a head-major KV cache (KvSpan's strides) makes that a
// contiguous stream. Float items with head dim 16 / 32 / 64 / 128 run the AVX-512 body
// (attention_decode_simd.hpp) where the build targets it, others the Eigen body below.
//
//   attention_decode(d, q, kv, qpos, o, scale, window, scratch)
//   // o[b, h] = softmax_j(scale q[b, h] . k[b, j, h / rep]) v[b, j, h / rep], visible j only
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>

#include "../core/buffer.hpp"
#include "../core/dtype.hpp"
#include "../core/error.hpp"
#include "../core/parallel.hpp"
#include "../core/tensor.hpp"
#include "attention.hpp"
#include "attention_decode_simd.hpp"
#include "decode_partial.hpp"
#include "kv_span.hpp"

namespace hybrid::ops {

namespace detail {
// Keys per tile: a tile's widened rows (2 * 128 * P values) stay in L2 for the rep heads.
inline constexpr Index kDecodeTile = 128;
// Fewest keys worth a slice of their own (below, merging costs more than it saves).
inline constexpr Index kDecodeMinSlice = 256;

// Most slices per (sequence, kv head): enough work items to give each thread about two.
inline Index decode_max_splits(const DecodeDims& d, int threads) {
  const Index items = d.B * d.G;
  if (threads <= 1 || items >= 2 * Index(threads)) return 1;
  return (2 * Index(threads) + items - 1) / items;
}
inline Index decode_splits(const DecodeDims& d, Index keys, int threads) {
  return std::clamp<Index>(keys / kDecodeMinSlice, 1, decode_max_splits(d, threads));
}
// Per thread: the Eigen body's one head's scores (tile) and widened key and value tiles
// (tile, P) each, or the SIMD body's rep heads' scores (rep, tile) and scaled queries.
inline Index decode_thread_scratch(const DecodeDims& d) {
  const Index rep = d.G > 0 ? d.H / d.G : 1;
  return std::max(kDecodeTile + 2 * kDecodeTile * d.P, rep * (kDecodeTile + d.P));
}

inline float widen(std::uint16_t h) { return bf16_to_f32(h); }

// One work item: query heads q (rep, P) contiguous against n keys and values whose first
// rows are k, v (rows ldk apart, the group's P values each). part: rep runs of P + 2 values,
// pr apart, receiving per head the max m, the sum l of exp(s - m) and the unnormalised o.
// Per tile of keys: scores by one GEMV over the tile, an online-softmax update, and the
// output by one GEMV over the value tile (per-key dot products cost twice as much: each
// reduces across lanes). work: decode_thread_scratch values.
template <class S, class KT>
void decode_slice(const S* q, const KT* k, const KT* v, Index ldk, Index n, int rep, int P,
                  S scale, S* part, Index pr, S* work) {
  constexpr bool widened = !std::is_same_v<KT, S>;
  using TileMap = Eigen::Map<const Mat<S>, 0, Eigen::OuterStride<>>;
  const Index tile = kDecodeTile;
  S* sc = work;              // (tile) scores of one head
  S* kt = work + tile;       // (tile, P) widened keys
  S* vt = kt + tile * P;    // (tile, P) widened values
  decode_partial_init(part, pr, rep, P);
  for (Index t0 = 0; t0 < n; t0 += tile) {
    const Index nt = std::min(tile, n - t0);
    const S* kr;
    const S* vr;
    Index ld;
    if constexpr (widened) {
      for (Index j = 0; j < nt; ++j) {
        const KT* ks = k + (t0 + j) * ldk;
        const KT* vs = v + (t0 + j) * ldk;
        S* kd = kt + j * P;
        S* vd = vt + j * P;
        for (int c = 0; c < P; ++c) kd[c] = S(widen(ks[c]));
        for (int c = 0; c < P; ++c) vd[c] = S(widen(vs[c]));
      }
      kr = kt, vr = vt, ld = P;
    } else {
      kr = k + t0 * ldk, vr = v + t0 * ldk, ld = ldk;
    }
    const TileMap K(kr, nt, P, Eigen::OuterStride<>(ld)), V(vr, nt, P, Eigen::OuterStride<>(ld));
    VecMap<S> sv(sc, nt);
    for (int r = 0; r < rep; ++r) {
      sv.noalias() = K * CVecMap<S>(q + Index(r) * P, P);
      sv *= scale;
      S* p = part + r * pr;
      decode_partial_step(sc, nt, p, P);
      VecMap<S>(p + 2, P).noalias() += V.transpose() * sv;
    }
  }
}

// One work item by the fastest body this build has for S and P (see the top of the file).
template <class S, class KT>
void decode_item(const S* q, const KT* k, const KT* v, Index ld, Index n, int rep, int P, S scale,
                 S* part, Index pr, S* work) {
#ifdef HYBRID_DECODE_SIMD
  if constexpr (std::is_same_v<S, float>) {
    switch (P) {
      case 16: return decode_slice_simd<1>(q, k, v, ld, n, rep, scale, part, pr, work, kDecodeTile);
      case 32: return decode_slice_simd<2>(q, k, v, ld, n, rep, scale, part, pr, work, kDecodeTile);
      case 64: return decode_slice_simd<4>(q, k, v, ld, n, rep, scale, part, pr, work, kDecodeTile);
      case 128: return decode_slice_simd<8>(q, k, v, ld, n, rep, scale, part, pr, work, kDecodeTile);
      default: break;
    }
  }
#endif
  decode_slice<S>(q, k, v, ld, n, rep, P, scale, part, pr, work);
}
}  // namespace detail

// Scratch of attention_decode for these dims and thread count (independent of the cache
// lengths, so a decode loop takes the same workspace every step); splits: as passed to it.
inline Index attention_decode_scratch(const DecodeDims& d, int threads, Index splits = 0) {
  if (splits <= 0) splits = detail::decode_max_splits(d, threads);
  return d.B * d.H * splits * (d.P + 2) + Index(threads) * detail::decode_thread_scratch(d);
}

// q: (B, H*P) one query per sequence, sequence b's at position qpos[b]; kv: B spans of
// len_b keys and values of G heads (row-major or head-major, as each span's strides say);
// o: (B, H*P) overwritten (0 where no key is visible).
// Key j of sequence b is visible iff kpos <= qpos[b] and (window == 0 or qpos[b] - kpos <
// window), kpos = kv[b].kpos0 + j: the rule of attention_forward, which this matches.
// scratch: attention_decode_scratch(d, par::threads(), splits) values, or nullptr to
// allocate here. splits: 0 picks the slices per (sequence, kv head) by the rule above; a
// count forces it (tests of the merge).
template <class S>
void attention_decode(const DecodeDims& d, const S* q, const KvSpan<S>* kv, const Index* qpos,
                      S* o, S scale, int window, S* scratch = nullptr, Index force_splits = 0) {
  HYBRID_CHECK(d.H % d.G == 0, "attention: kv heads G = ", d.G, " do not divide query heads H = ", d.H);
  constexpr S kInf = std::numeric_limits<S>::infinity();
  const int rep = d.H / d.G, P = d.P;
  const Index ldq = Index(d.H) * P, pstride = P + 2;
  Index kmax = 0;
  for (Index b = 0; b < d.B; ++b) kmax = std::max(kmax, kv[b].len);
  const bool parallel = double(d.B) * double(kmax) * d.H * P >= detail::kAttnParallelWork;
  const int threads = parallel ? par::threads() : 1;
  const Index splits = force_splits > 0 ? force_splits : detail::decode_splits(d, kmax, threads);
  Buffer<S> own;
  scratch = scratch_or_own(scratch, attention_decode_scratch(d, threads, force_splits), own);
  S* parts = scratch;  // (B, H, splits, P + 2)
  S* work = scratch + d.B * d.H *
                          (force_splits > 0 ? force_splits : detail::decode_max_splits(d, threads)) * pstride;
  const Index items = d.B * d.G * splits;
#pragma omp parallel for schedule(dynamic) if (parallel)
  for (Index it = 0; it < items; ++it) {
    const Index b = it / (Index(d.G) * splits), s = it % splits;
    const int g = int((it / splits) % d.G);
    const KvSpan<S>& c = kv[b];
    Index lo, hi;
    detail::attn_row_range(qpos[b], c.kpos0, c.len, window, lo, hi);
    const Index n = std::max<Index>(hi - lo, 0);
    const Index j0 = lo + n * s / splits, j1 = lo + n * (s + 1) / splits;
    // Head g*rep + r's partial of slice s: parts + ((b*H + g*rep + r)*splits + s)*pstride.
    S* part = parts + ((b * d.H + Index(g) * rep) * splits + s) * pstride;
    S* w = work + par::thread_id() * detail::decode_thread_scratch(d);
    const S* qg = q + b * ldq + Index(g) * rep * P;
    const Index ld = c.row_stride(d.G, P), off = j0 * ld + Index(g) * c.head_stride(P);
    const Index pr = splits * pstride;
    if (c.bf16()) detail::decode_item<S>(qg, c.kh + off, c.vh + off, ld, j1 - j0, rep, P, scale, part, pr, w);
    else detail::decode_item<S>(qg, c.k + off, c.v + off, ld, j1 - j0, rep, P, scale, part, pr, w);
  }
  // Merge the slices of each (sequence, head): o = sum_s e^(m_s - M) o_s / sum_s e^(m_s - M) l_s.
  for (Index bh = 0; bh < d.B * d.H; ++bh) {
    const S* p = parts + bh * splits * pstride;
    S M = -kInf;
    for (Index s = 0; s < splits; ++s)
      if (p[s * pstride + 1] > 0) M = std::max(M, p[s * pstride]);
    VecMap<S> out(o + (bh / d.H) * ldq + (bh % d.H) * P, P);
    out.setZero();
    if (M == -kInf) continue;  // nothing visible
    S l = 0;
    for (Index s = 0; s < splits; ++s) {
      const S* ps = p + s * pstride;
      if (!(ps[1] > 0)) continue;
      const S f = std::exp(ps[0] - M);
      l += f * ps[1];
      out.noalias() += f * CVecMap<S>(ps + 2, P);
    }
    out /= l;
  }
}

}  // namespace hybrid::ops
