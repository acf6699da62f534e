// The op-case table (as ggml's test-backend-ops): for every OpId, how to run it on the tape
// and the cases to run it at (T not a multiple of the chunk, G > 1, T = 1, strided inputs,
// empty ranges...). One table drives the finite-difference gradient checks
// (tests/test_op_cases.cpp), the per-op benchmark and, with a CUDA tape, the kernel-vs-CPU
// checks. Every input of a case (activations included) is a tensor of a small parameter
// store, so one gradient store receives every input gradient:
//
//   OpCaseRun<double> run(case);          // inputs declared and filled with seeded values
//   Tape<double> t(true, &run.grads());
//   Var<double> y = run.forward(t);       // the op on views of the inputs
#pragma once
#include <array>
#include <limits>
#include <span>
#include <string>
#include <vector>

#include "../core/rng.hpp"
#include "functions.hpp"
#include "seq_functions.hpp"

namespace hybrid {

// Sizes of one case; each op reads the fields it needs (letters as STYLE.md fixes them).
struct OpDims {
  Index B = 1, T = 5;      // sequences, tokens per sequence (rows R = B*T)
  int C = 6;               // width (channels, in-features)
  int O = 5;               // out-features (linear), vocabulary (embedding, loss)
  // Heads, head dim, state, groups. SSD: G groups of B/C; attention: H query heads in G
  // groups, one key/value head each; RoPE: H heads of P dims.
  int H = 2, P = 3, N = 4, G = 1;
  int K = 3;               // conv width
  int chunk = 4;           // SSD chunk
  int window = 0;          // attention window
  int rope_dims = 0;       // RoPE: rotated dims of each head (0 = all P; fewer: partial)
  bool strided = false;    // activations are column ranges of wider tensors
  ScanPath path = ScanPath::Chunked;
  // head_loss: its chunk is `chunk` (0: the op's own choice); logits divisor, soft-cap,
  // z-loss; tied: W is also the table of an embedding that produces x (one gradient, two
  // uses), as in a model with a tied head.
  double divisor = 1, softcap = 0, z_loss = 0;
  bool tied = false;
  // kd_loss (with the head_loss fields above): the teacher's top-k width (0: full logits)
  // and the temperature.
  int kd_topk = 0;
  double kd_tau = 2;
};

struct OpCase {
  OpId op;
  const char* label;
  OpDims d;
};

struct OpRow {
  OpId op;
  const char* header;  // where the forward/backward pair lives, under include/hybrid/
  bool backward;       // has a backward (every op must)
};

inline constexpr std::array<OpRow, kOpCount> op_rows{{
    {OpId::Linear, "ops/linear.hpp", true},
    {OpId::Embedding, "ops/embedding.hpp", true},
    {OpId::RmsNorm, "ops/norm.hpp", true},
    {OpId::LayerNorm, "ops/norm.hpp", true},
    {OpId::GatedRmsNorm, "ops/norm.hpp", true},
    {OpId::CausalConv1d, "ops/conv1d.hpp", true},
    {OpId::Ssd, "ops/ssd.hpp, ops/ssd_backward.hpp", true},
    {OpId::Rope, "ops/rope.hpp", true},
    {OpId::Attention, "ops/attention.hpp", true},
    {OpId::Swiglu, "ops/activation.hpp", true},
    {OpId::Relu2, "ops/activation.hpp", true},
    {OpId::DtSoftplus, "ops/activation.hpp", true},
    {OpId::Silu, "ops/elementwise.hpp", true},
    {OpId::SigmoidGate, "ops/elementwise.hpp", true},
    {OpId::Add, "ops/elementwise.hpp", true},
    {OpId::Scale, "ops/elementwise.hpp", true},
    {OpId::Mul, "ops/elementwise.hpp", true},
    {OpId::ScaleRows, "ops/elementwise.hpp", true},
    {OpId::GatherRows, "ops/elementwise.hpp", true},
    {OpId::Softcap, "ops/loss.hpp", true},
    {OpId::CrossEntropy, "ops/loss.hpp", true},
    {OpId::HeadLoss, "ops/head_loss.hpp", true},
    {OpId::Checkpoint, "runtime_model.hpp (checkpointed_block)", true},
    {OpId::KdLoss, "ops/kd_loss.hpp", true},
    {OpId::Mse, "ops/loss.hpp", true},
}};

// The cases. Checkpoint recomputes a whole block, so its case is a block of a model
// (tests/test_grad_model.cpp "gradient checkpointing"), not a row here.
inline std::vector<OpCase> op_cases() {
  std::vector<OpCase> c;
  auto add = [&](OpId op, const char* label, OpDims d) { c.push_back({op, label, d}); };
  const OpDims base{};
  OpDims wide = base;
  wide.strided = true;
  OpDims one = base;
  one.T = 1;
  OpDims batch = base;
  batch.B = 2;
  batch.T = 3;
  for (OpId op : {OpId::Linear, OpId::RmsNorm, OpId::LayerNorm, OpId::Swiglu, OpId::Relu2,
                  OpId::Silu, OpId::SigmoidGate, OpId::Add, OpId::Scale, OpId::Mul,
                  OpId::ScaleRows, OpId::GatherRows, OpId::Softcap, OpId::CrossEntropy,
                  OpId::DtSoftplus, OpId::Embedding, OpId::Mse}) {
    add(op, "base", base);
    add(op, "strided", wide);
    add(op, "one row", one);
    add(op, "B=2", batch);
  }
  OpDims gn = base;
  gn.C = 8;
  gn.G = 2;
  add(OpId::GatedRmsNorm, "per group G=2", gn);
  add(OpId::GatedRmsNorm, "whole width", base);
  gn.strided = true;
  add(OpId::GatedRmsNorm, "per group strided", gn);

  add(OpId::CausalConv1d, "T > K", base);
  add(OpId::CausalConv1d, "T < K", OpDims{.T = 2});
  add(OpId::CausalConv1d, "B=2 strided", OpDims{.B = 2, .T = 4, .strided = true});

  add(OpId::Ssd, "chunked, T % chunk != 0", OpDims{.T = 7, .chunk = 3});
  add(OpId::Ssd, "chunked, G=2", OpDims{.T = 6, .H = 4, .G = 2, .chunk = 4});
  add(OpId::Ssd, "chunked, T = 1", OpDims{.T = 1});
  add(OpId::Ssd, "recurrent, B=2 strided", OpDims{.B = 2, .T = 5, .H = 2, .G = 2, .strided = true,
                                                  .path = ScanPath::Recurrent});

  add(OpId::Rope, "base", OpDims{.T = 4, .H = 2, .P = 4});
  add(OpId::Rope, "B=2", OpDims{.B = 2, .T = 3, .H = 1, .P = 6});
  add(OpId::Rope, "partial, 2 of 6 dims", OpDims{.T = 4, .H = 2, .P = 6, .rope_dims = 2});
  add(OpId::Rope, "partial B=2 strided", OpDims{.B = 2, .T = 3, .H = 2, .P = 8, .rope_dims = 4,
                                                .strided = true});

  add(OpId::Attention, "MHA", OpDims{.T = 5, .H = 2, .P = 3, .G = 2});
  add(OpId::Attention, "GQA B=2", OpDims{.B = 2, .T = 4, .H = 4, .P = 2, .G = 2});
  add(OpId::Attention, "window", OpDims{.T = 6, .H = 2, .P = 3, .G = 1, .window = 2});
  add(OpId::Attention, "T = 1", OpDims{.T = 1, .H = 2, .P = 3, .G = 1});

  // Targets: row 1 is ignored (-1) in every case.
  add(OpId::HeadLoss, "R % chunk != 0", OpDims{.T = 7, .chunk = 3});
  add(OpId::HeadLoss, "one chunk, z-loss", OpDims{.T = 5, .chunk = 0, .z_loss = 0.05});
  add(OpId::HeadLoss, "chunk 1, B=2 strided", OpDims{.B = 2, .T = 3, .chunk = 1, .strided = true});
  add(OpId::HeadLoss, "soft-cap, divisor, z-loss",
      OpDims{.B = 2, .T = 4, .chunk = 3, .divisor = 2, .softcap = 1.5, .z_loss = 0.02});
  add(OpId::HeadLoss, "tied embedding, soft-cap",
      OpDims{.T = 6, .C = 4, .O = 7, .chunk = 4, .softcap = 2, .z_loss = 0.01, .tied = true});

  // Row 1 ignored, as for head_loss; the teacher is made by the runner (no gradient).
  add(OpId::KdLoss, "full teacher, R % chunk != 0", OpDims{.T = 7, .chunk = 3});
  add(OpId::KdLoss, "top-3 teacher, tau 0.7, z-loss", OpDims{.T = 5, .chunk = 0, .z_loss = 0.05, .kd_topk = 3, .kd_tau = 0.7});
  add(OpId::KdLoss, "soft-cap, divisor, B=2 strided",
      OpDims{.B = 2, .T = 3, .chunk = 2, .strided = true, .divisor = 2, .softcap = 1.5, .kd_topk = 2});
  return c;
}

// One case per op at Golf15x3's shapes (B = 4 sequences of T = 256, or T = 64 with quick),
// for the per-op benchmark (bench/bench_ops.cpp).
inline std::vector<OpCase> op_bench_cases(bool quick = false) {
  const Index T = quick ? 64 : 256;
  OpDims g{.B = 4, .T = T, .C = 512, .O = 1536};
  std::vector<OpCase> c;
  for (const OpRow& r : op_rows) {
    OpDims d = g;
    switch (r.op) {
      case OpId::Embedding: case OpId::CrossEntropy: d.O = 1024; break;
      case OpId::HeadLoss: d.O = 1024, d.chunk = 0; break;
      case OpId::KdLoss: d.O = 1024, d.chunk = 0, d.kd_topk = 32; break;
      case OpId::GatedRmsNorm: d.C = 768; break;
      case OpId::CausalConv1d: d.C = 832, d.K = 4; break;
      case OpId::Ssd: d.H = 12, d.P = 64, d.N = 32, d.G = 1, d.chunk = 64, d.path = ScanPath::Auto; break;
      case OpId::DtSoftplus: d.H = 12; break;
      case OpId::Rope: case OpId::Attention: d.H = 8, d.G = 4, d.P = 64; break;
      case OpId::Swiglu: case OpId::Relu2: d.C = 1024; break;
      case OpId::Checkpoint: case OpId::kCount: continue;
      default: break;
    }
    c.push_back({r.op, "golf", d});
  }
  return c;
}

// One case, ready to run: its inputs in a parameter store (filled from a seed), a gradient
// store over them, and the op applied to views of them.
template <class S>
class OpCaseRun {
 public:
  struct Model {  // what GradStore needs of a model
    ParamTable table;
    ParamStore<S> store;
    const ParamTable& param_table() const { return table; }
    S* param_values() { return store.data(); }
  };

