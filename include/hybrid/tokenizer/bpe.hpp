// BpeTokenizer: byte-level BPE read from a Hugging Face `tokenizer.json` (GPT-2, LLaMA-3,
// Qwen2, LFM2 style), giving the ids the `tokenizers` library gives.
//
//   hybrid::BpeTokenizer tok("tokenizer.json");          // or BpeTokenizer::from_json_text(s)
//   std::vector<int> ids = tok.encode("Hello world");    // no BOS added; prepend *tok.bos()
//   std::string text = tok.decode(ids);                  // special tokens skipped
//
// Encoding runs the stages of the Hugging Face pipeline that byte-level BPE files use:
//  1. added_tokens are cut out of the text first, matched literally, leftmost-longest (the
//     ones with "normalized": false first, then the others in the remaining text, as HF
//     does); each becomes its own id.
//  2. Every other segment goes through the pre_tokenizer: a Sequence of Split (Regex or
//     String pattern; behavior Removed, Isolated, MergedWithPrevious, MergedWithNext,
//     Contiguous; invert) and Digits steps, ending with ByteLevel (add_prefix_space adds a
//     space to each piece that lacks one; use_regex splits with the GPT-2 regex), or a lone
//     ByteLevel. Regexes run on PCRE2 (UTF + UCP, JIT when available), whose syntax covers
//     what these files use: \p{L}, \p{N}, (?i:...), lookahead.
//  3. Each piece is mapped byte by byte to GPT-2's printable characters and merged by merge
//     rank (lowest rank first, leftmost first among equal ranks); with ignore_merges, a
//     piece that is itself in the vocabulary is taken whole. byte_fallback, unk_token and
//     fuse_unk behave as in HF for bytes whose character is missing from the vocabulary.
// Decoding maps each vocabulary token's characters back to bytes (ByteLevel decoder);
// added tokens decode to their content, special ones to "" unless asked to keep them.
//
// Supported: model.type "BPE" with vocab, merges as "a b" strings or [a, b] arrays,
// ignore_merges, byte_fallback, unk_token, fuse_unk; normalizer null (or an empty
// Sequence); decoder ByteLevel; post_processor only read to find the BOS. Rejected, each
// with an error naming the field: other model types, normalizers and decoders, dropout,
// continuing_subword_prefix / end_of_word_suffix, added tokens with single_word, lstrip or
// rstrip, pre-tokenizer steps other than those above, a missing or non-final ByteLevel.
//
// Differences from HF that do not show on valid UTF-8 text: decode returns the raw bytes
// (HF replaces invalid UTF-8 with U+FFFD), so decode(encode(s)) == s for every byte string;
// text that is not valid UTF-8 is still encoded (PCRE2 runs in invalid-UTF mode: invalid
// bytes never match a regex and become pieces of their own) where HF cannot take it.
//
// bos(): the special token the TemplateProcessing post_processor puts before $A, else the
// first of <|begin_of_text|>, <|startoftext|>, <s>, <bos> present. eos(): the one after $A,
// else the first of <|endoftext|>, <|end_of_text|>, </s>, <eos>, <|im_end|>. Both can be
// set with set_bos / set_eos (e.g. from tokenizer_config.json).
//
// bytes_per_token(id) is the length of the token's decoded bytes: exact, so the sum over
// encode(s) is s.size(). Special tokens count 0 and cannot be sampled (can_decode false)
// except the EOS, which generation must be able to produce to stop.
//
// Parsing never crashes on bad input: every field is checked and a hybrid::Error names the
// field and what was expected (from_json_text is the fuzzing entry point). Encoding is
// const and thread-safe (a small per-word cache sits behind a mutex).
#pragma once
#ifndef PCRE2_CODE_UNIT_WIDTH
#define PCRE2_CODE_UNIT_WIDTH 8
#endif
#if PCRE2_CODE_UNIT_WIDTH != 8
#error "hybrid/tokenizer/bpe.hpp needs the 8-bit PCRE2 library (PCRE2_CODE_UNIT_WIDTH 8)"
#endif
#include <pcre2.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <functional>
#include <initializer_list>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <queue>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "../core/file.hpp"
#include "../core/json.hpp"
#include "../core/utf8.hpp"
#include "../infer/tokenizer.hpp"

