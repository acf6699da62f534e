// Gradients of attention and RoPE against central finite differences in double precision,
// with L = sum(r ⊙ output) for a fixed random r (see grad_check.hpp). Tolerance: relative
// error < 1e-6 on every checked coordinate (denominator floored at 1e-3), FD step 3e-5.
#include <doctest/doctest.h>

#include <hybrid/ops/attention.hpp>
#include <hybrid/ops/rope.hpp>

#include <algorithm>
#include <array>
#include <cmath>
#include <limits>
#include <utility>
#include <vector>

#include "grad_check.hpp"

using namespace hybrid;
using testing::fd_check;
using testing::random_normal;
using testing::random_weights;

// This file's own namespace: the tests compile in batches (tests/CMakeLists.txt).
namespace hybrid_test_grad_attention {

namespace {

constexpr double kTol = 1e-6;
// FD step: the rounding of L (~eps |L| / h) dominates below ~1e-5 and the h^2
// truncation above ~1e-4; at 3e-5 both stay under ~2e-7 relative.
constexpr double kStep = 3e-5;

struct AttnCase {
  Index Tq, Tk;
  int H, G, P;
  Index qpos0 = 0, kpos0 = 0;
  int window = 0;
};

// One attention problem with its inputs, the weighting r and the analytic gradients.
struct AttnProblem {
  AttnCase c;
  ops::AttnDims d;
  double scale;
  Mat<double> q, k, v, r;
  explicit AttnProblem(const AttnCase& cs, std::uint64_t seed = 1)
      : c(cs), d{cs.Tq, cs.Tk, cs.H, cs.G, cs.P}, scale(1 / std::sqrt(double(cs.P))),
        q(random_normal(cs.Tq, Index(cs.H) * cs.P, seed)),
        k(random_normal(cs.Tk, Index(cs.G) * cs.P, seed + 1)),
        v(random_normal(cs.Tk, Index(cs.G) * cs.P, seed + 2)),
        r(random_weights(cs.Tq, Index(cs.H) * cs.P, seed + 3)) {}

