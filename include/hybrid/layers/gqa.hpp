// Grouped-query attention mixer (REFERENCE.md §2): q/k/v projections, optional per-head
// QK RMSNorm (LFM2), RoPE (NeoX pairs) or NoPE, causal softmax attention with optional
// sliding window, optional sigmoid output gate, o_proj. Decode keeps a KV cache.
#pragma once
#include <cmath>
#include <string>
#include <vector>

#include "../config.hpp"
#include "../infer/state.hpp"
#include "../autograd/functions.hpp"
#include "../autograd/seq_functions.hpp"
#include "param.hpp"

namespace hybrid {

template <class S>
class GqaLayer {
 public:
  using State = KvCache<S>;

  GqaLayer(int d_model, const GqaSpec& spec, double norm_eps)
      : D_(d_model), sp_(spec), eps_(norm_eps) {
    validate(spec, d_model);
    const Index q = Index(spec.n_heads) * spec.head_dim, kv = Index(spec.n_kv_heads) * spec.head_dim;
    wq_.setZero(q, D_);
    wk_.setZero(kv, D_);
    wv_.setZero(kv, D_);
    wo_.setZero(D_, q);
    if (spec.output_gate) wg_.setZero(q, D_);
    if (spec.qk_norm) {
      qn_.setOnes(1, spec.head_dim);
      kn_.setOnes(1, spec.head_dim);
    }
    if (spec.bias) {
      bq_.setZero(1, q);
      bk_.setZero(1, kv);
      bv_.setZero(1, kv);
      bo_.setZero(1, D_);
      if (spec.output_gate) bg_.setZero(1, q);
    }
  }

  const GqaSpec& spec() const { return sp_; }
  S scale() const {
    return sp_.scale != 0 ? S(sp_.scale) : S(1) / std::sqrt(S(sp_.head_dim));
  }

  template <class F>
  void visit(const std::string& p, F&& f) {
    f(join_name(p, "q_proj.weight"), wq_, ParamRole::Matrix);
    f(join_name(p, "k_proj.weight"), wk_, ParamRole::Matrix);
    f(join_name(p, "v_proj.weight"), wv_, ParamRole::Matrix);
    if (sp_.output_gate) f(join_name(p, "g_proj.weight"), wg_, ParamRole::Matrix);
    f(join_name(p, "o_proj.weight"), wo_, ParamRole::Matrix);
    if (sp_.qk_norm) {
      f(join_name(p, "q_norm.weight"), qn_, ParamRole::Scalar);
      f(join_name(p, "k_norm.weight"), kn_, ParamRole::Scalar);
    }
    if (sp_.bias) {
      f(join_name(p, "q_proj.bias"), bq_, ParamRole::Scalar);
      f(join_name(p, "k_proj.bias"), bk_, ParamRole::Scalar);
      f(join_name(p, "v_proj.bias"), bv_, ParamRole::Scalar);
      if (sp_.output_gate) f(join_name(p, "g_proj.bias"), bg_, ParamRole::Scalar);
      f(join_name(p, "o_proj.bias"), bo_, ParamRole::Scalar);
    }
  }

  void init(std::uint64_t seed, double out_div) {
    init::uniform_fan_in(wq_, D_, derive_seed(seed, "wq"));
    init::uniform_fan_in(wk_, D_, derive_seed(seed, "wk"));
    init::uniform_fan_in(wv_, D_, derive_seed(seed, "wv"));
    if (sp_.output_gate) init::uniform_fan_in(wg_, D_, derive_seed(seed, "wg"));
    init::uniform_fan_in(wo_, wo_.cols(), derive_seed(seed, "wo"), out_div);
    for (Mat<S>* b : {&bq_, &bk_, &bv_, &bo_, &bg_}) b->setZero();
    if (sp_.qk_norm) {
      qn_.setOnes();
      kn_.setOnes();
    }
  }

  State make_state() const {
    State s;
    s.window = sp_.window;
    return s;
  }
  // KV bytes held per token of context (bounded by the window when there is one).
  Index state_bytes_per_token() const {
    return Index(sizeof(S)) * 2 * sp_.n_kv_heads * sp_.head_dim;
  }

  // x: (B*T, D) → (B*T, D). states: nullptr (each sequence starts at position 0 and
  // nothing is kept) or B pointers to KV caches that the call attends to and extends.
  Var<S> forward(Tape<S>& t, Var<S> x, Index B, Index T, State* const* states) const {
    const int Hq = sp_.n_heads, Hkv = sp_.n_kv_heads, hd = sp_.head_dim;
    Var<S> q = ag::linear(t, x, wq_, bq_);  // (B*T, Hq*hd)
    Var<S> k = ag::linear(t, x, wk_, bk_);  // (B*T, Hkv*hd)
    const Var<S> v = ag::linear(t, x, wv_, bv_);
    if (sp_.qk_norm) {  // per-head RMSNorm: view (B*T*H, hd)
      q = ag::rmsnorm(t, q.reshape(q.size() / hd, hd), qn_, S(eps_)).reshape(B * T, Index(Hq) * hd);
      k = ag::rmsnorm(t, k.reshape(k.size() / hd, hd), kn_, S(eps_)).reshape(B * T, Index(Hkv) * hd);
    }
    std::vector<Index> pos0(B, 0);
    if (states)
      for (Index b = 0; b < B; ++b) pos0[b] = states[b]->next_pos();
    if (sp_.rope) {
      q = ag::rope(t, q, Hq, hd, B, T, pos0.data(), sp_.rope_theta);
      k = ag::rope(t, k, Hkv, hd, B, T, pos0.data(), sp_.rope_theta);
    }
    Var<S> o;
    if (states) {
      HYBRID_CHECK(!t.recording(), "GQA: decode state cannot be used while recording");
      o = t.var(B * T, Index(Hq) * hd);
      const Index ldq = Index(Hq) * hd;
      for (Index b = 0; b < B; ++b) {
        State& st = *states[b];
        st.append(k.val().middleRows(b * T, T), v.val().middleRows(b * T, T));
        const ops::AttnDims d{T, st.len, Hq, Hkv, hd};
        ops::attention_forward<S>(q.v + b * T * ldq, st.k.data(), st.v.data(), o.v + b * T * ldq,
                                  d, scale(), pos0[b], st.start_pos, sp_.window);
        st.trim();
      }
    } else {
      o = ag::attention(t, q, k, v, Hq, Hkv, hd, B, T, scale(), sp_.window);
    }
    if (sp_.output_gate) o = ag::sigmoid_gate(t, o, ag::linear(t, x, wg_, bg_));
    return ag::linear(t, o, wo_, bo_);  // (B*T, D)
  }

 private:
  int D_;
  GqaSpec sp_;
  double eps_;
  Mat<S> wq_, wk_, wv_, wo_, wg_, qn_, kn_, bq_, bk_, bv_, bo_, bg_;
};

}  // namespace hybrid
