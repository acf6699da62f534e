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

  ShortConvLayer(int d_model, const ShortConvSpec& spec, ParamTable& tab, const std::string& p)
      : D_(d_model), sp_(spec) {
    validate(spec, d_model);
    in_proj_ = tab.add(join_name(p, "in_proj.weight"), 3 * Index(D_), D_, ParamRole::Matrix);
    if (sp_.bias) in_b_ = tab.add(join_name(p, "in_proj.bias"), 1, 3 * Index(D_), ParamRole::Scalar);
    conv_w_ = tab.add(join_name(p, "conv.weight"), D_, spec.L, ParamRole::Scalar);
    if (sp_.bias) conv_b_ = tab.add(join_name(p, "conv.bias"), 1, D_, ParamRole::Scalar);
    out_proj_ = tab.add(join_name(p, "out_proj.weight"), D_, D_, ParamRole::Matrix);
    if (sp_.bias) out_b_ = tab.add(join_name(p, "out_proj.bias"), 1, D_, ParamRole::Scalar);
  }

  const ShortConvSpec& spec() const { return sp_; }

  void init(ParamStore<S>& w, std::uint64_t seed, double out_div) const {
    init::uniform_fan_in(w.view(in_proj_), D_, derive_seed(seed, "in_proj"));
    init::uniform_fan_in(w.view(conv_w_), sp_.L, derive_seed(seed, "conv_w"));
    init::uniform_fan_in(w.view(out_proj_), D_, derive_seed(seed, "out_proj"), out_div);
    for (const Param* b : {&in_b_, &conv_b_, &out_b_}) init::fill(w.view(*b), S(0));
  }

  // The state is constant in context length, so there is nothing to reserve.
  State make_state(Index /*reserve_tokens*/ = 0, DType /*kv_dtype*/ = DType::F32) const {
    State s;
    s.conv.setZero(D_, sp_.L);
    return s;
  }
  Index state_bytes_per_token(DType /*kv_dtype*/ = DType::F32) const { return 0; }  // constant in context length
  Index state_bytes() const { return Index(sizeof(S)) * D_ * sp_.L; }

  // x: (B*T, D) → (B*T, D). states: nullptr or B pointers to conv caches to start from
  // and update. seg: packed documents (the conv from zero history at each start), or nullptr.
  Var<S> forward(Tape<S>& t, Var<S> x, Index B, Index T, State* const* states,
                 const ag::Segments* seg = nullptr) const {
    const Var<S> bcx = ag::linear(t, x, in_proj_, in_b_);  // (B*T, 3D): B | C | x
    const Index D = D_;
    const Var<S> bx = ag::mul(t, bcx.col_range(0, D), bcx.col_range(2 * D, D));
    S** hist = states ? t.template scratch_as<S*>(B) : nullptr;
    for (Index b = 0; states && b < B; ++b) hist[b] = states[b]->conv.data();
    const Var<S> cv = ag::causal_conv1d(t, bx, conv_w_, conv_b_, B, T, hist, seg);
    const Var<S> y = ag::mul(t, bcx.col_range(D, D), cv);
    return ag::linear(t, y, out_proj_, out_b_);
  }

 private:
  int D_;
  ShortConvSpec sp_;
  Param in_proj_, in_b_, conv_w_, conv_b_, out_proj_, out_b_;
};

}  // namespace hybrid
