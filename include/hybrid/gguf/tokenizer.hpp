// Real tokenizers in GGUF files: the tokenizer.ggml.* keys llama.cpp reads for a Hugging Face
// byte-level BPE tokenizer.json (its model "gpt2") or a SentencePiece .model ("llama"), and
// the hybrid::Tokenizer rebuilt from a file's keys. gguf/vocab.hpp holds our byte vocabulary.
// Needs hybrid::tokenizers (libsentencepiece, PCRE2; HYBRID_HAVE_TOKENIZERS).
//
//   auto kv = gguf::tokenizer_metadata("tokenizer.json", {.model_vocab = 65536});  // or .model
//   for (auto& [k, v] : kv) writer.set(k, v);              // or gguf::ExportOptions::extra
//   std::unique_ptr<Tokenizer> tok = gguf::tokenizer_from_gguf(reader);  // nullptr for "none"
//
// Export writes what llama.cpp's converter (conversion/base.py) writes:
//  - BPE: tokens by id (vocabulary in its byte-level spelling, added tokens as their text,
//    ids without a token "[PAD<id>]" up to model_vocab), token_type (NORMAL; added tokens
//    CONTROL when special or looking special ("<|...|>"), else USER_DEFINED; pads UNUSED),
//    merges "a b", the bos/eos/unk/pad ids the tokenizer knows and add_bos/add_eos as its
//    post_processor puts them. tokenizer.ggml.pre is the llama.cpp name of the pre_tokenizer,
//    found in the table below by what decides the pieces (step types, regex, split behavior,
//    ByteLevel flags) and model.ignore_merges, which llama.cpp ties to the name. Anything
//    else is an error naming the pre_tokenizer: llama.cpp would silently use another regex.
//    ByteLevel add_prefix_space (the default of HF's ByteLevel()) has no llama.cpp
//    counterpart — llama.cpp's BPE never adds the space, so the first word of a text gets
//    another id — and is refused unless allow_prefix_space; then add_space_prefix = true is
//    written, which this reader honours and llama.cpp ignores for BPE.
//  - SentencePiece: pieces, scores and types (NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED,
//    BYTE) as in the ModelProto, its bos/eos/unk/pad ids, add_space_prefix =
//    normalizer_spec.add_dummy_prefix and remove_extra_whitespaces (llama.cpp's SPM tokenizer
//    does not collapse whitespace, so ids differ from SentencePiece's on runs of spaces when
//    that flag is on). Only BPE models with the identity normalizer are taken: llama.cpp has
//    neither the unigram algorithm under "llama" nor SentencePiece's normalization rules.
//
// Import reads the keys back: the byte vocabulary → ByteTokenizer; "gpt2" → a BpeTokenizer
// built from a synthesised tokenizer.json (vocabulary and merges; the pre_tokenizer of the
// tokenizer.ggml.pre name; CONTROL ids as special added tokens, USER_DEFINED ones as plain
// added tokens; UNUSED ids left out, so they have no text); "llama" → a SentencePieceTokenizer
// over a ModelProto serialised here (BPE, identity normalizer, add_dummy_prefix from
// add_space_prefix — llama.cpp's default true —, remove_extra_whitespaces — default false).
// The installed libsentencepiece ships no protobuf headers, so the few ModelProto fields
// needed are written and read in the protobuf wire format directly. bos()/eos() are the
// file's ids (none when a key is absent). "none" → nullptr; other models are an error naming
// tokenizer.ggml.model.
//
// Encoding through the imported tokenizer gives the original tokenizer's ids (the tests
// check the fixtures); llama.cpp gives the same ids but where its regex engine or its
// special-token matching (longest token first over the whole text, where HF takes the
// leftmost match) differ, and where noted above.
#pragma once
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "../core/file.hpp"
#include "../core/json.hpp"
#include "../infer/tokenizer.hpp"
#include "../io/gguf.hpp"
#include "../tokenizer/bpe.hpp"
#include "../tokenizer/sentencepiece.hpp"
#include "pre_tokenizers.hpp"
#include "sp_model_proto.hpp"
#include "vocab.hpp"

