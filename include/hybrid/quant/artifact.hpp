// Quantised model artifacts: one versioned, checksummed file holding a model description, a
// quantisation policy and named tensors (QTensor values + scales, or small float tensors),
// with every stream of bytes compressed by whichever of xz, zstd and brotli (or none) makes
// the file smallest: the "compressed model" of REFERENCE.md §6's 16,000,000-byte budget.
//
// Layout (all integers little-endian):
//   [0, 4)          magic "HYBQ"
//   [4, 8)          u32 format version, 1
//   [8, 16)         u64 N, the header length
//   [16, 16 + N)    JSON header (below)
//   [16 + N, +8)    u64 lzma_crc64 (CRC-64/XZ, ECMA-182) of bytes [0, 16 + N)
//   [24 + N, end)   the streams' stored bytes, back to back in header order
// Header:
//   {"desc":   {...ModelDesc as io/desc_json.hpp writes it...},
//    "policy": {...the caller's JSON object, free-form...},
//    "streams": [{"name": "q6", "type": "i8", "bits": 6, "codec": "lzma", "shuffle": "none",
//                 "offset": 0, "size": 8021, "raw_size": 24576,
//                 "crc64": "<16 hex digits, stored bytes>", "raw_crc64": "<..., raw bytes>"},
//                {"name": "scale_f16", "type": "f16", "codec": "zstd", "shuffle": "byteplane", ...}],
//    "tensors": [{"name": "blocks.0.mixer.in_proj.weight", "kind": "q", "shape": [96, 32],
//                 "bits": 6, "group": 32, "scale_type": "f16",
//                 "q": {"stream": 0, "offset": 0}, "scales": {"stream": 1, "offset": 0}},
//                {"name": "norm_f.weight", "kind": "float", "shape": [32], "type": "f16",
//                 "data": {"stream": 2, "offset": 0}}]}
// Streams. A stream is the concatenation, in tensor order, of one kind of bytes: "q<bits>"
// the int8 values of every QTensor of that width (one byte per value, no bit packing: the
// compressors remove the slack, and the bit-plane shuffle below is the packed form),
// "scale_f16" / "scale_f32" the scales, "f16" / "f32" the float tensors. A tensor's
// ArtifactTensor::stream prefix (e.g. "embed") puts its bytes in "embed.q8",
// "embed.scale_f16" instead, so callers can group by role. Byte counts follow from the
// shapes: q rows*cols, scales rows*(cols/group)*2 (or 4), floats numel*2 (or 4).
// The raw bytes of a stream may be shuffled before compression: "bitplane" for i8 streams
// (each value zigzag-mapped, 0 -1 1 -2 ... -> 0 1 2 3 ..., then bit b of every value in
// plane b, 8 values per byte LSB first, each plane padded to a byte with zero bits: bits *
// ceil(n / 8) bytes), "byteplane" for f16/f32 (byte j of every element in plane j). The
// writer compresses each stream with every codec asked for (xz preset 9e, zstd level 22,
// brotli quality 11, or raw), with and without the shuffle, and keeps the smallest; it also
// compares the whole file against each codec used alone, so the automatic choice is never
// larger than any single codec.
//
// fp16: scales and float values stored as f16 are rounded to nearest, ties to even
// (core/dtype.hpp f32_to_f16); the reader returns exactly that f16 value as a float, so a
// round trip returns as_stored(artifact). Values must be finite, and finite in f16 (|x| <=
// 65504; store a tensor as f32 otherwise).
//
// The reader checks, before decompressing anything, the magic, the version, the header length
// against the file size, the header checksum, every header field's type and range (bits 2..8,
// groups dividing cols, names unique), that each stream's tensors tile its raw bytes exactly
// and the streams tile the rest of the file exactly, and that the values the tensors hold
// stay under artifact_value_cap(desc) (a bound on what a model of that description stores).
// Then, stream by stream: the stored bytes' checksum, decompression into at most the expected
// size (the output buffer grows as the decoder produces bytes, never past expected + 1, so a
// decompression bomb costs no more memory than an honest stream), the raw bytes' checksum,
// and every value (q in range, no NaN or infinite scale or float). Every error is a
// hybrid::Error that begins "quantised artifact '<file>': " and names the field, stream or
// tensor at fault.
//
//   Artifact a{desc, {{"bits", {{"matrix", 6}, {"embed", 8}}}}, {}};
//   a.tensors.push_back(ArtifactTensor::quantized("blocks.0.mixer.in_proj.weight", qt));
//   a.tensors.push_back(ArtifactTensor::floats("norm_f.weight", {512}, norm));
//   ArtifactReport rep = write_artifact("model.hybq", a);   std::puts(format_report(rep).c_str());
//   Artifact b = read_artifact("model.hybq");              // bit_equal(b, as_stored(a))
#pragma once
#include <brotli/decode.h>
#include <brotli/encode.h>
#include <lzma.h>
#include <zstd.h>
#include <zstd_errors.h>

#include <algorithm>
#include <atomic>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <exception>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include "../core/atomic_file.hpp"
#include "../core/dtype.hpp"
#include "../core/error.hpp"
#include "../core/file.hpp"
#include "../core/json.hpp"
#include "../io/desc_json.hpp"
#include "../io/safetensors.hpp"  // st_detail::parse_json_checked: duplicate keys, depth, NUL
#include "qtensor.hpp"

namespace hybrid::quant {

static_assert(std::endian::native == std::endian::little,
              "artifact.hpp: the reader and writer assume a little-endian host");

inline constexpr std::uint32_t artifact_version = 1;
inline constexpr std::string_view artifact_magic = "HYBQ";
// A header longer than this is taken for a corrupt length field: a tensor entry is ~200
// bytes, so even 10^5 tensors stay far below it.
inline constexpr std::uint64_t artifact_max_header = std::uint64_t(64) << 20;
inline constexpr int artifact_max_depth = 32;  // JSON nesting; the header itself needs 5
// Default bound on the raw (decompressed) bytes of all streams together (64 GiB).
inline constexpr std::uint64_t artifact_max_raw = std::uint64_t(1) << 36;
inline constexpr int artifact_max_rank = 8;  // float tensors
// REFERENCE.md §6: code bytes + compressed model <= this.
inline constexpr std::uint64_t artifact_golf_limit = 16'000'000;

enum class Codec : std::uint8_t { Raw, Lzma, Zstd, Brotli };
enum class Shuffle : std::uint8_t { None, BitPlane, BytePlane };
// Try: compress with and without the stream's shuffle, keep the smaller; Off / On: only one.
enum class ShuffleMode : std::uint8_t { Try, Off, On };

inline const char* codec_name(Codec c) {
  switch (c) {
    case Codec::Raw:
      return "raw";
    case Codec::Lzma:
      return "lzma";
    case Codec::Zstd:
      return "zstd";
    case Codec::Brotli:
      return "brotli";
  }
  return "?";
}
inline const char* shuffle_name(Shuffle s) {
  return s == Shuffle::None ? "none" : s == Shuffle::BitPlane ? "bitplane" : "byteplane";
}

// One named tensor: a QTensor (kind Quantized; `shape` unused, the reader leaves it empty) or
// float values (kind Float; `q` unused) of any rank up to 8, [] being a scalar.
struct ArtifactTensor {
  enum class Kind : std::uint8_t { Quantized, Float };
  std::string name;
  Kind kind = Kind::Float;
  QTensor q;                      // Quantized
  DType scale_type = DType::F16;  // Quantized: F16 or F32 storage of q.scales
  std::vector<Index> shape;       // Float
  std::vector<float> values;      // Float: product(shape) values, row-major
  DType dtype = DType::F16;       // Float: F16 or F32 storage
  std::string stream;             // optional stream prefix ("" = streams by type only)

