// The op table: one row per op of the CPU reference path, with where it lives and whether
// it has a backward yet. Training work fills in the backward column; a test then fails for
// any op without one. CUDA twins in kernels/ use the same names.
#pragma once
#include <array>
#include <string_view>

namespace hybrid::ops {

struct OpRow {
  std::string_view name;
  std::string_view header;   // under include/hybrid/
  std::string_view forward;  // function name
  bool has_backward;
};

inline constexpr std::array<OpRow, 12> op_table{{
    {"linear", "ops/linear.hpp", "linear_forward", false},
    {"embedding", "runtime_model.hpp", "RuntimeModel::forward", false},
    {"rmsnorm", "ops/norm.hpp", "rmsnorm_forward", false},
    {"layernorm", "ops/norm.hpp", "layernorm_forward", false},
    {"gated_rmsnorm", "ops/norm.hpp", "gated_rmsnorm_forward", false},
    {"causal_conv1d", "ops/conv1d.hpp", "causal_conv1d_forward", false},
    {"ssd_chunked", "ops/ssd.hpp", "ssd_chunked", false},
    {"ssd_recurrent", "ops/ssd.hpp", "ssd_recurrent", false},
    {"rope", "ops/rope.hpp", "rope_forward", false},
    {"attention", "ops/attention.hpp", "attention_forward", false},
    {"activations", "ops/activation.hpp", "silu / softplus / sigmoid / relu2", false},
    {"lm_head", "runtime_model.hpp", "RuntimeModel::head (norm, divisor, soft-cap)", false},
}};

}  // namespace hybrid::ops
