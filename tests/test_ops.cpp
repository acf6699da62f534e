// Reference checks of the attention, RoPE, convolution and norm ops against direct
// formulas written out here, independently of the library's implementation.
#include <doctest/doctest.h>

#include <cmath>
#include <hybrid/model.hpp>

#include "test_util.hpp"

using namespace hybrid;

// This file's own namespace: the tests compile in batches (tests/CMakeLists.txt).
namespace hybrid_test_ops {

namespace {
using hybrid::test_util::random_mat;

// Naive causal softmax attention, one head at a time, full (T x T) score matrix.
Mat<double> naive_attention(const Mat<double>& q, const Mat<double>& k, const Mat<double>& v,
                            int H, int G, int P, double scale, int window) {
  const Index T = q.rows();
  Mat<double> o = Mat<double>::Zero(T, Index(H) * P);
  for (int h = 0; h < H; ++h) {
    const int g = h / (H / G);
    for (Index i = 0; i < T; ++i) {
      std::vector<double> p(T, 0.0);
      double mx = -1e300, sum = 0;
      for (Index j = 0; j <= i; ++j) {
        if (window > 0 && i - j >= window) continue;
        double s = 0;
        for (int d = 0; d < P; ++d) s += q(i, h * P + d) * k(j, g * P + d);
        p[j] = s * scale;
        mx = std::max(mx, p[j]);
      }
      for (Index j = 0; j <= i; ++j) {
        if (window > 0 && i - j >= window) { p[j] = 0; continue; }
        p[j] = std::exp(p[j] - mx);
        sum += p[j];
      }
      for (Index j = 0; j <= i; ++j)
        for (int d = 0; d < P; ++d) o(i, h * P + d) += p[j] / sum * v(j, g * P + d);
    }
  }
  return o;
}
}  // namespace

TEST_CASE("attention equals a naive softmax reference (GQA grouping, windows)") {
  for (auto [H, G, window, T] : std::vector<std::array<int, 4>>{
           {4, 4, 0, 9}, {4, 2, 0, 70}, {6, 1, 0, 130}, {4, 2, 5, 70}, {2, 1, 1, 10}}) {
    const int P = 8;
    auto q = random_mat(T, H * P, 1), k = random_mat(T, G * P, 2), v = random_mat(T, G * P, 3);
    Mat<double> o(T, H * P);
    ops::attention_forward<double>(q.data(), k.data(), v.data(), o.data(),
                                   ops::AttnDims{T, T, H, G, P}, 0.3, 0, 0, window);
    const auto ref = naive_attention(q, k, v, H, G, P, 0.3, window);
    CAPTURE(H); CAPTURE(G); CAPTURE(window); CAPTURE(T);
    CHECK((o - ref).cwiseAbs().maxCoeff() < 1e-12);
  }
}

TEST_CASE("attention: GQA equals MHA with key/value heads repeated") {
  const int T = 20, H = 6, G = 2, P = 4;
  auto q = random_mat(T, H * P, 4), k = random_mat(T, G * P, 5), v = random_mat(T, G * P, 6);
  Mat<double> k_rep(T, H * P), v_rep(T, H * P);
  for (int h = 0; h < H; ++h) {  // head h reads kv head h / (H/G): contiguous blocks
    k_rep.middleCols(h * P, P) = k.middleCols((h / 3) * P, P);
    v_rep.middleCols(h * P, P) = v.middleCols((h / 3) * P, P);
  }
  Mat<double> o1(T, H * P), o2(T, H * P);
  ops::attention_forward<double>(q.data(), k.data(), v.data(), o1.data(), {T, T, H, G, P}, 0.5, 0, 0, 0);
  ops::attention_forward<double>(q.data(), k_rep.data(), v_rep.data(), o2.data(), {T, T, H, H, P}, 0.5, 0, 0, 0);
  CHECK((o1 - o2).cwiseAbs().maxCoeff() < 1e-14);
}

TEST_CASE("attention over a cache with offset positions equals the full computation") {
  const int T = 30, H = 4, G = 2, P = 8, window = 7;
  auto q = random_mat(T, H * P, 7), k = random_mat(T, G * P, 8), v = random_mat(T, G * P, 9);
  const auto ref = naive_attention(q, k, v, H, G, P, 0.2, window);
  // Last 3 queries against keys 10..29 (positions 10..), as a trimmed windowed cache holds.
  Mat<double> o(3, H * P);
  ops::attention_forward<double>(q.data() + 27 * H * P, k.data() + 10 * G * P,
                                 v.data() + 10 * G * P, o.data(), {3, 20, H, G, P}, 0.2,
                                 27, 10, window);
  CHECK((o - ref.bottomRows(3)).cwiseAbs().maxCoeff() < 1e-12);
}

TEST_CASE("RoPE equals the direct rotate_half formula") {
  const int T = 5, H = 3, P = 8;
  const double base = 10000;
  auto x = random_mat(T, H * P, 10);
  Mat<double> y = x;
  ops::rope_forward<double>(y, H, P, 17, base);
  for (Index t = 0; t < T; ++t)
    for (int h = 0; h < H; ++h)
      for (int d = 0; d < P; ++d) {
        // out = x * cos + rotate_half(x) * sin, rotate_half(x) = [-x2, x1]
        const int i = d % (P / 2);
        const double ang = double(17 + t) * std::pow(base, -2.0 * i / P);
        const double xd = x(t, h * P + d);
        const double rot = d < P / 2 ? -x(t, h * P + d + P / 2) : x(t, h * P + d - P / 2);
        CHECK(std::abs(y(t, h * P + d) - (xd * std::cos(ang) + rot * std::sin(ang))) < 1e-12);
      }
  // Relative-position property: <R(p)q, R(p+s)k> depends only on s.
  auto q = random_mat(1, P, 11), k = random_mat(1, P, 12);
  auto dot_at = [&](Index p, Index s) {
    Mat<double> a = q, b = k;
    ops::rope_forward<double>(a, 1, P, p, base);
    ops::rope_forward<double>(b, 1, P, p + s, base);
    return a.row(0).dot(b.row(0));
  };
  CHECK(std::abs(dot_at(0, 5) - dot_at(100, 5)) < 1e-10);
}

TEST_CASE("causal depthwise conv equals the direct sum and carries its history") {
  const Index T = 9, C = 5, K = 4;
  auto u = random_mat(T, C, 13), w = random_mat(C, K, 14), b = random_mat(1, C, 15);
  Mat<double> y(T, C);
  ops::causal_conv1d_forward<double>(u, w, b, nullptr, y, nullptr);
  for (Index t = 0; t < T; ++t)
    for (Index c = 0; c < C; ++c) {
      double acc = b(0, c);
      for (Index k = 0; k < K; ++k) {
        const Index s = t - (K - 1) + k;  // weight 0 multiplies the oldest sample
        if (s >= 0) acc += w(c, k) * u(s, c);
      }
      CHECK(std::abs(y(t, c) - acc) < 1e-12);
    }
  // Split into two calls through the (C, K) history == one call.
  Mat<double> hist = Mat<double>::Zero(C, K), y1(2, C), y2(T - 2, C);
  ops::causal_conv1d_forward<double>(Mat<double>(u.topRows(2)), w, b, hist, y1, hist);
  ops::causal_conv1d_forward<double>(Mat<double>(u.bottomRows(T - 2)), w, b, hist, y2, hist);
  CHECK((y1 - y.topRows(2)).cwiseAbs().maxCoeff() < 1e-12);
  CHECK((y2 - y.bottomRows(T - 2)).cwiseAbs().maxCoeff() < 1e-12);
  CHECK((hist.transpose() - u.bottomRows(K)).cwiseAbs().maxCoeff() == 0);
}

TEST_CASE("causal conv decode steps (T = 1) equal one call: cache in place, apart, none, no bias") {
  const Index T = 7, C = 6;
  for (Index K = 1; K <= 4; ++K)
    for (bool bias : {true, false}) {
      CAPTURE(K);
      CAPTURE(bias);
      auto u = random_mat(T, C, 20 + K), w = random_mat(C, K, 30 + K), b = random_mat(1, C, 40);
      const Mat<double> none;
      const Mat<double>& bb = bias ? b : none;
      Mat<double> y(T, C);
      ops::causal_conv1d_forward<double>(u, w, bb, nullptr, y, nullptr);
      // In place (the decode cache), and from one cache into another (ping-pong).
      Mat<double> h = Mat<double>::Zero(C, K), ha = Mat<double>::Zero(C, K), hb(C, K), yt(1, C);
      for (Index t = 0; t < T; ++t) {
        ops::causal_conv1d_forward<double>(Mat<double>(u.row(t)), w, bb, h, yt, h);
        CHECK((yt - y.row(t)).cwiseAbs().maxCoeff() < 1e-12);
        Mat<double>& from = t % 2 ? hb : ha;
        Mat<double>& to = t % 2 ? ha : hb;
        ops::causal_conv1d_forward<double>(Mat<double>(u.row(t)), w, bb, from, yt, to);
        CHECK((yt - y.row(t)).cwiseAbs().maxCoeff() < 1e-12);
      }
      const Mat<double>& last = T % 2 ? hb : ha;
      for (Index k = 0; k < K; ++k) {  // oldest first: the last K inputs
        CHECK((h.col(k).transpose() - u.row(T - K + k)).cwiseAbs().maxCoeff() == 0);
        CHECK((last.col(k).transpose() - u.row(T - K + k)).cwiseAbs().maxCoeff() == 0);
      }
      // No history: the first step of a sequence, zeros before it; the new history is
      // zero-padded on the left.
      Mat<double> h0 = Mat<double>::Constant(C, K, 9.0);
      ops::causal_conv1d_forward<double>(Mat<double>(u.row(0)), w, bb, nullptr, yt, h0);
      CHECK((yt - y.row(0)).cwiseAbs().maxCoeff() < 1e-12);
      if (K > 1) CHECK(h0.leftCols(K - 1).cwiseAbs().maxCoeff() == 0);
      CHECK((h0.col(K - 1).transpose() - u.row(0)).cwiseAbs().maxCoeff() == 0);
      // A wrong history shape is an error, not a write out of bounds.
      Mat<double> bad(C, K + 1);
      CHECK_THROWS_WITH(ops::causal_conv1d_forward<double>(Mat<double>(u.row(0)), w, bb, nullptr, yt, bad),
                        doctest::Contains("expected (C, K)"));
    }
}

TEST_CASE("norms equal their formulas") {
  auto x = random_mat(3, 12, 16), w = random_mat(1, 12, 17), b = random_mat(1, 12, 18);
  auto z = random_mat(3, 12, 19);
  Mat<double> y(3, 12);
  ops::rmsnorm_forward<double>(x, w, 1e-5, y);
  for (Index r = 0; r < 3; ++r) {
    const double rms = std::sqrt(x.row(r).squaredNorm() / 12 + 1e-5);
    CHECK((y.row(r) - (x.row(r).array() / rms * w.row(0).array()).matrix()).norm() < 1e-12);
  }
  ops::layernorm_forward<double>(x, w, b, 1e-5, y);
  for (Index r = 0; r < 3; ++r) {
    const double mu = x.row(r).mean();
    const double var = (x.row(r).array() - mu).square().mean();
    const auto ref = ((x.row(r).array() - mu) / std::sqrt(var + 1e-5) * w.row(0).array() + b.row(0).array()).matrix();
    CHECK((y.row(r) - ref).norm() < 1e-12);
  }
  // Gated: per group of 4 vs whole width; equal when there is one group.
  Mat<double> g4(3, 12), g12(3, 12);
  ops::gated_rmsnorm_forward<double>(x, z, w, 4, 1e-5, g4);
  ops::gated_rmsnorm_forward<double>(x, z, w, 12, 1e-5, g12);
  for (Index r = 0; r < 3; ++r)
    for (Index c = 0; c < 12; ++c) {
      auto gate = [&](Index cc) { return x(r, cc) * z(r, cc) / (1 + std::exp(-z(r, cc))); };
      double ss4 = 0, ss12 = 0;
      for (Index j = (c / 4) * 4; j < (c / 4) * 4 + 4; ++j) ss4 += gate(j) * gate(j);
      for (Index j = 0; j < 12; ++j) ss12 += gate(j) * gate(j);
      CHECK(std::abs(g4(r, c) - w(0, c) * gate(c) / std::sqrt(ss4 / 4 + 1e-5)) < 1e-12);
      CHECK(std::abs(g12(r, c) - w(0, c) * gate(c) / std::sqrt(ss12 / 12 + 1e-5)) < 1e-12);
    }
}

TEST_CASE("attention mask: the per-row key range equals the mask's definition") {
  for (int window : {0, 1, 3, 7})
    for (Index kfirst : {0, 2, 9})
      for (Index qp = 0; qp < 20; ++qp) {
        const Index nk = 8;
        Index lo, hi;
        ops::detail::attn_row_range(qp, kfirst, nk, window, lo, hi);
        for (Index j = 0; j < nk; ++j) {
          CAPTURE(window);
          CAPTURE(kfirst);
          CAPTURE(qp);
          CAPTURE(j);
          CHECK((j >= lo && j < hi) == ops::detail::attn_visible(qp, kfirst + j, window));
        }
      }
}

}  // namespace hybrid_test_ops