  explicit OpCaseRun(const OpCase& c, std::uint64_t seed = 1) : c_(c) {
    declare();
    m_.store = ParamStore<S>(m_.table);
    Rng rng(derive_seed(seed, op_name(c.op)));
    for (std::size_t i = 0; i < in_.size(); ++i) {
      View<S> v = m_.store.view(in_[i]);
      for (Index r = 0; r < v.rows; ++r)
        for (Index k = 0; k < v.cols; ++k) {
          const double x = rng.normal();
          v(r, k) = S(positive_[i] ? 0.2 + 0.3 * std::abs(x) : x);
        }
    }
    grads_ = std::make_unique<GradStore<S>>(m_);
  }
  OpCaseRun(const OpCaseRun&) = delete;

  GradStore<S>& grads() { return *grads_; }
  Model& inputs() { return m_; }
  const OpCase& op_case() const { return c_; }

  // The op on the tape (bound to the inputs); its output.
  Var<S> forward(Tape<S>& t) {
    t.bind_values(m_.store.data());
    const OpDims& d = c_.d;
    const Index R = d.B * d.T;
    auto act = [&](std::size_t i) {  // an activation input: a view, strided when asked
      Var<S> v = t.param(in_[i]);
      return d.strided ? v.col_range(1, v.cols - 2) : v;
    };
    switch (c_.op) {
      case OpId::Linear: return ag::linear(t, act(0), in_[1], in_[2]);
      case OpId::Embedding: {
        int* ids = t.scratch_int(R);
        for (Index r = 0; r < R; ++r) ids[r] = int((r * 3 + 1) % d.O);  // repeats when R > O
        return ag::embedding(t, in_[0], ids, R, S(1.5));
      }
      case OpId::RmsNorm: return ag::rmsnorm(t, act(0), in_[1], S(1e-5));
      case OpId::LayerNorm: return ag::layernorm(t, act(0), in_[1], in_[2], S(1e-5));
      case OpId::GatedRmsNorm: return ag::gated_rmsnorm(t, act(0), act(1), in_[2], d.C / d.G, S(1e-5));
      case OpId::CausalConv1d: return ag::causal_conv1d(t, act(0), in_[1], in_[2], d.B, d.T, static_cast<S* const*>(nullptr));
      case OpId::Ssd: {
        const Var<S> xbc = act(0);  // x | B | C, as Mamba-2's conv output
        const Index HP = Index(d.H) * d.P, GN = Index(d.G) * d.N;
        const ag::SsdConfig cfg{d.H, d.P, d.N, d.G, d.chunk, d.path};
        return ag::ssd(t, xbc.col_range(0, HP), t.param(in_[1]), in_[2], xbc.col_range(HP, GN),
                       xbc.col_range(HP + GN, GN), in_[3], cfg, d.B, d.T,
                       static_cast<S* const*>(nullptr));
      }
      case OpId::Rope: {
        Index* pos = t.scratch_index(d.B);
        for (Index b = 0; b < d.B; ++b) pos[b] = 3 + 5 * b;
        return ag::rope(t, act(0), d.H, d.P, d.B, d.T, pos, 100.0, d.rope_dims);
      }
      case OpId::Attention:
        return ag::attention(t, act(0), act(1), act(2), d.H, d.G, d.P, d.B, d.T,
                             S(1) / std::sqrt(S(d.P)), d.window);
      case OpId::Swiglu: return ag::swiglu(t, act(0), act(1));
      case OpId::Relu2: return ag::relu2(t, act(0));
      case OpId::DtSoftplus:
        return ag::dt_softplus(t, act(0), in_[1], S(0), std::numeric_limits<S>::infinity());
      case OpId::Silu: return ag::silu(t, act(0));
      case OpId::SigmoidGate: return ag::sigmoid_gate(t, act(0), act(1));
      case OpId::Add: return ag::add(t, act(0), act(1), S(-0.7));
      case OpId::Scale: return ag::scale(t, act(0), S(1.3));
      case OpId::Mul: return ag::mul(t, act(0), act(1));
      case OpId::ScaleRows: {
        S* s = t.scratch(R);
        for (Index r = 0; r < R; ++r) s[r] = r % 2 ? S(0) : S(2);
        return ag::scale_rows(t, act(0), s);
      }
      case OpId::GatherRows: {
        Index* idx = t.scratch_index(3);
        for (Index i = 0; i < 3; ++i) idx[i] = (R - 1 - i * 2 + 2 * R) % R;  // repeats when R < 3
        return ag::gather_rows(t, act(0), idx, 3);
      }
      case OpId::Softcap: return ag::softcap(t, act(0), S(1.5));
      case OpId::CrossEntropy: {
        int* tg = t.scratch_int(R);
        for (Index r = 0; r < R; ++r) tg[r] = r == 1 ? -1 : int((r * 2 + 1) % d.O);
        return ag::cross_entropy(t, act(0), tg, 0.05);
      }
      case OpId::HeadLoss: {
        int* tg = t.scratch_int(R);
        for (Index r = 0; r < R; ++r) tg[r] = r == 1 ? -1 : int((r * 2 + 1) % d.O);
        const ops::HeadLoss h{d.chunk, d.divisor, d.softcap, d.z_loss};
        if (!d.tied) return ag::head_loss(t, act(0), in_[1], tg, h);
        int* ids = t.scratch_int(R);
        for (Index r = 0; r < R; ++r) ids[r] = int((r * 3 + 2) % d.O);
        return ag::head_loss(t, ag::embedding(t, in_[0], ids, R, S(0.8)), in_[0], tg, h);
      }
      case OpId::KdLoss: {
        int* tg = t.scratch_int(R);
        for (Index r = 0; r < R; ++r) tg[r] = r == 1 ? -1 : int((r * 2 + 1) % d.O);
        const ops::HeadLoss h{d.chunk, d.divisor, d.softcap, d.z_loss};
        const ops::KdLoss kd{0.7, 1.3, d.kd_tau};
        ops::KdTeacher<S> tc;
        if (d.kd_topk > 0) {
          const Index k = d.kd_topk;
          int* ids = t.scratch_int(R * k);
          S* lp = t.scratch(R * k);
          for (Index r = 0; r < R; ++r)
            for (Index j = 0; j < k; ++j)
              ids[r * k + j] = int((r + 2 * j) % d.O), lp[r * k + j] = S(-0.5 - 0.4 * double(j) - 0.1 * double(r));
          tc.ids = ids, tc.logp = CView<S>(lp, R, k, k);
        } else {
          S* u = t.scratch(R * d.O);
          for (Index i = 0; i < R * d.O; ++i) u[i] = S(2 * std::sin(0.7 * double(i) + 0.3));
          tc.logits = CView<S>(u, R, d.O, d.O);
        }
        return ag::kd_head_loss(t, act(0), in_[1], tg, h, kd, tc);
      }
      case OpId::Mse: return ag::mse(t, act(0), act(1));
      case OpId::Checkpoint:
      case OpId::kCount: break;
    }
    fail("op case: ", op_name(c_.op), " has no runner");
  }

