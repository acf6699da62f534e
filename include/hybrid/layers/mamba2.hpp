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

  Mamba2Layer(int d_model, const Mamba2Spec& spec) : D_(d_model), sp_(spec) {
    validate(spec, d_model);
    Di_ = spec.d_inner(d_model);
    H_ = spec.nheads(d_model);
    GN_ = spec.ngroups * spec.d_state;
    Cd_ = spec.conv_dim(d_model);
    in_proj_.setZero(spec.in_proj_dim(d_model), D_);
    if (spec.bias) in_bias_.setZero(1, in_proj_.rows());
    conv_w_.setZero(Cd_, spec.d_conv);
    if (spec.conv_bias) conv_b_.setZero(1, Cd_);
    dt_bias_.setZero(1, H_);
    A_log_.setZero(1, H_);
    D_skip_.setOnes(1, H_);
    norm_w_.setOnes(1, Di_);
    out_proj_.setZero(D_, Di_);
    if (spec.bias) out_bias_.setZero(1, D_);
  }

  const Mamba2Spec& spec() const { return sp_; }
  int d_inner() const { return Di_; }
  int nheads() const { return H_; }

  template <class F>
  void visit(const std::string& p, F&& f) {
    f(join_name(p, "in_proj.weight"), in_proj_, ParamRole::Matrix);
    if (sp_.bias) f(join_name(p, "in_proj.bias"), in_bias_, ParamRole::Scalar);
    f(join_name(p, "conv1d.weight"), conv_w_, ParamRole::Scalar);
    if (sp_.conv_bias) f(join_name(p, "conv1d.bias"), conv_b_, ParamRole::Scalar);
    f(join_name(p, "dt_bias"), dt_bias_, ParamRole::Dynamics);
    f(join_name(p, "A_log"), A_log_, ParamRole::Dynamics);
    f(join_name(p, "D"), D_skip_, ParamRole::Dynamics);
    f(join_name(p, "norm.weight"), norm_w_, ParamRole::Scalar);
    f(join_name(p, "out_proj.weight"), out_proj_, ParamRole::Matrix);
    if (sp_.bias) f(join_name(p, "out_proj.bias"), out_bias_, ParamRole::Scalar);
  }

  // REFERENCE.md §1 initialisation; out_proj is divided by out_div (residual rescale).
  void init(std::uint64_t seed, double out_div) {
    init::uniform_fan_in(in_proj_, D_, derive_seed(seed, "in_proj"));
    init::uniform_fan_in(conv_w_, sp_.d_conv, derive_seed(seed, "conv_w"));
    if (sp_.conv_bias) init::uniform_fan_in(conv_b_, sp_.d_conv, derive_seed(seed, "conv_b"));
    init::uniform_fan_in(out_proj_, Di_, derive_seed(seed, "out_proj"), out_div);
    if (sp_.bias) {
      in_bias_.setZero();
      out_bias_.setZero();
    }
    Rng rng(derive_seed(seed, "dynamics"));
    const double lmin = std::log(sp_.dt_min), lmax = std::log(sp_.dt_max);
    for (int h = 0; h < H_; ++h) {
      double dt = std::exp(rng.uniform() * (lmax - lmin) + lmin);
      dt = std::max(dt, sp_.dt_init_floor);
      dt_bias_(0, h) = S(dt + std::log(-std::expm1(-dt)));  // inverse softplus
      A_log_(0, h) = S(std::log(rng.uniform(sp_.A_init_lo, sp_.A_init_hi)));
    }
    D_skip_.setOnes();
    norm_w_.setOnes();
  }

  State make_state() const {
    State s;
    s.conv.setZero(Cd_, sp_.d_conv);
    s.ssm.setZero(H_, Index(sp_.headdim) * sp_.d_state);
    return s;
  }
  // Bytes of decode state per sequence (independent of context length).
  Index state_bytes() const {
    return Index(sizeof(S)) * (Index(Cd_) * sp_.d_conv + Index(H_) * sp_.headdim * sp_.d_state);
  }

  // x: (B*T, D) — B sequences of T tokens → (B*T, D). states: nullptr (fresh sequences,
  // nothing kept; the only mode a recording tape accepts) or B pointers to states that
  // the call starts from and updates.
  Var<S> forward(Tape<S>& t, Var<S> x, Index B, Index T, State* const* states) const {
    const Var<S> zxbcdt = ag::linear(t, x, in_proj_, in_bias_);  // (B*T, 2Di + 2GN + H)
    const Var<S> z = ag::cols(t, zxbcdt, 0, Di_);                // (B*T, Di)
    std::vector<Mat<S>*> conv_st;
    std::vector<S*> ssm_st;
    if (states)
      for (Index b = 0; b < B; ++b) {
        conv_st.push_back(&states[b]->conv);
        ssm_st.push_back(states[b]->ssm.data());
      }
    Var<S> xbc = ag::cols(t, zxbcdt, Di_, Cd_);  // (B*T, Cd) raw x | B | C
    xbc = ag::silu(t, ag::causal_conv1d(t, xbc, conv_w_, conv_b_, B, T, states ? conv_st.data() : nullptr));
    const Var<S> dt = ag::dt_softplus(t, ag::cols(t, zxbcdt, Di_ + Cd_, H_), dt_bias_,
                                      S(sp_.dt_limit_lo), S(sp_.dt_limit_hi));  // (B*T, H)
    const Var<S> xs = ag::cols(t, xbc, 0, Di_);          // (B*T, H*P)
    const Var<S> Bm = ag::cols(t, xbc, Di_, GN_);        // (B*T, G*N)
    const Var<S> Cm = ag::cols(t, xbc, Di_ + GN_, GN_);  // (B*T, G*N)
    const ag::SsdConfig c{H_, sp_.headdim, sp_.d_state, sp_.ngroups, sp_.chunk, sp_.scan};
    const Var<S> y = ag::ssd(t, xs, dt, A_log_, Bm, Cm, D_skip_, c, B, T,
                             states ? ssm_st.data() : nullptr);  // (B*T, Di)
    const Index group = sp_.norm_whole_width ? Di_ : Di_ / sp_.ngroups;
    const Var<S> g = ag::gated_rmsnorm(t, y, z, norm_w_, group, S(sp_.norm_eps));
    return ag::linear(t, g, out_proj_, out_bias_);  // (B*T, D)
  }

 private:
  int D_, Di_, H_, GN_, Cd_;
  Mamba2Spec sp_;
  Mat<S> in_proj_, in_bias_, conv_w_, conv_b_, dt_bias_, A_log_, D_skip_, norm_w_, out_proj_,
      out_bias_;
};

}  // namespace hybrid
