// Checkpoints: every parameter of a RuntimeModel in one safetensors file, with the model's
// ModelDesc as JSON in the metadata so that load_model can rebuild it without its type.
//
//   file tensors   names from RuntimeModel::visit ("embed.weight", "blocks.0.mixer...", ...);
//                  a (1, n) parameter is stored with shape [n], any other (R, C) as [R, C];
//                  dtype F32 for a float model, F64 for a double one
//   metadata       "hybrid.format" = "hybrid-1"
//                  "hybrid.desc"   = to_json(desc).dump()   (see desc_json.hpp)
//                  plus any caller-supplied keys
//   "state.*"      tensors that are not parameters (optimiser moments, EMA weights) written
//                  by training checkpoints; load_weights ignores them
//
//   save_model(model, "m.safetensors", {{"step", "1000"}});
//   auto m = load_model<float>("m.safetensors");        // F16/BF16/F32/F64 → float
//   load_weights(existing, "m.safetensors");            // same tensors, same shapes
#pragma once
#include <map>
#include <string>
#include <unordered_map>
#include <vector>

#include "../runtime_model.hpp"
#include "desc_json.hpp"
#include "safetensors.hpp"

namespace hybrid {

inline constexpr const char* checkpoint_format = "hybrid-1";

namespace ckpt_detail {

inline std::string layout_of(const ModelDesc& d) {
  std::string s;
  for (const auto& b : d.blocks) s += mixer_code(b.mixer);
  return s;
}

// [n] for a (1, n) parameter, else [R, C].
template <class S>
std::vector<std::int64_t> file_shape(const MatMap<S>& t) {
  if (t.rows() == 1) return {std::int64_t(t.cols())};
  return {std::int64_t(t.rows()), std::int64_t(t.cols())};
}
// A (1, n) parameter also accepts [1, n], as written by tools that keep 2-D shapes.
template <class S>
bool shape_matches(const std::vector<std::int64_t>& f, const MatMap<S>& t) {
  return f == file_shape(t) || (t.rows() == 1 && f == std::vector<std::int64_t>{1, t.cols()});
}

// The ModelDesc in the file's metadata, or an error saying what is wrong with it.
inline ModelDesc file_desc(const SafetensorsReader& r) {
  const auto& md = r.metadata();
  auto it = md.find("hybrid.desc");
  if (it == md.end())
    fail("checkpoint '", r.path(), "': no \"hybrid.desc\" metadata, so the model cannot be ",
         "rebuilt from it (not written by save_model?); build the model yourself and call ",
         "load_weights");
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(it->second);
  } catch (const nlohmann::json::exception& e) {
    fail("checkpoint '", r.path(), "': metadata \"hybrid.desc\" is not valid JSON: ", e.what());
  }
  try {
    return desc_from_json(j);
  } catch (const Error& e) {
    fail("checkpoint '", r.path(), "': metadata \"hybrid.desc\": ", e.what());
  }
}

inline void check_format(const SafetensorsReader& r) {
  auto it = r.metadata().find("hybrid.format");
  if (it != r.metadata().end() && it->second != checkpoint_format)
    fail("checkpoint '", r.path(), "': hybrid.format is \"", it->second, "\", expected \"",
         checkpoint_format, "\"");
}

}  // namespace ckpt_detail

inline constexpr const char* state_prefix = "state.";

// Writes every parameter plus the desc atomically (see write_safetensors). Keys of
// extra_metadata must not start with "hybrid."; names of extra_tensors must start with
// "state." (training state that travels with the weights).
template <class S>
void save_model(const RuntimeModel<S>& model, const std::string& path,
                std::map<std::string, std::string> extra_metadata = {},
                const std::vector<TensorRef>& extra_tensors = {}) {
  for (const auto& [k, v] : extra_metadata)
    HYBRID_CHECK(k.rfind("hybrid.", 0) != 0, "save_model: metadata key '", k,
                 "' is reserved (keys starting with \"hybrid.\" are written by save_model)");
  extra_metadata["hybrid.format"] = checkpoint_format;
  extra_metadata["hybrid.desc"] = to_json(model.desc()).dump();
  std::vector<TensorRef> refs;
  model.visit([&](const std::string& n, const MatMap<S>& t, ParamRole) {
    refs.push_back({n, dtype_of<S>(), ckpt_detail::file_shape(t), t.data()});
  });
  for (const auto& t : extra_tensors) {
    HYBRID_CHECK(t.name.rfind(state_prefix, 0) == 0, "save_model: extra tensor '", t.name,
                 "' must be named \"", state_prefix, "...\"");
    refs.push_back(t);
  }
  write_safetensors(path, refs, extra_metadata);
}

// Loads the file's tensors into `model`, converting dtypes. The file must hold exactly the
// model's tensors with the same shapes, and (if it carries a desc) the same layout string;
// all of that is checked before any weight is touched. Non-finite weights are reported
// after loading (the model then holds the file's weights).
template <class S>
void load_weights(RuntimeModel<S>& model, const SafetensorsReader& r) {
  const std::string& path = r.path();
  ckpt_detail::check_format(r);
  if (r.metadata().count("hybrid.desc")) {
    const std::string file_layout = ckpt_detail::layout_of(ckpt_detail::file_desc(r));
    HYBRID_CHECK(file_layout == model.layout_string(), "checkpoint '", path,
                 "': layout mismatch: the file holds layout \"", file_layout,
                 "\" but the model's layout is \"", model.layout_string(), "\"");
  }
  std::unordered_map<std::string, const TensorInfo*> in_file;
  for (const auto& t : r.tensors())
    if (t.name.rfind(state_prefix, 0) != 0) in_file.emplace(t.name, &t);
  std::unordered_map<std::string, const TensorInfo*> used;
  std::size_t n_model = 0;
  model.visit([&](const std::string& n, const MatMap<S>& t, ParamRole) {
    ++n_model;
    auto it = in_file.find(n);
    HYBRID_CHECK(it != in_file.end(), "checkpoint '", path, "': tensor '", n,
                 "' of the model is missing from the file (expected shape ",
                 st_detail::shape_str(ckpt_detail::file_shape(t)), ")");
    HYBRID_CHECK(ckpt_detail::shape_matches(it->second->shape, t), "checkpoint '", path,
                 "': tensor '", n, "' has shape ", st_detail::shape_str(it->second->shape),
                 " in the file but ", st_detail::shape_str(ckpt_detail::file_shape(t)),
                 " in the model");
    used.emplace(n, it->second);
  });
  for (const auto& t : r.tensors())
    HYBRID_CHECK(used.count(t.name) || t.name.rfind(state_prefix, 0) == 0, "checkpoint '", path, "': tensor '", t.name,
                 "' in the file is not a parameter of the model (the file has ",
                 r.tensors().size(), " tensors, the model ", n_model, ")");
  model.visit([&](const std::string& n, MatMap<S>& t, ParamRole) { r.read(*used.at(n), t.data()); });
  try {
    model.check_finite();
  } catch (const Error& e) {
    fail("checkpoint '", path, "': ", e.what());
  }
}

template <class S>
void load_weights(RuntimeModel<S>& model, const std::string& path) {
  load_weights(model, SafetensorsReader(path));
}

// Rebuilds the model from the file's "hybrid.desc" metadata, then loads its weights.
template <class S>
RuntimeModel<S> load_model(const std::string& path) {
  SafetensorsReader r(path);
  ckpt_detail::check_format(r);
  RuntimeModel<S> model(ckpt_detail::file_desc(r));
  load_weights(model, r);
  return model;
}

}  // namespace hybrid
