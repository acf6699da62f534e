// A block at run time: the mixer and channel chosen by a BlockDesc, with its norms.
//   sequential: x += r * Mixer(N1(x)); x += r * Channel(N2(x))
//   parallel:   h = N1(x); x += r * (Mixer(h) + Channel(h))
// (r = the model's residual multiplier).
#pragma once
#include <optional>
#include <string>
#include <variant>

#include "../desc.hpp"
#include "channels.hpp"
#include "gqa.hpp"
#include "mamba2.hpp"
#include "norms.hpp"
#include "shortconv.hpp"

namespace hybrid {

// The layer of each mixer kind (desc.hpp's MixerTraits has the rest of a kind's registration).
template <class S, class Spec>
struct MixerLayer;
template <class S>
struct MixerLayer<S, Mamba2Spec> {
  static Mamba2Layer<S> make(const ModelSpec& m, const Mamba2Spec& s, ParamTable& t, const std::string& p) {
    return Mamba2Layer<S>(m.d_model, s, t, p);
  }
};
template <class S>
struct MixerLayer<S, GqaSpec> {
  static GqaLayer<S> make(const ModelSpec& m, const GqaSpec& s, ParamTable& t, const std::string& p) {
    return GqaLayer<S>(m.d_model, s, m.norm_eps, t, p);
  }
};
template <class S>
struct MixerLayer<S, ShortConvSpec> {
  static ShortConvLayer<S> make(const ModelSpec& m, const ShortConvSpec& s, ParamTable& t, const std::string& p) {
    return ShortConvLayer<S>(m.d_model, s, t, p);
  }
};

template <class S>
class BlockLayer {
 public:
  using Mixer = std::variant<Mamba2Layer<S>, GqaLayer<S>, ShortConvLayer<S>>;
  using Channel = std::variant<SwiGluLayer<S>, Relu2Layer<S>>;

  // Declares the block's tensors in `tab` under `prefix` in the order norm1, mixer, norm2,
  // channel.
  BlockLayer(const BlockDesc& d, const ModelSpec& m, ParamTable& tab, const std::string& prefix)
      : desc_(d), norm1_(m.d_model, d.norm, m.norm_eps, tab, join_name(prefix, "norm1")),
        mixer_(make_mixer(d, m, tab, join_name(prefix, "mixer"))),
        parallel_(m.parallel_residual), resid_(m.residual_multiplier) {
    if (hybrid::has_channel(d) && !parallel_) norm2_.emplace(m.d_model, d.norm, m.norm_eps, tab, join_name(prefix, "norm2"));
    const std::string cp = join_name(prefix, "channel");
    if (const auto* s = std::get_if<SwiGluSpec>(&d.channel)) channel_.emplace(SwiGluLayer<S>(m.d_model, *s, tab, cp));
    if (const auto* s = std::get_if<Relu2Spec>(&d.channel)) channel_.emplace(Relu2Layer<S>(m.d_model, *s, tab, cp));
  }

  const BlockDesc& desc() const { return desc_; }
  const Mixer& mixer() const { return mixer_; }

  // out_div: the residual-branch rescale sqrt(n_residuals_per_block * n_layer).
  void init(ParamStore<S>& w, std::uint64_t seed, int n_layer) const {
    const double out_div = std::sqrt(double((channel_ ? 2 : 1) * n_layer));
    norm1_.init(w);
    if (norm2_) norm2_->init(w);
    std::visit([&](const auto& m) { m.init(w, derive_seed(seed, "mixer"), out_div); }, mixer_);
    if (channel_)
      std::visit([&](const auto& c) { c.init(w, derive_seed(seed, "channel"), out_div); }, *channel_);
  }

  // kv_dtype: storage of an attention mixer's KV cache (F32 or BF16); others ignore it.
  LayerState<S> make_state(Index reserve_tokens = 0, DType kv_dtype = DType::F32) const {
    return std::visit([&](const auto& m) { return LayerState<S>(m.make_state(reserve_tokens, kv_dtype)); }, mixer_);
  }

  // x: (B*T, D) → (B*T, D). states: nullptr or B pointers to this block's state.
  // keep: nullptr, or B*T row factors applied to each residual branch (drop-path: 0 for a
  // dropped sequence, 1/(1-p) for a kept one). seg: packed documents (the mixer resets at
  // each document start; norms and channels are per token), or nullptr.
  Var<S> forward(Tape<S>& t, Var<S> x, Index B, Index T, LayerState<S>* const* states,
                 const S* keep = nullptr, const ag::Segments* seg = nullptr) const {
    const Var<S> h = norm1_.forward(t, x);
    Var<S> y = std::visit(
        [&](const auto& m) {
          using State = typename std::decay_t<decltype(m)>::State;
          State** st = states ? t.template scratch_as<State*>(B) : nullptr;
          for (Index b = 0; states && b < B; ++b) st[b] = &std::get<State>(*states[b]);
          return m.forward(t, h, B, T, st, seg);
        },
        mixer_);
    if (parallel_ && channel_)
      y = ag::add(t, y, std::visit([&](const auto& ch) { return ch.forward(t, h); }, *channel_));
    if (keep) y = ag::scale_rows(t, y, keep);
    x = ag::add(t, x, y, S(resid_));
    if (channel_ && !parallel_) {
      const Var<S> h2 = norm2_->forward(t, x);
      Var<S> c = std::visit([&](const auto& ch) { return ch.forward(t, h2); }, *channel_);
      if (keep) c = ag::scale_rows(t, c, keep);
      x = ag::add(t, x, c, S(resid_));
    }
    return x;
  }

 private:
  static Mixer make_mixer(const BlockDesc& d, const ModelSpec& m, ParamTable& tab, const std::string& p) {
    return std::visit(
        [&](const auto& s) -> Mixer { return MixerLayer<S, std::decay_t<decltype(s)>>::make(m, s, tab, p); },
        d.mixer);
  }

  BlockDesc desc_;
  NormLayer<S> norm1_;  // members in declaration order = the order tensors are declared
  Mixer mixer_;
  std::optional<NormLayer<S>> norm2_;
  std::optional<Channel> channel_;
  bool parallel_;
  double resid_;
};

}  // namespace hybrid
