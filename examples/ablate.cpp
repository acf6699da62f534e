// ablate: trains several block layouts (M = Mamba-2, A = attention, C = ShortConv) at a
// matched parameter count and the same token budget on the same data, then writes a
// Markdown table, CSVs and a gnuplot plot of the loss curves (see --help).
//
// Default layouts, scaled down to a few blocks (the ratio of mixers is what is kept):
//   mamba2     MMMMMM    pure Mamba-2
//   attention  AAAAAA    pure attention
//   hyb_15_3   MMMMAM    15 Mamba-2 + 3 attention of 18 (5:1, attention one in six)
//   hyb_18_6   MMMAMMMA  18 Mamba-2 + 6 attention of 24 (3:1, attention one in four)
//   attn_k2    MAMAMA    attention every 2nd block
//   attn_k3    MMAMMA    attention every 3rd block
//   lfm2       CCACCA    LFM2-style gated ShortConv with attention every 3rd block
// Mamba-2 blocks carry no MLP (as in Mamba-2 / Nemotron-H's mixer layers); attention and
// ShortConv blocks carry a SwiGLU of hidden width mlp_ratio * d_model. d_model is then
// searched per layout to bring the parameter count closest to --target-params.
//
// --eval-lengths 128,256,...,4096 adds a length-generalisation figure: after training at
// --seq-len, each layout is evaluated on the same task at every listed length (MQAR: the
// same pairs and queries with the query region spread over the longer sequence; text:
// windows of that length), scoring the positions with a target, --eval-seqs sequences per
// length in forwards of --eval-batch. Writes length.csv, a table in results.md and
// length.gnuplot / length.png (accuracy or bits per byte, and loss, against length).
#include <cxxopts.hpp>

#include <algorithm>
#include <atomic>
#include <charconv>
#include <cctype>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <limits>
#include <memory>
#include <sstream>
#include <thread>

#include <hybrid/core/atomic_file.hpp>
#include <hybrid/data/synthetic.hpp>
#include <hybrid/data/text.hpp>
#include <hybrid/train/trainer.hpp>

#include "cli.hpp"
#ifdef __GLIBC__
#include <malloc.h>
#endif
#ifdef _OPENMP
#include <omp.h>
#endif

using namespace hybrid;
namespace fs = std::filesystem;

