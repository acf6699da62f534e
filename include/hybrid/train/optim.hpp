// Optimisers for training: Muon (Newton–Schulz orthogonalised momentum) on the 2-D
// projection matrices and AdamW on everything else, one group per ParamRole; global
// gradient-norm clipping; learning-rate schedules; an exponential moving average of weights.
//
//   GradStore<double> grads(model);
//   Optimizer<double> opt(grads, OptimConfig{});          // Muon + AdamW defaults
//   Schedule sched = Schedule::warmup_cosine(100, 5000, 0.1);
//   for (step ...) { grads.zero(); <backward passes>; opt.step(sched.factor(opt.steps())); }
#pragma once
#include <cmath>
#include <cstdint>
#include <limits>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "../autograd/tape.hpp"
#include "../core/buffer.hpp"
#include "../core/gemm.hpp"
#include "../core/parallel.hpp"
#include "../core/error.hpp"
#include "../core/tensor.hpp"
#include "../layers/param.hpp"

namespace hybrid::train {

// ---- configuration -------------------------------------------------------------------

enum class MatrixOptimizer { Muon, AdamW };

struct GroupConfig {
  double lr;
  double weight_decay;  // decoupled: p *= 1 - lr * weight_decay, before the update
};

struct OptimConfig {
  MatrixOptimizer matrix_optimizer = MatrixOptimizer::Muon;
  // One group per ParamRole. Only matrices decay by default: decaying norm gains, biases,
  // A_log / D / dt_bias or embeddings pulls them toward 0, which is not a "simpler" model
  // for them; set a group's weight_decay > 0 to ask for it anyway.
  GroupConfig matrix{0.02, 0.1};       // Muon lr (REFERENCE §6: 0.02–0.04)
  GroupConfig embedding{3e-4, 0.0};    // AdamW
  GroupConfig scalar{3e-4, 0.0};       // AdamW: norm weights, biases, conv taps
  GroupConfig dynamics{3e-4, 0.0};     // AdamW: Mamba-2 A_log, dt_bias, D
  // AdamW
  double beta1 = 0.9, beta2 = 0.95, eps = 1e-8;
  // Muon
  double muon_momentum = 0.95;
  bool nesterov = true;
  int ns_steps = 5;
  // Global gradient-norm clipping over every gradient; 0 = off.
  double max_grad_norm = 0.0;

  // AdamW everywhere, matrices included (they then use matrix.lr as an AdamW rate).
  static OptimConfig adamw(double lr = 3e-4, double matrix_weight_decay = 0.1) {
    OptimConfig c;
    c.matrix_optimizer = MatrixOptimizer::AdamW;
    c.matrix = {lr, matrix_weight_decay};
    c.embedding.lr = c.scalar.lr = c.dynamics.lr = lr;
    return c;
  }

  const GroupConfig& group(ParamRole r) const {
    switch (r) {
      case ParamRole::Matrix: return matrix;
      case ParamRole::Embedding: return embedding;
      case ParamRole::Scalar: return scalar;
      case ParamRole::Dynamics: return dynamics;
    }
    fail("OptimConfig: unknown parameter role ", int(r));
  }

