// Every CUDA kernel against its CPU op (the specification) on the same inputs, in float
// and double: strided views, T not a multiple of the chunk, G > 1, T = 1, windows, rows
// that see no key, head dims that are not a multiple of 32. Compiled by the C++ compiler
// against the plain launcher declarations (hybrid/cuda/ops.hpp) and linked with the
// nvcc-compiled hybrid::cuda library. Without a CUDA device the program reports that and
// exits with 77, which ctest counts as skipped.
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include <cmath>
#include <cstdio>
#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <algorithm>
#include <random>
#include <vector>

#include <hybrid/autograd/op_cases.hpp>
#include <hybrid/cuda/ops.hpp>
#include <hybrid/ops/activation.hpp>
#include <hybrid/ops/attention.hpp>
#include <hybrid/ops/attention_decode.hpp>
#include <hybrid/ops/conv1d.hpp>
#include <hybrid/ops/elementwise.hpp>
#include <hybrid/ops/embedding.hpp>
#include <hybrid/ops/linear.hpp>
#include <hybrid/ops/loss.hpp>
#include <hybrid/ops/norm.hpp>
#include <hybrid/ops/rope.hpp>
#include <hybrid/ops/ssd.hpp>
#include <hybrid/infer/sampling.hpp>
#include <hybrid/infer/state.hpp>

#include "compare.hpp"

using namespace hybrid;
using hybrid::cuda_test::rel_err;

namespace {

template <class S>
Mat<S> rnd(Index r, Index c, std::uint32_t seed, double lo = -1, double hi = 1) {
  std::mt19937 g(seed);
  std::uniform_real_distribution<double> u(lo, hi);
  Mat<S> m(r, c);
  for (Index i = 0; i < m.size(); ++i) m.data()[i] = S(u(g));
  return m;
}

// A host matrix copied to a device buffer of the same shape.
template <class S>
struct DMat {
  Buffer<S, Cuda> buf;
  View<S, Cuda> v;
  DMat(const Mat<S>& m, const cuda::Context& ctx) : buf(std::max<Index>(m.size(), 1)), v(buf.data(), m.rows(), m.cols()) {
    cuda::upload<S>(CView<S>(m), v, ctx.stream());
  }
  DMat(Index r, Index c) : buf(std::max<Index>(r * c, 1)), v(buf.data(), r, c) {}
  View<const S, Cuda> cv() const { return v; }
};

template <class S>
Mat<S> host(View<const S, Cuda> v, const cuda::Context& ctx) {
  Mat<S> m(v.rows, v.cols);
  cuda::download<S>(v, View<S>(m), ctx.stream());
  return m;
}

template <class S>
double tol() { return std::is_same_v<S, float> ? 3e-5 : 1e-11; }


// Puts the context back in its GEMM mode when a test leaves, by a throw too.
struct GemmModeScope {
  cuda::Context& c;
  cuda::GemmMode old;
  GemmModeScope(cuda::Context& ctx, cuda::GemmMode m) : c(ctx), old(ctx.gemm_mode()) { c.set_gemm_mode(m); }
  ~GemmModeScope() { c.set_gemm_mode(old); }
};

cuda::Context& ctx() {
  static cuda::Context c;  // one context for the whole program: its stream and arena
  return c;
}

}  // namespace

TEST_CASE_TEMPLATE("element-wise ops and activations match the CPU ops on strided views", S, float, double) {
  auto& c = ctx();
  const Index R = 37, C = 45, W = 3 * C;  // inputs are column ranges of (R, 3C) rows
  const Mat<S> wide = rnd<S>(R, W, 1, -4, 4), bias = rnd<S>(1, C, 2);
  DMat<S> dw(wide, c), db(bias, c);
  const CView<S> hx = CView<S>(wide).col_range(0, C), hy = CView<S>(wide).col_range(C, C);
  const auto dx = dw.cv().col_range(0, C), dy = dw.cv().col_range(C, C);
  Mat<S> ref(R, C);
  DMat<S> out(R, C);
  auto check = [&](const char* name) {
    CAPTURE(name);
    CHECK(rel_err<S>(host<S>(out.cv(), c), ref) <= tol<S>());
  };
  {  // the comparison itself sees a NaN
    Mat<S> nan = ref;
    nan(3, 4) = std::numeric_limits<S>::quiet_NaN();
    CHECK(std::isinf(rel_err<S>(nan, ref)));
  }
  ops::add_forward<S>(hx, hy, S(0.5), ref);
  ops::add_forward<S>(c, dx, dy, S(0.5), out.v);
  check("add");
  ops::scale_forward<S>(hx, S(-1.5), ref);
  ops::scale_forward<S>(c, dx, S(-1.5), out.v);
  check("scale");
  ops::mul_forward<S>(hx, hy, ref);
  ops::mul_forward<S>(c, dx, dy, out.v);
  check("mul");
  ops::silu_forward<S>(hx, ref);
  ops::silu_forward<S>(c, dx, out.v);
  check("silu");
  ops::sigmoid_gate_forward<S>(hx, hy, ref);
  ops::sigmoid_gate_forward<S>(c, dx, dy, out.v);
  check("sigmoid_gate");
  ops::swiglu_forward<S>(hx, hy, ref);
  ops::swiglu_forward<S>(c, dx, dy, out.v);
  check("swiglu");
  ops::relu2_forward<S>(hx, ref);
  ops::relu2_forward<S>(c, dx, out.v);
  check("relu2");
  ops::copy<S>(hx, ref);
  ops::copy<S>(c, dx, out.v);
  check("copy");
  ref = -emap(hx).array().exp();
  ops::neg_exp_forward<S>(c, dx, out.v);
  check("neg_exp");
  ref = emap(hx);
  ref.rowwise() += bias.row(0);
  ops::copy<S>(c, dx, out.v);
  ops::add_row_bias<S>(c, db.cv(), out.v);
  check("add_row_bias");
  // dt: softplus over both sides of torch's threshold (raw + bias up to 24), clamped.
  const Mat<S> raw = rnd<S>(R, C, 3, -6, 22);
  DMat<S> draw(raw, c);
  ops::dt_softplus_forward<S>(raw, bias, S(1e-3), S(5), ref);
  ops::dt_softplus_forward<S>(c, draw.cv(), db.cv(), S(1e-3), S(5), out.v);
  check("dt_softplus");
  ops::dt_softplus_forward<S>(raw, bias, S(0), std::numeric_limits<S>::infinity(), ref);
  ops::dt_softplus_forward<S>(c, draw.cv(), db.cv(), S(0), std::numeric_limits<S>::infinity(), out.v);
  check("dt_softplus, no upper limit");
  ref = emap(hx) * S(20);
  Mat<S> capped_in = ref;
  ops::softcap_forward<S>(View<S>(ref), S(15));
  DMat<S> dcap(capped_in, c);
  ops::softcap_forward<S>(c, dcap.v, S(15));
  CHECK(rel_err<S>(host<S>(dcap.cv(), c), ref) <= tol<S>());
  // Mismatched shapes are refused before any launch.
  CHECK_THROWS_AS(ops::add_forward<S>(c, dx, dw.cv().col_range(0, C - 1), S(1), out.v), Error);
}

