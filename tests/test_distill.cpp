// Knowledge distillation: the fused KD loss and its gradient against central differences
// (double); the KL term and its gradient vanish when the teacher is the student; the top-k
// path (live and from the cache file) stays within the truncation bound of the full-logit
// KL; the cache file round trip and its errors; a few distillation steps lower the KL.
#include <doctest/doctest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <hybrid/alias_registry.hpp>
#include <hybrid/autograd/op_cases.hpp>
#include <hybrid/data/synthetic.hpp>
#include <hybrid/model.hpp>
#include <hybrid/train/distill.hpp>
#include <hybrid/train/trainer.hpp>

#include "grad_check.hpp"

using namespace hybrid;

namespace {

data::Batch make_batch(Index B, Index T, int V, int shift) {
  data::Batch b;
  b.B = B, b.T = T;
  for (Index i = 0; i < B * T; ++i) {
    b.tokens.push_back(int((i * 37 + 11 + shift) % V));
    b.targets.push_back(i % 5 == 3 ? -1 : int((i * 53 + 7 + shift) % V));
  }
  return b;
}

// Makes a model's logits sharp (a tied embedding scaled up), so that the KL is not tiny.
template <class S>
void sharpen(RuntimeModel<S>& m, double factor) {
  m.visit([&](const std::string& name, MatMap<S>& t, ParamRole) {
    if (name == "embed.weight") t *= S(factor);
  });
}

std::string tmp_path(const char* name) {
  return (std::filesystem::temp_directory_path() / name).string();
}

double kl_of(const RuntimeModel<double>& student, const train::TeacherFn& teacher, const data::Batch& b,
             double tau, double* ce = nullptr) {
  Tape<double> t(false);
  train::TeacherTargets tt;
  teacher(b, tt);
  train::KdConfig kd{.alpha = 1, .beta = 1, .tau = tau, .teacher = {}};
  ops::KdSums parts;
  train::distill_loss(student, t, b, tt, kd, 0, TrainingOptions{}, &parts);
  if (ce) *ce = parts.ce;
  return parts.kl;
}

}  // namespace

TEST_CASE("kd_loss: loss and gradient against central differences (double), full and top-k") {
  const OpDims base{.B = 2, .T = 3, .C = 4, .O = 6, .chunk = 2, .kd_tau = 1.7};
  OpDims topk = base;
  topk.kd_topk = 2;
  topk.softcap = 2;
  for (const OpDims& d : {base, topk}) {
    OpCaseRun<double> run(OpCase{OpId::KdLoss, "kd", d}, 4);
    Tape<double> tape(true, &run.grads());
    const Var<double> y = run.forward(tape);
    CHECK(y.v[0] > 0);
    tape.backward(y);
    Tape<double> eval(false);
    auto L = [&] {
      eval.rewind();
      return run.forward(eval).v[0];
    };
    for (const ParamInfo& e : run.grads().entries()) {
      CAPTURE(e.name);
      const auto res = testing::fd_check(run.grads().value_of(e).data(), run.grads().grad_of(e), e.size(), L, 40,
                                         1e-6, 1e-4);
      CHECK(res.max_abs_err < 1e-7);
      CHECK(res.max_rel_err < 1e-4);
    }
  }
}

TEST_CASE("kd_loss: the KL and its gradient are zero when the teacher is the student") {
  RuntimeModel<double> m(TinyMamba::desc(), 3);
  sharpen(m, 20);
  const data::Batch b = make_batch(2, 6, m.vocab(), 0);
  const Mat<double> logits = m.forward(b.tokens, b.B, b.T);  // (B*T, V)
  ops::KdTeacher<double> self;
  self.logits = CView<double>(logits.data(), logits.rows(), logits.cols(), logits.cols());
  GradStore<double> g_kd(m), g_ce(m);
  for (double tau : {1.0, 2.5}) {
    g_kd.zero(), g_ce.zero();
    Tape<double> t1(true, &g_kd), t2(true, &g_ce);
    ops::KdSums parts;
    const Var<double> x = m.head_input(t1, b.tokens, b.targets, b.B, b.T);
    const Var<double> l1 = ag::kd_head_loss(t1, x, m.head_weight(), b.targets.data(), m.head_config(),
                                            {1.0, 3.0, tau}, self, &parts);
    t1.backward(l1);
    const Var<double> l2 = m.loss(t2, b.tokens, b.targets, b.B, b.T);
    t2.backward(l2);
    CHECK(std::abs(parts.kl) < 1e-12);
    CHECK(parts.ce == doctest::Approx(double(l2.v[0])).epsilon(1e-12));
    CHECK(double(l1.v[0]) == doctest::Approx(double(l2.v[0])).epsilon(1e-12));
    double diff = 0, norm = 0;
    for (Index i = 0; i < g_kd.size(); ++i)
      diff = std::max(diff, std::abs(g_kd.data()[i] - g_ce.data()[i])), norm = std::max(norm, std::abs(g_ce.data()[i]));
    CHECK(norm > 1e-3);
    CHECK(diff < 1e-10 * std::max(1.0, norm));
  }
  // The check can fail: another model as the teacher gives a KL well above zero.
  RuntimeModel<double> other(TinyMamba::desc(), 4);
  sharpen(other, 20);
  CHECK(kl_of(m, train::live_teacher(other, 0, 1.0), b, 1.0) > 1e-3 * double(b.scored()));
}

