// Knowledge distillation for the trainer: a teacher's targets per batch (full logits or
// top-k ids + log-probs at temperature tau), from a live teacher model (forward only, on a
// tape that does not record) or from a top-k cache file that a first run writes and later
// runs read, and the student's loss against them (ops/kd_loss.hpp, fused with its LM head).
//
// Cache file (version 1, little-endian), one record per distinct batch:
//   header  "HYKDTOPK" | u32 version | u32 k | u32 vocab | u32 0 | f64 tau
//           | u64 teacher fingerprint | u64 records                         (48 bytes)
//   record  u64 key | u32 B | u32 T | i32 ids (B*T, k) | f32 log-probs (B*T, k)
//           | u64 checksum (FNV-1a 64 of the record's bytes before it)
// key: FNV-1a 64 of (B, T, tokens, targets), so a batch finds its record whatever the step
// it comes at (a resumed run, a second run with the same data order). The file's size must
// be exactly what the header and the records say; a header that does not match the run
// (k, vocabulary, tau, teacher weights) or a bad checksum is an error naming the field.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <functional>
#include <memory>
#include <numeric>
#include <string>
#include <type_traits>
#include <unordered_map>
#include <vector>

#include "../autograd/functions.hpp"
#include "../core/atomic_file.hpp"
#include "../core/error.hpp"
#include "../core/file.hpp"
#include "../data/source.hpp"
#include "../runtime_model.hpp"

