// Fuzz target: the parser of model.safetensors.index.json (sharded checkpoints). Any input
// must be rejected with hybrid::Error or give a map whose every shard path stays inside
// the checkpoint directory.
#include <cstdint>
#include <hybrid/io/sharded.hpp>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace hybrid;
  try {
    const SafetensorsIndex idx =
        parse_safetensors_index(std::string_view(reinterpret_cast<const char*>(data), size), "fuzz");
    if (idx.weight_map.empty()) __builtin_trap();
    for (const auto& [name, shard] : idx.weight_map)
      if (!sharded_detail::bad_shard_path(shard).empty()) __builtin_trap();
  } catch (const Error&) {
  }
  return 0;
}
