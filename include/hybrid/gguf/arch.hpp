// The llama.cpp architectures a model is written as, what each can express, and where each
// of our tensors lives in a GGUF file (REFERENCE.md §5; llama.cpp's src/llama-arch.cpp and
// src/models/<arch>.cpp are the authority).
//
//   granitehybrid  Mamba-2 (expand 2) / GQA blocks, every block with one SwiGLU width,
//                  Granite's embedding / residual / logit / attention scales
//   lfm2           ShortConv / GQA with QK-norm blocks, every block with SwiGLU
//   mamba2         Mamba-2 mixer-only blocks
//   llama          GQA + SwiGLU blocks (a pure transformer)
//
// Ours ↔ GGUF, block i (blk.i.):
//   embed.weight (V, D)              token_embd.weight      ne [D, V]
//   norm_f.weight                    output_norm.weight     (lfm2: token_embd_norm.weight)
//   lm_head.weight (untied only)     output.weight
//   norm1 / norm2                    attn_norm / ffn_norm
//   channel w1 / w3 / w2             ffn_gate / ffn_up / ffn_down
//   mixer (Mamba-2) in_proj          ssm_in (rows z, x, B, C, dt)
//                   conv1d (C, K)    ssm_conv1d.weight ne [K, C]; conv1d.bias (zeros when absent)
//                   dt_bias, D       ssm_dt.bias, ssm_d ne [1, H]
//                   A_log            ssm_a ne [1, H] holding -exp(A_log)
//                   norm (1, Di)     ssm_norm.weight ne [Di / G, G]
//                   out_proj         ssm_out
//   mixer (GQA)     q/k/v/o_proj     attn_q / attn_k / attn_v / attn_output; granitehybrid and
//                                    llama rotate adjacent pairs, so q and k rows are permuted
//                                    from our NeoX (rotate-half) order within each head
//                   q_norm / k_norm  attn_q_norm / attn_k_norm
//   mixer (ShortConv) in_proj / conv (D, L) / out_proj   shortconv.in_proj / .conv ne [L, D] / .out_proj
#pragma once
#include <cmath>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "../desc.hpp"

