// Knowledge distillation for the trainer: a teacher's targets per batch (full logits or
// top-k ids + log-probs at temperature tau, and optionally the outputs of chosen teacher
// blocks), from a live teacher model (forward only, on a tape that does not record; packed
// documents as the student sees them) or from a top-k cache file that a first run writes and
// later runs read, and the student's loss against them (ops/kd_loss.hpp, fused with its LM
// head; feature terms through ag::mse and, where the widths differ, a learned linear map).
//
// Cache file (version 1, little-endian), one record per distinct batch:
//   header  "HYKDTOPK" | u32 version | u32 k | u32 vocab | u32 0 | f64 tau
//           | u64 teacher fingerprint | u64 records                         (48 bytes)
//   record  u64 key | u32 B | u32 T | i32 ids (B*T, k) | f32 log-probs (B*T, k)
//           | u64 checksum (FNV-1a 64 of the record's bytes before it)
// key: FNV-1a 64 of (B, T, tokens, targets[, document starts when the batch is packed]),
// so a batch finds its record whatever the step
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
  // Feature distillation: the outputs (R, width) of the teacher blocks the feature map
  // names, in its order (empty without feature terms).
  Index width = 0;
  std::vector<std::vector<float>> features;
};

// One feature-distillation term: the output of student block `student` (after its residual
// adds) against the output of teacher block `teacher`; block indices count from 0.
struct FeaturePair {
  int student = 0, teacher = 0;
  bool operator==(const FeaturePair&) const = default;
};

// "S:T,S:T,...": pairs of block indices (student:teacher, from 0), e.g. "3:6,7:12". Each
// student block appears once. Throws naming the bad entry.
inline std::vector<FeaturePair> parse_feature_map(const std::string& spec, const std::string& flag = "--kd-features") {
  std::vector<FeaturePair> out;
  std::size_t i = 0;
  auto number = [&](const std::string& part, const char* side) {
    HYBRID_CHECK(!part.empty() && part.size() <= 6 && part.find_first_not_of("0123456789") == std::string::npos,
                 flag, " '", spec, "': '", part, "' is not a ", side, " block index (expected S:T pairs of block "
                 "indices from 0, separated by commas, e.g. 3:6,7:12)");
    return std::stoi(part);
  };
  HYBRID_CHECK(!spec.empty(), flag, ": empty; expected S:T pairs of block indices, e.g. 3:6,7:12");
  while (i <= spec.size()) {
    const std::size_t comma = std::min(spec.find(',', i), spec.size());
    const std::string item = spec.substr(i, comma - i);
    const std::size_t colon = item.find(':');
    HYBRID_CHECK(colon != std::string::npos, flag, " '", spec, "': '", item, "' has no ':' (expected "
                 "student:teacher, e.g. 3:6)");
    const FeaturePair p{number(item.substr(0, colon), "student"), number(item.substr(colon + 1), "teacher")};
    for (const FeaturePair& q : out)
      HYBRID_CHECK(q.student != p.student, flag, " '", spec, "': student block ", p.student,
                   " appears twice (one teacher block per student block)");
    out.push_back(p);
    i = comma + 1;
  }
  return out;
}

// Fills the targets of a batch.
using TeacherFn = std::function<void(const data::Batch&, TeacherTargets&)>;

