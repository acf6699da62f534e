// The pre-tokenizer of a byte-level BPE tokenizer.json: Split (Regex or String, each split
// behavior, invert), Digits and ByteLevel steps, with the regexes on PCRE2.
#pragma once
#ifndef PCRE2_CODE_UNIT_WIDTH
#define PCRE2_CODE_UNIT_WIDTH 8
#endif
#if PCRE2_CODE_UNIT_WIDTH != 8
#error "hybrid/tokenizer/pre_tokenizer.hpp needs the 8-bit PCRE2 library (PCRE2_CODE_UNIT_WIDTH 8)"
#endif
#include <pcre2.h>

#include <algorithm>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "tokenizer_json.hpp"

namespace hybrid::detail::bpe {

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

// The steps of a tokenizer.json's pre_tokenizer, read and run. ByteLevel is always last.
struct PreTokenizer {
  std::vector<Step> steps;

  void load(const Fields& f, const json& root) {
    const json* p = f.find(root, "pre_tokenizer", "");
    if (!p)
      f.fail("pre_tokenizer", "missing (expected ByteLevel, or a Sequence ending with "
             "ByteLevel: this reader handles byte-level BPE)");
    add_step(f, *p, "pre_tokenizer", 0);
    if (steps.empty() || steps.back().kind != Step::Kind::ByteLevel)
      f.fail("pre_tokenizer", "no ByteLevel step (expected ByteLevel as the last step: this "
             "reader handles byte-level BPE)");
  }

  void add_step(const Fields& f, const json& p, const std::string& path, int depth) {
    if (!p.is_object()) f.fail(path, "expected an object, got ", show(p));
    if (!steps.empty() && steps.back().kind == Step::Kind::ByteLevel)
      f.fail(path, "a step after ByteLevel is not supported (expected ByteLevel last)");
    const std::string type = f.string(f.require(p, "type", path), path + ".type");
    if (type == "Sequence") {
      if (depth > 4) f.fail(path, "Sequence nested too deeply (expected at most 4 levels)");
      const json& list = f.require(p, "pretokenizers", path);
      if (!list.is_array())
        f.fail(path + ".pretokenizers", "expected an array, got ", show(list));
      for (std::size_t i = 0; i < list.size(); ++i)
        add_step(f, list[i], Fields::at(path + ".pretokenizers", i), depth + 1);
    } else if (type == "Split") {
      Step s;
      auto pat = std::make_shared<Pattern>();
      const json& pattern = f.require(p, "pattern", path);
      const std::string ppath = path + ".pattern";
      if (const json* r = f.find(pattern, "Regex", ppath)) {
        pat->regex.emplace(f.string(*r, ppath + ".Regex"), f, ppath + ".Regex");
      } else if (const json* s2 = f.find(pattern, "String", ppath)) {
        pat->literal = f.string(*s2, ppath + ".String");
        if (pat->literal.empty()) f.fail(ppath + ".String", "expected a non-empty string");
      } else {
        f.fail(ppath, "expected {\"Regex\": ...} or {\"String\": ...}, got ", show(pattern));
      }
      s.pattern = std::move(pat);
      const std::string b = f.string(f.require(p, "behavior", path), path + ".behavior");
      if (b == "Removed") s.behavior = Behavior::Removed;
      else if (b == "Isolated") s.behavior = Behavior::Isolated;
      else if (b == "MergedWithPrevious") s.behavior = Behavior::MergedWithPrevious;
      else if (b == "MergedWithNext") s.behavior = Behavior::MergedWithNext;
      else if (b == "Contiguous") s.behavior = Behavior::Contiguous;
      else
        f.fail(path + ".behavior", show(b), " is not a split behavior (expected "
               "Removed, Isolated, MergedWithPrevious, MergedWithNext or Contiguous)");
      s.invert = f.boolean(p, "invert", path, false);
      steps.push_back(std::move(s));
    } else if (type == "Digits") {
      // HF: digits (Unicode N) alone, or runs of them, become their own pieces.
      Step s;
      auto pat = std::make_shared<Pattern>();
      pat->regex.emplace(R"(\p{N})", f, path);
      s.pattern = std::move(pat);
      s.behavior = f.boolean(p, "individual_digits", path, false) ? Behavior::Isolated
                                                                   : Behavior::Contiguous;
      steps.push_back(std::move(s));
    } else if (type == "ByteLevel") {
      Step s;
      s.kind = Step::Kind::ByteLevel;
      s.add_prefix_space = f.boolean(p, "add_prefix_space", path, true);
      s.use_regex = f.boolean(p, "use_regex", path, true);
      if (s.use_regex) {
        auto pat = std::make_shared<Pattern>();
        pat->regex.emplace(kGpt2Pattern, f, path + " (GPT-2 regex)");
        s.pattern = std::move(pat);
      }
      steps.push_back(std::move(s));
    } else {
      f.fail(path + ".type", show(type), " is not supported (expected Sequence, "
             "Split, Digits or ByteLevel)");
    }
  }

  // Cuts text into the pieces BPE merges within.
  void run(std::string_view text, std::vector<std::string>& pieces) const {
    if (text.empty()) return;
    pieces.emplace_back(text);
    std::vector<std::string> next;
    for (const Step& st : steps) {
      next.clear();
      for (std::string& p : pieces) {
        if (st.kind == Step::Kind::Split) {
          split_piece(p, *st.pattern, st.behavior, st.invert, next);
          continue;
        }
        // ByteLevel: the prefix space goes on each piece that lacks one.
        if (st.add_prefix_space && p[0] != ' ') p.insert(p.begin(), ' ');
        if (st.use_regex)
          split_piece(p, *st.pattern, Behavior::Isolated, false, next);
        else
          next.push_back(std::move(p));
      }
      pieces.swap(next);
    }
  }
};

}  // namespace hybrid::detail::bpe
