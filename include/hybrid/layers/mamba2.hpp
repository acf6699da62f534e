// Mamba-2 mixer (REFERENCE.md §1): in_proj → split z | x B C | dt → causal conv + SiLU over
// x B C → softplus dt (bias, limit) → SSD scan with scalar A per head and D skip → gated
// RMSNorm (per group by default, whole width as an option) → out_proj.
#pragma once
#include <algorithm>
#include <cmath>
#include <string>

#include "../config.hpp"
#include "../infer/state.hpp"
#include "../ops/activation.hpp"
#include "../ops/conv1d.hpp"
#include "../ops/linear.hpp"
#include "../ops/norm.hpp"
#include "../ops/ssd.hpp"
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

  // x: (B*T, D) — B sequences of T tokens; y: (B*T, D). states: nullptr (fresh start, no
  // state kept) or B state pointers that the call starts from and updates.
  void forward(const Mat<S>& x, Index B, Index T, Mat<S>& y, State* const* states) const {
    const int P = sp_.headdim, N = sp_.d_state, G = sp_.ngroups;
    Mat<S> zxbcdt;
    linear_into<S>(x, in_proj_, in_bias_, zxbcdt);  // (B*T, 2Di + 2GN + H)
    Mat<S> gated(B * T, Di_);                                // (B*T, Di)
    Mat<S> xbc_raw(T, Cd_), xbc, xs(T, Di_), Bm(T, GN_), Cm(T, GN_), dt(T, H_), ys(T, Di_), z,
        normed;
    Vec<S> A(H_);
    for (int h = 0; h < H_; ++h) A[h] = -std::exp(A_log_(0, h));
    const S lo = S(sp_.dt_limit_lo), hi = S(sp_.dt_limit_hi);
    const ops::SsdDims dims{T, H_, P, N, G};
    for (Index b = 0; b < B; ++b) {
      const auto rows = zxbcdt.middleRows(b * T, T);
      xbc_raw = rows.middleCols(Di_, Cd_);
      State* st = states ? states[b] : nullptr;
      xbc.resize(T, Cd_);
      ops::causal_conv1d_forward<S>(xbc_raw, conv_w_, conv_b_, st ? &st->conv : nullptr, xbc,
                                    st ? &st->conv : nullptr);  // (T, Cd)
      xbc = xbc.unaryExpr([](S v) { return ops::silu(v); });
      xs = xbc.leftCols(Di_);
      Bm = xbc.middleCols(Di_, GN_);
      Cm = xbc.rightCols(GN_);
      for (Index t = 0; t < T; ++t)
        for (int h = 0; h < H_; ++h) {
          const S v = ops::softplus(rows(t, Di_ + Cd_ + h) + dt_bias_(0, h));
          dt(t, h) = std::clamp(v, lo, hi);
        }
      ops::SsdArgs<S> a{xs.data(), dt.data(), A.data(), Bm.data(), Cm.data(), D_skip_.data(),
                        st ? st->ssm.data() : nullptr, ys.data(), st ? st->ssm.data() : nullptr};
      ops::ssd_forward<S>(dims, sp_.chunk, sp_.scan, a);  // (T, Di)
      z = rows.leftCols(Di_);
      const Index group = sp_.norm_whole_width ? Di_ : Di_ / G;
      normed.resize(T, Di_);
      ops::gated_rmsnorm_forward<S>(ys, z, norm_w_, group, S(sp_.norm_eps), normed);
      gated.middleRows(b * T, T) = normed;
    }
    linear_into<S>(gated, out_proj_, out_bias_, y);  // (B*T, D)
  }

 private:
  int D_, Di_, H_, GN_, Cd_;
  Mamba2Spec sp_;
  Mat<S> in_proj_, in_bias_, conv_w_, conv_b_, dt_bias_, A_log_, D_skip_, norm_w_, out_proj_,
      out_bias_;
};

}  // namespace hybrid