TEST_CASE_TEMPLATE("norms match the CPU ops: RMSNorm, LayerNorm, gated RMSNorm per group and whole width", S, float,
                   double) {
  auto& c = ctx();
  for (const Index D : {Index(1), Index(48), Index(300), Index(1030)}) {
    CAPTURE(D);
    const Index R = 7;
    const Mat<S> x = rnd<S>(R, 2 * D, 4, -3, 3), w = rnd<S>(1, D, 5), b = rnd<S>(1, D, 6);
    DMat<S> dxw(x, c), dw(w, c), dbias(b, c), out(R, D), rstd(R, 1), mean(R, 1);
    const CView<S> hx = CView<S>(x).col_range(D, D);
    const auto dx = dxw.cv().col_range(D, D);
    Mat<S> ref(R, D), rref(R, 1), mref(R, 1);
    ops::rmsnorm_forward<S>(hx, w, S(1e-6), ref, rref.data());
    ops::rmsnorm_forward<S>(c, dx, dw.cv(), S(1e-6), out.v, rstd.v.data);
    CHECK(rel_err<S>(host<S>(out.cv(), c), ref) <= tol<S>());
    CHECK(rel_err<S>(host<S>(rstd.cv(), c), rref) <= tol<S>());
    ops::layernorm_forward<S>(hx, w, b, S(1e-5), ref, mref.data(), rref.data());
    ops::layernorm_forward<S>(c, dx, dw.cv(), dbias.cv(), S(1e-5), out.v, mean.v.data, rstd.v.data);
    CHECK(rel_err<S>(host<S>(out.cv(), c), ref) <= tol<S>());
    CHECK(rel_err<S>(host<S>(mean.cv(), c), mref) <= tol<S>());
    CHECK(rel_err<S>(host<S>(rstd.cv(), c), rref) <= tol<S>());
  }
  // Gated: W = 4 groups of 24, and the whole width as one group; z is a strided view.
  const Index R = 9, W = 96;
  const Mat<S> yz = rnd<S>(R, 2 * W, 7, -2, 2), w = rnd<S>(1, W, 8);
  DMat<S> dyz(yz, c), dw(w, c), out(R, W), rstd(R, 4);
  for (const Index group : {Index(24), W}) {
    CAPTURE(group);
    Mat<S> ref(R, W), rref(R, W / group);
    ops::gated_rmsnorm_forward<S>(CView<S>(yz).col_range(0, W), CView<S>(yz).col_range(W, W), w, group, S(1e-5),
                                  ref, rref.data());
    ops::gated_rmsnorm_forward<S>(c, dyz.cv().col_range(0, W), dyz.cv().col_range(W, W), dw.cv(), group, S(1e-5),
                                  out.v, rstd.v.data);
    CHECK(rel_err<S>(host<S>(out.cv(), c), ref) <= tol<S>());
    CHECK(rel_err<S>(host<S>(View<const S, Cuda>(rstd.v.data, R, W / group), c), rref) <= tol<S>());
  }
  CHECK_THROWS_AS(ops::gated_rmsnorm_forward<S>(c, dyz.cv().col_range(0, W), dyz.cv().col_range(W, W), dw.cv(), 25,
                                                S(1e-5), out.v, nullptr),
                  Error);
}

