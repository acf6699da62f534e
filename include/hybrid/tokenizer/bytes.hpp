// GPT-2's byte-level alphabet for BPE tokenizers: the printable character that stands for
// each byte, and the bytes a vocabulary token spells (HF's ByteLevel decoder).
#pragma once
#include <array>
#include <cstdint>
#include <string>
#include <string_view>

#include "../core/utf8.hpp"

namespace hybrid::detail::bpe {

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

}  // namespace hybrid::detail::bpe
