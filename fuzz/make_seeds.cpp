// Writes seed inputs for the fuzz targets: valid files made by the library's own writers,
// so that the fuzzer starts from deep inside each format instead of guessing its syntax.
//
//   hybrid_fuzz_seeds <dir>    → <dir>/fuzz_safetensors/*, <dir>/fuzz_desc_json/*, ...
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <hybrid/alias_registry.hpp>
#include <hybrid/io/desc_json.hpp>
#include <hybrid/io/safetensors.hpp>
#include <hybrid/io/sharded.hpp>

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
    for (const char* t : {"fuzz_safetensors", "fuzz_safetensors_index", "fuzz_desc_json"})
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
  } catch (const std::exception& e) {
    std::fprintf(stderr, "hybrid_fuzz_seeds: %s\n", e.what());
    return 1;
  }
  return 0;
}
