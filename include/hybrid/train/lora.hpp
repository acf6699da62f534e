// LoRA adapters (Hu et al. 2021, as PEFT defines them) on chosen projections of a model whose
// own weights stay frozen: y = x W^T + b + (alpha / r) * dropout(x) A^T B^T, A: (r, in)
// Kaiming-uniform, B: (out, r) zero, so training starts from the base model exactly.
//
//   LoraAdapters<float> lora(model, LoraConfig{.rank = 8, .alpha = 16, .targets = {"attn", "mlp"}});
//   GradStore<float> g(lora);                                  // adapter gradients only
//   train::Optimizer<float> opt(g, train::OptimConfig::adamw(1e-3, 0.0));
//   Tape<float> tape(true, nullptr);                           // no base gradients at all
//   tape.set_linear_adapter(lora.hook(&g));
//   for (step ...) { g.zero(); lora.set_dropout_seed(s); tape.rewind();
//                    tape.backward(model.loss(tape, ...)); opt.step(); }
//   lora.merge();  /* W += (alpha / r) B A */  ...  lora.unmerge();
//
// One adapter per module: a projection of ours, or with a Hugging Face family the module
// of that family's checkpoint (GraniteMoeHybrid's shared_mlp.input_linear holds our gate and
// up rows: one A shared by both, B's rows [0, S) for the gate and [S, 2S) for the up), so
// the adapters are PEFT's on the HF model (io/peft.hpp writes and reads them).
//
// Dropout (training hooks only): element (r, c) of the adapter's input is kept, times
// 1 / (1 - p), when a hash of (dropout seed, module index, r, c) is >= p; the same
// mask therefore comes back when gradient checkpointing recomputes a block, and a module
// fed twice with the same input (Granite's gate and up) sees one mask, as PEFT's single
// input_linear does. Set a new seed before each forward (each micro-batch), not between a
// forward and its backward.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "../autograd/functions.hpp"
#include "../core/error.hpp"
#include "../core/rng.hpp"
#include "../hf/checkpoint.hpp"
#include "../layers/param.hpp"
#include "../runtime_model.hpp"

namespace hybrid::train {

// Projection kinds an adapter can target (our names; the HF module each becomes is in
// lora_module()):
//   attn.q attn.k attn.v attn.o attn.gate   attention q/k/v/o_proj, the output gate g_proj
//   mamba.in mamba.out                      Mamba-2 in_proj, out_proj
//   conv.in conv.out                        ShortConv in_proj, out_proj
//   mlp.gate mlp.up mlp.down                SwiGLU w1, w3, w2; ReLU² fc (up), proj (down)
// Groups: attn (q, k, v, o), mamba, conv, mlp, all (every kind above).
inline const std::vector<std::string>& lora_kinds() {
  static const std::vector<std::string> k{"attn.q",  "attn.k",   "attn.v",   "attn.o",  "attn.gate",
                                          "mamba.in", "mamba.out", "conv.in", "conv.out", "mlp.gate",
                                          "mlp.up",  "mlp.down"};
  return k;
}

// The kinds a target names (a kind or a group); an unknown target is an error.
inline std::vector<std::string> lora_expand_target(const std::string& t) {
  const auto& k = lora_kinds();
  if (std::find(k.begin(), k.end(), t) != k.end()) return {t};
  if (t == "attn") return {"attn.q", "attn.k", "attn.v", "attn.o"};
  if (t == "mamba") return {"mamba.in", "mamba.out"};
  if (t == "conv") return {"conv.in", "conv.out"};
  if (t == "mlp") return {"mlp.gate", "mlp.up", "mlp.down"};
  if (t == "all") return k;
  fail("lora: unknown target '", t, "'; expected one of attn.q, attn.k, attn.v, attn.o, attn.gate, "
       "mamba.in, mamba.out, conv.in, conv.out, mlp.gate, mlp.up, mlp.down or a group: attn, mamba, "
       "conv, mlp, all");
}

// The kind of one of our tensors ("blocks.3.mixer.q_proj.weight" → "attn.q"), "" if no
// adapter can target it.
inline std::string lora_kind(const ModelDesc& d, const std::string& name) {
  if (name.rfind("blocks.", 0) != 0 || !name.ends_with(".weight")) return {};
  const std::size_t dot = name.find('.', 7);
  if (dot == std::string::npos) return {};
  const std::size_t i = std::size_t(std::stoul(name.substr(7, dot - 7)));
  if (i >= d.blocks.size()) return {};
  const std::string rest = name.substr(dot + 1, name.size() - dot - 1 - 7);  // without ".weight"
  const BlockDesc& b = d.blocks[i];
  if (rest.rfind("mixer.", 0) == 0) {
    const std::string m = rest.substr(6);
    if (std::holds_alternative<GqaSpec>(b.mixer)) {
      if (m == "q_proj") return "attn.q";
      if (m == "k_proj") return "attn.k";
      if (m == "v_proj") return "attn.v";
      if (m == "o_proj") return "attn.o";
      if (m == "g_proj") return "attn.gate";
      return {};
    }
    const std::string pre = std::holds_alternative<Mamba2Spec>(b.mixer) ? "mamba." : "conv.";
    if (m == "in_proj") return pre + "in";
    if (m == "out_proj") return pre + "out";
    return {};
  }
  if (rest == "channel.w1") return "mlp.gate";
  if (rest == "channel.w3" || rest == "channel.fc") return "mlp.up";
  if (rest == "channel.w2" || rest == "channel.proj") return "mlp.down";
  return {};
}

struct LoraConfig {
  int rank = 8;            // r
  double alpha = 16;       // scaling alpha / r (alpha / sqrt(r) with rslora)
  double dropout = 0;      // on the adapter's input, training hooks only
  std::vector<std::string> targets{"attn"};
  bool rslora = false;     // PEFT's use_rslora
  std::uint64_t seed = 0;  // A's initialisation, per module name (derive_seed)

