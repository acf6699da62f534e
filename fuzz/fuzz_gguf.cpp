// Fuzz target: GgufReader over arbitrary bytes. Any input must either be rejected with
// hybrid::Error or yield tensors that lie inside the input, do not overlap and read without a
// fault; a file the reader accepts must survive GgufWriter and read back the same. ASan sees
// every byte read because from_memory reads libFuzzer's exact buffer.
#include <algorithm>
#include <cstdint>
#include <hybrid/io/gguf.hpp>
#include <optional>
#include <vector>

namespace {

double touch(const hybrid::GgufValue& v) {
  double sum = double(v.u) + double(v.i) + (v.f == v.f ? v.f : 0) + double(v.s.size()) + double(v.brief().size());
  for (const auto& e : v.items) {
    if (e.type != v.elem) __builtin_trap();  // arrays hold one type
    sum += touch(e);
  }
  return sum;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace hybrid;
  std::optional<GgufReader> r;
  try {
    r.emplace(GgufReader::from_memory(data, size, "fuzz"));
  } catch (const Error&) {
    return 0;  // rejected: what the reader is for
  }
  const std::uint32_t align = r->alignment();
  if (align == 0 || (align & (align - 1)) != 0) __builtin_trap();
  const std::uint8_t* end = data + size;
  double sum = 0;

  // Metadata: every key once, in file order, each value readable.
  if (r->keys().size() != r->metadata().size()) __builtin_trap();
  for (const std::string& k : r->keys()) {
    const GgufValue* v = r->get(k);
    if (!v || k.empty()) __builtin_trap();
    sum += touch(*v);
  }
  try {
    sum += r->u32("general.alignment");
  } catch (const Error&) {
  }
  try {
    sum += double(r->str("general.architecture").size());
  } catch (const Error&) {
  }

  // Tensors: the invariants the reader promises, then every value.
  std::vector<const GgufTensor*> by_offset;
  for (const GgufTensor& t : r->tensors()) {
    if (t.name.empty() || t.name.size() > gguf_max_name) __builtin_trap();
    if (t.ne.empty() || t.ne.size() > gguf_max_dims) __builtin_trap();
    for (auto d : t.ne)
      if (d <= 0) __builtin_trap();
    if (!gguf_supported_type(std::uint32_t(t.type))) __builtin_trap();
    if (t.type == GgmlType::Q8_0 && t.ne[0] % kQ8_0Block != 0) __builtin_trap();
    if (t.bytes != ggml_row_bytes(t.type, std::uint64_t(t.ne[0])) * std::uint64_t(t.numel() / t.ne[0]))
      __builtin_trap();
    if (t.offset % align != 0) __builtin_trap();
    const std::uint8_t* p = r->bytes(t);
    if (p < data || p > end || t.bytes > std::uint64_t(end - p)) __builtin_trap();
    if (r->find(t.name) != &t) __builtin_trap();  // names are unique
    by_offset.push_back(&t);

    std::vector<float> f(static_cast<std::size_t>(t.numel()));
    r->read_f32(t, f.data());
    for (float v : f) sum += v == v ? v : 0;
    if (t.type == GgmlType::Q8_0) {
      std::vector<std::int8_t> q(static_cast<std::size_t>(t.numel()));
      std::vector<float> s(static_cast<std::size_t>(t.numel() / kQ8_0Block));
      r->read_q8_0(t, q.data(), s.data());
      for (std::size_t k = 0; k < q.size(); ++k) {
        const float y = s[k / kQ8_0Block] * float(q[k]);
        if (!(y == f[k] || (y != y && f[k] != f[k]))) __builtin_trap();  // the two reads agree
      }
    }
  }
  std::sort(by_offset.begin(), by_offset.end(),
            [](const GgufTensor* a, const GgufTensor* b) { return a->offset < b->offset; });
  for (std::size_t k = 1; k < by_offset.size(); ++k)
    if (by_offset[k]->offset < by_offset[k - 1]->offset + by_offset[k - 1]->bytes) __builtin_trap();

  // What the reader accepted, the writer writes and the reader reads back the same (skipped
  // for alignments whose padding alone would be huge).
  if (align <= 4096) {
    GgufWriter w;
    for (const std::string& k : r->keys()) w.set(k, *r->get(k));
    for (const GgufTensor& t : r->tensors())
      w.add_tensor(t.name, t.type, t.ne, {r->bytes(t), r->bytes(t) + t.bytes});
    const std::string bytes = w.bytes();
    if (bytes.size() != w.size()) __builtin_trap();
    std::optional<GgufReader> back;
    try {
      back.emplace(GgufReader::from_memory(bytes.data(), bytes.size(), "fuzz-rewritten"));
    } catch (const Error&) {
      __builtin_trap();
    }
    if (back->keys() != r->keys() || back->alignment() != align) __builtin_trap();
    for (const std::string& k : r->keys())
      if (!(*back->get(k) == *r->get(k))) __builtin_trap();
    if (back->tensors().size() != r->tensors().size()) __builtin_trap();
    for (std::size_t k = 0; k < r->tensors().size(); ++k) {
      const GgufTensor &a = r->tensors()[k], &b = back->tensors()[k];
      if (a.name != b.name || a.ne != b.ne || a.type != b.type || a.bytes != b.bytes) __builtin_trap();
      if (std::memcmp(r->bytes(a), back->bytes(b), a.bytes) != 0) __builtin_trap();
    }
  }
  volatile double sink = sum;  // keep the reads
  (void)sink;
  return 0;
}
