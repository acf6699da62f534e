// GGUF files (llama.cpp's format): a validating memory-mapped reader and an atomic writer.
// The model mapping (architectures, tensor names, tokenizers) is in gguf/.
//
// Layout (all integers little-endian; REFERENCE.md §5, llama.cpp's ggml/include/gguf.h):
//   "GGUF"  u32 version (2 or 3)  i64 n_tensors  i64 n_kv
//   n_kv × { string key, i32 type, value }          string = u64 length + bytes (no NUL)
//                                                    array  = i32 element type + u64 count + elements
//   n_tensors × { string name, u32 n_dims, i64 ne[n_dims] (fastest first), i32 ggml type,
//                 u64 offset (relative to the data section) }
//   padding to general.alignment (u32, default 32), then the data section.
// A row-major (rows, cols) matrix is ne = [cols, rows].
//
// The reader accepts F32, F16, BF16 and Q8_0 tensors (a Q8_0 block: an f16 scale, then 32
// int8 values); any other ggml type is an error naming the type and the tensor. It checks
// every count, length and offset against the file before trusting it: a truncated or
// corrupted file fails with a message naming the file, the item and what was expected.
//
//   GgufReader r("model.gguf");
//   std::uint32_t n = r.u32("granitehybrid.block_count");
//   const GgufTensor* t = r.find("token_embd.weight");
//   std::vector<float> w(t->numel()); r.read_f32(*t, w.data());   // any type → float
//
//   GgufWriter w;
//   w.set("general.architecture", GgufValue::str("granitehybrid"));
//   w.add_tensor("token_embd.weight", GgmlType::F32, {D, V}, bytes);
//   w.write("out.gguf");                                           // temporary, then rename
#pragma once
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <map>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "../core/atomic_file.hpp"
#include "../core/dtype.hpp"
#include "../core/error.hpp"

namespace hybrid {

static_assert(std::endian::native == std::endian::little,
              "gguf.hpp: the reader and writer assume a little-endian host");

// Value types of the key-value section.
enum class GgufType : std::uint32_t {
  U8 = 0, I8 = 1, U16 = 2, I16 = 3, U32 = 4, I32 = 5, F32 = 6, BOOL = 7,
  STRING = 8, ARRAY = 9, U64 = 10, I64 = 11, F64 = 12,
};

inline const char* gguf_type_name(GgufType t) {
  switch (t) {
    case GgufType::U8: return "u8";
    case GgufType::I8: return "i8";
    case GgufType::U16: return "u16";
    case GgufType::I16: return "i16";
    case GgufType::U32: return "u32";
    case GgufType::I32: return "i32";
    case GgufType::F32: return "f32";
    case GgufType::BOOL: return "bool";
    case GgufType::STRING: return "string";
    case GgufType::ARRAY: return "array";
    case GgufType::U64: return "u64";
    case GgufType::I64: return "i64";
    case GgufType::F64: return "f64";
  }
  return "?";
}

// Tensor types this library reads and writes (ggml's numbering).
enum class GgmlType : std::uint32_t { F32 = 0, F16 = 1, Q8_0 = 8, BF16 = 30 };

inline constexpr std::int64_t kQ8_0Block = 32;       // values per Q8_0 block
inline constexpr std::size_t kQ8_0BlockBytes = 34;   // f16 scale + 32 int8

// ggml's name of a type id (for messages about files that use types we do not read).
inline std::string ggml_type_name(std::uint32_t t) {
  static const char* names[] = {"F32",  "F16",  "Q4_0", "Q4_1", "Q4_2", "Q4_3", "Q5_0", "Q5_1",
                                "Q8_0", "Q8_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q8_K",
                                "IQ2_XXS", "IQ2_XS", "IQ3_XXS", "IQ1_S", "IQ4_NL", "IQ3_S",
                                "IQ2_S", "IQ4_XS", "I8", "I16", "I32", "I64", "F64", "IQ1_M",
                                "BF16", "Q4_0_4_4", "Q4_0_4_8", "Q4_0_8_8", "TQ1_0", "TQ2_0",
                                "IQ4_NL_4_4", "IQ4_NL_4_8", "IQ4_NL_8_8", "MXFP4"};
  if (t < sizeof names / sizeof names[0]) return names[t];
  return "unknown (" + std::to_string(t) + ")";
}

inline bool gguf_supported_type(std::uint32_t t) {
  return t == std::uint32_t(GgmlType::F32) || t == std::uint32_t(GgmlType::F16) ||
         t == std::uint32_t(GgmlType::Q8_0) || t == std::uint32_t(GgmlType::BF16);
}

// Bytes of a row of n values of type t (n a multiple of 32 for Q8_0).
inline std::uint64_t ggml_row_bytes(GgmlType t, std::uint64_t n) {
  switch (t) {
    case GgmlType::F32: return 4 * n;
    case GgmlType::F16:
    case GgmlType::BF16: return 2 * n;
    case GgmlType::Q8_0: return n / kQ8_0Block * kQ8_0BlockBytes;
  }
  return 0;
}

// One metadata value. Integers keep their exact type; arrays hold their elements (of one
// type, possibly arrays themselves).
struct GgufValue {
  GgufType type = GgufType::U32;
  std::uint64_t u = 0;  // U8, U16, U32, U64, BOOL
  std::int64_t i = 0;   // I8, I16, I32, I64
  double f = 0;         // F32, F64
  std::string s;        // STRING
  GgufType elem = GgufType::U32;  // ARRAY: the element type
  std::vector<GgufValue> items;   // ARRAY

