// Next-token sampling from one row of logits: repetition penalty (CTRL / HF), then greedy
// (temperature 0) or temperature → top-k → top-p (nucleus) → one draw from hybrid::Rng,
// so a seed gives the same ids on every platform. Ids outside an allowed mask (e.g. the
// padding ids of a model whose vocab is larger than its tokenizer's) are never picked.
//
//   Sampler s(SamplingParams{.temperature = 0.8f, .top_p = 0.95f, .seed = 1}, tok, V);
//   int id = s.sample(logits.row(T - 1), context);
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <span>
#include <utility>
#include <vector>

#include <Eigen/Core>

#include "../core/error.hpp"
#include "../core/rng.hpp"
#include "tokenizer.hpp"

namespace hybrid {

struct SamplingParams {
  float temperature = 1;         // 0: greedy (argmax, lowest id on ties)
  int top_k = 0;                 // keep the k most likely ids (ties: lower id); 0: all
  float top_p = 1;               // keep the smallest most-likely set with mass >= top_p
  float repetition_penalty = 1;  // > 1 discourages ids already in the context
  std::uint64_t seed = 0;

  void validate() const {
    HYBRID_CHECK(std::isfinite(temperature) && temperature >= 0,
                 "sampling: temperature must be a finite value >= 0 (0 = greedy), got ",
                 temperature);
    HYBRID_CHECK(top_k >= 0, "sampling: top_k must be >= 0 (0 = no top-k), got ", top_k);
    HYBRID_CHECK(top_p > 0 && top_p <= 1, "sampling: top_p must be in (0, 1] (1 = no nucleus ",
                 "filtering), got ", top_p);
    HYBRID_CHECK(std::isfinite(repetition_penalty) && repetition_penalty > 0,
                 "sampling: repetition_penalty must be a finite value > 0 (1 = none), got ",
                 repetition_penalty);
  }
  bool greedy() const { return temperature == 0; }
};

class Sampler {
 public:
  // allowed: empty = every id may be sampled; otherwise allowed[i] != 0 marks id i, and ids
  // at or beyond allowed.size() are excluded.
  explicit Sampler(const SamplingParams& p = {}, std::vector<std::uint8_t> allowed = {})
      : p_((p.validate(), p)), allowed_(std::move(allowed)), rng_(p.seed) {}
  // Only ids below model_vocab that the tokenizer can decode.
  Sampler(const SamplingParams& p, const Tokenizer& tok, int model_vocab)
      : Sampler(p, decodable_mask(tok, model_vocab)) {}

  const SamplingParams& params() const { return p_; }
  const std::vector<std::uint8_t>& allowed() const { return allowed_; }

  // logits: one row or column (V) of float or double. context: the ids already in the
  // sequence (prompt and generated), which the repetition penalty looks at.
  template <class Derived>
  int sample(const Eigen::DenseBase<Derived>& logits, std::span<const int> context = {}) {
    const double total = prepare(logits, context);
    if (p_.greedy()) return cand_[0];
    // One draw per call, whatever the candidates, so streams stay aligned across settings.
    const double u = rng_.uniform() * total;
    double acc = 0;
    for (std::size_t j = 0; j < cand_.size(); ++j) {
      acc += w_[j];
      if (u < acc) return cand_[j];
    }
    return cand_.back();  // u rounded up to the total
  }

  // The distribution sample() draws from: V probabilities, 0 for removed ids (one-hot on
  // the argmax when greedy). Does not advance the random stream.
  template <class Derived>
  std::vector<double> distribution(const Eigen::DenseBase<Derived>& logits,
                                   std::span<const int> context = {}) {
    const double total = prepare(logits, context);
    std::vector<double> p(std::size_t(logits.size()), 0.0);
    for (std::size_t j = 0; j < cand_.size(); ++j) p[std::size_t(cand_[j])] = w_[j] / total;
    return p;
  }

 private:
  bool allowed(int id) const {
    return allowed_.empty() || (std::size_t(id) < allowed_.size() && allowed_[std::size_t(id)]);
  }