namespace {

using S = float;
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

const char* kDefaultLayouts =
    "mamba2=MMMMMM,attention=AAAAAA,hyb_15_3=MMMMAM,hyb_18_6=MMMAMMMA,attn_k2=MAMAMA,"
    "attn_k3=MMAMMA,lfm2=CCACCA";

struct Options {
  cxxopts::ParseResult r;
  template <class T>
  T get(const char* k) const { return r[k].as<T>(); }
  bool has(const char* k) const { return r.count(k) > 0; }
};

struct Layout {
  std::string name, blocks;
};

// "a=MMA,AAA,MMMA MMMA" → {a, MMA}, {AAA, AAA}, {MMMAMMMA, MMMA MMMA}. Names go into CSV and gnuplot strings, so they are
// restricted to a safe alphabet.
std::vector<Layout> parse_layouts(const std::string& text) {
  std::vector<Layout> out;
  std::stringstream ss(text);
  std::string item;
  while (std::getline(ss, item, ',')) {
    if (item.empty()) continue;
    const auto eq = item.find('=');
    Layout l{eq == std::string::npos ? item : item.substr(0, eq),
             eq == std::string::npos ? item : item.substr(eq + 1)};
    if (eq == std::string::npos) std::erase_if(l.name, [](char c) { return c == ' ' || c == '-'; });
    HYBRID_CHECK(!l.name.empty() && !l.blocks.empty(), "--layouts: '", item,
                 "' needs the form NAME=LAYOUT or LAYOUT");
    for (char c : l.name)
      HYBRID_CHECK(std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '-' || c == '.' || c == '+',
                   "--layouts: name '", l.name, "' may hold only letters, digits, '_', '-', '.', '+'");
    for (const auto& p : out)
      HYBRID_CHECK(p.name != l.name, "--layouts: the name '", l.name, "' appears twice");
    out.push_back(l);
  }
  HYBRID_CHECK(!out.empty(), "--layouts: no layout given");
  return out;
}

// "512,128,256" → {128, 256, 512}: positive integers, any order, each at most once.
std::vector<Index> parse_lengths(const std::string& text) {
  std::vector<Index> out;
  std::stringstream ss(text);
  std::string item;
  while (std::getline(ss, item, ',')) {
    long long v = 0;
    const char* end = item.data() + item.size();
    const auto [p, ec] = std::from_chars(item.data(), end, v);
    HYBRID_CHECK(!item.empty(), "--eval-lengths: '", text, "' has an empty entry; give lengths as 128,256,512");
    HYBRID_CHECK(ec == std::errc() && p == end && v > 0, "--eval-lengths: '", item,
                 "' is not a positive integer (give lengths as 128,256,512)");
    HYBRID_CHECK(std::find(out.begin(), out.end(), Index(v)) == out.end(), "--eval-lengths: the length ",
                 v, " appears twice");
    out.push_back(Index(v));
  }
  HYBRID_CHECK(!out.empty() && text.back() != ',', "--eval-lengths: '", text,
               "' has an empty entry; give a comma-separated list of lengths, e.g. 128,256,512");
  std::sort(out.begin(), out.end());
  return out;
}

// The data of one column of the table: the synthetic task (or --data text), or --lm-data
// text beside it. `k` is the seed index: every layout sees the same batches for a given k.
enum class DataKind { Primary, Text };

std::unique_ptr<data::Source> make_source(const Options& o, DataKind kind, int k) {
  const auto seed = o.get<std::uint64_t>("data-seed") + std::uint64_t(k);
  if (kind == DataKind::Text) return std::make_unique<data::TextSource>(o.get<std::string>("lm-data"), seed);
  if (o.has("data")) return std::make_unique<data::TextSource>(o.get<std::string>("data"), seed);
  const std::string task = o.get<std::string>("task");
  const int vocab = o.get<int>("task-vocab");
  if (task == "mqar")
    return data::make_mqar({.vocab = vocab, .n_pairs = o.get<Index>("pairs"),
                            .n_queries = o.get<Index>("queries")}, seed);
  if (task == "copy") return data::make_selective_copy({.vocab = vocab}, seed);
  if (task == "induction") return data::make_induction({.vocab = vocab}, seed);
  fail("--task: '", task, "' is not mqar, copy or induction");
}

bool has_mlp(const std::string& layout, const Options& o) {
  return layout.find_first_of("AC") != std::string::npos || o.get<std::string>("mamba-mlp") == "swiglu";
}

// A layout's size: the width, the SwiGLU hidden width of its MLPs and Mamba-2's inner
// width (expand * d_model). The parameter matching searches these; d_state stays as given,
// so that every Mamba-2 head keeps the same state size.
struct Shape {
  int d_model = 0, hidden = 0, d_inner = 0;
  Index params = 0;
};

bool has_mamba(const std::string& layout) { return layout.find('M') != std::string::npos; }

// expand with expand * D == d_inner exactly (as Mamba2Spec's validation requires), or 0.
double expand_for(int d_inner, int D) {
  const double e = double(d_inner) / double(D);
  for (double c : {e, std::nextafter(e, 0.0), std::nextafter(e, 4096.0)})
    if (c * D == double(d_inner)) return c;
  return 0;
}

// The description of `layout` at shape s; throws hybrid::Error when a spec is invalid.
ModelDesc make_desc(const std::string& layout, const Shape& s, int vocab, const Options& o) {
  const int D = s.d_model, P = o.get<int>("head-dim");
  const bool attention = layout.find('A') != std::string::npos;
  HYBRID_CHECK(!attention || D % P == 0, "d_model ", D, " is not a multiple of --head-dim ", P);
  const ModelSpec m{.vocab = vocab, .d_model = D, .init_std = o.get<double>("init-std")};
  const Mamba2Spec mb{.d_state = o.get<int>("d-state"), .expand = expand_for(s.d_inner, D),
                      .headdim = o.get<int>("headdim")};
  const GqaSpec at{.n_heads = std::max(1, D / P), .n_kv_heads = std::max(1, D / P), .head_dim = P,
                   .qk_norm = o.has("qk-norm")};
  const ChannelDesc mlp = SwiGluSpec{{s.hidden}};
  const ChannelDesc mamba_mlp = o.get<std::string>("mamba-mlp") == "swiglu" ? mlp : NoChannelSpec{};
  ModelDesc d = desc_from_layout(layout, m, mb, at, ShortConvSpec{}, mamba_mlp, mlp);
  validate(d);
  return d;
}

Shape default_shape(int D, const Options& o) {
  return Shape{D, std::max(1, int(std::lround(o.get<double>("mlp-ratio") * D))),
               int(o.get<double>("expand") * D), 0};
}

// The parameter count of a shape, or -1 when the shape is not a valid model.
Index count_of(const std::string& layout, const Shape& s, int vocab, const Options& o, std::string* error = nullptr) {
  try {
    return param_count(make_desc(layout, s, vocab, o));
  } catch (const Error& e) {
    if (error) *error = e.what();
    return -1;
  }
}

// Parameter matching: the multiple of --d-step whose count at the default MLP ratio and
// expand comes closest to the target; then, at that width and two steps either side, the
// MLP hidden width (layouts with MLPs) and Mamba-2's inner width (multiples of --headdim;
// layouts with Mamba-2 blocks), each within [1/2, 2] of its default. Among the shapes
// within --match-tol of the target, the one that departs least from the default shape wins
// (the relative changes of the width, the hidden width and the inner width, plus 5x the
// relative miss); if none is within, the closest. The table shows the realised count.
Shape match_shape(const std::string& layout, int vocab, const Options& o) {
  const Index target = o.get<Index>("target-params");
  const int step = o.get<int>("d-step"), P = o.get<int>("headdim");
  const auto miss_of = [&](Index n) { return n > target ? n - target : target - n; };
  int best_D = 0;
  Index best_miss = std::numeric_limits<Index>::max();
  std::string last_error;
  for (int D = step; D <= 4096; D += step) {
    const Index n = count_of(layout, default_shape(D, o), vocab, o, &last_error);
    if (n < 0) continue;
    const Index miss = miss_of(n);
    if (miss < best_miss) best_D = D, best_miss = miss;
    if (n > target && miss > best_miss) break;
  }
  HYBRID_CHECK(best_D > 0, "layout '", layout, "': no d_model that is a multiple of ", step,
               " gives a valid model (", last_error, ")");
  const double tol = o.get<double>("match-tol") * double(target);
  const bool mlp = has_mlp(layout, o), mamba = has_mamba(layout);
  Shape best{};
  double best_dev = std::numeric_limits<double>::infinity();
  best_miss = std::numeric_limits<Index>::max();
  for (int D = std::max(step, best_D - 2 * step); D <= best_D + 2 * step; D += step) {
    const Shape base = default_shape(D, o);
    const int h_lo = mlp ? std::max(1, base.hidden / 2) : base.hidden, h_hi = mlp ? 2 * base.hidden : base.hidden;
    std::vector<int> inner{base.d_inner};
    if (mamba)
      for (int di = P; di <= 2 * base.d_inner; di += P)
        if (2 * di >= base.d_inner && di != base.d_inner) inner.push_back(di);
    for (int h = h_lo; h <= h_hi; ++h)
      for (int di : inner) {
        Shape s{D, h, di, 0};
        s.params = count_of(layout, s, vocab, o);
        if (s.params < 0) continue;
        const Index miss = miss_of(s.params);
        const double dev = std::abs(double(h) / double(base.hidden) - 1) +
                           std::abs(double(di) / double(std::max(1, base.d_inner)) - 1) +
                           std::abs(double(D) / double(best_D) - 1) + 5 * double(miss) / double(target);
        const bool within = double(miss) <= tol, best_within = double(best_miss) <= tol;
        if (within ? (!best_within || dev < best_dev) : (!best_within && miss < best_miss))
          best = s, best_dev = dev, best_miss = miss;
      }
  }
  HYBRID_CHECK(best.d_model > 0, "layout '", layout, "': no valid shape near d_model ", best_D);
  return best;
}

// Process memory from /proc (Linux): VmHWM (peak) in bytes, or -1 when unavailable.
long long peak_rss_bytes() {
  std::ifstream f("/proc/self/status");
  std::string line;
  while (std::getline(f, line))
    if (line.rfind("VmHWM:", 0) == 0) return std::atoll(line.c_str() + 6) * 1024;
  return -1;
}
// Resets VmHWM to the current RSS so that each layout's peak is its own (after handing
// the previous layouts' freed memory back to the system where the allocator can).
bool reset_peak_rss() {
#ifdef __GLIBC__
  malloc_trim(0);
#endif
  std::ofstream f("/proc/self/clear_refs");
  f << "5";
  f.flush();
  return bool(f);
}

struct CurvePoint {
  std::int64_t step;
  Index tokens;
  double train_loss, val_loss, val_metric;  // val_* NaN between evaluations
};

struct LengthPoint {
  Index length = 0, sequences = 0, scored = 0;
  double loss = kNaN, accuracy = kNaN, bits_per_byte = kNaN, seconds = 0;
};

// One training run: a layout on one data kind at one learning-rate scale and one seed.
struct Run {
  std::size_t layout = 0;
  DataKind data = DataKind::Primary;
  std::size_t lr = 0;  // index into the learning-rate scales
  int seed = 0;        // seed index k: weights seeded --seed + k, data --data-seed + k
};

struct Result {
  Run run;
  Layout layout;
  Shape shape;
  double lr_scale = 1;
  std::int64_t steps = 0;
  Index tokens = 0;
  train::EvalResult val;
  double train_seconds = 0, train_tok_s = 0, decode_tok_s = 0;
  std::size_t train_bytes = 0;  // parameters + gradients + optimiser state + tape arena
  long long rss_bytes = -1;     // process peak RSS during this run's training
  Index kv_bytes_per_token = 0, state_bytes = 0;
  std::vector<CurvePoint> curve;
  std::vector<LengthPoint> lengths;  // with --eval-lengths (primary data)
};

// Greedy decoding, batch 1: prefill `prompt`, then time n single-token steps.
double decode_tokens_per_s(const RuntimeModel<S>& model, const std::vector<int>& prompt, int n) {
  std::vector<SequenceState<S>> states;
  const auto argmax = [](const Mat<S>& l) {
    Index i = 0;
    l.row(l.rows() - 1).maxCoeff(&i);
    return int(i);
  };
  int tok = argmax(model.prefill({prompt}, states)[0]);
  const auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < n; ++i) tok = argmax(model.step(std::span<const int>(&tok, 1), states));
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return double(n) / std::max(s, 1e-12);
}

// The trained model on --eval-seqs validation sequences of each length, through the
// inference forward (no tape kept; one reused scratch tape) in slices of --eval-batch
// sequences so that memory stays small at long lengths. Scores the positions with a
// target, as the trainer's evaluate() does.
std::vector<LengthPoint> evaluate_lengths(const RuntimeModel<S>& model, data::Source& src,
                                          const std::vector<Index>& lengths, const Options& o,
                                          const std::string& name, bool synthetic) {
  const Index n_seqs = o.get<Index>("eval-seqs"), per_call = o.get<Index>("eval-batch");
  std::vector<LengthPoint> out;
  Tape<S> ctx(false);
  for (const Index L : lengths) {
    const auto t0 = std::chrono::steady_clock::now();
    const data::Batch all = src.val_batches(n_seqs, L, 1)[0];  // text: fewer rows if the split is short
    LengthPoint p;
    p.length = L;
    p.sequences = all.B;
    double nats = 0, right = 0;
    for (Index r0 = 0; r0 < all.B; r0 += per_call) {
      data::Batch b;
      b.B = std::min(per_call, all.B - r0);
      b.T = L;
      b.tokens.assign(all.tokens.begin() + r0 * L, all.tokens.begin() + (r0 + b.B) * L);
      b.targets.assign(all.targets.begin() + r0 * L, all.targets.begin() + (r0 + b.B) * L);
      const Index n = b.scored();
      if (n == 0) continue;
      const Mat<S> logits = model.forward(b.tokens, b.B, L, nullptr, true, &ctx);  // (B*L, V)
      nats += ops::cross_entropy_forward<S>(CView<S>(logits), b.targets.data(), nullptr, 0);
      right += data::accuracy(logits, b) * double(n);
      p.scored += n;
    }
    HYBRID_CHECK(p.scored > 0, "--eval-lengths: no scored positions at length ", L);
    p.loss = nats / double(p.scored);
    p.accuracy = right / double(p.scored);
    p.bits_per_byte = data::bits_per_byte(p.loss, src.bytes_per_token());
    p.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::printf("  %s length %5lld | loss %.4f | %s %.4f | %lld scored in %lld sequences | %.1f s\n",
                name.c_str(), (long long)L, p.loss, synthetic ? "acc" : "bpb",
                synthetic ? p.accuracy : p.bits_per_byte, (long long)p.scored, (long long)p.sequences,
                p.seconds);
    std::fflush(stdout);
    out.push_back(p);
  }
  return out;
}

