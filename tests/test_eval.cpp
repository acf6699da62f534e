// Evaluation (include/hybrid/eval/): the sliding-window plan scores every target exactly
// once; sliding-window totals equal a brute-force computation of the rule and, at stride =
// window, plain chunked scoring; the logits path equals the fused one; byte counts per
// token for the byte tokenizer and the tokenizer fixtures (parameter-golf's rule); and
// score-first test-time training: each chunk is scored with the weights adapted on the
// chunks before it only, and 0 steps is the plain evaluation.
#include <doctest/doctest.h>

#include <cmath>
#include <string>
#include <vector>

#include <hybrid/aliases.hpp>
#include <hybrid/data/source.hpp>
#include <hybrid/eval/bpb.hpp>
#include <hybrid/eval/sliding.hpp>
#include <hybrid/eval/stream.hpp>
#include <hybrid/eval/ttt.hpp>
#include <hybrid/runtime_model.hpp>
#ifdef HYBRID_HAVE_TOKENIZERS
#include <hybrid/tokenizer/bpe.hpp>
#include <hybrid/tokenizer/sentencepiece.hpp>
#endif

#include "test_util.hpp"

using namespace hybrid;
using namespace hybrid::eval;
using test_util::check_error;

// This file's own namespace: the tests compile in batches (tests/CMakeLists.txt).
namespace hybrid_test_eval {

namespace {

// The first n bytes of the shipped corpus as byte-level ids.
std::vector<int> corpus_ids(Index n) {
  const std::string text = data::detail::read_file_bytes(HYBRID_DATA_DIR "/tinyshakespeare.txt", "corpus");
  REQUIRE(Index(text.size()) >= n);
  std::vector<int> ids(static_cast<std::size_t>(n));
  for (Index i = 0; i < n; ++i) ids[std::size_t(i)] = static_cast<unsigned char>(text[std::size_t(i)]);
  return ids;
}

// Cross-entropy (nats) of ids[p] given ids[start .. p - 1] alone: the last row of a forward
// over that context, with the log-sum-exp in double.
template <class S>
double nats_given(const RuntimeModel<S>& m, const std::vector<int>& ids, Index start, Index p) {
  const std::vector<int> ctx(ids.begin() + start, ids.begin() + p);
  const Mat<S> lg = m.forward(ctx, 1, Index(ctx.size()), nullptr, false);  // (1, V)
  const double mx = double(lg.maxCoeff());
  double sum = 0;
  for (Index v = 0; v < lg.cols(); ++v) sum += std::exp(double(lg(0, v)) - mx);
  return mx + std::log(sum) - double(lg(0, ids[std::size_t(p)]));
}

// The rule written per target, independent of WindowPlan: target p <= L sees x_0 .. x_{p-1};
// a later one lies in block k = ceil((p - L) / S), whose window ends at
// v = min(L + 1 + k S, n) and starts at v - 1 - L.
Index context_start(Index p, Index n, Index L, Index S) {
  if (p <= L) return 0;
  const Index k = (p - L + S - 1) / S;
  return std::min(L + 1 + k * S, n) - 1 - L;
}

template <class Scalar>
double brute_force_nats(const RuntimeModel<Scalar>& m, const std::vector<int>& ids, Index L, Index S) {
  const Index n = Index(ids.size());
  double nats = 0;
  for (Index p = 1; p < n; ++p) nats += nats_given(m, ids, context_start(p, n, L, S), p);
  return nats;
}

TokenBytes byte_table(int V) { return token_bytes(ByteTokenizer(), V); }

}  // namespace

// ------------------------------------------------------------------------------------------
// The window plan

TEST_CASE("eval: the sliding-window plan scores every target exactly once") {
  struct Case { Index L, S, n; };
  const std::vector<Case> cases{{8, 8, 9},   {8, 8, 33},  {8, 8, 36},  {8, 3, 9},   {8, 3, 30},
                                {8, 3, 31},  {8, 1, 20},  {16, 5, 100}, {5, 4, 6},  {1, 1, 7},
                                {7, 2, 8},   {12, 12, 13}, {12, 7, 200}};
  for (const Case& c : cases) {
    CAPTURE(c.L);
    CAPTURE(c.S);
    CAPTURE(c.n);
    const WindowPlan plan(c.n, c.L, c.S);
    std::vector<int> seen(static_cast<std::size_t>(c.n), 0);
    Index prev_end = 1;
    for (Index k = 0; k < plan.size(); ++k) {
      const Window w = plan[k];
      CHECK(w.len == c.L);
      CHECK(w.start >= 0);
      CHECK(w.end == w.start + w.len + 1);
      CHECK(w.end <= c.n);
      CHECK(w.first == prev_end);  // contiguous: no target skipped between windows
      CHECK(w.scored() >= 1);
      if (k == 0) CHECK(w.scored() == c.L);
      else CHECK(w.scored() <= c.S);
      for (Index p = w.first; p < w.end; ++p) {
        ++seen[std::size_t(p)];
        if (k > 0) CHECK(p - w.start >= c.L - c.S + 1);  // left context of at least L - S + 1
        CHECK(w.start == context_start(p, c.n, c.L, c.S));
      }
      prev_end = w.end;
    }
    CHECK(prev_end == c.n);
    CHECK(seen[0] == 0);  // x_0 is never a target
    for (Index p = 1; p < c.n; ++p) CHECK(seen[std::size_t(p)] == 1);
    // S = L: the windows are the chunks of plain scoring (stride L), the tail right-aligned.
    if (c.S == c.L)
      for (Index k = 0; k + 1 < plan.size(); ++k) CHECK(plan[k].start == k * c.L);
  }
  check_error([] { WindowPlan(8, 8, 3); }, {"stream has 8 tokens", "at least 9"});
  check_error([] { WindowPlan(100, 8, 9); }, {"stride <= window"});
  check_error([] { SlidingOptions{.window = 8, .stride = 9}.validate(); }, {"stride (9) must not exceed the window (8)"});
}

// ------------------------------------------------------------------------------------------
// Sliding-window totals

TEST_CASE("eval: sliding-window totals equal a brute-force computation of the rule") {
  const RuntimeModel<double> attn(TinyTransformer::desc(), 3);
  const RuntimeModel<double> ssm(TinyMamba::desc(), 5);
  const std::vector<int> ids = corpus_ids(61);
  const IdStream stream(ids, "corpus");
  const TokenBytes tb = byte_table(attn.vocab());
  struct Case { Index L, S, batch; };
  for (const Case c : {Case{16, 16, 1}, Case{16, 5, 1}, Case{16, 5, 3}, Case{20, 7, 2}, Case{60, 1, 1}}) {
    CAPTURE(c.L);
    CAPTURE(c.S);
    CAPTURE(c.batch);
    for (const RuntimeModel<double>* m : {&attn, &ssm}) {
      const EvalResult r = evaluate_sliding(*m, stream, tb, SlidingOptions{.window = c.L, .stride = c.S, .batch = c.batch});
      const double want = brute_force_nats(*m, ids, c.L, c.S);
      CHECK(r.totals.tokens == 60);
      CHECK(r.totals.bytes == 60);  // byte level: bytes = tokens
      CHECK(r.totals.nats == doctest::Approx(want).epsilon(1e-11));
      CHECK(r.totals.bits_per_byte() == doctest::Approx(want / (std::log(2.0) * 60)).epsilon(1e-11));
      CHECK(r.windows == WindowPlan(61, c.L, c.S).size());
    }
  }
  // The overlap matters: with less context per target the totals differ (the test above
  // would not notice windows that forgot their left context otherwise).
  const double plain = evaluate_sliding(attn, stream, tb, SlidingOptions{.window = 16}).totals.nats;
  const double slide = evaluate_sliding(attn, stream, tb, SlidingOptions{.window = 16, .stride = 4}).totals.nats;
  CHECK(std::abs(plain - slide) > 1e-6 * std::abs(plain));
}

TEST_CASE("eval: stride = window is plain chunked scoring") {
  const RuntimeModel<double> m(TinyLfm2::desc(), 7);
  const Index L = 24, chunks = 5;
  const std::vector<int> ids = corpus_ids(L * chunks + 1);
  const IdStream stream(ids, "corpus");
  double want = 0;
  Tape<double> t(false);
  for (Index j = 0; j < chunks; ++j) {  // windows of L + 1 ids at stride L, as the trainer scores
    const std::vector<int> tok(ids.begin() + j * L, ids.begin() + (j + 1) * L);
    const std::vector<int> tgt(ids.begin() + j * L + 1, ids.begin() + (j + 1) * L + 1);
    t.rewind();
    want += m.score(t, tok, tgt, 1, L).nats;
  }
  for (Index batch : {1, 2, 5}) {
    const EvalResult r = evaluate_sliding(m, stream, byte_table(m.vocab()), SlidingOptions{.window = L, .batch = batch});
    CHECK(r.windows == chunks);
    CHECK(r.totals.tokens == L * chunks);
    CHECK(r.totals.nats == doctest::Approx(want).epsilon(1e-12));
  }
  // max_tokens: the stream's first max_tokens + 1 ids.
  const EvalResult head = evaluate_sliding(m, stream, byte_table(m.vocab()), SlidingOptions{.window = L, .max_tokens = 2 * L});
  CHECK(head.totals.tokens == 2 * L);
  t.rewind();
  const double first = m.score(t, std::vector<int>(ids.begin(), ids.begin() + L),
                               std::vector<int>(ids.begin() + 1, ids.begin() + L + 1), 1, L).nats;
  CHECK(head.totals.nats > first);
  CHECK(head.totals.nats < want);
}

TEST_CASE("eval: the logits path equals the fused path, and runs on stored weights") {
  RuntimeModel<float> m(TinyMamba::desc(), 9);
  const std::vector<int> ids = corpus_ids(80);
  const IdStream stream(ids, "corpus");
  const TokenBytes tb = byte_table(m.vocab());
  const SlidingOptions o{.window = 24, .stride = 10, .batch = 2};
  SlidingOptions fused = o, logits = o;
  fused.path = ScorePath::Fused;
  logits.path = ScorePath::Logits;
  const double a = evaluate_sliding(m, stream, tb, fused).totals.nats;
  const double b = evaluate_sliding(m, stream, tb, logits).totals.nats;
  CHECK(b == doctest::Approx(a).epsilon(1e-5));

  // Stored weights: Auto takes the logits path; the totals are those of the stored model
  // (its forward()), not of the float one.
  m.set_weight_storage(DType::BF16);
  const EvalResult r = evaluate_sliding(m, stream, tb, o);
  CHECK(r.totals.nats == doctest::Approx(brute_force_nats(m, ids, o.window, o.stride)).epsilon(1e-4));
  check_error([&] { evaluate_sliding(m, stream, tb, fused); }, {"fused scoring path needs float weights"});
}

TEST_CASE("eval: the logits path continues a window across chunks of rows") {
  // A window longer than one chunk of logits rows (2^19 / V = 2032 rows at V = 258).
  const RuntimeModel<float> m(TinyMamba::desc(), 2);
  const Index L = ops::head_loss_chunk(1 << 20, m.vocab()) + 40;
  const std::vector<int> ids = corpus_ids(L + 31);
  const IdStream stream(ids, "corpus");
  const TokenBytes tb = byte_table(m.vocab());
  SlidingOptions fused{.window = L, .stride = 15, .path = ScorePath::Fused}, logits = fused;
  logits.path = ScorePath::Logits;
  const EvalResult a = evaluate_sliding(m, stream, tb, fused), b = evaluate_sliding(m, stream, tb, logits);
  CHECK(a.windows == 3);
  CHECK(b.totals.tokens == a.totals.tokens);
  CHECK(b.totals.nats == doctest::Approx(a.totals.nats).epsilon(1e-4));
}

TEST_CASE("eval: bad streams and options are named") {
  const RuntimeModel<double> m(TinyTransformer::desc(), 1);
  std::vector<int> ids = corpus_ids(40);
  ids[33] = 300;
  const IdStream bad(ids, "ids with a stray");
  check_error([&] { evaluate_sliding(m, bad, byte_table(m.vocab()), SlidingOptions{.window = 16}); },
              {"token id 300 at position 33 of ids with a stray", "outside the model's vocabulary [0, 258)"});
  const IdStream shorter(corpus_ids(10), "short");
  check_error([&] { evaluate_sliding(m, shorter, byte_table(m.vocab()), SlidingOptions{.window = 16}); },
              {"the stream has 10 tokens", "needs at least 17"});
  check_error([&] { evaluate_sliding(m, shorter, byte_table(100), SlidingOptions{.window = 4}); },
              {"byte table covers 100 ids", "258"});
  check_error([] { Totals{}.loss(); }, {"no token was scored"});
  check_error([] { Totals{.nats = 1, .bytes = 0, .tokens = 3}.bits_per_byte(); }, {"stand for 0 bytes"});
}

// ------------------------------------------------------------------------------------------
// Byte counts per token

TEST_CASE("eval: byte counts of the byte tokenizer; ids beyond a tokenizer count 0") {
  const TokenBytes t = token_bytes(ByteTokenizer(), 300);
  REQUIRE(t.vocab() == 300);
  for (int id = 0; id < 256; ++id) CHECK(t.count(id == 0 ? -1 : id - 1, id) == 1);
  CHECK(t.count(65, ByteTokenizer::kBos) == 0);
  CHECK(t.count(65, ByteTokenizer::kEos) == 0);
  CHECK(t.count(65, 299) == 0);
  const std::string text = "To be, or not to be\n\xE2\x96\x81";
  const std::vector<int> ids = ByteTokenizer().encode(text);
  CHECK(t.sum(ids.data(), Index(ids.size())) == double(text.size()));
  check_error([&] { t.count(0, 300); }, {"token id 300 has no byte count", "[0, 300)"});
}

#ifdef HYBRID_HAVE_TOKENIZERS
TEST_CASE("eval: SentencePiece byte counts follow parameter-golf's rule, in a stream too") {
  const std::string dir = std::string(HYBRID_FIXTURES_DIR) + "/tokenizers/";
  const SentencePieceTokenizer sp(dir + "sp_bpe_1024.model");
  const int V = sp.vocab_size() + 64;  // a model padded beyond the tokenizer
  const TokenBytes t = token_bytes(sp, V);
  int with_space = -1, letter = -1;
  for (int id = 0; id < sp.vocab_size() && with_space < 0; ++id)
    if (sp.piece(id).rfind("\xE2\x96\x81", 0) == 0 && sp.piece(id).size() > 3) with_space = id;
  for (int id = 0; id < sp.vocab_size() && letter < 0; ++id)
    if (sp.piece(id) == "e") letter = id;
  REQUIRE(with_space >= 0);
  REQUIRE(letter >= 0);
  const double base = double(sp.piece(with_space).size() - 3);
  CHECK(t.count(letter, with_space) == base + 1);     // after text: the "▁" is a byte
  CHECK(t.count(*sp.bos(), with_space) == base);      // after a boundary (BOS): it is not
  CHECK(t.count(-1, with_space) == base);
  CHECK(t.count(letter, 4 + 'A') == 1);               // byte fallback <0x41>
  CHECK(t.count(letter, *sp.bos()) == 0);             // control
  CHECK(t.count(letter, *sp.unk()) == 0);             // unknown
  CHECK(t.count(letter, sp.vocab_size() + 10) == 0);  // a padded id
  CHECK(t.count(sp.vocab_size() + 10, with_space) == base);  // a padded id is a boundary
  for (int prev : {-1, *sp.bos(), letter, *sp.eos(), *sp.unk()})
    for (int id = 0; id < sp.vocab_size(); ++id) {
      CAPTURE(prev);
      CAPTURE(id);
      REQUIRE(t.count(prev, id) == sp.bytes_after(prev, id));
    }

  // A document as parameter-golf evaluates it: BOS, then the text's ids; the targets'
  // bytes are the normalized text's UTF-8 length, and the evaluation counts the same.
  const std::string text = test_util::slurp(dir + "sample.txt");
  std::vector<int> ids{*sp.bos()};
  for (int id : sp.encode(text)) ids.push_back(id);
  const double want = double(sp.decode(std::vector<int>(ids.begin() + 1, ids.end())).size());
  CHECK(t.sum(ids.data() + 1, Index(ids.size()) - 1, ids[0]) == want);
  ModelDesc d = TinyMamba::desc();
  d.model.vocab = V;
  const RuntimeModel<double> m(d, 4);
  const IdStream stream(ids, "sample");
  const Index L = 32;
  REQUIRE(Index(ids.size()) > L + 1);
  const EvalResult r = evaluate_sliding(m, stream, t, SlidingOptions{.window = L, .stride = 8});
  CHECK(r.totals.bytes == want);
  CHECK(r.totals.tokens == Index(ids.size()) - 1);
  // Seen as a plain Tokenizer, the context-free count adds the "▁" byte after the BOS too.
  const TokenBytes plain = token_bytes(static_cast<const Tokenizer&>(sp), V);
  CHECK(plain.count(*sp.bos(), with_space) == base + 1);
}

TEST_CASE("eval: byte-level BPE byte counts sum to the text's bytes") {
  const std::string dir = std::string(HYBRID_FIXTURES_DIR) + "/tokenizers/";
  const BpeTokenizer bpe(dir + "bpe_gpt2.json");
  const TokenBytes t = token_bytes(bpe, bpe.vocab_size());
  const std::string text = test_util::slurp(dir + "sample.txt");
  const std::vector<int> ids = bpe.encode(text);
  // The tokens stand for their decoding: the text, and the space this tokenizer's
  // pre-tokenizer puts before it (add_prefix_space).
  CHECK(t.sum(ids.data(), Index(ids.size())) == double(bpe.decode(ids).size()));
  CHECK(bpe.decode(ids).size() == text.size() + 1);
  for (int id : ids) CHECK(t.count(-1, id) == double(bpe.decode_token(id).size()));
}
#endif  // HYBRID_HAVE_TOKENIZERS

// ------------------------------------------------------------------------------------------
// Score-first test-time training

namespace {
// The totals the loop reported for chunk c (its Scored event).
Totals scored_totals(const std::vector<TttEvent>& log, std::size_t c) {
  for (const TttEvent& e : log)
    if (e.kind == TttEvent::Kind::Scored && e.chunk == Index(c)) return e.totals;
  FAIL("no score for chunk ", c);
  return Totals{};
}

// The windows of a chunk of the plan.
std::vector<Window> chunk_windows(const WindowPlan& plan, const Chunk& ch) {
  std::vector<Window> ws;
  for (Index k = ch.k0; k < ch.k1; ++k) ws.push_back(plan[k]);
  return ws;
}

TttOptions strong_ttt(int steps) {
  // A learning rate large enough that one chunk's adaptation visibly moves the next scores.
  return TttOptions{.chunk = 40, .steps = steps, .optim = train::OptimConfig::adamw(3e-3, 0.0)};
}
}  // namespace

TEST_CASE("ttt: 0 steps is the plain sliding-window evaluation") {
  const RuntimeModel<double> m0(TinyTransformer::desc(), 11);
  const std::vector<int> ids = corpus_ids(150);
  const IdStream stream(ids, "corpus");
  const TokenBytes tb = byte_table(m0.vocab());
  const SlidingOptions o{.window = 16, .stride = 6, .batch = 4};
  const EvalResult plain = evaluate_sliding(m0, stream, tb, o);
  RuntimeModel<double> m = m0;
  std::vector<TttEvent> log;
  const EvalResult r = evaluate_ttt(m, stream, tb, o, strong_ttt(0), [&](const TttEvent& e) { log.push_back(e); });
  CHECK(r.totals.tokens == plain.totals.tokens);
  CHECK(r.totals.bytes == plain.totals.bytes);
  CHECK(r.totals.nats == doctest::Approx(plain.totals.nats).epsilon(1e-12));
  CHECK(r.windows == plain.windows);
  CHECK(r.adapt_steps == 0);
  REQUIRE(r.chunks > 2);
  CHECK(Index(log.size()) == r.chunks);
  for (const TttEvent& e : log) CHECK(e.kind == TttEvent::Kind::Scored);
  // The weights are untouched.
  for (Index i = 0; i < m.param_table().total(); ++i) REQUIRE(m.param_values()[i] == m0.param_values()[i]);
}

TEST_CASE("ttt: each chunk is scored before it is adapted on, with the weights of the chunks before it") {
  const RuntimeModel<double> m0(TinyTransformer::desc(), 13);
  const std::vector<int> ids = corpus_ids(170);
  const IdStream stream(ids, "corpus");
  const TokenBytes tb = byte_table(m0.vocab());
  const SlidingOptions o{.window = 16, .stride = 8, .batch = 2};
  const TttOptions t = strong_ttt(2);

  RuntimeModel<double> m = m0;
  std::vector<TttEvent> log;
  const EvalResult r = evaluate_ttt(m, stream, tb, o, t, [&](const TttEvent& e) { log.push_back(e); });
  const WindowPlan plan(Index(ids.size()), o.window, o.stride);
  const std::vector<Chunk> chunks = plan_chunks(plan, t.chunk);
  REQUIRE(chunks.size() >= 4);
  CHECK(r.chunks == Index(chunks.size()));
  CHECK(r.adapt_steps == Index(t.steps) * (r.chunks - 1));

  const auto scored = [&](std::size_t c) { return scored_totals(log, c); };

  // Replay: a copy of the original weights adapted on chunks < c only scores chunk c as the
  // loop reported; adapting on chunk c as well (adapt-first) gives another score.
  RuntimeModel<double> replay = m0;
  ChunkAdapter<double> adapter(replay, t, o.window, o.batch);
  WindowScorer<double> scorer(replay, stream, tb, o.window, o.batch, ScorePath::Auto);
  const auto score_chunk = [&](const Chunk& ch) { return scorer.score(chunk_windows(plan, ch)); };
  for (std::size_t c = 0; c < chunks.size(); ++c) {
    CAPTURE(c);
    const Totals before = score_chunk(chunks[c]);
    CHECK(before.nats == doctest::Approx(scored(c).nats).epsilon(1e-12));
    CHECK(before.tokens == scored(c).tokens);
    adapter.adapt(stream, chunks[c].first, chunks[c].end, Index(c));
    const Totals after = score_chunk(chunks[c]);
    CHECK(std::abs(after.nats - scored(c).nats) > 1e-4 * scored(c).nats);  // adapt-first would show
  }
  // And without the replay's machinery: chunk 0 is scored by the untouched weights, chunk 1
  // by changed ones.
  WindowScorer<double> original(m0, stream, tb, o.window, o.batch, ScorePath::Auto);
  const std::vector<Window> ws0 = chunk_windows(plan, chunks[0]), ws1 = chunk_windows(plan, chunks[1]);
  CHECK(original.score(ws0).nats == doctest::Approx(scored(0).nats).epsilon(1e-12));
  CHECK(std::abs(original.score(ws1).nats - scored(1).nats) > 1e-4 * scored(1).nats);

  // The event log: Scored(c), then Adapted(c, 0..steps-1); the last chunk only scored.
  std::size_t at = 0;
  Totals sum;
  for (std::size_t c = 0; c < chunks.size(); ++c) {
    REQUIRE(at < log.size());
    CHECK(log[at].kind == TttEvent::Kind::Scored);
    CHECK(log[at].chunk == Index(c));
    CHECK(log[at].first == chunks[c].first);
    CHECK(log[at].end == chunks[c].end);
    sum += log[at].totals;
    ++at;
    const int n_steps = c + 1 < chunks.size() ? t.steps : 0;
    for (int s = 0; s < n_steps; ++s, ++at) {
      REQUIRE(at < log.size());
      CHECK(log[at].kind == TttEvent::Kind::Adapted);
      CHECK(log[at].chunk == Index(c));
      CHECK(log[at].step == s);
    }
  }
  CHECK(at == log.size());
  CHECK(sum.nats == r.totals.nats);
  CHECK(sum.tokens == Index(ids.size()) - 1);
}

TEST_CASE("ttt: adaptation lowers the loss of the chunk it trains on; float weights only") {
  const RuntimeModel<double> m0(TinyMamba::desc(), 17);
  const std::vector<int> ids = corpus_ids(130);
  const IdStream stream(ids, "corpus");
  RuntimeModel<double> m = m0;
  ChunkAdapter<double> a(m, TttOptions{.steps = 4, .optim = train::OptimConfig::adamw(3e-3, 0.0)}, 32, 2);
  std::vector<double> losses;
  a.adapt(stream, 1, 130, 0, [&](const TttEvent& e) { losses.push_back(e.loss); });
  REQUIRE(losses.size() == 4);
  CHECK(losses[3] < losses[0]);
  CHECK(a.steps_done() == 4);
  // The mean loss reported for step 0 is the unadapted model's over those targets, in
  // sequences of 32 targets from the chunk's start (the last one a single target).
  Tape<double> t(false);
  double nats = 0;
  for (Index a = 0; a < 129; a += 32) {
    const Index len = std::min<Index>(32, 129 - a);
    const std::vector<int> tok(ids.begin() + a, ids.begin() + a + len), tgt(ids.begin() + a + 1, ids.begin() + a + len + 1);
    t.rewind();
    nats += m0.score(t, tok, tgt, 1, len).nats;
  }
  CHECK(losses[0] == doctest::Approx(nats / 129).epsilon(1e-10));

  RuntimeModel<float> stored(TinyMamba::desc(), 1);
  stored.set_weight_storage(DType::BF16);
  check_error([&] { ChunkAdapter<float>(stored, TttOptions{}, 16, 1); }, {"needs the float weights", "set_weight_storage"});
  check_error([] { TttOptions{.chunk = 0}.validate(); }, {"chunk must hold at least 1 token"});
}

// LoRA test-time training: the adapters adapt, score-first; the weights are never written, so
// an artifact's dequantised base stays exactly the artifact's.
TEST_CASE("ttt: with LoRA the adapters adapt score-first and the weights stay bit for bit") {
  const RuntimeModel<double> m0(TinyTransformer::desc(), 19);
  const std::vector<int> ids = corpus_ids(170);
  const IdStream stream(ids, "corpus");
  const TokenBytes tb = byte_table(m0.vocab());
  const SlidingOptions o{.window = 16, .stride = 8, .batch = 2};
  TttOptions t = strong_ttt(2);
  t.lora = train::LoraConfig{.rank = 4, .alpha = 8, .targets = {"all"}};

  RuntimeModel<double> m = m0;
  std::vector<TttEvent> log;
  const EvalResult r = evaluate_ttt(m, stream, tb, o, t, [&](const TttEvent& e) { log.push_back(e); });
  for (Index i = 0; i < m.param_table().total(); ++i) REQUIRE(m.param_values()[i] == m0.param_values()[i]);
  const WindowPlan plan(Index(ids.size()), o.window, o.stride);
  const std::vector<Chunk> chunks = plan_chunks(plan, t.chunk);
  REQUIRE(chunks.size() >= 4);
  CHECK(r.adapt_steps == Index(t.steps) * (r.chunks - 1));
  const auto scored = [&](std::size_t c) { return scored_totals(log, c); };
  const auto windows = [&](const Chunk& ch) { return chunk_windows(plan, ch); };
  // B starts at zero: chunk 0 scores as the base model; later chunks see the adapters.
  WindowScorer<double> base(m0, stream, tb, o.window, o.batch, ScorePath::Auto);
  CHECK(base.score(windows(chunks[0])).nats == doctest::Approx(scored(0).nats).epsilon(1e-12));
  CHECK(std::abs(base.score(windows(chunks[1])).nats - scored(1).nats) > 1e-4 * scored(1).nats);

  // Replay: adapters trained on chunks < c score chunk c as the loop reported; trained on
  // chunk c as well they score it otherwise (adapt-first would show), and lower.
  RuntimeModel<double> replay = m0;
  ChunkAdapter<double> adapter(replay, t, o.window, o.batch);
  REQUIRE(adapter.lora());
  CHECK(adapter.lora()->count() > 0);
  CHECK(r.adapter_params == adapter.lora()->count());
  WindowScorer<double> scorer(replay, stream, tb, o.window, o.batch, ScorePath::Auto);
  scorer.set_linear_adapter(adapter.scoring_hook());
  int lower = 0;
  for (std::size_t c = 0; c + 1 < chunks.size(); ++c) {
    CAPTURE(c);
    const Totals before = scorer.score(windows(chunks[c]));
    CHECK(before.nats == doctest::Approx(scored(c).nats).epsilon(1e-12));
    adapter.adapt(stream, chunks[c].first, chunks[c].end, Index(c));
    const Totals after = scorer.score(windows(chunks[c]));
    CHECK(std::abs(after.nats - before.nats) > 1e-4 * before.nats);
    lower += after.nats < before.nats;
  }
  CHECK(lower == int(chunks.size()) - 1);
  for (Index i = 0; i < replay.param_table().total(); ++i) REQUIRE(replay.param_values()[i] == m0.param_values()[i]);

  // Stored weights are refused as for the weights themselves; a target that matches nothing
  // is named.
  RuntimeModel<float> stored(TinyMamba::desc(), 1);
  stored.set_weight_storage(DType::BF16);
  check_error([&] { ChunkAdapter<float>(stored, t, 16, 1); }, {"needs the float weights", "set_weight_storage"});
  RuntimeModel<double> mamba(TinyMamba::desc(), 2);
  TttOptions bad = t;
  bad.lora->targets = {"attn"};
  check_error([&] { ChunkAdapter<double>(mamba, bad, 16, 1); }, {"target 'attn' matches no projection"});
}

}  // namespace hybrid_test_eval
