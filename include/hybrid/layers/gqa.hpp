// Grouped-query attention mixer (REFERENCE.md §2): q/k/v projections, optional per-head
// QK RMSNorm (LFM2), RoPE (NeoX pairs; all of each head's dims, or the first rope_dims:
// partial RoPE) or NoPE, causal softmax attention with optional sliding window, optional
// sigmoid output gate, o_proj. Decode keeps a KV cache of keys rotated the same way.
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

  GqaLayer(int d_model, const GqaSpec& spec, double norm_eps, ParamTable& tab, const std::string& p)
      : D_(d_model), sp_(spec), eps_(norm_eps) {
    validate(spec, d_model);
    const Index q = Index(spec.n_heads) * spec.head_dim, kv = Index(spec.n_kv_heads) * spec.head_dim;
    wq_ = tab.add(join_name(p, "q_proj.weight"), q, D_, ParamRole::Matrix);
    wk_ = tab.add(join_name(p, "k_proj.weight"), kv, D_, ParamRole::Matrix);
    wv_ = tab.add(join_name(p, "v_proj.weight"), kv, D_, ParamRole::Matrix);
    if (sp_.output_gate) wg_ = tab.add(join_name(p, "g_proj.weight"), q, D_, ParamRole::Matrix);
    wo_ = tab.add(join_name(p, "o_proj.weight"), D_, q, ParamRole::Matrix);
    if (sp_.qk_norm) {
      qn_ = tab.add(join_name(p, "q_norm.weight"), 1, spec.head_dim, ParamRole::Scalar);
      kn_ = tab.add(join_name(p, "k_norm.weight"), 1, spec.head_dim, ParamRole::Scalar);
    }
    if (sp_.bias) {
      bq_ = tab.add(join_name(p, "q_proj.bias"), 1, q, ParamRole::Scalar);
      bk_ = tab.add(join_name(p, "k_proj.bias"), 1, kv, ParamRole::Scalar);
      bv_ = tab.add(join_name(p, "v_proj.bias"), 1, kv, ParamRole::Scalar);
      if (sp_.output_gate) bg_ = tab.add(join_name(p, "g_proj.bias"), 1, q, ParamRole::Scalar);
      bo_ = tab.add(join_name(p, "o_proj.bias"), 1, D_, ParamRole::Scalar);
    }
  }

  const GqaSpec& spec() const { return sp_; }
  S scale() const {
    return sp_.scale != 0 ? S(sp_.scale) : S(1) / std::sqrt(S(sp_.head_dim));
  }

  void init(ParamStore<S>& w, std::uint64_t seed, double out_div) const {
    init::uniform_fan_in(w.view(wq_), D_, derive_seed(seed, "wq"));
    init::uniform_fan_in(w.view(wk_), D_, derive_seed(seed, "wk"));
    init::uniform_fan_in(w.view(wv_), D_, derive_seed(seed, "wv"));
    if (sp_.output_gate) init::uniform_fan_in(w.view(wg_), D_, derive_seed(seed, "wg"));
    init::uniform_fan_in(w.view(wo_), wo_.cols, derive_seed(seed, "wo"), out_div);
    for (const Param* b : {&bq_, &bk_, &bv_, &bo_, &bg_}) init::fill(w.view(*b), S(0));
    init::fill(w.view(qn_), S(1));
    init::fill(w.view(kn_), S(1));
  }

  // reserve_tokens: rows of KV cache allocated up front (bounded by what a window keeps);
  // kv_dtype: the cache's storage, F32 (the scalar type S, exact) or BF16 (half the bytes
  // a decode step reads, keys and values rounded once when appended).
  State make_state(Index reserve_tokens = 0, DType kv_dtype = DType::F32) const {
    State s(kv_dtype, sp_.n_kv_heads, sp_.head_dim);
    s.window = sp_.window;
    const Index rows = sp_.window > 0 ? std::min<Index>(reserve_tokens, 2 * Index(sp_.window) + 1)
                                      : reserve_tokens;
    s.reserve(rows);
    return s;
  }
  // Decode state: nothing of constant size; KV bytes per token of context (bounded by the
  // window when there is one) for a cache stored as kv_dtype.
  Index state_bytes() const { return 0; }
  Index state_bytes_per_token(DType kv_dtype = DType::F32) const {
    const Index elem = kv_dtype == DType::BF16 ? 2 : Index(sizeof(S));
    return elem * 2 * sp_.n_kv_heads * sp_.head_dim;
  }

  // x: (B*T, D) → (B*T, D). states: nullptr (each sequence starts at position 0 and
  // nothing is kept) or B pointers to KV caches that the call attends to and extends.
  // seg: packed documents (each attends within itself, RoPE positions from 0), or nullptr.
  Var<S> forward(Tape<S>& t, Var<S> x, Index B, Index T, State* const* states,
                 const ag::Segments* seg = nullptr) const {
    HYBRID_CHECK(!(states && seg), "attention: packed documents run without decode state");
    const int H = sp_.n_heads, G = sp_.n_kv_heads, P = sp_.head_dim;
    Var<S> q = ag::linear(t, x, wq_, bq_);  // (B*T, H*P)
    Var<S> k = ag::linear(t, x, wk_, bk_);  // (B*T, G*P)
    const Var<S> v = ag::linear(t, x, wv_, bv_);
    if (sp_.qk_norm) {  // per-head RMSNorm: view (B*T*H, P)
      q = ag::rmsnorm(t, q.reshape(q.size() / P, P), qn_, S(eps_)).reshape(B * T, Index(H) * P);
      k = ag::rmsnorm(t, k.reshape(k.size() / P, P), kn_, S(eps_)).reshape(B * T, Index(G) * P);
    }
    Index* pos0 = seg ? nullptr : t.scratch_index(B);
    for (Index b = 0; pos0 && b < B; ++b) pos0[b] = states ? states[b]->next_pos() : 0;
    if (sp_.rope) {
      q = ag::rope(t, q, H, P, B, T, pos0, sp_.rope_theta, sp_.rope_dims, seg);
      k = ag::rope(t, k, G, P, B, T, pos0, sp_.rope_theta, sp_.rope_dims, seg);
    }
    Var<S> o;
    if (states) {  // extend each cache, attend over it, then drop what the window hides
      ops::KvSpan<S>* kv = t.template scratch_as<ops::KvSpan<S>>(B);
      Index cap = 0;
      for (Index b = 0; b < B; ++b) {
        State& st = *states[b];
        HYBRID_CHECK(st.k.heads() == G && st.k.head_dim() == P, "attention: a KV cache of (heads, head_dim) = (",
                     st.k.heads(), ", ", st.k.head_dim(), ") given to a layer of (", G, ", ", P,
                     "); make the state with this model's make_state");
        st.append(k.row_range(b * T, T).value(), v.row_range(b * T, T).value());
        kv[b] = st.span();
        cap = std::max(cap, st.k.rows());
      }
      o = ag::attention_cached(t, q, H, G, P, B, T, kv, pos0, cap, scale(), sp_.window);
      for (Index b = 0; b < B; ++b) states[b]->trim();
    } else {
      o = ag::attention(t, q, k, v, H, G, P, B, T, scale(), sp_.window, seg);
    }
    if (sp_.output_gate) o = ag::sigmoid_gate(t, o, ag::linear(t, x, wg_, bg_));
    return ag::linear(t, o, wo_, bo_);  // (B*T, D)
  }

 private:
  int D_;
  GqaSpec sp_;
  double eps_;
  Param wq_, wk_, wv_, wo_, wg_, qn_, kn_, bq_, bk_, bv_, bo_, bg_;
};

}  // namespace hybrid
