// Whole-model inference invariants for every Tiny alias (double precision):
//   prefill(T) == T successive steps; prefill(prefix) + steps == full prefill;
//   forward without state == prefill; batched == one at a time; causality.
#include <doctest/doctest.h>

#include <hybrid/model.hpp>

#include "test_util.hpp"

using namespace hybrid;

// This file's own namespace: the tests compile in batches (tests/CMakeLists.txt).
namespace hybrid_test_model {

namespace {
using test_util::random_tokens;
double max_abs(const Mat<double>& a, const Mat<double>& b) {
  REQUIRE(a.rows() == b.rows());
  REQUIRE(a.cols() == b.cols());
  return (a - b).cwiseAbs().maxCoeff();
}
// Tolerance for the same quantity computed along different but exact-in-arithmetic paths
// (chunked vs recurrent scan, blocked vs cached attention) in double precision.
constexpr double kTol = 1e-9;

template <class M>
void check_inference_invariants(const char* name) {
  CAPTURE(name);
  M model(3);
  const Index T = 21;  // > 2 chunks of 8, not a multiple; > 2 windows of 6
  const auto toks = random_tokens(T, model.vocab(), 11);

  // Reference: full forward without state.
  const Mat<double> full = model.forward(toks, 1, T);

  SUBCASE("prefill with state equals stateless forward") {
    std::vector<SequenceState<double>> st;
    auto out = model.prefill({toks}, st, {.all_logits = true});
    CHECK(max_abs(out[0], full) < kTol);
    CHECK(st[0].pos == T);
  }
  SUBCASE("T successive steps equal prefill") {
    std::vector<SequenceState<double>> st{model.new_state()};
    for (Index t = 0; t < T; ++t) {
      const int tok = toks[t];
      const Mat<double> l = model.step(std::span<const int>(&tok, 1), st);
      CHECK(max_abs(l, full.row(t)) < kTol);
    }
  }
  SUBCASE("prefill of a prefix then steps equals full prefill") {
    for (Index p : {1, 3, 8, 13}) {
      CAPTURE(p);
      std::vector<SequenceState<double>> st;
      auto out = model.prefill({std::vector<int>(toks.begin(), toks.begin() + p)}, st, {.all_logits = true});
      CHECK(max_abs(out[0], full.topRows(p)) < kTol);
      for (Index t = p; t < T; ++t) {
        const int tok = toks[t];
        CHECK(max_abs(model.step(std::span<const int>(&tok, 1), st), full.row(t)) < kTol);
      }
    }
  }
  SUBCASE("chunked prefill equals the whole-prompt prefill: logits and states") {
    // Chunks of 1, shorter than the SSD chunk (8), not a multiple of it, a multiple of it,
    // longer than the window (6), and the whole prompt.
    const std::vector<int> more{5, 77, 200};
    std::vector<SequenceState<double>> whole;
    const auto ref = model.prefill({toks}, whole, {.all_logits = true, .chunk = 0});
    CHECK(max_abs(ref[0], full) < kTol);
    std::vector<Mat<double>> ref_steps;
    for (int tok : more) ref_steps.push_back(model.step(std::span<const int>(&tok, 1), whole));
    for (Index chunk : {1, 3, 5, 8, 13, 16, 20, 21, 64}) {
      CAPTURE(chunk);
      std::vector<SequenceState<double>> st;
      const auto out = model.prefill({toks}, st, {.all_logits = true, .chunk = chunk});
      CHECK(max_abs(out[0], full) < kTol);
      CHECK(st[0].pos == T);
      const auto last = model.prefill({toks}, st, {.chunk = chunk});  // last position only
      REQUIRE(last[0].rows() == 1);
      CHECK(max_abs(last[0], full.bottomRows(1)) < kTol);
      for (std::size_t i = 0; i < more.size(); ++i)  // the states carry on as the whole one's
        CHECK(max_abs(model.step(std::span<const int>(&more[i], 1), st), ref_steps[i]) < kTol);
    }
  }
  SUBCASE("batched prompts of different lengths equal one at a time") {
    const auto a = random_tokens(5, model.vocab(), 12), b = random_tokens(17, model.vocab(), 13);
    std::vector<SequenceState<double>> st, sa, sb;
    auto out = model.prefill({a, b, toks}, st, {.all_logits = true});
    CHECK(max_abs(out[0], model.forward(a, 1, 5)) < kTol);
    CHECK(max_abs(out[1], model.forward(b, 1, 17)) < kTol);
    CHECK(max_abs(out[2], full) < kTol);
    // Batched step == single steps.
    model.prefill({a}, sa);
    model.prefill({b}, sb);
    const std::vector<int> next{7, 9, 11};
    const Mat<double> lb = model.step(next, st);
    CHECK(max_abs(lb.row(0), model.step(std::span<const int>(&next[0], 1), sa)) < kTol);
    CHECK(max_abs(lb.row(1), model.step(std::span<const int>(&next[1], 1), sb)) < kTol);
    // Equal-length batch through forward.
    std::vector<int> two(toks);
    const auto c = random_tokens(T, model.vocab(), 14);
    two.insert(two.end(), c.begin(), c.end());
    const Mat<double> both = model.forward(two, 2, T);
    CHECK(max_abs(both.topRows(T), full) < kTol);
    CHECK(max_abs(both.bottomRows(T), model.forward(c, 1, T)) < kTol);
  }
  SUBCASE("causality: changing token t never changes logits before t") {
    for (Index t : {0, 5, 8, 15, 20}) {
      auto alt = toks;
      alt[t] = (alt[t] + 1) % model.vocab();
      const Mat<double> l = model.forward(alt, 1, T);
      if (t > 0) CHECK(max_abs(l.topRows(t), full.topRows(t)) < 1e-12);
      CHECK(max_abs(l.row(t), full.row(t)) > 1e-9);  // and the change is seen at t
    }
  }
}
}  // namespace

TEST_CASE("inference invariants: TinyGolf15x3") { check_inference_invariants<TinyGolf15x3>("TinyGolf15x3"); }
TEST_CASE("inference invariants: TinyGolf15x3E2") { check_inference_invariants<TinyGolf15x3E2>("TinyGolf15x3E2"); }
TEST_CASE("inference invariants: TinyTransformer") { check_inference_invariants<TinyTransformer>("TinyTransformer"); }
TEST_CASE("inference invariants: TinyMamba") { check_inference_invariants<TinyMamba>("TinyMamba"); }
TEST_CASE("inference invariants: TinyHybrid18x6") { check_inference_invariants<TinyHybrid18x6>("TinyHybrid18x6"); }
TEST_CASE("inference invariants: TinyLfm2Ssm") { check_inference_invariants<TinyLfm2Ssm>("TinyLfm2Ssm"); }
TEST_CASE("inference invariants: TinyLfm2") { check_inference_invariants<TinyLfm2>("TinyLfm2"); }
TEST_CASE("inference invariants: TinyScaled") { check_inference_invariants<TinyScaled>("TinyScaled"); }

TEST_CASE("float models agree with double models to float precision") {
  TinyHybrid18x6 d(5);
  TinyHybrid18x6::rebind<float> f(5);
  const auto toks = random_tokens(19, d.vocab(), 15);
  const Mat<double> ld = d.forward(toks, 1, 19);
  const Mat<double> lf = f.forward(toks, 1, 19).cast<double>();
  CHECK(max_abs(ld, lf) < 1e-4 * std::max(1.0, ld.cwiseAbs().maxCoeff()));
}

TEST_CASE("scan path choice does not change the model") {
  // The same Mamba model with the recurrent and the chunked scan forced.
  auto make = [](ScanPath p) {
    ModelDesc d = TinyMamba::desc();
    for (auto& b : d.blocks) std::get<Mamba2Spec>(b.mixer).scan = p;
    return RuntimeModel<double>(d, 9);
  };
  const auto toks = random_tokens(40, 258, 16);
  const Mat<double> a = make(ScanPath::Chunked).forward(toks, 1, 40);
  const Mat<double> b = make(ScanPath::Recurrent).forward(toks, 1, 40);
  CHECK(max_abs(a, b) < kTol);
}

TEST_CASE("chunk 0 runs the scan's measured rule: the same values as that chunk forced") {
  auto make = [](int chunk) {
    ModelDesc d = TinyMamba::desc();
    for (auto& b : d.blocks) {
      auto& m = std::get<Mamba2Spec>(b.mixer);
      m.chunk = chunk;
      m.scan = ScanPath::Chunked;
    }
    return RuntimeModel<double>(d, 9);
  };
  CHECK(Mamba2Spec{}.chunk == 0);
  CHECK(ops::ssd_chunk(0) == ops::kSsdDefaultChunk);
  CHECK(ops::ssd_chunk(8) == 8);
  const Index T = 2 * ops::kSsdDefaultChunk + 5;  // three chunks at the rule's length
  const auto toks = random_tokens(T, 258, 18);
  const Mat<double> rule = make(0).forward(toks, 1, T);
  CHECK(max_abs(rule, make(ops::kSsdDefaultChunk).forward(toks, 1, T)) == 0);
  CHECK(max_abs(rule, make(8).forward(toks, 1, T)) < kTol);  // another chunk: rounding only
  CHECK(max_abs(rule, make(8).forward(toks, 1, T)) > 0);     // and it did run another chunk
  CHECK_THROWS_WITH_AS(make(-1), doctest::Contains("chunk must be >= 0"), Error);
}

TEST_CASE("run-time layout built from a list of block kinds equals the compile-time model") {
  ModelDesc d{tiny::model, {}};
  for (char c : std::string("MMMMMMMMMMMMAAAMMM")) d.blocks.push_back(c == 'M' ? tiny::M::desc() : tiny::A::desc());
  RuntimeModel<double> rt(d, 3);
  TinyGolf15x3 ct(3);
  CHECK(rt.layout_string() == "MMMMMMMMMMMMAAAMMM");
  CHECK(rt.param_count() == TinyGolf15x3::n_params);
  const auto toks = random_tokens(12, 258, 17);
  CHECK(max_abs(rt.forward(toks, 1, 12), ct.forward(toks, 1, 12)) == 0);
}

TEST_CASE("bad input gives clear errors") {
  TinyHybrid18x6 m(1);
  std::vector<SequenceState<double>> st;
  CHECK_THROWS_WITH_AS(m.prefill({{1, 2, 300}}, st),
                       doctest::Contains("token id 300 at position 2"), Error);
  CHECK_THROWS_WITH_AS(m.prefill({{1, -1}}, st), doctest::Contains("outside the vocabulary [0, 258)"), Error);
  CHECK_THROWS_WITH_AS(m.prefill({{1}, {}}, st), doctest::Contains("prompt 1 is empty"), Error);
  m.prefill({{1, 2}}, st);
  CHECK_THROWS_WITH_AS(m.step(std::vector<int>{1, 2}, st), doctest::Contains("one token per sequence"), Error);

  ModelDesc d = TinyTransformer::desc();
  d.model.max_context = 8;
  RuntimeModel<double> small(d, 1);
  CHECK_NOTHROW(small.prefill({std::vector<int>(8, 1)}, st));
  CHECK_THROWS_WITH_AS(small.step(std::vector<int>{1}, st),
                       doctest::Contains("context of 9 tokens exceeds the model's maximum of 8"), Error);

  // NaN in weights.
  m.visit([](const std::string& n, MatMap<double>& t, ParamRole) {
    if (n == "blocks.3.mixer.o_proj.weight") t(1, 2) = std::nan("");
  });
  CHECK_THROWS_WITH_AS(m.check_finite(), doctest::Contains("blocks.3.mixer.o_proj.weight"), Error);

  // Run-time specs are validated with the compile-time rules.
  ModelDesc bad = TinyMamba::desc();
  std::get<Mamba2Spec>(bad.blocks[1].mixer).headdim = 7;
  CHECK_THROWS_WITH_AS(RuntimeModel<double>{bad}, doctest::Contains("headdim 7 does not divide d_inner 48"), Error);
  ModelDesc bad2 = TinyTransformer::desc();
  std::get<GqaSpec>(bad2.blocks[0].mixer).n_kv_heads = 3;
  CHECK_THROWS_WITH_AS(RuntimeModel<double>{bad2}, doctest::Contains("n_kv_heads 3 does not divide n_heads 4"), Error);
}

TEST_CASE("decode state of SSM layers is constant in context length; windowed KV is bounded") {
  TinyLfm2Ssm m(2);
  std::vector<SequenceState<double>> st;
  m.prefill({random_tokens(4, 258, 1)}, st);
  auto bytes = [&](const SequenceState<double>& s) {
    Index n = 0;
    for (const auto& l : s.layers)
      std::visit([&](const auto& x) {
        using X = std::decay_t<decltype(x)>;
        if constexpr (std::is_same_v<X, Mamba2State<double>>) n += x.conv.size() + x.ssm.size();
        else if constexpr (std::is_same_v<X, KvCache<double>>) n += x.k.rows() * x.k.cols() * 2;
        else n += x.conv.size();
      }, l);
    return n;
  };
  std::vector<Index> sizes;
  for (int i = 0; i < 200; ++i) {
    const int tok = i % 258;
    m.step(std::span<const int>(&tok, 1), st);
    sizes.push_back(bytes(st[0]));
  }
  CHECK(sizes[60] == sizes[199]);  // window 6: the cache stops growing
}

}  // namespace hybrid_test_model