  static GgufValue u32(std::uint32_t v) { return unsigned_of(GgufType::U32, v); }
  static GgufValue u64(std::uint64_t v) { return unsigned_of(GgufType::U64, v); }
  static GgufValue i32(std::int32_t v) {
    GgufValue x;
    x.type = GgufType::I32;
    x.i = v;
    return x;
  }
  static GgufValue f32(float v) {
    GgufValue x;
    x.type = GgufType::F32;
    x.f = v;
    return x;
  }
  static GgufValue boolean(bool v) { return unsigned_of(GgufType::BOOL, v ? 1 : 0); }
  static GgufValue str(std::string v) {
    GgufValue x;
    x.type = GgufType::STRING;
    x.s = std::move(v);
    return x;
  }
  static GgufValue array(GgufType elem, std::vector<GgufValue> items) {
    GgufValue x;
    x.type = GgufType::ARRAY;
    x.elem = elem;
    for (const auto& e : items)
      HYBRID_CHECK(e.type == elem, "GgufValue::array: an element of type ", gguf_type_name(e.type),
                   " in an array of ", gguf_type_name(elem));
    x.items = std::move(items);
    return x;
  }
  static GgufValue strings(const std::vector<std::string>& v) {
    std::vector<GgufValue> items;
    items.reserve(v.size());
    for (const auto& s : v) items.push_back(str(s));
    return array(GgufType::STRING, std::move(items));
  }

  bool is_unsigned() const {
    return type == GgufType::U8 || type == GgufType::U16 || type == GgufType::U32 || type == GgufType::U64;
  }
  bool is_signed() const {
    return type == GgufType::I8 || type == GgufType::I16 || type == GgufType::I32 || type == GgufType::I64;
  }
  bool is_float() const { return type == GgufType::F32 || type == GgufType::F64; }

  // A brief rendering for messages: 42, 1e-05, "text", [u32 × 24].
  std::string brief() const {
    switch (type) {
      case GgufType::STRING: return "\"" + (s.size() > 40 ? s.substr(0, 40) + "..." : s) + "\"";
      case GgufType::ARRAY: return "[" + std::string(gguf_type_name(elem)) + " x " + std::to_string(items.size()) + "]";
      case GgufType::BOOL: return u ? "true" : "false";
      case GgufType::F32:
      case GgufType::F64: return hybrid::detail::concat_str(f);
      default: return is_signed() ? std::to_string(i) : std::to_string(u);
    }
  }

  bool operator==(const GgufValue& o) const {
    return type == o.type && u == o.u && i == o.i && (f == o.f || (f != f && o.f != o.f)) && s == o.s &&
           (type != GgufType::ARRAY || (elem == o.elem && items == o.items));
  }

 private:
  static GgufValue unsigned_of(GgufType t, std::uint64_t v) {
    GgufValue x;
    x.type = t;
    x.u = v;
    return x;
  }
};

struct GgufTensor {
  std::string name;
  std::vector<std::int64_t> ne;  // fastest first: a (rows, cols) matrix is {cols, rows}
  GgmlType type = GgmlType::F32;
  std::uint64_t offset = 0;      // relative to the data section
  std::uint64_t bytes = 0;

