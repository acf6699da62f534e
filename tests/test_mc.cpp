// Multiple-choice scoring (include/hybrid/eval/mc.hpp): the JSONL reader and its errors, the
// context / continuation split of lm-eval's _encode_pair, acc / acc_norm / acc_bytes and their
// standard errors on hand-checked log-likelihoods, the shared-context scorer against a
// whole-sequence forward per choice (with and without left truncation), and, with tokenizer
// support, the log-likelihoods and metrics lm-evaluation-harness gives on the LFM2 fixture
// (tests/fixtures/mc/expected.json, written by tests/fixtures/make_mc_fixtures.py).
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include <hybrid/aliases.hpp>
#include <hybrid/eval/mc.hpp>
#include <hybrid/runtime_model.hpp>
#ifdef HYBRID_HAVE_TOKENIZERS
#include <hybrid/hf/checkpoint.hpp>
#include <hybrid/tokenizer/bpe.hpp>
#endif

#include "test_util.hpp"

using namespace hybrid;
using namespace hybrid::eval;
using test_util::check_error;

// This file's own namespace: the tests compile in batches (tests/CMakeLists.txt).
namespace hybrid_test_mc {

namespace {

std::vector<McItem> parse(const std::string& text, Index limit = 0) { return parse_mc_jsonl(text, "mc: 't.jsonl'", limit); }

// log p(cont | ctx) by one forward of ctx + cont (the last max_length + 1 tokens, when > 0)
// per choice: the definition, without the shared context state of McScorer.
template <class S>
double brute_loglik(const RuntimeModel<S>& m, const std::vector<int>& ctx, const std::vector<int>& cont,
                    Index max_length) {
  std::vector<int> full = ctx;
  full.insert(full.end(), cont.begin(), cont.end());
  if (max_length > 0 && Index(full.size()) > max_length + 1) full.erase(full.begin(), full.end() - (max_length + 1));
  const std::vector<int> in(full.begin(), full.end() - 1);
  const Mat<S> lg = m.forward(in, 1, Index(in.size()));  // (T, V)
  double ll = 0;
  for (std::size_t j = 0; j < cont.size(); ++j) {
    const Index r = Index(in.size() - cont.size() + j);
    const double mx = double(lg.row(r).maxCoeff());
    double sum = 0;
    for (Index v = 0; v < lg.cols(); ++v) sum += std::exp(double(lg(r, v)) - mx);
    ll += double(lg(r, cont[j])) - mx - std::log(sum);
  }
  return ll;
}

}  // namespace

TEST_CASE("mc: JSONL items, their fields and the delimiter") {
  const auto items = parse(
      "{\"context\": \"Q: 2+2?\\nA:\", \"choices\": [\"4\", \"5\"], \"gold\": 0, \"id\": \"x\"}\n"
      "\n"
      "  \r\n"
      "{\"context\": \"Pick: \", \"choices\": [\"caf\\u00e9\"], \"gold\": 0, \"target_delimiter\": \"\"}\n");
  REQUIRE(items.size() == 2);
  CHECK(items[0].context == "Q: 2+2?\nA:");
  CHECK(items[0].choices == std::vector<std::string>{"4", "5"});
  CHECK(items[0].gold == 0);
  CHECK(items[0].delimiter == " ");
  CHECK(items[0].line == 1);
  CHECK(items[1].line == 4);
  CHECK(items[1].delimiter.empty());
  CHECK(items[1].choices[0] == "caf\xC3\xA9");
  CHECK(parse(std::string("{\"context\": \"a\", \"choices\": [\"b\"], \"gold\": 0}\n").append(
                  "{\"context\": \"a\", \"choices\": [\"b\"], \"gold\": 0}\n"), 1).size() == 1);
  CHECK(read_mc_jsonl(std::string(HYBRID_FIXTURES_DIR) + "/mc/piqa.jsonl").size() == 12);
}

TEST_CASE("mc: bad JSONL names the line, the field and what was expected") {
  const std::string ok = "{\"context\": \"a\", \"choices\": [\"b\", \"c\"], \"gold\": 1}\n";
  check_error([&] { parse(ok + "{\"context\": \"a\", \"choices\": [\"b\"]\n"); }, {"t.jsonl' line 2", "not valid JSON"});
  check_error([&] { parse(ok + ok + "[1, 2]\n"); }, {"line 3", "JSON object"});
  check_error([&] { parse("{\"choices\": [\"b\"], \"gold\": 0}"); }, {"line 1", "context", "missing"});
  check_error([&] { parse("{\"context\": 5, \"choices\": [\"b\"], \"gold\": 0}"); }, {"context", "expected a string", "5"});
  check_error([&] { parse("{\"context\": \"a\", \"gold\": 0}"); }, {"choices", "missing"});
  check_error([&] { parse("{\"context\": \"a\", \"choices\": \"b\", \"gold\": 0}"); }, {"choices", "an array of strings"});
  check_error([&] { parse("{\"context\": \"a\", \"choices\": [], \"gold\": 0}"); }, {"choices", "empty"});
  check_error([&] { parse("{\"context\": \"a\", \"choices\": [\"b\", 3], \"gold\": 0}"); }, {"choices[1]", "expected a string"});
  check_error([&] { parse("{\"context\": \"a\", \"choices\": [\"b\", \"\"], \"gold\": 0}"); }, {"choices[1]", "empty string"});
  check_error([&] { parse("{\"context\": \"a\", \"choices\": [\"b\"]}"); }, {"gold", "missing"});
  check_error([&] { parse("{\"context\": \"a\", \"choices\": [\"b\"], \"gold\": 0.5}"); }, {"gold", "integer"});
  check_error([&] { parse("{\"context\": \"a\", \"choices\": [\"b\"], \"gold\": \"0\"}"); }, {"gold", "integer"});
  check_error([&] { parse(ok + "{\"context\": \"a\", \"choices\": [\"b\", \"c\"], \"gold\": 2}"); },
              {"line 2", "gold", "out of range for 2 choices", "0..1"});
  check_error([&] { parse("{\"context\": \"a\", \"choices\": [\"b\"], \"gold\": -1}"); }, {"gold", "out of range"});
  check_error([&] { parse("{\"context\": \"a\", \"choices\": [\"b\"], \"gold\": 0, \"target_delimiter\": 1}"); },
              {"target_delimiter", "expected a string"});
  check_error([&] { parse("\n\n"); }, {"no item"});
  check_error([&] { read_mc_jsonl("/nonexistent/mc.jsonl"); }, {"cannot open", "/nonexistent/mc.jsonl"});
}

TEST_CASE("mc: lengths in characters and bytes, Python's rstrip") {
  CHECK(utf8_chars("caf\xC3\xA9") == 4);
  CHECK(utf8_chars("\xE3\x81\x82\xE3\x82\x8A") == 2);  // two kana, 6 bytes
  CHECK(rstrip_length("Answer: \t\n") == 7);
  CHECK(rstrip_length("x\xC2\xA0") == 1);              // NBSP is whitespace to Python
  CHECK(rstrip_length("x\xE3\x80\x80 ") == 1);         // so is the ideographic space
  CHECK(rstrip_length("x\xC2\xA9") == 3);              // the copyright sign is not
  CHECK(rstrip_length("   ") == 0);
}

TEST_CASE("mc: the context / continuation split of lm-eval's _encode_pair, byte-level") {
  const ByteTokenizer tok;
  const auto ids = [&](const std::string& s) { return tok.encode(s); };
  McItem it{.context = "Answer: ", .choices = {"yes", "no"}, .gold = 0, .delimiter = ""};
  McTokens t = encode_mc_item(tok, it, false);
  CHECK(t.context == ids("Answer:"));  // the trailing space moves to the continuation
  CHECK(t.continuations[0] == ids(" yes"));
  CHECK(t.continuations[1] == ids(" no"));
  it.context = "Answer:";
  it.delimiter = " ";
  CHECK(encode_mc_item(tok, it, false).continuations == t.continuations);
  t = encode_mc_item(tok, it, true);
  CHECK(t.context.front() == ByteTokenizer::kBos);
  CHECK(t.context.size() == 8);
  it.context = "";  // an empty context is the BOS
  t = encode_mc_item(tok, it, false);
  CHECK(t.context == std::vector<int>{ByteTokenizer::kBos});
  CHECK(t.continuations[0] == ids(" yes"));
  it.context = " \n";
  check_error([&] { encode_mc_item(tok, it, false); }, {"only whitespace"});
  CHECK(encode_mc_item(tok, it, true).context == std::vector<int>{ByteTokenizer::kBos});
}

TEST_CASE("mc: acc, acc_norm, acc_bytes and lm-eval's standard error on hand-checked log-likelihoods") {
  // choices[0] "ab": 2 chars, 2 bytes; choices[1] "é": 1 char, 2 bytes; choices[2] "xyzw": 4, 4.
  const McItem it{.context = "c", .choices = {"ab", "\xC3\xA9", "xyzw"}, .gold = 0};
  // ll:     -2, -1.5, -6 -> pred 1 (-1.5); per char -1, -1.5, -1.5 -> 0; per byte -1, -0.75, -1.5 -> 1
  // second: -3, -4, -4   -> pred 0; per char -1.5, -4, -1 -> 2; per byte -1.5, -2, -1 -> 2
  // third:  -8, -4, -4   -> pred 1 (the first maximum); per char -4, -4, -1 -> 2; per byte -4, -2, -1 -> 2
  // fourth: -1, -3, -2   -> 0; -0.5, -3, -0.5 -> 0 (first); -0.5, -1.5, -0.5 -> 0
  std::vector<McItem> items(4, it);
  std::vector<McItemScore> s(4);
  s[0].logliks = {-2, -1.5, -6};
  s[1].logliks = {-3, -4, -4};
  s[2].logliks = {-8, -4, -4};
  s[3].logliks = {-1, -3, -2};
  const McMetrics m = mc_metrics(items, s);
  CHECK(s[0].pred == 1);
  CHECK(s[0].pred_norm == 0);
  CHECK(s[0].pred_bytes == 1);
  CHECK(s[1].pred == 0);
  CHECK(s[1].pred_norm == 2);
  CHECK(s[2].pred == 1);
  CHECK(s[3].pred_norm == 0);
  CHECK(m.items == 4);
  // acc: 0, 1, 0, 1 -> 0.5, sample variance 1/3, se sqrt(1/3 / 4)
  CHECK(m.acc.mean == doctest::Approx(0.5).epsilon(1e-15));
  CHECK(m.acc.se == doctest::Approx(std::sqrt(1.0 / 12.0)).epsilon(1e-14));
  // acc_norm: 1, 0, 0, 1 -> 0.5; acc_bytes: 0, 0, 0, 1 -> 0.25, variance 0.25, se 0.25
  CHECK(m.acc_norm.mean == doctest::Approx(0.5).epsilon(1e-15));
  CHECK(m.acc_bytes.mean == doctest::Approx(0.25).epsilon(1e-15));
  CHECK(m.acc_bytes.se == doctest::Approx(0.25).epsilon(1e-14));
  // One item: no sample variance.
  std::vector<McItemScore> one(1, s[0]);
  CHECK(std::isnan(mc_metrics(std::vector<McItem>(1, it), one).acc.se));
  std::vector<McItemScore> bad(1);
  bad[0].logliks = {-1};
  check_error([&] { mc_metrics(std::vector<McItem>(1, it), bad); }, {"3 choices", "1 log-likelihoods"});
}

TEST_CASE("mc: the shared-context scorer equals a whole forward per choice, truncated from the left too") {
  const ByteTokenizer tok;
  const RuntimeModel<double> hybrid_m(TinyHybrid18x6::desc(), 11);
  const RuntimeModel<double> lfm2_m(TinyLfm2::desc(), 12);
  const std::vector<McItem> items = {
      {.context = "To be, or not to be: that is", .choices = {"the question.", "a cat", "no"}, .gold = 0},
      {.context = "Answer: ", .choices = {"yes", "no, never"}, .gold = 1, .delimiter = ""},
  };
  for (const RuntimeModel<double>* m : {&hybrid_m, &lfm2_m})
    for (Index L : {Index(0), Index(20)}) {  // 20: the first item is cut to its last 21 tokens
      CAPTURE(L);
      const McResult r = evaluate_mc(*m, tok, items, McOptions{.max_length = L});
      REQUIRE(r.items.size() == items.size());
      for (std::size_t k = 0; k < items.size(); ++k) {
        const McTokens t = encode_mc_item(tok, items[k], false);
        for (std::size_t i = 0; i < items[k].choices.size(); ++i)
          CHECK(r.items[k].logliks[i] == doctest::Approx(brute_loglik(*m, t.context, t.continuations[i], L)).epsilon(1e-10));
      }
      CHECK(r.choices == 5);
    }
  // A continuation longer than the maximum length cannot be scored.
  check_error([&] { evaluate_mc(hybrid_m, tok, items, McOptions{.max_length = 4}); },
              {"continuation is 14 tokens", "maximum length 4"});
}

#ifdef HYBRID_HAVE_TOKENIZERS
// lm-evaluation-harness (HFLM, zero-shot) on the tiny LFM2 checkpoint with its tokenizer.json:
// the same continuation tokens, log-likelihoods to 1e-4 (relative 1e-6 past 100 nats), the same
// metrics.
TEST_CASE("mc: log-likelihoods and metrics equal lm-evaluation-harness's on the LFM2 fixture") {
  const std::string fx = HYBRID_FIXTURES_DIR;
  const nlohmann::json ex = nlohmann::json::parse(test_util::slurp(fx + "/mc/expected.json"));
  const std::string dir = fx + "/hf/lfm2_bpe_tokenizer";
  const RuntimeModel<float> model = hf::load_hf<float>(dir);
  const BpeTokenizer tok(dir + "/tokenizer.json");
  REQUIRE(ex["tasks"].size() >= 4);
  for (const auto& [name, e] : ex["tasks"].items()) {
    CAPTURE(name);
    const std::vector<McItem> items = read_mc_jsonl(fx + "/mc/" + e["file"].get<std::string>());
    REQUIRE(Index(items.size()) == e["items"].get<Index>());
    const McOptions o{.bos = ex["bos"].get<bool>(), .max_length = e.value("max_length", Index(0))};
    for (std::size_t k = 0; k < items.size(); ++k) {
      const McTokens t = encode_mc_item(tok, items[k], o.bos);
      CHECK(t.context == e["tokens"][k]["context"].get<std::vector<int>>());
      CHECK(t.continuations == e["tokens"][k]["continuations"].get<std::vector<std::vector<int>>>());
    }
    const McResult r = evaluate_mc(model, tok, items, o);
    for (std::size_t k = 0; k < items.size(); ++k)
      for (std::size_t i = 0; i < items[k].choices.size(); ++i) {
        CAPTURE(k);
        CAPTURE(i);
        // float32 forwards on both sides: 1e-4, relative 1e-6 past 100 nats (a sum of many tokens)
        const double want = e["logliks"][k][i].get<double>();
        CHECK(std::abs(r.items[k].logliks[i] - want) < 1e-4 * std::max(1.0, std::abs(want) / 100));
        CHECK(bool(r.items[k].greedy[i]) == e["greedy"][k][i].get<bool>());
      }
    CHECK(r.metrics.acc.mean == doctest::Approx(e["acc"].get<double>()).epsilon(1e-12));
    CHECK(r.metrics.acc_norm.mean == doctest::Approx(e["acc_norm"].get<double>()).epsilon(1e-12));
    CHECK(r.metrics.acc_bytes.mean == doctest::Approx(e["acc_bytes"].get<double>()).epsilon(1e-12));
    CHECK(r.metrics.acc.se == doctest::Approx(e["acc_stderr"].get<double>()).epsilon(1e-9));
    CHECK(r.metrics.acc_norm.se == doctest::Approx(e["acc_norm_stderr"].get<double>()).epsilon(1e-9));
    CHECK(r.metrics.acc_bytes.se == doctest::Approx(e["acc_bytes_stderr"].get<double>()).epsilon(1e-9));
  }
}
#else
TEST_CASE("mc: lm-evaluation-harness parity needs tokenizer support") {
  MESSAGE("built without HYBRID_HAVE_TOKENIZERS: the LFM2 fixture's tokenizer.json cannot be read, parity not checked");
}
#endif

}  // namespace hybrid_test_mc