  static ArtifactTensor quantized(std::string name, QTensor q, DType scale_type = DType::F16,
                                  std::string stream = {}) {
    ArtifactTensor t;
    t.name = std::move(name), t.kind = Kind::Quantized, t.q = std::move(q);
    t.scale_type = scale_type, t.stream = std::move(stream);
    return t;
  }
  static ArtifactTensor floats(std::string name, std::vector<Index> shape, std::vector<float> values,
                               DType dtype = DType::F16, std::string stream = {}) {
    ArtifactTensor t;
    t.name = std::move(name), t.kind = Kind::Float, t.shape = std::move(shape);
    t.values = std::move(values), t.dtype = dtype, t.stream = std::move(stream);
    return t;
  }
};

struct Artifact {
  ModelDesc desc;
  nlohmann::json policy = nlohmann::json::object();  // any JSON object (null is written as {})
  std::vector<ArtifactTensor> tensors;
};

struct ArtifactOptions {
  std::vector<Codec> codecs = {Codec::Raw, Codec::Lzma, Codec::Zstd, Codec::Brotli};
  ShuffleMode shuffle = ShuffleMode::Try;
  int lzma_preset = 9;      // 0..9, always with LZMA_PRESET_EXTREME ("9e")
  int zstd_level = 22;      // 1..22
  int brotli_quality = 11;  // 0..11
  int threads = 0;          // candidates compressed at once; 0: the hardware's, at most 8
};

struct ArtifactReadOptions {
  // Off only to fuzz the parsing behind the checksums: every other check still runs.
  bool verify_checksums = true;
  std::uint64_t max_raw_bytes = artifact_max_raw;  // all streams' raw bytes together
};

// Sizes for a CLI table (format_report). `tried` is filled by the writer only: the stored
// size of every (codec, shuffle) it compressed the stream with.
struct ArtifactCandidate {
  Codec codec = Codec::Raw;
  Shuffle shuffle = Shuffle::None;
  std::uint64_t bytes = 0;
};
struct ArtifactStreamReport {
  std::string name, type;  // type: "i8" (with bits), "f16", "f32"
  int bits = 0;
  int tensors = 0;
  std::uint64_t raw_bytes = 0, stored_bytes = 0;
  Codec codec = Codec::Raw;
  Shuffle shuffle = Shuffle::None;
  std::vector<ArtifactCandidate> tried;
};
struct ArtifactReport {
  std::uint64_t total_bytes = 0, header_bytes = 0;  // header: preamble + JSON + checksum
  std::vector<ArtifactStreamReport> streams;
};

namespace artifact_detail {

using json = nlohmann::json;

// ---- element types of a stream -----------------------------------------------------------

enum class Elem : std::uint8_t { I8, F16, F32 };
inline const char* elem_name(Elem e) { return e == Elem::I8 ? "i8" : e == Elem::F16 ? "f16" : "f32"; }
inline std::size_t elem_size(Elem e) { return e == Elem::I8 ? 1 : e == Elem::F16 ? 2 : 4; }
inline Elem float_elem(DType d) { return d == DType::F32 ? Elem::F32 : Elem::F16; }
inline Shuffle shuffle_of(Elem e) { return e == Elem::I8 ? Shuffle::BitPlane : Shuffle::BytePlane; }

// The stream name for a part: "<prefix>.<suffix>" or "<suffix>"; suffix q<bits>,
// scale_f16, scale_f32, f16, f32.
inline std::string suffix_q(int bits) { return std::string(1, 'q').append(std::to_string(bits)); }
inline std::string suffix_scale(Elem e) { return std::string("scale_") + elem_name(e); }
inline std::string suffix_float(Elem e) { return elem_name(e); }
inline std::string stream_name(const std::string& prefix, const std::string& suffix) {
  return prefix.empty() ? suffix : prefix + "." + suffix;
}

// ---- little helpers ------------------------------------------------------------------------

inline std::uint64_t crc64(const void* p, std::size_t n) {
  return lzma_crc64(static_cast<const std::uint8_t*>(p), n, 0);
}
inline std::string hex16(std::uint64_t v) {
  static const char* d = "0123456789abcdef";
  std::string s(16, '0');
  for (int i = 15; i >= 0; --i, v >>= 4) s[std::size_t(i)] = d[v & 15];
  return s;
}
inline std::optional<std::uint64_t> parse_hex16(const std::string& s) {
  if (s.size() != 16) return std::nullopt;
  std::uint64_t v = 0;
  for (char c : s) {
    const int x = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
    if (x < 0) return std::nullopt;
    v = v << 4 | std::uint64_t(x);
  }
  return v;
}
inline void put_u16(std::string& s, std::uint16_t v) { s.append(reinterpret_cast<const char*>(&v), 2); }
inline void put_u32(std::string& s, std::uint32_t v) { s.append(reinterpret_cast<const char*>(&v), 4); }
inline void put_u64(std::string& s, std::uint64_t v) { s.append(reinterpret_cast<const char*>(&v), 8); }
template <class T>
T get_le(const unsigned char* p) {
  T v;
  std::memcpy(&v, p, sizeof(T));
  return v;
}
inline bool f16_finite(std::uint16_t h) { return (h & 0x7c00u) != 0x7c00u; }
inline int ceil_log2(std::uint64_t n) { return n <= 1 ? 0 : 64 - std::countl_zero(n - 1); }

// A loose upper bound on param_count(desc), in double: param_count's int products can overflow
// for a hostile (validated but enormous) description. For every sane desc it equals
// param_count (tests/test_artifact.cpp pins that, so the two cannot drift apart).
inline double param_bound(const ModelDesc& d) {
  const double D = d.model.d_model;
  auto norm = [&](NormKind k) { return k == NormKind::RMS ? D : 2 * D; };
  double n = double(d.model.vocab) * D * (d.model.tied ? 1 : 2) + norm(d.model.norm);
  for (const auto& b : d.blocks) {
    if (const auto* s = std::get_if<Mamba2Spec>(&b.mixer)) {
      const double Di = s->d_inner_exact(d.model.d_model), H = std::floor(Di / s->headdim);
      const double GN = 2.0 * s->ngroups * s->d_state, Cd = Di + GN, W = 2 * Di + GN + H;
      n += W * D + Cd * s->d_conv + 3 * H + Di + Di * D + (s->conv_bias ? Cd : 0) + (s->bias ? W + D : 0);
    } else if (const auto* g = std::get_if<GqaSpec>(&b.mixer)) {
      const double q = double(g->n_heads) * g->head_dim, kv = double(g->n_kv_heads) * g->head_dim;
      n += 2 * q * D + 2 * kv * D + (g->output_gate ? q * D : 0) + (g->qk_norm ? 2.0 * g->head_dim : 0) +
           (g->bias ? q + 2 * kv + D + (g->output_gate ? q : 0) : 0);
    } else if (const auto* c = std::get_if<ShortConvSpec>(&b.mixer)) {
      n += 4 * D * D + D * c->L + (c->bias ? 5 * D : 0);
    }
    const MlpSpec* m = std::get_if<SwiGluSpec>(&b.channel);
    const bool swiglu = m != nullptr;
    if (!m) m = std::get_if<Relu2Spec>(&b.channel);
    if (m) {
      const double h = m->hidden;
      n += swiglu ? 3 * D * h + (m->bias ? 2 * h + D : 0) : 2 * D * h + (m->bias ? h + D : 0);
    }
    n += (m && !d.model.parallel_residual ? 2 : 1) * norm(b.norm);
  }
  return n + double(bigram_params(d.model)) + double(unet_skip_params(d.model, int(d.blocks.size())));
}

}  // namespace artifact_detail

// The most values (q values plus float values; scales come on top, at most one per value)
// that an artifact of this description may hold: twice the model's parameters (room for
// extras such as low-rank corrections) plus 2^20, and never more than 2^56 (so that byte
// counts, up to 4 per value, cannot overflow). Both the writer and the reader enforce it.
inline std::uint64_t artifact_value_cap(const ModelDesc& d) {
  const double cap = 2 * artifact_detail::param_bound(d) + double(1 << 20);
  return cap >= 0x1p56 ? std::uint64_t(1) << 56 : std::uint64_t(cap);
}

// The value the file stores for x: the f16 rounding for F16, x itself for F32.
inline float stored_float(float x, DType t) { return t == DType::F16 ? f16_to_f32(f32_to_f16(x)) : x; }

// The artifact as a reader will return it: scales and float values rounded to their storage,
// a null policy as {}.
inline Artifact as_stored(Artifact a) {
  if (a.policy.is_null()) a.policy = nlohmann::json::object();
  for (auto& t : a.tensors) {
    if (t.kind == ArtifactTensor::Kind::Quantized) {
      for (float& s : t.q.scales) s = stored_float(s, t.scale_type);
      t.shape.clear();
    } else {
      for (float& v : t.values) v = stored_float(v, t.dtype);
    }
  }
  return a;
}

// Bit-for-bit equality (floats by their bits, so -0 differs from 0): desc (as JSON), policy,
// and every tensor's name, kind, storage types, stream prefix, shape, values and scales.
inline bool bit_equal(const Artifact& a, const Artifact& b) {
  auto same = [](const std::vector<float>& x, const std::vector<float>& y) {
    return x.size() == y.size() && (x.empty() || std::memcmp(x.data(), y.data(), x.size() * 4) == 0);
  };
  if (to_json(a.desc) != to_json(b.desc) || a.policy != b.policy || a.tensors.size() != b.tensors.size())
    return false;
  for (std::size_t i = 0; i < a.tensors.size(); ++i) {
    const ArtifactTensor &x = a.tensors[i], &y = b.tensors[i];
    if (x.name != y.name || x.kind != y.kind || x.stream != y.stream) return false;
    if (x.kind == ArtifactTensor::Kind::Quantized) {
      if (x.scale_type != y.scale_type || x.q.bits != y.q.bits || x.q.rows != y.q.rows ||
          x.q.cols != y.q.cols || x.q.group != y.q.group || x.q.q != y.q.q || !same(x.q.scales, y.q.scales))
        return false;
    } else if (x.dtype != y.dtype || x.shape != y.shape || !same(x.values, y.values)) {
      return false;
    }
  }
  return true;
}

namespace artifact_detail {

// ---- shuffles --------------------------------------------------------------------------------

inline std::string bitplane(const std::string& raw, int bits) {
  const std::size_t n = raw.size(), nb = (n + 7) / 8;
  std::string out(std::size_t(bits) * nb, '\0');
  for (std::size_t i = 0; i < n; ++i) {
    const int v = std::int8_t(raw[i]);
    const unsigned z = v >= 0 ? unsigned(2 * v) : unsigned(-2 * v - 1);
    for (int b = 0; b < bits; ++b)
      if ((z >> b) & 1u) out[std::size_t(b) * nb + i / 8] |= char(1u << (i % 8));
  }
  return out;
}
// n values back from bits planes; throws on non-zero padding (the writer writes zeros). A
// value outside the width's range decodes to one, which QTensor::check then rejects.
inline std::string un_bitplane(const std::string& planes, std::size_t n, int bits) {
  const std::size_t nb = (n + 7) / 8;
  std::string out(n, '\0');
  for (std::size_t i = 0; i < n; ++i) {
    unsigned z = 0;
    for (int b = 0; b < bits; ++b)
      z |= unsigned((std::uint8_t(planes[std::size_t(b) * nb + i / 8]) >> (i % 8)) & 1u) << b;
    out[i] = char(std::int8_t(z & 1u ? -int(z >> 1) - 1 : int(z >> 1)));
  }
  if (n % 8)
    for (int b = 0; b < bits; ++b)
      if (std::uint8_t(planes[std::size_t(b) * nb + nb - 1]) >> (n % 8))
        fail("bit plane ", b, " has non-zero padding bits after its ", n, " values");
  return out;
}
inline std::string byteplane(const std::string& raw, std::size_t e) {
  const std::size_t m = raw.size() / e;
  std::string out(raw.size(), '\0');
  for (std::size_t i = 0; i < m; ++i)
    for (std::size_t j = 0; j < e; ++j) out[j * m + i] = raw[i * e + j];
  return out;
}
inline std::string un_byteplane(const std::string& planes, std::size_t e) {
  const std::size_t m = planes.size() / e;
  std::string out(planes.size(), '\0');
  for (std::size_t i = 0; i < m; ++i)
    for (std::size_t j = 0; j < e; ++j) out[i * e + j] = planes[j * m + i];
  return out;
}
// Bytes a stream of `raw` bytes occupies after the shuffle (what its codec decompresses to).
inline std::uint64_t shuffled_size(std::uint64_t raw, Shuffle s, int bits) {
  return s == Shuffle::BitPlane ? std::uint64_t(bits) * ((raw + 7) / 8) : raw;
}

// ---- codecs ----------------------------------------------------------------------------------

// The dictionary (xz) and window (zstd, brotli) sizes shrink to the input: the output is
// the same as with the full size, and encoder and decoder memory stay proportional to it.
inline std::uint32_t lzma_dict_for(std::uint64_t n, std::uint32_t preset_dict) {
  const std::uint64_t p2 = std::uint64_t(1) << std::max(12, ceil_log2(n));
  return std::uint32_t(std::min<std::uint64_t>(p2, preset_dict));
}

inline std::string compress(Codec c, const std::string& in, const ArtifactOptions& o) {
  const std::size_t n = in.size();
  const auto* src = reinterpret_cast<const std::uint8_t*>(in.data());
  switch (c) {
    case Codec::Raw:
      return in;
    case Codec::Lzma: {
      lzma_options_lzma opt;
      if (lzma_lzma_preset(&opt, std::uint32_t(o.lzma_preset) | LZMA_PRESET_EXTREME))
        fail("xz: preset ", o.lzma_preset, " is not supported");
      opt.dict_size = lzma_dict_for(n, opt.dict_size);
      const lzma_filter filters[2] = {{LZMA_FILTER_LZMA2, &opt}, {LZMA_VLI_UNKNOWN, nullptr}};
      std::string out(lzma_stream_buffer_bound(n), '\0');
      std::size_t pos = 0;
      const lzma_ret r =
          lzma_stream_buffer_encode(const_cast<lzma_filter*>(filters), LZMA_CHECK_NONE, nullptr, src, n,
                                    reinterpret_cast<std::uint8_t*>(out.data()), &pos, out.size());
      if (r != LZMA_OK) fail("xz: compression failed (liblzma error ", int(r), ")");
      out.resize(pos);
      return out;
    }
    case Codec::Zstd: {
      std::string out(ZSTD_compressBound(n), '\0');
      const std::size_t r = ZSTD_compress(out.data(), out.size(), in.data(), n, o.zstd_level);
      if (ZSTD_isError(r)) fail("zstd: compression failed: ", ZSTD_getErrorName(r));
      out.resize(r);
      return out;
    }
    case Codec::Brotli: {
      std::size_t cap = BrotliEncoderMaxCompressedSize(n);
      if (cap == 0 && n > 0) fail("brotli: ", n, " bytes are too many for one stream");
      std::string out(std::max<std::size_t>(cap, 16), '\0');
      std::size_t size = out.size();
      const int lgwin = std::clamp(ceil_log2(n), BROTLI_MIN_WINDOW_BITS, BROTLI_MAX_WINDOW_BITS);
      if (!BrotliEncoderCompress(o.brotli_quality, lgwin, BROTLI_MODE_GENERIC, n, src, &size,
                                 reinterpret_cast<std::uint8_t*>(out.data())))
        fail("brotli: compression failed");
      out.resize(size);
      return out;
    }
  }
  fail("unknown codec ", int(c));
}

// The output of a decoder, grown as it is produced: first min(expected + 1, max(64 KiB,
// 4 * input)) bytes, then doubled, never past expected + 1 (the one spare byte is how a
// stream longer than recorded is caught), so memory follows what the decoder really emits.
class Sink {
 public:
  Sink(std::size_t expected, std::size_t in_size) : expected_(expected) {
    const std::size_t limit = expected + 1;
    buf_.resize(std::min(limit, std::max<std::size_t>(std::size_t(1) << 16, in_size * 4)));
  }
  // Room for more output; throws once the stream has produced more than expected bytes.
  void need_room() {
    if (pos_ < buf_.size()) return;
    if (buf_.size() > expected_) bomb();
    buf_.resize(std::min(expected_ + 1, buf_.size() * 2));
  }
  std::uint8_t* next() { return reinterpret_cast<std::uint8_t*>(buf_.data()) + pos_; }
  std::size_t room() const { return buf_.size() - pos_; }
  void advance(std::size_t k) {
    pos_ += k;
    if (pos_ > expected_) bomb();
  }
  std::string finish(std::size_t trailing) {
    if (trailing) fail(trailing, " bytes follow the end of the compressed stream (corrupt stored bytes?)");
    if (pos_ != expected_)
      fail("decompresses to ", pos_, " bytes, expected ", expected_, " (corrupt stored bytes or sizes)");
    buf_.resize(pos_);
    return std::move(buf_);
  }

