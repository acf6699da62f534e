// A GGUF file of llama.cpp's granitehybrid, lfm2, mamba2 or llama architecture → our model,
// whether we wrote it (export.hpp) or llama.cpp's converter did. F32, F16 and BF16 tensors
// are read into the float parameters; a file whose projections are Q8_0 also gets the int8
// storage with one scale per block of 32 (the Q8_0 blocks' own values), which inference uses,
// and F16 / BF16 projections are stored in their type. For inference alone,
// LoadOptions{.float_copy = false} keeps no float copy of the stored tensors.
//
//   GgufReader r("model.gguf");
//   gguf::GgufModelInfo info = gguf::describe(r);     // arch, desc, tensor types
//   RuntimeModel<float> m = gguf::load_gguf<float>(r);
//   RuntimeModel<float> lean = gguf::load_gguf<float>(r, {.float_copy = false});
//
// Everything is checked before a weight is used: the keys the architecture needs, with
// llama.cpp's types; the settings that would change the computation in a way our model
// cannot (RoPE scaling, experts, soft-capping, ...) are errors naming the key; every tensor
// the layout needs is present with the expected shape, and no other tensor is.
#pragma once
#include <cmath>
#include <cstring>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "../io/gguf.hpp"
#include "../runtime_model.hpp"
#include "arch.hpp"

namespace hybrid::gguf {

struct GgufModelInfo {
  Arch arch = Arch::GraniteHybrid;
  ModelDesc desc;
  bool q8_0 = false;  // the projections are Q8_0
};

namespace import_detail {
struct Keys {
  const GgufReader& r;
  std::string p;  // "granitehybrid."

