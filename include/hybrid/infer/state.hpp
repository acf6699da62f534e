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
#include "../ops/kv_span.hpp"

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

// One of a KV cache's two buffers: `heads` blocks of (capacity, head_dim) values, head-major
// (each head's rows contiguous, so decode attention streams one head's keys instead of
// striding across every head's), stored as S (DType::F32: the model's own scalar type, exact)
// or as bf16 bits (DType::BF16). Row r, column c = head c / head_dim, dim c % head_dim. Grows
// into a new buffer and copies the rows in use: the old and the new buffer are the peak.
template <class S>
class KvRows {
 public:
  KvRows() = default;
  KvRows(DType d, int heads, int head_dim) : dtype_(d), heads_(heads), hd_(head_dim) {
    HYBRID_CHECK(d == DType::F32 || d == DType::BF16, "KV cache: storage type ", dtype_name(d),
                 " is not supported; use f32 or bf16");
    HYBRID_CHECK(heads > 0 && head_dim > 0, "KV cache: (heads, head_dim) = (", heads, ", ", head_dim,
                 ") must both be positive");
  }

  DType dtype() const { return dtype_; }
  Index rows() const { return cap_; }  // capacity
  Index cols() const { return Index(heads_) * hd_; }
  int heads() const { return heads_; }
  int head_dim() const { return hd_; }
  Index row_stride() const { return hd_; }           // between a head's consecutive rows
  Index head_stride() const { return cap_ * hd_; }   // between heads' first rows
  Index size() const { return cap_ * cols(); }
  std::size_t bytes() const { return std::size_t(size()) * elem_bytes(); }
  std::size_t elem_bytes() const { return dtype_ == DType::BF16 ? 2 : sizeof(S); }

  // The values as S (f32 storage) or as bf16 bits (bf16 storage); asking for the other throws.
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
    const Index i = index(r, c);
    return dtype_ == DType::BF16 ? S(bf16_to_f32(h_.data()[i])) : f_.data()[i];
  }

  // A buffer of cap rows holding the first `keep` rows of this one.
  void regrow(Index cap, Index keep) {
    HYBRID_CHECK(heads_ > 0, "KV cache: no layout; make it with KvCache(dtype, heads, head_dim) or "
                 "the attention layer's make_state");
    HYBRID_CHECK(keep <= cap_ && keep <= cap, "KV cache: keeping ", keep, " rows of ", cap_, " in ", cap);
    const std::size_t e = elem_bytes(), n = std::size_t(keep * hd_) * e;
    const auto move_heads = [&](auto& buf, auto tag) {
      using T = decltype(tag);
      Buffer<T> nb(cap * cols());
      for (int h = 0; h < heads_ && n; ++h)
        std::memcpy(nb.data() + Index(h) * cap * hd_, buf.data() + Index(h) * cap_ * hd_, n);
      buf = std::move(nb);
    };
    if (dtype_ == DType::BF16) move_heads(h_, std::uint16_t{});
    else move_heads(f_, S{});
    cap_ = cap;
  }
  // Rows [r0, r0 + src.rows) = src (rows of heads * head_dim), rounded to bf16 for a bf16 cache.
  void write(Index r0, CView<S> src) {
    for (int h = 0; h < heads_; ++h) {
      const Index base = Index(h) * cap_ * hd_;
      for (Index i = 0; i < src.rows; ++i) {
        const S* in = src.data + i * src.ld + Index(h) * hd_;
        if (dtype_ == DType::BF16) {
          std::uint16_t* out = h_.data() + base + (r0 + i) * hd_;
          for (int c = 0; c < hd_; ++c) out[c] = f32_to_bf16(float(in[c]));
        } else {
          std::memcpy(f_.data() + base + (r0 + i) * hd_, in, std::size_t(hd_) * sizeof(S));
        }
      }
    }
  }
  // Rows [dst, dst + n) = rows [src, src + n) of every head (the ranges may overlap).
  void move_rows(Index dst, Index src, Index n) {
    const std::size_t e = elem_bytes(), b = std::size_t(n * hd_) * e;
    unsigned char* p = dtype_ == DType::BF16 ? reinterpret_cast<unsigned char*>(h_.data())
                                             : reinterpret_cast<unsigned char*>(f_.data());
    for (int h = 0; h < heads_ && b; ++h) {
      unsigned char* head = p + std::size_t(Index(h) * cap_ * hd_) * e;
      std::memmove(head + std::size_t(dst * hd_) * e, head + std::size_t(src * hd_) * e, b);
    }
  }

 private:
  Index index(Index r, Index c) const { return (c / hd_) * cap_ * hd_ + r * hd_ + c % hd_; }

  DType dtype_ = DType::F32;
  int heads_ = 0, hd_ = 0;
  Index cap_ = 0;
  Buffer<S> f_;              // (heads, cap, P) when f32
  Buffer<std::uint16_t> h_;  // (heads, cap, P) when bf16
};

// A sequence's keys and values for one attention layer, rows [0, len) in use, row 0 at
// absolute position start_pos, each head's rows contiguous (KvRows). The storage type is
// chosen when the cache is made (a load-time option): f32 keeps S exactly, bf16 halves the
// bytes a decode step reads.
template <class S>
struct KvCache {
  KvRows<S> k, v;       // (heads, capacity, head_dim) each
  Index len = 0;        // rows in use
  Index start_pos = 0;  // absolute position of row 0
  int window = 0;       // 0: keep everything

  KvCache() = default;
  KvCache(DType d, int heads, int head_dim) : k(d, heads, head_dim), v(d, heads, head_dim) {}

  DType dtype() const { return k.dtype(); }
  Index next_pos() const { return start_pos + len; }
  std::size_t bytes() const { return k.bytes() + v.bytes(); }

  // The rows in use as decode attention reads them (valid until the next append or trim).
  ops::KvSpan<S> span() const {
    ops::KvSpan<S> s;
    if (dtype() == DType::BF16) s.kh = k.bf16(), s.vh = v.bf16();
    else s.k = k.data(), s.v = v.data();
    s.len = len;
    s.kpos0 = start_pos;
    s.ld = k.row_stride();
    s.hs = k.head_stride();
    return s;
  }

  // Room for n rows before the next growth (a pre-sized cache: decode then allocates nothing).
  void reserve(Index n) {
    if (n <= k.rows()) return;
    k.regrow(n, len);
    v.regrow(n, len);
  }

  // Appends T rows of heads * head_dim in place, growing geometrically when full.
  void append(CView<S> kn, CView<S> vn) {
    HYBRID_CHECK(kn.rows == vn.rows && kn.cols == vn.cols, "KV cache: keys (", kn.rows, ", ",
                 kn.cols, ") and values (", vn.rows, ", ", vn.cols, ") differ in shape");
    HYBRID_CHECK(k.heads() > 0, "KV cache: no layout; make it with KvCache(dtype, heads, head_dim) or "
                 "the attention layer's make_state");
    HYBRID_CHECK(kn.cols == k.cols(), "KV cache: rows of ", kn.cols, " columns appended to a cache of ",
                 k.heads(), " heads x ", k.head_dim(), " = ", k.cols());
    const Index need = len + kn.rows;
    if (need > k.rows()) reserve(std::max({need, Index(16), 2 * k.rows()}));
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
