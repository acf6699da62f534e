// Training data: the Source interface (train batches, deterministic val batches, resumable
// state), seeded synthetic tasks (MQAR, selective copying, induction heads), byte-level text
// with nanoGPT's 90/10 split, parameter-golf token shards (write, mmap read, stream), and
// the metrics that go with them (accuracy on scored positions, bits per byte).
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
#include <limits>
#include <memory>
#include <span>
#include <sstream>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "../core/atomic_file.hpp"
#include "../core/error.hpp"
#include "../core/file.hpp"
#include "../core/rng.hpp"
#include "../core/tensor.hpp"
#include "../infer/tokenizer.hpp"

namespace hybrid::data {

// B sequences of T ids, sequence-major: row b*T + t is position t of sequence b, the same
// row order as the (B*T, V) logits. targets[i] = -1: position i is not scored.
struct Batch {
  std::vector<int> tokens, targets;
  Index B = 0, T = 0;

  Index scored() const {
    return Index(std::count_if(targets.begin(), targets.end(), [](int t) { return t >= 0; }));
  }
};

class Source {
 public:
  virtual ~Source() = default;
  virtual Batch train_batch(Index B, Index T) = 0;
  // The same batches on every call (no effect on the train stream). max_batches <= 0 asks a
  // finite source for its whole val split; the last batch may then have fewer than B rows.
  virtual std::vector<Batch> val_batches(Index B, Index T, Index max_batches) = 0;
  // Position and RNG as text, for checkpoints: after set_state(state()) the source draws
  // the train batches the uninterrupted one would have. set_state rejects a state saved
  // by a different kind or configuration of source.
  virtual std::string state() const = 0;
  virtual void set_state(const std::string& s) = 0;
  virtual std::string describe() const = 0;
  // Bytes of text per token on average, for bits per byte: 1 for byte-level data.
  virtual double bytes_per_token() const { return 1.0; }
  // Every id this source emits is below this.
  virtual int vocab_needed() const = 0;
};

// Cross-entropy in nats per token → bits per byte of text.
inline double bits_per_byte(double mean_nats_per_token, double bytes_per_token) {
  HYBRID_CHECK(bytes_per_token > 0, "bits_per_byte: bytes_per_token must be positive, got ",
               bytes_per_token);
  return mean_nats_per_token / std::log(2.0) / bytes_per_token;
}

// logits (B*T, V): fraction of scored positions whose argmax (first on ties) is the target;
// 0 when nothing is scored.
template <class Derived>
double accuracy(const Eigen::MatrixBase<Derived>& logits, const Batch& batch) {
  const Index R = batch.B * batch.T;
  HYBRID_CHECK(Index(batch.targets.size()) == R, "accuracy: batch has ", batch.targets.size(),
               " targets, expected B*T = ", R);
  HYBRID_CHECK(logits.rows() == R, "accuracy: logits have ", logits.rows(),
               " rows, expected B*T = ", R);
  Index scored = 0, right = 0;
  for (Index r = 0; r < R; ++r) {
    const int t = batch.targets[std::size_t(r)];
    if (t < 0) continue;
    HYBRID_CHECK(t < logits.cols(), "accuracy: target ", t, " at row ", r,
                 " is outside the logits' vocabulary [0, ", logits.cols(), ")");
    Eigen::Index arg = 0;
    logits.row(r).maxCoeff(&arg);
    ++scored;
    right += (arg == t);
  }
  return scored ? double(right) / double(scored) : 0.0;
}

namespace detail {

// "<kind> fp=<config fingerprint> draws=<batches drawn> rng=<Rng::state()>"; the rng goes
// last because its text has spaces.
inline std::string pack_state(std::string_view kind, std::uint64_t fp, std::uint64_t draws,
                              const Rng& rng) {
  std::ostringstream os;
  os << kind << " fp=" << fp << " draws=" << draws << " rng=" << rng.state();
  return os.str();
}

inline void unpack_state(const std::string& s, std::string_view kind, std::uint64_t fp,
                         std::uint64_t& draws, Rng& rng) {
  std::istringstream is(s);
  std::string k, f, d;
  is >> k >> f >> d;
  const auto at = s.find(" rng=");
  HYBRID_CHECK(
      !is.fail() && at != std::string::npos && f.rfind("fp=", 0) == 0 && d.rfind("draws=", 0) == 0,
      "data source state: malformed state '", s.substr(0, 60), "'");
  HYBRID_CHECK(k == kind, "data source state: saved by a '", k, "' source, this is a '", kind,
               "' source");
  const std::uint64_t saved_fp = std::strtoull(f.c_str() + 3, nullptr, 10);
  HYBRID_CHECK(saved_fp == fp, "data source state: saved for a different ", kind,
               " configuration or data (fingerprint ", saved_fp, ", expected ", fp, ")");
  Rng r;
  try {
    r.set_state(s.substr(at + 5));
  } catch (const std::exception& e) {
    fail("data source state: ", e.what());
  }
  rng = r;
  draws = std::strtoull(d.c_str() + 6, nullptr, 10);
}

// k distinct ids from [lo, hi), in random order.
inline void sample_distinct(Rng& rng, Index lo, Index hi, Index k, std::vector<int>& out) {
  const Index n = hi - lo;
  HYBRID_CHECK(k >= 0 && k <= n, "sample_distinct: cannot draw ", k, " distinct ids from ", n);
  out.clear();
  if (k <= 32 && 2 * k <= n) {  // rejection: cheap for the small k the tasks use
    while (Index(out.size()) < k) {
      const int v = int(lo + Index(rng.below(std::uint64_t(n))));
      if (std::find(out.begin(), out.end(), v) == out.end()) out.push_back(v);
    }
    return;
  }
  std::vector<int> all(static_cast<std::size_t>(n));
  for (Index i = 0; i < n; ++i) all[std::size_t(i)] = int(lo + i);
  for (Index i = 0; i < k; ++i) {  // partial Fisher-Yates
    const Index j = i + Index(rng.below(std::uint64_t(n - i)));
    std::swap(all[std::size_t(i)], all[std::size_t(j)]);
  }
  out.assign(all.begin(), all.begin() + k);
}

inline void check_BT(Index B, Index T, const char* who) {
  HYBRID_CHECK(B >= 1 && T >= 1, who, ": B and T must be >= 1, got B = ", B, ", T = ", T);
}

// Consecutive windows of T+1 tokens starting at 0, T, 2T, ... of a stream of n tokens,
// read(start, count, out) copies tokens [start, start+count) to out.
template <class Read>
std::vector<Batch> window_batches(Index n, Index B, Index T, Index max_batches, Read&& read) {
  const Index windows = n >= T + 1 ? (n - 1) / T : 0;
  Index n_batches = (windows + B - 1) / B;
  if (max_batches > 0) n_batches = std::min(n_batches, max_batches);
  std::vector<Batch> out;
  std::vector<int> buf(std::size_t(T + 1));
  for (Index k = 0; k < n_batches; ++k) {
    Batch b;
    b.B = std::min(B, windows - k * B);
    b.T = T;
    b.tokens.resize(std::size_t(b.B * T));
    b.targets.resize(std::size_t(b.B * T));
    for (Index r = 0; r < b.B; ++r) {
      read((k * B + r) * T, T + 1, buf.data());
      std::copy(buf.begin(), buf.end() - 1, b.tokens.begin() + r * T);
      std::copy(buf.begin() + 1, buf.end(), b.targets.begin() + r * T);
    }
    out.push_back(std::move(b));
  }
  return out;
}

// Tokens in the train part of n when a fraction f goes to val: int(n * (1 - f)), exactly
// nanoGPT's int(n * 0.9) for f = 0.1 (1 - 0.1 == 0.9 in double).
inline Index train_split(Index n, double val_fraction) {
  HYBRID_CHECK(val_fraction >= 0 && val_fraction < 1, "val_fraction must be in [0, 1), got ",
               val_fraction);
  return Index(double(n) * (1.0 - val_fraction));
}

inline std::string read_file_bytes(const std::string& path, const char* who) {
  std::string s = read_file(path, who, "a text file");
  HYBRID_CHECK(!s.empty(), who, ": '", path, "' is empty");
  return s;
}

}  // namespace detail

// ---------------------------------------------------------------------------------------
// Synthetic tasks. Each sequence is drawn independently from the train RNG (seeded with
// derive_seed(seed, "train")); val sequences come from a fresh RNG seeded with
// derive_seed(seed, "val") on every call. Only positions whose answer the context
// determines are scored, so loss and accuracy measure the task alone. Config T = 0 takes
// the sequence length from train_batch / val_batches; otherwise they must ask for it.

class SyntheticSource : public Source {
 public:
  Batch train_batch(Index B, Index T) override {
    Batch b = draw(train_rng_, B, T);
    ++draws_;
    return b;
  }
  std::vector<Batch> val_batches(Index B, Index T, Index max_batches) override {
    HYBRID_CHECK(max_batches >= 1, describe(),
                 ": a synthetic task has no end; ask for max_batches >= 1, got ", max_batches);
    Rng rng(derive_seed(seed_, "val"));
    std::vector<Batch> out;
    for (Index k = 0; k < max_batches; ++k) out.push_back(draw(rng, B, T));
    return out;
  }
  std::string state() const override {
    return detail::pack_state(kind(), fingerprint(), draws_, train_rng_);
  }
  void set_state(const std::string& s) override {
    detail::unpack_state(s, kind(), fingerprint(), draws_, train_rng_);
  }
  std::string describe() const override { return config_text() + " seed=" + std::to_string(seed_); }
  std::uint64_t batches_drawn() const { return draws_; }

