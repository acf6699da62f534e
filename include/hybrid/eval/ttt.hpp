// Score-first test-time training: the evaluation stream in chunks; each chunk is scored with
// the current weights FIRST (the sliding-window rule of sliding.hpp), then the model takes
// `steps` optimiser steps on that already-scored chunk; the reported loss and bits per byte
// are the sums of those pre-adaptation scores. A chunk's score thus depends only on the
// chunks before it, never on itself.
//
//   TttOptions t{.chunk = 32768, .steps = 1, .optim = train::OptimConfig::adamw(1e-4, 0)};
//   EvalResult r = evaluate_ttt(model, stream, bytes, SlidingOptions{.window = 1024, .stride = 64},
//                               t, [](const TttEvent& e) { /* Scored, then Adapted, per chunk */ });
//
// Chunks are whole windows: window k belongs to chunk ⌊(first_k - 1) / C⌋, first_k the first
// target it scores, so every target is scored in the window the plain evaluation gives it,
// and with 0 steps the result is evaluate_sliding's. Adapting on a chunk of targets [a, b):
// sequences of up to `seq_len` targets from a, inputs x_{a-1} ..; each optimiser step is the
// gradient of the mean cross-entropy over the whole chunk (summed over its sequences, one
// batch on the tape at a time), then one Optimizer::step. The optimiser and its moments
// persist from chunk to chunk. The last chunk is scored but not adapted on: nothing after
// it would use the update. The model is changed in place (float weights only).
//
// With TttOptions::lora the weights stay frozen and rank-r LoRA adapters on the chosen
// projections (train/lora.hpp) are what adapts: they start at zero (B = 0), so the first
// chunk scores as the base model, and every later chunk is scored with the base plus the
// adapters trained on the chunks before it. The base is never written, so it can be the
// dequantised values of a quantised artifact, bit for bit, through the whole evaluation:
// score-first TTT on adapters over the quantised base, as parameter golf's entries run it.
#pragma once
#include <chrono>
#include <cmath>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "../autograd/tape.hpp"
#include "../core/error.hpp"
#include "../runtime_model.hpp"
#include "../train/lora.hpp"
#include "../train/optim.hpp"
#include "bpb.hpp"
#include "sliding.hpp"
#include "stream.hpp"

namespace hybrid::eval {

struct TttOptions {
  Index chunk = 32768;  // C: targets per chunk (rounded to whole windows, see above)
  int steps = 1;        // optimiser steps on each chunk after it is scored; 0 = plain evaluation
  Index seq_len = 0;    // targets per adaptation sequence; 0 = the evaluation window
  train::OptimConfig optim = train::OptimConfig::adamw(1e-4, 0.0);
  // Adapters to train instead of the weights (see the top of this file); none: the weights.
  std::optional<train::LoraConfig> lora{};

  void validate() const {
    HYBRID_CHECK(chunk >= 1, "test-time training: the chunk must hold at least 1 token, got ", chunk);
    HYBRID_CHECK(steps >= 0, "test-time training: steps must be >= 0 (0 = none), got ", steps);
    HYBRID_CHECK(seq_len >= 0, "test-time training: seq_len must be >= 0 (0 = the window), got ", seq_len);
    optim.validate();
    if (lora) lora->validate();
  }
};

// What the loop does, in order: for each chunk one Scored event, then (except for the last
// chunk) one Adapted event per step.
struct TttEvent {
  enum class Kind { Scored, Adapted };
  Kind kind = Kind::Scored;
  Index chunk = 0;
  Index first = 0, end = 0;  // the chunk's targets [first, end)
  Totals totals;             // Scored: the chunk's totals under the weights it was scored with
  int step = 0;              // Adapted: the step on this chunk, from 0
  double loss = 0;           // Adapted: the chunk's mean cross-entropy before this step's update
  double grad_norm = 0;      // Adapted: the global gradient norm before clipping
};
using TttEventFn = std::function<void(const TttEvent&)>;

// A chunk of the plan: windows [k0, k1), targets [first, end).
struct Chunk {
  Index k0 = 0, k1 = 0, first = 0, end = 0;
};

// The chunks of a window plan for chunk size C, in order.
inline std::vector<Chunk> plan_chunks(const WindowPlan& plan, Index C) {
  HYBRID_CHECK(C >= 1, "plan_chunks: the chunk must hold at least 1 token, got ", C);
  std::vector<Chunk> out;
  Index id = -1;
  for (Index k = 0; k < plan.size(); ++k) {
    const Window w = plan[k];
    const Index c = (w.first - 1) / C;
    if (out.empty() || c != id) {
      out.push_back(Chunk{k, k, w.first, w.first});
      id = c;
    }
    out.back().k1 = k + 1;
    out.back().end = w.end;
  }
  return out;
}

// Adapts a model on ranges of targets of a stream: `steps` optimiser steps per call, the
// gradient of the range's mean cross-entropy each. Holds the gradients, the recording tape
// and the optimiser (whose moments carry over between calls), and with o.lora the adapters
// (gradients and optimiser state of the adapters only; the model's weights are not written).
template <class S>
class ChunkAdapter {
 public:
  // batch: sequences of seq_len targets on the tape at once.
  ChunkAdapter(RuntimeModel<S>& model, const TttOptions& o, Index seq_len, Index batch)
      : model_(model), o_(o), T_(o.seq_len > 0 ? o.seq_len : seq_len), B_(batch),
        lora_(make_lora((check_model(model), model), o)),
        grads_(lora_ ? GradStore<S>(*lora_) : GradStore<S>(model)), tape_(true, lora_ ? nullptr : &grads_),
        opt_(grads_, o.optim) {
    o.validate();
    if (lora_) tape_.set_linear_adapter(lora_->hook(&grads_));
    HYBRID_CHECK(T_ >= 1 && B_ >= 1, "ChunkAdapter: seq_len ", T_, " and batch ", B_, " must be >= 1");
    const Index ctx = model.spec().max_context;
    HYBRID_CHECK(ctx == 0 || T_ <= ctx, "test-time training: sequences of ", T_, " tokens exceed the "
                 "model's maximum context of ", ctx);
  }
  // The optimiser, the tape and the hook point at this object's gradients: not copied or moved.
  ChunkAdapter(const ChunkAdapter&) = delete;
  ChunkAdapter& operator=(const ChunkAdapter&) = delete;

