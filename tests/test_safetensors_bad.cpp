// safetensors: byte-level corrupt files, one per header rule (each asserting that the error
// names the file, the tensor, the field and what was expected), zero-copy views, readers
// over memory, exhaustive F16/BF16 conversion, and sharded checkpoint directories.
#include <doctest/doctest.h>
#include <unistd.h>

#include <bit>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>
#include <hybrid/io/safetensors.hpp>
#include <hybrid/io/sharded.hpp>
#include <initializer_list>
#include <iterator>
#include <numeric>

using namespace hybrid;
namespace fs = std::filesystem;
using nlohmann::json;

#include "test_util.hpp"
using namespace hybrid::test_util;

// This file's own namespace: the tests compile in batches (tests/CMakeLists.txt).
namespace hybrid_test_safetensors_bad {

namespace {



// The bytes of a file whose length field says `len` and which holds `header` then `data`
// zero bytes.
std::string raw_file(std::uint64_t len, const std::string& header, std::size_t data) {
  std::string s(8, '\0');
  std::memcpy(s.data(), &len, 8);
  return s + header + std::string(data, '\0');
}


// A corrupt file under test: write a header (length field = its size) and `data` bytes,
// then check that opening it fails with a message holding the file's name and `words`.
struct BadFile {
  TempDir tmp;
  std::string path = tmp / "bad.safetensors";
  void raw(const std::string& bytes, std::initializer_list<std::string> words) {
    spit(path, bytes);
    INFO("file bytes: ", bytes.size() > 200 ? bytes.substr(0, 200) + "..." : bytes);
    check_error([&] { SafetensorsReader r(path); }, {"bad.safetensors"});
    check_error([&] { SafetensorsReader r(path); }, words);
    // The same verdict from memory (where ASan sees every byte read past the end).
    auto mem = [&] { SafetensorsReader::from_memory(bytes.data(), bytes.size(), "mem.st"); };
    check_error(mem, {"mem.st"});
    check_error(mem, words);
  }
  void header(const std::string& h, std::size_t data, std::initializer_list<std::string> words) {
    raw(raw_file(h.size(), h, data), words);
  }
  void good(const std::string& h, std::size_t data) {
    spit(path, raw_file(h.size(), h, data));
    INFO("header: ", h);
    CHECK_NOTHROW(SafetensorsReader r(path));
  }
};

// One F32 tensor "a" with the given fields spliced in (for field-by-field corruption).
std::string entry(const std::string& fields) { return R"({"a": {)" + fields + "}}"; }
const std::string dtype_f32 = R"("dtype": "F32")";
const std::string shape_2 = R"("shape": [2])";
const std::string offs_8 = R"("data_offsets": [0, 8])";

}  // namespace

TEST_CASE("safetensors bad: the length field and the file size") {
  BadFile b;
  b.raw("", {"0 bytes", "too short", "8-byte header length"});
  b.raw("abc", {"3 bytes", "too short"});
  b.raw(raw_file(1000, "{}", 0), {"header length 1000", "runs past the end", "2 bytes follow"});
  b.raw(raw_file(~std::uint64_t(0), "{}", 0), {"header length 18446744073709551615", "exceeds the limit"});
  b.raw(raw_file(safetensors_max_header + 1, "{}", 0), {"exceeds the limit of 104857600 bytes"});
  b.raw(raw_file(0, "", 0), {"header", "not valid JSON"});
  b.raw(raw_file(2, "{}", 0) + "x", {"hole in the data buffer", "[0, 1)"});
  b.good("{}", 0);
  b.good("{}      ", 0);  // padding spaces after the JSON, as writers align the data
}

TEST_CASE("safetensors bad: the header's JSON") {
  BadFile b;
  b.header("{not json", 0, {"header", "not valid JSON"});
  b.header(R"({"a": 1,})", 0, {"not valid JSON"});
  b.header(std::string("{\"a\xff\": 1}"), 0, {"not valid JSON"});  // not UTF-8
  b.header(std::string("{}\0", 3), 0, {"not valid JSON", "NUL byte at offset 2"});
  b.header(std::string("{}\0garbage", 10), 0, {"NUL byte"});
  b.header("[1, 2]", 0, {"header must be a JSON object", "[1,2]"});
  b.header(R"("text")", 0, {"header must be a JSON object", "\"text\""});
  b.header("42", 0, {"header must be a JSON object", "42"});
  b.header("null", 0, {"header must be a JSON object"});
  // Duplicate keys, in every object: the header, a tensor entry, __metadata__.
  b.header(R"({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
               "a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}})",
           4, {"key 'a' appears twice in the top-level object", "expected unique keys"});
  b.header(R"({"a": {"dtype": "F32", "dtype": "F16", "shape": [1], "data_offsets": [0, 4]}})", 4,
           {"key 'dtype' appears twice in tensor 'a'"});
  b.header(R"({"__metadata__": {"k": "1", "k": "2"}})", 0, {"key 'k' appears twice in __metadata__"});
  // Nesting: bounded, whatever the depth.
  b.header(R"({"a": {"dtype": "F32", "shape": )" + std::string(20, '[') + std::string(20, ']') + "}}", 0,
           {"nested more than 16 levels"});
  b.header(std::string(100000, '['), 0, {"nested more than 16 levels"});
}

TEST_CASE("safetensors bad: tensor entries and their fields") {
  BadFile b;
  b.header(R"({"a": 5})", 0, {"tensor 'a'", "expected an object", "got 5"});
  b.header(R"({"a": [1, 2]})", 0, {"tensor 'a'", "expected an object", "[1,2]"});
  b.header(R"({"a": "F32"})", 0, {"tensor 'a'", "expected an object"});
  // Missing and extra fields.
  b.header(entry(shape_2 + "," + offs_8), 8, {"tensor 'a'", "missing field 'dtype'", "F32, F64, F16 or BF16"});
  b.header(entry(dtype_f32 + "," + offs_8), 8, {"tensor 'a'", "missing field 'shape'", "non-negative integers"});
  b.header(entry(dtype_f32 + "," + shape_2), 8, {"tensor 'a'", "missing field 'data_offsets'", "[begin, end]"});
  b.header(entry(dtype_f32 + "," + shape_2 + "," + offs_8 + R"(, "offset": 0)"), 8,
           {"tensor 'a'", "unknown field 'offset'", "expected dtype, shape, data_offsets"});
  b.header(R"({"a": {}})", 0, {"tensor 'a'", "missing field 'dtype'"});
  b.header(R"({"a\u0000b": 1})", 0, {"tensor 'a\\0b'"});  // NUL in a name: escaped, not cut short
  // dtype.
  b.header(entry(R"("dtype": 32,)" + shape_2 + "," + offs_8), 8,
           {"tensor 'a'", "dtype must be a string", "F32, F64, F16 or BF16", "got 32"});
  for (const char* d : {"I8", "U8", "I32", "I64", "BOOL", "F8_E4M3", "f32", ""}) {
    INFO("dtype ", d);
    b.header(entry(R"("dtype": ")" + std::string(d) + "\"," + shape_2 + "," + offs_8), 8,
             {"tensor 'a'", "unsupported dtype '" + std::string(d) + "'", "expected F32, F64, F16 or BF16"});
  }
  // shape.
  b.header(entry(dtype_f32 + R"(, "shape": 2, )" + offs_8), 8,
           {"tensor 'a'", "shape must be a list of non-negative integers", "got 2"});
  b.header(entry(dtype_f32 + R"(, "shape": {"0": 2}, )" + offs_8), 8, {"tensor 'a'", "shape must be a list"});
  b.header(entry(dtype_f32 + R"(, "shape": [-1], )" + offs_8), 8,
           {"tensor 'a'", "shape[0] must be a non-negative integer", "got -1"});
  b.header(entry(dtype_f32 + R"(, "shape": [1, 2.0], )" + offs_8), 8, {"tensor 'a'", "shape[1]", "2.0"});
  b.header(entry(dtype_f32 + R"(, "shape": ["2"], )" + offs_8), 8, {"tensor 'a'", "shape[0]", "\"2\""});
  b.header(entry(dtype_f32 + R"(, "shape": [true], )" + offs_8), 8, {"tensor 'a'", "shape[0]", "true"});
  b.header(entry(dtype_f32 + R"(, "shape": [null], )" + offs_8), 8, {"tensor 'a'", "shape[0]", "null"});
  b.header(entry(dtype_f32 + R"(, "shape": [[2]], )" + offs_8), 8, {"tensor 'a'", "shape[0]", "[2]"});
  b.header(entry(dtype_f32 + R"(, "shape": [9223372036854775808], )" + offs_8), 8,
           {"tensor 'a'", "shape[0] must be a non-negative integer", "9223372036854775808"});
  // data_offsets.
  b.header(entry(dtype_f32 + "," + shape_2 + R"(, "data_offsets": 8)"), 8,
           {"tensor 'a'", "data_offsets must be [begin, end] with two non-negative integers", "got 8"});
  b.header(entry(dtype_f32 + "," + shape_2 + R"(, "data_offsets": [8])"), 8, {"tensor 'a'", "data_offsets", "[8]"});
  b.header(entry(dtype_f32 + "," + shape_2 + R"(, "data_offsets": [0, 8, 8])"), 8, {"tensor 'a'", "data_offsets", "[0,8,8]"});
  b.header(entry(dtype_f32 + "," + shape_2 + R"(, "data_offsets": [-8, 0])"), 8, {"tensor 'a'", "data_offsets", "[-8,0]"});
  b.header(entry(dtype_f32 + "," + shape_2 + R"(, "data_offsets": [0, 8.0])"), 8, {"tensor 'a'", "data_offsets", "[0,8.0]"});
  b.header(entry(dtype_f32 + "," + shape_2 + R"(, "data_offsets": ["0", "8"])"), 8, {"tensor 'a'", "data_offsets"});
  b.header(entry(dtype_f32 + "," + shape_2 + R"(, "data_offsets": {"begin": 0, "end": 8})"), 8,
           {"tensor 'a'", "data_offsets"});
  b.header(entry(dtype_f32 + "," + shape_2 + R"(, "data_offsets": [8, 0])"), 8,
           {"tensor 'a'", "data_offsets [8, 0] have begin > end"});
  b.header(entry(dtype_f32 + "," + shape_2 + R"(, "data_offsets": [0, 18446744073709551615])"), 8,
           {"tensor 'a'", "data_offsets"});
  b.header(entry(dtype_f32 + "," + shape_2 + R"(, "data_offsets": [8, 16])"), 8,
           {"tensor 'a'", "data_offsets [8, 16] run past the end of the data buffer", "8 bytes"});
  b.good(entry(dtype_f32 + "," + shape_2 + "," + offs_8), 8);
}

