// Sliding-window evaluation: loss and bits per byte of a model on a token stream, every
// target scored exactly once, each with as much left context as a window of L inputs
// allows, one window (or one batch of windows) in memory at a time.
//
//   const WindowPlan plan(stream.size(), /*window=*/1024, /*stride=*/64);
//   EvalResult r = evaluate_sliding(model, stream, token_bytes(tok, model.vocab()),
//                                   SlidingOptions{.window = 1024, .stride = 64});
//   r.totals.bits_per_byte();
//
// The rule. A stream x_0 .. x_{n-1} has the targets x_1 .. x_{n-1}; x_p is predicted from
// x_0 .. x_{p-1}. Every window has L inputs and scores the targets [first, end) at its last
// end - first positions:
//   window 0      inputs x_0 .. x_{L-1}, scores all L targets [1, L + 1)
//   window k ≥ 1  ends at v_k = min(L + 1 + k S, n): inputs x_{v_k - 1 - L} .. x_{v_k - 2},
//                 scores [v_{k-1}, v_k), its last S positions (fewer in a ragged last window,
//                 which is still L long: it ends at the stream's end)
// so windows overlap by L - S inputs and every target after the first window sees at least
// L - S earlier tokens. S = L is plain chunked scoring (windows of L + 1 ids, stride L);
// smaller S costs L / S forward passes per L targets and lowers the loss of context-hungry
// models. A stream needs at least L + 1 ids.
//
// Scoring. A model with float weights goes through RuntimeModel::score (the head and the
// loss fused by chunks of rows: never a window's (L, V) logits); one with stored weights
// (bf16 / f16 / int8, set_weight_storage) through forward() on chunks of rows of one window
// continuing from a decode state, so at most a chunk's logits (≈ 2^19 values) are held. Sums
// are double.
#pragma once
#include <algorithm>
#include <chrono>
#include <cmath>
#include <functional>
#include <span>
#include <utility>
#include <vector>

#include "../core/error.hpp"
#include "../ops/head_loss.hpp"
#include "../runtime_model.hpp"
#include "bpb.hpp"
#include "stream.hpp"

namespace hybrid::eval {

// How a window's targets are scored: Fused (RuntimeModel::score; float weights only), Logits
// (forward() by chunks of rows, any weights), or Auto (Fused unless the model holds stored
// weights).
enum class ScorePath { Auto, Fused, Logits };

struct SlidingOptions {
  Index window = 1024;   // L: inputs per window
  Index stride = 0;      // S: targets each window after the first adds; 0 = L (no overlap)
  Index max_tokens = 0;  // score at most this many targets (the stream's first max_tokens + 1
                         // ids); 0 = every target of the stream
  Index batch = 1;       // windows per forward pass (all are L long)
  ScorePath path = ScorePath::Auto;

  Index resolved_stride() const { return stride > 0 ? stride : window; }
  void validate() const {
    HYBRID_CHECK(window >= 1, "sliding window: the window must hold at least 1 token, got ", window);
    HYBRID_CHECK(stride >= 0, "sliding window: the stride must be >= 1 (or 0 = the window), got ", stride);
    HYBRID_CHECK(resolved_stride() <= window, "sliding window: the stride (", resolved_stride(),
                 ") must not exceed the window (", window, "), or targets between windows would "
                 "never be scored");
    HYBRID_CHECK(max_tokens >= 0, "sliding window: max_tokens must be >= 0 (0 = all), got ", max_tokens);
    HYBRID_CHECK(batch >= 1, "sliding window: batch must be >= 1 window, got ", batch);
  }
};

// One window: inputs [start, start + len) of the stream; it scores targets [first, end),
// its last end - first positions (end = start + len + 1).
struct Window {
  Index start = 0, len = 0, first = 0, end = 0;
  Index scored() const { return end - first; }
};

// The windows of a stream of n ids, computed on demand (a long stream at a small stride has
// many windows). See the rule at the top of this file.
class WindowPlan {
 public:
  WindowPlan(Index n_tokens, Index window, Index stride) : n_(n_tokens), L_(window), S_(stride > 0 ? stride : window) {
    HYBRID_CHECK(L_ >= 1 && S_ >= 1 && S_ <= L_, "WindowPlan: window ", L_, " and stride ", S_,
                 "; expected 1 <= stride <= window");
    HYBRID_CHECK(n_ >= L_ + 1, "sliding window: the stream has ", n_, " tokens, but a window of ", L_,
                 " inputs needs at least ", L_ + 1, " (its inputs and one more target); use a smaller "
                 "window or more data");
    windows_ = 1 + (n_ - 1 - L_ + S_ - 1) / S_;
  }

