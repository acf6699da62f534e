// ModelDesc <-> JSON. Every field of ModelSpec and of each mixer / channel spec is written
// and read back bit-exactly (doubles are printed with 17 significant digits); the golf-entry
// options (model.unet_skips, model.bigram_buckets, model.bigram_dim, an attention mixer's
// rope_dims) are left out at their defaults, so that a model without them has the same JSON
// as before they existed. JSON has no infinity, so a
// non-finite double is written as the string "inf", "-inf" (or "nan"); a number or one of
// those strings is accepted when reading.
//
//   {"model":  {"vocab": 258, "d_model": 32, "tied": true, "norm": "rms", ...},
//    "blocks": [{"mixer":   {"kind": "mamba2", "d_state": 8, "expand": 1.5, ...,
//                            "dt_limit_hi": "inf", "scan": "auto"},
//                "channel": {"kind": "none"},
//                "norm": "rms"},
//               {"mixer":   {"kind": "attention", "n_heads": 4, ...},
//                "channel": {"kind": "relu2", "hidden": 64, "bias": false}}, ...]}
//
// Kinds: mixer "mamba2" | "attention" | "shortconv"; channel "none" | "swiglu" | "relu2";
// norm "rms" | "layer"; scan "auto" | "chunked" | "recurrent". Required: model.vocab,
// model.d_model, blocks, blocks[i].mixer.kind, and hidden of an MLP channel; any other
// field may be left out and takes the spec's default ("channel" defaults to none). Unknown
// fields, wrong types and unknown kinds throw hybrid::Error naming the JSON path, e.g.
//   blocks[3].mixer.headdim: expected an integer, got "x"
#pragma once
#include <climits>
#include <cmath>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "../core/json.hpp"
#include "../desc.hpp"

namespace hybrid {

namespace dj_detail {

using json = nlohmann::json;

inline json num(double v) {
  if (std::isfinite(v)) return v;
  return std::isnan(v) ? "nan" : v > 0 ? "inf" : "-inf";
}
inline const char* name(NormKind k) { return k == NormKind::RMS ? "rms" : "layer"; }
inline const char* name(ScanPath s) {
  return s == ScanPath::Auto ? "auto" : s == ScanPath::Chunked ? "chunked" : "recurrent";
}
// Reads the fields of one JSON object (typed checks: core/json.hpp); every key is checked
// for its type, and finish() rejects keys that no field() call asked for. Unlike
// config.json, a null here is a wrong type, not an absent field.
class Obj {
 public:
  Obj(const json& j, std::string path) : j_(j), path_(std::move(path)) {
    f_.object(j, path_.empty() ? "desc" : path_, "an object");
  }
  std::string at(const std::string& key) const { return path_.empty() ? key : path_ + "." + key; }

  // The value of `key`, or nullptr when absent (an error when required).
  const json* get(const char* key, bool required = false) {
    known_.push_back(key);
    auto it = j_.find(key);
    if (it == j_.end()) {
      if (required) f_.fail(at(key), "missing required field");
      return nullptr;
    }
    return &*it;
  }
  void field(const char* key, int& out, bool required = false) {
    if (const json* v = get(key, required)) out = int(f_.integer(*v, at(key), INT_MIN, INT_MAX));
  }
  void field(const char* key, double& out) {
    if (const json* v = get(key)) {
      if (v->is_number()) {
        out = v->get<double>();
      } else if (v->is_string() && (*v == "inf" || *v == "+inf" || *v == "-inf")) {
        out = *v == "-inf" ? -INFINITY : INFINITY;
      } else if (v->is_string() && *v == "nan") {
        out = NAN;
      } else {
        f_.wrong(at(key), "a number (or \"inf\" / \"-inf\")", *v);
      }
    }
  }
  void field(const char* key, bool& out) {
    if (const json* v = get(key)) out = f_.boolean(*v, at(key));
  }
  // A string that must be one of `names`; returns its index, or -1 when absent.
  int choice(const char* key, std::initializer_list<const char*> names, bool required = false) {
    const json* v = get(key, required);
    if (!v) return -1;
    std::string list;
    int i = 0;
    for (const char* n : names) {
      if (v->is_string() && *v == n) return i;
      list += (i++ ? ", \"" : "\"") + std::string(n) + "\"";
    }
    f_.wrong(at(key), "one of " + list, *v);
  }
  void field(const char* key, NormKind& out) {
    if (int i = choice(key, {"rms", "layer"}); i >= 0) out = i == 0 ? NormKind::RMS : NormKind::Layer;
  }
  void field(const char* key, ScanPath& out) {
    if (int i = choice(key, {"auto", "chunked", "recurrent"}); i >= 0) out = ScanPath(i);
  }
  // A field the writer leaves out at its default (Writer::optional): read like any other.
  template <class T>
  void optional(const char* key, T& out, const T&) {
    field(key, out);
  }
  void finish() const {
    for (const auto& [k, v] : j_.items()) {
      bool ok = false;
      for (const auto& n : known_) ok = ok || n == k;
      if (ok) continue;
      std::string list;
      for (const auto& n : known_) list += (list.empty() ? "" : ", ") + n;
      f_.fail(at(k), "unknown field (expected one of ", list, ")");
    }
  }

