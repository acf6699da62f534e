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
#include <type_traits>
#include <unordered_map>
#include <vector>

#include "../core/error.hpp"
#include "../core/parallel.hpp"
#include "../core/tensor.hpp"
#include "arena.hpp"

namespace hybrid {

// A tensor on the tape: value and (when recording) gradient buffers, row-major (rows, cols).
template <class S>
struct Var {
  S* v = nullptr;
  S* g = nullptr;  // nullptr: no gradient wanted
  Index rows = 0, cols = 0;

  Index size() const { return rows * cols; }
  MatMap<S> val() const { return MatMap<S>(v, rows, cols); }
  MatMap<S> grad() const { return MatMap<S>(g, rows, cols); }
  // Same buffers seen with another shape of the same size (free: no node).
  Var reshape(Index r, Index c) const {
    HYBRID_CHECK(r * c == size(), "reshape: (", rows, ", ", cols, ") has ", size(),
                 " entries, cannot view as (", r, ", ", c, ")");
    return Var{v, g, r, c};
  }
};

// Gradients of every parameter of a model in one contiguous buffer (zeroed by one memset),
// found by the address of the parameter's value.
template <class S>
class GradStore {
 public:
  struct Entry {
    std::string name;
    Mat<S>* value;
    S* grad;
    int role;
  };

  template <class Model>
  explicit GradStore(Model& model) {
    Index total = 0;
    model.visit([&](const std::string&, Mat<S>& t, auto) { total += t.size(); });
    buf_.assign(std::size_t(total), S(0));
    Index off = 0;
    model.visit([&](const std::string& name, Mat<S>& t, auto role) {
      entries_.push_back({name, &t, buf_.data() + off, int(role)});
      by_ptr_[t.data()] = buf_.data() + off;
      off += t.size();
    });
  }

  S* of(const Mat<S>& value) const {
    auto it = by_ptr_.find(value.data());
    return it == by_ptr_.end() ? nullptr : it->second;
  }
  void zero() { std::memset(buf_.data(), 0, buf_.size() * sizeof(S)); }
  const std::vector<Entry>& entries() const { return entries_; }
  S* data() { return buf_.data(); }
  const S* data() const { return buf_.data(); }
  Index size() const { return Index(buf_.size()); }

 private:
  std::vector<S> buf_;
  std::vector<Entry> entries_;
  std::unordered_map<const S*, S*> by_ptr_;
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
  void set_recording(bool r) { recording_ = r; }
  void set_grads(GradStore<S>* g) { grads_ = g; }
  Arena& arena() { return arena_; }

  // A new activation; its gradient (when recording) starts at zero.
  Var<S> var(Index rows, Index cols) {
    Var<S> x{arena_.alloc_array<S>(std::size_t(rows * cols)), nullptr, rows, cols};
    if (recording_) {
      x.g = arena_.alloc_array<S>(std::size_t(rows * cols));
      S* g = x.g;
      par::for_ranges(rows * cols, par::threads_for(rows * cols, Index(1) << 18), [g](Index b, Index e) {
        std::memset(g + b, 0, sizeof(S) * std::size_t(e - b));
      }, 16);
    }
    return x;
  }
  // A parameter as a Var: its value buffer and its GradStore gradient (nullptr if none).
  Var<S> param(const Mat<S>& w) {
    return Var<S>{const_cast<S*>(w.data()), recording_ && grads_ ? grads_->of(w) : nullptr,
                  w.rows(), w.cols()};
  }
  // Scratch that lives until rewind() (saved statistics, per-call temporaries).
  S* scratch(Index n) { return arena_.alloc_array<S>(std::size_t(std::max<Index>(n, 1))); }
  Index* scratch_index(Index n) { return arena_.alloc_array<Index>(std::size_t(std::max<Index>(n, 1))); }
  int* scratch_int(Index n) { return arena_.alloc_array<int>(std::size_t(std::max<Index>(n, 1))); }

  // Records a backward closure. It must be trivially destructible (capture Vars, pointers
  // and numbers, not owning containers): the arena never runs destructors.
  template <class F>
  void push(F&& f) {
    if (!recording_) return;
    using Fn = std::decay_t<F>;
    static_assert(std::is_trivially_destructible_v<Fn>,
                  "tape nodes must capture only trivially destructible values");
    void* mem = arena_.alloc(sizeof(Fn), alignof(Fn) > 64 ? alignof(Fn) : 64);
    Fn* obj = new (mem) Fn(std::forward<F>(f));
    nodes_.push_back(Node{[](void* p) { (*static_cast<Fn*>(p))(); }, obj});
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

  // Drops every node and activation; memory is kept for the next step.
  void rewind() {
    nodes_.clear();
    arena_.rewind();
  }
  std::size_t n_nodes() const { return nodes_.size(); }

 private:
  struct Node {
    void (*call)(void*);
    void* obj;
  };
  bool recording_;
  GradStore<S>* grads_;
  Arena arena_;
  std::vector<Node> nodes_;
};

}  // namespace hybrid