 private:
  [[noreturn]] void bomb() const {
    fail("decompresses to more than the expected ", expected_,
         " bytes (corrupt sizes, or a decompression bomb)");
  }
  std::string buf_;
  std::size_t pos_ = 0, expected_;
};

// Decodes exactly `expected` bytes from n stored bytes; throws hybrid::Error (without a
// file prefix: the reader adds it) on anything else.
inline std::string decompress(Codec c, const unsigned char* in, std::size_t n, std::size_t expected) {
  if (c == Codec::Raw) {
    if (n != expected) fail("raw stream of ", n, " bytes, expected ", expected);
    return std::string(reinterpret_cast<const char*>(in), n);
  }
  Sink out(expected, n);
  if (c == Codec::Lzma) {
    // What an xz stream from compress() can need: its dictionary plus a little.
    const std::uint64_t memlimit = lzma_dict_for(expected, 64u << 20) + (std::uint64_t(8) << 20);
    lzma_stream s = LZMA_STREAM_INIT;
    if (lzma_stream_decoder(&s, memlimit, 0) != LZMA_OK) fail("xz: cannot start the decoder");
    struct End {
      lzma_stream* s;
      ~End() { lzma_end(s); }
    } end{&s};
    s.next_in = in, s.avail_in = n;
    for (;;) {
      out.need_room();
      s.next_out = out.next(), s.avail_out = out.room();
      const std::size_t room = s.avail_out;
      const lzma_ret r = lzma_code(&s, LZMA_FINISH);
      out.advance(room - s.avail_out);
      if (r == LZMA_STREAM_END) break;
      if (r == LZMA_OK) continue;
      if (r == LZMA_BUF_ERROR) fail("xz: the compressed stream ends early (truncated or corrupt)");
      if (r == LZMA_MEMLIMIT_ERROR)
        fail("xz: the stream needs more than ", memlimit >> 20, " MiB to decode (corrupt dictionary size)");
      fail("xz: corrupt compressed data (liblzma error ", int(r), ")");
    }
    return out.finish(s.avail_in);
  }
  if (c == Codec::Zstd) {
    ZSTD_DCtx* d = ZSTD_createDCtx();
    if (!d) fail("zstd: cannot start the decoder");
    struct End {
      ZSTD_DCtx* d;
      ~End() { ZSTD_freeDCtx(d); }
    } end{d};
    // compress() records the content size and lets zstd shrink its window to the input:
    // a different size, or a larger window, is a corrupt stream (or a bomb).
    const unsigned long long declared = ZSTD_getFrameContentSize(in, n);
    if (declared != ZSTD_CONTENTSIZE_UNKNOWN && declared != ZSTD_CONTENTSIZE_ERROR && declared != expected)
      fail("zstd: the frame says it holds ", declared, " bytes, expected ", expected,
           declared > expected ? " (more than recorded: corrupt sizes, or a decompression bomb)" : "");
    const int window_log = std::clamp(ceil_log2(expected) + 1, 10, 27);
    ZSTD_DCtx_setParameter(d, ZSTD_d_windowLogMax, window_log);
    ZSTD_inBuffer ib{in, n, 0};
    for (;;) {
      out.need_room();
      ZSTD_outBuffer ob{out.next(), out.room(), 0};
      const std::size_t r = ZSTD_decompressStream(d, &ob, &ib);
      if (ZSTD_isError(r) && ZSTD_getErrorCode(r) == ZSTD_error_frameParameter_windowTooLarge)
        fail("zstd: the frame needs a window of more than 2^", window_log,
             " bytes, more than its expected size allows (corrupt, or a decompression bomb)");
      if (ZSTD_isError(r)) fail("zstd: corrupt compressed data: ", ZSTD_getErrorName(r));
      out.advance(ob.pos);
      if (r == 0) break;  // the frame is complete
      if (ib.pos == ib.size && ob.pos < ob.size)
        fail("zstd: the compressed stream ends early (truncated or corrupt)");
    }
    return out.finish(n - ib.pos);
  }
  BrotliDecoderState* st = BrotliDecoderCreateInstance(nullptr, nullptr, nullptr);
  if (!st) fail("brotli: cannot start the decoder");
  struct End {
    BrotliDecoderState* s;
    ~End() { BrotliDecoderDestroyInstance(s); }
  } end{st};
  std::size_t avail_in = n;
  const std::uint8_t* next_in = in;
  for (;;) {
    out.need_room();
    std::size_t avail_out = out.room();
    std::uint8_t* next_out = out.next();
    const BrotliDecoderResult r =
        BrotliDecoderDecompressStream(st, &avail_in, &next_in, &avail_out, &next_out, nullptr);
    out.advance(out.room() - avail_out);
    if (r == BROTLI_DECODER_RESULT_SUCCESS) break;
    if (r == BROTLI_DECODER_RESULT_NEEDS_MORE_OUTPUT) continue;
    if (r == BROTLI_DECODER_RESULT_NEEDS_MORE_INPUT)
      fail("brotli: the compressed stream ends early (truncated or corrupt)");
    fail("brotli: corrupt compressed data: ", BrotliDecoderErrorString(BrotliDecoderGetErrorCode(st)));
  }
  return out.finish(avail_in);
}

// Runs f(0..n-1) on up to `threads` threads (0: the hardware's, at most 8); rethrows the
// first job's error in job order.
template <class F>
void run_jobs(std::size_t n, int threads, F&& f) {
  std::size_t t =
      threads > 0 ? std::size_t(threads) : std::clamp<std::size_t>(std::thread::hardware_concurrency(), 1, 8);
  t = std::min(t, n);
  std::atomic<std::size_t> next{0};
  std::vector<std::exception_ptr> errors(n);
  auto work = [&] {
    for (std::size_t i; (i = next++) < n;) {
      try {
        f(i);
      } catch (...) {
        errors[i] = std::current_exception();
      }
    }
  };
  std::vector<std::thread> pool;
  for (std::size_t k = 1; k < t; ++k) pool.emplace_back(work);
  work();
  for (auto& th : pool) th.join();
  for (auto& e : errors)
    if (e) std::rethrow_exception(e);
}

// ---- writer ----------------------------------------------------------------------------------

struct WStream {
  std::string name;
  Elem elem = Elem::I8;
  int bits = 0;
  int tensors = 0;
  std::string raw;
  std::vector<ArtifactCandidate> cands;
  std::vector<std::string> stored;  // cands[i]'s bytes
};

struct Encoded {
  std::string bytes;
  ArtifactReport report;
};

template <class... A>
[[noreturn]] void wfail(const std::string& where, const A&... a) {
  fail(where, ": ", a...);
}

inline Encoded encode(const Artifact& art, const ArtifactOptions& opt, const std::string& where) {
  // Options.
  if (opt.codecs.empty()) wfail(where, "ArtifactOptions::codecs is empty; list at least one codec");
  for (std::size_t i = 0; i < opt.codecs.size(); ++i) {
    if (std::uint8_t(opt.codecs[i]) > std::uint8_t(Codec::Brotli))
      wfail(where, "unknown codec ", int(opt.codecs[i]));
    for (std::size_t j = 0; j < i; ++j)
      if (opt.codecs[j] == opt.codecs[i])
        wfail(where, "codec ", codec_name(opt.codecs[i]), " is listed twice");
  }
  if (opt.lzma_preset < 0 || opt.lzma_preset > 9)
    wfail(where, "lzma_preset ", opt.lzma_preset, " is outside 0..9");
  if (opt.zstd_level < 1 || opt.zstd_level > ZSTD_maxCLevel())
    wfail(where, "zstd_level ", opt.zstd_level, " is outside 1..", ZSTD_maxCLevel());
  if (opt.brotli_quality < 0 || opt.brotli_quality > 11)
    wfail(where, "brotli_quality ", opt.brotli_quality, " is outside 0..11");

  // The description must be one the reader accepts: exactly what desc_from_json returns.
  json desc;
  try {
    validate(art.desc);
    desc = to_json(art.desc);
    (void)desc_from_json(desc);
  } catch (const Error& e) {
    wfail(where, "desc: ", e.what());
  }
  const json policy = art.policy.is_null() ? json::object() : art.policy;  // Artifact{desc, {}, ...}
  if (!policy.is_object()) wfail(where, "policy must be a JSON object, got ", json_brief(policy));

  // Streams, in the order their first bytes appear; tensor entries.
  std::vector<WStream> streams;
  auto stream_of = [&](const std::string& name, Elem e, int bits) -> std::size_t {
    for (std::size_t i = 0; i < streams.size(); ++i)
      if (streams[i].name == name) return i;
    streams.push_back({name, e, bits, 0, {}, {}, {}});
    return streams.size() - 1;
  };
  auto part = [&](std::size_t s) {
    ++streams[s].tensors;
    return json{{"stream", s}, {"offset", streams[s].raw.size()}};
  };
  auto put_float = [&](std::string& out, float x, Elem e, const std::string& what, std::size_t i) {
    if (!std::isfinite(x)) wfail(where, what, " ", i, " is ", x, "; expected a finite value");
    if (e == Elem::F32) {
      out.append(reinterpret_cast<const char*>(&x), 4);
      return;
    }
    const std::uint16_t h = f32_to_f16(x);
    if (!f16_finite(h))
      wfail(where, what, " ", i, " = ", x, " overflows f16 (largest 65504); store it as f32");
    put_u16(out, h);
  };
  const std::uint64_t cap = artifact_value_cap(art.desc);
  std::uint64_t values = 0, raw_total = 0;
  std::set<std::string> names;
  json tensors = json::array();
  for (const ArtifactTensor& t : art.tensors) {
    const std::string tw = "tensor '" + t.name + "'";
    if (t.name.empty()) wfail(where, "a tensor has an empty name");
    if (!names.insert(t.name).second) wfail(where, tw, ": the name is used twice");
    json e{{"name", t.name}};
    if (t.kind == ArtifactTensor::Kind::Quantized) {
      t.q.check((where + ": " + tw).c_str());
      if (t.scale_type != DType::F16 && t.scale_type != DType::F32)
        wfail(where, tw, ": scale_type ", dtype_name(t.scale_type), " is not f16 or f32");
      const Elem se = float_elem(t.scale_type);
      const std::size_t qs = stream_of(stream_name(t.stream, suffix_q(t.q.bits)), Elem::I8, t.q.bits);
      e["kind"] = "q", e["shape"] = {t.q.rows, t.q.cols}, e["bits"] = t.q.bits, e["group"] = t.q.group;
      e["scale_type"] = elem_name(se);
      e["q"] = part(qs);
      streams[qs].raw.append(reinterpret_cast<const char*>(t.q.q.data()), t.q.q.size());
      const std::size_t ss = stream_of(stream_name(t.stream, suffix_scale(se)), se, 0);
      e["scales"] = part(ss);
      for (std::size_t i = 0; i < t.q.scales.size(); ++i)
        put_float(streams[ss].raw, t.q.scales[i], se, tw + ": scale", i);
      values += t.q.q.size();
      raw_total += t.q.q.size() + t.q.scales.size() * elem_size(se);
    } else {
      if (t.kind != ArtifactTensor::Kind::Float) wfail(where, tw, ": unknown kind ", int(t.kind));
      if (t.dtype != DType::F16 && t.dtype != DType::F32)
        wfail(where, tw, ": dtype ", dtype_name(t.dtype), " is not f16 or f32");
      if (t.shape.size() > std::size_t(artifact_max_rank))
        wfail(where, tw, ": rank ", t.shape.size(), " exceeds ", artifact_max_rank);
      std::uint64_t numel = 1;
      for (Index d : t.shape) {
        if (d < 0) wfail(where, tw, ": negative dimension ", d);
        if (__builtin_mul_overflow(numel, std::uint64_t(d), &numel))
          wfail(where, tw, ": the shape is too large");
      }
      if (numel != t.values.size())
        wfail(where, tw, ": shape holds ", numel, " values but ", t.values.size(), " are given");
      const Elem fe = float_elem(t.dtype);
      const std::size_t fs = stream_of(stream_name(t.stream, suffix_float(fe)), fe, 0);
      e["kind"] = "float", e["shape"] = t.shape, e["type"] = elem_name(fe);
      e["data"] = part(fs);
      for (std::size_t i = 0; i < t.values.size(); ++i)
        put_float(streams[fs].raw, t.values[i], fe, tw + ": value", i);
      values += t.values.size();
      raw_total += t.values.size() * elem_size(fe);
    }
    tensors.push_back(std::move(e));
  }
  if (values > cap)
    wfail(where, "the tensors hold ", values, " values, more than artifact_value_cap(desc) = ", cap,
          " (twice the description's parameters plus 2^20)");
  if (raw_total > artifact_max_raw)
    wfail(where, "the streams hold ", raw_total, " bytes, more than ", artifact_max_raw);

  // Every (stream, shuffle, codec) candidate, the largest streams first.
  struct Job {
    std::size_t s;
    Shuffle sh;
    Codec c;
  };
  std::vector<Job> jobs;
  std::vector<std::vector<std::string>> shuffled(streams.size());
  for (std::size_t s = 0; s < streams.size(); ++s) {
    WStream& w = streams[s];
    std::vector<Shuffle> shs;
    if (opt.shuffle != ShuffleMode::On) shs.push_back(Shuffle::None);
    if (opt.shuffle != ShuffleMode::Off) shs.push_back(shuffle_of(w.elem));
    for (Shuffle sh : shs) {
      shuffled[s].push_back(sh == Shuffle::None       ? w.raw
                            : sh == Shuffle::BitPlane ? bitplane(w.raw, w.bits)
                                                      : byteplane(w.raw, elem_size(w.elem)));
      for (Codec c : opt.codecs) {
        w.cands.push_back({c, sh, 0});
        jobs.push_back({s, sh, c});
      }
    }
    w.stored.resize(w.cands.size());
  }
  std::vector<std::size_t> order(jobs.size());
  for (std::size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) {
    return streams[jobs[a].s].raw.size() > streams[jobs[b].s].raw.size();
  });
  std::vector<std::size_t> slot(jobs.size());  // the job's index within its stream's cands
  for (std::size_t i = 0, k = 0; i < jobs.size(); ++i, ++k) {
    if (i > 0 && jobs[i].s != jobs[i - 1].s) k = 0;
    slot[i] = k;
  }
  try {
    run_jobs(order.size(), opt.threads, [&](std::size_t k) {
      const Job& j = jobs[order[k]];
      const std::size_t v = j.sh == Shuffle::None ? 0 : shuffled[j.s].size() - 1;
      streams[j.s].stored[slot[order[k]]] = compress(j.c, shuffled[j.s][v], opt);
    });
  } catch (const Error& e) {
    wfail(where, e.what());
  }
  for (auto& w : streams)
    for (std::size_t i = 0; i < w.cands.size(); ++i) w.cands[i].bytes = w.stored[i].size();

