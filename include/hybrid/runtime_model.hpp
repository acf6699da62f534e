// RuntimeModel<S>: embedding (+ the hashed bigram embedding) → blocks (with U-Net skips
// between the halves, when on) → final norm → LM head, built from a ModelDesc (so its shape
// and layout may come from a file). The compile-time Model<> derives from it.
//   forward  B sequences of equal length T, optionally continuing from decode states
//   prefill  prompts of different lengths → logits + one SequenceState each
//   step     one token per sequence → logits (B, V), states advanced
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <functional>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "core/dtype.hpp"
#include "desc.hpp"
#include "infer/state.hpp"
#include "layers/block_layer.hpp"
#include "layers/weight_store.hpp"

namespace hybrid {

// Options of recorded (training) forwards, given per call by the trainer. recompute: keep
// only each block's input on the tape and recompute the block's activations during backward
// (gradient checkpointing: activation memory of one block instead of all). drop_path: each
// residual branch of each sequence is dropped with this probability (kept ones scaled by
// 1/(1-p)), with masks drawn from drop_seed (set it per step for reproducible runs).
// doc_starts: packed documents, the flat indices into the B*T tokens where a document
// starts (strictly increasing, each in [0, B*T); data::Batch::doc_starts, e.g. from
// data::mark_documents). No token attends across a start, Mamba-2 and ShortConv state is
// zero there, RoPE positions and the bigram embedding restart there: each document computes
// what it would alone. Empty: the B sequences of T tokens, exactly as without it.
struct TrainingOptions {
  bool recompute = false;
  double drop_path = 0;
  std::uint64_t drop_seed = 0;
  std::span<const Index> doc_starts{};  // packed documents: flat start indices (above); empty: off

  void validate() const {
    HYBRID_CHECK(drop_path >= 0 && drop_path < 1, "drop_path must be in [0, 1), got ", drop_path);
  }
};

// How prefill() runs. The prompt goes through the model `chunk` tokens at a time, each
// chunk continuing from the decode state the previous one left, so the memory of a prefill
// is the weights + the decode state (KV caches grow with the prompt, Mamba-2 and ShortConv
// state does not) + O(chunk x width) of activations, whatever the prompt's length; the
// logits and states equal a whole-prompt forward's to rounding.
struct PrefillOptions {
  bool all_logits = false;  // logits of every prompt position (T, V), else the last (1, V)
  Index chunk = 512;        // tokens per forward pass; 0 = the whole prompt at once
  Index reserve_new_tokens = 0;  // KV cache rows reserved beyond each prompt, for the decode
                                 // steps to follow (they then allocate nothing)
  DType kv_dtype = DType::F32;   // what the KV caches store: F32, or BF16 (half the memory)

  void validate() const {
    HYBRID_CHECK(chunk >= 0, "prefill: chunk must be >= 0 tokens (0 = whole prompt), got ", chunk);
    HYBRID_CHECK(reserve_new_tokens >= 0, "prefill: reserve_new_tokens must be >= 0, got ",
                 reserve_new_tokens);
    HYBRID_CHECK(kv_dtype == DType::F32 || kv_dtype == DType::BF16, "prefill: the KV cache "
                 "stores f32 or bf16, not ", dtype_name(kv_dtype));
  }
};

// Dev: where the model runs. Cpu is this class; RuntimeModel<S, Cuda> (an NVIDIA GPU) is in
// <hybrid/cuda/model.hpp> of the hybrid::cuda library and runs this class's forward on a
// device tape (autograd/backend.hpp).
template <class S, class Dev = Cpu>
class RuntimeModel {
  static_assert(std::is_same_v<Dev, Cpu>, "RuntimeModel<S, Cuda> is declared in <hybrid/cuda/model.hpp> "
                "(link hybrid::cuda, configure with -DHYBRID_CUDA=ON); include it before naming the type");

 public:
  using Scalar = S;
  using Device = Dev;
  using TrainingOptions = hybrid::TrainingOptions;

  explicit RuntimeModel(ModelDesc d, std::uint64_t seed = 0) : RuntimeModel(std::move(d), Unfilled{}) {
    init(seed);
  }
  // Every value zero and, for a large model, no page of its store touched: for a loader that
  // fills every tensor (or, with stored weights it writes itself, leaves theirs unwritten).
  struct Unfilled {};
  RuntimeModel(ModelDesc d, Unfilled)
      : desc_((validate(d), std::move(d))),
        final_norm_(declare(desc_, table_, embed_, head_, bigram_, bigram_proj_, skips_, blocks_)),
        store_(table_) {
    bind_maps();
  }
  RuntimeModel(const RuntimeModel& o)
      : desc_(o.desc_), table_(o.table_), embed_(o.embed_), head_(o.head_), bigram_(o.bigram_),
        bigram_proj_(o.bigram_proj_), skips_(o.skips_), blocks_(o.blocks_),
        final_norm_(o.final_norm_), store_(o.store_), packed_(o.packed_) {
    bind_maps();
    if (o.released_) release_packed_floats();  // the copy holds no float copy either
  }
  RuntimeModel& operator=(const RuntimeModel& o) {
    if (this != &o) *this = RuntimeModel(o);
    return *this;
  }
  // Moves keep the store's allocation, so the maps stay valid.
  RuntimeModel(RuntimeModel&&) = default;
  RuntimeModel& operator=(RuntimeModel&&) = default;

  const ModelDesc& desc() const { return desc_; }
  const ModelSpec& spec() const { return desc_.model; }
  int vocab() const { return desc_.model.vocab; }
  int n_blocks() const { return int(blocks_.size()); }
  const BlockLayer<S>& block(int i) const { return blocks_[i]; }

