// The hybrid::cuda library: the launchers declared in kernels/hybrid/cuda/ops.hpp,
// instantiated for float and double, compiled once by nvcc. Host code calls them through
// that plain C++ header and never sees CUDA syntax.
#include "hybrid/kernels/attention.cuh"
#include "hybrid/kernels/attention_decode.cuh"
#include "hybrid/kernels/conv1d.cuh"
#include "hybrid/kernels/elementwise.cuh"
#include "hybrid/kernels/embedding.cuh"
#include "hybrid/kernels/linear.cuh"
#include "hybrid/kernels/norm.cuh"
#include "hybrid/kernels/rope.cuh"
#include "hybrid/kernels/sampling.cuh"
#include "hybrid/kernels/ssd.cuh"

namespace hybrid::ops {

#define HYBRID_CUDA_INSTANCES(S)                                                                        \
  template void add_forward<S>(const Context&, DCView<S>, DCView<S>, S, DView<S>);                      \
  template void scale_forward<S>(const Context&, DCView<S>, S, DView<S>);                               \
  template void mul_forward<S>(const Context&, DCView<S>, DCView<S>, DView<S>);                         \
  template void silu_forward<S>(const Context&, DCView<S>, DView<S>);                                   \
  template void sigmoid_gate_forward<S>(const Context&, DCView<S>, DCView<S>, DView<S>);                \
  template void copy<S>(const Context&, DCView<S>, DView<S>);                                           \
  template void neg_exp_forward<S>(const Context&, DCView<S>, DView<S>);                                \
  template void add_row_bias<S>(const Context&, DCView<S>, DView<S>);                                   \
  template void scale_rows_forward<S>(const Context&, DCView<S>, const S*, DView<S>);                   \
  template void gather_rows_forward<S>(const Context&, DCView<S>, const Index*, Index, DView<S>);       \
  template void swiglu_forward<S>(const Context&, DCView<S>, DCView<S>, DView<S>);                      \
  template void relu2_forward<S>(const Context&, DCView<S>, DView<S>);                                  \
  template void dt_softplus_forward<S>(const Context&, DCView<S>, DCView<S>, S, S, DView<S>);           \
  template void softcap_forward<S>(const Context&, DView<S>, S);                                        \
  template void rmsnorm_forward<S>(const Context&, DCView<S>, DCView<S>, S, DView<S>, S*);              \
  template void layernorm_forward<S>(const Context&, DCView<S>, DCView<S>, DCView<S>, S, DView<S>, S*,  \
                                     S*);                                                               \
  template void gated_rmsnorm_forward<S>(const Context&, DCView<S>, DCView<S>, DCView<S>, Index, S,     \
                                         DView<S>, S*);                                                 \
  template void embedding_forward<S>(const Context&, DCView<S>, const int*, Index, S, DView<S>);        \
  template void causal_conv1d_forward<S>(const Context&, DCView<S>, DCView<S>, DCView<S>, DCView<S>,    \
                                         DView<S>, DView<S>);                                           \
  template void rope_forward<S>(const Context&, DView<S>, int, int, Index, double, int);                \
  template void linear_forward<S>(const Context&, DCView<S>, DCView<S>, DCView<S>, DView<S>);           \
  template void ssd_chunked<S>(const Context&, const SsdDims&, int, const SsdArgs<S>&);                  \
  template void ssd_recurrent<S>(const Context&, const SsdDims&, const SsdArgs<S>&);                     \
  template void attention_forward<S>(const Context&, const S*, const S*, const S*, S*, const AttnDims&, \
                                     S, Index, Index, int, S*);                                         \
  template void attention_decode<S>(const Context&, const DecodeDims&, const S*, const KvSpan<S>*,      \
                                    const Index*, S*, S, int);                                          \
  template void greedy_rows<S>(const Context&, DCView<S>, const std::uint8_t*, Index, int*);            \
  template void sample_rows<S>(const Context&, DCView<S>, float, int, float, const std::uint8_t*, Index, \
                               const double*, int*);

HYBRID_CUDA_INSTANCES(float)
HYBRID_CUDA_INSTANCES(double)

#undef HYBRID_CUDA_INSTANCES

}  // namespace hybrid::ops
