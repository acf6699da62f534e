// gguf/tokenizer.hpp: tokenizer metadata exported from the tokenizer fixtures, written to a
// GGUF file in memory, read back and rebuilt as a Tokenizer, which must give the original
// tokenizer's ids and decodings (and the reference libraries' ids) on the sample text and the
// edge-case strings; the byte vocabulary and every refused input too.
#ifdef HYBRID_HAVE_TOKENIZERS
#include <doctest/doctest.h>

#include <hybrid/gguf/tokenizer.hpp>
#include <memory>
#include <string>
#include <vector>

#include "test_util.hpp"

using namespace hybrid;
using nlohmann::json;
using hybrid::test_util::check_error;
using hybrid::test_util::slurp;

// This file's own namespace: the tests compile in batches (tests/CMakeLists.txt).
namespace hybrid_test_gguf_tokenizer {

namespace {

const std::string kTok = std::string(HYBRID_FIXTURES_DIR) + "/tokenizers/";
const std::string kLfm2 = std::string(HYBRID_FIXTURES_DIR) + "/hf/lfm2_bpe_tokenizer/tokenizer.json";

const json& reference() {
  static const json ref = json::parse(slurp(kTok + "reference_ids.json"));
  return ref;
}
const std::string& sample() {
  static const std::string s = slurp(kTok + "sample.txt");
  return s;
}

// The texts every round trip encodes: the sample and the reference edge cases.
std::vector<std::string> texts() {
  std::vector<std::string> out{sample()};
  for (const json& c : reference()["tokenizers"]["bpe_llama3.json"]["cases"]) out.push_back(c["text"]);
  return out;
}

const GgufValue* entry(const gguf::GgufEntries& kv, const std::string& key) {
  for (const auto& [k, v] : kv)
    if (k == key) return &v;
  return nullptr;
}

// Entries → file bytes (with the architecture llama.cpp needs) → reader. `bytes` keeps the
// memory the reader maps.
GgufReader to_file(const gguf::GgufEntries& kv, std::string& bytes) {
  GgufWriter w;
  w.set("general.architecture", GgufValue::str("llama"));
  gguf::set_tokenizer(w, kv);
  bytes = w.bytes();
  return GgufReader::from_memory(bytes.data(), bytes.size(), "tok.gguf");
}

std::unique_ptr<Tokenizer> round_trip(const gguf::GgufEntries& kv) {
  std::string bytes;
  const GgufReader r = to_file(kv, bytes);
  return gguf::tokenizer_from_gguf(r);
}

// Same ids, decodings and special ids as the original on every text.
void check_same(const Tokenizer& orig, const Tokenizer& back) {
  for (const std::string& t : texts()) {
    CAPTURE(t);
    const std::vector<int> ids = orig.encode(t);
    CHECK(back.encode(t) == ids);
    CHECK(back.decode(ids) == orig.decode(ids));
  }
  CHECK(back.bos() == orig.bos());
  CHECK(back.eos() == orig.eos());
  for (int id = 0; id < orig.vocab_size(); ++id) {
    CAPTURE(id);
    CHECK(back.decode_token(id) == orig.decode_token(id));
    CHECK(back.can_decode(id) == orig.can_decode(id));
  }
}

std::string llama3_with(const std::function<void(json&)>& edit) {
  json j = json::parse(slurp(kTok + "bpe_llama3.json"));
  edit(j);
  return j.dump();
}

}  // namespace

TEST_CASE("gguf tokenizer: gpt2 fixture round trip (ByteLevel with the prefix space)") {
  const std::string path = kTok + "bpe_gpt2.json";
  check_error([&] { gguf::bpe_tokenizer_metadata(path); }, {"bpe_gpt2.json", "add_prefix_space", "llama.cpp"});

  const auto kv = gguf::bpe_tokenizer_metadata(path, {.allow_prefix_space = true});
  CHECK(entry(kv, "tokenizer.ggml.model")->s == "gpt2");
  CHECK(entry(kv, "tokenizer.ggml.pre")->s == "gpt-2");
  CHECK(entry(kv, "tokenizer.ggml.add_space_prefix")->u == 1);
  CHECK(entry(kv, "tokenizer.ggml.tokens")->items.size() == 512);
  CHECK(entry(kv, "tokenizer.ggml.tokens")->items[0].s == "<|endoftext|>");
  CHECK(entry(kv, "tokenizer.ggml.token_type")->items[0].i == int(gguf::TokenType::Control));
  CHECK(entry(kv, "tokenizer.ggml.token_type")->items[300].i == int(gguf::TokenType::Normal));
  CHECK(entry(kv, "tokenizer.ggml.merges")->items.size() == 255);
  CHECK(entry(kv, "tokenizer.ggml.merges")->items[0].s == "\xC4\xA0 t");  // "Ġ t"
  CHECK(entry(kv, "tokenizer.ggml.eos_token_id")->u == 0);
  CHECK(entry(kv, "tokenizer.ggml.bos_token_id") == nullptr);
  CHECK(entry(kv, "tokenizer.ggml.add_bos_token")->u == 0);

  const BpeTokenizer orig(path);
  const auto back = round_trip(kv);
  REQUIRE(dynamic_cast<const BpeTokenizer*>(back.get()) != nullptr);
  CHECK(back->vocab_size() == 512);
  check_same(orig, *back);
  CHECK(back->encode(sample()) ==
        reference()["tokenizers"]["bpe_gpt2.json"]["sample"]["ids"].get<std::vector<int>>());
}

TEST_CASE("gguf tokenizer: llama3 and lfm2 fixtures round trip, padded to the model's vocab") {
  const std::string path = kTok + "bpe_llama3.json";
  const auto kv = gguf::bpe_tokenizer_metadata(path, {.model_vocab = 1088});
  CHECK(entry(kv, "tokenizer.ggml.pre")->s == "llama-bpe");
  const auto& tokens = entry(kv, "tokenizer.ggml.tokens")->items;
  const auto& types = entry(kv, "tokenizer.ggml.token_type")->items;
  REQUIRE(tokens.size() == 1088);
  REQUIRE(types.size() == 1088);
  CHECK(tokens[1].s == "<|startoftext|>");
  CHECK(types[1].i == int(gguf::TokenType::Control));
  CHECK(tokens[1024].s == "<think>");
  CHECK(types[1024].i == int(gguf::TokenType::UserDefined));
  CHECK(tokens[1026].s == "[PAD1026]");
  CHECK(types[1087].i == int(gguf::TokenType::Unused));
  CHECK(entry(kv, "tokenizer.ggml.bos_token_id")->u == 1);
  CHECK(entry(kv, "tokenizer.ggml.eos_token_id")->u == 2);
  CHECK(entry(kv, "tokenizer.ggml.padding_token_id")->u == 0);
  CHECK(entry(kv, "tokenizer.ggml.add_bos_token")->u == 1);  // TemplateProcessing: <|startoftext|> $A
  CHECK(entry(kv, "tokenizer.ggml.add_eos_token")->u == 0);
  CHECK(entry(kv, "tokenizer.ggml.add_space_prefix") == nullptr);

  const BpeTokenizer orig(path);
  const auto back = round_trip(kv);
  REQUIRE(back != nullptr);
  CHECK(back->vocab_size() == 1026);  // the placeholders past the tokenizer have no text
  check_same(orig, *back);
  CHECK(back->encode(sample()) ==
        reference()["tokenizers"]["bpe_llama3.json"]["sample"]["ids"].get<std::vector<int>>());

  // LFM2's tokenizer splits as LLaMA-3's; its own llama.cpp name can be asked for.
  const auto kv2 = gguf::bpe_tokenizer_metadata(kLfm2, {.pre = "lfm2"});
  CHECK(entry(kv2, "tokenizer.ggml.pre")->s == "lfm2");
  check_same(BpeTokenizer(kLfm2), *round_trip(kv2));
  check_error([&] { gguf::bpe_tokenizer_metadata(kLfm2, {.pre = "qwen2"}); }, {"'qwen2'", "llama-bpe", "lfm2"});
  check_error([&] { gguf::bpe_tokenizer_metadata(kLfm2, {.pre = "nonsense"}); }, {"'nonsense'", "not a name"});
  check_error([&] { gguf::bpe_tokenizer_metadata(path, {.model_vocab = 1000}); }, {"1000", "1026"});
}

TEST_CASE("gguf tokenizer: each llama.cpp pre-tokenizer in the table round trips") {
  struct Case {
    const char* name;
    json pre;
    bool ignore_merges;
  };
  const auto split = [](const char* re) {
    return json{{"type", "Split"}, {"pattern", {{"Regex", re}}}, {"behavior", "Isolated"}, {"invert", false}};
  };
  const json bl_plain = {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", false}, {"use_regex", false}};
  const json bl_regex = {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", true}};
  const auto seq = [](json a, json b) { return json{{"type", "Sequence"}, {"pretokenizers", {a, b}}}; };
  const std::vector<Case> cases = {
      {"gpt-2", bl_regex, false},
      {"llama-bpe", seq(split(gguf::tok_detail::kRegexLlama3), bl_plain), true},
      {"smaug-bpe", seq(split(gguf::tok_detail::kRegexLlama3), bl_plain), false},
      {"qwen2", seq(split(gguf::tok_detail::kRegexQwen2), bl_plain), false},
      {"qwen35", seq(split(gguf::tok_detail::kRegexQwen35), bl_plain), false},
      {"starcoder", seq({{"type", "Digits"}, {"individual_digits", true}}, bl_regex), false},
      {"gpt-4o", seq(split(gguf::tok_detail::kRegexGpt4o), bl_plain), false},
      {"tekken", seq(split(gguf::tok_detail::kRegexTekken), bl_plain), true},
  };
  for (const Case& c : cases) {
    CAPTURE(c.name);
    const std::string text = llama3_with([&](json& j) {
      j["pre_tokenizer"] = c.pre;
      j["model"]["ignore_merges"] = c.ignore_merges;
    });
    const auto kv = gguf::bpe_tokenizer_metadata_from_text(text, c.name);
    CHECK(entry(kv, "tokenizer.ggml.pre")->s == c.name);
    check_same(BpeTokenizer::from_json_text(text), *round_trip(kv));
  }
  // Qwen2's NFC normalizer is dropped, as llama.cpp's converter does.
  const std::string nfc = llama3_with([&](json& j) {
    j["pre_tokenizer"] = cases[3].pre;
    j["model"]["ignore_merges"] = false;
    j["normalizer"] = {{"type", "NFC"}};
  });
  CHECK(entry(gguf::bpe_tokenizer_metadata_from_text(nfc, "nfc"), "tokenizer.ggml.pre")->s == "qwen2");
}

TEST_CASE("gguf tokenizer: a pre-tokenizer llama.cpp does not know is an error naming it") {
  int n = 0;
  for (const json& v : reference()["bpe_llama3_variants"]) {
    if (!v.contains("pre_tokenizer")) continue;
    const std::string text = llama3_with([&](json& j) { j["pre_tokenizer"] = v["pre_tokenizer"]; });
    CAPTURE(v["pre_tokenizer"].dump());
    check_error([&] { gguf::bpe_tokenizer_metadata_from_text(text, "variant.json"); },
                {"variant.json", "pre_tokenizer", "not a pre-tokenizer llama.cpp knows", "gpt-2, llama-bpe"});
    ++n;
  }
  CHECK(n == 5);
  // The right regex with the other ignore_merges.
  const std::string qwen_ignoring = llama3_with([&](json& j) {
    j["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = gguf::tok_detail::kRegexQwen2;
  });
  check_error([&] { gguf::bpe_tokenizer_metadata_from_text(qwen_ignoring, "q.json"); },
              {"'qwen2' has these steps but ignore_merges = false"});
  // Prefix spaces on pieces of another step cannot be expressed even when allowed.
  const std::string digits_prefix = llama3_with([&](json& j) {
    j["pre_tokenizer"] = {{"type", "Sequence"},
                          {"pretokenizers", {{{"type", "Digits"}, {"individual_digits", true}},
                                             {{"type", "ByteLevel"}, {"add_prefix_space", true}}}}};
    j["model"]["ignore_merges"] = false;
  });
  check_error([&] { gguf::bpe_tokenizer_metadata_from_text(digits_prefix, "d.json", {.allow_prefix_space = true}); },
              {"Digits(individual_digits=true) + ByteLevel(add_prefix_space=true"});
  // A normalizer neither llama.cpp nor BpeTokenizer applies.
  const std::string lower = llama3_with([&](json& j) { j["normalizer"] = {{"type", "Lowercase"}}; });
  check_error([&] { gguf::bpe_tokenizer_metadata_from_text(lower, "l.json"); }, {"normalizer", "Lowercase"});
}

TEST_CASE("gguf tokenizer: SentencePiece fixture round trip") {
  const std::string path = kTok + "sp_bpe_1024.model";
  const auto kv = gguf::spm_tokenizer_metadata(path);
  CHECK(entry(kv, "tokenizer.ggml.model")->s == "llama");
  CHECK(entry(kv, "tokenizer.ggml.pre")->s == "default");
  const auto& tokens = entry(kv, "tokenizer.ggml.tokens")->items;
  const auto& types = entry(kv, "tokenizer.ggml.token_type")->items;
  const auto& scores = entry(kv, "tokenizer.ggml.scores")->items;
  REQUIRE(tokens.size() == 1024);
  CHECK(tokens[1].s == "<s>");
  CHECK(types[0].i == int(gguf::TokenType::Control));  // <pad>
  CHECK(types[3].i == int(gguf::TokenType::Unknown));
  CHECK(tokens[4].s == "<0x00>");
  CHECK(types[4].i == int(gguf::TokenType::Byte));
  CHECK(types[1023].i == int(gguf::TokenType::Normal));
  CHECK(scores[1023].f == -763.0);
  CHECK(entry(kv, "tokenizer.ggml.bos_token_id")->u == 1);
  CHECK(entry(kv, "tokenizer.ggml.eos_token_id")->u == 2);
  CHECK(entry(kv, "tokenizer.ggml.unknown_token_id")->u == 3);
  CHECK(entry(kv, "tokenizer.ggml.padding_token_id")->u == 0);
  CHECK(entry(kv, "tokenizer.ggml.add_space_prefix")->u == 0);          // add_dummy_prefix false
  CHECK(entry(kv, "tokenizer.ggml.remove_extra_whitespaces")->u == 1);  // the proto default

  const SentencePieceTokenizer orig(path);
  const auto back = round_trip(kv);
  const auto* sp = dynamic_cast<const SentencePieceTokenizer*>(back.get());
  REQUIRE(sp != nullptr);
  check_same(orig, *back);
  CHECK(sp->pad() == orig.pad());
  CHECK(sp->unk() == orig.unk());
  CHECK(back->encode(sample()) ==
        reference()["tokenizers"]["sp_bpe_1024.model"]["sample"]["ids"].get<std::vector<int>>());
  for (int id = 0; id < orig.vocab_size(); ++id) CHECK(sp->piece(id) == orig.piece(id));

  // Padded to the model's vocabulary: placeholders that no text produces.
  const auto padded = round_trip(gguf::tokenizer_metadata(path, {.model_vocab = 1100}));
  CHECK(padded->vocab_size() == 1100);
  CHECK(!padded->can_decode(1050));
  CHECK(padded->encode(sample()) == orig.encode(sample()));

  // Without an UNKNOWN token SentencePiece cannot load it.
  auto no_unk = kv;
  for (auto& [k, v] : no_unk)
    if (k == "tokenizer.ggml.token_type") v.items[3] = GgufValue::i32(int(gguf::TokenType::Control));
  check_error([&] { round_trip(no_unk); }, {"tok.gguf", "UNKNOWN"});
  // A file without a BOS / pad id gives a tokenizer without one.
  gguf::GgufEntries no_bos;
  for (const auto& [k, v] : kv)
    if (k != "tokenizer.ggml.bos_token_id" && k != "tokenizer.ggml.padding_token_id") no_bos.emplace_back(k, v);
  const auto nb = round_trip(no_bos);
  CHECK(nb->bos() == std::nullopt);
  CHECK(nb->eos() == orig.eos());
  CHECK(dynamic_cast<const SentencePieceTokenizer&>(*nb).pad() == std::nullopt);
  CHECK(nb->encode(sample()) == orig.encode(sample()));
  check_error([&] { gguf::spm_tokenizer_metadata(path, {.pre = "llama-bpe"}); }, {"llama-bpe", "default"});
}

TEST_CASE("gguf tokenizer: the byte vocabulary, none, and models this reader does not take") {
  for (int v : {258, 1024}) {
    GgufWriter w;
    gguf::set_byte_vocab(w, v);
    const std::string bytes = w.bytes();
    const GgufReader r = GgufReader::from_memory(bytes.data(), bytes.size(), "bytes.gguf");
    const auto tok = gguf::tokenizer_from_gguf(r);
    REQUIRE(dynamic_cast<const ByteTokenizer*>(tok.get()) != nullptr);
    CHECK(tok->encode(sample()) == ByteTokenizer().encode(sample()));
  }
  std::string bytes;
  CHECK(gguf::tokenizer_from_gguf(to_file({{"tokenizer.ggml.model", GgufValue::str("none")}}, bytes)) == nullptr);
  check_error([&] { gguf::tokenizer_from_gguf(to_file({{"tokenizer.ggml.model", GgufValue::str("bert")}}, bytes)); },
              {"tok.gguf", "tokenizer.ggml.model", "'bert'", "--ids"});
  check_error([&] { gguf::tokenizer_from_gguf(to_file({}, bytes)); }, {"tokenizer.ggml.model", "missing"});

  auto kv = gguf::bpe_tokenizer_metadata(kTok + "bpe_llama3.json");
  for (auto& [k, v] : kv)
    if (k == "tokenizer.ggml.pre") v = GgufValue::str("jais-2");
  check_error([&] { round_trip(kv); }, {"tok.gguf", "tokenizer.ggml.pre", "'jais-2'"});
  for (auto& [k, v] : kv)
    if (k == "tokenizer.ggml.pre") v = GgufValue::str("llama-bpe");
    else if (k == "tokenizer.ggml.bos_token_id") v = GgufValue::u32(5000);
  check_error([&] { round_trip(kv); }, {"tokenizer.ggml.bos_token_id", "5000"});
}

#endif  // HYBRID_HAVE_TOKENIZERS

}  // namespace hybrid_test_gguf_tokenizer
