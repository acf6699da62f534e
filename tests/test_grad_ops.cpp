// Gradient checks for the op backwards (norms, conv1d, activations, embedding, loss) against
// central finite differences in double: L = sum(r ⊙ output) with a fixed random r, every
// input (weights and biases included) perturbed in turn, h = 3e-5 (balances truncation
// against round-off in L best across these ops).
// Tolerance: |analytic - numeric| / max(|numeric|, 1e-3) < 1e-6 for every coordinate.
// Each case also checks the accumulate rule (two backward calls give twice the gradient)
// and that the float instantiation agrees with double to 1e-4 of the gradient's scale.
// HYBRID_GRAD_REPORT=1 prints the worst relative error per op.
#include <doctest/doctest.h>

#include <hybrid/ops/activation.hpp>
#include <hybrid/ops/conv1d.hpp>
#include <hybrid/ops/embedding.hpp>
#include <hybrid/ops/loss.hpp>
#include <hybrid/ops/norm.hpp>

#include <cstdlib>
#include <cstdio>
#include <limits>
#include <map>
#include <string>
#include <vector>

#include "grad_check.hpp"

using namespace hybrid;
using namespace hybrid::ops;
using hybrid::testing::fd_check;
using hybrid::testing::random_normal;
using hybrid::testing::random_weights;
using M = Mat<double>;

