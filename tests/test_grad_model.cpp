// Whole-model gradients, every Tiny alias, double precision: the tape's gradient of the
// mean cross-entropy against central finite differences — at sampled coordinates of every
// parameter tensor, and along a random direction of each whole tensor.
#include <doctest/doctest.h>

#include <hybrid/alias_registry.hpp>
#include <hybrid/model.hpp>

#include "grad_check.hpp"

using namespace hybrid;

// This file's own namespace: the tests compile in batches (tests/CMakeLists.txt).
namespace hybrid_test_grad_model {

namespace {

template <class M>
void check_model_gradients(const char* name) {
  CAPTURE(name);
  M model(5);
  const Index B = 2, T = 19;  // T > 2 chunks of 8 and not a multiple of 8; > window 6
  Rng rng(3);
  std::vector<int> toks(B * T), targets(B * T);
  for (auto& x : toks) x = int(rng.below(model.vocab()));
  for (Index i = 0; i < B * T; ++i) targets[i] = i % 7 == 3 ? -1 : int(rng.below(model.vocab()));

  GradStore<double> grads(model);
  Tape<double> tape(true, &grads);
  const Var<double> loss = model.loss(tape, toks, targets, B, T);
  tape.backward(loss);

  Tape<double> eval(false);
  auto L = [&] {
    eval.rewind();
    return model.loss(eval, toks, targets, B, T).v[0];
  };
  CHECK(std::abs(L() - loss.v[0]) < 1e-12);

  Index n_tensors = 0;
  for (const auto& e : grads.entries()) {
    CAPTURE(e.name);
    MatMap<double> w = grads.value_of(e);
    const double* g = grads.grad_of(e);
    // Sampled coordinates.
    const auto r = testing::fd_check(w.data(), g, w.size(), L, 3, 1e-6, 1e-4, derive_seed(9, e.name));
    CHECK(r.max_abs_err < 1e-7);
    CHECK(r.max_rel_err < 1e-4);
    // A random direction through the whole tensor: dL/de = g · dir.
    Mat<double> dir = testing::random_weights(w.rows(), w.cols(), derive_seed(11, e.name));
    dir /= dir.norm();
    const double h = 1e-6;
    w += h * dir;
    const double lp = L();
    w -= 2 * h * dir;
    const double lm = L();
    w += h * dir;
    const double numeric = (lp - lm) / (2 * h);
    const double analytic = Eigen::Map<const Eigen::VectorXd>(g, w.size()).dot(
        Eigen::Map<const Eigen::VectorXd>(dir.data(), w.size()));
    CHECK(std::abs(numeric - analytic) < 1e-7 + 1e-5 * std::abs(numeric));
    ++n_tensors;
  }
  CHECK(n_tensors == Index(grads.entries().size()));
  // The gradient must not be trivially zero.
  CHECK(Eigen::Map<const Eigen::VectorXd>(grads.data(), grads.size()).norm() > 1e-3);
}

}  // namespace

TEST_CASE("grad: model TinyGolf15x3") { check_model_gradients<TinyGolf15x3>("TinyGolf15x3"); }
TEST_CASE("grad: model TinyGolf15x3E2") { check_model_gradients<TinyGolf15x3E2>("TinyGolf15x3E2"); }
TEST_CASE("grad: model TinyTransformer") { check_model_gradients<TinyTransformer>("TinyTransformer"); }
TEST_CASE("grad: model TinyMamba") { check_model_gradients<TinyMamba>("TinyMamba"); }
TEST_CASE("grad: model TinyHybrid18x6") { check_model_gradients<TinyHybrid18x6>("TinyHybrid18x6"); }
TEST_CASE("grad: model TinyLfm2Ssm") { check_model_gradients<TinyLfm2Ssm>("TinyLfm2Ssm"); }
TEST_CASE("grad: model TinyLfm2") { check_model_gradients<TinyLfm2>("TinyLfm2"); }
TEST_CASE("grad: model TinyScaled") { check_model_gradients<TinyScaled>("TinyScaled"); }

TEST_CASE("grad: gradients accumulate across backward passes until zeroed") {
  TinyHybrid18x6 model(2);
  std::vector<int> toks(12), targets(12);
  for (int i = 0; i < 12; ++i) toks[i] = i * 7 % 258, targets[i] = (i * 11 + 1) % 258;
  GradStore<double> grads(model);
  Tape<double> tape(true, &grads);
  tape.backward(model.loss(tape, toks, targets, 1, 12));
  const Eigen::VectorXd once = Eigen::Map<const Eigen::VectorXd>(grads.data(), grads.size());
  tape.rewind();
  tape.backward(model.loss(tape, toks, targets, 1, 12));
  const Eigen::VectorXd twice = Eigen::Map<const Eigen::VectorXd>(grads.data(), grads.size());
  CHECK((twice - 2 * once).cwiseAbs().maxCoeff() < 1e-12);
  grads.zero();
  CHECK(Eigen::Map<const Eigen::VectorXd>(grads.data(), grads.size()).cwiseAbs().maxCoeff() == 0);
}

TEST_CASE("grad: no allocation inside a step after the first") {
  TinyGolf15x3 model(2);
  std::vector<int> toks(24), targets(24);
  for (int i = 0; i < 24; ++i) toks[i] = i * 5 % 258, targets[i] = (i * 3 + 2) % 258;
  GradStore<double> grads(model);
  Tape<double> tape(true, &grads);
  tape.backward(model.loss(tape, toks, targets, 2, 12));
  tape.rewind();
  const auto allocs = tape.arena().allocations();
  for (int step = 0; step < 3; ++step) {
    tape.backward(model.loss(tape, toks, targets, 2, 12));
    tape.rewind();
  }
  CHECK(tape.arena().allocations() == allocs);
}

namespace {
Eigen::VectorXd model_grad(RuntimeModel<double>& m, const std::vector<int>& toks,
                           const std::vector<int>& tg, Index B, Index T,
                           const TrainingOptions& o = {}) {
  GradStore<double> grads(m);
  Tape<double> tape(true, &grads);
  tape.backward(m.loss(tape, toks, tg, B, T, 0, o));
  return Eigen::Map<const Eigen::VectorXd>(grads.data(), grads.size());
}
}  // namespace

TEST_CASE("grad: gradient checkpointing (recompute) gives the same gradients") {
  RuntimeModel<double> m(TinyHybrid18x6::desc(), 4);
  std::vector<int> toks(2 * 17), tg(2 * 17);
  for (int i = 0; i < 34; ++i) toks[i] = (i * 13 + 5) % 258, tg[i] = (i * 7 + 1) % 258;
  const Eigen::VectorXd plain = model_grad(m, toks, tg, 2, 17);
  const Eigen::VectorXd re = model_grad(m, toks, tg, 2, 17, {.recompute = true});
  CHECK((plain - re).cwiseAbs().maxCoeff() < 1e-12);
  CHECK(plain.norm() > 1e-3);
}

TEST_CASE("grad: drop-path masks whole sequences per branch, and its gradient is exact") {
  RuntimeModel<double> m(TinyGolf15x3E2::desc(), 4);
  std::vector<int> toks(3 * 11), tg(3 * 11);
  for (int i = 0; i < 33; ++i) toks[i] = (i * 17 + 3) % 258, tg[i] = (i * 5 + 2) % 258;
  const Eigen::VectorXd plain = model_grad(m, toks, tg, 3, 11);
  const TrainingOptions drop{.drop_path = 0.5, .drop_seed = 1};
  const Eigen::VectorXd dropped = model_grad(m, toks, tg, 3, 11, drop);
  CHECK((plain - dropped).norm() > 1e-6);  // some branch was dropped
  // With the mask fixed (same seed), the tape's gradient matches finite differences.
  GradStore<double> grads(m);
  Tape<double> tape(true, &grads), eval(true);
  tape.backward(m.loss(tape, toks, tg, 3, 11, 0, drop));
  auto L = [&] {  // a recording tape (drop-path is a training-time op); its nodes are discarded
    eval.rewind();
    return m.loss(eval, toks, tg, 3, 11, 0, drop).v[0];
  };
  for (const auto& e : grads.entries()) {
    if (e.name.find("blocks.1.") != 0 && e.name.find("blocks.14.") != 0) continue;
    CAPTURE(e.name);
    const auto r = testing::fd_check(grads.value_of(e).data(), grads.grad_of(e), e.size(), L, 4);
    CHECK(r.max_rel_err < 1e-4);
  }
  // Recompute and drop-path together still give the same gradient.
  CHECK((model_grad(m, toks, tg, 3, 11, {.recompute = true, .drop_path = 0.5, .drop_seed = 1}) - dropped)
            .cwiseAbs().maxCoeff() < 1e-12);
}

namespace {
// The loss and every parameter gradient of a training step, through loss() (the fused,
// chunked head + loss) or through the (B*T, V) logits and cross_entropy (the unfused path).
struct StepGrads {
  double loss = 0;
  Eigen::VectorXd grad;
};
StepGrads step_grads(RuntimeModel<double>& m, const std::vector<int>& toks,
                     const std::vector<int>& tg, Index B, Index T, double z, bool fused,
                     const TrainingOptions& o = {}) {
  GradStore<double> grads(m);
  Tape<double> tape(true, &grads);
  const Var<double> l = fused ? m.loss(tape, toks, tg, B, T, z, o)
                              : ag::cross_entropy(tape, m.logits(tape, toks, B, T, o), tg.data(), z);
  tape.backward(l);
  return {l.v[0], Eigen::Map<const Eigen::VectorXd>(grads.data(), grads.size())};
}
}  // namespace

TEST_CASE("grad: the fused head + loss equals logits + cross_entropy on every Tiny alias") {
  const Index B = 2, T = 13;
  for (const AliasInfo& a : shipped_aliases()) {
    if (std::string_view(a.name).rfind("Tiny", 0) != 0) continue;
    CAPTURE(a.name);
    RuntimeModel<double> m(a.desc(), 6);
    Rng rng(8);
    std::vector<int> toks(B * T), tg(B * T);
    for (auto& x : toks) x = int(rng.below(m.vocab()));
    for (Index i = 0; i < B * T; ++i) tg[i] = i % 5 == 2 ? -1 : int(rng.below(m.vocab()));
    for (const bool recompute : {false, true}) {
      CAPTURE(recompute);
      const TrainingOptions o{.recompute = recompute};
      const StepGrads f = step_grads(m, toks, tg, B, T, 0.01, true, o);
      const StepGrads u = step_grads(m, toks, tg, B, T, 0.01, false, o);
      CHECK(std::abs(f.loss - u.loss) < 1e-12);
      CHECK((f.grad - u.grad).cwiseAbs().maxCoeff() < 1e-12);
      CHECK(u.grad.norm() > 1e-3);
    }
    // Evaluation's score: the same nats and argmax hits as the logits.
    Tape<double> t(false);
    const auto s = m.score(t, toks, tg, B, T);
    t.rewind();
    const Mat<double> logits = m.logits(t, toks, B, T).val();
    std::vector<double> lse(B * T);
    const double nats = ops::cross_entropy_forward<double>(logits, tg.data(), lse.data(), 0);
    Index scored = 0, correct = 0;
    for (Index r = 0; r < B * T; ++r) {
      if (tg[r] < 0) continue;
      Eigen::Index arg = 0;
      logits.row(r).maxCoeff(&arg);
      ++scored;
      correct += arg == tg[r];
    }
    CHECK(std::abs(s.nats - nats) < 1e-10);
    CHECK(s.scored == scored);
    CHECK(s.correct == correct);
  }
}

TEST_CASE("grad: head_loss gives the same loss and gradients at every chunk size") {
  const Index R = 23, D = 7, V = 11;
  const Mat<double> x = testing::random_weights(R, D, 3) * 3, W = testing::random_weights(V, D, 4);
  std::vector<int> tg(R);
  for (Index r = 0; r < R; ++r) tg[r] = r % 6 == 1 ? -1 : int((r * 5 + 3) % V);
  const ops::HeadLoss base{.divisor = 1.5, .softcap = 2, .z_loss = 0.03};
  std::vector<double> lse0(R), lse(R), ws(R * V);
  Mat<double> dx0 = Mat<double>::Zero(R, D), dW0 = Mat<double>::Zero(V, D);
  const double l0 = ops::head_loss_forward<double>(x, W, tg.data(), base, lse0.data(), ws.data());
  ops::head_loss_backward<double>(x, W, tg.data(), lse0.data(), 0.1, base, dx0, dW0, ws.data());
  for (const Index c : {1, 4, 22, 23, 100}) {
    CAPTURE(c);
    ops::HeadLoss h = base;
    h.chunk = c;
    Mat<double> dx = Mat<double>::Zero(R, D), dW = Mat<double>::Zero(V, D);
    CHECK(std::abs(ops::head_loss_forward<double>(x, W, tg.data(), h, lse.data(), ws.data()) - l0) < 1e-12);
    ops::head_loss_backward<double>(x, W, tg.data(), lse.data(), 0.1, h, dx, dW, ws.data());
    CHECK((dx - dx0).cwiseAbs().maxCoeff() < 1e-13);
    CHECK((dW - dW0).cwiseAbs().maxCoeff() < 1e-13);
  }
  CHECK(dx0.norm() > 1e-3);
  // Ignored rows get no gradient.
  CHECK(dx0.row(1).cwiseAbs().maxCoeff() == 0);
}

}  // namespace hybrid_test_grad_model