  // A choice of candidate per stream -> header text. The automatic choice takes each stream's
  // smallest candidate; to be never larger than any single codec even by the few header bytes
  // a longer codec name costs, each single-codec file is sized too and the smallest file wins.
  json base{{"desc", desc}, {"policy", policy}, {"tensors", std::move(tensors)}};
  auto header_for = [&](const std::vector<std::size_t>& pick) {
    json h = base, ss = json::array();
    std::uint64_t off = 0;
    for (std::size_t s = 0; s < streams.size(); ++s) {
      const WStream& w = streams[s];
      const ArtifactCandidate& c = w.cands[pick[s]];
      json e{{"name", w.name},
             {"type", elem_name(w.elem)},
             {"codec", codec_name(c.codec)},
             {"shuffle", shuffle_name(c.shuffle)},
             {"offset", off},
             {"size", c.bytes},
             {"raw_size", w.raw.size()},
             {"crc64", hex16(crc64(w.stored[pick[s]].data(), c.bytes))},
             {"raw_crc64", hex16(crc64(w.raw.data(), w.raw.size()))}};
      if (w.elem == Elem::I8) e["bits"] = w.bits;
      ss.push_back(std::move(e));
      off += c.bytes;
    }
    h["streams"] = std::move(ss);
    try {
      return std::pair(h.dump(), off);
    } catch (const json::exception& e) {
      wfail(where, "cannot encode the header (tensor names and policy strings must be UTF-8): ", e.what());
    }
  };
  auto best_pick = [&](std::optional<Codec> only) {
    std::vector<std::size_t> pick(streams.size());
    for (std::size_t s = 0; s < streams.size(); ++s) {
      std::optional<std::size_t> b;
      for (std::size_t i = 0; i < streams[s].cands.size(); ++i)
        if ((!only || streams[s].cands[i].codec == *only) &&
            (!b || streams[s].cands[i].bytes < streams[s].cands[*b].bytes))
          b = i;
      pick[s] = *b;
    }
    return pick;
  };
  std::vector<std::size_t> pick = best_pick(std::nullopt);
  auto [header, payload] = header_for(pick);
  if (opt.codecs.size() > 1)
    for (Codec c : opt.codecs) {
      std::vector<std::size_t> p = best_pick(c);
      auto [h, pl] = header_for(p);
      if (h.size() + pl < header.size() + payload) pick = std::move(p), header = std::move(h), payload = pl;
    }
  if (header.size() > artifact_max_header)
    wfail(where, "the header is ", header.size(), " bytes, more than the limit of ", artifact_max_header);
  try {  // the reader's parser must take it (nesting depth of the policy)
    (void)st_detail::parse_json_checked(header, artifact_max_depth,
                                        [](const auto&) { return std::string("header"); });
  } catch (const Error& e) {
    wfail(where, "the header would not read back: ", e.what());
  }
  if (json::parse(header)["policy"] != policy)
    wfail(where, "policy does not survive JSON text (NaN or infinite numbers?)");

