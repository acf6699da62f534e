// Checked access to a tokenizer.json (core/json.hpp): errors start "BpeTokenizer: <origin>:"
// and name the field's JSON path.
#pragma once
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <utility>

#include "../core/json.hpp"

namespace hybrid::detail::bpe {

using nlohmann::json;

// Printable form of a value or a string for error messages, cut short (core/json.hpp).
inline std::string show(const json& v) { return json_brief(v); }
inline std::string show(std::string_view s) { return show(json(std::string(s))); }
inline std::string show(const std::string& s) { return show(std::string_view(s)); }

// Checked access to the parsed JSON (core/json.hpp): every failure names the field (a JSON
// path such as "pre_tokenizer.pretokenizers[0].pattern") and what was expected there.
class Fields : public JsonFields {
 public:
  explicit Fields(std::string origin)
      : JsonFields("BpeTokenizer: " + origin), origin_(std::move(origin)) {}

  using JsonFields::boolean;
  bool boolean(const json& obj, const char* key, const std::string& path, bool dflt) const {
    const json* v = find(obj, key, path);
    return v ? boolean(*v, join(path, key)) : dflt;
  }
  // A token id: an integer in [0, kMaxId).
  static bool is_id(const json& v) { return is_integer_in(v, 0, kMaxId - 1); }
  int id(const json& v, const std::string& path) const {
    if (!v.is_number_integer()) fail(path, "expected a token id (an integer), got ", show(v));
    if (!is_id(v)) fail(path, "token id ", show(v), " is outside [0, ", kMaxId, ")");
    return int(v.get<std::int64_t>());
  }
  const std::string& origin() const { return origin_; }

  static constexpr std::int64_t kMaxId = std::int64_t(1) << 24;

 private:
  std::string origin_;
};

}  // namespace hybrid::detail::bpe
