// Where a tape's values live when they are not in host memory: a Backend owns that memory
// (the model's parameters uploaded once, the activations of a forward) and runs every
// forward op of the layers on it. A tape with a backend (Tape::set_backend) takes each
// var() from it, and every ag:: function hands its op to it, so the layers, the blocks and
// RuntimeModel run unchanged on another device: one compute path, whichever memory.
// The CPU path is the tape without a backend (ops/ on host memory).
//
//   cuda::CudaBackend<float> dev(ctx, model.param_table().total());  // kernels/hybrid/cuda
//   dev.upload(host_values, dev.parameters());
//   Tape<float> t;  t.set_backend(&dev);
//   Var<float> logits = model.logits(t, tokens, B, T);            // values on the device
//
// Inference only: a tape that records refuses a backend (gradients and backward closures
// are host code). Views and pointers given to an op point into the backend's memory,
// whatever their device tag says; tables of ids, indices and positions stay on the host
// (the tape's scratch) and the backend copies what it needs. Every op is asynchronous where
// the device allows it; download() synchronises. Shapes as the ops/ function of the same
// name documents (the comments give them again where a pointer hides them).
#pragma once
#include <cstddef>
#include <cstdint>

#include "../config.hpp"
#include "../core/view.hpp"
#include "../ops/attention_mask.hpp"
#include "../ops/ssd_dims.hpp"

namespace hybrid {

template <class S>
class Backend {
 public:
  virtual ~Backend() = default;
  // What error messages call it ("cuda:0").
  virtual const char* name() const = 0;

  // ---- memory --------------------------------------------------------------------------
  // The parameter values in the layout of the model's ParamTable (what Param offsets index).
  virtual View<S> parameters() = 0;
  // n activation values (aligned for any op), valid until release() of an earlier mark or
  // rewind(). Running out is an error naming the sizes.
  virtual S* alloc(Index n) = 0;
  virtual std::size_t mark() const = 0;
  virtual void release(std::size_t mark) = 0;
  virtual void rewind() = 0;
  // Copies between host memory and the backend's (same shapes; strided views allowed).
  virtual void upload(CView<S> host, View<S> dst) = 0;
  virtual void download(CView<S> src, View<S> host) = 0;  // synchronises

  // ---- row-wise and element-wise (ops/elementwise.hpp, activation.hpp, loss.hpp) ------
  virtual void copy(CView<S> x, View<S> y) = 0;
  virtual void add(CView<S> x, CView<S> y, S alpha, View<S> z) = 0;  // z = x + alpha y
  virtual void scale(CView<S> x, S alpha, View<S> z) = 0;
  virtual void mul(CView<S> a, CView<S> b, View<S> z) = 0;
  virtual void scale_rows(CView<S> x, const S* host_s, View<S> y) = 0;  // s: x.rows host values
  virtual void gather_rows(CView<S> x, const Index* host_idx, Index n, View<S> y) = 0;
  virtual void silu(CView<S> x, View<S> y) = 0;
  virtual void sigmoid_gate(CView<S> o, CView<S> g, View<S> y) = 0;
  virtual void swiglu(CView<S> a, CView<S> u, View<S> h) = 0;
  virtual void relu2(CView<S> x, View<S> y) = 0;
  virtual void dt_softplus(CView<S> raw, CView<S> bias, S lo, S hi, View<S> dt) = 0;
  virtual void softcap(View<S> logits, S cap) = 0;  // in place
  virtual void neg_exp(CView<S> x, View<S> y) = 0;  // y = -exp(x): Mamba-2's A from A_log

  // ---- norms, embedding, linear ----------------------------------------------------------
  virtual void rmsnorm(CView<S> x, CView<S> w, S eps, View<S> y) = 0;
  virtual void layernorm(CView<S> x, CView<S> w, CView<S> b, S eps, View<S> y) = 0;
  virtual void gated_rmsnorm(CView<S> y, CView<S> z, CView<S> w, Index group, S eps, View<S> out) = 0;
  // ids: R host ids, checked against [0, V).
  virtual void embedding(CView<S> table, const int* host_ids, Index R, S mult, View<S> out) = 0;
  // y = x W^T (+ b). x: (R, in); W: (out, in); b: (1, out) or empty; y: (R, out).
  virtual void linear(CView<S> x, CView<S> W, CView<S> b, View<S> y) = 0;

  // ---- sequence mixers: one sequence (or one packed document) per call --------------------
  // u: (T, C); w: (C, K); b: (1, C) or empty; hist / hist_out: (C, K) or empty.
  virtual void causal_conv1d(CView<S> u, CView<S> w, CView<S> b, CView<S> hist, View<S> y,
                             View<S> hist_out) = 0;
  // The SSD scan of one sequence; every SsdArgs pointer in the backend's memory. path and
  // chunk as ops::ssd_forward (the backend may choose its own kernel for Auto).
  virtual void ssd(const ops::SsdDims& d, int chunk, ScanPath path, const ops::SsdArgs<S>& a) = 0;
  // In place on x: (T, n_heads*P), the first row at position pos0.
  virtual void rope(View<S> x, int n_heads, int P, Index pos0, double base, int rot) = 0;
  // Causal GQA attention: q, o (Tq, H*P); k, v (Tk, G*P), contiguous.
  virtual void attention(const S* q, const S* k, const S* v, S* o, const ops::AttnDims& d, S scale,
                         Index qpos0, Index kpos0, int window) = 0;
};

}  // namespace hybrid
