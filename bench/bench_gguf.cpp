// Our speed on a GGUF file, measured as llama.cpp's llama-bench measures it, so the two can
// run on the same file in the same session (bench/peer/llama_bench.sh alternates them):
//   pp<N>  prefill of N random ids into a fresh state (last-position logits), tokens / s
//   tg<N>  N single-token decode steps from a fresh state, tokens / s
// The model is a GGUF file (--gguf), or a shape we build with random weights and write to
// --save first (--model golf15x3e2 | lfm2_350m_L<n>, --type f32 | q8_0), then read back:
// what runs is always what the file holds (Q8_0 matrices as int8 with their block scales).
// Beside the rates, the same run's references: "mem_read", the read bandwidth of a
// streaming sum over 256 MiB, and "tg_bound", the decode rate that bandwidth allows when a
// step reads every weight once. For a file with stored (Q8_0) tensors, "memory" gives the
// resident set (MB of RSS) after loading and after release_packed_floats.
//   bench_gguf (--gguf FILE | --model NAME [--type f32|q8_0] --save FILE) [--threads N]
//              [--pp 512] [--tg 64] [--reps 3]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include <hybrid/aliases.hpp>
#include <hybrid/gguf/export.hpp>
#include <hybrid/gguf/import.hpp>
#include <hybrid/model.hpp>

#include "bench_util.hpp"
#ifdef _OPENMP
#include <omp.h>
#endif

using namespace hybrid;
using bench::Clock;
using bench::seconds_since;

