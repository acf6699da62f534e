// The reverse-mode tape: one node per operation (not per scalar), each a hand-written
// backward closure placed on the arena together with the activations it saved; backward()
// sweeps the nodes in reverse; rewind() drops them all at once.
//
// Gradient rule: every backward ACCUMULATES (+=) into the gradients of its inputs.
// Activation gradients start at zero when the activation is created; parameter gradients
// live in a GradStore and are only zeroed by GradStore::zero(), so several forward/backward
// passes before an optimiser step sum their gradients (micro-batch accumulation).
#pragma once
#include <cstring>
#include <functional>
#include <memory>
#include <type_traits>
#include <vector>

#include "../core/error.hpp"
#include "../core/parallel.hpp"
#include "../core/buffer.hpp"
#include "../core/tensor.hpp"
#include "../layers/param.hpp"
#include "arena.hpp"
#include "backend.hpp"
#include "../ops/op_id.hpp"

namespace hybrid {

class WeightStore;  // layers/weight_store.hpp

// A tensor on the tape: value and (when recording) gradient buffers, (rows, cols) with row
// stride ld for both. A column range is a view with the parent's ld: free, no node.
template <class S>
struct Var {
  S* v = nullptr;
  S* g = nullptr;  // nullptr: no gradient wanted
  Index rows = 0, cols = 0, ld = 0;

  Index size() const { return rows * cols; }
  bool contiguous() const { return ld == cols || rows <= 1; }
  View<S> value() const { return View<S>(v, rows, cols, ld); }
  View<S> gradient() const { return g ? View<S>(g, rows, cols, ld) : View<S>(); }
  EMap<S> val() const { return emap(value()); }
  EMap<S> grad() const { return emap(View<S>(g, rows, cols, ld)); }
  // Columns [c0, c0 + n): the same buffers (free).
  Var col_range(Index c0, Index n) const {
    HYBRID_CHECK(c0 >= 0 && n >= 0 && c0 + n <= cols, "col_range: columns [", c0, ", ", c0 + n,
                 ") of a (", rows, ", ", cols, ") tensor");
    return Var{v + c0, g ? g + c0 : nullptr, rows, n, ld};
  }
  // Rows [r0, r0 + n) (free).
  Var row_range(Index r0, Index n) const {
    return Var{v + r0 * ld, g ? g + r0 * ld : nullptr, n, cols, ld};
  }
  // Same contiguous buffers seen with another shape of the same size (free: no node).
  Var reshape(Index r, Index c) const {
    HYBRID_CHECK(contiguous(), "reshape: a (", rows, ", ", cols, ") view with ld ", ld,
                 " is not contiguous");
    HYBRID_CHECK(r * c == size(), "reshape: (", rows, ", ", cols, ") has ", size(),
                 " entries, cannot view as (", r, ", ", c, ")");
    return Var{v, g, r, c, c};
  }
};

// Gradients of every parameter of a model: one allocation shaped by the model's parameter
// table (zeroed by one memset), a tensor's gradient at its parameter's offset.
template <class S>
class GradStore {
 public:
  template <class Model>
  explicit GradStore(Model& model)
      : table_(&model.param_table()), values_(model.param_values()), buf_(table_->total()) {
    buf_.zero();
  }

  const ParamTable& table() const { return *table_; }
  const std::vector<ParamInfo>& entries() const { return table_->entries(); }
  // The values these gradients belong to (the model's store).
  S* values() const { return values_; }
  S* of(const Param& p) const { return p.present() ? const_cast<S*>(buf_.data()) + p.offset : nullptr; }
  // The gradient of the tensor whose values start at `value` (a pointer into the model's
  // store), nullptr for memory outside it.
  S* of(const S* value) const {
    if (value < values_ || value >= values_ + buf_.size()) return nullptr;
    return const_cast<S*>(buf_.data()) + (value - values_);
  }
  template <class E>
  S* of(const E& tensor) const { return of(static_cast<const S*>(tensor.data())); }
  // One tensor's values and gradient, by its table entry.
  MatMap<S> value_of(const ParamInfo& e) const { return MatMap<S>(values_ + e.offset, e.rows, e.cols); }
  S* grad_of(const ParamInfo& e) const { return const_cast<S*>(buf_.data()) + e.offset; }
  void zero() { buf_.zero(); }
  S* data() { return buf_.data(); }
  const S* data() const { return buf_.data(); }
  Index size() const { return buf_.size(); }

