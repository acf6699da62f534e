// Rotary position embedding, NeoX / rotate_half pairing: of each head's P dims the first k
// rotate (k = P by default; k < P is partial RoPE, the last P - k dims pass through
// unchanged), dims (i, i + k/2) by pos * theta_i with theta_i = base^(-2i/k), i < k/2.
// Angles are computed in the scalar type S (fp32 for float models, as the peers do). The
// rotation is orthogonal, so the backward is the inverse rotation, done in place: unlike
// the other backwards it does not accumulate, it turns dL/d(output) into dL/d(input) where
// it lies (the pass-through dims' gradient is already the input's).
#pragma once
#include <cmath>

#include "../core/error.hpp"
#include "../core/tensor.hpp"

namespace hybrid::ops {

inline constexpr int kRopeMaxHalf = 512;  // rotated dims up to 1024

namespace detail {
// The one place the angles are computed, shared by forward and backward so that the
// backward's rotation is exactly the transpose of the forward's. sign = +1 rotates by
// +angle, -1 by -angle (the inverse). rot: the rotated dims k of each head (0 = P).
template <class S>
void rope_rotate(View<S> x, int n_heads, int P, Index pos0, double base, S sign, int rot) {
  HYBRID_CHECK(P % 2 == 0, "rope: head dim ", P, " must be even");
  HYBRID_CHECK(x.cols == Index(n_heads) * P, "rope: x has ", x.cols,
               " columns, expected n_heads * P = ", Index(n_heads) * P);
  const int k = rot > 0 ? rot : P;
  HYBRID_CHECK(k % 2 == 0 && k <= P, "rope: the rotated dims ", k,
               " must be even and at most the head dim ", P);
  HYBRID_CHECK(k <= 2 * kRopeMaxHalf, "rope: rotated dims ", k, " exceed ", 2 * kRopeMaxHalf);
  const int half = k / 2;
  S inv_freq[kRopeMaxHalf], c[kRopeMaxHalf], s[kRopeMaxHalf];  // on the stack: no allocation
  for (int i = 0; i < half; ++i)
    inv_freq[i] = S(1) / std::pow(S(base), S(2 * i) / S(k));
  const Index T = x.rows;
  for (Index t = 0; t < T; ++t) {
    const S pos = S(pos0 + t);
    for (int i = 0; i < half; ++i) {
      const S ang = pos * inv_freq[i];
      c[i] = std::cos(ang);
      s[i] = sign * std::sin(ang);
    }
    for (int h = 0; h < n_heads; ++h) {
      S* v = &x(t, static_cast<Index>(h) * P);
      for (int i = 0; i < half; ++i) {
        const S a = v[i], b = v[i + half];
        v[i] = a * c[i] - b * s[i];
        v[i + half] = b * c[i] + a * s[i];
      }
    }
  }
}
}  // namespace detail

// x: (T, n_heads * P), rotated in place; row t has position pos0 + t. rot: the rotated
// dims k of each head, even and <= P (0 = all P).
template <class S>
void rope_forward(View<S> x, int n_heads, int P, Index pos0, double base, int rot = 0) {
  detail::rope_rotate<S>(x, n_heads, P, pos0, base, S(1), rot);
}

// dx: (T, n_heads * P), on entry dL/d(rotated x), on return dL/dx (same arguments as the
// forward). Rotating back by -angle is R^T, the exact adjoint of the forward.
template <class S>
void rope_backward(View<S> dx, int n_heads, int P, Index pos0, double base, int rot = 0) {
  detail::rope_rotate<S>(dx, n_heads, P, pos0, base, S(-1), rot);
}

}  // namespace hybrid::ops
