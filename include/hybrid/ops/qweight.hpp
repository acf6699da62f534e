// A weight matrix held in a storage type (core/dtype.hpp): the QWeight view, packing a float
// matrix into it and reading it back as float. The linear layers over it are in qlinear.hpp.
//
//   QWeight w{DType::I8, out, in, 32, bytes, scales};   // int8, one scale per 32 columns
//   dequant_rows(w, 0, out, f);                           // f: (out, in) floats, q * scale
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>

#include "../core/dtype.hpp"
#include "../core/error.hpp"
#include "../core/index.hpp"

namespace hybrid::ops {

// The int8 group other than one per row: GGUF Q8_0's block of 32 columns.
inline constexpr Index kQ8Group = 32;

// (rows, cols) weights stored row after row (row stride cols) in `dtype`. int8 has a float
// scale per `group` consecutive columns of a row, scales (rows, cols / group); group is cols
// (one scale per row) or 32 (GGUF Q8_0's block). The other types ignore group.
struct QWeight {
  DType dtype = DType::F32;
  Index rows = 0, cols = 0;
  Index group = 0;                // columns per int8 scale
  const void* data = nullptr;     // (rows, cols) of dtype
  const float* scales = nullptr;  // (rows, cols / group), int8 only

  explicit operator bool() const { return data != nullptr; }
  Index groups_per_row() const { return dtype == DType::I8 ? cols / group : 0; }
  const unsigned char* row(Index o) const {
    return static_cast<const unsigned char*>(data) + std::size_t(o * cols) * dtype_bytes(dtype);
  }
  const float* row_scales(Index o) const { return scales + o * groups_per_row(); }
  // Weight (o, c) as float: the value every kernel multiplies by.
  float at(Index o, Index c) const {
    const unsigned char* p = row(o);
    switch (dtype) {
      case DType::F32: {
        float v;
        std::memcpy(&v, p + 4 * c, 4);
        return v;
      }
      case DType::BF16: {
        std::uint16_t h;
        std::memcpy(&h, p + 2 * c, 2);
        return bf16_to_f32(h);
      }
      case DType::F16: {
        std::uint16_t h;
        std::memcpy(&h, p + 2 * c, 2);
        return f16_to_f32(h);
      }
      case DType::I8: return float(std::int8_t(p[c])) * row_scales(o)[c / group];
    }
    return 0;
  }
};

// The int8 group for a storage request: group <= 0 means one per row. Throws naming the
// tensor when 32-column groups do not tile its rows.
inline Index weight_group(const char* what, DType d, Index cols, Index group) {
  if (d != DType::I8 || group <= 0) return cols;
  HYBRID_CHECK(group == kQ8Group, what, ": int8 group of ", group,
               " columns; expected one per row or ", kQ8Group, " (GGUF Q8_0 blocks)");
  HYBRID_CHECK(cols % group == 0, what, ": int8 groups of ", group, " columns need cols % ", group,
               " == 0, but the tensor has ", cols, " columns; use one scale per row");
  return group;
}

// Bytes of the packed values and floats of the scales of a (rows, cols) tensor.
inline std::size_t packed_bytes(DType d, Index rows, Index cols) {
  return std::size_t(rows * cols) * dtype_bytes(d);
}
inline Index packed_scales(DType d, Index rows, Index cols, Index group) {
  return d == DType::I8 ? rows * (cols / group) : 0;
}

// Packs w (rows, cols), row-major, into data (packed_bytes) and scales (packed_scales),
// rounding to nearest even. `what` names the tensor in errors: a value float16 cannot
// hold (|w| > 65504) or a non-finite value int8 cannot.
inline void pack_weight(const char* what, const float* w, Index rows, Index cols, DType d,
                        Index group, void* data, float* scales) {
  auto* out = static_cast<unsigned char*>(data);
  for (Index r = 0; r < rows; ++r) {
    const float* src = w + r * cols;
    switch (d) {
      case DType::F32: std::memcpy(out + 4 * r * cols, src, 4 * std::size_t(cols)); break;
      case DType::BF16:
        for (Index c = 0; c < cols; ++c) {
          const std::uint16_t h = f32_to_bf16(src[c]);
          std::memcpy(out + 2 * (r * cols + c), &h, 2);
        }
        break;
      case DType::F16:
        for (Index c = 0; c < cols; ++c) {
          HYBRID_CHECK(!(std::abs(src[c]) > 65504.0f), what, ": value ", src[c], " at (", r, ", ",
                       c, ") is outside float16's range of +-65504; store it as bf16 or f32");
          const std::uint16_t h = f32_to_f16(src[c]);
          std::memcpy(out + 2 * (r * cols + c), &h, 2);
        }
        break;
      case DType::I8:
        for (Index g = 0; g < cols / group; ++g) {
          const float* blk = src + g * group;
          for (Index c = 0; c < group; ++c)
            HYBRID_CHECK(std::isfinite(blk[c]), what, ": value ", blk[c], " at (", r, ", ",
                         g * group + c, ") is not finite; int8 storage needs finite weights");
          const float s = int8_scale(blk, group);
          scales[r * (cols / group) + g] = s;
          for (Index c = 0; c < group; ++c)
            out[r * cols + g * group + c] = static_cast<unsigned char>(f32_to_int8(blk[c], s));
        }
        break;
    }
  }
}

// Rows [o0, o0 + n) of W as floats into out (n, cols), contiguous.
inline void dequant_rows(const QWeight& W, Index o0, Index n, float* out) {
  for (Index o = o0; o < o0 + n; ++o) {
    float* dst = out + (o - o0) * W.cols;
    const unsigned char* p = W.row(o);
    switch (W.dtype) {
      case DType::F32: std::memcpy(dst, p, 4 * std::size_t(W.cols)); break;
      case DType::BF16:
      case DType::F16: {
        const bool bf = W.dtype == DType::BF16;
        for (Index c = 0; c < W.cols; ++c) {
          std::uint16_t h;
          std::memcpy(&h, p + 2 * c, 2);
          dst[c] = bf ? bf16_to_f32(h) : f16_to_f32(h);
        }
        break;
      }
      case DType::I8: {
        const float* s = W.row_scales(o);
        for (Index g = 0; g < W.cols / W.group; ++g)  // group by group, so that the loop vectorises
          for (Index c = g * W.group; c < (g + 1) * W.group; ++c) dst[c] = float(std::int8_t(p[c])) * s[g];
        break;
      }
    }
  }
}

}  // namespace hybrid::ops
