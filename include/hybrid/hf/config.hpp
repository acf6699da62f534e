// Hugging Face config.json of three families ↔ ModelDesc (REFERENCE.md §3–§4):
//   Lfm2ForCausalLM               "lfm2"              ShortConv / GQA(QK-norm) + SwiGLU
//   GraniteMoeHybridForCausalLM   "granitemoehybrid"  Mamba-2 / GQA + dense shared SwiGLU
//   Mamba2ForCausalLM             "mamba2"            Mamba-2 mixer-only blocks
//
// Semantics follow transformers' modeling code for these families (the version pinned in
// tests/fixtures/hf/VERSIONS.json):
//   - Mamba-2 gated RMSNorm is taken per group of d_inner / n_groups (the same as mamba_ssm
//     and our default); older transformers releases normalised over the whole width, which
//     only differs when n_groups > 1 (HfOptions::mamba_norm_whole_width selects it).
//   - Granite: embeddings × embedding_multiplier, each branch × residual_multiplier,
//     attention scale = attention_multiplier, logits ÷ logits_scaling; RoPE only when
//     position_embedding_type == "rope"; num_local_experts > 0 (mixture of experts) is
//     rejected; the shared MLP is every block's channel.
//   - LFM2: per-head RMSNorm of q and k (eps norm_eps), NeoX RoPE, ShortConv kernel
//     conv_L_cache; the feed-forward width follows block_auto_adjust_ff_dim, but the loader
//     trusts the w1 tensor's shape when it differs (REFERENCE.md §3).
//   - layer_types accepts both spellings: "mamba"/"linear_attention", "attention"/
//     "full_attention", LFM2's "conv"/"full_attention" (or full_attn_idxs).
// Python's json writes inf as the bare token Infinity; transformers ≥ 5 writes
// {"__float__": "Infinity"}. Both are read.
#pragma once
#include <cmath>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "../core/json.hpp"
#include "../desc.hpp"

namespace hybrid::hf {

enum class Family { Lfm2, GraniteHybrid, Mamba2 };

inline const char* model_type(Family f) {
  return f == Family::Lfm2 ? "lfm2" : f == Family::GraniteHybrid ? "granitemoehybrid" : "mamba2";
}
inline const char* architecture(Family f) {
  return f == Family::Lfm2 ? "Lfm2ForCausalLM"
         : f == Family::GraniteHybrid ? "GraniteMoeHybridForCausalLM" : "Mamba2ForCausalLM";
}

struct HfOptions {
  bool mamba_norm_whole_width = false;  // see the header comment
};

// What a config.json describes.
struct HfConfig {
  Family family = Family::Mamba2;
  ModelDesc desc;
  std::optional<int> bos, eos, pad;
};

namespace cfg_detail {
using json = nlohmann::json;

// Field access (core/json.hpp) with messages that name the file and the field:
//   "<where>: field '<key>': expected <expected>, got <value>"
struct Reader {
  const json& j;
  std::string where;  // "config.json 'DIR/config.json'"

