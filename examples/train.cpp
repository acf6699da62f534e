// train: trains a shipped alias or a run-time layout on a synthetic task (default: multi-query
// associative recall, nothing to download), a text file (byte level) or parameter-golf
// shards (byte level, or SentencePiece ids with --tokenizer), with Muon + AdamW, schedules,
// EMA, z-loss, quantisation-aware training, periodic evaluation (of the quantised model too),
// a CSV log, checkpoints that resume bit for bit, and --dump-grads for comparing with other
// engines, and knowledge distillation from a teacher (--teacher: our checkpoint, a Hugging
// Face directory, a GGUF file or an artifact) with a top-k cache of its outputs. Every bad
// input ends with a message and exit code 2.
//
//   train --model TinyMamba --data data/tinyshakespeare.txt --teacher run/teacher.safetensors
//         --kd-alpha 0.5 --kd-beta 0.5 --kd-temp 2 --kd-topk 32 --kd-cache run/kd.bin
#include <cxxopts.hpp>

#include <cmath>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <memory>
#include <optional>
#include <sstream>

#include <hybrid/alias_registry.hpp>
#include <hybrid/core/json.hpp>
#include <hybrid/data/shards.hpp>
#include <hybrid/io/peft.hpp>
#include <hybrid/data/synthetic.hpp>
#include <hybrid/data/text.hpp>
#include <hybrid/io/desc_json.hpp>
#include <hybrid/train/checkpoint.hpp>
#ifdef HYBRID_HAVE_TOKENIZERS
#include <hybrid/tokenizer/sentencepiece.hpp>
#endif
#ifdef _OPENMP
#include <omp.h>
#endif

#include "cli.hpp"
#include "model_source.hpp"

using namespace hybrid;