 private:
  // Declares the inputs: activations get two extra columns when strided (a view skips the
  // first and the last).
  void declare() {
    const OpDims& d = c_.d;
    const Index R = d.B * d.T, pad = d.strided ? 2 : 0;
    auto in = [&](Index rows, Index cols, bool positive = false) {
      in_.push_back(m_.table.add("in" + std::to_string(in_.size()), rows, cols, ParamRole::Scalar));
      positive_.push_back(positive);
    };
    auto act = [&](Index cols, bool positive = false) { in(R, cols + pad, positive); };
    switch (c_.op) {
      case OpId::Linear: act(d.C), in(d.O, d.C), in(1, d.O); break;
      case OpId::Embedding: in(d.O, d.C); break;
      case OpId::RmsNorm: act(d.C), in(1, d.C); break;
      case OpId::LayerNorm: act(d.C), in(1, d.C), in(1, d.C); break;
      case OpId::GatedRmsNorm: act(d.C), act(d.C), in(1, d.C); break;
      case OpId::CausalConv1d: act(d.C), in(d.C, d.K), in(1, d.C); break;
      case OpId::Ssd:
        act(Index(d.H) * d.P + 2 * Index(d.G) * d.N), in(R, d.H, true), in(1, d.H), in(1, d.H);
        break;
      case OpId::Rope: act(Index(d.H) * d.P); break;
      case OpId::Attention:
        HYBRID_CHECK(!d.strided, "op case: attention takes contiguous q, k, v");
        act(Index(d.H) * d.P), act(Index(d.G) * d.P), act(Index(d.G) * d.P);
        break;
      case OpId::Swiglu: case OpId::SigmoidGate: case OpId::Add: case OpId::Mul: case OpId::Mse:
        act(d.C), act(d.C);
        break;
      case OpId::Relu2: case OpId::Silu: case OpId::Scale: case OpId::ScaleRows:
      case OpId::GatherRows: case OpId::Softcap:
        act(d.C);
        break;
      case OpId::DtSoftplus: act(d.H), in(1, d.H); break;
      case OpId::CrossEntropy: act(d.O); break;
      case OpId::HeadLoss:
        HYBRID_CHECK(!(d.tied && d.strided), "op case: a tied head_loss takes x from its embedding");
        if (d.tied) in(d.O, d.C);
        else act(d.C), in(d.O, d.C);
        break;
      case OpId::KdLoss: act(d.C), in(d.O, d.C); break;
      case OpId::Checkpoint: case OpId::kCount:
        fail("op case: ", op_name(c_.op), " has no inputs to declare");
    }
  }

  OpCase c_;
  Model m_;
  std::vector<Param> in_;
  std::vector<bool> positive_;
  std::unique_ptr<GradStore<S>> grads_;
};

}  // namespace hybrid
