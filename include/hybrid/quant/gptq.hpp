// GPTQ: quantisation that corrects each column's rounding error on the columns not yet
// quantised, weighted by the inputs the layer actually sees (Frantar et al., "GPTQ:
// Accurate Post-Training Quantization for Generative Pre-trained Transformers", 2023).
//
//   Hessians h = collect_hessians(model, calib, B, T);     // sum x^T x per linear weight
//   QTensor t = gptq_quantize(w, rows, cols, h.at(offset).h, spec);
//   Artifact a = quantize_model_gptq(model, policy, calib, B, T);   // every projection
//
// For a weight W (rows, cols) whose inputs x (n, cols) have H = sum x^T x, GPTQ minimises
// the layer-output error ||x W^T - x Q^T||^2 = tr((W - Q) H (W - Q)^T) column by column:
//   1. dead inputs (H_ii = 0) get H_ii = 1 and their weights zeroed (they never matter);
//   2. H += damp * mean(diag H) * I (damping; doubled until the Cholesky succeeds);
//   3. with act_order the columns are taken in descending diag(H) order;
//   4. U = the upper Cholesky factor of H^-1 (H^-1 = U^T U);
//   5. for each column i: q_i = round(w_i / s) * s, e_i = (w_i - q_i) / U_ii, and the
//      columns j > i of the block of `block` columns get w_j -= e_i U_ij; after the block
//      the later columns get the block's errors in one product.
// Scales: the spec's rule (RowMax, MseClip, SdClip; per row or per group) applied to the
// original W once, before any column moves ("static groups"): the groups stay the columns
// c / group of the original order, so act_order and groups go together, and the scales are
// the ones round-to-nearest would use; GPTQ changes only the integers.
//
// collect_hessians runs the model's float forward once over the calibration tokens with a
// linear observer on the tape (autograd/tape.hpp) and sums x^T x for every Matrix-role
// weight. quantize_model_gptq quantises from Hessians of the float model (one pass) or, with
// GptqOptions::sequential, block by block: the Hessians of block l are gathered with blocks
// < l already quantised, so each block corrects for the inputs the quantised model gives
// it (one calibration forward per block).
#pragma once
#include <Eigen/Cholesky>
#include <Eigen/Dense>
#include <algorithm>
#include <cmath>
#include <map>
#include <numeric>
#include <span>
#include <string>
#include <vector>

#include "../core/dtype.hpp"
#include "../core/gemm.hpp"
#include "../infer/generate.hpp"
#include "../runtime_model.hpp"
#include "lqer.hpp"
#include "model_artifact.hpp"
#include "policy.hpp"
#include "quantize.hpp"