  void validate() const {
    for (ParamRole r : {ParamRole::Matrix, ParamRole::Embedding, ParamRole::Scalar,
                        ParamRole::Dynamics}) {
      const GroupConfig& g = group(r);
      HYBRID_CHECK(std::isfinite(g.lr) && g.lr >= 0, "OptimConfig: ", role_name(r),
                   ".lr is ", g.lr, "; expected a finite value >= 0");
      HYBRID_CHECK(std::isfinite(g.weight_decay) && g.weight_decay >= 0, "OptimConfig: ",
                   role_name(r), ".weight_decay is ", g.weight_decay,
                   "; expected a finite value >= 0");
    }
    HYBRID_CHECK(beta1 >= 0 && beta1 < 1, "OptimConfig: beta1 is ", beta1, "; expected [0, 1)");
    HYBRID_CHECK(beta2 >= 0 && beta2 < 1, "OptimConfig: beta2 is ", beta2, "; expected [0, 1)");
    HYBRID_CHECK(eps > 0, "OptimConfig: eps is ", eps, "; expected > 0");
    HYBRID_CHECK(muon_momentum >= 0 && muon_momentum < 1, "OptimConfig: muon_momentum is ",
                 muon_momentum, "; expected [0, 1)");
    HYBRID_CHECK(ns_steps >= 1, "OptimConfig: ns_steps is ", ns_steps, "; expected >= 1");
    HYBRID_CHECK(max_grad_norm >= 0 && std::isfinite(max_grad_norm),
                 "OptimConfig: max_grad_norm is ", max_grad_norm, "; expected >= 0 (0 = off)");
  }
};

// ---- Newton–Schulz orthogonalisation (REFERENCE §6) ----------------------------------

// Work buffers for one shape, (m, n) with m = min(rows, cols) <= n = max(rows, cols):
// iterating on the wide orientation keeps A = X Xᵀ at the small side (m, m).
template <class S>
struct NsWork {
  Mat<S> X, Xn;  // (m, n)
  Mat<S> A, B;   // (m, m)
  bool transposed = false;

  NsWork() = default;
  NsWork(Index rows, Index cols) {
    const Index m = std::min(rows, cols), n = std::max(rows, cols);
    X.setZero(m, n);
    Xn.setZero(m, n);
    A.setZero(m, m);
    B.setZero(m, m);
  }
};

inline constexpr double kNsA = 3.4445, kNsB = -4.7750, kNsC = 2.0315;

// G (rows, cols), any Eigen expression → w.X = the quintic iterate, (m, n); w.transposed
// says that w.X holds the transpose (rows > cols). Singular values end in roughly
// [0.7, 1.2] rather than exactly 1: the coefficients trade exactness for a fast rise
// from small singular values in 5 steps. No allocation when w was built for this shape.
template <class S, class Expr>
void newton_schulz(const Eigen::MatrixBase<Expr>& G, NsWork<S>& w, int steps) {
  const bool tr = G.rows() > G.cols();
  HYBRID_CHECK(w.X.rows() == std::min(G.rows(), G.cols()) &&
                   w.X.cols() == std::max(G.rows(), G.cols()),
               "newton_schulz: work buffers are (", w.X.rows(), ", ", w.X.cols(),
               ") but the matrix is (", G.rows(), ", ", G.cols(), ")");
  w.transposed = tr;
  if (tr) w.X.noalias() = G.transpose();
  else w.X.noalias() = G;
  // 1e-7 keeps an all-zero gradient at zero instead of 0/0.
  w.X /= S(w.X.norm() + 1e-7);
  // The products go through the projections' GEMM (core/gemm.hpp): with OpenBLAS no
  // workspace is allocated per call (Eigen's threaded product allocates its own).
  const Index m = w.X.rows(), n = w.X.cols();
  using blas::Op;
  for (int k = 0; k < steps; ++k) {
    blas::gemm<S>(Op::N, Op::T, m, m, n, S(1), w.X.data(), n, w.X.data(), n, S(0), w.A.data(), m);  // A = X Xᵀ
    blas::gemm<S>(Op::N, Op::N, m, m, m, S(kNsC), w.A.data(), m, w.A.data(), m, S(0), w.B.data(), m);  // c A²
    w.B += S(kNsB) * w.A;                                                                    // + b A
    blas::gemm<S>(Op::N, Op::N, m, n, m, S(1), w.B.data(), m, w.X.data(), n, S(0), w.Xn.data(), n);  // B X
    w.Xn += S(kNsA) * w.X;
    w.X.swap(w.Xn);  // buffer exchange (pointers), not a copy
  }
}

// Convenience (allocates): the orthogonalised (rows, cols) matrix.
template <class S>
Mat<S> newton_schulz(const Mat<S>& G, int steps = 5) {
  NsWork<S> w(G.rows(), G.cols());
  newton_schulz(G, w, steps);
  return w.transposed ? Mat<S>(w.X.transpose()) : w.X;
}

// Muon's per-shape gain: tall matrices (rows > cols) get sqrt(rows / cols) so that the
// update's RMS per entry does not shrink with the output width.
inline double muon_scale(Index rows, Index cols) {
  return std::sqrt(std::max(1.0, double(rows) / double(cols)));
}

// ---- the optimiser -------------------------------------------------------------------

// Updates the parameters behind a GradStore. The gradients are read (and, when clipping,
// scaled in place, as torch.nn.utils.clip_grad_norm_ does) but never zeroed: the caller
// zeroes them before the next accumulation. The model and the GradStore must outlive it.
template <class S>
class Optimizer {
 public:
  struct StepInfo {
    double grad_norm = 0;  // global L2 norm before clipping; NaN/Inf → the step was skipped
    bool clipped = false;
    bool skipped = false;  // non-finite gradient norm: no parameter or state was touched
  };

