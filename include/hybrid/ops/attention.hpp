// Causal grouped-query attention with an optional sliding window, one sequence.
// Query head h reads key/value head h / (H / G). Softmax in the scalar type (fp32 for
// float). Queries are processed in blocks of rows so that the score matrix stays small:
// memory O(block * Tk) instead of O(Tq * Tk). The backward recomputes the scores block by
// block from q, k and the forward's log-sum-exp (flash-attention style) and ACCUMULATES
// (+=) into every gradient it is given; nullptr skips one.
#pragma once
#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>

#include "../core/buffer.hpp"
#include "../core/error.hpp"
#include "../core/parallel.hpp"
#include "../core/tensor.hpp"
#include "attention_mask.hpp"

namespace hybrid::ops {

namespace detail {
// Rows of queries per score block.
inline constexpr Index kAttnBlock = 64;
// Below this many multiply-adds (Tq*Tk*H*P) starting a thread team costs more than the
// work itself, badly so on a small, busy machine: run single-threaded.
inline constexpr double kAttnParallelWork = 1e5;

inline bool attn_parallel(const AttnDims& d) {
  return double(d.Tq) * double(d.Tk) * d.H * d.P >= kAttnParallelWork;
}
// Head `head`'s (rows, P) slice starting at row r0 of a (*, ld) row-major buffer.
template <class E>
auto attn_head_block(E* p, Index r0, Index rows, int head, int P, Index ld) {
  using M = std::conditional_t<std::is_const_v<E>, const Mat<std::remove_const_t<E>>,
                               Mat<E>>;
  return Eigen::Map<M, 0, Eigen::OuterStride<>>(p + r0 * ld + Index(head) * P, rows, P,
                                                Eigen::OuterStride<>(ld));
}
// Key / value head `head`'s (rows, P) slice from row r0, rows ld apart, heads hs apart.
template <class E>
auto attn_kv_block(E* p, Index r0, Index rows, int head, int P, Index ld, Index hs) {
  return Eigen::Map<const Mat<std::remove_const_t<E>>, 0, Eigen::OuterStride<>>(
      p + r0 * ld + Index(head) * hs, rows, P, Eigen::OuterStride<>(ld));
}
}  // namespace detail

// q: (Tq, H*P); k, v: (Tk, G*P), or laid out as d.kv_ld / d.kv_hs say (a head-major KV
// cache); o: (Tq, H*P) overwritten; lse: (Tq, H) overwritten
// with log sum_j exp(scale q_i.k_j) over visible keys (-inf where none), or nullptr.
// Query i sits at position qpos0 + i, key j at kpos0 + j. Key j is visible from query i
// iff kpos <= qpos and (window == 0 or qpos - kpos < window).
// scratch: attention_scratch(d, par::threads()) values for the scores, or nullptr to
// allocate them here.
inline Index attention_scratch(const AttnDims& d, int threads) {
  return Index(threads) * std::min<Index>(d.Tq, detail::kAttnBlock) * d.Tk;
}

template <class S>
void attention_forward(const S* q, const S* k, const S* v, S* o, const AttnDims& d, S scale,
                       Index qpos0, Index kpos0, int window, S* lse = nullptr,
                       S* scratch = nullptr) {
  HYBRID_CHECK(d.H % d.G == 0, "attention: kv heads G = ", d.G, " do not divide query heads H = ", d.H);
  constexpr S kInf = std::numeric_limits<S>::infinity();
  const Index ldq = Index(d.H) * d.P, kld = d.key_ld(), khs = d.key_hs();
  const int rep = d.H / d.G;
  const Index nblk = (d.Tq + detail::kAttnBlock - 1) / detail::kAttnBlock;
  const Index per_thread = std::min<Index>(d.Tq, detail::kAttnBlock) * d.Tk;
  const bool parallel = detail::attn_parallel(d);
  Buffer<S> own;
  scratch = scratch_or_own(scratch, attention_scratch(d, parallel ? par::threads() : 1), own);
#pragma omp parallel for collapse(2) schedule(dynamic) if (parallel)
  for (int h = 0; h < d.H; ++h) {
    for (Index b = 0; b < nblk; ++b) {
      const int g = h / rep;
      const Index i0 = b * detail::kAttnBlock, i1 = std::min(d.Tq, i0 + detail::kAttnBlock);
      const Index bq = i1 - i0;
      Index j0, j1;
      detail::attn_key_range(d, i0, i1, qpos0, kpos0, window, j0, j1);
      auto ob = detail::attn_head_block(o, i0, bq, h, d.P, ldq);
      if (j1 <= j0) {  // nothing visible (cannot happen for a well-formed causal call)
        ob.setZero();
        if (lse)
          for (Index i = i0; i < i1; ++i) lse[i * d.H + h] = -kInf;
        continue;
      }
      const Index nk = j1 - j0;
      auto qb = detail::attn_head_block(q, i0, bq, h, d.P, ldq);
      auto kb = detail::attn_kv_block(k, j0, nk, g, d.P, kld, khs);
      auto vb = detail::attn_kv_block(v, j0, nk, g, d.P, kld, khs);
      MatMap<S> s(scratch + par::thread_id() * per_thread, bq, nk);  // (bq, nk)
      s.noalias() = qb * kb.transpose();  // scaled apart: "(product) * scale" makes a temporary
      s *= scale;
      for (Index i = 0; i < bq; ++i) {
        Index lo, hi;  // visible keys of this row: [lo, hi)
        detail::attn_row_range(qpos0 + i0 + i, kpos0 + j0, nk, window, lo, hi);
        if (hi <= lo) {
          s.row(i).setZero();
          if (lse) lse[(i0 + i) * d.H + h] = -kInf;
          continue;
        }
        auto seg = s.row(i).segment(lo, hi - lo).array();
        const S mx = seg.maxCoeff();
        seg = (seg - mx).exp();
        const S sum = seg.sum();
        seg /= sum;
        s.row(i).head(lo).setZero();
        s.row(i).tail(nk - hi).setZero();
        if (lse) lse[(i0 + i) * d.H + h] = mx + std::log(sum);
      }
      ob.noalias() = s * vb;
    }
  }
}

// Same inputs as the forward plus its outputs o: (Tq, H*P) and lse: (Tq, H), and
// dout = dL/do: (Tq, H*P). dq (Tq, H*P), dk and dv (Tk, G*P) are accumulated (+=);
// nullptr skips one. Per block: P = exp(scale s - lse), D_i = rowsum(dO ⊙ O)_i,
// dS = P ⊙ (dO V^T - D); dq += scale dS K, dk += scale dS^T Q, dv += P^T dO.
// scratch: attention_backward_scratch(d, par::threads()) values, or nullptr.
inline Index attention_backward_scratch(const AttnDims& d, int threads) {
  const Index bq = std::min<Index>(d.Tq, detail::kAttnBlock);
  return Index(threads) * (2 * bq * d.Tk + bq);
}

template <class S>
void attention_backward(const S* q, const S* k, const S* v, const S* o, const S* lse,
                        const S* dout, S* dq, S* dk, S* dv, const AttnDims& d, S scale,
                        Index qpos0, Index kpos0, int window, S* scratch = nullptr) {
  HYBRID_CHECK(d.H % d.G == 0, "attention: kv heads G = ", d.G, " do not divide query heads H = ", d.H);
  if (!dq && !dk && !dv) return;
  HYBRID_CHECK(lse && dout, "attention_backward: lse and dout are required (lse: the one ",
               "attention_forward wrote for these inputs)");
  HYBRID_CHECK(d.dense_kv(), "attention_backward: keys and values must be (Tk, G*P) row-major, not ",
               "strided as a KV cache (kv_ld ", d.kv_ld, ", kv_hs ", d.kv_hs, ")");
  constexpr S kInf = std::numeric_limits<S>::infinity();
  const Index ldq = Index(d.H) * d.P, ldk = Index(d.G) * d.P;
  const int rep = d.H / d.G;
  const Index nblk = (d.Tq + detail::kAttnBlock - 1) / detail::kAttnBlock;
  // One kv head per thread: the rep query heads of a group all add into the same dk/dv
  // rows, so a group is never split between threads (no races, deterministic sums).
  const bool parallel = detail::attn_parallel(d);
  const Index bq_max = std::min<Index>(d.Tq, detail::kAttnBlock), per_thread = 2 * bq_max * d.Tk + bq_max;
  Buffer<S> own;
  scratch = scratch_or_own(scratch, attention_backward_scratch(d, parallel ? par::threads() : 1), own);
#pragma omp parallel for schedule(static) if (parallel)
  for (int g = 0; g < d.G; ++g) {
    S* mine = scratch + par::thread_id() * per_thread;
    for (int h = g * rep; h < (g + 1) * rep; ++h) {
      for (Index b = 0; b < nblk; ++b) {
        const Index i0 = b * detail::kAttnBlock, i1 = std::min(d.Tq, i0 + detail::kAttnBlock);
        const Index bq = i1 - i0;
        Index j0, j1;
        detail::attn_key_range(d, i0, i1, qpos0, kpos0, window, j0, j1);
        if (j1 <= j0) continue;  // output was 0 whatever the inputs: no gradient
        const Index nk = j1 - j0;
        auto qb = detail::attn_head_block(q, i0, bq, h, d.P, ldq);
        auto kb = detail::attn_head_block(k, j0, nk, g, d.P, ldk);
        auto vb = detail::attn_head_block(v, j0, nk, g, d.P, ldk);
        auto dob = detail::attn_head_block(dout, i0, bq, h, d.P, ldq);
        MatMap<S> p(mine, bq, nk), ds(mine + bq_max * d.Tk, bq, nk);  // (bq, nk)
        VecMap<S> D(mine + 2 * bq_max * d.Tk, bq);                     // (bq)
        p.noalias() = qb * kb.transpose();
        p *= scale;
        for (Index i = 0; i < bq; ++i) {
          const S l = lse[(i0 + i) * d.H + h];
          Index lo, hi;
          detail::attn_row_range(qpos0 + i0 + i, kpos0 + j0, nk, window, lo, hi);
          if (l == -kInf || hi <= lo) {  // the row saw no key: its P row is 0
            p.row(i).setZero();
            continue;
          }
          p.row(i).segment(lo, hi - lo).array() = (p.row(i).segment(lo, hi - lo).array() - l).exp();
          p.row(i).head(lo).setZero();
          p.row(i).tail(nk - hi).setZero();
        }
        if (dv) detail::attn_head_block(dv, j0, nk, g, d.P, ldk).noalias() += p.transpose() * dob;
        if (!dq && !dk) continue;
        auto ob = detail::attn_head_block(o, i0, bq, h, d.P, ldq);
        D = dob.cwiseProduct(ob).rowwise().sum();
        ds.noalias() = dob * vb.transpose();  // dP
        ds.array() = p.array() * (ds.array().colwise() - D.array()) * scale;  // scale dS
        if (dq) detail::attn_head_block(dq, i0, bq, h, d.P, ldq).noalias() += ds * kb;
        if (dk) detail::attn_head_block(dk, j0, nk, g, d.P, ldk).noalias() += ds.transpose() * qb;
      }
    }
  }
}

}  // namespace hybrid::ops