 protected:
  explicit SyntheticSource(std::uint64_t seed)
      : seed_(seed), train_rng_(derive_seed(seed, "train")) {}
  virtual const char* kind() const = 0;
  virtual std::string config_text() const = 0;
  virtual Index config_T() const = 0;
  virtual Index min_T() const = 0;
  // One sequence: tokens[0..T), targets[0..T) (targets arrive filled with -1).
  virtual void fill(Rng& rng, Index T, int* tokens, int* targets) const = 0;

 private:
  std::uint64_t fingerprint() const { return derive_seed(0, config_text()); }

  Batch draw(Rng& rng, Index B, Index T) const {
    detail::check_BT(B, T, kind());
    HYBRID_CHECK(config_T() == 0 || T == config_T(), config_text(),
                 ": configured for T = ", config_T(), " but asked for T = ", T,
                 " (set the config's T to 0 to follow the batch)");
    HYBRID_CHECK(T >= min_T(), config_text(), ": T = ", T,
                 " is too short, the layout needs T >= ", min_T());
    Batch b;
    b.B = B;
    b.T = T;
    b.tokens.assign(std::size_t(B * T), 0);
    b.targets.assign(std::size_t(B * T), -1);
    for (Index r = 0; r < B; ++r) fill(rng, T, b.tokens.data() + r * T, b.targets.data() + r * T);
    return b;
  }