TEST_CASE("kd_loss: the top-k path, live and cached, is within the truncation bound of the full KL") {
  RuntimeModel<double> student(TinyMamba::desc(), 5), teacher(TinyTransformer::desc(), 6);
  sharpen(student, 10);
  sharpen(teacher, 30);
  const data::Batch b = make_batch(2, 6, student.vocab(), 1);
  const double tau = 2;
  const Index k = 128;
  const double full = kl_of(student, train::live_teacher(teacher, 0, tau), b, tau);
  const double live = kl_of(student, train::live_teacher(teacher, k, tau), b, tau);
  // The bound, row by row, from both models' full logits.
  const Mat<double> u = teacher.forward(b.tokens, b.B, b.T), z = student.forward(b.tokens, b.B, b.T);
  double bound = 0;
  std::vector<int> ids(k), order;
  std::vector<float> lp(k), ur(u.cols());
  for (Index r = 0; r < u.rows(); ++r) {
    if (b.targets[r] < 0) continue;
    for (Index j = 0; j < u.cols(); ++j) ur[j] = float(u(r, j));
    train::topk_logprobs(ur.data(), u.cols(), k, tau, ids.data(), lp.data(), order);
    std::vector<double> ud(u.cols()), zd(u.cols());
    for (Index j = 0; j < u.cols(); ++j) ud[j] = double(ur[j]), zd[j] = z(r, j);
    bound += ops::kd_truncation_bound(ud.data(), zd.data(), u.cols(), ids.data(), k, tau);
  }
  CAPTURE(full);
  CAPTURE(live);
  CAPTURE(bound);
  CHECK(full > 0.05 * double(b.scored()));
  CHECK(std::abs(full - live) > 1e-9);               // the truncation does something
  CHECK(std::abs(full - live) <= bound + 1e-4 * full);  // float teacher logits: rounding
  CHECK(bound < 0.5 * full);                            // and the bound is informative
  // The cache: the first pass computes and saves, a second instance reads the same targets.
  const std::string path = tmp_path("hybrid_test_kd_cache.bin");
  std::filesystem::remove(path);
  const std::uint64_t fp = train::model_fingerprint(teacher);
  {
    auto cache = std::make_shared<train::TopkCache>(path, k, teacher.vocab(), tau, fp);
    CHECK(kl_of(student, train::cached_teacher(cache, train::live_teacher(teacher, k, tau)), b, tau) == live);
    CHECK(cache->misses() == 1);
    cache->save();
  }
  {
    auto cache = std::make_shared<train::TopkCache>(path, k, teacher.vocab(), tau, fp);
    CHECK(cache->records() == 1);
    const train::TeacherFn no_teacher = [](const data::Batch&, train::TeacherTargets&) {
      FAIL("the cache should have answered");
    };
    CHECK(kl_of(student, train::cached_teacher(cache, no_teacher), b, tau) == live);
    CHECK(cache->hits() == 1);
  }
  std::filesystem::remove(path);
}

