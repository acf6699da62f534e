// ModelDesc → Hugging Face config.json (the inverse of config.hpp), for save_hf. Each family
// expresses a subset of our models; anything outside it is an error naming the block and
// the setting, never a silently different model.
#pragma once
#include <cmath>
#include <string>

#include <nlohmann/json.hpp>

#include "../io/desc_json.hpp"
#include "config.hpp"

namespace hybrid::hf {

// The family a ModelDesc is written as: any ShortConv block → LFM2; only Mamba-2 blocks
// without channels → Mamba2; otherwise GraniteMoeHybrid.
inline Family family_for(const ModelDesc& d) {
  const auto [conv, mamba, attn, channels] = layout_kinds(d);
  if (conv && mamba)
    fail("save_hf: the layout mixes ShortConv and Mamba-2 blocks; no Hugging Face family "
         "(LFM2 has ShortConv + attention, GraniteMoeHybrid and Mamba2 have Mamba-2) holds both");
  if (conv) return Family::Lfm2;
  if (!attn && !channels) return Family::Mamba2;
  return Family::GraniteHybrid;
}

namespace cfgw_detail {
using json = nlohmann::json;

inline json finite_or_marker(double v) {
  if (std::isinf(v)) return json{{"__float__", v > 0 ? "Infinity" : "-Infinity"}};
  return v;
}

struct Check {
  const char* family;
  template <class... A>
  void operator()(bool ok, const A&... a) const {
    if (!ok) fail("save_hf: cannot write this model as ", family, ": ", a...);
  }
};

// All blocks' mixers of one kind must be equal: the families have one setting per model.
template <class Spec>
const Spec* common(const ModelDesc& d, const Check& check, const char* what) {
  const Spec* first = nullptr;
  json first_j;
  const json blocks = to_json(d)["blocks"];  // once, not per block
  for (std::size_t i = 0; i < d.blocks.size(); ++i) {
    const Spec* s = std::get_if<Spec>(&d.blocks[i].mixer);
    if (!s) continue;
    const json& j = blocks[i]["mixer"];
    if (!first) {
      first = s;
      first_j = j;
    } else {
      check(j == first_j, "block ", i, "'s ", what, " settings (", j.dump(),
            ") differ from those of the first ", what, " block (", first_j.dump(),
            "); the family has one ", what, " configuration per model");
    }
  }
  return first;
}

inline int common_mlp(const ModelDesc& d, const Check& check) {
  int hidden = -1;
  for (std::size_t i = 0; i < d.blocks.size(); ++i) {
    const auto* s = std::get_if<SwiGluSpec>(&d.blocks[i].channel);
    check(s != nullptr, "block ", i, " has no SwiGLU channel; every block needs one");
    check(!s->bias, "block ", i, "'s SwiGLU has biases; the family's MLP has none");
    check(hidden < 0 || s->hidden == hidden, "block ", i, "'s SwiGLU width ", s->hidden,
          " differs from ", hidden, "; the family has one MLP width");
    hidden = s->hidden;
  }
  return hidden;
}

inline void check_attention(const GqaSpec& a, int D, const Check& check, bool lfm2) {
  check(a.head_dim * a.n_heads == D, "attention head_dim ", a.head_dim, " × n_heads ", a.n_heads,
        " must equal d_model ", D);
  check(a.window == 0, "sliding-window attention (window ", a.window, ") is not expressible");
  check(!a.output_gate, "the attention output gate is not expressible");
  check(a.qk_norm == lfm2, lfm2 ? "LFM2 attention needs QK-norm" : "QK-norm is not expressible");
  check(!a.partial_rope(), "partial RoPE (rope_dims = ", a.rope_dims, " of head_dim ", a.head_dim,
        ") is not expressible");
  if (lfm2) {
    check(a.rope, "LFM2 attention always uses RoPE");
    check(!a.bias, "LFM2 attention has no biases");
    check(a.scale == 0 || std::abs(a.scale * std::sqrt(double(a.head_dim)) - 1) < 1e-12,
          "LFM2 attention uses the 1/sqrt(head_dim) scale");
  }
}

// chunk_size for transformers: the forced chunk, or its default 256 where the scan here
// follows its device's rule (0).
inline int hf_chunk(const Mamba2Spec& m) { return m.chunk > 0 ? m.chunk : 256; }

inline void check_mamba(const Mamba2Spec& m, const ModelDesc& d, const Check& check) {
  check(m.expand == std::floor(m.expand), "Mamba-2 expand ", m.expand,
        " is not an integer (transformers' config takes an integer)");
  check(m.ngroups == 1 || !m.norm_whole_width,
        "Mamba-2 gated norm over the whole width with ngroups > 1; transformers normalises per group");
  check(m.norm_eps == d.model.norm_eps, "Mamba-2 norm eps ", m.norm_eps, " differs from the model's ",
        d.model.norm_eps, "; the family uses one epsilon");
}

inline void rope_json(json& j, const GqaSpec* a, double dflt) {
  j["rope_parameters"] = {{"rope_type", "default"}, {"rope_theta", a ? a->rope_theta : dflt}};
}
}  // namespace cfgw_detail

// ModelDesc → config.json of family f (checked: f must express d exactly). Token ids are
// copied from `tokens` when given.
inline nlohmann::json config_to_json(const ModelDesc& d, Family f, const HfConfig* tokens = nullptr) {
  using namespace cfgw_detail;
  validate(d);
  const Check check{architecture(f)};
  const ModelSpec& m = d.model;
  const int D = m.d_model;
  check(m.norm == NormKind::RMS, "the final norm must be RMSNorm");
  check(!m.parallel_residual, "the parallel residual is not expressible");
  check(m.logit_softcap == 0, "the logit soft-cap is not expressible");
  check(!m.unet_skips, "U-Net skip connections between the halves of the blocks (unet_skips) "
        "are not expressible");
  check(m.bigram_buckets == 0, "the hashed bigram embedding (bigram_buckets = ", m.bigram_buckets,
        ") is not expressible");
  for (std::size_t i = 0; i < d.blocks.size(); ++i)
    check(d.blocks[i].norm == NormKind::RMS, "block ", i, " uses LayerNorm; the family uses RMSNorm");
  if (f != Family::GraniteHybrid)
    check(m.embedding_multiplier == 1 && m.residual_multiplier == 1 && m.logits_divisor == 1,
          "embedding / residual multipliers and the logit divisor must be neutral (only "
          "GraniteMoeHybrid has them)");
  json j;
  j["architectures"] = {architecture(f)};
  j["model_type"] = model_type(f);
  j["vocab_size"] = m.vocab;
  j["hidden_size"] = D;
  j["num_hidden_layers"] = int(d.blocks.size());
  j["tie_word_embeddings"] = m.tied;
  j["hidden_act"] = "silu";
  j["dtype"] = "float32";
  if (m.max_context > 0) j["max_position_embeddings"] = m.max_context;
  if (tokens) {
    if (tokens->bos) j["bos_token_id"] = *tokens->bos;
    if (tokens->eos) j["eos_token_id"] = *tokens->eos;
    if (tokens->pad) j["pad_token_id"] = *tokens->pad;
  }
  auto kinds = [&](const char* mamba, const char* attn, const char* conv) {
    json lt = json::array();
    for (const auto& b : d.blocks)
      lt.push_back(std::holds_alternative<Mamba2Spec>(b.mixer) ? mamba
                   : std::holds_alternative<GqaSpec>(b.mixer) ? attn : conv);
    return lt;
  };
  const GqaSpec* a = common<GqaSpec>(d, check, "attention");
  if (a) {
    j["num_attention_heads"] = a->n_heads;
    j["num_key_value_heads"] = a->n_kv_heads;
  }
  switch (f) {
    case Family::Lfm2: {
      for (std::size_t i = 0; i < d.blocks.size(); ++i)
        check(!std::holds_alternative<Mamba2Spec>(d.blocks[i].mixer), "block ", i, " is Mamba-2");
      if (a) check_attention(*a, D, check, true);
      else j["num_attention_heads"] = 1, j["num_key_value_heads"] = 1;
      const ShortConvSpec* sc = common<ShortConvSpec>(d, check, "ShortConv");
      j["conv_L_cache"] = sc ? sc->L : 3;
      j["conv_bias"] = sc ? sc->bias : false;
      j["intermediate_size"] = common_mlp(d, check);
      j["block_auto_adjust_ff_dim"] = false;  // w1 is exactly intermediate_size wide
      j["norm_eps"] = m.norm_eps;
      j["layer_types"] = kinds("", "full_attention", "conv");
      rope_json(j, a, 1e6);
      break;
    }
    case Family::GraniteHybrid: {
      const Mamba2Spec* mb = common<Mamba2Spec>(d, check, "Mamba-2");
      for (std::size_t i = 0; i < d.blocks.size(); ++i)
        check(!std::holds_alternative<ShortConvSpec>(d.blocks[i].mixer), "block ", i, " is ShortConv");
      if (a) {
        check_attention(*a, D, check, false);
        j["attention_multiplier"] = a->scale != 0 ? a->scale : 1 / std::sqrt(double(a->head_dim));
        j["attention_bias"] = a->bias;
        j["position_embedding_type"] = a->rope ? json("rope") : json(nullptr);
        rope_json(j, a, 10000);
      } else {
        j["num_attention_heads"] = 1;
        j["num_key_value_heads"] = 1;
      }
      const int hidden = common_mlp(d, check);
      j["shared_intermediate_size"] = hidden;
      j["intermediate_size"] = hidden;
      j["num_local_experts"] = 0;
      j["rms_norm_eps"] = m.norm_eps;
      j["embedding_multiplier"] = m.embedding_multiplier;
      j["residual_multiplier"] = m.residual_multiplier;
      j["logits_scaling"] = m.logits_divisor;
      j["layer_types"] = kinds("mamba", "attention", "");
      if (mb) {
        check_mamba(*mb, d, check);
        j["mamba_n_heads"] = mb->nheads(D);
        j["mamba_d_head"] = mb->headdim;
        j["mamba_d_state"] = mb->d_state;
        j["mamba_n_groups"] = mb->ngroups;
        j["mamba_d_conv"] = mb->d_conv;
        j["mamba_expand"] = int(mb->expand);
        j["mamba_chunk_size"] = hf_chunk(*mb);
        j["mamba_conv_bias"] = mb->conv_bias;
        j["mamba_proj_bias"] = mb->bias;
        j["time_step_limit"] = {finite_or_marker(mb->dt_limit_lo), finite_or_marker(mb->dt_limit_hi)};
      }
      break;
    }
    case Family::Mamba2: {
      const Mamba2Spec* mb = common<Mamba2Spec>(d, check, "Mamba-2");
      for (std::size_t i = 0; i < d.blocks.size(); ++i) {
        check(std::holds_alternative<Mamba2Spec>(d.blocks[i].mixer), "block ", i, " is not Mamba-2");
        check(!has_channel(d.blocks[i]), "block ", i, " has a channel; Mamba2 blocks are mixer-only");
      }
      check_mamba(*mb, d, check);
      j["num_heads"] = mb->nheads(D);
      j["head_dim"] = mb->headdim;
      j["state_size"] = mb->d_state;
      j["n_groups"] = mb->ngroups;
      j["conv_kernel"] = mb->d_conv;
      j["expand"] = int(mb->expand);
      j["chunk_size"] = hf_chunk(*mb);
      j["use_conv_bias"] = mb->conv_bias;
      j["use_bias"] = mb->bias;
      j["layer_norm_epsilon"] = m.norm_eps;
      j["time_step_limit"] = {finite_or_marker(mb->dt_limit_lo), finite_or_marker(mb->dt_limit_hi)};
      j["time_step_min"] = mb->dt_min;
      j["time_step_max"] = mb->dt_max;
      j["time_step_floor"] = mb->dt_init_floor;
      break;
    }
  }
  return j;
}

}  // namespace hybrid::hf
