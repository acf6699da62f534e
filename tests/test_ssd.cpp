// SSD scan: the chunked form against the recurrence, and the recurrence against a direct
// double-precision loop over REFERENCE.md §1 step 6. Tolerance: max |a - b| over
// max(1, max |b|) below 1e-10 in double, 1e-4 in float.
#include <doctest/doctest.h>

#include <hybrid/ops/ssd.hpp>

#include <algorithm>
#include <cmath>
#include <random>
#include <vector>

using namespace hybrid;
using ops::SsdArgs;
using ops::SsdDims;

// This file's own namespace: the tests compile in batches (tests/CMakeLists.txt).
namespace hybrid_test_ssd {

namespace {

template <class S>
struct Case {
  SsdDims d;
  std::vector<S> x, dt, A, B, C, D, s0;
  Case(SsdDims dims, unsigned seed) : d(dims) {
    std::mt19937 rng(seed);
    std::normal_distribution<double> nd(0, 1);
    std::uniform_real_distribution<double> ud(0, 1);
    auto fill = [&](std::vector<S>& v, Index n) {
      v.resize(n);
      for (auto& e : v) e = S(nd(rng));
    };
    fill(x, d.T * d.H * d.P);
    fill(B, d.T * d.G * d.N);
    fill(C, d.T * d.G * d.N);
    fill(D, d.H);
    fill(s0, Index(d.H) * d.P * d.N);
    dt.resize(d.T * d.H);  // softplus of N(-1.5, 0.75): mostly in 0.05 .. 0.7
    for (auto& e : dt) e = S(std::log1p(std::exp(-1.5 + 0.75 * nd(rng))));
    A.resize(d.H);  // A in [-16, -1]
    for (auto& e : A) e = S(-1 - 15 * ud(rng));
  }
  SsdArgs<S> args(bool with_D, bool with_s0, S* y, S* s1) const {
    return {x.data(), dt.data(), A.data(), B.data(), C.data(), with_D ? D.data() : nullptr,
            with_s0 ? s0.data() : nullptr, y, s1};
  }
};

// Direct loop over the recurrence in double, state (H, P, N).
template <class S>
void naive(const Case<S>& c, bool with_D, bool with_s0, std::vector<double>& y,
           std::vector<double>& st) {
  const auto& d = c.d;
  const int hpg = d.H / d.G;
  y.assign(d.T * d.H * d.P, 0);
  st.assign(Index(d.H) * d.P * d.N, 0);
  if (with_s0) std::copy(c.s0.begin(), c.s0.end(), st.begin());
  for (Index t = 0; t < d.T; ++t)
    for (int h = 0; h < d.H; ++h) {
      const double dt = c.dt[t * d.H + h], e = std::exp(dt * double(c.A[h]));
      const int g = h / hpg;
      for (int p = 0; p < d.P; ++p) {
        const double xv = c.x[(t * d.H + h) * d.P + p];
        double acc = with_D ? double(c.D[h]) * xv : 0.0;
        for (int n = 0; n < d.N; ++n) {
          double& s = st[(Index(h) * d.P + p) * d.N + n];
          s = e * s + dt * xv * double(c.B[(t * d.G + g) * d.N + n]);
          acc += s * double(c.C[(t * d.G + g) * d.N + n]);
        }
        y[(t * d.H + h) * d.P + p] = acc;
      }
    }
}

// max |a - b| / max(1, max |b|)
template <class U, class V>
double rel_err(const std::vector<U>& a, const std::vector<V>& b) {
  REQUIRE(a.size() == b.size());
  double diff = 0, mag = 1;
  for (std::size_t i = 0; i < a.size(); ++i) {
    diff = std::max(diff, std::abs(double(a[i]) - double(b[i])));
    mag = std::max(mag, std::abs(double(b[i])));
  }
  return diff / mag;
}

template <class S>
constexpr double tol() {
  return sizeof(S) == 8 ? 1e-10 : 1e-4;
}

// Chunked vs recurrent vs naive for one shape, all four D / initial-state combinations.
template <class S>
void check_shape(SsdDims d, int Q, unsigned seed) {
  Case<S> c(d, seed);
  const Index ny = d.T * d.H * d.P, ns = Index(d.H) * d.P * d.N;
  for (bool with_D : {false, true})
    for (bool with_s0 : {false, true}) {
      CAPTURE(d.T); CAPTURE(d.H); CAPTURE(d.P); CAPTURE(d.N); CAPTURE(d.G); CAPTURE(Q);
      CAPTURE(with_D); CAPTURE(with_s0);
      std::vector<S> yr(ny), sr(ns), yc(ny, S(7)), sc(ns, S(7));
      ops::ssd_recurrent(d, c.args(with_D, with_s0, yr.data(), sr.data()));
      ops::ssd_chunked(d, Q, c.args(with_D, with_s0, yc.data(), sc.data()));
      CHECK(rel_err(yc, yr) < tol<S>());
      CHECK(rel_err(sc, sr) < tol<S>());
      std::vector<double> yn, sn;
      naive(c, with_D, with_s0, yn, sn);
      CHECK(rel_err(yr, yn) < tol<S>());
      CHECK(rel_err(sr, sn) < tol<S>());
    }
}

template <class S>
void check_all() {
  const int Q = 16;
  int seed = 1;
  for (Index T : {Index(1), Index(7), Index(Q - 1), Index(Q), Index(3 * Q + 5)}) {
    check_shape<S>({T, 4, 8, 16, 1}, Q, seed++);
    check_shape<S>({T, 6, 4, 8, 3}, Q, seed++);  // G > 1: heads {0,1} {2,3} {4,5}
    check_shape<S>({T, 2, 3, 5, 2}, Q, seed++);  // odd sizes, one head per group
  }
  check_shape<S>({100, 4, 16, 32, 2}, 32, seed++);
  check_shape<S>({100, 4, 16, 32, 2}, 7, seed++);     // Q not a multiple of anything
  check_shape<S>({20, 2, 8, 8, 1}, 64, seed++);       // Q > T
}

}  // namespace

TEST_CASE("ssd chunked == recurrence == direct loop, double") { check_all<double>(); }
TEST_CASE("ssd chunked == recurrence == direct loop, float") { check_all<float>(); }

TEST_CASE("ssd final state chains: two calls == one call, state_out aliasing state_in") {
  const SsdDims d{53, 4, 8, 16, 2}, d1{20, 4, 8, 16, 2}, d2{33, 4, 8, 16, 2};
  Case<double> c(d, 99);
  const Index row = Index(d.H) * d.P, ns = Index(d.H) * d.P * d.N;
  for (auto path : {ScanPath::Chunked, ScanPath::Recurrent, ScanPath::Auto}) {
    std::vector<double> y(d.T * row), st(ns), y2(d.T * row), st2 = c.s0;
    ops::ssd_forward(d, 16, path, c.args(true, true, y.data(), st.data()));
    // first 20 steps, then the remaining 33 with the state updated in place
    auto a1 = c.args(true, true, y2.data(), st2.data());
    a1.state_in = st2.data();
    ops::ssd_forward(d1, 16, path, a1);
    auto a2 = a1;
    a2.x += d1.T * row; a2.dt += d1.T * d.H; a2.B += d1.T * d.G * d.N; a2.C += d1.T * d.G * d.N;
    a2.y += d1.T * row;
    ops::ssd_forward(d2, 16, path, a2);
    CHECK(rel_err(y2, y) < 1e-10);
    CHECK(rel_err(st2, st) < 1e-10);
  }
}

TEST_CASE("ssd decode: T calls of one token == one call of T tokens") {
  // Short calls (T <= kSsdShortT) update the state in place in its (H, P, N) layout, long
  // ones hold it transposed: both must agree, whichever path the long call takes.
  const SsdDims d{40, 4, 8, 16, 2}, d1{1, 4, 8, 16, 2};
  Case<double> c(d, 21);
  const Index row = Index(d.H) * d.P, ns = Index(d.H) * d.P * d.N;
  for (auto path : {ScanPath::Chunked, ScanPath::Recurrent}) {
    std::vector<double> y(d.T * row), st(ns), y1(d.T * row), st1 = c.s0;
    ops::ssd_forward(d, 16, path, c.args(true, true, y.data(), st.data()));
    for (Index t = 0; t < d.T; ++t) {
      auto a = c.args(true, true, y1.data() + t * row, st1.data());
      a.state_in = st1.data();
      a.x += t * row; a.dt += t * d.H; a.B += t * d.G * d.N; a.C += t * d.G * d.N;
      ops::ssd_forward(d1, 16, ScanPath::Auto, a);
    }
    CHECK(rel_err(y1, y) < 1e-10);
    CHECK(rel_err(st1, st) < 1e-10);
  }
}

TEST_CASE("ssd Auto picks chunked for states past L1 and matches the recurrence") {
  const SsdDims small{64, 2, 16, 16, 1}, big{64, 2, 64, 256, 1};  // 1 KiB, 64 KiB (float)
  CHECK_FALSE(ops::ssd_auto_chunked(small, sizeof(float)));
  CHECK(ops::ssd_auto_chunked(big, sizeof(float)));
  CHECK_FALSE(ops::ssd_auto_chunked({16, 2, 64, 256, 1}, sizeof(float)));  // short call
  Case<float> c(big, 8);
  const Index ny = big.T * big.H * big.P, ns = Index(big.H) * big.P * big.N;
  std::vector<float> ya(ny), sa(ns), yr(ny), sr(ns);
  ops::ssd_forward(big, ops::kSsdDefaultChunk, ScanPath::Auto,
                   c.args(true, true, ya.data(), sa.data()));
  ops::ssd_recurrent(big, c.args(true, true, yr.data(), sr.data()));
  CHECK(rel_err(ya, yr) < 1e-4);
  CHECK(rel_err(sa, sr) < 1e-4);
}

TEST_CASE("ssd padding: the last partial chunk neither decays nor feeds the state") {
  // T = 3Q + 5 has a partial last chunk. Padding the raw inputs instead (dt > 0 in the
  // padded steps) would decay the final state by exp(dt A) per extra step; check that the
  // state after T steps is the state after exactly T recurrence steps, and that it differs
  // from the state after T+1 steps (so the comparison can fail).
  const int Q = 16;
  const SsdDims d{3 * Q + 5, 2, 4, 8, 1}, d1{3 * Q + 6, 2, 4, 8, 1};
  Case<double> c(d1, 5);
  const Index ns = Index(d.H) * d.P * d.N;
  std::vector<double> y(d1.T * d.H * d.P), sc(ns), sr(ns), s1(ns);
  ops::ssd_chunked(d, Q, c.args(false, true, y.data(), sc.data()));
  ops::ssd_recurrent(d, c.args(false, true, y.data(), sr.data()));
  ops::ssd_recurrent(d1, c.args(false, true, y.data(), s1.data()));
  CHECK(rel_err(sc, sr) < 1e-10);
  CHECK(rel_err(s1, sr) > 1e-3);
}

TEST_CASE("ssd T = 0 passes the state through") {
  const SsdDims d{0, 2, 4, 8, 1};
  std::vector<float> s0(2 * 4 * 8, 1.5f), s1(s0.size(), 0.f);
  SsdArgs<float> a;
  a.state_in = s0.data();
  a.state_out = s1.data();
  ops::ssd_chunked(d, 8, a);
  CHECK(s1 == s0);
  a.state_in = nullptr;
  ops::ssd_recurrent(d, a);
  CHECK(std::all_of(s1.begin(), s1.end(), [](float v) { return v == 0.f; }));
}

TEST_CASE("ssd rejects bad dims") {
  Case<float> c({4, 4, 2, 2, 2}, 3);
  std::vector<float> y(4 * 4 * 2);
  const auto a = c.args(false, false, y.data(), nullptr);
  CHECK_THROWS_AS(ops::ssd_chunked({4, 4, 2, 2, 3}, 4, a), Error);  // H % G != 0
  CHECK_THROWS_WITH_AS(ops::ssd_chunked({4, 4, 2, 2, 2}, 0, a), doctest::Contains("Q = 0"),
                       Error);
  CHECK_THROWS_AS(ops::ssd_recurrent({4, 0, 2, 2, 2}, a), Error);
  CHECK_THROWS_AS(ops::ssd_recurrent({-1, 4, 2, 2, 2}, a), Error);
  CHECK_THROWS_AS(ops::ssd_forward({4, 4, 2, 0, 2}, 4, ScanPath::Auto, a), Error);
  CHECK_THROWS_WITH_AS(ops::ssd_forward({4, 4, 2, 2, 2}, -1, ScanPath::Recurrent, a),
                       doctest::Contains("Q = -1"), Error);
  CHECK_THROWS_WITH_AS(ops::ssd_recurrent({4, 6, 2, 2, 4}, a),
                       doctest::Contains("H = 6 is not a multiple of G = 4"), Error);
  auto bad = a;
  bad.x = nullptr;
  CHECK_THROWS_AS(ops::ssd_forward({4, 4, 2, 2, 2}, 4, ScanPath::Chunked, bad), Error);
  CHECK_NOTHROW(ops::ssd_forward({4, 4, 2, 2, 2}, 4, ScanPath::Chunked, a));
}

}  // namespace hybrid_test_ssd
