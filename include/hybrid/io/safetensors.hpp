// safetensors files: a validating memory-mapped reader and an atomic writer.
//
// Layout of a file (all integers little-endian):
//   [0, 8)          u64 N, the header length
//   [8, 8 + N)      JSON header, padded with spaces so that 8 + N is a multiple of 8:
//                   {"embed.weight": {"dtype": "F32", "shape": [258, 32],
//                                     "data_offsets": [0, 33024]}, ...,
//                    "__metadata__": {"hybrid.format": "hybrid-1", ...}}
//   [8 + N, end)    data buffer; data_offsets are [begin, end) byte offsets into it.
// The reader accepts a file only if the tensors tile the buffer exactly: no overlap, no
// hole, nothing past the end, and every byte count equals product(shape) * dtype size.
// The header rules it enforces, each failure naming the file, the tensor and the field:
//   - the length field is at most safetensors_max_header bytes and fits in the file;
//   - the header is JSON, an object, no key twice in any object, nesting at most
//     safetensors_max_depth levels (a valid header needs 3);
//   - each tensor entry is an object with exactly dtype (F32, F64, F16 or BF16), shape
//     (a list of non-negative integers) and data_offsets ([begin, end], begin <= end);
//   - "__metadata__", if present, is an object whose values are all strings.
//
//   SafetensorsReader r("model.safetensors");
//   const TensorInfo* t = r.find("embed.weight");   // nullptr if absent
//   std::vector<float> w(t->numel()); r.read(*t, w.data());   // F16/BF16/F32/F64 → float
//   if (auto v = r.try_view<float>(*t)) use(*v);     // F32 in the file: no copy at all
//   auto m = SafetensorsReader::from_memory(p, n);    // the same over bytes in memory
// Sharded checkpoint directories (model.safetensors.index.json): sharded.hpp.
#pragma once
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include "../core/atomic_file.hpp"
#include "../core/error.hpp"