  // Leaves the surviving ids in cand_ with unnormalised weights in w_; returns their sum.
  // Greedy: cand_ = {argmax}, w_ = {1}.
  template <class Derived>
  double prepare(const Eigen::DenseBase<Derived>& logits, std::span<const int> context) {
    const Eigen::Index V = logits.size();
    HYBRID_CHECK(V > 0, "sampling: the logits row is empty");
    HYBRID_CHECK(logits.rows() == 1 || logits.cols() == 1, "sampling: expected one row of ",
                 "logits, got a ", logits.rows(), " x ", logits.cols(), " matrix");
    l_.resize(std::size_t(V));
    for (Eigen::Index i = 0; i < V; ++i) {
      const double v = double(logits.derived().coeff(i));
      HYBRID_CHECK(!std::isnan(v), "sampling: the logit at position ", i, " (token id ", i,
                   ") is NaN; the model produced non-finite logits");
      HYBRID_CHECK(v != std::numeric_limits<double>::infinity(), "sampling: the logit at ",
                   "position ", i, " (token id ", i, ") is +inf; logits must be finite or -inf");
      l_[std::size_t(i)] = v;
    }
    // Repetition penalty, once per distinct id in the context: a positive logit is divided
    // by the penalty and a negative one multiplied, so both move the same way.
    if (p_.repetition_penalty != 1) {
      const double pen = p_.repetition_penalty;
      seen_.assign(std::size_t(V), 0);
      for (int id : context) {
        if (id < 0 || id >= V || seen_[std::size_t(id)]) continue;
        seen_[std::size_t(id)] = 1;
        double& v = l_[std::size_t(id)];
        v = v > 0 ? v / pen : v * pen;
      }
    }
    cand_.clear();
    for (int i = 0; i < int(V); ++i)
      if (allowed(i) && l_[std::size_t(i)] > -std::numeric_limits<double>::infinity())
        cand_.push_back(i);
    if (cand_.empty()) {
      Eigen::Index n_allowed = 0;
      for (int i = 0; i < int(V); ++i) n_allowed += allowed(i);
      fail("sampling: nothing can be sampled: ",
           n_allowed == 0 ? "no token id in [0, " : "every allowed token id in [0, ", V,
           n_allowed == 0 ? ") is allowed by the mask" : ") has logit -inf");
    }
    // A strict total order (logit descending, then id), so sorting is deterministic.
    const auto before = [this](int a, int b) {
      const double la = l_[std::size_t(a)], lb = l_[std::size_t(b)];
      return la > lb || (la == lb && a < b);
    };
    if (p_.greedy()) {
      const int best = *std::min_element(cand_.begin(), cand_.end(), before);
      cand_.assign(1, best);
      w_.assign(1, 1.0);
      return 1.0;
    }
    const double inv_t = 1.0 / double(p_.temperature);
    for (int i : cand_) l_[std::size_t(i)] *= inv_t;
    bool sorted = false;
    if (p_.top_k > 0 && std::size_t(p_.top_k) < cand_.size()) {
      std::partial_sort(cand_.begin(), cand_.begin() + p_.top_k, cand_.end(), before);
      cand_.resize(std::size_t(p_.top_k));
      sorted = true;
    }
    if (p_.top_p < 1 && !sorted) std::sort(cand_.begin(), cand_.end(), before), sorted = true;
    double mx = -std::numeric_limits<double>::infinity();
    for (int i : cand_) mx = std::max(mx, l_[std::size_t(i)]);
    w_.resize(cand_.size());
    double total = 0;
    for (std::size_t j = 0; j < cand_.size(); ++j)
      total += w_[j] = std::exp(l_[std::size_t(cand_[j])] - mx);
    if (p_.top_p < 1) {
      // Smallest prefix of the sorted ids whose mass reaches top_p; at least one id.
      const double target = double(p_.top_p) * total;
      double cum = 0;
      std::size_t keep = 0;
      while (keep < cand_.size()) {
        cum += w_[keep++];
        if (cum >= target) break;
      }
      cand_.resize(keep);
      w_.resize(keep);
      total = cum;
    }
    return total;
  }

  SamplingParams p_;
  std::vector<std::uint8_t> allowed_;
  Rng rng_;
  // Work buffers, reused across calls.
  std::vector<double> l_, w_;
  std::vector<int> cand_;
  std::vector<std::uint8_t> seen_;
};

}  // namespace hybrid