  std::uint64_t seed_;
  Rng train_rng_;
  std::uint64_t draws_ = 0;
};

// (a) Multi-query associative recall (Zoology). Ids: 0 blank, keys [1, 1+K), values
// [1+K, vocab) with K = (vocab-1)/2. A context of n_pairs "key value" pairs with distinct
// keys, then a query region of (T - 2 n_pairs) / 2 two-token slots; n_queries random slots
// hold "key value" for a key from the context (distinct keys while n_queries <= n_pairs),
// the rest are blank. Scored: each query key, with its value as target (the value follows
// in the tokens, as the next input). vocab 9 (keys 1-4, values 5-8), 2 pairs, 2 queries, T 10:
//   tokens : 3  7  1  5 | 0  0  1  5  3  7
//   targets: -  -  -  - | -  -  5  -  7  -
// Chance for a constant guess is 1/(vocab-1-K).
struct MqarConfig {
  int vocab = 258;
  Index n_pairs = 8;
  Index n_queries = 8;
  Index T = 0;
};

class MqarSource final : public SyntheticSource {
 public:
  MqarSource(const MqarConfig& c, std::uint64_t seed) : SyntheticSource(seed), c_(c) {
    HYBRID_CHECK(c.vocab >= 3, "mqar: vocab must be >= 3 (blank, a key, a value), got ", c.vocab);
    HYBRID_CHECK(c.n_pairs >= 1 && c.n_pairs <= n_keys(), "mqar: n_pairs must be in [1, ", n_keys(),
                 "] (distinct keys among (vocab-1)/2), got ", c.n_pairs);
    HYBRID_CHECK(c.n_queries >= 1, "mqar: n_queries must be >= 1, got ", c.n_queries);
    HYBRID_CHECK(c.T == 0 || c.T >= min_T(), "mqar: T = ", c.T,
                 " is too short, need T >= ", min_T());
  }
  int vocab_needed() const override { return c_.vocab; }
  Index n_keys() const { return (c_.vocab - 1) / 2; }
  int first_value() const { return int(1 + n_keys()); }