TEST_CASE_TEMPLATE("embedding, causal conv with history, RoPE and linear match the CPU ops", S, float, double) {
  auto& c = ctx();
  // embedding
  const Mat<S> table = rnd<S>(50, 24, 9);
  const std::vector<int> ids = {3, 0, 49, 3, 17, 17, 8};
  DMat<S> dt(table, c), emb(Index(ids.size()), 24);
  Mat<S> ref(Index(ids.size()), 24);
  ops::embedding_forward<S>(table, ids.data(), Index(ids.size()), S(1.5), ref);
  ops::embedding_forward<S>(c, dt.cv(), ids.data(), Index(ids.size()), S(1.5), emb.v);
  CHECK(rel_err<S>(host<S>(emb.cv(), c), ref) <= tol<S>());
  const std::vector<int> bad = {1, 50};
  CHECK_THROWS_WITH_AS(ops::embedding_forward<S>(c, dt.cv(), bad.data(), 2, S(1), emb.v.row_range(0, 2)),
                       doctest::Contains("token id 50 at row 1"), Error);

  // causal conv: T < K, T = 1 (decode), T > K; with and without history and bias; the
  // input a column range; history out aliasing history in.
  for (const Index T : {Index(1), Index(3), Index(29)}) {
    for (const bool with_hist : {false, true}) {
     for (const bool with_bias : {true, false}) {
      CAPTURE(T);
      CAPTURE(with_hist);
      CAPTURE(with_bias);
      const Index C = 40, K = 4;
      const Mat<S> uw = rnd<S>(T, 2 * C, 10), w = rnd<S>(C, K, 11), bias = rnd<S>(1, C, 12);
      Mat<S> hist = rnd<S>(C, K, 13), hist_cpu = hist;
      DMat<S> du(uw, c), dw(w, c), db(bias, c), dh(hist, c), y(T, C);
      Mat<S> yref(T, C);
      const CView<S> hu = CView<S>(uw).col_range(C, C);
      ops::causal_conv1d_forward<S>(hu, w, with_bias ? CView<S>(bias) : CView<S>(nullptr),
                                    with_hist ? CView<S>(hist_cpu) : CView<S>(nullptr), yref, View<S>(hist_cpu));
      ops::causal_conv1d_forward<S>(c, du.cv().col_range(C, C), dw.cv(),
                                    with_bias ? db.cv() : View<const S, Cuda>(db.buf.data(), 0, C),  // empty, not null
                                    with_hist ? dh.cv() : View<const S, Cuda>(nullptr), y.v, dh.v);
      CHECK(rel_err<S>(host<S>(y.cv(), c), yref) <= tol<S>());
      CHECK(rel_err<S>(host<S>(dh.cv(), c), hist_cpu) <= tol<S>());
     }
    }
  }

  // RoPE: full and partial rotation, positions far from 0.
  for (const int rot : {0, 8}) {
    CAPTURE(rot);
    Mat<S> x = rnd<S>(11, 3 * 16, 14);
    DMat<S> dx(x, c);
    ops::rope_forward<S>(View<S>(x), 3, 16, 1000, 10000.0, rot);
    ops::rope_forward<S>(c, dx.v, 3, 16, 1000, 10000.0, rot);
    CHECK(rel_err<S>(host<S>(dx.cv(), c), x) <= (std::is_same_v<S, float> ? 2e-4 : 1e-10));
  }

  // linear: GEMM shapes (many rows) and decode shapes (one row), x strided, with bias.
  for (const Index R : {Index(1), Index(3), Index(67)}) {
    CAPTURE(R);
    const Index in = 96, out = 50;
    const Mat<S> xw = rnd<S>(R, in + 5, 15), W = rnd<S>(out, in, 16), bias = rnd<S>(1, out, 17);
    DMat<S> dx(xw, c), dW(W, c), db(bias, c), y(R, out);
    Mat<S> yref(R, out);
    const CView<S> hx = CView<S>(xw).col_range(5, in);
    ops::linear_forward<S>(hx, W, bias, yref);
    ops::linear_forward<S>(c, dx.cv().col_range(5, in), dW.cv(), db.cv(), y.v);
    CHECK(rel_err<S>(host<S>(y.cv(), c), yref) <= tol<S>());
    if constexpr (std::is_same_v<S, float>) {  // bf16 inputs, float accumulation
      {
        GemmModeScope bf16(c, cuda::GemmMode::Bf16);
        ops::linear_forward<S>(c, dx.cv().col_range(5, in), dW.cv(), db.cv(), y.v);
      }
      const double e = rel_err<S>(host<S>(y.cv(), c), yref);
      CHECK(e <= 3e-2);  // 8-bit mantissas on inputs of |x| <= 1 over 96 products
      CHECK(e > 0);      // and the mode really rounds
    }
  }
}

namespace {
struct SsdCase {
  Index T;
  int H, P, N, G, Q;
  bool state_in, strided;
};
}  // namespace

TEST_CASE_TEMPLATE("the chunked SSD scan matches the CPU scan: any T, G > 1, initial and final state", S, float,
                   double) {
  auto& c = ctx();
  const SsdCase cases[] = {{1, 2, 4, 8, 1, 64, false, false},   {1, 2, 4, 8, 1, 64, true, true},
                           {100, 4, 8, 16, 2, 32, false, true}, {257, 4, 16, 32, 4, 64, true, false},
                           {64, 2, 8, 8, 1, 16, true, true},    {300, 8, 64, 128, 1, 256, true, true},
                           {33, 6, 8, 16, 3, 7, false, false}};
  for (const auto& k : cases) {
    CAPTURE(k.T);
    CAPTURE(k.Q);
    CAPTURE(k.G);
    const ops::SsdDims d{k.T, k.H, k.P, k.N, k.G};
    const Index HP = Index(k.H) * k.P, GN = Index(k.G) * k.N, PN = Index(k.P) * k.N;
    const Index pad = k.strided ? 3 : 0;  // x | B | C as column ranges of one row, as Mamba-2's conv output
    const Mat<S> xbc = rnd<S>(k.T, HP + 2 * GN + pad, 20, -1, 1);
    Mat<S> dt = rnd<S>(k.T, k.H, 21, 0.001, 0.2);
    Mat<S> A = rnd<S>(1, k.H, 22, -1.5, 0.5);
    A = -A.array().exp();
    const Mat<S> Dv = rnd<S>(1, k.H, 23), s0 = rnd<S>(k.H, PN, 24);
    Mat<S> y(k.T, HP), s1(k.H, PN);
    ops::SsdArgs<S> a;
    const Index ld = xbc.cols();
    a.x = xbc.data();
    a.B = xbc.data() + HP;
    a.C = xbc.data() + HP + GN;
    a.ldx = ld;
    a.ldbc = ld;
    a.dt = dt.data();
    a.A = A.data();
    a.D = Dv.data();
    a.state_in = k.state_in ? s0.data() : nullptr;
    a.y = y.data();
    a.state_out = s1.data();
    // Unstrided cases take x, B and C as buffers of their own (default strides) and no D.
    const bool separate = !k.strided && !k.state_in;
    const Mat<S> xs = xbc.leftCols(HP), bs = xbc.middleCols(HP, GN), cs = xbc.middleCols(HP + GN, GN);
    if (separate) {
      a.x = xs.data(), a.B = bs.data(), a.C = cs.data(), a.ldx = 0, a.ldbc = 0, a.D = nullptr;
    }
    ops::ssd_recurrent<S>(d, a);  // the reference: the plain recurrence

    DMat<S> dxbc(xbc, c), ddt(dt, c), dA(A, c), dD(Dv, c), ds0(s0, c), dy(k.T, HP), ds1(k.H, PN);
    DMat<S> dxs(xs, c), dbs(bs, c), dcs(cs, c);
    ops::SsdArgs<S> g = a;
    g.x = separate ? dxs.buf.data() : dxbc.buf.data();
    g.B = separate ? dbs.buf.data() : dxbc.buf.data() + HP;
    g.C = separate ? dcs.buf.data() : dxbc.buf.data() + HP + GN;
    g.dt = ddt.buf.data();
    g.A = dA.buf.data();
    g.D = separate ? nullptr : dD.buf.data();
    g.state_in = k.state_in ? ds0.buf.data() : nullptr;
    g.y = dy.buf.data();
    g.state_out = ds1.buf.data();
    ops::ssd_chunked<S>(c, d, k.Q, g);
    const double t = std::is_same_v<S, float> ? 2e-4 : 1e-10;
    CHECK(rel_err<S>(host<S>(dy.cv(), c), y) <= t);
    CHECK(rel_err<S>(host<S>(ds1.cv(), c), s1) <= t);
    // the recurrence kernel (decode and short calls) on the same inputs
    if (k.N <= 256) {
      DMat<S> dy2(k.T, HP), ds2(k.H, PN);
      ops::SsdArgs<S> r = g;
      r.y = dy2.buf.data();
      r.state_out = ds2.buf.data();
      ops::ssd_recurrent<S>(c, d, r);
      CHECK(rel_err<S>(host<S>(dy2.cv(), c), y) <= t);
      CHECK(rel_err<S>(host<S>(ds2.cv(), c), s1) <= t);
    }
    // the final state may overwrite the initial one
    if (k.state_in) {
      g.state_out = ds0.buf.data();
      ops::ssd_chunked<S>(c, d, k.Q, g);
      CHECK(rel_err<S>(host<S>(ds0.cv(), c), s1) <= t);
    }
  }
  const ops::SsdDims bad{10, 4, 8, 8, 3};
  ops::SsdArgs<S> none;
  CHECK_THROWS_AS(ops::ssd_chunked<S>(c, bad, 64, none), Error);
}

