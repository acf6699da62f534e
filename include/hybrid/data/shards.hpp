// Parameter-golf token shards: the file format, an atomic writer, a validated mmap reader,
// a source that streams them, and shards from text: the documents of a file (the whole
// file, its paragraphs, or parameter golf's JSONL records), each encoded by a Tokenizer
// (bytes, or a SentencePiece model) after its BOS.
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
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "../core/atomic_file.hpp"
#include "../core/json.hpp"
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
// vocab 0 = find it on the first vocab_needed() call by scanning every shard; vocab > 0 =
// the ids must be below it, which every read checks (an error names the shard, the position
// and the id). bytes_per_token: the text's mean bytes per token, for bits per byte.
class ShardSource final : public Source {
 public:
  ShardSource(const std::vector<std::string>& train, const std::vector<std::string>& val,
              std::uint64_t seed, int vocab = 0, double bytes_per_token = 1.0)
      : seed_(seed), rng_(derive_seed(seed, "train")), vocab_(vocab), limit_(vocab),
        bpt_(bytes_per_token) {
    HYBRID_CHECK(!train.empty(), "ShardSource: no train shards given");
    HYBRID_CHECK(vocab >= 0 && vocab <= 65536, "ShardSource: vocab ", vocab,
                 "; expected 0 (found from the shards) or 1 to 65536 (shards hold uint16 ids)");
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
      check_ids(train_[s], u - cum[s], buf.data(), T + 1);
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
        check_ids(val_[k], off, out, take);
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
  // For a tokenizer known only after the shards are open (its mean over the val shards).
  void set_bytes_per_token(double b) {
    HYBRID_CHECK(std::isfinite(b) && b > 0, "ShardSource: bytes_per_token must be positive, got ", b);
    bpt_ = b;
  }
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
  // ids[0, n) read from r at `start`: each below the vocabulary the source was opened with.
  void check_ids(const ShardReader& r, Index start, const int* ids, Index n) const {
    if (limit_ <= 0) return;
    for (Index i = 0; i < n; ++i)
      HYBRID_CHECK(ids[i] < limit_, "ShardSource: shard '", r.path(), "' holds token id ", ids[i],
                   " at position ", start + i, ", outside the vocabulary [0, ", limit_,
                   ") it was opened with (a model or tokenizer with at least ", ids[i] + 1,
                   " ids is needed)");
  }

  std::vector<ShardReader> train_, val_;
  std::vector<Index> val_start_;  // val_start_[k]: stream offset of val shard k
  std::uint64_t seed_;
  Rng rng_;
  mutable int vocab_;
  int limit_;  // the vocab given to the constructor (0: none given, nothing to check)
  double bpt_;
  std::uint64_t draws_ = 0;
};

// ---- text → shards ----------------------------------------------------------------------

// How a text file is cut into documents (each starts with a BOS in the shards):
//   Text        the whole file is one document (no document structure);
//   Paragraphs  documents are separated by blank lines (lines empty or only blanks);
//   Jsonl       one JSON object per line whose string field "text" is the document, as
//               parameter golf's docs_selected.jsonl (empty lines are skipped).
enum class DocFormat { Text, Paragraphs, Jsonl };

inline DocFormat doc_format_from_name(std::string_view s) {
  if (s == "text") return DocFormat::Text;
  if (s == "paragraphs") return DocFormat::Paragraphs;
  if (s == "jsonl") return DocFormat::Jsonl;
  fail("document format '", s, "' is not text, paragraphs or jsonl");
}

namespace detail {
inline bool blank_line(std::string_view line) {
  return line.find_first_not_of(" \t\r\n\f\v") == std::string_view::npos;
}
}  // namespace detail

// The documents of a file in `format`, in file order. Paragraphs lose the blank lines that
// separate them and the line break that ends their last line. Errors name the file (and the
// line, for JSONL); an empty file, or one with no document, is an error.
inline std::vector<std::string> read_documents(const std::string& path, DocFormat format) {
  std::vector<std::string> docs;
  if (format == DocFormat::Jsonl) {
    std::ifstream in(path, std::ios::binary);
    HYBRID_CHECK(in.good(), "read_documents: cannot open '", path, "' (expected a JSONL file)");
    std::string line;
    for (Index n = 1; std::getline(in, line); ++n) {
      if (detail::blank_line(line)) continue;
      const std::string where = ::hybrid::detail::concat_str("read_documents: '", path, "' line ", n);
      const nlohmann::json j = parse_json(line, where, "a JSON object with a string field \"text\"");
      const auto it = j.find("text");
      HYBRID_CHECK(it != j.end() && it->is_string(), where, ": field \"text\" is ",
                   it == j.end() ? std::string("missing") : "not a string (" + json_brief(*it) + ")",
                   "; expected the document as a string");
      docs.push_back(it->get<std::string>());
    }
    HYBRID_CHECK(!in.bad(), "read_documents: error while reading '", path, "'");
  } else {
    std::string text = detail::read_file_bytes(path, "read_documents");
    if (format == DocFormat::Text) {
      docs.push_back(std::move(text));
    } else {
      std::string cur;  // the paragraph being gathered, its lines with their line breaks
      auto flush = [&] {
        while (!cur.empty() && (cur.back() == '\n' || cur.back() == '\r')) cur.pop_back();
        if (!cur.empty()) docs.push_back(std::move(cur));
        cur.clear();
      };
      for (std::size_t a = 0; a < text.size();) {
        const std::size_t nl = text.find('\n', a);
        const std::size_t b = nl == std::string::npos ? text.size() : nl + 1;
        const std::string_view line(text.data() + a, b - a);
        if (detail::blank_line(line)) flush();
        else cur.append(line);
        a = b;
      }
      flush();
    }
  }
  HYBRID_CHECK(!docs.empty(), "read_documents: '", path, "' holds no document");
  return docs;
}

namespace detail {

// Writes `ids` as <prefix>_<split>_000000.bin, _000001.bin, ... of tokens_per_shard tokens
// (the last may be shorter; none when ids is empty), then removes shards of that prefix and
// split numbered past the last one written, which an earlier, longer run left and a glob
// would otherwise pick up.
inline std::vector<std::string> write_split(std::span<const std::uint16_t> ids,
                                            const std::string& prefix, const char* split,
                                            Index tokens_per_shard) {
  std::vector<std::string> written;
  for (std::size_t i = 0, k = 0; i < ids.size(); i += std::size_t(tokens_per_shard), ++k) {
    char name[40];
    std::snprintf(name, sizeof(name), "_%s_%06zu.bin", split, k);
    const std::size_t n = std::min(ids.size() - i, std::size_t(tokens_per_shard));
    written.push_back(prefix + name);
    write_shard(written.back(), ids.subspan(i, n));
  }
  namespace fs = std::filesystem;
  const fs::path p(prefix);
  const fs::path dir = p.has_parent_path() ? p.parent_path() : fs::path(".");
  const std::string stem = p.filename().string() + "_" + split + "_";
  std::error_code ec;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    const std::string f = it->path().filename().string();
    if (f.size() != stem.size() + 10 || !f.starts_with(stem) || !f.ends_with(".bin")) continue;
    const std::string_view num = std::string_view(f).substr(stem.size(), 6);
    if (num.find_first_not_of("0123456789") != std::string_view::npos) continue;
    if (std::stoul(std::string(num)) >= written.size()) {
      std::error_code rm;
      fs::remove(it->path(), rm);
    }
  }
  return written;
}

inline void make_parent_dirs(const std::string& prefix) {
  const auto parent = std::filesystem::path(prefix).parent_path();
  if (!parent.empty()) std::filesystem::create_directories(parent);
}

}  // namespace detail

