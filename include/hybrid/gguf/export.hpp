// A model → a GGUF file that llama.cpp runs as granitehybrid, lfm2, mamba2 or llama
// (arch.hpp says which layouts each expresses; anything else is an error before a byte is
// written, never a file that loads and computes something else).
//
//   gguf::ExportOptions opt;                 // arch from the layout, F32, byte vocabulary
//   opt.type = GgmlType::Q8_0;               // matrices in Q8_0 (norms, conv, A, D stay F32)
//   gguf::ExportReport rep = gguf::write_gguf(model, "model.gguf", opt);
//
// Metadata written (REFERENCE.md §5): general.architecture / name / file_type,
// {arch}.context_length, embedding_length, block_count, feed_forward_length,
// attention.head_count, attention.head_count_kv (one per layer; 0 marks a Mamba-2 or
// ShortConv layer), attention.key_length / value_length (when head_dim != d_model / heads),
// attention.layer_norm_rms_epsilon, rope.freq_base, and per architecture the ssm.* sizes,
// granitehybrid's rope.scaling.finetuned (its RoPE switch) and scale keys (each only when
// not neutral), lfm2's shortconv.l_cache and attention.sliding_window; then the vocabulary.
#pragma once
#include <cmath>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "../io/gguf.hpp"
#include "../runtime_model.hpp"
#include "arch.hpp"
#include "vocab.hpp"