 private:
  const ParamTable* table_;
  S* values_;
  Buffer<S> buf_;
};

template <class S>
class Tape {
 public:
  // recording = false: values only (inference); nothing is pushed and no gradients exist.
  explicit Tape(bool recording = false, GradStore<S>* grads = nullptr)
      : recording_(recording), grads_(grads) {}
  Tape(const Tape&) = delete;
  Tape& operator=(const Tape&) = delete;
  Tape(Tape&&) = default;
  Tape& operator=(Tape&&) = default;

  bool recording() const { return recording_; }
  void set_recording(bool r) {
    HYBRID_CHECK(!(r && backend_), "tape: a tape on a backend (", backend_ ? backend_->name() : "",
                 ") runs inference only and cannot record");
    recording_ = r;
  }
  // Values in a backend's memory (autograd/backend.hpp) instead of host memory: var()
  // takes from it and every ag:: function runs its op there; nullptr: the host (the CPU
  // path). Inference only. Drops whatever the tape holds; scratch() stays host memory.
  void set_backend(Backend<S>* b) {
    HYBRID_CHECK(!(b && recording_), "tape: a recording tape cannot run on a backend (",
                 b ? b->name() : "", "); backends run inference only");
    rewind();
    backend_ = b;
    values_ = nullptr;
    if (b) b->rewind();
  }
  Backend<S>* backend() const { return backend_; }
  void set_grads(GradStore<S>* g) { grads_ = g; }
  Arena& arena() { return arena_; }
  const Arena& arena() const { return arena_; }
  // The parameter values Param handles resolve against (a model binds its store at the
  // start of every call on the tape). With a GradStore, it must be that store's model.
  // packed: the model's weights in a storage type (layers/weight_store.hpp), which
  // ag::linear and ag::embedding read instead of the float values; inference only, since
  // gradients belong to the float master weights.
  void bind_values(const S* values, const WeightStore* packed = nullptr) {
    HYBRID_CHECK(!(recording_ && grads_ && grads_->values() != values),
                 "tape: its GradStore was made for another model than the one running on it");
    HYBRID_CHECK(!(packed && recording_),
                 "tape: the model holds its weights in a storage type for inference, and a "
                 "recording tape trains the float weights; call set_weight_storage(DType::F32) "
                 "before training");
    HYBRID_CHECK((!packed || std::is_same_v<S, float>),
                 "tape: stored (bf16 / f16 / int8) weights compute in float, not in this scalar type");
    HYBRID_CHECK(!(packed && backend_), "tape: the model's packed weights are host memory and the "
                 "tape runs on ", backend_ ? backend_->name() : "", "; use float weights there");
    values_ = values;
    packed_ = packed;
  }
  // The bound stored weights, nullptr when the float values are all there is.
  const WeightStore* packed() const { return packed_; }

  // Called by ag::linear with each weight and its input x (R, in) before the product, on
  // any tape (calibration: GPTQ gathers sum x^T x per weight through the model's own
  // forward). An empty function (the default) turns it off.
  using LinearObserver = std::function<void(const Param& W, View<const S> x)>;
  void set_linear_observer(LinearObserver f) { observer_ = std::move(f); }
  const LinearObserver& linear_observer() const { return observer_; }

  // Called by ag::linear after y = x W^T + b, with the weight, its input x (R, in) and its
  // output y (R, out), on any tape; returns what the layer goes on with: y itself, or y plus
  // a branch recorded on this tape (LoRA adapters, train/lora.hpp). The recompute tape of
  // gradient checkpointing runs the same function. An empty function (the default): off.
  using LinearAdapter = std::function<Var<S>(Tape& t, const Param& W, Var<S> x, Var<S> y)>;
  void set_linear_adapter(LinearAdapter f) { adapter_ = std::move(f); }
  const LinearAdapter& linear_adapter() const { return adapter_; }
  // The parameter values bound by the last bind_values (nullptr before it).
  const S* bound_values() const { return values_; }

