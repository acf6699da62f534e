// The training loop: micro-batch accumulation on the tape, clipping + Muon/AdamW through
// Optimizer, a schedule, optional weight EMA, z-loss, quantisation-aware training (fake
// quantisation with a straight-through gradient), evaluation (loss, bits per byte, accuracy
// on synthetic tasks; of the quantised model too), non-finite handling and checkpoints that
// resume bit for bit.
#pragma once
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <memory>
#include <string>
#include <type_traits>
#include <vector>

#include "../autograd/tape.hpp"
#include "../core/dtype.hpp"
#include "../runtime_model.hpp"
#include "../data/source.hpp"
#include "../quant/policy.hpp"
#include "../quant/quantize.hpp"
#include "distill.hpp"
#include "lora.hpp"
#include "optim.hpp"

namespace hybrid::train {

// Quantisation-aware training. Steps taken once `start` optimiser steps are done run their
// forward and backward on fake-quantised weights (FakeQuant: what a quantised artifact made
// with `policy` holds); the gradient at those weights is applied to the float master weights
// (the straight-through estimator), which the optimiser, the EMA, checkpoints and save see.
// start < 0: off. Steps before `start` are bit for bit those of a run without QAT.
struct QatConfig {
  std::int64_t start = -1;
  quant::QuantPolicy policy{};  // bits, scale rule and group per tensor role (quant/policy.hpp)
};

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
  QatConfig qat{};              // quantisation-aware training; policy of evaluate_quantized
  KdConfig kd{};                // knowledge distillation (train/distill.hpp); off without a teacher
  // Packed documents: the id that starts each document (BOS); every batch's document starts
  // are the positions holding it (data::mark_documents), and no token attends, convolves or
  // scans across them. -1: off (a row is one sequence, as the data gives it).
  int pack_bos = -1;
};

struct StepResult {
  std::int64_t step = 0;  // optimiser steps done after this one
  double loss = 0;        // mean over the micro-batches (nats per scored token)
  double grad_norm = 0;   // before clipping
  double lr_factor = 0;
  bool skipped = false;   // non-finite, and skip_nonfinite was set
  bool quantized = false; // forward and backward ran on fake-quantised weights (QAT)
  Index tokens = 0;       // tokens processed by this step
  double seconds = 0;
  // With distillation (loss = alpha * kd_ce + beta * tau^2 * kd_kl + gamma * kd_feat): the
  // unweighted means over the micro-batches of the cross-entropy (+ z-loss), of the KL to
  // the teacher and of the feature MSE (0 without feature terms).
  double kd_ce = 0, kd_kl = 0, kd_feat = 0;
};

struct EvalResult {
  double loss = 0;           // nats per scored token
  double bits_per_byte = 0;  // loss / ln 2 / bytes per token
  double accuracy = 0;       // argmax == target over scored positions
  Index tokens = 0;
};

// The weights a quantised artifact holds, in place of the float ones: what
// quant::load_artifact_model(quant::quantize_model(model, policy)) computes with. Every
// tensor whose role (quant::tensor_role) the policy quantises is quantised and dequantised
// with its scales rounded to float16, as the artifact stores them (a group that does not
// divide the columns falls back to one scale per row, as quantize_model does); every other
// tensor (norms, biases, convolutions, SSM dynamics; the embedding when the policy keeps it
// float) is rounded to float16. apply() keeps the float values and overwrites the model's;
// restore() puts them back. Double models are quantised through float. One copy of the
// parameters is kept (allocated once); quant::quantize allocates its result per tensor.
template <class S>
class FakeQuant {
 public:
  FakeQuant(const RuntimeModel<S>& model, const quant::QuantPolicy& policy)
      : master_(model.param_table().total()) {
    for (const ParamInfo& e : model.param_table().entries()) {
      const quant::QuantSpec* sp = policy.spec_for(quant::tensor_role(e.name, e.role));
      Item it{.quantized = sp != nullptr};
      if (sp) {
        it.spec = *sp;
        check_spec(it.spec, e.name);
        if (it.spec.group > 0 && e.cols % it.spec.group != 0) it.spec.group = 0;
        if constexpr (!std::is_same_v<S, float>) scratch_.resize(std::max(scratch_.size(), std::size_t(e.rows * e.cols)));
      }
      items_.push_back(it);
    }
  }

  bool applied() const { return applied_; }