 private:
  const json& j_;
  std::string path_;
  std::vector<std::string> known_;
  JsonFields f_;  // no file: messages start with the JSON path
};

// One visitor per spec writes (W = json) or reads (W = Obj) the same list of fields, so
// the writer and the reader cannot drift apart.
struct Writer {
  json j = json::object();
  template <class T>
  void field(const char* key, const T& v) {
    if constexpr (std::is_same_v<T, double>) j[key] = num(v);
    else if constexpr (std::is_same_v<T, NormKind> || std::is_same_v<T, ScanPath>) j[key] = name(v);
    else j[key] = v;
  }
  // Written only when v differs from its default.
  template <class T>
  void optional(const char* key, const T& v, const T& dflt) {
    if (v != dflt) field(key, v);
  }
};

template <class W, class M>
void fields(W& w, M& m) {  // M = (const) ModelSpec, vocab and d_model handled by the caller
  w.field("tied", m.tied);
  w.field("norm", m.norm);
  w.field("norm_eps", m.norm_eps);
  w.field("max_context", m.max_context);
  w.field("embedding_multiplier", m.embedding_multiplier);
  w.field("residual_multiplier", m.residual_multiplier);
  w.field("logits_divisor", m.logits_divisor);
  w.field("logit_softcap", m.logit_softcap);
  w.field("parallel_residual", m.parallel_residual);
  w.field("init_std", m.init_std);
  w.optional("unet_skips", m.unet_skips, false);
  w.optional("bigram_buckets", m.bigram_buckets, 0);
  w.optional("bigram_dim", m.bigram_dim, 0);
}
template <class W, class M>
void mamba2_fields(W& w, M& s) {
  w.field("d_state", s.d_state);
  w.field("d_conv", s.d_conv);
  w.field("expand", s.expand);
  w.field("headdim", s.headdim);
  w.field("ngroups", s.ngroups);
  w.field("chunk", s.chunk);
  w.field("conv_bias", s.conv_bias);
  w.field("bias", s.bias);
  w.field("norm_whole_width", s.norm_whole_width);
  w.field("norm_eps", s.norm_eps);
  w.field("dt_min", s.dt_min);
  w.field("dt_max", s.dt_max);
  w.field("dt_init_floor", s.dt_init_floor);
  w.field("dt_limit_lo", s.dt_limit_lo);
  w.field("dt_limit_hi", s.dt_limit_hi);
  w.field("A_init_lo", s.A_init_lo);
  w.field("A_init_hi", s.A_init_hi);
  w.field("scan", s.scan);
}
template <class W, class G>
void gqa_fields(W& w, G& s) {
  w.field("n_heads", s.n_heads);
  w.field("n_kv_heads", s.n_kv_heads);
  w.field("head_dim", s.head_dim);
  w.field("rope", s.rope);
  w.field("rope_theta", s.rope_theta);
  w.field("window", s.window);
  w.field("qk_norm", s.qk_norm);
  w.field("output_gate", s.output_gate);
  w.field("scale", s.scale);
  w.field("bias", s.bias);
  w.optional("rope_dims", s.rope_dims, 0);
}
template <class W, class C>
void shortconv_fields(W& w, C& s) {
  w.field("L", s.L);
  w.field("bias", s.bias);
}

inline json mixer_json(const MixerDesc& m) {
  Writer w;
  if (const auto* s = std::get_if<Mamba2Spec>(&m)) w.j["kind"] = "mamba2", mamba2_fields(w, *s);
  if (const auto* s = std::get_if<GqaSpec>(&m)) w.j["kind"] = "attention", gqa_fields(w, *s);
  if (const auto* s = std::get_if<ShortConvSpec>(&m)) w.j["kind"] = "shortconv", shortconv_fields(w, *s);
  return w.j;
}
inline json channel_json(const ChannelDesc& c) {
  Writer w;
  const MlpSpec* mlp = std::get_if<SwiGluSpec>(&c);
  if (!mlp) mlp = std::get_if<Relu2Spec>(&c);
  w.j["kind"] = std::holds_alternative<SwiGluSpec>(c) ? "swiglu" : mlp ? "relu2" : "none";
  if (mlp) w.field("hidden", mlp->hidden), w.field("bias", mlp->bias);
  return w.j;
}

inline MixerDesc mixer_from(const json& j, const std::string& path) {
  Obj o(j, path);
  const int kind = o.choice("kind", {"mamba2", "attention", "shortconv"}, true);
  MixerDesc m;
  if (kind == 0) m = Mamba2Spec{}, mamba2_fields(o, std::get<Mamba2Spec>(m));
  if (kind == 1) m = GqaSpec{}, gqa_fields(o, std::get<GqaSpec>(m));
  if (kind == 2) m = ShortConvSpec{}, shortconv_fields(o, std::get<ShortConvSpec>(m));
  o.finish();
  return m;
}
inline ChannelDesc channel_from(const json& j, const std::string& path) {
  Obj o(j, path);
  const int kind = o.choice("kind", {"none", "swiglu", "relu2"}, true);
  MlpSpec mlp;
  if (kind != 0) o.field("hidden", mlp.hidden, true), o.field("bias", mlp.bias);
  o.finish();
  if (kind == 1) return SwiGluSpec{mlp};
  if (kind == 2) return Relu2Spec{mlp};
  return NoChannelSpec{};
}

}  // namespace dj_detail

inline nlohmann::json to_json(const ModelDesc& d) {
  using namespace dj_detail;
  Writer model;
  model.field("vocab", d.model.vocab);
  model.field("d_model", d.model.d_model);
  fields(model, d.model);
  json blocks = json::array();
  for (const auto& b : d.blocks)
    blocks.push_back({{"mixer", mixer_json(b.mixer)},
                      {"channel", channel_json(b.channel)},
                      {"norm", name(b.norm)}});
  return {{"model", model.j}, {"blocks", blocks}};
}

// Throws hybrid::Error naming the JSON path of the first bad field; the result has passed
// validate(desc).
inline ModelDesc desc_from_json(const nlohmann::json& j) {
  using namespace dj_detail;
  ModelDesc d;
  Obj root(j, "");
  {
    Obj m(*root.get("model", true), "model");
    m.field("vocab", d.model.vocab, true);
    m.field("d_model", d.model.d_model, true);
    fields(m, d.model);
    m.finish();
    try {
      validate(d.model);
    } catch (const Error& e) {
      fail("model: ", e.what());
    }
  }
  const json& blocks = *root.get("blocks", true);
  root.finish();
  JsonFields().array(blocks, "blocks", "an array of blocks");
  if (blocks.empty()) fail("blocks: the list is empty; a model needs at least one block");
  for (std::size_t i = 0; i < blocks.size(); ++i) {
    const std::string path = "blocks[" + std::to_string(i) + "]";
    Obj o(blocks[i], path);
    BlockDesc b;
    b.mixer = mixer_from(*o.get("mixer", true), path + ".mixer");
    if (const json* c = o.get("channel")) b.channel = channel_from(*c, path + ".channel");
    o.field("norm", b.norm);
    o.finish();
    // The same checks as validate(desc), with the block's path in the message.
    try {
      std::visit([&](const auto& s) { validate(s, d.model.d_model); }, b.mixer);
    } catch (const Error& e) {
      fail(path, ".mixer: ", e.what());
    }
    const MlpSpec* s = std::get_if<SwiGluSpec>(&b.channel);
    if (!s) s = std::get_if<Relu2Spec>(&b.channel);
    if (s) {
      try {
        validate(*s, d.model.d_model);
      } catch (const Error& e) {
        fail(path, ".channel: ", e.what());
      }
    }
    d.blocks.push_back(b);
  }
  validate(d);  // already checked piece by piece above; kept as the single source of truth
  return d;
}

}  // namespace hybrid
