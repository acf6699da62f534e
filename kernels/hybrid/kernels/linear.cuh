// CUDA twin of ops/linear.hpp (forward): y = x W^T (+ b) as one cuBLASLt matmul on the
// context's stream and workspace. Row-major y (R, out) is column-major y^T (out, R), so the
// call is y^T = op_T(W_cm) x_cm with W_cm the column-major (in, out) view of W.
// Float: GemmMode::Exact multiplies in float (CUBLAS_COMPUTE_32F: no TF32);
// GemmMode::Bf16 rounds x and W to bf16 (in the context's arena) and accumulates in float.
// Double: CUBLAS_COMPUTE_64F. nvcc only.
#pragma once
#include <cuda_bf16.h>

#include <cstdint>

#include <type_traits>

#include "common.cuh"
#include "elementwise.cuh"

namespace hybrid::kernels {

template <class S>
__global__ void to_bf16_kernel(ops::DCView<S> x, __nv_bfloat16* y) {
  const Index n = x.rows * x.cols;
  for (Index i = Index(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += Index(gridDim.x) * blockDim.x)
    y[i] = __float2bfloat16_rn(float(x(i / x.cols, i % x.cols)));
}

// RAII for the cuBLASLt descriptors of one call.
struct LtCall {
  cublasLtMatmulDesc_t op = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
  cublasLtMatmulPreference_t pref = nullptr;
  ~LtCall() {
    if (pref) cublasLtMatmulPreferenceDestroy(pref);
    if (c) cublasLtMatrixLayoutDestroy(c);
    if (b) cublasLtMatrixLayoutDestroy(b);
    if (a) cublasLtMatrixLayoutDestroy(a);
    if (op) cublasLtMatmulDescDestroy(op);
  }
};

// The largest power of two (up to 256) that divides the address.
inline std::uint32_t alignment(const void* p) {
  const auto a = reinterpret_cast<std::uintptr_t>(p);
  std::uint32_t r = 256;
  while (r > 1 && a % r != 0) r >>= 1;
  return r;
}

// C (m, n, ldc) = op_T(A (k, m, lda)) B (k, n, ldb), column-major, alpha = 1, beta = 0.
inline void lt_matmul(const cuda::Context& ctx, cudaDataType_t ab, cudaDataType_t cd, cublasComputeType_t compute,
                      cudaDataType_t scale, const void* alpha, const void* beta, Index m, Index n, Index k,
                      const void* A, Index lda, const void* B, Index ldb, void* C, Index ldc) {
  LtCall call;
  const auto shapes = [&] { return detail::concat_str("(m, n, k) = (", m, ", ", n, ", ", k, "), ld (", lda, ", ", ldb, ", ", ldc,
                                         ")"); };
  HYBRID_CUBLAS_CHECK(cublasLtMatmulDescCreate(&call.op, compute, scale), shapes());
  const cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
  HYBRID_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(call.op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta), shapes());
  HYBRID_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(call.op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb), shapes());
  HYBRID_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&call.a, ab, std::uint64_t(k), std::uint64_t(m), lda), shapes());
  HYBRID_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&call.b, ab, std::uint64_t(k), std::uint64_t(n), ldb), shapes());
  HYBRID_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&call.c, cd, std::uint64_t(m), std::uint64_t(n), ldc), shapes());
  HYBRID_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&call.pref), shapes());
  const std::size_t ws = ctx.gemm_workspace_bytes();
  HYBRID_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(call.pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws,
                                                           sizeof ws),
                      shapes());
  // The heuristic assumes 256-byte aligned operands unless told otherwise; a column range of
  // a wider activation starts anywhere on the element grid.
  const std::uint32_t align[4] = {alignment(A), alignment(B), alignment(C), alignment(C)};
  const cublasLtMatmulPreferenceAttributes_t which[4] = {
      CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
      CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES};
  for (int i = 0; i < 4; ++i)
    HYBRID_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(call.pref, which[i], &align[i], sizeof align[i]), shapes());
  cublasLtMatmulHeuristicResult_t res{};
  int found = 0;
  HYBRID_CUBLAS_CHECK(cublasLtMatmulAlgoGetHeuristic(ctx.blas(), call.op, call.a, call.b, call.c, call.c, call.pref,
                                                     1, &res, &found),
                      shapes());
  HYBRID_CHECK(found > 0, "cuBLASLt: no algorithm for ", shapes());
  HYBRID_CUBLAS_CHECK(cublasLtMatmul(ctx.blas(), call.op, alpha, A, call.a, B, call.b, beta, C, call.c, C, call.c,
                                     &res.algo, ctx.gemm_workspace(), ws, ctx.raw_stream()),
                      shapes());
}

}  // namespace hybrid::kernels

namespace hybrid::ops {

template <class S>
void linear_forward(const Context& ctx, DCView<S> x, DCView<S> W, DCView<S> bias, DView<S> y) {
  static_assert(std::is_same_v<S, float> || std::is_same_v<S, double>, "linear_forward<Cuda>: float or double");
  HYBRID_CHECK(x.cols == W.cols && y.rows == x.rows && y.cols == W.rows, "linear: x (", x.rows, ", ", x.cols,
               "), W (", W.rows, ", ", W.cols, "), y (", y.rows, ", ", y.cols,
               "); expected x (R, in), W (out, in), y (R, out)");
  const Index R = x.rows, out = W.rows, in = W.cols;
  if (R == 0 || out == 0) return;
  if (in == 0) {
    HYBRID_CUDA_CHECK(cudaMemset2DAsync(y.data, y.ld * sizeof(S), 0, out * sizeof(S), R, ctx.raw_stream()),
                      "zeroing y (", R, ", ", out, ")");
  } else if constexpr (std::is_same_v<S, double>) {
    const double one = 1, zero = 0;
    kernels::lt_matmul(ctx, CUDA_R_64F, CUDA_R_64F, CUBLAS_COMPUTE_64F, CUDA_R_64F, &one, &zero, out, R, in, W.data,
                       W.ld, x.data, x.ld, y.data, y.ld);
  } else if (ctx.gemm_mode() == cuda::GemmMode::Exact) {
    const float one = 1, zero = 0;
    kernels::lt_matmul(ctx, CUDA_R_32F, CUDA_R_32F, CUBLAS_COMPUTE_32F, CUDA_R_32F, &one, &zero, out, R, in, W.data,
                       W.ld, x.data, x.ld, y.data, y.ld);
  } else {
    cuda::Scratch sc(ctx);
    auto* xb = sc.get<__nv_bfloat16>(std::size_t(R * in));
    auto* wb = sc.get<__nv_bfloat16>(std::size_t(out * in));
    kernels::to_bf16_kernel<<<kernels::grid_for(R * in), kernels::kThreads, 0, ctx.raw_stream()>>>(x, xb);
    HYBRID_CUDA_LAUNCHED("to_bf16_kernel", "x (", R, ", ", in, ")");
    kernels::to_bf16_kernel<<<kernels::grid_for(out * in), kernels::kThreads, 0, ctx.raw_stream()>>>(W, wb);
    HYBRID_CUDA_LAUNCHED("to_bf16_kernel", "W (", out, ", ", in, ")");
    const float one = 1, zero = 0;
    kernels::lt_matmul(ctx, CUDA_R_16BF, CUDA_R_32F, CUBLAS_COMPUTE_32F, CUDA_R_32F, &one, &zero, out, R, in, wb, in,
                       xb, in, y.data, y.ld);
  }
  if (!bias.empty()) add_row_bias<S>(ctx, bias, y);
}

}  // namespace hybrid::ops