namespace hybrid {

namespace detail::bpe {

using nlohmann::json;

// ---------------------------------------------------------------------------------------
// GPT-2's byte-level alphabet: every byte stands for a printable character so that BPE
// works on text. Printable Latin-1 bytes (! to ~, ¡ to ¬, ® to ÿ) stand for themselves;
// the other 68 bytes take U+0100, U+0101, ... in byte order (space -> U+0120 'Ġ').
struct ByteAlphabet {
  std::array<std::string, 256> utf8{};        // UTF-8 of the character standing for byte b
  std::array<int, 0x144> byte_of_char{};      // code point -> byte, -1 if not in the alphabet
};

inline const ByteAlphabet& byte_alphabet() {
  static const ByteAlphabet table = [] {
    ByteAlphabet t;
    t.byte_of_char.fill(-1);
    int next = 0x100;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
      const int cp = printable ? b : next++;
      append_utf8(t.utf8[std::size_t(b)], std::uint32_t(cp));
      t.byte_of_char[std::size_t(cp)] = b;
    }
    return t;
  }();
  return table;
}

// The bytes a vocabulary token stands for, as HF's ByteLevel decoder gives them: each
// character mapped back to its byte; a token with a character outside the alphabet is
// taken as its own UTF-8 text.
inline std::string byte_level_decode(std::string_view token) {
  const ByteAlphabet& a = byte_alphabet();
  std::string out;
  for (std::size_t i = 0; i < token.size();) {
    std::uint32_t cp = 0;
    const std::size_t n = next_utf8(token, i, cp);
    if (n == 0 || cp >= a.byte_of_char.size() || a.byte_of_char[cp] < 0) return std::string(token);
    out += char(a.byte_of_char[cp]);
    i += n;
  }
  return out;
}

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

// ---------------------------------------------------------------------------------------
// HF compiles these patterns with Oniguruma, whose \s is the Unicode White_Space property.
// PCRE2 10.42's \s (UCP mode) also takes U+180E MONGOLIAN VOWEL SEPARATOR, so \s and \S
// are spelled as the property, inside classes too. The rest of what the GPT-2 / LLaMA-3 /
// Qwen2 patterns use (\p{L}, \p{N}, (?i:...), (?!...)) means the same in both engines; the
// tests compare both on ASCII, accents, CJK, emoji and the odd whitespace characters.
inline std::string oniguruma_to_pcre2(std::string_view pattern) {
  std::string out;
  out.reserve(pattern.size() + 32);
  for (std::size_t i = 0; i < pattern.size(); ++i) {
    const char c = pattern[i];
    if (c != '\\' || i + 1 == pattern.size()) {
      out += c;
      continue;
    }
    const char e = pattern[++i];
    if (e == 's') {
      out += "\\p{White_Space}";
    } else if (e == 'S') {
      out += "\\P{White_Space}";
    } else if (e == 'Q') {  // \Q...\E is literal text: copy it untouched
      const std::size_t end = pattern.find("\\E", i + 1);
      const std::size_t stop = end == std::string_view::npos ? pattern.size() : end + 2;
      out += '\\';
      out.append(pattern.substr(i, stop - i));
      i = stop - 1;
    } else {
      out += '\\';
      out += e;
    }
  }
  return out;
}

// A compiled PCRE2 pattern, shared read-only between copies and threads (each search makes
// its own match data).
class Regex {
 public:
  Regex(const std::string& hf_pattern, const Fields& f, const std::string& field) {
    const std::string pattern = oniguruma_to_pcre2(hf_pattern);
    int err = 0;
    PCRE2_SIZE offset = 0;
    // MATCH_INVALID_UTF: text that is not valid UTF-8 is searched rather than refused;
    // invalid bytes simply never match.
    pcre2_code* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(),
                                     PCRE2_UTF | PCRE2_UCP | PCRE2_MATCH_INVALID_UTF, &err,
                                     &offset, nullptr);
    if (!code)
      f.fail(field, "regex ", show(hf_pattern), " does not compile (PCRE2: ", message(err),
             " at offset ", offset, "); expected a pattern in the syntax HF's Oniguruma and "
             "PCRE2 share");
    code_.reset(code, pcre2_code_free);
    jit_ = pcre2_jit_compile(code, PCRE2_JIT_COMPLETE) == 0;
    field_ = field;
  }

  // (start, end) of each match, left to right, not overlapping. After an empty match the
  // search moves on one character, as Oniguruma's iteration does.
  void find_all(std::string_view text, std::vector<std::pair<std::size_t, std::size_t>>& out) const {
    std::unique_ptr<pcre2_match_data, decltype(&pcre2_match_data_free)> md(
        pcre2_match_data_create_from_pattern(code_.get(), nullptr), pcre2_match_data_free);
    if (!md) fail("Regex: out of memory creating PCRE2 match data for ", field_);
    const auto subject = reinterpret_cast<PCRE2_SPTR>(text.data());
    std::size_t pos = 0;
    while (pos <= text.size()) {
      int rc = pcre2_match(code_.get(), subject, text.size(), pos, 0, md.get(), nullptr);
      // The JIT's stack is small; deep matches fall back to the interpreter, which uses
      // the heap.
      if (jit_ && rc == PCRE2_ERROR_JIT_STACKLIMIT)
        rc = pcre2_match(code_.get(), subject, text.size(), pos, PCRE2_NO_JIT, md.get(), nullptr);
      if (rc == PCRE2_ERROR_NOMATCH) break;
      if (rc < 0)
        fail("BpeTokenizer: ", field_, ": matching the regex failed at byte ", pos,
             " (PCRE2: ", message(rc), ")");
      const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md.get());
      const std::size_t s = ov[0], e = ov[1];
      if (s > e || e > text.size())
        fail("BpeTokenizer: ", field_, ": the regex gave a match that ends before it starts "
             "(\\K in a lookaround?); expected ordinary matches");
      out.emplace_back(s, e);
      if (e > s) {
        pos = e;
      } else {
        pos = e + 1;
        while (pos < text.size() && (static_cast<unsigned char>(text[pos]) & 0xC0) == 0x80) ++pos;
      }
    }
  }

 private:
  static std::string message(int code) {
    PCRE2_UCHAR buf[256];
    const int n = pcre2_get_error_message(code, buf, sizeof buf);
    return n < 0 ? "error " + std::to_string(code) : std::string(reinterpret_cast<char*>(buf));
  }
  std::shared_ptr<pcre2_code> code_;
  bool jit_ = false;
  std::string field_;
};

// The pattern of a Split step: a regex, or a literal string.
struct Pattern {
  std::optional<Regex> regex;
  std::string literal;