// This file's own namespace: the tests compile in batches (tests/CMakeLists.txt).
namespace hybrid_test_grad_ops {

namespace {

constexpr double kTol = 1e-6, kH = 3e-5;
std::map<std::string, double>& worst() {
  static std::map<std::string, double> w;
  return w;
}

template <class S>
std::vector<Mat<S>> zeros_like(const std::vector<M>& in) {
  std::vector<Mat<S>> g;
  for (const auto& x : in) g.push_back(Mat<S>::Zero(x.rows(), x.cols()));
  return g;
}

// fwd(in) -> output; bwd(in, dout, grads) accumulates dL/d(in[i]) into grads[i]. Both are
// templates on the scalar (generic lambdas), so the float instantiation is checked too.
template <class F, class B>
void check_grads(const std::string& op, std::vector<M> in, F fwd, B bwd, std::uint64_t seed = 1) {
  const M out = fwd(in);
  const M r = random_weights(out.rows(), out.cols(), seed);
  auto g = zeros_like<double>(in);
  bwd(in, r, g);
  const auto loss = [&] { return (r.array() * fwd(in).array()).sum(); };
  double w = 0;
  for (std::size_t i = 0; i < in.size(); ++i) {
    const auto res = fd_check(in[i].data(), g[i].data(), in[i].size(), loss, 4096, kH);
    CHECK_MESSAGE(res.max_rel_err < kTol, op, " input ", i, " rel err ", res.max_rel_err);
    w = std::max(w, res.max_rel_err);
  }
  worst()[op] = std::max(worst()[op], w);

  auto g2 = zeros_like<double>(in);
  bwd(in, r, g2);
  bwd(in, r, g2);
  for (std::size_t i = 0; i < in.size(); ++i)
    CHECK_MESSAGE((g2[i] - 2 * g[i]).cwiseAbs().maxCoeff() <= 1e-12 * (1 + g[i].cwiseAbs().maxCoeff()),
                  op, " input ", i, " does not accumulate");

  std::vector<Mat<float>> inf;
  for (const auto& x : in) inf.push_back(x.cast<float>());
  auto gf = zeros_like<float>(in);
  bwd(inf, Mat<float>(r.cast<float>()), gf);
  for (std::size_t i = 0; i < in.size(); ++i) {
    const double err = (gf[i].cast<double>() - g[i]).cwiseAbs().maxCoeff();
    CHECK_MESSAGE(err <= 1e-4 * (1 + g[i].cwiseAbs().maxCoeff()), op, " input ", i, " float err ", err);
  }
}

// Shorthands for the lambdas: the scalar type and a caller-sized output.
#define GRAD_FWD [&]<class S>(const std::vector<Mat<S>>& in) -> Mat<S>
#define GRAD_BWD [&]<class S>(const std::vector<Mat<S>>& in, const Mat<S>& d, std::vector<Mat<S>>& g)

}  // namespace

TEST_CASE("grad: rmsnorm and layernorm") {
  for (auto s : {std::pair<Index, Index>{1, 7}, {5, 16}}) {
    const Index R = s.first, D = s.second;  // named copies: lambdas capture them
    CAPTURE(R);
    const M x = random_normal(R, D, 11), w = random_normal(1, D, 12), b = random_normal(1, D, 13);
    check_grads("rmsnorm", {x, w}, GRAD_FWD {
      Mat<S> y(R, D);
      rmsnorm_forward<S>(in[0], in[1], S(1e-5), y);
      return y;
    }, GRAD_BWD {
      Mat<S> y(R, D);
      std::vector<S> rstd(R);
      rmsnorm_forward<S>(in[0], in[1], S(1e-5), y, rstd.data());
      rmsnorm_backward<S>(in[0], in[1], rstd.data(), d, g[0], g[1]);
    });
    check_grads("layernorm", {x, w, b}, GRAD_FWD {
      Mat<S> y(R, D);
      layernorm_forward<S>(in[0], in[1], in[2], S(1e-5), y);
      return y;
    }, GRAD_BWD {
      Mat<S> y(R, D);
      std::vector<S> mean(R), rstd(R);
      layernorm_forward<S>(in[0], in[1], in[2], S(1e-5), y, mean.data(), rstd.data());
      layernorm_backward<S>(in[0], in[1], mean.data(), rstd.data(), d, g[0], g[1],
                            g[2]);
    });
  }
}

TEST_CASE("grad: gated_rmsnorm, per group and whole width") {
  struct Shape { Index R, W, group; };
  for (auto s : {Shape{1, 12, 12}, Shape{3, 12, 4}, Shape{2, 8, 2}, Shape{4, 6, 6}}) {
    CAPTURE(s.R);
    CAPTURE(s.group);
    const Index R = s.R, W = s.W, grp = s.group;
    check_grads("gated_rmsnorm", {random_normal(R, W, 21), random_normal(R, W, 22), random_normal(1, W, 23)},
      GRAD_FWD {
        Mat<S> o(R, W);
        gated_rmsnorm_forward<S>(in[0], in[1], in[2], grp, S(1e-5), o);
        return o;
      }, GRAD_BWD {
        Mat<S> o(R, W);
        std::vector<S> rstd(R * (W / grp));
        gated_rmsnorm_forward<S>(in[0], in[1], in[2], grp, S(1e-5), o, rstd.data());
        gated_rmsnorm_backward<S>(in[0], in[1], in[2], grp, rstd.data(), d, g[0], g[1],
                                  g[2]);
      });
  }
}

TEST_CASE("grad: causal_conv1d from zero history, K = 1..4, T below and above K") {
  const Index C = 5;
  for (Index K = 1; K <= 4; ++K)
    for (Index T : {1, 2, 3, 6}) {
      CAPTURE(K);
      CAPTURE(T);
      check_grads("causal_conv1d", {random_normal(T, C, 31), random_normal(C, K, 32), random_normal(1, C, 33)},
        GRAD_FWD {
          Mat<S> y(T, C);
          causal_conv1d_forward<S>(in[0], in[1], in[2], nullptr, y, nullptr);
          return y;
        }, GRAD_BWD {
          causal_conv1d_backward<S>(in[0], in[1], d, g[0], g[1], g[2]);
        });
    }
}

TEST_CASE("grad: scalar activation derivatives") {
  double w = 0;
  for (double v : {-25.0, -3.0, -0.7, 0.3, 1.9, 19.5, 20.5, 31.0}) {
    CAPTURE(v);
    auto rel = [&](double a, double num) { return std::abs(a - num) / std::max(std::abs(num), 1e-3); };
    auto fd = [&](auto f) { return (f(v + kH) - f(v - kH)) / (2 * kH); };
    const double e = std::max({rel(silu_grad(v), fd(silu<double>)), rel(softplus_grad(v), fd(softplus<double>)),
                               rel(relu2_grad(v), fd(relu2<double>))});
    CHECK(e < kTol);
    w = std::max(w, e);
  }
  CHECK(softplus_grad(20.5) == 1.0);  // the threshold: softplus is the identity there
  CHECK(relu2_grad(-1.0) == 0.0);
  worst()["silu/softplus/relu2 grad"] = w;
}

TEST_CASE("grad: swiglu and relu2") {
  for (auto s : {std::pair<Index, Index>{1, 6}, {4, 9}}) {
    const Index R = s.first, F = s.second;
    CAPTURE(R);
    check_grads("swiglu", {random_normal(R, F, 41, 2), random_normal(R, F, 42)}, GRAD_FWD {
      Mat<S> h(R, F);
      swiglu_forward<S>(in[0], in[1], h);
      return h;
    }, GRAD_BWD { swiglu_backward<S>(in[0], in[1], d, g[0], g[1]); });
    M x = random_normal(R, F, 43);  // relu2 has a kink in its derivative at 0: stay off it
    for (Index i = 0; i < x.size(); ++i)
      if (std::abs(x.data()[i]) < 1e-3) x.data()[i] = 0.5;
    check_grads("relu2", {x}, GRAD_FWD {
      Mat<S> y(R, F);
      relu2_forward<S>(in[0], y);
      return y;
    }, GRAD_BWD { relu2_backward<S>(in[0], d, g[0]); });
  }
}

TEST_CASE("grad: dt_softplus, clamped at both limits and unclamped") {
  const double inf = std::numeric_limits<double>::infinity();
  struct Case { Index R, H; double lo, hi; };
  for (auto c : {Case{1, 6, 0.05, 1.5}, Case{5, 4, 0.05, 1.5}, Case{3, 4, 0.0, inf}}) {
    CAPTURE(c.R);
    CAPTURE(c.hi);
    const Index R = c.R, H = c.H;
    M raw = random_normal(R, H, 51, 2.5), bias = random_normal(1, H, 52, 0.3);
    raw(0, 0) = -8;  // softplus ~ 3e-4 < lo
    raw(0, 1) = 25;  // past softplus's threshold, > hi
    // FD needs every entry a clear margin away from a limit (bias moves a whole column).
    for (Index r = 0; r < R; ++r)
      for (Index h = 0; h < H; ++h)
        while (std::abs(softplus(raw(r, h) + bias(0, h)) - c.lo) < 1e-2 ||
               std::abs(softplus(raw(r, h) + bias(0, h)) - c.hi) < 1e-2)
          raw(r, h) += 0.1;
    const double lo = c.lo, hi = c.hi;
    auto fwd = GRAD_FWD {
      Mat<S> dt(in[0].rows(), in[0].cols());
      dt_softplus_forward<S>(in[0], in[1], S(lo), S(hi), dt);
      return dt;
    };
    auto bwd = GRAD_BWD { dt_softplus_backward<S>(in[0], in[1], S(lo), S(hi), d, g[0], g[1]); };
    check_grads("dt_softplus", {raw, bias}, fwd, bwd);

    const M dt = fwd(std::vector<M>{raw, bias});
    auto g = zeros_like<double>({raw, bias});
    bwd(std::vector<M>{raw, bias}, M(M::Ones(R, H)), g);
    int n_lo = 0, n_hi = 0;
    for (Index r = 0; r < R; ++r)
      for (Index h = 0; h < H; ++h) {
        const double sp = softplus(raw(r, h) + bias(0, h));
        const bool clamped = sp < lo || sp > hi;
        n_lo += sp < lo;
        n_hi += sp > hi;
        CHECK(dt(r, h) == std::clamp(sp, lo, hi));
        CHECK((g[0](r, h) == 0) == clamped);
      }
    if (hi < inf) CHECK((n_lo > 0 && n_hi > 0));
    else CHECK(n_lo + n_hi == 0);
  }
}

TEST_CASE("grad: embedding with repeated ids and a multiplier") {
  const Index V = 6, D = 4;
  const std::vector<int> ids = {2, 0, 2, 5, 2};
  for (Index R : {1, 5}) {
    CAPTURE(R);
    check_grads("embedding", {random_normal(V, D, 61)}, GRAD_FWD {
      Mat<S> out(R, D);
      embedding_forward<S>(in[0], ids.data(), R, S(1.7), out);
      return out;
    }, GRAD_BWD {
      (void)in;  // the table's value does not enter its gradient
      embedding_backward<S>(ids.data(), R, S(1.7), d, g[0]);
    });
  }
  const M table = random_normal(V, D, 62);
  M out(2, D);
  embedding_forward<double>(table, ids.data() + 2, 2, 0.5, out);
  CHECK(out.row(1) == 0.5 * table.row(5));
  const int bad[] = {1, 6};
  CHECK_THROWS_WITH_AS(embedding_forward<double>(table, bad, 2, 1.0, out),
                       doctest::Contains("token id 6 at row 1 is outside the vocabulary [0, 6)"), Error);
}

TEST_CASE("grad: cross_entropy with ignored targets, z_loss and softcap") {
  struct Case { Index R, V; std::vector<int> t; double z, cap, scale; };
  const std::vector<Case> cases = {
      {1, 5, {3}, 0, 0, 1}, {6, 11, {1, -1, 10, 0, -1, 4}, 0, 0, 2},
      {6, 11, {1, -1, 10, 0, -1, 4}, 0.1, 0, 2}, {3, 40, {39, 7, -1}, 1e-2, 0, 3},
      {4, 9, {0, 8, -1, 3}, 0.05, 2.0, 2}, {1, 7, {6}, 0, 1.5, 3}};
  for (const auto& c : cases) {
    CAPTURE(c.R);
    CAPTURE(c.z);
    CAPTURE(c.cap);
    const Index R = c.R, V = c.V;
    const double z = c.z, cap = c.cap;
    // The scalar loss as a (1, 1) output: r(0, 0) then plays the role of dloss.
    check_grads(cap > 0 ? "cross_entropy+softcap" : "cross_entropy", {random_normal(R, V, 71, c.scale)},
      GRAD_FWD {
        Mat<S> y = in[0];
        if (cap > 0) softcap_forward<S>(y, S(cap));
        return Mat<S>::Constant(1, 1, S(cross_entropy_forward<S>(y, c.t.data(), nullptr, z)));
      }, GRAD_BWD {
        Mat<S> y = in[0], dy = Mat<S>::Zero(R, V);
        if (cap > 0) softcap_forward<S>(y, S(cap));
        std::vector<S> lse(R);
        cross_entropy_forward<S>(y, c.t.data(), lse.data(), z);
        cross_entropy_backward<S>(y, c.t.data(), lse.data(), double(d(0, 0)), z, dy);
        if (cap > 0) softcap_backward<S>(y, S(cap), dy);
        g[0] += dy;
      });
  }
  // The returned value is the plain sum over scored rows (the caller divides).
  M x(2, 3);
  x << 1, 2, 3, -1, 0.5, 4;
  const int t[] = {2, 0};
  double expect = 0;
  for (Index r = 0; r < 2; ++r) {
    const double l = std::log(x.row(r).array().exp().sum());
    expect += l - x(r, t[r]) + 0.1 * l * l;
  }
  CHECK(cross_entropy_forward<double>(x, t, nullptr, 0.1) == doctest::Approx(expect).epsilon(1e-14));
  // Backward without saved lse recomputes it.
  M d1 = M::Zero(2, 3), d2 = M::Zero(2, 3);
  std::vector<double> lse(2);
  cross_entropy_forward<double>(x, t, lse.data(), 0.1);
  cross_entropy_backward<double>(x, t, lse.data(), 0.5, 0.1, d1);
  cross_entropy_backward<double>(x, t, nullptr, 0.5, 0.1, d2);
  CHECK((d1 - d2).cwiseAbs().maxCoeff() < 1e-15);
}

TEST_CASE("grad: softcap alone") {
  const double cap = 1.5;
  check_grads("softcap", {random_normal(3, 8, 81, 2)}, GRAD_FWD {
    Mat<S> y = in[0];
    softcap_forward<S>(y, S(cap));
    return y;
  }, GRAD_BWD {
    Mat<S> y = in[0], dy = d;
    softcap_forward<S>(y, S(cap));
    softcap_backward<S>(y, S(cap), dy);
    g[0] += dy;
  });
}

TEST_CASE("grad: cross_entropy is stable for large logits and rejects bad targets") {
  const M x = random_normal(3, 50, 91, 3);
  const int t[] = {4, 49, 0};
  const double base = cross_entropy_forward<double>(x, t, nullptr);
  const M big = x.array() + 1000.0;
  CHECK(cross_entropy_forward<double>(big, t, nullptr) == doctest::Approx(base).epsilon(1e-9));
  const Mat<float> bigf = (x.array() + 80.0).cast<float>();  // exp(80) overflows float
  CHECK(cross_entropy_forward<float>(bigf, t, nullptr) == doctest::Approx(base).epsilon(1e-4));

  // Large enough for the row-parallel path: the same as scoring row by row (serial path).
  const Index R = 3, V = 30000;
  const M xl = random_normal(R, V, 92, 2);
  const int tl[] = {17, -1, V - 1};
  M dl = M::Zero(R, V), dr = M::Zero(1, V);
  std::vector<double> lse(R);
  const double all = cross_entropy_forward<double>(xl, tl, lse.data(), 0.01);
  cross_entropy_backward<double>(xl, tl, lse.data(), 0.5, 0.01, dl);
  double rows = 0;
  for (Index r = 0; r < R; ++r) {
    double l1 = 0;
    rows += cross_entropy_forward<double>(xl.row(r), tl + r, &l1, 0.01);
    CHECK(l1 == lse[r]);
    dr.setZero();
    cross_entropy_backward<double>(xl.row(r), tl + r, &l1, 0.5, 0.01, dr);
    CHECK(dr == dl.row(r));
  }
  CHECK(all == doctest::Approx(rows).epsilon(1e-14));

  const int bad_hi[] = {4, 50, 0}, bad_lo[] = {-2, 1, 0};
  M dx = M::Zero(3, 50);
  CHECK_THROWS_WITH_AS(cross_entropy_forward<double>(x, bad_hi, nullptr),
                       doctest::Contains("target id 50 at row 1 is outside the vocabulary [0, 50)"), Error);
  CHECK_THROWS_WITH_AS(cross_entropy_forward<double>(x, bad_lo, nullptr),
                       doctest::Contains("target id -2 at row 0"), Error);
  CHECK_THROWS_AS(cross_entropy_backward<double>(x, bad_hi, nullptr, 1.0, 0.0, dx), Error);
}

TEST_CASE("grad: worst FD errors per op (printed with HYBRID_GRAD_REPORT=1)") {
  if (!std::getenv("HYBRID_GRAD_REPORT")) return;
  for (const auto& kv : worst()) std::printf("  %-24s max rel err %.2e\n", kv.first.c_str(), kv.second);
}

}  // namespace hybrid_test_grad_ops