 protected:
  const char* kind() const override { return "mqar"; }
  std::string config_text() const override {
    return ::hybrid::detail::concat_str("mqar(vocab=", c_.vocab, " pairs=", c_.n_pairs,
                                        " queries=", c_.n_queries, " T=", c_.T, ")");
  }
  Index config_T() const override { return c_.T; }
  Index min_T() const override { return 2 * c_.n_pairs + 2 * c_.n_queries; }

  void fill(Rng& rng, Index T, int* tok, int* tgt) const override {
    const Index n = c_.n_pairs, q = c_.n_queries;
    const Index n_values = c_.vocab - first_value();
    std::vector<int> keys, slots, which;
    detail::sample_distinct(rng, 1, 1 + n_keys(), n, keys);
    std::vector<int> values(static_cast<std::size_t>(n));
    for (Index i = 0; i < n; ++i) {
      values[std::size_t(i)] = first_value() + int(rng.below(std::uint64_t(n_values)));
      tok[2 * i] = keys[std::size_t(i)];
      tok[2 * i + 1] = values[std::size_t(i)];
    }
    detail::sample_distinct(rng, 0, (T - 2 * n) / 2, q, slots);
    if (q <= n) {
      detail::sample_distinct(rng, 0, n, q, which);
    } else {
      which.resize(std::size_t(q));
      for (auto& w : which) w = int(rng.below(std::uint64_t(n)));
    }
    for (Index j = 0; j < q; ++j) {
      const Index p = 2 * n + 2 * Index(slots[std::size_t(j)]);
      const std::size_t i = std::size_t(which[std::size_t(j)]);
      tok[p] = keys[i];
      tok[p + 1] = values[i];
      tgt[p] = values[i];
    }
  }

 private:
  MqarConfig c_;
};

// (b) Selective copying (Mamba, §4.1.1). Ids: 0 blank, 1 marker, data [2, vocab). The first
// T - n_data positions hold n_data data tokens at random positions among blanks; then the
// marker; then the data tokens in order as inputs. Scored: the marker and every position
// after it, the target being the next data token. vocab 6, n_data 3, T 10:
//   tokens : 0  4  0  0  2  5  0 | 1  4  2
//   targets: -  -  -  -  -  -  - | 4  2  5
// Chance for a constant guess is 1/(vocab-2).
struct SelectiveCopyConfig {
  int vocab = 258;
  Index n_data = 16;
  Index T = 0;
};

class SelectiveCopySource final : public SyntheticSource {
 public:
  static constexpr int kBlank = 0, kMarker = 1, kFirstData = 2;

  SelectiveCopySource(const SelectiveCopyConfig& c, std::uint64_t seed)
      : SyntheticSource(seed), c_(c) {
    HYBRID_CHECK(c.vocab >= 3, "selective_copy: vocab must be >= 3 (blank, marker, data), got ",
                 c.vocab);
    HYBRID_CHECK(c.n_data >= 1, "selective_copy: n_data must be >= 1, got ", c.n_data);
    HYBRID_CHECK(c.T == 0 || c.T >= min_T(), "selective_copy: T = ", c.T,
                 " is too short, need T >= 2 * n_data = ", min_T());
  }
  int vocab_needed() const override { return c_.vocab; }