TEST_CASE("safetensors bad: byte counts, overlaps, holes") {
  BadFile b;
  // Byte count = product(shape) * dtype size.
  b.header(entry(dtype_f32 + R"(, "shape": [3], )" + offs_8), 8,
           {"tensor 'a'", "shape [3] of F32 needs 12 bytes", "data_offsets [0, 8] hold 8"});
  b.header(entry(R"("dtype": "F64", "shape": [2], )" + offs_8), 8, {"tensor 'a'", "shape [2] of F64 needs 16 bytes"});
  b.header(entry(R"("dtype": "BF16", "shape": [2], )" + offs_8), 8, {"tensor 'a'", "shape [2] of BF16 needs 4 bytes"});
  b.header(entry(R"("dtype": "F16", "shape": [], )" + offs_8), 8, {"tensor 'a'", "shape [] of F16 needs 2 bytes"});
  b.header(entry(dtype_f32 + R"(, "shape": [2, 0], )" + offs_8), 8, {"tensor 'a'", "needs 0 bytes"});
  b.header(entry(dtype_f32 + R"(, "shape": [4294967296, 4294967296], )" + offs_8), 8, {"tensor 'a'", "more than 2^63"});
  b.header(entry(R"("dtype": "F64", "shape": [2305843009213693952], )" + offs_8), 8, {"tensor 'a'", "more than 2^63"});
  // Overlap, in either order in the header.
  const std::string ab = R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                             "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}})";
  b.header(ab, 12, {"tensor 'b'", "data_offsets [4, 12] overlap tensor 'a'", "[0, 8]"});
  const std::string ba = R"({"b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]},
                             "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}})";
  b.header(ba, 12, {"tensor 'b'", "overlap tensor 'a'"});
  b.header(R"({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
               "b": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}})",
           4, {"overlap"});
  // Holes: at the start, in the middle, at the end.
  b.header(entry(dtype_f32 + R"(, "shape": [1], "data_offsets": [4, 8])"), 8,
           {"hole in the data buffer", "bytes [0, 4)", "next tensor 'a'"});
  b.header(R"({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
               "b": {"dtype": "F32", "shape": [1], "data_offsets": [8, 12]}})",
           12, {"hole", "[4, 8)", "'b'"});
  b.header(entry(dtype_f32 + "," + shape_2 + "," + offs_8), 12, {"hole", "[8, 12)", "cover all 12 bytes"});
  b.header("{}", 1, {"hole", "[0, 1)"});
  // Empty tensors may sit anywhere, even at the same offset as others.
  b.good(R"({"e": {"dtype": "F32", "shape": [0], "data_offsets": [4, 4]},
             "a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
             "f": {"dtype": "BF16", "shape": [3, 0], "data_offsets": [4, 4]},
             "b": {"dtype": "F16", "shape": [2], "data_offsets": [4, 8]}})",
         8);
}

