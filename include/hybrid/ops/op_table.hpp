// The op table: one row per op of the CPU reference path, where it lives, its backward and
// the test that checks that backward against finite differences (tests/test_op_table.cpp
// fails for a row without one). CUDA twins in kernels/ use the same names.
#pragma once
#include <array>
#include <string_view>

namespace hybrid::ops {

struct OpRow {
  std::string_view name;
  std::string_view header;   // under include/hybrid/
  std::string_view forward;   // function name
  std::string_view backward;  // function name, empty if none
  std::string_view fd_test;   // doctest case checking the backward (prefix match)
};

inline constexpr std::array<OpRow, 16> op_table{{
    {"linear", "ops/linear.hpp", "linear_forward", "linear_backward", "grad: model"},
    {"embedding", "ops/embedding.hpp", "embedding_forward", "embedding_backward", "grad: embedding with repeated"},
    {"rmsnorm", "ops/norm.hpp", "rmsnorm_forward", "rmsnorm_backward", "grad: rmsnorm and layernorm"},
    {"layernorm", "ops/norm.hpp", "layernorm_forward", "layernorm_backward", "grad: rmsnorm and layernorm"},
    {"gated_rmsnorm", "ops/norm.hpp", "gated_rmsnorm_forward", "gated_rmsnorm_backward", "grad: gated_rmsnorm, per group"},
    {"causal_conv1d", "ops/conv1d.hpp", "causal_conv1d_forward", "causal_conv1d_backward", "grad: causal_conv1d from zero"},
    {"ssd", "ops/ssd.hpp", "ssd_forward (chunked / recurrent)", "ssd_backward (ops/ssd_backward.hpp)", "grad: ssd chunked backward"},
    {"rope", "ops/rope.hpp", "rope_forward", "rope_backward", "grad: RoPE backward matches"},
    {"attention", "ops/attention.hpp", "attention_forward", "attention_backward", "grad: attention MHA and GQA"},
    {"swiglu", "ops/activation.hpp", "swiglu_forward", "swiglu_backward", "grad: swiglu and relu2"},
    {"relu2", "ops/activation.hpp", "relu2_forward", "relu2_backward", "grad: swiglu and relu2"},
    {"dt_softplus", "ops/activation.hpp", "dt_softplus_forward", "dt_softplus_backward", "grad: dt_softplus, clamped"},
    {"silu / sigmoid gate", "autograd/functions.hpp", "ag::silu, ag::sigmoid_gate", "(in the tape node)", "grad: model"},
    {"cross_entropy", "ops/loss.hpp", "cross_entropy_forward", "cross_entropy_backward", "grad: cross_entropy with ignored"},
    {"softcap", "ops/loss.hpp", "softcap_forward", "softcap_backward", "grad: softcap alone"},
    {"elementwise (add, scale, mul, cols, gather)", "autograd/functions.hpp", "ag::add ...", "(in the tape node)", "grad: model"},
}};

}  // namespace hybrid::ops
