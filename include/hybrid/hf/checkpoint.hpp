// Hugging Face checkpoint directories (config.json + model.safetensors, or shards listed in
// model.safetensors.index.json) in and out:
//
//   auto m  = hf::load_hf<float>("dir");            // run-time layout from layer_types
//   auto g  = hf::load_hf<MyGraniteType>("dir");    // compile-time type, checked against config
//   hf::save_hf(model, "out_dir");                  // config.json + model.safetensors
//
// Tensor names (REFERENCE.md §3–§4), ours ↔ theirs, block i:
//   embed.weight          model.embed_tokens.weight | backbone.embeddings.weight (Mamba2)
//   norm_f.weight         model.embedding_norm (LFM2) | model.norm | backbone.norm_f
//   lm_head.weight        lm_head.weight (untied only; a tied head is absent from the file)
//   blocks.i.norm1        operator_norm (LFM2) | input_layernorm (Granite) | norm (Mamba2)
//   blocks.i.norm2        ffn_norm (LFM2) | post_attention_layernorm (Granite)
//   blocks.i.mixer.*      conv.{in_proj,conv,out_proj} | self_attn.{q,k,v}_proj, o_proj
//                         (LFM2: out_proj, q_layernorm, k_layernorm) | mamba.* | mixer.*
//   blocks.i.channel.w1/w3/w2   feed_forward.w1/w3/w2 (LFM2) | shared_mlp.input_linear rows
//                         [0, S) (gate) and [S, 2S) (up), shared_mlp.output_linear (Granite)
// Shapes: a (1, n) parameter is [n]; depthwise conv weights (C, K) are [C, 1, K].
//
// Loading checks everything before a weight is used: every expected tensor present with the
// expected shape, no tensor left over (a tied checkpoint's redundant lm_head.weight and
// rotary inv_freq buffers are ignored, as transformers does), dtypes F32/F16/BF16/F64
// converted to the model's scalar.
#pragma once
#include <filesystem>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "../core/file.hpp"
#include "../io/desc_json.hpp"
#include "../io/safetensors.hpp"
#include "../io/sharded.hpp"
#include "../runtime_model.hpp"
#include "config.hpp"
#include "config_write.hpp"