  // Bytes taken from the arena since the last rewind, by kind: activation values, their
  // gradients, values saved for the backward (statistics, ids, masks, nodes), and the
  // largest op workspace (each is freed when its op is done). Their sum bounds the step's
  // arena use.
  struct Usage {
    std::size_t values = 0, gradients = 0, saved = 0, workspace = 0;
    std::size_t total() const { return values + gradients + saved + workspace; }
  };
  const Usage& usage() const { return usage_; }
  // The largest usage() any span between rewinds has had (a recompute tape is rewound once
  // per block, so its usage() alone shows only the last block).
  Usage peak_usage() const { return usage_.total() > peak_.total() ? usage_ : peak_; }

  // A new activation; its gradient (when recording) starts at zero.
  Var<S> var(Index rows, Index cols) {
    if (backend_) {
      usage_.values += sizeof(S) * std::size_t(rows * cols);
      return Var<S>{backend_->alloc(rows * cols), nullptr, rows, cols, cols};
    }
    Var<S> x{arena_.alloc_array<S>(std::size_t(rows * cols)), nullptr, rows, cols, cols};
    usage_.values += sizeof(S) * std::size_t(rows * cols);
    if (recording_) {
      usage_.gradients += sizeof(S) * std::size_t(rows * cols);
      x.g = arena_.alloc_array<S>(std::size_t(rows * cols));
      S* g = x.g;
      par::for_ranges(rows * cols, par::threads_for(rows * cols, Index(1) << 18), [g](Index b, Index e) {
        std::memset(g + b, 0, sizeof(S) * std::size_t(e - b));
      }, 16);
    }
    return x;
  }
  // A parameter as a Var: its values in the bound store and its gradient (nullptr if none).
  Var<S> param(const Param& p) const {
    if (!p.present()) return Var<S>{};
    HYBRID_CHECK(values_, "tape: no parameter values bound (RuntimeModel::logits binds them)");
    return Var<S>{const_cast<S*>(values_) + p.offset, recording_ && grads_ ? grads_->of(p) : nullptr,
                  p.rows, p.cols, p.cols};
  }
  // Memory that lives until rewind(): values saved for the backward and per-call tables.
  // Host memory, also on a tape with a backend (tables of ids, positions, pointers).
  S* scratch(Index n) { return scratch_as<S>(n); }
  Index* scratch_index(Index n) { return scratch_as<Index>(n); }
  int* scratch_int(Index n) { return scratch_as<int>(n); }
  // n trivially destructible values of any type (per-call pointer tables).
  template <class T>
  T* scratch_as(Index n) {
    static_assert(std::is_trivially_destructible_v<T>, "tape scratch holds trivial types only");
    usage_.saved += sizeof(T) * std::size_t(std::max<Index>(n, 1));
    return arena_.alloc_array<T>(std::size_t(std::max<Index>(n, 1)));
  }
  // An op's workspace (the size the op states for its dims), freed when the returned scope
  // ends: take it, run the op, let it go. Nothing else may be taken from the tape meanwhile.
  class Workspace {
   public:
    Workspace(Tape& t, Index n) : t_(t), mark_(t.arena_.mark()) {
      data = t.arena_.template alloc_array<S>(std::size_t(std::max<Index>(n, 1)));
      t.usage_.workspace = std::max(t.usage_.workspace, sizeof(S) * std::size_t(std::max<Index>(n, 1)));
    }
    ~Workspace() { t_.arena_.release(mark_); }
    Workspace(const Workspace&) = delete;
    Workspace& operator=(const Workspace&) = delete;
    S* data;

   private:
    Tape& t_;
    Arena::Mark mark_;
  };
  Workspace workspace(Index n) { return Workspace(*this, n); }

