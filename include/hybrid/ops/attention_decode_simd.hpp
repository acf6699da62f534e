// AVX-512 body of one decode-attention work item (ops/attention_decode.hpp), for float
// queries against an f32 or bf16 cache whose head dim is 16, 32, 64 or 128. Same contract
// and same partial (max, sum, o) as detail::decode_slice, the portable Eigen body that
// specifies it (tests compare the two); only the order of the float sums differs.
//
// Per tile of keys: the scores of two query heads at a time, every key row read once for
// both (eight keys x two heads = sixteen accumulators, summed across lanes by one transpose
// tree instead of a reduction per key); an online-softmax update per head; then the values,
// each row read once for up to four heads whose output accumulators stay in registers.
#pragma once
#if defined(__AVX512F__)
#define HYBRID_DECODE_SIMD 1
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

#include "../core/tensor.hpp"
#include "decode_partial.hpp"

namespace hybrid::ops::detail {

// Lane j of the result = the sum of v[j]'s sixteen lanes.
inline __m512 decode_hsum16(const __m512* v) {
  __m512 t[8], u[4], w[2];
  for (int i = 0; i < 8; ++i)  // within 128-bit lanes: pairs of rows
    t[i] = _mm512_add_ps(_mm512_unpacklo_ps(v[2 * i], v[2 * i + 1]), _mm512_unpackhi_ps(v[2 * i], v[2 * i + 1]));
  for (int i = 0; i < 4; ++i)  // four rows per 128-bit lane
    u[i] = _mm512_add_ps(_mm512_shuffle_ps(t[2 * i], t[2 * i + 1], 0x44),
                         _mm512_shuffle_ps(t[2 * i], t[2 * i + 1], 0xEE));
  for (int i = 0; i < 2; ++i)  // across 128-bit lanes
    w[i] = _mm512_add_ps(_mm512_shuffle_f32x4(u[2 * i], u[2 * i + 1], 0x88),
                         _mm512_shuffle_f32x4(u[2 * i], u[2 * i + 1], 0xDD));
  return _mm512_add_ps(_mm512_shuffle_f32x4(w[0], w[1], 0x88), _mm512_shuffle_f32x4(w[0], w[1], 0xDD));
}

// Sixteen cache values as floats (bf16: the bits shifted into the high half).
inline __m512 decode_load16(const float* p) { return _mm512_loadu_ps(p); }
inline __m512 decode_load16(const std::uint16_t* p) {
  const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

// Scores of R query heads (q: R rows of 16 W, already scaled) against nt keys (rows ld
// apart): s[r * lds + j].
template <int W, int R, class KT>
inline void decode_scores(const float* q, const KT* k, Index ld, Index nt, float* s, Index lds) {
  constexpr int KB = 16 / R;  // keys per block: KB * R accumulators make one hsum16
  __m512 qr[R][W];
  for (int r = 0; r < R; ++r)
    for (int w = 0; w < W; ++w) qr[r][w] = _mm512_loadu_ps(q + r * W * 16 + w * 16);
  for (Index j0 = 0; j0 < nt; j0 += KB) {
    const int m = int(std::min<Index>(KB, nt - j0));
    __m512 acc[16];
    for (int j = 0; j < KB; ++j) {
      if (j >= m) {
        for (int r = 0; r < R; ++r) acc[j * R + r] = _mm512_setzero_ps();
        continue;
      }
      const KT* kr = k + (j0 + j) * ld;
      __m512 x = decode_load16(kr);
      for (int r = 0; r < R; ++r) acc[j * R + r] = _mm512_mul_ps(x, qr[r][0]);
      for (int w = 1; w < W; ++w) {
        x = decode_load16(kr + w * 16);
        for (int r = 0; r < R; ++r) acc[j * R + r] = _mm512_fmadd_ps(x, qr[r][w], acc[j * R + r]);
      }
    }
    alignas(64) float out[16];
    _mm512_store_ps(out, decode_hsum16(acc));
    for (int j = 0; j < m; ++j)
      for (int r = 0; r < R; ++r) s[r * lds + j0 + j] = out[j * R + r];
  }
}

// o_r += sum_j p[r * ldp + j] v_j for R heads; o_r at acc + r * pr (16 W values each).
template <int W, int R, class KT>
inline void decode_values(const KT* v, Index ld, Index nt, const float* p, Index ldp, float* acc, Index pr) {
  __m512 a[R][W];
  for (int r = 0; r < R; ++r)
    for (int w = 0; w < W; ++w) a[r][w] = _mm512_loadu_ps(acc + r * pr + w * 16);
  for (Index j = 0; j < nt; ++j) {
    __m512 pj[R];
    for (int r = 0; r < R; ++r) pj[r] = _mm512_set1_ps(p[r * ldp + j]);
    const KT* vr = v + j * ld;
    for (int w = 0; w < W; ++w) {
      const __m512 x = decode_load16(vr + w * 16);
      for (int r = 0; r < R; ++r) a[r][w] = _mm512_fmadd_ps(pj[r], x, a[r][w]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int w = 0; w < W; ++w) _mm512_storeu_ps(acc + r * pr + w * 16, a[r][w]);
}

// decode_slice's contract (attention_decode.hpp) for P = 16 W. work: rep * (tile + P)
// floats (the rep heads' scores and their scaled queries).
template <int W, class KT>
void decode_slice_simd(const float* q, const KT* k, const KT* v, Index ld, Index n, int rep,
                       float scale, float* part, Index pr, float* work, Index tile) {
  constexpr int P = W * 16;
  constexpr int RV = W <= 4 ? 4 : 2;  // heads per value pass: RV * W accumulators in registers
  float* sc = work;                   // (rep, tile) scores
  float* qs = work + Index(rep) * tile;  // (rep, P) queries times scale
  for (int i = 0; i < rep * P; ++i) qs[i] = q[i] * scale;
  decode_partial_init(part, pr, rep, P);
  for (Index t0 = 0; t0 < n; t0 += tile) {
    const Index nt = std::min(tile, n - t0);
    const KT* kt = k + t0 * ld;
    int r = 0;
    for (; r + 2 <= rep; r += 2) decode_scores<W, 2>(qs + r * P, kt, ld, nt, sc + r * tile, tile);
    for (; r < rep; ++r) decode_scores<W, 1>(qs + r * P, kt, ld, nt, sc + r * tile, tile);
    for (r = 0; r < rep; ++r) decode_partial_step(sc + r * tile, nt, part + r * pr, P);
    const KT* vt = v + t0 * ld;
    for (r = 0; r + RV <= rep; r += RV) decode_values<W, RV>(vt, ld, nt, sc + r * tile, tile, part + r * pr + 2, pr);
    for (; r < rep; ++r) decode_values<W, 1>(vt, ld, nt, sc + r * tile, tile, part + r * pr + 2, pr);
  }
}

}  // namespace hybrid::ops::detail
#endif
