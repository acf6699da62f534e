// A model's inference weights in a storage type: the Matrix- and Embedding-role tensors of a
// parameter table packed (bf16, f16 or int8 with per-group scales) in one allocation, each
// found by its Param handle. Built from the float values; the float store stays the master.
//
//   WeightStore ws = WeightStore::build(table, values, DType::I8, 32);
//   if (ops::QWeight w = ws.find(param)) ops::qlinear_forward(x, w, bias, y);
#pragma once
#include <algorithm>
#include <cstddef>
#include <string>
#include <utility>
#include <vector>

#include "../core/buffer.hpp"
#include "../ops/qweight.hpp"
#include "param.hpp"

namespace hybrid {

class WeightStore {
 public:
  // Packs every Matrix and Embedding tensor of `table` from `values` (the float store laid
  // out by it). group: int8 columns per scale, 0 = one per row (else 32, which must divide
  // each packed tensor's columns). Throws naming the tensor that cannot be stored.
  static WeightStore build(const ParamTable& table, const float* values, DType dtype, Index group = 0) {
    WeightStore ws = build_each(table, values, [&](const ParamInfo&) { return Choice{dtype, group}; });
    ws.dtype_ = dtype;
    ws.group_ = dtype == DType::I8 ? std::max<Index>(group, 0) : 0;
    return ws;
  }

  // Storage chosen per tensor: choose(entry) gives the type and int8 group of each Matrix /
  // Embedding tensor; F32 leaves it unpacked (it reads the float values). A file whose
  // tensors come in several types (GGUF Q8_0 projections beside F32 ones) keeps each as is.
  using Choice = std::pair<DType, Index>;
  // fill(entry, data, scales) may write a tensor's stored form itself (values exactly as a
  // file holds them: GGUF Q8_0 blocks, an artifact's k-bit integers) and return true; when
  // it returns false the tensor is packed from the float values.
  struct PackFromFloats {
    bool operator()(const ParamInfo&, unsigned char*, float*) const { return false; }
  };
  template <class Choose, class Fill = PackFromFloats>
  static WeightStore build_each(const ParamTable& table, const float* values, Choose&& choose,
                                Fill&& fill = PackFromFloats{}) {
    HYBRID_CHECK(values, "WeightStore::build: no float values to pack");
    WeightStore ws;
    std::size_t at = 0;
    const auto align = [](std::size_t n) { return (n + 63) / 64 * 64; };
    std::vector<const ParamInfo*> packed;
    for (const auto& e : table.entries()) {
      if (e.role != ParamRole::Matrix && e.role != ParamRole::Embedding) continue;
      const auto [d, g] = choose(e);
      if (d == DType::F32) continue;
      if (ws.entries_.empty()) ws.dtype_ = d, ws.group_ = d == DType::I8 ? std::max<Index>(g, 0) : 0;
      Entry en{e.offset, e.rows, e.cols, ops::weight_group(e.name.c_str(), d, e.cols, g), at, 0, d};
      at = align(at + ops::packed_bytes(d, e.rows, e.cols));
      en.scales_at = at;
      at = align(at + sizeof(float) * std::size_t(ops::packed_scales(d, e.rows, e.cols, en.group)));
      ws.entries_.push_back(en);
      packed.push_back(&e);
    }
    ws.buf_ = Buffer<unsigned char>(Index(at));
    for (std::size_t k = 0; k < packed.size(); ++k) {
      const ParamInfo& e = *packed[k];
      const Entry& en = ws.entries_[k];
      unsigned char* data = ws.buf_.data() + en.data_at;
      float* scales = reinterpret_cast<float*>(ws.buf_.data() + en.scales_at);
      if (!fill(e, data, scales))
        ops::pack_weight(e.name.c_str(), values + e.offset, e.rows, e.cols, en.dtype, en.group, data, scales);
    }
    std::sort(ws.entries_.begin(), ws.entries_.end(),
              [](const Entry& a, const Entry& b) { return a.offset < b.offset; });
    return ws;
  }

  // The storage type (of the first packed tensor when they differ; see mixed()).
  DType dtype() const { return dtype_; }
  bool mixed() const {
    for (const auto& e : entries_)
      if (e.dtype != dtype_ || e.group != entries_.front().group) return true;
    return false;
  }
  // int8 columns per scale as requested: 0 = one per row.
  Index group() const { return group_; }
  // Bytes of the one allocation (values, scales and alignment).
  Index bytes() const { return buf_.size(); }
  Index tensors() const { return Index(entries_.size()); }

  // The stored form of the tensor p, or an empty QWeight when p is not packed (norm weights,
  // biases, convolutions, SSM dynamics stay float).
  ops::QWeight find(const Param& p) const {
    const auto it = std::lower_bound(entries_.begin(), entries_.end(), p.offset,
                                     [](const Entry& e, Index off) { return e.offset < off; });
    if (!p.present() || it == entries_.end() || it->offset != p.offset) return {};
    HYBRID_CHECK(it->rows == p.rows && it->cols == p.cols, "WeightStore: the tensor at offset ",
                 p.offset, " is stored as (", it->rows, ", ", it->cols, ") but asked for as (",
                 p.rows, ", ", p.cols, "); the store was built from another parameter table");
    const unsigned char* base = buf_.data();
    return ops::QWeight{it->dtype, it->rows, it->cols, it->group, base + it->data_at,
                        it->dtype == DType::I8 ? reinterpret_cast<const float*>(base + it->scales_at) : nullptr};
  }

 private:
  struct Entry {
    Index offset, rows, cols, group;  // offset: the tensor's place in the float store
    std::size_t data_at, scales_at;   // byte offsets in buf_ (so a copy needs no rebinding)
    DType dtype;
  };
  DType dtype_ = DType::F32;
  Index group_ = 0;
  std::vector<Entry> entries_;  // sorted by offset
  Buffer<unsigned char> buf_;
};

// "row" or "32": how flags and reports name an int8 grouping (other types: "-").
inline std::string weight_group_name(DType d, Index group) {
  if (d != DType::I8) return "-";
  return group <= 0 ? "row" : std::to_string(group);
}

}  // namespace hybrid