namespace hybrid {

static_assert(std::endian::native == std::endian::little,
              "safetensors.hpp: the reader and writer assume a little-endian host");

enum class Dtype { F32, F64, F16, BF16 };

inline const char* dtype_name(Dtype d) {
  switch (d) {
    case Dtype::F32: return "F32";
    case Dtype::F64: return "F64";
    case Dtype::F16: return "F16";
    case Dtype::BF16: return "BF16";
  }
  return "?";
}
inline std::size_t dtype_size(Dtype d) {
  return d == Dtype::F64 ? 8 : d == Dtype::F32 ? 4 : 2;
}
// The file dtype that holds S exactly: F32 for float, F64 for double.
template <class S>
constexpr Dtype dtype_of() {
  static_assert(std::is_same_v<S, float> || std::is_same_v<S, double>,
                "dtype_of<S>: S must be float or double");
  return std::is_same_v<S, float> ? Dtype::F32 : Dtype::F64;
}
// The dtype named by a header's "dtype" string, or nullopt for any other name.
inline std::optional<Dtype> dtype_from_name(std::string_view n) {
  for (Dtype d : {Dtype::F32, Dtype::F64, Dtype::F16, Dtype::BF16})
    if (n == dtype_name(d)) return d;
  return std::nullopt;
}
inline constexpr const char* supported_dtypes = "F32, F64, F16 or BF16";

// A header longer than this is taken as a corrupt length field rather than read: real
// headers are a few hundred bytes per tensor, so even 10^5 tensors stay far below it.
inline constexpr std::uint64_t safetensors_max_header = 100u << 20;
// Deepest JSON nesting the reader accepts (the root object is level 1). A valid header
// needs 3 (root → tensor entry → shape list); the bound keeps a hostile header from making
// the recursive parts of nlohmann::json (dump, used in error messages) overflow the stack.
inline constexpr int safetensors_max_depth = 16;

struct TensorInfo {
  std::string name;
  Dtype dtype = Dtype::F32;
  std::vector<std::int64_t> shape;  // [] is a scalar (one element)
  std::uint64_t begin = 0, end = 0;  // byte range in the data buffer
  std::int64_t numel() const {
    std::int64_t n = 1;
    for (auto d : shape) n *= d;  // validated by the reader not to overflow
    return n;
  }
};

// One tensor to write: `data` holds product(shape) elements of `dtype`, contiguous.
struct TensorRef {
  std::string name;
  Dtype dtype = Dtype::F32;
  std::vector<std::int64_t> shape;
  const void* data = nullptr;
};

namespace st_detail {

inline std::string shape_str(const std::vector<std::int64_t>& s) {
  std::string r = "[";
  for (std::size_t i = 0; i < s.size(); ++i) r += (i ? ", " : "") + std::to_string(s[i]);
  return r + "]";
}

// Short rendering of a JSON value for error messages.
inline std::string json_brief(const nlohmann::json& j) {
  std::string s = j.dump();
  return s.size() > 60 ? s.substr(0, 57) + "..." : s;
}

// IEEE half → float, exact (every half is a float), including subnormals, inf and NaN.
inline float half_to_float(std::uint16_t h) {
  const std::uint32_t sign = std::uint32_t(h & 0x8000u) << 16;
  const std::uint32_t exp = (h >> 10) & 0x1f, man = h & 0x3ffu;
  std::uint32_t bits;
  if (exp == 0x1f) {
    bits = sign | 0x7f800000u | (man << 13);
  } else if (exp != 0) {
    bits = sign | ((exp + 112) << 23) | (man << 13);
  } else {  // zero or subnormal: man * 2^-24
    const float v = float(man) * 0x1p-24f;
    return sign ? -v : v;
  }
  return std::bit_cast<float>(bits);
}
inline float bf16_to_float(std::uint16_t b) { return std::bit_cast<float>(std::uint32_t(b) << 16); }

// A message with any NUL byte (JSON strings may hold one, as \u0000) written as "\0", so
// that Error::what(), a C string, does not end at a name from the file.
inline std::string printable(std::string s) {
  for (std::size_t i; (i = s.find('\0')) != std::string::npos;) s.replace(i, 1, "\\0");
  return s;
}

// Non-negative JSON integer that fits in 63 bits, else nullopt-like false.
inline bool json_uint(const nlohmann::json& j, std::uint64_t& out) {
  if (j.is_number_unsigned()) out = j.get<std::uint64_t>();
  else if (j.is_number_integer() && j.get<std::int64_t>() >= 0) out = std::uint64_t(j.get<std::int64_t>());
  else return false;
  return out <= std::uint64_t(INT64_MAX);
}

// Parses JSON text like nlohmann::json::parse, but also rejects what it accepts silently:
// a key twice in one object (nlohmann keeps the last one, so which value counts would
// depend on the parser) and nesting deeper than max_depth levels (the recursive parts of
// nlohmann::json, dump() in error messages, would overflow the stack on a hostile input).
// Throws hybrid::Error with a message that the caller prefixes with the file's name;
// `where(keys)` names the object a duplicate was found in, given the keys leading to it.
template <class Where>
nlohmann::json parse_json_checked(std::string_view text, int max_depth, const Where& where) {
  // nlohmann's lexer takes a NUL byte for the end of the input and ignores what follows.
  if (const std::size_t z = text.find('\0'); z != std::string_view::npos)
    fail("not valid JSON: NUL byte at offset ", z, " (expected JSON text, padded with spaces)");
  std::vector<std::set<std::string>> open;  // the keys seen in each enclosing object
  std::vector<std::string> path;            // the key of each enclosing value below the root
  std::string key;
  using ev = nlohmann::json::parse_event_t;
  auto cb = [&](int depth, ev e, nlohmann::json& v) {
    switch (e) {
      case ev::object_start:
      case ev::array_start:
        if (depth >= max_depth)
          fail("JSON nested more than ", max_depth, " levels deep (expected at most ", max_depth, ")");
        path.resize(std::size_t(depth));
        if (depth > 0) path.back() = key;
        if (e == ev::object_start) open.emplace_back();
        break;
      case ev::object_end:
        open.pop_back();
        break;
      case ev::key:
        key = v.get<std::string>();
        if (!open.back().insert(key).second) {
          path.resize(std::size_t(depth - 1));
          fail("key '", key, "' appears twice in ", where(path), " (expected unique keys)");
        }
        break;
      default:
        break;
    }
    return true;
  };
  try {
    return nlohmann::json::parse(text.begin(), text.end(), cb);
  } catch (const nlohmann::json::exception& e) {
    fail("not valid JSON: ", e.what());
  }
}

}  // namespace st_detail

class SafetensorsReader {
 public:
  // Maps the file read-only and validates its header; throws hybrid::Error naming the file
  // and what is wrong with it.
  explicit SafetensorsReader(const std::string& path) : path_(path) {
    map_file();
    try {
      parse();
    } catch (...) {
      unmap();
      throw;
    }
  }
  // Reads a safetensors image already in memory (an embedded blob, a fuzzer's input)
  // without copying it: `data` must stay valid and unchanged while the reader, or any
  // reader it is moved into, lives. `name` stands for the path in error messages.
  static SafetensorsReader from_memory(const void* data, std::size_t size,
                                       std::string name = "<memory>") {
    SafetensorsReader r;
    r.path_ = std::move(name);
    r.base_ = static_cast<const unsigned char*>(data);
    r.size_ = size;
    r.parse();  // nothing to unmap on failure
    return r;
  }
  SafetensorsReader(const SafetensorsReader&) = delete;
  SafetensorsReader& operator=(const SafetensorsReader&) = delete;
  SafetensorsReader(SafetensorsReader&& o) noexcept { *this = std::move(o); }
  SafetensorsReader& operator=(SafetensorsReader&& o) noexcept {
    if (this != &o) {
      unmap();
      path_ = std::move(o.path_);
      tensors_ = std::move(o.tensors_);
      metadata_ = std::move(o.metadata_);
      base_ = std::exchange(o.base_, nullptr);
      size_ = std::exchange(o.size_, 0);
      data_ = std::exchange(o.data_, nullptr);
      mapped_ = std::exchange(o.mapped_, false);
    }
    return *this;
  }
  ~SafetensorsReader() { unmap(); }