 protected:
  const char* kind() const override { return "selective_copy"; }
  std::string config_text() const override {
    return ::hybrid::detail::concat_str("selective_copy(vocab=", c_.vocab, " data=", c_.n_data,
                                        " T=", c_.T, ")");
  }
  Index config_T() const override { return c_.T; }
  Index min_T() const override { return 2 * c_.n_data; }

  void fill(Rng& rng, Index T, int* tok, int* tgt) const override {
    const Index n = c_.n_data, m = T - n;  // m: the marker's position
    std::vector<int> pos;
    detail::sample_distinct(rng, 0, m, n, pos);
    std::sort(pos.begin(), pos.end());
    std::fill(tok, tok + T, kBlank);
    tok[m] = kMarker;
    for (Index i = 0; i < n; ++i) {
      const int d = kFirstData + int(rng.below(std::uint64_t(c_.vocab - kFirstData)));
      tok[pos[std::size_t(i)]] = d;
      tgt[m + i] = d;
      if (i + 1 < n) tok[m + 1 + i] = d;
    }
  }

 private:
  SelectiveCopyConfig c_;
};

// (c) Induction heads. A pattern of pattern_len distinct ids appears twice, the second copy
// later; every other position is a random id not in the pattern, so each pattern id occurs
// only in the two copies. Scored: the second copy's positions but its last, the target being
// the id that followed the same id in the first copy. vocab 10, pattern (7 3), T 10:
//   tokens : 5  0  7  3  9  1  7  3  2  8
//   targets: -  -  -  -  -  -  3  -  -  -
// Chance for a constant guess is about 1/vocab.
struct InductionConfig {
  int vocab = 258;
  Index pattern_len = 2;
  Index T = 0;
};

class InductionSource final : public SyntheticSource {
 public:
  InductionSource(const InductionConfig& c, std::uint64_t seed) : SyntheticSource(seed), c_(c) {
    HYBRID_CHECK(c.pattern_len >= 2, "induction: pattern_len must be >= 2, got ", c.pattern_len);
    HYBRID_CHECK(c.vocab > c.pattern_len, "induction: vocab (", c.vocab,
                 ") must exceed pattern_len (", c.pattern_len, ") to leave filler ids");
    HYBRID_CHECK(c.T == 0 || c.T >= min_T(), "induction: T = ", c.T,
                 " is too short, need T >= 2 * pattern_len = ", min_T());
  }
  int vocab_needed() const override { return c_.vocab; }

 protected:
  const char* kind() const override { return "induction"; }
  std::string config_text() const override {
    return ::hybrid::detail::concat_str("induction(vocab=", c_.vocab, " pattern=", c_.pattern_len,
                                        " T=", c_.T, ")");
  }
  Index config_T() const override { return c_.T; }
  Index min_T() const override { return 2 * c_.pattern_len; }

  void fill(Rng& rng, Index T, int* tok, int* tgt) const override {
    const Index L = c_.pattern_len;
    std::vector<int> pat;
    detail::sample_distinct(rng, 0, c_.vocab, L, pat);
    const Index p1 = Index(rng.below(std::uint64_t(T - 2 * L + 1)));
    const Index p2 = p1 + L + Index(rng.below(std::uint64_t(T - 2 * L - p1 + 1)));
    for (Index t = 0; t < T; ++t) {
      int v;
      do {
        v = int(rng.below(std::uint64_t(c_.vocab)));
      } while (std::find(pat.begin(), pat.end(), v) != pat.end());
      tok[t] = v;
    }
    for (Index i = 0; i < L; ++i) {
      tok[p1 + i] = tok[p2 + i] = pat[std::size_t(i)];
      if (i + 1 < L) tgt[p2 + i] = pat[std::size_t(i + 1)];
    }
  }

