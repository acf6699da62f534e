// Sampling (greedy, temperature, top-k, top-p, repetition penalty, masks), the byte
// tokenizer, and generation: greedy generate() against a manual forward() loop, batched
// against one prompt at a time, stop tokens, callbacks and input errors.
#include <doctest/doctest.h>

#include <cmath>
#include <functional>
#include <string>
#include <vector>

#include <hybrid/infer/generate.hpp>
#include <hybrid/model.hpp>

using namespace hybrid;

// This file's own namespace: the tests compile in batches (tests/CMakeLists.txt).
namespace hybrid_test_sampling {

namespace {

RowVec<double> row(std::initializer_list<double> v) {
  RowVec<double> r(Index(v.size()));
  Index i = 0;
  for (double x : v) r(i++) = x;
  return r;
}

RowVec<double> random_logits(int V, std::uint64_t seed, double scale = 2.0) {
  Rng rng(seed);
  RowVec<double> r(V);
  for (int i = 0; i < V; ++i) r(i) = scale * rng.normal();
  return r;
}

int argmax(const RowVec<double>& r) {
  Index best = 0;
  r.maxCoeff(&best);
  return int(best);
}

// f() must throw hybrid::Error whose message holds every piece.
void expect_error(const std::function<void()>& f, std::initializer_list<std::string> pieces) {
  try {
    f();
    FAIL("expected a hybrid::Error");
  } catch (const Error& e) {
    const std::string msg = e.what();
    for (const auto& p : pieces) {
      INFO("message: ", msg);
      CHECK_MESSAGE(msg.find(p) != std::string::npos, "missing '", p, "'");
    }
  }
}

// A tokenizer whose EOS is any id we like, to check the default stop set and the interface.
struct TestTokenizer final : Tokenizer {
  int eos_id;
  explicit TestTokenizer(int e) : eos_id(e) {}
  std::vector<int> encode(std::string_view s) const override { return ByteTokenizer().encode(s); }
  std::string decode_token(int id) const override {
    return id < 256 ? std::string(1, char(id)) : std::string();
  }
  int vocab_size() const override { return 258; }
  std::optional<int> eos() const override { return eos_id; }
};

}  // namespace

// ---- sampling ---------------------------------------------------------------------------

TEST_CASE("sampling: greedy picks the argmax, lowest id on ties") {
  Sampler s(SamplingParams{.temperature = 0});
  CHECK(s.sample(row({0.1, 2.0, -1.0, 1.9})) == 1);
  CHECK(s.sample(row({3.0, -1.0, 3.0})) == 0);
  CHECK(s.sample(row({-INFINITY, -5.0, -INFINITY})) == 1);
  for (std::uint64_t seed = 0; seed < 20; ++seed) {
    const auto l = random_logits(100, seed);
    CHECK(s.sample(l) == argmax(l));
  }
  // float rows of a row-major matrix work as well
  Mat<float> m(2, 3);
  m << 0, 1, 2, 5, 4, 3;
  CHECK(s.sample(m.row(0)) == 2);
  CHECK(s.sample(m.row(1)) == 0);
}

TEST_CASE("sampling: top_k = 1 and a tiny top_p are greedy") {
  for (std::uint64_t seed = 0; seed < 30; ++seed) {
    const auto l = random_logits(64, 100 + seed);
    Sampler k1(SamplingParams{.temperature = 1.5f, .top_k = 1, .seed = seed});
    Sampler p0(SamplingParams{.temperature = 1.5f, .top_p = 1e-6f, .seed = seed});
    CHECK(k1.sample(l) == argmax(l));
    CHECK(p0.sample(l) == argmax(l));
  }
}

TEST_CASE("sampling: seeded draws are reproducible and seeds differ") {
  const auto l = random_logits(50, 3, 1.0);
  const auto draws = [&](std::uint64_t seed) {
    Sampler s(SamplingParams{.temperature = 1, .top_k = 40, .top_p = 0.95f, .seed = seed});
    std::vector<int> out;
    for (int i = 0; i < 200; ++i) out.push_back(s.sample(l));
    return out;
  };
  CHECK(draws(11) == draws(11));
  CHECK(draws(11) != draws(12));
}

TEST_CASE("sampling: empirical frequencies match softmax(logits / T) and the filters") {
  const auto l = row({1.0, 0.5, -0.3, 2.0, 0.0, -1.2});
  const double T = 0.75;  // exact in float
  struct Case { SamplingParams p; std::vector<int> kept; };
  // softmax(l/T) ≈ {.172, .089, .031, .654, .045, .009}; by rank 3, 0, 1, 4, 2, 5 with
  // cumulative mass .654, .826, .915, .960, .991, 1
  const std::vector<Case> cases = {
      {SamplingParams{.temperature = float(T), .seed = 5}, {0, 1, 2, 3, 4, 5}},
      {SamplingParams{.temperature = float(T), .top_k = 3, .seed = 6}, {3, 0, 1}},
      {SamplingParams{.temperature = float(T), .top_p = 0.7f, .seed = 7}, {3, 0}},
      {SamplingParams{.temperature = float(T), .top_p = 0.85f, .seed = 8}, {3, 0, 1}},
      // top-p after top-k, on the renormalised top 3: {3} .715, {3, 0} .903 >= .85
      {SamplingParams{.temperature = float(T), .top_k = 3, .top_p = 0.85f, .seed = 9}, {3, 0}},
  };
  for (const auto& c : cases) {
    std::vector<double> expect(6, 0.0);
    double z = 0;
    for (int i : c.kept) z += expect[std::size_t(i)] = std::exp(l(i) / T);
    for (double& e : expect) e /= z;
    Sampler s(c.p);
    const auto dist = s.distribution(l);
    for (int i = 0; i < 6; ++i) CHECK(dist[std::size_t(i)] == doctest::Approx(expect[std::size_t(i)]).epsilon(1e-12));
    const int N = 200000;
    std::vector<int> count(6, 0);
    for (int n = 0; n < N; ++n) count[std::size_t(s.sample(l))]++;
    double chi2 = 0;
    int df = -1;
    for (int i = 0; i < 6; ++i) {
      if (expect[std::size_t(i)] == 0) {
        CHECK(count[std::size_t(i)] == 0);
        continue;
      }
      const double e = N * expect[std::size_t(i)];
      chi2 += (count[std::size_t(i)] - e) * (count[std::size_t(i)] - e) / e;
      ++df;
    }
    INFO("chi2 = ", chi2, " with ", df, " degrees of freedom");
    CHECK(chi2 < 30.0);  // p < 1e-4 for df <= 5
  }
}

TEST_CASE("sampling: repetition penalty divides positive and multiplies negative logits") {
  Sampler plain(SamplingParams{.temperature = 0});
  Sampler pen(SamplingParams{.temperature = 0, .repetition_penalty = 2});
  const std::vector<int> ctx = {0, 0, 7};  // id 0 repeated: penalised once; id 7 not in V
  CHECK(plain.sample(row({2.0, 1.5}), ctx) == 0);
  CHECK(pen.sample(row({2.0, 1.5}), ctx) == 1);     // 2 / 2 = 1 < 1.5
  CHECK(pen.sample(row({3.5, 1.5}), ctx) == 0);     // 3.5 / 2 = 1.75 > 1.5 (once, not twice)
  CHECK(pen.sample(row({-0.5, -0.8}), ctx) == 1);   // -0.5 * 2 = -1 < -0.8
  CHECK(pen.sample(row({2.0, 1.5}), {}) == 0);      // empty context: no effect
  Sampler pen_t(SamplingParams{.temperature = 1, .repetition_penalty = 2});
  const auto d = pen_t.distribution(row({2.0, 1.5}), ctx);
  CHECK(d[0] == doctest::Approx(std::exp(1.0) / (std::exp(1.0) + std::exp(1.5))));
}

TEST_CASE("sampling: disallowed ids are never sampled") {
  // Model vocab 300 > byte tokenizer's 258: ids 258..299 get the largest logits.
  RowVec<double> l = random_logits(300, 9, 1.0);
  l.tail(42).setConstant(10.0);
  ByteTokenizer tok;
  Sampler greedy(SamplingParams{.temperature = 0}, tok, 300);
  CHECK(greedy.sample(l) < 258);
  Sampler hot(SamplingParams{.temperature = 5, .seed = 2}, tok, 300);
  for (int n = 0; n < 5000; ++n) REQUIRE(hot.sample(l) < 258);
  // An explicit mask: only even ids.
  std::vector<std::uint8_t> even(300, 0);
  for (int i = 0; i < 300; i += 2) even[std::size_t(i)] = 1;
  Sampler s(SamplingParams{.temperature = 2, .seed = 4}, even);
  for (int n = 0; n < 5000; ++n) REQUIRE(s.sample(l) % 2 == 0);
  const auto d = s.distribution(l);
  for (int i = 1; i < 300; i += 2) CHECK(d[std::size_t(i)] == 0.0);
}

TEST_CASE("sampling: bad parameters and NaN logits throw clear errors") {
  expect_error([] { Sampler(SamplingParams{.temperature = -1}); }, {"temperature", "-1"});
  expect_error([] { Sampler(SamplingParams{.temperature = NAN}); }, {"temperature", ">= 0"});
  expect_error([] { Sampler(SamplingParams{.top_k = -3}); }, {"top_k", "-3"});
  expect_error([] { Sampler(SamplingParams{.top_p = 0}); }, {"top_p", "(0, 1]"});
  expect_error([] { Sampler(SamplingParams{.top_p = 1.5f}); }, {"top_p", "1.5"});
  expect_error([] { Sampler(SamplingParams{.repetition_penalty = 0}); },
               {"repetition_penalty", "> 0"});
  Sampler s;
  expect_error([&] { s.sample(row({0.0, 1.0, NAN, 2.0})); }, {"position 2", "NaN"});
  expect_error([&] { s.sample(row({0.0, INFINITY})); }, {"position 1", "+inf"});
  expect_error([&] { s.sample(row({-INFINITY, -INFINITY})); }, {"-inf"});
  Sampler none(SamplingParams{}, std::vector<std::uint8_t>(4, 0));
  expect_error([&] { none.sample(row({1.0, 2.0})); }, {"no token id", "allowed"});
}

// ---- tokenizer --------------------------------------------------------------------------

TEST_CASE("tokenizer: byte tokenizer round-trips arbitrary bytes") {
  ByteTokenizer tok;
  CHECK(tok.vocab_size() == 258);
  CHECK(tok.bos() == 256);
  CHECK(tok.eos() == 257);
  std::string all;
  for (int b = 0; b < 256; ++b) all += char(b);
  const auto ids = tok.encode(all);
  REQUIRE(ids.size() == 256);
  for (int b = 0; b < 256; ++b) CHECK(ids[std::size_t(b)] == b);
  CHECK(tok.decode(ids) == all);
  const std::string s("a\0b\xff\xfe\x80z", 7);
  CHECK(tok.decode(tok.encode(s)) == s);
  Rng rng(1);
  for (int trial = 0; trial < 20; ++trial) {
    std::string r;
    for (std::uint64_t n = rng.below(64); n-- > 0;) r += char(rng.below(256));
    CHECK(tok.decode(tok.encode(r)) == r);
  }
  // BOS/EOS decode to nothing; streaming per token equals decode
  std::vector<int> with_specials = {256, 104, 0, 255, 105, 257};
  CHECK(tok.decode(with_specials) == std::string("h\0\xffi", 4));
  std::string streamed;
  for (int id : with_specials) streamed += tok.decode_token(id);
  CHECK(streamed == tok.decode(with_specials));
  CHECK(tok.bytes_per_token(65) == 1.0);
  CHECK(tok.bytes_per_token(257) == 0.0);
  CHECK(tok.can_decode(257));
  CHECK(!tok.can_decode(258));
  CHECK(!tok.can_decode(-1));
  expect_error([&] { tok.decode(std::vector<int>{65, 300}); }, {"300", "position 1", "258"});
  expect_error([&] { tok.decode_token(-2); }, {"-2", "258"});
}

// ---- generation -------------------------------------------------------------------------

template <class ModelT>
void check_greedy_matches_forward(const std::string& name) {
  INFO("model ", name);
  ModelT model(3);
  ByteTokenizer tok;
  const std::vector<int> prompt = tok.encode("Hi there");
  GenerateOptions opt{.max_new_tokens = 13, .sampling = {.temperature = 0}, .stop_tokens = std::set<int>{},
                      .return_logits = true};
  const auto r = generate(model, tok, prompt, opt);
  REQUIRE(r.tokens.size() == 13);
  CHECK(r.stop == StopReason::MaxTokens);
  // Manual loop: the whole growing sequence through forward(), argmax of the last row.
  std::vector<int> seq = prompt;
  for (int n = 0; n < 13; ++n) {
    const Mat<double> lg = model.forward(seq, 1, Index(seq.size()));
    Index best = 0;
    lg.row(lg.rows() - 1).maxCoeff(&best);
    seq.push_back(int(best));
  }
  CHECK(std::vector<int>(seq.begin() + Index(prompt.size()), seq.end()) == r.tokens);
  // Logits of every position: prefill rows, then one row per step (the last token included).
  const Mat<double> full = model.forward(seq, 1, Index(seq.size()));
  REQUIRE(r.logits.rows() == Index(seq.size()));
  REQUIRE(r.logits.cols() == model.vocab());
  const double err = (r.logits.template cast<double>() - full).cwiseAbs().maxCoeff();
  CHECK(err < 1e-4 * (1 + full.cwiseAbs().maxCoeff()));
  CHECK(r.timing.prefill_tokens == Index(prompt.size()));
  CHECK(r.timing.decode_tokens == 13);
}

TEST_CASE("generate: greedy output equals a manual forward() argmax loop") {
  check_greedy_matches_forward<TinyGolf15x3>("TinyGolf15x3");
  check_greedy_matches_forward<TinyHybrid18x6>("TinyHybrid18x6");
  check_greedy_matches_forward<TinyLfm2>("TinyLfm2");
  check_greedy_matches_forward<TinyLfm2Ssm>("TinyLfm2Ssm");
}

TEST_CASE("generate: a batch of different lengths equals each prompt alone") {
  TinyGolf15x3E2 model(5);
  ByteTokenizer tok;
  const std::vector<std::vector<int>> prompts = {{256}, tok.encode("ROMEO:"),
                                                 tok.encode("a longer prompt, 27 bytes.")};
  for (float temp : {0.0f, 0.9f}) {
    INFO("temperature ", temp);
    GenerateOptions opt{.max_new_tokens = 10,
                        .sampling = {.temperature = temp, .top_k = 50, .top_p = 0.9f,
                                     .repetition_penalty = 1.3f, .seed = 17},
                        .stop_tokens = std::set<int>{},
                        .return_logits = true};
    // A stop token that ends sequence 0 early, and a callback that ends sequence 2 after 4
    // tokens, so that the batch shrinks while the others run on.
    const int stop = generate(model, tok, prompts[0], opt).tokens[3];
    opt.stop_tokens = std::set<int>{stop};
    std::vector<GenerationResult> alone;
    for (std::size_t b = 0; b < prompts.size(); ++b) {
      int n = 0;
      alone.push_back(generate(model, tok, prompts[b], opt,
                               [&](int) { return !(b == 2 && ++n == 4); }));
    }
    std::vector<int> seen(3, 0);
    std::vector<std::vector<int>> streamed(3);
    const auto batch = generate_batch(model, tok, prompts, opt, [&](std::size_t b, int id) {
      streamed[b].push_back(id);
      return !(b == 2 && ++seen[b] == 4);
    });
    REQUIRE(batch.size() == 3);
    CHECK(batch[0].stop == StopReason::StopToken);
    CHECK(batch[0].tokens.size() <= 4);
    CHECK(batch[2].stop == StopReason::Callback);
    CHECK(batch[2].tokens.size() == 4);
    for (std::size_t b = 0; b < 3; ++b) {
      INFO("sequence ", b);
      CHECK(batch[b].tokens == alone[b].tokens);
      CHECK(streamed[b] == batch[b].tokens);
      CHECK(batch[b].stop == alone[b].stop);
      REQUIRE(batch[b].logits.rows() == alone[b].logits.rows());
      CHECK(batch[b].logits.rows() == Index(prompts[b].size() + batch[b].tokens.size()));
      CHECK((batch[b].logits - alone[b].logits).cwiseAbs().maxCoeff() < 1e-4f);
    }
  }
}

TEST_CASE("generate: stop tokens stop, EOS by default") {
  TinyMamba model(2);
  ByteTokenizer tok;
  const std::vector<int> prompt = tok.encode("x");
  GenerateOptions opt{.max_new_tokens = 20, .sampling = {.temperature = 0},
                      .stop_tokens = std::set<int>{}};
  const auto free_run = generate(model, tok, prompt, opt);
  REQUIRE(free_run.tokens.size() == 20);
  const int third = free_run.tokens[2];
  opt.stop_tokens = std::set<int>{third};
  const auto r = generate(model, tok, prompt, opt);
  CHECK(r.stop == StopReason::StopToken);
  CHECK(r.tokens.size() <= 3);
  CHECK(r.tokens.back() == third);
  // Default stop set = the tokenizer's EOS.
  TestTokenizer eos_tok(third);
  opt.stop_tokens.reset();
  const auto d = generate(model, eos_tok, prompt, opt);
  CHECK(d.stop == StopReason::StopToken);
  CHECK(d.tokens == r.tokens);
  // max_new_tokens = 0: prefill only
  opt.max_new_tokens = 0;
  opt.return_logits = true;
  const auto z = generate(model, tok, prompt, opt);
  CHECK(z.tokens.empty());
  CHECK(z.logits.rows() == 1);
}

TEST_CASE("generate: a model vocab larger than the tokenizer's samples only decodable ids") {
  ModelDesc d = TinyTransformer::desc();
  d.model.vocab = 320;
  RuntimeModel<double> model(d, 4);
  ByteTokenizer tok;
  GenerateOptions opt{.max_new_tokens = 40, .sampling = {.temperature = 3, .seed = 1},
                      .stop_tokens = std::set<int>{}, .return_logits = true};
  const auto r = generate(model, tok, tok.encode("abc"), opt);
  REQUIRE(r.tokens.size() == 40);
  for (int id : r.tokens) CHECK(id < 258);
  CHECK(r.logits.cols() == 320);
  CHECK(r.logits.rows() == 43);
}

TEST_CASE("generate: bad inputs throw clear errors before running") {
  TinyTransformer model(1);
  ByteTokenizer tok;
  const GenerateOptions opt{.max_new_tokens = 4};
  expect_error([&] { generate(model, tok, {}, opt); }, {"prompt 0", "empty"});
  expect_error([&] { generate_batch(model, tok, {}, opt); }, {"no prompts"});
  expect_error([&] { generate_batch(model, tok, {{1, 2}, {3, 258}}, opt); },
               {"token id 258", "position 1", "prompt 1", "[0, 258)"});
  expect_error([&] { generate(model, tok, {-1}, opt); }, {"token id -1"});
  expect_error([&] { generate(model, tok, {1}, GenerateOptions{.max_new_tokens = -2}); },
               {"max_new_tokens", "-2"});
  expect_error([&] { generate(model, tok, {1}, GenerateOptions{.sampling = {.top_p = 2}}); },
               {"top_p", "2"});
  expect_error([&] {
    generate(model, tok, {1}, GenerateOptions{.stop_tokens = std::set<int>{500}});
  }, {"stop token id 500", "[0, 258)"});
  ModelDesc d = TinyTransformer::desc();
  d.model.max_context = 16;
  RuntimeModel<double> short_model(d, 1);
  expect_error([&] {
    generate(short_model, tok, tok.encode("0123456789"), GenerateOptions{.max_new_tokens = 7});
  }, {"17 tokens", "max_context of 16"});
  CHECK(generate(short_model, tok, tok.encode("0123456789"),
                 GenerateOptions{.max_new_tokens = 6, .stop_tokens = std::set<int>{}})
            .tokens.size() == 6);
  // Non-finite weights → NaN logits → an error naming the sequence and the position.
  TinyTransformer broken(1);
  broken.visit([](const std::string& n, MatMap<double>& t, ParamRole) {
    if (n == "embed.weight") t(0, 0) = NAN;
  });
  expect_error([&] { generate(broken, tok, {5, 0, 7}, opt); },
               {"sequence 0, position 2", "NaN"});
}

}  // namespace hybrid_test_sampling
