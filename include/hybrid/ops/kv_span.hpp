// Decode attention's dimensions and one sequence's view of its KV cache, apart from the
// CPU op (ops/attention_decode.hpp): no Eigen, so the CUDA twin (kernels/) shares them.
#pragma once
#include <cstdint>

#include "../core/device.hpp"
#include "../core/index.hpp"

namespace hybrid::ops {

// One sequence's cached keys and values, row j at position kpos0 + j, either in S (k, v) or
// as bf16 bits (kh, vh); exactly one pair is set. Head g's row j is at g * hs + j * ld: the
// defaults (0) mean (len, G*P) row-major rows (ld = G*P, hs = P); a KvCache is
// head-major (ld = P, hs = capacity * P).
template <class S>
struct KvSpan {
  const S* k = nullptr;              // keys
  const S* v = nullptr;              // values, laid out as the keys
  const std::uint16_t* kh = nullptr; // keys as bf16
  const std::uint16_t* vh = nullptr; // values as bf16
  Index len = 0, kpos0 = 0;
  Index ld = 0, hs = 0;              // row and head strides (0: row-major defaults)

  HYBRID_HOST_DEVICE bool bf16() const { return kh != nullptr; }
  HYBRID_HOST_DEVICE Index row_stride(int G, int P) const { return ld ? ld : Index(G) * P; }
  HYBRID_HOST_DEVICE Index head_stride(int P) const { return hs ? hs : Index(P); }
};

struct DecodeDims {
  Index B;          // sequences, one query row each
  int H, G, P;  // query heads, key/value heads, head dim
};

}  // namespace hybrid::ops
