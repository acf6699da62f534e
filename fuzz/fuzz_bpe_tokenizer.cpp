// Fuzz target: Hugging Face tokenizer.json (tokenizer/bpe.hpp). The input's first line is
// text to encode, the rest the tokenizer JSON. Loading must throw hybrid::Error or give a
// tokenizer whose encode, decode and bytes_per_token never crash and whose ids lie in
// [0, vocab_size).
#include <cstdint>
#include <string>
#include <string_view>

#include <hybrid/tokenizer/bpe.hpp>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace hybrid;
  const std::string_view all(reinterpret_cast<const char*>(data), size);
  const std::size_t nl = all.find('\n');
  const std::string_view text = nl == std::string_view::npos ? std::string_view() : all.substr(0, nl);
  const std::string_view json = nl == std::string_view::npos ? all : all.substr(nl + 1);
  try {
    const BpeTokenizer tok = BpeTokenizer::from_json_text(json, "fuzz");
    const std::vector<int> ids = tok.encode(text);
    for (int id : ids)
      if (id < 0 || id >= tok.vocab_size()) __builtin_trap();
    (void)tok.decode(ids);
    double bytes = 0;
    for (int id : ids) bytes += tok.bytes_per_token(id);
    (void)bytes;
  } catch (const Error&) {
  }
  return 0;
}