// loss = alpha * CE + beta * tau^2 * KL(teacher || student) per scored token (ops/kd_loss.hpp)
// + gamma * the mean over the feature pairs of MSE(map_i(student block output), teacher
// block output) per entry, map_i a learned (teacher width, student width) linear map when
// the widths differ and the identity when they are equal (FeatureMaps).
struct KdConfig {
  double alpha = 1, beta = 1, tau = 1;
  TeacherFn teacher;  // empty: no distillation
  std::vector<FeaturePair> features{};  // empty: no feature terms
  double gamma = 1;
  Index teacher_width = 0;  // width of the teacher's block outputs (needed with features)
  bool on() const { return bool(teacher); }
  void validate() const {
    HYBRID_CHECK(std::isfinite(tau) && tau > 0, "distillation: temperature ", tau, "; expected > 0");
    HYBRID_CHECK(alpha >= 0 && beta >= 0 && std::isfinite(alpha) && std::isfinite(beta),
                 "distillation: alpha ", alpha, ", beta ", beta, "; expected finite weights >= 0");
    HYBRID_CHECK(features.empty() || (std::isfinite(gamma) && gamma >= 0 && teacher_width > 0),
                 "distillation: feature weight ", gamma, " and teacher width ", teacher_width,
                 "; expected a finite weight >= 0 and the teacher's width");
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
// Document starts (packed batches) are part of it: the teacher's outputs depend on them.
inline std::uint64_t batch_key(const data::Batch& b) {
  const std::int64_t bt[2] = {std::int64_t(b.B), std::int64_t(b.T)};
  std::uint64_t h = detail::fnv1a(bt, sizeof bt);
  h = detail::fnv1a(b.tokens.data(), b.tokens.size() * sizeof(int), h);
  h = detail::fnv1a(b.targets.data(), b.targets.size() * sizeof(int), h);
  if (b.doc_starts.empty()) return h;
  return detail::fnv1a(b.doc_starts.data(), b.doc_starts.size() * sizeof(Index), h);
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
// tokens, with the batch's document starts when it is packed; full logits when topk is 0,
// else its top-k at temperature tau; and the outputs of the blocks `feature_blocks` names
// (in that order; feature distillation). The model must outlive the function.
template <class S>
TeacherFn live_teacher(const RuntimeModel<S>& teacher, Index topk, double tau, std::vector<int> feature_blocks = {}) {
  HYBRID_CHECK(topk >= 0 && topk <= teacher.vocab(), "distillation: top-k of ", topk,
               "; expected 0 (full logits) to the vocabulary (", teacher.vocab(), ")");
  for (int l : feature_blocks)
    HYBRID_CHECK(l >= 0 && l < teacher.n_blocks(), "feature distillation: teacher block ", l,
                 " does not exist; the teacher has blocks 0 to ", teacher.n_blocks() - 1);
  auto ctx = std::make_shared<Tape<S>>(false);
  auto order = std::make_shared<std::vector<int>>();
  const RuntimeModel<S>* m = &teacher;
  return [m, topk, tau, ctx, order, feature_blocks](const data::Batch& b, TeacherTargets& out) {
    const Index D = m->spec().d_model;
    out.width = feature_blocks.empty() ? 0 : D;
    out.features.resize(feature_blocks.size());
    const typename RuntimeModel<S>::BlockTap tap = [&](int l, Var<S> x) {  // x: (B*T, D)
      for (std::size_t i = 0; i < feature_blocks.size(); ++i) {
        if (feature_blocks[i] != l) continue;
        std::vector<float>& f = out.features[i];
        f.resize(std::size_t(x.rows * D));
        for (Index r = 0; r < x.rows; ++r)
          for (Index c = 0; c < D; ++c) f[std::size_t(r * D + c)] = float(x.v[r * x.ld + c]);
      }
    };
    TrainingOptions o;
    o.doc_starts = b.doc_starts;
    ctx->rewind();
    const Mat<S> l =
        m->logits(*ctx, b.tokens, b.B, b.T, o, feature_blocks.empty() ? typename RuntimeModel<S>::BlockTap{} : tap)
            .val();
    ctx->rewind();  // (B*T, V)
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

// The learned maps of feature distillation: for each pair of KdConfig::features whose widths
// differ, a (teacher width, student width) matrix taking the student block's output to the
// teacher's width (identity, and no parameter, when they are equal). Their own parameter
// table and store, so that a GradStore and an Optimizer take them as they take a model;
// the student's weights and files are untouched (the maps serve training only).
template <class S>
class FeatureMaps {
 public:
  FeatureMaps(const std::vector<FeaturePair>& pairs, int student_blocks, Index student_width, Index teacher_width,
              std::uint64_t seed)
      : pairs_(pairs), ds_(student_width), dt_(teacher_width) {
    HYBRID_CHECK(student_width > 0 && teacher_width > 0, "feature distillation: widths ", student_width, " and ",
                 teacher_width, "; expected positive");
    for (const FeaturePair& p : pairs_) {
      HYBRID_CHECK(p.student >= 0 && p.student < student_blocks, "feature distillation: student block ", p.student,
                   " does not exist; the student has blocks 0 to ", student_blocks - 1);
      maps_.push_back(ds_ == dt_ ? Param{}
                                 : table_.add("kd_features." + std::to_string(p.student) + "_" +
                                                  std::to_string(p.teacher) + ".weight",
                                              dt_, ds_, ParamRole::Matrix));
    }
    store_ = ParamStore<S>(table_);
    for (const Param& w : maps_)  // normal, std 1 / sqrt(student width): unit gain at the start
      if (w.present()) init::normal(store_.view(w), 1.0 / std::sqrt(double(ds_)), derive_seed(seed, "kd_features"));
  }

  const std::vector<FeaturePair>& pairs() const { return pairs_; }
  bool learned() const { return ds_ != dt_; }
  const ParamTable& param_table() const { return table_; }
  S* param_values() { return store_.data(); }
  const S* param_values() const { return store_.data(); }

  // Pair i's map applied to x (R, student width): (R, teacher width). grads: the store of
  // these maps' gradients (nullptr: none recorded).
  Var<S> apply(Tape<S>& t, std::size_t i, Var<S> x, GradStore<S>* grads) {
    const Param& w = maps_.at(i);
    if (!w.present()) return x;
    const Var<S> wv{store_.data() + w.offset, grads && t.recording() ? grads->of(w) : nullptr, dt_, ds_, ds_};
    return ag::linear(t, x, wv);
  }

 private:
  std::vector<FeaturePair> pairs_;
  Index ds_, dt_;
  ParamTable table_;
  std::vector<Param> maps_;
  ParamStore<S> store_;
};

// The student's loss on a batch against the teacher's targets: (1x1) alpha * CE + beta *
// tau^2 * KL, the head and the loss fused (ops/kd_loss.hpp), + gamma * the mean feature MSE
// when kd.features is not empty (maps: the learned maps, fmap_grads their gradients).
// parts: the unweighted means of cross-entropy and KL; feature_mse: the unweighted mean of
// the feature MSEs.
template <class S>
Var<S> distill_loss(const RuntimeModel<S>& student, Tape<S>& t, const data::Batch& b, const TeacherTargets& tt,
                    const KdConfig& kd, double z_loss, const TrainingOptions& o, ops::KdSums* parts = nullptr,
                    std::type_identity_t<FeatureMaps<S>>* maps = nullptr,
                    std::type_identity_t<GradStore<S>>* fmap_grads = nullptr,
                    double* feature_mse = nullptr) {
  const Index R = b.B * b.T;
  HYBRID_CHECK(tt.vocab == student.vocab(), "distillation: the teacher's vocabulary has ", tt.vocab,
               " ids, the student's ", student.vocab(), "; distillation needs the same vocabulary");
  HYBRID_CHECK(tt.rows == R, "distillation: the teacher gave ", tt.rows, " rows for a batch of B*T = ", R);
  const std::size_t nf = kd.features.size();
  if (nf > 0) {
    HYBRID_CHECK(maps && maps->pairs() == kd.features, "distillation: feature terms need the FeatureMaps made "
                 "for these pairs");
    HYBRID_CHECK(tt.features.size() == nf && tt.width == kd.teacher_width, "distillation: the teacher gave ",
                 tt.features.size(), " feature tensors of width ", tt.width, ", the feature map asks for ", nf,
                 " of width ", kd.teacher_width, " (a top-k cache holds logits only: feature terms need the live "
                 "teacher)");
    for (const auto& f : tt.features)
      HYBRID_CHECK(Index(f.size()) == R * tt.width, "distillation: teacher features of the wrong size");
  }
  Var<S>* taps = nf > 0 ? t.template scratch_as<Var<S>>(student.n_blocks()) : nullptr;
  // Recording: the block output itself (its gradient flows on); not recording (a loss
  // value only): a copy, since the block's buffer is reused two blocks on.
  const typename RuntimeModel<S>::BlockTap tap = [taps, &t, &kd](int l, Var<S> x) {
    if (t.recording()) {
      taps[l] = x;
      return;
    }
    for (const FeaturePair& p : kd.features)
      if (p.student == l) {
        taps[l] = t.var(x.rows, x.cols);
        ops::copy<S>(x.value(), taps[l].value());
      }
  };
  const Var<S> x = student.head_input(t, b.tokens, b.targets, b.B, b.T, o,
                                      nf > 0 ? tap : typename RuntimeModel<S>::BlockTap{});
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
  Var<S> loss = ag::kd_head_loss(t, x, student.head_weight(), b.targets.data(), h, {kd.alpha, kd.beta, kd.tau}, tc, parts);
  if (nf == 0) return loss;
  double mse_sum = 0;
  const Index W = tt.width;
  for (std::size_t i = 0; i < nf; ++i) {
    S* f = t.scratch(R * W);  // the teacher's block output, (R, W), no gradient
    std::copy(tt.features[i].begin(), tt.features[i].end(), f);
    const Var<S> target{f, nullptr, R, W, W};
    const Var<S> m = ag::mse(t, maps->apply(t, i, taps[kd.features[i].student], fmap_grads), target);
    mse_sum += double(m.v[0]);
    loss = ag::add(t, loss, m, S(kd.gamma / double(nf)));
  }
  if (feature_mse) *feature_mse = mse_sum / double(nf);
  return loss;
}

}  // namespace hybrid::train