  // The parameter table (name, offset, shape, role of every tensor) and the one allocation
  // holding the values; gradient stores and optimiser state mirror the table.
  const ParamTable& param_table() const { return table_; }
  S* param_values() { return store_.data(); }
  const S* param_values() const { return store_.data(); }
  ParamStore<S>& params() { return store_; }
  const ParamStore<S>& params() const { return store_; }

  // Seeded initialisation (REFERENCE.md §1): embedding N(0, init_std), projections
  // U(±1/sqrt(fan_in)), residual-branch outputs divided by sqrt(n_residuals * n_layer); the
  // bigram table zero (the model starts as one without it), the U-Net skip weights one.
  void init(std::uint64_t seed);

  // f(name, MatMap<S>&, ParamRole) for every parameter tensor, in table order. The maps
  // are the model's own (their addresses are stable for the model's lifetime).
  // A model whose packed floats were released (release_packed_floats) has no values to
  // visit: it throws naming that.
  template <class F>
  void visit(F&& f) {
    require_floats("visit (saving, exporting, training, checking the weights)");
    for (std::size_t i = 0; i < table_.size(); ++i) f(table_[i].name, maps_[i], table_[i].role);
  }
  template <class F>
  void visit(F&& f) const {
    require_floats("visit (saving, exporting, training, checking the weights)");
    for (std::size_t i = 0; i < table_.size(); ++i)
      f(table_[i].name, static_cast<const MatMap<S>&>(maps_[i]), table_[i].role);
  }

  Index param_count() const { return table_.count(); }

  // Inference weight storage: the projections, the embedding and the LM head read in
  // `dtype` (bf16, f16, or int8 with a float scale per `group` columns, 0 = per row, else
  // 32), packed from the current float values, which stay the master (training, files,
  // visit). A snapshot: call it again after the float values change. DType::F32 drops the
  // packed copy, so the float path runs exactly as before. Float models only; a recording
  // tape refuses a model with stored weights.
  void set_weight_storage(DType dtype, Index group = 0) {
    require_floats("set_weight_storage");
    if (dtype == DType::F32) {
      packed_.reset();
      return;
    }
    if constexpr (std::is_same_v<S, float>)
      packed_ = std::make_shared<const WeightStore>(
          WeightStore::build(table_, store_.data(), dtype, group));
    else
      fail("set_weight_storage(", dtype_name(dtype), "): stored weights compute in float; this "
           "model computes in double (build a RuntimeModel<float>)");
  }
  // Storage chosen per tensor (WeightStore::build_each): choose(ParamInfo) → {type, group},
  // F32 leaving a tensor float. What a GGUF file with Q8_0 beside F32 matrices needs.
  // fill: see WeightStore::build_each (a tensor's stored bytes written from a file).
  template <class Choose, class Fill = WeightStore::PackFromFloats>
  void set_weight_storage_each(Choose&& choose, Fill&& fill = WeightStore::PackFromFloats{}) {
    require_floats("set_weight_storage_each");
    if constexpr (std::is_same_v<S, float>) {
      WeightStore ws = WeightStore::build_each(table_, store_.data(), std::forward<Choose>(choose),
                                               std::forward<Fill>(fill));
      if (ws.tensors() == 0) packed_.reset();
      else packed_ = std::make_shared<const WeightStore>(std::move(ws));
    } else {
      fail("set_weight_storage_each: stored weights compute in float; this model computes in double");
    }
  }
  DType weight_dtype() const { return packed_ ? packed_->dtype() : DType::F32; }

  // Inference only: with stored weights, gives the float pages of every tensor the store
  // holds back to the system, so that the model keeps one copy of its projections,
  // embedding and head (the stored one) beside the float tensors nothing else holds (norms,
  // convolutions, SSM dynamics, biases). Forward, prefill, step and generate compute exactly
  // what they did before. The released values are gone: afterwards anything that needs the
  // floats (visit, and so saving, exporting and check_finite; set_weight_storage; training
  // tapes; uploading to a GPU) throws naming this call; load the model again for them.
  // Returns the bytes given back (the pages wholly inside those tensors; 0 off Linux, where
  // the floats stay but are refused all the same). Calling it again changes nothing.
  std::size_t release_packed_floats() {
    HYBRID_CHECK(packed_, "release_packed_floats: the model holds no stored weights, so the float "
                 "values are the only copy; call set_weight_storage(dtype) (or load a file with Q8_0 / "
                 "F16 / BF16 tensors or an artifact) first");
    std::size_t bytes = 0;
    for (const auto& e : table_.entries())
      if (packed_->find(Param{e.offset, e.rows, e.cols})) bytes += store_.release(e);
    released_ = true;
    released_bytes_ = std::max(released_bytes_, bytes);  // a second call finds the pages gone
    return released_bytes_;
  }
  // Whether release_packed_floats ran: the float values of the stored tensors are gone.
  bool floats_released() const { return released_; }
  // The bytes the last release gave back (0 when none ran).
  std::size_t released_float_bytes() const { return released_bytes_; }
  // Throws, naming `what`, when the float values were released.
  void require_floats(const char* what) const {
    HYBRID_CHECK(!released_, what, ": the model's float values of its ", packed_ ? packed_->tensors() : 0,
                 " stored tensors were given back (release_packed_floats) and only the stored weights "
                 "remain; load the model again to get the float values");
  }
  // The packed weights, nullptr with float storage.
  const WeightStore* weight_store() const { return packed_.get(); }

  std::string layout_string() const {
    std::string s;
    for (const auto& b : desc_.blocks) s += mixer_code(b.mixer);
    return s;
  }

  // Throws naming the first tensor and index holding NaN or Inf.
  void check_finite() const {
    visit([](const std::string& n, const MatMap<S>& t, ParamRole) {
      for (Index i = 0; i < t.size(); ++i)
        HYBRID_CHECK(std::isfinite(double(t.data()[i])), "weights: tensor '", n,
                     "' holds a non-finite value (", double(t.data()[i]), ") at flat index ",
                     i, "; every weight must be finite");
    });
  }

