// Round-to-nearest quantisation of a float matrix into a QTensor (quant/qtensor.hpp): one
// symmetric scale per row or per group of columns, at 2 to 8 bits, the scale set by one of
// three rules.
//
//   QTensor t = quantize(w, rows, cols, {.bits = 6, .rule = ScaleRule::SdClip, .sd_k = 12.0});
//   dequantize(t, out);                  // out (rows, cols) = q * scale
//   double e = squared_error(w, t);      // sum of (w - q * scale)^2
//
// Within a group g of n values with amax = max |w|, qmax = 2^(bits-1) - 1:
//   RowMax   scale = amax / qmax (in float, so int8 matches ops::int8_scale bit for bit).
//   MseClip  scale = c * amax / qmax for the clip ratio c in {0.30, 0.31, ..., 1.00} (71
//            ratios; kMseClipMinPercent..100 percent) whose dequantised group has the least
//            sum of squared error, values past the clip clamped to +-qmax. Ties keep the
//            larger c, so c = 1.00 (RowMax) wins unless clipping strictly helps and the
//            result is never worse than RowMax's on any group.
//   SdClip   scale = k * rms / qmax with rms = sqrt(sum w^2 / n): parameter golf's
//            "SDClip" (REFERENCE.md §6, k ~ 10 to 13 at int6). The spread is taken around
//            zero, not the mean, because the grid is symmetric about zero: a group with a
//            large mean still needs its values, not their deviations, to fit. Values past
//            k * rms are clamped. When k * rms exceeds the group's max |w| the grid is
//            coarser than RowMax's and its outer codes go unused: that is the trade golf
//            entries make at int6, fewer distinct values and so fewer bytes after the
//            compressor, the precision lost largely recovered by GPTQ.
// q = round(w / scale), ties away from zero (as std::lround), clamped to [-qmax, qmax]; a
// group whose values are all zero gets scale 0 and q 0. (ops::f32_to_int8 rounds ties to
// even instead, so the int8 values differ from it where w / scale is exactly k + 0.5.)
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "../core/error.hpp"
#include "../core/index.hpp"
#include "../core/parallel.hpp"
#include "qtensor.hpp"