namespace {
struct AttnCase {
  Index Tq, Tk;
  int H, G, P, window;
  Index qpos0, kpos0;
};
}  // namespace

TEST_CASE_TEMPLATE("flash attention matches the CPU attention: GQA, windows, offsets, rows with no key", S, float,
                   double) {
  auto& c = ctx();
  const AttnCase cases[] = {
      {1, 1, 1, 1, 8, 0, 0, 0},        {37, 37, 4, 2, 16, 0, 0, 0},   {100, 100, 4, 1, 64, 17, 0, 0},
      {5, 50, 2, 2, 128, 0, 45, 0},    {1, 300, 4, 2, 64, 0, 299, 0}, {70, 70, 2, 2, 256, 0, 0, 0},
      {20, 20, 1, 1, 40, 0, 0, 0},     {12, 12, 2, 1, 32, 0, 0, 5},   {200, 260, 6, 3, 96, 64, 60, 0},
      {20, 20, 2, 2, 16, 0, 0, 18},    {3, 0, 2, 1, 8, 0, 0, 0}};  // a block that sees nothing; no keys at all
  for (const auto& k : cases) {
    CAPTURE(k.Tq);
    CAPTURE(k.Tk);
    CAPTURE(k.P);
    CAPTURE(k.window);
    const ops::AttnDims d{k.Tq, k.Tk, k.H, k.G, k.P};
    const Mat<S> q = rnd<S>(k.Tq, Index(k.H) * k.P, 30, -2, 2), kk = rnd<S>(k.Tk, Index(k.G) * k.P, 31, -2, 2),
                 v = rnd<S>(k.Tk, Index(k.G) * k.P, 32);
    const S scale = S(1 / std::sqrt(double(k.P)));
    Mat<S> o(k.Tq, Index(k.H) * k.P), lse(k.Tq, k.H);
    ops::attention_forward<S>(q.data(), kk.data(), v.data(), o.data(), d, scale, k.qpos0, k.kpos0, k.window,
                              lse.data());
    DMat<S> dq(q, c), dk(kk, c), dv(v, c), dout(k.Tq, Index(k.H) * k.P), dlse(k.Tq, k.H);
    ops::attention_forward<S>(c, dq.buf.data(), dk.buf.data(), dv.buf.data(), dout.v.data, d, scale, k.qpos0,
                              k.kpos0, k.window, dlse.v.data);
    CHECK(rel_err<S>(host<S>(dout.cv(), c), o) <= tol<S>() * 10);
    // lse: -inf exactly where the CPU has it, close elsewhere
    Mat<S> gl = host<S>(dlse.cv(), c);
    bool same_inf = true;
    for (Index i = 0; i < lse.size(); ++i) {
      const bool ci = std::isinf(lse.data()[i]), gi = std::isinf(gl.data()[i]);
      same_inf = same_inf && ci == gi;
      if (ci || gi) lse.data()[i] = gl.data()[i] = 0;
    }
    CHECK(same_inf);
    CHECK(rel_err<S>(gl, lse) <= tol<S>() * 10);
  }
  const ops::AttnDims bad{4, 4, 3, 2, 16};
  CHECK_THROWS_AS(ops::attention_forward<S>(c, nullptr, nullptr, nullptr, nullptr, bad, S(1), 0, 0, 0), Error);
}

namespace {
struct DecodeCase {
  Index B;
  int H, G, P, window;
  Index len;  // cache length of sequence 0; sequence b holds len - 7 b (at least 1)
  bool bf16;
  Index len1 = -1;      // sequence 1's length instead (a short one: slices with no key)
  bool blind1 = false;  // sequence 1's query sits before its first key: nothing visible
};
}  // namespace

