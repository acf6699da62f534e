// Decode attention's dimensions and one sequence's view of its KV cache, apart from the
// CPU op (ops/attention_decode.hpp): no Eigen, so the CUDA twin (kernels/) shares them.
#pragma once
#include <cstdint>

#include "../core/device.hpp"
#include "../core/index.hpp"

namespace hybrid::ops {

// One sequence's cached keys and values: (len, Hkv*hd) rows, row j at position kpos0 + j,
// either in S (k, v) or as bf16 bits (kh, vh); exactly one pair is set.
template <class S>
struct KvSpan {
  const S* k = nullptr;              // (len, Hkv*hd)
  const S* v = nullptr;              // (len, Hkv*hd)
  const std::uint16_t* kh = nullptr; // (len, Hkv*hd) bf16
  const std::uint16_t* vh = nullptr; // (len, Hkv*hd) bf16
  Index len = 0, kpos0 = 0;

  HYBRID_HOST_DEVICE bool bf16() const { return kh != nullptr; }
};

struct DecodeDims {
  Index B;          // sequences, one query row each
  int Hq, Hkv, hd;  // query heads, key/value heads, head dim
};

}  // namespace hybrid::ops