  std::int64_t numel() const {
    std::int64_t n = 1;
    for (auto d : ne) n *= d;
    return n;
  }
  // Rows and columns of the row-major matrix the tensor stores (1-D: one row).
  std::int64_t cols() const { return ne.empty() ? 1 : ne[0]; }
  std::int64_t rows() const { return ne.empty() ? 1 : numel() / std::max<std::int64_t>(ne[0], 1); }
  std::string shape_str() const {
    std::string s = "[";
    for (std::size_t k = 0; k < ne.size(); ++k) s += (k ? ", " : "") + std::to_string(ne[k]);
    return s + "]";
  }
};

// Limits a valid file stays far below; a field beyond them is corruption, reported as such
// instead of an attempt to allocate it.
inline constexpr std::uint64_t gguf_max_string = std::uint64_t(1) << 30;
inline constexpr int gguf_max_depth = 4;        // arrays of arrays of ...
inline constexpr std::size_t gguf_max_name = 63;  // llama.cpp's GGML_MAX_NAME - 1
inline constexpr std::uint32_t gguf_max_dims = 4;

namespace gguf_detail {
// Byte cursor over [p, end): every read checks the bytes remain.
struct Cursor {
  const unsigned char* base;
  std::size_t size;
  std::size_t at = 0;
  const std::string* file;

  template <class... A>
  [[noreturn]] void bad(const A&... a) const {
    throw Error(hybrid::detail::concat_str("GGUF file '", *file, "': ", a...));
  }
  void need(std::uint64_t n, const char* what) const {
    if (n > size - at)
      bad(what, " at byte ", at, " needs ", n, " bytes but the file has ", size - at,
          " left (truncated?)");
  }
  template <class T>
  T get(const char* what) {
    need(sizeof(T), what);
    T v;
    std::memcpy(&v, base + at, sizeof(T));
    at += sizeof(T);
    return v;
  }
  std::string string(const char* what, std::uint64_t max = gguf_max_string) {
    const auto n = get<std::uint64_t>(what);
    if (n > max) bad(what, ": length ", n, " exceeds the limit of ", max, " bytes (corrupt length?)");
    need(n, what);
    std::string s(reinterpret_cast<const char*>(base + at), std::size_t(n));
    at += std::size_t(n);
    return s;
  }
};

inline std::size_t scalar_size(GgufType t) {
  switch (t) {
    case GgufType::U8:
    case GgufType::I8:
    case GgufType::BOOL: return 1;
    case GgufType::U16:
    case GgufType::I16: return 2;
    case GgufType::U32:
    case GgufType::I32:
    case GgufType::F32: return 4;
    case GgufType::U64:
    case GgufType::I64:
    case GgufType::F64: return 8;
    default: return 0;
  }
}
}  // namespace gguf_detail

class GgufReader {
 public:
  // Maps the file read-only and validates it; throws hybrid::Error naming the file and the
  // problem.
  explicit GgufReader(const std::string& path) : path_(path) {
    map_file();
    try {
      parse();
    } catch (...) {
      unmap();
      throw;
    }
  }
  // The same over bytes in memory, which must outlive the reader (a fuzzer's input).
  static GgufReader from_memory(const void* data, std::size_t size, std::string name = "<memory>") {
    GgufReader r;
    r.path_ = std::move(name);
    r.base_ = static_cast<const unsigned char*>(data);
    r.size_ = size;
    r.parse();
    return r;
  }
  GgufReader(const GgufReader&) = delete;
  GgufReader& operator=(const GgufReader&) = delete;
  GgufReader(GgufReader&& o) noexcept { *this = std::move(o); }
  GgufReader& operator=(GgufReader&& o) noexcept {
    if (this != &o) {
      unmap();
      path_ = std::move(o.path_);
      version_ = o.version_;
      alignment_ = o.alignment_;
      kv_ = std::move(o.kv_);
      order_ = std::move(o.order_);
      tensors_ = std::move(o.tensors_);
      base_ = std::exchange(o.base_, nullptr);
      data_ = std::exchange(o.data_, nullptr);
      size_ = std::exchange(o.size_, 0);
      mapped_ = std::exchange(o.mapped_, false);
    }
    return *this;
  }
  ~GgufReader() { unmap(); }

  const std::string& path() const { return path_; }
  std::uint32_t version() const { return version_; }
  std::uint32_t alignment() const { return alignment_; }
  // Keys in file order.
  const std::vector<std::string>& keys() const { return order_; }
  const std::map<std::string, GgufValue>& metadata() const { return kv_; }
  // In file order.
  const std::vector<GgufTensor>& tensors() const { return tensors_; }

  const GgufValue* get(const std::string& key) const {
    const auto it = kv_.find(key);
    return it == kv_.end() ? nullptr : &it->second;
  }
  bool has(const std::string& key) const { return get(key) != nullptr; }
  const GgufTensor* find(std::string_view name) const {
    for (const auto& t : tensors_)
      if (t.name == name) return &t;
    return nullptr;
  }