TEST_CASE_TEMPLATE("decode attention over the KV cache matches the CPU op: batches, windows, split-K, bf16", S,
                   float, double) {
  auto& c = ctx();
  const DecodeCase cases[] = {{1, 1, 1, 8, 0, 1, false},     {1, 4, 2, 64, 0, 37, false},
                              {3, 4, 1, 64, 0, 700, false},  {2, 8, 2, 128, 33, 600, false},
                              {1, 2, 2, 256, 0, 5000, false}, {4, 6, 3, 40, 0, 300, true},
                              {1, 8, 8, 64, 100, 9000, true},
                              {2, 4, 2, 64, 0, 6000, false, 10, false},
                              {3, 2, 1, 32, 0, 400, true, -1, true}};
  for (const auto& k : cases) {
    CAPTURE(k.B);
    CAPTURE(k.len);
    CAPTURE(k.bf16);
    const ops::DecodeDims d{k.B, k.H, k.G, k.P};
    const Index W = Index(k.G) * k.P;
    const Mat<S> q = rnd<S>(k.B, Index(k.H) * k.P, 40, -2, 2);
    std::vector<Mat<S>> K, V;
    std::vector<std::vector<std::uint16_t>> Kh, Vh;
    std::vector<std::unique_ptr<DMat<S>>> dK, dV;
    std::vector<std::unique_ptr<Buffer<std::uint16_t, Cuda>>> dKh, dVh;
    std::vector<ops::KvSpan<S>> hs(std::size_t(k.B)), ds(std::size_t(k.B));
    std::vector<Index> qpos(std::size_t(k.B));
    for (auto* v : {&K, &V}) v->reserve(std::size_t(k.B));  // spans point into them
    for (auto* v : {&Kh, &Vh}) v->reserve(std::size_t(k.B));
    for (Index b = 0; b < k.B; ++b) {
      const Index len = b == 1 && k.len1 > 0 ? k.len1 : std::max<Index>(1, k.len - 7 * b), kpos0 = 3 * b;
      qpos[b] = kpos0 + len - 1 - (b % 2);  // the newest key, or one that is not yet visible
      if (b == 1 && k.blind1) qpos[b] = kpos0 - 1;
      K.push_back(rnd<S>(len, W, 41 + std::uint32_t(b), -2, 2));
      V.push_back(rnd<S>(len, W, 51 + std::uint32_t(b)));
      if (k.bf16) {
        for (auto* m : {&K.back(), &V.back()}) {
          std::vector<std::uint16_t> h(std::size_t(m->size()));
          for (Index i = 0; i < m->size(); ++i) h[i] = f32_to_bf16(float(m->data()[i]));
          (m == &K.back() ? Kh : Vh).push_back(std::move(h));
        }
        for (auto* hv : {&Kh.back(), &Vh.back()}) {
          auto buf = std::make_unique<Buffer<std::uint16_t, Cuda>>(Index(hv->size()));
          cuda::upload<std::uint16_t>(CView<std::uint16_t>(hv->data(), len, W), buf->view(len, W), c.stream());
          (hv == &Kh.back() ? dKh : dVh).push_back(std::move(buf));
        }
        hs[b].kh = Kh.back().data();
        hs[b].vh = Vh.back().data();
        ds[b].kh = dKh.back()->data();
        ds[b].vh = dVh.back()->data();
      } else {
        dK.push_back(std::make_unique<DMat<S>>(K.back(), c));
        dV.push_back(std::make_unique<DMat<S>>(V.back(), c));
        hs[b].k = K.back().data();
        hs[b].v = V.back().data();
        ds[b].k = dK.back()->buf.data();
        ds[b].v = dV.back()->buf.data();
      }
      hs[b].len = ds[b].len = len;
      hs[b].kpos0 = ds[b].kpos0 = kpos0;
    }
    const S scale = S(1 / std::sqrt(double(k.P)));
    Mat<S> o(k.B, Index(k.H) * k.P);
    ops::attention_decode<S>(d, q.data(), hs.data(), qpos.data(), o.data(), scale, k.window);
    DMat<S> dq(q, c), dout(k.B, Index(k.H) * k.P);
    ops::attention_decode<S>(c, d, dq.buf.data(), ds.data(), qpos.data(), dout.v.data, scale, k.window);
    CHECK(rel_err<S>(host<S>(dout.cv(), c), o) <= tol<S>() * 10);
  }
}

TEST_CASE_TEMPLATE("decode and chunk attention over head-major KV caches (KvCache's strides) match the CPU ops", S, float,
                   double) {
  auto& c = ctx();
  for (bool bf16 : {false, true}) {
    CAPTURE(bf16);
    const int H = 8, G = 2, P = 64;
    const Index len = 1500, W = Index(G) * P;
    const ops::DecodeDims d{1, H, G, P};
    KvCache<S> kc(bf16 ? DType::BF16 : DType::F32, G, P);
    kc.reserve(len + 9);  // capacity above the length: the head stride is not len * P
    kc.append(rnd<S>(len, W, 61, -2, 2), rnd<S>(len, W, 62));
    kc.start_pos = 4;
    const ops::KvSpan<S> hsp = kc.span();
    ops::KvSpan<S> dsp = hsp;
    const Index n = kc.k.size();
    Buffer<S, Cuda> dk(bf16 ? 1 : n), dv(bf16 ? 1 : n);
    Buffer<std::uint16_t, Cuda> dkh(bf16 ? n : 1), dvh(bf16 ? n : 1);
    if (bf16) {
      cuda::upload<std::uint16_t>(CView<std::uint16_t>(hsp.kh, 1, n), dkh.view(1, n), c.stream());
      cuda::upload<std::uint16_t>(CView<std::uint16_t>(hsp.vh, 1, n), dvh.view(1, n), c.stream());
      dsp.kh = dkh.data(), dsp.vh = dvh.data();
    } else {
      cuda::upload<S>(CView<S>(hsp.k, 1, n), dk.view(1, n), c.stream());
      cuda::upload<S>(CView<S>(hsp.v, 1, n), dv.view(1, n), c.stream());
      dsp.k = dk.data(), dsp.v = dv.data();
    }
    const Index qpos = kc.next_pos() - 1;
    const Mat<S> q = rnd<S>(1, Index(H) * P, 63, -2, 2);
    const S scale = S(1 / std::sqrt(double(P)));
    Mat<S> o(1, Index(H) * P);
    ops::attention_decode<S>(d, q.data(), &hsp, &qpos, o.data(), scale, 0);
    DMat<S> dq(q, c), dout(1, Index(H) * P);
    ops::attention_decode<S>(c, d, dq.buf.data(), &dsp, &qpos, dout.v.data, scale, 0);
    CHECK(rel_err<S>(host<S>(dout.cv(), c), o) <= tol<S>() * 10);
    if (bf16) continue;
    // A chunk of T = 5 queries over the same cache: attention_forward on the cache's strides.
    const Index T = 5;
    const ops::AttnDims ad{T, len, H, G, P, hsp.ld, hsp.hs};
    const Mat<S> qc = rnd<S>(T, Index(H) * P, 64, -2, 2);
    Mat<S> oc(T, Index(H) * P);
    ops::attention_forward<S>(qc.data(), hsp.k, hsp.v, oc.data(), ad, scale, len - T, 0, 0);
    DMat<S> dqc(qc, c), doc(T, Index(H) * P);
    ops::attention_forward<S>(c, dqc.buf.data(), dsp.k, dsp.v, doc.v.data, ad, scale, len - T, 0, 0);
    CHECK(rel_err<S>(host<S>(doc.cv(), c), oc) <= tol<S>() * 10);
  }
}

