// Training-step benchmark of Golf15x3 (float) on the CPU: tokens/s of forward + backward +
// optimiser at T = 1024, the model-FLOP rate as a fraction of the Eigen GEMM rate measured
// in the same run, and the step's memory: parameters, gradients and optimiser state (one
// allocation each) and the tape arena (reserved, and used in the step broken down into
// activations, their gradients, saved values and op workspaces), with the memory per token
// of the step (arena used / T, and the process peak / T). One JSON object per line.
//   bench_train [--quick] [--threads N] [--recompute] [--seq-len T] [--steps N]
#include <array>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <string>

#include <hybrid/model.hpp>
#include <hybrid/train/trainer.hpp>
#ifdef _OPENMP
#include <omp.h>
#endif

using namespace hybrid;
using Clock = std::chrono::steady_clock;

static double gemm_gflops(Index m, Index k, Index n, int reps) {
  Mat<float> a = Mat<float>::Random(m, k), b = Mat<float>::Random(n, k), c(m, n);
  c.noalias() = a * b.transpose();
  double best = 1e30;
  for (int r = 0; r < reps; ++r) {
    auto t0 = Clock::now();
    c.noalias() = a * b.transpose();
    best = std::min(best, std::chrono::duration<double>(Clock::now() - t0).count());
  }
  return 2.0 * m * k * n / best / 1e9;
}

static long peak_rss_kb() {
  std::ifstream f("/proc/self/status");
  std::string line;
  while (std::getline(f, line))
    if (line.rfind("VmHWM:", 0) == 0) return std::atol(line.c_str() + 6);
  return -1;
}

