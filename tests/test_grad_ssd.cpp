// SSD scan backward (chunk by chunk) against central finite differences of the plain
// recurrence, double precision: every input (x, dt, A, B, C, D), T not a multiple of the
// chunk, G > 1, single-token and single-chunk sequences.
#include <doctest/doctest.h>

#include <hybrid/ops/ssd_backward.hpp>

#include "grad_check.hpp"

using namespace hybrid;

// This file's own namespace: the tests compile in batches (tests/CMakeLists.txt).
namespace hybrid_test_grad_ssd {

namespace {
struct Case {
  Index T;
  int H, P, N, G, Q;
};

void check_ssd_grad(const Case& c) {
  CAPTURE(c.T); CAPTURE(c.H); CAPTURE(c.P); CAPTURE(c.N); CAPTURE(c.G); CAPTURE(c.Q);
  const ops::SsdDims d{c.T, c.H, c.P, c.N, c.G};
  const Index HP = Index(c.H) * c.P, GN = Index(c.G) * c.N;
  Mat<double> x = testing::random_normal(c.T, HP, 1), B = testing::random_normal(c.T, GN, 2),
              C = testing::random_normal(c.T, GN, 3), D = testing::random_normal(1, c.H, 4);
  Mat<double> dt(c.T, c.H), A(1, c.H);
  Rng rng(5);
  for (Index i = 0; i < dt.size(); ++i) dt.data()[i] = std::log1p(std::exp(rng.uniform(-3, 0.5)));
  for (int h = 0; h < c.H; ++h) A(0, h) = -rng.uniform(0.5, 4);
  const Mat<double> r = testing::random_weights(c.T, HP, 6);
  Mat<double> y(c.T, HP);
  auto loss = [&] {
    ops::SsdArgs<double> a{x.data(), dt.data(), A.data(), B.data(), C.data(), D.data(), nullptr, y.data(), nullptr};
    ops::ssd_recurrent<double>(d, a);  // an independent forward path
    return (r.array() * y.array()).sum();
  };
  Mat<double> dx = Mat<double>::Zero(c.T, HP), ddt = Mat<double>::Zero(c.T, c.H), dA = Mat<double>::Zero(1, c.H),
              dB = Mat<double>::Zero(c.T, GN), dC = Mat<double>::Zero(c.T, GN), dD = Mat<double>::Zero(1, c.H);
  auto run_backward = [&] {
    ops::SsdArgs<double> a{x.data(), dt.data(), A.data(), B.data(), C.data(), D.data(), nullptr, y.data(), nullptr};
    ops::ssd_backward<double>(d, c.Q, a, r.data(), {dx.data(), ddt.data(), dA.data(), dB.data(), dC.data(), dD.data()});
  };
  run_backward();
  for (auto [name, val, grad] : {std::tuple{"x", &x, &dx}, {"dt", &dt, &ddt}, {"A", &A, &dA},
                                 {"B", &B, &dB}, {"C", &C, &dC}, {"D", &D, &dD}}) {
    CAPTURE(name);
    // Step 1e-5: truncation error O(h^2) ~ 1e-10 relative, rounding of the loss (~50 terms of
    // O(1)) ~ 1e-14 / 2e-5 = 5e-10 absolute, i.e. < 1e-6 relative to the 1e-3 floor, whatever
    // the compiler's contraction choices. A wrong gradient gives errors of order 1.
    const auto res = testing::fd_check(val->data(), grad->data(), val->size(), loss, 96, 1e-5, 1e-3);
    CHECK(res.max_rel_err < 1e-5);
  }
  // Accumulation: a second call adds the same gradient again.
  const Mat<double> once = dB;
  run_backward();
  CHECK((dB - 2 * once).cwiseAbs().maxCoeff() < 1e-12);
}
}  // namespace

TEST_CASE("grad: ssd chunked backward vs finite differences of the recurrence") {
  for (const Case& c : {Case{1, 2, 3, 4, 1, 4}, Case{13, 4, 3, 5, 2, 4}, Case{16, 2, 4, 3, 1, 8},
                        Case{7, 3, 2, 4, 3, 16}, Case{21, 4, 2, 3, 4, 8}, Case{9, 6, 2, 2, 2, 1}})
    check_ssd_grad(c);
}

}  // namespace hybrid_test_grad_ssd
