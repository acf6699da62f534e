// CUDA twins of ops/elementwise.hpp, the row-wise activations of ops/activation.hpp and the
// soft-cap of ops/loss.hpp: one grid-stride kernel over the (R, C) elements of strided
// views, applying a functor f(r, c). nvcc only.
#pragma once
#include "common.cuh"

namespace hybrid::kernels {

template <class F>
__global__ void map2d(F f, Index R, Index C) {
  const Index n = R * C;
  for (Index i = Index(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += Index(gridDim.x) * blockDim.x)
    f(i / C, i % C);
}

template <class F>
void launch_map(const cuda::Context& ctx, const char* name, Index R, Index C, F f) {
  if (R <= 0 || C <= 0) return;
  map2d<<<grid_for(R * C), kThreads, 0, ctx.raw_stream()>>>(f, R, C);
  HYBRID_CUDA_LAUNCHED("map2d", name, " (", R, ", ", C, ")");
}

inline void check_shape(const char* op, Index r0, Index c0, Index r1, Index c1) {
  HYBRID_CHECK(r0 == r1 && c0 == c1, op, ": shapes (", r0, ", ", c0, ") and (", r1, ", ", c1,
               ") differ; expected equal shapes");
}

template <class S>
struct AddF {
  ops::DCView<S> x, y;
  S alpha;
  ops::DView<S> z;
  __device__ void operator()(Index r, Index c) const { z(r, c) = x(r, c) + alpha * y(r, c); }
};
template <class S>
struct ScaleF {
  ops::DCView<S> x;
  S alpha;
  ops::DView<S> z;
  __device__ void operator()(Index r, Index c) const { z(r, c) = alpha * x(r, c); }
};
template <class S>
struct MulF {
  ops::DCView<S> a, b;
  ops::DView<S> z;
  __device__ void operator()(Index r, Index c) const { z(r, c) = a(r, c) * b(r, c); }
};
template <class S>
struct SiluF {
  ops::DCView<S> x;
  ops::DView<S> y;
  __device__ void operator()(Index r, Index c) const {
    const S v = x(r, c);
    y(r, c) = v * dev_sigmoid(v);
  }
};
template <class S>
struct SigmoidGateF {
  ops::DCView<S> o, g;
  ops::DView<S> y;
  __device__ void operator()(Index r, Index c) const { y(r, c) = o(r, c) * dev_sigmoid(g(r, c)); }
};
template <class S>
struct CopyF {
  ops::DCView<S> x;
  ops::DView<S> y;
  __device__ void operator()(Index r, Index c) const { y(r, c) = x(r, c); }
};
template <class S>
struct RowBiasF {
  ops::DCView<S> b;
  ops::DView<S> y;
  __device__ void operator()(Index r, Index c) const { y(r, c) += b(0, c); }
};
template <class S>
struct ScaleRowsF {
  ops::DCView<S> x;
  const S* s;
  ops::DView<S> y;
  __device__ void operator()(Index r, Index c) const { y(r, c) = s[r] * x(r, c); }
};
template <class S>
struct GatherRowsF {
  ops::DCView<S> x;
  const Index* idx;
  ops::DView<S> y;
  __device__ void operator()(Index i, Index c) const { y(i, c) = x(idx[i], c); }
};
template <class S>
struct SwigluF {
  ops::DCView<S> a, u;
  ops::DView<S> h;
  __device__ void operator()(Index r, Index c) const {
    const S v = a(r, c);
    h(r, c) = v * dev_sigmoid(v) * u(r, c);
  }
};
template <class S>
struct Relu2F {
  ops::DCView<S> x;
  ops::DView<S> y;
  __device__ void operator()(Index r, Index c) const {
    const S v = x(r, c);
    y(r, c) = v > S(0) ? v * v : S(0);
  }
};
// softplus as torch (identity above 20), then clamp to [lo, hi].
template <class S>
struct DtSoftplusF {
  ops::DCView<S> raw, bias;
  S lo, hi;
  ops::DView<S> dt;
  __device__ void operator()(Index r, Index c) const {
    const S v = raw(r, c) + bias(0, c);
    S sp = v > S(20) ? v : log1p(dev_exp(v));
    sp = sp < lo ? lo : (sp > hi ? hi : sp);
    dt(r, c) = sp;
  }
};
template <class S>
struct NegExpF {
  ops::DCView<S> x;
  ops::DView<S> y;
  __device__ void operator()(Index r, Index c) const { y(r, c) = -dev_exp(x(r, c)); }
};
template <class S>
struct SoftcapF {
  ops::DView<S> l;
  S cap;
  __device__ void operator()(Index r, Index c) const { l(r, c) = cap * tanh(l(r, c) / cap); }
};

}  // namespace hybrid::kernels

namespace hybrid::ops {

template <class S>
void add_forward(const Context& ctx, DCView<S> x, DCView<S> y, S alpha, DView<S> z) {
  kernels::check_shape("add", x.rows, x.cols, y.rows, y.cols);
  kernels::check_shape("add", x.rows, x.cols, z.rows, z.cols);
  kernels::launch_map(ctx, "add", x.rows, x.cols, kernels::AddF<S>{x, y, alpha, z});
}
template <class S>
void scale_forward(const Context& ctx, DCView<S> x, S alpha, DView<S> z) {
  kernels::check_shape("scale", x.rows, x.cols, z.rows, z.cols);
  kernels::launch_map(ctx, "scale", x.rows, x.cols, kernels::ScaleF<S>{x, alpha, z});
}
template <class S>
void mul_forward(const Context& ctx, DCView<S> a, DCView<S> b, DView<S> z) {
  kernels::check_shape("mul", a.rows, a.cols, b.rows, b.cols);
  kernels::check_shape("mul", a.rows, a.cols, z.rows, z.cols);
  kernels::launch_map(ctx, "mul", a.rows, a.cols, kernels::MulF<S>{a, b, z});
}
template <class S>
void silu_forward(const Context& ctx, DCView<S> x, DView<S> y) {
  kernels::check_shape("silu", x.rows, x.cols, y.rows, y.cols);
  kernels::launch_map(ctx, "silu", x.rows, x.cols, kernels::SiluF<S>{x, y});
}
template <class S>
void sigmoid_gate_forward(const Context& ctx, DCView<S> o, DCView<S> g, DView<S> y) {
  kernels::check_shape("sigmoid_gate", o.rows, o.cols, g.rows, g.cols);
  kernels::check_shape("sigmoid_gate", o.rows, o.cols, y.rows, y.cols);
  kernels::launch_map(ctx, "sigmoid_gate", o.rows, o.cols, kernels::SigmoidGateF<S>{o, g, y});
}
template <class S>
void copy(const Context& ctx, DCView<S> x, DView<S> y) {
  kernels::check_shape("copy", x.rows, x.cols, y.rows, y.cols);
  kernels::launch_map(ctx, "copy", x.rows, x.cols, kernels::CopyF<S>{x, y});
}
template <class S>
void add_row_bias(const Context& ctx, DCView<S> bias, DView<S> y) {
  kernels::check_shape("add_row_bias", 1, y.cols, bias.rows, bias.cols);
  kernels::launch_map(ctx, "add_row_bias", y.rows, y.cols, kernels::RowBiasF<S>{bias, y});
}
template <class S>
void scale_rows_forward(const Context& ctx, DCView<S> x, const S* s, DView<S> y) {
  kernels::check_shape("scale_rows", x.rows, x.cols, y.rows, y.cols);
  kernels::launch_map(ctx, "scale_rows", x.rows, x.cols, kernels::ScaleRowsF<S>{x, s, y});
}
template <class S>
void gather_rows_forward(const Context& ctx, DCView<S> x, const Index* idx, Index n, DView<S> y) {
  HYBRID_CHECK(y.rows == n && y.cols == x.cols, "gather_rows: y (", y.rows, ", ", y.cols, "), expected (", n, ", ",
               x.cols, ")");
  for (Index i = 0; i < n; ++i)  // the CPU op's check, on the host indices before they travel
    HYBRID_CHECK(idx[i] >= 0 && idx[i] < x.rows, "gather_rows: row ", idx[i], " of a tensor of ", x.rows, " rows");
  if (n == 0) return;
  cuda::Scratch sc(ctx);
  const Index* didx = sc.upload(idx, std::size_t(n), "row indices");
  kernels::launch_map(ctx, "gather_rows", n, x.cols, kernels::GatherRowsF<S>{x, didx, y});
}
template <class S>
void swiglu_forward(const Context& ctx, DCView<S> a, DCView<S> u, DView<S> h) {
  kernels::check_shape("swiglu", a.rows, a.cols, u.rows, u.cols);
  kernels::check_shape("swiglu", a.rows, a.cols, h.rows, h.cols);
  kernels::launch_map(ctx, "swiglu", a.rows, a.cols, kernels::SwigluF<S>{a, u, h});
}
template <class S>
void relu2_forward(const Context& ctx, DCView<S> x, DView<S> y) {
  kernels::check_shape("relu2", x.rows, x.cols, y.rows, y.cols);
  kernels::launch_map(ctx, "relu2", x.rows, x.cols, kernels::Relu2F<S>{x, y});
}
template <class S>
void dt_softplus_forward(const Context& ctx, DCView<S> raw, DCView<S> bias, S lo, S hi, DView<S> dt) {
  kernels::check_shape("dt_softplus", raw.rows, raw.cols, dt.rows, dt.cols);
  kernels::check_shape("dt_softplus bias", 1, raw.cols, bias.rows, bias.cols);
  kernels::launch_map(ctx, "dt_softplus", raw.rows, raw.cols, kernels::DtSoftplusF<S>{raw, bias, lo, hi, dt});
}
template <class S>
void neg_exp_forward(const Context& ctx, DCView<S> x, DView<S> y) {
  kernels::check_shape("neg_exp", x.rows, x.cols, y.rows, y.cols);
  kernels::launch_map(ctx, "neg_exp", x.rows, x.cols, kernels::NegExpF<S>{x, y});
}
template <class S>
void softcap_forward(const Context& ctx, DView<S> logits, S cap) {
  HYBRID_CHECK(cap > S(0), "softcap: the cap ", cap, " must be positive");
  kernels::launch_map(ctx, "softcap", logits.rows, logits.cols, kernels::SoftcapF<S>{logits, cap});
}

}  // namespace hybrid::ops