  // A stretch of a non-recording call whose activations die with it (one block of an
  // inference forward): everything taken from the tape inside is freed when the scope
  // ends, so a forward's memory is that of its largest block, not the sum over blocks.
  // Usage counts it as workspace (the largest region), so usage() still bounds the arena.
  // What must outlive the region is copied out before it ends.
  class Region {
   public:
    explicit Region(Tape& t)
        : t_(t), mark_(t.arena_.mark()), dmark_(t.backend_ ? t.backend_->mark() : 0), before_(t.usage_) {
      HYBRID_CHECK(!t.recording_, "tape: a freed region needs a non-recording tape (a "
                   "recording tape keeps every activation for the backward)");
      t.usage_.workspace = 0;  // the largest op workspace inside the region
    }
    ~Region() {
      const std::size_t inside = t_.usage_.total() - (before_.total() - before_.workspace);
      t_.arena_.release(mark_);
      if (t_.backend_) t_.backend_->release(dmark_);
      t_.usage_ = before_;
      t_.usage_.workspace = std::max(before_.workspace, inside);
    }
    Region(const Region&) = delete;
    Region& operator=(const Region&) = delete;

   private:
    Tape& t_;
    Arena::Mark mark_;
    std::size_t dmark_;
    Usage before_;
  };

  // Records a backward closure. It must be trivially destructible (capture Vars, pointers
  // and numbers, not owning containers): the arena never runs destructors.
  template <class F>
  void push(OpId op, F&& f) {
    if (!recording_) return;
    using Fn = std::decay_t<F>;
    static_assert(std::is_trivially_destructible_v<Fn>,
                  "tape nodes must capture only trivially destructible values");
    void* mem = arena_.alloc(sizeof(Fn), alignof(Fn) > 64 ? alignof(Fn) : 64);
    usage_.saved += sizeof(Fn);
    Fn* obj = new (mem) Fn(std::forward<F>(f));
    nodes_.push_back(Node{[](void* p) { (*static_cast<Fn*>(p))(); }, obj, op});
  }

  // Seeds d(total)/d(loss) = seed (1, or 1/n for one of n accumulated micro-batches) and
  // runs every node in reverse order.
  void backward(const Var<S>& loss, S seed = S(1)) {
    HYBRID_CHECK(recording_, "backward: the tape did not record (construct it with recording = true)");
    HYBRID_CHECK(loss.size() == 1 && loss.g, "backward: the loss must be a recorded 1x1 Var");
    loss.g[0] += seed;
    sweep();
  }
  // Runs every node in reverse order; the caller has seeded the output gradients.
  void sweep() {
    for (auto it = nodes_.rbegin(); it != nodes_.rend(); ++it) it->call(it->obj);
  }
  GradStore<S>* grads() const { return grads_; }
  // A second tape for gradient checkpointing (ops recomputed inside a node's backward),
  // with this tape's GradStore; made on first use and kept, so its memory is reused.
  Tape& recompute_tape() {
    if (!recompute_) recompute_ = std::make_unique<Tape>(true, grads_);
    recompute_->set_grads(grads_);
    recompute_->adapter_ = adapter_;
    return *recompute_;
  }
  // The recompute tape if one was made (its memory is part of the step's), else nullptr.
  const Tape* recompute_tape_if_made() const { return recompute_.get(); }

  // Drops every node and activation; memory is kept for the next step.
  void rewind() {
    nodes_.clear();
    arena_.rewind();
    if (backend_) backend_->rewind();
    peak_ = peak_usage();
    usage_ = Usage{};
  }
  // The op of every node recorded since the last rewind, in order (the op-table test).
  template <class F>
  void for_each_op(F&& f) const {
    for (const auto& n : nodes_) f(n.op);
  }

 private:
  struct Node {
    void (*call)(void*);
    void* obj;
    OpId op;
  };
  bool recording_;
  GradStore<S>* grads_;
  const S* values_ = nullptr;
  const WeightStore* packed_ = nullptr;
  Backend<S>* backend_ = nullptr;
  LinearObserver observer_;
  LinearAdapter adapter_;
  Usage usage_, peak_;
  Arena arena_;
  std::vector<Node> nodes_;
  std::unique_ptr<Tape> recompute_;
};

}  // namespace hybrid
