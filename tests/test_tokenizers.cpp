// tokenizer/: SentencePieceTokenizer and BpeTokenizer against the reference tokenizers.
// The fixtures (tests/fixtures/tokenizers/, made by make_tokenizer_fixtures.py with the
// python sentencepiece and tokenizers packages) hold three models trained on
// tinyshakespeare, a sample text and the ids the reference libraries give for it and for
// short edge-case strings. Each bad input has a test asserting that the error names what
// was wrong.
#ifdef HYBRID_HAVE_TOKENIZERS
#include <doctest/doctest.h>

#include <filesystem>
#include <fstream>
#include <functional>
#include <hybrid/tokenizer/bpe.hpp>
#include <hybrid/tokenizer/sentencepiece.hpp>
#include <iterator>
#include <random>
#include <string>
#include <thread>
#include <vector>

using namespace hybrid;
using nlohmann::json;

#include "test_util.hpp"
using hybrid::test_util::contains;
using hybrid::test_util::error_of;

// This file's own namespace: the tests compile in batches (tests/CMakeLists.txt).
namespace hybrid_test_tokenizers {

namespace {

const std::string kDir = std::string(HYBRID_FIXTURES_DIR) + "/tokenizers/";

std::string slurp(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  REQUIRE_MESSAGE(f.good(), "cannot open fixture ", path);
  return {std::istreambuf_iterator<char>(f), {}};
}

const json& reference() {
  static const json ref = json::parse(slurp(kDir + "reference_ids.json"));
  return ref;
}
const std::string& sample() {
  static const std::string s = slurp(kDir + "sample.txt");
  return s;
}
std::vector<int> ids_of(const json& j) { return j.get<std::vector<int>>(); }


double sum_bytes(const Tokenizer& tok, const std::vector<int>& ids) {
  double n = 0;
  for (int id : ids) n += tok.bytes_per_token(id);
  return n;
}

// Bytes of the special tokens' text among ids (they count 0 in bytes_per_token).
double special_bytes(const BpeTokenizer& tok, const std::vector<int>& ids) {
  double n = 0;
  for (int id : ids)
    if (tok.is_special(id)) n += double(tok.decode(std::vector<int>{id}, false).size());
  return n;
}

const BpeTokenizer& llama3() {
  static const BpeTokenizer tok(kDir + "bpe_llama3.json");
  return tok;
}
const BpeTokenizer& gpt2() {
  static const BpeTokenizer tok(kDir + "bpe_gpt2.json");
  return tok;
}
const SentencePieceTokenizer& sp() {
  static const SentencePieceTokenizer tok(kDir + "sp_bpe_1024.model");
  return tok;
}

// The LLaMA-3 fixture's JSON with `edit` applied, loaded.
BpeTokenizer llama3_edited(const std::function<void(json&)>& edit) {
  json j = json::parse(slurp(kDir + "bpe_llama3.json"));
  edit(j);
  return BpeTokenizer::from_json_text(j.dump());
}
std::string llama3_error(const std::function<void(json&)>& edit) {
  return error_of([&] { (void)llama3_edited(edit); });
}

// Checks one HF tokenizer against its reference block: every case and the sample.
void check_hf_reference(const BpeTokenizer& tok, const json& ref, bool adds_prefix_space) {
  CHECK(tok.vocab_size() == ref["vocab_size"].get<int>());
  const auto check_one = [&](const std::string& text, const json& r) {
    CAPTURE(text);
    const std::vector<int> ids = tok.encode(text);
    CHECK(ids == ids_of(r["ids"]));
    CHECK(tok.decode(ids, false) == r["decoded"].get<std::string>());
    CHECK(tok.decode(ids) == r["decoded_skip_special"].get<std::string>());
    // Without specials, decode is the inverse of encode (up to GPT-2's prefix space), and
    // each token's bytes add up to the text's.
    std::string joined;
    for (int id : ids) joined += tok.decode_token(id);
    CHECK(joined == tok.decode(ids));
    CHECK(sum_bytes(tok, ids) == double(tok.decode(ids).size()));
    if (!adds_prefix_space) {
      CHECK(tok.decode(ids, false) == text);
      CHECK(sum_bytes(tok, ids) + special_bytes(tok, ids) == double(text.size()));
    }
  };
  for (const json& c : ref["cases"]) check_one(c["text"].get<std::string>(), c);
  check_one(sample(), ref["sample"]);
}

}  // namespace

// ------------------------------------------------------------------------------------------
// SentencePiece

TEST_CASE("tokenizer sp: ids and decodings equal the python sentencepiece reference") {
  const json& ref = reference()["tokenizers"]["sp_bpe_1024.model"];
  const SentencePieceTokenizer& tok = sp();
  CHECK(tok.vocab_size() == ref["vocab_size"].get<int>());
  CHECK(tok.bos() == std::optional<int>(ref["bos"].get<int>()));
  CHECK(tok.eos() == std::optional<int>(ref["eos"].get<int>()));
  CHECK(tok.pad() == std::optional<int>(ref["pad"].get<int>()));
  CHECK(tok.unk() == std::optional<int>(ref["unk"].get<int>()));
  int n_cases = 0;
  for (const json& c : ref["cases"]) {
    const std::string text = c["text"].get<std::string>();
    CAPTURE(text);
    const std::vector<int> ids = tok.encode(text);
    CHECK(ids == ids_of(c["ids"]));
    CHECK(tok.decode(ids) == c["decoded"].get<std::string>());
    ++n_cases;
  }
  CHECK(n_cases >= 20);
  const std::vector<int> ids = tok.encode(sample());
  CHECK(ids == ids_of(ref["sample"]["ids"]));
  CHECK(tok.decode(ids) == ref["sample"]["decoded"].get<std::string>());
  for (const json& c : ref["decode_cases"]) {
    const std::vector<int> d = ids_of(c["ids"]);
    CAPTURE(c["ids"].dump());
    CHECK(tok.decode(d) == c["decoded"].get<std::string>());
  }
}

TEST_CASE("tokenizer sp: decode(encode(s)) is the normalized s, and s when nothing normalizes") {
  const json& ref = reference()["tokenizers"]["sp_bpe_1024.model"];
  const SentencePieceTokenizer& tok = sp();
  int exact = 0;
  for (const json& c : ref["cases"]) {
    const std::string text = c["text"].get<std::string>();
    CAPTURE(text);
    // The reference's normalized form spells spaces "▁".
    std::string normalized;
    const std::string n = c["normalized"].get<std::string>();
    for (std::size_t i = 0; i < n.size();) {
      if (n.compare(i, 3, "\xE2\x96\x81") == 0) normalized += ' ', i += 3;
      else normalized += n[i++];
    }
    const std::string back = tok.decode(tok.encode(text));
    CHECK(back == normalized);
    if (normalized == text) {
      CHECK(back == text);
      ++exact;
    }
  }
  CHECK(exact >= 10);
}

TEST_CASE("tokenizer sp: bytes per token follow parameter-golf's rule") {
  const SentencePieceTokenizer& tok = sp();
  // Pieces by kind.
  CHECK(tok.bytes_per_token(0) == 0);  // <pad>, control
  CHECK(tok.bytes_per_token(1) == 0);  // <s>
  CHECK(tok.bytes_per_token(2) == 0);  // </s>
  CHECK(tok.bytes_per_token(3) == 0);  // <unk>
  CHECK(tok.is_byte(4));
  CHECK(tok.piece(4) == "<0x00>");
  CHECK(tok.bytes_per_token(4) == 1);
  CHECK(tok.decode_token(4 + 0x41) == "A");
  int with_space = -1;
  for (int id = 0; id < tok.vocab_size() && with_space < 0; ++id)
    if (tok.piece(id).rfind("\xE2\x96\x81", 0) == 0 && tok.piece(id).size() > 3) with_space = id;
  REQUIRE(with_space >= 0);
  const double base = double(tok.piece(with_space).size() - 3);
  CHECK(tok.bytes_per_token(with_space) == base + 1);
  CHECK(tok.bytes_after(*tok.bos(), with_space) == base);  // after a boundary: no space byte
  CHECK(tok.bytes_after(-1, with_space) == base);
  CHECK(tok.bytes_after(4 + 'a', with_space) == base + 1);
  CHECK(tok.decode_token(with_space) == " " + tok.piece(with_space).substr(3));

  // Sums: exact against the normalized text (what decode gives back), for every case and
  // for the sample, with or without the BOS before the first token.
  const json& ref = reference()["tokenizers"]["sp_bpe_1024.model"];
  std::vector<std::string> texts{sample()};
  for (const json& c : ref["cases"]) texts.push_back(c["text"].get<std::string>());
  for (const std::string& text : texts) {
    CAPTURE(text);
    const std::vector<int> ids = tok.encode(text);
    const double n = double(tok.decode(ids).size());
    CHECK(sum_bytes(tok, ids) == n);
    double exact = 0;
    int prev = *tok.bos();
    for (int id : ids) exact += tok.bytes_after(prev, id), prev = id;
    CHECK(exact == n);
  }
  // The sample has runs of spaces and trailing spaces that the model's normalizer removes,
  // so its bytes are fewer than the raw text's.
  const double sample_bytes = sum_bytes(tok, tok.encode(sample()));
  CHECK(sample_bytes < double(sample().size()));
  CHECK(sample_bytes > 0.95 * double(sample().size()));
}

TEST_CASE("tokenizer sp: specials, can_decode, decode_token, serialized load, threads") {
  const SentencePieceTokenizer& tok = sp();
  CHECK_FALSE(tok.can_decode(0));  // pad
  CHECK_FALSE(tok.can_decode(1));  // bos
  CHECK(tok.can_decode(2));        // eos stays samplable so generation can stop
  CHECK_FALSE(tok.can_decode(3));  // unk
  CHECK(tok.can_decode(4));
  CHECK_FALSE(tok.can_decode(tok.vocab_size()));
  CHECK_FALSE(tok.can_decode(-1));
  CHECK(tok.decode_token(1).empty());
  CHECK(tok.decode_token(3) == " \xE2\x81\x87 ");
  const auto mask = decodable_mask(tok, tok.vocab_size() + 64);
  CHECK(mask[4] == 1);
  CHECK(mask[std::size_t(tok.vocab_size())] == 0);

  // Streaming: the joined decode_token equals decode for text normalization leaves alone
  // and whose first piece has no leading space.
  const std::string text = "To be, or not to be: that is the question.\n\xE6\x9D\xB1";
  const std::vector<int> ids = tok.encode(text);
  std::string joined;
  for (int id : ids) joined += tok.decode_token(id);
  CHECK(joined == text);
  CHECK(tok.decode(ids) == text);
  // Where they differ: decode drops the space of a first "▁" piece and replaces bytes that
  // are not UTF-8.
  const int the = 271, e6 = 4 + 0xE6, x9d = 4 + 0x9D;
  REQUIRE(tok.piece(the) == "\xE2\x96\x81the");
  const std::vector<int> lead{the, the};
  CHECK(tok.decode(lead) == "the the");
  CHECK(tok.decode_token(the) + tok.decode_token(the) == " the the");
  const std::vector<int> partial{e6, x9d};
  CHECK(tok.decode(partial) == "\xEF\xBF\xBD\xEF\xBF\xBD");
  CHECK(tok.decode_token(e6) + tok.decode_token(x9d) == "\xE6\x9D");

  const auto copy = SentencePieceTokenizer::from_serialized(slurp(kDir + "sp_bpe_1024.model"));
  CHECK(copy.encode(sample()) == tok.encode(sample()));

  // Encoding is const and thread-safe.
  const std::vector<int> want = tok.encode(sample());
  std::vector<std::vector<int>> got(4);
  std::vector<std::thread> threads;
  for (std::size_t t = 0; t < got.size(); ++t)
    threads.emplace_back([&, t] { got[t] = tok.encode(sample()); });
  for (auto& th : threads) th.join();
  for (const auto& g : got) CHECK(g == want);

  // Ids outside the vocabulary are errors naming the id and position.
  const std::vector<int> bad{5, tok.vocab_size()};
  CHECK(contains(error_of([&] { (void)tok.decode(bad); }), "at position 1"));
  CHECK(contains(error_of([&] { (void)tok.decode_token(-1); }), "token id -1"));
  CHECK(contains(error_of([&] { (void)tok.bytes_after(-1, 99999); }), "99999"));
  // Text that is not UTF-8 does not crash the library.
  (void)tok.encode(std::string("\xFF\xFE\xC3(\x80 ok", 8));
}

TEST_CASE("tokenizer sp: bad model files give errors naming the file") {
  namespace fs = std::filesystem;
  const std::string missing = kDir + "no_such.model";
  const std::string e1 = error_of([&] { SentencePieceTokenizer t(missing); });
  CHECK(contains(e1, "no_such.model"));
  CHECK(contains(e1, "expected a SentencePiece .model file"));
  CHECK(contains(error_of([&] { SentencePieceTokenizer t(kDir); }), "is not a file"));

  const fs::path tmp = fs::temp_directory_path() / "hybrid_test_tokenizers_corrupt.model";
  const auto write = [&](const std::string& bytes) {
    std::ofstream(tmp, std::ios::binary) << bytes;
  };
  write("");
  CHECK(contains(error_of([&] { SentencePieceTokenizer t(tmp.string()); }), "is empty"));
  write("this is not a protobuf at all \xFF\xFF\xFF\xFF");
  const std::string e2 = error_of([&] { SentencePieceTokenizer t(tmp.string()); });
  CHECK(contains(e2, tmp.string()));
  CHECK(contains(e2, "not a valid SentencePiece model"));
  // Truncations and bit flips of a real model: an error or a working tokenizer, no crash.
  const std::string good = slurp(kDir + "sp_bpe_1024.model");
  std::mt19937 rng(7);
  int errors = 0;
  for (int i = 0; i < 60; ++i) {
    std::string bytes = good;
    if (i % 2 == 0) {
      bytes.resize(std::uniform_int_distribution<std::size_t>(1, good.size() - 1)(rng));
    } else {
      for (int k = 0; k < 4; ++k)
        bytes[std::uniform_int_distribution<std::size_t>(0, bytes.size() - 1)(rng)] ^=
            char(1 << std::uniform_int_distribution<int>(0, 7)(rng));
    }
    try {
      const auto t = SentencePieceTokenizer::from_serialized(bytes, "mutated");
      (void)t.decode(t.encode("hello world 123"));
    } catch (const Error& e) {
      CHECK(contains(e.what(), "mutated"));
      ++errors;
    }
  }
  CHECK(errors > 0);
  fs::remove(tmp);
}

// ------------------------------------------------------------------------------------------
// Byte-level BPE

TEST_CASE("tokenizer bpe: LLaMA-3 style tokenizer.json gives the HF tokenizers ids") {
  check_hf_reference(llama3(), reference()["tokenizers"]["bpe_llama3.json"], false);
  // Its whole sample round-trips; its bytes sum to the sample's UTF-8 length less the
  // special tokens' text (<|im_start|>, <|im_end|>: 0 bytes each).
  const BpeTokenizer& tok = llama3();
  const std::vector<int> ids = tok.encode(sample());
  CHECK(tok.decode(ids, false) == sample());
  const double specials = special_bytes(tok, ids);
  CHECK(specials == 2 * 12 + 2 * 10);
  CHECK(sum_bytes(tok, ids) + specials == double(sample().size()));
  CHECK(double(sample().size()) == reference()["sample_utf8_bytes"].get<double>());
}

TEST_CASE("tokenizer bpe: GPT-2 style tokenizer.json (ByteLevel regex, prefix space, \"a b\" merges)") {
  check_hf_reference(gpt2(), reference()["tokenizers"]["bpe_gpt2.json"], true);
  // add_prefix_space puts a space before each segment that lacks one.
  const std::vector<int> ids = gpt2().encode("x<|endoftext|>y");
  CHECK(gpt2().decode(ids, false) == " x<|endoftext|> y");
  CHECK(gpt2().bos() == std::nullopt);
  CHECK(gpt2().eos() == gpt2().token_to_id("<|endoftext|>"));
}

TEST_CASE("tokenizer bpe: every Split behavior, Digits, invert, String patterns, ignore_merges") {
  int n = 0;
  for (const json& v : reference()["bpe_llama3_variants"]) {
    CAPTURE(v.contains("pre_tokenizer") ? v["pre_tokenizer"].dump() : v.dump().substr(0, 40));
    const BpeTokenizer tok = llama3_edited([&](json& j) {
      if (v.contains("pre_tokenizer")) j["pre_tokenizer"] = v["pre_tokenizer"];
      if (v.contains("ignore_merges")) j["model"]["ignore_merges"] = v["ignore_merges"];
    });
    const json& cases = reference()["tokenizers"]["bpe_llama3.json"]["cases"];
    REQUIRE(cases.size() == v["case_ids"].size());
    for (std::size_t i = 0; i < cases.size(); ++i) {
      CAPTURE(cases[i]["text"].get<std::string>());
      CHECK(tok.encode(cases[i]["text"].get<std::string>()) == ids_of(v["case_ids"][i]));
    }
    CHECK(tok.encode(sample()) == ids_of(v["sample_ids"]));
    ++n;
  }
  CHECK(n == 6);
}

TEST_CASE("tokenizer bpe: merges as \"a b\" strings load like [a, b] arrays") {
  const BpeTokenizer tok = llama3_edited([](json& j) {
    for (json& m : j["model"]["merges"]) m = m[0].get<std::string>() + " " + m[1].get<std::string>();
  });
  CHECK(tok.encode(sample()) == llama3().encode(sample()));
}

TEST_CASE("tokenizer bpe: specials, bos/eos, can_decode, bytes, token lookup") {
  const BpeTokenizer& tok = llama3();
  const int pad = *tok.token_to_id("<|pad|>"), sot = *tok.token_to_id("<|startoftext|>");
  const int eot = *tok.token_to_id("<|endoftext|>"), think = *tok.token_to_id("<think>");
  CHECK(tok.bos() == sot);  // from the TemplateProcessing post_processor
  CHECK(tok.eos() == eot);
  CHECK(tok.is_special(pad));
  CHECK_FALSE(tok.is_special(think));
  CHECK_FALSE(tok.can_decode(pad));
  CHECK_FALSE(tok.can_decode(sot));
  CHECK(tok.can_decode(eot));  // the EOS stays samplable
  CHECK(tok.can_decode(think));
  CHECK(tok.bytes_per_token(sot) == 0);
  CHECK(tok.bytes_per_token(think) == 7);
  CHECK(tok.decode_token(sot).empty());
  CHECK(tok.decode_token(think) == "<think>");
  CHECK(tok.token_to_id("\xC4\xA0t") == tok.encode(" t").front());  // "Ġt"
  const std::vector<int> ids{sot, think, eot};
  CHECK(tok.decode(ids) == "<think>");
  CHECK(tok.decode(ids, false) == "<|startoftext|><think><|endoftext|>");
  BpeTokenizer copy = tok;
  copy.set_bos(std::nullopt);
  copy.set_eos(pad);
  CHECK(copy.bos() == std::nullopt);
  CHECK(copy.can_decode(pad));
  CHECK_FALSE(copy.can_decode(eot));
  CHECK(contains(error_of([&] { copy.set_eos(100000); }), "100000"));
  const std::vector<int> bad{1, -3};
  CHECK(contains(error_of([&] { (void)tok.decode(bad); }), "at position 1"));
  CHECK(contains(error_of([&] { (void)tok.bytes_per_token(tok.vocab_size()); }), "outside"));
}

TEST_CASE("tokenizer bpe: any byte string round-trips and its bytes add up") {
  // Byte strings that are not UTF-8 too: HF cannot take them, this reader encodes them.
  std::mt19937 rng(11);
  const BpeTokenizer& tok = llama3();
  const std::string alphabet = "ab \n\t'0123456789<|>\xC3\xA9\xE6\x9D\xB1\xF0\x9F\x99\x82";
  for (int i = 0; i < 200; ++i) {
    std::string s(std::uniform_int_distribution<std::size_t>(0, 40)(rng), '\0');
    for (char& c : s)
      c = i % 2 ? char(std::uniform_int_distribution<int>(0, 255)(rng))
                : alphabet[std::uniform_int_distribution<std::size_t>(0, alphabet.size() - 1)(rng)];
    CAPTURE(json(s).dump(-1, ' ', true, json::error_handler_t::replace));
    const std::vector<int> ids = tok.encode(s);
    CHECK(tok.decode(ids, false) == s);
    bool has_special = false;
    for (int id : ids) has_special |= tok.is_special(id);
    if (!has_special) CHECK(sum_bytes(tok, ids) == double(s.size()));
  }
  // A long run that the regex matches whole (merging cost and no stack trouble).
  const std::string long_word(200000, 'a'), long_space(100000, ' ');
  CHECK(tok.decode(tok.encode(long_word)) == long_word);
  CHECK(tok.decode(tok.encode(long_space + "x")) == long_space + "x");
}

TEST_CASE("tokenizer bpe: bad files and fields give errors naming the field") {
  CHECK(contains(error_of([] { BpeTokenizer t(kDir + "missing.json"); }), "missing.json"));
  CHECK(contains(error_of([] { (void)BpeTokenizer::from_json_text("{\"model\": "); }), "not valid JSON"));
  CHECK(contains(error_of([] { (void)BpeTokenizer::from_json_text("[1, 2]"); }), "expected a JSON object"));
  CHECK(contains(error_of([] { (void)BpeTokenizer::from_json_text(std::string(100000, '[')); }),
                 "nested deeper"));
  CHECK(contains(error_of([] { (void)BpeTokenizer::from_json_text("{}"); }), "model: missing"));

  struct Bad {
    const char* what;
    std::function<void(json&)> edit;
    std::vector<std::string> expect;  // substrings of the message
  };
  const std::vector<Bad> bad = {
      {"model type", [](json& j) { j["model"]["type"] = "WordPiece"; }, {"model.type", "\"WordPiece\"", "BPE"}},
      {"vocab not an object", [](json& j) { j["model"]["vocab"] = json::array(); }, {"model.vocab", "expected an object"}},
      {"vocab id negative", [](json& j) { j["model"]["vocab"]["zz"] = -4; }, {"model.vocab[\"zz\"]", "-4"}},
      {"vocab id float", [](json& j) { j["model"]["vocab"]["zz"] = 1.5; }, {"model.vocab[\"zz\"]", "integer"}},
      {"vocab id huge", [](json& j) { j["model"]["vocab"]["zz"] = 1u << 30; }, {"model.vocab[\"zz\"]", "outside"}},
      {"vocab sparse", [](json& j) { j["model"]["vocab"]["zz"] = 5000000; }, {"model.vocab", "unused ids"}},
      {"vocab duplicate id", [](json& j) { j["model"]["vocab"]["zz"] = 7; }, {"model.vocab", "id 7", "\"zz\""}},
      {"merge unknown token", [](json& j) { j["model"]["merges"][3] = {"Ġt", "nosuchtoken"}; },
       {"model.merges[3]", "nosuchtoken", "not in model.vocab"}},
      {"merge result unknown", [](json& j) { j["model"]["merges"][2] = {"h", "Ġ"}; }, {"model.merges[2]", "\"hĠ\""}},
      {"merge bad string", [](json& j) { j["model"]["merges"][0] = "a b c"; }, {"model.merges[0]", "\"a b c\""}},
      {"merge bad array", [](json& j) { j["model"]["merges"][1] = {"a"}; }, {"model.merges[1]", "not a merge"}},
      {"merges not array", [](json& j) { j["model"]["merges"] = 3; }, {"model.merges", "expected an array"}},
      {"unk token absent", [](json& j) { j["model"]["unk_token"] = "<unk>"; }, {"model.unk_token", "<unk>"}},
      {"dropout", [](json& j) { j["model"]["dropout"] = 0.1; }, {"model.dropout", "0.1"}},
      {"subword prefix", [](json& j) { j["model"]["continuing_subword_prefix"] = "##"; },
       {"model.continuing_subword_prefix", "##"}},
      {"ignore_merges type", [](json& j) { j["model"]["ignore_merges"] = "yes"; }, {"model.ignore_merges", "true or false"}},
      {"bad regex", [](json& j) { j["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = "(\\p{L}+"; },
       {"pre_tokenizer.pretokenizers[0].pattern.Regex", "does not compile", "PCRE2"}},
      {"bad behavior", [](json& j) { j["pre_tokenizer"]["pretokenizers"][0]["behavior"] = "Sideways"; },
       {"pre_tokenizer.pretokenizers[0].behavior", "Sideways"}},
      {"bad pattern", [](json& j) { j["pre_tokenizer"]["pretokenizers"][0]["pattern"] = {{"Glob", "*"}}; },
       {"pre_tokenizer.pretokenizers[0].pattern", "Regex"}},
      {"empty string pattern", [](json& j) { j["pre_tokenizer"]["pretokenizers"][0]["pattern"] = {{"String", ""}}; },
       {"pattern.String", "non-empty"}},
      {"unsupported step", [](json& j) { j["pre_tokenizer"]["pretokenizers"][0] = {{"type", "Metaspace"}}; },
       {"pre_tokenizer.pretokenizers[0].type", "Metaspace"}},
      {"no ByteLevel", [](json& j) { j["pre_tokenizer"]["pretokenizers"].erase(1); }, {"pre_tokenizer", "ByteLevel"}},
      {"step after ByteLevel", [](json& j) { j["pre_tokenizer"]["pretokenizers"].push_back({{"type", "Digits"}}); },
       {"pre_tokenizer.pretokenizers[2]", "after ByteLevel"}},
      {"pre_tokenizer missing", [](json& j) { j.erase("pre_tokenizer"); }, {"pre_tokenizer: missing"}},
      {"normalizer", [](json& j) { j["normalizer"] = {{"type", "NFC"}}; }, {"normalizer", "NFC", "expected null"}},
      {"decoder", [](json& j) { j["decoder"] = {{"type", "Metaspace"}}; }, {"decoder.type", "Metaspace"}},
      {"decoder missing", [](json& j) { j["decoder"] = nullptr; }, {"decoder: missing"}},
      {"added token lstrip", [](json& j) { j["added_tokens"][1]["lstrip"] = true; }, {"added_tokens[1].lstrip"}},
      {"added token content", [](json& j) { j["added_tokens"][2]["content"] = 5; }, {"added_tokens[2].content", "string"}},
      {"added token empty", [](json& j) { j["added_tokens"][2]["content"] = ""; }, {"added_tokens[2].content", "non-empty"}},
      {"added token id clash", [](json& j) { j["added_tokens"][3]["id"] = 1; }, {"added_tokens[3].id", "already"}},
      {"added tokens not array", [](json& j) { j["added_tokens"] = {{"a", 1}}; }, {"added_tokens", "array"}},
      {"template token", [](json& j) {
         j["post_processor"]["single"][0]["SpecialToken"]["id"] = "<nope>";
         j["post_processor"].erase("special_tokens");
       }, {"post_processor", "<nope>"}},
  };
  for (const Bad& b : bad) {
    CAPTURE(b.what);
    const std::string msg = llama3_error(b.edit);
    CAPTURE(msg);
    CHECK_FALSE(msg.empty());
    for (const std::string& part : b.expect) CHECK(contains(msg, part));
  }
}

TEST_CASE("tokenizer bpe: mutated tokenizer.json never crashes the parser") {
  // A small fuzz pass: byte flips, deletions and truncations of the fixture either load
  // (and then encode and decode) or throw hybrid::Error; nothing else.
  const std::string good = slurp(kDir + "bpe_gpt2.json");
  std::mt19937 rng(3);
  int loaded = 0, errors = 0;
  for (int i = 0; i < 300; ++i) {
    std::string s = good;
    const int kind = i % 3;
    auto pos = [&] { return std::uniform_int_distribution<std::size_t>(0, s.size() - 1)(rng); };
    if (kind == 0) {
      for (int k = 0; k < 3; ++k) s[pos()] = "{}[]\",:0 -9aZ\\"[std::uniform_int_distribution<int>(0, 14)(rng)];
    } else if (kind == 1) {
      const std::size_t p = pos();
      s.erase(p, std::min<std::size_t>(s.size() - p, std::uniform_int_distribution<std::size_t>(1, 30)(rng)));
    } else {
      s.resize(pos());
    }
    try {
      const BpeTokenizer t = BpeTokenizer::from_json_text(s, "mutated");
      (void)t.decode(t.encode(sample()), false);
      ++loaded;
    } catch (const Error& e) {
      CHECK(contains(e.what(), "mutated"));
      ++errors;
    }
  }
  CHECK(errors > 0);
  CHECK(loaded + errors == 300);
}

TEST_CASE("tokenizer bpe: encoding is thread-safe (shared word cache)") {
  const BpeTokenizer& tok = llama3();
  const std::vector<int> want = tok.encode(sample());
  std::vector<std::vector<int>> got(4);
  std::vector<std::thread> threads;
  for (std::size_t t = 0; t < got.size(); ++t)
    threads.emplace_back([&, t] {
      for (int r = 0; r < 5; ++r) got[t] = tok.encode(sample());
    });
  for (auto& th : threads) th.join();
  for (const auto& g : got) CHECK(g == want);
}

#endif  // HYBRID_HAVE_TOKENIZERS

}  // namespace hybrid_test_tokenizers
