// The projection GEMMs of every linear layer, forward and backward, in one place:
//   C = alpha op(A) op(B) + beta C        (row-major, op = identity or transpose)
// With HYBRID_HAVE_CBLAS (the CMake build defines it when it finds the system OpenBLAS,
// option HYBRID_BLAS) float and double go to cblas_?gemm; otherwise, and for every other
// scalar type, to Eigen's own product. Both are ordinary BLAS semantics, so results agree
// to rounding; the tests run with either backend.
#pragma once
#include <type_traits>

#include "error.hpp"
#include "tensor.hpp"

#if defined(HYBRID_HAVE_CBLAS)
#include <cblas.h>
#endif

namespace hybrid::blas {

enum class Op { N, T };

// Which backend the linear layers use ("openblas" or "eigen"), for benchmark reports.
inline const char* backend() {
#if defined(HYBRID_HAVE_CBLAS)
  return "openblas";
#else
  return "eigen";
#endif
}

// A: op(A) is (M, K); B: op(B) is (K, N); C: (M, N). Leading dimensions are the row strides.
template <class S>
void gemm(Op ta, Op tb, Index M, Index N, Index K, S alpha, const S* A, Index lda, const S* B,
          Index ldb, S beta, S* C, Index ldc) {
  if (M == 0 || N == 0) return;
#if defined(HYBRID_HAVE_CBLAS)
  if constexpr (std::is_same_v<S, float> || std::is_same_v<S, double>) {
    if (K > 0) {  // K = 0 (C = beta C) goes to the Eigen path below
      HYBRID_CHECK(M <= 0x7fffffff && N <= 0x7fffffff && K <= 0x7fffffff && lda <= 0x7fffffff &&
                       ldb <= 0x7fffffff && ldc <= 0x7fffffff,
                   "gemm: a dimension of (", M, ", ", N, ", ", K, ") exceeds the BLAS int range");
      const auto a = ta == Op::T ? CblasTrans : CblasNoTrans;
      const auto b = tb == Op::T ? CblasTrans : CblasNoTrans;
      if constexpr (std::is_same_v<S, float>)
        cblas_sgemm(CblasRowMajor, a, b, int(M), int(N), int(K), alpha, A, int(lda), B, int(ldb),
                    beta, C, int(ldc));
      else
        cblas_dgemm(CblasRowMajor, a, b, int(M), int(N), int(K), alpha, A, int(lda), B, int(ldb),
                    beta, C, int(ldc));
      return;
    }
  }
#endif
  using Stride = Eigen::OuterStride<>;
  using CMap = Eigen::Map<const Mat<S>, 0, Stride>;
  Eigen::Map<Mat<S>, 0, Stride> c(C, M, N, Stride(ldc));
  const Index ar = ta == Op::N ? M : K, ac = ta == Op::N ? K : M;
  const Index br = tb == Op::N ? K : N, bc = tb == Op::N ? N : K;
  const CMap a(A, ar, ac, Stride(lda)), b(B, br, bc, Stride(ldb));
  auto run = [&](const auto& x, const auto& y) {
    if (beta == S(0)) {
      c.noalias() = alpha * x * y;
    } else {
      if (beta != S(1)) c *= beta;
      c.noalias() += alpha * x * y;
    }
  };
  if (ta == Op::N && tb == Op::N) run(a, b);
  else if (ta == Op::N) run(a, b.transpose());
  else if (tb == Op::N) run(a.transpose(), b);
  else run(a.transpose(), b.transpose());
}

}  // namespace hybrid::blas