  // reserve_tokens: context to allocate attention caches for up front, so that decoding
  // up to that length allocates nothing.
  // kv_dtype: what the attention caches store, F32 (exact) or BF16 (half the bytes; keys
  // and values rounded to bf16, every product and sum in float).
  SequenceState<S> new_state(Index reserve_tokens = 0, DType kv_dtype = DType::F32) const {
    SequenceState<S> s;
    s.layers.reserve(blocks_.size());
    for (const auto& b : blocks_) s.layers.push_back(b.make_state(reserve_tokens, kv_dtype));
    return s;
  }

  // tokens: B*T ids (sequence-major). states: nullptr (fresh sequences, nothing kept) or B
  // states to continue from; they are advanced by T. Returns logits (B*T, V), or (B, V)
  // for the last position of each sequence when all_logits is false. Safe to call from
  // several threads at once (each call has its own non-recording tape); ctx: a tape the
  // caller keeps between calls so that repeated calls reuse its memory.
  Mat<S> forward(std::span<const int> tokens, Index B, Index T,
                 SequenceState<S>* const* states = nullptr, bool all_logits = true,
                 Tape<S>* ctx = nullptr) const;

  // Intermediate activations of B sequences of T tokens, for comparisons with other
  // engines: the output of every block (after its residual adds) and, last, the output of
  // the final norm; each (B*T, D).
  std::vector<Mat<S>> hidden_states(std::span<const int> tokens, Index B, Index T) const;

  // The same forward on a caller's tape; when it records, backward() reaches every
  // parameter gradient in its GradStore. Returns logits (B*T, V) (or (B, V), see forward).
  // On a tape with a backend (autograd/backend.hpp) it reads the backend's copy of the
  // parameters and the logits stay in the backend's memory (fresh sequences only).
  Var<S> logits(Tape<S>& t, std::span<const int> tokens, Index B, Index T,
                SequenceState<S>* const* states = nullptr, bool all_logits = true) const {
    return run(t, tokens, B, T, states, all_logits ? Rows::All : Rows::Last, TrainingOptions{});
  }
  // Called with each block's output (B*T, D), after its residual adds, as the forward makes
  // it (block = 0 .. n_blocks()-1). On a recording tape `out` is the Var the next block
  // reads, so a loss on it (feature distillation) adds to the gradients that flow back; on a
  // tape that does not record it is a buffer that a later block reuses: copy what you keep
  // (into memory of your own, or onto the tape: the tap runs outside the block's region).
  using BlockTap = std::function<void(int block, Var<S> out)>;

  // A forward with per-call options (recompute, drop-path when t records; packed documents
  // either way) and, optionally, a tap on the block outputs.
  Var<S> logits(Tape<S>& t, std::span<const int> tokens, Index B, Index T,
                const TrainingOptions& o, const BlockTap& tap = {}) const {
    o.validate();
    return run(t, tokens, B, T, nullptr, Rows::All, o, tap ? &tap : nullptr);
  }

  // Mean next-token cross-entropy (nats) of B sequences of T tokens against targets (B*T
  // ids, -1 = not scored), plus z_loss * mean(logsumexp^2), as a 1x1 Var. The LM head and
  // the loss are one op (ops/head_loss.hpp) that holds a chunk of logits at a time, never
  // (B*T, V); the result equals cross_entropy(logits(...)) to rounding.
  Var<S> loss(Tape<S>& t, std::span<const int> tokens, std::span<const int> targets, Index B,
              Index T, double z_loss = 0, const TrainingOptions& o = {}) const;

  // What loss() feeds its fused head, for other losses fused with the head (distillation,
  // train/distill.hpp): the final-norm output (B*T, D) of the same forward (targets
  // checked), the head's weight (V, D) (the embedding table when tied), and how its logits
  // are scaled and capped.
  // tap: as for logits().
  Var<S> head_input(Tape<S>& t, std::span<const int> tokens, std::span<const int> targets, Index B,
                    Index T, const TrainingOptions& o = {}, const BlockTap& tap = {}) const {
    return final_hidden(t, tokens, targets, B, T, o, tap ? &tap : nullptr);
  }
  const Param& head_weight() const { return desc_.model.tied ? embed_ : head_; }
  ops::HeadLoss head_config(double z_loss = 0) const { return head_loss_config(z_loss); }

  // Evaluation without (B*T, V) logits, on a tape that does not record: the summed
  // cross-entropy (nats) over the scored positions (target not -1), how many there are, and
  // how many have the target as their largest logit. Holds one block's activations and a
  // chunk of logits at a time. Float weights only (a model with stored weights evaluates
  // through forward()).
  struct Score {
    double nats = 0;
    Index scored = 0, correct = 0;
  };
  // doc_starts: packed documents, as TrainingOptions::doc_starts (empty: none).
  Score score(Tape<S>& t, std::span<const int> tokens, std::span<const int> targets, Index B,
              Index T, std::span<const Index> doc_starts = {}) const;

  // Prompts of different lengths (each non-empty), run in chunks (PrefillOptions). Returns
  // per prompt the logits of its last position (1, V), or of every position (T_b, V) with
  // all_logits; states receives one SequenceState per prompt, ready for step(). ctx: a
  // tape kept between calls so that its memory is reused.
  std::vector<Mat<S>> prefill(const std::vector<std::vector<int>>& prompts,
                              std::vector<SequenceState<S>>& states,
                              const PrefillOptions& opt = {}, Tape<S>* ctx = nullptr) const;

