// Mamba-2 mixer (REFERENCE.md §1): in_proj → split z | x B C | dt → causal conv + SiLU over
// x B C → softplus dt (bias, limit) → SSD scan with scalar A per head and D skip → gated
// RMSNorm (per group by default, whole width as an option) → out_proj.
#pragma once
#include <algorithm>
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
class Mamba2Layer {
 public:
  using State = Mamba2State<S>;

  Mamba2Layer(int d_model, const Mamba2Spec& spec, ParamTable& tab, const std::string& p)
      : D_(d_model), sp_(spec) {
    validate(spec, d_model);
    Di_ = spec.d_inner(d_model);
    H_ = spec.nheads(d_model);
    GN_ = spec.ngroups * spec.d_state;
    Cd_ = spec.conv_dim(d_model);
    const Index in_dim = spec.in_proj_dim(d_model);
    in_proj_ = tab.add(join_name(p, "in_proj.weight"), in_dim, D_, ParamRole::Matrix);
    if (sp_.bias) in_bias_ = tab.add(join_name(p, "in_proj.bias"), 1, in_dim, ParamRole::Scalar);
    conv_w_ = tab.add(join_name(p, "conv1d.weight"), Cd_, spec.d_conv, ParamRole::Scalar);
    if (sp_.conv_bias) conv_b_ = tab.add(join_name(p, "conv1d.bias"), 1, Cd_, ParamRole::Scalar);
    dt_bias_ = tab.add(join_name(p, "dt_bias"), 1, H_, ParamRole::Dynamics);
    A_log_ = tab.add(join_name(p, "A_log"), 1, H_, ParamRole::Dynamics);
    D_skip_ = tab.add(join_name(p, "D"), 1, H_, ParamRole::Dynamics);
    norm_w_ = tab.add(join_name(p, "norm.weight"), 1, Di_, ParamRole::Scalar);
    out_proj_ = tab.add(join_name(p, "out_proj.weight"), D_, Di_, ParamRole::Matrix);
    if (sp_.bias) out_bias_ = tab.add(join_name(p, "out_proj.bias"), 1, D_, ParamRole::Scalar);
  }

  const Mamba2Spec& spec() const { return sp_; }
  int d_inner() const { return Di_; }
  int nheads() const { return H_; }

  // REFERENCE.md §1 initialisation; out_proj is divided by out_div (residual rescale).
  void init(ParamStore<S>& w, std::uint64_t seed, double out_div) const {
    init::uniform_fan_in(w.view(in_proj_), D_, derive_seed(seed, "in_proj"));
    init::uniform_fan_in(w.view(conv_w_), sp_.d_conv, derive_seed(seed, "conv_w"));
    if (sp_.conv_bias) init::uniform_fan_in(w.view(conv_b_), sp_.d_conv, derive_seed(seed, "conv_b"));
    init::uniform_fan_in(w.view(out_proj_), Di_, derive_seed(seed, "out_proj"), out_div);
    init::fill(w.view(in_bias_), S(0));
    init::fill(w.view(out_bias_), S(0));
    const View<S> dt_bias = w.view(dt_bias_), A_log = w.view(A_log_);
    Rng rng(derive_seed(seed, "dynamics"));
    const double lmin = std::log(sp_.dt_min), lmax = std::log(sp_.dt_max);
    for (int h = 0; h < H_; ++h) {
      double dt = std::exp(rng.uniform() * (lmax - lmin) + lmin);
      dt = std::max(dt, sp_.dt_init_floor);
      dt_bias(0, h) = S(dt + std::log(-std::expm1(-dt)));  // inverse softplus
      A_log(0, h) = S(std::log(rng.uniform(sp_.A_init_lo, sp_.A_init_hi)));
    }
    init::fill(w.view(D_skip_), S(1));
    init::fill(w.view(norm_w_), S(1));
  }

  // The state is constant in context length, so there is nothing to reserve.
  State make_state(Index /*reserve_tokens*/ = 0, DType /*kv_dtype*/ = DType::F32) const {
    State s;
    s.conv.setZero(Cd_, sp_.d_conv);
    s.ssm.setZero(H_, Index(sp_.headdim) * sp_.d_state);
    return s;
  }
  // Bytes of decode state per sequence (independent of context length).
  Index state_bytes_per_token(DType /*kv_dtype*/ = DType::F32) const { return 0; }  // constant in context length
  Index state_bytes() const {
    return Index(sizeof(S)) * (Index(Cd_) * sp_.d_conv + Index(H_) * sp_.headdim * sp_.d_state);
  }

  // x: (B*T, D) — B sequences of T tokens → (B*T, D). states: nullptr (fresh sequences,
  // nothing kept; the only mode a recording tape accepts) or B pointers to states that
  // the call starts from and updates. seg: packed documents (conv and scan from zero state
  // at each document start), or nullptr.
  Var<S> forward(Tape<S>& t, Var<S> x, Index B, Index T, State* const* states,
                 const ag::Segments* seg = nullptr) const {
    const Var<S> zxbcdt = ag::linear(t, x, in_proj_, in_bias_);  // (B*T, 2Di + 2GN + H)
    const Var<S> z = zxbcdt.col_range(0, Di_);                   // (B*T, Di), a view
    // Decode state pointers live on the tape's arena (no allocation per call).
    S** conv_st = states ? t.template scratch_as<S*>(B) : nullptr;
    S** ssm_st = states ? t.template scratch_as<S*>(B) : nullptr;
    for (Index b = 0; states && b < B; ++b) {
      conv_st[b] = states[b]->conv.data();
      ssm_st[b] = states[b]->ssm.data();
    }
    const Var<S> xbc = ag::silu(t, ag::causal_conv1d(t, zxbcdt.col_range(Di_, Cd_), conv_w_, conv_b_,
                                                     B, T, conv_st, seg));  // (B*T, Cd) x | B | C
    const Var<S> dt = ag::dt_softplus(t, zxbcdt.col_range(Di_ + Cd_, H_), dt_bias_,
                                      S(sp_.dt_limit_lo), S(sp_.dt_limit_hi));  // (B*T, H)
    const Var<S> xs = xbc.col_range(0, Di_);          // (B*T, H*P)
    const Var<S> Bm = xbc.col_range(Di_, GN_);        // (B*T, G*N)
    const Var<S> Cm = xbc.col_range(Di_ + GN_, GN_);  // (B*T, G*N)
    const ag::SsdConfig c{H_, sp_.headdim, sp_.d_state, sp_.ngroups, sp_.chunk, sp_.scan};
    const Var<S> y = ag::ssd(t, xs, dt, A_log_, Bm, Cm, D_skip_, c, B, T, ssm_st, seg);  // (B*T, Di)
    const Index group = sp_.norm_whole_width ? Di_ : Di_ / sp_.ngroups;
    const Var<S> g = ag::gated_rmsnorm(t, y, z, norm_w_, group, S(sp_.norm_eps));
    return ag::linear(t, g, out_proj_, out_bias_);  // (B*T, D)
  }

 private:
  int D_, Di_, H_, GN_, Cd_;
  Mamba2Spec sp_;
  Param in_proj_, in_bias_, conv_w_, conv_b_, dt_bias_, A_log_, D_skip_, norm_w_, out_proj_,
      out_bias_;
};

}  // namespace hybrid