  const std::string& path() const { return path_; }
  // In the order of their data offsets.
  const std::vector<TensorInfo>& tensors() const { return tensors_; }
  const TensorInfo* find(std::string_view name) const {
    for (const auto& t : tensors_)
      if (t.name == name) return &t;
    return nullptr;
  }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  // The tensor's raw little-endian bytes (end - begin of them), inside the mapping.
  const unsigned char* bytes(const TensorInfo& t) const { return data_ + t.begin; }

  // Zero-copy access: the tensor's numel() elements as T (float or double), pointing into
  // the mapping, when the file stores exactly T (F32 for float, F64 for double) and the
  // bytes are aligned for T; std::nullopt otherwise, and the caller falls back to read().
  // Lets a loader wrap weights (e.g. in an Eigen::Map) instead of copying gigabytes. The
  // span stays valid while this reader, or one it is moved into, lives (the mapping does
  // not move). Files from write_safetensors whose tensors are all F32 or all F64 (as
  // save_model writes) are always aligned: the data buffer starts 8-byte aligned and every
  // tensor's size is a multiple of its element size. Mixing 2-byte dtypes in before a
  // 4- or 8-byte one can shift it off alignment (the format allows no padding).
  template <class T>
  std::optional<std::span<const T>> try_view(const TensorInfo& t) const {
    static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>,
                  "SafetensorsReader::try_view: T must be float or double");
    if (t.dtype != dtype_of<T>()) return std::nullopt;
    if (t.numel() == 0) return std::span<const T>();  // nothing to align
    const unsigned char* p = bytes(t);
    if (reinterpret_cast<std::uintptr_t>(p) % alignof(T) != 0) return std::nullopt;
    // The bytes are T's object representation on this (little-endian) host; the mapping
    // is never written, so reading them through const T* is the zero-copy equivalent of
    // the memcpy in read().
    return std::span<const T>(reinterpret_cast<const T*>(p), std::size_t(t.numel()));
  }

