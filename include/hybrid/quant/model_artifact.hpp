// A whole model ↔ a quantised artifact: quantise every tensor by its role's spec
// (quant/policy.hpp) into an Artifact (quant/artifact.hpp), and load an Artifact into a model
// that evaluates and generates on the int8 inference storage, holding the artifact's own
// integer values and scales.
//
//   Artifact a = quantize_model(model, policy);          // small tensors as float16
//   write_artifact("model.hybq", a);
//   RuntimeModel<float> m = load_artifact_model(read_artifact("model.hybq"));
//   RuntimeModel<float> lean = load_artifact_model(a, "model.hybq", {.float_copy = false});
//
// Loading: the float parameters are the dequantised values (q * scale, and the float16
// values of the small tensors), so a float forward computes exactly what the artifact
// holds; the quantised matrices also become int8 storage (layers/weight_store.hpp) with
// one scale per row, or per 32 columns for groups that are a multiple of 32 (a group of 64
// or 128 repeats its scale), so inference reads the artifact's integers. Groups that are
// not a multiple of 32 (nor the whole row) are left to the float path. A tensor with an LQER
// correction (quant/lqer.hpp: factors named <tensor>.lqer_a and <tensor>.lqer_b) loads as its
// dequantised values plus the factors' product, and its int8 storage is that sum quantised
// to int8 per row (the sum is not on the artifact's grid).
//
// With {.float_copy = false} the quantised matrices that go to int8 storage from the
// artifact's own integers are never dequantised: the model holds their integers and scales
// and the float tensors beside them, never the float size of the whole model, and runs
// inference only (RuntimeModel::release_packed_floats: saving, training and
// set_weight_storage refuse). It computes bit for bit what the default load computes after
// release_packed_floats. Tensors with an LQER correction and groups the storage cannot hold
// are dequantised as before; the first are then packed and their floats given back too.
#pragma once
#include <cmath>
#include <cstring>
#include <map>
#include <string>
#include <vector>

#include "../runtime_model.hpp"
#include "artifact.hpp"
#include "lqer.hpp"
#include "policy.hpp"
#include "quantize.hpp"