  // The state (Muon momenta, AdamW moments) is one allocation: per tensor, one or two
  // blocks laid out as the parameter table lays out the values.
  Optimizer(GradStore<S>& grads, const OptimConfig& cfg) : grads_(grads), cfg_(cfg) {
    cfg_.validate();
    std::map<std::pair<Index, Index>, int> work_of_shape;
    Index total = 0;
    auto block = [&](Index n) {
      const Index off = total;
      total += (n + ParamTable::kAlign - 1) / ParamTable::kAlign * ParamTable::kAlign;
      return off;
    };
    for (const auto& e : grads_.entries()) {
      HYBRID_CHECK(int(e.role) >= 0 && int(e.role) <= int(ParamRole::Dynamics), "Optimizer: parameter '",
                   e.name, "' has unknown role ", int(e.role));
      Slot s;
      s.role = e.role;
      s.muon = s.role == ParamRole::Matrix && cfg_.matrix_optimizer == MatrixOptimizer::Muon;
      const Index r = e.rows, c = e.cols;
      s.a = block(r * c);  // Muon: momentum; AdamW: first moment
      if (s.muon) {
        const auto key = std::make_pair(std::min(r, c), std::max(r, c));
        auto it = work_of_shape.find(key);
        if (it == work_of_shape.end()) {
          it = work_of_shape.emplace(key, int(work_.size())).first;
          work_.emplace_back(r, c);
        }
        s.work = it->second;
      } else {
        s.b = block(r * c);  // second moment
      }
      slots_.push_back(s);
    }
    state_ = Buffer<S>(total);
    state_.zero();
    const auto& entries = grads_.entries();
    for (std::size_t i = 0; i < slots_.size(); ++i) {
      const Slot& sl = slots_[i];
      const ParamInfo& e = entries[i];
      if (sl.muon) {
        names_.push_back("muon_mom." + e.name);
        maps_.emplace_back(state_.data() + sl.a, e.rows, e.cols);
      } else {
        names_.push_back("adam_m." + e.name);
        maps_.emplace_back(state_.data() + sl.a, e.rows, e.cols);
        names_.push_back("adam_v." + e.name);
        maps_.emplace_back(state_.data() + sl.b, e.rows, e.cols);
      }
    }
  }
  // Not copyable: two optimisers stepping the same parameters would both apply updates.
  Optimizer(const Optimizer&) = delete;
  Optimizer& operator=(const Optimizer&) = delete;
  Optimizer(Optimizer&&) = default;

  const OptimConfig& config() const { return cfg_; }
  // Completed (not skipped) steps; AdamW's bias correction uses steps() + 1.
  std::int64_t steps() const { return steps_; }
  void set_steps(std::int64_t n) {
    HYBRID_CHECK(n >= 0, "Optimizer::set_steps: ", n, " is negative");
    steps_ = n;
  }

