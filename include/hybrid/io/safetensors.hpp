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
//
//   SafetensorsReader r("model.safetensors");
//   const TensorInfo* t = r.find("embed.weight");   // nullptr if absent
//   std::vector<float> w(t->numel()); r.read(*t, w.data());   // F16/BF16/F32/F64 → float
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
#include <set>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

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

// Non-negative JSON integer that fits in 63 bits, else nullopt-like false.
inline bool json_uint(const nlohmann::json& j, std::uint64_t& out) {
  if (j.is_number_unsigned()) out = j.get<std::uint64_t>();
  else if (j.is_number_integer() && j.get<std::int64_t>() >= 0) out = std::uint64_t(j.get<std::int64_t>());
  else return false;
  return out <= std::uint64_t(INT64_MAX);
}

}  // namespace st_detail

class SafetensorsReader {
 public:
  explicit SafetensorsReader(const std::string& path) : path_(path) {
    map_file();
    try {
      parse();
    } catch (...) {
      unmap();
      throw;
    }
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
    fail("safetensors file '", path_, "': ", a...);
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
    if (size_ < 8) {
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
  }
  void unmap() {
    if (base_) ::munmap(const_cast<unsigned char*>(base_), size_);
    base_ = data_ = nullptr;
    size_ = 0;
  }

  void parse() {
    std::uint64_t n = 0;
    std::memcpy(&n, base_, 8);
    if (n > size_ - 8)
      bad("header length ", n, " runs past the end of the file (", size_ - 8,
          " bytes follow the length field; truncated or not a safetensors file?)");
    const char* h = reinterpret_cast<const char*>(base_ + 8);
    data_ = base_ + 8 + n;
    const std::uint64_t buffer = size_ - 8 - n;

    // nlohmann keeps the last of duplicate keys; catch duplicate tensor names here.
    std::set<std::string> seen;
    std::string dup;
    auto cb = [&](int depth, nlohmann::json::parse_event_t ev, nlohmann::json& k) {
      if (depth == 1 && ev == nlohmann::json::parse_event_t::key && !seen.insert(k.get<std::string>()).second)
        dup = k.get<std::string>();
      return true;
    };
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(h, h + n, cb);
    } catch (const nlohmann::json::exception& e) {
      bad("header is not valid JSON: ", e.what());
    }
    if (!j.is_object()) bad("header must be a JSON object, got ", st_detail::json_brief(j));
    if (!dup.empty()) bad("key '", dup, "' appears twice in the header");

    for (const auto& [name, e] : j.items()) {
      if (name == "__metadata__") {
        if (!e.is_object()) bad("__metadata__ must be an object of strings, got ", st_detail::json_brief(e));
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
        bad("tensor '", t.name, "' bytes [", t.begin, ", ", t.end, ") overlap tensor '",
            prev->name, "' bytes [", prev->begin, ", ", prev->end, ")");
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
    if (!e.is_object()) bad("tensor '", name, "': expected an object, got ", st_detail::json_brief(e));
    for (const auto& [k, v] : e.items())
      if (k != "dtype" && k != "shape" && k != "data_offsets")
        bad("tensor '", name, "': unknown field '", k, "' (expected dtype, shape, data_offsets)");
    TensorInfo t;
    t.name = name;

    auto dt = e.find("dtype");
    if (dt == e.end() || !dt->is_string())
      bad("tensor '", name, "': dtype must be a string, got ",
          dt == e.end() ? std::string("nothing") : st_detail::json_brief(*dt));
    const std::string d = dt->get<std::string>();
    if (d == "F32") t.dtype = Dtype::F32;
    else if (d == "F64") t.dtype = Dtype::F64;
    else if (d == "F16") t.dtype = Dtype::F16;
    else if (d == "BF16") t.dtype = Dtype::BF16;
    else bad("tensor '", name, "': unsupported dtype '", d, "' (expected F32, F64, F16 or BF16)");

    auto sh = e.find("shape");
    if (sh == e.end() || !sh->is_array())
      bad("tensor '", name, "': shape must be an array of non-negative integers, got ",
          sh == e.end() ? std::string("nothing") : st_detail::json_brief(*sh));
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
    if (off == e.end() || !off->is_array() || off->size() != 2 ||
        !st_detail::json_uint((*off)[0], t.begin) || !st_detail::json_uint((*off)[1], t.end))
      bad("tensor '", name, "': data_offsets must be [begin, end] with non-negative integers, got ",
          off == e.end() ? std::string("nothing") : st_detail::json_brief(*off));
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
  const unsigned char* base_ = nullptr;  // the mapping, size_ bytes
  std::size_t size_ = 0;
  const unsigned char* data_ = nullptr;  // start of the data buffer
};

// Writes the tensors (data in the given order; any of the four dtypes, `data` already in
// that encoding — F32/F64 are what save_model uses) and metadata to `path` atomically: the
// bytes go to path + ".tmp.<pid>", are flushed and fsynced, then renamed over `path`. On
// any failure the temporary file is removed and an existing `path` is left untouched.
inline void write_safetensors(const std::string& path, const std::vector<TensorRef>& tensors,
                              const std::map<std::string, std::string>& metadata = {}) {
  auto bad = [&](const auto&... a) { fail("writing safetensors file '", path, "': ", a...); };
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

  const std::string tmp = path + ".tmp." + std::to_string(::getpid());
  std::FILE* f = std::fopen(tmp.c_str(), "wb");
  if (!f) bad("cannot create temporary file '", tmp, "': ", std::strerror(errno));
  auto abort_with = [&](const char* what) {
    const std::string err = std::strerror(errno);
    if (f) std::fclose(f);
    std::remove(tmp.c_str());
    bad(what, " '", tmp, "' failed: ", err);
  };
  bool ok = std::fwrite(&hlen, 8, 1, f) == 1 &&
            std::fwrite(header.data(), 1, header.size(), f) == header.size();
  for (std::size_t i = 0; ok && i < tensors.size(); ++i)
    ok = sizes[i] == 0 || std::fwrite(tensors[i].data, 1, sizes[i], f) == sizes[i];
  if (!ok) abort_with("writing");
  if (std::fflush(f) != 0) abort_with("flushing");
  if (::fsync(::fileno(f)) != 0) abort_with("fsync of");
  const int rc = std::fclose(f);
  f = nullptr;
  if (rc != 0) abort_with("closing");
  if (std::rename(tmp.c_str(), path.c_str()) != 0) abort_with("renaming over the target");
  // Make the rename itself durable; a failure here no longer endangers either file.
  const std::size_t slash = path.find_last_of('/');
  const std::string dir = slash == std::string::npos ? "." : slash == 0 ? "/" : path.substr(0, slash);
  if (const int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC); dfd >= 0) {
    (void)::fsync(dfd);
    ::close(dfd);
  }
}

}  // namespace hybrid
