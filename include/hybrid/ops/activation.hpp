// Scalar activations shared by the layers: SiLU, softplus (PyTorch's threshold at 20),
// sigmoid, ReLU².
#pragma once
#include <cmath>

#include "../core/device.hpp"

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

}  // namespace hybrid::ops