namespace hybrid::gguf {

enum class Arch { GraniteHybrid, Lfm2, Mamba2, Llama };

inline const char* arch_name(Arch a) {
  switch (a) {
    case Arch::GraniteHybrid: return "granitehybrid";
    case Arch::Lfm2: return "lfm2";
    case Arch::Mamba2: return "mamba2";
    case Arch::Llama: return "llama";
  }
  return "?";
}

inline std::optional<Arch> parse_arch(std::string_view s) {
  for (Arch a : {Arch::GraniteHybrid, Arch::Lfm2, Arch::Mamba2, Arch::Llama})
    if (s == arch_name(a)) return a;
  return std::nullopt;
}

// llama.cpp's RoPE for the architecture pairs dims (2i, 2i + 1); ours pairs (i, i + P/2).
inline bool rotates_adjacent_pairs(Arch a) { return a == Arch::GraniteHybrid || a == Arch::Llama; }

// The architecture a model is written as: any ShortConv block → lfm2; only mixer-only
// Mamba-2 blocks → mamba2; only attention blocks → llama; otherwise granitehybrid.
inline Arch arch_for(const ModelDesc& d) {
  const auto [conv, mamba, attn, channels] = layout_kinds(d);
  if (conv) return Arch::Lfm2;
  if (mamba && !attn && !channels) return Arch::Mamba2;
  if (!mamba) return Arch::Llama;
  return Arch::GraniteHybrid;
}

namespace arch_detail {
struct Check {
  Arch arch;
  template <class... A>
  void operator()(bool ok, const A&... a) const {
    if (!ok) fail("GGUF export: llama.cpp's '", arch_name(arch), "' cannot express this model: ", a...);
  }
};

inline bool default_scale(const GqaSpec& a) {
  return a.scale == 0 || std::abs(a.scale * std::sqrt(double(a.head_dim)) - 1) < 1e-12;
}
}  // namespace arch_detail

// Throws, naming the first feature of d that `a` cannot express (and the block), unless
// llama.cpp computes exactly our model from the file.
inline void check_expressible(const ModelDesc& d, Arch a) {
  validate(d);
  const arch_detail::Check check{a};
  const ModelSpec& m = d.model;
  const int D = m.d_model;
  check(m.norm == NormKind::RMS, "the final norm is LayerNorm (only RMSNorm is written)");
  check(!m.parallel_residual, "the parallel residual");
  check(m.logit_softcap == 0, "the logit soft-cap (", m.logit_softcap, ")");
  check(!m.unet_skips, "U-Net skip connections between the halves of the blocks (unet_skips)");
  check(m.bigram_buckets == 0, "the hashed bigram embedding (bigram_buckets = ", m.bigram_buckets, ")");
  if (a != Arch::GraniteHybrid)
    check(m.embedding_multiplier == 1 && m.residual_multiplier == 1 && m.logits_divisor == 1,
          "embedding / residual multipliers or a logit divisor (only granitehybrid has them)");
  const Mamba2Spec* mamba = nullptr;
  const GqaSpec* attn = nullptr;
  int ff = -1;
  for (std::size_t i = 0; i < d.blocks.size(); ++i) {
    const BlockDesc& b = d.blocks[i];
    check(b.norm == NormKind::RMS, "block ", i, " uses LayerNorm");
    // Channels.
    if (a == Arch::Mamba2) {
      check(!has_channel(b), "block ", i, " has a channel (mamba2 blocks are mixer-only)");
    } else {
      check(!std::holds_alternative<Relu2Spec>(b.channel), "block ", i, "'s ReLU² channel (only SwiGLU)");
      const auto* s = std::get_if<SwiGluSpec>(&b.channel);
      check(s != nullptr, "block ", i, " has no channel (every ", arch_name(a), " block has a SwiGLU MLP)");
      check(!s->bias, "block ", i, "'s SwiGLU biases");
      check(ff < 0 || s->hidden == ff, "block ", i, "'s SwiGLU width ", s->hidden, " differs from ", ff,
            " (one feed-forward width for all layers)");
      ff = s->hidden;
    }
    // Mixers.
    if (const auto* s = std::get_if<Mamba2Spec>(&b.mixer)) {
      check(a == Arch::GraniteHybrid || a == Arch::Mamba2, "block ", i, " is Mamba-2");
      check(s->d_inner_exact(D) == std::floor(s->d_inner_exact(D)), "block ", i, "'s Mamba-2 expand ", s->expand,
            " x d_model is not an integer");
      if (a == Arch::GraniteHybrid)
        check(s->d_inner(D) == 2 * D, "block ", i, "'s Mamba-2 expand ", s->expand,
              " (granitehybrid requires d_inner = 2 x d_model)");
      check(!s->bias, "block ", i, "'s Mamba-2 in_proj / out_proj biases");
      check(s->dt_limit_lo == 0 && std::isinf(s->dt_limit_hi) && s->dt_limit_hi > 0, "block ", i,
            "'s Mamba-2 dt limit (", s->dt_limit_lo, ", ", s->dt_limit_hi, "): llama.cpp does not clamp dt");
      check(s->ngroups == 1 || !s->norm_whole_width, "block ", i,
            "'s gated norm over the whole width with ngroups > 1 (llama.cpp normalises per group)");
      check(s->norm_eps == m.norm_eps, "block ", i, "'s Mamba-2 norm eps ", s->norm_eps, " differs from the model's ",
            m.norm_eps, " (one epsilon for every norm)");
      if (mamba)
        check(s->d_state == mamba->d_state && s->d_conv == mamba->d_conv && s->expand == mamba->expand &&
                  s->headdim == mamba->headdim && s->ngroups == mamba->ngroups,
              "block ", i, "'s Mamba-2 sizes differ from block 0's (one set of ssm sizes per file)");
      mamba = s;
    } else if (const auto* s = std::get_if<GqaSpec>(&b.mixer)) {
      check(a != Arch::Mamba2, "block ", i, " is attention");
      check(!s->output_gate, "block ", i, "'s attention output gate");
      check(!s->bias, "block ", i, "'s attention biases");
      check(s->rope || a == Arch::GraniteHybrid, "block ", i, "'s attention without RoPE (NoPE)");
      check(!s->partial_rope(), "block ", i, "'s partial RoPE (rope_dims = ", s->rope_dims,
            " of head_dim ", s->head_dim, "; only whole-head RoPE is written)");
      if (a == Arch::Lfm2) {
        check(s->qk_norm, "block ", i, "'s attention without QK-norm (lfm2 attention always has it)");
        check(s->head_dim * s->n_heads == D, "block ", i, "'s head_dim x n_heads = ", s->head_dim * s->n_heads,
              " != d_model ", D);
      } else {
        check(!s->qk_norm, "block ", i, "'s QK-norm");
        check(s->window == 0, "block ", i, "'s sliding window (", s->window, ")");
      }
      if (a != Arch::GraniteHybrid)
        check(arch_detail::default_scale(*s), "block ", i, "'s attention scale ", s->scale,
              " (only granitehybrid has a scale key)");
      if (attn)
        check(s->n_heads == attn->n_heads && s->head_dim == attn->head_dim && s->rope == attn->rope &&
                  s->rope_theta == attn->rope_theta && s->scale == attn->scale && s->window == attn->window,
              "block ", i, "'s attention heads / head_dim / RoPE / scale / window differ from the first "
              "attention block's (one setting per file; only the KV head count may vary by layer)");
      attn = s;
    } else {
      check(a == Arch::Lfm2, "block ", i, " is ShortConv");
      check(!std::get<ShortConvSpec>(b.mixer).bias, "block ", i, "'s ShortConv biases");
      const auto& first = [&]() -> const ShortConvSpec& {
        for (const auto& o : d.blocks)
          if (const auto* c = std::get_if<ShortConvSpec>(&o.mixer)) return *c;
        return std::get<ShortConvSpec>(b.mixer);
      }();
      check(std::get<ShortConvSpec>(b.mixer).L == first.L, "block ", i, "'s ShortConv L differs from the first");
    }
  }
  if (a == Arch::Llama) check(attn != nullptr, "no attention block");
  if (a == Arch::Mamba2) check(mamba != nullptr, "no Mamba-2 block");
}

// Where one of our tensors goes.
struct Slot {
  std::string name;              // GGUF tensor name
  std::vector<std::int64_t> ne;  // its GGUF shape (fastest first)
  bool f32_only = false;         // norms, 1-D tensors, conv, A, D: llama.cpp wants F32
  bool neg_exp = false;          // A_log → -exp(A_log)
  int rope_heads = 0;            // > 0: permute rows NeoX → adjacent pairs, per head
  int head_dim = 0;
};

// Our tensor `ours` with shape (rows, cols) in a model `d` written as `a` → its slot.
inline Slot slot_for(const std::string& ours, Index rows, Index cols, const ModelDesc& d, Arch a) {
  Slot s;
  s.ne = rows == 1 ? std::vector<std::int64_t>{cols} : std::vector<std::int64_t>{cols, rows};
  s.f32_only = rows == 1;
  if (ours == "embed.weight") {
    s.name = "token_embd.weight";
    return s;
  }
  if (ours == "norm_f.weight") {
    s.name = a == Arch::Lfm2 ? "token_embd_norm.weight" : "output_norm.weight";
    return s;
  }
  if (ours == "lm_head.weight") {
    s.name = "output.weight";
    return s;
  }
  HYBRID_CHECK(ours.rfind("blocks.", 0) == 0, "GGUF: unexpected parameter '", ours, "'");
  const std::size_t dot = ours.find('.', 7);
  const int i = std::stoi(ours.substr(7, dot - 7));
  const std::string rest = ours.substr(dot + 1);
  const std::string blk = "blk." + std::to_string(i) + ".";
  const BlockDesc& b = d.blocks[std::size_t(i)];
  auto after = [&](const std::string& p) { return rest.rfind(p, 0) == 0 ? rest.substr(p.size()) : std::string(); };
  if (rest == "norm1.weight") {
    s.name = blk + "attn_norm.weight";
  } else if (rest == "norm2.weight") {
    s.name = blk + "ffn_norm.weight";
  } else if (const std::string c = after("channel."); !c.empty()) {
    const char* n = c == "w1.weight" ? "ffn_gate.weight" : c == "w3.weight" ? "ffn_up.weight"
                    : c == "w2.weight" ? "ffn_down.weight" : nullptr;
    HYBRID_CHECK(n, "GGUF: parameter '", ours, "' has no GGUF counterpart");
    s.name = blk + n;
  } else if (const std::string m = after("mixer."); !m.empty()) {
    if (const auto* sp = std::get_if<Mamba2Spec>(&b.mixer)) {
      if (m == "in_proj.weight") s.name = blk + "ssm_in.weight";
      else if (m == "out_proj.weight") s.name = blk + "ssm_out.weight";
      else if (m == "conv1d.weight") s.name = blk + "ssm_conv1d.weight", s.f32_only = true;
      else if (m == "conv1d.bias") s.name = blk + "ssm_conv1d.bias";
      else if (m == "dt_bias") s.name = blk + "ssm_dt.bias";
      else if (m == "A_log") s.name = blk + "ssm_a", s.ne = {1, cols}, s.neg_exp = true;
      else if (m == "D") s.name = blk + "ssm_d", s.ne = {1, cols};
      else if (m == "norm.weight") {
        s.name = blk + "ssm_norm.weight";
        s.ne = {cols / sp->ngroups, sp->ngroups};
        s.f32_only = true;
      }
    } else if (const auto* g = std::get_if<GqaSpec>(&b.mixer)) {
      const bool permute = g->rope && rotates_adjacent_pairs(a);
      if (m == "q_proj.weight") s.name = blk + "attn_q.weight", s.rope_heads = permute ? g->n_heads : 0;
      else if (m == "k_proj.weight") s.name = blk + "attn_k.weight", s.rope_heads = permute ? g->n_kv_heads : 0;
      else if (m == "v_proj.weight") s.name = blk + "attn_v.weight";
      else if (m == "o_proj.weight") s.name = blk + "attn_output.weight";
      else if (m == "q_norm.weight") s.name = blk + "attn_q_norm.weight";
      else if (m == "k_norm.weight") s.name = blk + "attn_k_norm.weight";
      s.head_dim = g->head_dim;
    } else {
      if (m == "in_proj.weight") s.name = blk + "shortconv.in_proj.weight";
      else if (m == "out_proj.weight") s.name = blk + "shortconv.out_proj.weight";
      else if (m == "conv.weight") s.name = blk + "shortconv.conv.weight", s.f32_only = true;
    }
  }
  HYBRID_CHECK(!s.name.empty(), "GGUF: parameter '", ours, "' has no counterpart in llama.cpp's '", arch_name(a), "'");
  return s;
}

// Row r of a permuted (rows = heads x P) q/k matrix in adjacent-pair order comes from row
// perm_source(r) of ours: within a head, pair member s of pair j (row 2j + s) is our row
// s * P/2 + j.
inline Index rope_pair_source(Index r, int P) {
  const Index h = r / P, k = r % P, half = P / 2;
  return h * P + (k % 2) * half + k / 2;
}

}  // namespace hybrid::gguf