namespace hybrid::quant {

enum class ScaleRule { RowMax, MseClip, SdClip };

inline const char* scale_rule_name(ScaleRule r) {
  switch (r) {
    case ScaleRule::RowMax: return "RowMax";
    case ScaleRule::MseClip: return "MseClip";
    case ScaleRule::SdClip: return "SdClip";
  }
  return "unknown";
}

// MseClip's grid of clip ratios, in percent of the group's max |w|, step 1.
inline constexpr int kMseClipMinPercent = 30;
inline constexpr int kMseClipMaxPercent = 100;

struct QuantSpec {
  int bits = 6;                       // 2..8
  ScaleRule rule = ScaleRule::RowMax;
  double sd_k = 3.0;                  // SdClip: clip at sd_k root-mean-squares
  Index group = 0;                    // columns per scale; 0 = one scale per row
};

namespace detail {

// round(w / scale) clamped to [-qmax, qmax], ties away from zero; 0 when scale is 0.
// Clamping before rounding gives the same integer (qmax is one) and keeps the cast in range.
inline std::int8_t quantize_value(float w, float scale, int qmax) {
  if (scale == 0) return 0;
  float x = w / scale;
  const float m = float(qmax);
  x = x < -m ? -m : (x > m ? m : x);
  // |x| <= 127 has at most 24 significant bits, so x +- 0.5 is exact in double and the
  // truncation is std::lround's result, without its call in the MseClip inner loop.
  return std::int8_t(std::int32_t(double(x) + (x < 0 ? -0.5 : 0.5)));
}

// Sum of squared error of the group w[0, n) quantised with `scale`, the value as
// QTensor::value forms it (float q * scale) and the sum in double, in column order.
inline double group_error(const float* w, Index n, float scale, int qmax) {
  double e = 0;
  for (Index i = 0; i < n; ++i) {
    const float v = float(quantize_value(w[i], scale, qmax)) * scale;
    const double d = double(w[i]) - double(v);
    e += d * d;
  }
  return e;
}

// The scale of the group w[0, n) under spec's rule (w finite, checked by the caller).
inline float group_scale(const float* w, Index n, int qmax, const QuantSpec& spec) {
  float amax = 0;
  for (Index i = 0; i < n; ++i) amax = std::max(amax, std::abs(w[i]));
  if (amax == 0) return 0;
  const float rowmax = amax / float(qmax);
  switch (spec.rule) {
    case ScaleRule::RowMax: return rowmax;
    case ScaleRule::SdClip: {
      double ss = 0;
      for (Index i = 0; i < n; ++i) ss += double(w[i]) * double(w[i]);
      return float(spec.sd_k * std::sqrt(ss / double(n)) / double(qmax));
    }
    case ScaleRule::MseClip: {
      float best = rowmax;
      double best_err = group_error(w, n, rowmax, qmax);
      for (int p = kMseClipMaxPercent - 1; p >= kMseClipMinPercent; --p) {  // larger c first
        const float s = float(double(amax) * p / (100.0 * qmax));
        const double e = group_error(w, n, s, qmax);
        if (e < best_err) best_err = e, best = s;  // strict: ties keep the larger c
      }
      return best;
    }
  }
  return rowmax;
}

}  // namespace detail

// Quantises w (rows, cols), row-major, as spec says. Throws on a width outside 2..8, a group
// that does not divide cols, a non-positive or non-finite SdClip k, or a non-finite value
// (naming its row and column).
inline QTensor quantize(const float* w, Index rows, Index cols, const QuantSpec& spec) {
  const int qmax = qmax_of(spec.bits);
  HYBRID_CHECK(rows >= 0 && cols > 0, "quantize: a (", rows, ", ", cols,
               ") matrix; expected rows >= 0 and cols >= 1");
  HYBRID_CHECK(spec.group >= 0, "quantize: group of ", spec.group,
               " columns; expected 0 (one scale per row) or a positive divisor of the columns");
  const Index group = spec.group == 0 ? cols : spec.group;
  HYBRID_CHECK(cols % group == 0, "quantize: groups of ", group, " columns do not tile the ", cols,
               " columns; expected 0 (one scale per row) or a divisor of ", cols, " such as 32, 64 or 128");
  HYBRID_CHECK(spec.rule == ScaleRule::RowMax || spec.rule == ScaleRule::MseClip || spec.rule == ScaleRule::SdClip,
               "quantize: unknown scale rule ", int(spec.rule), "; expected RowMax, MseClip or SdClip");
  if (spec.rule == ScaleRule::SdClip)
    HYBRID_CHECK(std::isfinite(spec.sd_k) && spec.sd_k > 0, "quantize: SdClip k of ", spec.sd_k,
                 "; expected a finite k > 0 (standard deviations to clip at, ~10-13 for int6)");
  for (Index r = 0; r < rows; ++r)  // serially, so the first bad value (row-major) is the one named
    for (Index c = 0; c < cols; ++c)
      HYBRID_CHECK(std::isfinite(w[r * cols + c]), "quantize: value ", w[r * cols + c], " at row ", r,
                   ", column ", c, " is not finite; quantisation needs finite weights");

  QTensor t;
  t.bits = spec.bits;
  t.rows = rows;
  t.cols = cols;
  t.group = group;
  t.q.resize(std::size_t(rows * cols));
  const Index gpr = cols / group;
  t.scales.resize(std::size_t(rows * gpr));
  // MseClip visits each value once per clip ratio: weigh the split by that.
  const Index visits = spec.rule == ScaleRule::MseClip ? kMseClipMaxPercent - kMseClipMinPercent + 2 : 2;
  par::for_rows(rows, cols * visits, [&](Index r0, Index r1) {
    for (Index r = r0; r < r1; ++r)
      for (Index g = 0; g < gpr; ++g) {
        const float* src = w + r * cols + g * group;
        const float s = detail::group_scale(src, group, qmax, spec);
        t.scales[std::size_t(r * gpr + g)] = s;
        std::int8_t* dst = t.q.data() + r * cols + g * group;
        for (Index c = 0; c < group; ++c) dst[c] = detail::quantize_value(src[c], s, qmax);
      }
  });
  return t;
}

// out (t.rows, t.cols) = q * scale, row-major. Throws if t is inconsistent (QTensor::check).
inline void dequantize(const QTensor& t, float* out) {
  t.check("dequantize");
  const Index gpr = t.groups_per_row();
  for (Index r = 0; r < t.rows; ++r)
    for (Index g = 0; g < gpr; ++g) {
      const float s = t.scales[std::size_t(r * gpr + g)];
      const Index c0 = r * t.cols + g * t.group;
      for (Index c = c0; c < c0 + t.group; ++c) out[c] = float(t.q[std::size_t(c)]) * s;
    }
}

// Sum over the matrix of (w - q * scale)^2 in double; w (t.rows, t.cols), row-major.
inline double squared_error(const float* w, const QTensor& t) {
  t.check("squared_error");
  double e = 0;
  for (Index r = 0; r < t.rows; ++r)
    for (Index c = 0; c < t.cols; ++c) {
      const double d = double(w[r * t.cols + c]) - double(t.value(r, c));
      e += d * d;
    }
  return e;
}

}  // namespace hybrid::quant