  void find_all(std::string_view text, std::vector<std::pair<std::size_t, std::size_t>>& out) const {
    if (regex) return regex->find_all(text, out);
    for (std::size_t p = text.find(literal); p != std::string_view::npos;
         p = text.find(literal, p + literal.size()))
      out.emplace_back(p, p + literal.size());
  }
};

enum class Behavior { Removed, Isolated, MergedWithPrevious, MergedWithNext, Contiguous };

// One pre-tokenizer step. ByteLevel is always the last one.
struct Step {
  enum class Kind { Split, ByteLevel } kind = Kind::Split;
  std::shared_ptr<const Pattern> pattern;  // Split (also ByteLevel's GPT-2 regex)
  Behavior behavior = Behavior::Isolated;
  bool invert = false;
  bool add_prefix_space = false;  // ByteLevel
  bool use_regex = false;         // ByteLevel
};

// Splits `piece` the way HF's NormalizedString::split does: the matches and the gaps
// between them form spans, flagged match or not (inverted with `invert`); the behavior
// says which spans are kept and what they join; empty spans are dropped.
inline void split_piece(std::string_view piece, const Pattern& pat, Behavior behavior, bool invert,
                        std::vector<std::string>& out) {
  struct Span {
    std::size_t s, e;
    bool match;
  };
  std::vector<std::pair<std::size_t, std::size_t>> found;
  pat.find_all(piece, found);
  std::vector<Span> spans;
  std::size_t prev = 0;
  for (auto [s, e] : found) {
    if (s > prev) spans.push_back({prev, s, false});
    spans.push_back({s, e, true});
    prev = e;
  }
  if (prev < piece.size() || spans.empty()) spans.push_back({prev, piece.size(), false});
  if (invert)
    for (Span& sp : spans) sp.match = !sp.match;

  std::vector<Span> kept;
  switch (behavior) {
    case Behavior::Removed:
      for (const Span& sp : spans)
        if (!sp.match) kept.push_back(sp);
      break;
    case Behavior::Isolated:
      kept = spans;
      break;
    case Behavior::MergedWithPrevious: {
      // A match joins the piece before it (unless that piece ended with a match too).
      bool prev_match = false;
      for (const Span& sp : spans) {
        if (sp.match && !prev_match && !kept.empty()) kept.back().e = sp.e;
        else kept.push_back(sp);
        prev_match = sp.match;
      }
      break;
    }
    case Behavior::MergedWithNext: {
      // Mirror image: a match joins the piece after it.
      bool next_match = false;
      for (auto it = spans.rbegin(); it != spans.rend(); ++it) {
        if (it->match && !next_match && !kept.empty()) kept.back().s = it->s;
        else kept.push_back(*it);
        next_match = it->match;
      }
      std::reverse(kept.begin(), kept.end());
      break;
    }
    case Behavior::Contiguous: {
      // Runs of matches (and runs of non-matches) become one piece each.
      bool prev_match = false;
      for (const Span& sp : spans) {
        if (sp.match == prev_match && !kept.empty()) kept.back().e = sp.e;
        else kept.push_back(sp);
        prev_match = sp.match;
      }
      break;
    }
  }
  for (const Span& sp : kept)
    if (sp.e > sp.s) out.emplace_back(piece.substr(sp.s, sp.e - sp.s));
}

// GPT-2's pre-tokenization regex, which ByteLevel applies when use_regex is true.
inline constexpr const char* kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

struct AddedToken {
  int id = 0;
  std::string content;
  bool special = false;
  bool normalized = false;
};

// Small memo of word -> ids: text repeats its words, and merging is the costly part.
struct WordCache {
  static constexpr std::size_t kMaxEntries = 1 << 15;
  static constexpr std::size_t kMaxWordBytes = 64;
  std::mutex mu;
  std::unordered_map<std::string, std::vector<int>> map;
};

}  // namespace detail::bpe

class BpeTokenizer final : public Tokenizer {
 public:
  // Reads a tokenizer.json file.
  explicit BpeTokenizer(const std::string& path) {
    load(read_file(path, "BpeTokenizer", "a Hugging Face tokenizer.json file"), path);
  }

  // Parses the text of a tokenizer.json; `origin` names it in error messages.
  static BpeTokenizer from_json_text(std::string_view text,
                                     std::string_view origin = "tokenizer.json text") {
    BpeTokenizer tok;
    tok.load(text, std::string(origin));
    return tok;
  }

  std::vector<int> encode(std::string_view text) const override {
    std::vector<int> ids;
    std::vector<std::string> pieces;
    for (const Segment& seg : split_added(text)) {
      if (seg.added >= 0) {
        ids.push_back(seg.added);
        continue;
      }
      pieces.clear();
      pre_tokenize(seg.text, pieces);
      for (const std::string& p : pieces) encode_word(p, ids);
    }
    return ids;
  }

  std::string decode_token(int id) const override {
    check_id(id, "BpeTokenizer::decode_token");
    const Entry& e = entries_[std::size_t(id)];
    return e.kind == Kind::Special || e.kind == Kind::Gap ? std::string() : e.bytes;
  }

  std::string decode(std::span<const int> ids) const override { return decode(ids, true); }

  // With skip_special false, special tokens decode to their content.
  std::string decode(std::span<const int> ids, bool skip_special) const {
    std::string out;
    for (std::size_t i = 0; i < ids.size(); ++i) {
      HYBRID_CHECK(ids[i] >= 0 && ids[i] < vocab_size(), "BpeTokenizer::decode: token id ", ids[i],
                   " at position ", i, " is outside the vocabulary [0, ", vocab_size(), ")");
      const Entry& e = entries_[std::size_t(ids[i])];
      if (e.kind == Kind::Special && skip_special) continue;
      out += e.bytes;
    }
    return out;
  }