TEST_CASE("safetensors bad: __metadata__") {
  BadFile b;
  b.header(R"({"__metadata__": ["a", "b"]})", 0,
           {"__metadata__ must be an object mapping strings to strings", "[\"a\",\"b\"]"});
  b.header(R"({"__metadata__": "x"})", 0, {"__metadata__ must be an object"});
  b.header(R"({"__metadata__": null})", 0, {"__metadata__ must be an object"});
  b.header(R"({"__metadata__": {"step": 5}})", 0, {"__metadata__.step: expected a string", "got 5"});
  b.header(R"({"__metadata__": {"k": {"x": "y"}}})", 0, {"__metadata__.k: expected a string"});
  b.header(R"({"__metadata__": {"k": null}})", 0, {"__metadata__.k: expected a string", "null"});
  b.good(R"({"__metadata__": {}})", 0);
  b.good(R"({"__metadata__": {"a": "", "b": "✓"}})", 0);
}

TEST_CASE("safetensors: from_memory reads what the file reader reads") {
  TempDir tmp;
  const std::string p = tmp / "m.safetensors";
  const std::vector<float> a{1, 2, 3, 4, 5, 6};
  const std::vector<double> d{0.5, -1e300};
  write_safetensors(p, {{"a", Dtype::F32, {2, 3}, a.data()}, {"d", Dtype::F64, {2}, d.data()}}, {{"k", "v"}});
  const std::string bytes = slurp(p);
  const SafetensorsReader m = SafetensorsReader::from_memory(bytes.data(), bytes.size());
  CHECK(m.path() == "<memory>");
  CHECK(m.metadata().at("k") == "v");
  REQUIRE(m.tensors().size() == 2);
  CHECK(m.read<float>(*m.find("a")) == a);
  CHECK(m.read<double>(*m.find("d")) == d);
  // Truncated in memory: the same message as the truncated file.
  check_error([&] { SafetensorsReader::from_memory(bytes.data(), bytes.size() - 1, "blob"); },
              {"'blob'", "tensor 'd'", "run past the end"});
  check_error([&] { SafetensorsReader::from_memory(bytes.data(), 5, "blob"); }, {"'blob'", "too short"});
  check_error([&] { SafetensorsReader::from_memory(nullptr, 0); }, {"'<memory>'", "too short"});
}

