// LFM2 gated short convolution (REFERENCE.md §3): B, C, x = split(in_proj(x), 3);
// y = C * causal_conv(B * x) (kernel L, no activation); out_proj(y). Decode keeps the last
// L values of B*x.
#pragma once
#include <string>
#include <vector>

#include "../config.hpp"
#include "../infer/state.hpp"
#include "../autograd/functions.hpp"
#include "../autograd/seq_functions.hpp"
#include "param.hpp"

namespace hybrid {

template <class S>
class ShortConvLayer {
 public:
  using State = ShortConvState<S>;

  ShortConvLayer(int d_model, const ShortConvSpec& spec) : D_(d_model), sp_(spec) {
    validate(spec, d_model);
    in_proj_.setZero(3 * Index(D_), D_);
    conv_w_.setZero(D_, spec.L);
    if (spec.bias) {
      conv_b_.setZero(1, D_);
      in_b_.setZero(1, 3 * Index(D_));
      out_b_.setZero(1, D_);
    }
    out_proj_.setZero(D_, D_);
  }

  const ShortConvSpec& spec() const { return sp_; }

  template <class F>
  void visit(const std::string& p, F&& f) {
    f(join_name(p, "in_proj.weight"), in_proj_, ParamRole::Matrix);
    if (sp_.bias) f(join_name(p, "in_proj.bias"), in_b_, ParamRole::Scalar);
    f(join_name(p, "conv.weight"), conv_w_, ParamRole::Scalar);
    if (sp_.bias) f(join_name(p, "conv.bias"), conv_b_, ParamRole::Scalar);
    f(join_name(p, "out_proj.weight"), out_proj_, ParamRole::Matrix);
    if (sp_.bias) f(join_name(p, "out_proj.bias"), out_b_, ParamRole::Scalar);
  }

  void init(std::uint64_t seed, double out_div) {
    init::uniform_fan_in(in_proj_, D_, derive_seed(seed, "in_proj"));
    init::uniform_fan_in(conv_w_, sp_.L, derive_seed(seed, "conv_w"));
    init::uniform_fan_in(out_proj_, D_, derive_seed(seed, "out_proj"), out_div);
    for (Mat<S>* b : {&in_b_, &conv_b_, &out_b_}) b->setZero();
  }

  State make_state() const {
    State s;
    s.conv.setZero(D_, sp_.L);
    return s;
  }
  Index state_bytes() const { return Index(sizeof(S)) * D_ * sp_.L; }

  // x: (B*T, D) → (B*T, D). states: nullptr or B pointers to conv caches to start from
  // and update.
  Var<S> forward(Tape<S>& t, Var<S> x, Index B, Index T, State* const* states) const {
    const Var<S> bcx = ag::linear(t, x, in_proj_, in_b_);  // (B*T, 3D): B | C | x
    const Var<S> bx = ag::mul(t, ag::cols(t, bcx, 0, D_), ag::cols(t, bcx, 2 * Index(D_), D_));
    std::vector<Mat<S>*> hist;
    if (states)
      for (Index b = 0; b < B; ++b) hist.push_back(&states[b]->conv);
    const Var<S> cv = ag::causal_conv1d(t, bx, conv_w_, conv_b_, B, T, states ? hist.data() : nullptr);
    const Var<S> y = ag::mul(t, ag::cols(t, bcx, D_, D_), cv);
    return ag::linear(t, y, out_proj_, out_b_);
  }

 private:
  int D_;
  ShortConvSpec sp_;
  Mat<S> in_proj_, in_b_, conv_w_, conv_b_, out_proj_, out_b_;
};

}  // namespace hybrid
