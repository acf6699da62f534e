// A whole model through a quantised artifact (quant/model_artifact.hpp): quantise by role,
// write, read, load; the loaded model's int8 storage holds the artifact's integers and
// computes what its dequantised values compute.
#include <doctest/doctest.h>

#include <hybrid/aliases.hpp>
#include <hybrid/model.hpp>
#include <hybrid/quant/model_artifact.hpp>
#include <limits>

using namespace hybrid;
using namespace hybrid::quant;

// This file's own namespace: the tests compile in batches (tests/CMakeLists.txt).
namespace hybrid_test_model_artifact {

namespace {
const std::vector<int> kIds = {256, 72, 101, 108, 108, 111, 10, 33, 200, 5};
Mat<float> logits(const RuntimeModel<float>& m) { return m.forward(kIds, 1, Index(kIds.size())); }

Artifact round_trip(const Artifact& a) {
  ArtifactOptions o;
  o.codecs = {Codec::Raw, Codec::Zstd};  // quick
  const std::string b = artifact_bytes(a, o);
  return read_artifact_memory(b.data(), b.size(), "test");
}
}  // namespace

TEST_CASE("quantised artifact of a whole model: roles, int8 storage from the artifact's integers") {
  const RuntimeModel<float> m(TinyGolf15x3E2::desc(), 3);
  double prev = 0;  // error at the previous (larger) width
  for (const QuantSpec spec : {QuantSpec{.bits = 8}, QuantSpec{.bits = 6, .rule = ScaleRule::MseClip, .group = 32},
                               QuantSpec{.bits = 4, .rule = ScaleRule::SdClip, .sd_k = 3.0, .group = 64}}) {
    CAPTURE(spec.bits);
    QuantPolicy p;
    p.set_all(spec);
    const Artifact a = round_trip(quantize_model(m, p));
    CHECK(a.policy["mlp"]["bits"] == spec.bits);
    const RuntimeModel<float> q = load_artifact_model(a);
    REQUIRE(q.weight_store());
    Index matrices = 0;
    for (const auto& e : q.param_table().entries()) matrices += e.role == ParamRole::Matrix || e.role == ParamRole::Embedding;
    CHECK(q.weight_store()->tensors() == matrices);
    // The stored integers are the artifact's.
    for (const auto& t : a.tensors) {
      if (t.kind != ArtifactTensor::Kind::Quantized) continue;
      const ParamInfo* e = nullptr;
      for (const auto& x : q.param_table().entries())
        if (x.name == t.name) e = &x;
      REQUIRE(e);
      const ops::QWeight w = q.weight_store()->find(Param{e->offset, e->rows, e->cols});
      REQUIRE(w);
      for (Index r = 0; r < e->rows; r += 7)
        for (Index c = 0; c < e->cols; c += 5) {
          CHECK(std::int8_t(w.row(r)[c]) == t.q.q[std::size_t(r * e->cols + c)]);
          CHECK(w.at(r, c) == t.q.value(r, c));
        }
    }
    // int8 storage and the dequantised floats compute the same logits; near the float model.
    RuntimeModel<float> deq = q;
    deq.set_weight_storage(DType::F32);
    const Mat<float> a0 = logits(m), a1 = logits(q), a2 = logits(deq);
    CHECK((a1 - a2).cwiseAbs().maxCoeff() < 1e-5);
    // Without its float copy the artifact's model computes the same from its integers.
    RuntimeModel<float> lean = q;
    CHECK(lean.release_packed_floats() > 0);
    CHECK(logits(lean) == a1);
    const double err = (a0 - a1).cwiseAbs().maxCoeff() / a0.cwiseAbs().maxCoeff();
    MESSAGE(spec.bits, " bits: max logit error ", err, " of the largest logit");
    // A random 18-block model amplifies weight noise; fewer bits, larger error.
    CHECK(err < (spec.bits >= 8 ? 0.1 : spec.bits >= 6 ? 0.3 : 1.0));
    CHECK(err > prev);
    prev = err;
  }
}

// {.float_copy = false}: the matrices go from the artifact's integers to storage without
// being dequantised; the model computes what the default load computes after
// release_packed_floats, refuses what needs the floats, and a bad scale is still an error.
TEST_CASE("quantised artifact of a whole model: loading without the float copy") {
  const RuntimeModel<float> m(TinyGolf15x3E2::desc(), 4);
  QuantPolicy p;
  p.set_all(QuantSpec{.bits = 6, .group = 32});
  p.mlp.group = 16;  // not a multiple of 32: the float path
  const Artifact a = round_trip(quantize_model(m, p));
  RuntimeModel<float> full = load_artifact_model(a);
  const Mat<float> want = logits(full);
  const std::size_t full_stored = full.weight_store()->bytes();
  full.release_packed_floats();
  CHECK(logits(full) == want);
  const RuntimeModel<float> lean = load_artifact_model(a, "lean.hybq", {.float_copy = false});
  CHECK(lean.floats_released());
  REQUIRE(lean.weight_store());
  CHECK(lean.weight_store()->bytes() == full_stored);
  CHECK(logits(lean) == want);
  const std::vector<int> tok{65};
  std::vector<SequenceState<float>> s1, s2;
  full.prefill({kIds}, s1);
  lean.prefill({kIds}, s2);
  CHECK(full.step(tok, s1) == lean.step(tok, s2));
  CHECK_THROWS_WITH_AS(lean.visit([](const std::string&, const MatMap<float>&, ParamRole) {}),
                       doctest::Contains("release_packed_floats"), Error);
  // A non-finite scale of a tensor that skips the float values is caught all the same.
  Artifact bad = a;
  for (auto& t : bad.tensors)
    if (t.kind == ArtifactTensor::Kind::Quantized && t.q.group == 32) {
      t.q.scales[1] = std::numeric_limits<float>::infinity();
      break;
    }
  CHECK_THROWS_WITH_AS(load_artifact_model(bad, "bad.hybq", {.float_copy = false}),
                       doctest::Contains("has scale inf for group 1; every value scale * q must be finite"), Error);
  CHECK_THROWS_AS(load_artifact_model(bad, "bad.hybq"), Error);
  // A quantised tensor the storage does not take (a norm, here) keeps its float values.
  Artifact odd = a;
  bool swapped = false;
  for (auto& t : odd.tensors)
    if (t.kind == ArtifactTensor::Kind::Float && t.name.ends_with("norm.weight") && t.values.size() % 32 == 0) {
      t = ArtifactTensor::quantized(t.name, quantize(t.values.data(), 1, Index(t.values.size()), QuantSpec{.bits = 8}));
      swapped = true;
      break;
    }
  REQUIRE(swapped);
  RuntimeModel<float> odd_full = load_artifact_model(odd);
  odd_full.release_packed_floats();
  CHECK(logits(load_artifact_model(odd, "odd.hybq", {.float_copy = false})) == logits(odd_full));
}

TEST_CASE("quantised artifact of a whole model: small tensors as float16, the embedding by its own spec") {
  const RuntimeModel<float> m(TinyLfm2::desc(), 1);
  QuantPolicy p;
  p.quantize_embedding = false;
  const Artifact a = quantize_model(m, p);
  for (const auto& t : a.tensors) {
    CAPTURE(t.name);
    const bool small = t.name.find("norm") != std::string::npos || t.name.find("conv.weight") != std::string::npos;
    if (small || t.name == "embed.weight") CHECK(t.kind == ArtifactTensor::Kind::Float);
    else CHECK(t.kind == ArtifactTensor::Kind::Quantized);
  }
  CHECK(a.policy["embedding"] == "float16");
  CHECK(tensor_role("blocks.2.mixer.q_proj.weight", ParamRole::Matrix) == TensorRole::Attention);
  CHECK(tensor_role("blocks.0.mixer.in_proj.weight", ParamRole::Matrix) == TensorRole::Ssm);
  CHECK(tensor_role("blocks.0.channel.w2.weight", ParamRole::Matrix) == TensorRole::Mlp);
  CHECK(tensor_role("blocks.0.mixer.A_log", ParamRole::Dynamics) == TensorRole::Small);
  CHECK(tensor_role("embed.weight", ParamRole::Embedding) == TensorRole::Embedding);
}

TEST_CASE("quantised artifact of a whole model: a missing or extra tensor is an error naming it") {
  const RuntimeModel<float> m(TinyMamba::desc(), 2);
  Artifact a = quantize_model(m, QuantPolicy{});
  Artifact missing = a;
  missing.tensors.erase(missing.tensors.begin() + 3);
  CHECK_THROWS_WITH_AS(load_artifact_model(missing, "m.hybq"), doctest::Contains("m.hybq: tensor '"), Error);
  Artifact extra = a;
  extra.tensors.push_back(ArtifactTensor::floats("blocks.9.mixer.D", {4}, {1, 2, 3, 4}));
  CHECK_THROWS_WITH_AS(load_artifact_model(extra, "m.hybq"), doctest::Contains("'blocks.9.mixer.D'"), Error);
}

}  // namespace hybrid_test_model_artifact
