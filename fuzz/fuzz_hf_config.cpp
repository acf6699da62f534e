// Fuzz target: Hugging Face config.json (hf/config.hpp). For any text, parse_config_text +
// config_from_json must throw hybrid::Error or return a validated desc; when that desc can
// be written back (config_to_json), reading the written config must give the same model.
#include <cstdint>
#include <string_view>

#include <hybrid/hf/checkpoint.hpp>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace hybrid;
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  hf::HfConfig c;
  try {
    c = hf::config_from_json(hf::parse_config_text(text, "fuzz"), "fuzz");
  } catch (const Error&) {
    return 0;
  }
  validate(c.desc);  // an uncaught exception here is a crash: the parser let a bad desc by
  nlohmann::json written;
  try {
    written = hf::config_to_json(c.desc, c.family, &c);
  } catch (const Error&) {
    return 0;  // a family setting save_hf cannot reproduce exactly (e.g. a non-integer expand)
  }
  const hf::HfConfig back = hf::config_from_json(hf::parse_config_text(written.dump(), "again"), "again");
  if (back.family != c.family ||
      hf::ckpt_detail::semantic_json(back.desc) != hf::ckpt_detail::semantic_json(c.desc))
    __builtin_trap();
  return 0;
}