TEST_CASE("kd cache: round trip, and every mismatch or damage is an error naming it") {
  const std::string path = tmp_path("hybrid_test_kd_cache_errors.bin");
  std::filesystem::remove(path);
  const Index k = 3, V = 10;
  auto targets = [&](const data::Batch& b, int salt) {
    train::TeacherTargets t;
    t.rows = b.B * b.T, t.vocab = V, t.k = k;
    for (Index i = 0; i < t.rows * k; ++i)
      t.ids.push_back(int((i * 7 + salt) % V)), t.logp.push_back(-0.25f * float(i % k) - 0.01f * float(salt));
    return t;
  };
  const data::Batch b1 = make_batch(1, 4, int(V), 0), b2 = make_batch(2, 3, int(V), 5);
  {
    train::TopkCache c(path, k, V, 1.5, 42);
    c.add(b1, targets(b1, 1));
    c.add(b2, targets(b2, 2));
    c.add(b1, targets(b1, 1));  // the same batch again: kept once
    CHECK(c.records() == 2);
    c.save();
  }
  {
    train::TopkCache c(path, k, V, 1.5, 42);
    REQUIRE(c.records() == 2);
    train::TeacherTargets t;
    REQUIRE(c.find(b2, t));
    const train::TeacherTargets want = targets(b2, 2);
    CHECK(t.ids == want.ids);
    CHECK(t.logp == want.logp);
    CHECK(t.rows == 6);
    CHECK(!c.find(make_batch(1, 4, int(V), 3), t));  // other tokens: no record
  }
  auto throws_with = [&](auto&& f, const char* what) {
    try {
      f();
      FAIL("expected an error containing '", what, "'");
    } catch (const Error& e) {
      CAPTURE(std::string(e.what()));
      CHECK(std::string(e.what()).find(what) != std::string::npos);
      CHECK(std::string(e.what()).find(path) != std::string::npos);
    }
  };
  throws_with([&] { train::TopkCache(path, 4, V, 1.5, 42); }, "top-k 3");
  throws_with([&] { train::TopkCache(path, k, V + 1, 1.5, 42); }, "vocabulary of 10");
  throws_with([&] { train::TopkCache(path, k, V, 2.0, 42); }, "temperature");
  throws_with([&] { train::TopkCache(path, k, V, 1.5, 43); }, "another teacher");
  std::string bytes;
  {
    std::ifstream in(path, std::ios::binary);
    bytes.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  }
  auto write = [&](const std::string& s) {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out << s;
  };
  std::string bad = bytes;
  bad[48 + 20] ^= 0x10;  // an id byte of the first record
  write(bad);
  throws_with([&] { train::TopkCache(path, k, V, 1.5, 42); }, "checksum");
  write(bytes.substr(0, bytes.size() - 5));
  throws_with([&] { train::TopkCache(path, k, V, 1.5, 42); }, "truncated");
  write(bytes + "xx");
  throws_with([&] { train::TopkCache(path, k, V, 1.5, 42); }, "bytes after");
  bad = bytes;
  bad[0] = 'X';
  write(bad);
  throws_with([&] { train::TopkCache(path, k, V, 1.5, 42); }, "not a top-k cache");
  write(bytes);
  CHECK_NOTHROW(train::TopkCache(path, k, V, 1.5, 42));
  std::filesystem::remove(path);
}

TEST_CASE("distillation: a few trainer steps lower the student's KL to the teacher") {
  RuntimeModel<float> student(TinyMamba::desc(), 8);
  RuntimeModel<float> tf(TinyTransformer::desc(), 7);
  sharpen(tf, 8);
  auto src = data::make_mqar({.vocab = 258}, 3);
  train::TrainConfig cfg;
  cfg.batch = 2, cfg.seq_len = 32, cfg.steps = 20;
  cfg.optim.matrix_optimizer = train::MatrixOptimizer::AdamW;
  cfg.optim.matrix.lr = cfg.optim.embedding.lr = cfg.optim.scalar.lr = 2e-2;
  cfg.schedule.kind = train::Schedule::Constant;
  cfg.kd = {.alpha = 0.2, .beta = 1, .tau = 2, .teacher = train::live_teacher(tf, 8, 2.0)};
  const data::Batch fixed = src->train_batch(2, 32);
  auto kl_now = [&] {
    Tape<float> t(false);
    train::TeacherTargets tt;
    cfg.kd.teacher(fixed, tt);
    ops::KdSums parts;
    train::distill_loss(student, t, fixed, tt, cfg.kd, 0, TrainingOptions{}, &parts);
    return parts.kl;
  };
  const double before = kl_now();
  train::Trainer<float> tr(student, *src, cfg);
  train::StepResult r;
  for (int i = 0; i < 20; ++i) r = tr.step();
  const double after = kl_now();
  CAPTURE(before);
  CAPTURE(after);
  CHECK(r.kd_kl > 0);
  CHECK(r.loss == doctest::Approx(0.2 * r.kd_ce + 4 * r.kd_kl).epsilon(1e-4));
  CHECK(after < 0.9 * before);
}
