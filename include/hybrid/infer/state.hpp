// Per-sequence decode state of each mixer kind:
//   Mamba-2:   conv (conv_dim, K) last raw x|B|C inputs, oldest first; ssm (H, P*N)
//   ShortConv: conv (D, L) last B*x values, oldest first
//   Attention: a KV cache of post-RoPE keys and values (a sliding window keeps O(window))
// Mamba-2 and ShortConv state is constant in context length.
#pragma once
#include <algorithm>
#include <variant>
#include <vector>

#include "../core/tensor.hpp"

namespace hybrid {

template <class S>
struct Mamba2State {
  Mat<S> conv;  // (conv_dim, K)
  Mat<S> ssm;   // (H, P*N)
};

template <class S>
struct ShortConvState {
  Mat<S> conv;  // (D, L)
};

template <class S>
struct KvCache {
  Mat<S> k, v;          // (capacity, Hkv*hd); rows [0, len) valid
  Index len = 0;        // rows in use
  Index start_pos = 0;  // absolute position of row 0
  int window = 0;       // 0: keep everything

  Index next_pos() const { return start_pos + len; }

  // Room for n rows before the next growth (a pre-sized cache: decode then allocates
  // nothing). cols: Hkv*hd.
  void reserve(Index n, Index cols) {
    if (n <= k.rows()) return;
    k.conservativeResize(n, cols);
    v.conservativeResize(n, cols);
  }

  // Appends T rows, growing geometrically.
  void append(CView<S> kn, CView<S> vn) {
    const Index need = len + kn.rows;
    if (need > k.rows()) {
      const Index cap = std::max<Index>(need, std::max<Index>(16, 2 * k.rows()));
      k.conservativeResize(cap, kn.cols);
      v.conservativeResize(cap, vn.cols);
    }
    k.middleRows(len, kn.rows) = emap(kn);
    v.middleRows(len, vn.rows) = emap(vn);
    len = need;
  }
  // With a window, drop rows no future query can see once the buffer holds two windows,
  // so memory stays O(window) and the work is amortised O(1) per token.
  void trim() {
    if (window <= 0 || len <= 2 * Index(window)) return;
    const Index keep = window, drop = len - keep;
    // drop > keep: the rows moved and their destination do not overlap (no temporary).
    k.topRows(keep) = k.middleRows(drop, keep);
    v.topRows(keep) = v.middleRows(drop, keep);
    len = keep;
    start_pos += drop;
  }
};

template <class S>
using LayerState = std::variant<Mamba2State<S>, KvCache<S>, ShortConvState<S>>;

// Everything a sequence carries between calls.
template <class S>
struct SequenceState {
  std::vector<LayerState<S>> layers;  // one per block
  Index pos = 0;                      // tokens consumed so far
};

}  // namespace hybrid