// The training settings of one run: every learning rate (AdamW's and the matrices') times
// lr_scale, the weight seed --seed + k.
train::TrainConfig train_config(const Options& o, double lr_scale = 1, int k = 0) {
  train::TrainConfig c;
  c.batch = o.get<Index>("batch");
  c.seq_len = o.get<Index>("seq-len");
  c.steps = std::max<std::int64_t>(1, o.get<Index>("tokens") / (c.batch * c.seq_len));
  const std::string kind = o.get<std::string>("optimizer");
  HYBRID_CHECK(kind == "muon" || kind == "adamw", "--optimizer: '", kind, "' is not muon or adamw");
  c.optim.matrix_optimizer = kind == "muon" ? train::MatrixOptimizer::Muon : train::MatrixOptimizer::AdamW;
  const double lr = o.get<double>("lr");
  c.optim.embedding.lr = c.optim.scalar.lr = c.optim.dynamics.lr = lr * lr_scale;
  if (o.has("lr-matrix")) c.optim.matrix.lr = o.get<double>("lr-matrix");
  else if (kind == "adamw") c.optim.matrix.lr = lr;
  c.optim.matrix.lr *= lr_scale;
  const std::string sched = o.get<std::string>("schedule");
  HYBRID_CHECK(sched == "cosine" || sched == "constant", "--schedule: '", sched, "' is not cosine or constant");
  c.schedule.kind = sched == "cosine" ? train::Schedule::WarmupCosine : train::Schedule::Constant;
  c.schedule.total = c.steps;
  c.schedule.min_factor = 0.1;
  c.schedule.warmup = std::min<std::int64_t>(o.get<std::int64_t>("warmup"), c.steps / 2);
  c.optim.max_grad_norm = o.get<double>("clip");
  c.eval_batches = o.get<Index>("eval-batches");
  c.seed = o.get<std::uint64_t>("seed") + std::uint64_t(k);
  return c;
}

// What the runs share: the layouts, the matched shape of each layout per data kind, the
// learning-rate scales.
struct Plan {
  std::vector<Layout> layouts;
  std::vector<double> lr_scales;
  int seeds = 1;
  bool text = false;                        // --lm-data: a text column beside the task
  std::vector<Shape> primary, text_shapes;  // per layout
  const Shape& shape(const Run& r) const {
    return (r.data == DataKind::Text ? text_shapes : primary)[r.layout];
  }
};

std::string run_name(const Plan& p, const Run& r) {
  char b[64];
  std::snprintf(b, sizeof b, " lr x%g seed %d", p.lr_scales[r.lr], r.seed);
  return p.layouts[r.layout].name + (r.data == DataKind::Text ? " [text]" : "") +
         (p.lr_scales.size() > 1 || p.seeds > 1 ? std::string(b) : std::string());
}

// measure_rss: only when this is the one run in flight (VmHWM is per process).
Result run_one(const Plan& plan, const Run& run, const Options& o, const std::vector<Index>& lengths,
               bool measure_rss) {
  auto src = make_source(o, run.data, run.seed);  // fresh per run: same batches for every layout
  const bool synthetic = run.data == DataKind::Primary && !o.has("data");
  const int vocab = src->vocab_needed();
  Result r;
  r.run = run;
  r.layout = plan.layouts[run.layout];
  r.shape = plan.shape(run);
  r.lr_scale = plan.lr_scales[run.lr];
  const std::string name = run_name(plan, run);
  const train::TrainConfig cfg = train_config(o, r.lr_scale, run.seed);
  RuntimeModel<S> model(make_desc(r.layout.blocks, r.shape, vocab, o), cfg.seed);
  HYBRID_CHECK(model.param_count() == r.shape.params, "ablate: layout '", r.layout.name, "' built ",
               model.param_count(), " parameters, the matching counted ", r.shape.params);
  std::printf("== %s (%s): d_model %d, hidden %d, d_inner %d, %lld parameters, %lld steps of %lld tokens\n",
              name.c_str(), model.layout_string().c_str(), r.shape.d_model, r.shape.hidden, r.shape.d_inner,
              (long long)r.shape.params, (long long)cfg.steps, (long long)(cfg.batch * cfg.seq_len));
  std::fflush(stdout);

  const bool rss_ok = measure_rss && reset_peak_rss();
  train::Trainer<S> tr(model, *src, cfg);
  const Index eval_every = o.get<Index>("eval-every");
  for (std::int64_t s = 0; s < cfg.steps; ++s) {
    const train::StepResult st = tr.step();
    r.train_seconds += st.seconds;
    r.tokens += st.tokens;
    CurvePoint p{st.step, r.tokens, st.loss, kNaN, kNaN};
    if ((eval_every > 0 && st.step % eval_every == 0) || st.step == cfg.steps) {
      r.val = tr.evaluate();
      p.val_loss = r.val.loss;
      p.val_metric = synthetic ? r.val.accuracy : r.val.bits_per_byte;
      std::printf("  %s step %5lld/%lld | train loss %.4f | val loss %.4f | %s %.4f | %.0f tok/s\n",
                  name.c_str(), (long long)st.step, (long long)cfg.steps, st.loss, r.val.loss,
                  synthetic ? "acc" : "bpb", p.val_metric, double(r.tokens) / r.train_seconds);
      std::fflush(stdout);
    }
    r.curve.push_back(p);
  }
  r.steps = cfg.steps;
  r.train_tok_s = double(r.tokens) / std::max(r.train_seconds, 1e-12);
  r.rss_bytes = rss_ok ? peak_rss_bytes() : -1;
  std::size_t opt_elems = 0;
  tr.optimizer().visit_state([&](const std::string&, const MatMap<S>& m) { opt_elems += std::size_t(m.size()); });
  r.train_bytes = tr.arena_bytes() +
                  sizeof(S) * (2 * std::size_t(r.shape.params) + opt_elems);  // weights + grads + state

  for (int i = 0; i < model.n_blocks(); ++i)
    std::visit(
        [&](const auto& mx) {
          if constexpr (std::is_same_v<std::decay_t<decltype(mx)>, GqaLayer<S>>)
            r.kv_bytes_per_token += mx.state_bytes_per_token();
          else r.state_bytes += mx.state_bytes();
        },
        model.block(i).mixer());
  if (!lengths.empty() && run.data == DataKind::Primary)
    r.lengths = evaluate_lengths(model, *src, lengths, o, name, synthetic);
  const data::Batch vb = src->val_batches(1, cfg.seq_len, 1)[0];
  const Index plen = std::clamp<Index>(o.get<Index>("prefill"), 1, vb.T);
  r.decode_tok_s = decode_tokens_per_s(
      model, std::vector<int>(vb.tokens.begin(), vb.tokens.begin() + plen), o.get<int>("decode-tokens"));
  return r;
}

// Every run (layout x data kind x learning-rate scale x seed) on `--jobs` worker threads,
// each single-threaded inside (OpenMP's thread count is per thread, so each worker sets its
// own). Results keep the order of `runs`.
std::vector<Result> run_all(const Plan& plan, const std::vector<Run>& runs, const Options& o,
                            const std::vector<Index>& lengths) {
  const int jobs = std::min<int>(o.get<int>("jobs"), int(runs.size()));
  std::vector<Result> rs(runs.size());
  std::vector<std::exception_ptr> errors(runs.size());
  std::atomic<std::size_t> next{0};
  auto worker = [&] {
#ifdef _OPENMP
    if (o.get<int>("threads") > 0) omp_set_num_threads(o.get<int>("threads"));
#endif
    for (std::size_t i; (i = next++) < runs.size();) {
      try {
        rs[i] = run_one(plan, runs[i], o, lengths, jobs == 1);
      } catch (...) {
        errors[i] = std::current_exception();
      }
    }
  };
  std::vector<std::thread> pool;
  for (int j = 0; j < jobs; ++j) pool.emplace_back(worker);
  for (auto& t : pool) t.join();
  for (const auto& e : errors)
    if (e) std::rethrow_exception(e);
  return rs;
}

// ---- aggregation over seeds ---------------------------------------------------------