namespace {

struct Options {
  cxxopts::ParseResult r;
  template <class T>
  T get(const char* k) const { return r[k].as<T>(); }
  bool has(const char* k) const { return r.count(k) > 0; }
};

// The model: --model ALIAS, --config FILE (desc JSON), or --layout with dimension flags.
ModelDesc base_desc(const Options& o, int data_vocab) {
  if (o.has("config")) {
    const std::string path = o.get<std::string>("config");
    const nlohmann::json j = read_json_file(path, "--config", "a model desc JSON file");
    try {
      return desc_from_json(j);
    } catch (const Error& e) {  // desc errors name the JSON path; add the file
      fail("--config: '", path, "': ", e.what());
    }
  }
  if (o.has("model")) return find_alias(o.get<std::string>("model")).desc();
  const int d = o.get<int>("d-model");
  ModelSpec m{.vocab = o.has("vocab") ? o.get<int>("vocab") : data_vocab, .d_model = d, .tied = !o.has("untied")};
  Mamba2Spec mb{.d_state = o.get<int>("d-state"), .expand = o.get<double>("expand"),
                .headdim = o.get<int>("headdim"), .ngroups = o.get<int>("groups"),
                .chunk = o.get<int>("chunk")};
  GqaSpec at{.n_heads = o.get<int>("heads"), .n_kv_heads = o.get<int>("kv-heads"),
             .head_dim = o.get<int>("head-dim"), .window = o.get<int>("window"),
             .output_gate = o.has("gated-attention")};
  const int hidden = o.get<int>("mlp-hidden") > 0 ? o.get<int>("mlp-hidden") : 4 * d;
  auto channel = [&](const std::string& kind) -> ChannelDesc {
    if (kind == "none") return NoChannelSpec{};
    if (kind == "swiglu") return SwiGluSpec{{hidden}};
    if (kind == "relu2") return Relu2Spec{{hidden}};
    fail("--mlp / --mamba-mlp: '", kind, "' is not one of none, swiglu, relu2");
  };
  return desc_from_layout(o.get<std::string>("layout"), m, mb, at, ShortConvSpec{},
                          channel(o.get<std::string>("mamba-mlp")), channel(o.get<std::string>("mlp")));
}

// base_desc with the golf-entry options of the flags, whichever way the model was given.
ModelDesc model_desc(const Options& o, int data_vocab) {
  ModelDesc d = with_golf_options(base_desc(o, data_vocab),
                                  {.unet_skips = o.has("unet-skips"), .bigram_buckets = o.get<int>("bigram-buckets"),
                                   .bigram_dim = o.get<int>("bigram-dim"), .rope_dims = o.get<int>("rope-dims")});
  validate(d);
  return d;
}

// --tokenizer: the SentencePiece model shards were made with (prepare --tokenizer). It sets
// the vocabulary a --layout model gets, the ids the shards may hold, and parameter golf's
// bytes per token for bits per byte.
#ifdef HYBRID_HAVE_TOKENIZERS
using SpTokenizer = SentencePieceTokenizer;
#else
using SpTokenizer = Tokenizer;  // never made: this build has no libsentencepiece
#endif
std::unique_ptr<SpTokenizer> load_tokenizer(const Options& o) {
  if (!o.has("tokenizer")) return nullptr;
#ifdef HYBRID_HAVE_TOKENIZERS
  return std::make_unique<SpTokenizer>(o.get<std::string>("tokenizer"));
#else
  fail("--tokenizer: this train was built without libsentencepiece (hybrid::tokenizers); rebuild "
       "with it, or train on byte-level data");
#endif
}

std::unique_ptr<data::Source> make_source(const Options& o, const SpTokenizer* tok) {
  const auto seed = o.get<std::uint64_t>("data-seed");
  HYBRID_CHECK(!tok || o.has("shards-train"), "--tokenizer: only shards (--shards-train / --shards-val) "
               "hold tokenizer ids; --data and the synthetic tasks are byte level (prepare --to-shards "
               "FILE --tokenizer MODEL makes shards of a text)");
  if (o.has("data")) return std::make_unique<data::TextSource>(o.get<std::string>("data"), seed);
  if (o.has("shards-train")) {
    HYBRID_CHECK(o.has("shards-val"), "--shards-train needs --shards-val");
    auto src = std::make_unique<data::ShardSource>(cli::split_list(o.get<std::string>("shards-train")),
                                                   cli::split_list(o.get<std::string>("shards-val")), seed,
                                                   tok ? tok->vocab_size() : 0);
#ifdef HYBRID_HAVE_TOKENIZERS
    if (tok && src->val_tokens() > 0)
      src->set_bytes_per_token(data::val_bytes_per_token(*src, [&](int p, int id) { return tok->bytes_after(p, id); }));
#endif
    return src;
  }
  const std::string task = o.get<std::string>("task");
  const int vocab = o.get<int>("task-vocab");
  if (task == "mqar") return data::make_mqar({.vocab = vocab}, seed);
  if (task == "copy") return data::make_selective_copy({.vocab = vocab}, seed);
  if (task == "induction") return data::make_induction({.vocab = vocab}, seed);
  fail("--task: '", task, "' is not mqar, copy or induction");
}

train::OptimConfig optim_config(const Options& o) {
  train::OptimConfig c;
  const std::string kind = o.get<std::string>("optimizer");
  HYBRID_CHECK(kind == "muon" || kind == "adamw", "--optimizer: '", kind, "' is not muon or adamw");
  c.matrix_optimizer = kind == "muon" ? train::MatrixOptimizer::Muon : train::MatrixOptimizer::AdamW;
  if (o.has("lr-matrix")) c.matrix.lr = o.get<double>("lr-matrix");
  else if (kind == "adamw") c.matrix.lr = o.get<double>("lr");
  c.embedding.lr = o.has("lr-embedding") ? o.get<double>("lr-embedding") : o.get<double>("lr");
  c.scalar.lr = o.has("lr-scalar") ? o.get<double>("lr-scalar") : o.get<double>("lr");
  c.dynamics.lr = o.has("lr-dynamics") ? o.get<double>("lr-dynamics") : o.get<double>("lr");
  c.matrix.weight_decay = o.get<double>("weight-decay");
  c.beta1 = o.get<double>("beta1");
  c.beta2 = o.get<double>("beta2");
  c.eps = o.get<double>("eps");
  c.muon_momentum = o.get<double>("momentum");
  c.max_grad_norm = o.get<double>("clip");
  return c;
}

quant::QuantPolicy qat_policy(const Options& o) {
  const std::string rule = o.get<std::string>("qat-rule"), group = o.get<std::string>("qat-group");
  quant::QuantSpec spec{.bits = o.get<int>("qat-bits"), .sd_k = o.get<double>("qat-sd-k")};
  HYBRID_CHECK(spec.bits >= 2 && spec.bits <= 8, "--qat-bits must be 2 to 8, got ", spec.bits);
  if (rule == "rowmax") spec.rule = quant::ScaleRule::RowMax;
  else if (rule == "mse") spec.rule = quant::ScaleRule::MseClip;
  else if (rule == "sdclip") spec.rule = quant::ScaleRule::SdClip;
  else fail("--qat-rule: '", rule, "' is not rowmax, mse or sdclip");
  HYBRID_CHECK(std::isfinite(spec.sd_k) && spec.sd_k > 0, "--qat-sd-k must be positive, got ", spec.sd_k);
  if (group == "row") spec.group = 0;
  else if (group == "32" || group == "64" || group == "128") spec.group = std::stoi(group);
  else fail("--qat-group: '", group, "' is not row, 32, 64 or 128");
  quant::QuantPolicy p;
  p.set_all(spec);
  const std::string eb = o.get<std::string>("qat-embed-bits");
  if (eb == "float16") {
    p.quantize_embedding = false;
  } else {
    p.embedding.bits = cli::number<int>("--qat-embed-bits", eb);
    HYBRID_CHECK(p.embedding.bits >= 2 && p.embedding.bits <= 8, "--qat-embed-bits must be 2 to 8 or float16, got ",
                 p.embedding.bits);
  }
  return p;
}

// "projections int6 RowMax, groups of 32; embedding int8; small tensors float16", for the log.
std::string describe(const quant::QuantPolicy& p) {
  const quant::QuantSpec& s = p.attention;
  std::string d = "projections int" + std::to_string(s.bits) + " " + quant::scale_rule_name(s.rule);
  if (s.rule == quant::ScaleRule::SdClip) d += " (k " + std::to_string(s.sd_k).substr(0, 5) + ")";
  d += s.group ? ", groups of " + std::to_string(s.group) : ", a scale per row";
  d += p.quantize_embedding ? "; embedding int" + std::to_string(p.embedding.bits) : "; embedding float16";
  return d + "; small tensors float16";
}

train::Schedule schedule(const Options& o, std::int64_t steps) {
  train::Schedule s;
  const std::string k = o.get<std::string>("schedule");
  if (k == "constant") s.kind = train::Schedule::Constant;
  else if (k == "cosine") s.kind = train::Schedule::WarmupCosine;
  else if (k == "warmdown") s.kind = train::Schedule::WarmupLinearWarmdown;
  else fail("--schedule: '", k, "' is not constant, cosine or warmdown");
  s.warmup = o.get<std::int64_t>("warmup");
  s.total = steps;
  s.warmdown = o.has("warmdown") ? o.get<std::int64_t>("warmdown") : steps / 5;
  s.min_factor = o.get<double>("min-lr-factor");
  return s;
}

template <class S>
int dump_grads(RuntimeModel<S>& model, data::Source& src, const Options& o) {
  const data::Batch b = src.train_batch(o.get<Index>("batch"), o.get<Index>("seq-len"));
  GradStore<S> grads(model);
  Tape<S> tape(true, &grads);
  const Var<S> loss = model.loss(tape, b.tokens, b.targets, b.B, b.T, o.get<double>("z-loss"));
  tape.backward(loss);
  std::vector<TensorRef> refs;
  std::vector<std::vector<std::int64_t>> shapes;
  for (const auto& e : grads.entries()) {
    std::vector<std::int64_t> shape{e.rows, e.cols};
    if (e.rows == 1) shape = {e.cols};
    refs.push_back({e.name, dtype_of<S>(), shape, grads.grad_of(e)});
  }
  auto join = [](const std::vector<int>& v) {
    std::ostringstream os;
    for (std::size_t i = 0; i < v.size(); ++i) os << (i ? "," : "") << v[i];
    return os.str();
  };
  const std::string ids = join(b.tokens), tg = join(b.targets);
  write_safetensors(o.get<std::string>("dump-grads"), refs,
                    {{"loss", std::to_string(double(loss.v[0]))}, {"B", std::to_string(b.B)},
                     {"T", std::to_string(b.T)}, {"tokens", ids}, {"targets", tg},
                     {"hybrid.desc", to_json(model.desc()).dump()}});
  std::printf("wrote gradients of %zu tensors for one batch (B=%lld, T=%lld, loss %.6f) to %s\n",
              refs.size(), (long long)b.B, (long long)b.T, double(loss.v[0]),
              o.get<std::string>("dump-grads").c_str());
  return 0;
}

// The process's peak resident set (VmHWM) in bytes, 0 where /proc is not there.
double peak_rss_bytes() {
  std::ifstream f("/proc/self/status");
  std::string line;
  while (std::getline(f, line))
    if (line.rfind("VmHWM:", 0) == 0) return std::atof(line.c_str() + 6) * 1024;
  return 0;
}

std::string hms(double s) {
  char buf[32];
  const long t = long(s + 0.5);
  std::snprintf(buf, sizeof buf, "%ld:%02ld:%02ld", t / 3600, t / 60 % 60, t % 60);
  return buf;
}

// --teacher and the --kd-* flags: the distillation config (teacher: the loaded model, kept
// alive by the caller; cache: the top-k cache when --kd-cache is given).
train::KdConfig kd_config(const Options& o, int student_vocab, std::optional<model_source::Loaded>& teacher,
                          std::shared_ptr<train::TopkCache>& cache) {
  train::KdConfig kd;
  if (!o.has("teacher")) {
    for (const char* k : {"kd-alpha", "kd-beta", "kd-temp", "kd-topk", "kd-cache", "kd-features", "kd-gamma"})
      HYBRID_CHECK(!o.has(k), "--", k, " has no effect without --teacher SRC");
    return kd;
  }
  kd.alpha = o.get<double>("kd-alpha");
  kd.beta = o.get<double>("kd-beta");
  kd.tau = o.get<double>("kd-temp");
  HYBRID_CHECK(std::isfinite(kd.tau) && kd.tau > 0, "--kd-temp must be > 0, got ", kd.tau);
  HYBRID_CHECK(kd.alpha >= 0 && kd.beta >= 0, "--kd-alpha and --kd-beta must be >= 0, got ", kd.alpha, " and ",
               kd.beta);
  const Index k = o.get<Index>("kd-topk");
  teacher.emplace(model_source::load(o.get<std::string>("teacher"), "--teacher"));
  const RuntimeModel<float>& t = *teacher->model;
  HYBRID_CHECK(t.vocab() == student_vocab, "--teacher '", o.get<std::string>("teacher"), "': its vocabulary has ",
               t.vocab(), " ids, the student's ", student_vocab, "; distillation needs the same vocabulary");
  HYBRID_CHECK(k >= 0 && k <= t.vocab(), "--kd-topk must be 0 (full logits) to the vocabulary (", t.vocab(),
               "), got ", k);
  HYBRID_CHECK(!o.has("kd-cache") || k > 0, "--kd-cache stores the teacher's top-k: give --kd-topk K > 0");
  HYBRID_CHECK(!o.has("kd-gamma") || o.has("kd-features"), "--kd-gamma weighs the feature terms: give "
               "--kd-features S:T,...");
  std::vector<int> teacher_blocks;
  if (o.has("kd-features")) {
    HYBRID_CHECK(!o.has("kd-cache"), "--kd-cache holds the teacher's top-k logits only; with --kd-features the "
                 "teacher runs on every batch anyway: leave out --kd-cache");
    kd.features = train::parse_feature_map(o.get<std::string>("kd-features"));
    kd.gamma = o.get<double>("kd-gamma");
    HYBRID_CHECK(std::isfinite(kd.gamma) && kd.gamma >= 0, "--kd-gamma must be >= 0, got ", kd.gamma);
    kd.teacher_width = t.spec().d_model;
    for (const train::FeaturePair& p : kd.features) teacher_blocks.push_back(p.teacher);
  }
  kd.teacher = train::live_teacher(t, k, kd.tau, teacher_blocks);
  std::cout << "teacher: " << teacher->origin << " (" << t.param_count() << " parameters); loss = " << kd.alpha
            << " * CE + " << kd.beta << " * " << kd.tau << "^2 * KL";
  if (!kd.features.empty()) std::cout << " + " << kd.gamma << " * feature MSE";
  std::cout << ", "
            << (k ? "top-" + std::to_string(k) + " teacher" : std::string("full teacher logits")) << "\n";
  if (!kd.features.empty())
    std::cout << "feature distillation: " << kd.features.size() << " block pair(s) (student:teacher "
              << o.get<std::string>("kd-features") << "), teacher width " << kd.teacher_width
              << " (a learned linear map where the student's width differs)\n";
  if (o.has("kd-cache")) {
    cache = std::make_shared<train::TopkCache>(o.get<std::string>("kd-cache"), k, t.vocab(), kd.tau,
                                               train::model_fingerprint(t));
    std::cout << "kd cache: " << cache->path() << " (" << cache->records() << " batches cached)\n";
    kd.teacher = train::cached_teacher(cache, kd.teacher);
  }
  return kd;
}

template <class S>
int run(const Options& o) {
  const auto tok = load_tokenizer(o);
  auto src = make_source(o, tok.get());
  const int need = src->vocab_needed();
  std::optional<RuntimeModel<S>> made;
  std::string origin;
  if (o.has("init-from")) {  // the description and the weights of a model the library loads
    for (const char* k : {"model", "config", "layout", "weights", "vocab", "unet-skips", "bigram-buckets",
                          "bigram-dim", "rope-dims"})
      HYBRID_CHECK(!o.has(k), "--init-from takes the model's description and weights from '",
                   o.get<std::string>("init-from"), "'; leave out --", k);
    if constexpr (std::is_same_v<S, float>) {
      model_source::Loaded l = model_source::load(o.get<std::string>("init-from"), "--init-from");
      made.emplace(std::move(*l.model));
      origin = l.origin;
    } else {
      fail("--init-from loads float weights; train it with --precision f32");
    }
    HYBRID_CHECK(need <= made->vocab(), "the data needs a vocabulary of ", need, " ids but '",
                 o.get<std::string>("init-from"), "' has ", made->vocab());
  } else {
    ModelDesc desc = model_desc(o, tok ? std::max(need, tok->vocab_size()) : std::max(need, 258));
    HYBRID_CHECK(need <= desc.model.vocab, "the data needs a vocabulary of ", need, " ids but the model has ",
                 desc.model.vocab, o.has("model") || o.has("config")
                                       ? "; pick a model with a larger vocabulary"
                                       : "; raise --vocab (or leave it out: the data's vocabulary is the default)");
    made.emplace(desc, o.get<std::uint64_t>("seed"));
  }
  RuntimeModel<S>& model = *made;
  if (o.has("weights")) load_weights(model, o.get<std::string>("weights"));
  if (!origin.empty()) std::cout << "initialised from " << origin << "\n";
  std::cout << model.summary(o.has("model") ? o.get<std::string>("model") : "model");
  std::cout << "data: " << src->describe() << "\n";
  if (tok)
    std::cout << "tokenizer: " << o.get<std::string>("tokenizer") << " (" << tok->vocab_size()
              << " ids, " << src->bytes_per_token() << " bytes per token on the val shards)\n";
  if (o.has("dump-grads")) return dump_grads(model, *src, o);

  train::TrainConfig cfg;
  cfg.batch = o.get<Index>("batch");
  cfg.seq_len = o.get<Index>("seq-len");
  cfg.grad_accum = o.get<Index>("grad-accum");
  cfg.steps = o.get<std::int64_t>("steps");
  cfg.optim = optim_config(o);
  cfg.schedule = schedule(o, cfg.steps);
  cfg.z_loss = o.get<double>("z-loss");
  cfg.ema_decay = o.get<double>("ema");
  cfg.eval_batches = o.get<Index>("eval-batches");
  cfg.skip_nonfinite = o.has("skip-nonfinite");
  cfg.recompute = o.has("recompute");
  cfg.drop_path = o.get<double>("drop-path");
  cfg.seed = o.get<std::uint64_t>("seed");
  const bool report_quantized = o.has("qat-start") || o.has("eval-quantized");
  for (const char* k : {"qat-bits", "qat-embed-bits", "qat-rule", "qat-sd-k", "qat-group"})
    HYBRID_CHECK(report_quantized || !o.has(k), "--", k, " has no effect without --qat-start STEP or --eval-quantized");
  if (report_quantized) cfg.qat.policy = qat_policy(o);
  if (o.has("qat-start")) {
    cfg.qat.start = o.get<std::int64_t>("qat-start");
    HYBRID_CHECK(cfg.qat.start >= 0, "--qat-start must be >= 0 (optimiser steps done before QAT starts), got ",
                 cfg.qat.start);
    HYBRID_CHECK(cfg.qat.start < cfg.steps, "--qat-start ", cfg.qat.start, " is not below --steps ", cfg.steps,
                 ": no step would run on quantised weights");
  }
  std::optional<model_source::Loaded> teacher;
  std::shared_ptr<train::TopkCache> kd_cache;
  cfg.kd = kd_config(o, model.vocab(), teacher, kd_cache);
  auto save_cache = [&] {
    if (kd_cache && kd_cache->dirty()) {
      kd_cache->save();
      std::cout << "kd cache: wrote " << kd_cache->records() << " batches to " << kd_cache->path() << " ("
                << kd_cache->hits() << " reused this run)\n";
    }
  };
  if (o.has("pack-documents")) {
    HYBRID_CHECK(o.has("shards-train"), "--pack-documents: only shards hold documents that start with a BOS id "
                 "(--shards-train / --shards-val; prepare --to-shards makes them); --data and the synthetic tasks "
                 "are one stream without document starts");
    cfg.pack_bos = o.has("bos-id") ? o.get<int>("bos-id") : tok ? *tok->bos() : 256;
    HYBRID_CHECK(cfg.pack_bos >= 0 && cfg.pack_bos < model.vocab(), "--bos-id ", cfg.pack_bos,
                 " is not an id of the model's vocabulary of ", model.vocab());
    std::cout << "packed documents: each starts at id " << cfg.pack_bos << "\n";
  } else {
    HYBRID_CHECK(!o.has("bos-id"), "--bos-id has no effect without --pack-documents");
  }
  std::optional<train::LoraAdapters<S>> lora;
  const bool use_lora = o.has("lora-rank") || o.has("lora-load");
  for (const char* k : {"lora-alpha", "lora-save"})
    HYBRID_CHECK(use_lora || !o.has(k), "--", k, " needs --lora-rank R (or --lora-load DIR)");
  if (use_lora) {
    HYBRID_CHECK(!(o.has("lora-rank") && o.has("lora-load")), "--lora-load takes rank, alpha and targets from the "
                 "saved adapter_config.json; leave out --lora-rank");
    HYBRID_CHECK(!o.has("ckpt-dir") && !o.has("resume"), "LoRA: --ckpt-dir / --resume hold the model's own "
                 "training state; save the adapters with --lora-save DIR and continue with --lora-load DIR");
    HYBRID_CHECK(cfg.ema_decay <= 0, "LoRA: --ema averages the frozen base weights; leave it out");
    if (o.has("lora-load")) {
      lora.emplace(peft_adapters(model, o.get<std::string>("lora-load")));
    } else {
      train::LoraConfig lc;
      lc.rank = o.get<int>("lora-rank");
      lc.alpha = o.has("lora-alpha") ? o.get<double>("lora-alpha") : 2.0 * lc.rank;
      lc.dropout = o.get<double>("lora-dropout");
      lc.targets = cli::split_list(o.get<std::string>("lora-targets"));
      lc.seed = cfg.seed;
      lora.emplace(model, lc);
    }
    const double lr = o.get<double>("lora-lr");
    HYBRID_CHECK(std::isfinite(lr) && lr > 0, "--lora-lr must be a positive number, got ", lr);
    cfg.optim.matrix_optimizer = train::MatrixOptimizer::AdamW;  // the adapters are Matrix tensors
    cfg.optim.matrix = {lr, 0.0};
    std::string kinds;
    for (const auto& k : lora->kinds()) kinds += (kinds.empty() ? "" : ",") + k;
    std::cout << "LoRA: rank " << lora->config().rank << ", alpha " << lora->config().alpha << ", dropout "
              << lora->config().dropout << " on " << lora->modules().size() << " modules (" << kinds << "), "
              << lora->count() << " trainable parameters of " << model.param_count() << "; AdamW lr " << lr
              << "\n";
  } else {
    for (const char* k : {"lora-dropout", "lora-targets", "lora-lr"})
      HYBRID_CHECK(o.r[k].count() == 0, "--", k, " needs --lora-rank R (or --lora-load DIR)");
  }
  train::Trainer<S> tr(model, *src, cfg, lora ? &*lora : nullptr);
  if (report_quantized) std::cout << "quantised as: " << describe(cfg.qat.policy) << "\n";
  if (o.has("resume")) {
    const std::string path = train::resolve_checkpoint(o.get<std::string>("resume"));
    train::load_training(tr, path);
    std::cout << "resumed from " << path << " at step " << tr.optimizer().steps() << "\n";
  }
  std::unique_ptr<std::ofstream> csv;
  if (o.has("csv")) {
    const bool append = o.has("resume") && std::ifstream(o.get<std::string>("csv")).good();
    csv = std::make_unique<std::ofstream>(o.get<std::string>("csv"), append ? std::ios::app : std::ios::trunc);
    HYBRID_CHECK(csv->good(), "--csv: cannot write '", o.get<std::string>("csv"), "'");
    if (!append)
      *csv << "step,tokens,loss,grad_norm,lr_factor,val_loss,val_bpb,val_accuracy,tokens_per_s,elapsed_s,"
              "qval_loss,qval_bpb\n";
  }
  const Index eval_every = o.get<Index>("eval-every"), log_every = o.get<Index>("log-every");
  const Index ckpt_every = o.get<Index>("ckpt-every");
  const std::string ckpt_dir = o.has("ckpt-dir") ? o.get<std::string>("ckpt-dir") : "";
  const int keep = o.get<int>("keep");
  double elapsed = 0, tok_s = 0;
  Index tokens = 0;
  const std::int64_t start = tr.optimizer().steps();
  while (tr.optimizer().steps() < cfg.steps) {
    const train::StepResult r = tr.step();
    if (r.quantized && r.step == cfg.qat.start + 1)
      std::printf("step %6lld: quantisation-aware training from here on\n", (long long)r.step);
    if (r.step == start + 1) {  // the arenas have their size after the first step
      // Per token of one micro-batch (the arenas hold one at a time).
      const double per = 1.0 / double(cfg.batch * cfg.seq_len), mb = 1.0 / (1 << 20);
      std::printf("memory: arena_high_water_mb=%.1f bytes_per_token=%.0f peak_rss_mb=%.1f "
                  "peak_rss_bytes_per_token=%.0f (B=%lld T=%lld%s)\n",
                  double(tr.arena_high_water()) * mb, double(tr.arena_high_water()) * per,
                  peak_rss_bytes() * mb, peak_rss_bytes() * per, (long long)cfg.batch,
                  (long long)cfg.seq_len, cfg.recompute ? " recompute" : "");
      std::fflush(stdout);
    }
    elapsed += r.seconds;
    tokens += r.tokens;
    tok_s = double(tokens) / std::max(elapsed, 1e-9);
    const bool last = r.step == cfg.steps;
    std::string val = ",,", qval = ",";
    if ((eval_every > 0 && r.step % eval_every == 0) || last) {
      const train::EvalResult e = tr.evaluate();
      char b[160];
      std::snprintf(b, sizeof b, "%.5f,%.5f,%.5f", e.loss, e.bits_per_byte, e.accuracy);
      val = b;
      std::printf("step %6lld | val loss %.4f | bpb %.4f | acc %.4f", (long long)r.step, e.loss,
                  e.bits_per_byte, e.accuracy);
      if (report_quantized) {
        const train::EvalResult q = tr.evaluate_quantized();
        std::snprintf(b, sizeof b, "%.5f,%.5f", q.loss, q.bits_per_byte);
        qval = b;
        std::printf(" | quantised: loss %.4f bpb %.4f", q.loss, q.bits_per_byte);
      }
      std::printf("\n");
    }
    if ((log_every > 0 && r.step % log_every == 0) || last || r.skipped) {
      const double eta = double(cfg.steps - r.step) * elapsed / double(r.step - start);
      std::printf("step %6lld/%lld | loss %.4f | gnorm %.3f | lr x%.3f | %.0f tok/s | elapsed %s | eta %s%s%s\n",
                  (long long)r.step, (long long)cfg.steps, r.loss, r.grad_norm, r.lr_factor, tok_s,
                  hms(elapsed).c_str(), hms(eta).c_str(), r.quantized ? " | qat" : "",
                  r.skipped ? " | SKIPPED (non-finite)" : "");
      if (cfg.kd.on() && cfg.kd.features.empty())
        std::printf("step %6lld: kd | ce %.4f | kl %.4f\n", (long long)r.step, r.kd_ce, r.kd_kl);
      else if (cfg.kd.on())
        std::printf("step %6lld: kd | ce %.4f | kl %.4f | feat %.4f\n", (long long)r.step, r.kd_ce, r.kd_kl,
                    r.kd_feat);
      std::fflush(stdout);
    }
    if (csv)
      *csv << r.step << ',' << tokens << ',' << r.loss << ',' << r.grad_norm << ',' << r.lr_factor
           << ',' << val << ',' << tok_s << ',' << elapsed << ',' << qval << '\n' << std::flush;
    if (!ckpt_dir.empty() && ((ckpt_every > 0 && r.step % ckpt_every == 0) || last))
    {
      std::cout << "saved " << train::save_training_in(tr, ckpt_dir, keep) << "\n";
      save_cache();
    }
  }
  save_cache();
  if (kd_cache)
    std::cout << "kd cache: " << kd_cache->hits() << " batches read from " << kd_cache->path() << ", "
              << kd_cache->misses() << " computed by the teacher\n";
  if (lora && o.has("lora-save")) {
    save_peft(*lora, o.get<std::string>("lora-save"),
              o.has("init-from") ? o.get<std::string>("init-from") : o.has("weights") ? o.get<std::string>("weights") : "");
    std::cout << "saved LoRA adapters (PEFT layout) to " << o.get<std::string>("lora-save") << "\n";
  }
  if (lora && o.has("save")) {
    lora->merge();
    save_model(model, o.get<std::string>("save"));
    lora->unmerge();
    std::cout << "saved weights with the LoRA adapters merged to " << o.get<std::string>("save") << "\n";
  } else if (o.has("save")) {
    if (tr.ema()) tr.ema()->swap(model);
    save_model(model, o.get<std::string>("save"));
    std::cout << "saved weights" << (tr.ema() ? " (EMA)" : "") << " to " << o.get<std::string>("save") << "\n";
  }
  return 0;
}

}  // namespace