  // One update with every group's lr multiplied by lr_factor (the schedule's value).
  StepInfo step(double lr_factor = 1.0) {
    HYBRID_CHECK(std::isfinite(lr_factor) && lr_factor >= 0, "Optimizer::step: lr_factor is ",
                 lr_factor, "; expected a finite value >= 0");
    StepInfo info;
    info.grad_norm = grad_norm();
    if (!std::isfinite(info.grad_norm)) {
      info.skipped = true;
      return info;
    }
    if (cfg_.max_grad_norm > 0 && info.grad_norm > cfg_.max_grad_norm) {
      const S scale = S(cfg_.max_grad_norm / info.grad_norm);
      S* g = grads_.data();
      par::for_ranges(grads_.size(), par::threads_for(grads_.size()), [&](Index b, Index e) {
        VecMap<S>(g + b, e - b) *= scale;
      });
      info.clipped = true;
    }
    const std::int64_t t = steps_ + 1;
    const double bc1 = 1 - std::pow(cfg_.beta1, double(t));
    const double bc2 = 1 - std::pow(cfg_.beta2, double(t));
    const auto& entries = grads_.entries();
    for (std::size_t i = 0; i < slots_.size(); ++i) {
      Slot& s = slots_[i];
      const ParamInfo& e = entries[i];
      MatMap<S> p(grads_.values() + e.offset, e.rows, e.cols);
      const MatMap<S> g(grads_.data() + e.offset, e.rows, e.cols);
      const GroupConfig& gc = cfg_.group(s.role);
      const double lr = gc.lr * lr_factor;
      if (s.muon) {
        if (gc.weight_decay > 0) p *= S(1 - lr * gc.weight_decay);
        muon_update(s, p, g, lr);
      } else {
        adamw_update(s, p, g, lr, gc.weight_decay, bc1, bc2);
      }
    }
    ++steps_;
    return info;
  }

  // f(name, MatMap<S>&) for every state tensor, in parameter order: "adam_m.<param>",
  // "adam_v.<param>" (AdamW) or "muon_mom.<param>" (Muon). Shapes equal the parameter's.
  template <class F>
  void visit_state(F&& f) {
    for (std::size_t i = 0; i < maps_.size(); ++i) f(names_[i], maps_[i]);
  }
  // Values of the one state allocation (with alignment padding).
  Index state_size() const { return state_.size(); }

 private:
  struct Slot {
    ParamRole role = ParamRole::Scalar;
    bool muon = false;
    Index a = -1, b = -1;  // offsets in state_. Muon: a = momentum; AdamW: a = m, b = v
    int work = -1;
  };

  void muon_update(Slot& s, MatMap<S>& p, const MatMap<S>& g, double lr) {
    const S mu = S(cfg_.muon_momentum);
    MatMap<S> mom(state_.data() + s.a, p.rows(), p.cols());
    mom = mu * mom + g;
    NsWork<S>& w = work_[std::size_t(s.work)];
    // Nesterov: orthogonalise the look-ahead g + mu * buf rather than buf itself.
    if (cfg_.nesterov) newton_schulz(g + mu * mom, w, cfg_.ns_steps);
    else newton_schulz(mom, w, cfg_.ns_steps);
    const S step = S(lr * muon_scale(p.rows(), p.cols()));
    if (w.transposed) p.noalias() -= step * w.X.transpose();
    else p.noalias() -= step * w.X;
  }

  // Global L2 norm of every gradient: 1 Ki squares at a time in S, those partial sums in
  // double (float sums over a large model would lose the small terms), over fixed 64 Ki-entry
  // chunks in a fixed order, so the result does not depend on the thread count.
  double grad_norm() {
    constexpr Index kChunk = Index(1) << 16;
    const Index n = grads_.size(), chunks = (n + kChunk - 1) / kChunk;
    const S* g = grads_.data();
    std::vector<double>& part = norm_parts_;  // sized once: no allocation per step
    part.assign(std::size_t(std::max<Index>(chunks, 1)), 0.0);
    const int parts = int(std::min<Index>(par::threads_for(n), chunks));
    par::for_ranges(chunks, parts, [&](Index b, Index e) {
      for (Index c = b; c < e; ++c) {
        const Index o = c * kChunk, len = std::min(kChunk, n - o);
        double sum = 0;  // blocks of 1 Ki squares summed in S (vectorised), then in double
        for (Index k = 0; k < len; k += 1024)
          sum += double(CVecMap<S>(g + o + k, std::min<Index>(1024, len - k)).squaredNorm());
        part[std::size_t(c)] = sum;
      }
    });
    double sum = 0;
    for (double v : part) sum += v;
    return std::sqrt(sum);
  }

