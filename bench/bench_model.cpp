// Whole-model CPU benchmark of Golf15x3 (float): prefill tokens/s at T = 1024 and 4096,
// decode tokens/s at batch 1, decode-state bytes vs context length, and the Eigen GEMM
// GFLOP/s measured in the same run. One JSON object per line.
//   bench_model [--quick] [--threads N]
#include <array>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include <hybrid/model.hpp>

#include "bench_util.hpp"
#ifdef _OPENMP
#include <omp.h>
#endif

using namespace hybrid;
using bench::Clock;
using bench::seconds_since;

// Best-of-n GFLOP/s of a float GEMM shaped like the model's projections.
static double gemm_gflops(Index m, Index k, Index n, int reps) {
  Mat<float> a = Mat<float>::Random(m, k), b = Mat<float>::Random(n, k), c(m, n);
  c.noalias() = a * b.transpose();  // warm-up
  double best = 1e30;
  for (int r = 0; r < reps; ++r) {
    auto t0 = Clock::now();
    c.noalias() = a * b.transpose();
    best = std::min(best, seconds_since(t0));
  }
  return 2.0 * m * k * n / best / 1e9;
}

// Multiply-adds per token in the projections (every 2-D weight except the embedding,
// plus the tied LM head) — the "matmul FLOPs" of a forward pass are 2x this.
template <class M>
static Index matmul_params(M& model) {
  Index n = 0;
  model.visit([&](const std::string& name, const MatMap<float>& t, ParamRole r) {
    if (r == ParamRole::Matrix) n += t.size();
    if (name == "embed.weight" && model.spec().tied) n += t.size();  // the LM head
    if (name == "lm_head.weight") n += t.size();
  });
  return n;
}

static Index state_bytes(const SequenceState<float>& s, bool ssm_only) {
  Index n = 0;
  for (const auto& l : s.layers)
    std::visit([&](const auto& x) {
      using X = std::decay_t<decltype(x)>;
      if constexpr (std::is_same_v<X, Mamba2State<float>>) n += (x.conv.size() + x.ssm.size()) * 4;
      else if constexpr (std::is_same_v<X, KvCache<float>>) { if (!ssm_only) n += x.len * x.k.cols() * 2 * 4; }
      else n += x.conv.size() * 4;
    }, l);
  return n;
}

int main(int argc, char** argv) {
  bool quick = false;
  int threads = 0;
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--quick")) quick = true;
    else if (!std::strcmp(argv[i], "--threads") && i + 1 < argc) threads = std::atoi(argv[++i]);
    else {
      std::fprintf(stderr, "usage: bench_model [--quick] [--threads N]\n");
      return 2;
    }
  }
#ifdef _OPENMP
  if (threads > 0) omp_set_num_threads(threads);
  threads = omp_get_max_threads();
#else
  threads = 1;
#endif
  // The reference rate: the best of GEMMs shaped like the model's projections.
  double gemm = 0;
  for (auto [m, k, n] : {std::array<Index, 3>{1024, 512, 1612}, {1024, 768, 512}, {2048, 1024, 2048}}) {
    const double g = gemm_gflops(m, k, n, quick ? 2 : 5);
    std::printf("{\"case\":\"gemm_f32\",\"m\":%lld,\"k\":%lld,\"n\":%lld,\"gflops\":%.2f,\"threads\":%d}\n",
                (long long)m, (long long)k, (long long)n, g, threads);
    gemm = std::max(gemm, g);
  }
  std::fflush(stdout);

  Golf15x3 model(1);
  const Index mm = matmul_params(model);
  Rng rng(5);
  for (Index T : quick ? std::vector<Index>{256} : std::vector<Index>{1024, 4096}) {
    std::vector<int> toks(T);
    for (auto& t : toks) t = int(rng.below(model.vocab()));
    std::vector<SequenceState<float>> st;
    model.prefill({std::vector<int>(toks.begin(), toks.begin() + std::min<Index>(T, 64))}, st);  // warm-up
    auto t0 = Clock::now();
    model.prefill({toks}, st);
    const double s = seconds_since(t0);
    const double mm_gflops = 2.0 * mm * T / s / 1e9;
    std::printf("{\"case\":\"prefill\",\"model\":\"Golf15x3\",\"T\":%lld,\"seconds\":%.4f,"
                "\"tokens_per_s\":%.1f,\"matmul_gflops\":%.2f,\"gemm_gflops\":%.2f,"
                "\"fraction_of_gemm\":%.3f}\n",
                (long long)T, s, T / s, mm_gflops, gemm, mm_gflops / gemm);
    std::fflush(stdout);

    // Decode at batch 1 after this prefill.
    const int n_dec = quick ? 16 : 64;
    const Index ssm_before = state_bytes(st[0], true);
    t0 = Clock::now();
    for (int i = 0; i < n_dec; ++i) {
      const int tok = int(rng.below(model.vocab()));
      model.step(std::span<const int>(&tok, 1), st);
    }
    const double ds = seconds_since(t0);
    std::printf("{\"case\":\"decode\",\"model\":\"Golf15x3\",\"batch\":1,\"context\":%lld,"
                "\"tokens\":%d,\"tokens_per_s\":%.1f,\"ssm_state_bytes\":%lld,"
                "\"ssm_state_bytes_after\":%lld,\"total_state_bytes\":%lld}\n",
                (long long)T, n_dec, n_dec / ds, (long long)ssm_before,
                (long long)state_bytes(st[0], true), (long long)state_bytes(st[0], false));
    std::fflush(stdout);
  }
  return 0;
}