  Encoded out;
  std::string& b = out.bytes;
  b.reserve(24 + header.size() + payload);
  b.append(artifact_magic);
  put_u32(b, artifact_version);
  put_u64(b, header.size());
  b += header;
  put_u64(b, crc64(b.data(), b.size()));
  out.report.header_bytes = b.size();
  for (std::size_t s = 0; s < streams.size(); ++s) {
    const WStream& w = streams[s];
    b += w.stored[pick[s]];
    const ArtifactCandidate& c = w.cands[pick[s]];
    out.report.streams.push_back(
        {w.name, elem_name(w.elem), w.bits, w.tensors, w.raw.size(), c.bytes, c.codec, c.shuffle, w.cands});
  }
  out.report.total_bytes = b.size();
  return out;
}

// ---- reader ----------------------------------------------------------------------------------

struct RStream {
  std::string name;
  Elem elem = Elem::I8;
  int bits = 0;
  Codec codec = Codec::Raw;
  Shuffle shuffle = Shuffle::None;
  std::uint64_t offset = 0, size = 0, raw_size = 0, crc = 0, raw_crc = 0;
  std::uint64_t filled = 0;  // raw bytes claimed by tensors so far
  int tensors = 0;
  std::string raw;
};
struct RPart {
  std::size_t stream = 0;
  std::uint64_t offset = 0, bytes = 0;
};
struct RTensor {
  ArtifactTensor t;
  RPart a, b;  // q / data, and scales
};

class Reader {
 public:
  Reader(const unsigned char* p, std::size_t n, std::string name, const ArtifactReadOptions& o)
      : p_(p),
        n_(n),
        name_(std::move(name)),
        opt_(o),
        f_("quantised artifact '" + st_detail::printable(name_) + "': header") {}

