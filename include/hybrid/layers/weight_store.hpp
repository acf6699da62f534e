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
    HYBRID_CHECK(values, "WeightStore::build: no float values to pack");
    WeightStore ws;
    ws.dtype_ = dtype;
    ws.group_ = dtype == DType::I8 ? std::max<Index>(group, 0) : 0;
    std::size_t at = 0;
    const auto align = [](std::size_t n) { return (n + 63) / 64 * 64; };
    for (const auto& e : table.entries()) {
      if (e.role != ParamRole::Matrix && e.role != ParamRole::Embedding) continue;
      Entry en{e.offset, e.rows, e.cols, ops::weight_group(e.name.c_str(), dtype, e.cols, group), at, 0};
      at = align(at + ops::packed_bytes(dtype, e.rows, e.cols));
      en.scales_at = at;
      at = align(at + sizeof(float) * std::size_t(ops::packed_scales(dtype, e.rows, e.cols, en.group)));
      ws.entries_.push_back(en);
    }
    ws.buf_ = Buffer<unsigned char>(Index(at));
    std::size_t k = 0;
    for (const auto& e : table.entries()) {
      if (e.role != ParamRole::Matrix && e.role != ParamRole::Embedding) continue;
      const Entry& en = ws.entries_[k++];
      ops::pack_weight(e.name.c_str(), values + e.offset, e.rows, e.cols, dtype, en.group,
                       ws.buf_.data() + en.data_at,
                       reinterpret_cast<float*>(ws.buf_.data() + en.scales_at));
    }
    std::sort(ws.entries_.begin(), ws.entries_.end(),
              [](const Entry& a, const Entry& b) { return a.offset < b.offset; });
    return ws;
  }

  DType dtype() const { return dtype_; }
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
    return ops::QWeight{dtype_, it->rows, it->cols, it->group, base + it->data_at,
                        dtype_ == DType::I8 ? reinterpret_cast<const float*>(base + it->scales_at) : nullptr};
  }

 private:
  struct Entry {
    Index offset, rows, cols, group;  // offset: the tensor's place in the float store
    std::size_t data_at, scales_at;   // byte offsets in buf_ (so a copy needs no rebinding)
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
