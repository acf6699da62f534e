// Parameters: one table (name, offset, shape, role) and one allocation per model. Layers
// declare their tensors in the table when they are built and keep only a Param handle (an
// offset and a shape, no pointer), so a model can be copied, moved or put on another device
// without rebinding anything; gradients and optimiser state mirror the table, each one
// allocation (llm.c's layout). 1-D tensors are one row.
//
//   ParamTable tab;
//   Param w = tab.add("blocks.0.mixer.in_proj.weight", 3 * D, D, ParamRole::Matrix);
//   ParamStore<float> store(tab);          // one zeroed buffer of tab.total() values
//   emap(store.view(w))                    // the tensor as an Eigen matrix
#pragma once
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "../core/buffer.hpp"
#include "../core/error.hpp"
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

// A layer's handle on one tensor: where it lies in the store and its shape. An absent
// optional tensor (a bias the spec turns off) is the default handle, size 0.
struct Param {
  Index offset = -1;
  Index rows = 0, cols = 0;
  Index size() const { return rows * cols; }
  bool present() const { return offset >= 0; }
};

struct ParamInfo {
  std::string name;
  Index offset, rows, cols;
  ParamRole role;
  Index size() const { return rows * cols; }
};

// Tensors in declaration order; each starts on a multiple of kAlign values, so that every
// tensor of every store (values, gradients, optimiser moments) is 64-byte aligned.
class ParamTable {
 public:
  static constexpr Index kAlign = 16;

  Param add(std::string name, Index rows, Index cols, ParamRole role) {
    HYBRID_CHECK(rows >= 0 && cols >= 0, "parameter '", name, "': shape (", rows, ", ", cols,
                 ") has a negative dimension");
    for (const auto& e : entries_)
      HYBRID_CHECK(e.name != name, "parameter '", name, "' is declared twice");
    const Param p{total_, rows, cols};
    entries_.push_back(ParamInfo{std::move(name), total_, rows, cols, role});
    total_ += (rows * cols + kAlign - 1) / kAlign * kAlign;
    return p;
  }
  const std::vector<ParamInfo>& entries() const { return entries_; }
  std::size_t size() const { return entries_.size(); }
  const ParamInfo& operator[](std::size_t i) const { return entries_[i]; }
  // Values of one store (with the alignment padding, which stays zero).
  Index total() const { return total_; }
  // Parameters proper (no padding).
  Index count() const {
    Index n = 0;
    for (const auto& e : entries_) n += e.size();
    return n;
  }

 private:
  std::vector<ParamInfo> entries_;
  Index total_ = 0;
};

// One allocation shaped by a table: a model's values, its gradients, an optimiser moment.
template <class S, class Dev = Cpu>
class ParamStore {
 public:
  ParamStore() = default;
  // Zeroed; a large store (a mapping of its own) costs no memory until its pages are written.
  explicit ParamStore(const ParamTable& t) : buf_(t.total()) {
    if (!buf_.mapped()) buf_.zero();
  }

  Index total() const { return buf_.size(); }
  S* data() { return buf_.data(); }
  const S* data() const { return buf_.data(); }
  View<S, Dev> view(const Param& p) {
    return p.present() ? View<S, Dev>(buf_.data() + p.offset, p.rows, p.cols) : View<S, Dev>();
  }
  View<const S, Dev> view(const Param& p) const {
    return p.present() ? View<const S, Dev>(buf_.data() + p.offset, p.rows, p.cols)
                       : View<const S, Dev>();
  }
  View<S, Dev> view(const ParamInfo& e) { return View<S, Dev>(buf_.data() + e.offset, e.rows, e.cols); }
  View<const S, Dev> view(const ParamInfo& e) const {
    return View<const S, Dev>(buf_.data() + e.offset, e.rows, e.cols);
  }
  void zero() { buf_.zero(); }
  // Gives the pages wholly inside tensor e back to the system (Buffer::release): its values
  // are gone. Returns the bytes given back.
  std::size_t release(const ParamInfo& e) { return buf_.release(e.offset, e.offset + e.size()); }

 private:
  Buffer<S, Dev> buf_;
};

namespace init {

// PyTorch's default for nn.Linear / nn.Conv1d weights (kaiming_uniform with a = sqrt(5)):
// U(-1/sqrt(fan_in), 1/sqrt(fan_in)), optionally divided by `div`.
template <class S>
void uniform_fan_in(View<S> w, Index fan_in, std::uint64_t seed, double div = 1) {
  Rng rng(seed);
  const double bound = 1.0 / std::sqrt(double(fan_in));
  for (Index r = 0; r < w.rows; ++r)
    for (Index c = 0; c < w.cols; ++c) w(r, c) = S(rng.uniform(-bound, bound) / div);
}

template <class S>
void normal(View<S> w, double std, std::uint64_t seed) {
  Rng rng(seed);
  for (Index r = 0; r < w.rows; ++r)
    for (Index c = 0; c < w.cols; ++c) w(r, c) = S(rng.normal() * std);
}

template <class S>
void fill(View<S> w, S value) {
  for (Index r = 0; r < w.rows; ++r)
    for (Index c = 0; c < w.cols; ++c) w(r, c) = value;
}

}  // namespace init

// The string "prefix.name" for parameter names.
inline std::string join_name(const std::string& prefix, const char* name) {
  return prefix.empty() ? std::string(name) : prefix + "." + name;
}

}  // namespace hybrid
