// Fuzz target: ModelDesc from JSON text (desc_json.hpp), as load_model reads it from a
// checkpoint's metadata. Text that is not JSON is the JSON library's business; for any
// JSON value desc_from_json must throw hybrid::Error or return a desc that passes
// validate() and survives desc → JSON text → desc unchanged.
#include <cstdint>
#include <hybrid/io/desc_json.hpp>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace hybrid;
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(data, data + size);
  } catch (const nlohmann::json::exception&) {
    return 0;
  }
  ModelDesc d;
  try {
    d = desc_from_json(j);
  } catch (const Error&) {
    return 0;
  }
  validate(d);  // throws (an uncaught exception: a crash) if desc_from_json let a bad desc by
  const nlohmann::json once = to_json(d);
  const nlohmann::json twice = to_json(desc_from_json(nlohmann::json::parse(once.dump())));
  if (once != twice) __builtin_trap();
  return 0;
}