// Mean and sample standard deviation (n - 1; 0 for one value) of finite values.
struct Stat {
  double mean = kNaN, std = kNaN;
  int n = 0;
};
Stat stat_of(const std::vector<double>& v) {
  Stat s;
  double sum = 0;
  for (double x : v)
    if (std::isfinite(x)) sum += x, ++s.n;
  if (s.n == 0) return s;
  s.mean = sum / s.n;
  double ss = 0;
  for (double x : v)
    if (std::isfinite(x)) ss += (x - s.mean) * (x - s.mean);
  s.std = s.n > 1 ? std::sqrt(ss / (s.n - 1)) : 0;
  return s;
}

// The runs of one layout on one data kind at one learning-rate scale (its seeds), and
// their statistics.
struct Cell {
  std::size_t layout = 0;
  DataKind data = DataKind::Primary;
  std::size_t lr = 0;
  std::vector<const Result*> runs;
  Stat loss, metric, train_tok_s, decode_tok_s;
  bool best = false;  // the best learning rate of its layout and data kind
};

// metric: accuracy (synthetic; higher is better) or bits per byte (text; lower is better).
std::vector<Cell> cells_of(const Plan& plan, const std::vector<Result>& rs, bool synthetic_primary) {
  std::vector<Cell> cells;
  for (std::size_t l = 0; l < plan.layouts.size(); ++l)
    for (DataKind d : {DataKind::Primary, DataKind::Text}) {
      if (d == DataKind::Text && !plan.text) continue;
      const bool synthetic = d == DataKind::Primary && synthetic_primary;
      const std::size_t first = cells.size();
      for (std::size_t k = 0; k < plan.lr_scales.size(); ++k) {
        Cell c{l, d, k, {}, {}, {}, {}, {}, false};
        std::vector<double> loss, metric, tps, dps;
        for (const Result& r : rs)
          if (r.run.layout == l && r.run.data == d && r.run.lr == k) {
            c.runs.push_back(&r);
            loss.push_back(r.val.loss);
            metric.push_back(synthetic ? r.val.accuracy : r.val.bits_per_byte);
            tps.push_back(r.train_tok_s);
            dps.push_back(r.decode_tok_s);
          }
        c.loss = stat_of(loss), c.metric = stat_of(metric), c.train_tok_s = stat_of(tps), c.decode_tok_s = stat_of(dps);
        cells.push_back(std::move(c));
      }
      // The best scale: highest mean accuracy (ties: lower mean loss) or lowest mean bpb;
      // a diverged scale (non-finite mean) never wins over a finite one.
      std::size_t best = first;
      const auto better = [&](const Cell& a, const Cell& b) {
        if (!std::isfinite(a.metric.mean)) return false;
        if (!std::isfinite(b.metric.mean)) return true;
        if (synthetic) return a.metric.mean > b.metric.mean || (a.metric.mean == b.metric.mean && a.loss.mean < b.loss.mean);
        return a.metric.mean < b.metric.mean;
      };
      for (std::size_t i = first + 1; i < cells.size(); ++i)
        if (better(cells[i], cells[best])) best = i;
      cells[best].best = true;
    }
  return cells;
}

const Cell* best_cell(const std::vector<Cell>& cells, std::size_t layout, DataKind d) {
  for (const Cell& c : cells)
    if (c.layout == layout && c.data == d && c.best) return &c;
  return nullptr;
}

// ---- outputs -----------------------------------------------------------------------

void write_atomic(const fs::path& path, const std::string& text) {
  write_file_atomic(path.string(), "ablate: '" + path.string() + "'", text);
}

std::string fmt(const char* f, double v) {
  if (std::isnan(v)) return "";
  char b[64];
  std::snprintf(b, sizeof b, f, v);
  return b;
}
std::string mib(double bytes) { return bytes < 0 ? "-" : fmt("%.2f", bytes / (1 << 20)); }

std::string pm(const char* f, const Stat& s) {
  if (std::isnan(s.mean)) return "";
  return s.n > 1 ? fmt(f, s.mean) + " ± " + fmt(f, s.std) : fmt(f, s.mean);
}
std::string pct(Index n, Index target) { return fmt("%+.1f%%", 100.0 * (double(n) / double(target) - 1)); }

const char* data_label(DataKind d) { return d == DataKind::Text ? "text" : "primary"; }

// The main table: one row per layout, its realised shape and parameter count, and per data
// kind the best learning-rate scale's mean ± std over seeds; then, with a sweep, every
// scale's figures.
std::string markdown(const Plan& plan, const std::vector<Cell>& cells, const std::string& setup,
                     bool synthetic, Index target, const std::string& primary_name, const Options& o) {
  std::ostringstream os;
  const char* pmetric = synthetic ? "acc" : "bpb";
  os << setup << "\n\n| layout | blocks | d_model | hidden | d_inner | params (vs target) | "
     << primary_name << " val " << pmetric << " | val loss | best lr × |";
  if (plan.text) os << " text params | text val bpb | text best lr × |";
  os << " train tok/s | train MiB | peak RSS MiB | decode tok/s | KV B/token | state B/seq |\n|---|---|--:|--:|--:|--:|--:|--:|--:|";
  if (plan.text) os << "--:|--:|--:|";
  os << "--:|--:|--:|--:|--:|--:|\n";
  for (std::size_t l = 0; l < plan.layouts.size(); ++l) {
    const Layout& lay = plan.layouts[l];
    const Shape& s = plan.primary[l];
    const Cell* c = best_cell(cells, l, DataKind::Primary);
    const Result& r0 = *c->runs.front();
    os << "| " << lay.name << " | " << lay.blocks << " | " << s.d_model << " | "
       << (has_mlp(lay.blocks, o) ? std::to_string(s.hidden) : std::string("-")) << " | "
       << (has_mamba(lay.blocks) ? std::to_string(s.d_inner) : std::string("-")) << " | "
       << s.params << " (" << pct(s.params, target) << ") | " << pm("%.4f", c->metric) << " | "
       << pm("%.4f", c->loss) << " | " << fmt("%g", plan.lr_scales[c->lr]) << " |";
    if (plan.text) {
      const Cell* t = best_cell(cells, l, DataKind::Text);
      os << ' ' << plan.text_shapes[l].params << " (" << pct(plan.text_shapes[l].params, target) << ") | "
         << pm("%.4f", t->metric) << " | " << fmt("%g", plan.lr_scales[t->lr]) << " |";
    }
    os << ' ' << fmt("%.0f", c->train_tok_s.mean) << " | " << mib(double(r0.train_bytes)) << " | "
       << mib(double(r0.rss_bytes)) << " | " << fmt("%.0f", c->decode_tok_s.mean) << " | "
       << r0.kv_bytes_per_token << " | " << r0.state_bytes << " |\n";
  }
  const int seeds = plan.seeds;
  os << "\nEach figure is the mean ± sample standard deviation over " << seeds << " seed" << (seeds > 1 ? "s" : "")
     << " (weights and data order both change with the seed; every layout sees the same batches for a "
        "given seed) at the learning-rate scale that did best for that layout (highest mean accuracy, or "
        "lowest mean bits per byte), chosen from the sweep below. hidden: the SwiGLU width of the MLPs, "
        "d_inner: Mamba-2's expand * d_model; d_model, hidden and d_inner are searched so that the parameter count lands within ±"
     << fmt("%g", 100 * o.get<double>("match-tol")) << "% of the target. "
        "train MiB = weights + gradients + optimiser state + the tape's arena after training (fp32; first "
        "seed); peak RSS = the process's VmHWM, reset before each run (only with --jobs 1). Decode: batch 1, "
        "greedy, after a short prefill. KV B/token: attention cache bytes per token of context, summed over "
        "attention blocks; state B/seq: Mamba-2 / ShortConv state per sequence, constant in context length.\n";
  if (plan.lr_scales.size() > 1) {
    os << "\nLearning-rate sweep (every learning rate times the scale; **bold**: the best of the layout):\n\n"
       << "| layout | data | lr × | val metric | val loss | per seed |\n|---|---|--:|--:|--:|---|\n";
    for (const Cell& c : cells) {
      const bool syn = c.data == DataKind::Primary && synthetic;
      std::string seeds_text;
      for (const Result* r : c.runs)
        seeds_text += (seeds_text.empty() ? "" : ", ") + fmt("%.4f", syn ? r->val.accuracy : r->val.bits_per_byte);
      const std::string m = pm("%.4f", c.metric);
      os << "| " << plan.layouts[c.layout].name << " | " << (c.data == DataKind::Text ? "text bpb" : (syn ? "acc" : "bpb"))
         << " | " << fmt("%g", plan.lr_scales[c.lr]) << " | " << (c.best ? "**" + m + "**" : m) << " | "
         << pm("%.4f", c.loss) << " | " << seeds_text << " |\n";
    }
  }
  return os.str();
}