namespace hybrid::train {

// A teacher's targets for one batch of R = B*T rows, in float.
struct TeacherTargets {
  Index rows = 0, vocab = 0;
  Index k = 0;                // 0: full logits; else top-k
  std::vector<float> logits;  // (R, V) teacher logits (k == 0)
  std::vector<int> ids;       // (R, k) top-k ids, largest logit first (k > 0)
  std::vector<float> logp;    // (R, k) their log-probs at temperature tau (k > 0)
};

// Fills the targets of a batch.
using TeacherFn = std::function<void(const data::Batch&, TeacherTargets&)>;

// loss = alpha * CE + beta * tau^2 * KL(teacher || student) per scored token (ops/kd_loss.hpp).
struct KdConfig {
  double alpha = 1, beta = 1, tau = 1;
  TeacherFn teacher;  // empty: no distillation
  bool on() const { return bool(teacher); }
  void validate() const {
    HYBRID_CHECK(std::isfinite(tau) && tau > 0, "distillation: temperature ", tau, "; expected > 0");
    HYBRID_CHECK(alpha >= 0 && beta >= 0 && std::isfinite(alpha) && std::isfinite(beta),
                 "distillation: alpha ", alpha, ", beta ", beta, "; expected finite weights >= 0");
  }
};

namespace detail {
inline std::uint64_t fnv1a(const void* p, std::size_t n, std::uint64_t h = 1469598103934665603ull) {
  const auto* b = static_cast<const unsigned char*>(p);
  for (std::size_t i = 0; i < n; ++i) h = (h ^ b[i]) * 1099511628211ull;
  return h;
}
}  // namespace detail

// The cache key of a batch: FNV-1a 64 of B, T, its tokens and its targets.
inline std::uint64_t batch_key(const data::Batch& b) {
  const std::int64_t bt[2] = {std::int64_t(b.B), std::int64_t(b.T)};
  std::uint64_t h = detail::fnv1a(bt, sizeof bt);
  h = detail::fnv1a(b.tokens.data(), b.tokens.size() * sizeof(int), h);
  return detail::fnv1a(b.targets.data(), b.targets.size() * sizeof(int), h);
}

// A fingerprint of a model's weights (FNV-1a 64 of the parameter values as float): the
// cache's record of which teacher made it.
template <class S>
std::uint64_t model_fingerprint(const RuntimeModel<S>& m) {
  const S* v = m.param_values();
  const Index n = m.param_table().total();
  std::uint64_t h = detail::fnv1a(&n, sizeof n);
  if constexpr (std::is_same_v<S, float>) return detail::fnv1a(v, std::size_t(n) * sizeof(float), h);
  for (Index i = 0; i < n; ++i) {
    const float f = float(v[i]);
    h = detail::fnv1a(&f, sizeof f, h);
  }
  return h;
}

// The k largest of u (V) (ties: the smaller id first) and their log-probs at temperature
// tau: log softmax(u / tau) over all V.
inline void topk_logprobs(const float* u, Index V, Index k, double tau, int* ids, float* logp,
                          std::vector<int>& order) {
  order.resize(std::size_t(V));
  std::iota(order.begin(), order.end(), 0);
  std::partial_sort(order.begin(), order.begin() + k, order.end(),
                    [u](int a, int b) { return u[a] > u[b] || (u[a] == u[b] && a < b); });
  const double m = double(u[order[0]]) / tau;
  double s = 0;
  for (Index j = 0; j < V; ++j) s += std::exp(double(u[j]) / tau - m);
  const double lse = m + std::log(s);
  for (Index j = 0; j < k; ++j) {
    ids[j] = order[std::size_t(j)];
    logp[j] = float(double(u[ids[j]]) / tau - lse);
  }
}

// A live teacher: its forward (non-recording, on a tape kept between calls) on the batch's
// tokens; full logits when topk is 0, else its top-k at temperature tau. The model must
// outlive the function.
template <class S>
TeacherFn live_teacher(const RuntimeModel<S>& teacher, Index topk, double tau) {
  HYBRID_CHECK(topk >= 0 && topk <= teacher.vocab(), "distillation: top-k of ", topk,
               "; expected 0 (full logits) to the vocabulary (", teacher.vocab(), ")");
  auto ctx = std::make_shared<Tape<S>>(false);
  auto order = std::make_shared<std::vector<int>>();
  const RuntimeModel<S>* m = &teacher;
  return [m, topk, tau, ctx, order](const data::Batch& b, TeacherTargets& out) {
    const Mat<S> l = m->forward(b.tokens, b.B, b.T, nullptr, true, ctx.get());  // (B*T, V)
    const Index R = l.rows(), V = l.cols();
    out.rows = R, out.vocab = V, out.k = topk;
    if (topk == 0) {
      out.logits.resize(std::size_t(R * V));
      for (Index r = 0; r < R; ++r)
        for (Index j = 0; j < V; ++j) out.logits[std::size_t(r * V + j)] = float(l(r, j));
      return;
    }
    out.ids.resize(std::size_t(R * topk));
    out.logp.resize(std::size_t(R * topk));
    std::vector<float> row(static_cast<std::size_t>(V));
    for (Index r = 0; r < R; ++r) {
      for (Index j = 0; j < V; ++j) row[std::size_t(j)] = float(l(r, j));
      topk_logprobs(row.data(), V, topk, tau, out.ids.data() + r * topk, out.logp.data() + r * topk, *order);
    }
  };
}

// The top-k cache (format at the top of this file). open() reads an existing file (or
// starts empty when there is none); find() / add() look up and append records in memory;
// save() replaces the file atomically with every record.
class TopkCache {
 public:
  static constexpr char kMagic[8] = {'H', 'Y', 'K', 'D', 'T', 'O', 'P', 'K'};
  static constexpr std::uint32_t kVersion = 1;
  static constexpr std::size_t kHeader = 48;

  TopkCache(std::string path, Index k, Index vocab, double tau, std::uint64_t teacher)
      : path_(std::move(path)), k_(k), vocab_(vocab), tau_(tau), teacher_(teacher) {
    HYBRID_CHECK(k > 0 && k <= vocab, "kd cache '", path_, "': top-k of ", k, "; expected 1 to the vocabulary (",
                 vocab, ")");
    if (std::filesystem::exists(path_)) read();
  }

  const std::string& path() const { return path_; }
  Index records() const { return Index(recs_.size()); }
  Index hits() const { return hits_; }
  Index misses() const { return misses_; }
  bool dirty() const { return dirty_; }

  // The record of this batch into out; false when there is none.
  bool find(const data::Batch& b, TeacherTargets& out) {
    const auto it = index_.find(batch_key(b));
    if (it == index_.end()) return false;
    const Rec& r = recs_[it->second];
    HYBRID_CHECK(r.B == b.B && r.T == b.T, "kd cache '", path_, "': a record with this batch's key holds (B, T) = (",
                 r.B, ", ", r.T, "), the batch is (", b.B, ", ", b.T, ")");
    out.rows = r.B * r.T, out.vocab = vocab_, out.k = k_;
    out.ids = r.ids, out.logp = r.logp;
    ++hits_;
    return true;
  }
  // Appends the targets of this batch (top-k with this cache's k and vocabulary).
  void add(const data::Batch& b, const TeacherTargets& t) {
    HYBRID_CHECK(t.k == k_ && t.vocab == vocab_ && t.rows == b.B * b.T, "kd cache '", path_, "': targets with k ",
                 t.k, ", vocabulary ", t.vocab, ", ", t.rows, " rows; expected k ", k_, ", vocabulary ", vocab_, ", ",
                 b.B * b.T, " rows");
    const std::uint64_t key = batch_key(b);
    if (index_.count(key)) return;
    index_[key] = recs_.size();
    recs_.push_back({key, b.B, b.T, t.ids, t.logp});
    ++misses_;
    dirty_ = true;
  }