 private:
  InductionConfig c_;
};

inline std::unique_ptr<Source> make_mqar(const MqarConfig& c, std::uint64_t seed) {
  return std::make_unique<MqarSource>(c, seed);
}
inline std::unique_ptr<Source> make_selective_copy(const SelectiveCopyConfig& c,
                                                   std::uint64_t seed) {
  return std::make_unique<SelectiveCopySource>(c, seed);
}
inline std::unique_ptr<Source> make_induction(const InductionConfig& c, std::uint64_t seed) {
  return std::make_unique<InductionSource>(c, seed);
}

// ---------------------------------------------------------------------------------------
// Byte-level text (ByteTokenizer ids 0-255, no BOS): train = the first int(n (1 - f))
// bytes, val = the rest, f = 0.1 as nanoGPT. Train windows of T+1 bytes start uniformly in
// [0, n_train - T - 1]; val windows start at 0, T, 2T, ... of the val split.
class TextSource final : public Source {
 public:
  TextSource(std::string path, std::uint64_t seed, double val_fraction = 0.1)
      : path_(std::move(path)), seed_(seed), rng_(derive_seed(seed, "train")) {
    text_ = detail::read_file_bytes(path_, "TextSource");
    n_train_ = detail::train_split(Index(text_.size()), val_fraction);
  }

  Batch train_batch(Index B, Index T) override {
    detail::check_BT(B, T, "TextSource");
    HYBRID_CHECK(n_train_ >= T + 1, "TextSource '", path_, "': the train split has ", n_train_,
                 " tokens, a window needs T + 1 = ", T + 1, "; use a smaller T");
    Batch b;
    b.B = B;
    b.T = T;
    b.tokens.resize(std::size_t(B * T));
    b.targets.resize(std::size_t(B * T));
    for (Index r = 0; r < B; ++r) {
      const Index s = Index(rng_.below(std::uint64_t(n_train_ - T)));
      for (Index t = 0; t < T; ++t) {
        b.tokens[std::size_t(r * T + t)] = byte_at(s + t);
        b.targets[std::size_t(r * T + t)] = byte_at(s + t + 1);
      }
    }
    ++draws_;
    return b;
  }

  std::vector<Batch> val_batches(Index B, Index T, Index max_batches) override {
    detail::check_BT(B, T, "TextSource");
    HYBRID_CHECK(n_val() >= T + 1, "TextSource '", path_, "': the val split has ", n_val(),
                 " tokens, a window needs T + 1 = ", T + 1, "; use a smaller T");
    return detail::window_batches(n_val(), B, T, max_batches, [&](Index s, Index n, int* out) {
      for (Index i = 0; i < n; ++i) out[i] = byte_at(n_train_ + s + i);
    });
  }

  std::string state() const override {
    return detail::pack_state("text", fingerprint(), draws_, rng_);
  }
  void set_state(const std::string& s) override {
    detail::unpack_state(s, "text", fingerprint(), draws_, rng_);
  }
  std::string describe() const override {
    return ::hybrid::detail::concat_str("text('", path_, "', train ", n_train_, " + val ", n_val(),
                                        " bytes, seed=", seed_, ")");
  }
  int vocab_needed() const override { return 256; }

  Index n_train() const { return n_train_; }
  Index n_val() const { return Index(text_.size()) - n_train_; }
  std::string_view train_text() const {
    return std::string_view(text_).substr(0, std::size_t(n_train_));
  }
  std::string_view val_text() const {
    return std::string_view(text_).substr(std::size_t(n_train_));
  }

 private:
  int byte_at(Index i) const { return static_cast<unsigned char>(text_[std::size_t(i)]); }
  std::uint64_t fingerprint() const {
    return derive_seed(std::uint64_t(text_.size()), std::to_string(n_train_));
  }

  std::string path_, text_;
  std::uint64_t seed_;
  Rng rng_;
  Index n_train_ = 0;
  std::uint64_t draws_ = 0;
};

// ---------------------------------------------------------------------------------------
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
