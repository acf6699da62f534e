// Which tensors of a model are quantised, and how: a QuantSpec per tensor role, small
// tensors (norms, biases, conv weights, A_log, D, dt_bias) kept as float16.
//
//   QuantPolicy p;                       // int6 RowMax everywhere, int8 embedding
//   p.set_all({.bits = 4, .rule = ScaleRule::MseClip, .group = 32});
//   TensorRole r = tensor_role("blocks.3.mixer.in_proj.weight", ParamRole::Matrix);  // Ssm
//   const QuantSpec* s = p.spec_for(r);  // nullptr: kept as float16
#pragma once
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>

#include "../layers/param.hpp"
#include "quantize.hpp"

namespace hybrid::quant {

// Parameter golf's grouping of tensors (REFERENCE.md §6): each gets its own bit width.
enum class TensorRole { Embedding, Attention, Mlp, Ssm, Small };

inline const char* role_name(TensorRole r) {
  switch (r) {
    case TensorRole::Embedding: return "embedding";
    case TensorRole::Attention: return "attention";
    case TensorRole::Mlp: return "mlp";
    case TensorRole::Ssm: return "ssm";
    case TensorRole::Small: return "small";
  }
  return "?";
}

// The role of one of our parameters, from its name and table role: the embedding and an
// untied head; attention q/k/v/o/gate projections; channel (MLP) matrices; the in / out
// projections of Mamba-2 and ShortConv mixers (role Ssm); everything else (norms, biases,
// convolution kernels, SSM dynamics) small.
inline TensorRole tensor_role(std::string_view name, ParamRole role) {
  if (role == ParamRole::Embedding) return TensorRole::Embedding;
  if (role != ParamRole::Matrix) return TensorRole::Small;
  if (name.find(".channel.") != std::string_view::npos) return TensorRole::Mlp;
  const bool proj = name.ends_with("in_proj.weight") || name.ends_with("out_proj.weight");
  if (name.find(".mixer.") != std::string_view::npos) {
    if (name.find("_proj.weight") != std::string_view::npos && !proj) return TensorRole::Attention;
    return TensorRole::Ssm;
  }
  return TensorRole::Small;
}

struct QuantPolicy {
  QuantSpec embedding{.bits = 8};
  QuantSpec attention{.bits = 6};
  QuantSpec mlp{.bits = 6};
  QuantSpec ssm{.bits = 6};   // Mamba-2 and ShortConv in / out projections
  bool quantize_embedding = true;

  void set_all(const QuantSpec& s) { embedding = attention = mlp = ssm = s; }

  // The spec a tensor of role r is quantised with, nullptr when it is kept as float16.
  const QuantSpec* spec_for(TensorRole r) const {
    switch (r) {
      case TensorRole::Embedding: return quantize_embedding ? &embedding : nullptr;
      case TensorRole::Attention: return &attention;
      case TensorRole::Mlp: return &mlp;
      case TensorRole::Ssm: return &ssm;
      case TensorRole::Small: return nullptr;
    }
    return nullptr;
  }

  // The record an artifact carries.
  nlohmann::json to_json() const {
    auto one = [](const QuantSpec& s) {
      return nlohmann::json{{"bits", s.bits}, {"rule", scale_rule_name(s.rule)}, {"sd_k", s.sd_k},
                            {"group", s.group}};
    };
    nlohmann::json j{{"attention", one(attention)}, {"mlp", one(mlp)}, {"ssm", one(ssm)},
                     {"small", "float16"}};
    j["embedding"] = quantize_embedding ? one(embedding) : nlohmann::json("float16");
    return j;
  }
};

}  // namespace hybrid::quant
