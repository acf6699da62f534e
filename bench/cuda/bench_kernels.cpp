// Time of every CUDA kernel on model-sized shapes, beside two references measured in the
// same run: the device-to-device copy bandwidth (what a memory-bound kernel can reach) and
// the cuBLASLt float GEMM rate (what the projections run at). One JSON line per row:
//   {"op":"rmsnorm","shape":"(8192,2048)","ms":0.041,"gbps":1630.2,"of_copy":0.62}
//   {"op":"ssd_chunked",...,"gflops":...,"of_gemm":...}
// Usage: bench_cuda_kernels [--reps N]. Exits with 77 where no CUDA device is visible.
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include <hybrid/cuda/ops.hpp>

using namespace hybrid;

namespace {

int g_reps = 20;

// Median time in ms of f() on the context's stream, after one warm-up call.
double time_ms(const cuda::Context& c, const std::function<void()>& f) {
  f();
  c.sync();
  cudaEvent_t a, b;
  HYBRID_CUDA_CHECK(cudaEventCreate(&a));
  HYBRID_CUDA_CHECK(cudaEventCreate(&b));
  std::vector<float> t;
  for (int r = 0; r < g_reps; ++r) {
    HYBRID_CUDA_CHECK(cudaEventRecord(a, c.raw_stream()));
    f();
    HYBRID_CUDA_CHECK(cudaEventRecord(b, c.raw_stream()));
    HYBRID_CUDA_CHECK(cudaEventSynchronize(b));
    float ms = 0;
    HYBRID_CUDA_CHECK(cudaEventElapsedTime(&ms, a, b));
    t.push_back(ms);
  }
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

// A device buffer of n floats filled with small values (a fixed pattern, on the host once).
Buffer<float, Cuda> filled(Index n, const cuda::Context& c, float lo = -1, float hi = 1) {
  Buffer<float, Cuda> b(n);
  std::vector<float> h(static_cast<std::size_t>(n));
  for (Index i = 0; i < n; ++i) h[i] = lo + (hi - lo) * float((i * 2654435761u) % 1000) / 1000.f;
  cuda::upload<float>(CView<float>(h.data(), 1, n), View<float, Cuda>(b.data(), 1, n), c.stream());
  c.sync();
  return b;
}

double g_copy_gbps = 0, g_gemm_gflops = 0;

void row_mem(const char* op, const std::string& shape, double ms, double bytes) {
  const double gbps = bytes / ms / 1e6;
  std::printf("{\"op\":\"%s\",\"shape\":\"%s\",\"ms\":%.4f,\"gbps\":%.1f,\"of_copy\":%.3f}\n", op, shape.c_str(), ms,
              gbps, gbps / g_copy_gbps);
}
void row_flops(const char* op, const std::string& shape, double ms, double flops) {
  const double gf = flops / ms / 1e6;
  std::printf("{\"op\":\"%s\",\"shape\":\"%s\",\"ms\":%.4f,\"gflops\":%.1f,\"of_gemm\":%.3f}\n", op, shape.c_str(), ms,
              gf, gf / g_gemm_gflops);
}

}  // namespace

int main(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--reps") && i + 1 < argc) g_reps = std::atoi(argv[++i]);
    else if (!std::strcmp(argv[i], "--help")) {
      std::printf("bench_cuda_kernels [--reps N]: CUDA kernel times beside the same-run copy bandwidth and GEMM rate\n");
      return 0;
    } else {
      std::fprintf(stderr, "bench_cuda_kernels: unknown argument %s (try --help)\n", argv[i]);
      return 2;
    }
  }
  if (g_reps < 1) {
    std::fprintf(stderr, "bench_cuda_kernels: --reps must be >= 1\n");
    return 2;
  }
  if (cuda::device_count() == 0) {
    std::printf("no CUDA device visible\n");
    return 77;
  }
  cuda::ContextOptions opt;
  opt.arena_bytes = std::size_t(1) << 30;
  cuda::Context c(opt);
  cudaDeviceProp prop{};
  HYBRID_CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
  std::printf("{\"device\":\"%s\",\"sms\":%d}\n", prop.name, prop.multiProcessorCount);

