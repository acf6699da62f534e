// Parameter-golf token shards: the file format, an atomic writer, a validated mmap reader,
// a source that streams them, and byte-level shards from a text file.
// Shard I/O uses POSIX (open/mmap/fsync/rename/glob).
#pragma once
#include <fcntl.h>
#include <glob.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <limits>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "../core/atomic_file.hpp"
#include "../infer/tokenizer.hpp"
#include "source.hpp"

namespace hybrid::data {

// Parameter-golf token shards: a header of 256 little-endian int32 ([0] = 20240520 magic,
// [1] = 1 version, [2] = n_tokens, the rest 0), then n_tokens little-endian uint16.
inline constexpr std::int32_t kShardMagic = 20240520;
inline constexpr std::int32_t kShardVersion = 1;
inline constexpr Index kShardHeaderBytes = 256 * 4;

namespace detail {
inline std::string errno_text() { return std::strerror(errno); }
}  // namespace detail

// Writes path atomically (core/atomic_file.hpp), so a reader never sees a half-written shard.
inline void write_shard(const std::string& path, std::span<const std::uint16_t> tokens) {
  HYBRID_CHECK(tokens.size() <= std::size_t(std::numeric_limits<std::int32_t>::max()),
               "write_shard: '", path, "': ", tokens.size(),
               " tokens exceed the int32 n_tokens field");
  unsigned char header[kShardHeaderBytes] = {};
  const std::int32_t fields[3] = {kShardMagic, kShardVersion, std::int32_t(tokens.size())};
  for (int f = 0; f < 3; ++f)
    for (int k = 0; k < 4; ++k) header[4 * f + k] = (std::uint32_t(fields[f]) >> (8 * k)) & 0xFF;

  write_file_atomic(path, "write_shard: '" + path + "'", [&](AtomicFile& f) {
    f.write(header, sizeof(header));
    if constexpr (std::endian::native == std::endian::little) {
      f.write(tokens.data(), tokens.size_bytes());
    } else {
      std::vector<unsigned char> buf;
      for (std::size_t i = 0; i < tokens.size(); i += 1 << 16) {
        const std::size_t n = std::min<std::size_t>(1 << 16, tokens.size() - i);
        buf.resize(2 * n);
        for (std::size_t j = 0; j < n; ++j) {
          buf[2 * j] = tokens[i + j] & 0xFF;
          buf[2 * j + 1] = tokens[i + j] >> 8;
        }
        f.write(buf.data(), buf.size());
      }
    }
  });
}

// A validated, read-only memory map of one shard. Move-only.
class ShardReader {
 public:
  explicit ShardReader(std::string path) : path_(std::move(path)) {
    const int fd = ::open(path_.c_str(), O_RDONLY | O_CLOEXEC);
    HYBRID_CHECK(fd >= 0, "shard '", path_, "': cannot open: ", detail::errno_text());
    struct stat st {};
    if (::fstat(fd, &st) != 0) {
      const std::string why = detail::errno_text();
      ::close(fd);
      fail("shard '", path_, "': cannot stat: ", why);
    }
    size_ = Index(st.st_size);
    if (size_ < kShardHeaderBytes) {
      ::close(fd);
      fail("shard '", path_, "': file too short: ", size_, " bytes, the header alone is ",
           kShardHeaderBytes, " bytes (256 int32)");
    }
    void* p = ::mmap(nullptr, std::size_t(size_), PROT_READ, MAP_PRIVATE, fd, 0);
    const std::string why = p == MAP_FAILED ? detail::errno_text() : std::string();
    ::close(fd);  // the mapping keeps the file alive
    HYBRID_CHECK(p != MAP_FAILED, "shard '", path_, "': mmap failed: ", why);
    base_ = static_cast<const unsigned char*>(p);
    try {
      validate();
    } catch (...) {
      unmap();
      throw;
    }
  }
  ~ShardReader() { unmap(); }
  ShardReader(ShardReader&& o) noexcept
      : path_(std::move(o.path_)),
        base_(std::exchange(o.base_, nullptr)),
        size_(std::exchange(o.size_, 0)),
        n_(std::exchange(o.n_, 0)) {}
  ShardReader& operator=(ShardReader&& o) noexcept {
    if (this != &o) {
      unmap();
      path_ = std::move(o.path_);
      base_ = std::exchange(o.base_, nullptr);
      size_ = std::exchange(o.size_, 0);
      n_ = std::exchange(o.n_, 0);
    }
    return *this;
  }
  ShardReader(const ShardReader&) = delete;
  ShardReader& operator=(const ShardReader&) = delete;

  const std::string& path() const { return path_; }
  Index size() const { return n_; }  // tokens
  std::int32_t header(int i) const {
    HYBRID_CHECK(i >= 0 && i < 256, "shard '", path_, "': header index ", i, " outside [0, 256)");
    return std::int32_t(load_u32(base_ + 4 * i));
  }
  std::uint16_t operator[](Index i) const {
    const unsigned char* p = base_ + kShardHeaderBytes + 2 * i;
    return std::uint16_t(p[0] | (p[1] << 8));
  }
  // tokens [start, start + count) → out, bounds-checked.
  void read(Index start, Index count, int* out) const {
    HYBRID_CHECK(start >= 0 && count >= 0 && start + count <= n_, "shard '", path_, "': read of [",
                 start, ", ", start + count, ") outside its ", n_, " tokens");
    for (Index i = 0; i < count; ++i) out[i] = (*this)[start + i];
  }