  // One token per sequence. Returns logits (B, V).
  Mat<S> step(std::span<const int> tokens, std::vector<SequenceState<S>>& states,
              Tape<S>* ctx = nullptr) const;
  // The decode step with nothing allocated once ctx and the states have their memory (after
  // a first step, with caches reserved by new_state): logits (B, V) as a view into ctx,
  // valid until ctx's next use.
  CView<S> step(std::span<const int> tokens, std::span<SequenceState<S>* const> states,
                Tape<S>& ctx) const {
    HYBRID_CHECK(tokens.size() == states.size(), "step: got ", tokens.size(), " tokens for ",
                 states.size(), " sequences; expected one token per sequence");
    HYBRID_CHECK(!ctx.recording(), "step: the context tape must not record");
    ctx.rewind();
    return run(ctx, tokens, Index(tokens.size()), 1, states.data(), Rows::All, TrainingOptions{}).value();
  }

  // Per block kind: count, parameters, decode state. One screen.
  std::string summary(const std::string& name = "model") const;

 private:
  // Declares every tensor in the table (embedding, bigram table and projection, blocks, skip
  // weights, final norm, head: the order of visit() and of the files; the optional ones only
  // when their option is on) and returns the final norm.
  static NormLayer<S> declare(const ModelDesc& d, ParamTable& tab, Param& embed, Param& head,
                              Param& bigram, Param& bigram_proj, Param& skips,
                              std::vector<BlockLayer<S>>& blocks) {
    const auto& m = d.model;
    embed = tab.add("embed.weight", m.vocab, m.d_model, ParamRole::Embedding);
    if (m.bigram_buckets > 0) {
      bigram = tab.add("bigram.weight", m.bigram_buckets, bigram_width(m), ParamRole::Embedding);
      if (bigram_projected(m))
        bigram_proj = tab.add("bigram.proj.weight", m.d_model, bigram_width(m), ParamRole::Matrix);
    }
    blocks.reserve(d.blocks.size());
    for (std::size_t i = 0; i < d.blocks.size(); ++i)
      blocks.emplace_back(d.blocks[i], m, tab, "blocks." + std::to_string(i));
    if (const int n = unet_skip_count(m, int(d.blocks.size())); n > 0)
      skips = tab.add("skip_weights", n, m.d_model, ParamRole::Scalar);
    NormLayer<S> fn(m.d_model, m.norm, m.norm_eps, tab, "norm_f");
    if (!m.tied) head = tab.add("lm_head.weight", m.vocab, m.d_model, ParamRole::Embedding);
    return fn;
  }

  void bind_maps() {
    maps_.clear();
    maps_.reserve(table_.size());
    for (const auto& e : table_.entries()) maps_.emplace_back(store_.data() + e.offset, e.rows, e.cols);
  }

  // Which logits run() computes: every position, the last of each sequence, or none (a
  // prefill chunk before the last only advances the states; run() then returns an empty Var).
  enum class Rows { All, Last, None };
  Var<S> run(Tape<S>& t, std::span<const int> tokens, Index B, Index T,
             SequenceState<S>* const* states, Rows rows, const TrainingOptions& o,
             const BlockTap* tap = nullptr) const;

  // Row factors for drop-path of block l: one draw per sequence, seeded by (drop_seed, l).
  const S* drop_mask(Tape<S>& t, const TrainingOptions& o, int l, Index B, Index T) const;

  // Block l with only its input and output on the caller's tape; its backward re-runs the
  // block on the tape's recompute tape (same GradStore) and pushes the gradient through.
  // skip: the encoder output a U-Net decoder block adds to its input (skip_input, inside the
  // recomputed part), or an empty Var.
  Var<S> checkpointed_block(Tape<S>& t, int l, Var<S> x, Var<S> skip, Index B, Index T,
                            const S* keep, const ag::Segments* seg) const;

  // The segments of o.doc_starts on the tape (checked), or nullptr when there are none.
  const ag::Segments* packing(Tape<S>& t, const TrainingOptions& o, Index B, Index T,
                              SequenceState<S>* const* states) const {
    if (o.doc_starts.empty()) return nullptr;
    HYBRID_CHECK(!states, "packed documents: doc_starts run fresh sequences; decode states "
                 "take one document per state");
    return ag::make_segments(t, o.doc_starts, B, T);
  }

  // The embedding stage, (B*T, D): mult * embed[tokens], plus, with the bigram embedding,
  // [proj] bigram[bucket(previous token, token)]. The previous token of a sequence's first
  // is states[b]->last_token when the state has consumed tokens, else none (the first-token
  // bucket); with packed documents (seg), a document's first token has none either.
  Var<S> embed(Tape<S>& t, std::span<const int> tokens, Index B, Index T,
               SequenceState<S>* const* states, const ag::Segments* seg = nullptr) const;
  // U-Net skips: the encoder block whose output block l adds to its input, or -1 (no skips,
  // an encoder block, or the last block of an odd-length decoder).
  int skip_source(int l) const {
    const int n = skips_.rows, j = l - n;
    return j >= 0 && j < n ? n - 1 - j : -1;
  }
  // Decoder block l's input: x + skip_weights[j] ⊙ s, j = l - n_skips; x, s: (R, D);
  // skips: the (n_skips, D) weights. Static, so that a checkpoint node needs no model pointer.
  static Var<S> skip_input(Tape<S>& t, const Param& skips, Var<S> x, Var<S> s, int l);

  void check_tokens(std::span<const int> tokens, Index B, Index T,
                    SequenceState<S>* const* states) const;

  // x: (R, D) → logits (R, V) after the final norm, LM head, divisor and soft-cap.
  Var<S> head(Tape<S>& t, Var<S> x) const;