namespace hybrid::quant {

// Every parameter of `model` into an Artifact: the roles `policy` quantises as QTensors, the
// rest as float16 values. `model.desc()` and `policy.to_json()` go with them.
inline Artifact quantize_model(const RuntimeModel<float>& model, const QuantPolicy& policy) {
  Artifact a;
  a.desc = model.desc();
  a.policy = policy.to_json();
  model.visit([&](const std::string& n, const MatMap<float>& t, ParamRole role) {
    const TensorRole r = tensor_role(n, role);
    if (const QuantSpec* s = policy.spec_for(r)) {
      QuantSpec spec = *s;
      if (spec.group > 0 && t.cols() % spec.group != 0) spec.group = 0;  // a row per scale
      a.tensors.push_back(ArtifactTensor::quantized(n, quantize(t.data(), t.rows(), t.cols(), spec), DType::F16,
                                                    role_name(r)));
    } else {
      std::vector<Index> shape = t.rows() == 1 ? std::vector<Index>{t.cols()} : std::vector<Index>{t.rows(), t.cols()};
      a.tensors.push_back(ArtifactTensor::floats(n, std::move(shape), std::vector<float>(t.data(), t.data() + t.size()),
                                                 DType::F16, role_name(r)));
    }
  });
  return a;
}

// How load_artifact_model fills the model.
struct ArtifactLoadOptions {
  // false: no float copy of the tensors whose int8 storage is the artifact's integers (see
  // above); the model is for inference only.
  bool float_copy = true;
};

// The model an artifact holds; every parameter must be there with its shape, and nothing
// else. `what` names the artifact in errors.
inline RuntimeModel<float> load_artifact_model(const Artifact& a, const std::string& what = "artifact",
                                               const ArtifactLoadOptions& o = {}) {
  RuntimeModel<float> m(a.desc, RuntimeModel<float>::Unfilled{});  // every tensor comes from the artifact
  std::map<std::string, const ArtifactTensor*> by_name;
  for (const auto& t : a.tensors) by_name[t.name] = &t;
  std::size_t used = 0;
  // An LQER correction of tensor n: quantised factors n + kLqerA and n + kLqerB.
  const auto factor = [&](const std::string& n, const char* suffix) -> const ArtifactTensor* {
    const auto it = by_name.find(n + suffix);
    if (it == by_name.end()) return nullptr;
    HYBRID_CHECK(it->second->kind == ArtifactTensor::Kind::Quantized, what, ": LQER factor '", n + suffix,
                 "' is stored as floats; expected quantised factors");
    return it->second;
  };
  std::map<std::string, bool> corrected;
  // Groups the int8 storage holds: the whole row, or multiples of its 32-column blocks.
  auto storable = [](const QTensor& q) { return q.group == q.cols || q.group % 32 == 0; };
  m.visit([&](const std::string& n, MatMap<float>& dst, ParamRole role) {
    const auto it = by_name.find(n);
    HYBRID_CHECK(it != by_name.end(), what, ": tensor '", n, "' is missing (the model description has it)");
    const ArtifactTensor& t = *it->second;
    ++used;
    if (t.kind == ArtifactTensor::Kind::Quantized) {
      t.q.check(what.c_str());
      HYBRID_CHECK(t.q.rows == dst.rows() && t.q.cols == dst.cols(), what, ": tensor '", n, "' is (", t.q.rows, ", ",
                   t.q.cols, "), the model has (", dst.rows(), ", ", dst.cols(), ")");
      const ArtifactTensor *fa = factor(n, kLqerA), *fb = factor(n, kLqerB);
      HYBRID_CHECK(!fa == !fb, what, ": tensor '", n, "' has only one of its two LQER factors (", kLqerA, ", ",
                   kLqerB, ")");
      // The tensors the int8 storage below takes from the artifact's integers (the storage
      // holds projections, the embedding and the head only: any other quantised tensor, a norm
      // say, keeps its floats).
      const bool to_storage = (role == ParamRole::Matrix || role == ParamRole::Embedding) && storable(t.q) && !fa;
      if (!o.float_copy && to_storage) {
        // No float values: check what check_finite would have caught in them (q * scale).
        const float qm = float(qmax_of(t.q.bits));
        for (std::size_t k = 0; k < t.q.scales.size(); ++k)
          HYBRID_CHECK(std::isfinite(t.q.scales[k] * qm), what, ": tensor '", n, "' has scale ", t.q.scales[k],
                       " for group ", k, "; every value scale * q must be finite");
        return;
      }
      dequantize(t.q, dst.data());
      if (fa) {
        add_correction(fa->q, fb->q, dst.data(), dst.rows(), dst.cols(), (what + ": LQER of '" + n + "'").c_str());
        corrected[n] = true;
        used += 2;
      }
    } else {
      Index numel = 1;
      for (Index d : t.shape) numel *= d;
      HYBRID_CHECK(numel == dst.size() && t.values.size() == std::size_t(numel), what, ": tensor '", n, "' holds ",
                   t.values.size(), " values, the model's is (", dst.rows(), ", ", dst.cols(), ")");
      std::copy(t.values.begin(), t.values.end(), dst.data());
    }
  });
  HYBRID_CHECK(used == a.tensors.size(), what, ": ", a.tensors.size() - used,
               " tensors are not part of the model the description gives (e.g. '",
               [&] {
                 for (const auto& t : a.tensors) {
                   bool found = false;
                   m.visit([&](const std::string& n, const MatMap<float>&, ParamRole) {
                     found |= n == t.name ||
                              (corrected.count(n) && (t.name == n + kLqerA || t.name == n + kLqerB));
                   });
                   if (!found) return t.name;
                 }
                 return std::string();
               }(),
               "')");
  m.check_finite();
  // The int8 storage from the artifact's integers.
  m.set_weight_storage_each(
      [&](const ParamInfo& e) -> WeightStore::Choice {
        const auto it = by_name.find(e.name);
        if (it == by_name.end() || it->second->kind != ArtifactTensor::Kind::Quantized || !storable(it->second->q))
          return {DType::F32, 0};
        if (corrected.count(e.name)) return {DType::I8, 0};  // Q + A B is off the grid: int8 per row of it
        const QTensor& q = it->second->q;
        return {DType::I8, q.group == q.cols ? 0 : 32};
      },
      [&](const ParamInfo& e, unsigned char* data, float* scales) {
        if (corrected.count(e.name)) return false;  // packed from the corrected float values
        const QTensor& q = by_name.at(e.name)->q;
        std::memcpy(data, q.q.data(), q.q.size());
        const Index g = q.group == q.cols ? 1 : q.cols / 32, rep = q.group == q.cols ? 1 : q.group / 32;
        for (Index r = 0; r < q.rows; ++r)
          for (Index k = 0; k < g; ++k) scales[r * g + k] = q.scales[std::size_t(r * q.groups_per_row() + k / rep)];
        return true;
      });
  if (!o.float_copy && m.weight_store()) m.release_packed_floats();
  return m;
}

}  // namespace hybrid::quant