  void apply(RuntimeModel<S>& model) {
    HYBRID_CHECK(!applied_, "FakeQuant::apply: already applied (restore() first)");
    HYBRID_CHECK(model.param_table().total() == master_.size() && model.param_table().size() == items_.size(),
                 "FakeQuant::apply: the model's parameter table is not the one this was made for");
    std::copy(model.param_values(), model.param_values() + master_.size(), master_.data());
    applied_ = true;
    try {
      overwrite(model);
    } catch (...) {  // e.g. a non-finite weight: leave the float values in place
      restore(model);
      throw;
    }
  }

  void restore(RuntimeModel<S>& model) {
    HYBRID_CHECK(applied_, "FakeQuant::restore: nothing to restore (apply() first)");
    std::copy(master_.data(), master_.data() + master_.size(), model.param_values());
    applied_ = false;
  }

  // The float values apply() kept (valid while applied()).
  const S* master() const { return master_.data(); }

  // Throws naming the tensor for a width outside 2..8, a negative group or a bad SdClip k.
  static void check_spec(const quant::QuantSpec& s, const std::string& name) {
    HYBRID_CHECK(s.bits >= 2 && s.bits <= 8, "fake quantisation: tensor '", name, "' would be quantised to ",
                 s.bits, " bits; expected 2 to 8");
    HYBRID_CHECK(s.group >= 0, "fake quantisation: tensor '", name, "': group of ", s.group,
                 " columns; expected 0 (one scale per row) or a positive divisor of the columns");
    HYBRID_CHECK(s.rule != quant::ScaleRule::SdClip || (std::isfinite(s.sd_k) && s.sd_k > 0),
                 "fake quantisation: SdClip k of ", s.sd_k, "; expected a finite k > 0");
  }

 private:
  struct Item {
    bool quantized = false;
    quant::QuantSpec spec{};
  };

  void overwrite(RuntimeModel<S>& model) {
    const auto& entries = model.param_table().entries();
    for (std::size_t i = 0; i < entries.size(); ++i) {
      const ParamInfo& e = entries[i];
      S* w = model.param_values() + e.offset;
      const Index n = e.rows * e.cols;
      if (!items_[i].quantized) {
        for (Index k = 0; k < n; ++k) w[k] = S(f16_to_f32(f32_to_f16(float(w[k]))));
        continue;
      }
      float* f = nullptr;
      if constexpr (std::is_same_v<S, float>) {
        f = w;
      } else {
        f = scratch_.data();
        for (Index k = 0; k < n; ++k) f[k] = float(w[k]);
      }
      quant::QTensor q = [&] {
        try {
          return quant::quantize(f, e.rows, e.cols, items_[i].spec);
        } catch (const Error& err) {
          fail("fake quantisation: tensor '", e.name, "': ", err.what());
        }
      }();
      for (float& sc : q.scales) sc = f16_to_f32(f32_to_f16(sc));
      quant::dequantize(q, f);
      if constexpr (!std::is_same_v<S, float>)
        for (Index k = 0; k < n; ++k) w[k] = S(f[k]);
    }
  }

  std::vector<Item> items_;
  Buffer<S> master_;
  std::vector<float> scratch_;  // double models: one tensor in float
  bool applied_ = false;
};

namespace detail {
// Undoes a FakeQuant::apply (and an EMA swap) when the scope ends, also by an exception.
template <class S>
struct FakeQuantScope {
  FakeQuant<S>* fq;
  RuntimeModel<S>& model;
  FakeQuantScope(FakeQuant<S>* f, RuntimeModel<S>& m) : fq(f), model(m) {
    if (fq) fq->apply(model);
  }
  ~FakeQuantScope() {
    if (fq && fq->applied()) fq->restore(model);
  }
  FakeQuantScope(const FakeQuantScope&) = delete;
  FakeQuantScope& operator=(const FakeQuantScope&) = delete;
};
template <class S>
struct EmaScope {
  Ema<S>* ema;
  RuntimeModel<S>& model;
  EmaScope(Ema<S>* e, RuntimeModel<S>& m) : ema(e), model(m) {
    if (ema) ema->swap(model);
  }
  ~EmaScope() {
    if (ema) ema->swap(model);
  }
  EmaScope(const EmaScope&) = delete;
  EmaScope& operator=(const EmaScope&) = delete;
};
}  // namespace detail

