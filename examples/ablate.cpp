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

std::unique_ptr<data::Source> make_source(const Options& o) {
  const auto seed = o.get<std::uint64_t>("data-seed");
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

// The description of `layout` at width D; throws hybrid::Error when a spec is invalid.
ModelDesc make_desc(const std::string& layout, int D, int vocab, const Options& o) {
  const int hd = o.get<int>("head-dim");
  HYBRID_CHECK(D % hd == 0, "d_model ", D, " is not a multiple of --head-dim ", hd);
  const ModelSpec m{.vocab = vocab, .d_model = D};
  const Mamba2Spec mb{.d_state = o.get<int>("d-state"), .expand = o.get<double>("expand"),
                      .headdim = o.get<int>("headdim"), .chunk = 64};
  const GqaSpec at{.n_heads = D / hd, .n_kv_heads = D / hd, .head_dim = hd,
                   .qk_norm = o.has("qk-norm")};
  const int hidden = int(std::lround(o.get<double>("mlp-ratio") * D));
  const ChannelDesc mlp = SwiGluSpec{{hidden}};
  const ChannelDesc mamba_mlp = o.get<std::string>("mamba-mlp") == "swiglu" ? mlp : NoChannelSpec{};
  ModelDesc d = desc_from_layout(layout, m, mb, at, ShortConvSpec{}, mamba_mlp, mlp);
  validate(d);
  return d;
}

// The multiple of --d-step whose parameter count is closest to the target (the count
// grows with D, so the search stops once it overshoots by more than the best miss).
int match_width(const std::string& layout, int vocab, const Options& o) {
  const Index target = o.get<Index>("target-params");
  const int step = o.get<int>("d-step");
  int best = 0;
  Index best_miss = std::numeric_limits<Index>::max();
  std::string last_error;
  for (int D = step; D <= 4096; D += step) {
    Index n = 0;
    try {
      n = param_count(make_desc(layout, D, vocab, o));
    } catch (const Error& e) {
      last_error = e.what();
      continue;
    }
    const Index miss = n > target ? n - target : target - n;
    if (miss < best_miss) best = D, best_miss = miss;
    if (n > target && miss > best_miss) break;
  }
  HYBRID_CHECK(best > 0, "layout '", layout, "': no d_model that is a multiple of ", step,
               " gives a valid model (", last_error, ")");
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

struct Result {
  Layout layout;
  int d_model = 0;
  Index params = 0;
  std::int64_t steps = 0;
  Index tokens = 0;
  train::EvalResult val;
  double train_seconds = 0, train_tok_s = 0, decode_tok_s = 0;
  std::size_t train_bytes = 0;  // parameters + gradients + optimiser state + tape arena
  long long rss_bytes = -1;     // process peak RSS during this layout's training
  Index kv_bytes_per_token = 0, state_bytes = 0;
  std::vector<CurvePoint> curve;
  std::vector<LengthPoint> lengths;  // with --eval-lengths
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

train::TrainConfig train_config(const Options& o) {
  train::TrainConfig c;
  c.batch = o.get<Index>("batch");
  c.seq_len = o.get<Index>("seq-len");
  c.steps = std::max<std::int64_t>(1, o.get<Index>("tokens") / (c.batch * c.seq_len));
  const std::string kind = o.get<std::string>("optimizer");
  HYBRID_CHECK(kind == "muon" || kind == "adamw", "--optimizer: '", kind, "' is not muon or adamw");
  c.optim.matrix_optimizer = kind == "muon" ? train::MatrixOptimizer::Muon : train::MatrixOptimizer::AdamW;
  const double lr = o.get<double>("lr");
  c.optim.embedding.lr = c.optim.scalar.lr = c.optim.dynamics.lr = lr;
  if (o.has("lr-matrix")) c.optim.matrix.lr = o.get<double>("lr-matrix");
  else if (kind == "adamw") c.optim.matrix.lr = lr;
  const std::string sched = o.get<std::string>("schedule");
  HYBRID_CHECK(sched == "cosine" || sched == "constant", "--schedule: '", sched, "' is not cosine or constant");
  c.schedule.kind = sched == "cosine" ? train::Schedule::WarmupCosine : train::Schedule::Constant;
  c.schedule.total = c.steps;
  c.schedule.min_factor = 0.1;
  c.schedule.warmup = std::min<std::int64_t>(o.get<std::int64_t>("warmup"), c.steps / 2);
  c.optim.max_grad_norm = o.get<double>("clip");
  c.eval_batches = o.get<Index>("eval-batches");
  c.seed = o.get<std::uint64_t>("seed");
  return c;
}

// measure_rss: only when this is the one layout in flight (VmHWM is per process).
Result run_layout(const Layout& l, const Options& o, const std::vector<Index>& lengths, bool synthetic,
                  bool measure_rss) {
  auto src = make_source(o);  // a fresh source per layout: every layout sees the same batches
  const int vocab = src->vocab_needed();
  Result r;
  r.layout = l;
  r.d_model = match_width(l.blocks, vocab, o);
  RuntimeModel<S> model(make_desc(l.blocks, r.d_model, vocab, o), o.get<std::uint64_t>("seed"));
  r.params = model.param_count();
  const train::TrainConfig cfg = train_config(o);
  std::printf("== %s (%s): d_model %d, %lld parameters, %lld steps of %lld tokens\n",
              l.name.c_str(), model.layout_string().c_str(), r.d_model, (long long)r.params,
              (long long)cfg.steps, (long long)(cfg.batch * cfg.seq_len));
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
                  l.name.c_str(), (long long)st.step, (long long)cfg.steps, st.loss, r.val.loss,
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
                  sizeof(S) * (2 * std::size_t(r.params) + opt_elems);  // weights + grads + state

  for (int i = 0; i < model.n_blocks(); ++i)
    std::visit(
        [&](const auto& mx) {
          if constexpr (std::is_same_v<std::decay_t<decltype(mx)>, GqaLayer<S>>)
            r.kv_bytes_per_token += mx.state_bytes_per_token();
          else r.state_bytes += mx.state_bytes();
        },
        model.block(i).mixer());
  if (!lengths.empty()) r.lengths = evaluate_lengths(model, *src, lengths, o, l.name, synthetic);
  const data::Batch vb = src->val_batches(1, cfg.seq_len, 1)[0];
  const Index plen = std::clamp<Index>(o.get<Index>("prefill"), 1, vb.T);
  r.decode_tok_s = decode_tokens_per_s(
      model, std::vector<int>(vb.tokens.begin(), vb.tokens.begin() + plen), o.get<int>("decode-tokens"));
  return r;
}

// Layouts on `--jobs` worker threads, each single-threaded inside (OpenMP's thread count is
// per thread, so each worker sets its own). Results keep the order of `layouts`.
std::vector<Result> run_all(const std::vector<Layout>& layouts, const Options& o,
                            const std::vector<Index>& lengths, bool synthetic) {
  const int jobs = std::min<int>(o.get<int>("jobs"), int(layouts.size()));
  std::vector<Result> rs(layouts.size());
  std::vector<std::exception_ptr> errors(layouts.size());
  std::atomic<std::size_t> next{0};
  auto worker = [&] {
#ifdef _OPENMP
    if (o.get<int>("threads") > 0) omp_set_num_threads(o.get<int>("threads"));
#endif
    for (std::size_t i; (i = next++) < layouts.size();) {
      try {
        rs[i] = run_layout(layouts[i], o, lengths, synthetic, jobs == 1);
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

std::string markdown(const std::vector<Result>& rs, const std::string& setup, bool synthetic) {
  std::ostringstream os;
  os << setup << "\n\n| layout | blocks | d_model | params | val loss | "
     << (synthetic ? "val acc" : "val bpb")
     << " | train tok/s | train MiB | peak RSS MiB | decode tok/s | KV B/token | state B/seq |\n"
     << "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n";
  for (const auto& r : rs)
    os << "| " << r.layout.name << " | " << r.layout.blocks << " | " << r.d_model << " | " << r.params
       << " | " << fmt("%.4f", r.val.loss) << " | "
       << fmt("%.4f", synthetic ? r.val.accuracy : r.val.bits_per_byte) << " | "
       << fmt("%.0f", r.train_tok_s) << " | " << mib(double(r.train_bytes)) << " | "
       << mib(double(r.rss_bytes)) << " | " << fmt("%.0f", r.decode_tok_s) << " | "
       << r.kv_bytes_per_token << " | " << r.state_bytes << " |\n";
  os << "\ntrain MiB = weights + gradients + optimiser state + the tape's arena after training "
        "(fp32); peak RSS = the process's VmHWM, reset before each layout (includes the data "
        "and allocator slack; only with --jobs 1). Decode: batch 1, greedy, after a short prefill. KV B/token: "
        "attention cache bytes per token of context, summed over attention blocks; state "
        "B/seq: Mamba-2 / ShortConv state per sequence, constant in context length.\n";
  return os.str();
}

// Rows: layouts; columns: the evaluation lengths. One table of accuracy (or bits per byte
// for text) and one of loss, as a recall model can keep its argmax while its loss grows.
std::string length_markdown(const std::vector<Result>& rs, Index train_T, bool synthetic) {
  const auto& pts = rs.front().lengths;
  std::ostringstream os;
  const auto table = [&](const char* what, auto&& cell) {
    os << "\n| " << what << " |";
    for (const auto& p : pts) os << " L=" << p.length << (p.length == train_T ? " (train)" : "") << " |";
    os << "\n|---|";
    for (std::size_t i = 0; i < pts.size(); ++i) os << "--:|";
    os << '\n';
    for (const auto& r : rs) {
      os << "| " << r.layout.name << " |";
      for (const auto& p : r.lengths) os << ' ' << cell(p) << " |";
      os << '\n';
    }
  };
  Index lo = pts.front().scored, hi = lo;
  for (const auto& p : pts) lo = std::min(lo, p.scored), hi = std::max(hi, p.scored);
  os << "\nLength generalisation: trained at T = " << train_T << ", evaluated at each length L on "
     << pts.front().sequences << " validation sequences (" << lo;
  if (hi != lo) os << " to " << hi;
  os << " scored positions per length).\n";
  if (synthetic) table("layout: val acc", [](const LengthPoint& p) { return fmt("%.4f", p.accuracy); });
  else table("layout: val bpb", [](const LengthPoint& p) { return fmt("%.4f", p.bits_per_byte); });
  table("layout: val loss", [](const LengthPoint& p) { return fmt("%.4f", p.loss); });
  return os.str();
}

std::string length_csv(const std::vector<Result>& rs, bool synthetic) {
  std::ostringstream os;
  os << "layout,length,accuracy,loss,scored_positions" << (synthetic ? "" : ",bits_per_byte") << '\n';
  for (const auto& r : rs)
    for (const auto& p : r.lengths) {
      os << r.layout.name << ',' << p.length << ',' << fmt("%.6f", p.accuracy) << ','
         << fmt("%.6f", p.loss) << ',' << p.scored;
      if (!synthetic) os << ',' << fmt("%.6f", p.bits_per_byte);
      os << '\n';
    }
  return os.str();
}

std::string results_csv(const std::vector<Result>& rs, Index target) {
  std::ostringstream os;
  os << "name,layout,d_model,params,params_vs_target,steps,tokens,val_loss,val_accuracy,val_bpb,"
        "train_tokens_per_s,train_seconds,train_bytes,peak_rss_bytes,decode_tokens_per_s,"
        "kv_bytes_per_token,state_bytes_per_seq\n";
  for (const auto& r : rs)
    os << r.layout.name << ',' << r.layout.blocks << ',' << r.d_model << ',' << r.params << ','
       << fmt("%.4f", double(r.params) / double(target)) << ',' << r.steps << ',' << r.tokens << ','
       << fmt("%.6f", r.val.loss) << ',' << fmt("%.6f", r.val.accuracy) << ','
       << fmt("%.6f", r.val.bits_per_byte) << ',' << fmt("%.1f", r.train_tok_s) << ','
       << fmt("%.3f", r.train_seconds) << ',' << r.train_bytes << ',' << r.rss_bytes << ','
       << fmt("%.1f", r.decode_tok_s) << ',' << r.kv_bytes_per_token << ',' << r.state_bytes << '\n';
  return os.str();
}

std::string curves_csv(const std::vector<Result>& rs, bool synthetic) {
  std::ostringstream os;
  os << "layout,step,tokens,train_loss,val_loss," << (synthetic ? "val_accuracy" : "val_bpb") << '\n';
  for (const auto& r : rs)
    for (const auto& p : r.curve)
      os << r.layout.name << ',' << p.step << ',' << p.tokens << ',' << fmt("%.6f", p.train_loss)
         << ',' << fmt("%.6f", p.val_loss) << ',' << fmt("%.6f", p.val_metric) << '\n';
  return os.str();
}

// Three panels against training tokens: the train loss averaged per bin of `bin` tokens
// (`smooth unique` averages the points of equal x; rows of other layouts are NaN, and as
// each layout's rows are contiguous they break no line), the val loss, and the val
// accuracy or bits per byte. Val cells are sparse, so pick() repeats the layout's last
// val point on every other row instead of a NaN that would cut the line between two
// evaluations (a repeated point changes neither the line nor the averages).
std::string gnuplot_script(const std::vector<Result>& rs, const std::string& title,
                           Index bin, bool synthetic) {
  std::string names;
  for (const auto& r : rs) names += (names.empty() ? "" : " ") + r.layout.name;
  std::ostringstream os;
  os << "# Written by ablate. Rerun in this folder: gnuplot curves.gnuplot\n"
     << "if (!exists(\"outfile\")) outfile = \"curves.png\"\n"
     << "if (strstrt(GPVAL_TERMINALS, \"pngcairo\") > 0) {\n"
     << "  set terminal pngcairo size 1800,600 font \",11\" noenhanced\n} else {\n"
     << "  set terminal png size 1800,600 noenhanced\n}\n"
     << "set output outfile\nset datafile separator \",\"\n"
     << "names = \"" << names << "\"\nbin = " << bin << ".0\n"
     << "mine(c) = strcol(1) eq word(names, i) && strcol(c) ne \"\"\n"
     << "sel(c) = mine(c) ? column(c) : NaN\n"
     << "pick(c) = ($0 == 0 ? (lx = NaN, ly = NaN) : 0, mine(c) ? (lx = $3, ly = column(c)) : 0, lx)\n"
     << "set grid\nset key top right\nset xlabel \"training tokens\"\nset xrange [0:*]\nset format x \"%.0s%c\"\n"
     << "set multiplot layout 1,3 title \"" << title << "\"\n"
     << "set title \"train loss (mean per " << bin << " tokens)\"\nset ylabel \"loss (nats/token)\"\n"
     << "plot for [i=1:words(names)] 'curves.csv' skip 1 using ((floor(($3-1)/bin)+0.5)*bin):(sel(4)) "
        "smooth unique with lines lw 2 title word(names, i)\n"
     << "set title \"validation loss\"\n"
     << "plot for [i=1:words(names)] 'curves.csv' skip 1 using (pick(5)):(ly) smooth unique "
        "with linespoints lw 2 pt 7 ps 0.6 title word(names, i)\n"
     << "set title \"" << (synthetic ? "validation accuracy" : "validation bits per byte") << "\"\n"
     << "set ylabel \"" << (synthetic ? "accuracy (scored positions)" : "bits per byte") << "\"\n"
     << (synthetic ? "set yrange [0:1]\nset key bottom right\n" : "")
     << "plot for [i=1:words(names)] 'curves.csv' skip 1 using (pick(6)):(ly) smooth unique "
        "with linespoints lw 2 pt 7 ps 0.6 title word(names, i)\n"
     << "unset multiplot\n";
  return os.str();
}

// Two panels against the evaluation length (log-2 axis): accuracy (bits per byte for text)
// and loss, one line per layout, with the training length marked. As in curves.csv each
// layout's rows are contiguous, so the other layouts' NaN rows break no line. Tics at the
// evaluation lengths; the dashed line marks the training length.
std::string length_gnuplot_script(const std::vector<Result>& rs, const std::string& title,
                                  Index train_T, bool synthetic) {
  std::string names;
  for (const auto& r : rs) names += (names.empty() ? "" : " ") + r.layout.name;
  const int metric_col = synthetic ? 3 : 6;
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
  const auto& pts = rs.front().lengths;
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
     << "plot for [i=1:words(names)] 'length.csv' skip 1 using 2:(sel(" << metric_col
     << ")) with linespoints lw 2 pt 7 ps 0.8 title word(names, i)\n"
     << "set title \"loss vs evaluation length, trained at T = " << train_T << "\"\n"
     << "set ylabel \"loss (nats per scored token)\"\nset yrange [0:*]\nset key top left opaque\n"
     << "plot for [i=1:words(names)] 'length.csv' skip 1 using 2:(sel(4)) "
        "with linespoints lw 2 pt 7 ps 0.8 title word(names, i)\n"
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

int run(const Options& o) {
  for (const char* k : {"target-params", "tokens", "batch", "seq-len", "eval-batches", "pairs", "queries"})
    HYBRID_CHECK(o.get<Index>(k) > 0, "--", k, " must be positive, got ", o.get<Index>(k));
  for (const char* k : {"d-step", "d-state", "headdim", "head-dim", "decode-tokens", "jobs"})
    HYBRID_CHECK(o.get<int>(k) > 0, "--", k, " must be positive, got ", o.get<int>(k));
  HYBRID_CHECK(o.get<Index>("eval-every") >= 0, "--eval-every must be >= 0");
  for (const char* k : {"eval-seqs", "eval-batch"})
    HYBRID_CHECK(o.get<Index>(k) > 0, "--", k, " must be positive, got ", o.get<Index>(k));
  const std::vector<Index> lengths =
      o.has("eval-lengths") ? parse_lengths(o.get<std::string>("eval-lengths")) : std::vector<Index>{};
  HYBRID_CHECK(o.get<double>("lr") > 0, "--lr must be positive");
  HYBRID_CHECK(o.get<double>("clip") >= 0, "--clip must be >= 0");
  HYBRID_CHECK(o.get<double>("mlp-ratio") > 0, "--mlp-ratio must be positive");
  const std::string mm = o.get<std::string>("mamba-mlp");
  HYBRID_CHECK(mm == "none" || mm == "swiglu", "--mamba-mlp: '", mm, "' is not none or swiglu");
  const auto layouts = parse_layouts(o.get<std::string>("layouts"));
  const bool synthetic = !o.has("data");
  const train::TrainConfig cfg = train_config(o);
  const Index per_step = cfg.batch * cfg.seq_len;
  std::string data_text;
  int vocab = 0;
  {
    const auto src = make_source(o);  // check the data flags and every layout up front
    data_text = src->describe();
    vocab = src->vocab_needed();
    (void)src->val_batches(cfg.batch, cfg.seq_len, 1);
    for (const Index L : lengths) {  // a length the task cannot make fails now, not after training
      try {
        (void)src->val_batches(1, L, 1);
      } catch (const Error& e) {
        fail("--eval-lengths: the data cannot give sequences of length ", L, ": ", e.what());
      }
    }
  }
  if (!lengths.empty()) {
    std::printf("length generalisation: after training, %lld sequences at each of lengths", (long long)o.get<Index>("eval-seqs"));
    for (const Index L : lengths) std::printf(" %lld", (long long)L);
    std::printf(" (%lld per forward)\n", (long long)o.get<Index>("eval-batch"));
  }
  std::printf("data: %s\nbudget: %lld tokens per layout = %lld steps of %lld x %lld; target %lld parameters\n",
              data_text.c_str(), (long long)(cfg.steps * per_step), (long long)cfg.steps,
              (long long)cfg.batch, (long long)cfg.seq_len, (long long)o.get<Index>("target-params"));
  for (const auto& l : layouts) {
    const int D = match_width(l.blocks, vocab, o);
    const Index n = param_count(make_desc(l.blocks, D, vocab, o));
    std::printf("  %-12s %-10s d_model %4d  %8lld parameters (%+.1f%% of target)\n", l.name.c_str(),
                l.blocks.c_str(), D, (long long)n,
                100.0 * (double(n) / double(o.get<Index>("target-params")) - 1));
  }

  if (o.has("dry-run")) return 0;

  const auto t0 = std::chrono::steady_clock::now();
  std::vector<Result> rs = run_all(layouts, o, lengths, synthetic);
  const double total = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();

  char setup[512];
  std::snprintf(setup, sizeof setup,
                "Ablation on %s: %lld tokens per layout (%lld steps, batch %lld x %lld), target "
                "%lld parameters, d_state %d, optimizer %s, lr %g, seed %llu; %d job(s) of %d thread(s).",
                data_text.c_str(), (long long)(cfg.steps * per_step), (long long)cfg.steps,
                (long long)cfg.batch, (long long)cfg.seq_len, (long long)o.get<Index>("target-params"),
                o.get<int>("d-state"), o.get<std::string>("optimizer").c_str(), o.get<double>("lr"),
                (unsigned long long)o.get<std::uint64_t>("seed"), o.get<int>("jobs"), o.get<int>("threads"));
  const std::string md =
      markdown(rs, setup, synthetic) + (lengths.empty() ? "" : length_markdown(rs, cfg.seq_len, synthetic));
  std::printf("\n%s\ntotal time %.1f s\n", md.c_str(), total);

  const fs::path dir = o.get<std::string>("out");
  fs::create_directories(dir);
  write_atomic(dir / "results.md", md);
  write_atomic(dir / "results.csv", results_csv(rs, o.get<Index>("target-params")));
  write_atomic(dir / "curves.csv", curves_csv(rs, synthetic));
  const Index bin = std::max<Index>(1, o.get<Index>("eval-every")) * per_step;
  char title[256];
  std::snprintf(title, sizeof title, "%s, target %lld parameters, %lld tokens per layout", data_text.c_str(),
                (long long)o.get<Index>("target-params"), (long long)(cfg.steps * per_step));
  write_atomic(dir / "curves.gnuplot", gnuplot_script(rs, title, bin, synthetic));
  std::string wrote = "results.md,results.csv,curves.csv,curves.gnuplot";
  if (plot(dir, "curves")) wrote += ",curves.png";
  if (!lengths.empty()) {
    char ltitle[256];
    std::snprintf(ltitle, sizeof ltitle, "%s, %lld sequences per length", data_text.c_str(),
                  (long long)o.get<Index>("eval-seqs"));
    write_atomic(dir / "length.csv", length_csv(rs, synthetic));
    write_atomic(dir / "length.gnuplot", length_gnuplot_script(rs, ltitle, cfg.seq_len, synthetic));
    wrote += ",length.csv,length.gnuplot";
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
      ("mamba-mlp", "channel of Mamba-2 blocks: none or swiglu", cxxopts::value<std::string>()->default_value("none"));
  opts.add_options("data")
      ("task", "synthetic task when no --data: mqar, copy or induction", cxxopts::value<std::string>()->default_value("mqar"))
      ("task-vocab", "vocabulary of the synthetic task (MQAR: blank, (V-1)/2 keys, the rest values)", cxxopts::value<int>()->default_value("34"))
      ("pairs", "MQAR key-value pairs per sequence", cxxopts::value<Index>()->default_value("4"))
      ("queries", "MQAR queries per sequence (at most (seq-len - 2 pairs) / 2)", cxxopts::value<Index>()->default_value("12"))
      ("data", "a text file, trained at byte level (first 90% train, last 10% val)", cxxopts::value<std::string>())
      ("data-seed", "seed of the batch sampler (the same for every layout)", cxxopts::value<std::uint64_t>()->default_value("1"));
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
      ("seed", "weight initialisation seed", cxxopts::value<std::uint64_t>()->default_value("0"))
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
