// Fuzz target: SafetensorsReader over arbitrary bytes. Any input must either be rejected
// with hybrid::Error or yield tensors that lie inside the input and read without a fault;
// ASan sees every byte read because from_memory reads libFuzzer's exact buffer.
#include <cstdint>
#include <hybrid/io/safetensors.hpp>
#include <optional>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace hybrid;
  std::optional<SafetensorsReader> r;
  try {
    r.emplace(SafetensorsReader::from_memory(data, size, "fuzz"));
  } catch (const Error&) {
    return 0;  // rejected: what the reader is for
  }
  const unsigned char* end = data + size;
  std::uint64_t at = 0;
  double sum = 0;
  for (const TensorInfo& t : r->tensors()) {
    // The invariants the reader promises: exact tiling, byte counts, inside the input.
    if (t.begin != at) __builtin_trap();
    if (std::uint64_t(t.numel()) * dtype_size(t.dtype) != t.end - t.begin) __builtin_trap();
    if (r->bytes(t) + (t.end - t.begin) > end) __builtin_trap();
    at = t.end;
    for (float v : r->read<float>(t)) sum += v;
    for (double v : r->read<double>(t)) sum += v;
    if (auto f = r->try_view<float>(t))
      for (float v : *f) sum += v;
    if (auto d = r->try_view<double>(t))
      for (double v : *d) sum += v;
  }
  for (const auto& [k, v] : r->metadata()) sum += double(k.size() + v.size());
  volatile double sink = sum;  // keep the reads
  (void)sink;
  return 0;
}