int main(int argc, char** argv) {
  bool quick = false, recompute = false;
  Index seq_len = 0;
  int n_steps = 0;
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--quick")) quick = true;
    else if (!std::strcmp(argv[i], "--recompute")) recompute = true;
    else if (!std::strcmp(argv[i], "--seq-len") && i + 1 < argc) seq_len = std::atol(argv[++i]);
    else if (!std::strcmp(argv[i], "--steps") && i + 1 < argc) n_steps = std::atoi(argv[++i]);
#ifdef _OPENMP
    else if (!std::strcmp(argv[i], "--threads") && i + 1 < argc) omp_set_num_threads(std::atoi(argv[++i]));
#endif
    else {
      std::fprintf(stderr, "usage: bench_train [--quick] [--threads N] [--recompute] [--seq-len T] "
                           "[--steps N]\n");
      return 2;
    }
  }
  double gemm = 0;
  for (auto [m, k, n] : {std::array<Index, 3>{1024, 512, 1612}, {1024, 768, 512}, {2048, 1024, 2048}})
    gemm = std::max(gemm, gemm_gflops(m, k, n, quick ? 2 : 5));
  std::printf("{\"case\":\"gemm_f32\",\"gflops\":%.2f}\n", gemm);

  Golf15x3 model(1);
  const Index T = seq_len > 0 ? seq_len : quick ? 256 : 1024, B = 1;
  // Model FLOPs per token of a training step: 6 x (projection weights, LM head included)
  // plus attention's 6 x T x d_attn per attention layer (causal: half of 12 T d).
  Index mm = 0;
  model.visit([&](const std::string& name, const MatMap<float>& t, ParamRole r) {
    if (r == ParamRole::Matrix || name == "embed.weight") mm += t.size();
  });
  const double attn = 3 * 6.0 * T * 8 * 64;  // 3 attention blocks, 8 heads x 64
  const double flops_per_token = 6.0 * double(mm) + attn;

  struct Fixed : data::Source {
    data::Batch b;
    data::Batch train_batch(Index, Index) override { return b; }
    std::vector<data::Batch> val_batches(Index, Index, Index) override { return {b}; }
    std::string state() const override { return ""; }
    void set_state(const std::string&) override {}
    std::string describe() const override { return "fixed"; }
    int vocab_needed() const override { return 1024; }
  } src;
  Rng rng(1);
  src.b.B = B;
  src.b.T = T;
  for (Index i = 0; i < B * T; ++i) {
    src.b.tokens.push_back(int(rng.below(1024)));
    src.b.targets.push_back(int(rng.below(1024)));
  }
  train::TrainConfig cfg;
  cfg.batch = B;
  cfg.seq_len = T;
  cfg.optim.max_grad_norm = 1.0;
  cfg.recompute = recompute;
  train::Trainer<float> tr(model, src, cfg);
  tr.step();  // warm-up: the arena and optimiser buffers reach their size
  const int steps = n_steps > 0 ? n_steps : quick ? 2 : 4;
  double best = 1e30;
  for (int i = 0; i < steps; ++i) best = std::min(best, tr.step().seconds);
  const double tps = double(B * T) / best;
  const double mfu = tps * flops_per_token / 1e9 / gemm;
  std::printf("{\"case\":\"train_step\",\"model\":\"Golf15x3\",\"B\":%lld,\"T\":%lld,\"recompute\":%s,"
              "\"seconds\":%.3f,\"tokens_per_s\":%.1f,\"model_gflops\":%.2f,\"gemm_gflops\":%.2f,"
              "\"fraction_of_gemm\":%.3f}\n",
              (long long)B, (long long)T, recompute ? "true" : "false", best, tps,
              tps * flops_per_token / 1e9, gemm, mfu);
  // Memory: parameters + gradients + optimiser state (+ arena = saved activations and
  // temporaries of one step) vs the process peak.
  Index params = 0, opt_state = 0;
  model.visit([&](const std::string&, const MatMap<float>& t, ParamRole) { params += t.size(); });
  tr.optimizer().visit_state([&](const std::string&, MatMap<float>& t) { opt_state += t.size(); });
  const double mb = 1.0 / (1 << 20);
  const double accounted = (2.0 * params + opt_state) * 4 + double(tr.arena_bytes());
  const auto& u = tr.arena_usage();  // the arena's use in the last step, by kind
  std::printf("{\"case\":\"train_memory\",\"params_mb\":%.1f,\"grads_mb\":%.1f,\"optimizer_mb\":%.1f,"
              "\"arena_mb\":%.1f,\"arena_used_mb\":%.1f,\"activations_mb\":%.1f,"
              "\"activation_grads_mb\":%.1f,\"saved_mb\":%.1f,\"op_workspace_mb\":%.1f,"
              "\"accounted_mb\":%.1f,\"peak_rss_mb\":%.1f}\n",
              params * 4 * mb, params * 4 * mb, opt_state * 4 * mb, tr.arena_bytes() * mb,
              u.total() * mb, u.values * mb, u.gradients * mb, u.saved * mb, u.workspace * mb,
              accounted * mb, peak_rss_kb() / 1024.0);
  // Per token of the step (B * T tokens): the arena it used, and the whole process's peak
  // (parameters, gradients and optimiser state included, so it falls as T grows).
  const double tokens = double(B * T);
  const auto ru = tr.recompute_usage();  // one recomputed block's tape (recompute only)
  std::printf("{\"case\":\"train_memory_recompute\",\"block_tape_used_mb\":%.1f,\"activations_mb\":%.1f,"
              "\"activation_grads_mb\":%.1f,\"saved_mb\":%.1f,\"op_workspace_mb\":%.1f}\n",
              ru.total() * mb, ru.values * mb, ru.gradients * mb, ru.saved * mb, ru.workspace * mb);
  std::printf("{\"case\":\"train_memory_per_token\",\"B\":%lld,\"T\":%lld,\"recompute\":%s,"
              "\"arena_high_water_bytes_per_token\":%.0f,\"arena_reserved_bytes_per_token\":%.0f,"
              "\"peak_rss_bytes_per_token\":%.0f,\"peak_rss_mb\":%.1f,\"seconds\":%.3f}\n",
              (long long)B, (long long)T, recompute ? "true" : "false", double(tr.arena_high_water()) / tokens,
              double(tr.arena_bytes()) / tokens, peak_rss_kb() * 1024.0 / tokens,
              peak_rss_kb() / 1024.0, best);
  return 0;
}