namespace hybrid::hf {

namespace ckpt_detail {
namespace fs = std::filesystem;

// Where one of our tensors lives in a Hugging Face checkpoint.
struct Slot {
  std::string hf;                    // tensor name in the checkpoint
  std::vector<std::int64_t> shape;   // its full shape
  std::int64_t row0 = 0, rows = -1;  // a row range of it (-1: the whole tensor)
};

inline std::string layer_prefix(Family f, int i) {
  return (f == Family::Mamba2 ? "backbone.layers." : "model.layers.") + std::to_string(i) + ".";
}

// Our tensor name + shape (rows, cols) → its slot, for a model of family f.
inline Slot slot_for(const std::string& ours, Index rows, Index cols, const ModelDesc& d, Family f) {
  auto flat = [&] { return rows == 1 ? std::vector<std::int64_t>{cols} : std::vector<std::int64_t>{rows, cols}; };
  Slot s;
  s.shape = flat();
  if (ours == "embed.weight") {
    s.hf = f == Family::Mamba2 ? "backbone.embeddings.weight" : "model.embed_tokens.weight";
    return s;
  }
  if (ours == "norm_f.weight") {
    s.hf = f == Family::Mamba2 ? "backbone.norm_f.weight"
           : f == Family::Lfm2 ? "model.embedding_norm.weight" : "model.norm.weight";
    return s;
  }
  if (ours == "lm_head.weight") {
    s.hf = "lm_head.weight";
    return s;
  }
  // blocks.<i>.<part>.<rest>
  HYBRID_CHECK(ours.rfind("blocks.", 0) == 0, "save_hf/load_hf: unexpected parameter '", ours, "'");
  const std::size_t dot = ours.find('.', 7);
  const int i = std::stoi(ours.substr(7, dot - 7));
  const std::string rest = ours.substr(dot + 1);
  const std::string pre = layer_prefix(f, i);
  const BlockDesc& b = d.blocks[std::size_t(i)];
  auto part = [&](const std::string& p) { return rest.rfind(p, 0) == 0 ? rest.substr(p.size()) : std::string(); };
  if (rest == "norm1.weight") {
    s.hf = pre + (f == Family::Lfm2 ? "operator_norm.weight" : f == Family::GraniteHybrid ? "input_layernorm.weight" : "norm.weight");
  } else if (rest == "norm2.weight") {
    s.hf = pre + (f == Family::Lfm2 ? "ffn_norm.weight" : "post_attention_layernorm.weight");
  } else if (const std::string m = part("mixer."); !m.empty()) {
    if (std::holds_alternative<Mamba2Spec>(b.mixer)) {
      s.hf = pre + (f == Family::Mamba2 ? "mixer." : "mamba.") + m;
      if (m == "conv1d.weight") s.shape = {rows, 1, cols};
    } else if (std::holds_alternative<ShortConvSpec>(b.mixer)) {
      s.hf = pre + "conv." + m;  // conv.weight → conv.conv.weight
      if (m == "conv.weight") s.shape = {rows, 1, cols};
    } else {
      std::string n = m;
      if (f == Family::Lfm2) {
        if (n.rfind("o_proj.", 0) == 0) n = "out_proj." + n.substr(7);
        else if (n == "q_norm.weight") n = "q_layernorm.weight";
        else if (n == "k_norm.weight") n = "k_layernorm.weight";
      }
      s.hf = pre + "self_attn." + n;
    }
  } else if (const std::string c = part("channel."); !c.empty()) {
    if (f == Family::Lfm2) {
      s.hf = pre + "feed_forward." + c;
    } else {
      HYBRID_CHECK(std::holds_alternative<SwiGluSpec>(b.channel) && c.find("bias") == std::string::npos,
                   "save_hf/load_hf: parameter '", ours, "' has no GraniteMoeHybrid counterpart");
      const Index S = std::get<SwiGluSpec>(b.channel).hidden;
      if (c == "w2.weight") {
        s.hf = pre + "shared_mlp.output_linear.weight";
      } else {
        s.hf = pre + "shared_mlp.input_linear.weight";
        s.shape = {2 * S, cols};
        s.row0 = c == "w1.weight" ? 0 : S;
        s.rows = S;
      }
    }
  } else {
    fail("save_hf/load_hf: unexpected parameter '", ours, "'");
  }
  return s;
}

inline bool ignorable(const std::string& name, bool tied) {
  if (tied && name == "lm_head.weight") return true;
  return name.ends_with("rotary_emb.inv_freq");
}

// Recursively the first difference between two JSON values, as "path: a vs b".
inline std::string first_difference(const nlohmann::json& a, const nlohmann::json& b, const std::string& path) {
  if (a.is_object() && b.is_object()) {
    for (auto it = a.begin(); it != a.end(); ++it) {
      if (!b.contains(it.key())) return path + "." + it.key() + ": missing on one side";
      if (auto d = first_difference(*it, b[it.key()], path + "." + it.key()); !d.empty()) return d;
    }
    return {};
  }
  if (a.is_array() && b.is_array()) {
    if (a.size() != b.size())
      return path + ": " + std::to_string(a.size()) + " entries vs " + std::to_string(b.size());
    for (std::size_t i = 0; i < a.size(); ++i)
      if (auto d = first_difference(a[i], b[i], path + "[" + std::to_string(i) + "]"); !d.empty()) return d;
    return {};
  }
  return a == b ? std::string() : path + ": " + a.dump() + " vs " + b.dump();
}

// The ModelDesc as JSON without the settings a checkpoint does not carry (initialisation,
// scan path and chunk, context limit): what must agree between a type and a config.
inline nlohmann::json semantic_json(const ModelDesc& d) {
  nlohmann::json j = to_json(d);
  for (const char* k : {"init_std", "max_context"}) j["model"].erase(k);
  for (auto& b : j["blocks"])
    for (const char* k : {"chunk", "scan", "dt_min", "dt_max", "dt_init_floor", "A_init_lo", "A_init_hi"})
      b["mixer"].erase(k);
  return j;
}
}  // namespace ckpt_detail

// A checkpoint directory opened for reading: its config and its tensors.
class HfCheckpoint {
 public:
  explicit HfCheckpoint(const std::string& dir, const HfOptions& opt = {}) : dir_(dir) {
    namespace fs = std::filesystem;
    HYBRID_CHECK(fs::is_directory(dir), "Hugging Face checkpoint '", dir, "' is not a directory");
    const fs::path cfg = fs::path(dir) / "config.json";
    const std::string where = "config.json '" + cfg.string() + "'";
    const std::string text = read_file(cfg, "config.json", "the checkpoint's Hugging Face config");
    config_ = config_from_json(parse_config_text(text, where), where, opt);
    tensors_ = std::make_unique<SafetensorsSet>(dir);
    // LFM2: trust w1's shape over the ff-dim arithmetic (REFERENCE.md §3).
    if (config_.family == Family::Lfm2)
      for (std::size_t i = 0; i < config_.desc.blocks.size(); ++i) {
        const auto hit = tensors_->find(ckpt_detail::layer_prefix(Family::Lfm2, int(i)) + "feed_forward.w1.weight");
        if (hit && hit->info->shape.size() == 2)
          std::get<SwiGluSpec>(config_.desc.blocks[i].channel).hidden = int(hit->info->shape[0]);
      }
  }

  const HfConfig& config() const { return config_; }
  const std::string& dir() const { return dir_; }