 private:
  static std::uint32_t load_u32(const unsigned char* p) {
    return std::uint32_t(p[0]) | (std::uint32_t(p[1]) << 8) | (std::uint32_t(p[2]) << 16) |
           (std::uint32_t(p[3]) << 24);
  }
  void validate() {
    const std::int32_t magic = header(0), version = header(1), n = header(2);
    HYBRID_CHECK(magic == kShardMagic, "shard '", path_, "': header[0] (magic) is ", magic,
                 ", expected ", kShardMagic, " (not a parameter-golf token shard)");
    HYBRID_CHECK(version == kShardVersion, "shard '", path_, "': header[1] (version) is ", version,
                 ", expected ", kShardVersion);
    HYBRID_CHECK(n >= 0, "shard '", path_, "': header[2] (n_tokens) is ", n, ", expected >= 0");
    const Index want = kShardHeaderBytes + 2 * Index(n);
    HYBRID_CHECK(size_ == want, "shard '", path_, "': header[2] (n_tokens) = ", n,
                 " needs a file of ", kShardHeaderBytes, " + 2 * ", n, " = ", want,
                 " bytes, the file has ", size_,
                 size_ < want ? " (truncated)" : " (trailing bytes)");
    n_ = n;
  }
  void unmap() {
    if (base_) ::munmap(const_cast<unsigned char*>(base_), std::size_t(size_));
    base_ = nullptr;
  }

  std::string path_;
  const unsigned char* base_ = nullptr;
  Index size_ = 0;  // bytes
  Index n_ = 0;     // tokens
};

namespace detail {
// Each entry is a path, or a glob pattern (has * ? or [) expanded in sorted order.
inline std::vector<std::string> expand_paths(const std::vector<std::string>& entries,
                                             const char* what) {
  std::vector<std::string> out;
  for (const auto& e : entries) {
    if (e.find_first_of("*?[") == std::string::npos) {
      out.push_back(e);
      continue;
    }
    glob_t g{};
    const int rc = ::glob(e.c_str(), 0, nullptr, &g);
    std::vector<std::string> found;
    if (rc == 0)
      for (std::size_t i = 0; i < g.gl_pathc; ++i) found.emplace_back(g.gl_pathv[i]);
    ::globfree(&g);
    HYBRID_CHECK(!found.empty(), "ShardSource: ", what, " pattern '", e, "' matches no file");
    std::sort(found.begin(), found.end());
    out.insert(out.end(), found.begin(), found.end());
  }
  return out;
}
}  // namespace detail

// Train: random windows of T+1 tokens, uniform over every start that keeps the window inside
// one shard. Val: the val shards read as one stream, windows at 0, T, 2T, ...
// vocab 0 = find it on the first vocab_needed() call by scanning every shard.
class ShardSource final : public Source {
 public:
  ShardSource(const std::vector<std::string>& train, const std::vector<std::string>& val,
              std::uint64_t seed, int vocab = 0, double bytes_per_token = 1.0)
      : seed_(seed), rng_(derive_seed(seed, "train")), vocab_(vocab), bpt_(bytes_per_token) {
    HYBRID_CHECK(!train.empty(), "ShardSource: no train shards given");
    HYBRID_CHECK(bytes_per_token > 0, "ShardSource: bytes_per_token must be positive, got ",
                 bytes_per_token);
    for (auto& p : detail::expand_paths(train, "train")) train_.emplace_back(p);
    for (auto& p : detail::expand_paths(val, "val")) val_.emplace_back(p);
    val_start_.push_back(0);
    for (const auto& r : val_) val_start_.push_back(val_start_.back() + r.size());
  }

  Batch train_batch(Index B, Index T) override {
    detail::check_BT(B, T, "ShardSource");
    std::vector<Index> cum{0};  // cum[i]: window starts in shards before i
    for (const auto& r : train_) cum.push_back(cum.back() + std::max<Index>(0, r.size() - T));
    HYBRID_CHECK(cum.back() > 0, "ShardSource: no train shard holds a window of T + 1 = ", T + 1,
                 " tokens (", train_.size(), " shards, ", train_tokens(), " tokens)");
    Batch b;
    b.B = B;
    b.T = T;
    b.tokens.resize(std::size_t(B * T));
    b.targets.resize(std::size_t(B * T));
    std::vector<int> buf(std::size_t(T + 1));
    for (Index r = 0; r < B; ++r) {
      const Index u = Index(rng_.below(std::uint64_t(cum.back())));
      const std::size_t s =
          std::size_t(std::upper_bound(cum.begin(), cum.end(), u) - cum.begin() - 1);
      train_[s].read(u - cum[s], T + 1, buf.data());
      std::copy(buf.begin(), buf.end() - 1, b.tokens.begin() + r * T);
      std::copy(buf.begin() + 1, buf.end(), b.targets.begin() + r * T);
    }
    ++draws_;
    return b;
  }