// Rows: layouts (their best learning-rate scale); columns: the evaluation lengths. One
// table of accuracy (or bits per byte for text) and one of loss, as a recall model can keep
// its argmax while its loss grows; mean ± std over seeds.
std::string length_markdown(const Plan& plan, const std::vector<Cell>& cells, Index train_T, bool synthetic) {
  const auto& pts = best_cell(cells, 0, DataKind::Primary)->runs.front()->lengths;
  std::ostringstream os;
  const auto table = [&](const char* what, const char* f, auto&& value) {
    os << "\n| " << what << " |";
    for (const auto& p : pts) os << " L=" << p.length << (p.length == train_T ? " (train)" : "") << " |";
    os << "\n|---|";
    for (std::size_t i = 0; i < pts.size(); ++i) os << "--:|";
    os << '\n';
    for (std::size_t l = 0; l < plan.layouts.size(); ++l) {
      const Cell* c = best_cell(cells, l, DataKind::Primary);
      os << "| " << plan.layouts[l].name << " |";
      for (std::size_t i = 0; i < pts.size(); ++i) {
        std::vector<double> v;
        for (const Result* r : c->runs) v.push_back(value(r->lengths[i]));
        os << ' ' << pm(f, stat_of(v)) << " |";
      }
      os << '\n';
    }
  };
  Index lo = pts.front().scored, hi = lo;
  for (const auto& p : pts) lo = std::min(lo, p.scored), hi = std::max(hi, p.scored);
  os << "\nLength generalisation: trained at T = " << train_T << ", evaluated at each length L on "
     << pts.front().sequences << " validation sequences (" << lo;
  if (hi != lo) os << " to " << hi;
  os << " scored positions per length), at each layout's best learning-rate scale.\n";
  if (synthetic) table("layout: val acc", "%.4f", [](const LengthPoint& p) { return p.accuracy; });
  else table("layout: val bpb", "%.4f", [](const LengthPoint& p) { return p.bits_per_byte; });
  table("layout: val loss", "%.4f", [](const LengthPoint& p) { return p.loss; });
  return os.str();
}

// length.csv: per layout (best scale) and length, mean and std over seeds; length_runs.csv:
// every run.
std::string length_csv(const Plan& plan, const std::vector<Cell>& cells, bool synthetic) {
  std::ostringstream os;
  os << "layout,length,accuracy,accuracy_std,loss,loss_std,scored_positions"
     << (synthetic ? "" : ",bits_per_byte,bits_per_byte_std") << '\n';
  for (std::size_t l = 0; l < plan.layouts.size(); ++l) {
    const Cell* c = best_cell(cells, l, DataKind::Primary);
    const auto& pts = c->runs.front()->lengths;
    for (std::size_t i = 0; i < pts.size(); ++i) {
      std::vector<double> acc, loss, bpb;
      for (const Result* r : c->runs)
        acc.push_back(r->lengths[i].accuracy), loss.push_back(r->lengths[i].loss), bpb.push_back(r->lengths[i].bits_per_byte);
      const Stat a = stat_of(acc), lo = stat_of(loss), b = stat_of(bpb);
      os << plan.layouts[l].name << ',' << pts[i].length << ',' << fmt("%.6f", a.mean) << ',' << fmt("%.6f", a.std)
         << ',' << fmt("%.6f", lo.mean) << ',' << fmt("%.6f", lo.std) << ',' << pts[i].scored;
      if (!synthetic) os << ',' << fmt("%.6f", b.mean) << ',' << fmt("%.6f", b.std);
      os << '\n';
    }
  }
  return os.str();
}
std::string length_runs_csv(const Plan& plan, const std::vector<Result>& rs) {
  std::ostringstream os;
  os << "layout,lr_scale,seed,length,accuracy,loss,bits_per_byte,scored_positions\n";
  for (const Result& r : rs)
    for (const auto& p : r.lengths)
      os << r.layout.name << ',' << plan.lr_scales[r.run.lr] << ',' << r.run.seed << ',' << p.length << ','
         << fmt("%.6f", p.accuracy) << ',' << fmt("%.6f", p.loss) << ',' << fmt("%.6f", p.bits_per_byte) << ','
         << p.scored << '\n';
  return os.str();
}

std::string results_csv(const Plan& plan, const std::vector<Result>& rs, const std::vector<Cell>& cells, Index target) {
  std::ostringstream os;
  os << "name,layout,data,lr_scale,seed,best_lr,d_model,hidden,d_inner,params,params_vs_target,steps,tokens,"
        "val_loss,val_accuracy,val_bpb,train_tokens_per_s,train_seconds,train_bytes,peak_rss_bytes,"
        "decode_tokens_per_s,kv_bytes_per_token,state_bytes_per_seq\n";
  for (const Result& r : rs) {
    const Cell* b = best_cell(cells, r.run.layout, r.run.data);
    os << r.layout.name << ',' << r.layout.blocks << ',' << data_label(r.run.data) << ','
       << plan.lr_scales[r.run.lr] << ',' << r.run.seed << ',' << (b->lr == r.run.lr ? 1 : 0) << ','
       << r.shape.d_model << ',' << r.shape.hidden << ',' << r.shape.d_inner << ',' << r.shape.params << ','
       << fmt("%.4f", double(r.shape.params) / double(target)) << ',' << r.steps << ',' << r.tokens << ','
       << fmt("%.6f", r.val.loss) << ',' << fmt("%.6f", r.val.accuracy) << ','
       << fmt("%.6f", r.val.bits_per_byte) << ',' << fmt("%.1f", r.train_tok_s) << ','
       << fmt("%.3f", r.train_seconds) << ',' << r.train_bytes << ',' << r.rss_bytes << ','
       << fmt("%.1f", r.decode_tok_s) << ',' << r.kv_bytes_per_token << ',' << r.state_bytes << '\n';
  }
  return os.str();
}

// Every run's curve.
std::string curves_csv(const Plan& plan, const std::vector<Result>& rs) {
  std::ostringstream os;
  os << "layout,data,lr_scale,seed,step,tokens,train_loss,val_loss,val_metric\n";
  for (const Result& r : rs)
    for (const auto& p : r.curve)
      os << r.layout.name << ',' << data_label(r.run.data) << ',' << plan.lr_scales[r.run.lr] << ','
         << r.run.seed << ',' << p.step << ',' << p.tokens << ',' << fmt("%.6f", p.train_loss) << ','
         << fmt("%.6f", p.val_loss) << ',' << fmt("%.6f", p.val_metric) << '\n';
  return os.str();
}

// The curves of each layout's best scale on one data kind, averaged over seeds: the train
// loss at every step (`train`), and the val loss and metric with their std at the
// evaluation steps (`val`). Each layout's rows are contiguous.
void mean_curves(const Plan& plan, const std::vector<Cell>& cells, DataKind d, std::string& train, std::string& val) {
  std::ostringstream t, v;
  t << "layout,step,tokens,train_loss\n";
  v << "layout,step,tokens,val_loss,val_loss_std,val_metric,val_metric_std\n";
  for (std::size_t l = 0; l < plan.layouts.size(); ++l) {
    const Cell* c = best_cell(cells, l, d);
    const auto& first = c->runs.front()->curve;
    for (std::size_t i = 0; i < first.size(); ++i) {
      std::vector<double> tl, vl, vm;
      for (const Result* r : c->runs) {
        tl.push_back(r->curve[i].train_loss), vl.push_back(r->curve[i].val_loss), vm.push_back(r->curve[i].val_metric);
      }
      t << plan.layouts[l].name << ',' << first[i].step << ',' << first[i].tokens << ',' << fmt("%.6f", stat_of(tl).mean) << '\n';
      if (std::isnan(first[i].val_loss)) continue;
      const Stat a = stat_of(vl), b = stat_of(vm);
      v << plan.layouts[l].name << ',' << first[i].step << ',' << first[i].tokens << ',' << fmt("%.6f", a.mean) << ','
        << fmt("%.6f", a.std) << ',' << fmt("%.6f", b.mean) << ',' << fmt("%.6f", b.std) << '\n';
    }
  }
  train = t.str(), val = v.str();
}