  const train::Optimizer<S>& optimizer() const { return opt_; }
  // The adapters being trained (nullptr without TttOptions::lora).
  const train::LoraAdapters<S>* lora() const { return lora_.get(); }
  // What a scorer's tape needs to compute with the adapters (WindowScorer::set_linear_adapter):
  // the adapters' evaluation hook, no dropout. Empty without adapters.
  typename Tape<S>::LinearAdapter scoring_hook() {
    return lora_ ? lora_->hook() : typename Tape<S>::LinearAdapter{};
  }

  // o.steps steps on targets [first, end) of the stream (first >= 1); each step reported
  // as an Adapted event of chunk `chunk`.
  void adapt(const TokenStream& stream, Index first, Index end, Index chunk, const TttEventFn& on_event = {}) {
    HYBRID_CHECK(first >= 1 && first < end && end <= stream.size(), "ChunkAdapter: targets [", first,
                 ", ", end, ") are not inside the stream's [1, ", stream.size(), ")");
    const Index n = end - first;
    ids_.resize(std::size_t(n + 1));
    stream.read(first - 1, n + 1, ids_.data());  // inputs x_{first-1} .., targets x_first ..
    const int V = model_.vocab();
    for (Index i = 0; i <= n; ++i)
      HYBRID_CHECK(ids_[std::size_t(i)] >= 0 && ids_[std::size_t(i)] < V, "test-time training: token id ",
                   ids_[std::size_t(i)], " at position ", first - 1 + i, " of ", stream.describe(),
                   " is outside the model's vocabulary [0, ", V, ")");
    for (int s = 0; s < o_.steps; ++s) {
      grads_.zero();
      double nats = 0;
      // Full sequences of T targets, B at a time; then the shorter rest alone.
      const Index full = n / T_;
      for (Index q = 0; q < full; q += B_) nats += run(q * T_, std::min(B_, full - q), T_, n);
      if (full * T_ < n) nats += run(full * T_, 1, n - full * T_, n);
      tape_.rewind();
      TttEvent e;
      e.kind = TttEvent::Kind::Adapted;
      e.chunk = chunk;
      e.first = first;
      e.end = end;
      e.step = s;
      e.loss = nats / double(n);
      HYBRID_CHECK(std::isfinite(e.loss), "test-time training: the loss of chunk ", chunk, " (targets [",
                   first, ", ", end, ")) is not finite at step ", s, "; lower the learning rate");
      const auto info = opt_.step(1.0);
      e.grad_norm = info.grad_norm;
      HYBRID_CHECK(!info.skipped, "test-time training: the gradient norm on chunk ", chunk, " (targets [",
                   first, ", ", end, ")) is not finite at step ", s, "; lower the learning rate");
      ++steps_;
      if (on_event) on_event(e);
    }
  }

  Index steps_done() const { return steps_; }

