// core/utf8.hpp and core/json.hpp: the one UTF-8 validity rule, U+FFFD replacement of
// maximal invalid subparts, and checked JSON reading whose errors name file and field.
#include <doctest/doctest.h>

#include <hybrid/core/json.hpp>
#include <hybrid/core/utf8.hpp>
#include <string>

#include "test_util.hpp"

using namespace hybrid;
using namespace hybrid::test_util;

// This file's own namespace: the tests compile in batches (tests/CMakeLists.txt).
namespace hybrid_test_utf8_json {

TEST_CASE("utf8: valid characters decode; overlong, surrogate, too large and truncated do not") {
  std::uint32_t cp = 0;
  CHECK(next_utf8("A", 0, cp) == 1);
  CHECK(cp == 'A');
  CHECK(next_utf8("\xC3\xA9", 0, cp) == 2);
  CHECK(cp == 0xE9);
  CHECK(next_utf8("\xE2\x82\xAC", 0, cp) == 3);
  CHECK(cp == 0x20AC);
  CHECK(next_utf8("\xF0\x9F\x98\x80", 0, cp) == 4);
  CHECK(cp == 0x1F600);
  CHECK(next_utf8("\xF4\x8F\xBF\xBF", 0, cp) == 4);  // U+10FFFF, the last code point
  for (const char* bad : {"\xC0\xAF", "\xC1\xBF", "\xE0\x80\xAF", "\xED\xA0\x80", "\xF0\x80\x80\xAF",
                          "\xF4\x90\x80\x80", "\xF5\x80\x80\x80", "\x80", "\xFF", "\xE2\x82", "\xC3"}) {
    INFO(bad);
    CHECK(next_utf8(bad, 0, cp) == 0);
    CHECK(!is_valid_utf8(bad));
  }
  CHECK(is_valid_utf8("plain ASCII, caf\xC3\xA9, \xE2\x82\xAC"));
  CHECK(is_valid_utf8(""));
  std::string s;
  for (std::uint32_t c : {0x41u, 0xE9u, 0x20ACu, 0x1F600u}) append_utf8(s, c);
  CHECK(s == "A\xC3\xA9\xE2\x82\xAC\xF0\x9F\x98\x80");
}

TEST_CASE("utf8: invalid bytes become U+FFFD, one per maximal subpart (as Python's replace)") {
  const std::string r = "\xEF\xBF\xBD";
  CHECK(utf8_replace("ok \xC3\xA9") == "ok \xC3\xA9");
  CHECK(utf8_replace("a\xE2\x82" "b") == "a" + r + "b");             // truncated: one
  CHECK(utf8_replace("\xF0\x9F\x98") == r);                         // truncated at the end
  CHECK(utf8_replace("\xED\xA0\x80") == r + r + r);                 // surrogate: per byte
  CHECK(utf8_replace("\xC0\xAF") == r + r);                         // overlong: per byte
  CHECK(utf8_replace("\x80\x80x") == r + r + "x");                  // stray continuations
}

TEST_CASE("json: parse errors name the file and what it should have been") {
  check_error([] { (void)parse_json("{\"a\": ", "cfg 'x.json'", "a config.json"); },
              {"cfg 'x.json'", "not valid JSON", "expected a config.json"});
  check_error([] { (void)parse_json("[1]", "cfg", "a config.json"); },
              {"cfg", "expected a JSON object at the top level", "[1]"});
  CHECK(parse_json("[1]", "cfg", "a list", false).is_array());
  check_error([] { (void)parse_json(std::string(100, '[') + std::string(100, ']'), "deep", "x", false, 64); },
              {"deep", "nested deeper than 64"});
  TempDir tmp;
  check_error([&] { (void)read_json_file(tmp / "absent.json", "--config", "a desc"); },
              {"--config", "absent.json", "no such file"});
  spit(tmp / "bad.json", "{oops");
  check_error([&] { (void)read_json_file(tmp / "bad.json", "--config", "a desc"); },
              {"--config", "bad.json", "not valid JSON"});
  spit(tmp / "good.json", "{\"a\": 1}");
  CHECK(read_json_file(tmp / "good.json", "--config", "a desc")["a"] == 1);
}

TEST_CASE("json: field getters say which field and what was expected") {
  const nlohmann::json j = nlohmann::json::parse(
      R"({"n": 3, "big": 4000000000, "s": "x", "b": true, "o": {"k": null}, "a": [1]})");
  const JsonFields f("cfg 'x.json'");
  CHECK(f.integer(j["n"], "n", 0, 10) == 3);
  check_error([&] { (void)f.integer(j["big"], "big", INT32_MIN, INT32_MAX); },
              {"cfg 'x.json': big: expected an integer, got 4000000000"});
  check_error([&] { (void)f.integer(j["s"], "s", 0, 1); }, {"s: expected an integer, got \"x\""});
  check_error([&] { (void)f.string(j["n"], "n"); }, {"n: expected a string, got 3"});
  check_error([&] { (void)f.boolean(j["s"], "s"); }, {"s: expected true or false"});
  check_error([&] { (void)f.number(j["s"], "s"); }, {"s: expected a number"});
  check_error([&] { (void)f.array(j["o"], "o"); }, {"o: expected an array"});
  check_error([&] { (void)f.object(j["a"], "a"); }, {"a: expected a JSON object"});
  CHECK(f.find(j["o"], "k", "o") == nullptr);  // null counts as absent
  check_error([&] { (void)f.require(j["o"], "k", "o", "a token id"); },
              {"cfg 'x.json': o.k: missing (expected a token id)"});
  check_error([&] { (void)f.find(j["a"], "k", "a"); }, {"a: expected a JSON object"});
  CHECK(JsonFields::at("blocks", 3) == "blocks[3]");
  // No file: the message starts with the field.
  check_error([&] { (void)JsonFields().string(j["n"], "model.norm"); },
              {"model.norm: expected a string"});
  CHECK(json_brief(nlohmann::json(std::string(200, 'x'))).size() == 80);
  CHECK(json_brief(nlohmann::json(std::string("\xFF"))) == "\"\xEF\xBF\xBD\"");  // no throw
}

}  // namespace hybrid_test_utf8_json
