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
//
// The pieces: bytes.hpp (GPT-2's byte alphabet), tokenizer_json.hpp (checked field access),
// pre_tokenizer.hpp (the pre_tokenizer steps on PCRE2), bpe_model.hpp (vocabulary, merges,
// the merge loop); this file holds the tokenizer that joins them with the added tokens.
#pragma once
#include <algorithm>
#include <array>
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "../core/file.hpp"
#include "../core/json.hpp"
#include "../infer/tokenizer.hpp"
#include "bpe_model.hpp"
#include "bytes.hpp"
#include "pre_tokenizer.hpp"
#include "tokenizer_json.hpp"

namespace hybrid {

namespace detail::bpe {

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
      pre_.run(seg.text, pieces);
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
    auto it = model_.vocab.find(std::string(token));
    if (it == model_.vocab.end()) return std::nullopt;
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

    model_.load(f, root);
    load_added_tokens(f, root);
    check_normalizer(f, root);
    pre_.load(f, root);
    check_decoder(f, root);
    build_entries(f);
    find_bos_eos(f, root);
    cache_ = std::make_shared<detail::bpe::WordCache>();
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
    for (const auto& [tok, id] : model_.vocab) max_id = std::max<std::int64_t>(max_id, id);
    for (const auto& a : added_) max_id = std::max<std::int64_t>(max_id, a.id);
    if (max_id < 0) f.fail("model.vocab", "empty (expected at least one token)");
    // Ids should be dense; a stray huge id would otherwise cost memory for nothing.
    const std::int64_t n_named = std::int64_t(model_.vocab.size() + added_.size());
    if (max_id >= n_named + kMaxGap)
      f.fail("model.vocab", "token id ", max_id, " leaves more than ", kMaxGap, " unused ids "
             "(expected ids close to 0..", n_named - 1, ")");
    entries_.assign(std::size_t(max_id + 1), Entry{});
    std::vector<const std::string*> owner(entries_.size(), nullptr);
    for (const auto& [tok, id] : model_.vocab) {
      if (owner[std::size_t(id)])
        f.fail("model.vocab", "id ", id, " is given to both ", detail::bpe::show(*owner[std::size_t(id)]),
               " and ", detail::bpe::show(tok), " (expected one token per id)");
      owner[std::size_t(id)] = &tok;
      entries_[std::size_t(id)] = {Kind::Vocab, detail::bpe::byte_level_decode(tok)};
    }
    for (const auto& a : added_)
      entries_[std::size_t(a.id)] = {a.special ? Kind::Special : Kind::Added, a.content};

    model_.build_initial();
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
    model_.merge_word(word, out);
    if (cacheable) {
      std::lock_guard<std::mutex> lock(cache_->mu);
      if (cache_->map.size() >= detail::bpe::WordCache::kMaxEntries) cache_->map.clear();
      cache_->map.emplace(word, std::vector<int>(out.begin() + std::ptrdiff_t(before), out.end()));
    }
  }

  static constexpr int kMaxDepth = 64;
  static constexpr std::int64_t kMaxGap = 1 << 16;

  detail::bpe::BpeModel model_;
  detail::bpe::PreTokenizer pre_;
  std::vector<detail::bpe::AddedToken> added_;
  std::array<std::array<std::vector<std::size_t>, 256>, 2> by_first_byte_{};  // [normalized]
  std::vector<Entry> entries_;
  std::optional<int> bos_, eos_;
  std::shared_ptr<detail::bpe::WordCache> cache_;
};

}  // namespace hybrid
