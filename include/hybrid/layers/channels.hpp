// Channel mixers (the MLP half of a block): SwiGLU w2(silu(w1 x) * w3 x), the ReLU² MLP of
// the parameter-golf baseline proj(relu(fc x)^2), and NoChannel for mixer-only blocks.
#pragma once
#include <string>

#include "../config.hpp"
#include "../autograd/functions.hpp"
#include "param.hpp"

namespace hybrid {

template <class S>
class SwiGluLayer {
 public:
  SwiGluLayer(int d_model, const MlpSpec& spec, ParamTable& tab, const std::string& p)
      : D_(d_model), sp_(spec) {
    validate(spec, d_model);
    w1_ = tab.add(join_name(p, "w1.weight"), spec.hidden, D_, ParamRole::Matrix);  // gate
    w3_ = tab.add(join_name(p, "w3.weight"), spec.hidden, D_, ParamRole::Matrix);  // up
    w2_ = tab.add(join_name(p, "w2.weight"), D_, spec.hidden, ParamRole::Matrix);  // down
    if (spec.bias) {
      b1_ = tab.add(join_name(p, "w1.bias"), 1, spec.hidden, ParamRole::Scalar);
      b3_ = tab.add(join_name(p, "w3.bias"), 1, spec.hidden, ParamRole::Scalar);
      b2_ = tab.add(join_name(p, "w2.bias"), 1, D_, ParamRole::Scalar);
    }
  }
  const MlpSpec& spec() const { return sp_; }

  void init(ParamStore<S>& w, std::uint64_t seed, double out_div) const {
    init::uniform_fan_in(w.view(w1_), D_, derive_seed(seed, "w1"));
    init::uniform_fan_in(w.view(w3_), D_, derive_seed(seed, "w3"));
    init::uniform_fan_in(w.view(w2_), sp_.hidden, derive_seed(seed, "w2"), out_div);
    for (const Param* b : {&b1_, &b2_, &b3_}) init::fill(w.view(*b), S(0));
  }
  // x: (R, D) → (R, D)
  Var<S> forward(Tape<S>& t, Var<S> x) const {
    const Var<S> h = ag::swiglu(t, ag::linear(t, x, w1_, b1_), ag::linear(t, x, w3_, b3_));
    return ag::linear(t, h, w2_, b2_);
  }

 private:
  int D_;
  MlpSpec sp_;
  Param w1_, w3_, w2_, b1_, b3_, b2_;
};

template <class S>
class Relu2Layer {
 public:
  Relu2Layer(int d_model, const MlpSpec& spec, ParamTable& tab, const std::string& p)
      : D_(d_model), sp_(spec) {
    validate(spec, d_model);
    fc_ = tab.add(join_name(p, "fc.weight"), spec.hidden, D_, ParamRole::Matrix);
    proj_ = tab.add(join_name(p, "proj.weight"), D_, spec.hidden, ParamRole::Matrix);
    if (spec.bias) {
      bfc_ = tab.add(join_name(p, "fc.bias"), 1, spec.hidden, ParamRole::Scalar);
      bproj_ = tab.add(join_name(p, "proj.bias"), 1, D_, ParamRole::Scalar);
    }
  }
  const MlpSpec& spec() const { return sp_; }

  void init(ParamStore<S>& w, std::uint64_t seed, double out_div) const {
    init::uniform_fan_in(w.view(fc_), D_, derive_seed(seed, "fc"));
    init::uniform_fan_in(w.view(proj_), sp_.hidden, derive_seed(seed, "proj"), out_div);
    init::fill(w.view(bfc_), S(0));
    init::fill(w.view(bproj_), S(0));
  }
  // x: (R, D) → (R, D)
  Var<S> forward(Tape<S>& t, Var<S> x) const {
    return ag::linear(t, ag::relu2(t, ag::linear(t, x, fc_, bfc_)), proj_, bproj_);
  }

 private:
  int D_;
  MlpSpec sp_;
  Param fc_, proj_, bfc_, bproj_;
};

}  // namespace hybrid
