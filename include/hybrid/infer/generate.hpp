// Text generation: one prefill of every prompt, then step() with one token per sequence
// still running; finished sequences leave the batch. Stop tokens, a token budget, a
// streaming callback, timing (steady_clock) and optionally the logits of every position.
// generate() of one prompt is generate_batch() of a batch of one.
//
//   ByteTokenizer tok;
//   auto r = generate(model, tok, tok.encode("ROMEO:"), {.max_new_tokens = 32},
//                     [&](int id) { std::cout << tok.decode_token(id) << std::flush; });
#pragma once
#include <chrono>
#include <cstdint>
#include <numeric>
#include <optional>
#include <set>
#include <type_traits>
#include <vector>

#include "../runtime_model.hpp"
#include "sampling.hpp"
#include "tokenizer.hpp"

namespace hybrid {

struct GenerateOptions {
  int max_new_tokens = 64;
  SamplingParams sampling{};  // every sequence gets its own Sampler seeded with sampling.seed
  std::optional<std::set<int>> stop_tokens{};  // nullopt: the tokenizer's EOS; {}: none
  bool return_logits = false;                // fill GenerationResult::logits
  bool restrict_to_tokenizer = true;         // sample only ids the tokenizer can decode
  Index prefill_chunk = PrefillOptions{}.chunk;  // prompt tokens per forward pass (0 = all)
  DType kv_dtype = DType::F32;                   // KV cache storage: F32 or BF16
};

enum class StopReason { MaxTokens, StopToken, Callback };

inline const char* to_string(StopReason r) {
  switch (r) {
    case StopReason::MaxTokens: return "max_new_tokens";
    case StopReason::StopToken: return "stop token";
    case StopReason::Callback: return "callback";
  }
  return "?";
}

// For a batch the figures are the batch's: all prompts' tokens over one prefill, every
// step() row over the decode loop (which includes sampling).
struct GenerationTiming {
  Index prefill_tokens = 0;
  double prefill_seconds = 0;
  Index decode_tokens = 0;  // rows evaluated by step()
  double decode_seconds = 0;