  int vocab_size() const override { return int(entries_.size()); }

  // Real text: vocabulary and non-special added tokens; of the special ones only the EOS.
  bool can_decode(int id) const override {
    if (id < 0 || id >= vocab_size()) return false;
    const Kind k = entries_[std::size_t(id)].kind;
    return k == Kind::Vocab || k == Kind::Added || (k == Kind::Special && eos_ && *eos_ == id);
  }

  std::optional<int> bos() const override { return bos_; }
  std::optional<int> eos() const override { return eos_; }
  void set_bos(std::optional<int> id) {
    if (id) check_id(*id, "BpeTokenizer::set_bos");
    bos_ = id;
  }
  void set_eos(std::optional<int> id) {
    if (id) check_id(*id, "BpeTokenizer::set_eos");
    eos_ = id;
  }

  double bytes_per_token(int id) const override {
    check_id(id, "BpeTokenizer::bytes_per_token");
    const Entry& e = entries_[std::size_t(id)];
    return e.kind == Kind::Special || e.kind == Kind::Gap ? 0.0 : double(e.bytes.size());
  }

  // The id of a token given as written in tokenizer.json (added token content, or a
  // vocabulary entry in its byte-level spelling such as "Ġthe").
  std::optional<int> token_to_id(std::string_view token) const {
    for (const auto& a : added_)
      if (a.content == token) return a.id;
    auto it = vocab_.find(std::string(token));
    if (it == vocab_.end()) return std::nullopt;
    return it->second;
  }
  bool is_special(int id) const {
    return id >= 0 && id < vocab_size() && entries_[std::size_t(id)].kind == Kind::Special;
  }

 private:
  enum class Kind : std::uint8_t { Gap, Vocab, Added, Special };
  struct Entry {
    Kind kind = Kind::Gap;
    std::string bytes;  // decoded bytes (vocab), content (added tokens)
  };
  struct Segment {
    std::string_view text;
    int added = -1;  // id when the segment is an added token
  };
  using json = nlohmann::json;
  using Fields = detail::bpe::Fields;

  BpeTokenizer() = default;

  // ----- parsing -------------------------------------------------------------------------
  void load(std::string_view text, const std::string& origin) {
    const Fields f(origin);
    const json root = parse_json(text, f.where(), "a tokenizer.json", true, kMaxDepth);

    load_model(f, root);
    load_added_tokens(f, root);
    check_normalizer(f, root);
    load_pre_tokenizer(f, root);
    check_decoder(f, root);
    build_entries(f);
    find_bos_eos(f, root);
    cache_ = std::make_shared<detail::bpe::WordCache>();
  }

  void load_model(const Fields& f, const json& root) {
    const json& model = f.require(root, "model", "");
    if (!model.is_object()) f.fail("model", "expected a JSON object, got ", detail::bpe::show(model));
    if (const json* t = f.find(model, "type", "model")) {
      const std::string type = f.string(*t, "model.type");
      if (type != "BPE")
        f.fail("model.type", detail::bpe::show(type), " is not supported (expected \"BPE\")");
    }
    if (const json* d = f.find(model, "dropout", "model")) {
      if (!d->is_number() || d->get<double>() != 0.0)
        f.fail("model.dropout", detail::bpe::show(*d), " is not supported (expected null: "
               "BPE dropout is for training)");
    }
    for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
      if (const json* v = f.find(model, key, "model"))
        if (!(v->is_string() && v->get<std::string>().empty()))
          f.fail(Fields::join("model", key), detail::bpe::show(*v),
                 " is not supported (expected null: byte-level BPE has no word markers)");
    }
    ignore_merges_ = f.boolean(model, "ignore_merges", "model", false);
    byte_fallback_ = f.boolean(model, "byte_fallback", "model", false);
    fuse_unk_ = f.boolean(model, "fuse_unk", "model", false);

    const json& vocab = f.require(model, "vocab", "model");
    if (!vocab.is_object())
      f.fail("model.vocab", "expected an object of token -> id, got ", detail::bpe::show(vocab));
    vocab_.reserve(vocab.size());
    for (auto it = vocab.begin(); it != vocab.end(); ++it) {
      // The path is only spelled out for an error: vocabularies run to 200k entries.
      const json& v = it.value();
      const int id = Fields::is_id(v) ? int(v.get<std::int64_t>())
                                      : f.id(v, "model.vocab[" + detail::bpe::show(it.key()) + "]");
      vocab_.emplace(it.key(), id);
    }

    if (const json* u = f.find(model, "unk_token", "model")) {
      const std::string unk = f.string(*u, "model.unk_token");
      auto it = vocab_.find(unk);
      if (it == vocab_.end())
        f.fail("model.unk_token", detail::bpe::show(unk), " is not in model.vocab");
      unk_id_ = it->second;
    }