  // Typed access: a missing key or one of another type is an error naming both.
  const GgufValue& at(const std::string& key, GgufType type) const {
    const GgufValue* v = get(key);
    if (!v) bad("key '", key, "' is missing (expected type ", gguf_type_name(type), ")");
    if (v->type != type)
      bad("key '", key, "' has type ", gguf_type_name(v->type), " (", v->brief(), "), expected ",
          gguf_type_name(type));
    return *v;
  }
  std::uint32_t u32(const std::string& key) const { return std::uint32_t(at(key, GgufType::U32).u); }
  float f32(const std::string& key) const { return float(at(key, GgufType::F32).f); }
  bool boolean(const std::string& key) const { return at(key, GgufType::BOOL).u != 0; }
  const std::string& str(const std::string& key) const { return at(key, GgufType::STRING).s; }
  // An array of `elem` (checked).
  const std::vector<GgufValue>& array(const std::string& key, GgufType elem) const {
    const GgufValue& v = at(key, GgufType::ARRAY);
    if (v.elem != elem)
      bad("key '", key, "' is an array of ", gguf_type_name(v.elem), " values, expected an array of ",
          gguf_type_name(elem), " values");
    return v.items;
  }

  // The tensor's bytes in the mapping.
  const unsigned char* bytes(const GgufTensor& t) const { return data_ + t.offset; }

  // numel() floats from any supported type (Q8_0 dequantised: scale × q).
  void read_f32(const GgufTensor& t, float* out) const {
    const unsigned char* p = bytes(t);
    const std::int64_t n = t.numel();
    switch (t.type) {
      case GgmlType::F32: std::memcpy(out, p, std::size_t(n) * 4); return;
      case GgmlType::F16:
      case GgmlType::BF16:
        for (std::int64_t k = 0; k < n; ++k) {
          std::uint16_t h;
          std::memcpy(&h, p + 2 * k, 2);
          out[k] = t.type == GgmlType::F16 ? f16_to_f32(h) : bf16_to_f32(h);
        }
        return;
      case GgmlType::Q8_0:
        for (std::int64_t b = 0; b < n / kQ8_0Block; ++b) {
          const unsigned char* blk = p + std::size_t(b) * kQ8_0BlockBytes;
          std::uint16_t h;
          std::memcpy(&h, blk, 2);
          const float d = f16_to_f32(h);
          for (std::int64_t k = 0; k < kQ8_0Block; ++k)
            out[b * kQ8_0Block + k] = d * float(std::int8_t(blk[2 + k]));
        }
        return;
    }
  }

  // A Q8_0 tensor's values and scales as they are: q (numel int8) and one float scale per
  // block of 32 (numel / 32), in row order — the int8 group-32 storage of ops::QWeight.
  void read_q8_0(const GgufTensor& t, std::int8_t* q, float* scales) const {
    HYBRID_CHECK(t.type == GgmlType::Q8_0, "GGUF file '", path_, "': tensor '", t.name, "' is ",
                 ggml_type_name(std::uint32_t(t.type)), ", not Q8_0");
    const unsigned char* p = bytes(t);
    for (std::int64_t b = 0; b < t.numel() / kQ8_0Block; ++b) {
      const unsigned char* blk = p + std::size_t(b) * kQ8_0BlockBytes;
      std::uint16_t h;
      std::memcpy(&h, blk, 2);
      scales[b] = f16_to_f32(h);
      std::memcpy(q + b * kQ8_0Block, blk + 2, kQ8_0Block);
    }
  }

  template <class... A>
  [[noreturn]] void bad(const A&... a) const {
    throw Error(hybrid::detail::concat_str("GGUF file '", path_, "': ", a...));
  }

 private:
  GgufReader() = default;

  void map_file() {
    const int fd = ::open(path_.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) bad("cannot open: ", std::strerror(errno));
    struct stat st {};
    if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
      ::close(fd);
      bad("not a regular file");
    }
    size_ = std::size_t(st.st_size);
    if (size_ < 24) {
      ::close(fd);
      bad("file is ", size_, " bytes, too short for the 24-byte GGUF header (truncated, or not GGUF?)");
    }
    void* p = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
    const int err = errno;
    ::close(fd);
    if (p == MAP_FAILED) {
      size_ = 0;
      bad("mmap failed: ", std::strerror(err));
    }
    base_ = static_cast<const unsigned char*>(p);
    mapped_ = true;
  }
  void unmap() {
    if (base_ && mapped_) ::munmap(const_cast<unsigned char*>(base_), size_);
    base_ = data_ = nullptr;
    size_ = 0;
    mapped_ = false;
  }

