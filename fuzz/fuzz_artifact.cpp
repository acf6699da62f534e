// Fuzz target: read_artifact_memory (quant/artifact.hpp) over arbitrary bytes, once with the
// checksums verified and once without, so that mutations also reach the parsing and the
// decompressors behind them. Any input must be rejected with hybrid::Error or yield an
// artifact that passes every check the reader promises and survives write -> read bit for
// bit; an input accepted with checksums must be accepted without them.
#include <cmath>
#include <cstdint>
#include <hybrid/quant/artifact.hpp>
#include <set>
#include <string>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace hybrid;
  using namespace hybrid::quant;
  ArtifactReadOptions unchecked;
  unchecked.verify_checksums = false;
  unchecked.max_raw_bytes = std::uint64_t(64) << 20;  // inside libFuzzer's memory limit
  ArtifactReadOptions checked = unchecked;
  checked.verify_checksums = true;

  bool accepted_checked = false;
  try {
    (void)read_artifact_memory(data, size, "fuzz", checked);
    accepted_checked = true;
  } catch (const Error&) {
  }
  Artifact a;
  ArtifactReport rep;
  try {
    a = read_artifact_memory(data, size, "fuzz", unchecked, &rep);
  } catch (const Error&) {
    if (accepted_checked) __builtin_trap();  // the checksums may only add errors
    return 0;
  }

  // The invariants of an accepted file: sizes tile it, tensors are valid and finite.
  std::uint64_t stored = rep.header_bytes;
  for (const auto& s : rep.streams) stored += s.stored_bytes;
  if (rep.total_bytes != size || stored != size) __builtin_trap();
  std::set<std::string> names;
  std::uint64_t values = 0;
  for (const ArtifactTensor& t : a.tensors) {
    if (t.name.empty() || !names.insert(t.name).second) __builtin_trap();
    if (t.kind == ArtifactTensor::Kind::Quantized) {
      t.q.check("fuzz");  // throws (an uncaught exception: a crash) if the reader let it by
      for (float s : t.q.scales)
        if (!std::isfinite(s)) __builtin_trap();
      values += t.q.q.size();
    } else {
      std::uint64_t n = 1;
      for (Index d : t.shape) n *= std::uint64_t(d);
      if (n != t.values.size()) __builtin_trap();
      for (float v : t.values)
        if (!std::isfinite(v)) __builtin_trap();
      values += n;
    }
  }
  if (values > artifact_value_cap(a.desc) || !a.policy.is_object()) __builtin_trap();

  // Whatever the reader accepts the writer must write, and the result must read back the same.
  ArtifactOptions raw;
  raw.codecs = {Codec::Raw};
  raw.shuffle = ShuffleMode::Off;
  raw.threads = 1;
  const std::string again = artifact_bytes(a, raw);  // throwing here is a crash
  if (!bit_equal(read_artifact_memory(again.data(), again.size(), "fuzz: rewritten"), a)) __builtin_trap();
  return 0;
}