  static std::string label(const std::string& key) { return "field '" + key + "'"; }
  [[noreturn]] void bad(const std::string& key, const std::string& expected, const json* got) const {
    if (got) JsonFields(where).wrong(label(key), expected, *got);
    JsonFields(where).fail(label(key), "missing (expected ", expected, ")");
  }
  const json* get(const std::string& key) const { return JsonFields(where).find(j, key, ""); }
  int integer(const std::string& key) const {
    const json* v = get(key);
    if (!v || !v->is_number_integer()) bad(key, "an integer", v);
    const auto x = v->get<std::int64_t>();
    if (x < 0 || x > (1 << 30)) bad(key, "an integer in [0, 2^30]", v);
    return int(x);
  }
  int integer(const std::string& key, int dflt) const { return get(key) ? integer(key) : dflt; }
  // A finite number (multipliers, eps, theta, ...).
  double number(const std::string& key, double dflt) const {
    const json* v = get(key);
    if (!v) return dflt;
    const double x = to_double(*v, key);
    if (!std::isfinite(x)) bad(key, "a finite number", v);
    return x;
  }
  double to_double(const json& v, const std::string& key) const {
    if (v.is_number()) return v.get<double>();
    // transformers ≥ 5: {"__float__": "Infinity"}
    if (v.is_object() && v.size() == 1 && v.contains("__float__") && v["__float__"].is_string()) {
      const std::string s = v["__float__"];
      if (s == "Infinity" || s == "inf") return std::numeric_limits<double>::infinity();
      if (s == "-Infinity" || s == "-inf") return -std::numeric_limits<double>::infinity();
    }
    bad(key, "a number", &v);
  }
  bool boolean(const std::string& key, bool dflt) const {
    const json* v = get(key);
    if (!v) return dflt;
    return JsonFields(where).boolean(*v, label(key));
  }
  std::string string(const std::string& key, const std::string& dflt) const {
    const json* v = get(key);
    if (!v) return dflt;
    return JsonFields(where).string(*v, label(key));
  }
  std::optional<int> token(const std::string& key) const {
    const json* v = get(key);
    if (!v) return std::nullopt;
    if (v->is_array() && !v->empty()) v = &(*v)[0];  // eos_token_id may be a list
    if (!v->is_number_integer() || v->get<std::int64_t>() < 0) bad(key, "a non-negative token id", v);
    return int(v->get<std::int64_t>());
  }
};

// Bare Infinity / -Infinity / NaN tokens (Python's json.dumps) outside strings become
// quoted markers that Reader::to_double understands.
inline std::string replace_nonstandard_numbers(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  bool in_string = false;
  for (std::size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (in_string) {
      out += c;
      if (c == '\\' && i + 1 < text.size()) out += text[++i];
      else if (c == '"') in_string = false;
      continue;
    }
    if (c == '"') {
      in_string = true;
      out += c;
      continue;
    }
    bool done = false;
    for (std::string_view tok : {"-Infinity", "Infinity", "NaN"}) {
      if (text.substr(i, tok.size()) == tok) {
        out += "{\"__float__\": \"";
        out += tok;
        out += "\"}";
        i += tok.size() - 1;
        done = true;
        break;
      }
    }
    if (!done) out += c;
  }
  return out;
}

inline void rope_params(const Reader& r, GqaSpec& a, double default_theta) {
  a.rope_theta = default_theta;
  if (const json* rp = r.get("rope_parameters")) {
    if (!rp->is_object()) r.bad("rope_parameters", "an object", rp);
    Reader sub{*rp, r.where + " rope_parameters"};
    const std::string type = sub.string("rope_type", "default");
    if (type != "default")
      fail(r.where, ": field 'rope_parameters.rope_type' is \"", type,
           "\"; only \"default\" RoPE is supported (no scaling)");
    a.rope_theta = sub.number("rope_theta", default_theta);
  } else {
    a.rope_theta = r.number("rope_theta", default_theta);
  }
  if (const json* rs = r.get("rope_scaling"))
    fail(r.where, ": field 'rope_scaling' = ", json_brief(*rs), " is not supported (only unscaled RoPE)");
  HYBRID_CHECK(a.rope_theta > 0, r.where, ": RoPE theta must be positive, got ", a.rope_theta);
}

// Kinds of the layers, 'M' Mamba-2, 'A' attention, 'C' ShortConv.
inline std::string layer_kinds(const Reader& r, Family f, int n_layers) {
  std::string kinds;
  if (const json* lt = r.get(f == Family::GraniteHybrid && !r.get("layer_types") ? "layers_block_type" : "layer_types")) {
    if (!lt->is_array()) r.bad("layer_types", "a list of layer kinds", lt);
    for (std::size_t i = 0; i < lt->size(); ++i) {
      const json& e = (*lt)[i];
      const std::string key = "layer_types[" + std::to_string(i) + "]";
      if (!e.is_string()) r.bad(key, "a string", &e);
      const std::string s = e.get<std::string>();
      if (f == Family::Lfm2 && s == "conv") kinds += 'C';
      else if (f == Family::GraniteHybrid && (s == "mamba" || s == "linear_attention")) kinds += 'M';
      else if (s == "attention" || s == "full_attention") kinds += 'A';
      else
        r.bad(key, f == Family::Lfm2 ? "\"conv\" or \"full_attention\""
                                      : "\"mamba\", \"linear_attention\", \"attention\" or \"full_attention\"",
              &e);
    }
  } else if (f == Family::Lfm2) {
    const json* idx = r.get("full_attn_idxs");
    if (!idx) r.bad("layer_types", "a list of layer kinds (or full_attn_idxs)", nullptr);
    if (!idx->is_array()) r.bad("full_attn_idxs", "a list of layer indices", idx);
    kinds.assign(std::size_t(n_layers), 'C');
    for (const json& e : *idx) {
      if (!e.is_number_integer() || e.get<std::int64_t>() < 0 || e.get<std::int64_t>() >= n_layers)
        r.bad("full_attn_idxs", "layer indices in [0, num_hidden_layers)", &e);
      kinds[std::size_t(e.get<std::int64_t>())] = 'A';
    }
  } else {
    r.bad("layer_types", "a list of \"mamba\" / \"attention\" per layer", nullptr);
  }
  HYBRID_CHECK(int(kinds.size()) == n_layers, r.where, ": layer_types lists ", kinds.size(),
               " layers but num_hidden_layers is ", n_layers, "; they must agree");
  return kinds;
}

inline Family family_of(const Reader& r) {
  const std::string mt = r.string("model_type", "");
  std::string arch;
  if (const json* a = r.get("architectures")) {
    if (!a->is_array() || a->empty() || !(*a)[0].is_string())
      r.bad("architectures", "a list of class names", a);
    arch = (*a)[0].get<std::string>();
  }
  std::optional<Family> by_type, by_arch;
  for (Family f : {Family::Lfm2, Family::GraniteHybrid, Family::Mamba2}) {
    if (mt == model_type(f)) by_type = f;
    if (arch == architecture(f)) by_arch = f;
  }
  if (mt.empty() && arch.empty())
    r.bad("model_type", "\"lfm2\", \"granitemoehybrid\" or \"mamba2\"", nullptr);
  if (!mt.empty() && !by_type)
    fail(r.where, ": model_type \"", mt, "\" is not supported; expected \"lfm2\", "
         "\"granitemoehybrid\" or \"mamba2\"");
  if (!arch.empty() && !by_arch)
    fail(r.where, ": architecture \"", arch, "\" is not supported; expected Lfm2ForCausalLM, "
         "GraniteMoeHybridForCausalLM or Mamba2ForCausalLM");
  if (by_type && by_arch && *by_type != *by_arch)
    fail(r.where, ": model_type \"", mt, "\" contradicts architectures[0] \"", arch, "\"");
  return by_type ? *by_type : *by_arch;
}

inline void check_act(const Reader& r) {
  const std::string act = r.string("hidden_act", "silu");
  if (act != "silu" && act != "swish")
    fail(r.where, ": field 'hidden_act' is \"", act, "\"; only \"silu\" is supported");
}

inline GqaSpec attention(const Reader& r, int D, double default_theta) {
  GqaSpec a;
  a.n_heads = r.integer("num_attention_heads");
  a.n_kv_heads = r.integer("num_key_value_heads", a.n_heads);
  HYBRID_CHECK(a.n_heads > 0 && a.n_kv_heads > 0, r.where,
               ": num_attention_heads and num_key_value_heads must be positive");
  if (r.get("head_dim")) {
    a.head_dim = r.integer("head_dim");
  } else {
    HYBRID_CHECK(D % a.n_heads == 0, r.where, ": hidden_size ", D, " is not a multiple of num_attention_heads ",
                 a.n_heads, " (and no head_dim is given)");
    a.head_dim = D / a.n_heads;
  }
  HYBRID_CHECK(a.n_heads % a.n_kv_heads == 0, r.where, ": num_key_value_heads ", a.n_kv_heads,
               " does not divide num_attention_heads ", a.n_heads);
  rope_params(r, a, default_theta);
  if (const json* sw = r.get("sliding_window"))
    fail(r.where, ": field 'sliding_window' = ", json_brief(*sw), " is not supported for this family");
  return a;
}

inline Mamba2Spec mamba(const Reader& r, Family f, int D, const HfOptions& o) {
  const bool g = f == Family::GraniteHybrid;
  auto key = [&](const char* granite, const char* mamba2) { return std::string(g ? granite : mamba2); };
  Mamba2Spec m;
  m.d_state = r.integer(key("mamba_d_state", "state_size"));
  m.d_conv = r.integer(key("mamba_d_conv", "conv_kernel"), 4);
  m.ngroups = r.integer(key("mamba_n_groups", "n_groups"), 1);
  // Read and type-checked, not kept: transformers' chunk_size is its kernel's tile, not part of
  // the model's function; the scan here runs the measured rule of its device (chunk 0).
  (void)r.integer(key("mamba_chunk_size", "chunk_size"), 256);
  m.chunk = 0;
  m.conv_bias = r.boolean(key("mamba_conv_bias", "use_conv_bias"), true);
  m.bias = r.boolean(key("mamba_proj_bias", "use_bias"), false);
  m.norm_eps = r.number(key("rms_norm_eps", "layer_norm_epsilon"), 1e-5);
  m.norm_whole_width = o.mamba_norm_whole_width;
  const json* e = r.get(key("mamba_expand", "expand"));
  m.expand = e ? r.to_double(*e, key("mamba_expand", "expand")) : 2.0;
  HYBRID_CHECK(std::isfinite(m.expand) && m.expand > 0, r.where, ": ", key("mamba_expand", "expand"),
               " must be a positive number, got ", m.expand);
  const int heads = r.integer(key("mamba_n_heads", "num_heads"));
  HYBRID_CHECK(heads > 0, r.where, ": ", key("mamba_n_heads", "num_heads"), " must be positive");
  const double di_exact = m.expand * D;
  HYBRID_CHECK(di_exact == std::floor(di_exact) && di_exact > 0 && di_exact <= double(1 << 30), r.where,
               ": expand × hidden_size = ", di_exact, " is not an integer in [1, 2^30]");
  const int d_inner = int(di_exact);
  const json* hd = r.get(key("mamba_d_head", "head_dim"));
  if (!hd || (hd->is_string() && hd->get<std::string>() == "auto")) {
    HYBRID_CHECK(d_inner % heads == 0, r.where, ": d_inner = expand × hidden_size = ", d_inner,
                 " is not a multiple of ", key("mamba_n_heads", "num_heads"), " = ", heads);
    m.headdim = d_inner / heads;
  } else {
    m.headdim = r.integer(key("mamba_d_head", "head_dim"));
  }
  HYBRID_CHECK(m.headdim * heads == d_inner, r.where, ": ", key("mamba_n_heads", "num_heads"), " (", heads,
               ") × ", key("mamba_d_head", "head_dim"), " (", m.headdim, ") = ", m.headdim * heads,
               " contradicts d_inner = expand × hidden_size = ", d_inner);
  if (const json* lim = r.get("time_step_limit")) {
    if (!lim->is_array() || lim->size() != 2) r.bad("time_step_limit", "a pair [lo, hi]", lim);
    m.dt_limit_lo = r.to_double((*lim)[0], "time_step_limit[0]");
    m.dt_limit_hi = r.to_double((*lim)[1], "time_step_limit[1]");
  }
  m.dt_min = r.number("time_step_min", m.dt_min);
  m.dt_max = r.number("time_step_max", m.dt_max);
  m.dt_init_floor = r.number("time_step_floor", m.dt_init_floor);
  return m;
}

// LFM2's feed-forward width from its config (transformers' Lfm2MLP arithmetic).
inline int lfm2_ff(const Reader& r) {
  std::int64_t ff = r.integer("intermediate_size", r.integer("block_ff_dim", 12288));
  if (r.boolean("block_auto_adjust_ff_dim", true)) {
    ff = std::int64_t(2.0 * double(ff) / 3.0);
    if (r.get("block_ffn_dim_multiplier")) {
      const double mult = r.number("block_ffn_dim_multiplier", 1.0);
      const std::int64_t mo = r.integer("block_multiple_of", 256);
      HYBRID_CHECK(mo > 0, r.where, ": block_multiple_of must be positive");
      HYBRID_CHECK(mult > 0 && mult * double(ff) <= double(1 << 30), r.where,
                   ": block_ffn_dim_multiplier ", mult, " gives a feed-forward width outside [1, 2^30]");
      ff = std::int64_t(mult * double(ff));
      ff = mo * ((ff + mo - 1) / mo);
    }
  }
  HYBRID_CHECK(ff > 0 && ff <= (1 << 30), r.where, ": the feed-forward width from intermediate_size ",
               "and the block_* settings is ", ff, ", expected a positive width");
  return int(ff);
}
}  // namespace cfg_detail

// Parses config.json text (accepting Python's bare Infinity / NaN tokens).
inline nlohmann::json parse_config_text(std::string_view text, const std::string& where) {
  return parse_json(cfg_detail::replace_nonstandard_numbers(text), where, "a config.json");
}

// config.json → family + ModelDesc. `where` names the file in error messages. The result
// passed validate(desc).
inline HfConfig config_from_json(const nlohmann::json& j, const std::string& where,
                                 const HfOptions& opt = {}) {
  using namespace cfg_detail;
  HYBRID_CHECK(j.is_object(), where, ": expected a JSON object at the top level");
  const Reader r{j, where};
  HfConfig c;
  c.family = family_of(r);
  c.bos = r.token("bos_token_id");
  c.eos = r.token("eos_token_id");
  c.pad = r.token("pad_token_id");
  ModelSpec& m = c.desc.model;
  m.vocab = r.integer("vocab_size");
  m.d_model = r.integer("hidden_size");
  HYBRID_CHECK(m.vocab > 0 && m.d_model > 0, where, ": vocab_size and hidden_size must be positive");
  const int L = r.integer("num_hidden_layers");
  HYBRID_CHECK(L > 0, where, ": num_hidden_layers must be positive");
  check_act(r);
  auto block = [&](MixerDesc mx, ChannelDesc ch) { c.desc.blocks.push_back({mx, ch, NormKind::RMS}); };
  switch (c.family) {
    case Family::Lfm2: {
      m.norm_eps = r.number("norm_eps", 1e-5);
      m.tied = r.boolean("tie_word_embeddings", r.boolean("tie_embedding", true));
      const std::string kinds = layer_kinds(r, c.family, L);
      GqaSpec a = attention(r, m.d_model, 1e6);
      a.qk_norm = true;
      const ShortConvSpec sc{.L = r.integer("conv_L_cache", 3), .bias = r.boolean("conv_bias", false)};
      const SwiGluSpec mlp{{.hidden = lfm2_ff(r)}};
      for (char k : kinds) block(k == 'A' ? MixerDesc(a) : MixerDesc(sc), mlp);
      break;
    }
    case Family::GraniteHybrid: {
      m.norm_eps = r.number("rms_norm_eps", 1e-6);
      m.tied = r.boolean("tie_word_embeddings", false);
      m.embedding_multiplier = r.number("embedding_multiplier", 1);
      m.residual_multiplier = r.number("residual_multiplier", 1);
      m.logits_divisor = r.number("logits_scaling", 1);
      HYBRID_CHECK(m.logits_divisor != 0, where, ": logits_scaling must be non-zero");
      if (r.integer("num_local_experts", 0) > 0)
        fail(where, ": num_local_experts = ", r.integer("num_local_experts"),
             ": mixture of experts not supported (only dense GraniteMoeHybrid models, "
             "num_local_experts = 0, whose shared MLP is every layer's channel)");
      const std::string kinds = layer_kinds(r, c.family, L);
      GqaSpec a = attention(r, m.d_model, 10000);
      const std::string pe = r.string("position_embedding_type", "nope");
      HYBRID_CHECK(pe == "rope" || pe == "nope", where, ": field 'position_embedding_type' is \"", pe,
                   "\"; expected \"rope\" or null / \"nope\"");
      a.rope = pe == "rope";
      a.scale = r.number("attention_multiplier", 1);
      // Our scale 0 means 1/sqrt(head_dim); Granite's 0 would mean uniform attention.
      HYBRID_CHECK(a.scale > 0, where, ": field 'attention_multiplier' is ", a.scale,
                   "; expected a positive attention scale");
      a.bias = r.boolean("attention_bias", false);
      const SwiGluSpec mlp{{.hidden = r.integer("shared_intermediate_size", 1024)}};
      std::optional<Mamba2Spec> mb;
      if (kinds.find('M') != std::string::npos) mb = mamba(r, c.family, m.d_model, opt);
      for (char k : kinds) block(k == 'A' ? MixerDesc(a) : MixerDesc(*mb), mlp);
      break;
    }
    case Family::Mamba2: {
      m.norm_eps = r.number("layer_norm_epsilon", 1e-5);
      m.tied = r.boolean("tie_word_embeddings", false);
      const Mamba2Spec mb = mamba(r, c.family, m.d_model, opt);
      for (int i = 0; i < L; ++i) block(mb, NoChannelSpec{});
      break;
    }
  }
  try {
    validate(c.desc);
  } catch (const Error& e) {
    fail(where, ": the configuration is not a valid model: ", e.what());
  }
  return c;
}

}  // namespace hybrid::hf