  GgufValue read_value(gguf_detail::Cursor& c, GgufType t, const std::string& key, int depth) const {
    using gguf_detail::scalar_size;
    GgufValue v;
    v.type = t;
    switch (t) {
      case GgufType::U8: v.u = c.get<std::uint8_t>("value"); break;
      case GgufType::U16: v.u = c.get<std::uint16_t>("value"); break;
      case GgufType::U32: v.u = c.get<std::uint32_t>("value"); break;
      case GgufType::U64: v.u = c.get<std::uint64_t>("value"); break;
      case GgufType::I8: v.i = c.get<std::int8_t>("value"); break;
      case GgufType::I16: v.i = c.get<std::int16_t>("value"); break;
      case GgufType::I32: v.i = c.get<std::int32_t>("value"); break;
      case GgufType::I64: v.i = c.get<std::int64_t>("value"); break;
      case GgufType::F32: v.f = c.get<float>("value"); break;
      case GgufType::F64: v.f = c.get<double>("value"); break;
      case GgufType::BOOL: {
        const auto b = c.get<std::uint8_t>("value");
        if (b > 1) bad("key '", key, "': a bool holds ", int(b), ", expected 0 or 1");
        v.u = b;
        break;
      }
      case GgufType::STRING: v.s = c.string("string value"); break;
      case GgufType::ARRAY: {
        if (depth >= gguf_max_depth)
          bad("key '", key, "': arrays nested deeper than ", gguf_max_depth, " levels");
        const auto et = c.get<std::uint32_t>("array element type");
        if (et > std::uint32_t(GgufType::F64))
          bad("key '", key, "': array element type ", et, " is not a GGUF value type (0-12)");
        v.elem = GgufType(et);
        const auto n = c.get<std::uint64_t>("array length");
        // Every element takes at least one byte (a string its 8-byte length): a count the
        // rest of the file cannot hold is corruption.
        const std::size_t min_bytes = v.elem == GgufType::STRING || v.elem == GgufType::ARRAY
                                          ? 8 : scalar_size(v.elem);
        if (n > (c.size - c.at) / min_bytes)
          bad("key '", key, "': array of ", n, " ", gguf_type_name(v.elem), " values does not fit in the ",
              c.size - c.at, " bytes left (truncated or corrupt count?)");
        v.items.reserve(std::size_t(n));
        for (std::uint64_t k = 0; k < n; ++k) v.items.push_back(read_value(c, v.elem, key, depth + 1));
        break;
      }
      default: bad("key '", key, "': value type ", std::uint32_t(t), " is not a GGUF value type (0-12)");
    }
    return v;
  }

