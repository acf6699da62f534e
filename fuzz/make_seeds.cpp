// Writes seed inputs for the fuzz targets: valid files made by the library's own writers,
// so that the fuzzer starts from deep inside each format instead of guessing its syntax.
//
//   hybrid_fuzz_seeds <dir>    → <dir>/fuzz_safetensors/*, <dir>/fuzz_desc_json/*, ...
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <hybrid/alias_registry.hpp>
#include <hybrid/io/desc_json.hpp>
#include <hybrid/io/gguf.hpp>
#include <hybrid/io/safetensors.hpp>
#include <hybrid/io/sharded.hpp>
#ifdef HYBRID_HAVE_COMPRESSION
#include <hybrid/quant/artifact.hpp>
#endif

namespace fs = std::filesystem;
using namespace hybrid;

static void put(const fs::path& p, const std::string& text) {
  std::ofstream(p, std::ios::binary) << text;
}

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s <seed dir>\n", argv[0]);
    return 2;
  }
  try {
    const fs::path root = argv[1];
    for (const char* t : {"fuzz_safetensors", "fuzz_safetensors_index", "fuzz_desc_json", "fuzz_gguf"})
      fs::create_directories(root / t);

    // safetensors: every dtype, a scalar, an empty tensor, metadata; and edge files.
    const fs::path st = root / "fuzz_safetensors";
    const float f[6] = {1, -2.5f, 3e-39f, 65504, -0.f, 7};
    const double d[2] = {0.1, -1e300};
    const std::uint16_t h[4] = {0x3c00, 0x7c00, 0x0001, 0xfe00};  // F16 1, inf, subnormal, NaN
    const std::uint16_t b[4] = {0x3f80, 0xc020, 0x7f80, 0x0001};  // BF16 1, -2.5, inf, subnormal
    write_safetensors((st / "dtypes.safetensors").string(),
                      {{"a", Dtype::F32, {2, 3}, f}, {"d", Dtype::F64, {2}, d}, {"h", Dtype::F16, {4}, h},
                       {"b", Dtype::BF16, {2, 2}, b}, {"s", Dtype::F32, {}, f}, {"e", Dtype::F32, {0, 3}, nullptr}},
                      {{"format", "pt"}, {"note", "seed"}});
    write_safetensors((st / "empty.safetensors").string(), {});
    write_safetensors((st / "metadata_only.safetensors").string(), {}, {{"hybrid.format", "hybrid-1"}});
    write_safetensors((st / "misaligned.safetensors").string(),
                      {{"h", Dtype::F16, {1}, h}, {"a", Dtype::F32, {2}, f}, {"d", Dtype::F64, {1}, d}});
    const ModelDesc tiny = shipped_aliases().back().desc();
    write_safetensors((st / "with_desc.safetensors").string(), {{"embed.weight", Dtype::F32, {3, 2}, f}},
                      {{"hybrid.format", "hybrid-1"}, {"hybrid.desc", to_json(tiny).dump()}});

    // Sharded index: as write_sharded writes it, plus a minimal one.
    const fs::path tmp = root / "tmp_sharded";
    write_sharded(tmp.string(), {{"a", Dtype::F32, {6}, f}, {"b", Dtype::F64, {2}, d}, {"c", Dtype::F16, {4}, h}}, 8,
                  {{"format", "pt"}});
    fs::copy_file(tmp / safetensors_index_file, root / "fuzz_safetensors_index" / "index.json",
                  fs::copy_options::overwrite_existing);
    fs::remove_all(tmp);
    put(root / "fuzz_safetensors_index" / "minimal.json",
        R"({"weight_map": {"x": "model.safetensors"}})");

    // ModelDesc JSON: every shipped alias, and the shortest valid desc.
    for (const auto& a : shipped_aliases())
      put(root / "fuzz_desc_json" / (std::string(a.name) + ".json"), to_json(a.desc()).dump());
    put(root / "fuzz_desc_json" / "minimal.json",
        R"({"model": {"vocab": 10, "d_model": 8}, "blocks": [{"mixer": {"kind": "shortconv"}}]})");

    // GGUF: keys of every value type (arrays, nested, empty) and a tensor of each type; the
    // same at alignment 64; metadata only.
    const fs::path gg = root / "fuzz_gguf";
    float q[64];
    for (int k = 0; k < 64; ++k) q[k] = float(k % 9) - 4.5f;
    auto gguf = [&](std::uint32_t align, bool tensors) {
      GgufWriter w;
      w.set("general.architecture", GgufValue::str("llama"));
      if (align != 32) w.set("general.alignment", GgufValue::u32(align));
      GgufValue u8v, i64v, f64v;  // types without a factory
      u8v.type = GgufType::U8;
      u8v.u = 200;
      i64v.type = GgufType::I64;
      i64v.i = -5;
      f64v.type = GgufType::F64;
      f64v.f = 0.1;
      w.set("u8", u8v);
      w.set("i64", i64v);
      w.set("f64", f64v);
      w.set("llama.block_count", GgufValue::u32(2));
      w.set("llama.rope.freq_base", GgufValue::f32(10000));
      w.set("i32", GgufValue::i32(-7));
      w.set("u64", GgufValue::u64(1ull << 40));
      w.set("flag", GgufValue::boolean(true));
      w.set("tokenizer.ggml.tokens", GgufValue::strings({"<s>", "a", ""}));
      w.set("ids", GgufValue::array(GgufType::I32, {GgufValue::i32(1), GgufValue::i32(-1)}));
      w.set("empty", GgufValue::array(GgufType::F32, {}));
      w.set("nested", GgufValue::array(GgufType::ARRAY, {GgufValue::array(GgufType::U32, {GgufValue::u32(3)})}));
      if (tensors) {
        w.add_tensor("token_embd.weight", GgmlType::F32, {3, 2}, gguf_encode(GgmlType::F32, f, 6));
        w.add_tensor("f16", GgmlType::F16, {5}, gguf_encode(GgmlType::F16, f, 5));
        w.add_tensor("bf16", GgmlType::BF16, {2, 1, 2}, gguf_encode(GgmlType::BF16, f, 4));
        w.add_tensor("blk.0.attn_q.weight", GgmlType::Q8_0, {32, 2}, gguf_encode(GgmlType::Q8_0, q, 64));
      }
      return w.bytes();
    };
    put(gg / "tensors.gguf", gguf(32, true));
    put(gg / "align64.gguf", gguf(64, true));
    put(gg / "metadata_only.gguf", gguf(32, false));
#ifdef HYBRID_HAVE_COMPRESSION
    {  // quantised artifacts: each codec, with and without the shuffle; one with no tensors
      using namespace hybrid::quant;
      const fs::path qa = root / "fuzz_artifact";
      fs::create_directories(qa);
      Artifact a;
      a.desc = desc_from_layout("MA", ModelSpec{.vocab = 16, .d_model = 8}, Mamba2Spec{.d_state = 4, .expand = 2, .headdim = 8},
                                GqaSpec{.n_heads = 2, .n_kv_heads = 1, .head_dim = 4}, ShortConvSpec{}, NoChannelSpec{},
                                Relu2Spec{{16}});
      a.policy = {{"bits", {{"matrix", 6}, {"embed", 8}}}, {"method", "rtn"}};
      QTensor q6{.bits = 6, .rows = 3, .cols = 8, .group = 4, .q = {}, .scales = {0.5f, 0.25f, 1e-7f, 0, 2, 3}};
      for (int i = 0; i < 24; ++i) q6.q.push_back(std::int8_t(i % 63 - 31));
      QTensor q2{.bits = 2, .rows = 2, .cols = 4, .group = 4, .q = {1, 0, -1, 1, 0, 0, -1, 1}, .scales = {0.1f, 0.2f}};
      a.tensors = {ArtifactTensor::quantized("blocks.0.mixer.in_proj.weight", q6),
                   ArtifactTensor::quantized("embed.weight", q2, DType::F32, "embed"),
                   ArtifactTensor::floats("blocks.0.mixer.A_log", {2}, {0.5f, -1.25f}),
                   ArtifactTensor::floats("blocks.0.mixer.D", {}, {1}, DType::F32),
                   ArtifactTensor::floats("blocks.0.mixer.conv1d.weight", {2, 1, 2}, {1, -0.f, 3, 65504}),
                   ArtifactTensor::floats("empty", {0, 3}, {})};
      const std::pair<const char*, Codec> codecs[] = {
          {"raw", Codec::Raw}, {"lzma", Codec::Lzma}, {"zstd", Codec::Zstd}, {"brotli", Codec::Brotli}};
      for (const auto& [name, c] : codecs)
        for (ShuffleMode m : {ShuffleMode::Off, ShuffleMode::On}) {
          ArtifactOptions o;
          o.codecs = {c}, o.shuffle = m, o.threads = 1;
          put(qa / (std::string(name) + (m == ShuffleMode::On ? "_shuffled" : "") + ".hybq"), artifact_bytes(a, o));
        }
      put(qa / "empty.hybq", artifact_bytes(Artifact{a.desc, {}, {}}, ArtifactOptions{.codecs = {Codec::Raw}}));
    }
#endif
  } catch (const std::exception& e) {
    std::fprintf(stderr, "hybrid_fuzz_seeds: %s\n", e.what());
    return 1;
  }
  return 0;
}
