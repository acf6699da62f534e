// The CUDA twins of the ops in include/hybrid/ops/: the same names and the same arguments,
// preceded by the context they run on (its stream, GEMM handle and workspace arena), with
// views on the device (View<S, Cuda>) where the CPU op takes host views, and device
// pointers where it takes pointers. Each is tested against its CPU op, which is the
// specification (tests/cuda/test_kernels.cpp).
//
// How host code and kernels meet: this header is plain C++ (no CUDA syntax), so code that
// also includes Eigen compiles with the C++ compiler and calls these declarations. Their
// definitions are templates in hybrid/kernels/<op>.cuh, compiled by nvcc; the hybrid::cuda
// library instantiates them for float and double (src/cuda/instances.cu). A program that
// needs another scalar type includes the .cuh files in a .cu file of its own.
//
// Every launch is asynchronous on the context's stream; a launch error is reported by the
// call that made it (hybrid::Error naming the kernel and the shapes), an error during
// execution by the next synchronising call.
#pragma once
#include <cstdint>

#include "hybrid/core/view.hpp"
#include "hybrid/ops/attention_mask.hpp"
#include "hybrid/ops/kv_span.hpp"
#include "hybrid/ops/ssd_dims.hpp"
#include "context.hpp"

namespace hybrid::ops {

template <class S>
using DView = View<S, Cuda>;
template <class S>
using DCView = View<const S, Cuda>;
using cuda::Context;

// ---- element-wise (ops/elementwise.hpp) -----------------------------------------------
// Shapes as the CPU ops: every view (R, C), possibly strided.
template <class S> void add_forward(const Context&, DCView<S> x, DCView<S> y, S alpha, DView<S> z);
template <class S> void scale_forward(const Context&, DCView<S> x, S alpha, DView<S> z);
template <class S> void mul_forward(const Context&, DCView<S> a, DCView<S> b, DView<S> z);
template <class S> void silu_forward(const Context&, DCView<S> x, DView<S> y);
template <class S> void sigmoid_gate_forward(const Context&, DCView<S> o, DCView<S> g, DView<S> y);
template <class S> void copy(const Context&, DCView<S> x, DView<S> y);
// y[r] = s[r] * x[r]; s: R device values (drop-path masks).
template <class S> void scale_rows_forward(const Context&, DCView<S> x, const S* s, DView<S> y);
// y[i] = x[idx[i]] for i < n; idx: n host indices, checked against [0, R) on the host.
template <class S> void gather_rows_forward(const Context&, DCView<S> x, const Index* idx, Index n, DView<S> y);
// y = -exp(x): Mamba-2's A from A_log, which ag::ssd computes on the host for the CPU scan.
template <class S> void neg_exp_forward(const Context&, DCView<S> x, DView<S> y);
// y[r] += bias[0] for every row (the bias of a linear layer). bias: (1, C).
template <class S> void add_row_bias(const Context&, DCView<S> bias, DView<S> y);

// ---- activations (ops/activation.hpp) ---------------------------------------------------
template <class S> void swiglu_forward(const Context&, DCView<S> a, DCView<S> u, DView<S> h);
template <class S> void relu2_forward(const Context&, DCView<S> x, DView<S> y);
template <class S> void dt_softplus_forward(const Context&, DCView<S> raw, DCView<S> bias, S lo, S hi, DView<S> dt);

// ---- loss-side (ops/loss.hpp) -----------------------------------------------------------
template <class S> void softcap_forward(const Context&, DView<S> logits, S cap);

// ---- norms (ops/norm.hpp) ---------------------------------------------------------------
// rstd / mean: device arrays of R (gated: R * W / group) values, or nullptr.
template <class S> void rmsnorm_forward(const Context&, DCView<S> x, DCView<S> w, S eps, DView<S> y, S* rstd = nullptr);
template <class S>
void layernorm_forward(const Context&, DCView<S> x, DCView<S> w, DCView<S> b, S eps, DView<S> y,
                       S* mean = nullptr, S* rstd = nullptr);
template <class S>
void gated_rmsnorm_forward(const Context&, DCView<S> y, DCView<S> z, DCView<S> w, Index group, S eps,
                           DView<S> out, S* rstd = nullptr);

// ---- embedding (ops/embedding.hpp) ------------------------------------------------------
// ids: R host ints, checked against [0, V) on the host (the CPU op's error) and copied to
// the device through the context's arena before the gather.
template <class S> void embedding_forward(const Context&, DCView<S> table, const int* ids, Index R, S mult, DView<S> out);

// ---- causal depthwise conv (ops/conv1d.hpp) ---------------------------------------------
// u: (T, C); w: (C, K); bias: (1, C) or empty; hist: (C, K) or empty; y: (T, C);
// hist_out: (C, K) or empty, may alias hist.
template <class S>
void causal_conv1d_forward(const Context&, DCView<S> u, DCView<S> w, DCView<S> bias, DCView<S> hist,
                           DView<S> y, DView<S> hist_out);

// ---- rotary embedding (ops/rope.hpp) ----------------------------------------------------
template <class S> void rope_forward(const Context&, DView<S> x, int n_heads, int P, Index pos0, double base, int rot = 0);

// ---- linear (ops/linear.hpp): y = x W^T (+ b) through cuBLASLt ---------------------------
// x: (R, in); W: (out, in); bias: (1, out) or empty; y: (R, out). Float in the context's
// GemmMode (Exact: no TF32); double in double.
template <class S> void linear_forward(const Context&, DCView<S> x, DCView<S> W, DCView<S> bias, DView<S> y);

// ---- SSD scan (ops/ssd.hpp) --------------------------------------------------------------
// The chunked scan with chunk Q (any T, any G dividing H, initial and final state): the
// SsdArgs pointers are device pointers, laid out as the CPU op documents. Workspace from
// the context's arena: ssd_chunked_cuda_scratch(d, Q) values.
Index ssd_chunked_cuda_scratch(const SsdDims& d, int Q);
template <class S> void ssd_chunked(const Context&, const SsdDims& d, int Q, const SsdArgs<S>& args);
// The plain recurrence (decode, short calls): a state row per warp in registers, N <= 256.
template <class S> void ssd_recurrent(const Context&, const SsdDims& d, const SsdArgs<S>& args);

// ---- causal GQA attention (ops/attention.hpp) -------------------------------------------
// Flash-attention style: key tiles stream through shared memory with an online softmax; no
// (Tq, Tk) matrix exists. Device pointers, shapes and the visibility rule as the CPU op;
// lse: (Tq, H) device values or nullptr.
template <class S>
void attention_forward(const Context&, const S* q, const S* k, const S* v, S* o, const AttnDims& d, S scale,
                       Index qpos0, Index kpos0, int window, S* lse = nullptr);

// ---- decode attention over the KV cache (ops/attention_decode.hpp) ---------------------
// q: (B, H*P) device; kv: B host spans whose k/v (or bf16 kh/vh) are device pointers;
// qpos: B host positions; o: (B, H*P) device, 0 where no key is visible. A long cache is
// cut into slices (split-K) merged by log-sum-exp, as on the CPU.
template <class S>
void attention_decode(const Context&, const DecodeDims& d, const S* q, const KvSpan<S>* kv, const Index* qpos, S* o,
                      S scale, int window);

// ---- greedy decoding (infer/sampling.hpp at temperature 0) ---------------------------------
// ids[r] (R host ints) = argmax of logits row r (the lowest id on ties); allowed: n_allowed
// device flags (ids at or beyond n_allowed excluded), or nullptr for every id. A NaN / +inf
// logit or a row with nothing to pick is a hybrid::Error naming the row. Synchronises.
template <class S>
void greedy_rows(const Context&, DCView<S> logits, const std::uint8_t* allowed, Index n_allowed, int* ids);
// Temperature -> top-k -> top-p -> one draw per row, as hybrid::Sampler (repetition penalty
// aside): u: R host uniforms in [0, 1) from the caller's Rng (Rng::uniform(), one per row and
// call, as the CPU sampler draws them), so a seed gives the CPU's ids. temperature 0 is greedy.
template <class S>
void sample_rows(const Context&, DCView<S> logits, float temperature, int top_k, float top_p,
                 const std::uint8_t* allowed, Index n_allowed, const double* u, int* ids);

}  // namespace hybrid::ops