TEST_CASE("safetensors: try_view gives zero-copy spans when dtype and alignment allow") {
  TempDir tmp;
  const std::string p = tmp / "v.safetensors";
  const std::vector<float> f{1.5f, -2, 3};
  const std::vector<double> d{0.25, 1e-300};
  const std::uint16_t h[3] = {0x3c00, 0x4000, 0xc000};  // F16 1, 2, -2
  write_safetensors(p, {{"f", Dtype::F32, {3}, f.data()},
                        {"d", Dtype::F64, {2}, d.data()},  // at offset 12: not 8-aligned
                        {"h", Dtype::F16, {3}, h},
                        {"e", Dtype::F32, {0}, nullptr},
                        {"g", Dtype::F32, {1, 3}, f.data()}});  // at offset 34: not 4-aligned
  SafetensorsReader r(p);
  const TensorInfo& tf = *r.find("f");
  auto vf = r.try_view<float>(tf);
  REQUIRE(vf);
  CHECK(vf->size() == 3);
  CHECK(static_cast<const void*>(vf->data()) == static_cast<const void*>(r.bytes(tf)));  // no copy
  CHECK(std::vector<float>(vf->begin(), vf->end()) == f);
  CHECK_FALSE(r.try_view<double>(tf));  // F32 is not double
  CHECK_FALSE(r.try_view<float>(*r.find("h")));  // F16 needs conversion
  CHECK(r.find("d")->begin == 12);
  CHECK_FALSE(r.try_view<double>(*r.find("d")));  // misaligned: read() still works
  CHECK(r.read<double>(*r.find("d")) == d);
  CHECK(r.find("g")->begin == 34);
  CHECK_FALSE(r.try_view<float>(*r.find("g")));
  CHECK(r.read<float>(*r.find("g")) == f);
  auto ve = r.try_view<float>(*r.find("e"));
  REQUIRE(ve);  // empty, but a view all the same
  CHECK(ve->empty());

  // The views of an all-F64 file (as save_model writes for a double model) are all aligned,
  // and stay valid when the reader is moved.
  const std::string q = tmp / "w.safetensors";
  write_safetensors(q, {{"x", Dtype::F64, {2}, d.data()}, {"y", Dtype::F64, {1}, d.data()}});
  SafetensorsReader r1(q);
  auto vx = r1.try_view<double>(*r1.find("x"));
  REQUIRE(vx);
  SafetensorsReader r2 = std::move(r1);
  CHECK((*vx)[1] == 1e-300);
  REQUIRE(r2.try_view<double>(*r2.find("y")));
  CHECK((*r2.try_view<double>(*r2.find("y")))[0] == 0.25);
}