// ---- the op-case table (autograd/op_cases.hpp) drives the kernel-vs-CPU checks too ---------

namespace {
// Ops of the table whose kernels come with the backward ones (training only).
bool training_only(OpId op) {
  return op == OpId::CrossEntropy || op == OpId::HeadLoss || op == OpId::KdLoss || op == OpId::Mse ||
         op == OpId::Checkpoint;
}
// The ops with a CUDA forward in this build (cuda_forward below runs each).
const std::vector<OpId>& cuda_forward_ops() {
  static const std::vector<OpId> ops = {
      OpId::Linear, OpId::Embedding, OpId::RmsNorm, OpId::LayerNorm, OpId::GatedRmsNorm, OpId::CausalConv1d,
      OpId::Ssd, OpId::Rope, OpId::Attention, OpId::Swiglu, OpId::Relu2, OpId::DtSoftplus, OpId::Silu,
      OpId::SigmoidGate, OpId::Add, OpId::Scale, OpId::Mul, OpId::ScaleRows, OpId::GatherRows, OpId::Softcap};
  return ops;
}
// Rows of the table with neither a CUDA forward nor the training-only mark.
std::vector<std::string> missing_cuda(const std::vector<OpId>& have) {
  std::vector<std::string> out;
  for (const OpRow& r : op_rows)
    if (!training_only(r.op) && std::find(have.begin(), have.end(), r.op) == have.end())
      out.emplace_back(op_name(r.op));
  return out;
}

// The case's op on the device, on the case's own inputs (the whole input store uploaded
// once, views at the same offsets), as OpCaseRun::forward runs it on the CPU.
template <class S>
Mat<S> cuda_forward(OpCaseRun<S>& run, const cuda::Context& c) {
  const OpDims& d = run.op_case().d;
  const Index R = d.B * d.T;
  const auto& in = run.inputs().table.entries();
  const ParamStore<S>& store = run.inputs().store;
  Buffer<S, Cuda> dev(std::max<Index>(store.total(), 1));
  cuda::upload<S>(CView<S>(store.data(), 1, store.total()), View<S, Cuda>(dev.data(), 1, store.total()), c.stream());
  auto par = [&](std::size_t i) { return View<S, Cuda>(dev.data() + in[i].offset, in[i].rows, in[i].cols); };
  auto act = [&](std::size_t i) { return d.strided ? par(i).col_range(1, in[i].cols - 2) : par(i); };
  auto out = [&](Index r, Index cols) { return DMat<S>(r, cols); };
  std::optional<DMat<S>> y;
  switch (run.op_case().op) {
    case OpId::Linear: y.emplace(out(R, d.O)); ops::linear_forward<S>(c, act(0), par(1), par(2), y->v); break;
    case OpId::Embedding: {
      std::vector<int> ids(static_cast<std::size_t>(R));
      for (Index r = 0; r < R; ++r) ids[r] = int((r * 3 + 1) % d.O);
      y.emplace(out(R, d.C));
      ops::embedding_forward<S>(c, par(0), ids.data(), R, S(1.5), y->v);
      break;
    }
    case OpId::RmsNorm: y.emplace(out(R, d.C)); ops::rmsnorm_forward<S>(c, act(0), par(1), S(1e-5), y->v); break;
    case OpId::LayerNorm:
      y.emplace(out(R, d.C));
      ops::layernorm_forward<S>(c, act(0), par(1), par(2), S(1e-5), y->v);
      break;
    case OpId::GatedRmsNorm:
      y.emplace(out(R, d.C));
      ops::gated_rmsnorm_forward<S>(c, act(0), act(1), par(2), d.C / d.G, S(1e-5), y->v);
      break;
    case OpId::CausalConv1d:
      y.emplace(out(R, d.C));
      for (Index b = 0; b < d.B; ++b)
        ops::causal_conv1d_forward<S>(c, act(0).row_range(b * d.T, d.T), par(1), par(2), nullptr,
                                      y->v.row_range(b * d.T, d.T), nullptr);
      break;
    case OpId::Ssd: {
      const Index HP = Index(d.H) * d.P, GN = Index(d.G) * d.N;
      const ParamInfo& al = in[2];
      Mat<S> A(1, d.H);
      for (int h = 0; h < d.H; ++h) A(0, h) = -std::exp(store.data()[al.offset + h]);
      DMat<S> dA(A, c);
      y.emplace(out(R, HP));
      const auto xbc = act(0);
      for (Index b = 0; b < d.B; ++b) {
        const Index r0 = b * d.T;
        ops::SsdArgs<S> a{xbc.data + r0 * xbc.ld, par(1).data + r0 * d.H, dA.buf.data(),
                          xbc.data + r0 * xbc.ld + HP, xbc.data + r0 * xbc.ld + HP + GN, par(3).data, nullptr,
                          y->v.data + r0 * HP, nullptr, xbc.ld, xbc.ld};
        const ops::SsdDims sd{d.T, d.H, d.P, d.N, d.G};
        if (d.path == ScanPath::Recurrent) ops::ssd_recurrent<S>(c, sd, a);
        else ops::ssd_chunked<S>(c, sd, d.chunk, a);
      }
      c.sync();  // dA goes out of scope
      break;
    }
    case OpId::Rope:
      y.emplace(out(R, Index(d.H) * d.P));
      ops::copy<S>(c, act(0), y->v);
      for (Index b = 0; b < d.B; ++b)
        ops::rope_forward<S>(c, y->v.row_range(b * d.T, d.T), d.H, d.P, 3 + 5 * b, 100.0, d.rope_dims);
      break;
    case OpId::Attention: {
      const Index ldq = Index(d.H) * d.P, ldk = Index(d.G) * d.P;
      y.emplace(out(R, ldq));
      for (Index b = 0; b < d.B; ++b)
        ops::attention_forward<S>(c, par(0).data + b * d.T * ldq, par(1).data + b * d.T * ldk,
                                  par(2).data + b * d.T * ldk, y->v.data + b * d.T * ldq,
                                  ops::AttnDims{d.T, d.T, d.H, d.G, d.P}, S(1) / std::sqrt(S(d.P)), 0, 0,
                                  d.window);
      break;
    }
    case OpId::Swiglu: y.emplace(out(R, d.C)); ops::swiglu_forward<S>(c, act(0), act(1), y->v); break;
    case OpId::Relu2: y.emplace(out(R, d.C)); ops::relu2_forward<S>(c, act(0), y->v); break;
    case OpId::DtSoftplus:
      y.emplace(out(R, d.H));
      ops::dt_softplus_forward<S>(c, act(0), par(1), S(0), std::numeric_limits<S>::infinity(), y->v);
      break;
    case OpId::Silu: y.emplace(out(R, d.C)); ops::silu_forward<S>(c, act(0), y->v); break;
    case OpId::SigmoidGate: y.emplace(out(R, d.C)); ops::sigmoid_gate_forward<S>(c, act(0), act(1), y->v); break;
    case OpId::Add: y.emplace(out(R, d.C)); ops::add_forward<S>(c, act(0), act(1), S(-0.7), y->v); break;
    case OpId::Scale: y.emplace(out(R, d.C)); ops::scale_forward<S>(c, act(0), S(1.3), y->v); break;
    case OpId::Mul: y.emplace(out(R, d.C)); ops::mul_forward<S>(c, act(0), act(1), y->v); break;
    case OpId::ScaleRows: {
      Mat<S> sr(1, R);
      for (Index r = 0; r < R; ++r) sr(0, r) = r % 2 ? S(0) : S(2);
      DMat<S> ds(sr, c);
      y.emplace(out(R, d.C));
      ops::scale_rows_forward<S>(c, act(0), ds.buf.data(), y->v);
      c.sync();
      break;
    }
    case OpId::GatherRows: {
      Index idx[3];
      for (Index i = 0; i < 3; ++i) idx[i] = (R - 1 - i * 2 + 2 * R) % R;
      y.emplace(out(3, d.C));
      ops::gather_rows_forward<S>(c, act(0), idx, 3, y->v);
      break;
    }
    case OpId::Softcap:
      y.emplace(out(R, d.C));
      ops::copy<S>(c, act(0), y->v);
      ops::softcap_forward<S>(c, y->v, S(1.5));
      break;
    default: FAIL("no CUDA runner for ", op_name(run.op_case().op)); return {};
  }
  return host<S>(y->cv(), c);
}
}  // namespace

