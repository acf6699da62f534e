// Our side of the peer benchmark against PyTorch + Hugging Face transformers
// (bench/peer/bench_transformers.py runs the same three measurements there, and
// bench/peer/compare.sh puts the two side by side). float32, on the CPU:
//   forward  B sequences of T tokens, all logits, nothing recorded
//   train    one training step: forward + cross-entropy + backward + AdamW update
//            (AdamW on every tensor, no clipping: what torch.optim.AdamW does)
//   decode   batch 1, greedy: a prefill of P tokens, then N single-token steps (timed)
// Models:
//   golf15x3e2        the Golf15x3E2 alias (55,519,120 parameters)
//   lfm2_350m_L<n>    Lfm2_350M's widths with its first n blocks (1 <= n <= 16): the
//                     published pattern C C A C C A C C A C A C A C A C cut after n blocks,
//                     so 6 blocks put attention at 2 and 5, 8 blocks at 2 and 5, 12 at 2, 5,
//                     8 and 10
// One JSON object per line; "gemm_f32" lines give the float GEMM rate of this run (through
// the linear layers' GEMM, OpenBLAS or Eigen: "backend") and
// "mem_read" the read bandwidth (the bound of batch-1 decode: every weight once per token).
//   bench_peer --model NAME [--B 4] [--T 256] [--prefill 64] [--decode 64] [--threads N]
//              [--reps 5] [--only forward,train,decode] [--profile]
// --profile adds where the time goes: a training step split into recorded forward + loss,
// backward and optimiser; and the time the model's projections alone take (ops::linear_*
// on every 2-D weight and the LM head at the same shapes: B*T rows for forward and
// training, forward + both backward products for training, 1 row for decode), so the rest
// of each measurement is scan, convolution, attention, norms, element-wise ops and tape.
// The measurement and its projections alternate (--reps rounds; for decode, token by
// token); "rest_seconds" is the median of the paired differences (min and max beside it).
#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <utility>
#include <string>
#include <vector>

#include <hybrid/model.hpp>
#include <hybrid/train/trainer.hpp>

#include "bench_util.hpp"
#ifdef _OPENMP
#include <omp.h>
#endif

using namespace hybrid;
using bench::Clock;
using bench::median;
using bench::seconds_since;