  // References.
  const Index big = Index(1) << 28;  // 1 GiB of floats
  {
    Buffer<float, Cuda> a(big), b(big);
    const double ms = time_ms(c, [&] {
      HYBRID_CUDA_CHECK(cudaMemcpyAsync(b.data(), a.data(), std::size_t(big) * 4, cudaMemcpyDeviceToDevice,
                                        c.raw_stream()));
    });
    g_copy_gbps = 2.0 * big * 4 / ms / 1e6;
    std::printf("{\"case\":\"copy\",\"bytes\":%lld,\"gbps\":%.1f}\n", (long long)(big * 4), g_copy_gbps);
  }
  {
    const Index M = 8192, K = 4096, N = 4096;
    auto x = filled(M * K, c), W = filled(N * K, c);
    Buffer<float, Cuda> y(M * N);
    const View<const float, Cuda> xv(x.data(), M, K), Wv(W.data(), N, K);
    const double ms = time_ms(c, [&] { ops::linear_forward<float>(c, xv, Wv, nullptr, y.view(M, N)); });
    g_gemm_gflops = 2.0 * M * N * K / ms / 1e6;
    std::printf("{\"case\":\"gemm_f32\",\"m\":%lld,\"n\":%lld,\"k\":%lld,\"gflops\":%.1f}\n", (long long)M,
                (long long)N, (long long)K, g_gemm_gflops);
    c.set_gemm_mode(cuda::GemmMode::Bf16);
    const double msb = time_ms(c, [&] { ops::linear_forward<float>(c, xv, Wv, nullptr, y.view(M, N)); });
    c.set_gemm_mode(cuda::GemmMode::Exact);
    row_flops("linear_bf16_inputs", "x(8192,4096) W(4096,4096), rounding included", msb, 2.0 * M * N * K);
  }