  double prefill_tokens_per_s() const {
    return prefill_seconds > 0 ? double(prefill_tokens) / prefill_seconds : 0.0;
  }
  double decode_tokens_per_s() const {
    return decode_seconds > 0 ? double(decode_tokens) / decode_seconds : 0.0;
  }
};

struct GenerationResult {
  std::vector<int> tokens;  // new ids; a stop token that ended generation is the last one
  StopReason stop = StopReason::MaxTokens;
  // With return_logits: (prompt + tokens, V); row t is the model's output at position t
  // (prompt rows from prefill, then one row per step). Empty otherwise.
  Mat<float> logits;
  GenerationTiming timing;
};

namespace detail {
// Callbacks may return void or something convertible to bool (false stops the sequence).
template <class F, class... A>
bool notify(F& f, A... a) {
  if constexpr (std::is_null_pointer_v<std::remove_cvref_t<F>>) return true;
  else if constexpr (std::is_void_v<std::invoke_result_t<F&, A...>>) return f(a...), true;
  else return bool(f(a...));
}

inline void check_generate_inputs(const ModelSpec& m, const std::vector<std::vector<int>>& prompts,
                                  const GenerateOptions& opt, const std::set<int>& stop) {
  opt.sampling.validate();
  HYBRID_CHECK(!prompts.empty(), "generate: no prompts given");
  HYBRID_CHECK(opt.max_new_tokens >= 0, "generate: max_new_tokens must be >= 0, got ",
               opt.max_new_tokens);
  for (std::size_t b = 0; b < prompts.size(); ++b) {
    const auto& p = prompts[b];
    HYBRID_CHECK(!p.empty(), "generate: prompt ", b, " is empty; every prompt needs at least ",
                 "one token (e.g. the tokenizer's BOS)");
    for (std::size_t t = 0; t < p.size(); ++t)
      HYBRID_CHECK(p[t] >= 0 && p[t] < m.vocab, "generate: token id ", p[t], " at position ", t,
                   " of prompt ", b, " is outside the model's vocabulary [0, ", m.vocab, ")");
    HYBRID_CHECK(m.max_context == 0 || Index(p.size()) + opt.max_new_tokens <= m.max_context,
                 "generate: prompt ", b, " (", p.size(), " tokens) + max_new_tokens (",
                 opt.max_new_tokens, ") = ", Index(p.size()) + opt.max_new_tokens,
                 " tokens exceeds the model's max_context of ", m.max_context);
  }
  for (int id : stop)
    HYBRID_CHECK(id >= 0 && id < m.vocab, "generate: stop token id ", id,
                 " is outside the model's vocabulary [0, ", m.vocab, ")");
}
}  // namespace detail

// on_token(std::size_t seq, int id) is called for each new id as it is sampled (the stop
// token included); returning false ends that sequence. Results are in prompt order, and
// each equals what generate() of that prompt alone gives.
template <class S, class OnToken = std::nullptr_t>
std::vector<GenerationResult> generate_batch(const RuntimeModel<S>& model, const Tokenizer& tok,
                                             const std::vector<std::vector<int>>& prompts,
                                             const GenerateOptions& opt = {},
                                             OnToken&& on_token = nullptr) {
  using clock = std::chrono::steady_clock;
  const auto seconds = [](clock::time_point a, clock::time_point b) {
    return std::chrono::duration<double>(b - a).count();
  };
  std::set<int> stop;
  if (opt.stop_tokens) stop = *opt.stop_tokens;
  else if (tok.eos()) stop.insert(*tok.eos());
  detail::check_generate_inputs(model.spec(), prompts, opt, stop);

  const std::size_t B = prompts.size();
  const Index V = model.vocab();
  const Sampler proto(opt.sampling, opt.restrict_to_tokenizer
                                        ? decodable_mask(tok, int(V))
                                        : std::vector<std::uint8_t>{});
  std::vector<Sampler> samplers(B, proto);
  std::vector<std::vector<int>> ctx(prompts);  // whole sequences, for the repetition penalty
  std::vector<GenerationResult> res(B);
  GenerationTiming timing;

  std::vector<SequenceState<S>> states;
  Tape<S> work(false);  // one tape for prefill and every step, so its memory is reused
  const auto t0 = clock::now();
  // KV caches sized for the whole generation up front: the decode loop allocates nothing.
  std::vector<Mat<S>> pre = model.prefill(prompts, states,
                                          {.all_logits = opt.return_logits,
                                           .chunk = opt.prefill_chunk,
                                           .reserve_new_tokens = opt.max_new_tokens,
                                           .kv_dtype = opt.kv_dtype},
                                          &work);
  const auto t1 = clock::now();
  timing.prefill_seconds = seconds(t0, t1);
  for (const auto& p : prompts) timing.prefill_tokens += Index(p.size());

  std::vector<Index> nrows(B, 0);  // logits rows written per sequence
  if (opt.return_logits)
    for (std::size_t b = 0; b < B; ++b) {
      nrows[b] = Index(prompts[b].size());
      res[b].logits.resize(nrows[b] + opt.max_new_tokens, V);
      res[b].logits.topRows(nrows[b]) = pre[b].template cast<float>();
    }

  // Slot i of the running batch is sequence slot[i]; its logits row is cur.row(i) and its
  // state states[i].
  std::vector<std::size_t> slot(B);
  std::iota(slot.begin(), slot.end(), std::size_t(0));
  Mat<S> cur(Index(B), V);  // (B, V)
  for (std::size_t b = 0; b < B; ++b) cur.row(Index(b)) = pre[b].bottomRows(1);
  pre.clear();
  std::vector<std::uint8_t> done(B, opt.max_new_tokens == 0);
  if (opt.max_new_tokens == 0) slot.clear();

  std::vector<int> feed;
  while (!slot.empty()) {
    feed.clear();
    std::size_t w = 0;  // compacts slot/states to the sequences fed next
    for (std::size_t i = 0; i < slot.size(); ++i) {
      const std::size_t b = slot[i];
      if (done[b]) continue;  // it was fed only for its last logits row
      int id = 0;
      try {
        id = samplers[b].sample(cur.row(Index(i)), ctx[b]);
      } catch (const Error& e) {
        fail("generate: sequence ", b, ", position ", ctx[b].size() - 1, ": ", e.what());
      }
      ctx[b].push_back(id);
      res[b].tokens.push_back(id);
      const bool go_on = detail::notify(on_token, b, id);
      if (stop.count(id)) res[b].stop = StopReason::StopToken, done[b] = 1;
      else if (!go_on) res[b].stop = StopReason::Callback, done[b] = 1;
      else if (int(res[b].tokens.size()) == opt.max_new_tokens)
        res[b].stop = StopReason::MaxTokens, done[b] = 1;
      if (!done[b] || opt.return_logits) {
        feed.push_back(id);
        if (w != i) states[w] = std::move(states[i]);
        slot[w++] = b;
      }
    }
    slot.resize(w);
    states.resize(w);
    if (slot.empty()) break;
    cur = model.step(feed, states, &work);  // (w, V)
    timing.decode_tokens += Index(w);
    if (opt.return_logits)
      for (std::size_t i = 0; i < w; ++i)
        res[slot[i]].logits.row(nrows[slot[i]]++) = cur.row(Index(i)).template cast<float>();
  }
  timing.decode_seconds = seconds(t1, clock::now());

  for (std::size_t b = 0; b < B; ++b) {
    if (opt.return_logits) res[b].logits.conservativeResize(nrows[b], V);
    res[b].timing = timing;
  }
  return res;
}

// One prompt. on_token(int id) as in generate_batch.
template <class S, class OnToken = std::nullptr_t>
GenerationResult generate(const RuntimeModel<S>& model, const Tokenizer& tok,
                          const std::vector<int>& prompt, const GenerateOptions& opt = {},
                          OnToken&& on_token = nullptr) {
  auto r = generate_batch(model, tok, std::vector<std::vector<int>>{prompt}, opt,
                          [&](std::size_t, int id) { return detail::notify(on_token, id); });
  return std::move(r[0]);
}

}  // namespace hybrid