  double scaling() const { return rslora ? alpha / std::sqrt(double(rank)) : alpha / double(rank); }
  void validate() const {
    HYBRID_CHECK(rank >= 1, "lora: rank must be >= 1, got ", rank);
    HYBRID_CHECK(std::isfinite(alpha) && alpha > 0, "lora: alpha must be finite and > 0, got ", alpha);
    HYBRID_CHECK(dropout >= 0 && dropout < 1, "lora: dropout must be in [0, 1), got ", dropout);
    HYBRID_CHECK(!targets.empty(), "lora: no targets; expected e.g. attn, mlp, mamba, conv or all");
    for (const auto& t : targets) lora_expand_target(t);
  }
};

// The Hugging Face family whose module names the adapters take for this model: the one
// save_hf would write it as, or none when no family expresses it.
inline std::optional<hf::Family> lora_family(const ModelDesc& d) {
  try {
    const hf::Family f = hf::family_for(d);
    hf::config_to_json(d, f);
    return f;
  } catch (const Error&) {
    return std::nullopt;
  }
}

// One adapter: a module (our projection, or an HF module that holds one or more of ours as
// row ranges of its output), its A (r, in) and B (out, r).
struct LoraModule {
  struct Part {
    std::string tensor;  // our weight's name
    std::string kind;    // lora_kinds() entry
    Param W;             // in the model's store
    Index row0 = 0;      // its rows of the module's output (of B)
  };
  std::string name;      // module name: "model.layers.2.self_attn.q_proj" (HF) or ours without ".weight"
  std::vector<Part> parts;
  Index in = 0, out = 0;
  Param A, B;            // in the adapters' store
};

template <class S>
class LoraAdapters {
 public:
  // family: the module names (default: lora_family(model.desc())); std::nullopt inside
  // the optional means ours. Every target must match at least one projection.
  LoraAdapters(RuntimeModel<S>& model, const LoraConfig& cfg,
               std::optional<std::optional<hf::Family>> family = std::nullopt)
      : model_(&model), cfg_(cfg), family_(family ? *family : lora_family(model.desc())) {
    cfg.validate();
    std::vector<std::string> kinds;
    for (const auto& t : cfg.targets)
      for (const auto& k : lora_expand_target(t))
        if (std::find(kinds.begin(), kinds.end(), k) == kinds.end()) kinds.push_back(k);
    const ModelDesc& d = model.desc();
    std::vector<int> hits(kinds.size(), 0);
    for (const ParamInfo& e : model.param_table().entries()) {
      const std::string kind = lora_kind(d, e.name);
      const auto it = std::find(kinds.begin(), kinds.end(), kind);
      if (kind.empty() || it == kinds.end()) continue;
      ++hits[std::size_t(it - kinds.begin())];
      std::string mod = e.name.substr(0, e.name.size() - 7);
      Index row0 = 0, out = e.rows;
      if (family_) {
        const hf::ckpt_detail::Slot s = hf::ckpt_detail::slot_for(e.name, e.rows, e.cols, d, *family_);
        mod = s.hf.substr(0, s.hf.size() - 7);  // without ".weight"
        row0 = s.row0;
        out = s.shape[0];
      }
      auto m = std::find_if(mods_.begin(), mods_.end(), [&](const LoraModule& x) { return x.name == mod; });
      if (m == mods_.end()) {
        mods_.push_back(LoraModule{mod, {}, e.cols, out, {}, {}});
        m = mods_.end() - 1;
      }
      m->parts.push_back({e.name, kind, Param{e.offset, e.rows, e.cols}, row0});
    }
    for (const auto& t : cfg.targets) {  // each target (a kind or a group) must match something
      int n = 0;
      for (const auto& k : lora_expand_target(t))
        n += hits[std::size_t(std::find(kinds.begin(), kinds.end(), k) - kinds.begin())];
      HYBRID_CHECK(n > 0, "lora: target '", t, "' matches no projection of this model");
    }
    HYBRID_CHECK(!mods_.empty(), "lora: the targets match no projection of this model");
    for (LoraModule& m : mods_) {
      if (m.parts.size() != 1 || m.parts[0].W.rows != m.out) {
        // A module made of several of ours must have all its rows covered exactly once.
        Index covered = 0;
        for (const auto& p : m.parts) covered += p.W.rows;
        HYBRID_CHECK(covered == m.out, "lora: module '", m.name, "' has ", m.out, " output rows but the "
                     "targets cover ", covered, " of them; target its parts together (e.g. mlp.gate and mlp.up)");
      }
      m.A = table_.add(m.name + ".lora_A", cfg.rank, m.in, ParamRole::Matrix);
      m.B = table_.add(m.name + ".lora_B", m.out, cfg.rank, ParamRole::Matrix);
      for (std::size_t p = 0; p < m.parts.size(); ++p)
        by_offset_[m.parts[p].W.offset] = {Index(&m - mods_.data()), Index(p)};
    }
    store_ = ParamStore<S>(table_);
    for (const LoraModule& m : mods_)  // PEFT: kaiming_uniform_(a = sqrt(5)) on A, B = 0
      init::uniform_fan_in(store_.view(m.A), m.in, derive_seed(cfg.seed, m.name + ".lora_A"));
  }
  LoraAdapters(const LoraAdapters&) = delete;
  LoraAdapters& operator=(const LoraAdapters&) = delete;
  // Movable before hook() is taken: a hook points at the adapters it came from.
  LoraAdapters(LoraAdapters&&) = default;

