// Per-op benchmark: forward and backward time of the ops at Golf15x3's shapes (T = 1024,
// float), with GFLOP/s where the op is GEMM-like and the Eigen GEMM rate measured in the
// same run; then every row of the op-case table (autograd/op_cases.hpp) through the tape,
// forward and backward ("table":true lines). One JSON object per line.
//   bench_ops [--quick]
#include <array>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <functional>
#include <string>

#include <hybrid/autograd/op_cases.hpp>
#include <hybrid/model.hpp>
#include <hybrid/ops/embedding.hpp>
#include <hybrid/ops/loss.hpp>
#include <hybrid/ops/ssd_backward.hpp>

using namespace hybrid;
using Clock = std::chrono::steady_clock;

namespace {
int g_reps = 5;

double best_of(const std::function<void()>& f) {
  f();
  double best = 1e30;
  for (int r = 0; r < g_reps; ++r) {
    const auto t0 = Clock::now();
    f();
    best = std::min(best, std::chrono::duration<double>(Clock::now() - t0).count());
  }
  return best;
}

Mat<float> rnd(Index r, Index c, float scale = 1) { return Mat<float>::Random(r, c) * scale; }

void report(const char* op, const char* shape, double fwd, double bwd, double flops_fwd,
            double gemm) {
  std::printf("{\"op\":\"%s\",\"shape\":\"%s\",\"forward_ms\":%.3f,\"backward_ms\":%.3f", op, shape,
              fwd * 1e3, bwd * 1e3);
  if (flops_fwd > 0)
    std::printf(",\"forward_gflops\":%.2f,\"fraction_of_gemm\":%.3f", flops_fwd / fwd / 1e9,
                flops_fwd / fwd / 1e9 / gemm);
  std::printf("}\n");
  std::fflush(stdout);
}
}  // namespace

