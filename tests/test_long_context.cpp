// Long-context inference memory, asserted on the arena's byte counts (never on time):
//   - a chunked prefill takes the same activation memory for a prompt of 256 tokens and
//     one of 4,096: only the attention scores of a chunk grow, with the keys it sees;
//   - an inference forward holds one block's activations at a time, so its memory does not
//     grow with the number of blocks.
#include <doctest/doctest.h>

#include <hybrid/model.hpp>

#include "test_util.hpp"

using namespace hybrid;

// This file's own namespace: the tests compile in batches (tests/CMakeLists.txt).
namespace hybrid_test_long_context {

namespace {
using test_util::random_tokens;

// The most bytes the tape's arena held at once during one prefill of T tokens.
template <class M>
std::size_t prefill_high_water(const M& m, Index T, Index chunk) {
  Tape<double> ctx(false);
  std::vector<SequenceState<double>> st;
  m.prefill({random_tokens(T, m.vocab(), 3)}, st, {.chunk = chunk}, &ctx);
  CHECK(st[0].pos == T);
  return ctx.arena().high_water();
}

RuntimeModel<double> mamba_stack(int n_blocks) {
  ModelDesc d{tiny::model, {}};
  for (int i = 0; i < n_blocks; ++i) d.blocks.push_back(tiny::M::desc());
  return RuntimeModel<double>(d, 1);
}
}  // namespace

TEST_CASE("chunked prefill: activation memory does not grow with the prompt") {
  const TinyGolf15x3 m(1);
  const Index chunk = 64, short_T = 256, long_T = 4096;
  const std::size_t a = prefill_high_water(m, short_T, chunk);
  const std::size_t b = prefill_high_water(m, long_T, chunk);
  // The score block of the cached attention: threads x min(chunk, 64) rows x cache rows.
  const std::size_t scores = sizeof(double) * std::size_t(par::threads()) * 64 * (long_T - short_T);
  CAPTURE(a);
  CAPTURE(b);
  CHECK(b <= a + scores + 4096);
  // The same prompt in one pass holds the activations of all 4,096 positions.
  const std::size_t whole = prefill_high_water(m, long_T, 0);
  CAPTURE(whole);
  CHECK(whole > 4 * b);
  // A Mamba-only stack has no cache to attend to: the same bytes at any prompt length.
  const RuntimeModel<double> mamba = mamba_stack(4);
  CHECK(prefill_high_water(mamba, long_T, chunk) == prefill_high_water(mamba, short_T, chunk));
}

TEST_CASE("inference forward: one block's activations at a time") {
  const Index T = 512;
  const std::size_t two = prefill_high_water(mamba_stack(2), T, 0);
  const std::size_t eight = prefill_high_water(mamba_stack(8), T, 0);
  CAPTURE(two);
  CAPTURE(eight);
  CHECK(eight == two);
  // And the region's accounting: usage() of a forward bounds what the arena held, loosely
  // by at most the head's tensors (usage adds the largest block and the head: the final
  // norm's output and the logits, which never coexist with a block).
  const RuntimeModel<double> m = mamba_stack(8);
  Tape<double> t(false);
  const auto toks = random_tokens(T, m.vocab(), 4);
  const Var<double> l = m.logits(t, toks, 1, T);
  CHECK(l.rows == T);
  CHECK(t.usage().total() >= t.arena().high_water());
  const std::size_t head = sizeof(double) * std::size_t(T) * std::size_t(m.vocab() + 32);
  CHECK(t.usage().total() < t.arena().high_water() + head + 64 * 1024);
}

TEST_CASE("prefill options are checked") {
  const TinyMamba m(1);
  std::vector<SequenceState<double>> st;
  CHECK_THROWS_WITH_AS(m.prefill({{1, 2}}, st, {.chunk = -1}),
                       doctest::Contains("chunk must be >= 0"), Error);
  CHECK_THROWS_WITH_AS(m.prefill({{1, 2}}, st, {.reserve_new_tokens = -2}),
                       doctest::Contains("reserve_new_tokens must be >= 0"), Error);
  ModelDesc d = TinyTransformer::desc();
  d.model.max_context = 8;
  const RuntimeModel<double> small(d, 1);
  CHECK_THROWS_WITH_AS(small.prefill({std::vector<int>(6, 1)}, st, {.reserve_new_tokens = 3}),
                       doctest::Contains("exceeds the model's maximum context of 8"), Error);
}

}  // namespace hybrid_test_long_context