namespace hybrid::gguf {

using GgufEntries = std::vector<std::pair<std::string, GgufValue>>;

struct TokenizerExportOptions {
  // Ids the model has (its embedding rows); 0: the tokenizer's own count. Ids past the
  // tokenizer's become "[PAD<id>]" placeholders; fewer than the tokenizer's is an error.
  int model_vocab = 0;
  // BPE: the tokenizer.ggml.pre name to write instead of the table's first name for the
  // detected pre-tokenizer ("lfm2" for LFM2's, which is LLaMA-3's); it must be a name of the
  // same entry. SentencePiece: empty or "default".
  std::string pre{};
  // Special ids replacing the tokenizer's own (e.g. from config.json / tokenizer_config.json).
  std::optional<int> bos{}, eos{}, unk{}, pad{};
  std::optional<bool> add_bos{}, add_eos{};
  // BPE: accept ByteLevel add_prefix_space = true (see the header comment).
  bool allow_prefix_space = false;
};


namespace tok_detail {

// llama.cpp's converter marks these added tokens CONTROL even when not special.
inline bool looks_special(std::string_view t) {
  const auto wraps = [&](std::string_view a, std::string_view b) {
    return t.size() >= a.size() + b.size() && t.substr(0, a.size()) == a && t.substr(t.size() - b.size()) == b;
  };
  return t == "<pad>" || t == "<mask>" || t == "<2mass>" || t == "[@BOS@]" || wraps("<|", "|>") ||
         wraps("<\xEF\xBD\x9C", "\xEF\xBD\x9C>") || wraps("<unused", ">");
}

inline void put_id(GgufEntries& kv, const char* key, std::optional<int> id, int n, const std::string& where) {
  if (!id) return;
  HYBRID_CHECK(*id >= 0 && *id < n, where, ": ", key, " ", *id, " is outside the vocabulary [0, ", n, ")");
  kv.emplace_back(key, GgufValue::u32(std::uint32_t(*id)));
}

inline std::string pad_token(int id) { return "[PAD" + std::to_string(id) + "]"; }

}  // namespace tok_detail

// ----- export -----------------------------------------------------------------------------

// tokenizer.ggml.* entries for the text of a byte-level BPE tokenizer.json; `origin` names it
// in errors.
inline GgufEntries bpe_tokenizer_metadata_from_text(std::string_view text, std::string_view origin,
                                                    const TokenizerExportOptions& opt = {}) {
  using tok_detail::json;
  const std::string where = "GGUF tokenizer export: " + std::string(origin);
  const JsonFields f(where);
  json root = parse_json(text, where, "a Hugging Face tokenizer.json");

  // Qwen2's NFC normalizer: llama.cpp's converter drops it and llama.cpp does not apply it.
  // Any other normalizer is refused by BpeTokenizer below.
  if (const json* n = f.find(root, "normalizer", ""); n && n->is_object() && n->value("type", "") == "NFC")
    root["normalizer"] = nullptr;
  // Validates the whole file (model, added tokens, pre_tokenizer, decoder) and finds bos/eos.
  const BpeTokenizer tok = BpeTokenizer::from_json_text(root.dump(), origin);

  const json& model = f.require(root, "model", "");
  const bool ignore_merges = [&] {
    const json* v = f.find(model, "ignore_merges", "model");
    return v && f.boolean(*v, "model.ignore_merges");
  }();

  // The pre-tokenizer's llama.cpp name.
  std::vector<json> steps;
  if (const json* p = f.find(root, "pre_tokenizer", "")) tok_detail::canonical_steps(f, *p, "pre_tokenizer", steps);
  bool prefix_space = false;
  if (steps.size() == 1 && steps[0] == tok_detail::byte_level(true, true)) {
    if (!opt.allow_prefix_space)
      f.fail("pre_tokenizer", "ByteLevel with add_prefix_space = true: llama.cpp's BPE tokenizer never adds "
             "that space, so it would give the first word of every text another id than this tokenizer "
             "does. Set add_prefix_space to false in the tokenizer, or allow it (allow_prefix_space) and "
             "accept the difference: the file then says add_space_prefix = true, which hybrid reads back "
             "and llama.cpp ignores for BPE");
    prefix_space = true;
    steps[0] = tok_detail::byte_level(false, true);
  }
  const tok_detail::PreTokenizer* pre = nullptr;
  for (const auto& p : tok_detail::pre_tokenizers())
    if (p.steps == steps && p.ignore_merges == ignore_merges) pre = &p;
  if (!pre) {
    std::string hint;
    for (const auto& p : tok_detail::pre_tokenizers())
      if (p.steps == steps)
        hint = hybrid::detail::concat_str(" (llama.cpp's '", p.names[0], "' has these steps but ignore_merges = ",
                                  tok_detail::tf(p.ignore_merges), ", and model.ignore_merges is ",
                                  tok_detail::tf(ignore_merges), ")");
    f.fail("pre_tokenizer", tok_detail::describe(steps), hint,
           " is not a pre-tokenizer llama.cpp knows by a tokenizer.ggml.pre name (known: ",
           tok_detail::known_pre_names(), "); llama.cpp would split the text differently");
  }
  std::string pre_name = pre->names[0];
  if (!opt.pre.empty()) {
    const auto* asked = tok_detail::pre_tokenizer_named(opt.pre);
    HYBRID_CHECK(asked == pre, where, ": tokenizer.ggml.pre '", opt.pre, "' was asked for, but ",
                 asked ? "it splits text differently from" : "it is not a name in the table of", " this "
                 "tokenizer's pre-tokenizer, llama.cpp's '", pre_name, "' (same-behaving names: ",
                 [&] {
                   std::string s;
                   for (const auto& n : pre->names) s += (s.empty() ? "" : ", ") + n;
                   return s;
                 }(), ")");
    pre_name = opt.pre;
  }

  // Tokens by id.
  const int n_tok = tok.vocab_size();
  const int n = opt.model_vocab > 0 ? opt.model_vocab : n_tok;
  HYBRID_CHECK(n >= n_tok, where, ": the model has ", n, " ids but the tokenizer uses ids up to ", n_tok - 1,
               " (expected model_vocab >= ", n_tok, ")");
  std::vector<std::string> tokens(static_cast<std::size_t>(n));
  std::vector<GgufValue> types(static_cast<std::size_t>(n), GgufValue::i32(std::int32_t(TokenType::Unused)));
  for (int id = 0; id < n; ++id) tokens[std::size_t(id)] = tok_detail::pad_token(id);
  const json& vocab = f.require(model, "vocab", "model");
  for (auto it = vocab.begin(); it != vocab.end(); ++it) {
    const auto id = std::size_t(it.value().get<std::int64_t>());
    tokens[id] = it.key();
    types[id] = GgufValue::i32(std::int32_t(TokenType::Normal));
  }
  if (const json* added = f.find(root, "added_tokens", ""))
    for (const json& a : *added) {
      const auto id = std::size_t(a["id"].get<std::int64_t>());
      tokens[id] = a["content"].get<std::string>();
      const bool special = a.value("special", false) || tok_detail::looks_special(tokens[id]);
      types[id] = GgufValue::i32(std::int32_t(special ? TokenType::Control : TokenType::UserDefined));
    }

  std::vector<std::string> merges;
  if (const json* jm = f.find(model, "merges", "model")) {
    merges.reserve(jm->size());
    for (std::size_t i = 0; i < jm->size(); ++i) {
      const json& m = (*jm)[i];
      std::string a, b;
      if (m.is_string()) {
        const std::string s = m.get<std::string>();
        const std::size_t sp = s.find(' ');
        a = s.substr(0, sp);
        b = s.substr(sp + 1);
      } else {
        a = m[0].get<std::string>();
        b = m[1].get<std::string>();
      }
      if (a.find(' ') != std::string::npos || b.find(' ') != std::string::npos)
        f.fail(JsonFields::at("model.merges", i), json_brief(m), " holds a space, which "
               "GGUF's \"left right\" merges cannot carry (byte-level tokens spell it U+0120)");
      merges.push_back(a + " " + b);
    }
  }

  // Special ids: the options', else the tokenizer's.
  std::optional<int> unk = opt.unk, pad = opt.pad;
  if (!unk)
    if (const json* u = f.find(model, "unk_token", "model")) unk = tok.token_to_id(u->get<std::string>());
  if (!pad)
    if (const json* p = f.find(root, "padding", ""); p && p->is_object())
      if (const json* id = f.find(*p, "pad_id", "padding"))
        pad = int(f.integer(*id, "padding.pad_id", 0, n - 1, "a token id of the vocabulary"));
  if (!pad)
    for (const char* name : {"<|pad|>", "<pad>", "[PAD]", "<|padding|>"})
      if (auto id = tok.token_to_id(name); id && tok.is_special(*id)) {
        pad = id;
        break;
      }
  // add_bos / add_eos: a special token before / after $A in the post_processor's template.
  bool add_bos = false, add_eos = false;
  if (const json* pp = f.find(root, "post_processor", ""); pp && pp->is_object()) {
    std::vector<const json*> procs{pp};
    for (std::size_t k = 0; k < procs.size() && k < 16; ++k) {
      const json& p = *procs[k];
      const std::string type = p.value("type", "");
      if (type == "Sequence" && p.contains("processors") && p["processors"].is_array())
        for (const json& q : p["processors"]) procs.push_back(&q);
      if (type == "RobertaProcessing" || type == "BertProcessing") add_bos = add_eos = true;
      if (type == "TemplateProcessing" && p.contains("single") && p["single"].is_array()) {
        bool seen_a = false;
        for (const json& piece : p["single"]) {
          if (!piece.is_object()) continue;
          if (piece.contains("Sequence")) seen_a = true;
          else if (piece.contains("SpecialToken")) (seen_a ? add_eos : add_bos) = true;
        }
      }
    }
  }

  GgufEntries kv;
  kv.emplace_back("tokenizer.ggml.model", GgufValue::str("gpt2"));
  kv.emplace_back("tokenizer.ggml.pre", GgufValue::str(pre_name));
  kv.emplace_back("tokenizer.ggml.tokens", GgufValue::strings(tokens));
  kv.emplace_back("tokenizer.ggml.token_type", GgufValue::array(GgufType::I32, std::move(types)));
  kv.emplace_back("tokenizer.ggml.merges", GgufValue::strings(merges));
  tok_detail::put_id(kv, "tokenizer.ggml.bos_token_id", opt.bos ? opt.bos : tok.bos(), n, where);
  tok_detail::put_id(kv, "tokenizer.ggml.eos_token_id", opt.eos ? opt.eos : tok.eos(), n, where);
  tok_detail::put_id(kv, "tokenizer.ggml.unknown_token_id", unk, n, where);
  tok_detail::put_id(kv, "tokenizer.ggml.padding_token_id", pad, n, where);
  kv.emplace_back("tokenizer.ggml.add_bos_token", GgufValue::boolean(opt.add_bos.value_or(add_bos)));
  kv.emplace_back("tokenizer.ggml.add_eos_token", GgufValue::boolean(opt.add_eos.value_or(add_eos)));
  if (prefix_space) kv.emplace_back("tokenizer.ggml.add_space_prefix", GgufValue::boolean(true));
  return kv;
}

inline GgufEntries bpe_tokenizer_metadata(const std::string& path, const TokenizerExportOptions& opt = {}) {
  return bpe_tokenizer_metadata_from_text(
      read_file(path, "GGUF tokenizer export", "a Hugging Face tokenizer.json file"), "'" + path + "'", opt);
}

// tokenizer.ggml.* entries for the bytes of a SentencePiece .model.
inline GgufEntries spm_tokenizer_metadata_from_serialized(std::string_view bytes, std::string_view origin,
                                                          const TokenizerExportOptions& opt = {}) {
  const std::string where = "GGUF tokenizer export: " + std::string(origin);
  const auto sp = SentencePieceTokenizer::from_serialized(bytes, origin);  // validates the model
  const tok_detail::SpModel m = tok_detail::read_spm(bytes, where);
  HYBRID_CHECK(int(m.pieces.size()) == sp.vocab_size(), where, ": read ", m.pieces.size(),
               " pieces but libsentencepiece has ", sp.vocab_size());
  HYBRID_CHECK(m.model_type == 2, where, ": trainer_spec.model_type is ", tok_detail::sp_model_type_name(m.model_type),
               " (", m.model_type, "); llama.cpp's \"llama\" tokenizer merges pieces by score as SentencePiece's "
               "BPE does (expected BPE)");
  HYBRID_CHECK((m.normalizer == "identity" || m.normalizer == "(unset)") && m.charsmap_bytes == 0, where,
               ": normalizer_spec.name is '", m.normalizer, "' with a ", m.charsmap_bytes,
               "-byte rule table; llama.cpp applies no normalization rules (expected 'identity')");
  HYBRID_CHECK(m.denormalizer_charsmap_bytes == 0, where, ": the model has denormalizer rules (",
               m.denormalizer_charsmap_bytes, " bytes), which llama.cpp does not apply (expected none)");
  HYBRID_CHECK(!m.treat_whitespace_as_suffix, where, ": trainer_spec.treat_whitespace_as_suffix is true, "
               "which llama.cpp's \"llama\" tokenizer does not do (expected false)");
  HYBRID_CHECK(m.escape_whitespaces, where, ": normalizer_spec.escape_whitespaces is false; llama.cpp always "
               "spells spaces as U+2581 (expected true)");
  HYBRID_CHECK(opt.pre.empty() || opt.pre == "default", where, ": tokenizer.ggml.pre '", opt.pre,
               "' was asked for; SentencePiece vocabularies have only \"default\"");

  const int n_tok = sp.vocab_size();
  const int n = opt.model_vocab > 0 ? opt.model_vocab : n_tok;
  HYBRID_CHECK(n >= n_tok, where, ": the model has ", n, " ids but the tokenizer has ", n_tok,
               " pieces (expected model_vocab >= ", n_tok, ")");
  std::vector<std::string> tokens;
  std::vector<GgufValue> scores, types;
  for (int id = 0; id < n; ++id) {
    if (id < n_tok) {
      const auto& p = m.pieces[std::size_t(id)];
      HYBRID_CHECK(p.type >= 1 && p.type <= 6, where, ": piece ", id, " '", p.piece, "' has type ", p.type,
                   " (expected 1 to 6)");
      tokens.push_back(p.piece);
      scores.push_back(GgufValue::f32(p.score));
      types.push_back(GgufValue::i32(p.type));  // SentencePiece's types are llama.cpp's
    } else {
      tokens.push_back(tok_detail::pad_token(id));
      scores.push_back(GgufValue::f32(-1000.f));
      types.push_back(GgufValue::i32(std::int32_t(TokenType::Unused)));
    }
  }

  GgufEntries kv;
  kv.emplace_back("tokenizer.ggml.model", GgufValue::str("llama"));
  kv.emplace_back("tokenizer.ggml.pre", GgufValue::str("default"));
  kv.emplace_back("tokenizer.ggml.tokens", GgufValue::strings(tokens));
  kv.emplace_back("tokenizer.ggml.scores", GgufValue::array(GgufType::F32, std::move(scores)));
  kv.emplace_back("tokenizer.ggml.token_type", GgufValue::array(GgufType::I32, std::move(types)));
  const std::optional<int> bos = opt.bos ? opt.bos : sp.bos();
  tok_detail::put_id(kv, "tokenizer.ggml.bos_token_id", bos, n, where);
  tok_detail::put_id(kv, "tokenizer.ggml.eos_token_id", opt.eos ? opt.eos : sp.eos(), n, where);
  tok_detail::put_id(kv, "tokenizer.ggml.unknown_token_id", opt.unk ? opt.unk : sp.unk(), n, where);
  tok_detail::put_id(kv, "tokenizer.ggml.padding_token_id", opt.pad ? opt.pad : sp.pad(), n, where);
  // LLaMA's convention (and llama.cpp's default for SentencePiece): a BOS starts each text.
  kv.emplace_back("tokenizer.ggml.add_bos_token", GgufValue::boolean(opt.add_bos.value_or(bos.has_value())));
  kv.emplace_back("tokenizer.ggml.add_eos_token", GgufValue::boolean(opt.add_eos.value_or(false)));
  kv.emplace_back("tokenizer.ggml.add_space_prefix", GgufValue::boolean(m.add_dummy_prefix));
  kv.emplace_back("tokenizer.ggml.remove_extra_whitespaces", GgufValue::boolean(m.remove_extra_whitespaces));
  return kv;
}

inline GgufEntries spm_tokenizer_metadata(const std::string& path, const TokenizerExportOptions& opt = {}) {
  return spm_tokenizer_metadata_from_serialized(
      read_file(path, "GGUF tokenizer export", "a SentencePiece .model file"), "'" + path + "'", opt);
}

// Either kind, by the file: a tokenizer.json (JSON text) or a SentencePiece .model.
inline GgufEntries tokenizer_metadata(const std::string& path, const TokenizerExportOptions& opt = {}) {
  const std::string bytes = read_file(path, "GGUF tokenizer export", "a tokenizer.json or a SentencePiece .model");
  const std::size_t first = bytes.find_first_not_of(" \t\r\n");
  if (first != std::string::npos && bytes[first] == '{')
    return bpe_tokenizer_metadata_from_text(bytes, "'" + path + "'", opt);
  return spm_tokenizer_metadata_from_serialized(bytes, "'" + path + "'", opt);
}

inline void set_tokenizer(GgufWriter& w, const GgufEntries& kv) {
  for (const auto& [k, v] : kv) w.set(k, v);
}

// ----- import -----------------------------------------------------------------------------

namespace tok_detail {

struct GgufVocab {
  std::vector<std::string> tokens;
  std::vector<int> types;     // llama.cpp's token types; NORMAL when the file has none
  std::vector<float> scores;  // 0 when the file has none
};

inline GgufVocab read_vocab(const GgufReader& r) {
  GgufVocab v;
  for (const auto& t : r.array("tokenizer.ggml.tokens", GgufType::STRING)) v.tokens.push_back(t.s);
  const std::size_t n = v.tokens.size();
  if (n == 0) r.bad("tokenizer.ggml.tokens is empty (expected the vocabulary)");
  v.types.assign(n, int(TokenType::Normal));
  v.scores.assign(n, 0.f);
  if (r.has("tokenizer.ggml.token_type")) {
    const auto& a = r.array("tokenizer.ggml.token_type", GgufType::I32);
    if (a.size() != n) r.bad("tokenizer.ggml.token_type has ", a.size(), " entries, expected one per token (", n, ")");
    for (std::size_t i = 0; i < n; ++i) {
      if (a[i].i < 1 || a[i].i > 6)
        r.bad("tokenizer.ggml.token_type[", i, "] is ", a[i].i, " (expected 1 NORMAL to 6 BYTE)");
      v.types[i] = int(a[i].i);
    }
  }
  if (r.has("tokenizer.ggml.scores")) {
    const auto& a = r.array("tokenizer.ggml.scores", GgufType::F32);
    if (a.size() != n) r.bad("tokenizer.ggml.scores has ", a.size(), " entries, expected one per token (", n, ")");
    for (std::size_t i = 0; i < n; ++i) v.scores[i] = float(a[i].f);
  }
  return v;
}

inline std::optional<int> read_id(const GgufReader& r, const char* key, std::size_t n) {
  if (!r.has(key)) return std::nullopt;
  const std::uint32_t id = r.u32(key);
  if (id >= n) r.bad(key, " is ", id, ", outside the vocabulary [0, ", n, ")");
  return int(id);
}

inline bool read_flag(const GgufReader& r, const char* key, bool dflt) {
  return r.has(key) ? r.boolean(key) : dflt;
}

inline std::unique_ptr<Tokenizer> bpe_from_gguf(const GgufReader& r) {
  const GgufVocab v = read_vocab(r);
  const std::string pre = r.has("tokenizer.ggml.pre") ? r.str("tokenizer.ggml.pre") : "";
  const PreTokenizer* p = pre_tokenizer_named(pre);
  if (!p)
    r.bad("tokenizer.ggml.pre is '", pre, "', a pre-tokenizer this reader does not know (known: ",
          known_pre_names(), " and the names that behave as they do)");
  std::vector<json> steps = p->steps;
  if (read_flag(r, "tokenizer.ggml.add_space_prefix", false)) {
    if (steps.size() != 1) r.bad("tokenizer.ggml.add_space_prefix is true with pre-tokenizer '", pre, "' (expected it only with gpt-2)");
    steps[0]["add_prefix_space"] = true;
  }

  json vocab = json::object(), added = json::array();
  for (std::size_t id = 0; id < v.tokens.size(); ++id) {
    const int t = v.types[id];
    const std::string& s = v.tokens[id];
    if (t == int(TokenType::Unused)) continue;  // no text: a gap
    if (t == int(TokenType::Control) || t == int(TokenType::UserDefined)) {
      if (s.empty()) r.bad("tokenizer.ggml.tokens[", id, "] is empty (expected the added token's text)");
      added.push_back({{"id", id}, {"content", s}, {"special", t == int(TokenType::Control)},
                       {"normalized", false}, {"single_word", false}, {"lstrip", false}, {"rstrip", false}});
      continue;
    }
    const auto [it, fresh] = vocab.emplace(s, id);
    if (!fresh)
      r.bad("tokenizer.ggml.tokens[", id, "] '", s, "' is also token ", it.value().get<std::size_t>(),
            " (expected each token once)");
  }
  json merges = json::array();
  const auto& m = r.array("tokenizer.ggml.merges", GgufType::STRING);
  for (std::size_t i = 0; i < m.size(); ++i) {
    const std::string& s = m[i].s;
    const std::size_t sp = s.find(' ', 1);  // as llama.cpp splits them
    if (sp == std::string::npos) r.bad("tokenizer.ggml.merges[", i, "] is '", s, "' (expected \"left right\")");
    merges.push_back(json::array({s.substr(0, sp), s.substr(sp + 1)}));
  }
  const json root = {
      {"version", "1.0"},
      {"added_tokens", std::move(added)},
      {"normalizer", nullptr},
      {"pre_tokenizer", hf_pre_tokenizer(steps)},
      {"post_processor", nullptr},
      {"decoder", {{"type", "ByteLevel"}}},
      {"model",
       {{"type", "BPE"}, {"ignore_merges", p->ignore_merges}, {"vocab", std::move(vocab)}, {"merges", std::move(merges)}}},
  };
  auto tok = std::make_unique<BpeTokenizer>(
      BpeTokenizer::from_json_text(root.dump(), "the vocabulary of GGUF file '" + r.path() + "'"));
  const auto id_in = [&](const char* key) {
    const auto id = read_id(r, key, v.tokens.size());
    if (id && *id >= tok->vocab_size()) r.bad(key, " is ", *id, ", an unused id (a placeholder without text)");
    return id;
  };
  tok->set_bos(id_in("tokenizer.ggml.bos_token_id"));
  tok->set_eos(id_in("tokenizer.ggml.eos_token_id"));
  return tok;
}

// A ModelProto for libsentencepiece: the pieces, BPE, the identity normalizer.
inline std::string spm_model_proto(const GgufReader& r, const GgufVocab& v) {
  const std::size_t n = v.tokens.size();
  PbWriter top;
  bool has_unk = false, has_byte = false;
  for (std::size_t id = 0; id < n; ++id) {
    PbWriter p;
    p.bytes(1, v.tokens[id]);
    p.f32(2, v.scores[id]);
    p.integer(3, v.types[id]);  // llama.cpp's types are SentencePiece's
    top.bytes(1, p.out);
    has_unk |= v.types[id] == int(TokenType::Unknown);
    has_byte |= v.types[id] == int(TokenType::Byte);
  }
  if (!has_unk)
    r.bad("tokenizer.ggml.token_type has no UNKNOWN (2) token; SentencePiece needs exactly one");
  PbWriter trainer;
  trainer.integer(3, 2);  // model_type BPE
  trainer.integer(4, std::int64_t(n));
  trainer.integer(35, has_byte ? 1 : 0);  // byte_fallback
  // SentencePiece finds its special ids by piece: an absent id gets a piece no token has.
  const struct { const char* key; int id_field, piece_field; } specials[] = {
      {"tokenizer.ggml.unknown_token_id", 40, 45}, {"tokenizer.ggml.bos_token_id", 41, 46},
      {"tokenizer.ggml.eos_token_id", 42, 47}, {"tokenizer.ggml.padding_token_id", 43, 48}};
  for (const auto& s : specials) {
    const auto id = read_id(r, s.key, n);
    trainer.integer(s.id_field, id ? *id : -1);
    trainer.bytes(s.piece_field, id ? v.tokens[std::size_t(*id)] : std::string("\x01<absent>"));
  }
  top.bytes(2, trainer.out);
  PbWriter norm;
  norm.bytes(1, "identity");
  norm.integer(3, read_flag(r, "tokenizer.ggml.add_space_prefix", true) ? 1 : 0);
  norm.integer(4, read_flag(r, "tokenizer.ggml.remove_extra_whitespaces", false) ? 1 : 0);
  norm.integer(5, 1);  // escape_whitespaces
  top.bytes(3, norm.out);
  return top.out;
}

inline std::unique_ptr<Tokenizer> spm_from_gguf(const GgufReader& r) {
  const GgufVocab v = read_vocab(r);
  const std::string bytes = spm_model_proto(r, v);
  return std::make_unique<SentencePieceTokenizer>(
      SentencePieceTokenizer::from_serialized(bytes, "the vocabulary of GGUF file '" + r.path() + "'"));
}

}  // namespace tok_detail

// The file's tokenizer: ByteTokenizer for our byte vocabulary, BpeTokenizer for "gpt2",
// SentencePieceTokenizer for "llama", nullptr for "none".
inline std::unique_ptr<Tokenizer> tokenizer_from_gguf(const GgufReader& r) {
  const std::string& model = r.str("tokenizer.ggml.model");
  if (model == "none") return nullptr;
  if (is_byte_vocab(r)) return std::make_unique<ByteTokenizer>();
  if (model == "gpt2") return tok_detail::bpe_from_gguf(r);
  if (model == "llama") return tok_detail::spm_from_gguf(r);
  r.bad("tokenizer.ggml.model is '", model, "'; this reader takes \"gpt2\" (byte-level BPE), \"llama\" "
        "(SentencePiece) and \"none\" (no vocabulary: give token ids, e.g. --ids)");
}

}  // namespace hybrid::gguf
