// Dense packing of k-bit signed values (QTensor::q, 2 <= k <= 8) into bytes and back: the
// stored form of a quantised tensor before compression.
//
// Format: value i is a k-bit two's complement field at bits [i*k, (i+1)*k) of the stream,
// and stream bit j is bit (j % 8) of byte j / 8 (least significant bit first, as DEFLATE
// and GGUF's sub-byte quants order bits). A field may straddle two bytes; the stream is
// ceil(n*k / 8) bytes and the unused high bits of the last byte are zero. Example, k = 3:
//
//   values {1, -1, 2}: fields 001, 111, 010 -> bits (from bit 0) 100 111 010 -> {0xB9, 0x00}
//
// Any k-bit two's complement value packs, [-2^(k-1), 2^(k-1) - 1]; a QTensor uses only the
// symmetric part [-qmax, qmax], and QTensor::check rejects the rest after unpacking.
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

#include "../core/error.hpp"

namespace hybrid::quant {

// Bytes of n packed k-bit values: ceil(n * bits / 8).
inline std::size_t packed_size(std::size_t n, int bits) { return (n * std::size_t(bits) + 7) / 8; }

namespace detail {
inline void check_pack_bits(const char* what, int bits) {
  HYBRID_CHECK(bits >= 2 && bits <= 8, what, ": width of ", bits, " bits; expected 2 to 8");
}
}  // namespace detail

// q[0, n) packed as above. Throws naming the index of a value that does not fit in `bits`.
inline std::vector<std::uint8_t> pack_bits(const std::int8_t* q, std::size_t n, int bits) {
  detail::check_pack_bits("pack_bits", bits);
  const int lo = -(1 << (bits - 1)), hi = (1 << (bits - 1)) - 1;
  const std::uint32_t mask = (1u << bits) - 1;
  std::vector<std::uint8_t> out(packed_size(n, bits));
  std::uint32_t acc = 0;  // pending bits, fewer than 8 between values
  int nacc = 0;
  std::size_t o = 0;
  for (std::size_t i = 0; i < n; ++i) {
    const int v = q[i];
    HYBRID_CHECK(v >= lo && v <= hi, "pack_bits: value ", v, " at index ", i, " does not fit in ", bits,
                 " bits; expected ", lo, " to ", hi);
    acc |= (std::uint32_t(v) & mask) << nacc;
    nacc += bits;
    while (nacc >= 8) {
      out[o++] = std::uint8_t(acc);
      acc >>= 8;
      nacc -= 8;
    }
  }
  if (nacc > 0) out[o++] = std::uint8_t(acc);
  return out;
}

// bytes[0, nbytes) unpacked into out[0, n), sign-extended. Throws unless nbytes is
// ceil(n * bits / 8) or if the padding bits of the last byte are not zero (a stream that
// pack_bits did not write, or one read with the wrong width).
inline void unpack_bits(const std::uint8_t* bytes, std::size_t nbytes, std::size_t n, int bits,
                        std::int8_t* out) {
  detail::check_pack_bits("unpack_bits", bits);
  const std::size_t want = packed_size(n, bits);
  HYBRID_CHECK(nbytes == want, "unpack_bits: ", nbytes, " bytes for ", n, " values of ", bits,
               " bits; expected ceil(", n, " * ", bits, " / 8) = ", want, " bytes");
  const std::uint32_t mask = (1u << bits) - 1, sign = 1u << (bits - 1);
  std::uint32_t acc = 0;
  int nacc = 0;
  std::size_t b = 0;
  for (std::size_t i = 0; i < n; ++i) {
    while (nacc < bits) {
      acc |= std::uint32_t(bytes[b++]) << nacc;
      nacc += 8;
    }
    const std::uint32_t f = acc & mask;
    acc >>= bits;
    nacc -= bits;
    out[i] = std::int8_t(int(f) - int((f & sign) << 1));  // two's complement sign extension
  }
  HYBRID_CHECK(acc == 0, "unpack_bits: the ", nacc, " padding bits of the last byte (byte ", nbytes - 1,
               ", value ", int(bytes[nbytes - 1]), ") are not zero; expected a stream written by pack_bits with ",
               bits, "-bit values");
}

}  // namespace hybrid::quant
