// Compile-time block descriptors: Block<Mixer, Channel, Norm> with mixers Mamba2<spec>,
// GQA<spec>, ShortConv<spec>, channels SwiGLU<hidden>, ReLU2<hidden>, NoChannel, and norms
// RMSNorm, LayerNorm. Each descriptor checks its sizes against the model width at compile
// time (static_assert messages name the fix) and yields the run-time BlockDesc.
#pragma once
#include "config.hpp"
#include "desc.hpp"

namespace hybrid {

// ---- mixers ---------------------------------------------------------------------------

template <Mamba2Spec Sp = Mamba2Spec{}>
struct Mamba2 {
  static constexpr Mamba2Spec spec = Sp;
  static constexpr char code = 'M';
  static constexpr MixerDesc desc() { return Sp; }
  template <int D>
  static constexpr bool check() {
    static_assert(Sp.d_state > 0 && Sp.d_conv > 0 && Sp.headdim > 0 && Sp.ngroups > 0,
                  "Mamba2: d_state, d_conv, headdim and ngroups must be positive");
    static_assert(Sp.chunk >= 0, "Mamba2: chunk must be >= 0 (0: the scan's measured rule)");
    static_assert(Sp.d_inner_exact(D) == double(Sp.d_inner(D)),
                  "Mamba2: expand * d_model must be a whole number (d_inner); change expand");
    static_assert(Sp.headdim > 0 && Sp.d_inner(D) % Sp.headdim == 0,
                  "Mamba2: headdim must divide d_inner = expand * d_model; pick a divisor");
    static_assert(Sp.ngroups > 0 && Sp.headdim > 0 && Sp.nheads(D) % Sp.ngroups == 0,
                  "Mamba2: ngroups must divide nheads = d_inner / headdim");
    static_assert(Sp.dt_min > 0 && Sp.dt_max >= Sp.dt_min, "Mamba2: need 0 < dt_min <= dt_max");
    return true;
  }
};

template <GqaSpec Sp = GqaSpec{}>
struct GQA {
  static constexpr GqaSpec spec = Sp;
  static constexpr char code = 'A';
  static constexpr MixerDesc desc() { return Sp; }
  template <int D>
  static constexpr bool check() {
    static_assert(Sp.n_heads > 0 && Sp.n_kv_heads > 0 && Sp.head_dim > 0,
                  "GQA: n_heads, n_kv_heads and head_dim must be positive");
    static_assert(Sp.n_kv_heads > 0 && Sp.n_heads % Sp.n_kv_heads == 0,
                  "GQA: n_kv_heads must divide n_heads; pick n_kv_heads as a divisor");
    static_assert(!Sp.rope || Sp.head_dim % 2 == 0,
                  "GQA: RoPE needs an even head_dim; change head_dim or set rope = false");
    static_assert(Sp.window >= 0, "GQA: window must be >= 0 (0 means full causal)");
    return true;
  }
};

template <ShortConvSpec Sp = ShortConvSpec{}>
struct ShortConv {
  static constexpr ShortConvSpec spec = Sp;
  static constexpr char code = 'C';
  static constexpr MixerDesc desc() { return Sp; }
  template <int D>
  static constexpr bool check() {
    static_assert(Sp.L > 0, "ShortConv: kernel length L must be positive");
    return true;
  }
};

// ---- channels -------------------------------------------------------------------------

struct NoChannel {
  static constexpr ChannelDesc desc() { return NoChannelSpec{}; }
  template <int D>
  static constexpr bool check() { return true; }
};

template <int Hidden, bool Bias = false>
struct SwiGLU {
  static constexpr ChannelDesc desc() { return SwiGluSpec{{Hidden, Bias}}; }
  template <int D>
  static constexpr bool check() {
    static_assert(Hidden > 0, "SwiGLU: hidden width must be positive");
    return true;
  }
};

template <int Hidden, bool Bias = false>
struct ReLU2 {
  static constexpr ChannelDesc desc() { return Relu2Spec{{Hidden, Bias}}; }
  template <int D>
  static constexpr bool check() {
    static_assert(Hidden > 0, "ReLU2: hidden width must be positive");
    return true;
  }
};

// ---- norms ----------------------------------------------------------------------------

struct RMSNorm {
  static constexpr NormKind kind = NormKind::RMS;
};
struct LayerNorm {
  static constexpr NormKind kind = NormKind::Layer;
};

// ---- the block ------------------------------------------------------------------------

// Pre-norm residual block: x += Mixer(Norm(x)); x += Channel(Norm(x)).
template <class Mixer, class Channel = NoChannel, class Norm = RMSNorm>
struct Block {
  using mixer = Mixer;
  using channel = Channel;
  static constexpr char code = Mixer::code;
  static constexpr BlockDesc desc() { return {Mixer::desc(), Channel::desc(), Norm::kind}; }
  template <int D>
  static constexpr bool check() {
    return Mixer::template check<D>() && Channel::template check<D>();
  }
};

}  // namespace hybrid
