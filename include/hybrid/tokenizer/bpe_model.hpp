// The "model" section of a byte-level BPE tokenizer.json: the vocabulary, the merge ranks,
// how each byte enters the merge loop (alphabet, byte fallback, unknown token) and the loop.
#pragma once
#include <array>
#include <cstdint>
#include <functional>
#include <optional>
#include <queue>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "bytes.hpp"
#include "tokenizer_json.hpp"

namespace hybrid::detail::bpe {

// load() reads the section; build_initial() runs once the vocabulary is final; merge_word()
// is const and runs on many threads at once.
struct BpeModel {
  struct Initial {
    std::vector<int> ids;
    bool unk = false;
  };

  std::unordered_map<std::string, int> vocab;                   // byte-level spelling -> id
  std::unordered_map<std::uint64_t, std::pair<int, int>> merges;  // (left, right) -> (rank, id)
  std::array<Initial, 256> initial{};
  std::optional<int> unk_id;
  bool ignore_merges = false, byte_fallback = false, fuse_unk = false;

  static std::uint64_t pair_key(int a, int b) {
    return (std::uint64_t(std::uint32_t(a)) << 32) | std::uint32_t(b);
  }

  void load(const Fields& f, const json& root) {
    const json& model = f.require(root, "model", "");
    if (!model.is_object()) f.fail("model", "expected a JSON object, got ", show(model));
    if (const json* t = f.find(model, "type", "model")) {
      const std::string type = f.string(*t, "model.type");
      if (type != "BPE")
        f.fail("model.type", show(type), " is not supported (expected \"BPE\")");
    }
    if (const json* d = f.find(model, "dropout", "model")) {
      if (!d->is_number() || d->get<double>() != 0.0)
        f.fail("model.dropout", show(*d), " is not supported (expected null: "
               "BPE dropout is for training)");
    }
    for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
      if (const json* v = f.find(model, key, "model"))
        if (!(v->is_string() && v->get<std::string>().empty()))
          f.fail(Fields::join("model", key), show(*v),
                 " is not supported (expected null: byte-level BPE has no word markers)");
    }
    ignore_merges = f.boolean(model, "ignore_merges", "model", false);
    byte_fallback = f.boolean(model, "byte_fallback", "model", false);
    fuse_unk = f.boolean(model, "fuse_unk", "model", false);

    const json& jvocab = f.require(model, "vocab", "model");
    if (!jvocab.is_object())
      f.fail("model.vocab", "expected an object of token -> id, got ", show(jvocab));
    vocab.reserve(jvocab.size());
    for (auto it = jvocab.begin(); it != jvocab.end(); ++it) {
      // The path is only spelled out for an error: vocabularies run to 200k entries.
      const json& v = it.value();
      const int id = Fields::is_id(v) ? int(v.get<std::int64_t>())
                                      : f.id(v, "model.vocab[" + show(it.key()) + "]");
      vocab.emplace(it.key(), id);
    }

    if (const json* u = f.find(model, "unk_token", "model")) {
      const std::string unk = f.string(*u, "model.unk_token");
      auto it = vocab.find(unk);
      if (it == vocab.end())
        f.fail("model.unk_token", show(unk), " is not in model.vocab");
      unk_id = it->second;
    }

    if (const json* jmerges = f.find(model, "merges", "model")) {
      if (!jmerges->is_array())
        f.fail("model.merges", "expected an array of merges, got ", show(*jmerges));
      merges.reserve(jmerges->size());
      for (std::size_t i = 0; i < jmerges->size(); ++i) {
        const auto path = [i] { return Fields::at("model.merges", i); };
        const json& m = (*jmerges)[i];
        std::string a, b;
        if (m.is_string()) {
          // Legacy form "a b": byte-level tokens never hold a space, so one space splits.
          const std::string s = m.get<std::string>();
          const std::size_t sp = s.find(' ');
          if (sp == std::string::npos || s.find(' ', sp + 1) != std::string::npos)
            f.fail(path(), show(s), " is not a merge (expected \"left right\": two "
                   "tokens and one space)");
          a = s.substr(0, sp);
          b = s.substr(sp + 1);
        } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {
          a = m[0].get<std::string>();
          b = m[1].get<std::string>();
        } else {
          f.fail(path(), show(m), " is not a merge (expected \"left right\" or "
                 "[\"left\", \"right\"])");
        }
        const int ia = vocab_id(f, i, a), ib = vocab_id(f, i, b), inew = vocab_id(f, i, a + b);
        // A pair listed twice keeps its last rank, as HF's map does.
        merges[pair_key(ia, ib)] = {int(i), inew};
      }
    }
  }

  int vocab_id(const Fields& f, std::size_t merge, const std::string& token) const {
    auto it = vocab.find(token);
    if (it == vocab.end())
      f.fail(Fields::at("model.merges", merge), "token ", show(token), " is not in model.vocab (expected "
             "merges of vocabulary tokens whose concatenation is also in the vocabulary)");
    return it->second;
  }

  // How each byte enters the merge loop: its alphabet character's id, else (HF order)
  // byte-fallback tokens <0xNN> for the character's UTF-8, else the unknown token, else
  // nothing (HF drops it).
  void build_initial() {
    const auto& alpha = byte_alphabet();
    for (int b = 0; b < 256; ++b) {
      auto& init = initial[std::size_t(b)];
      init.unk = false;
      auto it = vocab.find(alpha.utf8[std::size_t(b)]);
      if (it != vocab.end()) {
        init.ids = {it->second};
        continue;
      }
      if (byte_fallback) {
        std::vector<int> ids;
        for (char c : alpha.utf8[std::size_t(b)]) {
          static const char* hex = "0123456789ABCDEF";
          const auto u = static_cast<unsigned char>(c);
          const std::string name = std::string("<0x") + hex[u >> 4] + hex[u & 15] + ">";
          auto jt = vocab.find(name);
          if (jt == vocab.end()) break;
          ids.push_back(jt->second);
        }
        if (ids.size() == alpha.utf8[std::size_t(b)].size()) {
          init.ids = std::move(ids);
          continue;
        }
      }
      if (unk_id) {
        init.ids = {*unk_id};
        init.unk = true;
      }
    }
  }

  // BPE on one pre-tokenized piece (raw bytes), appending its ids.
  void merge_word(const std::string& word, std::vector<int>& out) const {
    const auto& alpha = byte_alphabet();
    if (ignore_merges) {
      std::string mapped;
      for (char c : word) mapped += alpha.utf8[static_cast<unsigned char>(c)];
      auto it = vocab.find(mapped);
      if (it != vocab.end()) {
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
      const auto& init = initial[static_cast<unsigned char>(c)];
      if (init.unk && fuse_unk && prev_unk) continue;
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
      auto it = merges.find(pair_key(sym[std::size_t(left)].id, sym[std::size_t(sym[std::size_t(left)].next)].id));
      if (it != merges.end()) heap.push({it->second.first, left, it->second.second});
    };
    for (int i = 0; i + 1 < int(sym.size()); ++i) push(i);
    while (!heap.empty()) {
      const Cand c = heap.top();
      heap.pop();
      Sym& left = sym[std::size_t(c.pos)];
      if (!left.alive || left.next < 0) continue;
      // Stale candidate: one of the two symbols has merged with something else since.
      auto it = merges.find(pair_key(left.id, sym[std::size_t(left.next)].id));
      if (it == merges.end() || it->second.second != c.new_id || it->second.first != c.rank) continue;
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
};

}  // namespace hybrid::detail::bpe
