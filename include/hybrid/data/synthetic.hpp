// Seeded synthetic tasks as data sources: multi-query associative recall (MQAR),
// selective copying and induction heads, each scoring only the positions the context decides.
#pragma once
#include <algorithm>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "source.hpp"

namespace hybrid::data {

namespace detail {
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
}  // namespace detail

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

}  // namespace hybrid::data