  // What GradStore and the optimiser need (the adapters' own table and store).
  const ParamTable& param_table() const { return table_; }
  S* param_values() { return store_.data(); }
  const S* param_values() const { return store_.data(); }

  const LoraConfig& config() const { return cfg_; }
  const std::optional<hf::Family>& family() const { return family_; }
  const std::vector<LoraModule>& modules() const { return mods_; }
  const RuntimeModel<S>& model() const { return *model_; }
  MatMap<S> A(const LoraModule& m) { return MatMap<S>(store_.data() + m.A.offset, m.A.rows, m.A.cols); }
  MatMap<S> B(const LoraModule& m) { return MatMap<S>(store_.data() + m.B.offset, m.B.rows, m.B.cols); }
  // Adapter parameters (without alignment padding).
  Index count() const { return table_.count(); }
  // The kinds targeted, in lora_kinds() order.
  std::vector<std::string> kinds() const {
    std::vector<std::string> out;
    for (const auto& k : lora_kinds())
      for (const auto& m : mods_)
        for (const auto& p : m.parts)
          if (p.kind == k && std::find(out.begin(), out.end(), k) == out.end()) out.push_back(k);
    return out;
  }

  // The function for Tape::set_linear_adapter. With grads (a GradStore made from these
  // adapters): a training hook, gradients into grads on recording tapes, dropout on. Without:
  // evaluation, no dropout, nothing recorded for the adapters.
  typename Tape<S>::LinearAdapter hook(GradStore<S>* grads = nullptr) {
    HYBRID_CHECK(!grads || grads->values() == store_.data(),
                 "lora: the GradStore given to hook() was made for another model than these adapters");
    LoraAdapters* self = this;
    return [self, grads](Tape<S>& t, const Param& W, Var<S> x, Var<S> y) { return self->apply(t, W, x, y, grads); };
  }
  void set_dropout_seed(std::uint64_t s) { dropout_seed_ = s; }

