// Initialisation from a trained model: the same model with the mixers of chosen blocks
// replaced by freshly initialised ones (an LFM2 or Granite-H checkpoint whose ShortConv or
// attention blocks become Mamba-2, as the LFM2-SSM design starts), everything else — the
// embedding, every norm, the untouched mixers, the MLPs, the head — copied over. The record
// says which tensors were copied and which are new, for the checkpoint's metadata; the
// student is then distilled from the original (train --init-from ... --teacher ...).
//
//   RuntimeModel<float> lfm2 = hf::load_hf<float>("LFM2-350M");
//   InitRecord rec;
//   RuntimeModel<float> student = replace_mixers(lfm2, {{{0, 1, 3}, Mamba2Spec{...}}}, 7, &rec);
#pragma once
#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "../core/error.hpp"
#include "../desc.hpp"
#include "../runtime_model.hpp"

namespace hybrid {

// Blocks (0-based) whose mixer becomes `mixer`.
struct MixerReplacement {
  std::vector<int> blocks;
  MixerDesc mixer;
};

struct InitRecord {
  std::vector<int> replaced;        // blocks with a new mixer, ascending
  std::vector<std::string> copied;  // tensors taken from the source, in table order
  std::vector<std::string> fresh;   // tensors initialised here (the new mixers')
  std::string layout_before, layout_after;

  nlohmann::json to_json() const {
    return {{"replaced_blocks", replaced}, {"copied", copied}, {"new", fresh},
            {"layout_before", layout_before}, {"layout_after", layout_after}};
  }
};

// "0,1,3:mamba2" → blocks {0, 1, 3} (ascending, each once, within [0, n_blocks)). The kind
// after the colon is returned in `kind` for the caller to turn into a spec.
inline std::vector<int> parse_block_list(const std::string& spec, int n_blocks, std::string& kind) {
  const auto colon = spec.rfind(':');
  HYBRID_CHECK(colon != std::string::npos && colon > 0 && colon + 1 < spec.size(), "--replace: '", spec,
               "' needs the form BLOCKS:KIND, e.g. 0,1,3:mamba2");
  kind = spec.substr(colon + 1);
  std::vector<int> out;
  std::size_t p = 0;
  const std::string list = spec.substr(0, colon);
  while (p <= list.size()) {
    const std::size_t q = std::min(list.find(',', p), list.size());
    const std::string item = list.substr(p, q - p);
    HYBRID_CHECK(!item.empty() && item.find_first_not_of("0123456789") == std::string::npos && item.size() < 10,
                 "--replace: '", item, "' in '", spec, "' is not a block index (0-based integers, comma-separated)");
    const int b = std::stoi(item);
    HYBRID_CHECK(b < n_blocks, "--replace: block ", b, " does not exist; the model has ", n_blocks,
                 " blocks (0 to ", n_blocks - 1, ")");
    HYBRID_CHECK(std::find(out.begin(), out.end(), b) == out.end(), "--replace: block ", b, " is listed twice");
    out.push_back(b);
    p = q + 1;
  }
  std::sort(out.begin(), out.end());
  return out;
}

// The model `src` with the listed blocks' mixers replaced; the new mixers are initialised as
// a model of the new description seeded with `seed` would have them, every other tensor is
// src's, bit for bit. A block may be replaced once over all replacements.
template <class S>
RuntimeModel<S> replace_mixers(const RuntimeModel<S>& src, const std::vector<MixerReplacement>& reps,
                               std::uint64_t seed, InitRecord* record = nullptr) {
  ModelDesc d = src.desc();
  std::vector<int> replaced;
  for (const MixerReplacement& r : reps) {
    HYBRID_CHECK(!r.blocks.empty(), "replace_mixers: a replacement lists no block");
    for (int b : r.blocks) {
      HYBRID_CHECK(b >= 0 && b < int(d.blocks.size()), "replace_mixers: block ", b, " does not exist; the model has ",
                   d.blocks.size(), " blocks");
      HYBRID_CHECK(std::find(replaced.begin(), replaced.end(), b) == replaced.end(), "replace_mixers: block ", b,
                   " is replaced twice");
      replaced.push_back(b);
      d.blocks[std::size_t(b)].mixer = r.mixer;
    }
  }
  std::sort(replaced.begin(), replaced.end());
  try {
    validate(d);
  } catch (const Error& e) {
    fail("replace_mixers: the new mixer does not fit this model: ", e.what());
  }
  RuntimeModel<S> out(d, seed);
  const auto is_new = [&](const std::string& name) {
    for (int b : replaced)
      if (name.rfind("blocks." + std::to_string(b) + ".mixer.", 0) == 0) return true;
    return false;
  };
  InitRecord rec;
  rec.replaced = replaced;
  rec.layout_before = src.layout_string();
  rec.layout_after = out.layout_string();
  src.require_floats("replace_mixers");
  const auto& from = src.param_table().entries();
  for (const ParamInfo& e : out.param_table().entries()) {
    if (is_new(e.name)) {
      rec.fresh.push_back(e.name);
      continue;
    }
    const auto it = std::find_if(from.begin(), from.end(), [&](const ParamInfo& f) { return f.name == e.name; });
    HYBRID_CHECK(it != from.end() && it->rows == e.rows && it->cols == e.cols, "replace_mixers: tensor '", e.name,
                 "' of the new model has no counterpart of shape (", e.rows, ", ", e.cols, ") in the source");
    std::copy(src.param_values() + it->offset, src.param_values() + it->offset + e.size(),
              out.param_values() + e.offset);
    rec.copied.push_back(e.name);
  }
  if (record) *record = std::move(rec);
  return out;
}

}  // namespace hybrid
