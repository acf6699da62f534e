// The tape's backend on an NVIDIA GPU (autograd/backend.hpp): the parameters and the
// activations of a forward in device memory, every op a launcher of ops.hpp on the
// context's stream. Plain C++ like ops.hpp; link hybrid::cuda.
//
//   cuda::Context ctx;
//   cuda::CudaBackend<float> dev(ctx, model.param_table().total());
//   dev.upload(CView<float>(model.param_values(), 1, model.param_table().total()), dev.parameters());
//   Tape<float> t;  t.set_backend(&dev);
//   const Var<float> l = model.logits(t, tokens, B, T);      // (B*T, V) on the device
#pragma once
#include <algorithm>
#include <string>

#include "hybrid/autograd/backend.hpp"
#include "ops.hpp"

namespace hybrid::cuda {

// The chunk length of the device's SSD scan where a model leaves it to the device
// (Mamba2Spec::chunk = 0). Not yet measured on a GPU: the CPU's measured value until the
// kernel benchmark has timed the chunk lengths on one.
inline constexpr int kSsdChunk = 64;

template <class S>
class CudaBackend final : public Backend<S> {
 public:
  // n_params: values of the model's parameter store (ParamTable::total()), allocated here
  // and zeroed; activation_bytes: the forward's arena, reserved up front (running out is an
  // error naming the sizes: Tape::usage() after a run tells what one needs).
  CudaBackend(const Context& ctx, Index n_params, std::size_t activation_bytes = std::size_t(1) << 30)
      : ctx_(ctx), name_("cuda:" + std::to_string(ctx.device())), params_(n_params),
        arena_(activation_bytes) {
    ctx_.activate();
    params_.zero(ctx_.raw_stream());
  }

  const Context& context() const { return ctx_; }
  const char* name() const override { return name_.c_str(); }

  View<S> parameters() override { return View<S>(params_.data(), 1, params_.size()); }
  S* alloc(Index n) override { return arena_.alloc_array<S>(std::size_t(std::max<Index>(n, 1))); }
  std::size_t mark() const override { return arena_.mark(); }
  void release(std::size_t m) override { arena_.release(m); }
  void rewind() override { arena_.rewind(); }
  // Bytes of the activation arena in use at most since construction.
  std::size_t high_water() const { return arena_.high_water(); }

  void upload(CView<S> host, View<S> dst) override { cuda::upload<S>(host, dv(dst), ctx_.stream()); }
  void download(CView<S> src, View<S> host) override { cuda::download<S>(dc(src), host, ctx_.stream()); }

  void copy(CView<S> x, View<S> y) override { ops::copy<S>(ctx_, dc(x), dv(y)); }
  void add(CView<S> x, CView<S> y, S alpha, View<S> z) override {
    ops::add_forward<S>(ctx_, dc(x), dc(y), alpha, dv(z));
  }
  void scale(CView<S> x, S alpha, View<S> z) override { ops::scale_forward<S>(ctx_, dc(x), alpha, dv(z)); }
  void mul(CView<S> a, CView<S> b, View<S> z) override { ops::mul_forward<S>(ctx_, dc(a), dc(b), dv(z)); }
  void scale_rows(CView<S> x, const S* host_s, View<S> y) override {
    Scratch sc(ctx_);
    ops::scale_rows_forward<S>(ctx_, dc(x), sc.upload(host_s, std::size_t(x.rows), "row factors"), dv(y));
  }
  void gather_rows(CView<S> x, const Index* host_idx, Index n, View<S> y) override {
    ops::gather_rows_forward<S>(ctx_, dc(x), host_idx, n, dv(y));
  }
  void silu(CView<S> x, View<S> y) override { ops::silu_forward<S>(ctx_, dc(x), dv(y)); }
  void sigmoid_gate(CView<S> o, CView<S> g, View<S> y) override {
    ops::sigmoid_gate_forward<S>(ctx_, dc(o), dc(g), dv(y));
  }
  void swiglu(CView<S> a, CView<S> u, View<S> h) override { ops::swiglu_forward<S>(ctx_, dc(a), dc(u), dv(h)); }
  void relu2(CView<S> x, View<S> y) override { ops::relu2_forward<S>(ctx_, dc(x), dv(y)); }
  void dt_softplus(CView<S> raw, CView<S> bias, S lo, S hi, View<S> dt) override {
    ops::dt_softplus_forward<S>(ctx_, dc(raw), dc(bias), lo, hi, dv(dt));
  }
  void softcap(View<S> logits, S cap) override { ops::softcap_forward<S>(ctx_, dv(logits), cap); }
  void neg_exp(CView<S> x, View<S> y) override { ops::neg_exp_forward<S>(ctx_, dc(x), dv(y)); }

  void rmsnorm(CView<S> x, CView<S> w, S eps, View<S> y) override {
    ops::rmsnorm_forward<S>(ctx_, dc(x), dc(w), eps, dv(y));
  }
  void layernorm(CView<S> x, CView<S> w, CView<S> b, S eps, View<S> y) override {
    ops::layernorm_forward<S>(ctx_, dc(x), dc(w), dc(b), eps, dv(y));
  }
  void gated_rmsnorm(CView<S> y, CView<S> z, CView<S> w, Index group, S eps, View<S> out) override {
    ops::gated_rmsnorm_forward<S>(ctx_, dc(y), dc(z), dc(w), group, eps, dv(out));
  }
  void embedding(CView<S> table, const int* host_ids, Index R, S mult, View<S> out) override {
    ops::embedding_forward<S>(ctx_, dc(table), host_ids, R, mult, dv(out));
  }
  void linear(CView<S> x, CView<S> W, CView<S> b, View<S> y) override {
    ops::linear_forward<S>(ctx_, dc(x), dc(W), dc(b), dv(y));
  }

  void causal_conv1d(CView<S> u, CView<S> w, CView<S> b, CView<S> hist, View<S> y, View<S> hist_out) override {
    ops::causal_conv1d_forward<S>(ctx_, dc(u), dc(w), dc(b), dc(hist), dv(y), dv(hist_out));
  }
  // Auto takes the recurrence below 32 steps (as the CPU's ssd_auto_chunked does for small
  // T), where the chunked kernels' four passes cost more than they save.
  void ssd(const ops::SsdDims& d, int chunk, ScanPath path, const ops::SsdArgs<S>& a) override {
    const bool recurrent = d.N <= 256 && (path == ScanPath::Recurrent || (path == ScanPath::Auto && d.T < 32));
    if (recurrent) ops::ssd_recurrent<S>(ctx_, d, a);
    else ops::ssd_chunked<S>(ctx_, d, chunk > 0 ? chunk : kSsdChunk, a);
  }
  void rope(View<S> x, int n_heads, int P, Index pos0, double base, int rot) override {
    ops::rope_forward<S>(ctx_, dv(x), n_heads, P, pos0, base, rot);
  }
  void attention(const S* q, const S* k, const S* v, S* o, const ops::AttnDims& d, S scale, Index qpos0,
                 Index kpos0, int window) override {
    ops::attention_forward<S>(ctx_, q, k, v, o, d, scale, qpos0, kpos0, window);
  }

 private:
  // The backend's views are device memory whatever their tag (autograd/backend.hpp).
  static View<const S, Cuda> dc(CView<S> v) { return View<const S, Cuda>(v.data, v.rows, v.cols, v.ld); }
  static View<S, Cuda> dv(View<S> v) { return View<S, Cuda>(v.data, v.rows, v.cols, v.ld); }

  const Context& ctx_;
  std::string name_;
  Buffer<S, Cuda> params_;
  DeviceArena arena_;
};

}  // namespace hybrid::cuda