  // One fused pass per tensor (decoupled weight decay, both moments, the update), split
  // across threads; every element sees the same operations in the same order as
  //   p *= 1 - lr wd;  m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2;
  //   p -= (lr / bc1) m / (sqrt(v / bc2) + eps)      (PyTorch's placement of eps)
  void adamw_update(Slot& s, MatMap<S>& p, const MatMap<S>& g, double lr, double wd, double bc1,
                    double bc2) {
    const S b1 = S(cfg_.beta1), b2 = S(cfg_.beta2), decay = S(1 - lr * wd), step = S(lr / bc1),
            c2 = S(bc2), eps = S(cfg_.eps);
    const bool use_decay = wd > 0;
    S* pp = p.data();
    S* mp = state_.data() + s.a;
    S* vp = state_.data() + s.b;
    const S* gp = g.data();
    par::for_ranges(p.size(), par::threads_for(p.size()), [&](Index b, Index e) {
      auto P = VecMap<S>(pp + b, e - b).array();
      auto M = VecMap<S>(mp + b, e - b).array();
      auto V = VecMap<S>(vp + b, e - b).array();
      const auto G = CVecMap<S>(gp + b, e - b).array();
      if (use_decay) P *= decay;
      M = b1 * M + (S(1) - b1) * G;
      V = b2 * V + (S(1) - b2) * G.square();
      P -= step * M / ((V / c2).sqrt() + eps);
    }, 16);
  }

  GradStore<S>& grads_;
  OptimConfig cfg_;
  std::vector<Slot> slots_;     // one per GradStore entry, same order
  Buffer<S> state_;             // every moment / momentum, one allocation
  std::vector<std::string> names_;
  std::vector<MatMap<S>> maps_;  // views of state_ for visit_state()
  std::vector<double> norm_parts_;  // grad_norm's per-chunk sums
  std::vector<NsWork<S>> work_;  // one per distinct (min, max) shape among Muon tensors
  std::int64_t steps_ = 0;
};

// ---- learning-rate schedules ---------------------------------------------------------

// factor(step) multiplies every group's lr. Warmup is (step + 1) / (warmup + 1): it starts
// just above 0 (a zero-lr step would be wasted) and reaches 1 at step == warmup.
//   Constant             warmup, then 1 forever (total, warmdown, min_factor unused)
//   WarmupCosine         warmup, then cosine from 1 at `warmup` to min_factor at `total`
//   WarmupLinearWarmdown warmup, 1, then linear from 1 at total - warmdown to min_factor at
//                        total (parameter-golf's "warmdown")
// Steps at or past `total` stay at min_factor.
struct Schedule {
  enum Kind { Constant, WarmupCosine, WarmupLinearWarmdown };
  Kind kind = Constant;
  std::int64_t warmup = 0, total = 0, warmdown = 0;
  double min_factor = 0.0;

  static Schedule constant(std::int64_t warmup = 0) {
    Schedule s{Constant, warmup, 0, 0, 1.0};
    s.validate();
    return s;
  }
  static Schedule warmup_cosine(std::int64_t warmup, std::int64_t total, double min_factor = 0.0) {
    Schedule s{WarmupCosine, warmup, total, 0, min_factor};
    s.validate();
    return s;
  }
  static Schedule warmup_linear_warmdown(std::int64_t warmup, std::int64_t total,
                                         std::int64_t warmdown, double min_factor = 0.0) {
    Schedule s{WarmupLinearWarmdown, warmup, total, warmdown, min_factor};
    s.validate();
    return s;
  }

