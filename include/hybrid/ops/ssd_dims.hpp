// The SSD scan's dimensions and buffers (ops/ssd.hpp), apart from its CPU body: plain
// structs with no Eigen, shared by the CPU op and its CUDA twin (kernels/).
#pragma once
#include "../core/device.hpp"
#include "../core/index.hpp"

namespace hybrid::ops {

// time, heads, head dim, state, groups; head h uses group h / (H/G).
struct SsdDims {
  Index T;
  int H, P, N, G;
};

// Row-major buffers; x, B and C may be column ranges of wider rows (Mamba-2's conv output
// x | B | C), given by their row strides.
template <class S>
struct SsdArgs {
  const S* x = nullptr;         // (T, H*P)  un-discretised x, row stride ldx
  const S* dt = nullptr;        // (T, H)    softplus'd and clamped, >= 0
  const S* A = nullptr;         // (H)       negative, A = -exp(A_log)
  const S* B = nullptr;         // (T, G*N)  row stride ldbc
  const S* C = nullptr;         // (T, G*N)  row stride ldbc
  const S* D = nullptr;         // (H) or nullptr: y += D[h] * x
  const S* state_in = nullptr;  // (H, P, N) or nullptr (zeros)
  S* y = nullptr;               // (T, H*P)  overwritten, contiguous
  S* state_out = nullptr;       // (H, P, N) or nullptr; may alias state_in
  Index ldx = 0;                // row stride of x; 0: H*P
  Index ldbc = 0;               // row stride of B and C; 0: G*N

  HYBRID_HOST_DEVICE Index x_stride(const SsdDims& d) const { return ldx ? ldx : Index(d.H) * d.P; }
  HYBRID_HOST_DEVICE Index bc_stride(const SsdDims& d) const { return ldbc ? ldbc : Index(d.G) * d.N; }
};

}  // namespace hybrid::ops