TEST_CASE("CUDA coverage: every op of the op-case table has a CUDA forward or is training-only") {
  CHECK(missing_cuda(cuda_forward_ops()).empty());
  // The check can fail: without the RMSNorm twin it names rmsnorm.
  std::vector<OpId> fewer = cuda_forward_ops();
  fewer.erase(std::find(fewer.begin(), fewer.end(), OpId::RmsNorm));
  const auto miss = missing_cuda(fewer);
  REQUIRE(miss.size() == 1);
  CHECK(miss[0] == op_name(OpId::RmsNorm));
}

TEST_CASE_TEMPLATE("every op-case table case with a CUDA forward matches the CPU op", S, float, double) {
  auto& c = ctx();
  int ran = 0;
  for (const OpCase& oc : op_cases()) {
    const auto& have = cuda_forward_ops();
    if (std::find(have.begin(), have.end(), oc.op) == have.end()) continue;
    CAPTURE(op_name(oc.op));
    CAPTURE(oc.label);
    OpCaseRun<S> run(oc);
    Tape<S> t(false);
    const Mat<S> ref = run.forward(t).val();
    const Mat<S> got = cuda_forward<S>(run, c);
    CHECK(rel_err<S>(got, ref) <= tol<S>() * 10);
    ++ran;
  }
  CHECK(ran > 50);
}

