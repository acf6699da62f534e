// Optimiser tests: AdamW against closed-form values, decoupled weight decay per role,
// Newton–Schulz and Muon against the direct formulas, clipping, skipped non-finite steps,
// schedules, EMA, state enumeration / resume, and a training smoke test on TinyHybrid18x6.
#include <doctest/doctest.h>

#include <cmath>
#include <limits>
#include <set>

#include <hybrid/model.hpp>
#include <hybrid/train/optim.hpp>

#include "test_util.hpp"

using namespace hybrid;
using namespace hybrid::train;
using hybrid::test_util::random_mat;
using hybrid::test_util::ToyModel;

// This file's own namespace: the tests compile in batches (tests/CMakeLists.txt).
namespace hybrid_test_optim {

namespace {

template <class S, class W>
MatMap<S> grad_of(GradStore<S>& g, const W& w) {
  return MatMap<S>(g.of(w), w.rows(), w.cols());
}

double max_abs(const Mat<double>& a) { return a.cwiseAbs().maxCoeff(); }
constexpr double kPi = 3.14159265358979323846;

}  // namespace

TEST_CASE("optim: AdamW matches a hand-computed two-step example") {
  ToyModel<> model;
  auto& p = model.add("x", 1, 3, ParamRole::Scalar, 1);
  p << 0.5, -1.0, 2.0;
  const Mat<double> p0 = p;
  GradStore<double> grads(model);
  OptimConfig cfg = OptimConfig::adamw(0.1);
  cfg.scalar.weight_decay = 0.2;  // asked for explicitly
  Optimizer<double> opt(grads, cfg);

  const double g1[3] = {0.3, -0.2, 0.0}, g2[3] = {-0.1, 0.4, 1e-3};
  const double lr = 0.1, wd = 0.2, b1 = 0.9, b2 = 0.95, eps = 1e-8;

  std::copy(g1, g1 + 3, grads.data());
  auto info = opt.step(1.0);
  CHECK_FALSE(info.skipped);
  CHECK(opt.steps() == 1);
  // Step 1: m̂ = g1, v̂ = g1², so the step is lr·g1/(|g1| + eps) after decay by (1 − lr·wd).
  double p1[3];
  for (int i = 0; i < 3; ++i) {
    p1[i] = p0(0, i) * (1 - lr * wd) - lr * g1[i] / (std::abs(g1[i]) + eps);
    CHECK(std::abs(p(0, i) - p1[i]) < 1e-14);
  }
  CHECK(std::abs(p(0, 0) - (0.5 * 0.98 - 0.1 * 0.3 / (0.3 + 1e-8))) < 1e-14);

  // Step 2 at half the rate: m = b1(1−b1)g1 + (1−b1)g2, v = b2(1−b2)g1² + (1−b2)g2²,
  // m̂ = m/(1−b1²), v̂ = v/(1−b2²).
  std::copy(g2, g2 + 3, grads.data());
  opt.step(0.5);
  CHECK(opt.steps() == 2);
  for (int i = 0; i < 3; ++i) {
    const double m = b1 * (1 - b1) * g1[i] + (1 - b1) * g2[i];
    const double v = b2 * (1 - b2) * g1[i] * g1[i] + (1 - b2) * g2[i] * g2[i];
    const double mh = m / (1 - b1 * b1), vh = v / (1 - b2 * b2);
    const double lr2 = 0.5 * lr;
    const double p2 = p1[i] * (1 - lr2 * wd) - lr2 * mh / (std::sqrt(vh) + eps);
    CAPTURE(i);
    CHECK(std::abs(p(0, i) - p2) < 1e-14);
  }
  // Element 0 by hand: m = 0.9·0.1·0.3 − 0.1·0.1 = 0.017, v = 0.95·0.05·0.09 + 0.05·0.01
  // = 0.004775, m̂ = 0.017 / 0.19, v̂ = 0.004775 / 0.0975.
  {
    const double mh = 0.017 / 0.19, vh = (0.95 * 0.05 * 0.09 + 0.05 * 0.01) / 0.0975;
    const double want = p1[0] * (1 - 0.05 * 0.2) - 0.05 * mh / (std::sqrt(vh) + 1e-8);
    CHECK(std::abs(p(0, 0) - want) < 1e-14);
    CHECK(p(0, 0) == doctest::Approx(0.365884669).epsilon(1e-9));
  }
}

TEST_CASE("optim: decoupled weight decay reaches only the roles that ask for it") {
  ToyModel<> model;
  model.add("mat", 6, 4, ParamRole::Matrix, 1);
  model.add("emb", 10, 4, ParamRole::Embedding, 2);
  model.add("norm", 1, 4, ParamRole::Scalar, 3);
  model.add("A_log", 1, 3, ParamRole::Dynamics, 4);
  std::vector<Mat<double>> before;
  for (int i = 0; i < 4; ++i) before.push_back(model[i]);
  GradStore<double> grads(model);  // all gradients zero: only the decay can move anything

  SUBCASE("defaults: Muon matrices decay, nothing else") {
    Optimizer<double> opt(grads, OptimConfig{});
    opt.step(0.5);
    CHECK(max_abs(model[0] - before[0] * (1 - 0.5 * 0.02 * 0.1)) < 1e-15);
    for (int i = 1; i < 4; ++i) CHECK(model[i] == before[i]);
  }
  SUBCASE("AdamW matrices decay with their own lr") {
    OptimConfig cfg = OptimConfig::adamw(1e-3, 0.1);
    Optimizer<double> opt(grads, cfg);
    opt.step(1.0);
    CHECK(max_abs(model[0] - before[0] * (1 - 1e-3 * 0.1)) < 1e-15);
    for (int i = 1; i < 4; ++i) CHECK(model[i] == before[i]);
  }
  SUBCASE("flags: embedding and dynamics decay when asked, each with its group's lr") {
    OptimConfig cfg;
    cfg.embedding = {0.01, 0.05};
    cfg.dynamics = {0.002, 0.3};
    Optimizer<double> opt(grads, cfg);
    opt.step(1.0);
    CHECK(max_abs(model[0] - before[0] * (1 - 0.02 * 0.1)) < 1e-15);
    CHECK(max_abs(model[1] - before[1] * (1 - 0.01 * 0.05)) < 1e-15);
    CHECK(model[2] == before[2]);
    CHECK(max_abs(model[3] - before[3] * (1 - 0.002 * 0.3)) < 1e-15);
  }
}

TEST_CASE("optim: Newton-Schulz pushes singular values into the quintic's band") {
  for (auto [r, c] : {std::pair<Index, Index>{48, 16}, {16, 48}, {40, 24}, {7, 64}}) {
    CAPTURE(r);
    CAPTURE(c);
    const Mat<double> G = random_mat<double>(r, c, std::uint64_t(r * 100 + c));
    const Mat<double> X = newton_schulz(G, 5);
    REQUIRE(X.rows() == r);
    REQUIRE(X.cols() == c);
    Eigen::JacobiSVD<Eigen::MatrixXd> svd(X, Eigen::ComputeThinU | Eigen::ComputeThinV);
    const auto sv = svd.singularValues();
    MESSAGE("NS5 (", r, ", ", c, "): singular values in [", sv.minCoeff(), ", ", sv.maxCoeff(), "]");
    CHECK(sv.minCoeff() > 0.68);
    CHECK(sv.maxCoeff() < 1.2);
    // X Xᵀ (on the small side) ≈ I within the band: eigenvalues σ² ∈ [0.68², 1.2²].
    const Eigen::MatrixXd XX = r <= c ? Eigen::MatrixXd(X * X.transpose())
                                      : Eigen::MatrixXd(X.transpose() * X);
    const Eigen::MatrixXd I = Eigen::MatrixXd::Identity(XX.rows(), XX.cols());
    CHECK((XX - I).cwiseAbs().maxCoeff() < 0.55);
    // Same singular vectors as G: X is close to the polar factor U Vᵀ of G.
    Eigen::JacobiSVD<Eigen::MatrixXd> gs(G, Eigen::ComputeThinU | Eigen::ComputeThinV);
    const Eigen::MatrixXd polar = gs.matrixU() * gs.matrixV().transpose();
    Eigen::JacobiSVD<Eigen::MatrixXd> ds(Eigen::MatrixXd(X - polar));
    CHECK(ds.singularValues()(0) < 0.32);
  }
  // Float runs the same iteration in float.
  const Mat<float> Gf = random_mat<float>(24, 40, 5);
  const Mat<float> Xf = newton_schulz(Gf, 5);
  Eigen::JacobiSVD<Eigen::MatrixXf> sf(Xf);
  CHECK(sf.singularValues().minCoeff() > 0.68f);
  CHECK(sf.singularValues().maxCoeff() < 1.2f);
}

TEST_CASE("optim: one Newton-Schulz step equals the direct formula") {
  const double a = 3.4445, b = -4.7750, c = 2.0315;
  for (auto [r, cc] : {std::pair<Index, Index>{5, 9}, {9, 5}}) {
    const Mat<double> G = random_mat<double>(r, cc, 11);
    Mat<double> X0 = r > cc ? Mat<double>(G.transpose()) : G;
    X0 /= X0.norm() + 1e-7;
    const Mat<double> A = X0 * X0.transpose();
    Mat<double> X1 = a * X0 + (b * A + c * A * A) * X0;
    if (r > cc) X1.transposeInPlace();
    CHECK(max_abs(newton_schulz(G, 1) - X1) < 1e-14);
  }
  // An all-zero matrix stays zero (the 1e-7 guard) instead of turning into NaN.
  CHECK(newton_schulz(Mat<double>(Mat<double>::Zero(3, 4)), 5).cwiseAbs().maxCoeff() == 0);
}

TEST_CASE("optim: Muon applies the scaled, orthogonalised Nesterov momentum") {
  ToyModel<> model;
  model.add("tall", 12, 4, ParamRole::Matrix, 1);
  model.add("wide", 4, 12, ParamRole::Matrix, 2);
  model.add("tall2", 12, 4, ParamRole::Matrix, 3);  // shares the tall's work buffers
  GradStore<double> grads(model);
  OptimConfig cfg;
  cfg.matrix = {0.1, 0.0};
  Optimizer<double> opt(grads, cfg);
  const double mu = 0.95, lr = 0.1;

  std::vector<Mat<double>> p0, g1, g2;
  for (int i = 0; i < 3; ++i) {
    p0.push_back(model[i]);
    g1.push_back(random_mat<double>(model[i].rows(), model[i].cols(), 20 + i));
    g2.push_back(random_mat<double>(model[i].rows(), model[i].cols(), 30 + i));
  }
  for (int i = 0; i < 3; ++i) grad_of(grads, model[i]) = g1[i];
  opt.step(1.0);
  std::vector<Mat<double>> p1;
  for (int i = 0; i < 3; ++i) {
    const double scale = model[i].rows() > model[i].cols() ? std::sqrt(3.0) : 1.0;
    CHECK(muon_scale(model[i].rows(), model[i].cols()) == doctest::Approx(scale));
    // buf = g1; look-ahead u = g1 + mu·buf.
    const Mat<double> u = g1[i] + mu * g1[i];
    p1.push_back(p0[i] - lr * scale * newton_schulz(u, 5));
    CHECK(max_abs(model[i] - p1[i]) < 1e-13);
  }
  // The tall update is sqrt(rows/cols) = sqrt(3) larger: its Frobenius norm is √3 × that of
  // a near-orthogonal (12, 4) matrix (√4 · σ, σ ≈ 1).
  const double tall_norm = (p1[0] - p0[0]).norm() / lr, wide_norm = (p1[1] - p0[1]).norm() / lr;
  MESSAGE("Muon update norms / lr: tall (12,4) ", tall_norm, ", wide (4,12) ", wide_norm);
  CHECK(tall_norm / std::sqrt(3.0) > 0.68 * 2);
  CHECK(tall_norm / std::sqrt(3.0) < 1.2 * 2);

  for (int i = 0; i < 3; ++i) grad_of(grads, model[i]) = g2[i];
  opt.step(0.5);
  for (int i = 0; i < 3; ++i) {
    const double scale = muon_scale(model[i].rows(), model[i].cols());
    const Mat<double> buf = mu * g1[i] + g2[i];
    const Mat<double> u = g2[i] + mu * buf;
    CHECK(max_abs(model[i] - (p1[i] - 0.5 * lr * scale * newton_schulz(u, 5))) < 1e-13);
  }

  SUBCASE("without Nesterov the buffer itself is orthogonalised") {
    ToyModel<> m2;
    m2.add("w", 6, 3, ParamRole::Matrix, 9);
    const Mat<double> w0 = m2[0];
    GradStore<double> gs(m2);
    OptimConfig c2;
    c2.nesterov = false;
    Optimizer<double> o2(gs, c2);
    const Mat<double> g = random_mat<double>(6, 3, 40);
    grad_of(gs, m2[0]) = g;
    o2.step(1.0);
    CHECK(max_abs(m2[0] - (w0 * (1 - 0.02 * 0.1) - 0.02 * std::sqrt(2.0) * newton_schulz(g, 5))) <
          1e-13);
  }
}

TEST_CASE("optim: clipping scales the global norm to max_norm and reports the pre-clip norm") {
  ToyModel<> model;
  model.add("a", 1, 2, ParamRole::Scalar, 1);
  model.add("b", 2, 2, ParamRole::Matrix, 2);
  GradStore<double> grads(model);
  auto set = [&] {
    grads.zero();
    grads.data()[0] = 3;  // a
    grads.data()[4] = 4;  // b(1, 0): global norm 5 across two tensors
  };
  OptimConfig cfg;
  SUBCASE("above the threshold") {
    cfg.max_grad_norm = 2;
    Optimizer<double> opt(grads, cfg);
    set();
    const auto info = opt.step();
    CHECK(info.grad_norm == doctest::Approx(5).epsilon(1e-15));
    CHECK(info.clipped);
    const double after = Eigen::Map<const Eigen::VectorXd>(grads.data(), grads.size()).norm();
    CHECK(std::abs(after - 2) < 1e-14);
    CHECK(std::abs(grads.data()[0] - 1.2) < 1e-15);
    CHECK(std::abs(grads.data()[4] - 1.6) < 1e-15);
  }
  SUBCASE("below the threshold or off: untouched") {
    for (double mx : {10.0, 0.0}) {
      cfg.max_grad_norm = mx;
      Optimizer<double> opt(grads, cfg);
      set();
      const auto info = opt.step();
      CHECK(info.grad_norm == doctest::Approx(5));
      CHECK_FALSE(info.clipped);
      CHECK(grads.data()[0] == 3);
      CHECK(grads.data()[4] == 4);
    }
  }
}

TEST_CASE("optim: a non-finite gradient skips the step and leaves everything untouched") {
  ToyModel<> model;
  model.add("mat", 5, 3, ParamRole::Matrix, 1);
  model.add("emb", 7, 3, ParamRole::Embedding, 2);
  GradStore<double> grads(model);
  for (const double bad : {std::numeric_limits<double>::quiet_NaN(),
                           std::numeric_limits<double>::infinity()}) {
    Optimizer<double> opt(grads, OptimConfig{});
    const Mat<double> m0 = model[0], e0 = model[1];
    for (Index i = 0; i < grads.size(); ++i) grads.data()[i] = 0.01 * double(i);
    grads.data()[17] = bad;
    const auto info = opt.step();
    CHECK(info.skipped);
    CHECK_FALSE(std::isfinite(info.grad_norm));
    CHECK(std::isnan(info.grad_norm) == std::isnan(bad));
    CHECK(model[0] == m0);
    CHECK(model[1] == e0);
    CHECK(opt.steps() == 0);
    opt.visit_state([](const std::string& n, MatMap<double>& t) {
      CAPTURE(n);
      CHECK(t.cwiseAbs().maxCoeff() == 0);
    });
    // A finite gradient afterwards steps normally.
    grads.data()[17] = 0.5;
    CHECK_FALSE(opt.step().skipped);
    CHECK(opt.steps() == 1);
    CHECK(model[0] != m0);
    CHECK(model[1] != e0);
  }
}

TEST_CASE("optim: schedule values at key steps") {
  const Schedule c = Schedule::constant(4);
  CHECK(c.factor(0) == doctest::Approx(0.2));
  CHECK(c.factor(3) == doctest::Approx(0.8));
  CHECK(c.factor(4) == 1.0);
  CHECK(c.factor(100000) == 1.0);
  CHECK(Schedule{}.factor(0) == 1.0);

  const Schedule cos = Schedule::warmup_cosine(10, 110, 0.1);
  CHECK(cos.factor(0) == doctest::Approx(1.0 / 11));
  CHECK(cos.factor(9) == doctest::Approx(10.0 / 11));
  CHECK(cos.factor(10) == doctest::Approx(1.0));
  CHECK(cos.factor(35) == doctest::Approx(0.1 + 0.9 * 0.5 * (1 + std::cos(kPi / 4))));
  CHECK(cos.factor(60) == doctest::Approx(0.55));
  CHECK(cos.factor(109) == doctest::Approx(0.1 + 0.9 * 0.5 * (1 + std::cos(kPi * 0.99))));
  CHECK(cos.factor(110) == doctest::Approx(0.1));
  CHECK(cos.factor(5000) == doctest::Approx(0.1));

  const Schedule wd = Schedule::warmup_linear_warmdown(0, 100, 40);
  CHECK(wd.factor(0) == 1.0);
  CHECK(wd.factor(59) == 1.0);
  CHECK(wd.factor(60) == 1.0);
  CHECK(wd.factor(80) == doctest::Approx(0.5));
  CHECK(wd.factor(99) == doctest::Approx(0.025));
  CHECK(wd.factor(100) == 0.0);
  const Schedule wd2{Schedule::WarmupLinearWarmdown, 5, 100, 40, 0.2};
  CHECK(wd2.factor(0) == doctest::Approx(1.0 / 6));
  CHECK(wd2.factor(5) == 1.0);
  CHECK(wd2.factor(80) == doctest::Approx(0.6));
  CHECK(wd2.factor(1000) == doctest::Approx(0.2));

  CHECK_THROWS_AS(Schedule::warmup_linear_warmdown(30, 100, 80), Error);
  CHECK_THROWS_AS(Schedule::warmup_cosine(10, 10), Error);
  CHECK_THROWS_AS(Schedule::warmup_cosine(0, 0), Error);
  CHECK_THROWS_AS(Schedule::warmup_cosine(0, 100, 1.5), Error);
  CHECK_THROWS_AS(Schedule::constant(-1), Error);
  CHECK_THROWS_AS(cos.factor(-1), Error);
  CHECK_THROWS_WITH_AS(Schedule::warmup_linear_warmdown(0, 10, -2), doctest::Contains("warmdown"),
                       Error);
}

TEST_CASE("optim: EMA follows the closed form and swaps values in place") {
  ToyModel<> model;
  auto& w = model.add("w", 2, 2, ParamRole::Matrix, 1);
  model.add("b", 1, 2, ParamRole::Scalar, 2);
  w.setConstant(1.0);
  const double* addr = w.data();
  const double d = 0.9;
  Ema<double> ema(model, d);
  // ema_k = d^k w0 + Σ_j (1−d) d^(k−j) w_j: with w = 1, then 2, then 4 → 1.1, then 1.39.
  w.setConstant(2.0);
  ema.update(model);
  w.setConstant(4.0);
  ema.update(model);
  const double want = d * d * 1 + (1 - d) * d * 2 + (1 - d) * 4;
  CHECK(want == doctest::Approx(1.39));
  int n = 0;
  ema.visit_state([&](const std::string& name, MatMap<double>& t) {
    if (n++ == 0) {
      CHECK(name == "ema.w");
      CHECK(max_abs(t - Mat<double>::Constant(2, 2, want)) < 1e-15);
    } else {
      CHECK(name == "ema.b");
      CHECK(max_abs(t - model[1]) < 1e-15);  // b never moved
    }
  });
  CHECK(n == 2);
  ema.swap(model);
  CHECK(max_abs(w - Mat<double>::Constant(2, 2, want)) < 1e-15);
  CHECK(w.data() == addr);  // values exchanged, not buffers
  ema.swap(model);
  CHECK(w == Mat<double>::Constant(2, 2, 4.0));

  ToyModel<> other;
  other.add("w", 2, 3, ParamRole::Matrix, 1);
  other.add("b", 1, 2, ParamRole::Scalar, 2);
  CHECK_THROWS_WITH_AS(ema.update(other), doctest::Contains("'w'"), Error);
  CHECK_THROWS_AS(Ema<double>(model, 1.5), Error);
}

TEST_CASE("optim: visit_state enumerates every buffer; a resumed optimiser matches") {
  for (const bool muon : {true, false}) {
    CAPTURE(muon);
    TinyHybrid18x6 model(3);
    GradStore<double> grads(model);
    const OptimConfig cfg = muon ? OptimConfig{} : OptimConfig::adamw(1e-3);
    Optimizer<double> opt(grads, cfg);
    std::set<std::string> names;
    Index n_matrix = 0;
    opt.visit_state([&](const std::string& n, MatMap<double>&) { CHECK(names.insert(n).second); });
    for (const auto& e : grads.entries()) {
      CAPTURE(e.name);
      if (e.role == ParamRole::Matrix) ++n_matrix;
      if (muon && e.role == ParamRole::Matrix) {
        CHECK(names.count("muon_mom." + e.name) == 1);
        CHECK(names.count("adam_m." + e.name) == 0);
      } else {
        CHECK(names.count("adam_m." + e.name) == 1);
        CHECK(names.count("adam_v." + e.name) == 1);
      }
    }
    const Index n_entries = Index(grads.entries().size());
    CHECK(Index(names.size()) == (muon ? n_matrix + 2 * (n_entries - n_matrix) : 2 * n_entries));
    CHECK(names.count("muon_mom.blocks.0.mixer.in_proj.weight") == Index(muon));
    CHECK(names.count("adam_m.blocks.0.mixer.A_log") == 1);
    MESSAGE("TinyHybrid18x6, ", std::string(muon ? "Muon" : "AdamW"), ": ", names.size(), " state tensors for ",
            n_entries, " parameters (", n_matrix, " matrices)");

    // Resume: copy parameters, state and step count into a second optimiser mid-run; the
    // next step must agree exactly with the uninterrupted one.
    std::vector<int> toks(24), targets(24);
    for (int i = 0; i < 24; ++i) toks[i] = (i * 37 + 5) % 258, targets[i] = (i * 11 + 3) % 258;
    auto grad_step = [&](TinyHybrid18x6& m, GradStore<double>& g, Optimizer<double>& o) {
      g.zero();
      Tape<double> tape(true, &g);
      tape.backward(m.loss(tape, toks, targets, 2, 12));
      o.step(0.7);
    };
    for (int s = 0; s < 3; ++s) grad_step(model, grads, opt);
    TinyHybrid18x6 model2(99);
    model2.visit([&](const std::string& n, MatMap<double>& t, ParamRole) {
      model.visit([&](const std::string& n1, MatMap<double>& t1, ParamRole) {
        if (n1 == n) t = t1;
      });
    });
    GradStore<double> grads2(model2);
    Optimizer<double> opt2(grads2, cfg);
    std::map<std::string, MatMap<double>*> saved;
    opt.visit_state([&](const std::string& n, MatMap<double>& t) { saved[n] = &t; });
    opt2.visit_state([&](const std::string& n, MatMap<double>& t) { t = *saved.at(n); });
    opt2.set_steps(opt.steps());
    CHECK(opt2.steps() == 3);
    grad_step(model, grads, opt);
    grad_step(model2, grads2, opt2);
    double diff = 0;
    model2.visit([&](const std::string& n, MatMap<double>& t, ParamRole) {
      model.visit([&](const std::string& n1, MatMap<double>& t1, ParamRole) {
        if (n1 == n) diff = std::max(diff, max_abs(t - t1));
      });
    });
    CHECK(diff == 0);
  }
}

TEST_CASE("optim: configuration errors name the field") {
  ToyModel<> model;
  model.add("w", 2, 2, ParamRole::Matrix, 1);
  GradStore<double> grads(model);
  OptimConfig cfg;
  cfg.dynamics.lr = -1;
  CHECK_THROWS_WITH_AS(Optimizer<double>(grads, cfg), doctest::Contains("dynamics.lr"), Error);
  cfg = OptimConfig{};
  cfg.beta2 = 1.0;
  CHECK_THROWS_WITH_AS(Optimizer<double>(grads, cfg), doctest::Contains("beta2"), Error);
  cfg = OptimConfig{};
  cfg.max_grad_norm = -1;
  CHECK_THROWS_WITH_AS(Optimizer<double>(grads, cfg), doctest::Contains("max_grad_norm"), Error);
  Optimizer<double> ok(grads, OptimConfig{});
  CHECK_THROWS_AS(ok.step(-0.5), Error);
}

namespace {

// Trains TinyHybrid18x6 on one fixed batch; returns (first loss, last loss).
std::pair<double, double> overfit(const OptimConfig& cfg, int n_steps) {
  TinyHybrid18x6 model(7);
  const Index B = 2, T = 16;
  Rng rng(123);
  std::vector<int> seq(B * (T + 1));
  for (auto& x : seq) x = int(rng.below(model.vocab()));
  std::vector<int> toks(B * T), targets(B * T);
  for (Index b = 0; b < B; ++b)
    for (Index t = 0; t < T; ++t) {
      toks[b * T + t] = seq[b * (T + 1) + t];
      targets[b * T + t] = seq[b * (T + 1) + t + 1];
    }
  GradStore<double> grads(model);
  Tape<double> tape(true, &grads);
  Optimizer<double> opt(grads, cfg);
  const Schedule sched = Schedule::warmup_cosine(3, n_steps, 0.1);
  double first = 0, last = 0;
  for (int s = 0; s < n_steps; ++s) {
    grads.zero();
    const Var<double> loss = model.loss(tape, toks, targets, B, T);
    last = loss.v[0];
    if (s == 0) first = last;
    tape.backward(loss);
    tape.rewind();
    const auto info = opt.step(sched.factor(s));
    REQUIRE_FALSE(info.skipped);
  }
  Tape<double> eval(false);
  last = model.loss(eval, toks, targets, B, T).v[0];
  return {first, last};
}

}  // namespace

TEST_CASE("optim: TinyHybrid18x6 overfits a fixed batch with Muon+AdamW and with AdamW") {
  const int n_steps = 30;
  OptimConfig muon;
  muon.matrix = {0.05, 0.0};
  muon.embedding.lr = muon.scalar.lr = muon.dynamics.lr = 0.02;
  muon.max_grad_norm = 1.0;
  const auto [m0, m1] = overfit(muon, n_steps);
  MESSAGE("Muon+AdamW: loss ", m0, " -> ", m1, " in ", n_steps, " steps (x", m0 / m1, ")");
  CHECK(m1 < m0 / 10);

  OptimConfig adam = OptimConfig::adamw(0.02, 0.0);
  adam.max_grad_norm = 1.0;
  const auto [a0, a1] = overfit(adam, n_steps);
  MESSAGE("AdamW only: loss ", a0, " -> ", a1, " in ", n_steps, " steps (x", a0 / a1, ")");
  CHECK(a1 < a0 / 10);
}

}  // namespace hybrid_test_optim
