// Throughput of the SSD scan (chunked and recurrent) against Eigen's float GEMM measured in
// the same run, on all OpenMP threads. One JSON object per line. Usage: bench_ssd [--quick]
// gflops counts the flops of ops::ssd_flops_recurrent / ssd_flops_chunked (what each path
// computes: the chunked count includes the masked upper triangle of its L x L products), so
// compare paths by ms, and each path's efficiency by ratio_to_gemm.
#include <hybrid/ops/ssd.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

using namespace hybrid;

namespace {

double g_min_seconds = 0.3;  // time spent per measurement; --quick shortens it

// Best wall time of f() in seconds over repeats filling g_min_seconds (after one warm-up).
template <class F>
double best_time(F&& f, double min_seconds = g_min_seconds) {
  f();
  double best = 1e30, total = 0;
  int reps = 0;
  while (total < min_seconds || reps < 3) {
    const auto t0 = std::chrono::steady_clock::now();
    f();
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    best = std::min(best, s);
    total += s;
    ++reps;
  }
  return best;
}

// Eigen float GEMM, (1024, 768) @ (768, 2048), on all threads: the reference rate.
double gemm_gflops() {
  Mat<float> a = Mat<float>::Random(1024, 768), b = Mat<float>::Random(768, 2048), c(1024, 2048);
  const double s = best_time([&] { c.noalias() = a * b; }, std::max(g_min_seconds, 0.5));
  const double gf = 2.0 * 1024 * 768 * 2048 / s * 1e-9;
  std::printf("{\"case\":\"gemm\",\"m\":1024,\"k\":768,\"n\":2048,\"threads\":%d,"
              "\"ms\":%.3f,\"gflops\":%.1f}\n", Eigen::nbThreads(), s * 1e3, gf);
  return gf;
}

template <class S>
struct Inputs {
  std::vector<S> x, dt, A, B, C, D, s0, y, s1;
  Inputs(const ops::SsdDims& d) {
    std::mt19937 rng(1);
    std::normal_distribution<double> nd(0, 1);
    auto fill = [&](std::vector<S>& v, Index n) {
      v.resize(n);
      for (auto& e : v) e = S(nd(rng));
    };
    fill(x, d.T * d.H * d.P);
    fill(B, d.T * d.G * d.N);
    fill(C, d.T * d.G * d.N);
    fill(D, d.H);
    fill(s0, Index(d.H) * d.P * d.N);
    dt.resize(d.T * d.H);
    for (auto& e : dt) e = S(std::log1p(std::exp(-1.5 + nd(rng))));
    A.resize(d.H);
    for (int h = 0; h < d.H; ++h) A[h] = S(-1 - 15.0 * h / std::max(1, d.H - 1));
    y.resize(d.T * d.H * d.P);
    s1.resize(s0.size());
  }
  ops::SsdArgs<S> args() {
    return {x.data(), dt.data(), A.data(), B.data(), C.data(), D.data(), s0.data(), y.data(),
            s1.data()};
  }
};

template <class S>
void run_case(const char* name, const ops::SsdDims& d, const std::vector<int>& chunks,
              double gemm) {
  Inputs<S> in(d);
  const auto a = in.args();
  const char* ty = sizeof(S) == 4 ? "float" : "double";
  const char* pick = ops::ssd_auto_chunked(d, sizeof(S)) ? "chunked" : "recurrent";
  auto line = [&](const char* path, int Q, double s, double flops) {
    const double gf = flops / s * 1e-9;
    std::printf("{\"case\":\"%s\",\"type\":\"%s\",\"path\":\"%s\",\"Q\":%d,\"T\":%lld,"
                "\"H\":%d,\"P\":%d,\"N\":%d,\"G\":%d,\"ms\":%.4f,\"gflops\":%.1f,"
                "\"gemm_gflops\":%.1f,\"ratio_to_gemm\":%.3f,\"auto_picks\":\"%s\"}\n",
                name, ty, path, Q, (long long)d.T, d.H, d.P, d.N, d.G, s * 1e3, gf, gemm,
                gf / gemm, pick);
    std::fflush(stdout);
  };
  line("recurrent", 0, best_time([&] { ops::ssd_recurrent(d, a); }),
       ops::ssd_flops_recurrent(d));
  for (int Q : chunks)
    line("chunked", Q, best_time([&] { ops::ssd_chunked(d, Q, a); }),
         ops::ssd_flops_chunked(d, Q));
}

}  // namespace

int main(int argc, char** argv) {
  bool quick = false;
  for (int i = 1; i < argc; ++i) quick |= std::strcmp(argv[i], "--quick") == 0;
  if (quick) g_min_seconds = 0.05;
  const double gemm = gemm_gflops();
  const int q0 = ops::kSsdDefaultChunk;
  const std::vector<int> sweep = quick ? std::vector<int>{q0} : std::vector<int>{32, 64, 128, 256};
  // Golf15x3's mixer: d_model 512, expand 1.5 -> d_inner 768 = 12 heads of 64, d_state 32
  for (Index T : {Index(1024), Index(4096)})
    run_case<float>("golf15x3", {T, 12, 64, 32, 1}, sweep, gemm);
  for (Index T : {Index(1024), Index(4096)})
    run_case<float>("large", {T, 32, 64, 128, 1}, sweep, gemm);
  if (quick) return 0;
  run_case<float>("state64k", {1024, 16, 64, 256, 1}, sweep, gemm);
  run_case<double>("golf15x3", {1024, 12, 64, 32, 1}, {q0}, gemm);
  for (Index T : {Index(1), Index(16), Index(256)})  // decode and short prompts
    run_case<float>("golf15x3_short", {T, 12, 64, 32, 1}, {q0}, gemm);
  return 0;
}