// Three panels against training tokens: the mean train loss per bin of `bin` tokens
// (`smooth unique` averages the points of equal x; rows of other layouts are NaN, and as
// each layout's rows are contiguous they break no line), and the mean val loss and val
// accuracy or bits per byte with ± std error bars over seeds. `stem`: curves or
// curves_text (its files stem_train.csv, stem_val.csv, stem.png).
std::string gnuplot_script(const Plan& plan, const std::string& stem, const std::string& title, Index bin,
                           bool synthetic) {
  std::string names;
  for (const auto& l : plan.layouts) names += (names.empty() ? "" : " ") + l.name;
  std::ostringstream os;
  os << "# Written by ablate. Rerun in this folder: gnuplot " << stem << ".gnuplot\n"
     << "if (!exists(\"outfile\")) outfile = \"" << stem << ".png\"\n"
     << "if (strstrt(GPVAL_TERMINALS, \"pngcairo\") > 0) {\n"
     << "  set terminal pngcairo size 1800,600 font \",11\" noenhanced\n} else {\n"
     << "  set terminal png size 1800,600 noenhanced\n}\n"
     << "set output outfile\nset datafile separator \",\"\n"
     << "names = \"" << names << "\"\nbin = " << bin << ".0\n"
     << "sel(c) = strcol(1) eq word(names, i) && strcol(c) ne \"\" ? column(c) : NaN\n"
     << "set grid\nset key top right\nset xlabel \"training tokens\"\nset xrange [0:*]\nset format x \"%.0s%c\"\n"
     << "set multiplot layout 1,3 title \"" << title << "\"\n"
     << "set title \"train loss (mean per " << bin << " tokens)\"\nset ylabel \"loss (nats/token)\"\n"
     << "plot for [i=1:words(names)] '" << stem << "_train.csv' skip 1 using ((floor(($3-1)/bin)+0.5)*bin):(sel(4)) "
        "smooth unique with lines lw 2 title word(names, i)\n"
     << "set title \"validation loss (mean ± std over seeds)\"\n"
     << "plot for [i=1:words(names)] '" << stem << "_val.csv' skip 1 using 3:(sel(4)):(sel(5)) "
        "with yerrorlines lw 2 pt 7 ps 0.6 title word(names, i)\n"
     << "set title \"" << (synthetic ? "validation accuracy" : "validation bits per byte") << " (mean ± std)\"\n"
     << "set ylabel \"" << (synthetic ? "accuracy (scored positions)" : "bits per byte") << "\"\n"
     << (synthetic ? "set yrange [0:1]\nset key bottom right\n" : "")
     << "plot for [i=1:words(names)] '" << stem << "_val.csv' skip 1 using 3:(sel(6)):(sel(7)) "
        "with yerrorlines lw 2 pt 7 ps 0.6 title word(names, i)\n"
     << "unset multiplot\n";
  (void)plan;
  return os.str();
}

// Two panels against the evaluation length (log-2 axis): accuracy (bits per byte for text)
// and loss, mean ± std over seeds, one line per layout, with the training length marked
// (dashed). Reads length.csv; each layout's rows are contiguous.
std::string length_gnuplot_script(const Plan& plan, const std::vector<Cell>& cells, const std::string& title,
                                  Index train_T, bool synthetic) {
  std::string names;
  for (const auto& l : plan.layouts) names += (names.empty() ? "" : " ") + l.name;
  const int metric_col = synthetic ? 3 : 8;
  std::ostringstream os;
  os << "# Written by ablate. Rerun in this folder: gnuplot length.gnuplot\n"
     << "if (!exists(\"outfile\")) outfile = \"length.png\"\n"
     << "if (strstrt(GPVAL_TERMINALS, \"pngcairo\") > 0) {\n"
     << "  set terminal pngcairo size 1400,600 font \",11\" noenhanced\n} else {\n"
     << "  set terminal png size 1400,600 noenhanced\n}\n"
     << "set output outfile\nset datafile separator \",\"\n"
     << "names = \"" << names << "\"\n"
     << "sel(c) = strcol(1) eq word(names, i) && strcol(c) ne \"\" ? column(c) : NaN\n"
     << "set grid\nset logscale x 2\nset xlabel \"evaluation length (tokens)\"\n";
  const auto& pts = best_cell(cells, 0, DataKind::Primary)->runs.front()->lengths;
  os << "set xrange [" << double(pts.front().length) / 1.25 << ":" << double(pts.back().length) * 1.25
     << "]\nset xtics (";
  for (std::size_t i = 0; i < pts.size(); ++i) os << (i ? ", " : "") << pts[i].length;
  os << ")\n";
  if (train_T >= pts.front().length && train_T <= pts.back().length)
    os << "set arrow 1 from " << train_T << ", graph 0 to " << train_T
       << ", graph 1 nohead back dashtype 2 lc rgb \"gray40\"\n";
  os
     << "set multiplot layout 1,2 title \"" << title << "\"\n"
     << "set title \"" << (synthetic ? "accuracy" : "bits per byte") << " vs evaluation length, trained at T = "
     << train_T << "\"\n"
     << "set ylabel \"" << (synthetic ? "accuracy (scored positions)" : "bits per byte") << "\"\n"
     << (synthetic ? "set yrange [0:1.02]\nset key top right opaque\n" : "set key top left opaque\n")
     << "plot for [i=1:words(names)] 'length.csv' skip 1 using 2:(sel(" << metric_col << ")):(sel(" << metric_col + 1
     << ")) with yerrorlines lw 2 pt 7 ps 0.8 title word(names, i)\n"
     << "set title \"loss vs evaluation length, trained at T = " << train_T << "\"\n"
     << "set ylabel \"loss (nats per scored token)\"\nset yrange [0:*]\nset key top left opaque\n"
     << "plot for [i=1:words(names)] 'length.csv' skip 1 using 2:(sel(5)):(sel(6)) "
        "with yerrorlines lw 2 pt 7 ps 0.8 title word(names, i)\n"
     << "unset multiplot\n";
  return os.str();
}

std::string shell_quote(const std::string& s) {
  std::string q = "'";
  for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}

// Runs `name`.gnuplot in `dir` to draw `name`.png; false (with a note) when it could not.
bool plot(const fs::path& dir, const std::string& name) {
  const std::string script = name + ".gnuplot", png_name = name + ".png";
  if (std::system("command -v gnuplot >/dev/null 2>&1") != 0) {
    std::printf("note: gnuplot is not installed, so no %s was drawn; install it "
                "(e.g. apt-get install gnuplot-nox) and run: cd %s && gnuplot %s\n",
                png_name.c_str(), dir.string().c_str(), script.c_str());
    return false;
  }
  // gnuplot draws to its stdout, and the one atomic writer puts the image in place, so an
  // interrupted run never leaves a partial PNG.
  const std::string cmd = "cd " + shell_quote(dir.string()) +
                          " && gnuplot -e \"outfile='/dev/stdout'\" " + script;
  std::string png;
  int rc = -1;
  if (std::FILE* p = ::popen(cmd.c_str(), "r")) {
    char buf[1 << 16];
    for (std::size_t n; (n = std::fread(buf, 1, sizeof buf, p)) > 0;) png.append(buf, n);
    rc = ::pclose(p);
  }
  if (rc != 0 || png.empty()) {
    std::printf("note: gnuplot failed; everything else was written (script: %s)\n",
                (dir / script).string().c_str());
    return false;
  }
  write_atomic(dir / png_name, png);
  return true;
}

// "0.3,1,3" → {0.3, 1, 3}: positive numbers, each at most once, in the order given.
std::vector<double> parse_scales(const std::string& text) {
  std::vector<double> out;
  for (const std::string& item : cli::split_list(text)) {
    char* end = nullptr;
    const double v = std::strtod(item.c_str(), &end);
    HYBRID_CHECK(!item.empty() && end == item.c_str() + item.size() && std::isfinite(v) && v > 0,
                 "--lr-sweep: '", item, "' is not a positive number (give scales as 0.3,1,3)");
    HYBRID_CHECK(std::find(out.begin(), out.end(), v) == out.end(), "--lr-sweep: the scale ", item, " appears twice");
    out.push_back(v);
  }
  HYBRID_CHECK(!out.empty(), "--lr-sweep: no scale given (e.g. 0.3,1,3)");
  return out;
}

