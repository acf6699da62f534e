// The golf-entry options (docs/architecture.md, "Golf-entry options"): U-Net skips between
// the halves of the blocks, the hashed bigram embedding, partial RoPE. Gradients against
// central differences (double), the forward against a by-hand reference, decode and chunked
// prefill against the whole forward, bounded memory, the desc JSON, export refusals, and
// the options-off path left as it was.
#include <doctest/doctest.h>

#include <filesystem>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include <hybrid/alias_registry.hpp>
#include <hybrid/gguf/export.hpp>
#include <hybrid/model.hpp>

#include "grad_check.hpp"
#include "test_util.hpp"

using namespace hybrid;

// This file's own namespace: the tests compile in batches (tests/CMakeLists.txt).
namespace hybrid_test_golf_options {

namespace {
using test_util::random_tokens;

double max_abs(const Mat<double>& a, const Mat<double>& b) {
  REQUIRE(a.rows() == b.rows());
  REQUIRE(a.cols() == b.cols());
  return (a - b).cwiseAbs().maxCoeff();
}
constexpr double kTol = 1e-9;  // one quantity along different exact-in-arithmetic paths

// Four blocks (an even split: both decoder blocks take a skip), a bigram table as wide as
// the model (no projection), partial RoPE of 2 of 8 dims.
ModelDesc golf4_desc() {
  ModelSpec m = tiny::model;
  m.unet_skips = true;
  m.bigram_buckets = 32;
  GqaSpec a = tiny::attn;
  a.rope_dims = 2;
  ModelDesc d{m, {}};
  for (const char c : std::string("AMMA"))
    d.blocks.push_back(c == 'A' ? BlockDesc{a, Relu2Spec{{64}}} : tiny::M::desc());
  return d;
}

// Moves the options' parameters away from their neutral init (a zero bigram table, skip
// weights of one), so that every gradient and every comparison sees them.
template <class S>
void perturb_golf(RuntimeModel<S>& m, std::uint64_t seed) {
  m.visit([&](const std::string& n, MatMap<S>& t, ParamRole) {
    const Mat<double> r = 0.5 * testing::random_normal(t.rows(), t.cols(), derive_seed(seed, n));
    if (n == "bigram.weight") t = r.cast<S>();
    if (n == "skip_weights") t = (r.array() + 1).matrix().cast<S>();
  });
}

const MatMap<double>& tensor(const RuntimeModel<double>& m, const std::string& name) {
  const MatMap<double>* out = nullptr;
  m.visit([&](const std::string& n, const MatMap<double>& t, ParamRole) {
    if (n == name) out = &t;
  });
  REQUIRE_MESSAGE(out, "no tensor ", name);
  return *out;
}

// The parameter-golf entries' hash as they write it, in int: exact for ids below 2^15.
int peer_bucket(int prev, int cur, int buckets) {
  return prev < 0 ? buckets - 1 : ((36313 * cur) ^ (27191 * prev)) % (buckets - 1);
}

// Every block's output for one sequence, recomputed from the definitions: x0 = mult *
// embed[tok] + [proj] bigram[bucket]; decoder block j's input += skip_weights[j] ⊙ (encoder
// block n_enc-1-j's output). Each block runs on its own tape from the model's weights.
std::vector<Mat<double>> reference_hidden(const RuntimeModel<double>& m, const std::vector<int>& tok) {
  const ModelSpec& s = m.spec();
  const Index T = Index(tok.size()), D = s.d_model;
  const MatMap<double>& E = tensor(m, "embed.weight");
  Mat<double> x(T, D);
  for (Index t = 0; t < T; ++t) {
    x.row(t) = s.embedding_multiplier * E.row(tok[t]);
    if (s.bigram_buckets == 0) continue;
    const int b = peer_bucket(t > 0 ? tok[t - 1] : -1, tok[t], s.bigram_buckets);
    const Eigen::RowVectorXd e = tensor(m, "bigram.weight").row(b);
    x.row(t) += bigram_projected(s) ? Eigen::RowVectorXd(e * tensor(m, "bigram.proj.weight").transpose()) : e;
  }
  const int L = m.n_blocks(), n_enc = s.unet_skips ? L / 2 : 0;
  std::vector<Mat<double>> out, enc;
  for (int l = 0; l < L; ++l) {
    const int j = l - n_enc;
    if (n_enc > 0 && j >= 0 && j < n_enc)
      x += (tensor(m, "skip_weights").row(j).replicate(T, 1).array() * enc[std::size_t(n_enc - 1 - j)].array()).matrix();
    Tape<double> t(false);
    t.bind_values(m.param_values());
    const Var<double> in = t.var(T, D);
    in.val() = x;
    x = m.block(l).forward(t, in, 1, T, nullptr).val();
    if (l < n_enc) enc.push_back(x);
    out.push_back(x);
  }
  return out;
}

// The loss's gradient against central differences at sampled coordinates of every tensor
// and along a random direction of each whole tensor (as tests/test_grad_model.cpp).
void check_gradients(const RuntimeModel<double>& model, const TrainingOptions& o = {}) {
  const Index B = 2, T = 19;  // > 2 SSD chunks of 8 and not a multiple of 8
  Rng rng(3);
  std::vector<int> toks(B * T), targets(B * T);
  for (auto& x : toks) x = int(rng.below(model.vocab()));
  for (Index i = 0; i < B * T; ++i) targets[i] = i % 7 == 3 ? -1 : int(rng.below(model.vocab()));
  RuntimeModel<double> m = model;
  GradStore<double> grads(m);
  Tape<double> tape(true, &grads);
  const Var<double> loss = m.loss(tape, toks, targets, B, T, 0, o);
  tape.backward(loss);
  Tape<double> eval(false);
  auto L = [&] {
    eval.rewind();
    return m.loss(eval, toks, targets, B, T).v[0];
  };
  CHECK(std::abs(L() - loss.v[0]) < 1e-12);
  for (const auto& e : grads.entries()) {
    CAPTURE(e.name);
    MatMap<double> w = grads.value_of(e);
    const double* g = grads.grad_of(e);
    const bool golf = e.name.starts_with("bigram") || e.name == "skip_weights";
    const auto r = testing::fd_check(w.data(), g, w.size(), L, golf ? 24 : 3, 1e-6, 1e-4,
                                     derive_seed(9, e.name));
    CHECK(r.max_abs_err < 1e-7);
    CHECK(r.max_rel_err < 1e-4);
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
    if (golf) CHECK(Eigen::Map<const Eigen::VectorXd>(g, w.size()).norm() > 1e-6);
  }
}

Eigen::VectorXd loss_grad(const RuntimeModel<double>& model, const TrainingOptions& o) {
  RuntimeModel<double> m = model;
  std::vector<int> toks(2 * 17), tg(2 * 17);
  for (int i = 0; i < 34; ++i) toks[i] = (i * 13 + 5) % 258, tg[i] = (i * 7 + 1) % 258;
  GradStore<double> grads(m);
  Tape<double> tape(true, &grads);
  tape.backward(m.loss(tape, toks, tg, 2, 17, 0, o));
  return Eigen::Map<const Eigen::VectorXd>(grads.data(), grads.size());
}

// Decode and prefill against the whole forward (as tests/test_model.cpp's invariants).
void check_inference(const RuntimeModel<double>& model) {
  const Index T = 21;  // > 2 SSD chunks of 8, not a multiple
  const auto toks = random_tokens(T, model.vocab(), 11);
  const Mat<double> full = model.forward(toks, 1, T);
  {  // prefill with state == stateless forward; the state keeps the last token
    std::vector<SequenceState<double>> st;
    CHECK(max_abs(model.prefill({toks}, st, {.all_logits = true})[0], full) < kTol);
    CHECK(st[0].pos == T);
    CHECK(st[0].last_token == toks.back());
  }
  {  // T successive steps
    std::vector<SequenceState<double>> st{model.new_state()};
    for (Index t = 0; t < T; ++t) {
      const int tok = toks[t];
      CHECK(max_abs(model.step(std::span<const int>(&tok, 1), st), full.row(t)) < kTol);
    }
  }
  for (Index p : {1, 2, 8, 13}) {  // a prefix, then steps
    CAPTURE(p);
    std::vector<SequenceState<double>> st;
    const auto out = model.prefill({std::vector<int>(toks.begin(), toks.begin() + p)}, st, {.all_logits = true});
    CHECK(max_abs(out[0], full.topRows(p)) < kTol);
    for (Index t = p; t < T; ++t) {
      const int tok = toks[t];
      CHECK(max_abs(model.step(std::span<const int>(&tok, 1), st), full.row(t)) < kTol);
    }
  }
  // Chunked prefill at several chunk sizes, then decode steps that carry on from the states.
  const std::vector<int> more{5, 77, 200};
  std::vector<SequenceState<double>> whole;
  CHECK(max_abs(model.prefill({toks}, whole, {.all_logits = true, .chunk = 0})[0], full) < kTol);
  std::vector<Mat<double>> ref_steps;
  for (int tok : more) ref_steps.push_back(model.step(std::span<const int>(&tok, 1), whole));
  for (Index chunk : {1, 2, 3, 5, 8, 13, 20, 64}) {
    CAPTURE(chunk);
    std::vector<SequenceState<double>> st;
    CHECK(max_abs(model.prefill({toks}, st, {.all_logits = true, .chunk = chunk})[0], full) < kTol);
    const auto last = model.prefill({toks}, st, {.chunk = chunk});
    CHECK(max_abs(last[0], full.bottomRows(1)) < kTol);
    for (std::size_t i = 0; i < more.size(); ++i)
      CHECK(max_abs(model.step(std::span<const int>(&more[i], 1), st), ref_steps[i]) < kTol);
  }
  {  // batched prompts of different lengths, then a batched step
    const auto a = random_tokens(5, model.vocab(), 12), b = random_tokens(17, model.vocab(), 13);
    std::vector<SequenceState<double>> st, sa, sb;
    const auto out = model.prefill({a, b, toks}, st, {.all_logits = true, .chunk = 4});
    CHECK(max_abs(out[0], model.forward(a, 1, 5)) < kTol);
    CHECK(max_abs(out[1], model.forward(b, 1, 17)) < kTol);
    CHECK(max_abs(out[2], full) < kTol);
    model.prefill({a}, sa);
    model.prefill({b}, sb);
    const std::vector<int> next{7, 9, 11};
    const Mat<double> lb = model.step(next, st);
    CHECK(max_abs(lb.row(0), model.step(std::span<const int>(&next[0], 1), sa)) < kTol);
    CHECK(max_abs(lb.row(1), model.step(std::span<const int>(&next[1], 1), sb)) < kTol);
  }
  // Causality: token t changes nothing before t, and (through the bigram) position t + 1.
  for (Index t : {0, 7, 19}) {
    auto alt = toks;
    alt[t] = (alt[t] + 1) % model.vocab();
    const Mat<double> l = model.forward(alt, 1, T);
    if (t > 0) CHECK(max_abs(l.topRows(t), full.topRows(t)) < 1e-12);
    CHECK(max_abs(l.row(t), full.row(t)) > 1e-9);
  }
}

// The most bytes the tape's arena held during one prefill of T tokens.
std::size_t prefill_high_water(const RuntimeModel<double>& m, Index T, Index chunk) {
  Tape<double> ctx(false);
  std::vector<SequenceState<double>> st;
  m.prefill({random_tokens(T, m.vocab(), 3)}, st, {.chunk = chunk}, &ctx);
  return ctx.arena().high_water();
}
RuntimeModel<double> mamba_stack(int n_blocks, bool skips, int buckets = 0) {
  ModelDesc d{tiny::model, {}};
  d.model.unet_skips = skips;
  d.model.bigram_buckets = buckets;
  d.model.bigram_dim = buckets ? 8 : 0;
  for (int i = 0; i < n_blocks; ++i) d.blocks.push_back(tiny::M::desc());
  return RuntimeModel<double>(d, 1);
}

}  // namespace

TEST_CASE("golf options: the bigram hash, the first-token bucket and the peers' int32 hash") {
  for (const int buckets : {2, 3, 61, 1024, 10240}) {
    CAPTURE(buckets);
    CHECK(bigram_bucket(-1, 7, buckets) == buckets - 1);
    for (int p = 0; p < 300; p += 7)
      for (int c = 0; c < 300; c += 5) {
        const int b = bigram_bucket(p, c, buckets);
        CHECK(b == peer_bucket(p, c, buckets));
        CHECK((b >= 0 && b < buckets - 1));  // the last bucket only for a first token
      }
  }
  // Ids where 36313 * id overflows an int32: computed exactly, never negative.
  const std::uint64_t h = (36313ull * 65535ull) ^ (27191ull * 65000ull);
  CHECK(bigram_bucket(65000, 65535, 4097) == int(h % 4096));
  // The pair is ordered: (a, b) and (b, a) land in different buckets here.
  CHECK(bigram_bucket(3, 5, 1024) != bigram_bucket(5, 3, 1024));
}

TEST_CASE("golf options: tensors, roles, initial values and parameter counts") {
  const TinyGolfOptions m(3);
  const ModelDesc d = TinyGolfOptions::desc();
  std::map<std::string, const ParamInfo*> by;
  for (const auto& e : m.param_table().entries()) by[e.name] = &e;
  REQUIRE(by.count("bigram.weight"));
  REQUIRE(by.count("bigram.proj.weight"));
  REQUIRE(by.count("skip_weights"));
  CHECK(by["bigram.weight"]->rows == 61);
  CHECK(by["bigram.weight"]->cols == 16);
  CHECK(by["bigram.weight"]->role == ParamRole::Embedding);
  CHECK(by["bigram.proj.weight"]->rows == 32);
  CHECK(by["bigram.proj.weight"]->cols == 16);
  CHECK(by["bigram.proj.weight"]->role == ParamRole::Matrix);
  CHECK(by["skip_weights"]->rows == 2);  // 5 blocks: an encoder of 2
  CHECK(by["skip_weights"]->cols == 32);
  CHECK(by["skip_weights"]->role == ParamRole::Scalar);  // AdamW, not Muon
  // The table order: embedding, bigram, blocks, skip weights, final norm.
  const auto& es = m.param_table().entries();
  CHECK(es[0].name == "embed.weight");
  CHECK(es[1].name == "bigram.weight");
  CHECK(es[2].name == "bigram.proj.weight");
  CHECK(es[es.size() - 2].name == "skip_weights");
  CHECK(es.back().name == "norm_f.weight");
  CHECK(tensor(m, "bigram.weight").cwiseAbs().maxCoeff() == 0);
  CHECK((tensor(m, "skip_weights").array() == 1).all());
  CHECK(tensor(m, "bigram.proj.weight").cwiseAbs().maxCoeff() > 0);
  // Counts: the table, the desc's count, and the pieces.
  CHECK(m.param_count() == param_count(d));
  CHECK(bigram_params(d.model) == 61 * 16 + 32 * 16);
  CHECK(unet_skip_params(d.model, 5) == 2 * 32);
  const RuntimeModel<double> g4(golf4_desc(), 1);
  CHECK(g4.param_count() == param_count(golf4_desc()));
  CHECK(bigram_params(golf4_desc().model) == 32 * 32);  // no projection at bigram_dim = d_model
  for (const auto& e : g4.param_table().entries()) CHECK(e.name != "bigram.proj.weight");
  CHECK(tensor(g4, "skip_weights").rows() == 2);
  // The summary names both.
  const std::string s = m.summary();
  CHECK(test_util::contains(s, "bigram embedding (61x16 + proj)"));
  CHECK(test_util::contains(s, "U-Net skip weights"));
  CHECK(test_util::contains(s, "GQA(4/2x8,rope=4)"));
}

TEST_CASE("golf options: the typed Model's n_params counts every option's tensors") {
  const TinyGolfOptions m(3);
  CHECK(TinyGolfOptions::n_params == m.param_count());
}

TEST_CASE("golf options: with every option off the model is the one it was") {
  // No golf tensor and no golf key in any shipped alias; the tables are what param_count
  // says without the options.
  for (const AliasInfo& a : shipped_aliases()) {
    CAPTURE(a.name);
    const ModelDesc d = a.desc();
    const std::string j = to_json(d).dump();
    for (const char* key : {"unet_skips", "bigram_buckets", "bigram_dim", "rope_dims"})
      CHECK(j.find(key) == std::string::npos);
    CHECK(unet_skip_params(d.model, int(d.blocks.size())) == 0);
    CHECK(bigram_params(d.model) == 0);
    if (std::string_view(a.name).rfind("Tiny", 0) != 0) continue;
    const RuntimeModel<double> m(d, 1);
    for (const auto& e : m.param_table().entries())
      CHECK((!e.name.starts_with("bigram") && e.name != "skip_weights"));
    CHECK(m.param_count() == a.params);
  }
  // Neutral values compute the model without the option, bit for bit (same seed, so every
  // other tensor is the same): the zero-initialised bigram table, skip weights of zero,
  // rope_dims = head_dim.
  const ModelDesc golf = TinyGolfOptions::desc();
  ModelDesc plain = golf;
  plain.model.unet_skips = false;
  plain.model.bigram_buckets = plain.model.bigram_dim = 0;
  const auto toks = random_tokens(13, 258, 4);
  const RuntimeModel<double> p(plain, 5);
  const Mat<double> ref = p.forward(toks, 1, 13);
  {
    ModelDesc d = plain;
    d.model.bigram_buckets = 61, d.model.bigram_dim = 16;
    CHECK(p.forward(toks, 1, 13) == RuntimeModel<double>(d, 5).forward(toks, 1, 13));
  }
  {
    ModelDesc d = plain;
    d.model.unet_skips = true;
    RuntimeModel<double> m(d, 5);
    CHECK(m.forward(toks, 1, 13) != ref);  // skip weights of one change the model
    m.visit([](const std::string& n, MatMap<double>& t, ParamRole) {
      if (n == "skip_weights") t.setZero();
    });
    CHECK(m.forward(toks, 1, 13) == ref);
  }
  {
    ModelDesc full = plain;
    for (auto& b : full.blocks)
      if (auto* a = std::get_if<GqaSpec>(&b.mixer)) a->rope_dims = 0;
    const Mat<double> whole = RuntimeModel<double>(full, 5).forward(toks, 1, 13);
    CHECK(max_abs(whole, ref) > 1e-6);  // rotating 4 of 8 dims is another model
    for (auto& b : full.blocks)
      if (auto* a = std::get_if<GqaSpec>(&b.mixer)) a->rope_dims = a->head_dim;
    CHECK(RuntimeModel<double>(full, 5).forward(toks, 1, 13) == whole);
    for (auto& b : full.blocks)
      if (auto* a = std::get_if<GqaSpec>(&b.mixer)) a->rope = false, a->rope_dims = 0;
    CHECK(max_abs(RuntimeModel<double>(full, 5).forward(toks, 1, 13), ref) > 1e-6);  // nor NoPE
  }
  // with_golf_options with nothing set leaves a desc as it was.
  CHECK(to_json(with_golf_options(TinyGolf15x3::desc(), {})) == to_json(TinyGolf15x3::desc()));
}

TEST_CASE("golf options: partial RoPE rotates the first k dims of each head as a k-dim RoPE") {
  const int H = 3, P = 10, k = 4;
  const double base = 500;
  const Mat<double> x = testing::random_normal(6, H * P, 21);
  Mat<double> y = x;
  ops::rope_forward<double>(y, H, P, 9, base, k);
  for (int h = 0; h < H; ++h) {
    Mat<double> sub = x.middleCols(h * P, k);  // the rotated dims as heads of their own
    ops::rope_forward<double>(sub, 1, k, 9, base);  // theta_i = base^(-2i/k)
    CHECK(max_abs(y.middleCols(h * P, k), sub) < 1e-14);
    CHECK(y.middleCols(h * P + k, P - k) == x.middleCols(h * P + k, P - k));
  }
  // The backward is the inverse rotation; k = P and k = 0 are the same whole-head RoPE.
  ops::rope_backward<double>(y, H, P, 9, base, k);
  CHECK(max_abs(y, x) < 1e-14);
  Mat<double> a = x, b = x;
  ops::rope_forward<double>(a, H, P, 9, base, P);
  ops::rope_forward<double>(b, H, P, 9, base);
  CHECK(a == b);
  Mat<double> bad = x;
  CHECK_THROWS_WITH_AS(ops::rope_forward<double>(bad, H, P, 0, base, 3), doctest::Contains("must be even"), Error);
  CHECK_THROWS_WITH_AS(ops::rope_forward<double>(bad, H, P, 0, base, 12), doctest::Contains("at most the head dim 10"), Error);
}

TEST_CASE("golf options: the forward is the definition (skip pairing, bigram hash, projection)") {
  for (const ModelDesc& d : {TinyGolfOptions::desc(), golf4_desc()}) {
    CAPTURE(d.blocks.size());
    RuntimeModel<double> m(d, 2);
    perturb_golf(m, 4);
    const auto toks = random_tokens(17, m.vocab(), 6);
    const std::vector<Mat<double>> hs = m.hidden_states(toks, 1, 17);
    const std::vector<Mat<double>> ref = reference_hidden(m, toks);
    REQUIRE(hs.size() == ref.size() + 1);
    for (std::size_t l = 0; l < ref.size(); ++l) {
      CAPTURE(l);
      CHECK(max_abs(hs[l], ref[l]) < 1e-12);
    }
    // hidden_states and forward agree: the head of the last hidden state is the logits.
    CHECK(max_abs(m.forward(toks, 1, 17), hs.back() * tensor(m, "embed.weight").transpose()) < 1e-10);
  }
}

TEST_CASE("golf options: gradients match central differences (double)") {
  SUBCASE("TinyGolfOptions: 5 blocks, projected bigram, rope 4 of 8") {
    RuntimeModel<double> m(TinyGolfOptions::desc(), 5);
    perturb_golf(m, 7);
    check_gradients(m);
  }
  SUBCASE("4 blocks, bigram as wide as the model, rope 2 of 8") {
    RuntimeModel<double> m(golf4_desc(), 5);
    perturb_golf(m, 8);
    check_gradients(m);
  }
  SUBCASE("recompute (checkpointed blocks, the skip add inside) gives the same gradients") {
    RuntimeModel<double> m(TinyGolfOptions::desc(), 4);
    perturb_golf(m, 9);
    const Eigen::VectorXd plain = loss_grad(m, {});
    const Eigen::VectorXd re = loss_grad(m, {.recompute = true});
    CHECK((plain - re).cwiseAbs().maxCoeff() < 1e-12);
    CHECK(plain.norm() > 1e-3);
    const TrainingOptions drop{.drop_path = 0.5, .drop_seed = 3};
    CHECK((loss_grad(m, drop) - loss_grad(m, {.recompute = true, .drop_path = 0.5, .drop_seed = 3}))
              .cwiseAbs().maxCoeff() < 1e-12);
  }
}

TEST_CASE("golf options: prefill, chunked prefill and decode equal the whole forward") {
  SUBCASE("TinyGolfOptions") {
    RuntimeModel<double> m(TinyGolfOptions::desc(), 3);
    perturb_golf(m, 5);
    check_inference(m);
  }
  SUBCASE("4 blocks") {
    RuntimeModel<double> m(golf4_desc(), 3);
    perturb_golf(m, 6);
    check_inference(m);
  }
  SUBCASE("a state that lost its last token is refused, not misread") {
    RuntimeModel<double> m(TinyGolfOptions::desc(), 3);
    std::vector<SequenceState<double>> st;
    m.prefill({{1, 2, 3}}, st);
    st[0].last_token = -1;
    const int tok = 4;
    CHECK_THROWS_WITH_AS(m.step(std::span<const int>(&tok, 1), st), doctest::Contains("holds no last token"), Error);
  }
}

TEST_CASE("golf options: float storage types read the bigram table and projection packed") {
  RuntimeModel<float> m(TinyGolfOptions::desc(), 3);
  perturb_golf(m, 5);
  // Round the tensors a storage type packs to bf16 first, so that packing them is exact.
  m.visit([](const std::string&, MatMap<float>& t, ParamRole r) {
    if (r == ParamRole::Matrix || r == ParamRole::Embedding)
      for (Index i = 0; i < t.size(); ++i) t.data()[i] = bf16_to_f32(f32_to_bf16(t.data()[i]));
  });
  const auto toks = random_tokens(12, 258, 8);
  const Mat<float> ref = m.forward(toks, 1, 12);
  m.set_weight_storage(DType::BF16);
  REQUIRE(m.weight_store());
  CHECK((m.forward(toks, 1, 12) - ref).cwiseAbs().maxCoeff() < 1e-5f);
  std::vector<SequenceState<float>> st{m.new_state()};
  for (int t = 0; t < 12; ++t)
    CHECK((m.step(std::span<const int>(&toks[std::size_t(t)], 1), st) - ref.row(t)).cwiseAbs().maxCoeff() < 1e-5f);
}

TEST_CASE("golf options: inference memory holds only the skips beyond the plain model") {
  const Index T = 256, D = 32;
  const std::size_t act = sizeof(double) * std::size_t(T * D);  // one (T, D) activation
  const std::size_t plain4 = prefill_high_water(mamba_stack(4, false), T, 0);
  const std::size_t skip4 = prefill_high_water(mamba_stack(4, true), T, 0);
  const std::size_t skip8 = prefill_high_water(mamba_stack(8, true), T, 0);
  CAPTURE(plain4);
  CAPTURE(skip4);
  CAPTURE(skip8);
  // Four more blocks: two more encoder outputs kept, nothing else.
  CHECK(skip8 >= skip4 + 2 * act);
  CHECK(skip8 <= skip4 + 2 * act + 1024);
  // Against no skips: the two kept outputs and the skip add's temporaries inside one block.
  CHECK(skip4 >= plain4 + 2 * act);
  CHECK(skip4 <= plain4 + 5 * act + 8 * 1024);
  // Chunked prefill with skips and the bigram embedding: the same bytes at any length.
  const RuntimeModel<double> g = mamba_stack(4, true, 64);
  CHECK(prefill_high_water(g, 4096, 64) == prefill_high_water(g, 256, 64));
}

TEST_CASE("golf options: desc JSON writes them only when set and reads them back") {
  const ModelDesc d = TinyGolfOptions::desc();
  const nlohmann::json j = to_json(d);
  CHECK(j["model"]["unet_skips"] == true);
  CHECK(j["model"]["bigram_buckets"] == 61);
  CHECK(j["model"]["bigram_dim"] == 16);
  CHECK(j["blocks"][1]["mixer"]["rope_dims"] == 4);
  CHECK(!j["blocks"][0]["mixer"].contains("rope_dims"));  // Mamba-2
  const ModelDesc back = desc_from_json(j);
  CHECK(back.model.unet_skips);
  CHECK(back.model.bigram_buckets == 61);
  CHECK(back.model.bigram_dim == 16);
  CHECK(std::get<GqaSpec>(back.blocks[3].mixer).rope_dims == 4);
  CHECK(to_json(back) == j);
  const ModelDesc b4 = desc_from_json(to_json(golf4_desc()));
  CHECK(!to_json(golf4_desc())["model"].contains("bigram_dim"));  // 0: the default
  CHECK(to_json(b4) == to_json(golf4_desc()));
  // Bad values name the path and what was expected.
  auto bad = [&](const std::function<void(nlohmann::json&)>& edit, std::initializer_list<std::string> words) {
    nlohmann::json e = j;
    edit(e);
    test_util::check_error([&] { desc_from_json(e); }, words);
  };
  bad([](auto& e) { e["model"]["bigram_buckets"] = 1; }, {"model", "bigram_buckets", "at least 2"});
  bad([](auto& e) { e["model"]["bigram_dim"] = -3; }, {"model", "bigram_dim must be >= 0"});
  bad([](auto& e) { e["model"]["bigram_buckets"] = 0; }, {"bigram_dim = 16", "bigram_buckets = 0"});
  bad([](auto& e) { e["model"]["unet_skips"] = 1; }, {"model.unet_skips", "true or false"});
  bad([](auto& e) { e["blocks"][1]["mixer"]["rope_dims"] = 3; }, {"blocks[1].mixer", "rope_dims", "even"});
  bad([](auto& e) { e["blocks"][1]["mixer"]["rope_dims"] = 10; }, {"blocks[1].mixer", "head_dim = 8"});
  bad([](auto& e) { e["blocks"][1]["mixer"]["rope"] = false; }, {"blocks[1].mixer", "RoPE is off"});
  bad([](auto& e) { e["blocks"] = nlohmann::json::array({e["blocks"][0]}); }, {"unet_skips needs at least 2 blocks"});
  // A checkpoint keeps them: save_model / load_model gives the same logits.
  test_util::TempDir tmp;
  RuntimeModel<double> m(d, 2);
  perturb_golf(m, 3);
  save_model(m, tmp / "golf.safetensors");
  const RuntimeModel<double> loaded = load_model<double>(tmp / "golf.safetensors");
  const auto toks = random_tokens(9, 258, 1);
  CHECK(loaded.forward(toks, 1, 9) == m.forward(toks, 1, 9));
}

TEST_CASE("golf options: the flag helpers") {
  const ModelDesc d = with_golf_options(TinyGolf15x3::desc(), {.unet_skips = true, .bigram_buckets = 100,
                                                               .bigram_dim = 8, .rope_dims = 2});
  CHECK(d.model.unet_skips);
  CHECK(d.model.bigram_buckets == 100);
  CHECK(d.model.bigram_dim == 8);
  for (const auto& b : d.blocks)
    if (const auto* a = std::get_if<GqaSpec>(&b.mixer)) CHECK(a->rope_dims == 2);
  CHECK(RuntimeModel<double>(d, 1).param_count() == param_count(d));
  CHECK(rope_dims_for_fraction(0.25, 64) == 16);
  CHECK(rope_dims_for_fraction(0.3, 8) == 2);   // 2.4 → 2
  CHECK(rope_dims_for_fraction(0.5, 6) == 4);   // 3 → 4 (halves up to the even number)
  CHECK(rope_dims_for_fraction(0.01, 64) == 2);  // at least one pair
  CHECK(rope_dims_for_fraction(1, 64) == 0);     // all of them
  CHECK_THROWS_WITH_AS(rope_dims_for_fraction(0, 64), doctest::Contains("(0, 1]"), Error);
  CHECK_THROWS_WITH_AS(rope_dims_for_fraction(1.5, 64), doctest::Contains("(0, 1]"), Error);
}

TEST_CASE("golf options: GGUF and Hugging Face exports refuse them, naming the feature and target") {
  struct Case {
    GolfOptions opt;
    const char* gguf_feature;
    const char* hf_feature;
  };
  const Case cases[] = {
      {{.unet_skips = true}, "U-Net skip connections", "U-Net skip connections"},
      {{.bigram_buckets = 64}, "hashed bigram embedding (bigram_buckets = 64)", "hashed bigram embedding"},
      {{.rope_dims = 4}, "partial RoPE (rope_dims = 4 of head_dim 8", "partial RoPE (rope_dims = 4"},
  };
  // Expressible without the option, as granitehybrid / GraniteMoeHybrid and as lfm2 / LFM2.
  for (const ModelDesc& base : {TinyGolf15x3E2::desc(), TinyLfm2::desc()}) {
    const gguf::Arch arch = gguf::arch_for(base);
    CHECK_NOTHROW(gguf::check_expressible(base, arch));
    CHECK_NOTHROW(hf::config_to_json(base, hf::family_for(base)));
    for (const Case& c : cases) {
      CAPTURE(c.gguf_feature);
      const ModelDesc d = with_golf_options(base, c.opt);
      const RuntimeModel<float> m(d, 1);
      test_util::check_error([&] { gguf::to_gguf(m); },
                             {"llama.cpp's '" + std::string(gguf::arch_name(arch)) + "'", c.gguf_feature});
      test_util::TempDir tmp;
      test_util::check_error([&] { hf::save_hf(m, tmp / "out"); },
                             {hf::architecture(hf::family_for(d)), c.hf_feature});
      CHECK(!std::filesystem::exists(tmp / "out"));
    }
  }
  // llama (a pure transformer) too.
  ModelDesc llama{ModelSpec{.vocab = 258, .d_model = 32, .tied = false}, {}};
  for (int i = 0; i < 2; ++i) llama.blocks.push_back({tiny::attn, SwiGluSpec{{64}}});
  CHECK(gguf::arch_for(llama) == gguf::Arch::Llama);
  CHECK_NOTHROW(gguf::check_expressible(llama, gguf::Arch::Llama));
  test_util::check_error([&] { gguf::check_expressible(with_golf_options(llama, {.rope_dims = 6}), gguf::Arch::Llama); },
                         {"'llama'", "partial RoPE"});
}

}  // namespace hybrid_test_golf_options
