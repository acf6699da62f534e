// UTF-8: the one validity rule (shortest form, no surrogates, at most U+10FFFF), decoding a
// character, encoding a code point, and replacing invalid bytes with U+FFFD.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace hybrid {

// What a byte allows as the first byte of a character: the character's length (0: it
// cannot start one) and the range of the second byte. The narrowed ranges after E0, ED,
// F0 and F4 are what rule out overlong forms, surrogates and code points past U+10FFFF
// (Unicode Table 3-7), so no decoded value needs checking afterwards.
struct Utf8Lead {
  std::uint8_t len = 0;
  std::uint8_t lo = 0x80, hi = 0xBF;
};
constexpr Utf8Lead utf8_lead(unsigned char b) {
  if (b < 0x80) return {1, 0, 0};
  if (b >= 0xC2 && b <= 0xDF) return {2, 0x80, 0xBF};
  if (b == 0xE0) return {3, 0xA0, 0xBF};
  if (b == 0xED) return {3, 0x80, 0x9F};
  if (b >= 0xE1 && b <= 0xEF) return {3, 0x80, 0xBF};
  if (b == 0xF0) return {4, 0x90, 0xBF};
  if (b >= 0xF1 && b <= 0xF3) return {4, 0x80, 0xBF};
  if (b == 0xF4) return {4, 0x80, 0x8F};
  return {};
}

// How many bytes from s[i] on begin a valid character: its full length when it is whole,
// fewer for a truncated or broken one (the "maximal subpart"), 0 when s[i] cannot start one.
inline std::size_t utf8_valid_prefix(std::string_view s, std::size_t i) {
  const Utf8Lead lead = utf8_lead(static_cast<unsigned char>(s[i]));
  if (lead.len <= 1) return lead.len;
  std::size_t k = 1;
  for (; k < lead.len && i + k < s.size(); ++k) {
    const auto c = static_cast<unsigned char>(s[i + k]);
    if (k == 1 ? (c < lead.lo || c > lead.hi) : (c < 0x80 || c > 0xBF)) break;
  }
  return k;
}

// Decodes the character at s[i]: returns its length and sets cp, or returns 0 when the
// bytes there are not a valid character.
inline std::size_t next_utf8(std::string_view s, std::size_t i, std::uint32_t& cp) {
  const std::size_t n = utf8_lead(static_cast<unsigned char>(s[i])).len;
  if (n == 0 || utf8_valid_prefix(s, i) != n) return 0;
  static constexpr std::uint32_t lead_mask[5] = {0, 0x7F, 0x1F, 0x0F, 0x07};
  cp = static_cast<unsigned char>(s[i]) & lead_mask[n];
  for (std::size_t k = 1; k < n; ++k) cp = (cp << 6) | (static_cast<unsigned char>(s[i + k]) & 0x3F);
  return n;
}

inline bool is_valid_utf8(std::string_view s) {
  std::uint32_t cp = 0;
  for (std::size_t i = 0; i < s.size();) {
    const std::size_t n = next_utf8(s, i, cp);
    if (n == 0) return false;
    i += n;
  }
  return true;
}

// Appends the UTF-8 encoding of a code point (the caller passes a valid one).
inline void append_utf8(std::string& out, std::uint32_t cp) {
  if (cp < 0x80) {
    out += char(cp);
  } else if (cp < 0x800) {
    out += char(0xC0 | (cp >> 6));
    out += char(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += char(0xE0 | (cp >> 12));
    out += char(0x80 | ((cp >> 6) & 0x3F));
    out += char(0x80 | (cp & 0x3F));
  } else {
    out += char(0xF0 | (cp >> 18));
    out += char(0x80 | ((cp >> 12) & 0x3F));
    out += char(0x80 | ((cp >> 6) & 0x3F));
    out += char(0x80 | (cp & 0x3F));
  }
}

// `in` with each maximal invalid subpart replaced by U+FFFD, as Python's
// bytes.decode("utf-8", errors="replace") (and so transformers' decode) gives it:
//   "a\xE2\x82b" -> "a\uFFFDb"   (one U+FFFD for the truncated euro sign)
inline std::string utf8_replace(std::string_view in) {
  std::string out;
  for (std::size_t i = 0; i < in.size();) {
    const std::size_t n = utf8_lead(static_cast<unsigned char>(in[i])).len;
    const std::size_t k = utf8_valid_prefix(in, i);
    if (n > 0 && k == n) out.append(in.substr(i, k));
    else out += "\xEF\xBF\xBD";
    i += k > 0 ? k : 1;
  }
  return out;
}

}  // namespace hybrid
