// The data Source interface (train batches, deterministic val batches, resumable state),
// the Batch it hands out, the metrics over batches (accuracy, bits per byte) and helpers
// the sources share (state text, val windows, the train / val split).
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <sstream>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "../core/error.hpp"
#include "../core/file.hpp"
#include "../core/rng.hpp"
#include "../core/tensor.hpp"

namespace hybrid::data {

// B sequences of T ids, sequence-major: row b*T + t is position t of sequence b, the same
// row order as the (B*T, V) logits. targets[i] = -1: position i is not scored.
// doc_starts: packed documents, the flat indices i (into tokens) where a document starts,
// increasing; empty unless asked for (mark_documents), and then what the model's
// TrainingOptions::doc_starts takes.
struct Batch {
  std::vector<int> tokens, targets;
  Index B = 0, T = 0;
  std::vector<Index> doc_starts;

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

// Packed documents: sets b.doc_starts to every position whose token is `bos` (the shards'
// documents each start with one: BOS id 1 in parameter golf's shards), so that training
// with them keeps each document to itself. A row's first token starts a segment anyway
// (the model adds the row starts), so a row that begins inside a document runs that part
// as a document of its own. Returns how many documents start inside the rows.
inline Index mark_documents(Batch& b, int bos) {
  HYBRID_CHECK(bos >= 0, "mark_documents: the BOS id must be >= 0, got ", bos);
  HYBRID_CHECK(Index(b.tokens.size()) == b.B * b.T, "mark_documents: batch has ", b.tokens.size(),
               " tokens, expected B*T = ", b.B * b.T);
  b.doc_starts.clear();
  for (std::size_t i = 0; i < b.tokens.size(); ++i)
    if (b.tokens[i] == bos) b.doc_starts.push_back(Index(i));
  return Index(b.doc_starts.size());
}

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

}  // namespace hybrid::data