  const GgufValue* get(const std::string& k) const { return r.get(p + k); }
  std::int64_t integer_of(const GgufValue& v, const std::string& k) const {
    if (v.is_unsigned() && v.u <= std::uint64_t(1) << 31) return std::int64_t(v.u);
    if (v.is_signed() && v.i >= 0 && v.i <= std::int64_t(1) << 31) return v.i;
    r.bad("key '", p + k, "' is ", gguf_type_name(v.type), " ", v.brief(), ", expected a non-negative integer");
  }
  int integer(const std::string& k) const {
    const GgufValue* v = get(k);
    if (!v) r.bad("key '", p + k, "' is missing (the '", p.substr(0, p.size() - 1), "' architecture needs it)");
    return int(integer_of(*v, k));
  }
  int integer(const std::string& k, int dflt) const { return get(k) ? integer(k) : dflt; }
  double number(const std::string& k, double dflt) const {
    const GgufValue* v = get(k);
    if (!v) return dflt;
    if (v->is_float()) return v->f;
    if (v->is_unsigned() || v->is_signed()) return double(integer_of(*v, k));
    r.bad("key '", p + k, "' is ", gguf_type_name(v->type), " ", v->brief(), ", expected a number");
  }
  bool boolean(const std::string& k, bool dflt) const {
    const GgufValue* v = get(k);
    if (!v) return dflt;
    if (v->type != GgufType::BOOL) r.bad("key '", p + k, "' is ", gguf_type_name(v->type), ", expected a bool");
    return v->u != 0;
  }
  // A per-layer value: a scalar for every layer, or an array of one per layer.
  std::vector<int> per_layer(const std::string& k, int L, std::optional<int> dflt) const {
    const GgufValue* v = get(k);
    if (!v) {
      if (!dflt) r.bad("key '", p + k, "' is missing (the architecture needs it)");
      return std::vector<int>(std::size_t(L), *dflt);
    }
    if (v->type != GgufType::ARRAY) return std::vector<int>(std::size_t(L), int(integer_of(*v, k)));
    if (v->items.size() != std::size_t(L))
      r.bad("key '", p + k, "' has ", v->items.size(), " entries, expected one per layer (", L, ")");
    std::vector<int> out;
    for (const auto& e : v->items) out.push_back(int(integer_of(e, k)));
    return out;
  }
};
}  // namespace import_detail

// The architecture and the model the file describes (no weights read). Throws naming the
// key when the file is not one of the four architectures or uses a setting we cannot run.
inline GgufModelInfo describe(const GgufReader& r) {
  using import_detail::Keys;
  GgufModelInfo info;
  const std::string& an = r.str("general.architecture");
  const auto arch = parse_arch(an);
  if (!arch)
    r.bad("architecture '", an, "' is not supported (expected granitehybrid, lfm2, mamba2 or llama)");
  info.arch = *arch;
  const Arch a = *arch;
  const Keys k{r, an + "."};
  // Settings that change the computation and that our models do not have.
  if (k.integer("expert_count", 0) > 0)
    r.bad("key '", an, ".expert_count' = ", k.integer("expert_count"), ": mixture-of-experts models are not supported");
  if (const GgufValue* v = k.get("rope.scaling.type"); v && v->type == GgufType::STRING && v->s != "none" &&
                                                       !(v->s == "linear" && k.number("rope.scaling.factor", 1) == 1))
    r.bad("key '", an, ".rope.scaling.type' = \"", v->s, "\": RoPE scaling is not supported");
  if (const double f = k.number("rope.scaling.factor", 0); f != 0 && f != 1)
    r.bad("key '", an, ".rope.scaling.factor' = ", f, ": RoPE scaling is not supported");
  for (const char* key : {"final_logit_softcapping", "attn_logit_softcapping"})
    if (k.get(key)) r.bad("key '", an, ".", key, "': soft-capping is not supported");
  if (a != Arch::Lfm2 && k.get("attention.sliding_window"))
    r.bad("key '", an, ".attention.sliding_window': sliding-window attention is read for lfm2 only");
  if (!k.boolean("attention.causal", true)) r.bad("key '", an, ".attention.causal' is false: only causal models run");

  const GgufTensor* emb = r.find("token_embd.weight");
  if (!emb) r.bad("tensor 'token_embd.weight' is missing");
  if (emb->ne.size() != 2) r.bad("tensor 'token_embd.weight' has shape ", emb->shape_str(), ", expected [n_embd, n_vocab]");
  ModelSpec& m = info.desc.model;
  m.d_model = k.integer("embedding_length");
  m.vocab = int(emb->ne[1]);
  if (emb->ne[0] != m.d_model)
    r.bad("tensor 'token_embd.weight' has shape ", emb->shape_str(), " but embedding_length is ", m.d_model);
  m.tied = r.find("output.weight") == nullptr;
  m.norm_eps = k.number("attention.layer_norm_rms_epsilon", 0);
  if (!(m.norm_eps > 0)) r.bad("key '", an, ".attention.layer_norm_rms_epsilon' is missing or not positive");
  const int L = k.integer("block_count");
  if (L <= 0 || L > 4096) r.bad("key '", an, ".block_count' is ", L, ", expected 1 to 4096");
  const std::uint32_t ctx = std::uint32_t(k.integer("context_length", 0));
  (void)ctx;  // a default context size for llama.cpp; our models impose no limit

  const std::vector<int> heads = a == Arch::Mamba2 ? std::vector<int>(std::size_t(L), 0)
                                                   : k.per_layer("attention.head_count", L, std::nullopt);
  // Absent, the KV head count is the head count (llama.cpp's default).
  const std::vector<int> kv = a == Arch::Mamba2                   ? std::vector<int>(std::size_t(L), 0)
                              : k.get("attention.head_count_kv") ? k.per_layer("attention.head_count_kv", L, 0)
                                                                  : heads;
  const std::vector<int> ffs = a == Arch::Mamba2 ? std::vector<int>(std::size_t(L), 0)
                                                 : k.per_layer("feed_forward_length", L, std::nullopt);

  // Mamba-2 sizes.
  Mamba2Spec mb;
  const bool has_ssm = a == Arch::GraniteHybrid || a == Arch::Mamba2;
  if (has_ssm) {
    mb.d_conv = k.integer("ssm.conv_kernel");
    const int d_inner = k.integer("ssm.inner_size");
    mb.d_state = k.integer("ssm.state_size");
    const int H = k.integer("ssm.time_step_rank");
    mb.ngroups = k.integer("ssm.group_count", 1);
    if (H <= 0 || d_inner <= 0 || d_inner % H != 0)
      r.bad("ssm.inner_size ", d_inner, " is not a positive multiple of ssm.time_step_rank ", H);
    mb.expand = double(d_inner) / m.d_model;
    if (mb.d_inner(m.d_model) != d_inner)
      r.bad("ssm.inner_size ", d_inner, " is not expand x embedding_length for any expand our model holds");
    mb.headdim = d_inner / H;
    mb.conv_bias = true;  // llama.cpp always adds it
    mb.norm_eps = m.norm_eps;
    if (k.boolean("ssm.dt_b_c_rms", false)) r.bad("key '", an, ".ssm.dt_b_c_rms' is true: not supported");
  }
  // Attention settings.
  GqaSpec at;
  const bool rope = a == Arch::GraniteHybrid ? k.boolean("rope.scaling.finetuned", true) : a != Arch::Mamba2;
  at.rope = rope;
  at.rope_theta = k.number("rope.freq_base", 10000);
  at.qk_norm = a == Arch::Lfm2;
  if (a == Arch::GraniteHybrid) {
    const double s = k.number("attention.scale", 0);
    at.scale = s;
    m.embedding_multiplier = k.number("embedding_scale", 0) != 0 ? k.number("embedding_scale", 0) : 1;
    m.residual_multiplier = k.number("residual_scale", 0) != 0 ? k.number("residual_scale", 0) : 1;
    m.logits_divisor = k.number("logit_scale", 0) != 0 ? k.number("logit_scale", 0) : 1;
  }
  if (a == Arch::Lfm2) at.window = k.integer("attention.sliding_window", 0);
  ShortConvSpec sc;
  if (a == Arch::Lfm2) sc.L = k.integer("shortconv.l_cache");

  for (int i = 0; i < L; ++i) {
    const std::size_t u = std::size_t(i);
    BlockDesc b;
    const bool recurrent = a == Arch::Mamba2 || (a != Arch::Llama && kv[u] == 0);
    if (recurrent) {
      if (a == Arch::Lfm2) b.mixer = sc;
      else b.mixer = mb;
    } else {
      GqaSpec g = at;
      g.n_heads = heads[u];
      g.n_kv_heads = kv[u];
      if (g.n_heads <= 0) r.bad("layer ", i, ": attention.head_count is 0 for an attention layer");
      if (m.d_model % g.n_heads != 0 && !k.get("attention.key_length"))
        r.bad("embedding_length ", m.d_model, " is not a multiple of attention.head_count ", g.n_heads);
      g.head_dim = k.integer("attention.key_length", m.d_model / g.n_heads);
      if (k.integer("attention.value_length", g.head_dim) != g.head_dim)
        r.bad("attention.value_length ", k.integer("attention.value_length"), " differs from the key length ",
              g.head_dim, " (not supported)");
      if (k.integer("rope.dimension_count", g.head_dim) != g.head_dim)
        r.bad("rope.dimension_count ", k.integer("rope.dimension_count"), " differs from the head size ", g.head_dim,
              ": partial RoPE is not supported");
      b.mixer = g;
    }
    if (a != Arch::Mamba2) b.channel = SwiGluSpec{{.hidden = ffs[u]}};
    info.desc.blocks.push_back(b);
  }
  try {
    validate(info.desc);
  } catch (const Error& e) {
    r.bad("the model it describes is not valid: ", e.what());
  }
  // The projections' storage.
  for (const auto& t : r.tensors())
    if (t.type == GgmlType::Q8_0) info.q8_0 = true;
  return info;
}

// How load_into fills a model.
struct LoadOptions {
  // false (float models): the projections, embedding and head the file holds as Q8_0, F16 or
  // BF16 go straight from the file into the model's weight storage and keep no float copy
  // (RuntimeModel::release_packed_floats): memory of the stored weights plus the float
  // tensors (norms, convolutions, SSM dynamics) during the load and after it. The model then
  // runs inference only: saving, exporting, training and set_weight_storage need the floats
  // and refuse. An F32 file's weights are their only copy, kept either way.
  bool float_copy = true;
};

// Fills `model` (built from describe(r).desc) from the file's tensors. For
// o.float_copy = false, build the model with RuntimeModel::Unfilled (as load_gguf does), or
// its random initialisation occupies the float pages the load then gives back.
template <class S>
void load_into(const GgufReader& r, const GgufModelInfo& info, RuntimeModel<S>& model, const LoadOptions& o = {}) {
  HYBRID_CHECK(o.float_copy || (std::is_same_v<S, float>), "GGUF file '", r.path(), "': loading without the float "
               "copy stores the weights for RuntimeModel<float>; this model computes in double");
  const ModelDesc& d = model.desc();
  struct Item {
    std::string name;  // ours
    MatMap<S>* dst;
    Slot slot;
    const GgufTensor* t;
    ParamRole role;
  };
  std::vector<Item> items;
  std::set<std::string> used;
  model.visit([&](const std::string& n, MatMap<S>& t, ParamRole role) {
    const Slot s = slot_for(n, t.rows(), t.cols(), d, info.arch);
    const GgufTensor* gt = r.find(s.name);
    if (!gt) r.bad("tensor '", s.name, "' is missing (it holds our '", n, "')");
    // llama.cpp reads a 1-D [n] tensor and a [n, 1] one alike.
    std::vector<std::int64_t> ne = gt->ne;
    while (ne.size() > s.ne.size() && ne.back() == 1) ne.pop_back();
    if (ne != s.ne)
      r.bad("tensor '", s.name, "' has shape ", gt->shape_str(), ", expected ", GgufTensor{"", s.ne}.shape_str(),
            " from the metadata");
    used.insert(s.name);
    items.push_back({n, &t, s, gt, role});
  });
  for (const auto& t : r.tensors())
    if (!used.count(t.name))
      r.bad("unexpected tensor '", t.name, "' (", t.shape_str(), "): not part of the ", arch_name(info.arch),
            " model the metadata describes");
  // What the weight storage holds in the file's type (float models): those tensors' floats
  // are not written without the float copy.
  const auto stored = [](const Item& it) {
    return std::is_same_v<S, float> && it.t->type != GgmlType::F32 &&
           (it.role == ParamRole::Matrix || it.role == ParamRole::Embedding);
  };
  std::vector<float> buf;
  for (const Item& it : items) {
    if (!o.float_copy && stored(it)) continue;
    buf.resize(std::size_t(it.t->numel()));
    r.read_f32(*it.t, buf.data());
    const Index rows = it.dst->rows(), cols = it.dst->cols();
    if (it.slot.neg_exp)
      for (float v : buf)
        if (!(v < 0)) r.bad("tensor '", it.slot.name, "' holds ", v, "; A = -exp(A_log) must be negative");
    for (Index row = 0; row < rows; ++row) {
      const Index dst = it.slot.rope_heads > 0 ? rope_pair_source(row, it.slot.head_dim) : row;
      for (Index c = 0; c < cols; ++c) {
        const double v = buf[std::size_t(row * cols + c)];
        (*it.dst)(dst, c) = S(it.slot.neg_exp ? std::log(-v) : v);
      }
    }
  }
  model.check_finite();
  // Q8_0 tensors become int8 with a scale per block of 32: the blocks' own int8 values and
  // scales. F16 / BF16 ones stay in their type beside them; F32 ones stay float.
  if constexpr (std::is_same_v<S, float>) {
    std::map<std::string, const Item*> by_name;
    bool any = false;
    for (const Item& it : items) {
      by_name[it.name] = &it;
      any |= it.t->type != GgmlType::F32;
    }
    if (any)
      model.set_weight_storage_each(
          [&](const ParamInfo& e) -> WeightStore::Choice {
            const auto f = by_name.find(e.name);
            if (f == by_name.end()) return {DType::F32, 0};
            switch (f->second->t->type) {
              case GgmlType::Q8_0: return {DType::I8, kQ8_0Block};
              case GgmlType::F16: return {DType::F16, 0};
              case GgmlType::BF16: return {DType::BF16, 0};
              case GgmlType::F32: break;
            }
            return {DType::F32, 0};
          },
          [&](const ParamInfo& e, unsigned char* data, float* scales) {
            const auto f = by_name.find(e.name);
            if (f == by_name.end() || f->second->t->type == GgmlType::F32) return false;
            const Item& it = *f->second;
            const Index cols = e.cols;
            // File row `row` is our row rope_pair_source(row) for q / k (adjacent-pair order).
            const auto ours = [&](Index row) {
              return it.slot.rope_heads > 0 ? rope_pair_source(row, it.slot.head_dim) : row;
            };
            if (it.t->type == GgmlType::Q8_0) {
              std::vector<std::int8_t> q(std::size_t(it.t->numel()));
              std::vector<float> sc(q.size() / kQ8_0Block);
              r.read_q8_0(*it.t, q.data(), sc.data());
              for (std::size_t b = 0; b < sc.size(); ++b)
                if (!std::isfinite(sc[b]))
                  r.bad("tensor '", it.slot.name, "' block ", b, " has scale ", sc[b], "; every weight must be finite");
              const Index g = cols / kQ8_0Block;
              for (Index row = 0; row < e.rows; ++row) {
                std::memcpy(data + ours(row) * cols, q.data() + row * cols, std::size_t(cols));
                std::memcpy(scales + ours(row) * g, sc.data() + row * g, sizeof(float) * std::size_t(g));
              }
              return true;
            }
            if (o.float_copy) return false;  // F16 / BF16 packed from the float values: the same bits
            // F16 / BF16: the file's 2-byte values are the storage's.
            const unsigned char* src = r.bytes(*it.t);
            const std::uint16_t inf = it.t->type == GgmlType::F16 ? 0x7c00 : 0x7f80;  // exponent all ones
            for (Index row = 0; row < e.rows; ++row) {
              const unsigned char* line = src + 2 * std::size_t(row * cols);
              for (Index c = 0; c < cols; ++c) {
                std::uint16_t h;
                std::memcpy(&h, line + 2 * c, 2);
                if ((h & inf) == inf)
                  r.bad("tensor '", it.slot.name, "' holds a non-finite value at (", row, ", ", c,
                        ") of the file's rows; every weight must be finite");
              }
              std::memcpy(data + 2 * std::size_t(ours(row) * cols), line, 2 * std::size_t(cols));
            }
            return true;
          });
    if (!o.float_copy && model.weight_store()) model.release_packed_floats();
  }
}

template <class S = float>
RuntimeModel<S> load_gguf(const GgufReader& r, const LoadOptions& o = {}) {
  const GgufModelInfo info = describe(r);
  RuntimeModel<S> m(info.desc, typename RuntimeModel<S>::Unfilled{});  // every tensor comes from the file
  load_into(r, info, m, o);
  return m;
}

template <class S = float>
RuntimeModel<S> load_gguf(const std::string& path, const LoadOptions& o = {}) {
  const GgufReader r(path);
  return load_gguf<S>(r, o);
}

}  // namespace hybrid::gguf
