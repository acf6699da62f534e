// Run-time description of a model: the model spec plus one BlockDesc per block. A
// compile-time Model<> produces one of these; a program that reads a config builds one
// directly. Parameter counts are constexpr functions of the descriptions.
#pragma once
#include <string>
#include <variant>
#include <vector>

#include "config.hpp"
#include "core/error.hpp"
#include "core/tensor.hpp"

namespace hybrid {

struct NoChannelSpec {};
struct SwiGluSpec : MlpSpec {};
struct Relu2Spec : MlpSpec {};

using MixerDesc = std::variant<Mamba2Spec, GqaSpec, ShortConvSpec>;
using ChannelDesc = std::variant<NoChannelSpec, SwiGluSpec, Relu2Spec>;

struct BlockDesc {
  MixerDesc mixer;
  ChannelDesc channel = NoChannelSpec{};
  NormKind norm = NormKind::RMS;
};

struct ModelDesc {
  ModelSpec model;
  std::vector<BlockDesc> blocks;
};

// Per-mixer traits: a mixer kind's letter in layout strings ("MMMMMMMMMMMMAAAMMM") and its
// one-line label. A new mixer kind adds its spec to MixerDesc, these traits, and its layer
// to layers/block_layer.hpp's MixerLayer; nothing else switches on the kind.
template <class Spec>
struct MixerTraits;
template <>
struct MixerTraits<Mamba2Spec> {
  static constexpr char code = 'M';
  static std::string label(const Mamba2Spec& s) {
    return "Mamba2(N=" + std::to_string(s.d_state) + ",P=" + std::to_string(s.headdim) + ")";
  }
};
template <>
struct MixerTraits<GqaSpec> {
  static constexpr char code = 'A';
  static std::string label(const GqaSpec& s) {
    return std::string(s.output_gate ? "GatedGQA(" : "GQA(") + std::to_string(s.n_heads) + "/" +
           std::to_string(s.n_kv_heads) + "x" + std::to_string(s.head_dim) +
           (s.partial_rope() ? ",rope=" + std::to_string(s.rotated_dims()) : std::string()) + ")";
  }
};
template <>
struct MixerTraits<ShortConvSpec> {
  static constexpr char code = 'C';
  static std::string label(const ShortConvSpec& s) { return "ShortConv(L=" + std::to_string(s.L) + ")"; }
};

constexpr char mixer_code(const MixerDesc& m) {
  return std::visit([](const auto& s) { return MixerTraits<std::decay_t<decltype(s)>>::code; }, m);
}
inline std::string mixer_label(const MixerDesc& m) {
  return std::visit([](const auto& s) { return MixerTraits<std::decay_t<decltype(s)>>::label(s); }, m);
}
constexpr bool has_channel(const BlockDesc& b) { return !std::holds_alternative<NoChannelSpec>(b.channel); }

// Which kinds of block a layout has: what the file formats choose their family from.
struct LayoutKinds {
  bool conv = false, mamba = false, attn = false, channels = false;
};
inline LayoutKinds layout_kinds(const ModelDesc& d) {
  LayoutKinds k;
  for (const auto& b : d.blocks) {
    k.conv |= std::holds_alternative<ShortConvSpec>(b.mixer);
    k.mamba |= std::holds_alternative<Mamba2Spec>(b.mixer);
    k.attn |= std::holds_alternative<GqaSpec>(b.mixer);
    k.channels |= has_channel(b);
  }
  return k;
}

// ---- parameter counts --------------------------------------------------------------

constexpr Index param_count(const Mamba2Spec& s, int D) {
  const Index Di = s.d_inner(D), H = s.nheads(D), Cd = s.conv_dim(D), W = s.in_proj_dim(D);
  Index n = W * D + Cd * s.d_conv + 3 * H + Di + Di * D;
  if (s.conv_bias) n += Cd;
  if (s.bias) n += W + D;
  return n;
}
constexpr Index param_count(const GqaSpec& s, int D) {
  const Index q = Index(s.n_heads) * s.head_dim, kv = Index(s.n_kv_heads) * s.head_dim;
  Index n = 2 * q * D + 2 * kv * D;
  if (s.output_gate) n += q * D;
  if (s.qk_norm) n += 2 * s.head_dim;
  if (s.bias) n += q + 2 * kv + D + (s.output_gate ? q : 0);
  return n;
}
constexpr Index param_count(const ShortConvSpec& s, int D) {
  Index n = 4 * Index(D) * D + Index(D) * s.L;
  if (s.bias) n += 5 * Index(D);
  return n;
}
constexpr Index param_count(const NoChannelSpec&, int) { return 0; }
constexpr Index param_count(const SwiGluSpec& s, int D) {
  return 3 * Index(D) * s.hidden + (s.bias ? 2 * Index(s.hidden) + D : 0);
}
constexpr Index param_count(const Relu2Spec& s, int D) {
  return 2 * Index(D) * s.hidden + (s.bias ? Index(s.hidden) + D : 0);
}
constexpr Index norm_params(NormKind k, int D) { return k == NormKind::RMS ? D : 2 * Index(D); }

// Norms in a block: one before the mixer, one before the channel (unless the block has no
// channel or both branches share the first norm — the parallel residual).
constexpr int block_norms(const BlockDesc& b, const ModelSpec& m) {
  return has_channel(b) && !m.parallel_residual ? 2 : 1;
}

constexpr Index mixer_params(const BlockDesc& b, int D) {
  return std::visit([D](const auto& s) { return param_count(s, D); }, b.mixer);
}
constexpr Index channel_params(const BlockDesc& b, int D) {
  return std::visit([D](const auto& s) { return param_count(s, D); }, b.channel);
}
constexpr Index param_count(const BlockDesc& b, const ModelSpec& m) {
  return mixer_params(b, m.d_model) + channel_params(b, m.d_model) +
         block_norms(b, m) * norm_params(b.norm, m.d_model);
}
// The hashed bigram embedding: its table (buckets, bigram_dim) and, when bigram_dim !=
// d_model, the projection (D, bigram_dim).
constexpr Index bigram_params(const ModelSpec& m) {
  if (m.bigram_buckets == 0) return 0;
  const Index w = bigram_width(m);
  return Index(m.bigram_buckets) * w + (bigram_projected(m) ? Index(m.d_model) * w : 0);
}
// The embedding stage: the token embedding, the untied LM head, the bigram embedding.
constexpr Index embedding_params(const ModelSpec& m) {
  return Index(m.vocab) * m.d_model * (m.tied ? 1 : 2) + bigram_params(m);
}
// U-Net skips over n_blocks blocks: the first n_enc = n_blocks / 2 are the encoder, the rest
// the decoder; decoder block j < n_skips = n_enc adds skip_weights[j] ⊙ (encoder block
// n_enc-1-j's output) to its input (with n_blocks odd the last decoder block has no skip).
constexpr int unet_encoder_blocks(int n_blocks) { return n_blocks / 2; }
constexpr int unet_skip_count(const ModelSpec& m, int n_blocks) {
  return m.unet_skips ? unet_encoder_blocks(n_blocks) : 0;
}
constexpr Index unet_skip_params(const ModelSpec& m, int n_blocks) {
  return Index(unet_skip_count(m, n_blocks)) * m.d_model;
}
// Everything outside the blocks: the embedding stage, the skip weights and the final norm.
constexpr Index model_level_params(const ModelSpec& m, int n_blocks) {
  return embedding_params(m) + unet_skip_params(m, n_blocks) + norm_params(m.norm, m.d_model);
}
constexpr Index param_count(const ModelDesc& d) {
  Index n = model_level_params(d.model, int(d.blocks.size()));
  for (const auto& b : d.blocks) n += param_count(b, d.model);
  return n;
}

// A run-time layout from a string of block letters: 'M' Mamba-2, 'A' attention,
// 'C' ShortConv, each with the given spec and channel, e.g.
//   desc_from_layout("MMMA MMMA", model, mamba, attn, shortconv, NoChannelSpec{}, SwiGluSpec{{512}})
// (spaces and '-' are ignored). Mamba-2 blocks take mamba_channel, the others channel.
inline ModelDesc desc_from_layout(const std::string& layout, const ModelSpec& model,
                                  const Mamba2Spec& mamba, const GqaSpec& attn,
                                  const ShortConvSpec& conv, const ChannelDesc& mamba_channel,
                                  const ChannelDesc& channel, NormKind norm = NormKind::RMS) {
  ModelDesc d{model, {}};
  for (std::size_t i = 0; i < layout.size(); ++i) {
    const char c = layout[i];
    if (c == ' ' || c == '-') continue;
    if (c == 'M') d.blocks.push_back({mamba, mamba_channel, norm});
    else if (c == 'A') d.blocks.push_back({attn, channel, norm});
    else if (c == 'C') d.blocks.push_back({conv, channel, norm});
    else
      fail("layout \"", layout, "\": character '", c, "' at index ", i,
           " is not a block kind (expected M = Mamba-2, A = attention, C = ShortConv)");
  }
  HYBRID_CHECK(!d.blocks.empty(), "layout \"", layout, "\" has no blocks");
  return d;
}

// The golf-entry options as programs take them from flags (--unet-skips, --bigram-buckets,
// --bigram-dim, --rope-dims), applied to a description however it was built: the model-wide
// ones to its spec, rope_dims to every attention block. Defaults leave d unchanged.
struct GolfOptions {
  bool unet_skips = false;
  int bigram_buckets = 0, bigram_dim = 0;
  int rope_dims = 0;  // 0: leave each attention block's own setting
};
inline ModelDesc with_golf_options(ModelDesc d, const GolfOptions& o) {
  if (o.unet_skips) d.model.unet_skips = true;
  if (o.bigram_buckets) d.model.bigram_buckets = o.bigram_buckets;
  if (o.bigram_dim) d.model.bigram_dim = o.bigram_dim;
  if (o.rope_dims)
    for (auto& b : d.blocks)
      if (auto* a = std::get_if<GqaSpec>(&b.mixer)) a->rope_dims = o.rope_dims;
  return d;
}

inline void validate(const ModelDesc& d) {
  validate(d.model);
  HYBRID_CHECK(!d.blocks.empty(), "Model: the layout has no blocks");
  HYBRID_CHECK(!d.model.unet_skips || d.blocks.size() >= 2, "Model: unet_skips needs at least 2 "
               "blocks (an encoder half and a decoder half), the layout has ", d.blocks.size());
  for (const auto& b : d.blocks) {
    std::visit([&](const auto& s) { validate(s, d.model.d_model); }, b.mixer);
    if (const auto* s = std::get_if<SwiGluSpec>(&b.channel)) validate(*s, d.model.d_model);
    if (const auto* s = std::get_if<Relu2Spec>(&b.channel)) validate(*s, d.model.d_model);
  }
}

}  // namespace hybrid