 private:
  static void check_model(const RuntimeModel<S>& m) {
    HYBRID_CHECK(!m.weight_store(), "test-time training needs the float weights, and the model holds "
                 "stored ones; call set_weight_storage(DType::F32) first");
  }
  static std::unique_ptr<train::LoraAdapters<S>> make_lora(RuntimeModel<S>& m, const TttOptions& o) {
    if (!o.lora) return nullptr;
    return std::make_unique<train::LoraAdapters<S>>(m, *o.lora);
  }

  // Forward and backward of nb sequences of len targets starting at offset a of the chunk,
  // seeded so that the gradients over the chunk sum to those of its mean loss (n targets).
  // Returns the sequences' summed cross-entropy.
  double run(Index a, Index nb, Index len, Index n) {
    tokens_.resize(std::size_t(nb * len));
    targets_.resize(std::size_t(nb * len));
    for (Index b = 0; b < nb; ++b)
      for (Index i = 0; i < len; ++i) {
        tokens_[std::size_t(b * len + i)] = ids_[std::size_t(a + b * len + i)];
        targets_[std::size_t(b * len + i)] = ids_[std::size_t(a + b * len + i + 1)];
      }
    tape_.rewind();
    // A new dropout mask for every forward (adapters with dropout only).
    if (lora_) lora_->set_dropout_seed(derive_seed(o_.lora->seed, "ttt dropout " + std::to_string(forwards_++)));
    const Var<S> loss = model_.loss(tape_, tokens_, targets_, nb, len);  // (1, 1) mean over nb * len
    const double count = double(nb * len);
    tape_.backward(loss, S(count / double(n)));
    return double(loss.v[0]) * count;
  }

  RuntimeModel<S>& model_;
  TttOptions o_;
  Index T_, B_;
  std::unique_ptr<train::LoraAdapters<S>> lora_;  // before grads_: they may be its gradients
  GradStore<S> grads_;
  Tape<S> tape_;
  train::Optimizer<S> opt_;
  std::vector<int> ids_, tokens_, targets_;  // (n + 1) the chunk's ids, (nb, len) a batch
  Index steps_ = 0;
  std::uint64_t forwards_ = 0;  // forwards run: the adapters' dropout seeds
};

// Score-first test-time training over the stream (see the top of this file). Changes the
// model's weights (with t.lora: trains adapters and leaves the weights untouched); returns
// the pre-adaptation totals.
template <class S>
EvalResult evaluate_ttt(RuntimeModel<S>& model, const TokenStream& stream, const TokenBytes& bytes,
                        const SlidingOptions& o, const TttOptions& t, const TttEventFn& on_event = {},
                        const ProgressFn& progress = {}) {
  o.validate();
  t.validate();
  const auto t0 = std::chrono::steady_clock::now();
  const WindowPlan plan(detail::eval_length(stream, o), o.window, o.stride);
  const std::vector<Chunk> chunks = plan_chunks(plan, t.chunk);
  WindowScorer<S> scorer(model, stream, bytes, o.window, o.batch, o.path);
  std::optional<ChunkAdapter<S>> adapter;
  if (t.steps > 0) {
    adapter.emplace(model, t, o.window, o.batch);
    if (adapter->lora()) scorer.set_linear_adapter(adapter->scoring_hook());
  }
  EvalResult r;
  r.chunks = Index(chunks.size());
  std::vector<Window> ws;
  for (std::size_t c = 0; c < chunks.size(); ++c) {
    const Chunk& ch = chunks[c];
    // 1. Score the chunk with the weights adapted on the chunks before it only.
    TttEvent e;
    e.kind = TttEvent::Kind::Scored;
    e.chunk = Index(c);
    e.first = ch.first;
    e.end = ch.end;
    for (Index k0 = ch.k0; k0 < ch.k1; k0 += o.batch) {
      ws.clear();
      for (Index k = k0; k < std::min(ch.k1, k0 + o.batch); ++k) ws.push_back(plan[k]);
      e.totals += scorer.score(ws);
      r.windows += Index(ws.size());
      if (progress) {
        Totals so_far = r.totals;
        so_far += e.totals;
        progress(Progress{r.windows, plan.size(), so_far, detail::seconds_since(t0), Index(c), r.chunks});
      }
    }
    r.totals += e.totals;
    if (on_event) on_event(e);
    // 2. Only then adapt on it (not on the last chunk: nothing is scored after it).
    if (adapter && c + 1 < chunks.size()) {
      const auto a0 = std::chrono::steady_clock::now();
      adapter->adapt(stream, ch.first, ch.end, Index(c), on_event);
      r.adapt_seconds += detail::seconds_since(a0);
    }
  }
  r.adapt_steps = adapter ? adapter->steps_done() : 0;
  r.adapter_params = adapter && adapter->lora() ? adapter->lora()->count() : 0;
  r.seconds = detail::seconds_since(t0);
  return r;
}

}  // namespace hybrid::eval
