// Hugging Face checkpoints beyond parity: save_hf round trips, the typed loader, and bad
// input (config.json fields missing or contradictory, missing / extra / mis-shaped tensors)
// giving errors that name the file, the field or tensor and what was expected.
#include <doctest/doctest.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <hybrid/hf/checkpoint.hpp>
#include <hybrid/model.hpp>

using namespace hybrid;
namespace fs = std::filesystem;
using nlohmann::json;

#include "test_util.hpp"
using namespace hybrid::test_util;

// This file's own namespace: the tests compile in batches (tests/CMakeLists.txt).
namespace hybrid_test_hf_io {

namespace {

const fs::path kHf = fs::path(HYBRID_FIXTURES_DIR) / "hf";

json read_json(const fs::path& p) {
  std::ifstream in(p);
  return hf::parse_config_text(std::string(std::istreambuf_iterator<char>(in), {}), p.string());
}

// Copies a fixture's checkpoint (config.json + model.safetensors) into a temp dir.
void copy_checkpoint(const std::string& name, const fs::path& to) {
  for (const char* f : {"config.json", "model.safetensors"})
    fs::copy_file(kHf / name / f, to / f, fs::copy_options::overwrite_existing);
}

// Rewrites dir/model.safetensors through `edit`, which may drop, add or reshape tensors.
template <class Edit>
void rewrite_tensors(const fs::path& dir, Edit&& edit) {
  std::vector<std::string> names;
  std::vector<std::vector<std::int64_t>> shapes;
  std::vector<std::vector<float>> data;
  {
    SafetensorsReader r((dir / "model.safetensors").string());
    for (const auto& t : r.tensors()) {
      names.push_back(t.name);
      shapes.push_back(t.shape);
      data.emplace_back(std::size_t(t.numel()));
      r.read(t, data.back().data());
    }
  }
  edit(names, shapes, data);
  std::vector<TensorRef> refs;
  for (std::size_t i = 0; i < names.size(); ++i) refs.push_back({names[i], Dtype::F32, shapes[i], data[i].data()});
  write_safetensors((dir / "model.safetensors").string(), refs, {{"format", "pt"}});
}

// The LFM2 fixture as a compile-time type.
using LfmC = Block<ShortConv<ShortConvSpec{.L = 3}>, SwiGLU<48>>;
using LfmA = Block<GQA<GqaSpec{.n_heads = 4, .n_kv_heads = 2, .head_dim = 8, .rope_theta = 1e6, .qk_norm = true}>,
                   SwiGLU<48>>;
using FixtureLfm2 = Model<Config<ModelSpec{.vocab = 64, .d_model = 32}>, LfmC, LfmA, LfmC, LfmA>;
using WrongLfm2 = Model<Config<ModelSpec{.vocab = 64, .d_model = 32}>, LfmC, LfmA, LfmC,
                       Block<GQA<GqaSpec{.n_heads = 4, .n_kv_heads = 4, .head_dim = 8, .rope_theta = 1e6,
                                         .qk_norm = true}>, SwiGLU<48>>>;

}  // namespace

TEST_CASE("hf io: save_hf then load_hf gives the same model, for every fixture") {
  for (const auto& e : fs::directory_iterator(kHf)) {
    if (!e.is_directory()) continue;
    CAPTURE(e.path().filename().string());
    const RuntimeModel<float> a = hf::load_hf<float>(e.path().string());
    TempDir t;
    hf::save_hf(a, t.dir.string());
    const hf::HfCheckpoint ck(t.dir.string());
    CHECK(ck.config().family == hf::HfCheckpoint(e.path().string()).config().family);
    const RuntimeModel<float> b = hf::load_hf<float>(t.dir.string());
    CHECK(b.layout_string() == a.layout_string());
    std::vector<const MatMap<float>*> wa, wb;
    a.visit([&](const std::string&, const MatMap<float>& m, ParamRole) { wa.push_back(&m); });
    b.visit([&](const std::string&, const MatMap<float>& m, ParamRole) { wb.push_back(&m); });
    REQUIRE(wa.size() == wb.size());
    for (std::size_t i = 0; i < wa.size(); ++i) CHECK(*wa[i] == *wb[i]);
    // The written tensor names are exactly the original checkpoint's.
    SafetensorsReader orig((e.path() / "model.safetensors").string()), ours((t.dir / "model.safetensors").string());
    std::set<std::string> no, nw;
    for (const auto& x : orig.tensors()) no.insert(x.name);
    for (const auto& x : ours.tensors()) nw.insert(x.name);
    CHECK(no == nw);
  }
}

TEST_CASE("hf io: the typed loader checks the type against config.json") {
  const std::string dir = (kHf / "lfm2").string();
  const FixtureLfm2 typed = hf::load_hf<FixtureLfm2>(dir);
  const RuntimeModel<float> rt = hf::load_hf<float>(dir);
  const std::vector<int> ids{1, 5, 9, 33, 2, 60, 7};
  CHECK(typed.forward(ids, 1, 7) == rt.forward(ids, 1, 7));
  const std::string err = error_of([&] { (void)hf::load_hf<WrongLfm2>(dir); });
  CHECK(contains(err, "n_kv_heads"));
  CHECK(contains(err, "blocks[3]"));
  CHECK(contains(err, "config.json"));
}

TEST_CASE("hf io: config.json errors name the file and the field") {
  const json good = read_json(kHf / "granite_rope_g2_multipliers" / "config.json");
  auto err = [&](auto&& edit) {
    json j = good;
    edit(j);
    return error_of([&] { (void)hf::config_from_json(j, "config.json 'x/config.json'"); });
  };
  CHECK(err([](json&) {}).empty());
  std::string e = err([](json& j) { j.erase("hidden_size"); });
  CHECK(contains(e, "x/config.json"));
  CHECK(contains(e, "'hidden_size': missing"));
  e = err([](json& j) { j["num_local_experts"] = 8; });
  CHECK(contains(e, "mixture of experts not supported"));
  e = err([](json& j) { j["num_hidden_layers"] = 5; });
  CHECK(contains(e, "layer_types lists 4 layers but num_hidden_layers is 5"));
  e = err([](json& j) { j["layer_types"][2] = "moe"; });
  CHECK(contains(e, "layer_types[2]"));
  e = err([](json& j) { j["mamba_d_head"] = 8; });
  CHECK(contains(e, "contradicts d_inner"));
  e = err([](json& j) { j["model_type"] = "llama"; });
  CHECK(contains(e, "\"llama\" is not supported"));
  e = err([](json& j) { j["architectures"] = {"Mamba2ForCausalLM"}; });
  CHECK(contains(e, "contradicts architectures[0]"));
  e = err([](json& j) { j["hidden_act"] = "gelu"; });
  CHECK(contains(e, "hidden_act"));
  e = err([](json& j) { j["rope_parameters"]["rope_type"] = "yarn"; });
  CHECK(contains(e, "rope_type"));
  e = err([](json& j) { j["hidden_size"] = "32"; });
  CHECK(contains(e, "'hidden_size': expected an integer, got \"32\""));
  e = err([](json& j) { j["num_key_value_heads"] = 3; });
  CHECK(contains(e, "num_key_value_heads 3 does not divide num_attention_heads 4"));
  e = err([](json& j) { j["time_step_limit"] = {0.0}; });
  CHECK(contains(e, "time_step_limit"));

  // Python's json writes inf as a bare Infinity; transformers 5 as {"__float__": ...}.
  const json legacy = hf::parse_config_text(
      R"({"model_type": "mamba2", "vocab_size": 16, "hidden_size": 8, "num_hidden_layers": 1,
          "state_size": 4, "num_heads": 2, "head_dim": 8, "expand": 2, "n_groups": 1,
          "time_step_limit": [0.0, Infinity], "note": "Infinity in a string stays"})",
      "legacy");
  const hf::HfConfig c = hf::config_from_json(legacy, "legacy");
  CHECK(std::isinf(std::get<Mamba2Spec>(c.desc.blocks[0].mixer).dt_limit_hi));
  CHECK(legacy["note"] == "Infinity in a string stays");
  CHECK(contains(error_of([] { (void)hf::parse_config_text("{\"a\": ", "cfg"); }), "not valid JSON"));
  CHECK(contains(error_of([] { (void)hf::parse_config_text("[1, 2]", "cfg"); }), "JSON object"));
}

