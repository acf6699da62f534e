// Another engine's use of one op: the Mamba-2 SSD scan, forward and backward, on buffers the
// program owns (std::vector), through the ops' pointer + dims form. No model, no tape, no
// parameter store: only <hybrid/ops/ssd_backward.hpp> (which includes the forward).
// It checks the chunked scan against the plain recurrence and prints one JSON line.
//   ssd_dropin [T]
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include <hybrid/ops/ssd_backward.hpp>

int main(int argc, char** argv) {
  using hybrid::Index;
  const Index T = argc > 1 ? std::atoll(argv[1]) : 100;  // not a multiple of the chunk
  if (T <= 0) {
    std::fprintf(stderr, "ssd_dropin: T must be a positive number of tokens, got '%s'\n", argv[1]);
    return 2;
  }
  const int H = 4, P = 8, N = 16, G = 2, Q = 32;
  const hybrid::ops::SsdDims d{T, H, P, N, G};
  // The engine's own buffers, row-major: x (T, H*P), dt (T, H), B and C (T, G*N).
  std::vector<float> x(std::size_t(T * H * P)), dt(std::size_t(T * H)), B(std::size_t(T * G * N)),
      C(B.size()), A(H), D(H), y(x.size()), y_ref(x.size()), state(std::size_t(H * P * N));
  unsigned s = 12345;
  auto rnd = [&] { return float((s = s * 1103515245u + 12345u) >> 8) / float(1u << 24) - 0.5f; };
  for (auto& v : x) v = rnd();
  for (auto& v : B) v = rnd();
  for (auto& v : C) v = rnd();
  for (auto& v : dt) v = 0.05f + 0.1f * (rnd() + 0.5f);
  for (int h = 0; h < H; ++h) A[h] = -std::exp(rnd()), D[h] = 1.0f;

  hybrid::ops::SsdArgs<float> a{x.data(), dt.data(), A.data(), B.data(), C.data(), D.data(),
                                nullptr, y.data(), state.data()};
  hybrid::ops::ssd_forward(d, Q, hybrid::ScanPath::Chunked, a);
  hybrid::ops::SsdArgs<float> r = a;
  r.y = y_ref.data();
  r.state_out = nullptr;
  hybrid::ops::ssd_forward(d, Q, hybrid::ScanPath::Recurrent, r);
  double diff = 0;
  for (std::size_t i = 0; i < y.size(); ++i) diff = std::max(diff, double(std::abs(y[i] - y_ref[i])));

  // Backward of L = sum(y): dy = 1. Gradients accumulate, so they start at zero.
  std::vector<float> dy(y.size(), 1.0f), dx(x.size()), ddt(dt.size()), dA(H), dB(B.size()),
      dC(C.size()), dD(H);
  hybrid::ops::ssd_backward<float>(d, Q, a, dy.data(),
                                   {dx.data(), ddt.data(), dA.data(), dB.data(), dC.data(), dD.data()});
  double dD_sum = 0, x_sum = 0;  // dL/dD[h] = sum of x over head h: a closed-form check
  for (int h = 0; h < H; ++h) dD_sum += dD[h];
  for (float v : x) x_sum += v;
  const bool ok = diff < 1e-4 && std::abs(dD_sum - x_sum) < 1e-3;
  std::printf("{\"T\":%lld,\"chunked_vs_recurrent_max_abs\":%.3g,\"dD_sum\":%.6f,\"x_sum\":%.6f,\"ok\":%s}\n",
              (long long)T, diff, dD_sum, x_sum, ok ? "true" : "false");
  return ok ? 0 : 1;
}