int train_main(int argc, char** argv) {
  cxxopts::Options opts("train", "Train a hybrid SSM / attention model on the CPU.\n"
                                 "With no data flag it trains on multi-query associative recall.");
  std::string aliases;
  for (const auto& a : shipped_aliases()) aliases += std::string(aliases.empty() ? "" : ", ") + a.name;
  opts.add_options("model")
      ("model", "a shipped alias: " + aliases, cxxopts::value<std::string>())
      ("config", "model description JSON (as written into checkpoints' hybrid.desc)", cxxopts::value<std::string>())
      ("layout", "run-time layout: M = Mamba-2, A = attention, C = ShortConv, e.g. MMMAMMMA", cxxopts::value<std::string>()->default_value("MMMA"))
      ("d-model", "model width (with --layout)", cxxopts::value<int>()->default_value("128"))
      ("vocab", "vocabulary size (with --layout; default: the --tokenizer's, else what the data needs, at least 258)", cxxopts::value<int>())
      ("untied", "untied LM head (with --layout)")
      ("d-state", "Mamba-2 state size N", cxxopts::value<int>()->default_value("32"))
      ("expand", "Mamba-2 expansion (d_inner = expand * d_model)", cxxopts::value<double>()->default_value("2"))
      ("headdim", "Mamba-2 head dim P", cxxopts::value<int>()->default_value("32"))
      ("groups", "Mamba-2 groups G", cxxopts::value<int>()->default_value("1"))
      ("chunk", "Mamba-2 chunk length Q of the SSD scan (0: the measured rule, 64 on the CPU)",
       cxxopts::value<int>()->default_value("0"))
      ("heads", "attention heads", cxxopts::value<int>()->default_value("4"))
      ("kv-heads", "attention key/value heads", cxxopts::value<int>()->default_value("2"))
      ("head-dim", "attention head dim", cxxopts::value<int>()->default_value("32"))
      ("window", "attention sliding window (0 = full)", cxxopts::value<int>()->default_value("0"))
      ("gated-attention", "sigmoid output gate on attention")
      ("mlp", "channel of attention / ShortConv blocks: swiglu, relu2, none", cxxopts::value<std::string>()->default_value("swiglu"))
      ("mamba-mlp", "channel of Mamba-2 blocks: none, swiglu, relu2", cxxopts::value<std::string>()->default_value("none"))
      ("mlp-hidden", "MLP hidden width (0 = 4 * d_model)", cxxopts::value<int>()->default_value("0"))
      ("unet-skips", "U-Net skips: decoder block j adds skip_weights[j] * the output of encoder block n/2-1-j "
       "(learned per-channel weights; with --model / --config too)")
      ("bigram-buckets", "hashed bigram embedding added to the token embedding: table rows (0 = off, else >= 2)",
       cxxopts::value<int>()->default_value("0"))
      ("bigram-dim", "bigram table width (0 = d_model, no projection)", cxxopts::value<int>()->default_value("0"))
      ("rope-dims", "partial RoPE: rotated dims of each attention head (even; 0 = all)",
       cxxopts::value<int>()->default_value("0"))
      ("seed", "weight initialisation seed", cxxopts::value<std::uint64_t>()->default_value("0"))
      ("weights", "start from these weights (a checkpoint or save_model file) of the model the flags describe", cxxopts::value<std::string>())
      ("init-from", "start from this model, its description and weights: our checkpoint, a Hugging Face directory "
       "(LFM2, GraniteMoeHybrid, Mamba2), a .gguf file or a .hybq artifact (e.g. to fine-tune it with --lora-rank)",
       cxxopts::value<std::string>())
      ("precision", "f32 or f64", cxxopts::value<std::string>()->default_value("f32"));
  opts.add_options("data")
      ("task", "synthetic task when no data file is given: mqar, copy, induction", cxxopts::value<std::string>()->default_value("mqar"))
      ("task-vocab", "vocabulary of the synthetic task", cxxopts::value<int>()->default_value("258"))
      ("data", "a text file, trained at byte level (first 90% train, last 10% val)", cxxopts::value<std::string>())
      ("shards-train", "parameter-golf train shards (comma-separated paths or globs)", cxxopts::value<std::string>())
      ("shards-val", "parameter-golf val shards (comma-separated paths or globs)", cxxopts::value<std::string>())
      ("tokenizer", "the SentencePiece .model the shards were made with (prepare --tokenizer): the vocabulary of a --layout model, the ids the shards may hold, parameter golf's bytes per token for bpb; with --text-to-shards, encode with it (BOS 1)", cxxopts::value<std::string>())
      ("text-to-shards", "convert this text file to shards (byte level, BOS 256, or --tokenizer ids) and exit; last 10% val, the file one document (prepare --to-shards has document formats)", cxxopts::value<std::string>())
      ("shard-prefix", "output prefix for --text-to-shards", cxxopts::value<std::string>()->default_value("shards/data"))
      ("data-seed", "seed of the batch sampler", cxxopts::value<std::uint64_t>()->default_value("1"));
  opts.add_options("training")
      ("batch", "sequences per micro-batch", cxxopts::value<Index>()->default_value("16"))
      ("seq-len", "tokens per sequence", cxxopts::value<Index>()->default_value("128"))
      ("grad-accum", "micro-batches per optimiser step", cxxopts::value<Index>()->default_value("1"))
      ("steps", "optimiser steps", cxxopts::value<std::int64_t>()->default_value("200"))
      ("optimizer", "matrix optimiser: muon (AdamW for the rest) or adamw", cxxopts::value<std::string>()->default_value("muon"))
      ("lr", "AdamW learning rate (embedding, scalars, dynamics; matrices with --optimizer adamw)", cxxopts::value<double>()->default_value("0.003"))
      ("lr-matrix", "learning rate of 2-D matrices (Muon default 0.02)", cxxopts::value<double>())
      ("lr-embedding", "learning rate of the embedding / head", cxxopts::value<double>())
      ("lr-scalar", "learning rate of norms, biases, conv", cxxopts::value<double>())
      ("lr-dynamics", "learning rate of A_log, dt_bias, D", cxxopts::value<double>())
      ("weight-decay", "decoupled weight decay of matrices", cxxopts::value<double>()->default_value("0.1"))
      ("beta1", "AdamW beta1", cxxopts::value<double>()->default_value("0.9"))
      ("beta2", "AdamW beta2", cxxopts::value<double>()->default_value("0.95"))
      ("eps", "AdamW epsilon", cxxopts::value<double>()->default_value("1e-8"))
      ("momentum", "Muon Nesterov momentum", cxxopts::value<double>()->default_value("0.95"))
      ("clip", "global gradient-norm clip (0 = off)", cxxopts::value<double>()->default_value("1.0"))
      ("schedule", "constant, cosine (warmup + cosine) or warmdown (warmup + linear warmdown)", cxxopts::value<std::string>()->default_value("cosine"))
      ("warmup", "warmup steps", cxxopts::value<std::int64_t>()->default_value("20"))
      ("warmdown", "warmdown steps (default steps / 5)", cxxopts::value<std::int64_t>())
      ("min-lr-factor", "final learning-rate factor", cxxopts::value<double>()->default_value("0.1"))
      ("ema", "weight EMA decay (0 = off; evaluation and --save use the EMA)", cxxopts::value<double>()->default_value("0"))
      ("z-loss", "z-loss coefficient", cxxopts::value<double>()->default_value("0"))
      ("skip-nonfinite", "skip steps with a non-finite loss or gradient instead of stopping")
      ("recompute", "gradient checkpointing: recompute each block's activations in backward")
      ("drop-path", "drop-path (stochastic depth) rate of every residual branch", cxxopts::value<double>()->default_value("0"));
  opts.add_options("quantisation-aware training")
      ("qat-start", "steps done before QAT: every later step runs forward and backward on fake-quantised weights "
       "(what quantize makes of them, with the --qat-* settings) and applies the gradient to the float weights "
       "(straight-through); evaluations then report the float and the quantised model; the float weights are "
       "what checkpoints and --save hold", cxxopts::value<std::int64_t>())
      ("qat-bits", "bits of the projections (attention, MLP, Mamba-2 / ShortConv in and out), 2 to 8 (quantize --bits)", cxxopts::value<int>()->default_value("6"))
      ("qat-embed-bits", "bits of the embedding and an untied head, 2 to 8, or float16 (quantize --embed-bits)", cxxopts::value<std::string>()->default_value("8"))
      ("qat-rule", "scale rule: rowmax, mse or sdclip (quantize --rule)", cxxopts::value<std::string>()->default_value("rowmax"))
      ("qat-sd-k", "sdclip's multiple of the group's root-mean-square (quantize --sd-k)", cxxopts::value<double>()->default_value("12"))
      ("qat-group", "columns per scale: row, 32, 64 or 128 (quantize --group)", cxxopts::value<std::string>()->default_value("row"))
      ("eval-quantized", "without --qat-start too: every evaluation also reports the model quantised with the --qat-* settings (the post-training quantisation figure)");
  opts.add_options("distillation")
      ("teacher", "distil from this model (forward only): our checkpoint, a Hugging Face directory, a .gguf file "
       "or a .hybq artifact, with the student's vocabulary; loss = kd-alpha * CE + kd-beta * kd-temp^2 * "
       "KL(teacher || student) per scored token", cxxopts::value<std::string>())
      ("kd-alpha", "weight of the cross-entropy against the data's next tokens", cxxopts::value<double>()->default_value("0.5"))
      ("kd-beta", "weight of tau^2 * KL(teacher || student)", cxxopts::value<double>()->default_value("0.5"))
      ("kd-temp", "temperature tau of both softmaxes in the KL", cxxopts::value<double>()->default_value("2"))
      ("kd-topk", "0: match the teacher's full distribution; K > 0: only its K most likely ids, renormalised over "
       "them (the truncated KL; needed by --kd-cache)", cxxopts::value<Index>()->default_value("0"))
      ("pack-documents", "train on packed documents: each batch row may hold several, each starting with the "
       "BOS id (--bos-id), and none attends, convolves or scans across a start (RoPE positions and Mamba-2 / "
       "ShortConv states restart there); validation the same")
      ("bos-id", "the id that starts a document for --pack-documents (default: the --tokenizer's BOS, else 256, "
       "the byte-level shards' BOS)", cxxopts::value<int>())
      ("kd-cache", "keep the teacher's top-k (ids + log-probs per position) in this file, keyed by each batch's "
       "tokens: a later run with the same data order, teacher, --kd-topk and --kd-temp reads them instead of "
       "running the teacher (a mismatching file is an error)", cxxopts::value<std::string>())
      ("kd-features", "feature distillation: S:T,S:T,... pairs of block indices (from 0), each adding the MSE "
       "between student block S's output and teacher block T's output (after their residual adds), through a "
       "learned linear map when the widths differ (kept in checkpoints, not in --save); e.g. 3:6,7:12",
       cxxopts::value<std::string>())
      ("kd-gamma", "weight of the mean feature MSE over the --kd-features pairs",
       cxxopts::value<double>()->default_value("1"));
  opts.add_options("LoRA fine-tuning")
      ("lora-rank", "train rank-R LoRA adapters (PEFT's) on the --lora-targets projections of the loaded model, "
       "its own weights frozen; the optimiser is AdamW at --lora-lr over the adapters only", cxxopts::value<int>())
      ("lora-alpha", "adapter scaling alpha / R (default 2R)", cxxopts::value<double>())
      ("lora-dropout", "dropout on the adapters' input while training", cxxopts::value<double>()->default_value("0"))
      ("lora-targets", "comma-separated projections: attn.q attn.k attn.v attn.o attn.gate mamba.in mamba.out "
       "conv.in conv.out mlp.gate mlp.up mlp.down, or the groups attn, mamba, conv, mlp, all",
       cxxopts::value<std::string>()->default_value("attn"))
      ("lora-lr", "AdamW learning rate of the adapters (no weight decay)", cxxopts::value<double>()->default_value("1e-3"))
      ("lora-load", "continue from adapters saved in this directory (adapter_config.json + "
       "adapter_model.safetensors); rank, alpha and targets come from its config", cxxopts::value<std::string>())
      ("lora-save", "write the trained adapters alone here in PEFT's layout (PEFT loads them on the Hugging Face "
       "model); --save then writes the model with the adapters merged", cxxopts::value<std::string>());
  opts.add_options("output")
      ("eval-every", "evaluate every N steps (and at the end)", cxxopts::value<Index>()->default_value("50"))
      ("eval-batches", "validation batches per evaluation", cxxopts::value<Index>()->default_value("8"))
      ("log-every", "print a progress line every N steps", cxxopts::value<Index>()->default_value("10"))
      ("csv", "append per-step figures to this CSV file", cxxopts::value<std::string>())
      ("ckpt-dir", "write checkpoints here (step_NNNNNNNN.safetensors)", cxxopts::value<std::string>())
      ("ckpt-every", "checkpoint every N steps (and at the end)", cxxopts::value<Index>()->default_value("0"))
      ("keep", "keep the newest N checkpoints", cxxopts::value<int>()->default_value("3"))
      ("resume", "resume from a checkpoint file or the newest one in a directory", cxxopts::value<std::string>())
      ("save", "write the final weights here (loadable by generate --weights)", cxxopts::value<std::string>())
      ("dump-grads", "write the gradients of one batch as safetensors and exit", cxxopts::value<std::string>())
      ("threads", "OpenMP threads", cxxopts::value<int>())
      ("h,help", "print this help");
  Options o{opts.parse(argc, argv)};
  if (o.has("help")) {
    std::cout << opts.help({"model", "data", "training", "quantisation-aware training", "distillation", "LoRA fine-tuning", "output"});
    return 0;
  }
  if (!o.r.unmatched().empty()) fail("unexpected argument '", o.r.unmatched()[0], "'");
#ifdef _OPENMP
  if (o.has("threads")) omp_set_num_threads(o.get<int>("threads"));
#endif
  if (o.has("text-to-shards")) {
    const auto tok = load_tokenizer(o);
    if (tok) HYBRID_CHECK(tok->bos(), "--tokenizer: '", o.get<std::string>("tokenizer"), "' has no BOS piece to start documents with");
    const data::ShardSummary s =
        tok ? data::file_to_shards(o.get<std::string>("text-to-shards"), data::DocFormat::Text, *tok, *tok->bos(),
                                   o.get<std::string>("shard-prefix"), {.tokens_per_shard = 1 << 24})
            : data::file_to_shards(o.get<std::string>("text-to-shards"), data::DocFormat::Text, ByteTokenizer{},
                                   ByteTokenizer::kBos, o.get<std::string>("shard-prefix"), {.tokens_per_shard = 1 << 24});
    for (const auto& f : s.train_files) std::cout << f << "\n";
    for (const auto& f : s.val_files) std::cout << f << "\n";
    return 0;
  }
  const std::string p = o.get<std::string>("precision");
  if (p == "f32") return run<float>(o);
  if (p == "f64") return run<double>(o);
  fail("--precision: '", p, "' is not f32 or f64");
}

int main(int argc, char** argv) { return cli::guarded_main(train_main, argc, argv); }
