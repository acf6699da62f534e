// The few fields of SentencePiece's ModelProto that a GGUF "llama" vocabulary carries (pieces,
// scores, types, the model type and the normalizer flags), read and written in the protobuf
// wire format: the installed libsentencepiece ships no protobuf headers. Used by
// gguf/tokenizer.hpp.
#pragma once
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>
#include <vector>

#include "../core/error.hpp"

namespace hybrid::gguf::tok_detail {

// ----- protobuf wire format: the ModelProto fields SentencePiece needs ---------------------
// ModelProto { repeated SentencePiece pieces = 1 {piece 1, score 2, type 3};
//              TrainerSpec trainer_spec = 2; NormalizerSpec normalizer_spec = 3; ... }
struct PbWriter {
  std::string out;
  void varint(std::uint64_t v) {
    for (; v >= 0x80; v >>= 7) out += char(std::uint8_t(v) | 0x80);
    out += char(std::uint8_t(v));
  }
  void tag(int field, int wire) { varint(std::uint64_t(field) << 3 | std::uint64_t(wire)); }
  void integer(int field, std::int64_t v) {  // int32 / enum / bool: negative as 10-byte varint
    tag(field, 0);
    varint(std::uint64_t(v));
  }
  void f32(int field, float v) {
    tag(field, 5);
    char b[4];
    std::memcpy(b, &v, 4);
    out.append(b, 4);
  }
  void bytes(int field, std::string_view s) {
    tag(field, 2);
    varint(s.size());
    out.append(s.data(), s.size());
  }
};

struct PbReader {
  std::string_view s;
  const std::string* where;
  std::size_t at = 0;

  [[noreturn]] void bad(const char* what) const {
    fail(*where, ": the ModelProto is malformed (", what, " at byte ", at, ")");
  }
  std::uint64_t varint() {
    std::uint64_t v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      if (at >= s.size()) bad("truncated varint");
      const auto c = std::uint8_t(s[at++]);
      v |= std::uint64_t(c & 0x7F) << shift;
      if (c < 0x80) return v;
    }
    bad("varint longer than 10 bytes");
  }
  // Next field of the message: false at its end.
  bool next(int& field, int& wire) {
    if (at >= s.size()) return false;
    const std::uint64_t k = varint();
    field = int(k >> 3);
    wire = int(k & 7);
    return true;
  }
  std::string_view bytes() {
    const std::uint64_t n = varint();
    if (n > s.size() - at) bad("length past the end");
    const std::string_view v = s.substr(at, std::size_t(n));
    at += std::size_t(n);
    return v;
  }
  float f32() {
    if (s.size() - at < 4) bad("truncated float");
    float v;
    std::memcpy(&v, s.data() + at, 4);
    at += 4;
    return v;
  }
  void skip(int wire) {
    if (wire == 0) varint();
    else if (wire == 1 && s.size() - at >= 8) at += 8;
    else if (wire == 2) bytes();
    else if (wire == 5 && s.size() - at >= 4) at += 4;
    else bad("unknown or truncated field");
  }
};

struct SpPiece {
  std::string piece;
  float score = 0;
  int type = 1;  // NORMAL
};

// What export reads from a .model beyond libsentencepiece's API (it has no IsUserDefined and
// does not expose the specs without the protobuf headers).
struct SpModel {
  std::vector<SpPiece> pieces;
  int model_type = 1;  // UNIGRAM (proto default)
  bool treat_whitespace_as_suffix = false;
  std::string normalizer = "(unset)";
  std::size_t charsmap_bytes = 0;
  bool add_dummy_prefix = true, remove_extra_whitespaces = true, escape_whitespaces = true;
  std::size_t denormalizer_charsmap_bytes = 0;
};

inline SpModel read_spm(std::string_view bytes, const std::string& where) {
  SpModel m;
  PbReader top{bytes, &where};
  int field = 0, wire = 0;
  const auto sub = [&](std::string_view b) { return PbReader{b, &where}; };
  while (top.next(field, wire)) {
    if (wire != 2) {
      top.skip(wire);
      continue;
    }
    PbReader r = sub(top.bytes());
    int f = 0, w = 0;
    if (field == 1) {
      SpPiece p;
      while (r.next(f, w)) {
        if (f == 1 && w == 2) p.piece = std::string(r.bytes());
        else if (f == 2 && w == 5) p.score = r.f32();
        else if (f == 3 && w == 0) p.type = int(r.varint());
        else r.skip(w);
      }
      m.pieces.push_back(std::move(p));
    } else if (field == 2) {
      while (r.next(f, w)) {
        if (f == 3 && w == 0) m.model_type = int(r.varint());
        else if (f == 24 && w == 0) m.treat_whitespace_as_suffix = r.varint() != 0;
        else r.skip(w);
      }
    } else if (field == 3 || field == 5) {
      std::size_t charsmap = 0;
      while (r.next(f, w)) {
        if (f == 2 && w == 2) charsmap = r.bytes().size();
        else if (field == 5) r.skip(w);
        else if (f == 1 && w == 2) m.normalizer = std::string(r.bytes());
        else if (f == 3 && w == 0) m.add_dummy_prefix = r.varint() != 0;
        else if (f == 4 && w == 0) m.remove_extra_whitespaces = r.varint() != 0;
        else if (f == 5 && w == 0) m.escape_whitespaces = r.varint() != 0;
        else r.skip(w);
      }
      (field == 3 ? m.charsmap_bytes : m.denormalizer_charsmap_bytes) = charsmap;
    }
  }
  return m;
}

inline const char* sp_model_type_name(int t) {
  switch (t) {
    case 1: return "UNIGRAM";
    case 2: return "BPE";
    case 3: return "WORD";
    case 4: return "CHAR";
  }
  return "unknown";
}

}  // namespace hybrid::gguf::tok_detail