  void save() {
    AtomicFile f(path_, "kd cache: '" + path_ + "'");
    std::string h(kHeader, '\0');
    put_header(h.data());
    f.write(h);
    std::string rec;
    for (const Rec& r : recs_) {
      const std::size_t R = std::size_t(r.B * r.T), n = 16 + R * std::size_t(k_) * 8;
      rec.assign(n + 8, '\0');
      char* p = rec.data();
      const std::uint32_t bt[2] = {std::uint32_t(r.B), std::uint32_t(r.T)};
      std::memcpy(p, &r.key, 8);
      std::memcpy(p + 8, bt, 8);
      std::memcpy(p + 16, r.ids.data(), r.ids.size() * 4);
      std::memcpy(p + 16 + r.ids.size() * 4, r.logp.data(), r.logp.size() * 4);
      const std::uint64_t sum = detail::fnv1a(p, n);
      std::memcpy(p + n, &sum, 8);
      f.write(rec);
    }
    f.commit();
    dirty_ = false;
  }

 private:
  struct Rec {
    std::uint64_t key;
    Index B, T;
    std::vector<int> ids;
    std::vector<float> logp;
  };

  void put_header(char* h) const {
    const std::uint32_t u[4] = {kVersion, std::uint32_t(k_), std::uint32_t(vocab_), 0};
    const std::uint64_t n = recs_.size();
    std::memcpy(h, kMagic, 8);
    std::memcpy(h + 8, u, 16);
    std::memcpy(h + 24, &tau_, 8);
    std::memcpy(h + 32, &teacher_, 8);
    std::memcpy(h + 40, &n, 8);
  }

  void read() {
    const std::string bytes = read_file(path_, "kd cache", "a top-k cache written by train --kd-cache");
    const std::string where = "kd cache '" + path_ + "'";
    HYBRID_CHECK(bytes.size() >= kHeader && std::memcmp(bytes.data(), kMagic, 8) == 0, where,
                 ": not a top-k cache (expected the magic HYKDTOPK and a 48-byte header)");
    std::uint32_t u[4];
    double tau;
    std::uint64_t teacher, n;
    std::memcpy(u, bytes.data() + 8, 16);
    std::memcpy(&tau, bytes.data() + 24, 8);
    std::memcpy(&teacher, bytes.data() + 32, 8);
    std::memcpy(&n, bytes.data() + 40, 8);
    HYBRID_CHECK(u[0] == kVersion, where, ": format version ", u[0], "; this build reads version ", kVersion);
    HYBRID_CHECK(u[1] == std::uint32_t(k_), where, ": made with top-k ", u[1], ", this run asks for ", k_,
                 " (use the same --kd-topk, or another --kd-cache file)");
    HYBRID_CHECK(u[2] == std::uint32_t(vocab_), where, ": made for a vocabulary of ", u[2], ", this teacher has ",
                 vocab_);
    HYBRID_CHECK(tau == tau_, where, ": made at temperature ", tau, ", this run asks for ", tau_,
                 " (use the same --kd-temp, or another --kd-cache file)");
    HYBRID_CHECK(teacher == teacher_, where, ": made by another teacher (weights fingerprint ", teacher,
                 ", this teacher's is ", teacher_, "); use another --kd-cache file");
    std::size_t off = kHeader;
    for (std::uint64_t i = 0; i < n; ++i) {
      HYBRID_CHECK(bytes.size() >= off + 16, where, ": truncated: record ", i, " of ", n, " is cut short at byte ",
                   bytes.size());
      Rec r;
      std::uint32_t bt[2];
      std::memcpy(&r.key, bytes.data() + off, 8);
      std::memcpy(bt, bytes.data() + off + 8, 8);
      r.B = bt[0], r.T = bt[1];
      const std::size_t R = std::size_t(r.B * r.T), len = 16 + R * std::size_t(k_) * 8;
      HYBRID_CHECK(R > 0 && bytes.size() >= off + len + 8, where, ": truncated: record ", i, " of ", n,
                   " needs ", len + 8, " bytes at offset ", off, ", the file has ", bytes.size());
      std::uint64_t sum;
      std::memcpy(&sum, bytes.data() + off + len, 8);
      HYBRID_CHECK(sum == detail::fnv1a(bytes.data() + off, len), where, ": record ", i,
                   " fails its checksum (the file is damaged; delete it to rebuild the cache)");
      r.ids.resize(R * std::size_t(k_));
      r.logp.resize(R * std::size_t(k_));
      std::memcpy(r.ids.data(), bytes.data() + off + 16, r.ids.size() * 4);
      std::memcpy(r.logp.data(), bytes.data() + off + 16 + r.ids.size() * 4, r.logp.size() * 4);
      for (int id : r.ids)
        HYBRID_CHECK(id >= 0 && id < vocab_, where, ": record ", i, " holds id ", id, " outside [0, ", vocab_, ")");
      index_[r.key] = recs_.size();
      recs_.push_back(std::move(r));
      off += len + 8;
    }
    HYBRID_CHECK(off == bytes.size(), where, ": ", bytes.size() - off, " bytes after the ", n,
                 " records the header announces");
  }

