// Linear layer and embedding gather over stored weights (ops/qweight.hpp): y = x W^T (+ b)
// with x, y, b and every sum in float. Forward only: stored weights are for inference.
// Few rows (decode) run a GEMV straight over the stored rows, split over output rows across
// threads; more rows dequantise W a block of rows at a time and run the float GEMM per block.
#pragma once
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "../core/gemm.hpp"
#include "../core/parallel.hpp"
#include "../core/tensor.hpp"
#include "qweight.hpp"

namespace hybrid::ops {

// Up to this many rows of x a linear layer is a GEMV bound by reading W (as linear.hpp).
inline constexpr Index kQGemvRows = 4;
// Rows of W dequantised per GEMM call in the many-row path: about 2 MiB of floats, so the
// block stays in cache between the dequantisation and the GEMM's packing of it.
inline Index qlinear_block_rows(const QWeight& W) {
  const Index blk = std::max<Index>(64, (Index(1) << 19) / std::max<Index>(W.cols, 1));
  return std::min(W.rows, (blk + 15) / 16 * 16);
}

namespace qdetail {

// The calling thread's dequantisation buffer, grown once to the largest block it has seen.
inline float* scratch(Index n) {
  thread_local std::vector<float> buf;
  if (Index(buf.size()) < n) buf.resize(std::size_t(n));
  return buf.data();
}

// Rows [o0, o1) of y = x W^T, x (R, in) with R <= 4, on the calling thread; portable: 16
// rows of W at a time dequantised into a buffer, then Eigen's product.
inline void gemv_portable(CView<float> x, const QWeight& W, Index o0, Index o1, View<float> y) {
  constexpr Index kRows = 16;
  float* buf = scratch(kRows * W.cols);
  const auto xm = emap(x);
  auto ym = emap(y);
  for (Index o = o0; o < o1; o += kRows) {
    const Index n = std::min(kRows, o1 - o);
    dequant_rows(W, o, n, buf);
    const CMatMap<float> w(buf, n, W.cols);
    ym.middleCols(o, n).noalias() = xm * w.transpose();
  }
}

#if defined(__AVX512F__)
// 16 stored weights of one row from column c as floats (int8: q, not yet scaled).
template <DType D>
inline __m512 load16(const unsigned char* row, Index c) {
  if constexpr (D == DType::F32) {
    return _mm512_loadu_ps(reinterpret_cast<const float*>(row) + c);
  } else if constexpr (D == DType::BF16) {  // bf16 is the top half of a float
    const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + 2 * c));
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
  } else if constexpr (D == DType::F16) {
    return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + 2 * c)));
  } else {
    const __m128i q = _mm_loadu_si128(reinterpret_cast<const __m128i*>(row + c));
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(q));
  }
}

// One stored weight as a float (int8: q, not yet scaled), for the columns past the last 16.
template <DType D>
inline float load1(const unsigned char* row, Index c) {
  if constexpr (D == DType::I8) {
    return float(std::int8_t(row[c]));
  } else if constexpr (D == DType::F32) {
    float v;
    std::memcpy(&v, row + 4 * c, 4);
    return v;
  } else {
    std::uint16_t h;
    std::memcpy(&h, row + 2 * c, 2);
    return D == DType::BF16 ? bf16_to_f32(h) : f16_to_f32(h);
  }
}