  void parse() {
    gguf_detail::Cursor c{base_, size_, 0, &path_};
    if (size_ < 4 || std::memcmp(base_, "GGUF", 4) != 0)
      bad("does not start with the magic \"GGUF\" (not a GGUF file?)");
    c.at = 4;
    version_ = c.get<std::uint32_t>("version");
    if (version_ != 2 && version_ != 3) bad("version ", version_, " is not supported (expected 2 or 3)");
    const auto n_tensors = c.get<std::int64_t>("tensor count");
    const auto n_kv = c.get<std::int64_t>("key-value count");
    // A key takes at least 12 bytes (length + type), a tensor info at least 28.
    if (n_kv < 0 || std::uint64_t(n_kv) > (size_ - c.at) / 12)
      bad("key-value count ", n_kv, " does not fit in the file (corrupt header?)");
    if (n_tensors < 0 || std::uint64_t(n_tensors) > (size_ - c.at) / 28)
      bad("tensor count ", n_tensors, " does not fit in the file (corrupt header?)");
    for (std::int64_t k = 0; k < n_kv; ++k) {
      std::string key = c.string("key");
      if (key.empty()) bad("key ", k, " is empty");
      const auto t = c.get<std::uint32_t>("value type");
      if (t > std::uint32_t(GgufType::F64))
        bad("key '", key, "': value type ", t, " is not a GGUF value type (0-12)");
      GgufValue v = read_value(c, GgufType(t), key, 0);
      if (kv_.count(key)) bad("key '", key, "' appears twice");
      order_.push_back(key);
      kv_.emplace(std::move(key), std::move(v));
    }
    alignment_ = 32;
    if (const GgufValue* a = get("general.alignment")) {
      if (a->type != GgufType::U32)
        bad("key 'general.alignment' has type ", gguf_type_name(a->type), ", expected u32");
      if (a->u == 0 || (a->u & (a->u - 1)) != 0)
        bad("general.alignment is ", a->u, ", expected a power of two");
      alignment_ = std::uint32_t(a->u);
    }
    for (std::int64_t k = 0; k < n_tensors; ++k) {
      GgufTensor t;
      t.name = c.string("tensor name", 1 << 16);
      if (t.name.empty() || t.name.size() > gguf_max_name)
        bad("tensor ", k, ": name '", t.name.substr(0, 80), "' has ", t.name.size(), " bytes, expected 1 to ",
            gguf_max_name);
      const auto nd = c.get<std::uint32_t>("tensor dimension count");
      if (nd == 0 || nd > gguf_max_dims)
        bad("tensor '", t.name, "': ", nd, " dimensions, expected 1 to ", gguf_max_dims);
      std::int64_t numel = 1;
      for (std::uint32_t d = 0; d < nd; ++d) {
        const auto e = c.get<std::int64_t>("tensor dimension");
        if (e <= 0) bad("tensor '", t.name, "': dimension ", d, " is ", e, ", expected a positive size");
        if (numel > (std::int64_t(1) << 50) / e)
          bad("tensor '", t.name, "': its dimensions multiply to more than 2^50 elements");
        numel *= e;
        t.ne.push_back(e);
      }
      const auto ty = c.get<std::uint32_t>("tensor type");
      if (!gguf_supported_type(ty))
        bad("tensor '", t.name, "' has type ", ggml_type_name(ty),
            "; this reader takes F32, F16, BF16 and Q8_0 (requantise the file to one of them)");
      t.type = GgmlType(ty);
      if (t.type == GgmlType::Q8_0 && t.ne[0] % kQ8_0Block != 0)
        bad("tensor '", t.name, "': Q8_0 needs its first dimension (", t.ne[0], ") to be a multiple of 32");
      t.offset = c.get<std::uint64_t>("tensor offset");
      if (t.offset % alignment_ != 0)
        bad("tensor '", t.name, "': offset ", t.offset, " is not a multiple of the alignment ", alignment_);
      t.bytes = ggml_row_bytes(t.type, std::uint64_t(t.ne[0])) * std::uint64_t(numel / t.ne[0]);
      for (const auto& o : tensors_)
        if (o.name == t.name) bad("tensor '", t.name, "' appears twice");
      tensors_.push_back(std::move(t));
    }
    const std::size_t data_at = (c.at + alignment_ - 1) / alignment_ * alignment_;
    if (data_at > size_ && !tensors_.empty())
      bad("the data section would start at byte ", data_at, ", past the end of the ", size_, "-byte file (truncated?)");
    data_ = base_ + std::min(data_at, size_);
    const std::uint64_t avail = size_ - std::min(data_at, size_);
    // Inside the data section, and no two tensors share a byte.
    std::vector<const GgufTensor*> by_offset;
    for (const auto& t : tensors_) {
      if (t.offset > avail || t.bytes > avail - t.offset)
        bad("tensor '", t.name, "' (", ggml_type_name(std::uint32_t(t.type)), " ", t.shape_str(), ", ", t.bytes,
            " bytes at offset ", t.offset, ") runs past the end of the data section (", avail,
            " bytes; truncated?)");
      by_offset.push_back(&t);
    }
    std::sort(by_offset.begin(), by_offset.end(),
              [](const GgufTensor* a, const GgufTensor* b) { return a->offset < b->offset; });
    for (std::size_t k = 1; k < by_offset.size(); ++k)
      if (by_offset[k]->offset < by_offset[k - 1]->offset + by_offset[k - 1]->bytes)
        bad("tensor '", by_offset[k]->name, "' at offset ", by_offset[k]->offset, " overlaps tensor '",
            by_offset[k - 1]->name, "' (", by_offset[k - 1]->bytes, " bytes at offset ", by_offset[k - 1]->offset, ")");
  }

  std::string path_;
  std::uint32_t version_ = 3;
  std::uint32_t alignment_ = 32;
  std::map<std::string, GgufValue> kv_;
  std::vector<std::string> order_;
  std::vector<GgufTensor> tensors_;
  const unsigned char* base_ = nullptr;
  const unsigned char* data_ = nullptr;
  std::size_t size_ = 0;
  bool mapped_ = false;
};

