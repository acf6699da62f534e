// Checked JSON reading: parsing text or a file with errors that name the file, and typed
// field access whose errors name the field, what was expected there and what was found.
#pragma once
#include <cstdint>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <utility>

#include "error.hpp"
#include "file.hpp"

namespace hybrid {

// A printable form of a value for error messages, cut short; bytes that are not UTF-8 are
// replaced rather than thrown on (the value may come from a hostile file).
inline std::string json_brief(const nlohmann::json& v) {
  std::string s = v.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  if (s.size() > 80) s = s.substr(0, 77) + "...";
  return s;
}

// Parses `text`. Nesting is bounded so that hostile input cannot exhaust the stack or memory
// on structure no real file has. Errors, `expected` saying what the text should have been:
//   "<where>: not valid JSON (<parser message>); expected <expected>"
//   "<where>: JSON nested deeper than <max_depth> levels; expected <expected>"
//   "<where>: expected a JSON object at the top level, got <value>"   (require_object)
inline nlohmann::json parse_json(std::string_view text, const std::string& where,
                                 std::string_view expected, bool require_object = true,
                                 int max_depth = 64) {
  using json = nlohmann::json;
  json root;
  try {
    root = json::parse(text.begin(), text.end(), [&](int depth, json::parse_event_t, json&) {
      if (depth > max_depth)
        fail(where, ": JSON nested deeper than ", max_depth, " levels; expected ", expected);
      return true;
    });
  } catch (const json::exception& e) {
    fail(where, ": not valid JSON (", e.what(), "); expected ", expected);
  }
  if (require_object && !root.is_object())
    fail(where, ": expected a JSON object at the top level, got ", json_brief(root));
  return root;
}

// The same for a file (core/file.hpp reads it); messages name it as "<who>: '<path>'".
inline nlohmann::json read_json_file(const std::filesystem::path& path, std::string_view who,
                                     std::string_view expected, bool require_object = true,
                                     int max_depth = 64) {
  const std::string text = read_file(path, who, expected);
  return parse_json(text, std::string(who) + ": '" + path.string() + "'", expected,
                    require_object, max_depth);
}

// Typed access to the fields of parsed JSON. Every error reads
//   "<where>: <field>: <what is wrong>"
// where `field` is the value's path ("blocks[3].mixer.headdim", or a caller's own label)
// and an empty `where` starts the message with the field:
//   "<where>: <field>: expected an integer, got "x""
//   "<where>: <field>: missing (expected a value)"
// A key whose value is null counts as absent, as Hugging Face's writers emit both.
class JsonFields {
 public:
  using json = nlohmann::json;

  explicit JsonFields(std::string where = "") : where_(std::move(where)) {}
  const std::string& where() const { return where_; }

  template <class... Args>
  [[noreturn]] void fail(const std::string& field, const Args&... args) const {
    if (where_.empty()) ::hybrid::fail(field, ": ", args...);
    ::hybrid::fail(where_, ": ", field, ": ", args...);
  }
  // "expected <expected>, got <value>" at `field`.
  [[noreturn]] void wrong(const std::string& field, std::string_view expected, const json& got) const {
    fail(field, "expected ", expected, ", got ", json_brief(got));
  }

  // obj[key], or nullptr when absent or null; `path` is obj's own path, which must be an object.
  const json* find(const json& obj, std::string_view key, const std::string& path) const {
    if (!obj.is_object()) wrong(path, "a JSON object", obj);
    auto it = obj.find(key);
    return it == obj.end() || it->is_null() ? nullptr : &*it;
  }
  const json& require(const json& obj, std::string_view key, const std::string& path,
                      std::string_view expected = "a value") const {
    const json* v = find(obj, key, path);
    if (!v) fail(join(path, key), "missing (expected ", expected, ")");
    return *v;
  }

  // Type checks of a value found at `field`; `expected` words the message.
  const json& object(const json& v, const std::string& field,
                     std::string_view expected = "a JSON object") const {
    if (!v.is_object()) wrong(field, expected, v);
    return v;
  }
  const json& array(const json& v, const std::string& field,
                    std::string_view expected = "an array") const {
    if (!v.is_array()) wrong(field, expected, v);
    return v;
  }
  std::string string(const json& v, const std::string& field,
                     std::string_view expected = "a string") const {
    if (!v.is_string()) wrong(field, expected, v);
    return v.get<std::string>();
  }
  bool boolean(const json& v, const std::string& field) const {
    if (!v.is_boolean()) wrong(field, "true or false", v);
    return v.get<bool>();
  }
  double number(const json& v, const std::string& field, std::string_view expected = "a number") const {
    if (!v.is_number()) wrong(field, expected, v);
    return v.get<double>();
  }
  // An integer in [lo, hi]; one in the wrong range gets the same message as a non-integer.
  std::int64_t integer(const json& v, const std::string& field, std::int64_t lo, std::int64_t hi,
                       std::string_view expected = "an integer") const {
    if (!is_integer_in(v, lo, hi)) wrong(field, expected, v);
    return v.get<std::int64_t>();
  }
  static bool is_integer_in(const json& v, std::int64_t lo, std::int64_t hi) {
    if (!v.is_number_integer()) return false;
    if (v.is_number_unsigned())
      return hi >= 0 && v.get<std::uint64_t>() <= std::uint64_t(hi) && (lo <= 0 || v.get<std::uint64_t>() >= std::uint64_t(lo));
    const std::int64_t x = v.get<std::int64_t>();
    return x >= lo && x <= hi;
  }

  static std::string join(const std::string& path, std::string_view key) {
    return path.empty() ? std::string(key) : path + "." + std::string(key);
  }
  static std::string at(const std::string& path, std::size_t i) {
    return path + "[" + std::to_string(i) + "]";
  }

 private:
  std::string where_;
};

}  // namespace hybrid