int main(int argc, char** argv) {
  const bool quick = argc > 1 && !std::strcmp(argv[1], "--quick");
  if (quick) g_reps = 2;
  const Index T = quick ? 256 : 1024, D = 512, Di = 768, H = 12, P = 64, N = 32, W = 1612, V = 1024;
  Mat<float> a = rnd(T, D), w = rnd(W, D, 0.05f), y(T, W);
  const double gemm = 2.0 * T * D * W / best_of([&] { y.noalias() = a * w.transpose(); }) / 1e9;
  std::printf("{\"case\":\"gemm_f32\",\"m\":%lld,\"k\":%lld,\"n\":%lld,\"gflops\":%.2f}\n",
              (long long)T, (long long)D, (long long)W, gemm);
  char shape[96];

  {  // linear: Mamba-2 in_proj
    Mat<float> dy = rnd(T, W), dx(T, D), dw(W, D);
    const double f = best_of([&] { ops::linear_forward<float>(a, w, Mat<float>(), y); });
    const double b = best_of([&] { ops::linear_backward<float>(a, w, dy, dx, dw, nullptr); });
    std::snprintf(shape, sizeof shape, "x(%lld,%lld) W(%lld,%lld)", (long long)T, (long long)D, (long long)W, (long long)D);
    report("linear", shape, f, b, 2.0 * T * D * W, gemm);
  }
  {  // norms
    Mat<float> g = Mat<float>::Ones(1, D), bb = Mat<float>::Zero(1, D), out(T, D), dy = rnd(T, D), dx(T, D), dg(1, D), db(1, D);
    std::vector<float> rstd(T), mean(T);
    const double f = best_of([&] { ops::rmsnorm_forward<float>(a, g, 1e-5f, out, rstd.data()); });
    const double b = best_of([&] { ops::rmsnorm_backward<float>(a, g, rstd.data(), dy, dx, dg); });
    std::snprintf(shape, sizeof shape, "(%lld,%lld)", (long long)T, (long long)D);
    report("rmsnorm", shape, f, b, 0, gemm);
    const double f2 = best_of([&] { ops::layernorm_forward<float>(a, g, bb, 1e-5f, out, mean.data(), rstd.data()); });
    const double b2 = best_of([&] { ops::layernorm_backward<float>(a, g, mean.data(), rstd.data(), dy, dx, dg, db); });
    report("layernorm", shape, f2, b2, 0, gemm);
    Mat<float> yy = rnd(T, Di), z = rnd(T, Di), gw = Mat<float>::Ones(1, Di), o(T, Di), dyy = rnd(T, Di), d1(T, Di), d2(T, Di), d3(1, Di);
    std::vector<float> rs(T);
    const double f3 = best_of([&] { ops::gated_rmsnorm_forward<float>(yy, z, gw, Di, 1e-5f, o, rs.data()); });
    const double b3 = best_of([&] { ops::gated_rmsnorm_backward<float>(yy, z, gw, Di, rs.data(), dyy, d1, d2, d3); });
    std::snprintf(shape, sizeof shape, "(%lld,%lld)", (long long)T, (long long)Di);
    report("gated_rmsnorm", shape, f3, b3, 0, gemm);
  }
  {  // conv over x|B|C
    const Index C = Di + 2 * N;
    Mat<float> u = rnd(T, C), cw = rnd(C, 4), cb = rnd(1, C), out(T, C), dy = rnd(T, C), du(T, C), dw(C, 4), db(1, C);
    const double f = best_of([&] { ops::causal_conv1d_forward<float>(u, cw, cb, nullptr, out, nullptr); });
    const double b = best_of([&] { ops::causal_conv1d_backward<float>(u, cw, dy, du, dw, db); });
    std::snprintf(shape, sizeof shape, "(%lld,%lld) K=4", (long long)T, (long long)C);
    report("causal_conv1d", shape, f, b, 0, gemm);
  }
  {  // SSD
    Mat<float> x = rnd(T, H * P), dt = Mat<float>::Constant(T, H, 0.05f), Bm = rnd(T, N), Cm = rnd(T, N), y2(T, H * P), dy = rnd(T, H * P);
    Mat<float> A = Mat<float>::Constant(1, H, -1.f), Dd = Mat<float>::Ones(1, H);
    Mat<float> dx(T, H * P), ddt(T, H), dB(T, N), dC(T, N), dA(1, H), dD(1, H);
    const ops::SsdDims d{T, int(H), int(P), int(N), 1};
    ops::SsdArgs<float> args{x.data(), dt.data(), A.data(), Bm.data(), Cm.data(), Dd.data(), nullptr, y2.data(), nullptr};
    for (auto [name, path] : {std::pair{"ssd_recurrent", ScanPath::Recurrent}, std::pair{"ssd_chunked", ScanPath::Chunked}}) {
      const double f = best_of([&] { ops::ssd_forward<float>(d, ops::kSsdDefaultChunk, path, args); });
      const double b = best_of([&] {
        ops::ssd_backward<float>(d, ops::kSsdDefaultChunk, args, dy.data(),
                                 {dx.data(), ddt.data(), dA.data(), dB.data(), dC.data(), dD.data()});
      });
      std::snprintf(shape, sizeof shape, "T=%lld H=%lld P=%lld N=%lld Q=%d", (long long)T, (long long)H, (long long)P, (long long)N, ops::kSsdDefaultChunk);
      report(name, shape, f, b, path == ScanPath::Recurrent ? ops::ssd_flops_recurrent(d) : ops::ssd_flops_chunked(d, ops::kSsdDefaultChunk), gemm);
    }
  }
  {  // RoPE + attention (GQA 8/4 x 64)
    const int H = 8, G = 4, P = 64;
    Mat<float> q = rnd(T, H * P), k = rnd(T, G * P), v = rnd(T, G * P), o(T, H * P), dout = rnd(T, H * P);
    Mat<float> dq(T, H * P), dk(T, G * P), dv(T, G * P), lse(T, H);
    Mat<float> qr = q;
    const double fr = best_of([&] { ops::rope_forward<float>(qr, H, P, 0, 10000); });
    const double br = best_of([&] { ops::rope_backward<float>(qr, H, P, 0, 10000); });
    std::snprintf(shape, sizeof shape, "(%lld, 8x64)", (long long)T);
    report("rope", shape, fr, br, 0, gemm);
    const ops::AttnDims ad{T, T, H, G, P};
    const double f = best_of([&] { ops::attention_forward<float>(q.data(), k.data(), v.data(), o.data(), ad, 0.125f, 0, 0, 0, lse.data()); });
    const double b = best_of([&] {
      ops::attention_backward<float>(q.data(), k.data(), v.data(), o.data(), lse.data(), dout.data(), dq.data(), dk.data(), dv.data(), ad, 0.125f, 0, 0, 0);
    });
    std::snprintf(shape, sizeof shape, "T=%lld GQA 8/4 x 64 causal", (long long)T);
    report("attention", shape, f, b, 2.0 * 2 * T * T / 2 * P * H, gemm);
  }
  {  // activations, embedding, loss
    const Index Hd = 1024;
    Mat<float> g = rnd(T, Hd), u = rnd(T, Hd), h(T, Hd), dh = rnd(T, Hd), dg(T, Hd), du(T, Hd);
    std::snprintf(shape, sizeof shape, "(%lld,%lld)", (long long)T, (long long)Hd);
    report("swiglu", shape, best_of([&] { ops::swiglu_forward<float>(g, u, h); }),
           best_of([&] { ops::swiglu_backward<float>(g, u, dh, dg, du); }), 0, gemm);
    report("relu2", shape, best_of([&] { ops::relu2_forward<float>(g, h); }),
           best_of([&] { ops::relu2_backward<float>(g, dh, dg); }), 0, gemm);
    Mat<float> raw = rnd(T, H), bias = rnd(1, H), dtv(T, H), ddt = rnd(T, H), draw(T, H), dbias(1, H);
    std::snprintf(shape, sizeof shape, "(%lld,%lld)", (long long)T, (long long)H);
    report("dt_softplus", shape, best_of([&] { ops::dt_softplus_forward<float>(raw, bias, 0.f, 1e30f, dtv); }),
           best_of([&] { ops::dt_softplus_backward<float>(raw, bias, 0.f, 1e30f, ddt, draw, dbias); }), 0, gemm);
    Mat<float> table = rnd(V, D), out(T, D), dout = rnd(T, D), dtable(V, D);
    std::vector<int> ids(T), tg(T);
    for (Index i = 0; i < T; ++i) ids[i] = int(i * 7 % V), tg[i] = int(i * 13 % V);
    std::snprintf(shape, sizeof shape, "V=%lld D=%lld R=%lld", (long long)V, (long long)D, (long long)T);
    report("embedding", shape, best_of([&] { ops::embedding_forward<float>(table, ids.data(), T, 1.f, out); }),
           best_of([&] { ops::embedding_backward<float>(ids.data(), T, 1.f, dout, dtable); }), 0, gemm);
    Mat<float> logits = rnd(T, V), dl(T, V), capped = logits;
    std::vector<float> lse(T);
    std::snprintf(shape, sizeof shape, "(%lld,%lld)", (long long)T, (long long)V);
    report("cross_entropy", shape, best_of([&] { ops::cross_entropy_forward<float>(logits, tg.data(), lse.data(), 0); }),
           best_of([&] { ops::cross_entropy_backward<float>(logits, tg.data(), lse.data(), 1.0 / T, 0, dl); }), 0, gemm);
    report("softcap", shape, best_of([&] { capped = logits; ops::softcap_forward<float>(capped, 30.f); }),
           best_of([&] { ops::softcap_backward<float>(capped, 30.f, dl); }), 0, gemm);
  }
  for (const OpCase& c : op_bench_cases(quick)) {  // the op table, through the tape
    OpCaseRun<float> run(c, 1);
    Tape<float> tape(true, &run.grads());
    Var<float> y;
    const double f = best_of([&] {
      tape.rewind();
      y = run.forward(tape);
    });
    const double b = best_of([&] {
      tape.rewind();
      y = run.forward(tape);
      emap(y.gradient()).setOnes();
      tape.sweep();
    }) - f;
    std::printf("{\"table\":true,\"op\":\"%s\",\"B\":%lld,\"T\":%lld,\"forward_ms\":%.3f,"
                "\"backward_ms\":%.3f}\n",
                std::string(op_name(c.op)).c_str(), (long long)c.d.B, (long long)c.d.T, f * 1e3,
                std::max(b, 0.0) * 1e3);
    std::fflush(stdout);
  }
  return 0;
}