// lora: with adapters (train/lora.hpp) on `model`, only they train: the gradient store,
// the optimiser and its state are the adapters', the model's weights stay frozen (no
// gradient is computed for them), and evaluation runs the model with the adapters. The
// adapters must outlive the trainer.
template <class S>
class Trainer {
 public:
  Trainer(RuntimeModel<S>& model, data::Source& data, const TrainConfig& cfg, LoraAdapters<S>* lora = nullptr)
      : model_(model), data_(data), cfg_(cfg), lora_(lora),
        grads_(lora ? GradStore<S>(*lora) : GradStore<S>(model)), tape_(true, lora ? nullptr : &grads_),
        opt_(grads_, cfg.optim) {
    HYBRID_CHECK(cfg.batch > 0 && cfg.seq_len > 0 && cfg.grad_accum > 0,
                 "train: batch, seq_len and grad_accum must be positive");
    HYBRID_CHECK(data.vocab_needed() <= model.vocab(), "train: the data needs a vocabulary of ",
                 data.vocab_needed(), " ids but the model has ", model.vocab());
    HYBRID_CHECK(cfg.pack_bos >= -1 && cfg.pack_bos < model.vocab(), "train: the packed documents' BOS id ",
                 cfg.pack_bos, " is not an id of the model's vocabulary of ", model.vocab(), " (-1: no packing)");
    if (lora) {
      HYBRID_CHECK(&lora->model() == &model, "train: the LoRA adapters were made for another model");
      HYBRID_CHECK(!lora->merged(), "train: the LoRA adapters are merged into the model; unmerge() them to train");
      HYBRID_CHECK(cfg.ema_decay <= 0, "train: a weight EMA of the frozen base model does nothing with LoRA "
                   "adapters; turn the EMA off");
      tape_.set_linear_adapter(lora->hook(&grads_));
    }
    if (cfg.kd.on() && !cfg.kd.features.empty()) {
      cfg.kd.validate();
      fmaps_ = std::make_unique<FeatureMaps<S>>(cfg.kd.features, model.n_blocks(), model.spec().d_model,
                                                cfg.kd.teacher_width, derive_seed(cfg.seed, "kd_features"));
      if (fmaps_->learned()) {
        fmap_grads_ = std::make_unique<GradStore<S>>(*fmaps_);
        fmap_opt_ = std::make_unique<Optimizer<S>>(*fmap_grads_, cfg.optim);
      }
    }
    if (cfg.ema_decay > 0) ema_ = std::make_unique<Ema<S>>(model, cfg.ema_decay);
    if (cfg.qat.start >= 0) fq_ = std::make_unique<FakeQuant<S>>(model, cfg.qat.policy);
  }