  Artifact read(ArtifactReport* report) {
    const std::string_view h = preamble();
    const json j = parse(h);
    Artifact a;
    const json& desc = need(j, "desc", "");
    try {
      a.desc = desc_from_json(desc);
    } catch (const Error& e) {
      bad("header: desc: ", e.what());
    }
    a.policy = f_.object(need(j, "policy", ""), "policy", "a JSON object (the quantisation policy)");
    streams(f_.array(need(j, "streams", ""), "streams", "an array of stream entries"), 24 + h.size());
    std::vector<RTensor> ts =
        tensors(f_.array(need(j, "tensors", ""), "tensors", "an array of tensor entries"), a.desc);
    keys(j, "", {"desc", "policy", "streams", "tensors"});
    std::uint64_t raw_total = 0;
    for (const RStream& s : s_) {
      if (s.tensors == 0)
        bad("stream '", s.name, "' holds no tensor's bytes (expected every stream to be used)");
      if (s.filled != s.raw_size)
        bad("stream '", s.name, "': raw_size ", s.raw_size, " but its tensors hold ", s.filled,
            " bytes (expected them to cover the stream exactly)");
      raw_total += s.raw_size;  // each is at most the file-independent cap, no overflow
    }
    if (raw_total > opt_.max_raw_bytes)
      bad("the streams hold ", raw_total, " raw bytes, more than the reader's limit of ", opt_.max_raw_bytes);
    for (RStream& s : s_) decode(s);
    for (RTensor& r : ts) a.tensors.push_back(build(std::move(r)));
    if (report) {
      report->total_bytes = n_, report->header_bytes = 24 + h.size();
      report->streams.clear();
      for (const RStream& s : s_)
        report->streams.push_back(
            {s.name, elem_name(s.elem), s.bits, s.tensors, s.raw_size, s.size, s.codec, s.shuffle, {}});
    }
    return a;
  }

 private:
  template <class... A>
  [[noreturn]] void bad(const A&... a) const {
    throw Error(st_detail::printable(hybrid::detail::concat_str("quantised artifact '", name_, "': ", a...)));
  }

  // Magic, version, header length and checksum; returns the header text.
  std::string_view preamble() const {
    if (std::memcmp(p_, artifact_magic.data(), std::min<std::size_t>(n_, 4)) != 0) {
      std::string got;
      for (std::size_t i = 0; i < std::min<std::size_t>(n_, 4); ++i)
        got += hex16(p_[i]).substr(14) + (i < 3 ? " " : "");
      bad("not a quantised artifact: the file starts with bytes ", got, ", expected the magic \"HYBQ\"");
    }
    if (n_ < 16)
      bad("truncated: the file is ", n_,
          " bytes, shorter than the 16-byte preamble (magic, u32 version, u64 header length)");
    const auto version = get_le<std::uint32_t>(p_ + 4);
    if (version != artifact_version)
      bad("format version ", version, " is not supported (this reader reads version ", artifact_version,
          "; written by a newer hybrid?)");
    const auto len = get_le<std::uint64_t>(p_ + 8);
    if (len > artifact_max_header)
      bad("header length ", len, " exceeds the limit of ", artifact_max_header,
          " bytes (corrupt length field)");
    if (len + 24 > n_)
      bad("truncated: the header (", len, " bytes) and its checksum end at byte ", len + 24,
          " but the file is ", n_, " bytes");
    if (opt_.verify_checksums) {
      const auto stored = get_le<std::uint64_t>(p_ + 16 + len), got = crc64(p_, 16 + len);
      if (stored != got)
        bad("header checksum mismatch: stored ", hex16(stored), ", computed ", hex16(got), " over bytes [0, ",
            16 + len, ") (the header or its checksum is corrupt)");
    }
    return {reinterpret_cast<const char*>(p_ + 16), std::size_t(len)};
  }

  json parse(std::string_view h) const {
    auto where = [](const std::vector<std::string>& path) {
      std::string s = "header";
      for (const auto& k : path) s += "." + k;
      return s;
    };
    json j;
    try {
      j = st_detail::parse_json_checked(h, artifact_max_depth, where);
    } catch (const Error& e) {
      bad("header: ", e.what());
    }
    if (!j.is_object())
      bad("header: expected a JSON object {desc, policy, streams, tensors}, got ", json_brief(j));
    return j;
  }

  // Field access; `path` is the object's path within the header ("" for the root).
  const json& need(const json& o, const char* key, const std::string& path) const {
    return f_.require(o, key, path);
  }
  static std::string at(const std::string& path, const char* key) { return JsonFields::join(path, key); }
  void keys(const json& o, const std::string& path, std::initializer_list<const char*> known) const {
    for (const auto& [k, v] : o.items()) {
      bool ok = false;
      for (const char* n : known) ok = ok || k == n;
      if (ok) continue;
      std::string list;
      for (const char* n : known) list += (list.empty() ? "" : ", ") + std::string(n);
      bad("header: ", path.empty() ? "" : path + ": ", "unknown field '", k, "' (expected ", list, ")");
    }
  }
  std::uint64_t uint(const json& o, const char* key, const std::string& path, std::uint64_t hi) const {
    return std::uint64_t(f_.integer(need(o, key, path), at(path, key), 0, std::int64_t(hi),
                                    "an integer in [0, " + std::to_string(hi) + "]"));
  }
  int choice(const json& o, const char* key, const std::string& path,
             std::initializer_list<const char*> names) const {
    const json& v = need(o, key, path);
    std::string list;
    int i = 0;
    for (const char* n : names) {
      if (v.is_string() && v == n) return i;
      list += (i++ ? ", \"" : "\"") + std::string(n) + "\"";
    }
    f_.wrong(at(path, key), "one of " + list, v);
  }
  std::uint64_t crc_field(const json& o, const char* key, const std::string& path) const {
    const std::string s = f_.string(need(o, key, path), at(path, key), "16 lowercase hex digits");
    const auto v = parse_hex16(s);
    if (!v) f_.wrong(at(path, key), "16 lowercase hex digits", need(o, key, path));
    return *v;
  }

