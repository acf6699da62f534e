// Rotary position embedding, NeoX / rotate_half pairing: dims (i, i + hd/2) rotate by
// pos * theta_i with theta_i = base^(-2i/hd). Angles are computed in the scalar type S
// (fp32 for float models, as the peers do).
#pragma once
#include <cmath>

#include "../core/tensor.hpp"

namespace hybrid::ops {

// x: (T, n_heads * hd), rotated in place; row t has position pos0 + t.
template <class S>
void rope_forward(Ref<S> x, int n_heads, int hd, Index pos0, double base) {
  const int half = hd / 2;
  Vec<S> inv_freq(half);
  for (int i = 0; i < half; ++i)
    inv_freq[i] = S(1) / std::pow(S(base), S(2 * i) / S(hd));
  const Index T = x.rows();
  Vec<S> c(half), s(half);
  for (Index t = 0; t < T; ++t) {
    const S pos = S(pos0 + t);
    for (int i = 0; i < half; ++i) {
      const S ang = pos * inv_freq[i];
      c[i] = std::cos(ang);
      s[i] = std::sin(ang);
    }
    for (int h = 0; h < n_heads; ++h) {
      S* v = &x(t, static_cast<Index>(h) * hd);
      for (int i = 0; i < half; ++i) {
        const S a = v[i], b = v[i + half];
        v[i] = a * c[i] - b * s[i];
        v[i + half] = b * c[i] + a * s[i];
      }
    }
  }
}

}  // namespace hybrid::ops