TEST_CASE("safetensors: every F16 and BF16 value converts exactly") {
  TempDir tmp;
  const std::string p = tmp / "all.safetensors";
  std::vector<std::uint16_t> all(65536);
  std::iota(all.begin(), all.end(), std::uint16_t(0));
  write_safetensors(p, {{"h", Dtype::F16, {65536}, all.data()}, {"b", Dtype::BF16, {256, 256}, all.data()}});
  SafetensorsReader r(p);
  const auto hf = r.read<float>(*r.find("h"));
  const auto hd = r.read<double>(*r.find("h"));
  const auto bf = r.read<float>(*r.find("b"));
  const auto bd = r.read<double>(*r.find("b"));
  int bad_h = 0, bad_b = 0;
  for (std::uint32_t u = 0; u < 65536; ++u) {
    // F16 from its definition: (-1)^s * 2^(e-15) * 1.m, or 2^-14 * 0.m when e = 0.
    const bool neg = u & 0x8000;
    const int e = (u >> 10) & 0x1f;
    const int m = u & 0x3ff;
    double want;
    if (e == 31) want = m ? NAN : INFINITY;
    else if (e == 0) want = std::ldexp(double(m), -24);
    else want = std::ldexp(double(1024 + m), e - 25);
    if (neg) want = -want;
    const bool ok_h = std::isnan(want) ? std::isnan(hf[u]) && std::isnan(hd[u]) && std::signbit(hf[u]) == neg
                                       : double(hf[u]) == want && hd[u] == want && std::signbit(hf[u]) == neg;
    bad_h += !ok_h;
    // BF16 is the top half of an F32.
    const float wb = std::bit_cast<float>(u << 16);
    const bool ok_b = std::isnan(wb) ? std::isnan(bf[u]) && std::isnan(bd[u])
                                     : std::bit_cast<std::uint32_t>(bf[u]) == (u << 16) && bd[u] == double(wb);
    bad_b += !ok_b;
    if (!ok_h && bad_h <= 5) CHECK_MESSAGE(ok_h, "F16 ", u, ": got ", hf[u], ", expected ", want);
    if (!ok_b && bad_b <= 5) CHECK_MESSAGE(ok_b, "BF16 ", u, ": got ", bf[u], ", expected ", wb);
  }
  CHECK(bad_h == 0);
  CHECK(bad_b == 0);
  // Spot checks at the edges: largest half, smallest normal and subnormal.
  CHECK(hf[0x7bff] == 65504.f);
  CHECK(hf[0x0400] == std::ldexp(1.f, -14));
  CHECK(hf[0x0001] == std::ldexp(1.f, -24));
  CHECK(hf[0x03ff] == std::ldexp(1023.f, -24));
  CHECK(bf[0x3f80] == 1.f);
  CHECK(std::isinf(bf[0xff80]));
  CHECK(bf[0x7f7f] == std::bit_cast<float>(0x7f7f0000u));  // largest finite BF16
  CHECK(bf[0x0001] == std::bit_cast<float>(0x00010000u));  // BF16 subnormal
}

// ---- sharded checkpoints ---------------------------------------------------------------