  void streams(const json& arr, std::uint64_t payload_start) {
    payload_ = payload_start;
    std::set<std::string> names;
    std::uint64_t off = 0;
    for (std::size_t i = 0; i < arr.size(); ++i) {
      const std::string path = JsonFields::at("streams", i);
      const json& e = f_.object(arr[i], path, "a stream entry object");
      RStream s;
      s.name = f_.string(need(e, "name", path), at(path, "name"));
      if (s.name.empty() || !names.insert(s.name).second)
        bad("header: ", path, ".name: '", s.name, "' is empty or names two streams (expected unique names)");
      s.elem = Elem(choice(e, "type", path, {"i8", "f16", "f32"}));
      if (s.elem == Elem::I8) {
        s.bits = int(f_.integer(need(e, "bits", path), at(path, "bits"), 2, 8, "an integer in [2, 8]"));
        keys(
            e, path,
            {"name", "type", "bits", "codec", "shuffle", "offset", "size", "raw_size", "crc64", "raw_crc64"});
      } else {
        keys(e, path,
             {"name", "type", "codec", "shuffle", "offset", "size", "raw_size", "crc64", "raw_crc64"});
      }
      s.codec = Codec(choice(e, "codec", path, {"raw", "lzma", "zstd", "brotli"}));
      const int sh = s.elem == Elem::I8 ? choice(e, "shuffle", path, {"none", "bitplane"})
                                        : choice(e, "shuffle", path, {"none", "byteplane"});
      s.shuffle = sh == 0 ? Shuffle::None : shuffle_of(s.elem);
      s.offset = uint(e, "offset", path, artifact_max_raw * 2);
      s.size = uint(e, "size", path, artifact_max_raw * 2);
      s.raw_size = uint(e, "raw_size", path, artifact_max_raw);
      s.crc = crc_field(e, "crc64", path);
      s.raw_crc = crc_field(e, "raw_crc64", path);
      if (s.offset != off)
        bad("header: ", path, ": stream '", s.name, "' at payload offset ", s.offset, ", expected ", off,
            " (streams follow each other without holes or overlap)");
      if (s.raw_size % elem_size(s.elem))
        bad("header: ", path, ": raw_size ", s.raw_size, " is not a multiple of ", elem_size(s.elem), " (",
            elem_name(s.elem), " elements)");
      const std::uint64_t end = off + s.size;
      if (end > n_ - payload_start)
        bad("truncated: stream '", s.name, "' occupies payload bytes [", off, ", ", end,
            ") but the file ends after ", n_ - payload_start, " payload bytes (file ", n_,
            " bytes, expected at least ", payload_start + end, ")");
      off = end;
      s_.push_back(std::move(s));
    }
    if (off != n_ - payload_start)
      bad(n_ - payload_start - off, " unexpected bytes after the last stream (the streams end at byte ",
          payload_start + off, ", the file is ", n_, " bytes)");
  }

  // A {stream, offset} part holding `bytes` bytes of (elem, bits) under stream suffix
  // `suffix`; returns the part and sets `prefix` to the stream's prefix.
  RPart part(const json& o, const char* key, const std::string& path, const std::string& tname, Elem elem,
             int bits, const std::string& suffix, std::uint64_t bytes, std::string& prefix) {
    const std::string p = at(path, key);
    const json& e = f_.object(need(o, key, path), p, "a {stream, offset} object");
    keys(e, p, {"stream", "offset"});
    RPart r;
    r.stream = std::size_t(
        f_.integer(need(e, "stream", p), at(p, "stream"), 0, std::int64_t(s_.size()) - 1,
                   "the index of a stream (0 to " + std::to_string(std::int64_t(s_.size()) - 1) + ")"));
    r.offset = uint(e, "offset", p, artifact_max_raw);
    r.bytes = bytes;
    RStream& s = s_[r.stream];
    if (s.elem != elem || s.bits != bits)
      bad("header: ", p, ": tensor '", tname, "' puts its ", suffix, " bytes in stream '", s.name, "' of ",
          elem_name(s.elem), s.bits ? " (" + std::to_string(s.bits) + " bits)" : "", " elements");
    if (s.name == suffix)
      prefix.clear();
    else if (s.name.size() > suffix.size() + 1 && s.name.ends_with("." + suffix))
      prefix = s.name.substr(0, s.name.size() - suffix.size() - 1);
    else
      bad("header: ", p, ": tensor '", tname, "' puts its ", suffix, " bytes in stream '", s.name,
          "'; expected a stream named '", suffix, "' or '<prefix>.", suffix, "'");
    if (r.offset != s.filled)
      bad("header: ", p, ".offset: tensor '", tname, "' at offset ", r.offset, " of stream '", s.name,
          "', expected ", s.filled,
          " (a stream's tensors follow each other in tensor order, without holes or overlap)");
    if (bytes > s.raw_size - s.filled)
      bad("header: ", p, ": tensor '", tname, "' needs bytes [", r.offset, ", ", r.offset + bytes,
          ") of stream '", s.name, "', which has raw_size ", s.raw_size);
    s.filled += bytes;
    ++s.tensors;
    return r;
  }

  std::vector<RTensor> tensors(const json& arr, const ModelDesc& desc) {
    const std::uint64_t cap = artifact_value_cap(desc);
    std::uint64_t values = 0;
    std::set<std::string> names;
    std::vector<RTensor> out;
    for (std::size_t i = 0; i < arr.size(); ++i) {
      const std::string path = JsonFields::at("tensors", i);
      const json& e = f_.object(arr[i], path, "a tensor entry object");
      RTensor r;
      ArtifactTensor& t = r.t;
      t.name = f_.string(need(e, "name", path), at(path, "name"));
      if (t.name.empty() || !names.insert(t.name).second)
        bad("header: ", path, ".name: '", t.name, "' is empty or names two tensors (expected unique names)");
      const std::string tp = path + " ('" + t.name + "')";
      const int kind = choice(e, "kind", path, {"q", "float"});
      const json& shape = f_.array(need(e, "shape", path), at(path, "shape"), "a list of dimensions");
      std::uint64_t numel = 1;
      std::vector<Index> dims;
      for (std::size_t k = 0; k < shape.size() && k < std::size_t(artifact_max_rank); ++k) {
        dims.push_back(Index(f_.integer(shape[k], JsonFields::at(at(path, "shape"), k), 0, std::int64_t(cap),
                                        "a dimension in [0, " + std::to_string(cap) + "]")));
        if (__builtin_mul_overflow(numel, std::uint64_t(dims.back()), &numel)) numel = cap + 1;
      }
      if (kind == 0) {
        keys(e, path, {"name", "kind", "shape", "bits", "group", "scale_type", "q", "scales"});
        if (shape.size() != 2)
          bad("header: ", tp, ".shape: a quantised tensor needs [rows, cols], got ", json_brief(shape));
        t.kind = ArtifactTensor::Kind::Quantized;
        t.q.bits = int(f_.integer(need(e, "bits", path), at(path, "bits"), 2, 8, "an integer in [2, 8]"));
        t.q.rows = dims[0], t.q.cols = dims[1];
        t.q.group = Index(uint(e, "group", path, std::uint64_t(cap)));
        if (t.q.group <= 0 || t.q.cols % t.q.group)
          bad("header: ", tp, ".group: ", t.q.group, " does not divide cols ", t.q.cols,
              " (expected a positive divisor)");
        const Elem se = Elem(1 + choice(e, "scale_type", path, {"f16", "f32"}));
        t.scale_type = se == Elem::F16 ? DType::F16 : DType::F32;
        if (numel > cap - std::min(cap, values)) too_many(values, numel, cap);
        const std::uint64_t nscale =
            std::uint64_t(t.q.rows) * std::uint64_t(t.q.cols / t.q.group);  // <= numel
        std::string p1, p2;
        r.a = part(e, "q", path, t.name, Elem::I8, t.q.bits, suffix_q(t.q.bits), numel, p1);
        r.b = part(e, "scales", path, t.name, se, 0, suffix_scale(se), nscale * elem_size(se), p2);
        if (p1 != p2)
          bad("header: ", tp, ": its values are in stream '", s_[r.a.stream].name, "' and its scales in '",
              s_[r.b.stream].name, "'; expected the same prefix");
        t.stream = p1;
      } else {
        keys(e, path, {"name", "kind", "shape", "type", "data"});
        if (shape.size() > std::size_t(artifact_max_rank))
          bad("header: ", tp, ".shape: rank ", shape.size(), " exceeds ", artifact_max_rank);
        t.kind = ArtifactTensor::Kind::Float;
        t.shape = dims;
        const Elem fe = Elem(1 + choice(e, "type", path, {"f16", "f32"}));
        t.dtype = fe == Elem::F16 ? DType::F16 : DType::F32;
        if (numel > cap - std::min(cap, values)) too_many(values, numel, cap);
        r.a = part(e, "data", path, t.name, fe, 0, suffix_float(fe), numel * elem_size(fe), t.stream);
      }
      values += numel;
      out.push_back(std::move(r));
    }
    return out;
  }
  [[noreturn]] void too_many(std::uint64_t values, std::uint64_t more, std::uint64_t cap) const {
    bad("header: the tensors hold more than ", cap, " values (", values, " so far, then ", more,
        "), the bound artifact_value_cap(desc) for this model description (corrupt shapes, or a "
        "decompression bomb)");
  }