// Collects metadata and tensors, then writes a version-3 file atomically. Keys keep their
// insertion order (set() on an existing key replaces its value in place); tensors are laid
// out in insertion order, each padded to the alignment.
class GgufWriter {
 public:
  void set(const std::string& key, GgufValue v) {
    HYBRID_CHECK(!key.empty(), "GgufWriter: empty key");
    for (auto& [k, old] : kv_)
      if (k == key) {
        old = std::move(v);
        return;
      }
    kv_.emplace_back(key, std::move(v));
  }
  const GgufValue* get(const std::string& key) const {
    for (const auto& [k, v] : kv_)
      if (k == key) return &v;
    return nullptr;
  }

  // Removes a key or a tensor; false when there is none of that name.
  bool remove(const std::string& key) {
    for (auto it = kv_.begin(); it != kv_.end(); ++it)
      if (it->first == key) {
        kv_.erase(it);
        return true;
      }
    return false;
  }
  bool remove_tensor(const std::string& name) {
    for (auto it = tensors_.begin(); it != tensors_.end(); ++it)
      if (it->name == name) {
        tensors_.erase(it);
        return true;
      }
    return false;
  }
  std::size_t tensor_count() const { return tensors_.size(); }

  // ne fastest first; `data` holds the tensor in `type` (ggml_row_bytes(type, ne[0]) per row).
  void add_tensor(const std::string& name, GgmlType type, std::vector<std::int64_t> ne,
                  std::vector<unsigned char> data) {
    HYBRID_CHECK(!name.empty() && name.size() <= gguf_max_name, "GgufWriter: tensor name '", name, "' has ",
                 name.size(), " bytes, expected 1 to ", gguf_max_name);
    HYBRID_CHECK(!ne.empty() && ne.size() <= gguf_max_dims, "GgufWriter: tensor '", name, "' has ", ne.size(),
                 " dimensions, expected 1 to ", gguf_max_dims);
    std::uint64_t numel = 1;
    for (auto d : ne) {
      HYBRID_CHECK(d > 0, "GgufWriter: tensor '", name, "' has a dimension of ", d);
      numel *= std::uint64_t(d);
    }
    HYBRID_CHECK(type != GgmlType::Q8_0 || ne[0] % kQ8_0Block == 0, "GgufWriter: Q8_0 tensor '", name,
                 "' needs ne[0] (", ne[0], ") to be a multiple of 32");
    const std::uint64_t bytes = ggml_row_bytes(type, std::uint64_t(ne[0])) * (numel / std::uint64_t(ne[0]));
    HYBRID_CHECK(data.size() == bytes, "GgufWriter: tensor '", name, "' has ", data.size(), " bytes, expected ",
                 bytes, " for ", ggml_type_name(std::uint32_t(type)));
    for (const auto& t : tensors_)
      HYBRID_CHECK(t.name != name, "GgufWriter: tensor '", name, "' added twice");
    tensors_.push_back({name, std::move(ne), type, std::move(data)});
  }

  // The whole file as bytes.
  std::string bytes() const {
    std::string out = header();
    for (const auto& t : tensors_) {
      out.append(reinterpret_cast<const char*>(t.data.data()), t.data.size());
      out.resize(pad(out.size(), alignment()), '\0');
    }
    return out;
  }

  // Writes the file through a temporary and a rename: an existing file is replaced whole
  // or left as it was.
  void write(const std::string& path) const {
    const std::uint32_t align = alignment();
    AtomicFile f(path, "writing GGUF '" + path + "'");
    f.write(header());
    static const char zeros[256] = {};
    for (const auto& t : tensors_) {
      f.write(t.data.data(), t.data.size());
      for (std::size_t n = pad(t.data.size(), align) - t.data.size(); n > 0;) {
        const std::size_t k = std::min(n, sizeof zeros);
        f.write(zeros, k);
        n -= k;
      }
    }
    f.commit();
  }
  // Bytes of the file write() produces.
  std::uint64_t size() const {
    std::uint64_t n = header().size();
    for (const auto& t : tensors_) n += pad(t.data.size(), alignment());
    return n;
  }

 private:
  struct Tensor {
    std::string name;
    std::vector<std::int64_t> ne;
    GgmlType type;
    std::vector<unsigned char> data;
  };

