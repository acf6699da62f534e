// LoRA adapters (train/lora.hpp) and PEFT's layout (io/peft.hpp): module names per family,
// adapter gradients against finite differences (with dropout and gradient checkpointing),
// merge == unmerged forward and unmerge restoring the base, training that changes only the
// adapters, save/load round trips, refusals of bad files, and parity with PEFT on the
// committed fixtures (tests/fixtures/lora/, written by make_lora_fixtures.py).
#include <doctest/doctest.h>

#include <cstring>
#include <filesystem>
#include <set>
#include <string>
#include <vector>

#include <hybrid/hf/checkpoint.hpp>
#include <hybrid/io/peft.hpp>
#include <hybrid/model.hpp>
#include <hybrid/train/lora.hpp>
#include <hybrid/train/optim.hpp>

#include "grad_check.hpp"
#include "test_util.hpp"

using namespace hybrid;
using train::LoraAdapters;
using train::LoraConfig;
namespace fs = std::filesystem;

// This file's own namespace: the tests compile in batches (tests/CMakeLists.txt).
namespace hybrid_test_lora {

namespace {

const fs::path kHf = fs::path(HYBRID_FIXTURES_DIR) / "hf";
const fs::path kLora = fs::path(HYBRID_FIXTURES_DIR) / "lora";

template <class S>
void randomize_B(LoraAdapters<S>& l, std::uint64_t seed, double std = 0.3) {
  for (const auto& m : l.modules()) l.B(m) = test_util::random_mat<S>(m.out, l.config().rank, derive_seed(seed, m.name)) * S(std);
}

std::set<std::string> module_names(const std::vector<train::LoraModule>& mods) {
  std::set<std::string> s;
  for (const auto& m : mods) s.insert(m.name);
  return s;
}

}  // namespace

TEST_CASE("lora: module names follow the model's Hugging Face family") {
  RuntimeModel<float> lfm = hf::load_hf<float>((kHf / "lfm2").string());
  LoraAdapters<float> a(lfm, LoraConfig{.rank = 2, .targets = {"attn", "conv.out", "mlp.down"}});
  REQUIRE(a.family() == hf::Family::Lfm2);
  const auto names = module_names(a.modules());
  CHECK(names.count("model.layers.1.self_attn.q_proj"));
  CHECK(names.count("model.layers.1.self_attn.out_proj"));
  CHECK(names.count("model.layers.0.conv.out_proj"));
  CHECK(names.count("model.layers.3.feed_forward.w2"));
  CHECK(!names.count("model.layers.0.conv.in_proj"));
  CHECK(a.modules().size() == 2 * 4 + 2 + 4);  // 2 attention layers × q,k,v,o; 2 conv; 4 MLPs
  CHECK(a.param_table()[0].name.ends_with(".lora_A"));

  // Granite: the gate and up rows of shared_mlp.input_linear are one module with one A.
  RuntimeModel<float> gr = hf::load_hf<float>((kHf / "granite_rope_g2_multipliers").string());
  LoraAdapters<float> g(gr, LoraConfig{.rank = 3, .targets = {"mlp", "mamba"}});
  REQUIRE(g.family() == hf::Family::GraniteHybrid);
  const train::LoraModule* in = nullptr;
  for (const auto& m : g.modules())
    if (m.name == "model.layers.0.shared_mlp.input_linear") in = &m;
  REQUIRE(in);
  REQUIRE(in->parts.size() == 2);
  CHECK(in->out == 96);
  CHECK(in->parts[0].kind == "mlp.gate");
  CHECK(in->parts[1].row0 == 48);
  CHECK(module_names(g.modules()).count("model.layers.2.mamba.in_proj"));
  test_util::check_error([&] { LoraAdapters<float>(gr, LoraConfig{.targets = {"mlp.gate"}}); },
                         {"input_linear", "mlp.gate and mlp.up"});

  // A model no family expresses (gated attention) keeps our names.
  TinyHybrid18x6 h(1);
  LoraAdapters<double> o(h, LoraConfig{.targets = {"attn.gate", "mamba.in"}});
  CHECK(!o.family());
  CHECK(module_names(o.modules()).count("blocks.3.mixer.g_proj"));
  CHECK(module_names(o.modules()).count("blocks.0.mixer.in_proj"));

  test_util::check_error([&] { LoraAdapters<float>(lfm, LoraConfig{.targets = {"mamba"}}); },
                         {"target 'mamba'", "matches no projection"});
  test_util::check_error([&] { LoraAdapters<float>(lfm, LoraConfig{.targets = {"qkv"}}); },
                         {"unknown target 'qkv'", "attn.q"});
  test_util::check_error([&] { LoraAdapters<float>(lfm, LoraConfig{.rank = 0}); }, {"rank", ">= 1"});
  test_util::check_error([&] { LoraAdapters<float>(lfm, LoraConfig{.dropout = 1}); }, {"dropout", "[0, 1)"});
}

// d loss / d adapter against central differences; the base model gets no gradient at all.
static void check_adapter_gradients(RuntimeModel<double>& model, const LoraConfig& cfg, bool recompute) {
  CAPTURE(recompute);
  LoraAdapters<double> lora(model, cfg);
  randomize_B(lora, 5);
  GradStore<double> g(lora);
  const Index B = 2, T = 7;
  const auto toks = test_util::random_tokens(B * T, model.vocab(), 3);
  auto targets = test_util::random_tokens(B * T, model.vocab(), 4);
  targets[2] = -1;
  TrainingOptions o;
  o.recompute = recompute;
  lora.set_dropout_seed(11);
  Tape<double> tape(true, nullptr);
  tape.set_linear_adapter(lora.hook(&g));
  tape.backward(model.loss(tape, toks, targets, B, T, 0, o));

  Tape<double> eval(false);
  eval.set_linear_adapter(lora.hook(&g));  // the training hook: the same dropout masks
  auto L = [&] {
    eval.rewind();
    return model.loss(eval, toks, targets, B, T).v[0];
  };
  // Sampled coordinates of the whole adapter store, and a random direction through all of it
  // (dL/de = g · dir), so that every tensor's gradient counts at a few forwards' cost.
  double* w = lora.param_values();
  const Index n = lora.param_table().total();
  const auto r = testing::fd_check(w, g.data(), n, L, 12, 1e-6, 1e-4, 9);
  CHECK(r.max_abs_err < 1e-7);
  CHECK(r.max_rel_err < 1e-4);
  const Mat<double> dir = testing::random_weights(n, 1, 13) / std::sqrt(double(n));
  const double h = 1e-6;
  for (Index i = 0; i < n; ++i) w[i] += h * dir(i, 0);
  const double lp = L();
  for (Index i = 0; i < n; ++i) w[i] -= 2 * h * dir(i, 0);
  const double lm = L();
  for (Index i = 0; i < n; ++i) w[i] += h * dir(i, 0);
  const double numeric = (lp - lm) / (2 * h);
  const double analytic = Eigen::Map<const Eigen::VectorXd>(g.data(), n).dot(Eigen::Map<const Eigen::VectorXd>(dir.data(), n));
  CHECK(std::abs(numeric - analytic) < 1e-7 + 1e-5 * std::abs(numeric));
  const double gnorm = Eigen::Map<const Eigen::VectorXd>(g.data(), n).squaredNorm();
  CHECK(std::sqrt(gnorm) > 1e-3);
}

TEST_CASE("lora: adapter gradients match finite differences (LFM2: attention, ShortConv, MLP)") {
  RuntimeModel<double> m = hf::load_hf<double>((kHf / "lfm2").string());
  check_adapter_gradients(m, LoraConfig{.rank = 2, .alpha = 3, .dropout = 0.25, .targets = {"all"}}, false);
  check_adapter_gradients(m, LoraConfig{.rank = 2, .alpha = 3, .dropout = 0.25, .targets = {"all"}}, true);
}

TEST_CASE("lora: adapter gradients match finite differences (Granite: Mamba-2, fused gate|up)") {
  RuntimeModel<double> m = hf::load_hf<double>((kHf / "granite_rope_g2_multipliers").string());
  check_adapter_gradients(m, LoraConfig{.rank = 3, .alpha = 2, .dropout = 0.2, .targets = {"all"}, .rslora = true},
                          true);
}

TEST_CASE("lora: merged forward equals the unmerged one; unmerge restores the base") {
  RuntimeModel<double> m = hf::load_hf<double>((kHf / "granite_rope_g2_multipliers").string());
  const std::vector<double> base(m.param_values(), m.param_values() + m.param_table().total());
  LoraAdapters<double> lora(m, LoraConfig{.rank = 4, .alpha = 8, .dropout = 0.5, .targets = {"all"}});
  const Index B = 1, T = 9;
  const auto toks = test_util::random_tokens(B * T, m.vocab(), 8);
  const Mat<double> plain = m.forward(toks, B, T);
  Tape<double> t(false);
  t.set_linear_adapter(lora.hook());  // evaluation: no dropout
  auto adapted = [&] {
    t.rewind();
    return Mat<double>(m.logits(t, toks, B, T).val());
  };
  CHECK((adapted() - plain).cwiseAbs().maxCoeff() == 0);  // B = 0: the base model exactly
  randomize_B(lora, 2);
  const Mat<double> unmerged = adapted();
  CHECK((unmerged - plain).cwiseAbs().maxCoeff() > 1e-3);
  lora.merge();
  CHECK(lora.merged());
  const Mat<double> merged = m.forward(toks, B, T);
  CHECK((merged - unmerged).cwiseAbs().maxCoeff() < 1e-11);
  test_util::check_error([&] { lora.merge(); }, {"already merged"});
  test_util::check_error([&] { adapted(); }, {"merged", "twice"});
  lora.unmerge();
  double err = 0;
  for (std::size_t i = 0; i < base.size(); ++i) err = std::max(err, std::abs(m.param_values()[i] - base[i]));
  CHECK(err < 1e-14);
  CHECK((m.forward(toks, B, T) - plain).cwiseAbs().maxCoeff() < 1e-12);
  test_util::check_error([&] { lora.unmerge(); }, {"not merged"});
}

TEST_CASE("lora: training changes only the adapters, and the loss falls") {
  RuntimeModel<float> m = hf::load_hf<float>((kHf / "lfm2").string());
  const std::vector<float> base(m.param_values(), m.param_values() + m.param_table().total());
  LoraAdapters<float> lora(m, LoraConfig{.rank = 4, .alpha = 8, .dropout = 0.1, .targets = {"attn", "conv", "mlp"}});
  const std::vector<float> init(lora.param_values(), lora.param_values() + lora.param_table().total());
  GradStore<float> g(lora);
  train::Optimizer<float> opt(g, train::OptimConfig::adamw(1e-2, 0.0));
  Tape<float> tape(true, nullptr);
  tape.set_linear_adapter(lora.hook(&g));
  const Index B = 2, T = 12;
  const auto toks = test_util::random_tokens(B * T + 1, m.vocab(), 21);
  std::vector<int> x(toks.begin(), toks.end() - 1), y(toks.begin() + 1, toks.end());
  double first = 0, last = 0;
  for (int s = 0; s < 12; ++s) {
    g.zero();
    lora.set_dropout_seed(std::uint64_t(s));
    tape.rewind();
    TrainingOptions o;
    o.recompute = s % 2 == 1;
    const Var<float> loss = m.loss(tape, x, y, B, T, 0, o);
    (s == 0 ? first : last) = loss.v[0];
    tape.backward(loss);
    opt.step();
  }
  MESSAGE("lora training: loss ", first, " -> ", last);
  CHECK(last < first - 0.05);
  CHECK(std::memcmp(base.data(), m.param_values(), base.size() * sizeof(float)) == 0);
  for (const auto& e : lora.param_table().entries()) {
    CAPTURE(e.name);
    bool changed = false;
    for (Index i = 0; i < e.size(); ++i) changed = changed || lora.param_values()[e.offset + i] != init[std::size_t(e.offset + i)];
    CHECK(changed);
  }
}

TEST_CASE("lora: PEFT layout round trip") {
  test_util::TempDir tmp;
  RuntimeModel<float> m = hf::load_hf<float>((kHf / "lfm2").string());
  LoraAdapters<float> a(m, LoraConfig{.rank = 3, .alpha = 5, .dropout = 0.05, .targets = {"attn"}});
  randomize_B(a, 4);
  save_peft(a, tmp / "ad", "tests/fixtures/hf/lfm2");
  const auto cfg = read_json_file(tmp / "ad/adapter_config.json", "test", "json");
  CHECK(cfg["peft_type"] == "LORA");
  CHECK(cfg["task_type"] == "CAUSAL_LM");
  CHECK(cfg["r"] == 3);
  CHECK(cfg["lora_alpha"] == 5.0);
  CHECK(cfg["bias"] == "none");
  CHECK(cfg["base_model_name_or_path"] == "tests/fixtures/hf/lfm2");
  // out_proj alone would also select the unadapted ShortConv out_proj.
  const std::set<std::string> tm(cfg["target_modules"].begin(), cfg["target_modules"].end());
  CHECK(tm == std::set<std::string>{"k_proj", "q_proj", "self_attn.out_proj", "v_proj"});
  SafetensorsReader r(tmp / "ad/adapter_model.safetensors");
  const TensorInfo* q = r.find("base_model.model.model.layers.1.self_attn.q_proj.lora_B.weight");
  REQUIRE(q);
  CHECK(q->shape == std::vector<std::int64_t>{32, 3});
  CHECK(r.tensors().size() == 2 * a.modules().size());

  LoraAdapters<float> b(m, LoraConfig{.rank = 3, .alpha = 5, .targets = {"attn"}, .seed = 99});
  load_peft(b, tmp / "ad");
  CHECK(std::memcmp(a.param_values(), b.param_values(), sizeof(float) * std::size_t(a.param_table().total())) == 0);
  LoraAdapters<float> c = peft_adapters(m, tmp / "ad");
  CHECK(c.kinds() == std::vector<std::string>{"attn.q", "attn.k", "attn.v", "attn.o"});
  CHECK(c.config().dropout == doctest::Approx(0.05));
  CHECK(std::memcmp(a.param_values(), c.param_values(), sizeof(float) * std::size_t(a.param_table().total())) == 0);

  // Granite's fused module round trip.
  RuntimeModel<float> gr = hf::load_hf<float>((kHf / "granite_rope_g2_multipliers").string());
  LoraAdapters<float> ga(gr, LoraConfig{.rank = 2, .targets = {"mlp"}});
  randomize_B(ga, 6);
  save_peft(ga, tmp / "gr");
  LoraAdapters<float> gb = peft_adapters(gr, tmp / "gr");
  CHECK(gb.kinds() == std::vector<std::string>{"mlp.gate", "mlp.up", "mlp.down"});
  CHECK(std::memcmp(ga.param_values(), gb.param_values(), sizeof(float) * std::size_t(ga.param_table().total())) == 0);
}

TEST_CASE("lora: bad adapter files are refused with the reason") {
  test_util::TempDir tmp;
  RuntimeModel<float> m = hf::load_hf<float>((kHf / "lfm2").string());
  LoraAdapters<float> a(m, LoraConfig{.rank = 2, .targets = {"attn.q", "attn.v"}});
  save_peft(a, tmp / "ok");
  const std::string cfg = test_util::slurp(tmp / "ok/adapter_config.json");

  LoraAdapters<float> r4(m, LoraConfig{.rank = 4, .targets = {"attn.q", "attn.v"}});
  test_util::check_error([&] { load_peft(r4, tmp / "ok"); }, {"rank-2", "r = 4"});
  LoraAdapters<float> more(m, LoraConfig{.rank = 2, .targets = {"attn.q", "attn.v", "attn.k"}});
  test_util::check_error([&] { load_peft(more, tmp / "ok"); }, {"lacks tensor", "k_proj.lora_A.weight"});
  LoraAdapters<float> fewer(m, LoraConfig{.rank = 2, .targets = {"attn.q"}});
  test_util::check_error([&] { load_peft(fewer, tmp / "ok"); }, {"unexpected tensor", "v_proj"});
  test_util::check_error([&] { load_peft(a, tmp / "missing"); }, {"adapter_config.json"});

  auto variant = [&](const std::string& name, const std::string& from, const std::string& to) {
    fs::create_directories(tmp.dir / name);
    fs::copy_file(tmp / "ok/adapter_model.safetensors", tmp / (name + "/adapter_model.safetensors"));
    std::string c = cfg;
    const auto at = c.find(from);
    REQUIRE(at != std::string::npos);
    c.replace(at, from.size(), to);
    test_util::spit(tmp / (name + "/adapter_config.json"), c);
    return tmp / name;
  };
  test_util::check_error([&] { load_peft(a, variant("ia3", "\"LORA\"", "\"IA3\"")); }, {"peft_type", "\"LORA\""});
  test_util::check_error([&] { load_peft(a, variant("alpha", "\"lora_alpha\": 16.0", "\"lora_alpha\": 4.0")); },
                         {"lora_alpha 4", "alpha 16"});
  test_util::check_error([&] { load_peft(a, variant("dora", "\"use_dora\": false", "\"use_dora\": true")); },
                         {"use_dora", "plain LoRA"});
  test_util::check_error([&] { load_peft(a, variant("pattern", "\"rank_pattern\": {}", "\"rank_pattern\": {\"q_proj\": 8}")); },
                         {"rank_pattern"});

  // A tensor of the wrong shape.
  {
    fs::create_directories(tmp.dir / "shape");
    fs::copy_file(tmp / "ok/adapter_config.json", tmp / "shape/adapter_config.json");
    SafetensorsReader r(tmp / "ok/adapter_model.safetensors");
    std::vector<std::vector<float>> data;
    std::vector<TensorRef> refs;
    for (const auto& t : r.tensors()) {
      data.push_back(r.read<float>(t));
      std::vector<std::int64_t> shape = t.shape;
      if (t.name.ends_with("layers.1.self_attn.v_proj.lora_A.weight")) shape = {shape[1], shape[0]};
      refs.push_back({t.name, Dtype::F32, shape, data.back().data()});
    }
    write_safetensors(tmp / "shape/adapter_model.safetensors", refs);
    test_util::check_error([&] { load_peft(a, tmp / "shape"); }, {"v_proj.lora_A.weight", "[32, 2]", "expected [2, 32]"});
  }
}

// PEFT's own files on the committed checkpoints: our logits with the adapter equal PEFT's,
// merged and unmerged; what save_peft writes back holds PEFT's tensors bit for bit.
static void check_peft_case(const std::string& name) {
  CAPTURE(name);
  const fs::path dir = kLora / name;
  SafetensorsReader ex((dir / "expected.safetensors").string());
  const std::string base = ex.metadata().at("base");
  RuntimeModel<float> m = hf::load_hf<float>((kHf / base).string());
  LoraAdapters<float> lora = peft_adapters(m, dir.string());
  const auto idsf = ex.read<double>(*ex.find("ids"));
  const auto shape = ex.find("ids")->shape;
  const Index B = shape[0], T = shape[1];
  const std::vector<int> ids(idsf.begin(), idsf.end());
  auto max_err = [&](const Mat<float>& ours, const char* key) {
    const auto ref = ex.read<double>(*ex.find(key));
    REQUIRE(std::size_t(ours.size()) == ref.size());
    double e = 0;
    for (Index i = 0; i < ours.size(); ++i) e = std::max(e, std::abs(double(ours.data()[i]) - ref[std::size_t(i)]));
    return e;
  };
  Tape<float> t(false);
  t.set_linear_adapter(lora.hook());
  const Mat<float> adapted = m.logits(t, ids, B, T).val();
  const double e = max_err(adapted, "logits");
  MESSAGE(name, ": max |ours - PEFT| logits ", e);
  CHECK(e <= 1e-4);
  const Mat<float> plain = m.forward(ids, B, T);
  CHECK(max_err(plain, "logits") > 1e-2);  // the adapter matters
  lora.merge();
  const double em = max_err(m.forward(ids, B, T), "logits.merged");
  MESSAGE(name, ": merged max err ", em);
  CHECK(em <= 1e-4);
  lora.unmerge();

  test_util::TempDir tmp;
  save_peft(lora, tmp / "out");
  SafetensorsReader theirs((dir / "adapter_model.safetensors").string()), ours(tmp / "out/adapter_model.safetensors");
  REQUIRE(theirs.tensors().size() == ours.tensors().size());
  for (const auto& ti : theirs.tensors()) {
    CAPTURE(ti.name);
    const TensorInfo* oi = ours.find(ti.name);
    REQUIRE(oi);
    CHECK(oi->shape == ti.shape);
    CHECK(theirs.read<float>(ti) == ours.read<float>(*oi));
  }
  const auto tc = read_json_file(dir / "adapter_config.json", "test", "json");
  const auto oc = read_json_file(tmp / "out/adapter_config.json", "test", "json");
  for (const char* k : {"r", "lora_alpha", "lora_dropout", "peft_type", "task_type", "bias"}) CHECK(tc[k] == oc[k]);
}

TEST_CASE("lora: PEFT's adapters on the LFM2 fixture give PEFT's logits") { check_peft_case("lfm2_all"); }
TEST_CASE("lora: PEFT's adapters on the Granite fixture give PEFT's logits") {
  check_peft_case("granite_attn_mamba_mlp");
}

}  // namespace hybrid_test_lora
