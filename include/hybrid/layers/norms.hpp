// The pre-norm of a block and the final norm: RMSNorm (weight) or LayerNorm (weight, bias).
#pragma once
#include <string>

#include "../config.hpp"
#include "../autograd/functions.hpp"
#include "param.hpp"

namespace hybrid {

template <class S>
class NormLayer {
 public:
  NormLayer(int d_model, NormKind kind, double eps) : kind_(kind), eps_(eps) {
    w_.setOnes(1, d_model);
    if (kind == NormKind::Layer) b_.setZero(1, d_model);
  }
  NormKind kind() const { return kind_; }

  template <class F>
  void visit(const std::string& p, F&& f) {
    f(join_name(p, "weight"), w_, ParamRole::Scalar);
    if (kind_ == NormKind::Layer) f(join_name(p, "bias"), b_, ParamRole::Scalar);
  }
  void init() {
    w_.setOnes();
    b_.setZero();
  }
  Var<S> forward(Tape<S>& t, Var<S> x) const {
    if (kind_ == NormKind::RMS) return ag::rmsnorm(t, x, w_, S(eps_));
    return ag::layernorm(t, x, w_, b_, S(eps_));
  }

 private:
  NormKind kind_;
  double eps_;
  Mat<S> w_, b_;
};

}  // namespace hybrid
