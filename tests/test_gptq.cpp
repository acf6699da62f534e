// GPTQ (quant/gptq.hpp): with uncorrelated inputs it is round-to-nearest; with correlated
// ones it lowers the layer-output error; on the layers of a model trained on the corpus it
// beats round-to-nearest on held-out inputs; Hessians add up over calls and rows; the
// sequential mode agrees with the one-pass mode on the first block.
#include <doctest/doctest.h>

#include <hybrid/aliases.hpp>
#include <hybrid/data/text.hpp>
#include <hybrid/model.hpp>
#include <hybrid/quant/gptq.hpp>
#include <hybrid/train/trainer.hpp>
#include <random>

using namespace hybrid;
using namespace hybrid::quant;

// This file's own namespace: the tests compile in batches (tests/CMakeLists.txt).
namespace hybrid_test_gptq {

namespace {

std::vector<float> random_weights(Index rows, Index cols, std::uint64_t seed) {
  std::mt19937_64 g(seed);
  std::normal_distribution<float> n(0.0f, 0.05f);
  std::vector<float> w(static_cast<std::size_t>(rows * cols));
  for (float& v : w) v = n(g);
  return w;
}

// x (n, cols) with correlated columns: a random mix of a few factors plus noise, and
// column scales spread over two decades, as real activations have.
Eigen::MatrixXd correlated_inputs(Index n, Index cols, std::uint64_t seed) {
  std::mt19937_64 g(seed);
  std::normal_distribution<double> z(0.0, 1.0);
  const Index k = 6;
  Eigen::MatrixXd f(n, k), mix(k, cols), x(n, cols);
  for (Index i = 0; i < n; ++i)
    for (Index j = 0; j < k; ++j) f(i, j) = z(g);
  for (Index i = 0; i < k; ++i)
    for (Index j = 0; j < cols; ++j) mix(i, j) = z(g);
  x = f * mix;
  for (Index i = 0; i < n; ++i)
    for (Index j = 0; j < cols; ++j) x(i, j) = (x(i, j) + 0.3 * z(g)) * std::pow(10.0, double(j % 5) / 2.0 - 1.0);
  return x;
}

std::string slurp_corpus() { return data::detail::read_file_bytes(HYBRID_DATA_DIR "/tinyshakespeare.txt", "corpus"); }

std::vector<int> byte_ids(const std::string& text, std::size_t at, Index n) {
  std::vector<int> ids(static_cast<std::size_t>(n));
  for (Index i = 0; i < n; ++i) ids[std::size_t(i)] = static_cast<unsigned char>(text[at + std::size_t(i)]);
  return ids;
}

}  // namespace

TEST_CASE("gptq: uncorrelated inputs (H = I) give round-to-nearest exactly") {
  const Index rows = 24, cols = 64;
  const auto w = random_weights(rows, cols, 1);
  for (const QuantSpec spec : {QuantSpec{.bits = 4}, QuantSpec{.bits = 6, .rule = ScaleRule::SdClip, .sd_k = 2.5, .group = 32}}) {
    CAPTURE(spec.bits);
    const QTensor rtn = quantize(w.data(), rows, cols, spec);
    for (bool act_order : {false, true}) {
      const QTensor g = gptq_quantize(w.data(), rows, cols, Eigen::MatrixXd::Identity(cols, cols) * 3.0, spec,
                                      {.act_order = act_order, .f16_scales = false});
      CHECK(g.q == rtn.q);
      CHECK(g.scales == rtn.scales);
    }
  }
}

TEST_CASE("gptq: correlated inputs — lower layer-output error than round-to-nearest, same scales") {
  const Index rows = 32, cols = 96, n = 512;
  const auto w = random_weights(rows, cols, 2);
  const Eigen::MatrixXd x = correlated_inputs(n, cols, 3);
  const Eigen::MatrixXd h = x.transpose() * x;
  for (const QuantSpec spec : {QuantSpec{.bits = 3}, QuantSpec{.bits = 4, .rule = ScaleRule::MseClip},
                               QuantSpec{.bits = 6, .group = 32}, QuantSpec{.bits = 8}}) {
    for (const Index block : {Index(128), Index(7)}) {  // one block, and blocks with a ragged tail
      CAPTURE(spec.bits);
      CAPTURE(block);
      const QTensor rtn = quantize(w.data(), rows, cols, spec);
      const QTensor g = gptq_quantize(w.data(), rows, cols, h, spec, {.block = block, .f16_scales = false});
      g.check("test");
      CHECK(g.scales == rtn.scales);  // static scales: GPTQ changes only the integers
      const double er = output_error(w.data(), rtn, h), eg = output_error(w.data(), g, h);
      MESSAGE(spec.bits, " bits, block ", block, ": output error RTN ", er, ", GPTQ ", eg, " (", eg / er, ")");
      CHECK(eg < 0.8 * er);
      // output_error is ||x (W - Q)^T||^2 computed directly.
      Eigen::MatrixXd D(rows, cols);
      for (Index r = 0; r < rows; ++r)
        for (Index c = 0; c < cols; ++c) D(r, c) = double(w[std::size_t(r * cols + c)]) - double(g.value(r, c));
      CHECK(eg == doctest::Approx((x * D.transpose()).squaredNorm()).epsilon(1e-9));
    }
  }
  // The blocking is an evaluation order only: block sizes give the same integers but for
  // rounding ties, so nearly all agree.
  const QuantSpec s4{.bits = 4};
  const QTensor a = gptq_quantize(w.data(), rows, cols, h, s4, {.block = 128}),
                b = gptq_quantize(w.data(), rows, cols, h, s4, {.block = 5});
  Index same = 0;
  for (std::size_t i = 0; i < a.q.size(); ++i) same += a.q[i] == b.q[i];
  CHECK(double(same) > 0.99 * double(a.q.size()));
}

TEST_CASE("gptq: dead inputs, degenerate Hessians and bad arguments") {
  const Index rows = 4, cols = 8;
  auto w = random_weights(rows, cols, 4);
  Eigen::MatrixXd h = Eigen::MatrixXd::Identity(cols, cols);
  h(3, 3) = 0;  // an input that is always zero: its weights are irrelevant and become 0
  const QTensor t = gptq_quantize(w.data(), rows, cols, h, {.bits = 4});
  for (Index r = 0; r < rows; ++r) CHECK(t.q[std::size_t(r * cols + 3)] == 0);
  CHECK_THROWS_WITH(gptq_quantize(w.data(), rows, cols, Eigen::MatrixXd::Identity(5, 5), {.bits = 4}),
                    doctest::Contains("expected (8, 8)"));
  Eigen::MatrixXd bad = h;
  bad(1, 1) = -2;
  CHECK_THROWS_WITH(gptq_quantize(w.data(), rows, cols, bad, {.bits = 4}), doctest::Contains("below zero"));
  bad(1, 1) = std::nan("");
  CHECK_THROWS_WITH(gptq_quantize(w.data(), rows, cols, bad, {.bits = 4}), doctest::Contains("non-finite"));
  CHECK_THROWS_WITH(gptq_quantize(w.data(), rows, cols, h, {.bits = 4}, {.damp = 0}), doctest::Contains("damping"));
  CHECK_THROWS_WITH(gptq_quantize(w.data(), rows, cols, h, {.bits = 9}), doctest::Contains("outside 2 to 8"));
}

TEST_CASE("gptq: Hessians through the model's forward add over calls and rows, one per projection") {
  const RuntimeModel<float> m(TinyGolf15x3E2::desc(), 5);
  const std::string text = slurp_corpus();
  const Index T = 24;
  const std::vector<int> two = byte_ids(text, 1000, 2 * T), a(two.begin(), two.begin() + T), b(two.begin() + T, two.end());
  const Hessians h2 = collect_hessians(m, two, 2, T), ha = collect_hessians(m, a, 1, T), hb = collect_hessians(m, b, 1, T);
  Index projections = 0;
  for (const auto& e : m.param_table().entries()) projections += e.role == ParamRole::Matrix;
  CHECK(Index(h2.size()) == projections);
  for (const auto& [off, h] : h2) {
    CAPTURE(off);
    CHECK(h.n == 2 * T);
    CHECK(ha.at(off).n == T);
    CHECK((h.h - h.h.transpose()).cwiseAbs().maxCoeff() == 0.0);
    const double scale = h.h.cwiseAbs().maxCoeff();
    CHECK((h.h - ha.at(off).h - hb.at(off).h).cwiseAbs().maxCoeff() <= 1e-4 * scale);
  }
  // The first block's in_proj sees the normed embeddings: sum x^T x of them, computed here.
  const ParamInfo* in0 = nullptr;
  for (const auto& e : m.param_table().entries())
    if (e.name == "blocks.0.mixer.in_proj.weight") in0 = &e;
  REQUIRE(in0);
  const ModelDesc d = m.desc();
  const float *emb = nullptr, *norm_w = nullptr;
  for (const auto& e : m.param_table().entries()) {
    if (e.name == "embed.weight") emb = m.param_values() + e.offset;
    if (e.name == "blocks.0.norm1.weight") norm_w = m.param_values() + e.offset;
  }
  REQUIRE(emb);
  REQUIRE(norm_w);
  const Index D = d.model.d_model;
  Eigen::MatrixXd xs(T, D);
  for (Index t = 0; t < T; ++t) {
    Eigen::VectorXd row(D);
    for (Index c = 0; c < D; ++c) row(c) = double(emb[a[std::size_t(t)] * D + c]) * d.model.embedding_multiplier;
    const double rms = std::sqrt(row.squaredNorm() / double(D) + d.model.norm_eps);
    for (Index c = 0; c < D; ++c) xs(t, c) = row(c) / rms * double(norm_w[c]);
  }
  const Eigen::MatrixXd want = xs.transpose() * xs;
  CHECK((ha.at(in0->offset).h - want).cwiseAbs().maxCoeff() <= 1e-4 * want.cwiseAbs().maxCoeff());
  RuntimeModel<float> stored = m;
  stored.set_weight_storage(DType::I8);
  CHECK_THROWS_WITH(collect_hessians(stored, a, 1, T), doctest::Contains("set_weight_storage(DType::F32)"));
  CHECK_THROWS_WITH(collect_hessians(m, a, 2, T), doctest::Contains("expected B * T"));
}

TEST_CASE("gptq: on a model trained on the corpus, lower held-out layer-output error than RTN") {
  // A few dozen steps of train's loop on the shipped corpus: weights with structure, and
  // activations with the correlations GPTQ exploits.
  TinyGolf15x3E2::rebind<float> model(7);
  data::TextSource src(HYBRID_DATA_DIR "/tinyshakespeare.txt", 11);
  train::TrainConfig c;
  c.batch = 4;
  c.seq_len = 64;
  c.steps = 40;
  c.schedule = train::Schedule::warmup_cosine(4, 40, 0.1);
  c.seed = 2;
  train::Trainer<float> tr(model, src, c);
  double first = 0, last = 0;
  for (int i = 0; i < c.steps; ++i) (i == 0 ? first : last) = tr.step().loss;
  MESSAGE("trained: loss ", first, " -> ", last);
  REQUIRE(last < first);

  const std::string text = slurp_corpus();
  const Index T = 64, B = 8;
  const std::vector<int> calib = byte_ids(text, 5000, B * T);                   // train split
  const std::vector<int> held = byte_ids(text, text.size() * 95 / 100, B * T);  // val split
  const Hessians hc = collect_hessians(model, calib, B, T), hh = collect_hessians(model, held, B, T);
  QuantPolicy p;
  p.set_all({.bits = 4});
  std::vector<GptqTensorReport> rep;
  const Artifact a = quantize_model_gptq(model, p, calib, B, T, {}, &rep);
  CHECK(a.policy["method"] == "gptq");
  REQUIRE(!rep.empty());
  double rtn_held = 0, gptq_held = 0;
  int better = 0;
  for (const auto& r : rep) {
    CAPTURE(r.name);
    CHECK(r.gptq_error < r.rtn_error);  // on the calibration inputs, every tensor
    const ParamInfo* e = nullptr;
    for (const auto& x : model.param_table().entries())
      if (x.name == r.name) e = &x;
    REQUIRE(e);
    const float* w = model.param_values() + e->offset;
    const QTensor* q = nullptr;
    for (const auto& t : a.tensors)
      if (t.name == r.name) q = &t.q;
    REQUIRE(q);
    const double er = output_error(w, quantize(w, e->rows, e->cols, {.bits = 4}), hh.at(e->offset).h);
    const double eg = output_error(w, *q, hh.at(e->offset).h);
    rtn_held += er, gptq_held += eg, better += eg < er;
  }
  MESSAGE("held-out layer-output error, all projections: RTN ", rtn_held, ", GPTQ ", gptq_held, "; GPTQ better on ",
          better, " of ", rep.size());
  CHECK(gptq_held < 0.9 * rtn_held);
  CHECK(better * 10 >= int(rep.size()) * 8);

  // Sequential: block 0 sees the float embeddings either way, so its tensors agree.
  const Artifact s = quantize_model_gptq(model, p, calib, B, T, {.sequential = true});
  CHECK(s.policy["gptq"]["sequential"] == true);
  Index compared = 0, differ = 0;
  for (std::size_t i = 0; i < a.tensors.size(); ++i) {
    REQUIRE(a.tensors[i].name == s.tensors[i].name);
    if (a.tensors[i].kind != ArtifactTensor::Kind::Quantized) continue;
    const int blk = block_of(a.tensors[i].name);
    if (blk == 0) {
      CHECK(a.tensors[i].q.q == s.tensors[i].q.q);
      ++compared;
    }
    if (blk >= 2) differ += a.tensors[i].q.q != s.tensors[i].q.q;
  }
  CHECK(compared >= 2);  // in_proj and out_proj
  CHECK(differ > 0);  // later blocks saw the quantised prefix's inputs
  // The artifact loads and computes.
  const RuntimeModel<float> qm = load_artifact_model(a);
  const Mat<float> l = qm.forward(held, B, T);
  CHECK(l.allFinite());
}

TEST_CASE("lqer: the best rank-r correction of the error, weighted by the inputs, through an artifact") {
  const Index rows = 40, cols = 48;
  const auto w = random_weights(rows, cols, 8);
  const QTensor q = quantize(w.data(), rows, cols, {.bits = 3});
  Eigen::MatrixXd e(rows, cols);
  for (Index i = 0; i < rows; ++i)
    for (Index j = 0; j < cols; ++j) e(i, j) = double(w[std::size_t(i * cols + j)]) - double(q.value(i, j));
  const Eigen::VectorXd sv = Eigen::JacobiSVD<Eigen::MatrixXd>(e).singularValues();
  const auto residual = [&](const LqerFactors& f) {
    std::vector<float> hat(static_cast<std::size_t>(rows * cols));
    dequantize(q, hat.data());
    add_correction(f, hat.data(), rows, cols);
    Eigen::MatrixXd d(rows, cols);
    for (Index i = 0; i < rows; ++i)
      for (Index j = 0; j < cols; ++j) d(i, j) = double(w[std::size_t(i * cols + j)]) - double(hat[std::size_t(i * cols + j)]);
    return d;
  };
  for (const int r : {1, 4, 8}) {
    CAPTURE(r);
    // With 8-bit factors the correction is the truncated SVD to within the factors' rounding.
    const LqerFactors f = lqer_factors(w.data(), q, {.rank = r, .factor = {.bits = 8}});
    CHECK(f.rank() == r);
    CHECK(f.at.cols == rows);
    CHECK(f.b.cols == cols);
    const double tail = sv.tail(sv.size() - r).squaredNorm();
    CHECK(residual(f).squaredNorm() == doctest::Approx(tail).epsilon(0.02));
    // int4 factors still remove most of what the rank allows.
    const double e4 = residual(lqer_factors(w.data(), q, {.rank = r})).squaredNorm();
    CHECK(e4 < e.squaredNorm() - 0.7 * (e.squaredNorm() - tail));
  }
  // Weighted by correlated inputs: a lower layer-output error than the unweighted correction.
  const Eigen::MatrixXd x = correlated_inputs(256, cols, 9);
  const Eigen::MatrixXd h = x.transpose() * x;
  const Eigen::MatrixXd dw = residual(lqer_factors(w.data(), q, {.rank = 4}, &h)),
                        du = residual(lqer_factors(w.data(), q, {.rank = 4}));
  const double ew = (dw * h).cwiseProduct(dw).sum(), eu = (du * h).cwiseProduct(du).sum();
  MESSAGE("rank-4 correction, output error: weighted ", ew, ", unweighted ", eu, ", none ", (e * h).cwiseProduct(e).sum());
  CHECK(ew < eu);
  CHECK_THROWS_WITH(lqer_factors(w.data(), q, {.rank = 0}), doctest::Contains("expected 1 to 40"));

  // A model's artifact: the loaded weights are the dequantised values plus the correction,
  // and the logits move toward the float model's.
  const RuntimeModel<float> m(TinyGolf15x3E2::desc(), 12);
  QuantPolicy p;
  p.set_all({.bits = 3});
  Artifact plain = quantize_model(m, p), corr = plain;
  const int n = add_lqer(corr, m, {.rank = 4});
  Index projections = 0;
  for (const auto& en : m.param_table().entries()) projections += en.role == ParamRole::Matrix;
  CHECK(n == projections);
  CHECK(corr.tensors.size() == plain.tensors.size() + 2 * std::size_t(n));
  ArtifactOptions ao;
  ao.codecs = {Codec::Raw, Codec::Zstd};
  const std::string bytes = artifact_bytes(corr, ao);
  const Artifact back = read_artifact_memory(bytes.data(), bytes.size(), "test");
  const RuntimeModel<float> mq = load_artifact_model(plain), mc = load_artifact_model(back);
  for (const auto& en : m.param_table().entries()) {
    if (en.name != "blocks.1.mixer.out_proj.weight") continue;
    const ArtifactTensor *t = nullptr, *fa = nullptr, *fb = nullptr;
    for (const auto& at : back.tensors) {
      if (at.name == en.name) t = &at;
      if (at.name == en.name + kLqerA) fa = &at;
      if (at.name == en.name + kLqerB) fb = &at;
    }
    REQUIRE((t && fa && fb));
    std::vector<float> want(static_cast<std::size_t>(en.size()));
    dequantize(t->q, want.data());
    add_correction(fa->q, fb->q, want.data(), en.rows, en.cols);
    RuntimeModel<float> deq = mc;
    deq.set_weight_storage(DType::F32);
    for (Index k = 0; k < en.size(); ++k) CHECK(deq.param_values()[en.offset + k] == want[std::size_t(k)]);
  }
  const std::vector<int> ids = {256, 72, 101, 108, 108, 111, 10, 33, 200, 5};
  const Mat<float> lf = m.forward(ids, 1, 10), lq = mq.forward(ids, 1, 10), lc = mc.forward(ids, 1, 10);
  MESSAGE("max logit error: 3-bit ", (lf - lq).cwiseAbs().maxCoeff(), ", with LQER ", (lf - lc).cwiseAbs().maxCoeff());
  CHECK((lf - lc).squaredNorm() < (lf - lq).squaredNorm());
  // A damaged correction: one factor missing, or a factor of another shape.
  Artifact one = corr;
  one.tensors.pop_back();
  CHECK_THROWS_WITH(load_artifact_model(one), doctest::Contains("has only one of its two LQER factors"));
  Artifact wrong = corr;
  std::swap(wrong.tensors[wrong.tensors.size() - 1].q, wrong.tensors[wrong.tensors.size() - 3].q);
  CHECK_THROWS_WITH(load_artifact_model(wrong), doctest::Contains("do not correct"));
}

}  // namespace hybrid_test_gptq