  Index size() const { return windows_; }
  Index targets() const { return n_ - 1; }
  Index window() const { return L_; }
  Index stride() const { return S_; }

  Window operator[](Index k) const {
    HYBRID_CHECK(k >= 0 && k < windows_, "WindowPlan: window ", k, " outside [0, ", windows_, ")");
    Window w;
    w.end = end_of(k);
    w.first = k == 0 ? 1 : end_of(k - 1);
    w.len = L_;
    w.start = w.end - 1 - L_;
    return w;
  }

 private:
  Index end_of(Index k) const { return std::min(L_ + 1 + k * S_, n_); }

  Index n_, L_, S_;
  Index windows_ = 0;
};

// What an evaluation reports. chunks / adapt_steps stay 0 without test-time training.
struct EvalResult {
  Totals totals;
  Index windows = 0;
  Index chunks = 0, adapt_steps = 0;
  Index adapter_params = 0;               // test-time training on LoRA adapters: their parameters
  double seconds = 0, adapt_seconds = 0;  // wall time in all, and of it adapting
};

// Called after each batch of windows (and, with test-time training, each chunk).
struct Progress {
  Index windows_done = 0, windows = 0;
  Totals totals;          // so far
  double seconds = 0;     // since the evaluation began
  Index chunk = -1, chunks = 0;  // test-time training: the chunk being scored, of how many
};
using ProgressFn = std::function<void(const Progress&)>;

// Scores windows of one length L of a stream against a byte table, holding one batch of
// windows' ids and a non-recording tape whose memory is kept between calls. The model is
// read at each call, so its weights may change between calls (test-time training).
template <class S>
class WindowScorer {
 public:
  WindowScorer(const RuntimeModel<S>& model, const TokenStream& stream, const TokenBytes& bytes,
               Index window, Index batch, ScorePath path)
      : model_(model), stream_(stream), bytes_(bytes), L_(window), B_(batch), path_(path) {
    HYBRID_CHECK(L_ >= 1 && B_ >= 1, "WindowScorer: window ", L_, " and batch ", B_, " must be >= 1");
    HYBRID_CHECK(bytes.vocab() >= model.vocab(), "eval: the byte table covers ", bytes.vocab(),
                 " ids, the model's vocabulary has ", model.vocab(), "; build it with token_bytes(tok, ",
                 model.vocab(), ")");
    const Index ctx = model.spec().max_context;
    HYBRID_CHECK(ctx == 0 || L_ <= ctx, "eval: a window of ", L_, " tokens exceeds the model's "
                 "maximum context of ", ctx, "; use a window of at most ", ctx);
    if (path_ == ScorePath::Auto) path_ = model.weight_store() ? ScorePath::Logits : ScorePath::Fused;
    HYBRID_CHECK(path_ != ScorePath::Fused || !model.weight_store(), "eval: the fused scoring path "
                 "needs float weights, and the model holds stored ones (use ScorePath::Logits or "
                 "set_weight_storage(DType::F32))");
    ids_.resize(std::size_t(L_ + 1));
    tokens_.resize(std::size_t(B_ * L_));
    targets_.resize(std::size_t(B_ * L_));
  }

  ScorePath path() const { return path_; }

  // A branch added to every projection the scores run (Tape::set_linear_adapter), e.g. LoRA
  // adapters' evaluation hook; an empty function removes it.
  void set_linear_adapter(typename Tape<S>::LinearAdapter f) { tape_.set_linear_adapter(std::move(f)); }

  // Σ over the windows (each of length L) in batches of B.
  Totals score(std::span<const Window> windows) {
    Totals t;
    for (std::size_t w0 = 0; w0 < windows.size(); w0 += std::size_t(B_))
      t += score_batch(windows.subspan(w0, std::min(windows.size() - w0, std::size_t(B_))));
    return t;
  }

 private:
  // Reads window w's L + 1 ids into row b: tokens (L), targets (L, -1 before the scored
  // positions); returns the scored targets' bytes.
  double load(const Window& w, Index b) {
    HYBRID_CHECK(w.len == L_ && w.scored() >= 1 && w.scored() <= L_ && w.end == w.start + L_ + 1,
                 "WindowScorer: window [", w.start, ", ", w.start + w.len, ") scoring [", w.first, ", ",
                 w.end, ") is not a window of ", L_, " inputs scoring its last positions");
    stream_.read(w.start, L_ + 1, ids_.data());
    const int V = model_.vocab();
    for (Index i = 0; i <= L_; ++i)
      HYBRID_CHECK(ids_[std::size_t(i)] >= 0 && ids_[std::size_t(i)] < V, "eval: token id ",
                   ids_[std::size_t(i)], " at position ", w.start + i, " of ", stream_.describe(),
                   " is outside the model's vocabulary [0, ", V, ")");
    int* tok = tokens_.data() + b * L_;
    int* tgt = targets_.data() + b * L_;
    const Index skip = L_ - w.scored();
    double bytes = 0;
    for (Index i = 0; i < L_; ++i) {
      tok[i] = ids_[std::size_t(i)];
      tgt[i] = i < skip ? -1 : ids_[std::size_t(i + 1)];
      if (i >= skip) bytes += bytes_.count(ids_[std::size_t(i)], ids_[std::size_t(i + 1)]);
    }
    return bytes;
  }

