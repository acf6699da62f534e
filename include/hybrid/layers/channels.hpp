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
  SwiGluLayer(int d_model, const MlpSpec& spec) : D_(d_model), sp_(spec) {
    validate(spec, d_model);
    w1_.setZero(spec.hidden, D_);
    w3_.setZero(spec.hidden, D_);
    w2_.setZero(D_, spec.hidden);
    if (spec.bias) {
      b1_.setZero(1, spec.hidden);
      b3_.setZero(1, spec.hidden);
      b2_.setZero(1, D_);
    }
  }
  const MlpSpec& spec() const { return sp_; }

  template <class F>
  void visit(const std::string& p, F&& f) {
    f(join_name(p, "w1.weight"), w1_, ParamRole::Matrix);  // gate
    f(join_name(p, "w3.weight"), w3_, ParamRole::Matrix);  // up
    f(join_name(p, "w2.weight"), w2_, ParamRole::Matrix);  // down
    if (sp_.bias) {
      f(join_name(p, "w1.bias"), b1_, ParamRole::Scalar);
      f(join_name(p, "w3.bias"), b3_, ParamRole::Scalar);
      f(join_name(p, "w2.bias"), b2_, ParamRole::Scalar);
    }
  }
  void init(std::uint64_t seed, double out_div) {
    init::uniform_fan_in(w1_, D_, derive_seed(seed, "w1"));
    init::uniform_fan_in(w3_, D_, derive_seed(seed, "w3"));
    init::uniform_fan_in(w2_, sp_.hidden, derive_seed(seed, "w2"), out_div);
    for (Mat<S>* b : {&b1_, &b2_, &b3_}) b->setZero();
  }
  // x: (R, D) → (R, D)
  Var<S> forward(Tape<S>& t, Var<S> x) const {
    const Var<S> h = ag::swiglu(t, ag::linear(t, x, w1_, b1_), ag::linear(t, x, w3_, b3_));
    return ag::linear(t, h, w2_, b2_);
  }

 private:
  int D_;
  MlpSpec sp_;
  Mat<S> w1_, w3_, w2_, b1_, b3_, b2_;
};

template <class S>
class Relu2Layer {
 public:
  Relu2Layer(int d_model, const MlpSpec& spec) : D_(d_model), sp_(spec) {
    validate(spec, d_model);
    fc_.setZero(spec.hidden, D_);
    proj_.setZero(D_, spec.hidden);
    if (spec.bias) {
      bfc_.setZero(1, spec.hidden);
      bproj_.setZero(1, D_);
    }
  }
  const MlpSpec& spec() const { return sp_; }

  template <class F>
  void visit(const std::string& p, F&& f) {
    f(join_name(p, "fc.weight"), fc_, ParamRole::Matrix);
    f(join_name(p, "proj.weight"), proj_, ParamRole::Matrix);
    if (sp_.bias) {
      f(join_name(p, "fc.bias"), bfc_, ParamRole::Scalar);
      f(join_name(p, "proj.bias"), bproj_, ParamRole::Scalar);
    }
  }
  void init(std::uint64_t seed, double out_div) {
    init::uniform_fan_in(fc_, D_, derive_seed(seed, "fc"));
    init::uniform_fan_in(proj_, sp_.hidden, derive_seed(seed, "proj"), out_div);
    bfc_.setZero();
    bproj_.setZero();
  }
  // x: (R, D) → (R, D)
  Var<S> forward(Tape<S>& t, Var<S> x) const {
    return ag::linear(t, ag::relu2(t, ag::linear(t, x, fc_, bfc_)), proj_, bproj_);
  }

 private:
  int D_;
  MlpSpec sp_;
  Mat<S> fc_, proj_, bfc_, bproj_;
};

}  // namespace hybrid
