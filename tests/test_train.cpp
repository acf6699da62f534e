// Training loop: resume from a checkpoint reproduces the uninterrupted run bit for bit;
// non-finite losses stop (or skip) without touching the weights; mismatched checkpoints
// name both sides; only the newest N checkpoints are kept; training learns a task.
#include <doctest/doctest.h>

#include <filesystem>
#include <fstream>
#include <hybrid/data/synthetic.hpp>
#include <hybrid/model.hpp>
#include <hybrid/train/checkpoint.hpp>

using namespace hybrid;

// This file's own namespace: the tests compile in batches (tests/CMakeLists.txt).
namespace hybrid_test_train {

namespace {
struct TmpDir {
  std::filesystem::path p;
  explicit TmpDir(const char* name) : p(std::filesystem::temp_directory_path() / name) {
    std::filesystem::remove_all(p);
    std::filesystem::create_directories(p);
  }
  ~TmpDir() { std::filesystem::remove_all(p); }
  std::string operator/(const char* f) const { return (p / f).string(); }
};

train::TrainConfig small_config() {
  train::TrainConfig c;
  c.batch = 2;
  c.seq_len = 32;
  c.steps = 6;
  c.grad_accum = 2;
  c.optim.max_grad_norm = 1.0;
  c.schedule = train::Schedule::warmup_cosine(2, 6, 0.1);
  c.ema_decay = 0.9;
  c.drop_path = 0.1;
  c.seed = 3;
  return c;
}
}  // namespace

TEST_CASE("train: resume gives bit-identical losses to an uninterrupted run") {
  TmpDir dir("hybrid_test_resume");
  std::vector<double> straight, resumed;
  {
    TinyHybrid18x6::rebind<float> model(1);
    auto src = data::make_mqar({.vocab = 258}, 5);
    train::Trainer<float> tr(model, *src, small_config());
    for (int i = 0; i < 6; ++i) straight.push_back(tr.step().loss);
  }
  {
    TinyHybrid18x6::rebind<float> model(1);
    auto src = data::make_mqar({.vocab = 258}, 5);
    train::Trainer<float> tr(model, *src, small_config());
    for (int i = 0; i < 3; ++i) resumed.push_back(tr.step().loss);
    train::save_training_in(tr, dir.p.string(), 2);
  }
  {
    TinyHybrid18x6::rebind<float> model(99);  // different init: everything comes from the file
    auto src = data::make_mqar({.vocab = 258}, 77);
    train::Trainer<float> tr(model, *src, small_config());
    train::load_training(tr, train::resolve_checkpoint(dir.p.string()));
    CHECK(tr.optimizer().steps() == 3);
    for (int i = 0; i < 3; ++i) resumed.push_back(tr.step().loss);
  }
  REQUIRE(resumed.size() == straight.size());
  for (std::size_t i = 0; i < straight.size(); ++i) {
    CAPTURE(i);
    CHECK(resumed[i] == straight[i]);  // exact
  }
  CHECK(straight.front() != straight.back());
}

TEST_CASE("train: a non-finite loss stops with the last good weights, or is skipped") {
  TinyMamba::rebind<float> model(1);
  auto src = data::make_mqar({.vocab = 258}, 5);
  auto cfg = small_config();
  train::Trainer<float> tr(model, *src, cfg);
  tr.step();
  std::vector<Mat<float>> before;
  model.visit([&](const std::string&, const MatMap<float>& t, ParamRole) { before.push_back(t); });
  model.visit([](const std::string& n, MatMap<float>& t, ParamRole) {
    if (n == "blocks.0.mixer.out_proj.weight") t(0, 0) = std::numeric_limits<float>::infinity();
  });
  CHECK_THROWS_WITH_AS(tr.step(), doctest::Contains("non-finite"), Error);
  std::size_t i = 0;
  bool untouched = true;
  model.visit([&](const std::string& n, const MatMap<float>& t, ParamRole) {
    if (n != "blocks.0.mixer.out_proj.weight") untouched = untouched && t == before[i];
    ++i;
  });
  CHECK(untouched);

  cfg.skip_nonfinite = true;
  train::Trainer<float> tr2(model, *src, cfg);
  const auto r = tr2.step();
  CHECK(r.skipped);
  CHECK(tr2.optimizer().steps() == 1);
}

TEST_CASE("train: checkpoints of another layout or shape are refused, naming both") {
  TmpDir dir("hybrid_test_mismatch");
  TinyHybrid18x6::rebind<float> a(1);
  auto src = data::make_mqar({.vocab = 258}, 5);
  train::Trainer<float> ta(a, *src, small_config());
  ta.step();
  train::save_training(ta, dir / "a.safetensors");

  TinyGolf15x3::rebind<float> b(1);
  train::Trainer<float> tb(b, *src, small_config());
  CHECK_THROWS_WITH_AS(train::load_training(tb, dir / "a.safetensors"),
                       doctest::Contains("layout mismatch: the file holds layout \"MMMAMMMA\" but the model's layout is \"MMMMMMMMMMMMAAAMMM\""),
                       Error);
  // Same layout, other width.
  ModelDesc wide = TinyHybrid18x6::desc();
  wide.model.d_model = 48;
  RuntimeModel<float> c(wide, 1);
  train::Trainer<float> tc(c, *src, small_config());
  CHECK_THROWS_WITH_AS(train::load_training(tc, dir / "a.safetensors"),
                       doctest::Contains("tensor 'embed.weight' has shape [258, 32] in the file but [258, 48] in the model"),
                       Error);
}

TEST_CASE("train: keeps only the newest N checkpoints; the weights load in generate's loader") {
  TmpDir dir("hybrid_test_keep");
  TinyMamba::rebind<float> model(1);
  auto src = data::make_mqar({.vocab = 258}, 5);
  train::Trainer<float> tr(model, *src, small_config());
  // Writers' temporaries of later steps are not checkpoints: counted, they would displace
  // steps 3 and 4 from the newest two.
  const std::string temps[] = {dir / "step_00000009.safetensors.tmp.4194305",
                               dir / "step_00000008.safetensors.tmp.1"};
  for (const auto& t : temps) std::ofstream(t) << "partial";
  for (int i = 0; i < 4; ++i) {
    tr.step();
    train::save_training_in(tr, dir.p.string(), 2);
  }
  const auto files = train::ckpt_names::list(dir.p.string());
  for (const auto& t : temps) CHECK(std::filesystem::exists(t));
  REQUIRE(files.size() == 2);
  CHECK(files[0].find("step_00000003") != std::string::npos);
  CHECK(files[1].find("step_00000004") != std::string::npos);
  RuntimeModel<float> loaded = load_model<float>(files[1]);
  const std::vector<int> toks{1, 2, 3, 4};
  CHECK((loaded.forward(toks, 1, 4) - model.forward(toks, 1, 4)).cwiseAbs().maxCoeff() == 0);
}

TEST_CASE("train: a tiny hybrid learns associative recall above chance") {
  ModelDesc d = desc_from_layout("MAM", ModelSpec{.vocab = 258, .d_model = 64},
                                 Mamba2Spec{.d_state = 16, .expand = 2, .headdim = 16},
                                 GqaSpec{.n_heads = 4, .n_kv_heads = 2, .head_dim = 16},
                                 ShortConvSpec{}, NoChannelSpec{}, SwiGluSpec{{128}});
  RuntimeModel<float> model(d, 1);
  auto src = data::make_mqar({.vocab = 34}, 5);  // 16 keys, 17 values: chance is 1/17
  train::TrainConfig c;
  c.batch = 16;
  c.seq_len = 32;
  c.steps = 100;
  c.optim.max_grad_norm = 1.0;
  c.optim.matrix.lr = 0.05;
  c.optim.embedding.lr = c.optim.scalar.lr = c.optim.dynamics.lr = 1e-2;
  c.schedule = train::Schedule::warmup_cosine(10, 100, 0.1);
  c.eval_batches = 4;
  train::Trainer<float> tr(model, *src, c);
  const auto e0 = tr.evaluate();
  for (int i = 0; i < 100; ++i) tr.step();
  const auto e = tr.evaluate();
  MESSAGE("MQAR accuracy ", e0.accuracy, " -> ", e.accuracy, ", val loss ", e0.loss, " -> ", e.loss);
  CHECK(e.accuracy > 0.5);
  CHECK(e.loss < e0.loss - 1.0);
}

}  // namespace hybrid_test_train