namespace {

// Ten tensors of assorted sizes and dtypes; values = index + position / 8 (exact in BF16
// for the small ones).
struct Tensors {
  std::vector<std::vector<float>> f32;
  std::vector<std::vector<double>> f64;
  std::vector<TensorRef> refs;
  Tensors() {
    f32.reserve(10);
    f64.reserve(10);
    for (int i = 0; i < 10; ++i) {
      const std::int64_t n = 1 + 7 * i;
      const std::string name = "blocks." + std::to_string(i) + ".w";
      if (i % 3 == 2) {
        auto& v = f64.emplace_back(std::size_t(n));
        for (std::int64_t k = 0; k < n; ++k) v[std::size_t(k)] = i + k / 8.0;
        refs.push_back({name, Dtype::F64, {n}, v.data()});
      } else {
        auto& v = f32.emplace_back(std::size_t(n));
        for (std::int64_t k = 0; k < n; ++k) v[std::size_t(k)] = float(i + k / 8.0);
        refs.push_back({name, Dtype::F32, {1, n}, v.data()});
      }
    }
  }
  std::uint64_t bytes(std::size_t i) const {
    return std::uint64_t(refs[i].shape.back()) * dtype_size(refs[i].dtype);
  }
  // The tensor's values as doubles.
  std::vector<double> values(std::size_t i) const {
    const std::size_t n = std::size_t(refs[i].shape.back());
    std::vector<double> v(n);
    for (std::size_t k = 0; k < n; ++k)
      v[k] = refs[i].dtype == Dtype::F64 ? static_cast<const double*>(refs[i].data)[k]
                                         : static_cast<const float*>(refs[i].data)[k];
    return v;
  }
};

json read_json(const std::string& path) { return json::parse(slurp(path)); }

}  // namespace

TEST_CASE("safetensors sharded: round trip across shards, index written as Hugging Face does") {
  TempDir tmp;
  const Tensors t;
  const std::string dir = tmp / "ck";
  std::uint64_t total = 0;
  for (std::size_t i = 0; i < t.refs.size(); ++i) total += t.bytes(i);
  const auto files = write_sharded(dir, t.refs, 300, {{"format", "pt"}, {"step", "7"}});
  REQUIRE(files.size() >= 3);
  const std::size_t n = files.size() - 1;
  CHECK(files.back() == "model.safetensors.index.json");
  CHECK(files[0] == "model-00001-of-0000" + std::to_string(n) + ".safetensors");
  CHECK_FALSE(fs::exists(tmp / "ck/model.safetensors"));

  const json idx = read_json(tmp / "ck/model.safetensors.index.json");
  CHECK(idx["metadata"]["total_size"] == total);
  CHECK(idx["metadata"]["format"] == "pt");
  CHECK(idx["weight_map"].size() == t.refs.size());
  // Each shard but the last is as full as the order allows: <= 300 bytes, and the next
  // tensor would not have fitted.
  for (std::size_t s = 0; s < n; ++s) {
    SafetensorsReader r(dir + "/" + files[s]);
    CHECK(r.metadata().at("step") == "7");
    std::uint64_t bytes = 0;
    for (const auto& ti : r.tensors()) {
      bytes += ti.end - ti.begin;
      CHECK(idx["weight_map"][ti.name] == files[s]);
    }
    CHECK((bytes <= 300 || r.tensors().size() == 1));
  }

  for (const std::string& open : {dir, dir + "/model.safetensors.index.json"}) {
    INFO("opening ", open);
    const SafetensorsSet set(open);
    CHECK(set.sharded());
    CHECK(set.path() == open);
    CHECK(set.files().size() == n);
    CHECK(set.size() == t.refs.size());
    CHECK(set.metadata().at("total_size") == std::to_string(total));
    CHECK(set.metadata().at("step") == "7");
    std::vector<std::string> want;
    for (const auto& r : t.refs) want.push_back(r.name);
    std::sort(want.begin(), want.end());
    CHECK(set.names() == want);
    for (std::size_t i = 0; i < t.refs.size(); ++i) {
      const auto* e = set.find(t.refs[i].name);
      REQUIRE(e);
      CHECK(e->info->name == t.refs[i].name);
      CHECK(e->info->shape == t.refs[i].shape);
      CHECK(e->reader->path().find(idx["weight_map"][t.refs[i].name].get<std::string>()) != std::string::npos);
      CHECK(set.read<double>(t.refs[i].name) == t.values(i));
      std::vector<double> out(t.values(i).size());
      set.read(t.refs[i].name, out.data());
      CHECK(out == t.values(i));
    }
    CHECK(set.find("nope") == nullptr);
    check_error([&] { set.read<float>("nope"); }, {"no tensor 'nope'", open, "10 tensors in"});
  }
  // Moving the set keeps its entries pointing at live readers.
  SafetensorsSet a(dir);
  SafetensorsSet b = std::move(a);
  CHECK(b.read<double>("blocks.9.w") == t.values(9));
}