namespace {

// Median-of-reps GFLOP/s of c = a bᵀ (float), a (m, k), b (n, k), through the GEMM the
// linear layers use (blas::gemm: OpenBLAS or Eigen): the shapes of the other benches, so
// the rates compare across them.
double gemm_gflops(Index m, Index k, Index n, int reps) {
  Mat<float> a = Mat<float>::Random(m, k), b = Mat<float>::Random(n, k), c(m, n);
  auto run = [&] {
    blas::gemm<float>(blas::Op::N, blas::Op::T, m, n, k, 1.0f, a.data(), k, b.data(), k, 0.0f,
                      c.data(), n);
  };
  run();  // warm-up
  std::vector<double> t;
  for (int r = 0; r < reps; ++r) {
    const auto t0 = Clock::now();
    run();
    t.push_back(seconds_since(t0));
  }
  return 2.0 * double(m) * double(k) * double(n) / median(t) / 1e9;
}

// Median-of-reps read bandwidth (GB/s) over a 256 MiB float buffer, all threads: the
// ceiling of batch-1 decode, which reads every weight once per token.
double read_gbps(int reps) {
  const Index n = Index(64) << 20;
  std::vector<float> buf(std::size_t(n), 1.0f);
  volatile double sink = 0;
  std::vector<double> t;
  for (int r = 0; r <= reps; ++r) {
    const auto t0 = Clock::now();
    double s = 0;
#pragma omp parallel reduction(+ : s)
    {
#ifdef _OPENMP
      const Index nt = omp_get_num_threads(), id = omp_get_thread_num();
#else
      const Index nt = 1, id = 0;
#endif
      const Index b = n * id / nt, e = n * (id + 1) / nt;
      s += double(CVecMap<float>(buf.data() + b, e - b).sum());
    }
    const double dt = seconds_since(t0);
    sink = sink + s;
    if (r > 0) t.push_back(dt);  // the first pass is a warm-up
  }
  return double(n) * sizeof(float) / median(t) / 1e9;
}

// The model named on the command line, or an empty description with a message.
ModelDesc model_desc(const std::string& name, std::string& err) {
  if (name == "golf15x3e2") return Golf15x3E2::desc();
  const std::string pre = "lfm2_350m_L";
  if (name.rfind(pre, 0) == 0) {
    const int n = std::atoi(name.c_str() + pre.size());
    ModelDesc d = Lfm2_350M::desc();
    if (n < 1 || n > int(d.blocks.size())) {
      err = "lfm2_350m_L<n> needs 1 <= n <= 16, got '" + name + "'";
      return {};
    }
    d.blocks.resize(std::size_t(n));  // the published pattern, cut after n blocks
    return d;
  }
  err = "unknown model '" + name + "' (expected golf15x3e2 or lfm2_350m_L<n>)";
  return {};
}

// A data source that hands out the same batch every time (timing only).
struct FixedSource : data::Source {
  data::Batch b;
  int vocab = 0;
  data::Batch train_batch(Index, Index) override { return b; }
  std::vector<data::Batch> val_batches(Index, Index, Index) override { return {b}; }
  std::string state() const override { return ""; }
  void set_state(const std::string&) override {}
  std::string describe() const override { return "fixed"; }
  int vocab_needed() const override { return vocab; }
};

int argmax_row(const Mat<float>& logits, Index row) {
  Index best = 0;
  logits.row(row).maxCoeff(&best);
  return int(best);
}

struct Args {
  std::string model;
  Index B = 4, T = 256, prefill = 64, decode = 64;
  int threads = 0, reps = 5;
  std::string only = "forward,train,decode";
  bool profile = false;
  bool wants(const char* what) const { return only.find(what) != std::string::npos; }
};

void print_line(const Args& a, int threads, const char* what, Index B, Index T, double tps,
                double seconds, const std::string& extra = "") {
  std::printf("{\"side\":\"hybrid\",\"model\":\"%s\",\"what\":\"%s\",\"B\":%lld,\"T\":%lld,"
              "\"threads\":%d,\"tokens_per_s\":%.2f,\"seconds\":%.5f,\"reps\":%d%s}\n",
              a.model.c_str(), what, (long long)B, (long long)T, threads, tps, seconds, a.reps,
              extra.c_str());
  std::fflush(stdout);
}

// The model's projections on their own, one pass at a time.
// mode 0: forward (R rows), 1: training (forward + dx + dW, R rows), 2: one decode token.
// A pass runs through all the weights in model order, so (as in the model) a weight is not
// still in cache from its previous use when the model is larger than the cache.
class Projections {
 public:
  Projections(RuntimeModel<float>& model, Index R, int mode) : mode_(mode) {
    model.visit([&](const std::string& name, const MatMap<float>& t, ParamRole r) {
      if (r == ParamRole::Matrix || name == "lm_head.weight" ||
          (name == "embed.weight" && model.spec().tied))
        ws_.push_back(&t);
    });
    for (const MatMap<float>* w : ws_) {
      const Index out = w->rows(), in = w->cols();
      auto [it, fresh] = bufs_.try_emplace({out, in});
      if (!fresh) continue;
      Buffers& b = it->second;
      b.x = Mat<float>::Random(R, in);
      b.y.resize(R, out);
      if (mode == 1) {
        b.dy = Mat<float>::Random(R, out);
        b.dx = Mat<float>::Zero(R, in);
        b.dw = Mat<float>::Zero(out, in);
      }
    }
    (void)pass();  // warm-up
  }
  // Seconds of one pass over every weight.
  double pass() {
    const auto t0 = Clock::now();
    for (const MatMap<float>* w : ws_) {
      Buffers& b = bufs_.at({w->rows(), w->cols()});
      ops::linear_forward<float>(b.x, *w, none_, b.y);
      if (mode_ == 1) ops::linear_backward<float>(b.x, *w, b.dy, b.dx, b.dw, nullptr);
    }
    return seconds_since(t0);
  }

