// Causal grouped-query attention with an optional sliding window, one sequence.
// Query head h reads key/value head h / (Hq / Hkv). Softmax in the scalar type (fp32 for
// float). Queries are processed in blocks of rows so that the score matrix stays small:
// memory O(block * Tk) instead of O(Tq * Tk).
#pragma once
#include <algorithm>
#include <cmath>
#include <limits>

#include "../core/error.hpp"
#include "../core/tensor.hpp"

namespace hybrid::ops {

struct AttnDims {
  Index Tq, Tk;      // queries, keys
  int Hq, Hkv, hd;   // query heads, key/value heads, head dim
};

// q: (Tq, Hq*hd); k, v: (Tk, Hkv*hd); o: (Tq, Hq*hd) overwritten.
// Query i sits at position qpos0 + i, key j at kpos0 + j. Key j is visible from query i
// iff kpos <= qpos and (window == 0 or qpos - kpos < window).
template <class S>
void attention_forward(const S* q, const S* k, const S* v, S* o, const AttnDims& d, S scale,
                       Index qpos0, Index kpos0, int window) {
  HYBRID_CHECK(d.Hq % d.Hkv == 0, "attention: Hkv ", d.Hkv, " does not divide Hq ", d.Hq);
  using Strided = Eigen::OuterStride<>;
  using CMap = Eigen::Map<const Mat<S>, 0, Strided>;
  using OMap = Eigen::Map<Mat<S>, 0, Strided>;
  const Index ldq = Index(d.Hq) * d.hd, ldk = Index(d.Hkv) * d.hd;
  const int rep = d.Hq / d.Hkv;
  constexpr Index kBlock = 64;
  const Index nblk = (d.Tq + kBlock - 1) / kBlock;
#pragma omp parallel for collapse(2) schedule(dynamic)
  for (int h = 0; h < d.Hq; ++h) {
    for (Index b = 0; b < nblk; ++b) {
      const int g = h / rep;
      const Index i0 = b * kBlock, i1 = std::min(d.Tq, i0 + kBlock), bq = i1 - i0;
      // keys visible to some query of the block: [j0, j1)
      const Index qlo = qpos0 + i0, qhi = qpos0 + i1 - 1;
      Index j1 = std::min(d.Tk, qhi - kpos0 + 1);
      Index j0 = window > 0 ? std::max<Index>(0, qlo - window + 1 - kpos0) : 0;
      OMap ob(o + i0 * ldq + Index(h) * d.hd, bq, d.hd, Strided(ldq));
      if (j1 <= j0) {  // nothing visible (cannot happen for a well-formed causal call)
        ob.setZero();
        continue;
      }
      const Index nk = j1 - j0;
      CMap qb(q + i0 * ldq + Index(h) * d.hd, bq, d.hd, Strided(ldq));
      CMap kb(k + j0 * ldk + Index(g) * d.hd, nk, d.hd, Strided(ldk));
      CMap vb(v + j0 * ldk + Index(g) * d.hd, nk, d.hd, Strided(ldk));
      Mat<S> s = (qb * kb.transpose()) * scale;  // (bq, nk)
      for (Index i = 0; i < bq; ++i) {
        const Index qp = qpos0 + i0 + i;
        S mx = -std::numeric_limits<S>::infinity();
        for (Index j = 0; j < nk; ++j) {
          const Index kp = kpos0 + j0 + j;
          const bool vis = kp <= qp && (window <= 0 || qp - kp < window);
          if (!vis) s(i, j) = -std::numeric_limits<S>::infinity();
          else mx = std::max(mx, s(i, j));
        }
        if (mx == -std::numeric_limits<S>::infinity()) {
          s.row(i).setZero();
          continue;
        }
        S sum = 0;
        for (Index j = 0; j < nk; ++j) {
          const S e = std::exp(s(i, j) - mx);  // exp(-inf) = 0 for masked keys
          s(i, j) = e;
          sum += e;
        }
        s.row(i) /= sum;
      }
      ob.noalias() = s * vb;
    }
  }
}

}  // namespace hybrid::ops
