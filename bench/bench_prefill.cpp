// Long-prompt prefill: peak resident memory and tokens/s of one prefill of T random tokens
// into a shipped alias (float, random weights), in chunks. Beside it, in the same run: the
// model's own weight bytes and decode-state bytes (what the memory should come to), and the
// rate of a short reference prefill (how the rate holds as the prompt grows), run twice so
// that the first call of the process and a warm one compare. One JSON object.
//   bench_prefill [--model NAME] [--tokens T] [--ref-tokens R] [--chunk C] [--threads N]
// Peak RSS is the kernel's high-water mark (VmHWM), reset before the long prefill.
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include <hybrid/alias_registry.hpp>
#include <hybrid/model.hpp>

#include "bench_util.hpp"
#ifdef _OPENMP
#include <omp.h>
#endif

using namespace hybrid;
using bench::Clock;
using bench::reset_peak;
using bench::status_mb;

namespace {

// Bytes of decode state the sequence holds: KV rows in use and the constant SSM/conv state.
double state_mb(const SequenceState<float>& s) {
  double b = 0;
  for (const auto& l : s.layers)
    std::visit([&](const auto& x) {
      using X = std::decay_t<decltype(x)>;
      if constexpr (std::is_same_v<X, Mamba2State<float>>) b += 4.0 * double(x.conv.size() + x.ssm.size());
      else if constexpr (std::is_same_v<X, ShortConvState<float>>) b += 4.0 * double(x.conv.size());
      else b += 2.0 * 4.0 * double(x.len) * double(x.k.cols());
    }, l);
  return b / (1024.0 * 1024.0);
}

double prefill_seconds(const RuntimeModel<float>& m, const std::vector<int>& toks, Index chunk,
                       std::vector<SequenceState<float>>& st, Tape<float>& ctx) {
  const auto t0 = Clock::now();
  const auto l = m.prefill({toks}, st, {.chunk = chunk}, &ctx);
  const double s = bench::seconds_since(t0);
  HYBRID_CHECK(l[0].rows() == 1 && l[0].allFinite(), "prefill gave non-finite logits");
  return s;
}

}  // namespace

int main(int argc, char** argv) {
  std::string model_name = "Golf15x3E2";
  Index T = 8192, ref_T = 2048, chunk = PrefillOptions{}.chunk;
  int threads = 2;
  for (int i = 1; i < argc; ++i) {
    const auto next = [&]() -> const char* {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "bench_prefill: %s needs a value\n", argv[i]);
        std::exit(2);
      }
      return argv[++i];
    };
    if (!std::strcmp(argv[i], "--model")) model_name = next();
    else if (!std::strcmp(argv[i], "--tokens")) T = std::atoll(next());
    else if (!std::strcmp(argv[i], "--ref-tokens")) ref_T = std::atoll(next());
    else if (!std::strcmp(argv[i], "--chunk")) chunk = std::atoll(next());
    else if (!std::strcmp(argv[i], "--threads")) threads = std::atoi(next());
    else {
      std::fprintf(stderr,
                   "usage: bench_prefill [--model NAME] [--tokens T] [--ref-tokens R] "
                   "[--chunk C (0 = whole prompt)] [--threads N]\n");
      return 2;
    }
  }
  if (T < 1 || ref_T < 1 || chunk < 0 || threads < 1) {
    std::fprintf(stderr, "bench_prefill: --tokens, --ref-tokens, --threads >= 1 and --chunk >= 0\n");
    return 2;
  }
#ifdef _OPENMP
  omp_set_num_threads(threads);
#endif
  try {
    const AliasInfo& info = find_alias(model_name);
    const RuntimeModel<float> model(info.desc(), 1);
    const double weights_mb = 4.0 * double(model.param_count()) / (1024.0 * 1024.0);
    Rng rng(7);
    std::vector<int> toks(static_cast<std::size_t>(T)), ref(static_cast<std::size_t>(ref_T));
    for (auto& t : toks) t = int(rng.below(std::uint64_t(model.vocab())));
    for (auto& t : ref) t = int(rng.below(std::uint64_t(model.vocab())));

    std::vector<SequenceState<float>> st;
    double first_s = 0, warm_s = 0;
    {
      Tape<float> ctx(false);
      first_s = prefill_seconds(model, ref, chunk, st, ctx);  // the process's first call
      warm_s = prefill_seconds(model, ref, chunk, st, ctx);
    }
    st.clear();
    const double base_mb = status_mb("VmRSS");
    const bool reset = reset_peak();
    Tape<float> ctx(false);
    const double s = prefill_seconds(model, toks, chunk, st, ctx);
    const double peak_mb = status_mb("VmHWM");
    std::printf("{\"bench\":\"prefill\",\"model\":\"%s\",\"tokens\":%lld,\"chunk\":%lld,"
                "\"threads\":%d,\"seconds\":%.3f,\"tokens_per_s\":%.1f,\"ref_tokens\":%lld,"
                "\"ref_tokens_per_s\":%.1f,\"rate_vs_ref\":%.3f,\"first_over_warm\":%.3f,"
                "\"peak_rss_mb\":%.1f,\"peak_reset\":%s,\"rss_before_mb\":%.1f,"
                "\"weights_mb\":%.1f,\"state_mb\":%.1f,\"arena_mb\":%.1f}\n",
                model_name.c_str(), (long long)T, (long long)chunk, threads, s, double(T) / s,
                (long long)ref_T, double(ref_T) / warm_s, (double(ref_T) / warm_s) / (double(T) / s),
                first_s / warm_s, peak_mb, reset ? "true" : "false", base_mb, weights_mb,
                state_mb(st[0]), double(ctx.arena().capacity()) / (1024.0 * 1024.0));
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_prefill: %s\n", e.what());
    return 1;
  }
  return 0;
}