  void validate() const {
    HYBRID_CHECK(kind == Constant || kind == WarmupCosine || kind == WarmupLinearWarmdown,
                 "Schedule: unknown kind ", int(kind));
    HYBRID_CHECK(warmup >= 0, "Schedule: warmup is ", warmup, "; expected >= 0");
    if (kind == Constant) return;
    HYBRID_CHECK(total > 0, "Schedule: total is ", total, "; expected > 0 steps");
    HYBRID_CHECK(min_factor >= 0 && min_factor <= 1, "Schedule: min_factor is ", min_factor,
                 "; expected [0, 1]");
    if (kind == WarmupCosine)
      HYBRID_CHECK(warmup < total, "Schedule: warmup (", warmup, ") must be < total (", total,
                   ") for a cosine decay");
    if (kind == WarmupLinearWarmdown) {
      HYBRID_CHECK(warmdown >= 0, "Schedule: warmdown is ", warmdown, "; expected >= 0");
      HYBRID_CHECK(warmup + warmdown <= total, "Schedule: warmup (", warmup, ") + warmdown (",
                   warmdown, ") exceed total (", total, ")");
    }
  }

  double factor(std::int64_t step) const {
    validate();
    HYBRID_CHECK(step >= 0, "Schedule::factor: step ", step, " is negative");
    if (step < warmup) return double(step + 1) / double(warmup + 1);
    switch (kind) {
      case Constant: return 1.0;
      case WarmupCosine: {
        if (step >= total) return min_factor;
        const double p = double(step - warmup) / double(total - warmup);
        return min_factor + (1 - min_factor) * 0.5 * (1 + std::cos(3.14159265358979323846 * p));
      }
      case WarmupLinearWarmdown: {
        if (step >= total) return min_factor;
        const std::int64_t start = total - warmdown;
        if (step < start) return 1.0;
        return min_factor + (1 - min_factor) * double(total - step) / double(warmdown);
      }
    }
    return 1.0;
  }
};

// ---- exponential moving average of the weights ---------------------------------------

// ema ← decay · ema + (1 − decay) · w for every parameter, kept in one allocation laid out
// as the model's parameter store. swap() exchanges the values in place, so evaluation runs
// on the averaged weights through the same store.
template <class S>
class Ema {
 public:
  template <class M>
  Ema(M& model, double decay)
      : decay_(decay), table_(model.param_table()), copy_(table_.total()) {
    HYBRID_CHECK(decay >= 0 && decay <= 1, "Ema: decay is ", decay, "; expected [0, 1]");
    std::copy(model.param_values(), model.param_values() + table_.total(), copy_.data());
    for (const auto& e : table_.entries()) maps_.emplace_back(copy_.data() + e.offset, e.rows, e.cols);
  }

  double decay() const { return decay_; }

  template <class M>
  void update(M& model) {
    check(model);
    const S d = S(decay_), e = S(1 - decay_);
    const S* w = model.param_values();
    S* c = copy_.data();
    const Index n = copy_.size();
    par::for_ranges(n, par::threads_for(n), [&](Index b, Index end) {
      VecMap<S>(c + b, end - b) = d * VecMap<S>(c + b, end - b) + e * CVecMap<S>(w + b, end - b);
    }, 16);
  }

  // Exchanges EMA and live values; call again to swap back.
  template <class M>
  void swap(M& model) {
    check(model);
    S* a = model.param_values();
    S* b = copy_.data();
    for (Index k = 0; k < copy_.size(); ++k) std::swap(a[k], b[k]);
  }

  // f(name, MatMap<S>&) with names "ema.<param>".
  template <class F>
  void visit_state(F&& f) {
    for (std::size_t i = 0; i < maps_.size(); ++i) f("ema." + table_[i].name, maps_[i]);
  }

 private:
  template <class M>
  void check(M& model) const {
    const ParamTable& t = model.param_table();
    HYBRID_CHECK(t.size() == table_.size() && t.total() == table_.total(), "Ema: the model has ",
                 t.size(), " tensors (", t.total(), " values), the EMA ", table_.size(), " (",
                 table_.total(), ")");
    for (std::size_t i = 0; i < t.size(); ++i)
      HYBRID_CHECK(t[i].name == table_[i].name && t[i].rows == table_[i].rows && t[i].cols == table_[i].cols,
                   "Ema: model tensor ", i, " '", t[i].name, "' (", t[i].rows, ", ", t[i].cols,
                   ") does not match the EMA's '", table_[i].name, "'");
  }

  double decay_;
  ParamTable table_;
  Buffer<S> copy_;
  std::vector<MatMap<S>> maps_;
};

}  // namespace hybrid::train
