// GGUF export and import of models (gguf/export.hpp, gguf/import.hpp): round trips for
// every architecture, the metadata and tensor layout llama.cpp reads, layouts an
// architecture cannot express, and files whose metadata or tensors are wrong.
#include <doctest/doctest.h>

#include <cmath>
#include <hybrid/aliases.hpp>
#include <hybrid/gguf/export.hpp>
#include <hybrid/gguf/import.hpp>
#include <hybrid/model.hpp>
#include <string>
#include <vector>

using namespace hybrid;

// This file's own namespace: the tests compile in batches (tests/CMakeLists.txt).
namespace hybrid_test_gguf_model {

namespace {

const std::vector<int> kIds = {256, 72, 101, 108, 108, 111, 10, 33, 200, 5};

// A llama-shaped runtime layout (pure attention with SwiGLU).
ModelDesc llama_desc() {
  ModelSpec m{.vocab = 258, .d_model = 32, .tied = false};
  GqaSpec a{.n_heads = 4, .n_kv_heads = 2, .head_dim = 8, .rope_theta = 500000};
  return desc_from_layout("AAA", m, Mamba2Spec{}, a, ShortConvSpec{}, NoChannelSpec{}, SwiGluSpec{{64}});
}

// Granite-style hybrid with every scale key non-neutral, untied, G = 2.
ModelDesc granite_scaled_desc() {
  ModelSpec m{.vocab = 300, .d_model = 32, .tied = false, .embedding_multiplier = 6,
              .residual_multiplier = 0.5, .logits_divisor = 4};
  Mamba2Spec mb{.d_state = 8, .expand = 2, .headdim = 16, .ngroups = 2, .chunk = 8, .conv_bias = false};
  GqaSpec a{.n_heads = 4, .n_kv_heads = 1, .head_dim = 8, .scale = 0.3};
  return desc_from_layout("MAMM", m, mb, a, ShortConvSpec{}, SwiGluSpec{{48}}, SwiGluSpec{{48}});
}

// LFM2 with a sliding window (lfm2.attention.sliding_window).
ModelDesc lfm2_window_desc() {
  ModelSpec m{.vocab = 258, .d_model = 32, .tied = true};
  GqaSpec a{.n_heads = 4, .n_kv_heads = 2, .head_dim = 8, .rope_theta = 1e6, .window = 4, .qk_norm = true};
  return desc_from_layout("CACA", m, Mamba2Spec{}, a, ShortConvSpec{.L = 3}, NoChannelSpec{}, SwiGluSpec{{48}});
}

Mat<float> logits(const RuntimeModel<float>& m) {
  return m.forward(kIds, 1, Index(kIds.size()));
}

GgufReader reader_of(const std::string& bytes) { return GgufReader::from_memory(bytes.data(), bytes.size(), "test"); }

// Exports d (seed 3) to F32, imports it, and checks parameters and logits.
void check_round_trip(const ModelDesc& d, gguf::Arch expect) {
  const RuntimeModel<float> m(d, 3);
  gguf::ExportReport rep;
  const std::string bytes = gguf::to_gguf(m, {}, &rep).bytes();
  CHECK(rep.arch == expect);
  const GgufReader r = reader_of(bytes);
  CHECK(r.str("general.architecture") == gguf::arch_name(expect));
  const RuntimeModel<float> back = gguf::load_gguf<float>(r);
  REQUIRE(back.param_count() >= m.param_count());  // + a zero conv bias where the model has none
  // Same parameters by name; A_log goes through -exp and log, the rest is exact.
  std::map<std::string, const MatMap<float>*> ours;
  m.visit([&](const std::string& n, const MatMap<float>& t, ParamRole) { ours[n] = &t; });
  back.visit([&](const std::string& n, const MatMap<float>& t, ParamRole) {
    const auto it = ours.find(n);
    if (it == ours.end()) {
      CHECK_MESSAGE(t.cwiseAbs().maxCoeff() == 0, n);  // the conv bias llama.cpp requires
      return;
    }
    const double tol = n.ends_with("A_log") ? 1e-6 : 0;
    CHECK_MESSAGE((t - *it->second).cwiseAbs().maxCoeff() <= tol, n);
  });
  const Mat<float> a = logits(m), b = logits(back);
  CHECK((a - b).cwiseAbs().maxCoeff() < 1e-5);
}

}  // namespace

TEST_CASE("GGUF round trip: export then import gives the same model, for every architecture") {
  SUBCASE("granitehybrid: TinyGolf15x3E2 (G = 2, per-group norm)") {
    check_round_trip(TinyGolf15x3E2::desc(), gguf::Arch::GraniteHybrid);
  }
  SUBCASE("granitehybrid: scale keys, untied, no conv bias") {
    check_round_trip(granite_scaled_desc(), gguf::Arch::GraniteHybrid);
  }
  SUBCASE("lfm2: TinyLfm2") { check_round_trip(TinyLfm2::desc(), gguf::Arch::Lfm2); }
  SUBCASE("lfm2: sliding window") { check_round_trip(lfm2_window_desc(), gguf::Arch::Lfm2); }
  SUBCASE("mamba2: TinyMamba (expand 1.5)") { check_round_trip(TinyMamba::desc(), gguf::Arch::Mamba2); }
  SUBCASE("llama: a pure transformer") { check_round_trip(llama_desc(), gguf::Arch::Llama); }
}

TEST_CASE("GGUF export: the metadata and tensors llama.cpp reads") {
  const RuntimeModel<float> m(granite_scaled_desc(), 1);
  const std::string bytes = gguf::to_gguf(m).bytes();
  const GgufReader r = reader_of(bytes);
  const std::string p = "granitehybrid.";
  CHECK(r.version() == 3);
  CHECK(r.u32(p + "block_count") == 4);
  CHECK(r.u32(p + "embedding_length") == 32);
  CHECK(r.u32(p + "feed_forward_length") == 48);
  CHECK(r.u32(p + "attention.head_count") == 4);
  const auto& kv = r.array(p + "attention.head_count_kv", GgufType::I32);
  REQUIRE(kv.size() == 4);
  CHECK(kv[0].i == 0);
  CHECK(kv[1].i == 1);
  CHECK(kv[2].i == 0);
  CHECK(r.u32(p + "ssm.inner_size") == 64);
  CHECK(r.u32(p + "ssm.state_size") == 8);
  CHECK(r.u32(p + "ssm.group_count") == 2);
  CHECK(r.u32(p + "ssm.time_step_rank") == 4);
  CHECK(r.u32(p + "ssm.conv_kernel") == 4);
  CHECK(r.boolean(p + "rope.scaling.finetuned"));
  CHECK(r.f32(p + "embedding_scale") == 6.f);
  CHECK(r.f32(p + "residual_scale") == 0.5f);
  CHECK(r.f32(p + "logit_scale") == 4.f);
  CHECK(r.f32(p + "attention.scale") == doctest::Approx(0.3));
  CHECK(r.f32(p + "attention.layer_norm_rms_epsilon") == doctest::Approx(1e-5));
  // Tensors: shapes fastest first, the F32-only ones, A = -exp(A_log), zero conv bias.
  const GgufTensor* emb = r.find("token_embd.weight");
  REQUIRE(emb);
  CHECK(emb->ne == std::vector<std::int64_t>{32, 300});
  REQUIRE(r.find("output.weight"));
  const GgufTensor* a = r.find("blk.0.ssm_a");
  REQUIRE(a);
  CHECK(a->ne == std::vector<std::int64_t>{1, 4});
  std::vector<float> av(4);
  r.read_f32(*a, av.data());
  for (float v : av) CHECK(v < 0);
  const GgufTensor* norm = r.find("blk.0.ssm_norm.weight");
  REQUIRE(norm);
  CHECK(norm->ne == std::vector<std::int64_t>{32, 2});
  const GgufTensor* cb = r.find("blk.0.ssm_conv1d.bias");
  REQUIRE(cb);
  std::vector<float> cbv(std::size_t(cb->numel()));
  r.read_f32(*cb, cbv.data());
  for (float v : cbv) CHECK(v == 0);
  CHECK(r.find("blk.0.ssm_conv1d.weight")->ne == std::vector<std::int64_t>{4, 96});
  CHECK(r.find("blk.1.attn_q.weight")->ne == std::vector<std::int64_t>{32, 32});
  CHECK(r.find("blk.1.attn_k.weight")->ne == std::vector<std::int64_t>{32, 8});
  // The byte vocabulary: GPT-2 byte characters, controls, unused padding.
  CHECK(r.str("tokenizer.ggml.model") == "gpt2");
  const auto& toks = r.array("tokenizer.ggml.tokens", GgufType::STRING);
  REQUIRE(toks.size() == 300);
  CHECK(toks['A'].s == "A");
  CHECK(toks[' '].s == "\xC4\xA0");  // 'Ġ'
  CHECK(toks[256].s == "<|bos|>");
  CHECK(r.array("tokenizer.ggml.token_type", GgufType::I32)[257].i == 3);
  CHECK(r.array("tokenizer.ggml.token_type", GgufType::I32)[299].i == 5);
  CHECK(r.array("tokenizer.ggml.merges", GgufType::STRING).empty());
  CHECK(r.u32("tokenizer.ggml.bos_token_id") == 256);
  CHECK(gguf::is_byte_vocab(r));
}

TEST_CASE("GGUF export: neutral scales are not written; RoPE rows are permuted to adjacent pairs") {
  const RuntimeModel<float> m(llama_desc(), 2);
  const std::string bytes = gguf::to_gguf(m).bytes();  // the reader reads these bytes in place
  const GgufReader r = reader_of(bytes);
  for (const char* k : {"embedding_scale", "residual_scale", "logit_scale", "attention.scale"})
    CHECK_FALSE(r.has(std::string("llama.") + k));
  CHECK(r.u32("llama.attention.head_count_kv") == 2);
  CHECK(r.f32("llama.rope.freq_base") == 500000.f);
  // File row 2j + s of a head is our row s * P/2 + j (P = 8).
  const GgufTensor* q = r.find("blk.0.attn_q.weight");
  REQUIRE(q);
  std::vector<float> fq(std::size_t(q->numel()));
  r.read_f32(*q, fq.data());
  const MatMap<float>* ours = nullptr;
  m.visit([&](const std::string& n, const MatMap<float>& t, ParamRole) {
    if (n == "blocks.0.mixer.q_proj.weight") ours = &t;
  });
  REQUIRE(ours);
  for (int row : {0, 1, 2, 3, 9, 31})
    for (int c : {0, 5, 31}) {
      const int h = row / 8, k = row % 8;
      CHECK(fq[std::size_t(row * 32 + c)] == (*ours)(h * 8 + (k % 2) * 4 + k / 2, c));
    }
}

TEST_CASE("GGUF export: Q8_0 projections import as int8 storage with the blocks' scales") {
  const RuntimeModel<float> m(TinyGolf15x3E2::desc(), 5);
  gguf::ExportOptions opt;
  opt.type = GgmlType::Q8_0;
  gguf::ExportReport rep;
  const std::string bytes = gguf::to_gguf(m, opt, &rep).bytes();
  CHECK(rep.tensors_by_type.count("Q8_0"));
  CHECK(rep.kept_f32.empty());
  const GgufReader r = reader_of(bytes);
  CHECK(r.find("blk.0.ssm_in.weight")->type == GgmlType::Q8_0);
  CHECK(r.find("blk.0.ssm_conv1d.weight")->type == GgmlType::F32);
  CHECK(r.find("blk.0.ssm_norm.weight")->type == GgmlType::F32);
  const RuntimeModel<float> back = gguf::load_gguf<float>(r);
  CHECK(back.weight_dtype() == DType::I8);
  REQUIRE(back.weight_store());
  CHECK(back.weight_store()->group() == 32);
  // The int8 storage computes what the file's dequantised values compute, near the float
  // model's logits.
  RuntimeModel<float> deq = gguf::load_gguf<float>(r);
  deq.set_weight_storage(DType::F32);
  const Mat<float> a = logits(m), b = logits(back), c = logits(deq);
  CHECK((b - c).cwiseAbs().maxCoeff() < 1e-5);
  CHECK((a - b).cwiseAbs().maxCoeff() < 0.05 * a.cwiseAbs().maxCoeff() + 1e-3);
}

TEST_CASE("GGUF export: a layout the architecture cannot express is an error naming the feature") {
  auto fails = [](const ModelDesc& d, std::optional<gguf::Arch> arch, const char* what) {
    const RuntimeModel<float> m(d, 0);
    gguf::ExportOptions opt;
    opt.arch = arch;
    CHECK_THROWS_WITH_AS(gguf::to_gguf(m, opt), doctest::Contains(what), Error);
  };
  fails(TinyGolf15x3::desc(), std::nullopt, "has no channel");
  fails(TinyTransformer::desc(), std::nullopt, "ReLU");
  fails(TinyScaled::desc(), std::nullopt, "LayerNorm");
  fails(TinyLfm2Ssm::desc(), std::nullopt, "sliding window");
  fails(TinyHybrid18x6::desc(), std::nullopt, "output gate");
  fails(TinyGolf15x3E2::desc(), gguf::Arch::Lfm2, "is Mamba-2");
  fails(TinyLfm2::desc(), gguf::Arch::GraniteHybrid, "is ShortConv");
  {
    ModelDesc d = TinyGolf15x3E2::desc();
    std::get<Mamba2Spec>(d.blocks[0].mixer).expand = 3;
    for (auto& b : d.blocks)
      if (auto* s = std::get_if<Mamba2Spec>(&b.mixer)) s->expand = 3;
    fails(d, std::nullopt, "d_inner = 2 x d_model");
  }
  {
    ModelDesc d = TinyMamba::desc();
    for (auto& b : d.blocks) std::get<Mamba2Spec>(b.mixer).dt_limit_hi = 0.5;
    fails(d, std::nullopt, "does not clamp dt");
  }
  {
    ModelDesc d = TinyLfm2::desc();
    for (auto& b : d.blocks)
      if (auto* s = std::get_if<GqaSpec>(&b.mixer)) s->qk_norm = false;
    fails(d, std::nullopt, "QK-norm");
  }
  {
    ModelDesc d = llama_desc();
    std::get<GqaSpec>(d.blocks[0].mixer).rope = false;
    fails(d, std::nullopt, "NoPE");
  }
}

TEST_CASE("GGUF import: wrong metadata or tensors are errors naming them") {
  const RuntimeModel<float> m(TinyGolf15x3E2::desc(), 4);
  auto bad = [&](auto&& edit, const char* what) {
    GgufWriter w = gguf::to_gguf(m);
    edit(w);
    const std::string b = w.bytes();
    const GgufReader r = reader_of(b);
    CHECK_THROWS_WITH_AS(gguf::load_gguf<float>(r), doctest::Contains(what), Error);
  };
  const std::string p = "granitehybrid.";
  bad([](GgufWriter& w) { w.set("general.architecture", GgufValue::str("gpt2")); }, "architecture 'gpt2'");
  bad([&](GgufWriter& w) { w.remove(p + "ssm.state_size"); }, "ssm.state_size' is missing");
  bad([&](GgufWriter& w) { w.set(p + "block_count", GgufValue::str("18")); }, "expected a non-negative integer");
  bad([&](GgufWriter& w) { w.set(p + "expert_count", GgufValue::u32(8)); }, "mixture-of-experts");
  bad([&](GgufWriter& w) { w.set(p + "rope.scaling.type", GgufValue::str("yarn")); }, "RoPE scaling");
  bad([&](GgufWriter& w) { w.set(p + "attention.sliding_window", GgufValue::u32(8)); }, "sliding-window");
  bad([&](GgufWriter& w) { w.remove_tensor("blk.3.ssm_out.weight"); }, "'blk.3.ssm_out.weight' is missing");
  bad([&](GgufWriter& w) {
    const std::vector<float> z(32, 0.f);
    w.add_tensor("blk.0.rope_freqs.weight", GgmlType::F32, {32}, gguf_encode(GgmlType::F32, z.data(), 32));
  }, "unexpected tensor 'blk.0.rope_freqs.weight'");
  bad([&](GgufWriter& w) {
    w.remove_tensor("blk.0.ssm_a");
    const std::vector<float> pos(4, 0.5f);
    w.add_tensor("blk.0.ssm_a", GgmlType::F32, {1, 4}, gguf_encode(GgmlType::F32, pos.data(), 4));
  }, "must be negative");
  bad([&](GgufWriter& w) {
    w.remove_tensor("blk.0.attn_norm.weight");
    const std::vector<float> x(16, 1.f);
    w.add_tensor("blk.0.attn_norm.weight", GgmlType::F32, {16}, gguf_encode(GgmlType::F32, x.data(), 16));
  }, "has shape [16], expected [32]");
  bad([&](GgufWriter& w) {
    const auto& kv = *w.get(p + "attention.head_count_kv");
    std::vector<GgufValue> items(kv.items.begin(), kv.items.end() - 1);
    w.set(p + "attention.head_count_kv", GgufValue::array(GgufType::I32, items));
  }, "expected one per layer (18)");
}

TEST_CASE("GGUF import: a file without a byte vocabulary is not taken for one") {
  const RuntimeModel<float> m(TinyMamba::desc(), 0);
  gguf::ExportOptions opt;
  opt.vocab = gguf::VocabKind::None;
  const std::string b = gguf::to_gguf(m, opt).bytes();
  const GgufReader r = reader_of(b);
  CHECK_FALSE(gguf::is_byte_vocab(r));
  CHECK(r.str("tokenizer.ggml.model") == "none");
  CHECK(r.u32("mamba2.vocab_size") == 258);
  CHECK(gguf::load_gguf<float>(r).vocab() == 258);
}

TEST_CASE("GGUF import: Q8_0 beside F32 matrices and F16 files keep each tensor's type") {
  const RuntimeModel<float> m(TinyLfm2::desc(), 6);  // SwiGLU 48: w2 has 48 columns, not a multiple of 32
  gguf::ExportOptions opt;
  opt.type = GgmlType::Q8_0;
  gguf::ExportReport rep;
  const std::string q = gguf::to_gguf(m, opt, &rep).bytes();
  REQUIRE_FALSE(rep.kept_f32.empty());
  CHECK(rep.kept_f32[0].find("ffn_down") != std::string::npos);
  const GgufReader rq = reader_of(q);
  const RuntimeModel<float> bq = gguf::load_gguf<float>(rq);
  REQUIRE(bq.weight_store());
  CHECK(bq.weight_store()->dtype() == DType::I8);
  // The F32 tensors are not packed: they read the float values, exactly the file's.
  Index matrices = 0;
  for (const auto& e : bq.param_table().entries())
    matrices += e.role == ParamRole::Matrix || e.role == ParamRole::Embedding;
  CHECK(bq.weight_store()->tensors() == matrices - Index(rep.kept_f32.size()));
  // The int8 storage computes what the file's dequantised values compute.
  RuntimeModel<float> deq = gguf::load_gguf<float>(rq);
  deq.set_weight_storage(DType::F32);
  const Mat<float> a = logits(m), b = logits(bq), c = logits(deq);
  CHECK((b - c).cwiseAbs().maxCoeff() < 1e-5);
  CHECK((a - b).cwiseAbs().maxCoeff() < 0.15 * a.cwiseAbs().maxCoeff());

  opt.type = GgmlType::F16;
  const std::string h = gguf::to_gguf(m, opt).bytes();
  const RuntimeModel<float> bh = gguf::load_gguf<float>(reader_of(h));
  REQUIRE(bh.weight_store());
  CHECK(bh.weight_store()->dtype() == DType::F16);
  CHECK(bh.weight_store()->tensors() == matrices);
  CHECK((a - logits(bh)).cwiseAbs().maxCoeff() < 1e-2);
}

TEST_CASE("GGUF import: the int8 storage holds the Q8_0 blocks' own values and scales") {
  const RuntimeModel<float> m(llama_desc(), 8);  // RoPE rows permuted in the file
  gguf::ExportOptions opt;
  opt.type = GgmlType::Q8_0;
  const std::string b = gguf::to_gguf(m, opt).bytes();
  const GgufReader r = reader_of(b);
  const RuntimeModel<float> back = gguf::load_gguf<float>(r);
  REQUIRE(back.weight_store());
  for (const char* name : {"blk.0.attn_q.weight", "blk.1.attn_k.weight", "blk.2.ffn_up.weight"}) {
    CAPTURE(name);
    const GgufTensor* t = r.find(name);
    REQUIRE(t);
    std::vector<std::int8_t> q(std::size_t(t->numel()));
    std::vector<float> sc(q.size() / 32);
    r.read_q8_0(*t, q.data(), sc.data());
    const std::string ours = std::string(name) == "blk.0.attn_q.weight"   ? "blocks.0.mixer.q_proj.weight"
                             : std::string(name) == "blk.1.attn_k.weight" ? "blocks.1.mixer.k_proj.weight"
                                                                          : "blocks.2.channel.w3.weight";
    const ParamInfo* e = nullptr;
    for (const auto& x : back.param_table().entries())
      if (x.name == ours) e = &x;
    REQUIRE(e);
    const ops::QWeight w = back.weight_store()->find(Param{e->offset, e->rows, e->cols});
    REQUIRE(w);
    CHECK(w.dtype == DType::I8);
    const bool rope = ours.find("_proj") != std::string::npos && ours.find("v_proj") == std::string::npos;
    for (Index row = 0; row < e->rows; ++row) {
      const Index dst = rope ? gguf::rope_pair_source(row, 8) : row;
      for (Index c = 0; c < e->cols; ++c) {
        CHECK(std::int8_t(w.row(dst)[c]) == q[std::size_t(row * e->cols + c)]);
        if (c % 32 == 0) CHECK(w.row_scales(dst)[c / 32] == sc[std::size_t((row * e->cols + c) / 32)]);
      }
    }
  }
}

}  // namespace hybrid_test_gguf_model
