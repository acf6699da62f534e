// Training checkpoints: one safetensors file per save holding the parameters (as
// save_model writes them, so generate --weights and load_model read it), the optimiser
// state, the EMA weights and, with feature distillation, the learned feature maps and their
// optimiser state as "state.*" tensors, and in the metadata the step, the data
// position (sampler RNG included) and the model desc. Written atomically (temporary file,
// fsync, rename), so a crash mid-save never corrupts the previous checkpoint; only the last
// `keep` files step_NNNNNNNN.safetensors of a directory are kept.
#pragma once
#include <algorithm>
#include <filesystem>
#include <string>
#include <vector>

#include "../io/checkpoint.hpp"
#include "trainer.hpp"

namespace hybrid::train {

namespace ckpt_names {
inline std::string file_for_step(const std::string& dir, std::int64_t step) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "step_%08lld.safetensors", (long long)step);
  return (std::filesystem::path(dir) / buf).string();
}
// step_*.safetensors in dir, sorted by step. A writer's temporary (*.tmp.<pid>) is not a
// checkpoint: counting it would let keep-last-N delete a finished file for it.
inline std::vector<std::string> list(const std::string& dir) {
  std::vector<std::string> out;
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator(dir, ec)) {
    const std::string n = e.path().filename().string();
    if (n.rfind("step_", 0) == 0 && n.size() > 17 && n.ends_with(".safetensors") &&
        n.find(".tmp.") == std::string::npos)
      out.push_back(e.path().string());
  }
  std::sort(out.begin(), out.end());
  return out;
}
}  // namespace ckpt_names

template <class S>
void save_training(Trainer<S>& tr, const std::string& path) {
  std::vector<TensorRef> extra;
  auto add = [&](const std::string& name, const MatMap<S>& t) {
    extra.push_back({std::string(state_prefix) + name, dtype_of<S>(),
                     {std::int64_t(t.rows()), std::int64_t(t.cols())}, t.data()});
  };
  tr.optimizer().visit_state([&](const std::string& n, MatMap<S>& t) { add("optim." + n, t); });
  if (tr.ema()) tr.ema()->visit_state([&](const std::string& n, MatMap<S>& t) { add(n, t); });  // "ema.<param>"
  if (Optimizer<S>* fo = tr.feature_map_optimizer()) {  // "kd_features.<pair>.weight" and its state
    FeatureMaps<S>& maps = *tr.feature_maps();
    for (const ParamInfo& e : maps.param_table().entries()) {
      const MatMap<S> t(maps.param_values() + e.offset, e.rows, e.cols);
      add(e.name, t);
    }
    fo->visit_state([&](const std::string& n, MatMap<S>& t) { add("kd_features.optim." + n, t); });
  }
  save_model(tr.model(), path,
             {{"train.step", std::to_string(tr.optimizer().steps())},
              {"train.data_state", tr.data().state()},
              {"train.data", tr.data().describe()}},
             extra);
}

// Saves step_<step>.safetensors into dir (created if needed) and deletes all but the
// newest `keep` checkpoints there. Returns the path written.
template <class S>
std::string save_training_in(Trainer<S>& tr, const std::string& dir, int keep) {
  std::filesystem::create_directories(dir);
  const std::string path = ckpt_names::file_for_step(dir, tr.optimizer().steps());
  save_training(tr, path);
  auto files = ckpt_names::list(dir);
  for (std::size_t i = 0; keep > 0 && i + std::size_t(keep) < files.size(); ++i)
    std::filesystem::remove(files[i]);
  return path;
}

// The newest checkpoint in dir, or path itself when it is a file.
inline std::string resolve_checkpoint(const std::string& path) {
  if (!std::filesystem::is_directory(path)) {
    HYBRID_CHECK(std::filesystem::exists(path), "resume: no checkpoint at '", path, "'");
    return path;
  }
  const auto files = ckpt_names::list(path);
  HYBRID_CHECK(!files.empty(), "resume: directory '", path, "' holds no step_*.safetensors");
  return files.back();
}

// Restores weights, optimiser state, EMA, step and data position. The file's layout and
// every tensor shape must match the trainer's model (errors name both).
template <class S>
void load_training(Trainer<S>& tr, const std::string& path) {
  SafetensorsReader r(path);
  load_weights(tr.model(), r);
  auto restore = [&](const std::string& name, MatMap<S>& t) {
    const std::string full = std::string(state_prefix) + name;
    const TensorInfo* info = r.find(full);
    HYBRID_CHECK(info, "checkpoint '", path, "': training state tensor '", full,
                 "' is missing (saved with another optimiser, EMA or --kd-features setting?)");
    const std::vector<std::int64_t> want{std::int64_t(t.rows()), std::int64_t(t.cols())};
    HYBRID_CHECK(info->shape == want, "checkpoint '", path, "': '", full, "' has shape ",
                 st_detail::shape_str(info->shape), " in the file but ", st_detail::shape_str(want),
                 " in this run");
    r.read(*info, t.data());
  };
  tr.optimizer().visit_state([&](const std::string& n, MatMap<S>& t) { restore("optim." + n, t); });
  if (tr.ema()) tr.ema()->visit_state([&](const std::string& n, MatMap<S>& t) { restore(n, t); });
  Optimizer<S>* fo = tr.feature_map_optimizer();
  if (fo) {
    FeatureMaps<S>& maps = *tr.feature_maps();
    for (const ParamInfo& e : maps.param_table().entries()) {
      MatMap<S> t(maps.param_values() + e.offset, e.rows, e.cols);
      restore(e.name, t);
    }
    fo->visit_state([&](const std::string& n, MatMap<S>& t) { restore("kd_features.optim." + n, t); });
  }
  const auto& md = r.metadata();
  auto step = md.find("train.step");
  auto data = md.find("train.data_state");
  HYBRID_CHECK(step != md.end() && data != md.end(), "checkpoint '", path,
               "': no train.step / train.data_state metadata (a weights-only file: use --weights)");
  tr.optimizer().set_steps(std::stoll(step->second));
  if (fo) fo->set_steps(std::stoll(step->second));
  tr.data().set_state(data->second);
}

}  // namespace hybrid::train