  // One optimiser step over grad_accum micro-batches. Throws hybrid::Error on a non-finite
  // loss or gradient unless skip_nonfinite (then the step is skipped, weights untouched).
  // Under QAT (qat_active()) the loss and the gradients are those at the fake-quantised
  // weights; the float weights are back in place before the optimiser updates them.
  StepResult step() {
    const auto t0 = std::chrono::steady_clock::now();
    StepResult r;
    usage_ = {};
    grads_.zero();
    if (fmap_grads_) fmap_grads_->zero();
    double loss_sum = 0;
    r.quantized = qat_active();
    {
      detail::FakeQuantScope<S> fq(r.quantized ? fq_.get() : nullptr, model_);
      for (Index m = 0; m < cfg_.grad_accum; ++m) {
        data::Batch b = data_.train_batch(cfg_.batch, cfg_.seq_len);
        if (cfg_.pack_bos >= 0) data::mark_documents(b, cfg_.pack_bos);
        const std::string micro = std::to_string(opt_.steps()) + "/" + std::to_string(m);
        TrainingOptions o{.recompute = cfg_.recompute, .drop_path = cfg_.drop_path,
                          .drop_seed = derive_seed(cfg_.seed, micro), .doc_starts = {}};
        o.doc_starts = b.doc_starts;
        if (lora_) lora_->set_dropout_seed(derive_seed(cfg_.seed, "lora/" + micro));
        tape_.rewind();
        const Var<S> loss = cfg_.kd.on() ? distill_loss(b, o, r)
                                         : model_.loss(tape_, b.tokens, b.targets, b.B, b.T, cfg_.z_loss, o);
        loss_sum += double(loss.v[0]);
        tape_.backward(loss, S(1) / S(cfg_.grad_accum));  // each micro-batch: 1/n of the mean
        r.tokens += b.B * b.T;
        if (tape_.usage().total() > usage_.total()) usage_ = tape_.usage();
      }
      tape_.rewind();
    }  // the float master weights are back
    r.loss = loss_sum / double(cfg_.grad_accum);
    r.lr_factor = cfg_.schedule.factor(opt_.steps());
    const bool finite_loss = std::isfinite(r.loss);
    if (finite_loss) {
      const auto info = opt_.step(r.lr_factor);
      r.grad_norm = info.grad_norm;
      // The feature maps step with the model (their own clipping and state); a step the
      // model's optimiser skips (non-finite gradient) leaves them untouched too.
      if (fmap_opt_ && std::isfinite(r.grad_norm)) fmap_opt_->step(r.lr_factor);
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
  // EMA weights when an EMA is kept), on the float weights also during QAT.
  EvalResult evaluate() {
    detail::EmaScope<S> swap(ema_.get(), model_);
    return score_val();
  }

  // The same for those weights quantised as config().qat.policy says (FakeQuant): the loss
  // of the artifact that quantize would make of what --save writes. Works with QAT off too
  // (the post-training quantisation figure).
  EvalResult evaluate_quantized() {
    if (!fq_) fq_ = std::make_unique<FakeQuant<S>>(model_, cfg_.qat.policy);
    detail::EmaScope<S> swap(ema_.get(), model_);
    detail::FakeQuantScope<S> fq(fq_.get(), model_);
    return score_val();
  }

  // Whether the next step runs on fake-quantised weights.
  bool qat_active() const { return cfg_.qat.start >= 0 && opt_.steps() >= cfg_.qat.start; }

  RuntimeModel<S>& model() { return model_; }
  LoraAdapters<S>* lora() { return lora_; }
  Optimizer<S>& optimizer() { return opt_; }
  Ema<S>* ema() { return ema_.get(); }
  // With feature distillation: the learned maps (nullptr without feature terms).
  FeatureMaps<S>* feature_maps() { return fmaps_.get(); }
  Optimizer<S>* feature_map_optimizer() { return fmap_opt_.get(); }
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
  // The distillation loss of one micro-batch: the teacher's targets (forward only), then
  // the student's fused head and loss; the parts go to r as means over the micro-batches.
  Var<S> distill_loss(const data::Batch& b, const TrainingOptions& o, StepResult& r) {
    cfg_.kd.validate();
    cfg_.kd.teacher(b, teacher_);
    ops::KdSums parts;
    double feat = 0;
    const Var<S> loss = train::distill_loss(model_, tape_, b, teacher_, cfg_.kd, cfg_.z_loss, o, &parts, fmaps_.get(),
                                            fmap_grads_.get(), &feat);
    r.kd_ce += parts.ce / double(cfg_.grad_accum);
    r.kd_kl += parts.kl / double(cfg_.grad_accum);
    r.kd_feat += feat / double(cfg_.grad_accum);
    return loss;
  }

  // The loss over the validation batches of the weights now in the model.
  EvalResult score_val() {
    EvalResult e;
    double nats = 0, correct = 0;
    Index scored = 0;
    Tape<S> t(false);
    if (lora_) t.set_linear_adapter(lora_->hook());  // the adapters, without dropout
    for (data::Batch& b : data_.val_batches(cfg_.batch, cfg_.seq_len, cfg_.eval_batches)) {
      Index n = 0;
      for (int tgt : b.targets) n += tgt != -1;
      if (n == 0) continue;
      if (cfg_.pack_bos >= 0) data::mark_documents(b, cfg_.pack_bos);
      t.rewind();  // the head and the loss by chunks of rows: no (B*T, V) logits
      const auto s = model_.score(t, b.tokens, b.targets, b.B, b.T, b.doc_starts);
      nats += s.nats;
      correct += double(s.correct);
      scored += s.scored;
      e.tokens += b.B * b.T;
    }
    HYBRID_CHECK(scored > 0, "evaluate: the validation data has no scored positions");
    e.loss = nats / double(scored);
    e.accuracy = correct / double(scored);
    e.bits_per_byte = data::bits_per_byte(e.loss, data_.bytes_per_token());
    return e;
  }

  RuntimeModel<S>& model_;
  data::Source& data_;
  TrainConfig cfg_;
  LoraAdapters<S>* lora_;  // nullptr: the model's own weights train
  GradStore<S> grads_;
  Tape<S> tape_;
  typename Tape<S>::Usage usage_;
  Optimizer<S> opt_;
  std::unique_ptr<Ema<S>> ema_;
  std::unique_ptr<FakeQuant<S>> fq_;  // with QAT, or once evaluate_quantized ran
  TeacherTargets teacher_;            // with distillation: the teacher's targets of a micro-batch
  // Feature distillation: the learned maps, their gradients and optimiser (the last two only
  // when some width differs).
  std::unique_ptr<FeatureMaps<S>> fmaps_;
  std::unique_ptr<GradStore<S>> fmap_grads_;
  std::unique_ptr<Optimizer<S>> fmap_opt_;
};

}  // namespace hybrid::train
