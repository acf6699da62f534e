// The multithreaded paths against the single-threaded ones, and the GEMM backend
// (core/gemm.hpp: OpenBLAS or Eigen, whichever this build uses) against a plain loop.
// Shapes are above the ops' parallel thresholds, so with two or more threads the split
// code runs. Split results agree with the serial ones to rounding, not bit for bit: where a
// range starts decides which elements Eigen computes in its vectorised body and which in
// its scalar head and tail (different exp and FMA rounding), and the reduced parameter
// gradients are summed per row range. A wrong split (a row skipped, a range counted twice,
// a partial sum lost) gives errors of order one.
#include <doctest/doctest.h>

#include <hybrid/model.hpp>
#include <hybrid/train/optim.hpp>

#include "test_util.hpp"

#if defined(_OPENMP)
#include <omp.h>
#endif

using namespace hybrid;

// This file's own namespace: the tests compile in batches (tests/CMakeLists.txt).
namespace hybrid_test_parallel {

namespace {

using hybrid::test_util::random_mat;

// Runs f() with one thread and with `threads` threads; restores the previous setting.
template <class F>
auto serial_and_parallel(F&& f, int threads = 2) {
#if defined(_OPENMP)
  const int before = omp_get_max_threads();
  omp_set_num_threads(1);
  auto serial = f();
  omp_set_num_threads(threads);
  auto parallel = f();
  omp_set_num_threads(before);
  return std::make_pair(serial, parallel);
#else
  (void)threads;
  auto r = f();
  return std::make_pair(r, r);
#endif
}

template <class S>
double rel_diff(const Mat<S>& a, const Mat<S>& b) {
  return double((a - b).cwiseAbs().maxCoeff()) / std::max(1e-30, double(b.cwiseAbs().maxCoeff()));
}

// Agreement to rounding: a few units in the last place of the largest entry.
template <class S>
bool close(const Mat<S>& a, const Mat<S>& b) {
  const double tol = std::is_same_v<S, float> ? 4e-6 : 1e-13;
  return a.rows() == b.rows() && a.cols() == b.cols() && rel_diff(a, b) < tol;
}

// C = alpha op(A) op(B) + beta C, written out.
Mat<double> naive_gemm(bool ta, bool tb, const Mat<double>& A, const Mat<double>& B, double alpha,
                       double beta, const Mat<double>& C) {
  const Mat<double> a = ta ? Mat<double>(A.transpose()) : A, b = tb ? Mat<double>(B.transpose()) : B;
  Mat<double> out = C;
  for (Index i = 0; i < a.rows(); ++i)
    for (Index j = 0; j < b.cols(); ++j) {
      double s = 0;
      for (Index k = 0; k < a.cols(); ++k) s += a(i, k) * b(k, j);
      out(i, j) = alpha * s + beta * C(i, j);
    }
  return out;
}

}  // namespace

TEST_CASE("gemm: every transposition, strides and beta against a plain loop") {
  for (const bool ta : {false, true})
    for (const bool tb : {false, true})
      for (const double beta : {0.0, 1.0, -0.5}) {
        CAPTURE(ta);
        CAPTURE(tb);
        CAPTURE(beta);
        const Index M = 37, N = 29, K = 45;
        // Operands stored inside wider matrices: leading dimensions larger than the width.
        const Mat<double> Abig = random_mat<double>(ta ? K : M, (ta ? M : K) + 3, 1);
        const Mat<double> Bbig = random_mat<double>(tb ? N : K, (tb ? K : N) + 5, 2);
        Mat<double> Cbig = random_mat<double>(M, N + 2, 3);
        const Mat<double> A = Abig.leftCols(ta ? M : K), B = Bbig.leftCols(tb ? K : N);
        const Mat<double> C0 = Cbig.leftCols(N);
        const Mat<double> want = naive_gemm(ta, tb, A, B, 0.75, beta, C0);
        blas::gemm<double>(ta ? blas::Op::T : blas::Op::N, tb ? blas::Op::T : blas::Op::N, M, N, K,
                           0.75, Abig.data(), Abig.cols(), Bbig.data(), Bbig.cols(), beta,
                           Cbig.data(), Cbig.cols());
        CHECK((Cbig.leftCols(N) - want).cwiseAbs().maxCoeff() < 1e-12);
        CHECK(Cbig.rightCols(2) == random_mat<double>(M, N + 2, 3).rightCols(2));  // untouched
        // Float through the same call.
        Mat<float> Cf = C0.cast<float>();
        const Mat<float> Af = A.cast<float>(), Bf = B.cast<float>();
        blas::gemm<float>(ta ? blas::Op::T : blas::Op::N, tb ? blas::Op::T : blas::Op::N, M, N, K,
                          0.75f, Af.data(), Af.cols(), Bf.data(), Bf.cols(), float(beta), Cf.data(),
                          N);
        CHECK((Cf.cast<double>() - want).cwiseAbs().maxCoeff() < 1e-4);
      }
  // K = 0: C = beta C.
  Mat<double> C = random_mat<double>(3, 4, 9);
  const Mat<double> C0 = C;
  const double dummy = 0;
  blas::gemm<double>(blas::Op::N, blas::Op::N, 3, 4, 0, 1.0, &dummy, 1, &dummy, 4, 0.5, C.data(), 4);
  CHECK((C - 0.5 * C0).cwiseAbs().maxCoeff() == 0);
  INFO("backend: ", blas::backend());
}

TEST_CASE("parallel: linear forward of one to four rows (split GEMV) equals the plain product") {
  const Index out = 1031, in = 257;  // odd sizes: ranges end off the 16-column alignment
  const Mat<float> W = random_mat<float>(out, in, 4), bias = random_mat<float>(1, out, 5);
  for (Index R : {1, 2, 4, 5}) {
    CAPTURE(R);
    const Mat<float> x = random_mat<float>(R, in, 6 + R);
    const auto [s, p] = serial_and_parallel([&] {
      Mat<float> y(R, out);
      ops::linear_forward<float>(x, W, bias, y);
      return y;
    });
    const Mat<double> want =
        (x.cast<double>() * W.cast<double>().transpose()).rowwise() + bias.cast<double>().row(0);
    CHECK((p.cast<double>() - want).cwiseAbs().maxCoeff() < 1e-4);
    CHECK((s.cast<double>() - want).cwiseAbs().maxCoeff() < 1e-4);
    CHECK(close(s, p));
  }
}

TEST_CASE("parallel: row-split ops agree with the serial result") {
  const Index R = 300, F = 257;  // R * F above par::kMinParallelWork * 2
  const Mat<float> a = random_mat<float>(R, F, 11), u = random_mat<float>(R, F, 12),
                   dh = random_mat<float>(R, F, 13);
  SUBCASE("swiglu forward and backward") {
    const auto [s, p] = serial_and_parallel([&] {
      Mat<float> h(R, F), da = Mat<float>::Zero(R, F), du = Mat<float>::Zero(R, F);
      ops::swiglu_forward<float>(a, u, h);
      ops::swiglu_backward<float>(a, u, dh, da, du);
      return std::make_tuple(h, da, du);
    });
    CHECK(close(std::get<0>(s), std::get<0>(p)));
    CHECK(close(std::get<1>(s), std::get<1>(p)));
    CHECK(close(std::get<2>(s), std::get<2>(p)));
    // And the values are SwiGLU's (vectorised exp agrees with the scalar one to rounding).
    const float want = ops::silu(a(7, 9)) * u(7, 9);
    CHECK(std::abs(std::get<0>(p)(7, 9) - want) <= 1e-6f * std::max(1.0f, std::abs(want)));
  }
  SUBCASE("tape functions: silu, mul, add, cols, sigmoid_gate") {
    const auto [s, p] = serial_and_parallel([&] {
      Tape<float> t(true);
      Var<float> x = t.var(R, F), y = t.var(R, F);
      x.val() = a;
      y.val() = u;
      Var<float> z = ag::add(t, ag::mul(t, ag::silu(t, x), y), x, 0.5f);
      Var<float> c = z.col_range(3, F - 10);
      Var<float> o = ag::sigmoid_gate(t, c, y.col_range(0, F - 10));
      o.grad() = dh.leftCols(F - 10);
      t.sweep();
      return std::make_tuple(Mat<float>(o.val()), Mat<float>(x.grad()), Mat<float>(y.grad()));
    });
    CHECK(close(std::get<0>(s), std::get<0>(p)));
    CHECK(close(std::get<1>(s), std::get<1>(p)));
    CHECK(close(std::get<2>(s), std::get<2>(p)));
  }
}

TEST_CASE("parallel: norms and the causal conv; reduced weight gradients agree to rounding") {
  const Index R = 260, D = 256;
  const Mat<double> x = random_mat<double>(R, D, 21), z = random_mat<double>(R, D, 22),
                    w = random_mat<double>(1, D, 23), dy = random_mat<double>(R, D, 24);
  SUBCASE("rmsnorm") {
    const auto [s, p] = serial_and_parallel([&] {
      Mat<double> y(R, D), dx = Mat<double>::Zero(R, D), dw = Mat<double>::Zero(1, D);
      std::vector<double> rstd{};
      rstd.resize(std::size_t(R));
      ops::rmsnorm_forward<double>(x, w, 1e-5, y, rstd.data());
      ops::rmsnorm_backward<double>(x, w, rstd.data(), dy, dx, dw);
      return std::make_tuple(y, dx, dw);
    });
    CHECK(close(std::get<0>(s), std::get<0>(p)));
    CHECK(close(std::get<1>(s), std::get<1>(p)));
    CHECK(rel_diff(std::get<2>(p), std::get<2>(s)) < 1e-13);
    // The reduction is not a copy of one range: dw has every row's contribution.
    Mat<double> dw_rows = Mat<double>::Zero(1, D);
    for (Index r = 0; r < R; ++r) {
      const double inv = 1.0 / std::sqrt(x.row(r).squaredNorm() / double(D) + 1e-5);
      dw_rows.array() += dy.row(r).array() * x.row(r).array() * inv;
    }
    CHECK(rel_diff(std::get<2>(p), dw_rows) < 1e-12);
  }
  SUBCASE("gated rmsnorm, per group and whole width") {
    for (Index group : {Index(64), D}) {
      CAPTURE(group);
      const auto [s, p] = serial_and_parallel([&] {
        Mat<double> o(R, D), dyy = Mat<double>::Zero(R, D), dz = Mat<double>::Zero(R, D),
                             dw = Mat<double>::Zero(1, D);
        std::vector<double> rstd{};
        rstd.resize(std::size_t(R * (D / group)));
        ops::gated_rmsnorm_forward<double>(x, z, w, group, 1e-5, o, rstd.data());
        ops::gated_rmsnorm_backward<double>(x, z, w, group, rstd.data(), dy, dyy, dz,
                                            dw);
        return std::make_tuple(o, dyy, dz, dw);
      });
      CHECK(close(std::get<0>(s), std::get<0>(p)));
      CHECK(close(std::get<1>(s), std::get<1>(p)));
      CHECK(close(std::get<2>(s), std::get<2>(p)));
      CHECK(rel_diff(std::get<3>(p), std::get<3>(s)) < 1e-13);
    }
  }
  SUBCASE("causal conv1d, channels split") {
    const Index C = 300, K = 4, T = 120;  // T * C * K above the threshold
    const Mat<double> uu = random_mat<double>(T, C, 31), ww = random_mat<double>(C, K, 32),
                      bb = random_mat<double>(1, C, 33), dyc = random_mat<double>(T, C, 34);
    Mat<double> hist = random_mat<double>(C, K, 35);
    const auto [s, p] = serial_and_parallel([&] {
      Mat<double> y(T, C), y2(T, C), du = Mat<double>::Zero(T, C), dw = Mat<double>::Zero(C, K),
                           db = Mat<double>::Zero(1, C);
      ops::causal_conv1d_forward<double>(uu, ww, bb, nullptr, y, nullptr);
      ops::causal_conv1d_forward<double>(uu, ww, bb, hist, y2, nullptr);
      ops::causal_conv1d_backward<double>(uu, ww, dyc, du, dw, db);
      return std::make_tuple(y, y2, du, dw, db);
    });
    CHECK(close(std::get<0>(s), std::get<0>(p)));
    CHECK(close(std::get<1>(s), std::get<1>(p)));
    CHECK(close(std::get<2>(s), std::get<2>(p)));
    CHECK(close(std::get<3>(s), std::get<3>(p)));
    CHECK(close(std::get<4>(s), std::get<4>(p)));
  }
}

TEST_CASE("parallel: fused AdamW agrees across thread counts; the gradient norm is identical") {
  auto run = [] {
    test_util::ToyModel<float> model;
    model.add("w", 700, 300, ParamRole::Matrix, 41);
    model.add("b", 1, 300, ParamRole::Scalar, 42);
    GradStore<float> grads(model);
    train::OptimConfig cfg = train::OptimConfig::adamw(1e-2, 0.1);
    cfg.max_grad_norm = 1.0;  // clipping active: the norm is far above 1
    train::Optimizer<float> opt(grads, cfg);
    std::vector<double> norms;
    for (int step = 0; step < 3; ++step) {
      const Mat<float> g = random_mat<float>(1, 700 * 300 + 300, 50 + step);
      Index k = 0;  // tensor by tensor: the store's alignment padding stays zero
      for (const auto& e : grads.entries()) {
        std::copy(g.data() + k, g.data() + k + e.size(), grads.grad_of(e));
        k += e.size();
      }
      norms.push_back(opt.step().grad_norm);
    }
    return std::make_tuple(Mat<float>(model[0]), Mat<float>(model[1]), norms);
  };
  const auto [s, p] = serial_and_parallel(run);
  CHECK(close(std::get<0>(s), std::get<0>(p)));
  CHECK(close(std::get<1>(s), std::get<1>(p)));
  CHECK(std::get<2>(s) == std::get<2>(p));  // fixed chunks summed in a fixed order
  // The norm is the norm: compare with a double sum of the same gradients (the optimiser
  // sums blocks of 1 Ki squares in float first).
  const Mat<float> g0 = random_mat<float>(1, 700 * 300 + 300, 50);
  CHECK(std::get<2>(p)[0] == doctest::Approx(g0.cast<double>().norm()).epsilon(1e-6));
}

}  // namespace hybrid_test_parallel