TEST_CASE("hf io: missing, extra and mis-shaped tensors are named") {
  TempDir t;
  copy_checkpoint("granite_rope_g2_multipliers", t.dir);
  const std::string dir = t.dir.string();
  CHECK_NOTHROW((void)hf::load_hf<float>(dir));

  rewrite_tensors(t.dir, [](auto& n, auto& s, auto& d) {
    for (std::size_t i = 0; i < n.size(); ++i)
      if (n[i] == "model.layers.2.mamba.dt_bias") {
        n.erase(n.begin() + std::ptrdiff_t(i)), s.erase(s.begin() + std::ptrdiff_t(i)), d.erase(d.begin() + std::ptrdiff_t(i));
        break;
      }
  });
  std::string e = error_of([&] { (void)hf::load_hf<float>(dir); });
  CHECK(contains(e, "tensor 'model.layers.2.mamba.dt_bias' is missing"));
  CHECK(contains(e, dir));

  copy_checkpoint("granite_rope_g2_multipliers", t.dir);
  rewrite_tensors(t.dir, [](auto& n, auto& s, auto& d) {
    n.push_back("model.layers.0.mamba.extra");
    s.push_back({3});
    d.push_back({1, 2, 3});
  });
  e = error_of([&] { (void)hf::load_hf<float>(dir); });
  CHECK(contains(e, "unexpected tensor 'model.layers.0.mamba.extra'"));

  copy_checkpoint("granite_rope_g2_multipliers", t.dir);
  rewrite_tensors(t.dir, [](auto& n, auto& s, auto&) {
    for (std::size_t i = 0; i < n.size(); ++i)
      if (n[i] == "model.layers.1.self_attn.k_proj.weight") s[i] = {32, 16};
  });
  e = error_of([&] { (void)hf::load_hf<float>(dir); });
  CHECK(contains(e, "'model.layers.1.self_attn.k_proj.weight'"));
  CHECK(contains(e, "has shape [32, 16], expected [16, 32]"));

  // A missing config.json, and a directory that is not one.
  copy_checkpoint("granite_rope_g2_multipliers", t.dir);
  fs::remove(t.dir / "config.json");
  CHECK(contains(error_of([&] { (void)hf::load_hf<float>(dir); }), "config.json"));
  CHECK(contains(error_of([&] { (void)hf::load_hf<float>(dir + "/nope"); }), "is not a directory"));
}

