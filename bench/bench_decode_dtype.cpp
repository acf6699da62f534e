// Decode tokens/s of Golf15x3E2 at batch 1 with its weights stored as f32, bf16, f16 and
// int8 (per row and per 32 columns), in one run: the ratio of each to f32 and the largest
// |logit difference| against the float model over the same tokens. One JSON object per line.
//   bench_decode_dtype [--quick] [--threads N] [--tokens N] [--reps N]
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include <hybrid/model.hpp>
#include <hybrid/ops/qlinear.hpp>

#include "bench_util.hpp"
#ifdef _OPENMP
#include <omp.h>
#endif

using namespace hybrid;
using bench::Clock;
using bench::load_average;  // runs are comparable when it is below the thread count

namespace {

struct Kind {
  DType dtype;
  Index group;  // int8 columns per scale, 0 = per row
};

// Prefills `prompt`, then feeds `toks` one step at a time (the same tokens for every storage
// type, so the logits compare). Returns the seconds of the steps; logits: (steps, V).
double decode(const RuntimeModel<float>& m, const std::vector<int>& prompt,
              const std::vector<int>& toks, Mat<float>& logits) {
  std::vector<SequenceState<float>> st;
  Tape<float> ctx(false);  // kept across steps, as generate() does
  m.prefill({prompt}, st, {}, &ctx);
  logits.resize(Index(toks.size()), m.vocab());
  const auto t0 = Clock::now();
  for (std::size_t i = 0; i < toks.size(); ++i)
    logits.row(Index(i)) = m.step(std::span<const int>(&toks[i], 1), st, &ctx).row(0);
  return bench::seconds_since(t0);
}

}  // namespace

int main(int argc, char** argv) {
  int threads = 2, n_tok = 64, reps = 3, context = 64;
  bool quick = false;
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--quick")) quick = true;
    else if (!std::strcmp(argv[i], "--threads") && i + 1 < argc) threads = std::atoi(argv[++i]);
    else if (!std::strcmp(argv[i], "--tokens") && i + 1 < argc) n_tok = std::atoi(argv[++i]);
    else if (!std::strcmp(argv[i], "--reps") && i + 1 < argc) reps = std::atoi(argv[++i]);
    else {
      std::fprintf(stderr, "usage: bench_decode_dtype [--quick] [--threads N] [--tokens N] [--reps N]\n");
      return 2;
    }
  }
  if (quick) n_tok = 16, reps = 1, context = 16;
  if (threads < 1 || n_tok < 1 || reps < 1) {
    std::fprintf(stderr, "bench_decode_dtype: --threads, --tokens and --reps must be >= 1\n");
    return 2;
  }
#ifdef _OPENMP
  omp_set_num_threads(threads);
#else
  threads = 1;
#endif

  const double load_before = load_average();
  RuntimeModel<float> model(Golf15x3E2::desc(), 1);
  Rng rng(7);
  std::vector<int> prompt(static_cast<std::size_t>(context)), toks(static_cast<std::size_t>(n_tok));
  for (auto& t : prompt) t = int(rng.below(std::uint64_t(model.vocab())));
  for (auto& t : toks) t = int(rng.below(std::uint64_t(model.vocab())));

  const Kind kinds[] = {{DType::F32, 0}, {DType::BF16, 0}, {DType::F16, 0}, {DType::I8, 0}, {DType::I8, 32}};
  constexpr int K = sizeof(kinds) / sizeof(kinds[0]);
  std::vector<double> best(K, 1e30);
  std::vector<Index> bytes(K, 0);
  std::vector<Mat<float>> logits(K);
  // Storage types take turns in every repetition, so a slow moment of a shared machine
  // does not land on one type only; each keeps its best time.
  for (int r = 0; r < reps; ++r)
    for (int k = 0; k < K; ++k) {
      model.set_weight_storage(kinds[k].dtype, kinds[k].group);
      if (r == 0) {
        Mat<float> warm;
        decode(model, prompt, std::vector<int>(toks.begin(), toks.begin() + std::min(4, n_tok)), warm);
      }
      best[std::size_t(k)] = std::min(best[std::size_t(k)], decode(model, prompt, toks, logits[std::size_t(k)]));
      if (const WeightStore* ws = model.weight_store()) {
        bytes[std::size_t(k)] = ws->bytes();
      } else {
        Index n = 0;
        for (const auto& e : model.param_table().entries())
          if (e.role == ParamRole::Matrix || e.role == ParamRole::Embedding) n += 4 * e.size();
        bytes[std::size_t(k)] = n;
      }
    }
  model.set_weight_storage(DType::F32);
  const double load_after = load_average();

  const double f32_rate = n_tok / best[0];
  const double max_logit = logits[0].cwiseAbs().maxCoeff();
  std::vector<double> ratio(K);
  for (int k = 0; k < K; ++k) {
    const double rate = n_tok / best[std::size_t(k)];
    ratio[std::size_t(k)] = rate / f32_rate;
    const double diff = (logits[std::size_t(k)] - logits[0]).cwiseAbs().maxCoeff();
    std::printf("{\"case\":\"decode_dtype\",\"model\":\"Golf15x3E2\",\"dtype\":\"%s\",\"group\":\"%s\","
                "\"batch\":1,\"threads\":%d,\"kernel\":\"%s\",\"context\":%d,\"tokens\":%d,"
                "\"reps\":%d,\"tokens_per_s\":%.2f,\"ratio_vs_f32\":%.3f,\"weight_bytes\":%lld,"
                "\"max_abs_logit_diff\":%.6g,\"max_abs_logit\":%.6g}\n",
                dtype_name(kinds[k].dtype), weight_group_name(kinds[k].dtype, kinds[k].group).c_str(),
                threads, ops::qgemv_kernel(), context, n_tok, reps, rate, ratio[std::size_t(k)],
                (long long)bytes[std::size_t(k)], diff, max_logit);
  }
  // The targets: bf16 >= 1.7x and int8 >= 2.5x the float decode rate.
  std::printf("{\"case\":\"decode_dtype_summary\",\"model\":\"Golf15x3E2\",\"threads\":%d,"
              "\"f32_tokens_per_s\":%.2f,\"bf16_ratio\":%.3f,\"int8_ratio\":%.3f,\"int8_g32_ratio\":%.3f,"
              "\"bf16_target\":1.7,\"int8_target\":2.5,\"bf16_met\":%s,\"int8_met\":%s,"
              "\"loadavg_before\":%.2f,\"loadavg_after\":%.2f}\n",
              threads, f32_rate, ratio[1], ratio[3], ratio[4], ratio[1] >= 1.7 ? "true" : "false",
              ratio[3] >= 2.5 ? "true" : "false", load_before, load_after);
  return 0;
}
