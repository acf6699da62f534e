// Parameters: every tensor is a row-major Mat (1-D tensors are stored as one row) with a
// name and a role. Layers expose them through visit(f) with f(name, Mat&, ParamRole);
// loading, saving, counting, initialisation and optimiser groups all go through it.
#pragma once
#include <cmath>
#include <cstdint>
#include <string>

#include "../core/rng.hpp"
#include "../core/tensor.hpp"

namespace hybrid {

enum class ParamRole {
  Matrix,     // 2-D weight of a projection (Muon candidates, weight decay)
  Embedding,  // token embedding / untied LM head
  Scalar,     // norm weights, biases, conv weights and biases
  Dynamics,   // Mamba-2 A_log, dt_bias, D: no weight decay, own learning rate
};

inline const char* role_name(ParamRole r) {
  switch (r) {
    case ParamRole::Matrix: return "matrix";
    case ParamRole::Embedding: return "embedding";
    case ParamRole::Scalar: return "scalar";
    case ParamRole::Dynamics: return "dynamics";
  }
  return "?";
}

namespace init {

// PyTorch's default for nn.Linear / nn.Conv1d weights (kaiming_uniform with a = sqrt(5)):
// U(-1/sqrt(fan_in), 1/sqrt(fan_in)), optionally divided by `div`.
template <class S>
void uniform_fan_in(Mat<S>& w, Index fan_in, std::uint64_t seed, double div = 1) {
  Rng rng(seed);
  const double bound = 1.0 / std::sqrt(double(fan_in));
  for (Index i = 0; i < w.size(); ++i) w.data()[i] = S(rng.uniform(-bound, bound) / div);
}

template <class S>
void normal(Mat<S>& w, double std, std::uint64_t seed) {
  Rng rng(seed);
  for (Index i = 0; i < w.size(); ++i) w.data()[i] = S(rng.normal() * std);
}

}  // namespace init

// The string "prefix.name" for parameter names.
inline std::string join_name(const std::string& prefix, const char* name) {
  return prefix.empty() ? std::string(name) : prefix + "." + name;
}

}  // namespace hybrid
