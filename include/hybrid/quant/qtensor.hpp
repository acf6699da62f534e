// A weight matrix quantised to a k-bit signed integer grid (2 <= k <= 8) with one float scale
// per group of columns of a row: the common currency of quant/quantize.hpp (the methods
// that produce it), quant/artifact.hpp (the file that stores it) and the int8 inference
// storage it loads into (layers/weight_store.hpp).
//
//   value(r, c) = q[r * cols + c] * scales[r * groups_per_row() + c / group]
//   q in [-qmax, qmax], qmax = 2^(bits-1) - 1 (symmetric: int6 is [-31, 31])
#pragma once
#include <cstdint>
#include <vector>

#include "../core/error.hpp"
#include "../core/index.hpp"

namespace hybrid::quant {

inline int qmax_of(int bits) {
  HYBRID_CHECK(bits >= 2 && bits <= 8, "quantisation width ", bits, " bits is outside 2 to 8");
  return (1 << (bits - 1)) - 1;
}

struct QTensor {
  int bits = 8;
  Index rows = 0, cols = 0;
  Index group = 0;              // columns per scale; equal to cols for one scale per row
  std::vector<std::int8_t> q;   // rows * cols, row-major
  std::vector<float> scales;    // rows * (cols / group)

  Index groups_per_row() const { return group > 0 ? cols / group : 0; }
  float scale(Index r, Index c) const { return scales[std::size_t(r * groups_per_row() + c / group)]; }
  float value(Index r, Index c) const { return float(q[std::size_t(r * cols + c)]) * scale(r, c); }

  // Throws unless the fields describe a consistent tensor (sizes, group tiling, q range).
  void check(const char* what) const {
    const int qm = qmax_of(bits);
    HYBRID_CHECK(rows >= 0 && cols >= 0 && group > 0 && cols % group == 0, what, ": a (", rows, ", ", cols,
                 ") tensor with groups of ", group, " columns; expected a group dividing the columns");
    HYBRID_CHECK(q.size() == std::size_t(rows * cols) && scales.size() == std::size_t(rows * groups_per_row()),
                 what, ": ", q.size(), " values and ", scales.size(), " scales for a (", rows, ", ", cols,
                 ") tensor with groups of ", group);
    for (std::int8_t v : q)
      HYBRID_CHECK(v >= -qm && v <= qm, what, ": value ", int(v), " outside the ", bits, "-bit range [", -qm, ", ",
                   qm, "]");
  }
};

}  // namespace hybrid::quant