namespace hybrid::quant {

struct GptqOptions {
  double damp = 0.01;     // fraction of mean(diag H) added to the diagonal
  Index block = 128;      // columns per lazy-update block
  bool act_order = true;  // columns in descending diag(H) order
  bool sequential = false;  // quantize_model_gptq: Hessians block by block on the quantised prefix
  bool f16_scales = true;   // round the scales to float16 first (as the artifact stores them), so
                            // the errors fed forward are those of the values that load
};

// The input statistics of one linear weight: h = sum over rows x of x^T x, over n rows.
struct Hessian {
  Eigen::MatrixXd h;  // (cols, cols), symmetric
  Index n = 0;
};

// By the weight's offset in the model's parameter store (Param::offset).
using Hessians = std::map<Index, Hessian>;

// GPTQ of w (rows, cols), row-major, with h = sum x^T x (cols, cols) of its inputs, into a
// QTensor of spec's width, rule and groups. Throws on shapes that do not match, a non-finite
// or negative-diagonal h, a non-positive damping or block, or an h no damping makes
// positive definite.
inline QTensor gptq_quantize(const float* w, Index rows, Index cols, const Eigen::MatrixXd& h, const QuantSpec& spec,
                             const GptqOptions& opt = {}) {
  HYBRID_CHECK(h.rows() == cols && h.cols() == cols, "gptq: a (", h.rows(), ", ", h.cols(),
               ") Hessian for a weight with ", cols, " columns; expected (", cols, ", ", cols, ")");
  HYBRID_CHECK(opt.damp > 0 && std::isfinite(opt.damp), "gptq: damping ", opt.damp,
               "; expected a positive fraction of mean(diag H) such as 0.01");
  HYBRID_CHECK(opt.block > 0, "gptq: block of ", opt.block, " columns; expected >= 1 (128 is usual)");
  HYBRID_CHECK(h.allFinite(), "gptq: the Hessian has non-finite entries (calibration activations overflowed?)");
  // The scales (and every argument check of quantize) from the original weights.
  QTensor t = quantize(w, rows, cols, spec);
  if (opt.f16_scales)
    for (float& s : t.scales) s = f16_to_f32(f32_to_f16(s));
  const int qmax = qmax_of(spec.bits);
  const Index group = t.group, gpr = t.groups_per_row();

  Eigen::MatrixXd H = h;
  Eigen::MatrixXd W(rows, cols);  // column-major: a column is contiguous
  for (Index r = 0; r < rows; ++r)
    for (Index c = 0; c < cols; ++c) W(r, c) = double(w[r * cols + c]);
  for (Index c = 0; c < cols; ++c) {
    HYBRID_CHECK(H(c, c) >= 0, "gptq: diagonal entry ", c, " of the Hessian is ", H(c, c),
                 "; a sum of x^T x has none below zero");
    if (H(c, c) == 0) H(c, c) = 1, W.col(c).setZero();
  }
  std::vector<Index> perm(static_cast<std::size_t>(cols));
  std::iota(perm.begin(), perm.end(), Index(0));
  if (opt.act_order)
    std::stable_sort(perm.begin(), perm.end(), [&](Index a, Index b) { return H(a, a) > H(b, b); });
  Eigen::MatrixXd Hp(cols, cols), Wp(rows, cols);
  for (Index j = 0; j < cols; ++j) {
    Wp.col(j) = W.col(perm[std::size_t(j)]);
    for (Index i = 0; i < cols; ++i) Hp(i, j) = H(perm[std::size_t(i)], perm[std::size_t(j)]);
  }
  const double mean_diag = Hp.diagonal().mean();
  Eigen::MatrixXd U;
  double damp = opt.damp;
  for (int attempt = 0;; ++attempt) {
    Eigen::MatrixXd Hd = Hp;
    Hd.diagonal().array() += damp * mean_diag;
    Eigen::LLT<Eigen::MatrixXd> llt(Hd);
    if (llt.info() == Eigen::Success) {
      const Eigen::MatrixXd Hinv = llt.solve(Eigen::MatrixXd::Identity(cols, cols));
      Eigen::LLT<Eigen::MatrixXd> llt2(0.5 * (Hinv + Hinv.transpose()));
      if (llt2.info() == Eigen::Success) {
        U = llt2.matrixU();
        break;
      }
    }
    HYBRID_CHECK(attempt < 12, "gptq: the Hessian is not positive definite even with damping ", damp,
                 " x mean(diag H); the calibration inputs are degenerate");
    damp *= 2;
  }

  std::vector<std::int8_t>& q = t.q;
  Eigen::MatrixXd E(rows, std::min(opt.block, cols));
  for (Index i1 = 0; i1 < cols; i1 += opt.block) {
    const Index i2 = std::min(i1 + opt.block, cols), nb = i2 - i1;
    for (Index i = i1; i < i2; ++i) {
      const Index c = perm[std::size_t(i)];  // the original column
      const double d = U(i, i);
      for (Index r = 0; r < rows; ++r) {
        const float s = t.scales[std::size_t(r * gpr + c / group)];
        const std::int8_t v = detail::quantize_value(float(Wp(r, i)), s, qmax);
        q[std::size_t(r * cols + c)] = v;
        E(r, i - i1) = (Wp(r, i) - double(float(v) * s)) / d;
      }
      if (i + 1 < i2)
        Wp.block(0, i + 1, rows, i2 - i - 1).noalias() -= E.col(i - i1) * U.block(i, i + 1, 1, i2 - i - 1);
    }
    if (i2 < cols)
      Wp.rightCols(cols - i2).noalias() -= E.leftCols(nb) * U.block(i1, i2, nb, cols - i2);
  }
  return t;
}

// The layer-output error tr((W - Q) h (W - Q)^T) = sum over calibration rows x of
// ||x W^T - x Q^T||^2, for w (rows, cols) row-major against its quantised t.
inline double output_error(const float* w, const QTensor& t, const Eigen::MatrixXd& h) {
  t.check("output_error");
  HYBRID_CHECK(h.rows() == t.cols && h.cols() == t.cols, "output_error: a (", h.rows(), ", ", h.cols(),
               ") Hessian for ", t.cols, " columns");
  Eigen::MatrixXd D(t.rows, t.cols);
  for (Index r = 0; r < t.rows; ++r)
    for (Index c = 0; c < t.cols; ++c) D(r, c) = double(w[r * t.cols + c]) - double(t.value(r, c));
  return (D * h).cwiseProduct(D).sum();
}

// Calibration: sum x^T x of the inputs of every Matrix-role weight that `want` accepts (by
// its table entry), over the model's float forward of `tokens` as `B` sequences of `T`
// (B * T ids). Stored weights (set_weight_storage) are bypassed: the model must hold float
// weights, which is what quantisation reads anyway.
template <class Want>
Hessians collect_hessians(const RuntimeModel<float>& model, std::span<const int> tokens, Index B, Index T,
                          Want&& want) {
  HYBRID_CHECK(B >= 1 && T >= 1 && Index(tokens.size()) == B * T, "collect_hessians: ", tokens.size(),
               " calibration ids for ", B, " sequences of ", T, "; expected B * T");
  HYBRID_CHECK(!model.weight_store(), "collect_hessians: the model holds stored (",
               dtype_name(model.weight_store()->dtype()), ") weights; call set_weight_storage(DType::F32) first");
  std::map<Index, const ParamInfo*> by_offset;
  for (const auto& e : model.param_table().entries())
    if (e.role == ParamRole::Matrix && want(e)) by_offset[e.offset] = &e;
  Hessians hs;
  std::vector<float> g;
  Tape<float> tape(false);
  tape.set_linear_observer([&](const Param& W, View<const float> x) {
    const auto it = by_offset.find(W.offset);
    if (it == by_offset.end()) return;
    const Index n = x.cols;
    Hessian& h = hs[W.offset];
    if (h.h.size() == 0) h.h = Eigen::MatrixXd::Zero(n, n);
    g.assign(std::size_t(n * n), 0.0f);
    // g (n, n) = x^T x, in float over this call's rows, summed into h in double. A BLAS need
    // not give g_ij and g_ji bit for bit alike: their mean keeps h exactly symmetric.
    blas::gemm<float>(blas::Op::T, blas::Op::N, n, n, x.rows, 1.0f, x.data, x.ld, x.data, x.ld, 0.0f, g.data(), n);
    for (Index i = 0; i < n; ++i)
      for (Index j = 0; j <= i; ++j) {
        const double v = 0.5 * (double(g[std::size_t(i * n + j)]) + double(g[std::size_t(j * n + i)]));
        h.h(i, j) += v;
        if (j != i) h.h(j, i) += v;
      }
    h.n += x.rows;
  });
  (void)model.forward(tokens, B, T, nullptr, false, &tape);
  return hs;
}

inline Hessians collect_hessians(const RuntimeModel<float>& model, std::span<const int> tokens, Index B, Index T) {
  return collect_hessians(model, tokens, B, T, [](const ParamInfo&) { return true; });
}

// Calibration from the model itself: B sequences of T ids, each `first` followed by T - 1
// ids sampled at temperature 1 (sequence b with seed + b), no stop token. For models without
// training data at hand (the "self-generated calibration" of parameter golf entries).
inline std::vector<int> self_calibration(const RuntimeModel<float>& model, Index B, Index T, int first,
                                         std::uint64_t seed) {
  HYBRID_CHECK(B >= 1 && T >= 1, "self_calibration: ", B, " sequences of ", T, " ids; expected both >= 1");
  HYBRID_CHECK(first >= 0 && first < model.vocab(), "self_calibration: first id ", first, " is outside the model's ",
               model.vocab(), " ids");
  const ByteTokenizer tok;  // only its (absent) role in stopping and masking: neither is used
  std::vector<int> ids;
  ids.reserve(std::size_t(B * T));
  for (Index b = 0; b < B; ++b) {
    GenerateOptions o;
    o.max_new_tokens = int(T - 1);
    o.sampling.temperature = 1;
    o.sampling.seed = seed + std::uint64_t(b);
    o.stop_tokens = std::set<int>{};
    o.restrict_to_tokenizer = false;
    const auto r = generate_batch(model, tok, {{first}}, o);
    HYBRID_CHECK(Index(r[0].tokens.size()) == T - 1, "self_calibration: sequence ", b, " stopped after ",
                 r[0].tokens.size(), " ids");
    ids.push_back(first);
    ids.insert(ids.end(), r[0].tokens.begin(), r[0].tokens.end());
  }
  return ids;
}

// The block index of a parameter named "blocks.<l>.…", -1 for any other (embedding, head,
// final norm).
inline int block_of(const std::string& name) {
  if (!name.starts_with("blocks.")) return -1;
  const std::size_t dot = name.find('.', 7);
  try {
    return std::stoi(name.substr(7, dot - 7));
  } catch (...) {
    return -1;
  }
}

// Per-tensor results of quantize_model_gptq: layer-output error of round-to-nearest and of
// GPTQ on the calibration inputs (the Hessian they were gathered with).
struct GptqTensorReport {
  std::string name;
  Index rows = 0, cols = 0;
  double rtn_error = 0, gptq_error = 0;
};

// Every parameter of `model` into an Artifact as quantize_model does, the Matrix-role
// projections the policy quantises by GPTQ on the calibration tokens (B sequences of T);
// the embedding (and an untied head) by round-to-nearest. The model is left unchanged.
// report, when given, receives one row per GPTQ tensor.
// hessians, when given, receives the Hessian each tensor was quantised with (for LQER).
inline Artifact quantize_model_gptq(const RuntimeModel<float>& model, const QuantPolicy& policy,
                                    std::span<const int> tokens, Index B, Index T, const GptqOptions& opt = {},
                                    std::vector<GptqTensorReport>* report = nullptr, Hessians* hessians = nullptr) {
  const auto spec_of = [&](const ParamInfo& e) -> const QuantSpec* {
    return e.role == ParamRole::Matrix ? policy.spec_for(tensor_role(e.name, e.role)) : nullptr;
  };
  std::map<std::string, QTensor> done;  // GPTQ results by name
  const auto run = [&](const RuntimeModel<float>& m, const Hessians& hs) {
    for (const auto& e : m.param_table().entries()) {
      const auto it = hs.find(e.offset);
      const QuantSpec* s = spec_of(e);
      if (it == hs.end() || !s || done.count(e.name)) continue;
      QuantSpec spec = *s;
      if (spec.group > 0 && e.cols % spec.group != 0) spec.group = 0;  // as quantize_model
      const float* w = model.param_values() + e.offset;  // the original float weights
      QTensor q = gptq_quantize(w, e.rows, e.cols, it->second.h, spec, opt);
      if (report) {
        const QTensor rtn = quantize(w, e.rows, e.cols, spec);
        report->push_back({e.name, e.rows, e.cols, output_error(w, rtn, it->second.h),
                           output_error(w, q, it->second.h)});
      }
      done.emplace(e.name, std::move(q));
      if (hessians) (*hessians)[e.offset] = it->second;
    }
  };
  if (!opt.sequential) {
    run(model, collect_hessians(model, tokens, B, T, [&](const ParamInfo& e) { return spec_of(e) != nullptr; }));
  } else {
    // A working copy whose blocks become their dequantised selves one at a time.
    RuntimeModel<float> work(model.desc());
    std::copy(model.param_values(), model.param_values() + model.param_table().total(), work.param_values());
    int blocks = 0;
    for (const auto& e : model.param_table().entries()) blocks = std::max(blocks, block_of(e.name) + 1);
    for (int l = -1; l < blocks; ++l) {
      const auto in_l = [&](const ParamInfo& e) { return spec_of(e) != nullptr && block_of(e.name) == l; };
      bool any = false;
      for (const auto& e : model.param_table().entries()) any |= in_l(e);
      if (!any) continue;
      run(model, collect_hessians(work, tokens, B, T, in_l));
      for (const auto& e : model.param_table().entries())
        if (in_l(e) && done.count(e.name)) dequantize(done.at(e.name), work.param_values() + e.offset);
    }
  }
  Artifact a = quantize_model(model, policy);
  for (auto& t : a.tensors) {
    const auto it = done.find(t.name);
    if (it == done.end()) continue;
    HYBRID_CHECK(t.kind == ArtifactTensor::Kind::Quantized && t.q.rows == it->second.rows &&
                     t.q.cols == it->second.cols && t.q.group == it->second.group,
                 "quantize_model_gptq: tensor '", t.name, "' is not quantised alike by quantize_model");
    t.q = std::move(it->second);
  }
  a.policy["method"] = "gptq";
  a.policy["gptq"] = {{"damp", opt.damp},      {"block", opt.block},     {"act_order", opt.act_order},
                      {"sequential", opt.sequential}, {"calibration_sequences", B}, {"calibration_length", T}};
  return a;
}

// LQER corrections (quant/lqer.hpp) of every quantised projection (Matrix role) of an
// artifact made from `model`: two factor tensors each, appended after the tensors. With
// Hessians (by offset, as collect_hessians or quantize_model_gptq give them) the correction
// is activation-weighted; tensors without one get the unweighted correction. Returns the
// count of corrected tensors.
inline int add_lqer(Artifact& a, const RuntimeModel<float>& model, const LqerSpec& spec,
                    const Hessians* hessians = nullptr) {
  std::map<std::string, const ParamInfo*> by_name;
  for (const auto& e : model.param_table().entries()) by_name[e.name] = &e;
  std::vector<ArtifactTensor> extra;
  for (const auto& t : a.tensors) {
    const auto it = by_name.find(t.name);
    if (t.kind != ArtifactTensor::Kind::Quantized || it == by_name.end() || it->second->role != ParamRole::Matrix)
      continue;
    const ParamInfo& e = *it->second;
    HYBRID_CHECK(t.name.find(".lqer_") == std::string::npos, "add_lqer: the artifact is already corrected");
    const Hessian* h = nullptr;
    if (hessians)
      if (const auto hi = hessians->find(e.offset); hi != hessians->end()) h = &hi->second;
    LqerFactors f = lqer_factors(model.param_values() + e.offset, t.q, spec, h ? &h->h : nullptr);
    const std::string stream = t.stream.empty() ? "lqer" : t.stream + ".lqer";
    extra.push_back(ArtifactTensor::quantized(t.name + kLqerA, std::move(f.at), DType::F16, stream));
    extra.push_back(ArtifactTensor::quantized(t.name + kLqerB, std::move(f.b), DType::F16, stream));
  }
  for (auto& t : extra) a.tensors.push_back(std::move(t));
  a.policy["lqer"] = {{"rank", spec.rank}, {"bits", spec.factor.bits}, {"rule", scale_rule_name(spec.factor.rule)},
                      {"group", spec.factor.group}, {"weighted", hessians != nullptr}};
  return int(extra.size() / 2);
}

}  // namespace hybrid::quant