 private:
  struct Buffers {
    Mat<float> x, dy, y, dx, dw;
  };
  int mode_;
  std::vector<const MatMap<float>*> ws_;
  std::map<std::pair<Index, Index>, Buffers> bufs_;  // one set per weight shape
  const Mat<float> none_;
};

// A measurement and its projections timed in alternation, pair by pair, so that both see
// the same state of a shared machine: medians of each and of the paired differences (the
// rest: everything outside the projections).
struct Profile {
  std::vector<double> whole, proj, rest;
  void add(double w, double p) {
    whole.push_back(w);
    proj.push_back(p);
    rest.push_back(w - p);
  }
  std::string json() const {
    std::vector<double> r = rest;
    std::sort(r.begin(), r.end());
    char buf[256];
    std::snprintf(buf, sizeof buf,
                  "\"seconds\":%.6f,\"projection_seconds\":%.6f,\"rest_seconds\":%.6f,"
                  "\"rest_seconds_min\":%.6f,\"rest_seconds_max\":%.6f,"
                  "\"projection_fraction\":%.3f,\"rounds\":%zu",
                  median(whole), median(proj), median(rest), r.front(), r.back(),
                  median(proj) / median(whole), rest.size());
    return buf;
  }
};

struct TrainSplit {
  double forward = 0, backward = 0, optimizer = 0;
};

// A training step taken apart: recorded forward + loss, backward, AdamW update (medians).
TrainSplit train_split(RuntimeModel<float>& model, const std::vector<int>& tokens,
                       const std::vector<int>& targets, Index B, Index T, int reps) {
  GradStore<float> grads(model);
  Tape<float> tape(true, &grads);
  train::OptimConfig oc = train::OptimConfig::adamw(3e-4, 0.1);
  train::Optimizer<float> opt(grads, oc);
  std::vector<double> f, b, o;
  for (int r = 0; r <= reps; ++r) {
    grads.zero();
    tape.rewind();
    auto t0 = Clock::now();
    const Var<float> loss = model.loss(tape, tokens, targets, B, T);
    const double tf = seconds_since(t0);
    t0 = Clock::now();
    tape.backward(loss);
    const double tb = seconds_since(t0);
    tape.rewind();
    t0 = Clock::now();
    opt.step();
    const double to = seconds_since(t0);
    if (r > 0) {
      f.push_back(tf);
      b.push_back(tb);
      o.push_back(to);
    }
  }
  return {median(f), median(b), median(o)};
}

}  // namespace

int main(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    const auto next = [&]() -> const char* {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "bench_peer: %s needs a value\n", argv[i]);
        std::exit(2);
      }
      return argv[++i];
    };
    if (!std::strcmp(argv[i], "--model")) a.model = next();
    else if (!std::strcmp(argv[i], "--B")) a.B = std::atol(next());
    else if (!std::strcmp(argv[i], "--T")) a.T = std::atol(next());
    else if (!std::strcmp(argv[i], "--prefill")) a.prefill = std::atol(next());
    else if (!std::strcmp(argv[i], "--decode")) a.decode = std::atol(next());
    else if (!std::strcmp(argv[i], "--threads")) a.threads = std::atoi(next());
    else if (!std::strcmp(argv[i], "--reps")) a.reps = std::atoi(next());
    else if (!std::strcmp(argv[i], "--only")) a.only = next();
    else if (!std::strcmp(argv[i], "--profile")) a.profile = true;
    else {
      std::fprintf(stderr,
                   "usage: bench_peer --model golf15x3e2|lfm2_350m_L<n> [--B 4] [--T 256] "
                   "[--prefill 64] [--decode 64] [--threads N] [--reps 5] "
                   "[--only forward,train,decode] [--profile]\n");
      return 2;
    }
  }
  std::string err;
  ModelDesc desc = model_desc(a.model, err);
  if (!err.empty() || a.model.empty()) {
    std::fprintf(stderr, "bench_peer: %s\n", err.empty() ? "--model is required" : err.c_str());
    return 2;
  }
  if (a.B < 1 || a.T < 1 || a.prefill < 1 || a.decode < 1 || a.reps < 1) {
    std::fprintf(stderr, "bench_peer: B, T, prefill, decode and reps must be >= 1\n");
    return 2;
  }
