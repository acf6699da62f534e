// Packed documents (TrainingOptions::doc_starts): a batch of concatenated documents gives
// each document the logits, loss and parameter gradients it has alone — attention masked at
// the boundaries (sliding window too), Mamba-2's conv and SSD scan (recurrent and chunked,
// documents not a multiple of the chunk) and ShortConv from zero state, RoPE and the bigram
// embedding restarting — in double precision; a packing of only the row starts equals the
// unpacked path bit for bit; bad starts fail naming the entry.
#include <doctest/doctest.h>

#include <hybrid/aliases.hpp>
#include <hybrid/data/source.hpp>

#include "grad_check.hpp"

using namespace hybrid;

// This file's own namespace: the tests compile in batches (tests/CMakeLists.txt).
namespace hybrid_test_packed {

namespace {

// B = 2 rows of T = 20: row 0 holds documents of 5, 11 and 4 tokens, row 1 of 7 and 13
// (11 and 13 span two SSD chunks of 8 with a short last one; both exceed window 6).
constexpr Index kB = 2, kT = 20;
const std::vector<Index> kStarts{5, 16, 20, 27};  // row 1's start listed, row 0's not
const std::vector<Index> kDocs{0, 5, 16, 20, 27, 40};  // document d = tokens [kDocs[d], kDocs[d+1])

ModelDesc with_scan(ModelDesc d, ScanPath path) {
  for (auto& b : d.blocks)
    if (auto* m = std::get_if<Mamba2Spec>(&b.mixer)) m->scan = path;
  return d;
}

struct Data {
  std::vector<int> toks, targets;
};
Data make_data(int vocab, std::uint64_t seed) {
  Rng rng(seed);
  Data d;
  d.toks.resize(std::size_t(kB * kT));
  d.targets.resize(std::size_t(kB * kT));
  for (auto& x : d.toks) x = int(rng.below(std::uint64_t(vocab)));
  for (Index i = 0; i < kB * kT; ++i)
    d.targets[std::size_t(i)] = i % 6 == 2 ? -1 : int(rng.below(std::uint64_t(vocab)));
  return d;
}

Index scored(const std::vector<int>& t, Index a, Index b) {
  Index n = 0;
  for (Index i = a; i < b; ++i) n += t[std::size_t(i)] >= 0;
  return n;
}

// Packed vs one document at a time: logits, the loss (packed mean = the documents' nats
// over all scored positions) and every parameter gradient.
void check_packed(RuntimeModel<double>&& model, const char* name, bool recompute = false) {
  CAPTURE(name);
  CAPTURE(recompute);
  const Data d = make_data(model.vocab(), 17);
  TrainingOptions o;
  o.doc_starts = kStarts;
  o.recompute = recompute;

  Tape<double> lt(false);
  const Mat<double> packed_logits = model.logits(lt, d.toks, kB, kT, o).val();

  GradStore<double> gp(model);
  Tape<double> tp(true, &gp);
  const Var<double> lp = model.loss(tp, d.toks, d.targets, kB, kT, 0, o);
  tp.backward(lp);
  const Eigen::Map<const Eigen::VectorXd> packed_grad(gp.data(), gp.size());

  const Index total = scored(d.targets, 0, kB * kT);
  Eigen::VectorXd grad_sum = Eigen::VectorXd::Zero(gp.size());
  double nats = 0;
  double logit_err = 0;
  for (std::size_t k = 0; k + 1 < kDocs.size(); ++k) {
    const Index a = kDocs[k], n = kDocs[k + 1] - a;
    const std::span<const int> tok(d.toks.data() + a, std::size_t(n));
    const std::span<const int> tgt(d.targets.data() + a, std::size_t(n));
    const Mat<double> alone = model.forward(tok, 1, n);
    logit_err = std::max(logit_err, (alone - packed_logits.middleRows(a, n)).cwiseAbs().maxCoeff());
    const Index m = scored(d.targets, a, a + n);
    if (m == 0) continue;
    GradStore<double> g(model);
    Tape<double> t(true, &g);
    const Var<double> l = model.loss(t, tok, tgt, 1, n);
    t.backward(l);
    nats += l.v[0] * double(m);
    grad_sum += Eigen::Map<const Eigen::VectorXd>(g.data(), g.size()) * (double(m) / double(total));
  }
  CHECK(logit_err < 1e-12);
  CHECK(std::abs(lp.v[0] - nats / double(total)) < 1e-12);
  CHECK(packed_grad.norm() > 1e-3);
  CHECK((packed_grad - grad_sum).cwiseAbs().maxCoeff() < 1e-12 * std::max(1.0, grad_sum.cwiseAbs().maxCoeff()));
  // The packing changes the result (else the test would prove nothing).
  Tape<double> u(false);
  CHECK((model.logits(u, d.toks, kB, kT).val() - packed_logits).cwiseAbs().maxCoeff() > 1e-6);
}

}  // namespace

TEST_CASE("packed: attention (RoPE, GQA) equals one document at a time") {
  check_packed(TinyTransformer(3), "TinyTransformer");
}

TEST_CASE("packed: Mamba-2, recurrent and chunked scan, equals one document at a time") {
  check_packed(RuntimeModel<double>(with_scan(TinyMamba::desc(), ScanPath::Recurrent), 4),
               "TinyMamba recurrent");
  check_packed(RuntimeModel<double>(with_scan(TinyMamba::desc(), ScanPath::Chunked), 4),
               "TinyMamba chunked");
}

TEST_CASE("packed: ShortConv + QK-norm attention (LFM2) equals one document at a time") {
  check_packed(TinyLfm2(5), "TinyLfm2");
}

TEST_CASE("packed: sliding window + Mamba-2, with recompute, equals one document at a time") {
  check_packed(RuntimeModel<double>(with_scan(TinyLfm2Ssm::desc(), ScanPath::Chunked), 6),
               "TinyLfm2Ssm chunked");
  check_packed(RuntimeModel<double>(with_scan(TinyLfm2Ssm::desc(), ScanPath::Chunked), 6),
               "TinyLfm2Ssm chunked", true);
}

TEST_CASE("packed: bigram embedding, U-Net skips, partial RoPE equal one document at a time") {
  check_packed(TinyGolfOptions(7), "TinyGolfOptions");
}

TEST_CASE("packed: only the row starts is the unpacked path, bit for bit") {
  TinyHybrid18x6 model(8);
  const Data d = make_data(model.vocab(), 19);
  TrainingOptions o;
  const std::vector<Index> rows{0, kT};
  o.doc_starts = rows;
  GradStore<double> g0(model), g1(model);
  Tape<double> t0(true, &g0), t1(true, &g1);
  const Var<double> l0 = model.loss(t0, d.toks, d.targets, kB, kT);
  const Var<double> l1 = model.loss(t1, d.toks, d.targets, kB, kT, 0, o);
  t0.backward(l0);
  t1.backward(l1);
  CHECK(l0.v[0] == l1.v[0]);
  CHECK(std::equal(g0.data(), g0.data() + g0.size(), g1.data()));
  Tape<double> e(false);
  const Mat<double> a = model.forward(d.toks, kB, kT);
  CHECK(a == model.logits(e, d.toks, kB, kT, o).val());
}

TEST_CASE("packed: score() of a packed batch sums the documents' nats") {
  const TinyHybrid18x6 model(9);
  const Data d = make_data(model.vocab(), 23);
  Tape<double> t(false);
  const auto packed = model.score(t, d.toks, d.targets, kB, kT, kStarts);
  double nats = 0;
  Index n = 0;
  for (std::size_t k = 0; k + 1 < kDocs.size(); ++k) {
    const Index a = kDocs[k], len = kDocs[k + 1] - a;
    t.rewind();
    const auto s = model.score(t, std::span<const int>(d.toks.data() + a, std::size_t(len)),
                               std::span<const int>(d.targets.data() + a, std::size_t(len)), 1, len);
    nats += s.nats;
    n += s.scored;
  }
  CHECK(packed.scored == n);
  CHECK(std::abs(packed.nats - nats) < 1e-10);
}

TEST_CASE("packed: the packed gradient matches central differences") {
  RuntimeModel<double> model(with_scan(TinyHybrid18x6::desc(), ScanPath::Chunked), 10);
  const Data d = make_data(model.vocab(), 29);
  TrainingOptions o;
  o.doc_starts = kStarts;
  GradStore<double> g(model);
  Tape<double> t(true, &g);
  const Var<double> l = model.loss(t, d.toks, d.targets, kB, kT, 0, o);
  t.backward(l);
  RuntimeModel<double> probe = model;
  Tape<double> e(false);
  auto L = [&] {
    e.rewind();
    return probe.loss(e, d.toks, d.targets, kB, kT, 0, o).v[0];
  };
  // Along one random direction through every parameter, then at sampled coordinates of the
  // sequence-mixing tensors of blocks 2 (Mamba-2) and 3 (attention).
  const Index n = g.size();  // the store, alignment gaps included (their gradient is 0)
  Eigen::Map<Eigen::VectorXd> w(probe.param_values(), n);
  Eigen::VectorXd dir = Eigen::Map<const Eigen::VectorXd>(testing::random_weights(n, 1, 31).data(), n);
  dir /= dir.norm();
  const double h = 1e-6;
  w += h * dir;
  const double lp = L();
  w -= 2 * h * dir;
  const double lm = L();
  w += h * dir;
  const double numeric = (lp - lm) / (2 * h);
  const double analytic = Eigen::Map<const Eigen::VectorXd>(g.data(), g.size()).dot(dir);
  CHECK(std::abs(numeric - analytic) < 1e-7 + 1e-5 * std::abs(numeric));
  for (const auto& p : probe.param_table().entries()) {
    const bool first_pair = p.name.rfind("blocks.2.", 0) == 0 || p.name.rfind("blocks.3.", 0) == 0;
    if (!first_pair || (p.name.find("conv1d") == std::string::npos &&
                        p.name.find("A_log") == std::string::npos &&
                        p.name.find("q_proj") == std::string::npos))
      continue;
    CAPTURE(p.name);
    const auto r = testing::fd_check(probe.param_values() + p.offset, g.data() + p.offset,
                                     p.rows * p.cols, L, 3, 1e-6, 1e-4, derive_seed(5, p.name));
    CHECK(r.max_abs_err < 1e-7);
    CHECK(r.max_rel_err < 1e-4);
  }
}

TEST_CASE("packed: bad document starts fail naming the entry") {
  const TinyTransformer model(1);
  const Data d = make_data(model.vocab(), 3);
  auto run = [&](std::vector<Index> starts) {
    TrainingOptions o;
    o.doc_starts = starts;
    Tape<double> t(true);
    model.loss(t, d.toks, d.targets, kB, kT, 0, o);
  };
  CHECK_THROWS_WITH(run({5, 3}), doctest::Contains("strictly increasing"));
  CHECK_THROWS_WITH(run({5, 5}), doctest::Contains("strictly increasing"));
  CHECK_THROWS_WITH(run({-1}), doctest::Contains("outside the batch"));
  CHECK_THROWS_WITH(run({3, kB * kT}), doctest::Contains("entry 1"));
  Tape<double> t(false);
  const std::vector<Index> bad{kB * kT + 4};
  CHECK_THROWS_WITH(model.score(t, d.toks, d.targets, kB, kT, bad),
                    doctest::Contains("outside the batch"));
}

TEST_CASE("packed: mark_documents finds the BOS positions") {
  data::Batch b;
  b.B = 2;
  b.T = 5;
  b.tokens = {1, 7, 8, 1, 9, 4, 1, 1, 6, 2};
  b.targets.assign(10, 0);
  CHECK(data::mark_documents(b, 1) == 4);
  CHECK(b.doc_starts == std::vector<Index>{0, 3, 6, 7});
  CHECK(data::mark_documents(b, 5) == 0);
  CHECK(b.doc_starts.empty());
  CHECK_THROWS_WITH(data::mark_documents(b, -1), doctest::Contains("BOS id"));
}

TEST_CASE("packed: RoPE positions restart at each document start") {
  // Attention scores depend on position differences only, so the model tests cannot see
  // where positions start: check the rotation itself.
  const int H = 2, P = 8;
  const Mat<double> xin = testing::random_weights(kB * kT, H * P, 41);
  Tape<double> t(false);
  const ag::Segments* seg = ag::make_segments(t, kStarts, kB, kT);
  REQUIRE(seg->n == Index(kDocs.size()) - 1);
  Var<double> x = t.var(kB * kT, H * P);
  std::copy(xin.data(), xin.data() + xin.size(), x.v);
  const Mat<double> packed = ag::rope(t, x, H, P, kB, kT, nullptr, 10000.0, 0, seg).val();
  for (std::size_t k = 0; k + 1 < kDocs.size(); ++k) {
    CHECK(seg->row0(Index(k)) == kDocs[k]);
    Mat<double> one = xin.middleRows(kDocs[k], kDocs[k + 1] - kDocs[k]);
    ops::rope_forward<double>(one, H, P, 0, 10000.0);
    CHECK(one == packed.middleRows(kDocs[k], kDocs[k + 1] - kDocs[k]));
  }
}

}  // namespace hybrid_test_packed