namespace {

ModelDesc model_desc(const std::string& name) {
  if (name == "golf15x3e2") return Golf15x3E2::desc();
  const std::string pre = "lfm2_350m_L";
  if (name.rfind(pre, 0) == 0) {
    const int n = std::atoi(name.c_str() + pre.size());
    ModelDesc d = Lfm2_350M::desc();
    HYBRID_CHECK(n >= 1 && n <= int(d.blocks.size()), "lfm2_350m_L<n> needs 1 <= n <= 16, got '", name, "'");
    d.blocks.resize(std::size_t(n));  // the published pattern, cut after n blocks
    return d;
  }
  fail("unknown model '", name, "' (expected golf15x3e2 or lfm2_350m_L<n>)");
}

// GB/s of a streaming sum over `mib` MiB, best of reps, all threads.
double read_gbps(int mib, int reps) {
  const std::vector<float> buf(static_cast<std::size_t>(mib) * (1 << 20) / 4, 1.0f);
  return double(buf.size()) * 4 / bench::stream_seconds(buf, reps) / 1e9;
}

// Bytes one decode step reads: every weight once (the stored matrices in their storage
// type, the float tensors that stay float).
double step_bytes(const RuntimeModel<float>& m) {
  double b = 0;
  const WeightStore* ws = m.weight_store();
  for (const auto& e : m.param_table().entries()) {
    const bool packed = ws && (e.role == ParamRole::Matrix || e.role == ParamRole::Embedding);
    if (e.role == ParamRole::Embedding && !m.spec().tied && e.name == "embed.weight") continue;  // one row read
    b += packed ? double(e.rows * e.cols) * double(dtype_bytes(ws->dtype())) +
                      (ws->dtype() == DType::I8 ? 4.0 * double(e.rows * e.cols) / 32 : 0)
                : 4.0 * double(e.rows * e.cols);
  }
  return b;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    std::string gguf_path, model, type = "f32", save;
    int threads = 0, pp = 512, tg = 64, reps = 3;
    for (int i = 1; i < argc; ++i) {
      const std::string a = argv[i];
      auto next = [&]() -> std::string {
        HYBRID_CHECK(i + 1 < argc, a, " needs a value");
        return argv[++i];
      };
      if (a == "--gguf") gguf_path = next();
      else if (a == "--model") model = next();
      else if (a == "--type") type = next();
      else if (a == "--save") save = next();
      else if (a == "--threads") threads = std::atoi(next().c_str());
      else if (a == "--pp") pp = std::atoi(next().c_str());
      else if (a == "--tg") tg = std::atoi(next().c_str());
      else if (a == "--reps") reps = std::atoi(next().c_str());
      else
        fail("usage: bench_gguf (--gguf FILE | --model golf15x3e2|lfm2_350m_L<n> [--type f32|q8_0] --save FILE) "
             "[--threads N] [--pp 512] [--tg 64] [--reps 3]; unknown argument '", a, "'");
    }
    HYBRID_CHECK(gguf_path.empty() != model.empty(), "give --gguf FILE or --model NAME (with --save FILE)");
    HYBRID_CHECK(pp >= 1 && tg >= 1 && reps >= 1, "--pp, --tg and --reps must be >= 1");
    if (threads > 0) {
#ifdef _OPENMP
      omp_set_num_threads(threads);
#endif
      Eigen::setNbThreads(threads);
    }
    if (!model.empty()) {
      HYBRID_CHECK(!save.empty(), "--model needs --save FILE: the GGUF file both engines run");
      HYBRID_CHECK(type == "f32" || type == "q8_0", "--type: '", type, "' is not f32 or q8_0");
      const RuntimeModel<float> built(model_desc(model), 1);
      gguf::ExportOptions opt;
      opt.type = type == "q8_0" ? GgmlType::Q8_0 : GgmlType::F32;
      opt.name = model;
      const gguf::ExportReport rep = gguf::write_gguf(built, save, opt);
      std::printf("{\"case\":\"export\",\"model\":\"%s\",\"type\":\"%s\",\"file\":\"%s\",\"mb\":%.1f}\n", model.c_str(),
                  type.c_str(), save.c_str(), double(rep.bytes) / 1e6);
      gguf_path = save;
    }
    const GgufReader r(gguf_path);
    const gguf::GgufModelInfo info = gguf::describe(r);
    // What a loaded model holds (held_mb: the rise of the anonymous resident set; the file's
    // mapped pages belong to the page cache) and the peak of the load (peak_rise_mb: VmHWM over
    // VmRSS before it, the file's pages included), with the float copy of the stored tensors
    // and without it. Files with Q8_0 / F16 / BF16 tensors only: an F32 file's floats are its
    // only copy. The rates below run on the model without it.
    bool stored = false;
    for (const auto& t : r.tensors()) stored |= t.type != GgmlType::F32;
    if (stored) {
      for (const bool copy : {true, false}) {
        const bool reset = bench::reset_peak();
        const double anon = bench::status_mb("RssAnon"), rss = bench::status_mb("VmRSS");
        const RuntimeModel<float> x = gguf::load_gguf<float>(r, {.float_copy = copy});
        std::printf("{\"case\":\"memory\",\"float_copy\":%s,\"stored_mb\":%.1f,\"floats_given_back_mb\":%.1f,"
                    "\"held_mb\":%.1f,\"peak_rise_mb\":%.1f,\"peak_reset\":%s}\n",
                    copy ? "true" : "false", double(x.weight_store()->bytes()) / 1e6,
                    double(x.released_float_bytes()) / 1e6, bench::status_mb("RssAnon") - anon,
                    bench::status_mb("VmHWM") - rss, reset ? "true" : "false");
      }
    }
    RuntimeModel<float> m = gguf::load_gguf<float>(r, {.float_copy = false});
    const double bw = read_gbps(256, 5);
    const double bytes = step_bytes(m);
    std::printf("{\"case\":\"mem_read\",\"mib\":256,\"gbps\":%.2f,\"threads\":%d}\n", bw, par::threads());
    std::printf("{\"case\":\"tg_bound\",\"step_mb\":%.1f,\"tokens_per_s\":%.1f}\n", bytes / 1e6, bw * 1e9 / bytes);

    Rng rng(7);
    std::vector<int> prompt(static_cast<std::size_t>(pp));
    for (int& t : prompt) t = int(rng.next_u64() % std::uint64_t(m.vocab()));
    Tape<float> ctx(false);
    // pp: fresh state each rep (the first rep also warms the arena).
    std::vector<double> pt;
    for (int k = 0; k <= reps; ++k) {
      std::vector<SequenceState<float>> st;
      const auto t0 = Clock::now();
      (void)m.prefill({prompt}, st, {}, &ctx);
      if (k > 0) pt.push_back(seconds_since(t0));
    }
    // tg: fresh state, `tg` single steps.
    std::vector<double> gt;
    for (int k = 0; k <= reps; ++k) {
      SequenceState<float> s = m.new_state(tg + 1);
      SequenceState<float>* sp = &s;
      int tok = prompt[0];
      const auto t0 = Clock::now();
      for (int j = 0; j < tg; ++j) {
        const CView<float> l = m.step(std::span<const int>(&tok, 1), std::span<SequenceState<float>* const>(&sp, 1), ctx);
        Index best = 0;
        for (Index v = 1; v < l.cols; ++v)
          if (l(0, v) > l(0, best)) best = v;
        tok = int(best);
      }
      if (k > 0) gt.push_back(seconds_since(t0));
    }
    const double ps = bench::median(pt), gs = bench::median(gt);
    std::printf("{\"case\":\"pp%d\",\"file\":\"%s\",\"arch\":\"%s\",\"weights\":\"%s\",\"tokens_per_s\":%.1f,\"s\":%.4f,"
                "\"threads\":%d,\"load\":%.2f}\n",
                pp, gguf_path.c_str(), gguf::arch_name(info.arch), info.q8_0 ? "q8_0" : "f32", pp / ps, ps,
                par::threads(), bench::load_average());
    std::printf("{\"case\":\"tg%d\",\"file\":\"%s\",\"arch\":\"%s\",\"weights\":\"%s\",\"tokens_per_s\":%.1f,\"ms_per_token\":%.3f,"
                "\"of_bound\":%.3f,\"threads\":%d,\"load\":%.2f}\n",
                tg, gguf_path.c_str(), gguf::arch_name(info.arch), info.q8_0 ? "q8_0" : "f32", tg / gs, 1e3 * gs / tg,
                (tg / gs) / (bw * 1e9 / bytes), par::threads(), bench::load_average());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 2;
  }
  return 0;
}