TEST_CASE_TEMPLATE("greedy decoding on the device picks what the CPU sampler picks", S, float, double) {
  auto& c = ctx();
  const Index R = 6, V = 5003;
  Mat<S> l = rnd<S>(R, V, 60, -5, 5);
  l(1, 17) = l(1, 4000) = S(9);  // a tie: the lower id wins
  for (Index i = 0; i < V; ++i) l(2, i) = i % 3 ? -std::numeric_limits<S>::infinity() : S(-1);  // -inf skipped
  l(2, 3000) = S(0.5);
  l(3, 0) = -std::numeric_limits<S>::infinity();
  std::vector<std::uint8_t> mask(std::size_t(V - 2), 1);  // the last two ids are not allowed
  l(4, V - 1) = S(50);
  mask[7] = 0;
  l(5, 7) = S(40);
  DMat<S> dl(l, c);
  Buffer<std::uint8_t, Cuda> dmask(Index(mask.size()));
  cuda::upload<std::uint8_t>(CView<std::uint8_t>(mask.data(), 1, Index(mask.size())), dmask.view(1, Index(mask.size())),
                             c.stream());
  std::vector<int> got(static_cast<std::size_t>(R)), got_mask(static_cast<std::size_t>(R));
  ops::greedy_rows<S>(c, dl.cv(), nullptr, 0, got.data());
  ops::greedy_rows<S>(c, dl.cv(), dmask.data(), Index(mask.size()), got_mask.data());
  Sampler cpu(SamplingParams{.temperature = 0});
  Sampler cpu_mask(SamplingParams{.temperature = 0}, mask);
  for (Index r = 0; r < R; ++r) {
    CAPTURE(r);
    CHECK(got[r] == cpu.sample(l.row(r)));
    CHECK(got_mask[r] == cpu_mask.sample(l.row(r)));
  }
  CHECK(got[1] == 17);
  CHECK(got_mask[4] != V - 1);
  CHECK(got_mask[5] != 7);
  l(3, 99) = std::numeric_limits<S>::quiet_NaN();
  DMat<S> bad(l, c);
  CHECK_THROWS_WITH_AS(ops::greedy_rows<S>(c, bad.cv(), nullptr, 0, got.data()),
                       doctest::Contains("token id 99) of row 3 is NaN"), Error);
}

TEST_CASE_TEMPLATE("sampling on the device draws what the CPU sampler draws from the same stream", S, float,
                   double) {
  auto& c = ctx();
  const Index R = 4, V = 3001;
  Mat<S> l = rnd<S>(R, V, 70, -4, 4);
  for (Index i = 0; i < V; i += 7) l(2, i) = -std::numeric_limits<S>::infinity();
  l(3, 11) = l(3, 22) = S(6);  // a tie at the top (both allowed by the mask): sorted by id
  std::vector<std::uint8_t> mask(std::size_t(V - 1), 1);
  for (Index i = 0; i < V - 1; i += 5) mask[std::size_t(i)] = 0;
  DMat<S> dl(l, c);
  Buffer<std::uint8_t, Cuda> dmask(Index(mask.size()));
  cuda::upload<std::uint8_t>(CView<std::uint8_t>(mask.data(), 1, Index(mask.size())), dmask.view(1, Index(mask.size())),
                             c.stream());
  struct P {
    float t;
    int k;
    float p;
  };
  // {1, 2600, 1}: cuts the rows with 3001 candidates, not row 2 (2572): a per-row decision.
  const P params[] = {{0.8f, 0, 1}, {1, 5, 1},    {0.7f, 0, 0.9f}, {1.3f, 50, 0.95f},
                      {1, 4000, 1}, {2, 1, 1},    {1, 2600, 1},    {1, 0, 0.5f}};
  for (const P& pp : params)
    for (const bool masked : {false, true}) {
      CAPTURE(pp.t);
      CAPTURE(pp.k);
      CAPTURE(pp.p);
      CAPTURE(masked);
      const SamplingParams sp{.temperature = pp.t, .top_k = pp.k, .top_p = pp.p, .seed = 11};
      Sampler cpu(sp, masked ? mask : std::vector<std::uint8_t>{});
      Rng rng(11);
      int same = 0, draws = 0;
      for (int step = 0; step < 8; ++step) {
        std::vector<double> u(static_cast<std::size_t>(R));
        std::vector<int> want(static_cast<std::size_t>(R)), got(static_cast<std::size_t>(R));
        for (Index r = 0; r < R; ++r) {
          want[r] = cpu.sample(l.row(r));  // one draw per call, rows in order
          u[r] = rng.uniform();
        }
        ops::sample_rows<S>(c, dl.cv(), pp.t, pp.k, pp.p, masked ? dmask.data() : nullptr,
                            masked ? Index(mask.size()) : 0, u.data(), got.data());
        for (Index r = 0; r < R; ++r) same += got[r] == want[r], ++draws;
      }
      CHECK(same == draws);
    }
  std::vector<int> ids(static_cast<std::size_t>(R));
  const std::vector<double> bad_u(static_cast<std::size_t>(R), 1.0), ok_u(static_cast<std::size_t>(R), 0.5);
  CHECK_THROWS_WITH_AS(ops::sample_rows<S>(c, dl.cv(), 1, 0, 1, nullptr, 0, bad_u.data(), ids.data()),
                       doctest::Contains("uniform draw of row 0"), Error);
  CHECK_THROWS_WITH_AS(ops::sample_rows<S>(c, dl.cv(), 1, 0, 0, nullptr, 0, ok_u.data(), ids.data()),
                       doctest::Contains("top_p must be in (0, 1]"), Error);
  Mat<S> nan = l;
  nan(2, 1234) = std::numeric_limits<S>::infinity();
  DMat<S> dnan(nan, c);
  CHECK_THROWS_WITH_AS(ops::sample_rows<S>(c, dnan.cv(), 1, 5, 1, nullptr, 0, ok_u.data(), ids.data()),
                       doctest::Contains("token id 1234) of row 2 is NaN or +inf"), Error);
  Mat<S> none = l;
  none.row(1).setConstant(-std::numeric_limits<S>::infinity());
  DMat<S> dnone(none, c);
  CHECK_THROWS_WITH_AS(ops::sample_rows<S>(c, dnone.cv(), 1, 0, 1, nullptr, 0, ok_u.data(), ids.data()),
                       doctest::Contains("nothing can be sampled in row 1"), Error);
}

TEST_CASE("CUDA errors name the call: an impossible allocation") {
  auto huge = [] { Buffer<float, Cuda> b(Index(1) << 50); };
  CHECK_THROWS_WITH_AS(huge(), doctest::Contains("cudaMalloc"), Error);
}

int main(int argc, char** argv) {
  doctest::Context run;
  run.applyCommandLine(argc, argv);
  if (cuda::device_count() == 0) {
    // The coverage check needs no device; the kernels do.
    run.addFilter("test-case", "CUDA coverage*");
    const int rc = run.run();
    if (rc != 0 || run.shouldExit()) return rc;
    std::printf("no CUDA device visible: the kernel tests are skipped\n");
    return 77;
  }
  return run.run();
}
