// Quantisation-aware training (train/trainer.hpp): FakeQuant puts in the weights a quantised
// artifact holds (checked value by value, and against the artifact itself when the
// compressors are there); a QAT step's gradient is the gradient at those weights and its
// update lands on the float master weights (straight-through estimator), which stay off the
// grid and keep moving; steps before qat-start are bit for bit those of a run without QAT;
// the EMA, evaluate() and checkpoints see the float weights, evaluate_quantized() the
// quantised ones; and a short QAT run narrows the quantisation gap of post-training
// quantisation on a tiny model.
#include <doctest/doctest.h>

#include <cmath>
#include <cstring>
#include <hybrid/data/synthetic.hpp>
#include <hybrid/data/text.hpp>
#include <hybrid/model.hpp>
#include <hybrid/train/checkpoint.hpp>
#include <hybrid/train/trainer.hpp>
#include <vector>

#include "test_util.hpp"

#ifdef HYBRID_HAVE_COMPRESSION
#include <hybrid/quant/model_artifact.hpp>
#endif

using namespace hybrid;
using test_util::check_error;
using test_util::TempDir;

// This file's own namespace: the tests compile in batches (tests/CMakeLists.txt).
namespace hybrid_test_qat {

namespace {

// Mamba-2 (with a SwiGLU), attention (with a relu²) and an untied head: every tensor role.
ModelDesc tiny_desc() {
  return desc_from_layout("MA", ModelSpec{.vocab = 258, .d_model = 32, .tied = false},
                          Mamba2Spec{.d_state = 16, .expand = 2, .headdim = 16, .chunk = 16},
                          GqaSpec{.n_heads = 2, .n_kv_heads = 1, .head_dim = 16}, ShortConvSpec{},
                          SwiGluSpec{{64}}, Relu2Spec{{64}});
}

quant::QuantPolicy policy(int bits, quant::ScaleRule rule = quant::ScaleRule::RowMax, Index group = 0) {
  quant::QuantPolicy p;
  p.set_all({.bits = bits, .rule = rule, .sd_k = 3.0, .group = group});
  p.embedding.bits = 8;
  return p;
}

train::TrainConfig config(std::int64_t qat_start, const quant::QuantPolicy& p) {
  train::TrainConfig c;
  c.batch = 2;
  c.seq_len = 32;
  c.steps = 1000;
  c.optim.max_grad_norm = 0;  // the gradients stay as the backward left them
  c.schedule.kind = train::Schedule::Constant;
  c.eval_batches = 2;
  c.qat.start = qat_start;
  c.qat.policy = p;
  return c;
}

std::vector<float> values(const RuntimeModel<float>& m) {
  return {m.param_values(), m.param_values() + m.param_table().total()};
}

float f16(float x) { return f16_to_f32(f32_to_f16(x)); }

// The fake-quantised values written out by hand: per tensor, the policy's spec for its role,
// quantize, scales rounded to float16, q * scale; the rest rounded to float16.
std::vector<float> by_hand(const RuntimeModel<float>& m, const quant::QuantPolicy& p) {
  std::vector<float> out = values(m);
  for (const ParamInfo& e : m.param_table().entries()) {
    const float* w = m.param_values() + e.offset;
    float* o = out.data() + e.offset;
    const quant::QuantSpec* s = p.spec_for(quant::tensor_role(e.name, e.role));
    if (!s) {
      for (Index k = 0; k < e.rows * e.cols; ++k) o[k] = f16(w[k]);
      continue;
    }
    quant::QuantSpec spec = *s;
    if (spec.group > 0 && e.cols % spec.group != 0) spec.group = 0;
    const quant::QTensor q = quant::quantize(w, e.rows, e.cols, spec);
    const Index group = spec.group ? spec.group : e.cols;
    for (Index r = 0; r < e.rows; ++r)
      for (Index c = 0; c < e.cols; ++c)
        o[r * e.cols + c] = float(q.q[std::size_t(r * e.cols + c)]) *
                            f16(q.scales[std::size_t(r * (e.cols / group) + c / group)]);
  }
  return out;
}

// Fraction of a model's quantised-role values that sit on their tensor's grid (equal to
// their own fake quantisation).
double on_grid_fraction(const RuntimeModel<float>& m, const quant::QuantPolicy& p) {
  const std::vector<float> q = by_hand(m, p);
  Index on = 0, n = 0;
  for (const ParamInfo& e : m.param_table().entries()) {
    if (!p.spec_for(quant::tensor_role(e.name, e.role))) continue;
    for (Index k = e.offset; k < e.offset + e.rows * e.cols; ++k, ++n) on += q[std::size_t(k)] == m.param_values()[k];
  }
  return double(on) / double(n);
}

}  // namespace

TEST_CASE("FakeQuant: the values a quantised artifact holds, and the float ones back") {
  RuntimeModel<float> m(tiny_desc(), 3);
  const std::vector<float> before = values(m);
  for (const auto& p : {policy(6), policy(4, quant::ScaleRule::SdClip, 32), policy(3, quant::ScaleRule::MseClip, 64)}) {
    const std::vector<float> want = by_hand(m, p);
    train::FakeQuant<float> fq(m, p);
    fq.apply(m);
    CHECK(fq.applied());
    const std::vector<float> got = values(m);
    REQUIRE(got.size() == want.size());
    Index diff = 0;
    for (std::size_t k = 0; k < got.size(); ++k) diff += got[k] != want[k];
    CHECK(diff == 0);
    CHECK(got != before);
    fq.restore(m);
    CHECK(values(m) == before);  // exactly the float master values
    check_error([&] { fq.restore(m); }, {"nothing to restore"});
  }
  // each role: the projections on a 6-bit grid of at most 63 levels per row, the small
  // tensors on float16
  train::FakeQuant<float> fq(m, policy(6));
  fq.apply(m);
  bool saw_small = false, saw_matrix = false;
  for (const ParamInfo& e : m.param_table().entries()) {
    const float* w = m.param_values() + e.offset;
    const quant::TensorRole role = quant::tensor_role(e.name, e.role);
    if (role == quant::TensorRole::Small) {
      saw_small = true;
      for (Index k = 0; k < e.rows * e.cols; ++k) CHECK(w[k] == f16(w[k]));
    } else if (role != quant::TensorRole::Embedding) {
      saw_matrix = true;
      std::vector<float> row(w, w + e.cols);
      std::sort(row.begin(), row.end());
      CHECK(std::unique(row.begin(), row.end()) - row.begin() <= 63);
    }
  }
  CHECK(saw_small);
  CHECK(saw_matrix);
  check_error([&] { fq.apply(m); }, {"already applied"});
  fq.restore(m);

  // a non-finite weight: apply() names the tensor and leaves every float value in place
  const ParamInfo* mat = nullptr;
  for (const ParamInfo& e : m.param_table().entries())
    if (!mat && quant::tensor_role(e.name, e.role) == quant::TensorRole::Attention) mat = &e;
  REQUIRE(mat);
  m.param_values()[mat->offset + 5] = std::nanf("");
  const std::vector<float> with_nan = values(m);
  check_error([&] { fq.apply(m); }, {"fake quantisation", mat->name, "not finite"});
  CHECK_FALSE(fq.applied());
  CHECK(std::memcmp(m.param_values(), with_nan.data(), sizeof(float) * with_nan.size()) == 0);
  m.param_values()[mat->offset + 5] = before[std::size_t(mat->offset + 5)];

  // a double model is quantised through float: the float model's values
  RuntimeModel<double> md(tiny_desc(), 3);
  train::FakeQuant<double> fqd(md, policy(5, quant::ScaleRule::SdClip, 32));
  train::FakeQuant<float> fqf(m, policy(5, quant::ScaleRule::SdClip, 32));
  Index init_differs = 0;
  for (Index k = 0; k < m.param_table().total(); ++k) init_differs += float(md.param_values()[k]) != m.param_values()[k];
  REQUIRE(init_differs == 0);  // the same init, rounded to float
  fqd.apply(md);
  fqf.apply(m);
  Index differs = 0;
  for (Index k = 0; k < m.param_table().total(); ++k) differs += md.param_values()[k] != double(m.param_values()[k]);
  CHECK(differs == 0);
  fqd.restore(md);
  fqf.restore(m);

  quant::QuantPolicy bad = policy(6);
  bad.mlp.bits = 9;
  check_error([&] { train::FakeQuant<float>(m, bad); }, {"channel", "9 bits", "2 to 8"});
  bad = policy(6, quant::ScaleRule::SdClip);
  bad.ssm.sd_k = 0;
  check_error([&] { train::FakeQuant<float>(m, bad); }, {"SdClip k of 0"});
}

#ifdef HYBRID_HAVE_COMPRESSION
TEST_CASE("FakeQuant: equal to the model an artifact loads into") {
  RuntimeModel<float> m(tiny_desc(), 5);
  for (const auto& p : {policy(6), policy(5, quant::ScaleRule::SdClip, 32)}) {
    const RuntimeModel<float> art = quant::load_artifact_model(quant::as_stored(quant::quantize_model(m, p)));
    train::FakeQuant<float> fq(m, p);
    fq.apply(m);
    CHECK(std::memcmp(m.param_values(), art.param_values(), sizeof(float) * std::size_t(m.param_table().total())) == 0);
    fq.restore(m);
  }
}
#endif

TEST_CASE("QAT: the step's gradient is the gradient at the fake-quantised weights") {
  const quant::QuantPolicy p = policy(4);
  RuntimeModel<float> model(tiny_desc(), 7);
  const RuntimeModel<float> start = model;
  auto src = data::make_mqar({.vocab = 258}, 11);
  auto cfg = config(0, p);
  cfg.optim.matrix_optimizer = train::MatrixOptimizer::AdamW;
  train::Trainer<float> tr(model, *src, cfg);
  const train::StepResult r = tr.step();
  CHECK(r.quantized);

  // by hand: the same batch on a copy holding the fake-quantised values
  auto src2 = data::make_mqar({.vocab = 258}, 11);
  const data::Batch b = src2->train_batch(cfg.batch, cfg.seq_len);
  RuntimeModel<float> q = start;
  const std::vector<float> qv = by_hand(start, p);
  std::copy(qv.begin(), qv.end(), q.param_values());
  GradStore<float> gq(q);
  Tape<float> tq(true, &gq);
  const Var<float> lq = q.loss(tq, b.tokens, b.targets, b.B, b.T, 0.0);
  tq.backward(lq);
  CHECK(r.loss == doctest::Approx(double(lq.v[0])).epsilon(1e-6));
  double max_diff = 0, max_g = 0;
  for (Index k = 0; k < gq.size(); ++k) {
    max_diff = std::max(max_diff, double(std::abs(gq.data()[k] - tr.grads().data()[k])));
    max_g = std::max(max_g, double(std::abs(gq.data()[k])));
  }
  CHECK(max_g > 0);
  CHECK(max_diff <= 1e-6 * max_g);

  // ... and not the gradient at the float weights
  RuntimeModel<float> f = start;
  GradStore<float> gf(f);
  Tape<float> tf(true, &gf);
  tf.backward(f.loss(tf, b.tokens, b.targets, b.B, b.T, 0.0));
  double far = 0;
  for (Index k = 0; k < gf.size(); ++k) far = std::max(far, double(std::abs(gf.data()[k] - gq.data()[k])));
  CHECK(far > 100 * max_diff + 1e-5);

  // the update: the optimiser's step from the float start with that gradient
  RuntimeModel<float> upd = start;
  GradStore<float> gu(upd);
  std::copy(tr.grads().data(), tr.grads().data() + gu.size(), gu.data());
  train::Optimizer<float> opt(gu, cfg.optim);
  opt.step(cfg.schedule.factor(0));
  CHECK(values(model) == values(upd));
}

TEST_CASE("QAT: bit-identical before qat-start; the float master weights then keep moving off the grid") {
  const quant::QuantPolicy p = policy(4);
  RuntimeModel<float> plain_m(tiny_desc(), 9), qat_m(tiny_desc(), 9);
  auto plain_src = data::make_mqar({.vocab = 258}, 2), qat_src = data::make_mqar({.vocab = 258}, 2);
  auto plain_cfg = config(-1, p), qat_cfg = config(3, p);
  plain_cfg.ema_decay = qat_cfg.ema_decay = 0.5;
  train::Trainer<float> plain(plain_m, *plain_src, plain_cfg), qat(qat_m, *qat_src, qat_cfg);
  for (int s = 0; s < 3; ++s) {
    CHECK_FALSE(qat.qat_active());
    const auto a = plain.step(), b = qat.step();
    CHECK(a.loss == b.loss);
    CHECK_FALSE(b.quantized);
  }
  CHECK(values(plain_m) == values(qat_m));
  CHECK(plain.evaluate().loss == qat.evaluate().loss);
  CHECK(qat.qat_active());

  std::vector<float> prev = values(qat_m);
  std::vector<float> ema_prev(prev.size());
  auto ema_values = [&](train::Trainer<float>& t) {
    std::vector<float> v;
    t.ema()->visit_state([&](const std::string&, MatMap<float>& x) { v.insert(v.end(), x.data(), x.data() + x.size()); });
    return v;
  };
  ema_prev = ema_values(qat);
  for (int s = 0; s < 4; ++s) {
    const auto a = plain.step(), b = qat.step();
    CHECK(b.quantized);
    CHECK(a.loss != b.loss);
    const std::vector<float> now = values(qat_m);
    Index moved = 0;
    for (std::size_t k = 0; k < now.size(); ++k) moved += now[k] != prev[k];
    CHECK(moved > Index(now.size()) / 2);
    CHECK(on_grid_fraction(qat_m, p) < 0.05);
    // the EMA follows the float weights: ema = 0.5 ema + 0.5 w
    const std::vector<float> ema = ema_values(qat);
    std::vector<float> w;
    qat_m.visit([&](const std::string&, const MatMap<float>& x, ParamRole) { w.insert(w.end(), x.data(), x.data() + x.size()); });
    REQUIRE(ema.size() == w.size());
    Index off = 0;
    for (std::size_t k = 0; k < ema.size(); ++k)
      off += std::abs(ema[k] - (0.5f * ema_prev[k] + 0.5f * w[k])) > 1e-6f * (1 + std::abs(w[k]));
    CHECK(off == 0);
    ema_prev = ema;
    prev = now;
  }

  // evaluation: float weights (the EMA's), or those quantised; the weights untouched
  const std::vector<float> kept = values(qat_m);
  const train::EvalResult fe = qat.evaluate(), qe = qat.evaluate_quantized();
  CHECK(values(qat_m) == kept);
  CHECK(fe.loss != qe.loss);
  RuntimeModel<float> e = qat_m;
  qat.ema()->swap(e);  // e: the EMA's values (the EMA: the live ones, until swapped back)
  const std::vector<float> ema_vals = values(e);
  qat.ema()->swap(e);
  std::copy(ema_vals.begin(), ema_vals.end(), e.param_values());
  auto score_cfg = qat_cfg;
  score_cfg.ema_decay = 0;
  score_cfg.qat.start = -1;
  auto eval_src = data::make_mqar({.vocab = 258}, 2);
  CHECK(train::Trainer<float>(e, *eval_src, score_cfg).evaluate().loss == fe.loss);
  const std::vector<float> eq = by_hand(e, p);
  std::copy(eq.begin(), eq.end(), e.param_values());
  CHECK(train::Trainer<float>(e, *eval_src, score_cfg).evaluate().loss == qe.loss);
}

TEST_CASE("QAT: a checkpoint taken during QAT resumes bit for bit") {
  TempDir dir;
  const quant::QuantPolicy p = policy(5, quant::ScaleRule::SdClip, 32);
  std::vector<double> straight, resumed;
  {
    RuntimeModel<float> m(tiny_desc(), 4);
    auto src = data::make_mqar({.vocab = 258}, 6);
    train::Trainer<float> tr(m, *src, config(2, p));
    for (int i = 0; i < 6; ++i) straight.push_back(tr.step().loss);
  }
  {
    RuntimeModel<float> m(tiny_desc(), 4);
    auto src = data::make_mqar({.vocab = 258}, 6);
    train::Trainer<float> tr(m, *src, config(2, p));
    for (int i = 0; i < 3; ++i) resumed.push_back(tr.step().loss);
    train::save_training_in(tr, dir.dir.string(), 1);
  }
  {
    RuntimeModel<float> m(tiny_desc(), 99);
    auto src = data::make_mqar({.vocab = 258}, 6);
    train::Trainer<float> tr(m, *src, config(2, p));
    train::load_training(tr, train::resolve_checkpoint(dir.dir.string()));
    CHECK(tr.qat_active());
    for (int i = 0; i < 3; ++i) resumed.push_back(tr.step().loss);
  }
  CHECK(resumed == straight);
}

TEST_CASE("QAT: a short QAT run narrows the gap of post-training quantisation") {
  // Byte-level tinyshakespeare, 3-bit projections: 60 float steps, then either 30 more
  // float steps (post-training quantisation) or 30 QAT steps, the same data and schedule.
  const std::string text = std::string(HYBRID_DATA_DIR) + "/tinyshakespeare.txt";
  const quant::QuantPolicy p = policy(3);
  auto run = [&](std::int64_t qat_start) {
    RuntimeModel<float> m(tiny_desc(), 1);
    data::TextSource src(text, 8);
    auto cfg = config(qat_start, p);
    cfg.batch = 8;
    cfg.seq_len = 64;
    cfg.steps = 90;
    cfg.eval_batches = 8;
    cfg.optim.max_grad_norm = 1.0;
    cfg.optim.embedding.lr = cfg.optim.scalar.lr = cfg.optim.dynamics.lr = 3e-3;  // train's --lr
    cfg.schedule = train::Schedule::warmup_cosine(10, 90, 0.1);
    train::Trainer<float> tr(m, src, cfg);
    for (int s = 0; s < 90; ++s) tr.step();
    return std::pair{tr.evaluate().loss, tr.evaluate_quantized().loss};
  };
  const auto [ptq_float, ptq_quant] = run(-1);
  const auto [qat_float, qat_quant] = run(60);
  MESSAGE("float / quantised val loss: without QAT ", ptq_float, " / ", ptq_quant, ", with QAT ",
          qat_float, " / ", qat_quant);
  CHECK(ptq_quant - ptq_float > 0.01);  // 3 bits cost something (seen: 0.019 to 0.028 over seeds)
  CHECK(qat_quant < ptq_quant);
  CHECK(qat_quant - qat_float < 0.5 * (ptq_quant - ptq_float));
}

}  // namespace hybrid_test_qat