namespace hybrid::gguf {

enum class VocabKind { Bytes, None };

struct ExportOptions {
  std::optional<Arch> arch;          // default: arch_for(desc)
  GgmlType type = GgmlType::F32;     // projections, embedding and head
  std::string name;                  // general.name (empty: none)
  VocabKind vocab = VocabKind::Bytes;
  // Extra metadata (a tokenizer carried over from elsewhere): set after the vocabulary,
  // replacing keys of the same name.
  std::vector<std::pair<std::string, GgufValue>> extra;
  // {arch}.context_length; 0: the model's max_context, else 131072 (2^20 for mamba2, which
  // has no position-dependent state).
  int context_length = 0;
};

struct ExportReport {
  Arch arch = Arch::GraniteHybrid;
  std::map<std::string, int> tensors_by_type;  // "F32" → count
  std::vector<std::string> kept_f32;           // Q8_0 asked for but ne[0] not a multiple of 32
  std::uint64_t bytes = 0;
};

namespace export_detail {
inline std::uint32_t file_type(GgmlType t) {
  switch (t) {
    case GgmlType::F32: return 0;
    case GgmlType::F16: return 1;
    case GgmlType::Q8_0: return 7;
    case GgmlType::BF16: return 32;
  }
  return 0;
}
inline GgufValue i32_array(const std::vector<int>& v) {
  std::vector<GgufValue> items;
  for (int x : v) items.push_back(GgufValue::i32(x));
  return GgufValue::array(GgufType::I32, std::move(items));
}
}  // namespace export_detail

// The GGUF image of `model`. Throws (naming the feature and the architecture) when the
// architecture cannot express the model.
template <class S>
GgufWriter to_gguf(const RuntimeModel<S>& model, const ExportOptions& opt = {}, ExportReport* report = nullptr) {
  using namespace export_detail;
  const ModelDesc& d = model.desc();
  const Arch a = opt.arch ? *opt.arch : arch_for(d);
  check_expressible(d, a);
  const ModelSpec& m = d.model;
  const int D = m.d_model, L = int(d.blocks.size());
  const std::string p = arch_name(a);
  const Mamba2Spec* mamba = nullptr;
  const GqaSpec* attn = nullptr;
  const ShortConvSpec* conv = nullptr;
  int ff = 0;
  std::vector<int> kv_heads;
  for (const auto& b : d.blocks) {
    if (const auto* s = std::get_if<Mamba2Spec>(&b.mixer)) mamba = s;
    if (const auto* s = std::get_if<GqaSpec>(&b.mixer)) attn = attn ? attn : s;
    if (const auto* s = std::get_if<ShortConvSpec>(&b.mixer)) conv = s;
    if (const auto* s = std::get_if<SwiGluSpec>(&b.channel)) ff = s->hidden;
    const auto* g = std::get_if<GqaSpec>(&b.mixer);
    kv_heads.push_back(g ? g->n_kv_heads : 0);
  }

  GgufWriter w;
  w.set("general.architecture", GgufValue::str(p));
  if (!opt.name.empty()) w.set("general.name", GgufValue::str(opt.name));
  w.set("general.file_type", GgufValue::u32(file_type(opt.type)));
  const int ctx = opt.context_length > 0 ? opt.context_length
                  : m.max_context > 0    ? m.max_context
                  : a == Arch::Mamba2    ? (1 << 20) : 131072;
  w.set(p + ".context_length", GgufValue::u32(std::uint32_t(ctx)));
  w.set(p + ".embedding_length", GgufValue::u32(std::uint32_t(D)));
  w.set(p + ".block_count", GgufValue::u32(std::uint32_t(L)));
  w.set(p + ".feed_forward_length", GgufValue::u32(std::uint32_t(ff)));
  w.set(p + ".attention.head_count", GgufValue::u32(std::uint32_t(attn ? attn->n_heads : 0)));
  if (a == Arch::Llama) {
    // One KV head count for all layers unless they differ.
    bool same = true;
    for (int k : kv_heads) same &= k == kv_heads[0];
    w.set(p + ".attention.head_count_kv",
          same ? GgufValue::u32(std::uint32_t(kv_heads[0])) : i32_array(kv_heads));
  } else if (a != Arch::Mamba2) {
    w.set(p + ".attention.head_count_kv", i32_array(kv_heads));
  } else {
    w.set(p + ".attention.head_count_kv", GgufValue::u32(0));
  }
  if (attn && attn->head_dim * attn->n_heads != D) {
    w.set(p + ".attention.key_length", GgufValue::u32(std::uint32_t(attn->head_dim)));
    w.set(p + ".attention.value_length", GgufValue::u32(std::uint32_t(attn->head_dim)));
  }
  w.set(p + ".attention.layer_norm_rms_epsilon", GgufValue::f32(float(m.norm_eps)));
  if (attn) w.set(p + ".rope.freq_base", GgufValue::f32(float(attn->rope_theta)));
  if (mamba) {
    w.set(p + ".ssm.conv_kernel", GgufValue::u32(std::uint32_t(mamba->d_conv)));
    w.set(p + ".ssm.inner_size", GgufValue::u32(std::uint32_t(mamba->d_inner(D))));
    w.set(p + ".ssm.state_size", GgufValue::u32(std::uint32_t(mamba->d_state)));
    w.set(p + ".ssm.time_step_rank", GgufValue::u32(std::uint32_t(mamba->nheads(D))));
    w.set(p + ".ssm.group_count", GgufValue::u32(std::uint32_t(mamba->ngroups)));
  }
  if (a == Arch::GraniteHybrid) {
    w.set(p + ".rope.scaling.finetuned", GgufValue::boolean(attn && attn->rope));
    if (m.embedding_multiplier != 1) w.set(p + ".embedding_scale", GgufValue::f32(float(m.embedding_multiplier)));
    if (m.residual_multiplier != 1) w.set(p + ".residual_scale", GgufValue::f32(float(m.residual_multiplier)));
    if (m.logits_divisor != 1) w.set(p + ".logit_scale", GgufValue::f32(float(m.logits_divisor)));
    if (attn && !arch_detail::default_scale(*attn)) w.set(p + ".attention.scale", GgufValue::f32(float(attn->scale)));
  }
  if (a == Arch::Lfm2) {
    w.set(p + ".shortconv.l_cache", GgufValue::u32(std::uint32_t(conv ? conv->L : 3)));
    if (attn && attn->window > 0) w.set(p + ".attention.sliding_window", GgufValue::u32(std::uint32_t(attn->window)));
  }
  if (opt.vocab == VocabKind::Bytes) set_byte_vocab(w, m.vocab);
  else set_no_vocab(w, p, m.vocab);
  for (const auto& [k, v] : opt.extra) w.set(k, v);

  ExportReport rep;
  rep.arch = a;
  std::vector<float> buf;
  auto add = [&](const std::string& name, GgmlType type, const std::vector<std::int64_t>& ne, const float* x,
                 std::int64_t n) {
    w.add_tensor(name, type, ne, gguf_encode(type, x, n));
    ++rep.tensors_by_type[ggml_type_name(std::uint32_t(type))];
  };
  model.visit([&](const std::string& n, const MatMap<S>& t, ParamRole role) {
    const Slot s = slot_for(n, t.rows(), t.cols(), d, a);
    const Index rows = t.rows(), cols = t.cols();
    buf.resize(std::size_t(t.size()));
    for (Index r = 0; r < rows; ++r) {
      const Index src = s.rope_heads > 0 ? rope_pair_source(r, s.head_dim) : r;
      for (Index c = 0; c < cols; ++c) buf[std::size_t(r * cols + c)] = float(t(src, c));
    }
    if (s.neg_exp)
      for (float& v : buf) v = -std::exp(v);
    GgmlType type = GgmlType::F32;
    if (!s.f32_only && (role == ParamRole::Matrix || role == ParamRole::Embedding)) {
      type = opt.type;
      if (type == GgmlType::Q8_0 && cols % kQ8_0Block != 0) {
        type = GgmlType::F32;
        rep.kept_f32.push_back(s.name);
      }
    }
    add(s.name, type, s.ne, buf.data(), t.size());
  });
  // llama.cpp adds the Mamba-2 conv bias unconditionally: a model without one gets zeros.
  for (int i = 0; i < L; ++i)
    if (const auto* s = std::get_if<Mamba2Spec>(&d.blocks[std::size_t(i)].mixer); s && !s->conv_bias) {
      const std::vector<float> zeros(std::size_t(s->conv_dim(D)), 0.f);
      add("blk." + std::to_string(i) + ".ssm_conv1d.bias", GgmlType::F32, {s->conv_dim(D)}, zeros.data(),
          s->conv_dim(D));
    }
  if (report) *report = rep;
  return w;
}

// Writes `model` to `path` atomically (temporary file, then rename).
template <class S>
ExportReport write_gguf(const RuntimeModel<S>& model, const std::string& path, const ExportOptions& opt = {}) {
  ExportReport rep;
  const GgufWriter w = to_gguf(model, opt, &rep);
  w.write(path);
  rep.bytes = w.size();
  return rep;
}

}  // namespace hybrid::gguf