  // loss() and score(): the targets checked, then the final-norm output (B*T, D) of the
  // stateless forward (blocks_forward without decode states), with the options' drop-path
  // and recompute when t records, one block's activations at a time when it does not.
  Var<S> final_hidden(Tape<S>& t, std::span<const int> tokens, std::span<const int> targets,
                      Index B, Index T, const TrainingOptions& o, const BlockTap* tap = nullptr) const;
  // The blocks on x (B*T, D), continuing from states when given. A recording tape keeps
  // what the backward needs (only block inputs with o.recompute); a non-recording one holds
  // one block's activations at a time (Tape::Region) and two ping-pong buffers.
  // tap: called with each block's output (BlockTap), or nullptr.
  Var<S> blocks_forward(Tape<S>& t, Var<S> x, Index B, Index T, SequenceState<S>* const* states,
                        const TrainingOptions& o, const ag::Segments* seg = nullptr,
                        const BlockTap* tap = nullptr) const;
  ops::HeadLoss head_loss_config(double z_loss) const {
    return {0, desc_.model.logits_divisor, desc_.model.logit_softcap, z_loss};
  }

  ModelDesc desc_;
  ParamTable table_;
  Param embed_, head_;
  Param bigram_, bigram_proj_;  // (buckets, bigram_dim), (D, bigram_dim); absent when off
  Param skips_;                 // (n_skips, D) U-Net skip weights; absent when off
  std::vector<BlockLayer<S>> blocks_;
  NormLayer<S> final_norm_;
  ParamStore<S> store_;           // every parameter value, one allocation
  std::vector<MatMap<S>> maps_;   // one per table entry, for visit()
  // Inference weights in a storage type (set_weight_storage); immutable, so copies share it.
  std::shared_ptr<const WeightStore> packed_;
  bool released_ = false;            // release_packed_floats ran
  std::size_t released_bytes_ = 0;
};

template <class S, class Dev>
void RuntimeModel<S, Dev>::init(std::uint64_t seed) {
  init::normal(store_.view(embed_), desc_.model.init_std, derive_seed(seed, "embed"));
  if (!desc_.model.tied) init::normal(store_.view(head_), desc_.model.init_std, derive_seed(seed, "head"));
  init::fill(store_.view(bigram_), S(0));
  if (bigram_proj_.present())
    init::uniform_fan_in(store_.view(bigram_proj_), bigram_proj_.cols, derive_seed(seed, "bigram.proj"));
  init::fill(store_.view(skips_), S(1));
  final_norm_.init(store_);
  for (int i = 0; i < n_blocks(); ++i)
    blocks_[i].init(store_, derive_seed(seed, "block" + std::to_string(i)), n_blocks());
}

template <class S, class Dev>
Mat<S> RuntimeModel<S, Dev>::forward(std::span<const int> tokens, Index B, Index T, SequenceState<S>* const* states, bool all_logits, Tape<S>* ctx) const {
  Tape<S> local(false);
  Tape<S>& t = ctx ? *ctx : local;
  HYBRID_CHECK(!t.recording(), "forward: the context tape must not record");
  t.rewind();
  const Var<S> l = logits(t, tokens, B, T, states, all_logits);
  Mat<S> out(l.rows, l.cols);
  if (Backend<S>* d = t.backend()) d->download(l.value(), View<S>(out));
  else out = l.val();
  t.rewind();
  return out;
}

template <class S, class Dev>
std::vector<Mat<S>> RuntimeModel<S, Dev>::hidden_states(std::span<const int> tokens, Index B, Index T) const {
  check_tokens(tokens, B, T, nullptr);
  Tape<S> t(false);
  t.bind_values(store_.data(), packed_.get());
  std::vector<Mat<S>> out;
  std::vector<Var<S>> enc;  // encoder outputs, for the U-Net skips
  Var<S> x = embed(t, tokens, B, T, nullptr);
  for (int l = 0; l < n_blocks(); ++l) {
    if (const int e = skip_source(l); e >= 0) x = skip_input(t, skips_, x, enc[std::size_t(e)], l);
    x = blocks_[l].forward(t, x, B, T, nullptr, nullptr);
    if (l < skips_.rows) enc.push_back(x);
    out.push_back(x.val());
  }
  out.push_back(final_norm_.forward(t, x).val());
  return out;
}

template <class S, class Dev>
Var<S> RuntimeModel<S, Dev>::final_hidden(Tape<S>& t, std::span<const int> tokens, std::span<const int> targets, Index B, Index T, const TrainingOptions& o, const BlockTap* tap) const {
  o.validate();
  ag::detail::host_only(t, "loss");
  HYBRID_CHECK(Index(targets.size()) == B * T, "loss: got ", targets.size(),
               " targets, expected B*T = ", B * T);
  for (Index i = 0; i < B * T; ++i)
    HYBRID_CHECK(targets[i] >= -1 && targets[i] < vocab(), "target id ", targets[i],
                 " at position ", i % T, " of sequence ", i / T, " is outside [0, ", vocab(),
                 ") (or -1 to skip)");
  check_tokens(tokens, B, T, nullptr);
  t.bind_values(store_.data(), packed_.get());
  const ag::Segments* seg = packing(t, o, B, T, nullptr);
  const Var<S> x0 = embed(t, tokens, B, T, nullptr, seg);
  const Var<S> x = blocks_forward(t, x0, B, T, nullptr, o, seg, tap);
  return final_norm_.forward(t, x);  // (B*T, D)
}

template <class S, class Dev>
Var<S> RuntimeModel<S, Dev>::loss(Tape<S>& t, std::span<const int> tokens, std::span<const int> targets, Index B, Index T, double z_loss, const TrainingOptions& o) const {
  const Var<S> x = final_hidden(t, tokens, targets, B, T, o);
  return ag::head_loss(t, x, desc_.model.tied ? embed_ : head_, targets.data(), head_loss_config(z_loss));
}

template <class S, class Dev>
typename RuntimeModel<S, Dev>::Score RuntimeModel<S, Dev>::score(Tape<S>& t, std::span<const int> tokens, std::span<const int> targets, Index B, Index T, std::span<const Index> doc_starts) const {
  HYBRID_CHECK(!t.recording(), "score: the tape must not record (use loss() to train)");
  ag::detail::host_only(t, "score");
  HYBRID_CHECK(!packed_, "score: the model holds its weights in a storage type; evaluate it "
               "through forward(), or call set_weight_storage(DType::F32)");
  TrainingOptions o;
  o.doc_starts = doc_starts;
  const Var<S> x = final_hidden(t, tokens, targets, B, T, o);
  Score r;
  for (int tg : targets) r.scored += tg != -1;
  const Param& w = desc_.model.tied ? embed_ : head_;
  const ops::HeadLoss h = head_loss_config(0);
  auto ws = t.workspace(ops::head_loss_scratch(x.rows, w.rows, h));
  r.nats = ops::head_loss_forward<S>(x.value(), t.param(w).value(), targets.data(), h, nullptr,
                                     ws.data, &r.correct);
  return r;
}

template <class S, class Dev>
std::vector<Mat<S>> RuntimeModel<S, Dev>::prefill(const std::vector<std::vector<int>>& prompts, std::vector<SequenceState<S>>& states, const PrefillOptions& opt, Tape<S>* ctx) const {
  opt.validate();
  for (std::size_t i = 0; i < prompts.size(); ++i) {
    HYBRID_CHECK(!prompts[i].empty(), "prefill: prompt ", i,
                 " is empty; every prompt needs at least one token (e.g. BOS)");
    check_tokens(prompts[i], 1, Index(prompts[i].size()), nullptr);
    const Index need = Index(prompts[i].size()) + opt.reserve_new_tokens;
    HYBRID_CHECK(desc_.model.max_context == 0 || need <= desc_.model.max_context, "prefill: prompt ",
                 i, " (", prompts[i].size(), " tokens) + reserve_new_tokens (",
                 opt.reserve_new_tokens, ") exceeds the model's maximum context of ",
                 desc_.model.max_context);
  }
  Tape<S> local(false);
  Tape<S>& t = ctx ? *ctx : local;
  HYBRID_CHECK(!t.recording(), "prefill: the context tape must not record");
  std::vector<Mat<S>> out;
  out.reserve(prompts.size());
  states.clear();
  states.reserve(prompts.size());
  for (std::size_t i = 0; i < prompts.size(); ++i) {
    const auto& p = prompts[i];
    const Index T = Index(p.size()), step = opt.chunk > 0 ? std::min(opt.chunk, T) : T;
    states.push_back(new_state(T + opt.reserve_new_tokens, opt.kv_dtype));
    SequenceState<S>* st = &states.back();
    Mat<S> lg(opt.all_logits ? T : 1, vocab());
    for (Index c0 = 0; c0 < T; c0 += step) {
      const Index n = std::min(step, T - c0);
      const bool last = c0 + n == T;
      t.rewind();
      const Rows rows = opt.all_logits ? Rows::All : last ? Rows::Last : Rows::None;
      const Var<S> l = run(t, std::span<const int>(p.data() + c0, std::size_t(n)), 1, n, &st,
                           rows, TrainingOptions{});
      if (opt.all_logits) lg.middleRows(c0, n) = l.val();
      else if (last) lg = l.val();
    }
    t.rewind();
    out.push_back(std::move(lg));
  }
  return out;
}

template <class S, class Dev>
Mat<S> RuntimeModel<S, Dev>::step(std::span<const int> tokens, std::vector<SequenceState<S>>& states, Tape<S>* ctx) const {
  HYBRID_CHECK(tokens.size() == states.size(), "step: got ", tokens.size(),
               " tokens for ", states.size(), " sequences; expected one token per sequence");
  std::vector<SequenceState<S>*> p(states.size());
  for (std::size_t i = 0; i < states.size(); ++i) p[i] = &states[i];
  return forward(tokens, Index(tokens.size()), 1, p.data(), true, ctx);
}

template <class S, class Dev>
std::string RuntimeModel<S, Dev>::summary(const std::string& name) const {
  struct Row { int count = 0; Index params = 0; Index fixed = 0; Index per_token = 0; };
  std::map<std::string, Row> rows;
  for (int i = 0; i < n_blocks(); ++i) {
    const auto& bd = desc_.blocks[i];
    std::string kind = mixer_label(bd.mixer);
    if (const auto* s = std::get_if<SwiGluSpec>(&bd.channel)) kind += " + SwiGLU(" + std::to_string(s->hidden) + ")";
    if (const auto* s = std::get_if<Relu2Spec>(&bd.channel)) kind += " + ReLU2(" + std::to_string(s->hidden) + ")";
    Row& r = rows[kind];
    r.count++;
    r.params += hybrid::param_count(bd, desc_.model);
    std::visit(
        [&](const auto& mx) {
          r.fixed += mx.state_bytes();
          r.per_token += mx.state_bytes_per_token();
        },
        blocks_[i].mixer());
  }
  std::string out;
  char buf[256];
  std::snprintf(buf, sizeof buf, "%s: %lld parameters, %d blocks, layout %s\n", name.c_str(),
                (long long)param_count(), n_blocks(), layout_string().c_str());
  out += buf;
  std::snprintf(buf, sizeof buf, "  %-34s %6s %14s %16s %14s\n", "block kind", "count",
                "parameters", "state B/seq", "KV B/token");
  out += buf;
  for (const auto& [k, r] : rows) {
    std::snprintf(buf, sizeof buf, "  %-34s %6d %14lld %16lld %14lld\n", k.c_str(), r.count,
                  (long long)r.params, (long long)r.fixed, (long long)r.per_token);
    out += buf;
  }
  const ModelSpec& m = desc_.model;
  std::snprintf(buf, sizeof buf, "  %-34s %6s %14lld\n",
                m.tied ? "embedding (tied head)" : "embedding + head", "",
                (long long)(embedding_params(m) - bigram_params(m)));
  out += buf;
  if (m.bigram_buckets > 0) {
    const std::string k = "bigram embedding (" + std::to_string(m.bigram_buckets) + "x" +
                          std::to_string(bigram_width(m)) + (bigram_projected(m) ? " + proj)" : ")");
    std::snprintf(buf, sizeof buf, "  %-34s %6s %14lld\n", k.c_str(), "", (long long)bigram_params(m));
    out += buf;
  }
  if (skips_.present()) {
    std::snprintf(buf, sizeof buf, "  %-34s %6lld %14lld\n", "U-Net skip weights", (long long)skips_.rows,
                  (long long)skips_.size());
    out += buf;
  }
  return out;
}

template <class S, class Dev>
Var<S> RuntimeModel<S, Dev>::blocks_forward(Tape<S>& t, Var<S> x, Index B, Index T, SequenceState<S>* const* states, const TrainingOptions& o, const ag::Segments* seg, const BlockTap* tap) const {
  LayerState<S>** ls = states ? t.template scratch_as<LayerState<S>*>(B) : nullptr;
  const bool train = t.recording();
  // U-Net skips: the outputs of the n_enc encoder blocks, kept for the decoder (n_enc = 0
  // without skips: nothing kept, nothing taken from the tape).
  const int n_enc = int(skips_.rows);
  Var<S>* enc = n_enc > 0 ? t.template scratch_as<Var<S>>(n_enc) : nullptr;
  // Inference keeps no activation past its block: each block runs in a freed region and
  // its output lands in one of two buffers, alternately (the other holds its input), or,
  // for an encoder block, in the buffer its skip is kept in.
  Var<S> ping[2];
  if (!train) {
    ping[0] = t.var(B * T, x.cols), ping[1] = t.var(B * T, x.cols);
    for (int e = 0; e < n_enc; ++e) enc[e] = t.var(B * T, x.cols);  // (B*T, D) each
  }
  for (int l = 0; l < n_blocks(); ++l) {
    for (Index b = 0; states && b < B; ++b) ls[b] = &states[b]->layers[l];
    const int src = skip_source(l);
    const Var<S> skip = src >= 0 ? enc[src] : Var<S>{};
    if (!train) {
      const Var<S> y = l < n_enc ? enc[l] : ping[l & 1];
      {
        const typename Tape<S>::Region block(t);
        const Var<S> xin = src >= 0 ? skip_input(t, skips_, x, skip, l) : x;
        ag::copy_into(t, blocks_[l].forward(t, xin, B, T, ls, nullptr, seg), y);
      }
      x = y;
      if (tap) (*tap)(l, x);
      continue;
    }
    const S* keep = o.drop_path > 0 ? drop_mask(t, o, l, B, T) : nullptr;
    if (o.recompute && !states) x = checkpointed_block(t, l, x, skip, B, T, keep, seg);
    else x = blocks_[l].forward(t, src >= 0 ? skip_input(t, skips_, x, skip, l) : x, B, T, ls, keep, seg);
    if (l < n_enc) enc[l] = x;
    if (tap) (*tap)(l, x);
  }
  return x;
}

template <class S, class Dev>
Var<S> RuntimeModel<S, Dev>::embed(Tape<S>& t, std::span<const int> tokens, Index B, Index T, SequenceState<S>* const* states, const ag::Segments* seg) const {
  const ModelSpec& m = desc_.model;
  const Var<S> x = ag::embedding(t, embed_, tokens.data(), B * T, S(m.embedding_multiplier));  // (B*T, D)
  if (m.bigram_buckets == 0) return x;
  int* ids = t.scratch_int(B * T);  // (B*T) buckets
  for (Index b = 0; b < B; ++b) {
    int prev = -1;
    if (states && states[b]->pos > 0) {
      prev = states[b]->last_token;
      HYBRID_CHECK(prev >= 0 && prev < m.vocab, "bigram embedding: sequence ", b, "'s state is at "
                   "position ", states[b]->pos, " but holds no last token (got ", prev,
                   "); continue from a state this model advanced");
    }
    const int* tok = tokens.data() + b * T;
    for (Index i = 0; i < T; ++i) {
      ids[b * T + i] = bigram_bucket(prev, tok[i], m.bigram_buckets);
      prev = tok[i];
    }
  }
  for (Index i = 0; seg && i < seg->n; ++i)  // a document's first token: no previous one
    ids[seg->row0(i)] = bigram_bucket(-1, tokens[std::size_t(seg->row0(i))], m.bigram_buckets);
  Var<S> e = ag::embedding(t, bigram_, ids, B * T, S(1));                    // (B*T, bigram_dim)
  if (bigram_proj_.present()) e = ag::linear(t, e, bigram_proj_, Param{});  // (B*T, D)
  return ag::add(t, x, e);
}

template <class S, class Dev>
Var<S> RuntimeModel<S, Dev>::skip_input(Tape<S>& t, const Param& skips, Var<S> x, Var<S> s, int l) {
  const Index R = x.rows, j = l - skips.rows;
  // Row j of the skip weights on every row (gather_rows: its backward sums the rows'
  // gradients into row j), times the encoder output, added to the input.
  Index* idx = t.scratch_index(R);
  std::fill(idx, idx + R, j);
  const Var<S> w = ag::gather_rows(t, t.param(skips), idx, R);  // (R, D)
  return ag::add(t, x, ag::mul(t, w, s));                       // (R, D)
}

template <class S, class Dev>
Var<S> RuntimeModel<S, Dev>::run(Tape<S>& t, std::span<const int> tokens, Index B, Index T, SequenceState<S>* const* states, Rows rows, const TrainingOptions& o, const BlockTap* tap) const {
  check_tokens(tokens, B, T, states);
  if (Backend<S>* d = t.backend()) {  // the same forward on the backend's copy of the values
    HYBRID_CHECK(!states, "forward: decode state (KV caches, conv and SSM states) is host memory and "
                 "this tape runs on ", d->name(), "; run fresh sequences there, or use a host tape");
    HYBRID_CHECK(d->parameters().size() == table_.total(), "forward: the backend ", d->name(), " holds ",
                 d->parameters().size(), " parameter values, this model's table ", table_.total());
    t.bind_values(d->parameters().data);
  } else {
    t.bind_values(store_.data(), packed_.get());
  }
  const ag::Segments* seg = packing(t, o, B, T, states);
  Var<S> x = embed(t, tokens, B, T, states, seg);  // (B*T, D)
  x = blocks_forward(t, x, B, T, states, o, seg, tap);
  if (states)
    for (Index b = 0; b < B; ++b) {
      states[b]->pos += T;
      states[b]->last_token = tokens[std::size_t(b * T + T - 1)];
    }
  if (rows == Rows::None) return Var<S>{};
  if (rows == Rows::Last && T > 1) {
    Index* last = t.scratch_index(B);
    for (Index b = 0; b < B; ++b) last[b] = b * T + T - 1;
    x = ag::gather_rows(t, x, last, B);
  }
  return head(t, x);
}

template <class S, class Dev>
const S* RuntimeModel<S, Dev>::drop_mask(Tape<S>& t, const TrainingOptions& o, int l, Index B, Index T) const {
  S* keep = t.scratch(B * T);
  Rng rng(derive_seed(o.drop_seed, "drop" + std::to_string(l)));
  const double p = o.drop_path;
  for (Index b = 0; b < B; ++b) {
    const S f = rng.uniform() < p ? S(0) : S(1 / (1 - p));
    std::fill(keep + b * T, keep + (b + 1) * T, f);
  }
  return keep;
}

template <class S, class Dev>
Var<S> RuntimeModel<S, Dev>::checkpointed_block(Tape<S>& t, int l, Var<S> x, Var<S> skip, Index B, Index T, const S* keep, const ag::Segments* seg) const {
  Tape<S>* rt = &t.recompute_tape();
  rt->bind_values(store_.data());
  Var<S> y = t.var(x.rows, x.cols);
  rt->set_recording(false);
  rt->rewind();
  {
    const Var<S> xin = skip.v ? skip_input(*rt, skips_, x, skip, l) : x;
    ops::copy<S>(blocks_[l].forward(*rt, xin, B, T, nullptr, keep, seg).value(), y.value());
  }
  rt->rewind();
  rt->set_recording(true);
  const BlockLayer<S>* blk = &blocks_[l];
  const Param skips = skips_;
  t.push(OpId::Checkpoint, [rt, blk, skips, l, x, skip, y, B, T, keep, seg] {
    rt->rewind();
    Var<S> xi = rt->var(x.rows, x.cols), si;
    ops::copy<S>(x.value(), xi.value());
    if (skip.v) {
      si = rt->var(skip.rows, skip.cols);
      ops::copy<S>(skip.value(), si.value());
    }
    const Var<S> xin = skip.v ? skip_input(*rt, skips, xi, si, l) : xi;
    const Var<S> yo = blk->forward(*rt, xin, B, T, nullptr, keep, seg);
    ops::add_backward<S>(y.gradient(), S(1), yo.gradient(), View<S>());
    rt->sweep();
    ops::add_backward<S>(xi.gradient(), S(1), x.gradient(), View<S>());
    if (skip.v) ops::add_backward<S>(si.gradient(), S(1), skip.gradient(), View<S>());
    rt->rewind();
  });
  return y;
}

template <class S, class Dev>
void RuntimeModel<S, Dev>::check_tokens(std::span<const int> tokens, Index B, Index T, SequenceState<S>* const* states) const {
  HYBRID_CHECK(B > 0 && T > 0, "forward: need at least one sequence of at least one token, got B=",
               B, " T=", T);
  HYBRID_CHECK(Index(tokens.size()) == B * T, "forward: got ", tokens.size(),
               " token ids, expected B*T = ", B * T);
  const auto& m = desc_.model;
  for (Index i = 0; i < B * T; ++i)
    HYBRID_CHECK(tokens[i] >= 0 && tokens[i] < m.vocab, "token id ", tokens[i],
                 " at position ", i % T, " of sequence ", i / T,
                 " is outside the vocabulary [0, ", m.vocab, ")");
  if (m.max_context > 0)
    for (Index b = 0; b < B; ++b) {
      const Index pos = states ? states[b]->pos : 0;
      HYBRID_CHECK(pos + T <= m.max_context, "context of ", pos + T,
                   " tokens exceeds the model's maximum of ", m.max_context);
    }
}

template <class S, class Dev>
Var<S> RuntimeModel<S, Dev>::head(Tape<S>& t, Var<S> x) const {
  const auto& m = desc_.model;
  Var<S> l = ag::linear(t, final_norm_.forward(t, x), m.tied ? embed_ : head_, Param{});
  if (m.logits_divisor != 1) l = ag::scale(t, l, S(1 / m.logits_divisor));
  if (m.logit_softcap > 0) l = ag::softcap(t, l, S(m.logit_softcap));
  return l;
}


}  // namespace hybrid

// The project's own programs compile RuntimeModel once (src/instances.cpp, CMake option
// HYBRID_EXPLICIT_INSTANTIATION); a user of the header-only package needs nothing of it.
#if defined(HYBRID_EXTERN_TEMPLATES)
namespace hybrid {
extern template class RuntimeModel<float>;
extern template class RuntimeModel<double>;
}  // namespace hybrid
#endif
