// A bump arena for one step's activations, saved tensors and tape nodes. rewind() keeps the
// memory, so after the first step of a fixed shape nothing is allocated; when a step outgrew
// the arena, rewind() merges the blocks into one of the high-water size.
#pragma once
#include <algorithm>
#include <cstddef>
#include <cstdlib>
#include <memory>
#include <new>
#include <vector>

namespace hybrid {

class Arena {
 public:
  explicit Arena(std::size_t initial = std::size_t(1) << 20) : initial_(initial) {}

  void* alloc(std::size_t bytes, std::size_t align = 64) {
    bytes = std::max<std::size_t>(bytes, 1);
    if (!blocks_.empty()) {
      Block& b = blocks_[cur_];
      const std::size_t off = (b.used + align - 1) / align * align;
      if (off + bytes <= b.size) {
        b.used = off + bytes;
        used_ += bytes;
        high_water_ = std::max(high_water_, used_);
        return b.data.get() + off;
      }
      // Try the next retained block before allocating a new one.
      if (cur_ + 1 < blocks_.size()) {
        ++cur_;
        return alloc(bytes, align);
      }
    }
    add_block(std::max(bytes + align, blocks_.empty() ? initial_ : 2 * blocks_.back().size));
    return alloc(bytes, align);
  }

  template <class T>
  T* alloc_array(std::size_t n) {
    return static_cast<T*>(alloc(n * sizeof(T), std::max<std::size_t>(64, alignof(T))));
  }

  // A position to come back to: release(mark()) frees everything allocated since, so an
  // op's workspace is reused by the next op instead of piling up until rewind().
  struct Mark {
    std::size_t block = 0, used = 0, total = 0;
  };
  Mark mark() const { return {cur_, blocks_.empty() ? 0 : blocks_[cur_].used, used_}; }
  void release(const Mark& m) {
    if (blocks_.empty()) return;
    for (std::size_t b = m.block + 1; b < blocks_.size(); ++b) blocks_[b].used = 0;
    cur_ = m.block;
    blocks_[cur_].used = m.used;
    used_ = m.total;
  }

  void rewind() {
    if (blocks_.size() > 1) {  // merge: next step fits in one block
      std::size_t total = 0;
      for (auto& b : blocks_) total += b.size;
      blocks_.clear();
      add_block(total);
    }
    for (auto& b : blocks_) b.used = 0;
    cur_ = 0;
    used_ = 0;
  }

  std::size_t capacity() const {
    std::size_t n = 0;
    for (const auto& b : blocks_) n += b.size;
    return n;
  }
  std::size_t high_water() const { return high_water_; }
  // Number of system allocations so far (tests check it stops growing after one step).
  std::size_t allocations() const { return allocations_; }

 private:
  struct Free {
    void operator()(std::byte* p) const { std::free(p); }
  };
  struct Block {
    std::unique_ptr<std::byte[], Free> data;
    std::size_t size = 0, used = 0;
  };
  void add_block(std::size_t size) {
    size = (size + 63) / 64 * 64;
    auto* p = static_cast<std::byte*>(std::aligned_alloc(64, size));
    if (!p) throw std::bad_alloc();
    blocks_.push_back(Block{std::unique_ptr<std::byte[], Free>(p), size, 0});
    cur_ = blocks_.size() - 1;
    ++allocations_;
  }

  std::size_t initial_;
  std::vector<Block> blocks_;
  std::size_t cur_ = 0, used_ = 0, high_water_ = 0, allocations_ = 0;
};

}  // namespace hybrid