struct ShardWriteOptions {
  Index tokens_per_shard = Index(1) << 24;
  double val_fraction = 0.1;  // of the documents (Text: of the bytes), the last ones
  Index val_docs = -1;        // >= 0: the first val_docs documents are val instead, as
                              // parameter golf takes its first 50,000 (not with Text)
};

// What documents_to_shards wrote.
struct ShardSummary {
  std::vector<std::string> train_files, val_files;
  Index train_docs = 0, val_docs = 0, train_tokens = 0, val_tokens = 0;
};

namespace detail {
// docs → shards, docs [val_begin, val_end) to val and the rest to train (see below).
inline ShardSummary encode_documents(const std::vector<std::string>& docs, Index val_begin,
                                     Index val_end, const Tokenizer& tok, int bos,
                                     const std::string& out_prefix, Index tokens_per_shard) {
  HYBRID_CHECK(tokens_per_shard >= 1, "documents_to_shards: tokens_per_shard must be >= 1, got ",
               tokens_per_shard);
  const int vocab = tok.vocab_size();
  HYBRID_CHECK(vocab >= 1 && vocab <= 65536, "documents_to_shards: the tokenizer has ", vocab,
               " ids; shards store uint16 ids, so at most 65536");
  HYBRID_CHECK(bos < vocab, "documents_to_shards: bos id ", bos,
               " is outside the tokenizer's vocabulary [0, ", vocab, ")");
  make_parent_dirs(out_prefix);
  ShardSummary out;
  std::vector<std::uint16_t> train, val;
  for (Index d = 0; d < Index(docs.size()); ++d) {
    const bool is_val = d >= val_begin && d < val_end;
    std::vector<std::uint16_t>& dst = is_val ? val : train;
    ++(is_val ? out.val_docs : out.train_docs);
    if (bos >= 0) dst.push_back(std::uint16_t(bos));
    for (int id : tok.encode(docs[std::size_t(d)])) {
      HYBRID_CHECK(id >= 0 && id < vocab, "documents_to_shards: document ", d, " encodes to id ", id,
                   ", outside the tokenizer's vocabulary [0, ", vocab, ")");
      dst.push_back(std::uint16_t(id));
    }
  }
  out.train_tokens = Index(train.size());
  out.val_tokens = Index(val.size());
  out.train_files = write_split(train, out_prefix, "train", tokens_per_shard);
  out.val_files = write_split(val, out_prefix, "val", tokens_per_shard);
  return out;
}
}  // namespace detail

