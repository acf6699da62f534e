// The token streams an evaluation reads window by window: ids held in memory (an encoded
// text), or parameter-golf shards read in place from their memory maps, one stream however
// many files. Evaluators read only the windows they score, so a stream of shards is never
// copied whole.
#pragma once
#include <algorithm>
#include <string>
#include <utility>
#include <vector>

#include "../core/error.hpp"
#include "../core/tensor.hpp"
#include "../data/shards.hpp"

namespace hybrid::eval {

class TokenStream {
 public:
  virtual ~TokenStream() = default;
  virtual Index size() const = 0;  // tokens
  // ids [start, start + count) → out (count ints).
  virtual void read(Index start, Index count, int* out) const = 0;
  // For messages and reports: where the ids come from.
  virtual std::string describe() const = 0;
};

// Ids in memory.
class IdStream final : public TokenStream {
 public:
  IdStream(std::vector<int> ids, std::string what) : ids_(std::move(ids)), what_(std::move(what)) {}

  Index size() const override { return Index(ids_.size()); }
  void read(Index start, Index count, int* out) const override {
    HYBRID_CHECK(start >= 0 && count >= 0 && start + count <= size(), what_, ": read of [", start,
                 ", ", start + count, ") outside its ", size(), " tokens");
    std::copy(ids_.begin() + start, ids_.begin() + start + count, out);
  }
  std::string describe() const override { return what_; }
  const std::vector<int>& ids() const { return ids_; }

 private:
  std::vector<int> ids_;
  std::string what_;
};

// Parameter-golf shards (data/shards.hpp) as one stream, in the order given; each entry a
// path or a glob pattern expanded in sorted order. A read may span the end of one shard and
// the start of the next.
class ShardStream final : public TokenStream {
 public:
  explicit ShardStream(const std::vector<std::string>& entries) {
    HYBRID_CHECK(!entries.empty(), "ShardStream: no shard files given");
    for (auto& p : data::detail::expand_paths(entries, "shard")) shards_.emplace_back(p);
    start_.push_back(0);
    for (const auto& r : shards_) start_.push_back(start_.back() + r.size());
  }

  Index size() const override { return start_.back(); }
  void read(Index start, Index count, int* out) const override {
    HYBRID_CHECK(start >= 0 && count >= 0 && start + count <= size(), "ShardStream: read of [",
                 start, ", ", start + count, ") outside its ", size(), " tokens");
    std::size_t k = std::size_t(std::upper_bound(start_.begin(), start_.end(), start) - start_.begin() - 1);
    while (count > 0) {
      const Index off = start - start_[k], take = std::min(count, shards_[k].size() - off);
      shards_[k].read(off, take, out);
      out += take;
      start += take;
      count -= take;
      ++k;
    }
  }
  std::string describe() const override {
    return shards_.size() == 1 ? "shard '" + shards_[0].path() + "'"
                               : std::to_string(shards_.size()) + " shards ('" + shards_[0].path() + "', ...)";
  }
  const std::vector<data::ShardReader>& shards() const { return shards_; }

 private:
  std::vector<data::ShardReader> shards_;
  std::vector<Index> start_;  // start_[k]: stream offset of shard k; start_.back() = size()
};

}  // namespace hybrid::eval
