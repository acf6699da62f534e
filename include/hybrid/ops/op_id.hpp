// Op ids: every tape node names the op it differentiates, so that one table of op cases
// (autograd/op_cases.hpp) can be checked against what the models really record.
#pragma once
#include <cstdint>
#include <string_view>

namespace hybrid {

enum class OpId : std::uint8_t {
  Linear,
  Embedding,
  RmsNorm,
  LayerNorm,
  GatedRmsNorm,
  CausalConv1d,
  Ssd,
  Rope,
  Attention,
  Swiglu,
  Relu2,
  DtSoftplus,
  Silu,
  SigmoidGate,
  Add,
  Scale,
  Mul,
  ScaleRows,
  GatherRows,
  Softcap,
  CrossEntropy,
  HeadLoss,    // LM head + cross-entropy by row chunks, no (R, V) logits
  Checkpoint,  // a block recomputed in backward (gradient checkpointing)
  KdLoss,      // LM head + distillation loss (cross-entropy + KL to a teacher) by row chunks
  Mse,         // mean squared error of two activations (feature distillation)
  kCount
};

inline constexpr int kOpCount = int(OpId::kCount);

inline constexpr std::string_view op_name(OpId op) {
  constexpr std::string_view names[] = {
      "linear",     "embedding", "rmsnorm", "layernorm",  "gated_rmsnorm", "causal_conv1d",
      "ssd",        "rope",      "attention", "swiglu",   "relu2",         "dt_softplus",
      "silu",       "sigmoid_gate", "add",  "scale",      "mul",           "scale_rows",
      "gather_rows", "softcap",  "cross_entropy", "head_loss", "checkpoint", "kd_loss",
      "mse"};
  static_assert(sizeof(names) / sizeof(names[0]) == kOpCount, "op_name: one name per OpId");
  return int(op) < kOpCount ? names[int(op)] : std::string_view("?");
}

}  // namespace hybrid