  const Index T = 8192, D = 2048;
  auto x = filled(T * 4 * D, c), w = filled(4 * D, c, 0.5f, 1.5f);
  Buffer<float, Cuda> y(T * 4 * D), stat(T * 4);
  const View<const float, Cuda> xv(x.data(), T, D), wv(w.data(), 1, D);
  const std::string td = "(" + std::to_string(T) + "," + std::to_string(D) + ")";
  row_mem("add", td, time_ms(c, [&] { ops::add_forward<float>(c, xv, xv, 1.f, y.view(T, D)); }), 3.0 * T * D * 4);
  row_mem("silu", td, time_ms(c, [&] { ops::silu_forward<float>(c, xv, y.view(T, D)); }), 2.0 * T * D * 4);
  row_mem("swiglu", td, time_ms(c, [&] { ops::swiglu_forward<float>(c, xv, xv, y.view(T, D)); }), 3.0 * T * D * 4);
  row_mem("rmsnorm", td, time_ms(c, [&] { ops::rmsnorm_forward<float>(c, xv, wv, 1e-6f, y.view(T, D), stat.data()); }),
          2.0 * T * D * 4);
  row_mem("layernorm", td,
          time_ms(c, [&] { ops::layernorm_forward<float>(c, xv, wv, wv, 1e-5f, y.view(T, D), nullptr, nullptr); }),
          2.0 * T * D * 4);
  {
    const Index Di = 2 * D, grp = Di / 8;
    const View<const float, Cuda> yv(x.data(), T, Di), zv(y.data(), T, Di), nw(w.data(), 1, Di);
    Buffer<float, Cuda> out(T * Di);
    row_mem("gated_rmsnorm", "(" + std::to_string(T) + "," + std::to_string(Di) + ") group " + std::to_string(grp),
            time_ms(c, [&] { ops::gated_rmsnorm_forward<float>(c, yv, zv, nw, grp, 1e-5f, out.view(T, Di)); }),
            3.0 * T * Di * 4);
  }
  {
    const Index C = 2 * D + 256, K = 4;
    const View<const float, Cuda> uv(x.data(), T, C), cw(w.data(), C, K);
    Buffer<float, Cuda> out(T * C);
    row_mem("causal_conv1d", "(" + std::to_string(T) + "," + std::to_string(C) + ") K=4",
            time_ms(c, [&] { ops::causal_conv1d_forward<float>(c, uv, cw, nullptr, nullptr, out.view(T, C), nullptr); }),
            2.0 * T * C * 4);
  }
  {
    Buffer<float, Cuda> r(T * 16 * 128);
    const View<float, Cuda> rv(r.data(), T, 16 * 128);
    row_mem("rope", "(8192, 16x128)", time_ms(c, [&] { ops::rope_forward<float>(c, rv, 16, 128, 0, 10000.0, 0); }),
            2.0 * T * 16 * 128 * 4);
  }
  {  // SSD: Mamba-2 1.3B-like heads (H, P, N) = (64, 64, 128), one group
    const int H = 64, P = 64, N = 128, G = 1, Q = 64;
    auto xs = filled(T * H * P, c), bc = filled(T * 2 * G * N, c), dt = filled(T * H, c, 0.01f, 0.1f),
         A = filled(H, c, -2.f, -0.5f);
    Buffer<float, Cuda> ys(T * H * P), st(Index(H) * P * N);
    ops::SsdArgs<float> a;
    a.x = xs.data();
    a.B = bc.data();
    a.C = bc.data() + G * N;
    a.ldbc = 2 * G * N;
    a.dt = dt.data();
    a.A = A.data();
    a.y = ys.data();
    a.state_out = st.data();
    const ops::SsdDims d{T, H, P, N, G};
    // chunked SSD flops: intra-chunk 2 T Q (N + P) H / 2 (causal half), states 2 T P N H twice
    const double fl = double(T) * H * (double(Q) * (N + P) + 4.0 * P * N);
    row_flops("ssd_chunked", "T=8192 H=64 P=64 N=128 Q=64", time_ms(c, [&] { ops::ssd_chunked<float>(c, d, Q, a); }),
              fl);
    const ops::SsdDims d1{1, H, P, N, G};
    row_mem("ssd_recurrent_step", "T=1 H=64 P=64 N=128", time_ms(c, [&] { ops::ssd_recurrent<float>(c, d1, a); }),
            2.0 * H * P * N * 4);
  }
  {  // attention: 8K causal, 32 query heads, 8 kv heads, head dim P = 128
    const int H = 32, G = 8, P = 128;
    const Index Ta = 4096;
    auto q = filled(Ta * H * P, c), kv = filled(Ta * G * P, c);
    Buffer<float, Cuda> o(Ta * H * P);
    const ops::AttnDims d{Ta, Ta, H, G, P};
    const float scale = 1.f / std::sqrt(float(P));
    row_flops("attention_causal", "T=4096 H=32 G=8 P=128",
              time_ms(c, [&] {
                ops::attention_forward<float>(c, q.data(), kv.data(), kv.data(), o.data(), d, scale, 0, 0, 0, nullptr);
              }),
              2.0 * 2.0 * Ta * Ta * H * P / 2);
    // decode: batch 1 and 8 over a 32K cache
    const Index L = 32768;
    auto cache = filled(L * G * P, c);
    for (const Index B : {Index(1), Index(8)}) {
      std::vector<ops::KvSpan<float>> spans(static_cast<std::size_t>(B));
      std::vector<Index> pos(static_cast<std::size_t>(B), L - 1);
      for (auto& s : spans) {
        s.k = cache.data();
        s.v = cache.data();
        s.len = L;
      }
      const ops::DecodeDims dd{B, H, G, P};
      row_mem("attention_decode", "B=" + std::to_string(B) + " cache 32768 H=32 G=8 P=128",
              time_ms(c, [&] {
                ops::attention_decode<float>(c, dd, q.data(), spans.data(), pos.data(), o.data(), scale, 0);
              }),
              2.0 * B * L * G * P * 4);
    }
  }
  c.sync();
  return 0;
}
