// LQER: a low-rank correction of the quantisation error (Zhang et al., "LQER: Low-Rank
// Quantization Error Reconstruction for LLMs", 2024), as parameter golf's strongest entry
// uses it (rank 4, int4 factors, on top of GPTQ int6).
//
//   LqerFactors f = lqer_factors(w, q, {.rank = 4}, &h);   // h: sum x^T x of w's inputs
//   add_correction(f, w_hat);                              // w_hat (rows, cols) += A B
//
// For a weight W (rows, cols) quantised to Q, the error E = W - Q is approximated by A B,
// A (rows, r), B (r, cols), from the top r singular vectors of E S, S = diag(s) with
// s_j = sqrt(H_jj / n) the root-mean-square of input j on the calibration data (the
// activation-aware scaling of LQER: errors on inputs that are large in practice matter
// more), or S = I without a Hessian. With E S ~ U_r Sigma_r V_r^T:
//   A = U_r Sigma_r = E S V_r,   B = V_r^T S^-1
// so A B = E S V_r V_r^T S^-1 is E's best rank-r correction in the S-weighted norm. The
// factors are themselves quantised (LqerSpec::factor, int4 by default), A stored transposed
// (r, rows) so that each of its rows holds one singular direction and gets one scale.
// The correction is the dequantised factors' product; the model that loads an artifact adds
// it to the dequantised weights (quant/model_artifact.hpp).
#pragma once
#include <Eigen/Dense>
#include <Eigen/Eigenvalues>
#include <vector>

#include "quantize.hpp"

namespace hybrid::quant {

struct LqerSpec {
  int rank = 4;
  QuantSpec factor{.bits = 4, .rule = ScaleRule::MseClip};  // of both factors, per row
};

// The two factors of one tensor's correction: at = A^T (r, rows), b = B (r, cols).
struct LqerFactors {
  QTensor at, b;
  Index rank() const { return b.rows; }
};

// The suffixes of the two factor tensors in an artifact, after the corrected tensor's name.
inline constexpr const char* kLqerA = ".lqer_a";
inline constexpr const char* kLqerB = ".lqer_b";

// The correction of w (rows, cols, row-major) quantised as q; h = sum x^T x of the inputs
// (cols, cols) or nullptr for the unweighted correction. Throws on a rank outside
// [1, min(rows, cols)] or a q or h of another shape.
inline LqerFactors lqer_factors(const float* w, const QTensor& q, const LqerSpec& spec,
                                const Eigen::MatrixXd* h = nullptr) {
  q.check("lqer");
  const Index rows = q.rows, cols = q.cols, r = spec.rank;
  HYBRID_CHECK(r >= 1 && r <= std::min(rows, cols), "lqer: rank ", r, " for a (", rows, ", ", cols,
               ") tensor; expected 1 to ", std::min(rows, cols));
  HYBRID_CHECK(!h || (h->rows() == cols && h->cols() == cols), "lqer: a (", h ? h->rows() : 0, ", ",
               h ? h->cols() : 0, ") Hessian for ", cols, " columns");
  Eigen::VectorXd s = Eigen::VectorXd::Ones(cols);
  if (h) {
    const double mean = h->diagonal().mean();
    // Inputs that never fire get the smallest nonzero weight rather than a zero, which S^-1
    // could not undo.
    for (Index j = 0; j < cols; ++j) s(j) = std::sqrt(std::max((*h)(j, j), 1e-8 * std::max(mean, 1e-30)));
    s /= s.mean();
  }
  Eigen::MatrixXd es(rows, cols);  // E S
  for (Index i = 0; i < rows; ++i)
    for (Index j = 0; j < cols; ++j) es(i, j) = (double(w[i * cols + j]) - double(q.value(i, j))) * s(j);
  // The top r right singular vectors of E S: eigenvectors of (E S)^T (E S), ascending order.
  const Eigen::SelfAdjointEigenSolver<Eigen::MatrixXd> eig(es.transpose() * es);
  HYBRID_CHECK(eig.info() == Eigen::Success, "lqer: the eigen-decomposition of the error did not converge");
  const Eigen::MatrixXd v = eig.eigenvectors().rightCols(r).rowwise().reverse();  // (cols, r)
  const Eigen::MatrixXd a = es * v;                                                // (rows, r)
  std::vector<float> at(static_cast<std::size_t>(r * rows)), b(static_cast<std::size_t>(r * cols));
  for (Index k = 0; k < r; ++k) {
    for (Index i = 0; i < rows; ++i) at[std::size_t(k * rows + i)] = float(a(i, k));
    for (Index j = 0; j < cols; ++j) b[std::size_t(k * cols + j)] = float(v(j, k) / s(j));
  }
  QuantSpec fa = spec.factor, fb = spec.factor;
  if (fa.group > 0 && rows % fa.group != 0) fa.group = 0;
  if (fb.group > 0 && cols % fb.group != 0) fb.group = 0;
  return {quantize(at.data(), r, rows, fa), quantize(b.data(), r, cols, fb)};
}

// w_hat (rows, cols) += A B with the dequantised factors. Throws if the factors do not
// belong together or to a (rows, cols) tensor.
inline void add_correction(const QTensor& at, const QTensor& b, float* w_hat, Index rows, Index cols,
                           const char* what = "lqer") {
  at.check(what);
  b.check(what);
  HYBRID_CHECK(at.rows == b.rows && at.rows >= 1 && at.cols == rows && b.cols == cols, what, ": factors (", at.rows,
               ", ", at.cols, ") and (", b.rows, ", ", b.cols, ") do not correct a (", rows, ", ", cols,
               ") tensor; expected (r, ", rows, ") and (r, ", cols, ")");
  for (Index i = 0; i < rows; ++i)
    for (Index k = 0; k < at.rows; ++k) {
      const float ak = at.value(k, i);
      if (ak == 0) continue;
      for (Index j = 0; j < cols; ++j) w_hat[i * cols + j] += ak * b.value(k, j);
    }
}
inline void add_correction(const LqerFactors& f, float* w_hat, Index rows, Index cols) {
  add_correction(f.at, f.b, w_hat, rows, cols);
}

}  // namespace hybrid::quant