// Row o of W against the R rows of x, one stored row read once, front to back: one long
// stream per row measured 2-3x faster than interleaving 4 rows (AMD EPYC, AVX-512), and
// 4 accumulators per row of x hide the FMA latency. int8 with one scale per row sums
// x * q and scales the sum; with 32-column groups (cols % 32 == 0) each 16-wide vector is
// scaled as it is loaded, a group never straddling two.
template <DType D, bool kGrouped, int R>
inline void gemv_row(const float* x, Index ldx, const QWeight& W, Index o, float* y, Index ldy) {
  const Index in = W.cols, n64 = in / 64 * 64, n16 = in / 16 * 16;
  const unsigned char* row = W.row(o);
  const float* sc = D == DType::I8 ? W.row_scales(o) : nullptr;
  const auto w16 = [&](Index c) {
    const __m512 w = load16<D>(row, c);
    if constexpr (kGrouped) return _mm512_mul_ps(w, _mm512_set1_ps(sc[c >> 5]));
    else return w;
  };
  __m512 acc[R][4];
#pragma GCC unroll 16
  for (int k = 0; k < 4 * R; ++k) acc[k / 4][k % 4] = _mm512_setzero_ps();
  Index c = 0;
  for (; c < n64; c += 64) {
    const __m512 w0 = w16(c), w1 = w16(c + 16), w2 = w16(c + 32), w3 = w16(c + 48);
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) {
      const float* xr = x + r * ldx + c;
      acc[r][0] = _mm512_fmadd_ps(w0, _mm512_loadu_ps(xr), acc[r][0]);
      acc[r][1] = _mm512_fmadd_ps(w1, _mm512_loadu_ps(xr + 16), acc[r][1]);
      acc[r][2] = _mm512_fmadd_ps(w2, _mm512_loadu_ps(xr + 32), acc[r][2]);
      acc[r][3] = _mm512_fmadd_ps(w3, _mm512_loadu_ps(xr + 48), acc[r][3]);
    }
  }
  for (; c < n16; c += 16) {
    const __m512 w0 = w16(c);
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) acc[r][0] = _mm512_fmadd_ps(w0, _mm512_loadu_ps(x + r * ldx + c), acc[r][0]);
  }
  for (int r = 0; r < R; ++r) {
    float s = _mm512_reduce_add_ps(
        _mm512_add_ps(_mm512_add_ps(acc[r][0], acc[r][1]), _mm512_add_ps(acc[r][2], acc[r][3])));
    for (Index t = n16; t < in; ++t) s += x[r * ldx + t] * load1<D>(row, t);
    if constexpr (D == DType::I8 && !kGrouped) s *= sc[0];
    y[r * ldy + o] = s;
  }
}

template <DType D, bool kGrouped, int R>
inline void gemv_rows(CView<float> x, const QWeight& W, Index o0, Index o1, View<float> y) {
  for (Index o = o0; o < o1; ++o) gemv_row<D, kGrouped, R>(x.data, x.ld, W, o, y.data, y.ld);
}

template <DType D, bool kGrouped>
inline void gemv_avx512_t(CView<float> x, const QWeight& W, Index o0, Index o1, View<float> y) {
  switch (x.rows) {
    case 1: return gemv_rows<D, kGrouped, 1>(x, W, o0, o1, y);
    case 2: return gemv_rows<D, kGrouped, 2>(x, W, o0, o1, y);
    case 3: return gemv_rows<D, kGrouped, 3>(x, W, o0, o1, y);
    case 4: return gemv_rows<D, kGrouped, 4>(x, W, o0, o1, y);
    default: fail("qlinear GEMV: ", x.rows, " rows of x; expected 1 to ", kQGemvRows);
  }
}

// As gemv_portable, with AVX-512 registers: rows [o0, o1) of y = x W^T for R <= 4.
inline void gemv_avx512(CView<float> x, const QWeight& W, Index o0, Index o1, View<float> y) {
  switch (W.dtype) {
    case DType::F32: return gemv_avx512_t<DType::F32, false>(x, W, o0, o1, y);
    case DType::BF16: return gemv_avx512_t<DType::BF16, false>(x, W, o0, o1, y);
    case DType::F16: return gemv_avx512_t<DType::F16, false>(x, W, o0, o1, y);
    case DType::I8:
      if (W.group < W.cols) return gemv_avx512_t<DType::I8, true>(x, W, o0, o1, y);
      return gemv_avx512_t<DType::I8, false>(x, W, o0, o1, y);
  }
}
#endif

// The body this build runs.
inline void gemv(CView<float> x, const QWeight& W, Index o0, Index o1, View<float> y) {
#if defined(__AVX512F__)
  gemv_avx512(x, W, o0, o1, y);
#else
  gemv_portable(x, W, o0, o1, y);
#endif
}

}  // namespace qdetail