  std::vector<Batch> val_batches(Index B, Index T, Index max_batches) override {
    detail::check_BT(B, T, "ShardSource");
    HYBRID_CHECK(!val_.empty(), "ShardSource: no val shards given");
    HYBRID_CHECK(val_tokens() >= T + 1, "ShardSource: the val shards hold ", val_tokens(),
                 " tokens, a window needs T + 1 = ", T + 1);
    return detail::window_batches(val_tokens(), B, T, max_batches, [&](Index s, Index n, int* out) {
      std::size_t k = std::size_t(std::upper_bound(val_start_.begin(), val_start_.end(), s) -
                                  val_start_.begin() - 1);
      while (n > 0) {  // a window may span the end of one shard and the start of the next
        const Index off = s - val_start_[k], take = std::min(n, val_[k].size() - off);
        val_[k].read(off, take, out);
        out += take;
        s += take;
        n -= take;
        ++k;
      }
    });
  }

  std::string state() const override {
    return detail::pack_state("shards", fingerprint(), draws_, rng_);
  }
  void set_state(const std::string& s) override {
    detail::unpack_state(s, "shards", fingerprint(), draws_, rng_);
  }
  std::string describe() const override {
    return ::hybrid::detail::concat_str("shards(train ", train_.size(), " files / ", train_tokens(),
                                        " tokens, val ", val_.size(), " files / ", val_tokens(),
                                        " tokens, seed=", seed_, ")");
  }
  double bytes_per_token() const override { return bpt_; }
  int vocab_needed() const override {
    if (vocab_ <= 0) {
      int mx = -1;
      for (const auto* set : {&train_, &val_})
        for (const auto& r : *set)
          for (Index i = 0; i < r.size(); ++i) mx = std::max(mx, int(r[i]));
      vocab_ = mx + 1;
    }
    return vocab_;
  }

  Index train_tokens() const {
    Index n = 0;
    for (const auto& r : train_) n += r.size();
    return n;
  }
  Index val_tokens() const { return val_start_.back(); }
  const std::vector<ShardReader>& train_shards() const { return train_; }
  const std::vector<ShardReader>& val_shards() const { return val_; }

 private:
  std::uint64_t fingerprint() const {
    std::string s;
    for (const auto& r : train_) s += std::to_string(r.size()) + ",";
    return derive_seed(train_.size(), s);
  }

  std::vector<ShardReader> train_, val_;
  std::vector<Index> val_start_;  // val_start_[k]: stream offset of val shard k
  std::uint64_t seed_;
  Rng rng_;
  mutable int vocab_;
  double bpt_;
  std::uint64_t draws_ = 0;
};

// Byte-level shards from a text file. The bytes split as TextSource splits them (train =
// the first int(n (1 - val_fraction))); each split is one document that starts with bos
// (256 for ByteTokenizer; bos < 0: none), cut into shards of tokens_per_shard:
//   <prefix>_train_000000.bin, <prefix>_train_000001.bin, ..., <prefix>_val_000000.bin, ...
// Returns the files written, train first. No val files when val_fraction is 0.
inline std::vector<std::string> text_to_shards(const std::string& text_path,
                                               const std::string& out_prefix,
                                               Index tokens_per_shard, double val_fraction = 0.1,
                                               int bos = ByteTokenizer::kBos) {
  HYBRID_CHECK(tokens_per_shard >= 1, "text_to_shards: tokens_per_shard must be >= 1, got ",
               tokens_per_shard);
  HYBRID_CHECK(bos < 65536, "text_to_shards: bos id ", bos, " does not fit in uint16");
  const std::string text = detail::read_file_bytes(text_path, "text_to_shards");
  const Index n_train = detail::train_split(Index(text.size()), val_fraction);
  const auto parent = std::filesystem::path(out_prefix).parent_path();
  if (!parent.empty()) std::filesystem::create_directories(parent);

  std::vector<std::string> written;
  auto emit = [&](std::string_view part, const char* split) {
    std::vector<std::uint16_t> ids;
    ids.reserve(part.size() + 1);
    if (bos >= 0) ids.push_back(std::uint16_t(bos));
    for (char c : part) ids.push_back(static_cast<unsigned char>(c));
    for (std::size_t i = 0, k = 0; i < ids.size(); i += std::size_t(tokens_per_shard), ++k) {
      char name[32];
      std::snprintf(name, sizeof(name), "_%s_%06zu.bin", split, k);
      const std::size_t n = std::min(ids.size() - i, std::size_t(tokens_per_shard));
      written.push_back(out_prefix + name);
      write_shard(written.back(), std::span<const std::uint16_t>(ids.data() + i, n));
    }
  };
  emit(std::string_view(text).substr(0, std::size_t(n_train)), "train");
  if (val_fraction > 0) emit(std::string_view(text).substr(std::size_t(n_train)), "val");
  return written;
}

}  // namespace hybrid::data