  // Fills `model` (whose desc must match the config's, see load_hf) from the tensors.
  template <class S>
  void load_into(RuntimeModel<S>& model) const {
    using namespace ckpt_detail;
    const Family f = config_.family;
    const ModelDesc& d = model.desc();
    struct Item { std::string ours; MatMap<S>* dst; Slot slot; };
    std::vector<Item> items;
    std::set<std::string> used;
    model.visit([&](const std::string& n, MatMap<S>& t, ParamRole) {
      items.push_back({n, &t, slot_for(n, t.rows(), t.cols(), d, f)});
    });
    // Everything is checked before any weight is touched.
    for (const Item& it : items) {
      const auto hit = tensors_->find(it.slot.hf);
      HYBRID_CHECK(hit, "Hugging Face checkpoint '", dir_, "': tensor '", it.slot.hf,
                   "' is missing (it holds our '", it.ours, "')");
      HYBRID_CHECK(hit->info->shape == it.slot.shape, "Hugging Face checkpoint '", dir_, "': tensor '",
                   it.slot.hf, "' in '", hit->reader->path(), "' has shape ", st_detail::shape_str(hit->info->shape),
                   ", expected ", st_detail::shape_str(it.slot.shape), " from config.json");
      used.insert(it.slot.hf);
    }
    for (const std::string& n : tensors_->names())
      HYBRID_CHECK(used.count(n) || ignorable(n, d.model.tied), "Hugging Face checkpoint '", dir_,
                   "': unexpected tensor '", n, "' (not part of the ", architecture(f),
                   " model config.json describes)");
    std::vector<S> buf;
    for (const Item& it : items) {
      const auto hit = tensors_->find(it.slot.hf);
      buf.resize(std::size_t(hit->info->numel()));
      hit->reader->read(*hit->info, buf.data());
      const Index cols = it.dst->cols();
      const std::size_t off = std::size_t(it.slot.row0 * cols);
      std::copy(buf.begin() + std::ptrdiff_t(off), buf.begin() + std::ptrdiff_t(off + std::size_t(it.dst->size())),
                it.dst->data());
    }
    model.check_finite();
  }

 private:
  std::string dir_;
  HfConfig config_;
  std::unique_ptr<SafetensorsSet> tensors_;
};

// Run-time loader: the layout comes from config.json's layer_types.
template <class S = float>
RuntimeModel<S> load_hf(const std::string& dir, const HfOptions& opt = {}) {
  HfCheckpoint ck(dir, opt);
  RuntimeModel<S> m(ck.config().desc);
  ck.load_into(m);
  return m;
}

// Compile-time loader: M is a Model<Config, Layout...> type; config.json must describe the
// same model (layout, sizes, options — initialisation settings aside), else the error names
// the first difference.
template <class M>
  requires requires { M::desc(); }
M load_hf(const std::string& dir, const HfOptions& opt = {}) {
  HfCheckpoint ck(dir, opt);
  const auto a = ckpt_detail::semantic_json(M::desc()), b = ckpt_detail::semantic_json(ck.config().desc);
  if (a != b)
    fail("load_hf: the type does not match '", dir, "/config.json' (", architecture(ck.config().family),
         "): ", ckpt_detail::first_difference(a, b, "desc"), " (type vs checkpoint)");
  M m;
  ck.load_into(m);
  return m;
}

// Writes config.json + model.safetensors (float32, as transformers saves) into `dir`
// (created if needed), each atomically. The family is chosen by family_for(desc) unless
// given; a model the family cannot express is an error before anything is written.
template <class S>
void save_hf(const RuntimeModel<S>& model, const std::string& dir, std::optional<Family> family = std::nullopt,
             const HfConfig* tokens = nullptr) {
  namespace fs = std::filesystem;
  using namespace ckpt_detail;
  const ModelDesc& d = model.desc();
  const Family f = family ? *family : family_for(d);
  const nlohmann::json cfg = config_to_json(d, f, tokens);
  // Gather tensors in float32; Granite's input_linear is assembled from w1 and w3.
  std::map<std::string, std::pair<std::vector<std::int64_t>, std::vector<float>>> out;
  model.visit([&](const std::string& n, const MatMap<S>& t, ParamRole) {
    const Slot s = slot_for(n, t.rows(), t.cols(), d, f);
    auto& [shape, data] = out[s.hf];
    if (data.empty()) {
      shape = s.shape;
      std::int64_t numel = 1;
      for (auto x : shape) numel *= x;
      data.assign(std::size_t(numel), 0.f);
    }
    const std::size_t off = std::size_t(s.row0 * t.cols());
    for (Index k = 0; k < t.size(); ++k) data[off + std::size_t(k)] = float(t.data()[k]);
  });
  std::vector<TensorRef> refs;
  for (const auto& [name, v] : out) refs.push_back({name, Dtype::F32, v.first, v.second.data()});
  std::error_code ec;
  fs::create_directories(dir, ec);
  HYBRID_CHECK(fs::is_directory(dir), "save_hf: cannot create directory '", dir, "': ", ec.message());
  write_safetensors((fs::path(dir) / "model.safetensors").string(), refs, {{"format", "pt"}});
  const std::string text = cfg.dump(2) + "\n";
  const std::string path = (fs::path(dir) / "config.json").string();
  write_file_atomic(path, "save_hf: writing '" + path + "'", text);
}

}  // namespace hybrid::hf