// Documents → shards, parameter golf's way: each document is `bos` followed by
// tok.encode(document) (no EOS), the documents of a split one stream cut into shards of
// tokens_per_shard (a document may run on into the next shard). Split: the first
// int(n (1 - val_fraction)) documents are train, the rest val; with val_docs >= 0 the
// first val_docs documents are val instead. bos < 0: no BOS. Ids must fit the uint16
// shards: the tokenizer's vocabulary is at most 65,536 and every id is checked against it.
inline ShardSummary documents_to_shards(const std::vector<std::string>& docs, const Tokenizer& tok,
                                        int bos, const std::string& out_prefix,
                                        const ShardWriteOptions& opt = {}) {
  const Index n = Index(docs.size());
  HYBRID_CHECK(opt.val_docs <= n, "documents_to_shards: ", opt.val_docs,
               " val documents asked for, the input has ", n);
  if (opt.val_docs >= 0)
    return detail::encode_documents(docs, 0, opt.val_docs, tok, bos, out_prefix, opt.tokens_per_shard);
  return detail::encode_documents(docs, detail::train_split(n, opt.val_fraction), n, tok, bos,
                                  out_prefix, opt.tokens_per_shard);
}

// A file → shards: its documents in `format`. Text (no document structure) splits the bytes
// as TextSource does, so the train part and the val part are one document each, each after
// its own BOS; a multi-byte character cut by that split reaches a SentencePiece tokenizer
// as invalid UTF-8 (it costs that one character). val_docs needs documents (not Text).
inline ShardSummary file_to_shards(const std::string& text_path, DocFormat format, const Tokenizer& tok,
                                   int bos, const std::string& out_prefix,
                                   const ShardWriteOptions& opt = {}) {
  std::vector<std::string> docs = read_documents(text_path, format);
  if (format != DocFormat::Text) return documents_to_shards(docs, tok, bos, out_prefix, opt);
  HYBRID_CHECK(opt.val_docs < 0, "file_to_shards: '", text_path,
               "' read as one document (format text) has no documents to count for val_docs; "
               "use val_fraction, or the paragraphs or jsonl format");
  const std::string text = std::move(docs[0]);
  const std::size_t cut = std::size_t(detail::train_split(Index(text.size()), opt.val_fraction));
  docs = {text.substr(0, cut)};
  if (opt.val_fraction > 0) docs.push_back(text.substr(cut));
  return detail::encode_documents(docs, 1, Index(docs.size()), tok, bos, out_prefix, opt.tokens_per_shard);
}

// Mean bytes of text per token over the val shards' stream, bytes_after(prev, id) counting
// the bytes of `id` after `prev` (-1 before the first token), e.g.
// SentencePieceTokenizer::bytes_after, parameter golf's rule: the bits-per-byte divisor.
template <class BytesAfter>
double val_bytes_per_token(const ShardSource& src, BytesAfter&& bytes_after) {
  double bytes = 0;
  Index n = 0;
  int prev = -1;
  for (const ShardReader& r : src.val_shards())
    for (Index i = 0; i < r.size(); ++i, ++n) {
      const int id = r[i];
      bytes += double(bytes_after(prev, id));
      prev = id;
    }
  HYBRID_CHECK(n > 0 && bytes > 0, "val_bytes_per_token: the val shards hold ", n, " tokens and ", bytes,
               " bytes of text; expected some text");
  return bytes / double(n);
}

// Byte-level shards from a text file. The bytes split as TextSource splits them (train =
// the first int(n (1 - val_fraction))); each split is one document that starts with bos
// (256 for ByteTokenizer; bos < 0: none), cut into shards of tokens_per_shard:
//   <prefix>_train_000000.bin, <prefix>_train_000001.bin, ..., <prefix>_val_000000.bin, ...
// Returns the files written, train first. No val files when val_fraction is 0 (older val
// shards of the prefix are removed then, as are surplus ones of a longer earlier run).
inline std::vector<std::string> text_to_shards(const std::string& text_path,
                                               const std::string& out_prefix,
                                               Index tokens_per_shard, double val_fraction = 0.1,
                                               int bos = ByteTokenizer::kBos) {
  const ShardSummary s = file_to_shards(text_path, DocFormat::Text, ByteTokenizer{}, bos, out_prefix,
                                        {.tokens_per_shard = tokens_per_shard, .val_fraction = val_fraction});
  std::vector<std::string> files = s.train_files;
  files.insert(files.end(), s.val_files.begin(), s.val_files.end());
  return files;
}

}  // namespace hybrid::data