#ifdef _OPENMP
  if (a.threads > 0) omp_set_num_threads(a.threads);
  const int threads = omp_get_max_threads();
#else
  const int threads = 1;
#endif

  double gemm = 0;
  for (auto [m, k, n] :
       {std::array<Index, 3>{1024, 512, 1612}, {1024, 768, 512}, {2048, 1024, 2048}}) {
    const double g = gemm_gflops(m, k, n, a.reps);
    std::printf("{\"side\":\"hybrid\",\"case\":\"gemm_f32\",\"m\":%lld,\"k\":%lld,\"n\":%lld,"
                "\"gflops\":%.2f,\"threads\":%d}\n",
                (long long)m, (long long)k, (long long)n, g, threads);
    gemm = std::max(gemm, g);
  }
  std::printf("{\"side\":\"hybrid\",\"case\":\"gemm_f32_best\",\"backend\":\"%s\","
              "\"gflops\":%.2f,\"threads\":%d}\n",
              blas::backend(), gemm, threads);

  std::printf("{\"side\":\"hybrid\",\"case\":\"mem_read\",\"mib\":256,\"gbps\":%.2f,"
              "\"threads\":%d}\n",
              read_gbps(a.reps), threads);

  RuntimeModel<float> model(desc, 1);
  std::printf("{\"side\":\"hybrid\",\"model\":\"%s\",\"what\":\"params\",\"params\":%lld,"
              "\"layout\":\"%s\"}\n",
              a.model.c_str(), (long long)model.param_count(), model.layout_string().c_str());
  std::fflush(stdout);

  const int V = model.vocab();
  Rng rng(7);
  std::vector<int> tokens(std::size_t(a.B * a.T)), targets(tokens.size());
  for (auto& t : tokens) t = int(rng.below(std::uint64_t(V)));
  for (auto& t : targets) t = int(rng.below(std::uint64_t(V)));
  const Index BT = a.B * a.T;

  if (a.wants("forward")) {
    (void)model.forward(tokens, a.B, a.T);  // warm-up: the inference tape reaches its size
    std::vector<double> t;
    for (int r = 0; r < a.reps; ++r) {
      const auto t0 = Clock::now();
      const Mat<float> logits = model.forward(tokens, a.B, a.T);
      t.push_back(seconds_since(t0));
      if (!std::isfinite(logits(0, 0))) std::fprintf(stderr, "non-finite logits\n");
    }
    const double s = median(t);
    print_line(a, threads, "forward", a.B, a.T, double(BT) / s, s);
    if (a.profile) {
      Projections pj(model, BT, 0);
      Profile pf;
      for (int r = 0; r < a.reps; ++r) {
        const auto t0 = Clock::now();
        (void)model.forward(tokens, a.B, a.T);
        const double w = seconds_since(t0);
        pf.add(w, pj.pass());
      }
      std::printf("{\"side\":\"hybrid\",\"model\":\"%s\",\"what\":\"profile_forward\",%s}\n",
                  a.model.c_str(), pf.json().c_str());
    }
  }

  if (a.wants("train")) {
    FixedSource src;
    src.vocab = V;
    src.b.B = a.B;
    src.b.T = a.T;
    src.b.tokens = tokens;
    src.b.targets = targets;
    train::TrainConfig cfg;
    cfg.batch = a.B;
    cfg.seq_len = a.T;
    // torch.optim.AdamW on every tensor: betas (0.9, 0.95), eps 1e-8, weight decay 0.1 on
    // the 2-D projection matrices and 0 elsewhere (the Python side uses the same groups),
    // no clipping.
    cfg.optim = train::OptimConfig::adamw(3e-4, 0.1);
    cfg.optim.max_grad_norm = 0;
    train::Trainer<float> tr(model, src, cfg);
    double loss0 = tr.step().loss;  // warm-up: the arena and optimiser state reach their size
    std::vector<double> t;
    double loss = loss0;
    for (int r = 0; r < a.reps; ++r) {
      const auto t0 = Clock::now();
      loss = tr.step().loss;
      t.push_back(seconds_since(t0));
    }
    const double s = median(t);
    char extra[128];
    std::snprintf(extra, sizeof extra, ",\"loss_first\":%.4f,\"loss_last\":%.4f", loss0, loss);
    print_line(a, threads, "train", a.B, a.T, double(BT) / s, s, extra);
    if (a.profile) {
      Projections pj(model, BT, 1);
      Profile pf;
      for (int r = 0; r < a.reps; ++r) {
        const auto t0 = Clock::now();
        (void)tr.step();
        const double w = seconds_since(t0);
        pf.add(w, pj.pass());
      }
      const TrainSplit sp = train_split(model, tokens, targets, a.B, a.T, a.reps);
      std::printf("{\"side\":\"hybrid\",\"model\":\"%s\",\"what\":\"profile_train\",%s,"
                  "\"forward_loss_seconds\":%.5f,\"backward_seconds\":%.5f,"
                  "\"optimizer_seconds\":%.5f}\n",
                  a.model.c_str(), pf.json().c_str(), sp.forward, sp.backward, sp.optimizer);
    }
  }

  if (a.wants("decode")) {
    std::vector<int> prompt(tokens.begin(), tokens.begin() + std::min<Index>(a.prefill, BT));
    while (Index(prompt.size()) < a.prefill) prompt.push_back(int(rng.below(std::uint64_t(V))));
    // Warm-up: a short prefill and a few steps.
    {
      std::vector<SequenceState<float>> st;
      const auto l = model.prefill({prompt}, st);
      int tok = argmax_row(l[0], 0);
      for (int i = 0; i < 4; ++i) tok = argmax_row(model.step(std::span<const int>(&tok, 1), st), 0);
    }
    std::vector<double> t, tp;
    for (int r = 0; r < a.reps; ++r) {
      std::vector<SequenceState<float>> st;
      auto t0 = Clock::now();
      const auto l = model.prefill({prompt}, st);
      int tok = argmax_row(l[0], 0);
      tp.push_back(seconds_since(t0));
      t0 = Clock::now();
      for (Index i = 0; i < a.decode; ++i)
        tok = argmax_row(model.step(std::span<const int>(&tok, 1), st), 0);
      t.push_back(seconds_since(t0));
    }
    const double s = median(t), sp = median(tp);
    char extra[160];
    std::snprintf(extra, sizeof extra,
                  ",\"prefill\":%lld,\"steps\":%lld,\"prefill_seconds\":%.5f,"
                  "\"prefill_tokens_per_s\":%.2f",
                  (long long)a.prefill, (long long)a.decode, sp, double(a.prefill) / sp);
    print_line(a, threads, "decode", 1, a.decode, double(a.decode) / s, s, extra);
    if (a.profile) {  // token by token: each step against one projection pass
      Projections pj(model, 1, 2);
      Profile pf;
      for (int r = 0; r < a.reps; ++r) {
        std::vector<SequenceState<float>> st;
        const auto l = model.prefill({prompt}, st);
        int tok = argmax_row(l[0], 0);
        for (Index i = 0; i < a.decode; ++i) {
          const auto t0 = Clock::now();
          tok = argmax_row(model.step(std::span<const int>(&tok, 1), st), 0);
          const double w = seconds_since(t0);
          pf.add(w, pj.pass());
        }
      }
      std::printf("{\"side\":\"hybrid\",\"model\":\"%s\",\"what\":\"profile_decode\",%s,"
                  "\"weight_bytes\":%lld}\n",
                  a.model.c_str(), pf.json().c_str(),
                  (long long)(model.param_count() * 4));
    }
  }
  return 0;
}
