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
  NormLayer(int d_model, NormKind kind, double eps, ParamTable& tab, const std::string& p)
      : kind_(kind), eps_(eps) {
    w_ = tab.add(join_name(p, "weight"), 1, d_model, ParamRole::Scalar);
    if (kind == NormKind::Layer) b_ = tab.add(join_name(p, "bias"), 1, d_model, ParamRole::Scalar);
  }
  NormKind kind() const { return kind_; }

  void init(ParamStore<S>& w) const {
    init::fill(w.view(w_), S(1));
    init::fill(w.view(b_), S(0));
  }
  Var<S> forward(Tape<S>& t, Var<S> x) const {
    if (kind_ == NormKind::RMS) return ag::rmsnorm(t, x, w_, S(eps_));
    return ag::layernorm(t, x, w_, b_, S(eps_));
  }

 private:
  NormKind kind_;
  double eps_;
  Param w_, b_;
};

}  // namespace hybrid
