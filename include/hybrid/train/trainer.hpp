// The training loop: micro-batch accumulation on the tape, clipping + Muon/AdamW through
// Optimizer, a schedule, optional weight EMA, z-loss, evaluation (loss, bits per byte,
// accuracy on synthetic tasks), non-finite handling and checkpoints that resume bit for bit.
#pragma once
#include <chrono>
#include <cmath>
#include <cstdint>
#include <memory>
#include <string>

#include "../autograd/tape.hpp"
#include "../runtime_model.hpp"
#include "../data/source.hpp"
#include "optim.hpp"

namespace hybrid::train {

struct TrainConfig {
  Index batch = 8;       // sequences per micro-batch
  Index seq_len = 128;   // tokens per sequence
  Index grad_accum = 1;  // micro-batches per optimiser step
  std::int64_t steps = 100;
  OptimConfig optim{};
  Schedule schedule{};
  double z_loss = 0;     // coefficient of mean(logsumexp^2)
  double ema_decay = 0;  // 0: no weight EMA; evaluation uses the EMA weights when on
  Index eval_batches = 8;
  bool skip_nonfinite = false;  // skip a step whose loss or gradient is not finite (else stop)
  bool recompute = false;       // gradient checkpointing per block
  double drop_path = 0;         // stochastic depth rate of every residual branch
  std::uint64_t seed = 0;       // drop-path masks are drawn from (seed, step, micro-batch)
};

struct StepResult {
  std::int64_t step = 0;  // optimiser steps done after this one
  double loss = 0;        // mean over the micro-batches (nats per scored token)
  double grad_norm = 0;   // before clipping
  double lr_factor = 0;
  bool skipped = false;   // non-finite, and skip_nonfinite was set
  Index tokens = 0;       // tokens processed by this step
  double seconds = 0;
};

struct EvalResult {
  double loss = 0;           // nats per scored token
  double bits_per_byte = 0;  // loss / ln 2 / bytes per token
  double accuracy = 0;       // argmax == target over scored positions
  Index tokens = 0;
};

template <class S>
class Trainer {
 public:
  Trainer(RuntimeModel<S>& model, data::Source& data, const TrainConfig& cfg)
      : model_(model), data_(data), cfg_(cfg), grads_(model), tape_(true, &grads_),
        opt_(grads_, cfg.optim) {
    HYBRID_CHECK(cfg.batch > 0 && cfg.seq_len > 0 && cfg.grad_accum > 0,
                 "train: batch, seq_len and grad_accum must be positive");
    HYBRID_CHECK(data.vocab_needed() <= model.vocab(), "train: the data needs a vocabulary of ",
                 data.vocab_needed(), " ids but the model has ", model.vocab());
    if (cfg.ema_decay > 0) ema_ = std::make_unique<Ema<S>>(model, cfg.ema_decay);
  }

  // One optimiser step over grad_accum micro-batches. Throws hybrid::Error on a non-finite
  // loss or gradient unless skip_nonfinite (then the step is skipped, weights untouched).
  StepResult step() {
    const auto t0 = std::chrono::steady_clock::now();
    StepResult r;
    usage_ = {};
    grads_.zero();
    double loss_sum = 0;
    for (Index m = 0; m < cfg_.grad_accum; ++m) {
      const data::Batch b = data_.train_batch(cfg_.batch, cfg_.seq_len);
      const TrainingOptions o{cfg_.recompute, cfg_.drop_path,
                              derive_seed(cfg_.seed, std::to_string(opt_.steps()) + "/" + std::to_string(m))};
      tape_.rewind();
      const Var<S> loss = model_.loss(tape_, b.tokens, b.targets, b.B, b.T, cfg_.z_loss, o);
      loss_sum += double(loss.v[0]);
      tape_.backward(loss, S(1) / S(cfg_.grad_accum));  // each micro-batch: 1/n of the mean
      r.tokens += b.B * b.T;
      if (tape_.usage().total() > usage_.total()) usage_ = tape_.usage();
    }
    tape_.rewind();
    r.loss = loss_sum / double(cfg_.grad_accum);
    r.lr_factor = cfg_.schedule.factor(opt_.steps());
    const bool finite_loss = std::isfinite(r.loss);
    if (finite_loss) {
      const auto info = opt_.step(r.lr_factor);
      r.grad_norm = info.grad_norm;
    } else {
      r.grad_norm = std::numeric_limits<double>::quiet_NaN();
    }
    if (!finite_loss || !std::isfinite(r.grad_norm)) {
      HYBRID_CHECK(cfg_.skip_nonfinite, "train: non-finite ", finite_loss ? "gradient norm" : "loss",
                   " at step ", opt_.steps() + 1, " (loss ", r.loss, ", gradient norm ", r.grad_norm,
                   "); stopping with the weights of the last good step (use --skip-nonfinite to skip such steps)");
      r.skipped = true;
      opt_.set_steps(opt_.steps() + 1);  // the schedule advances past a skipped step
    } else if (ema_) {
      ema_->update(model_);
    }
    r.step = opt_.steps();
    r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    return r;
  }