  void decode(RStream& s) {
    const unsigned char* stored = p_ + payload_ + s.offset;
    const std::string sw = "stream '" + s.name + "'";
    if (opt_.verify_checksums) {
      const std::uint64_t got = crc64(stored, s.size);
      if (got != s.crc)
        bad(sw, ": checksum of the stored (compressed) bytes mismatch: header says ", hex16(s.crc),
            ", computed ", hex16(got), " (corrupt payload)");
    }
    std::string bytes;
    try {
      bytes = decompress(s.codec, stored, s.size, shuffled_size(s.raw_size, s.shuffle, s.bits));
      if (s.shuffle == Shuffle::BitPlane)
        bytes = un_bitplane(bytes, s.raw_size, s.bits);
      else if (s.shuffle == Shuffle::BytePlane)
        bytes = un_byteplane(bytes, elem_size(s.elem));
    } catch (const Error& e) {
      bad(sw, " (", codec_name(s.codec), ", shuffle ", shuffle_name(s.shuffle), "): ", e.what());
    }
    if (opt_.verify_checksums) {
      const std::uint64_t got = crc64(bytes.data(), bytes.size());
      if (got != s.raw_crc)
        bad(sw, ": checksum of the decompressed bytes mismatch: header says ", hex16(s.raw_crc),
            ", computed ", hex16(got), " (corrupt payload or header)");
    }
    s.raw = std::move(bytes);
  }

  std::vector<float> floats(const RPart& p, Elem e, const std::string& what) const {
    const unsigned char* b = reinterpret_cast<const unsigned char*>(s_[p.stream].raw.data()) + p.offset;
    const std::size_t n = std::size_t(p.bytes / elem_size(e));
    std::vector<float> v(n);
    for (std::size_t i = 0; i < n; ++i) {
      if (e == Elem::F16) {
        const auto h = get_le<std::uint16_t>(b + 2 * i);
        if (!f16_finite(h))
          bad(what, " ", i, " is an f16 infinity or NaN (0x", hex16(h).substr(12),
              "); expected finite values");
        v[i] = f16_to_f32(h);
      } else {
        v[i] = get_le<float>(b + 4 * i);
        if (!std::isfinite(v[i])) bad(what, " ", i, " is ", v[i], "; expected finite values");
      }
    }
    return v;
  }

  ArtifactTensor build(RTensor r) const {
    ArtifactTensor& t = r.t;
    const std::string tw = "tensor '" + t.name + "'";
    if (t.kind == ArtifactTensor::Kind::Quantized) {
      const std::string& raw = s_[r.a.stream].raw;
      t.q.q.assign(reinterpret_cast<const std::int8_t*>(raw.data()) + r.a.offset,
                   reinterpret_cast<const std::int8_t*>(raw.data()) + r.a.offset + r.a.bytes);
      t.q.scales = floats(r.b, float_elem(t.scale_type), tw + ": scale");
      try {
        t.q.check(tw.c_str());
      } catch (const Error& e) {
        bad(e.what());
      }
    } else {
      t.values = floats(r.a, float_elem(t.dtype), tw + ": value");
    }
    return std::move(t);
  }

  const unsigned char* p_;
  std::size_t n_;
  std::string name_;
  ArtifactReadOptions opt_;
  JsonFields f_;
  std::vector<RStream> s_;
  std::uint64_t payload_ = 0;  // file offset of the first stream's stored bytes
};

}  // namespace artifact_detail

// ---- API -------------------------------------------------------------------------------------

// The file's bytes; `report` (optional) gets the sizes, every candidate tried included.
// Throws hybrid::Error ("quantised artifact: ...") naming the tensor or option at fault.
inline std::string artifact_bytes(const Artifact& a, const ArtifactOptions& opt = {},
                                  ArtifactReport* report = nullptr) {
  auto e = artifact_detail::encode(a, opt, "quantised artifact");
  if (report) *report = std::move(e.report);
  return std::move(e.bytes);
}

// Encodes, then replaces `path` atomically (core/atomic_file.hpp): on any failure an existing
// file is left as it was and no partial file appears.
inline ArtifactReport write_artifact(const std::string& path, const Artifact& a,
                                     const ArtifactOptions& opt = {}) {
  const std::string what = "writing quantised artifact '" + path + "'";
  auto e = artifact_detail::encode(a, opt, what);
  write_file_atomic(path, what, e.bytes);
  return std::move(e.report);
}

// Reads an artifact image in memory; `name` stands for the file in error messages. Reads only
// [data, data + size) (the result owns copies of everything).
inline Artifact read_artifact_memory(const void* data, std::size_t size, std::string name = "<memory>",
                                     const ArtifactReadOptions& opt = {}, ArtifactReport* report = nullptr) {
  static const unsigned char empty = 0;
  const auto* p = size ? static_cast<const unsigned char*>(data) : &empty;
  return artifact_detail::Reader(p, size, std::move(name), opt).read(report);
}

inline Artifact read_artifact(const std::string& path, const ArtifactReadOptions& opt = {},
                              ArtifactReport* report = nullptr) {
  const std::string bytes = read_file(path, "quantised artifact", "a quantised artifact (magic \"HYBQ\")");
  return read_artifact_memory(bytes.data(), bytes.size(), path, opt, report);
}

// A table of the report for a CLI:
//   stream         tensors   raw bytes  stored bytes  ratio  codec   shuffle    (tried: ...)
//   q6                  90  24,000,000    15,100,000  0.629  lzma    none       raw 24,000,000 lzma
//   15,100,000 ... header                                    12,345 total 15,112,345  (16,000,000 - total =
//   887,655 bytes left for code)
inline std::string format_report(const ArtifactReport& r) {
  auto num = [](std::uint64_t v) {
    std::string s = std::to_string(v);
    for (int i = int(s.size()) - 3; i > 0; i -= 3) s.insert(std::size_t(i), 1, ',');
    return s;
  };
  auto pad = [](std::string s, std::size_t w, bool right) {
    if (s.size() >= w) return s + " ";
    return right ? std::string(w - s.size(), ' ') + s + " " : s + std::string(w - s.size(), ' ') + " ";
  };
  std::string out = pad("stream", 18, false) + pad("tensors", 8, true) + pad("raw bytes", 14, true) +
                    pad("stored bytes", 14, true) + pad("ratio", 6, true) + " " + pad("codec", 7, false) +
                    pad("shuffle", 10, false) + "\n";
  for (const auto& s : r.streams) {
    char ratio[32];
    std::snprintf(ratio, sizeof ratio, "%.3f",
                  s.raw_bytes ? double(s.stored_bytes) / double(s.raw_bytes) : 0.0);
    out += pad(s.name, 18, false) + pad(std::to_string(s.tensors), 8, true) +
           pad(num(s.raw_bytes), 14, true) + pad(num(s.stored_bytes), 14, true) + pad(ratio, 6, true) + " " +
           pad(codec_name(s.codec), 7, false) + pad(shuffle_name(s.shuffle), 10, false);
    if (!s.tried.empty()) {
      out += " (tried:";
      for (const auto& c : s.tried)
        out += std::string(" ") + codec_name(c.codec) +
               (c.shuffle == Shuffle::None ? "" : std::string("+") + shuffle_name(c.shuffle)) + " " +
               num(c.bytes);
      out += ")";
    }
    out += "\n";
  }
  out += pad("header", 18, false) + pad("", 8, true) + pad("", 14, true) +
         pad(num(r.header_bytes), 14, true) + "\n";
  out += pad("total", 18, false) + pad("", 8, true) + pad("", 14, true) + pad(num(r.total_bytes), 14, true);
  if (r.total_bytes <= artifact_golf_limit)
    out += " (" + num(artifact_golf_limit) + " - total = " + num(artifact_golf_limit - r.total_bytes) +
           " bytes left for code)";
  else
    out += " (" + num(r.total_bytes - artifact_golf_limit) + " bytes over the " + num(artifact_golf_limit) +
           "-byte budget)";
  return out + "\n";
}

}  // namespace hybrid::quant
