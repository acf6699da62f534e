// LoRA adapters (train/lora.hpp) in PEFT's layout, alone, without the base model:
//   DIR/adapter_config.json        peft_type LORA, r, lora_alpha, lora_dropout, target_modules,
//                                  bias "none", task_type CAUSAL_LM, base_model_name_or_path
//   DIR/adapter_model.safetensors  "base_model.model.<module>.lora_A.weight" (r, in) and
//                                  ".lora_B.weight" (out, r), float32
// With a Hugging Face family <module> is that family's ("model.layers.0.self_attn.q_proj"),
// so PEFT's PeftModel.from_pretrained(hf_model, DIR) applies them to the transformers model.
//
//   save_peft(lora, "out/adapter", "path/to/base");   // both files atomic
//   load_peft(lora, "out/adapter");                   // into adapters of the same shape
//   auto l2 = peft_adapters(model, "out/adapter");    // adapters built from the files
#pragma once
#include <filesystem>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "../core/atomic_file.hpp"
#include "../core/error.hpp"
#include "../core/json.hpp"
#include "../train/lora.hpp"
#include "safetensors.hpp"

namespace hybrid {

namespace peft_detail {
namespace fs = std::filesystem;
inline constexpr const char* kPrefix = "base_model.model.";

// PEFT matches a target_modules entry against a module name by equality or as a suffix
// after a dot; the shortest suffix of each module that selects only adapted modules.
inline std::vector<std::string> target_modules(const std::vector<train::LoraModule>& mods,
                                               const std::vector<std::string>& others) {
  std::set<std::string> out;
  auto matches = [](const std::string& name, const std::string& t) {
    return name == t || (name.size() > t.size() && name.ends_with(t) && name[name.size() - t.size() - 1] == '.');
  };
  for (const auto& m : mods) {
    // Suffixes of 1, 2, ... dotted components, the first that no unadapted module has.
    std::string chosen = m.name;
    for (std::size_t pos = m.name.rfind('.'); pos != std::string::npos; pos = m.name.rfind('.', pos - 1)) {
      const std::string suf = m.name.substr(pos + 1);
      bool clash = false;
      for (const auto& o : others) clash = clash || matches(o, suf);
      if (!clash) {
        chosen = suf;
        break;
      }
      if (pos == 0) break;
    }
    out.insert(chosen);
  }
  return {out.begin(), out.end()};
}
}  // namespace peft_detail

// Writes adapter_config.json and adapter_model.safetensors into dir (created if needed).
// base_model: written as base_model_name_or_path ("" writes null).
template <class S>
void save_peft(const train::LoraAdapters<S>& lora, const std::string& dir, const std::string& base_model = "") {
  namespace fs = std::filesystem;
  const train::LoraConfig& c = lora.config();
  // Every projection of the model that could carry an adapter but does not, by module name:
  // target_modules must not select them.
  std::vector<std::string> others;
  {
    train::LoraConfig all = c;
    all.targets = {"all"};
    std::set<std::string> mine;
    for (const auto& m : lora.modules()) mine.insert(m.name);
    RuntimeModel<S>& model = const_cast<RuntimeModel<S>&>(lora.model());
    const train::LoraAdapters<S> every(model, all, std::optional<std::optional<hf::Family>>(lora.family()));
    for (const auto& m : every.modules())
      if (!mine.count(m.name)) others.push_back(m.name);
  }
  nlohmann::json j;
  j["peft_type"] = "LORA";
  j["task_type"] = "CAUSAL_LM";
  j["r"] = c.rank;
  j["lora_alpha"] = c.alpha;
  j["lora_dropout"] = c.dropout;
  j["use_rslora"] = c.rslora;
  j["target_modules"] = peft_detail::target_modules(lora.modules(), others);
  j["bias"] = "none";
  j["fan_in_fan_out"] = false;
  j["inference_mode"] = true;
  j["init_lora_weights"] = true;
  j["modules_to_save"] = nullptr;
  j["rank_pattern"] = nlohmann::json::object();
  j["alpha_pattern"] = nlohmann::json::object();
  j["use_dora"] = false;
  j["base_model_name_or_path"] = base_model.empty() ? nlohmann::json(nullptr) : nlohmann::json(base_model);
  std::vector<std::vector<float>> data;
  std::vector<TensorRef> refs;
  data.reserve(2 * lora.modules().size());
  for (const auto& m : lora.modules())
    for (const Param* p : {&m.A, &m.B}) {
      const S* v = lora.param_values() + p->offset;
      data.emplace_back(v, v + p->size());
      refs.push_back({std::string(peft_detail::kPrefix) + m.name + (p == &m.A ? ".lora_A.weight" : ".lora_B.weight"),
                      Dtype::F32, {p->rows, p->cols}, data.back().data()});
    }
  std::error_code ec;
  fs::create_directories(dir, ec);
  HYBRID_CHECK(fs::is_directory(dir), "save_peft: cannot create directory '", dir, "': ", ec.message());
  write_safetensors((fs::path(dir) / "adapter_model.safetensors").string(), refs, {{"format", "pt"}});
  const std::string path = (fs::path(dir) / "adapter_config.json").string();
  write_file_atomic(path, "save_peft: writing '" + path + "'", j.dump(2) + "\n");
}

// adapter_config.json as a LoraConfig (targets: "all", narrowed by peft_adapters to the
// modules the tensors name). Refuses what LoraAdapters cannot represent.
inline train::LoraConfig read_peft_config(const std::string& dir) {
  namespace fs = std::filesystem;
  const fs::path p = fs::path(dir) / "adapter_config.json";
  const std::string where = "PEFT adapter config '" + p.string() + "'";
  const nlohmann::json j = read_json_file(p, "PEFT adapter config", "PEFT's adapter_config.json of a LoRA adapter");
  auto need = [&](const char* k) -> const nlohmann::json& {
    HYBRID_CHECK(j.contains(k) && !j[k].is_null(), where, ": field '", k, "' is missing");
    return j[k];
  };
  HYBRID_CHECK(need("peft_type").is_string() && j["peft_type"] == "LORA", where, ": peft_type is ",
               json_brief(j["peft_type"]), ", expected \"LORA\"");
  train::LoraConfig c;
  HYBRID_CHECK(need("r").is_number_integer(), where, ": r is ", json_brief(j["r"]), ", expected an integer");
  c.rank = j["r"].get<int>();
  HYBRID_CHECK(need("lora_alpha").is_number(), where, ": lora_alpha is ", json_brief(j["lora_alpha"]),
               ", expected a number");
  c.alpha = j["lora_alpha"].get<double>();
  if (j.contains("lora_dropout") && j["lora_dropout"].is_number()) c.dropout = j["lora_dropout"].get<double>();
  if (j.contains("use_rslora") && j["use_rslora"].is_boolean()) c.rslora = j["use_rslora"].get<bool>();
  for (const char* k : {"use_dora", "fan_in_fan_out", "lora_bias", "use_qalora"})
    HYBRID_CHECK(!(j.contains(k) && j[k] == true), where, ": ", k, " is true; only plain LoRA is supported");
  for (const char* k : {"rank_pattern", "alpha_pattern"})
    HYBRID_CHECK(!(j.contains(k) && j[k].is_object() && !j[k].empty()), where, ": ", k,
                 " is not empty; one rank and one alpha for every module are supported");
  HYBRID_CHECK(!j.contains("layers_to_transform") || j["layers_to_transform"].is_null(), where,
               ": layers_to_transform is set; adapters on every layer of a kind are supported");
  HYBRID_CHECK(!j.contains("bias") || j["bias"] == "none", where, ": bias is ", json_brief(j["bias"]),
               ", expected \"none\" (adapters without trained biases)");
  c.targets = {"all"};
  c.validate();
  return c;
}

// Reads adapter_model.safetensors into adapters of the same modules and rank: every
// module's lora_A and lora_B present with its shape, no other tensor, r as configured.
template <class S>
void load_peft(train::LoraAdapters<S>& lora, const std::string& dir) {
  namespace fs = std::filesystem;
  const train::LoraConfig file = read_peft_config(dir);
  const train::LoraConfig& c = lora.config();
  HYBRID_CHECK(file.rank == c.rank, "load_peft: '", dir, "' holds rank-", file.rank, " adapters, these have r = ",
               c.rank);
  HYBRID_CHECK(file.scaling() == c.scaling(), "load_peft: '", dir, "' scales by ", file.scaling(),
               " (lora_alpha ", file.alpha, "), these adapters by ", c.scaling(), " (alpha ", c.alpha, ")");
  const std::string path = (fs::path(dir) / "adapter_model.safetensors").string();
  HYBRID_CHECK(fs::exists(path), "load_peft: '", path, "' does not exist");
  SafetensorsReader r(path);
  std::set<std::string> used;
  struct Item { const TensorInfo* info; S* dst; };
  std::vector<Item> items;
  for (const auto& m : lora.modules())
    for (const Param* p : {&m.A, &m.B}) {
      const std::string n = std::string(peft_detail::kPrefix) + m.name + (p == &m.A ? ".lora_A.weight" : ".lora_B.weight");
      const TensorInfo* t = r.find(n);
      HYBRID_CHECK(t, "load_peft: '", path, "' lacks tensor '", n, "'");
      const std::vector<std::int64_t> want{p->rows, p->cols};
      HYBRID_CHECK(t->shape == want, "load_peft: '", path, "': tensor '", n, "' has shape ",
                   st_detail::shape_str(t->shape), ", expected ", st_detail::shape_str(want));
      used.insert(n);
      items.push_back({t, lora.param_values() + p->offset});
    }
  for (const auto& t : r.tensors())
    HYBRID_CHECK(used.count(t.name), "load_peft: '", path, "': unexpected tensor '", t.name,
                 "' (no adapted module of this model has that name)");
  for (const Item& it : items) r.read(*it.info, it.dst);
}

// Adapters built from a PEFT directory for `model`: rank, alpha, dropout from the config,
// the modules those the tensors name (every module of the targeted kinds must be there).
template <class S>
train::LoraAdapters<S> peft_adapters(RuntimeModel<S>& model, const std::string& dir) {
  namespace fs = std::filesystem;
  train::LoraConfig c = read_peft_config(dir);
  const std::string path = (fs::path(dir) / "adapter_model.safetensors").string();
  HYBRID_CHECK(fs::exists(path), "load_peft: '", path, "' does not exist");
  std::set<std::string> kinds;
  {
    const SafetensorsReader r(path);
    const train::LoraAdapters<S> every(model, c);
    for (const auto& m : every.modules())
      if (r.find(std::string(peft_detail::kPrefix) + m.name + ".lora_A.weight"))
        for (const auto& p : m.parts) kinds.insert(p.kind);
    HYBRID_CHECK(!kinds.empty(), "load_peft: '", path, "' names no module of this model (",
                 every.modules().front().name, " would be '", peft_detail::kPrefix,
                 every.modules().front().name, ".lora_A.weight')");
  }
  c.targets.assign(kinds.begin(), kinds.end());
  train::LoraAdapters<S> lora(model, c);
  load_peft(lora, dir);
  return lora;
}

}  // namespace hybrid