  // W += scaling * B A for every adapted weight (the model then runs without the hook);
  // unmerge() subtracts the same product, which restores W to rounding.
  void merge() {
    HYBRID_CHECK(!merged_, "lora: the adapters are already merged into the model; unmerge() first");
    add_product(S(1));
    merged_ = true;
  }
  void unmerge() {
    HYBRID_CHECK(merged_, "lora: the adapters are not merged into the model");
    add_product(S(-1));
    merged_ = false;
  }
  bool merged() const { return merged_; }

 private:
  Var<S> apply(Tape<S>& t, const Param& W, Var<S> x, Var<S> y, GradStore<S>* grads) {
    const auto it = by_offset_.find(W.offset);
    if (it == by_offset_.end() || !W.present()) return y;
    HYBRID_CHECK(t.bound_values() == model_->param_values(),
                 "lora: the tape runs another model than the one these adapters were made for");
    HYBRID_CHECK(!merged_, "lora: the adapters are merged into the model; running the hook as well would "
                 "add them twice (unmerge() first, or run without the hook)");
    const LoraModule& m = mods_[std::size_t(it->second.first)];
    const LoraModule::Part& p = m.parts[std::size_t(it->second.second)];
    HYBRID_CHECK(x.cols == m.in && y.cols == p.W.rows, "lora: module '", m.name, "' expects x (R, ", m.in,
                 ") and y (R, ", p.W.rows, "), got x (", x.rows, ", ", x.cols, "), y (", y.rows, ", ", y.cols, ")");
    const bool rec = grads && t.recording();
    const Index r = cfg_.rank;
    const Var<S> a{store_.data() + m.A.offset, rec ? grads->of(m.A) : nullptr, r, m.in, m.in};
    const Var<S> b{store_.data() + m.B.offset + p.row0 * r, rec ? grads->of(m.B) + p.row0 * r : nullptr,
                   p.W.rows, r, r};  // B's rows for this part: (rows, r)
    Var<S> xa = x;
    if (grads && cfg_.dropout > 0) {
      const Index R = x.rows, C = x.cols;
      const Var<S> mask{t.scratch(R * C), nullptr, R, C, C};  // no gradient
      const double p0 = cfg_.dropout;
      const S keep = S(1 / (1 - p0));
      const std::uint64_t base = derive_seed(dropout_seed_, m.name);
      for (Index i = 0; i < R * C; ++i) mask.v[i] = unit(base, std::uint64_t(i)) < p0 ? S(0) : keep;
      xa = ag::mul(t, x, mask);
    }
    const Var<S> h = ag::linear(t, xa, a);  // (R, r)
    const Var<S> u = ag::linear(t, h, b);   // (R, rows)
    return ag::add(t, y, u, S(cfg_.scaling()));
  }

  // A counter-based uniform in [0, 1) (splitmix64 of seed + i).
  static double unit(std::uint64_t seed, std::uint64_t i) {
    std::uint64_t h = seed + (i + 1) * 0x9E3779B97F4A7C15ull;
    h = (h ^ (h >> 30)) * 0xBF58476D1CE4E5B9ull;
    h = (h ^ (h >> 27)) * 0x94D049BB133111EBull;
    h ^= h >> 31;
    return double(h >> 11) * 0x1.0p-53;
  }

  void add_product(S sign) {
    const S s = sign * S(cfg_.scaling());
    S* w = model_->param_values();
    for (const LoraModule& m : mods_) {
      const MatMap<S> A(store_.data() + m.A.offset, m.A.rows, m.A.cols);
      const MatMap<S> B(store_.data() + m.B.offset, m.B.rows, m.B.cols);
      for (const auto& p : m.parts) {
        MatMap<S> W(w + p.W.offset, p.W.rows, p.W.cols);
        W.noalias() += s * (B.middleRows(p.row0, p.W.rows) * A);
      }
    }
  }

  RuntimeModel<S>* model_;
  LoraConfig cfg_;
  std::optional<hf::Family> family_;
  std::vector<LoraModule> mods_;
  std::unordered_map<Index, std::pair<Index, Index>> by_offset_;  // W offset → (module, part)
  ParamTable table_;
  ParamStore<S> store_;
  std::uint64_t dropout_seed_ = 0;
  bool merged_ = false;
};

}  // namespace hybrid::train
