// Storage types of inference weights (f32, bf16, f16, int8 with per-group float scales) and
// the scalar conversions between them and float, rounding to nearest, ties to even.
//
//   f32_to_bf16(1.00390625f) == 0x3f80   // a tie between 1 and 1 + 2^-7 goes to the even 1
//   f16_to_f32(f32_to_f16(x)) == x       // for every x that float16 holds exactly
#pragma once
#include <algorithm>
#include <bit>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "error.hpp"
#include "index.hpp"

namespace hybrid {

// Compute is float whatever the storage; int8 carries one float scale per group of columns.
enum class DType : std::uint8_t { F32, BF16, F16, I8 };

// The names flags and messages use.
inline const char* dtype_name(DType d) {
  switch (d) {
    case DType::F32: return "f32";
    case DType::BF16: return "bf16";
    case DType::F16: return "f16";
    case DType::I8: return "int8";
  }
  return "?";
}

inline DType parse_dtype(std::string_view s) {
  for (DType d : {DType::F32, DType::BF16, DType::F16, DType::I8})
    if (s == dtype_name(d)) return d;
  fail("weight storage type '", s, "' is not one of f32, bf16, f16, int8");
}

// Bytes of one stored weight (int8's scales come on top).
inline std::size_t dtype_bytes(DType d) {
  switch (d) {
    case DType::F32: return 4;
    case DType::BF16:
    case DType::F16: return 2;
    case DType::I8: return 1;
  }
  return 0;
}

// ---- bfloat16: the top half of a float ------------------------------------------------------

inline std::uint16_t f32_to_bf16(float f) {
  const std::uint32_t u = std::bit_cast<std::uint32_t>(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return std::uint16_t((u >> 16) | 0x0040u);  // NaN stays NaN (quiet)
  return std::uint16_t((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);  // carries into the exponent as it should
}

inline float bf16_to_f32(std::uint16_t h) { return std::bit_cast<float>(std::uint32_t(h) << 16); }

// ---- IEEE binary16 ---------------------------------------------------------------------------

inline std::uint16_t f32_to_f16(float f) {
  const std::uint32_t u = std::bit_cast<std::uint32_t>(f);
  const std::uint32_t sign = (u >> 16) & 0x8000u, a = u & 0x7fffffffu;
  if (a > 0x7f800000u) return std::uint16_t(sign | 0x7e00u | ((a >> 13) & 0x3ffu));  // quiet NaN
  // 65520 is the tie between 65504 (largest half, odd mantissa) and 2^16: it and all above
  // round to infinity.
  if (a >= 0x477ff000u) return std::uint16_t(sign | 0x7c00u);
  if (a < 0x38800000u) {  // below 2^-14: a subnormal half (or zero)
    // Adding 0.5f, whose ulp is 2^-24 (the subnormal half's unit), lets the FPU round the
    // value to a multiple of 2^-24; the count of units is the half's bits (0x400 when it
    // rounds up to the smallest normal, which is that normal's encoding).
    const float r = std::bit_cast<float>(a) + 0.5f;
    return std::uint16_t(sign | (std::bit_cast<std::uint32_t>(r) - 0x3f000000u));
  }
  const std::uint32_t m = a - 0x38000000u;  // exponent bias 127 -> 15
  return std::uint16_t(sign | ((m + 0xfffu + ((m >> 13) & 1u)) >> 13));
}

inline float f16_to_f32(std::uint16_t h) {
  const std::uint32_t sign = std::uint32_t(h & 0x8000u) << 16, e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
  if (e == 0x1f) return std::bit_cast<float>(sign | 0x7f800000u | (m << 13));
  if (e == 0) {
    const float v = float(m) * 0x1p-24f;  // exact: m < 2^10
    return sign ? -v : v;
  }
  return std::bit_cast<float>(sign | ((e + 112u) << 23) | (m << 13));
}

// ---- int8 with a scale per group -------------------------------------------------------------

// Symmetric: scale = max |w| / 127 over the group, q = round(w / scale) in [-127, 127], so
// w ≈ q * scale. An all-zero group has scale 0.
inline float int8_scale(const float* w, Index n) {
  float amax = 0;
  for (Index i = 0; i < n; ++i) amax = std::max(amax, w[i] < 0 ? -w[i] : w[i]);
  return amax / 127.0f;
}

inline std::int8_t f32_to_int8(float w, float scale) {
  if (scale == 0) return 0;
  float q = w / scale;
  q = q < -127.0f ? -127.0f : (q > 127.0f ? 127.0f : q);
  // Half to even, written out so that the stored bytes do not depend on the FPU mode.
  const float fl = std::floor(q), fr = q - fl;
  std::int32_t r = std::int32_t(fl);
  if (fr > 0.5f || (fr == 0.5f && (r & 1))) ++r;
  return std::int8_t(r);
}

}  // namespace hybrid
