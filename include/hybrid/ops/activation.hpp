// Activations shared by the layers: scalar SiLU, softplus (PyTorch's threshold at 20),
// sigmoid, ReLU² and their derivatives; row-wise SwiGLU, ReLU² and the Mamba-2 dt map as
// forward/backward pairs. Backward accumulates (+=) into every gradient it is given;
// an empty view skips one. Every buffer is a view (possibly strided), shaped as documented.
#pragma once
#include <algorithm>
#include <cmath>

#include "../core/device.hpp"
#include "../core/parallel.hpp"
#include "../core/tensor.hpp"

namespace hybrid::ops {

template <class S>
HYBRID_HOST_DEVICE inline S sigmoid(S v) {
  return S(1) / (S(1) + std::exp(-v));
}
template <class S>
HYBRID_HOST_DEVICE inline S silu(S v) {
  return v * sigmoid(v);
}
// softplus(v) = log(1 + e^v), and v itself for v > 20 (as torch.nn.functional.softplus).
template <class S>
HYBRID_HOST_DEVICE inline S softplus(S v) {
  return v > S(20) ? v : std::log1p(std::exp(v));
}
template <class S>
HYBRID_HOST_DEVICE inline S relu2(S v) {
  return v > S(0) ? v * v : S(0);
}

// Derivatives, each the exact derivative of the function above (thresholds included).
template <class S>
HYBRID_HOST_DEVICE inline S silu_grad(S v) {
  const S s = sigmoid(v);
  return s * (S(1) + v * (S(1) - s));
}
template <class S>
HYBRID_HOST_DEVICE inline S softplus_grad(S v) {
  return v > S(20) ? S(1) : sigmoid(v);
}
template <class S>
HYBRID_HOST_DEVICE inline S relu2_grad(S v) {
  return v > S(0) ? S(2) * v : S(0);
}

// The same functions over Eigen array expressions, vectorised (Eigen's packet exp); they
// agree with the scalar ones to rounding. Used by the row-wise ops below and the norms.
template <class A>
auto sigmoid_array(const A& x) {
  using S = typename A::Scalar;
  return S(1) / (S(1) + (-x).exp());
}
template <class A>
auto silu_array(const A& x) {
  return x * sigmoid_array(x);
}
// silu'(x) from x and s = sigmoid(x), for callers that already hold s.
template <class A, class B>
auto silu_grad_given_sigmoid(const A& x, const B& s) {
  using S = typename A::Scalar;
  return s * (S(1) + x * (S(1) - s));
}
template <class A>
auto silu_grad_array(const A& x) {
  const auto s = sigmoid_array(x).eval();
  return silu_grad_given_sigmoid(x, s).eval();
}

// Calls f(r, c0, n, s) for every row r of a (R, C) view in column chunks of at most 256,
// with s = sigmoid of those n inputs in a stack array: backward passes that need sigmoid
// twice compute it once without a heap temporary.
template <class S, class F>
void with_sigmoid_chunks(CView<S> x, Index r0, Index r1, F&& f) {
  constexpr int kChunk = 256;
  Eigen::Array<S, Eigen::Dynamic, 1, 0, kChunk, 1> sg;
  for (Index r = r0; r < r1; ++r)
    for (Index c0 = 0; c0 < x.cols; c0 += kChunk) {
      const Index n = std::min<Index>(kChunk, x.cols - c0);
      sg.resize(n);
      sg = sigmoid_array(Eigen::Map<const Eigen::Array<S, Eigen::Dynamic, 1>>(x.row_ptr(r) + c0, n));
      f(r, c0, n, sg);
    }
}

// a, u, h: (R, F). h = silu(a) * u (the SwiGLU gate; a = gate branch, u = up branch).
// Row-wise ops here split their rows across threads when large (par::for_rows).
template <class S>
void swiglu_forward(CView<S> av, CView<S> uv, View<S> hv) {
  const auto a = emap(av);
  const auto u = emap(uv);
  auto h = emap(hv);
  par::for_rows(av.rows, av.cols, [&](Index r0, Index r1) {
    const Index n = r1 - r0;
    h.middleRows(r0, n).array() = silu_array(a.middleRows(r0, n).array()) * u.middleRows(r0, n).array();
  });
}

// dh: (R, F). da (R, F) += dh * u * silu'(a); du (R, F) += dh * silu(a).
template <class S>
void swiglu_backward(CView<S> av, CView<S> uv, CView<S> dhv, View<S> da, View<S> du) {
  using A1 = Eigen::Map<const Eigen::Array<S, Eigen::Dynamic, 1>>;
  using M1 = Eigen::Map<Eigen::Array<S, Eigen::Dynamic, 1>>;
  par::for_rows(av.rows, av.cols, [&](Index r0, Index r1) {
    with_sigmoid_chunks<S>(av, r0, r1, [&](Index r, Index c0, Index n, const auto& sg) {
      const A1 A(av.row_ptr(r) + c0, n), D(dhv.row_ptr(r) + c0, n);
      if (da) M1(da.row_ptr(r) + c0, n) += D * A1(uv.row_ptr(r) + c0, n) * silu_grad_given_sigmoid(A, sg);
      if (du) M1(du.row_ptr(r) + c0, n) += D * A * sg;
    });
  });
}

// x, y: (R, F), y may alias x. y = relu(x)^2.
template <class S>
void relu2_forward(CView<S> x, View<S> y) {
  emap(y) = emap(x).unaryExpr([](S v) { return relu2(v); });
}

// dy: (R, F). dx (R, F) += dy * 2 relu(x).
template <class S>
void relu2_backward(CView<S> x, CView<S> dy, View<S> dx) {
  if (dx) emap(dx).array() += emap(dy).array() * emap(x).unaryExpr([](S v) { return relu2_grad(v); }).array();
}

// Mamba-2 step size. raw: (R, H) from the input projection; bias: (1, H); dt: (R, H).
// dt = clamp(softplus(raw + bias), lo, hi); hi may be +infinity (upstream's default limit).
template <class S>
void dt_softplus_forward(CView<S> raw, CView<S> bias, S lo, S hi, View<S> dt) {
  for (Index r = 0; r < raw.rows; ++r)
    for (Index h = 0; h < raw.cols; ++h) dt(r, h) = std::clamp(softplus(raw(r, h) + bias(0, h)), lo, hi);
}

// ddt: (R, H). draw (R, H) += ddt * softplus'(raw + bias); dbias (1, H) += its column sums.
// Where the clamp is active the gradient is zero; on the limit itself it passes (as
// torch.clamp's backward, so the two agree when dt lands exactly on a limit).
template <class S>
void dt_softplus_backward(CView<S> raw, CView<S> bias, S lo, S hi, CView<S> ddt, View<S> draw,
                          View<S> dbias) {
  for (Index r = 0; r < raw.rows; ++r)
    for (Index h = 0; h < raw.cols; ++h) {
      const S v = raw(r, h) + bias(0, h), sp = softplus(v);
      const S g = (sp >= lo && sp <= hi) ? ddt(r, h) * softplus_grad(v) : S(0);
      if (draw) draw(r, h) += g;
      if (dbias) dbias(0, h) += g;
    }
}

}  // namespace hybrid::ops
