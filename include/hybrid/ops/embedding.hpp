// Token embedding: out = mult * table[ids] (mult: Granite's embedding_multiplier, else 1).
// Backward accumulates (+=) into the table gradient; an empty view skips it.
#pragma once
#include "../core/error.hpp"
#include "../core/tensor.hpp"

namespace hybrid::ops {

// table: (V, D); ids: (R) in [0, V), else hybrid::Error naming the row; out: (R, D).
template <class S>
void embedding_forward(CView<S> tablev, const int* ids, Index R, S mult, View<S> outv) {
  const Index V = tablev.rows;
  const auto table = emap(tablev);
  auto out = emap(outv);
  for (Index r = 0; r < R; ++r) {
    HYBRID_CHECK(ids[r] >= 0 && ids[r] < V, "embedding: token id ", ids[r], " at row ", r,
                 " is outside the vocabulary [0, ", V, ")");
    out.row(r) = mult * table.row(ids[r]);
  }
}

// dout: (R, D). dtable (V, D): row ids[r] += mult * dout[r]; repeated ids accumulate.
// V is not passed: the ids are the ones embedding_forward already checked.
template <class S>
void embedding_backward(const int* ids, Index R, S mult, CView<S> doutv, View<S> dtable) {
  if (!dtable) return;
  const auto dout = emap(doutv);
  auto dt = emap(dtable);
  for (Index r = 0; r < R; ++r) dt.row(ids[r]) += mult * dout.row(r);
}

}  // namespace hybrid::ops