  // Converts the tensor to S and writes its numel() elements to dst (row-major order).
  template <class S>
  void read(const TensorInfo& t, S* dst) const {
    static_assert(std::is_same_v<S, float> || std::is_same_v<S, double>,
                  "SafetensorsReader::read: S must be float or double");
    const unsigned char* src = bytes(t);
    const std::size_t n = std::size_t(t.numel());
    if (t.dtype == dtype_of<S>()) {
      if (n) std::memcpy(dst, src, n * sizeof(S));
      return;
    }
    for (std::size_t i = 0; i < n; ++i) dst[i] = S(element(t.dtype, src, i));
  }
  template <class S>
  std::vector<S> read(const TensorInfo& t) const {
    std::vector<S> v(std::size_t(t.numel()));
    read(t, v.data());
    return v;
  }

 private:
  SafetensorsReader() = default;

  static double element(Dtype d, const unsigned char* p, std::size_t i) {
    switch (d) {
      case Dtype::F32: { float v; std::memcpy(&v, p + 4 * i, 4); return v; }
      case Dtype::F64: { double v; std::memcpy(&v, p + 8 * i, 8); return v; }
      case Dtype::F16: { std::uint16_t v; std::memcpy(&v, p + 2 * i, 2); return st_detail::half_to_float(v); }
      case Dtype::BF16: { std::uint16_t v; std::memcpy(&v, p + 2 * i, 2); return st_detail::bf16_to_float(v); }
    }
    return 0;
  }

  template <class... A>
  [[noreturn]] void bad(const A&... a) const {
    throw Error(st_detail::printable(hybrid::detail::concat_str("safetensors file '", path_, "': ", a...)));
  }