    if (const json* merges = f.find(model, "merges", "model")) {
      if (!merges->is_array())
        f.fail("model.merges", "expected an array of merges, got ", detail::bpe::show(*merges));
      merges_.reserve(merges->size());
      for (std::size_t i = 0; i < merges->size(); ++i) {
        const auto path = [i] { return Fields::at("model.merges", i); };
        const json& m = (*merges)[i];
        std::string a, b;
        if (m.is_string()) {
          // Legacy form "a b": byte-level tokens never hold a space, so one space splits.
          const std::string s = m.get<std::string>();
          const std::size_t sp = s.find(' ');
          if (sp == std::string::npos || s.find(' ', sp + 1) != std::string::npos)
            f.fail(path(), detail::bpe::show(s), " is not a merge (expected \"left right\": two "
                   "tokens and one space)");
          a = s.substr(0, sp);
          b = s.substr(sp + 1);
        } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {
          a = m[0].get<std::string>();
          b = m[1].get<std::string>();
        } else {
          f.fail(path(), detail::bpe::show(m), " is not a merge (expected \"left right\" or "
                 "[\"left\", \"right\"])");
        }
        const int ia = vocab_id(f, i, a), ib = vocab_id(f, i, b), inew = vocab_id(f, i, a + b);
        // A pair listed twice keeps its last rank, as HF's map does.
        merges_[pair_key(ia, ib)] = {int(i), inew};
      }
    }
  }

  int vocab_id(const Fields& f, std::size_t merge, const std::string& token) const {
    auto it = vocab_.find(token);
    if (it == vocab_.end())
      f.fail(Fields::at("model.merges", merge), "token ", detail::bpe::show(token), " is not in model.vocab (expected "
             "merges of vocabulary tokens whose concatenation is also in the vocabulary)");
    return it->second;
  }

  void load_added_tokens(const Fields& f, const json& root) {
    const json* added = f.find(root, "added_tokens", "");
    if (!added) return;
    if (!added->is_array())
      f.fail("added_tokens", "expected an array of objects, got ", detail::bpe::show(*added));
    std::unordered_map<int, std::size_t> added_by_id;
    for (std::size_t i = 0; i < added->size(); ++i) {
      const std::string path = Fields::at("added_tokens", i);
      const json& t = (*added)[i];
      if (!t.is_object()) f.fail(path, "expected an object, got ", detail::bpe::show(t));
      detail::bpe::AddedToken a;
      a.id = f.id(f.require(t, "id", path), path + ".id");
      a.content = f.string(f.require(t, "content", path), path + ".content");
      if (a.content.empty()) f.fail(path + ".content", "expected a non-empty string");
      a.special = f.boolean(t, "special", path, false);
      a.normalized = f.boolean(t, "normalized", path, !a.special);
      for (const char* key : {"single_word", "lstrip", "rstrip"})
        if (f.boolean(t, key, path, false))
          f.fail(Fields::join(path, key), "true is not supported (expected false)");
      const auto [it, fresh] = added_by_id.emplace(a.id, added_.size());
      if (!fresh && added_[it->second].content != a.content)
        f.fail(path + ".id", a.id, " is already the id of added token ",
               detail::bpe::show(added_[it->second].content));
      added_.push_back(std::move(a));
    }
    // Matching tries longer tokens first so that the longest one at a position wins.
    for (int pass = 0; pass < 2; ++pass)
      for (std::size_t k = 0; k < added_.size(); ++k)
        if (added_[k].normalized == (pass == 1)) {
          auto& bucket = by_first_byte_[pass][static_cast<unsigned char>(added_[k].content[0])];
          bucket.push_back(k);
        }
    for (auto& pass : by_first_byte_)
      for (auto& bucket : pass)
        std::stable_sort(bucket.begin(), bucket.end(), [&](std::size_t x, std::size_t y) {
          return added_[x].content.size() > added_[y].content.size();
        });
  }

  void check_normalizer(const Fields& f, const json& root) const {
    const json* n = f.find(root, "normalizer", "");
    if (!n) return;
    if (n->is_object()) {
      const json* t = f.find(*n, "type", "normalizer");
      if (t && t->is_string() && t->get<std::string>() == "Sequence") {
        const json* list = f.find(*n, "normalizers", "normalizer");
        if (!list || (list->is_array() && list->empty())) return;
      }
    }
    f.fail("normalizer", detail::bpe::show(*n), " is not supported (expected null: byte-level "
           "BPE without normalization)");
  }

  void load_pre_tokenizer(const Fields& f, const json& root) {
    const json* p = f.find(root, "pre_tokenizer", "");
    if (!p)
      f.fail("pre_tokenizer", "missing (expected ByteLevel, or a Sequence ending with "
             "ByteLevel: this reader handles byte-level BPE)");
    add_step(f, *p, "pre_tokenizer", 0);
    if (steps_.empty() || steps_.back().kind != detail::bpe::Step::Kind::ByteLevel)
      f.fail("pre_tokenizer", "no ByteLevel step (expected ByteLevel as the last step: this "
             "reader handles byte-level BPE)");
  }

  void add_step(const Fields& f, const json& p, const std::string& path, int depth) {
    using detail::bpe::Behavior;
    using detail::bpe::Step;
    if (!p.is_object()) f.fail(path, "expected an object, got ", detail::bpe::show(p));
    if (!steps_.empty() && steps_.back().kind == Step::Kind::ByteLevel)
      f.fail(path, "a step after ByteLevel is not supported (expected ByteLevel last)");
    const std::string type = f.string(f.require(p, "type", path), path + ".type");
    if (type == "Sequence") {
      if (depth > 4) f.fail(path, "Sequence nested too deeply (expected at most 4 levels)");
      const json& list = f.require(p, "pretokenizers", path);
      if (!list.is_array())
        f.fail(path + ".pretokenizers", "expected an array, got ", detail::bpe::show(list));
      for (std::size_t i = 0; i < list.size(); ++i)
        add_step(f, list[i], Fields::at(path + ".pretokenizers", i), depth + 1);
    } else if (type == "Split") {
      Step s;
      auto pat = std::make_shared<detail::bpe::Pattern>();
      const json& pattern = f.require(p, "pattern", path);
      const std::string ppath = path + ".pattern";
      if (const json* r = f.find(pattern, "Regex", ppath)) {
        pat->regex.emplace(f.string(*r, ppath + ".Regex"), f, ppath + ".Regex");
      } else if (const json* s2 = f.find(pattern, "String", ppath)) {
        pat->literal = f.string(*s2, ppath + ".String");
        if (pat->literal.empty()) f.fail(ppath + ".String", "expected a non-empty string");
      } else {
        f.fail(ppath, "expected {\"Regex\": ...} or {\"String\": ...}, got ", detail::bpe::show(pattern));
      }
      s.pattern = std::move(pat);
      const std::string b = f.string(f.require(p, "behavior", path), path + ".behavior");
      if (b == "Removed") s.behavior = Behavior::Removed;
      else if (b == "Isolated") s.behavior = Behavior::Isolated;
      else if (b == "MergedWithPrevious") s.behavior = Behavior::MergedWithPrevious;
      else if (b == "MergedWithNext") s.behavior = Behavior::MergedWithNext;
      else if (b == "Contiguous") s.behavior = Behavior::Contiguous;
      else
        f.fail(path + ".behavior", detail::bpe::show(b), " is not a split behavior (expected "
               "Removed, Isolated, MergedWithPrevious, MergedWithNext or Contiguous)");
      s.invert = f.boolean(p, "invert", path, false);
      steps_.push_back(std::move(s));
    } else if (type == "Digits") {
      // HF: digits (Unicode N) alone, or runs of them, become their own pieces.
      Step s;
      auto pat = std::make_shared<detail::bpe::Pattern>();
      pat->regex.emplace(R"(\p{N})", f, path);
      s.pattern = std::move(pat);
      s.behavior = f.boolean(p, "individual_digits", path, false) ? Behavior::Isolated
                                                                   : Behavior::Contiguous;
      steps_.push_back(std::move(s));
    } else if (type == "ByteLevel") {
      Step s;
      s.kind = Step::Kind::ByteLevel;
      s.add_prefix_space = f.boolean(p, "add_prefix_space", path, true);
      s.use_regex = f.boolean(p, "use_regex", path, true);
      if (s.use_regex) {
        auto pat = std::make_shared<detail::bpe::Pattern>();
        pat->regex.emplace(detail::bpe::kGpt2Pattern, f, path + " (GPT-2 regex)");
        s.pattern = std::move(pat);
      }
      steps_.push_back(std::move(s));
    } else {
      f.fail(path + ".type", detail::bpe::show(type), " is not supported (expected Sequence, "
             "Split, Digits or ByteLevel)");
    }
  }

  void check_decoder(const Fields& f, const json& root) const {
    const json* d = f.find(root, "decoder", "");
    if (!d)
      f.fail("decoder", "missing (expected {\"type\": \"ByteLevel\"} for byte-level BPE)");
    const std::string type = f.string(f.require(*d, "type", "decoder"), "decoder.type");
    if (type != "ByteLevel")
      f.fail("decoder.type", detail::bpe::show(type), " is not supported (expected \"ByteLevel\")");
  }

  // One entry per id: vocabulary tokens decoded to bytes, added tokens to their content.
  void build_entries(const Fields& f) {
    std::int64_t max_id = -1;
    for (const auto& [tok, id] : vocab_) max_id = std::max<std::int64_t>(max_id, id);
    for (const auto& a : added_) max_id = std::max<std::int64_t>(max_id, a.id);
    if (max_id < 0) f.fail("model.vocab", "empty (expected at least one token)");
    // Ids should be dense; a stray huge id would otherwise cost memory for nothing.
    const std::int64_t n_named = std::int64_t(vocab_.size() + added_.size());
    if (max_id >= n_named + kMaxGap)
      f.fail("model.vocab", "token id ", max_id, " leaves more than ", kMaxGap, " unused ids "
             "(expected ids close to 0..", n_named - 1, ")");
    entries_.assign(std::size_t(max_id + 1), Entry{});
    std::vector<const std::string*> owner(entries_.size(), nullptr);
    for (const auto& [tok, id] : vocab_) {
      if (owner[std::size_t(id)])
        f.fail("model.vocab", "id ", id, " is given to both ", detail::bpe::show(*owner[std::size_t(id)]),
               " and ", detail::bpe::show(tok), " (expected one token per id)");
      owner[std::size_t(id)] = &tok;
      entries_[std::size_t(id)] = {Kind::Vocab, detail::bpe::byte_level_decode(tok)};
    }
    for (const auto& a : added_)
      entries_[std::size_t(a.id)] = {a.special ? Kind::Special : Kind::Added, a.content};

    // How each byte enters the merge loop: its alphabet character's id, else (HF order)
    // byte-fallback tokens <0xNN> for the character's UTF-8, else the unknown token, else
    // nothing (HF drops it).
    const auto& alpha = detail::bpe::byte_alphabet();
    for (int b = 0; b < 256; ++b) {
      auto& init = initial_[std::size_t(b)];
      init.unk = false;
      auto it = vocab_.find(alpha.utf8[std::size_t(b)]);
      if (it != vocab_.end()) {
        init.ids = {it->second};
        continue;
      }
      if (byte_fallback_) {
        std::vector<int> ids;
        for (char c : alpha.utf8[std::size_t(b)]) {
          static const char* hex = "0123456789ABCDEF";
          const auto u = static_cast<unsigned char>(c);
          const std::string name = std::string("<0x") + hex[u >> 4] + hex[u & 15] + ">";
          auto jt = vocab_.find(name);
          if (jt == vocab_.end()) break;
          ids.push_back(jt->second);
        }
        if (ids.size() == alpha.utf8[std::size_t(b)].size()) {
          init.ids = std::move(ids);
          continue;
        }
      }
      if (unk_id_) {
        init.ids = {*unk_id_};
        init.unk = true;
      }
    }
  }

  void find_bos_eos(const Fields& f, const json& root) {
    // TemplateProcessing's "single" template: [SpecialToken, Sequence $A, SpecialToken].
    const json* pp = f.find(root, "post_processor", "");
    std::vector<std::pair<const json*, std::string>> todo;
    if (pp) todo.emplace_back(pp, "post_processor");
    for (std::size_t k = 0; k < todo.size() && k < 16; ++k) {
      const auto [p, path] = todo[k];
      if (!p->is_object()) f.fail(path, "expected an object, got ", detail::bpe::show(*p));
      const json* t = f.find(*p, "type", path);
      const std::string type = t ? f.string(*t, path + ".type") : "";
      if (type == "Sequence") {
        const json& list = f.require(*p, "processors", path);
        if (!list.is_array())
          f.fail(path + ".processors", "expected an array, got ", detail::bpe::show(list));
        for (std::size_t i = 0; i < list.size(); ++i)
          todo.emplace_back(&list[i], Fields::at(path + ".processors", i));
      } else if (type == "TemplateProcessing") {
        const json* single = f.find(*p, "single", path);
        if (!single) continue;
        if (!single->is_array())
          f.fail(path + ".single", "expected an array, got ", detail::bpe::show(*single));
        bool seen_a = false;
        for (std::size_t i = 0; i < single->size(); ++i) {
          const std::string ipath = Fields::at(path + ".single", i);
          const json& piece = (*single)[i];
          if (!piece.is_object()) f.fail(ipath, "expected an object, got ", detail::bpe::show(piece));
          if (f.find(piece, "Sequence", ipath)) {
            seen_a = true;
          } else if (const json* st = f.find(piece, "SpecialToken", ipath)) {
            const std::string name = f.string(f.require(*st, "id", ipath + ".SpecialToken"),
                                           ipath + ".SpecialToken.id");
            const auto id = template_token_id(f, *p, path, name);
            if (!seen_a && !bos_) bos_ = id;
            if (seen_a && !eos_) eos_ = id;
          }
        }
      }
    }
    const auto first_present = [&](std::initializer_list<const char*> names) -> std::optional<int> {
      for (const char* n : names)
        if (auto id = token_to_id(n)) return id;
      return std::nullopt;
    };
    if (!bos_) bos_ = first_present({"<|begin_of_text|>", "<|startoftext|>", "<s>", "<bos>"});
    if (!eos_)
      eos_ = first_present({"<|endoftext|>", "<|end_of_text|>", "</s>", "<eos>", "<|im_end|>"});
  }

  // A name in a TemplateProcessing template: its special_tokens entry when that holds one
  // id, else the token of that name.
  int template_token_id(const Fields& f, const json& proc, const std::string& path,
                        const std::string& name) const {
    if (const json* map = f.find(proc, "special_tokens", path))
      if (const json* entry = f.find(*map, name.c_str(), path + ".special_tokens")) {
        const std::string epath = path + ".special_tokens[" + detail::bpe::show(name) + "]";
        const json& ids = f.require(*entry, "ids", epath);
        if (ids.is_array() && ids.size() == 1) {
          const int id = f.id(ids[0], epath + ".ids[0]");
          if (id >= vocab_size()) f.fail(epath + ".ids[0]", "token id ", id, " is outside the vocabulary");
          return id;
        }
      }
    const auto id = token_to_id(name);
    if (!id) f.fail(path, "template token ", detail::bpe::show(name), " is not a token of this tokenizer");
    return *id;
  }

  // ----- encoding ------------------------------------------------------------------------
  static std::uint64_t pair_key(int a, int b) {
    return (std::uint64_t(std::uint32_t(a)) << 32) | std::uint32_t(b);
  }

  // Cuts the added tokens out of the text: first those matched on raw text
  // ("normalized": false), then the others within what is left.
  std::vector<Segment> split_added(std::string_view text) const {
    std::vector<Segment> segs{{text, -1}};
    if (added_.empty()) return segs;
    for (int pass = 0; pass < 2; ++pass) {
      std::vector<Segment> next;
      for (const Segment& seg : segs) {
        if (seg.added >= 0) {
          next.push_back(seg);
          continue;
        }
        const std::string_view s = seg.text;
        std::size_t start = 0;
        for (std::size_t i = 0; i < s.size(); ++i) {
          const auto& bucket = by_first_byte_[std::size_t(pass)][static_cast<unsigned char>(s[i])];
          for (std::size_t k : bucket) {
            const std::string& c = added_[k].content;
            if (s.compare(i, c.size(), c) != 0) continue;
            if (i > start) next.push_back({s.substr(start, i - start), -1});
            next.push_back({s.substr(i, c.size()), added_[k].id});
            start = i + c.size();
            i = start - 1;
            break;
          }
        }
        if (start < s.size()) next.push_back({s.substr(start), -1});
      }
      segs = std::move(next);
    }
    return segs;
  }

  void pre_tokenize(std::string_view text, std::vector<std::string>& pieces) const {
    using detail::bpe::Step;
    if (text.empty()) return;
    pieces.emplace_back(text);
    std::vector<std::string> next;
    for (const Step& st : steps_) {
      next.clear();
      for (std::string& p : pieces) {
        if (st.kind == Step::Kind::Split) {
          detail::bpe::split_piece(p, *st.pattern, st.behavior, st.invert, next);
          continue;
        }
        // ByteLevel: the prefix space goes on each piece that lacks one.
        if (st.add_prefix_space && p[0] != ' ') p.insert(p.begin(), ' ');
        if (st.use_regex)
          detail::bpe::split_piece(p, *st.pattern, detail::bpe::Behavior::Isolated, false, next);
        else
          next.push_back(std::move(p));
      }
      pieces.swap(next);
    }
  }

  // BPE on one pre-tokenized piece (raw bytes), appending its ids.
  void encode_word(const std::string& word, std::vector<int>& out) const {
    const bool cacheable = word.size() <= detail::bpe::WordCache::kMaxWordBytes;
    if (cacheable) {
      std::lock_guard<std::mutex> lock(cache_->mu);
      auto it = cache_->map.find(word);
      if (it != cache_->map.end()) {
        out.insert(out.end(), it->second.begin(), it->second.end());
        return;
      }
    }
    const std::size_t before = out.size();
    merge_word(word, out);
    if (cacheable) {
      std::lock_guard<std::mutex> lock(cache_->mu);
      if (cache_->map.size() >= detail::bpe::WordCache::kMaxEntries) cache_->map.clear();
      cache_->map.emplace(word, std::vector<int>(out.begin() + std::ptrdiff_t(before), out.end()));
    }
  }

  void merge_word(const std::string& word, std::vector<int>& out) const {
    const auto& alpha = detail::bpe::byte_alphabet();
    if (ignore_merges_) {
      std::string mapped;
      for (char c : word) mapped += alpha.utf8[static_cast<unsigned char>(c)];
      auto it = vocab_.find(mapped);
      if (it != vocab_.end()) {
        out.push_back(it->second);
        return;
      }
    }
    // Symbols form a linked list; merged-away symbols are unlinked.
    struct Sym {
      int id, prev, next;
      bool alive;
    };
    std::vector<Sym> sym;
    sym.reserve(word.size());
    bool prev_unk = false;
    for (char c : word) {
      const auto& init = initial_[static_cast<unsigned char>(c)];
      if (init.unk && fuse_unk_ && prev_unk) continue;
      for (int id : init.ids) sym.push_back({id, int(sym.size()) - 1, int(sym.size()) + 1, true});
      if (!init.ids.empty()) prev_unk = init.unk;
    }
    if (sym.empty()) return;
    sym.back().next = -1;

    // Candidate merges ordered by (rank, position): lowest rank first, leftmost on ties.
    struct Cand {
      int rank, pos, new_id;
      bool operator>(const Cand& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
    };
    std::priority_queue<Cand, std::vector<Cand>, std::greater<Cand>> heap;
    const auto push = [&](int left) {
      if (left < 0 || sym[std::size_t(left)].next < 0) return;
      auto it = merges_.find(pair_key(sym[std::size_t(left)].id, sym[std::size_t(sym[std::size_t(left)].next)].id));
      if (it != merges_.end()) heap.push({it->second.first, left, it->second.second});
    };
    for (int i = 0; i + 1 < int(sym.size()); ++i) push(i);
    while (!heap.empty()) {
      const Cand c = heap.top();
      heap.pop();
      Sym& left = sym[std::size_t(c.pos)];
      if (!left.alive || left.next < 0) continue;
      // Stale candidate: one of the two symbols has merged with something else since.
      auto it = merges_.find(pair_key(left.id, sym[std::size_t(left.next)].id));
      if (it == merges_.end() || it->second.second != c.new_id || it->second.first != c.rank) continue;
      Sym& right = sym[std::size_t(left.next)];
      left.id = c.new_id;
      right.alive = false;
      left.next = right.next;
      if (right.next >= 0) sym[std::size_t(right.next)].prev = c.pos;
      push(left.prev);
      push(c.pos);
    }
    for (int i = 0; i >= 0; i = sym[std::size_t(i)].next) out.push_back(sym[std::size_t(i)].id);
  }

  static constexpr int kMaxDepth = 64;
  static constexpr std::int64_t kMaxGap = 1 << 16;

  struct Initial {
    std::vector<int> ids;
    bool unk = false;
  };

  std::unordered_map<std::string, int> vocab_;                   // byte-level spelling -> id
  std::unordered_map<std::uint64_t, std::pair<int, int>> merges_;  // (left, right) -> (rank, id)
  std::vector<detail::bpe::AddedToken> added_;
  std::array<std::array<std::vector<std::size_t>, 256>, 2> by_first_byte_{};  // [normalized]
  std::vector<detail::bpe::Step> steps_;
  std::array<Initial, 256> initial_{};
  std::vector<Entry> entries_;
  std::optional<int> unk_id_, bos_, eos_;
  bool ignore_merges_ = false, byte_fallback_ = false, fuse_unk_ = false;
  std::shared_ptr<detail::bpe::WordCache> cache_;
};

}  // namespace hybrid