TEST_CASE("safetensors sharded: one model.safetensors when it fits; big tensors alone") {
  TempDir tmp;
  const Tensors t;
  const std::string dir = tmp / "ck";
  // First sharded, then rewritten as one file: the stale index must go, or it would shadow
  // the new file.
  write_sharded(dir, t.refs, 100);
  CHECK(fs::exists(tmp / "ck/model.safetensors.index.json"));
  const auto files = write_sharded(dir, t.refs, 1u << 20);
  CHECK(files == std::vector<std::string>{"model.safetensors"});
  CHECK_FALSE(fs::exists(tmp / "ck/model.safetensors.index.json"));
  for (const std::string& open : {dir, dir + "/model.safetensors"}) {
    const SafetensorsSet set(open);
    CHECK_FALSE(set.sharded());
    CHECK(set.files().size() == 1);
    for (std::size_t i = 0; i < t.refs.size(); ++i) CHECK(set.read<double>(t.refs[i].name) == t.values(i));
  }
  // max_shard_bytes smaller than every tensor: one shard per tensor.
  const auto each = write_sharded(tmp / "each", t.refs, 1);
  CHECK(each.size() == t.refs.size() + 1);
  CHECK(each[9] == "model-00010-of-00010.safetensors");
  CHECK(SafetensorsSet(tmp / "each").files().size() == 10);
  // An exactly full shard: 4 + 32 = 36 bytes, then the 120-byte F64 tensor in a new one.
  const auto exact = write_sharded(tmp / "exact", {t.refs[0], t.refs[1], t.refs[2]}, 36);
  CHECK(exact.size() == 3);
  CHECK(SafetensorsReader(tmp / "exact/model-00001-of-00002.safetensors").tensors().size() == 2);
  // No tensors at all: an empty single file.
  CHECK(write_sharded(tmp / "none", {}, 10) == std::vector<std::string>{"model.safetensors"});
  CHECK(SafetensorsSet(tmp / "none").size() == 0);

  check_error([&] { write_sharded(tmp / "x", t.refs, 0); }, {"max_shard_bytes must be positive"});
  check_error([&] { write_sharded(tmp / "x", {t.refs[0], t.refs[0]}, 10); }, {"'blocks.0.w'", "used twice"});
  check_error([&] { write_sharded(tmp / "x", t.refs, 10, {{"total_size", "1"}}); }, {"'total_size'", "reserved"});
  check_error([&] { write_sharded(tmp / "x", {{"neg", Dtype::F32, {-1}, nullptr}}, 10); }, {"'neg'", "invalid shape"});
}