  // Magic, counts, metadata and tensor infos, padded to the alignment.
  std::string header() const {
    const std::uint32_t align = alignment();
    std::string out;
    put(out, "GGUF", 4);
    pod(out, std::uint32_t(3));
    pod(out, std::int64_t(tensors_.size()));
    pod(out, std::int64_t(kv_.size()));
    for (const auto& [k, v] : kv_) {
      string(out, k);
      pod(out, std::uint32_t(v.type));
      value(out, v);
    }
    std::uint64_t offset = 0;
    for (const auto& t : tensors_) {
      string(out, t.name);
      pod(out, std::uint32_t(t.ne.size()));
      for (auto d : t.ne) pod(out, std::int64_t(d));
      pod(out, std::uint32_t(t.type));
      pod(out, offset);
      offset += pad(t.data.size(), align);
    }
    out.resize(pad(out.size(), align), '\0');
    return out;
  }
  std::uint32_t alignment() const {
    if (const GgufValue* a = get("general.alignment")) {
      HYBRID_CHECK(a->type == GgufType::U32 && a->u > 0 && (a->u & (a->u - 1)) == 0,
                   "GgufWriter: general.alignment must be a u32 power of two, got ", a->brief());
      return std::uint32_t(a->u);
    }
    return 32;
  }
  static std::size_t pad(std::size_t n, std::size_t a) { return (n + a - 1) / a * a; }
  static void put(std::string& o, const void* p, std::size_t n) { o.append(static_cast<const char*>(p), n); }
  template <class T>
  static void pod(std::string& o, T v) {
    put(o, &v, sizeof v);
  }
  static void string(std::string& o, const std::string& s) {
    pod(o, std::uint64_t(s.size()));
    o += s;
  }
  static void value(std::string& o, const GgufValue& v) {
    switch (v.type) {
      case GgufType::U8: pod(o, std::uint8_t(v.u)); break;
      case GgufType::U16: pod(o, std::uint16_t(v.u)); break;
      case GgufType::U32: pod(o, std::uint32_t(v.u)); break;
      case GgufType::U64: pod(o, std::uint64_t(v.u)); break;
      case GgufType::BOOL: pod(o, std::uint8_t(v.u ? 1 : 0)); break;
      case GgufType::I8: pod(o, std::int8_t(v.i)); break;
      case GgufType::I16: pod(o, std::int16_t(v.i)); break;
      case GgufType::I32: pod(o, std::int32_t(v.i)); break;
      case GgufType::I64: pod(o, std::int64_t(v.i)); break;
      case GgufType::F32: pod(o, float(v.f)); break;
      case GgufType::F64: pod(o, double(v.f)); break;
      case GgufType::STRING: string(o, v.s); break;
      case GgufType::ARRAY:
        pod(o, std::uint32_t(v.elem));
        pod(o, std::uint64_t(v.items.size()));
        for (const auto& e : v.items) value(o, e);
        break;
    }
  }

  std::vector<std::pair<std::string, GgufValue>> kv_;
  std::vector<Tensor> tensors_;
};

// Float values → the bytes of a tensor of `type` (Q8_0: per block of 32, scale = max|x| / 127
// rounded to f16, q = round(x / scale), as ggml quantises).
inline std::vector<unsigned char> gguf_encode(GgmlType type, const float* x, std::int64_t n) {
  std::vector<unsigned char> out(std::size_t(ggml_row_bytes(type, std::uint64_t(n))));
  unsigned char* p = out.data();
  switch (type) {
    case GgmlType::F32: std::memcpy(p, x, std::size_t(n) * 4); break;
    case GgmlType::F16:
    case GgmlType::BF16:
      for (std::int64_t k = 0; k < n; ++k) {
        const std::uint16_t h = type == GgmlType::F16 ? f32_to_f16(x[k]) : f32_to_bf16(x[k]);
        std::memcpy(p + 2 * k, &h, 2);
      }
      break;
    case GgmlType::Q8_0:
      HYBRID_CHECK(n % kQ8_0Block == 0, "gguf_encode: Q8_0 needs a multiple of 32 values, got ", n);
      for (std::int64_t b = 0; b < n / kQ8_0Block; ++b) {
        const float* xb = x + b * kQ8_0Block;
        float amax = 0;
        for (std::int64_t k = 0; k < kQ8_0Block; ++k) amax = std::max(amax, std::abs(xb[k]));
        const float d = amax / 127.f;
        const float id = d != 0 ? 1.f / d : 0.f;
        unsigned char* blk = p + std::size_t(b) * kQ8_0BlockBytes;
        const std::uint16_t h = f32_to_f16(d);
        std::memcpy(blk, &h, 2);
        for (std::int64_t k = 0; k < kQ8_0Block; ++k)
          blk[2 + k] = static_cast<unsigned char>(std::int8_t(std::lround(xb[k] * id)));
      }
      break;
  }
  return out;
}

}  // namespace hybrid