// Names the kernel the GEMV path runs, for benchmark reports.
inline const char* qgemv_kernel() {
#if defined(__AVX512F__)
  return "avx512";
#else
  return "portable";
#endif
}

// Throws unless W is a well-formed stored weight (int8: scales and a group tiling the rows).
inline void check_qweight(const char* what, const QWeight& W) {
  HYBRID_CHECK(W.data || W.rows * W.cols == 0, what, ": stored weight (", W.rows, ", ", W.cols,
               ") has no data");
  if (W.dtype == DType::I8)
    HYBRID_CHECK(W.scales && (W.group == W.cols || (W.group == kQ8Group && W.cols % kQ8Group == 0)),
                 what, ": int8 weight (", W.rows, ", ", W.cols, ") with group ", W.group,
                 (W.scales ? "" : " and no scales"), "; expected scales and a group of cols or ",
                 kQ8Group, " dividing cols");
}

// x: (R, in); W: (out, in) stored; bias: (1, out) or empty; y: (R, out), sized by the caller.
inline void qlinear_forward(CView<float> x, const QWeight& W, CView<float> bias, View<float> y) {
  HYBRID_CHECK(x.cols == W.cols && y.rows == x.rows && y.cols == W.rows, "qlinear: x (", x.rows,
               ", ", x.cols, "), W (", W.rows, ", ", W.cols, ") ", dtype_name(W.dtype), ", y (",
               y.rows, ", ", y.cols, "); expected x (R, in), W (out, in), y (R, out)");
  check_qweight("qlinear", W);
  const Index R = x.rows, out = W.rows, in = W.cols;
  if (R == 0 || out == 0) return;
  if (R <= kQGemvRows) {
    par::for_ranges(
        out, par::threads_for(out * in, Index(1) << 16),
        [&](Index o0, Index o1) { qdetail::gemv(x, W, o0, o1, y); }, 16);
  } else if (W.dtype == DType::F32) {
    blas::gemm<float>(blas::Op::N, blas::Op::T, R, out, in, 1.0f, x.data, x.ld,
                      static_cast<const float*>(W.data), in, 0.0f, y.data, y.ld);
  } else {
    const Index blk = qlinear_block_rows(W);
    float* buf = qdetail::scratch(blk * in);  // (blk, in)
    for (Index o0 = 0; o0 < out; o0 += blk) {
      const Index n = std::min(blk, out - o0);
      par::for_ranges(n, par::threads_for(n * in), [&](Index a, Index b) {
        dequant_rows(W, o0 + a, b - a, buf + a * in);
      });
      blas::gemm<float>(blas::Op::N, blas::Op::T, R, n, in, 1.0f, x.data, x.ld, buf, in, 0.0f,
                        y.data + o0, y.ld);
    }
  }
  if (!bias.empty()) emap(y).rowwise() += emap(bias).row(0);
}

// out = mult * table[ids]: table (V, D) stored; ids: R ids in [0, V), else hybrid::Error
// naming the row; out: (R, D).
inline void qembedding_forward(const QWeight& table, const int* ids, Index R, float mult,
                               View<float> out) {
  HYBRID_CHECK(out.rows == R && out.cols == table.cols, "qembedding: out (", out.rows, ", ",
               out.cols, ") for ", R, " ids of a (", table.rows, ", ", table.cols,
               ") table; expected (R, D)");
  check_qweight("qembedding", table);
  for (Index r = 0; r < R; ++r) {
    HYBRID_CHECK(ids[r] >= 0 && ids[r] < table.rows, "embedding: token id ", ids[r], " at row ", r,
                 " is outside the vocabulary [0, ", table.rows, ")");
    float* o = out.row_ptr(r);
    dequant_rows(table, ids[r], 1, o);
    if (mult != 1.0f)
      for (Index c = 0; c < table.cols; ++c) o[c] *= mult;
  }
}

}  // namespace hybrid::ops