TEST_CASE("hf io: save_hf refuses what a family cannot express, before writing") {
  TempDir t;
  // Golf15x3's Mamba-2 blocks have no channel and its attention blocks a ReLU² MLP: no
  // family has either next to attention.
  const Golf15x3 golf(0);
  const fs::path out = t.dir / "golf";
  std::string e = error_of([&] { hf::save_hf(golf, out.string()); });
  CHECK(contains(e, "GraniteMoeHybridForCausalLM: block 0 has no SwiGLU channel"));
  CHECK(!fs::exists(out));
  // transformers' configs take an integer Mamba-2 expand.
  const ModelDesc m15 = desc_from_layout("MM", ModelSpec{.vocab = 16, .d_model = 16},
                                         Mamba2Spec{.d_state = 4, .expand = 1.5, .headdim = 8}, GqaSpec{},
                                         ShortConvSpec{}, NoChannelSpec{}, NoChannelSpec{});
  e = error_of([&] { hf::save_hf(RuntimeModel<float>(m15), out.string()); });
  CHECK(contains(e, "Mamba2ForCausalLM: Mamba-2 expand 1.5 is not an integer"));
  CHECK(!fs::exists(out));
  // A block kind no family has together with Mamba-2.
  const ModelDesc mixed = desc_from_layout("MC", ModelSpec{.vocab = 16, .d_model = 8},
                                           Mamba2Spec{.d_state = 4, .headdim = 8}, GqaSpec{},
                                           ShortConvSpec{}, SwiGluSpec{{16}}, SwiGluSpec{{16}});
  e = error_of([&] { hf::save_hf(RuntimeModel<float>(mixed), (t.dir / "mixed").string()); });
  CHECK(contains(e, "mixes ShortConv and Mamba-2"));
  // Golf15x3E2 (expand 2, SwiGLU everywhere) is a GraniteMoeHybrid model.
  const TinyGolf15x3E2 tiny(3);
  hf::save_hf(tiny, (t.dir / "tiny").string());
  const hf::HfCheckpoint ck((t.dir / "tiny").string());
  CHECK(ck.config().family == hf::Family::GraniteHybrid);
  const RuntimeModel<double> back = hf::load_hf<double>((t.dir / "tiny").string());
  const std::vector<int> ids{3, 1, 4, 1, 5, 9, 2, 6};
  CHECK((back.forward(ids, 1, 8) - tiny.forward(ids, 1, 8)).cwiseAbs().maxCoeff() < 1e-5);
}

}  // namespace hybrid_test_hf_io