  // Mean loss, bits per byte and accuracy over the source's validation batches (with the
  // EMA weights when an EMA is kept).
  EvalResult evaluate() {
    if (ema_) ema_->swap(model_);
    EvalResult e;
    double nats = 0, correct = 0;
    Index scored = 0;
    Tape<S> t(false);
    for (const data::Batch& b : data_.val_batches(cfg_.batch, cfg_.seq_len, cfg_.eval_batches)) {
      Index n = 0;
      for (int tgt : b.targets) n += tgt != -1;
      if (n == 0) continue;
      t.rewind();  // the head and the loss by chunks of rows: no (B*T, V) logits
      const auto s = model_.score(t, b.tokens, b.targets, b.B, b.T);
      nats += s.nats;
      correct += double(s.correct);
      scored += s.scored;
      e.tokens += b.B * b.T;
    }
    if (ema_) ema_->swap(model_);
    HYBRID_CHECK(scored > 0, "evaluate: the validation data has no scored positions");
    e.loss = nats / double(scored);
    e.accuracy = correct / double(scored);
    e.bits_per_byte = data::bits_per_byte(e.loss, data_.bytes_per_token());
    return e;
  }

  RuntimeModel<S>& model() { return model_; }
  Optimizer<S>& optimizer() { return opt_; }
  Ema<S>* ema() { return ema_.get(); }
  GradStore<S>& grads() { return grads_; }
  data::Source& data() { return data_; }
  const TrainConfig& config() const { return cfg_; }
  // Bytes reserved by the tape's arenas: the step's, and with recompute the arena of the
  // block being recomputed.
  std::size_t arena_bytes() const {
    const Tape<S>* rt = tape_.recompute_tape_if_made();
    return tape_.arena().capacity() + (rt ? rt->arena().capacity() : 0);
  }
  // The most the arenas have held at once so far (the step's high-water plus, with
  // recompute, the recomputed block's, which it reaches while the step's is still held).
  std::size_t arena_high_water() const {
    const Tape<S>* rt = tape_.recompute_tape_if_made();
    return tape_.arena().high_water() + (rt ? rt->arena().high_water() : 0);
  }
  // The arena's use in the last step (its largest micro-batch), by kind; with recompute,
  // the step's tape only (the recomputed blocks are recompute_usage()).
  const typename Tape<S>::Usage& arena_usage() const { return usage_; }
  // With recompute: the largest use of one recomputed block's tape so far, by kind.
  typename Tape<S>::Usage recompute_usage() const {
    const Tape<S>* rt = tape_.recompute_tape_if_made();
    return rt ? rt->peak_usage() : typename Tape<S>::Usage{};
  }

 private:
  RuntimeModel<S>& model_;
  data::Source& data_;
  TrainConfig cfg_;
  GradStore<S> grads_;
  Tape<S> tape_;
  typename Tape<S>::Usage usage_;
  Optimizer<S> opt_;
  std::unique_ptr<Ema<S>> ema_;
};

}  // namespace hybrid::train
