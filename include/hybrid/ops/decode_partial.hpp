// The partial (max m, sum l of exp(s - m), unnormalised o) that one decode-attention work item
// keeps per query head, and its online-softmax step per tile of scores: shared by the Eigen
// body (attention_decode.hpp) and the AVX-512 body (attention_decode_simd.hpp).
#pragma once
#include <algorithm>
#include <cmath>
#include <limits>

#include "../core/tensor.hpp"

namespace hybrid::ops::detail {

// rep partials of P + 2 values, pr apart: m = -inf, l = 0, o = 0.
template <class S>
void decode_partial_init(S* part, Index pr, int rep, int P) {
  for (int r = 0; r < rep; ++r) {
    S* p = part + r * pr;
    p[0] = -std::numeric_limits<S>::infinity();
    p[1] = 0;
    std::fill(p + 2, p + 2 + P, S(0));
  }
}

// One tile's scores s (nt, overwritten by exp(s - m_new)) folded into the partial p: m and l
// updated, o rescaled by exp(m_old - m_new) (0 on the first tile, m_old = -inf) for the caller
// to add the tile's values weighted by the new s.
template <class S>
void decode_partial_step(S* s, Index nt, S* p, int P) {
  auto sa = Eigen::Map<Eigen::Array<S, Eigen::Dynamic, 1>>(s, nt);  // Eigen's vectorised exp
  const S mnew = std::max(p[0], sa.maxCoeff());
  const S alpha = std::exp(p[0] - mnew);
  sa = (sa - mnew).exp();
  p[0] = mnew;
  p[1] = p[1] * alpha + sa.sum();
  VecMap<S>(p + 2, P) *= alpha;
}

}  // namespace hybrid::ops::detail