  void map_file() {
    const int fd = ::open(path_.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) bad("cannot open: ", std::strerror(errno));
    struct stat st {};
    if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
      ::close(fd);
      bad("not a regular file");
    }
    size_ = std::size_t(st.st_size);
    if (size_ < 8) {  // also keeps mmap from being asked for 0 bytes
      ::close(fd);
      bad("file is ", size_, " bytes, too short for the 8-byte header length (truncated?)");
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

  void parse() {
    if (size_ < 8)
      bad("file is ", size_, " bytes, too short for the 8-byte header length (truncated?)");
    std::uint64_t n = 0;
    std::memcpy(&n, base_, 8);
    if (n > safetensors_max_header)
      bad("header length ", n, " exceeds the limit of ", safetensors_max_header,
          " bytes (corrupt length field, or not a safetensors file?)");
    if (n > size_ - 8)
      bad("header length ", n, " runs past the end of the file (", size_ - 8,
          " bytes follow the length field; truncated or not a safetensors file?)");
    const char* h = reinterpret_cast<const char*>(base_ + 8);
    data_ = base_ + 8 + n;
    const std::uint64_t buffer = size_ - 8 - n;

    // Names the object a duplicate key was found in: path[0] is the tensor's name.
    auto where = [](const std::vector<std::string>& path) -> std::string {
      if (path.empty()) return "the top-level object";
      if (path[0] == "__metadata__") return "__metadata__";
      return "tensor '" + path[0] + "'";
    };
    nlohmann::json j;
    try {
      j = st_detail::parse_json_checked(std::string_view(h, n), safetensors_max_depth, where);
    } catch (const Error& e) {
      bad("header: ", e.what());
    }
    if (!j.is_object())
      bad("header must be a JSON object {\"tensor name\": {...}, ...}, got ", st_detail::json_brief(j));

    for (const auto& [name, e] : j.items()) {
      if (name == "__metadata__") {
        if (!e.is_object())
          bad("__metadata__ must be an object mapping strings to strings, got ", st_detail::json_brief(e));
        for (const auto& [k, v] : e.items()) {
          if (!v.is_string())
            bad("__metadata__.", k, ": expected a string, got ", st_detail::json_brief(v));
          metadata_[k] = v.get<std::string>();
        }
        continue;
      }
      tensors_.push_back(parse_entry(name, e, buffer));
    }

    // The tensors must tile [0, buffer) exactly.
    std::sort(tensors_.begin(), tensors_.end(), [](const TensorInfo& a, const TensorInfo& b) {
      return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
    });
    std::uint64_t at = 0;
    const TensorInfo* prev = nullptr;
    for (const auto& t : tensors_) {
      if (t.begin < at)
        bad("tensor '", t.name, "': data_offsets [", t.begin, ", ", t.end, "] overlap tensor '",
            prev->name, "' data_offsets [", prev->begin, ", ", prev->end,
            "] (expected each byte to belong to one tensor)");
      if (t.begin > at)
        bad("hole in the data buffer: bytes [", at, ", ", t.begin,
            ") belong to no tensor (next tensor '", t.name, "'); expected contiguous tensors");
      at = t.end;
      prev = &t;
    }
    if (at != buffer)
      bad("hole in the data buffer: bytes [", at, ", ", buffer,
          ") at its end belong to no tensor; expected the tensors to cover all ", buffer, " bytes");
  }

  TensorInfo parse_entry(const std::string& name, const nlohmann::json& e, std::uint64_t buffer) const {
    if (!e.is_object())
      bad("tensor '", name, "': expected an object {\"dtype\", \"shape\", \"data_offsets\"}, got ",
          st_detail::json_brief(e));
    for (const auto& [k, v] : e.items())
      if (k != "dtype" && k != "shape" && k != "data_offsets")
        bad("tensor '", name, "': unknown field '", k, "' (expected dtype, shape, data_offsets)");
    TensorInfo t;
    t.name = name;

    auto dt = e.find("dtype");
    if (dt == e.end()) bad("tensor '", name, "': missing field 'dtype' (expected one of ", supported_dtypes, ")");
    if (!dt->is_string())
      bad("tensor '", name, "': dtype must be a string (", supported_dtypes, "), got ", st_detail::json_brief(*dt));
    const std::string d = dt->get<std::string>();
    if (auto known = dtype_from_name(d)) t.dtype = *known;
    else bad("tensor '", name, "': unsupported dtype '", d, "' (expected ", supported_dtypes, ")");

    auto sh = e.find("shape");
    if (sh == e.end())
      bad("tensor '", name, "': missing field 'shape' (expected a list of non-negative integers)");
    if (!sh->is_array())
      bad("tensor '", name, "': shape must be a list of non-negative integers, got ", st_detail::json_brief(*sh));
    std::uint64_t numel = 1;
    bool overflow = false;
    for (std::size_t i = 0; i < sh->size(); ++i) {
      std::uint64_t v;
      if (!st_detail::json_uint((*sh)[i], v))
        bad("tensor '", name, "': shape[", i, "] must be a non-negative integer, got ",
            st_detail::json_brief((*sh)[i]));
      t.shape.push_back(std::int64_t(v));
      overflow = overflow || __builtin_mul_overflow(numel, v, &numel);
    }
    std::uint64_t nbytes = 0;
    overflow = overflow || numel > std::uint64_t(INT64_MAX) ||
               __builtin_mul_overflow(numel, std::uint64_t(dtype_size(t.dtype)), &nbytes);

    auto off = e.find("data_offsets");
    if (off == e.end())
      bad("tensor '", name, "': missing field 'data_offsets' (expected [begin, end] byte offsets)");
    if (!off->is_array() || off->size() != 2 || !st_detail::json_uint((*off)[0], t.begin) ||
        !st_detail::json_uint((*off)[1], t.end))
      bad("tensor '", name, "': data_offsets must be [begin, end] with two non-negative integers, got ",
          st_detail::json_brief(*off));
    if (t.begin > t.end)
      bad("tensor '", name, "': data_offsets [", t.begin, ", ", t.end, "] have begin > end");
    if (t.end > buffer)
      bad("tensor '", name, "': data_offsets [", t.begin, ", ", t.end,
          "] run past the end of the data buffer (", buffer, " bytes; truncated file?)");
    if (overflow || nbytes != t.end - t.begin)
      bad("tensor '", name, "': shape ", st_detail::shape_str(t.shape), " of ", d, " needs ",
          overflow ? std::string("more than 2^63") : std::to_string(nbytes),
          " bytes but data_offsets [", t.begin, ", ", t.end, "] hold ", t.end - t.begin);
    return t;
  }

  std::string path_;
  std::vector<TensorInfo> tensors_;
  std::map<std::string, std::string> metadata_;
  const unsigned char* base_ = nullptr;  // the file's bytes, size_ of them
  std::size_t size_ = 0;
  const unsigned char* data_ = nullptr;  // start of the data buffer
  bool mapped_ = false;                  // base_ is our mmap (not a caller's buffer)
};

// Writes the tensors (data in the given order; any of the four dtypes, `data` already in
// that encoding — F32/F64 are what save_model uses) and metadata to `path` atomically
// (core/atomic_file.hpp): on any failure an existing `path` is left untouched.
inline void write_safetensors(const std::string& path, const std::vector<TensorRef>& tensors,
                              const std::map<std::string, std::string>& metadata = {}) {
  const std::string what = "writing safetensors file '" + path + "': ";
  auto bad = [&](const auto&... a) { fail(what, a...); };
  nlohmann::json h = nlohmann::json::object();
  std::uint64_t at = 0;
  std::vector<std::uint64_t> sizes;
  for (const auto& t : tensors) {
    if (t.name.empty() || t.name == "__metadata__")
      bad("invalid tensor name '", t.name, "'");
    if (h.contains(t.name)) bad("tensor name '", t.name, "' is used twice");
    std::uint64_t n = dtype_size(t.dtype);
    for (auto d : t.shape) {
      if (d < 0) bad("tensor '", t.name, "': negative dimension in shape ", st_detail::shape_str(t.shape));
      if (__builtin_mul_overflow(n, std::uint64_t(d), &n))
        bad("tensor '", t.name, "': shape ", st_detail::shape_str(t.shape), " is too large");
    }
    if (n && !t.data) bad("tensor '", t.name, "': data is null");
    std::uint64_t end = 0;
    if (__builtin_add_overflow(at, n, &end)) bad("the tensors hold more than 2^64 bytes");
    h[t.name] = {{"dtype", dtype_name(t.dtype)}, {"shape", t.shape}, {"data_offsets", {at, end}}};
    sizes.push_back(n);
    at = end;
  }
  if (!metadata.empty()) h["__metadata__"] = metadata;
  std::string header;
  try {
    header = h.dump();
  } catch (const nlohmann::json::exception& e) {  // names or metadata that are not UTF-8
    bad("cannot encode the header: ", e.what());
  }
  header.append((8 - header.size() % 8) % 8, ' ');  // data starts 8-byte aligned
  const std::uint64_t hlen = header.size();

  write_file_atomic(path, "writing safetensors file '" + path + "'", [&](AtomicFile& f) {
    f.write(&hlen, 8);
    f.write(header);
    for (std::size_t i = 0; i < tensors.size(); ++i) f.write(tensors[i].data, sizes[i]);
  });
}

}  // namespace hybrid