TEST_CASE("safetensors sharded: bad checkpoint directories name the shard and the tensor") {
  TempDir tmp;
  const Tensors t;
  const std::string good = tmp / "good";
  const auto files = write_sharded(good, t.refs, 300);
  const std::size_t n = files.size() - 1;
  const json idx = read_json(good + "/model.safetensors.index.json");
  // A copy of the good checkpoint, its index edited by `edit` (or replaced by `text`).
  int copies = 0;
  auto variant = [&](const std::function<void(json&)>& edit, const std::string& text = "") {
    std::string name = "v";  // not "v" + to_string(): GCC 12 warns falsely (-Wrestrict, bug 105329)
    name += std::to_string(copies++);
    const std::string dir = tmp / name;
    fs::copy(good, dir, fs::copy_options::recursive);
    json j = idx;
    if (edit) edit(j);
    spit(dir + "/model.safetensors.index.json", text.empty() ? j.dump() : text);
    return dir;
  };
  auto open_fails = [&](const std::string& dir, std::initializer_list<std::string> words) {
    check_error([&] { SafetensorsSet s(dir); }, {"model.safetensors.index.json"});
    check_error([&] { SafetensorsSet s(dir); }, words);
  };
  const std::string first = files[0], second = files[1];
  const std::string t0 = "blocks.0.w";  // in the first shard
  REQUIRE(idx["weight_map"][t0] == first);

  // A shard missing from the directory.
  {
    const std::string dir = variant(nullptr);
    fs::remove(dir + "/" + second);
    open_fails(dir, {"shard '" + second + "'", "listed for tensor", "cannot open"});
  }
  // A tensor the map puts in the wrong shard.
  open_fails(variant([&](json& j) { j["weight_map"][t0] = second; }),
             {"weight_map puts tensor 'blocks.0.w' in shard '" + second + "'", "does not hold it",
              "it is in", first});
  // A tensor in a shard but not in the map.
  open_fails(variant([&](json& j) { j["weight_map"].erase(t0); }),
             {first, "holds tensor 'blocks.0.w'", "which weight_map does not list"});
  // A tensor in two shards: the same tensor written into a second file.
  {
    const std::string dir = variant([&](json& j) {
      j["weight_map"]["blocks.0.w"] = "extra.safetensors";
      j["weight_map"]["blocks.1.w"] = "extra.safetensors";
    });
    SafetensorsReader r(dir + "/" + first);
    std::vector<TensorRef> refs;
    for (const auto& ti : r.tensors())
      if (ti.name == "blocks.0.w" || ti.name == "blocks.1.w") refs.push_back({ti.name, ti.dtype, ti.shape, r.bytes(ti)});
    write_safetensors(dir + "/extra.safetensors", refs);
    open_fails(dir, {first, "holds tensor 'blocks.0.w'", "but weight_map puts it in 'extra.safetensors'",
                     "exactly one shard"});
  }
  // Paths that leave the directory, or are no paths at all.
  open_fails(variant([&](json& j) { j["weight_map"][t0] = "../good/" + first; }),
             {"weight_map.blocks.0.w", "'../good/" + first + "'", "contains '..'", "relative"});
  open_fails(variant([&](json& j) { j["weight_map"][t0] = "sub/../" + first; }), {"contains '..'"});
  open_fails(variant([&](json& j) { j["weight_map"][t0] = good + "/" + first; }),
             {"weight_map.blocks.0.w", "is absolute"});
  open_fails(variant([&](json& j) { j["weight_map"][t0] = ""; }), {"weight_map.blocks.0.w", "is empty"});
  open_fails(variant([&](json& j) { j["weight_map"][t0] = std::string("a\0b", 3); }),
             {"shard path 'a\\0b' contains a NUL character"});
  open_fails(variant([&](json& j) { j["weight_map"][t0] = 1; }),
             {"weight_map.blocks.0.w", "expected the shard's file name as a string", "got 1"});
  // "./x" names the same file as "x".
  CHECK_NOTHROW(SafetensorsSet(variant([&](json& j) { j["weight_map"][t0] = "./" + first; })));
  // The index itself.
  open_fails(variant(nullptr, "{\"weight_map\": "), {"not valid JSON"});
  open_fails(variant(nullptr, "[]"), {"expected an object", "weight_map"});
  open_fails(variant([&](json& j) { j.erase("weight_map"); }), {"missing field 'weight_map'"});
  open_fails(variant([&](json& j) { j["weight_map"] = json::array(); }), {"weight_map must be an object"});
  open_fails(variant([&](json& j) { j["weight_map"] = json::object(); }), {"weight_map is empty"});
  open_fails(variant([&](json& j) { j["metadata"] = 3; }), {"metadata must be an object", "got 3"});
  open_fails(variant([&](json& j) { j["weigth_map"] = 3; }), {"unknown field 'weigth_map'", "metadata, weight_map"});
  open_fails(variant(nullptr, R"({"weight_map": {"blocks.0.w": ")" + first + R"(", "blocks.0.w": ")" + second + "\"}}"),
             {"key 'blocks.0.w' appears twice in \"weight_map\""});
  CHECK_NOTHROW(SafetensorsSet(variant([&](json& j) { j.erase("metadata"); })));
  // A corrupt shard: its own error, prefixed with the index and the shard.
  {
    const std::string dir = variant(nullptr);
    std::string bytes = slurp(dir + "/" + second);
    bytes.resize(bytes.size() - 1);
    spit(dir + "/" + second, bytes);
    open_fails(dir, {"shard '" + second + "'", "run past the end of the data buffer"});
  }
  // Neither layout in the directory.
  fs::create_directory(tmp / "empty");
  check_error([&] { SafetensorsSet s(tmp / "empty"); },
              {"empty", "neither model.safetensors.index.json nor model.safetensors"});
  check_error([&] { SafetensorsSet s(tmp / "absent.json"); }, {"absent.json", "cannot open the index"});
  check_error([&] { SafetensorsSet s(tmp / "absent.safetensors"); }, {"absent.safetensors", "cannot open"});
  CHECK(n >= 2);
}

}  // namespace hybrid_test_safetensors_bad