int run(const Options& o) {
  for (const char* k : {"target-params", "tokens", "batch", "seq-len", "eval-batches", "pairs", "queries"})
    HYBRID_CHECK(o.get<Index>(k) > 0, "--", k, " must be positive, got ", o.get<Index>(k));
  for (const char* k : {"d-step", "d-state", "headdim", "head-dim", "decode-tokens", "jobs", "seeds"})
    HYBRID_CHECK(o.get<int>(k) > 0, "--", k, " must be positive, got ", o.get<int>(k));
  HYBRID_CHECK(o.get<Index>("eval-every") >= 0, "--eval-every must be >= 0");
  for (const char* k : {"eval-seqs", "eval-batch"})
    HYBRID_CHECK(o.get<Index>(k) > 0, "--", k, " must be positive, got ", o.get<Index>(k));
  const std::vector<Index> lengths =
      o.has("eval-lengths") ? parse_lengths(o.get<std::string>("eval-lengths")) : std::vector<Index>{};
  HYBRID_CHECK(o.get<double>("lr") > 0, "--lr must be positive");
  HYBRID_CHECK(o.get<double>("clip") >= 0, "--clip must be >= 0");
  HYBRID_CHECK(o.get<double>("mlp-ratio") > 0, "--mlp-ratio must be positive");
  HYBRID_CHECK(std::isfinite(o.get<double>("init-std")) && o.get<double>("init-std") > 0,
               "--init-std must be a positive number, got ", o.get<double>("init-std"));
  HYBRID_CHECK(o.get<double>("match-tol") > 0 && o.get<double>("match-tol") < 1,
               "--match-tol must be in (0, 1), got ", o.get<double>("match-tol"));
  const std::string mm = o.get<std::string>("mamba-mlp");
  HYBRID_CHECK(mm == "none" || mm == "swiglu", "--mamba-mlp: '", mm, "' is not none or swiglu");
  HYBRID_CHECK(!(o.has("lm-data") && o.has("data")), "--lm-data adds a text column beside the synthetic "
               "task; with --data the table is already on text (give one of them)");
  Plan plan;
  plan.layouts = parse_layouts(o.get<std::string>("layouts"));
  plan.lr_scales = parse_scales(o.get<std::string>("lr-sweep"));
  plan.seeds = o.get<int>("seeds");
  plan.text = o.has("lm-data");
  const bool synthetic = !o.has("data");
  const train::TrainConfig cfg = train_config(o);
  const Index per_step = cfg.batch * cfg.seq_len, target = o.get<Index>("target-params");
  std::string data_text, text_text;
  {
    // Check the data flags, the lengths and every layout before anything trains.
    const auto src = make_source(o, DataKind::Primary, 0);
    data_text = src->describe();
    (void)src->val_batches(cfg.batch, cfg.seq_len, 1);
    for (const Index L : lengths) {  // a length the task cannot make fails now, not after training
      try {
        (void)src->val_batches(1, L, 1);
      } catch (const Error& e) {
        fail("--eval-lengths: the data cannot give sequences of length ", L, ": ", e.what());
      }
    }
    for (const auto& l : plan.layouts) plan.primary.push_back(match_shape(l.blocks, src->vocab_needed(), o));
    if (plan.text) {
      const auto t = make_source(o, DataKind::Text, 0);
      text_text = t->describe();
      (void)t->val_batches(cfg.batch, cfg.seq_len, 1);
      for (const auto& l : plan.layouts) plan.text_shapes.push_back(match_shape(l.blocks, t->vocab_needed(), o));
    }
  }
  if (!lengths.empty()) {
    std::printf("length generalisation: after training, %lld sequences at each of lengths", (long long)o.get<Index>("eval-seqs"));
    for (const Index L : lengths) std::printf(" %lld", (long long)L);
    std::printf(" (%lld per forward)\n", (long long)o.get<Index>("eval-batch"));
  }
  std::string scales;
  for (double s : plan.lr_scales) scales += (scales.empty() ? "" : ",") + fmt("%g", s);
  std::printf("data: %s%s%s\nbudget: %lld tokens per run = %lld steps of %lld x %lld; target %lld parameters; "
              "%d seed(s); learning-rate scales %s\n",
              data_text.c_str(), plan.text ? " and " : "", text_text.c_str(), (long long)(cfg.steps * per_step),
              (long long)cfg.steps, (long long)cfg.batch, (long long)cfg.seq_len, (long long)target, plan.seeds,
              scales.c_str());
  bool all_matched = true;
  for (std::size_t i = 0; i < plan.layouts.size(); ++i)
    for (DataKind d : {DataKind::Primary, DataKind::Text}) {
      if (d == DataKind::Text && !plan.text) continue;
      const Shape& s = (d == DataKind::Text ? plan.text_shapes : plan.primary)[i];
      const double dev = double(s.params) / double(target) - 1;
      const bool ok = std::abs(dev) <= o.get<double>("match-tol");
      all_matched = all_matched && ok;
      std::printf("  %-12s %-10s %-7s d_model %4d  hidden %4d  d_inner %4d  %8lld parameters (%+.1f%% of target)%s\n",
                  plan.layouts[i].name.c_str(), plan.layouts[i].blocks.c_str(), data_label(d), s.d_model,
                  s.hidden, s.d_inner, (long long)s.params, 100 * dev, ok ? "" : "  <- outside --match-tol");
    }
  if (!all_matched)
    std::printf("note: some layouts are outside --match-tol of the target; a smaller --d-step or --head-dim "
                "gives the search finer widths\n");
  if (o.has("dry-run")) return 0;

  std::vector<Run> runs;  // seeds innermost, so that a layout's runs finish together
  for (std::size_t l = 0; l < plan.layouts.size(); ++l)
    for (DataKind d : {DataKind::Primary, DataKind::Text}) {
      if (d == DataKind::Text && !plan.text) continue;
      for (std::size_t k = 0; k < plan.lr_scales.size(); ++k)
        for (int s = 0; s < plan.seeds; ++s) runs.push_back(Run{l, d, k, s});
    }
  std::printf("%zu runs\n", runs.size());
  const auto t0 = std::chrono::steady_clock::now();
  const std::vector<Result> rs = run_all(plan, runs, o, lengths);
  const double total = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const std::vector<Cell> cells = cells_of(plan, rs, synthetic);

  char setup[768];
  std::snprintf(setup, sizeof setup,
                "Ablation on %s%s%s: %lld tokens per run (%lld steps, batch %lld x %lld), target "
                "%lld parameters, d_state %d, embedding init std %g, optimizer %s, lr %g, learning-rate scales %s, %d seed(s) from "
                "seed %llu / data seed %llu; %zu runs on %d job(s) of %d thread(s), %.1f min.",
                data_text.c_str(), plan.text ? " and " : "", text_text.c_str(), (long long)(cfg.steps * per_step),
                (long long)cfg.steps, (long long)cfg.batch, (long long)cfg.seq_len, (long long)target,
                o.get<int>("d-state"), o.get<double>("init-std"), o.get<std::string>("optimizer").c_str(),
                o.get<double>("lr"), scales.c_str(), plan.seeds, (unsigned long long)o.get<std::uint64_t>("seed"),
                (unsigned long long)o.get<std::uint64_t>("data-seed"), runs.size(), o.get<int>("jobs"),
                o.get<int>("threads"), total / 60);
  const std::string primary_name = synthetic ? o.get<std::string>("task") : std::string("text");
  const std::string md = markdown(plan, cells, setup, synthetic, target, primary_name, o) +
                         (lengths.empty() ? "" : length_markdown(plan, cells, cfg.seq_len, synthetic));
  std::printf("\n%s\ntotal time %.1f s\n", md.c_str(), total);

  const fs::path dir = o.get<std::string>("out");
  fs::create_directories(dir);
  write_atomic(dir / "results.md", md);
  write_atomic(dir / "results.csv", results_csv(plan, rs, cells, target));
  write_atomic(dir / "curves.csv", curves_csv(plan, rs));
  const Index bin = std::max<Index>(1, o.get<Index>("eval-every")) * per_step;
  std::string wrote = "results.md,results.csv,curves.csv";
  for (DataKind d : {DataKind::Primary, DataKind::Text}) {
    if (d == DataKind::Text && !plan.text) continue;
    const std::string stem = d == DataKind::Text ? "curves_text" : "curves";
    std::string train_csv, val_csv;
    mean_curves(plan, cells, d, train_csv, val_csv);
    write_atomic(dir / (stem + "_train.csv"), train_csv);
    write_atomic(dir / (stem + "_val.csv"), val_csv);
    char title[384];
    std::snprintf(title, sizeof title, "%s, target %lld parameters, %lld tokens per run, %d seed(s), best lr scale",
                  (d == DataKind::Text ? text_text : data_text).c_str(), (long long)target,
                  (long long)(cfg.steps * per_step), plan.seeds);
    write_atomic(dir / (stem + ".gnuplot"),
                 gnuplot_script(plan, stem, title, bin, d == DataKind::Primary && synthetic));
    wrote += "," + stem + "_train.csv," + stem + "_val.csv," + stem + ".gnuplot";
    if (plot(dir, stem)) wrote += "," + stem + ".png";
  }
  if (!lengths.empty()) {
    char ltitle[256];
    std::snprintf(ltitle, sizeof ltitle, "%s, %lld sequences per length", data_text.c_str(),
                  (long long)o.get<Index>("eval-seqs"));
    write_atomic(dir / "length.csv", length_csv(plan, cells, synthetic));
    write_atomic(dir / "length_runs.csv", length_runs_csv(plan, rs));
    write_atomic(dir / "length.gnuplot", length_gnuplot_script(plan, cells, ltitle, cfg.seq_len, synthetic));
    wrote += ",length.csv,length_runs.csv,length.gnuplot";
    if (plot(dir, "length")) wrote += ",length.png";
  }
  std::printf("wrote %s/{%s}\n", dir.string().c_str(), wrote.c_str());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  cxxopts::Options opts("ablate",
                        "Train several layouts at matched parameter count and the same token budget on\n"
                        "the same data; write a Markdown table, CSVs and a plot of the loss curves.\n"
                        "Layouts are strings of block letters: M = Mamba-2, A = attention, C = ShortConv.");
  opts.add_options("layouts")
      ("layouts", "comma-separated layouts, each LAYOUT or NAME=LAYOUT", cxxopts::value<std::string>()->default_value(kDefaultLayouts))
      ("target-params", "parameter count to match; each layout's d_model is searched to come closest", cxxopts::value<Index>()->default_value("200000"))
      ("d-step", "d_model is searched over multiples of this", cxxopts::value<int>()->default_value("16"))
      ("d-state", "Mamba-2 state size N", cxxopts::value<int>()->default_value("8"))
      ("expand", "Mamba-2 expansion (d_inner = expand * d_model)", cxxopts::value<double>()->default_value("2"))
      ("headdim", "Mamba-2 head dim P (heads = d_inner / P)", cxxopts::value<int>()->default_value("16"))
      ("head-dim", "attention head dim (heads = d_model / head-dim, as many KV heads)", cxxopts::value<int>()->default_value("16"))
      ("qk-norm", "per-head RMSNorm of attention queries and keys (as LFM2)")
      ("mlp-ratio", "SwiGLU hidden width of attention / ShortConv blocks, times d_model", cxxopts::value<double>()->default_value("2"))
      ("mamba-mlp", "channel of Mamba-2 blocks: none or swiglu", cxxopts::value<std::string>()->default_value("none"))
      ("init-std", "standard deviation of the (tied) embedding's N(0, std) initialisation. 1 (torch.nn.Embedding's "
                   "default) by default: with the library's 0.02 the token embedding starts several times weaker than "
                   "each block's branch output, and pure attention then stays on the MQAR plateau (docs/training.md)",
       cxxopts::value<double>()->default_value("1"))
      ("match-tol", "parameter matching: after d_model, the MLP hidden width and Mamba-2's inner width "
                    "(expand * d_model) are searched within [1/2, 2] of their defaults to land within this "
                    "fraction of --target-params (d_state stays fixed)", cxxopts::value<double>()->default_value("0.03"));
  opts.add_options("data")
      ("task", "synthetic task when no --data: mqar, copy or induction", cxxopts::value<std::string>()->default_value("mqar"))
      ("task-vocab", "vocabulary of the synthetic task (MQAR: blank, (V-1)/2 keys, the rest values)", cxxopts::value<int>()->default_value("34"))
      ("pairs", "MQAR key-value pairs per sequence", cxxopts::value<Index>()->default_value("4"))
      ("queries", "MQAR queries per sequence (at most (seq-len - 2 pairs) / 2)", cxxopts::value<Index>()->default_value("12"))
      ("data", "a text file, trained at byte level (first 90% train, last 10% val), instead of the task", cxxopts::value<std::string>())
      ("lm-data", "a text file for a byte-level language-modelling column (val bits per byte) beside the "
                  "synthetic task, at the same token budget, each layout matched again for the byte vocabulary",
       cxxopts::value<std::string>())
      ("data-seed", "seed of the batch sampler (the same for every layout; seed k uses --data-seed + k)", cxxopts::value<std::uint64_t>()->default_value("1"));
  opts.add_options("training")
      ("tokens", "training tokens per layout (steps = tokens / (batch * seq-len))", cxxopts::value<Index>()->default_value("819200"))
      ("batch", "sequences per step", cxxopts::value<Index>()->default_value("32"))
      ("seq-len", "tokens per sequence", cxxopts::value<Index>()->default_value("32"))
      ("optimizer", "matrix optimiser: muon (AdamW for the rest) or adamw", cxxopts::value<std::string>()->default_value("muon"))
      ("lr", "AdamW learning rate (embedding, scalars, dynamics; matrices with --optimizer adamw)", cxxopts::value<double>()->default_value("0.003"))
      ("lr-matrix", "learning rate of 2-D matrices (default: Muon's 0.02, or --lr with adamw)", cxxopts::value<double>())
      ("schedule", "learning-rate schedule after the warmup: cosine (to 0.1x) or constant", cxxopts::value<std::string>()->default_value("cosine"))
      ("warmup", "warmup steps", cxxopts::value<std::int64_t>()->default_value("50"))
      ("clip", "global gradient-norm clip (0 = off)", cxxopts::value<double>()->default_value("1.0"))
      ("seed", "weight initialisation seed (of the first seed; seed k uses --seed + k and --data-seed + k)", cxxopts::value<std::uint64_t>()->default_value("0"))
      ("seeds", "seeds per layout and learning rate: the table shows mean ± std over them", cxxopts::value<int>()->default_value("1"))
      ("lr-sweep", "learning-rate scales tried per layout (every rate, AdamW's and the matrices', times the "
                   "scale), e.g. 0.3,1,3; the table reports each layout at its best", cxxopts::value<std::string>()->default_value("1"))
      ("jobs", "layouts trained at once, one per core (with more than 1, train and decode speeds are "
               "measured beside the other jobs and peak RSS is not reported)", cxxopts::value<int>()->default_value("2"))
      ("threads", "OpenMP threads per job; 0 = OpenMP's choice. Default 1: these widths gain little from "
                  "a second thread, and on a busy machine OpenMP's barriers can slow a step many times over",
       cxxopts::value<int>()->default_value("1"));
  opts.add_options("output")
      ("eval-every", "evaluate every N steps (and at the end; 0 = only at the end)", cxxopts::value<Index>()->default_value("50"))
      ("eval-batches", "validation batches per evaluation", cxxopts::value<Index>()->default_value("8"))
      ("eval-lengths", "after training, evaluate each layout at these sequence lengths (comma-separated "
                       "positive integers, e.g. 128,256,512,1024,2048,4096): MQAR keeps its pairs and queries "
                       "and spreads the queries over the longer sequence; text is scored in bits per byte. "
                       "Writes length.csv, a table in results.md and length.gnuplot / length.png",
       cxxopts::value<std::string>())
      ("eval-seqs", "validation sequences per evaluation length (text: fewer if the val split is short)", cxxopts::value<Index>()->default_value("64"))
      ("eval-batch", "sequences per forward in the length evaluation (bounds its memory at long lengths)", cxxopts::value<Index>()->default_value("4"))
      ("prefill", "prompt tokens before the decode-speed measurement", cxxopts::value<Index>()->default_value("16"))
      ("decode-tokens", "greedy decode steps timed per layout (batch 1)", cxxopts::value<int>()->default_value("128"))
      ("out", "output folder: results.md, results.csv, curves.csv, curves.gnuplot, curves.png (and length.*)", cxxopts::value<std::string>()->default_value("ablate_out"))
      ("dry-run", "print each layout's matched d_model and parameter count, then exit")
      ("h,help", "print this help");
  try {
    Options o{opts.parse(argc, argv)};
    if (o.has("help")) {
      std::cout << opts.help({"layouts", "data", "training", "output"});
      return 0;
    }
    if (!o.r.unmatched().empty()) fail("unexpected argument '", o.r.unmatched()[0], "'");
    HYBRID_CHECK(o.get<int>("threads") >= 0, "--threads must be >= 0, got ", o.get<int>("threads"));
    return run(o);
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 2;
  }
}