  std::string path_;
  Index k_, vocab_;
  double tau_;
  std::uint64_t teacher_;
  std::vector<Rec> recs_;
  std::unordered_map<std::uint64_t, std::size_t> index_;
  Index hits_ = 0, misses_ = 0;
  bool dirty_ = false;
};

// Targets from the cache, from `live` (a top-k teacher of the cache's k) for a batch it
// does not hold, which is then added (cache->save() writes the file).
inline TeacherFn cached_teacher(std::shared_ptr<TopkCache> cache, TeacherFn live) {
  return [cache, live](const data::Batch& b, TeacherTargets& out) {
    if (cache->find(b, out)) return;
    live(b, out);
    cache->add(b, out);
  };
}

// The student's loss on a batch against the teacher's targets: (1x1) alpha * CE + beta *
// tau^2 * KL, the head and the loss fused (ops/kd_loss.hpp). parts: the unweighted means.
template <class S>
Var<S> distill_loss(const RuntimeModel<S>& student, Tape<S>& t, const data::Batch& b, const TeacherTargets& tt,
                    const KdConfig& kd, double z_loss, const TrainingOptions& o, ops::KdSums* parts = nullptr) {
  const Index R = b.B * b.T;
  HYBRID_CHECK(tt.vocab == student.vocab(), "distillation: the teacher's vocabulary has ", tt.vocab,
               " ids, the student's ", student.vocab(), "; distillation needs the same vocabulary");
  HYBRID_CHECK(tt.rows == R, "distillation: the teacher gave ", tt.rows, " rows for a batch of B*T = ", R);
  const Var<S> x = student.head_input(t, b.tokens, b.targets, b.B, b.T, o);
  ops::KdTeacher<S> tc;
  std::vector<S> conv;  // the targets in S when S is not float (the op copies them to the tape)
  auto view = [&](const std::vector<float>& v, Index cols) {
    if constexpr (std::is_same_v<S, float>) {
      return CView<S>(v.data(), R, cols, cols);
    } else {
      conv.assign(v.begin(), v.end());
      return CView<S>(conv.data(), R, cols, cols);
    }
  };
  if (tt.k > 0) {
    HYBRID_CHECK(Index(tt.ids.size()) == R * tt.k && Index(tt.logp.size()) == R * tt.k,
                 "distillation: top-k targets of the wrong size");
    tc.ids = tt.ids.data();
    tc.logp = view(tt.logp, tt.k);
  } else {
    HYBRID_CHECK(Index(tt.logits.size()) == R * tt.vocab, "distillation: teacher logits of the wrong size");
    tc.logits = view(tt.logits, tt.vocab);
  }
  ops::HeadLoss h = student.head_config(z_loss);
  return ag::kd_head_loss(t, x, student.head_weight(), b.targets.data(), h, {kd.alpha, kd.beta, kd.tau}, tc, parts);
}

}  // namespace hybrid::train
