// Attention's dimensions and its visibility rule (causal, optional sliding window), apart
// from the CPU op's body: no Eigen, host-and-device functions, so the CPU op
// (ops/attention.hpp, attention_decode.hpp) and the CUDA kernels (kernels/) share one
// definition of which keys a query sees.
#pragma once
#include "../core/device.hpp"
#include "../core/index.hpp"

namespace hybrid::ops {

struct AttnDims {
  Index Tq, Tk;      // queries, keys
  int H, G, P;       // query heads, key/value heads (G groups of H / G queries), head dim
  // Keys and values: head g's row j at g * kv_hs + j * kv_ld; 0 means (Tk, G*P) row-major
  // (kv_ld = G*P, kv_hs = P). A head-major KV cache has kv_ld = P, kv_hs = capacity * P.
  Index kv_ld = 0, kv_hs = 0;

  HYBRID_HOST_DEVICE Index key_ld() const { return kv_ld ? kv_ld : Index(G) * P; }
  HYBRID_HOST_DEVICE Index key_hs() const { return kv_hs ? kv_hs : Index(P); }
  HYBRID_HOST_DEVICE bool dense_kv() const { return key_ld() == Index(G) * P && key_hs() == Index(P); }
};

namespace detail {
HYBRID_HOST_DEVICE inline Index attn_clamp(Index v, Index lo, Index hi) { return v < lo ? lo : (v > hi ? hi : v); }

// The mask's definition. Forward and backward both use its index form, attn_row_range
// (so they can never disagree); a test checks the two agree.
HYBRID_HOST_DEVICE inline bool attn_visible(Index qp, Index kp, int window) {
  return kp <= qp && (window <= 0 || qp - kp < window);
}
// The keys visible from query position qp, as the index range [lo, hi) of a block of nk
// keys whose first sits at position kfirst: the mask above is contiguous in the key index
// (causal: a prefix; a window: cut from below too), so the softmax can run over one
// segment. Empty (hi <= lo) when no key of the block is visible.
HYBRID_HOST_DEVICE inline void attn_row_range(Index qp, Index kfirst, Index nk, int window, Index& lo, Index& hi) {
  hi = attn_clamp(qp - kfirst + 1, 0, nk);
  lo = window > 0 ? attn_clamp(qp - window + 1 - kfirst, 0, nk) : 0;
}
// Keys [j0, j1) visible to some query of rows [i0, i1); empty (j1 <= j0) if none.
HYBRID_HOST_DEVICE inline void attn_key_range(const AttnDims& d, Index i0, Index i1, Index qpos0, Index kpos0,
                                              int window, Index& j0, Index& j1) {
  const Index last = qpos0 + i1 - 1 - kpos0 + 1;
  j1 = d.Tk < last ? d.Tk : last;
  const Index first = qpos0 + i0 - window + 1 - kpos0;
  j0 = window > 0 ? (first > 0 ? first : 0) : 0;
}
}  // namespace detail

}  // namespace hybrid::ops
