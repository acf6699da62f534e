// Grouped-query attention mixer (REFERENCE.md §2): q/k/v projections, optional per-head
// QK RMSNorm (LFM2), RoPE (NeoX pairs) or NoPE, causal softmax attention with optional
// sliding window, optional sigmoid output gate, o_proj. Decode keeps a KV cache.
#pragma once
#include <cmath>
#include <string>

#include "../config.hpp"
#include "../infer/state.hpp"
#include "../ops/activation.hpp"
#include "../ops/attention.hpp"
#include "../ops/linear.hpp"
#include "../ops/norm.hpp"
#include "../ops/rope.hpp"
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

  // x: (B*T, D); y: (B*T, D). states: nullptr (each sequence starts at position 0 and
  // nothing is kept) or B pointers to KV caches that the call attends to and extends.
  void forward(const Mat<S>& x, Index B, Index T, Mat<S>& y, State* const* states) const {
    const int Hq = sp_.n_heads, Hkv = sp_.n_kv_heads, hd = sp_.head_dim;
    Mat<S> q, k, v, g;
    linear_into<S>(x, wq_, bq_, q);  // (B*T, Hq*hd)
    linear_into<S>(x, wk_, bk_, k);  // (B*T, Hkv*hd)
    linear_into<S>(x, wv_, bv_, v);  // (B*T, Hkv*hd)
    if (sp_.qk_norm) {
      head_rmsnorm(q, qn_);
      head_rmsnorm(k, kn_);
    }
    Mat<S> o(B * T, Index(Hq) * hd), qs, ks, vs, os(T, Index(Hq) * hd);
    for (Index b = 0; b < B; ++b) {
      State* st = states ? states[b] : nullptr;
      const Index pos0 = st ? st->next_pos() : 0;
      qs = q.middleRows(b * T, T);
      ks = k.middleRows(b * T, T);
      vs = v.middleRows(b * T, T);
      if (sp_.rope) {
        ops::rope_forward<S>(qs, Hq, hd, pos0, sp_.rope_theta);
        ops::rope_forward<S>(ks, Hkv, hd, pos0, sp_.rope_theta);
      }
      if (st) {
        st->append(ks, vs);
        ops::AttnDims d{T, st->len, Hq, Hkv, hd};
        ops::attention_forward<S>(qs.data(), st->k.data(), st->v.data(), os.data(), d, scale(),
                                  pos0, st->start_pos, sp_.window);
        st->trim();
      } else {
        ops::AttnDims d{T, T, Hq, Hkv, hd};
        ops::attention_forward<S>(qs.data(), ks.data(), vs.data(), os.data(), d, scale(), 0, 0,
                                  sp_.window);
      }
      o.middleRows(b * T, T) = os;
    }
    if (sp_.output_gate) {
      linear_into<S>(x, wg_, bg_, g);
      o.array() *= g.unaryExpr([](S t) { return ops::sigmoid(t); }).array();
    }
    linear_into<S>(o, wo_, bo_, y);  // (B*T, D)
  }

 private:
  // RMSNorm of every head_dim slice of every row, weight w: (1, hd).
  void head_rmsnorm(Mat<S>& m, const Mat<S>& w) const {
    const int hd = sp_.head_dim;
    Eigen::Map<Mat<S>> heads(m.data(), m.size() / hd, hd);
    Mat<S> tmp = heads;
    Mat<S> out(tmp.rows(), tmp.cols());
    ops::rmsnorm_forward<S>(tmp, w, S(eps_), out);
    heads = out;
  }

  int D_;
  GqaSpec sp_;
  double eps_;
  Mat<S> wq_, wk_, wv_, wo_, wg_, qn_, kn_, bq_, bk_, bv_, bo_, bg_;
};

}  // namespace hybrid