  Mat<double> forward(Mat<double>* lse = nullptr) const {
    Mat<double> o(c.Tq, Index(c.H) * c.P);
    if (lse) lse->resize(c.Tq, c.H);
    ops::attention_forward<double>(q.data(), k.data(), v.data(), o.data(), d, scale, c.qpos0,
                                   c.kpos0, c.window, lse ? lse->data() : nullptr);
    return o;
  }
  double loss() const { return (r.array() * forward().array()).sum(); }
  // Accumulates dL/dq, dL/dk, dL/dv (dL/do = r) into the given buffers.
  void backward(double* dq, double* dk, double* dv) const {
    Mat<double> lse;
    const Mat<double> o = forward(&lse);
    ops::attention_backward<double>(q.data(), k.data(), v.data(), o.data(), lse.data(),
                                    r.data(), dq, dk, dv, d, scale, c.qpos0, c.kpos0, c.window);
  }
};

// Analytic vs finite differences for q, k and v (up to 96 coordinates of each).
void check_attention(const AttnCase& c) {
  AttnProblem p(c);
  Mat<double> dq = Mat<double>::Zero(p.q.rows(), p.q.cols());
  Mat<double> dk = Mat<double>::Zero(p.k.rows(), p.k.cols()), dv = dk;
  p.backward(dq.data(), dk.data(), dv.data());
  auto loss = [&] { return p.loss(); };
  double worst = 0;
  for (auto [x, g] : {std::pair{&p.q, &dq}, std::pair{&p.k, &dk}, std::pair{&p.v, &dv}}) {
    const auto res = fd_check(x->data(), g->data(), x->size(), loss, 96, kStep);
    CHECK(std::isfinite(g->sum()));
    worst = std::max(worst, res.max_rel_err);
  }
  CAPTURE(c.Tq); CAPTURE(c.Tk); CAPTURE(c.H); CAPTURE(c.G); CAPTURE(c.P);
  CAPTURE(c.qpos0); CAPTURE(c.kpos0); CAPTURE(c.window);
  CHECK(worst < kTol);
}

}  // namespace

TEST_CASE("grad: attention MHA and GQA groupings (H/G = 1, 2, 4; G = 1)") {
  for (auto [H, G, T] : std::vector<std::array<int, 3>>{
           {3, 3, 9}, {4, 2, 20}, {8, 2, 20}, {4, 1, 12}, {1, 1, 7}})
    check_attention({T, T, H, G, 8});
}

TEST_CASE("grad: attention lengths 1, 70 and 130 (crossing the 64-row query block)") {
  check_attention({1, 1, 2, 1, 8});
  check_attention({70, 70, 4, 2, 8});
  check_attention({130, 130, 2, 1, 8});
  check_attention({130, 130, 4, 2, 4});
}

TEST_CASE("grad: attention with sliding windows 1 and 5") {
  for (int window : {1, 5}) {
    check_attention({20, 20, 4, 2, 8, 0, 0, window});
    check_attention({70, 70, 4, 2, 8, 0, 0, window});
  }
}

TEST_CASE("grad: attention with query and key offsets (a cache continuation)") {
  // Queries at 25..29 over cached keys 10..29; 70 queries at 35..104 over keys 5..104.
  for (int window : {0, 7}) check_attention({5, 20, 4, 2, 8, 25, 10, window});
  for (int window : {0, 40}) check_attention({70, 100, 4, 2, 8, 35, 5, window});
}

TEST_CASE("grad: attention rows that see no key have zero output and zero gradient") {
  // Queries at 0..5, keys at 3..8: queries 0..2 see nothing, keys 6..8 are never seen.
  const AttnCase c{6, 6, 2, 1, 4, 0, 3, 0};
  check_attention(c);
  AttnProblem p(c);
  Mat<double> lse;
  const Mat<double> o = p.forward(&lse);
  CHECK(o.topRows(3).cwiseAbs().maxCoeff() == 0);
  CHECK(lse(0, 0) == -std::numeric_limits<double>::infinity());
  Mat<double> dq = Mat<double>::Zero(6, 8), dk = Mat<double>::Zero(6, 4), dv = dk;
  p.backward(dq.data(), dk.data(), dv.data());
  CHECK(dq.topRows(3).cwiseAbs().maxCoeff() == 0);
  CHECK(dk.bottomRows(3).cwiseAbs().maxCoeff() == 0);
  CHECK(dv.bottomRows(3).cwiseAbs().maxCoeff() == 0);
}

TEST_CASE("grad: attention lse equals a direct log-sum-exp of the scaled scores") {
  // A window crossing the query block; 9 queries at 21..29 over keys 0..29.
  for (const AttnCase& c : {AttnCase{70, 70, 4, 2, 8, 0, 0, 5}, AttnCase{9, 30, 6, 3, 8, 21}}) {
    AttnProblem p(c);
    Mat<double> lse;
    p.forward(&lse);
    const int rep = c.H / c.G;
    double err = 0;
    for (Index i = 0; i < c.Tq; ++i)
      for (int h = 0; h < c.H; ++h) {
        double sum = 0;
        for (Index j = 0; j < c.Tk; ++j) {
          const Index qp = c.qpos0 + i, kp = c.kpos0 + j;
          if (kp > qp || (c.window > 0 && qp - kp >= c.window)) continue;
          const double s = p.q.row(i).segment(h * c.P, c.P).dot(
              p.k.row(j).segment((h / rep) * c.P, c.P));
          sum += std::exp(s * p.scale);
        }
        err = std::max(err, std::abs(lse(i, h) - std::log(sum)));
      }
    CHECK(err < 1e-12);
  }
}

TEST_CASE("grad: attention backward accumulates, and nullptr skips a gradient") {
  AttnProblem p({70, 70, 4, 2, 8, 0, 0, 0});
  Mat<double> dq = Mat<double>::Zero(70, 32), dk = Mat<double>::Zero(70, 16), dv = dk;
  p.backward(dq.data(), dk.data(), dv.data());
  Mat<double> dq2 = dq, dk2 = dk, dv2 = dv;
  p.backward(dq2.data(), dk2.data(), dv2.data());
  CHECK((dq2 - 2 * dq).cwiseAbs().maxCoeff() < 1e-12);
  CHECK((dk2 - 2 * dk).cwiseAbs().maxCoeff() < 1e-12);
  CHECK((dv2 - 2 * dv).cwiseAbs().maxCoeff() < 1e-12);
  Mat<double> dq_only = Mat<double>::Zero(70, 32), dv_only = Mat<double>::Zero(70, 16);
  p.backward(dq_only.data(), nullptr, nullptr);
  p.backward(nullptr, nullptr, dv_only.data());
  CHECK((dq_only - dq).cwiseAbs().maxCoeff() == 0);
  CHECK((dv_only - dv).cwiseAbs().maxCoeff() == 0);
}

TEST_CASE("grad: attention backward in float agrees with double") {
  const AttnCase c{70, 70, 4, 2, 8, 0, 0, 0};
  AttnProblem p(c);
  Mat<double> dq = Mat<double>::Zero(70, 32), dk = Mat<double>::Zero(70, 16), dv = dk;
  p.backward(dq.data(), dk.data(), dv.data());
  Mat<float> qf = p.q.cast<float>(), kf = p.k.cast<float>(), vf = p.v.cast<float>();
  Mat<float> rf = p.r.cast<float>(), of(70, 32), lse(70, 4);
  Mat<float> dqf = Mat<float>::Zero(70, 32), dkf = Mat<float>::Zero(70, 16), dvf = dkf;
  ops::attention_forward<float>(qf.data(), kf.data(), vf.data(), of.data(), p.d, float(p.scale),
                                0, 0, 0, lse.data());
  ops::attention_backward<float>(qf.data(), kf.data(), vf.data(), of.data(), lse.data(),
                                 rf.data(), dqf.data(), dkf.data(), dvf.data(), p.d,
                                 float(p.scale), 0, 0, 0);
  auto rel = [](const Mat<float>& a, const Mat<double>& b) {
    return (a.cast<double>() - b).cwiseAbs().maxCoeff() / b.cwiseAbs().maxCoeff();
  };
  CHECK(rel(dqf, dq) < 1e-4);
  CHECK(rel(dkf, dk) < 1e-4);
  CHECK(rel(dvf, dv) < 1e-4);
}

TEST_CASE("grad: RoPE backward matches finite differences") {
  for (Index pos0 : {0, 3, 17, 1000, 123456})
    for (auto [H, P] : std::vector<std::array<int, 2>>{{1, 2}, {3, 8}, {2, 64}})
      for (double base : {10000.0, 1e6}) {
        const Index T = 5;
        Mat<double> x = random_normal(T, Index(H) * P, 20 + pos0);
        const Mat<double> r = random_weights(T, Index(H) * P, 21);
        Mat<double> dx = r;
        ops::rope_backward<double>(dx, H, P, pos0, base);
        auto loss = [&] {
          Mat<double> y = x;
          ops::rope_forward<double>(y, H, P, pos0, base);
          return (r.array() * y.array()).sum();
        };
        const auto res = fd_check(x.data(), dx.data(), x.size(), loss, 96, kStep);
        CAPTURE(pos0); CAPTURE(H); CAPTURE(P); CAPTURE(base);
        CHECK(res.max_rel_err < kTol);
      }
}

TEST_CASE("grad: RoPE backward inverts the forward (the rotation is orthogonal)") {
  const int H = 3, P = 16;
  for (Index pos0 : {0, 7, 4096}) {
    const Mat<double> g = random_normal(9, H * P, 30);
    Mat<double> a = g, b = g;
    ops::rope_forward<double>(a, H, P, pos0, 10000);
    ops::rope_backward<double>(a, H, P, pos0, 10000);
    ops::rope_backward<double>(b, H, P, pos0, 10000);
    CHECK(std::abs(b.norm() - g.norm()) < 1e-12 * g.norm());
    ops::rope_forward<double>(b, H, P, pos0, 10000);
    CHECK((a - g).cwiseAbs().maxCoeff() < 1e-13);
    CHECK((b - g).cwiseAbs().maxCoeff() < 1e-13);
    Mat<float> f = g.cast<float>();
    ops::rope_forward<float>(f, H, P, pos0, 10000);
    ops::rope_backward<float>(f, H, P, pos0, 10000);
    CHECK((f.cast<double>() - g).cwiseAbs().maxCoeff() < 1e-5);
  }
}

}  // namespace hybrid_test_grad_attention