  Totals score_batch(std::span<const Window> ws) {
    Totals t;
    const Index nb = Index(ws.size());
    if (path_ == ScorePath::Fused) {
      for (Index b = 0; b < nb; ++b) {
        t.bytes += load(ws[std::size_t(b)], b);
        t.tokens += ws[std::size_t(b)].scored();
      }
      tape_.rewind();
      const std::size_t n = std::size_t(nb * L_);
      const auto s = model_.score(tape_, std::span<const int>(tokens_.data(), n),
                                  std::span<const int>(targets_.data(), n), nb, L_);
      tape_.rewind();
      t.nats = s.nats;
      return t;
    }
    for (Index b = 0; b < nb; ++b) {  // one window at a time, by chunks of rows
      t.bytes += load(ws[std::size_t(b)], 0);
      t.tokens += ws[std::size_t(b)].scored();
      t.nats += logits_nats(ws[std::size_t(b)].scored());
    }
    return t;
  }

  // Σ cross-entropy of the last `scored` positions of the window in row 0, through forward()
  // on chunks of rows that continue from a decode state.
  double logits_nats(Index scored) {
    const Index rows = ops::head_loss_chunk(L_, model_.vocab());
    SequenceState<S> state = model_.new_state(L_);
    SequenceState<S>* st = &state;
    const Index skip = L_ - scored;
    double nats = 0;
    for (Index c0 = 0; c0 < L_; c0 += rows) {
      const Index n = std::min(rows, L_ - c0);
      const bool wanted = c0 + n > skip;  // a chunk before the scored rows only advances the state
      const Mat<S> lg = model_.forward(std::span<const int>(tokens_.data() + c0, std::size_t(n)), 1, n,
                                       &st, wanted, &tape_);  // (n, V), or (1, V) when not wanted
      if (!wanted) continue;
      for (Index r = std::max(c0, skip); r < c0 + n; ++r) {
        const auto row = lg.row(r - c0);
        const double mx = double(row.maxCoeff());
        double sum = 0;
        for (Index v = 0; v < row.size(); ++v) sum += std::exp(double(row(v)) - mx);
        nats += mx + std::log(sum) - double(row(targets_[std::size_t(r)]));
      }
    }
    return nats;
  }

  const RuntimeModel<S>& model_;
  const TokenStream& stream_;
  const TokenBytes& bytes_;
  Index L_, B_;
  ScorePath path_;
  Tape<S> tape_{false};
  std::vector<int> ids_, tokens_, targets_;  // (L + 1), (B, L), (B, L)
};

namespace detail {
inline double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}
// The ids an evaluation reads: the stream, or its first max_tokens + 1.
inline Index eval_length(const TokenStream& s, const SlidingOptions& o) {
  return o.max_tokens > 0 ? std::min(s.size(), o.max_tokens + 1) : s.size();
}
}  // namespace detail

// Loss and bits per byte of `model` on `stream` by the sliding-window rule above.
template <class S>
EvalResult evaluate_sliding(const RuntimeModel<S>& model, const TokenStream& stream, const TokenBytes& bytes,
                            const SlidingOptions& o, const ProgressFn& progress = {}) {
  o.validate();
  const auto t0 = std::chrono::steady_clock::now();
  const WindowPlan plan(detail::eval_length(stream, o), o.window, o.stride);
  WindowScorer<S> scorer(model, stream, bytes, o.window, o.batch, o.path);
  EvalResult r;
  std::vector<Window> batch;
  for (Index k = 0; k < plan.size(); k += o.batch) {
    batch.clear();
    for (Index j = k; j < std::min(plan.size(), k + o.batch); ++j) batch.push_back(plan[j]);
    r.totals += scorer.score(batch);
    r.windows += Index(batch.size());
    if (progress) progress(Progress{r.windows, plan.size(), r.totals, detail::seconds_since(t0)});
  }
  r.seconds = detail::seconds_since(t0);
  return r;
}

}  // namespace hybrid::eval
