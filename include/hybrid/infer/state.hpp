// Per-sequence decode state of each mixer kind:
//   Mamba-2:   conv (conv_dim, K) last raw x|B|C inputs, oldest first; ssm (H, P*N)
//   ShortConv: conv (D, L) last B*x values, oldest first
//   Attention: a KV cache of post-RoPE keys and values in f32 or bf16 (a sliding window
//              keeps O(window))
// Mamba-2 and ShortConv state is constant in context length. The sequence also keeps its
// position and its last token (the hashed bigram embedding's previous token).
#pragma once
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <utility>
#include <variant>
#include <vector>

#include "../core/buffer.hpp"
#include "../core/dtype.hpp"
#include "../core/error.hpp"
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

// One of a KV cache's two row buffers: (capacity, cols) values, row-major, stored as S
// (DType::F32: the model's own scalar type, exact) or as bf16 bits (DType::BF16). Grows
// into a new buffer and copies the rows in use: the old and the new buffer are the peak.
template <class S>
class KvRows {
 public:
  KvRows() = default;
  explicit KvRows(DType d) : dtype_(d) {
    HYBRID_CHECK(d == DType::F32 || d == DType::BF16, "KV cache: storage type ", dtype_name(d),
                 " is not supported; use f32 or bf16");
  }

  DType dtype() const { return dtype_; }
  Index rows() const { return cap_; }  // capacity
  Index cols() const { return cols_; }
  Index size() const { return cap_ * cols_; }
  std::size_t bytes() const { return std::size_t(size()) * elem_bytes(); }
  std::size_t elem_bytes() const { return dtype_ == DType::BF16 ? 2 : sizeof(S); }

  // The rows as S (f32 storage) or as bf16 bits (bf16 storage); asking for the other throws.
  const S* data() const {
    HYBRID_CHECK(dtype_ == DType::F32, "KV cache: data() of a bf16 cache; read it with bf16()");
    return f_.data();
  }
  S* data() { return const_cast<S*>(std::as_const(*this).data()); }
  const std::uint16_t* bf16() const {
    HYBRID_CHECK(dtype_ == DType::BF16, "KV cache: bf16() of an f32 cache; read it with data()");
    return h_.data();
  }
  // Row r, column c as S, whatever the storage.
  S at(Index r, Index c) const {
    return dtype_ == DType::BF16 ? S(bf16_to_f32(h_.data()[r * cols_ + c])) : f_.data()[r * cols_ + c];
  }

  // A buffer of cap rows of cols holding the first `keep` rows of this one.
  void regrow(Index cap, Index cols, Index keep) {
    HYBRID_CHECK(cols_ == 0 || keep == 0 || cols == cols_, "KV cache: rows of ", cols,
                 " columns appended to a cache of ", cols_);
    const std::size_t n = std::size_t(keep * cols) * elem_bytes();
    if (dtype_ == DType::BF16) {
      Buffer<std::uint16_t> nb(cap * cols);
      if (n) std::memcpy(nb.data(), h_.data(), n);
      h_ = std::move(nb);
    } else {
      Buffer<S> nb(cap * cols);
      if (n) std::memcpy(nb.data(), f_.data(), n);
      f_ = std::move(nb);
    }
    cap_ = cap;
    cols_ = cols;
  }
  // Rows [r0, r0 + src.rows) = src, rounded to bf16 for a bf16 cache.
  void write(Index r0, CView<S> src) {
    for (Index i = 0; i < src.rows; ++i) {
      const S* in = src.data + i * src.ld;
      if (dtype_ == DType::BF16) {
        std::uint16_t* out = h_.data() + (r0 + i) * cols_;
        for (Index c = 0; c < cols_; ++c) out[c] = f32_to_bf16(float(in[c]));
      } else {
        std::memcpy(f_.data() + (r0 + i) * cols_, in, std::size_t(cols_) * sizeof(S));
      }
    }
  }
  // Rows [dst, dst + n) = rows [src, src + n) (the ranges may overlap).
  void move_rows(Index dst, Index src, Index n) {
    const std::size_t b = std::size_t(n * cols_) * elem_bytes(), e = std::size_t(cols_) * elem_bytes();
    unsigned char* p = dtype_ == DType::BF16 ? reinterpret_cast<unsigned char*>(h_.data())
                                             : reinterpret_cast<unsigned char*>(f_.data());
    if (b) std::memmove(p + dst * e, p + src * e, b);
  }

 private:
  DType dtype_ = DType::F32;
  Index cap_ = 0, cols_ = 0;
  Buffer<S> f_;              // (cap, cols) when f32
  Buffer<std::uint16_t> h_;  // (cap, cols) when bf16
};

// A sequence's keys and values for one attention layer, rows [0, len) in use, row 0 at
// absolute position start_pos. The storage type is chosen when the cache is made (a
// load-time option): f32 keeps S exactly, bf16 halves the bytes a decode step reads.
template <class S>
struct KvCache {
  KvRows<S> k, v;       // (capacity, Hkv*hd)
  Index len = 0;        // rows in use
  Index start_pos = 0;  // absolute position of row 0
  int window = 0;       // 0: keep everything

  KvCache() = default;
  explicit KvCache(DType d) : k(d), v(d) {}

  DType dtype() const { return k.dtype(); }
  Index next_pos() const { return start_pos + len; }
  std::size_t bytes() const { return k.bytes() + v.bytes(); }

  // Room for n rows before the next growth (a pre-sized cache: decode then allocates
  // nothing). cols: Hkv*hd.
  void reserve(Index n, Index cols) {
    if (n <= k.rows()) return;
    k.regrow(n, cols, len);
    v.regrow(n, cols, len);
  }

  // Appends T rows in place, growing geometrically when full.
  void append(CView<S> kn, CView<S> vn) {
    HYBRID_CHECK(kn.rows == vn.rows && kn.cols == vn.cols, "KV cache: keys (", kn.rows, ", ",
                 kn.cols, ") and values (", vn.rows, ", ", vn.cols, ") differ in shape");
    HYBRID_CHECK(len == 0 || kn.cols == k.cols(), "KV cache: rows of ", kn.cols,
                 " columns appended to a cache of ", k.cols());
    const Index need = len + kn.rows;
    if (need > k.rows() || kn.cols != k.cols()) {
      const Index cap = need > k.rows() ? std::max({need, Index(16), 2 * k.rows()}) : k.rows();
      k.regrow(cap, kn.cols, len);
      v.regrow(cap, vn.cols, len);
    }
    k.write(len, kn);
    v.write(len, vn);
    len = need;
  }
  // With a window, drop rows no future query can see once the buffer holds two windows,
  // so memory stays O(window) and the work is amortised O(1) per token.
  void trim() {
    if (window <= 0 || len <= 2 * Index(window)) return;
    const Index keep = window, drop = len - keep;
    k.move_rows(0, drop, keep);
    v.move_rows(0, drop, keep);
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
  int last_token = -1;                // the last of them (-1 before any): the previous token
                                      // of the next call's first, for the bigram embedding
};

}  // namespace hybrid
