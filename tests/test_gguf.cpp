// GGUF (io/gguf.hpp): write → read round trips of every value and tensor type, a file spelled
// out byte by byte, one malformed file per reader rule (each checked for the part of the
// message that names the problem), truncation at every length, and atomic writes to disk.
// Malformed files are assembled field by field (Raw), never by the writer.
#include <doctest/doctest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <hybrid/io/gguf.hpp>
#include <initializer_list>
#include <limits>
#include <string>
#include <string_view>
#include <vector>

using namespace hybrid;
namespace fs = std::filesystem;

#include "test_util.hpp"
using namespace hybrid::test_util;

// This file's own namespace: the tests compile in batches (tests/CMakeLists.txt).
namespace hybrid_test_gguf {

namespace {

constexpr auto kF32 = std::uint32_t(GgmlType::F32), kF16 = std::uint32_t(GgmlType::F16),
               kQ8_0 = std::uint32_t(GgmlType::Q8_0);

// Bytes assembled by hand, field by field, little-endian as GGUF stores them.
struct Raw {
  std::string b;
  template <class T>
  Raw& pod(T v) {
    b.append(reinterpret_cast<const char*>(&v), sizeof v);
    return *this;
  }
  Raw& u8(std::uint8_t v) { return pod(v); }
  Raw& u32(std::uint32_t v) { return pod(v); }
  Raw& i64(std::int64_t v) { return pod(v); }
  Raw& u64(std::uint64_t v) { return pod(v); }
  Raw& f32(float v) { return pod(v); }
  Raw& str(std::string_view s) {
    u64(s.size());
    b.append(s);
    return *this;
  }
  Raw& zeros(std::size_t n) {
    b.append(n, '\0');
    return *this;
  }
  Raw& pad(std::size_t a) {
    b.resize((b.size() + a - 1) / a * a, '\0');
    return *this;
  }
  // A key and its value type; the value follows.
  Raw& key(std::string_view k, GgufType t) { return str(k).u32(std::uint32_t(t)); }
  // An array value's element type and count; the elements follow.
  Raw& array(GgufType elem, std::uint64_t n) { return u32(std::uint32_t(elem)).u64(n); }
  Raw& tensor(std::string_view name, std::initializer_list<std::int64_t> ne, std::uint32_t type,
              std::uint64_t offset) {
    str(name).u32(std::uint32_t(ne.size()));
    for (auto d : ne) i64(d);
    return u32(type).u64(offset);
  }
};

// "GGUF", version, tensor count, key count.
Raw head(std::int64_t n_tensors, std::int64_t n_kv, std::uint32_t version = 3) {
  Raw r;
  r.b = "GGUF";
  return r.u32(version).i64(n_tensors).i64(n_kv);
}

// A file of one tensor and no keys: the header padded to 32, then `data` zero bytes.
std::string one_tensor(std::string_view name, std::initializer_list<std::int64_t> ne, std::uint32_t type,
                       std::uint64_t offset, std::size_t data) {
  return head(1, 0).tensor(name, ne, type, offset).pad(32).zeros(data).b;
}

// Parses an exactly sized heap copy of `bytes`, so that ASan sees any read past the end.
void parse(const std::string& bytes) {
  const std::vector<unsigned char> buf(bytes.begin(), bytes.end());
  (void)GgufReader::from_memory(buf.data(), buf.size(), "bad.gguf");
}

#define CHECK_BAD(bytes, part) CHECK_THROWS_WITH_AS(parse(bytes), doctest::Contains(part), hybrid::Error)

GgufReader read_bytes(const std::string& bytes, std::string name = "mem.gguf") {
  return GgufReader::from_memory(bytes.data(), bytes.size(), std::move(name));
}

// Values of the types that GgufValue has no factory for.
GgufValue uval(GgufType t, std::uint64_t u) {
  GgufValue v;
  v.type = t;
  v.u = u;
  return v;
}
GgufValue ival(GgufType t, std::int64_t i) {
  GgufValue v;
  v.type = t;
  v.i = i;
  return v;
}
GgufValue fval(GgufType t, double f) {
  GgufValue v;
  v.type = t;
  v.f = f;
  return v;
}

// The tensors the round-trip tests write: one of each type, with values that f16 / bf16 do
// not hold exactly, a 4-D shape and a tensor whose size is not a multiple of the alignment.
struct Sample {
  std::vector<float> f32 = {1, -2.5f, 3.25f, 1e-3f, 65504, -0.f};  // ne {3, 2}
  std::vector<float> f16 = {0.1f, -1.f / 3, 1e-6f, 70000, 2.5f};    // ne {5}: subnormal, overflow to inf
  std::vector<float> bf16 = {0.1f, -1.f / 3, 1e-30f, 3e38f, -7.f, 1.00390625f};  // ne {2, 1, 3, 1}
  std::vector<float> q8;                                            // ne {64, 2}: 4 blocks
  Sample() {
    q8.resize(128);
    for (int k = 0; k < 128; ++k) q8[std::size_t(k)] = std::sin(0.37f * float(k)) * (1.f + float(k % 7));
  }
  void add_to(GgufWriter& w) const {
    w.add_tensor("f32", GgmlType::F32, {3, 2}, gguf_encode(GgmlType::F32, f32.data(), 6));
    w.add_tensor("f16", GgmlType::F16, {5}, gguf_encode(GgmlType::F16, f16.data(), 5));
    w.add_tensor("bf16", GgmlType::BF16, {2, 1, 3, 1}, gguf_encode(GgmlType::BF16, bf16.data(), 6));
    w.add_tensor("q8", GgmlType::Q8_0, {64, 2}, gguf_encode(GgmlType::Q8_0, q8.data(), 128));
  }
};

// Checks the sample's tensors as read back from `r`, whose bytes start at `base`.
void check_sample(const GgufReader& r, const unsigned char* base, std::uint32_t align) {
  const Sample s;
  REQUIRE(r.tensors().size() == 4);
  const char* names[] = {"f32", "f16", "bf16", "q8"};
  const std::vector<std::int64_t> shapes[] = {{3, 2}, {5}, {2, 1, 3, 1}, {64, 2}};
  const GgmlType types[] = {GgmlType::F32, GgmlType::F16, GgmlType::BF16, GgmlType::Q8_0};
  const std::uint64_t bytes[] = {24, 10, 12, 4 * 34};
  std::uint64_t offset = 0;
  for (std::size_t k = 0; k < 4; ++k) {
    const GgufTensor& t = r.tensors()[k];
    CAPTURE(t.name);
    CHECK(t.name == names[k]);
    CHECK(t.ne == shapes[k]);
    CHECK(t.type == types[k]);
    CHECK(t.bytes == bytes[k]);
    // Each tensor where the previous one ends, padded to the alignment, both relative to
    // the data section and in absolute file position.
    CHECK(t.offset == offset);
    CHECK(t.offset % align == 0);
    CHECK(std::size_t(r.bytes(t) - base) % align == 0);
    CHECK(r.find(names[k]) == &t);
    offset += (t.bytes + align - 1) / align * align;
  }
  CHECK(r.find("nope") == nullptr);
  const GgufTensor& f32 = r.tensors()[0];
  CHECK(f32.numel() == 6);
  CHECK(f32.cols() == 3);
  CHECK(f32.rows() == 2);
  CHECK(f32.shape_str() == "[3, 2]");
  CHECK(r.tensors()[2].rows() == 3);

  std::vector<float> out(6);
  r.read_f32(f32, out.data());
  for (std::size_t k = 0; k < 6; ++k)  // bit for bit: -0 stays -0
    CHECK(std::bit_cast<std::uint32_t>(out[k]) == std::bit_cast<std::uint32_t>(s.f32[k]));
  out.assign(5, 0);
  r.read_f32(r.tensors()[1], out.data());
  for (std::size_t k = 0; k < 5; ++k) CHECK(out[k] == f16_to_f32(f32_to_f16(s.f16[k])));
  CHECK(out[0] != s.f16[0]);  // the conversion happened (0.1 is not a half)
  CHECK(std::isinf(out[3]));
  out.assign(6, 0);
  r.read_f32(r.tensors()[2], out.data());
  for (std::size_t k = 0; k < 6; ++k) CHECK(out[k] == bf16_to_f32(f32_to_bf16(s.bf16[k])));
  CHECK(out[5] == 1.f);  // a tie, to even
  // The raw bytes at each offset are the encoded values (the offsets point at the right data).
  CHECK(std::memcmp(r.bytes(r.tensors()[1]), gguf_encode(GgmlType::F16, s.f16.data(), 5).data(), 10) == 0);
  CHECK(std::memcmp(r.bytes(r.tensors()[3]), gguf_encode(GgmlType::Q8_0, s.q8.data(), 128).data(), 136) == 0);
}

}  // namespace

// ---- metadata -------------------------------------------------------------------------------

TEST_CASE("gguf: every value type, arrays and nested arrays round-trip in insertion order") {
  const std::vector<std::pair<std::string, GgufValue>> kv = {
      {"u8", uval(GgufType::U8, 200)},
      {"i8", ival(GgufType::I8, -100)},
      {"u16", uval(GgufType::U16, 60000)},
      {"i16", ival(GgufType::I16, -30000)},
      {"u32", GgufValue::u32(4'000'000'000u)},
      {"i32", GgufValue::i32(-2'000'000'000)},
      {"f32", GgufValue::f32(-0.1f)},
      {"bool", GgufValue::boolean(true)},
      {"false", GgufValue::boolean(false)},
      {"string", GgufValue::str(std::string("h\xc3\xa9l\0lo", 7))},  // UTF-8 and a NUL: length, not NUL-ended
      {"empty string", GgufValue::str("")},
      {"u64", GgufValue::u64((std::uint64_t(1) << 63) + 5)},
      {"i64", ival(GgufType::I64, -(std::int64_t(1) << 62) - 3)},
      {"f64", fval(GgufType::F64, 0.1)},
      {"f64 inf", fval(GgufType::F64, -std::numeric_limits<double>::infinity())},
      {"arr u32", GgufValue::array(GgufType::U32, {GgufValue::u32(1), GgufValue::u32(2), GgufValue::u32(3)})},
      {"arr f32", GgufValue::array(GgufType::F32, {GgufValue::f32(0.5f), GgufValue::f32(-1e30f)})},
      {"arr i8", GgufValue::array(GgufType::I8, {ival(GgufType::I8, -1), ival(GgufType::I8, 127)})},
      {"arr bool", GgufValue::array(GgufType::BOOL, {GgufValue::boolean(false), GgufValue::boolean(true)})},
      {"arr str", GgufValue::strings({"", "x", "yz", "<|endoftext|>"})},
      {"arr empty i32", GgufValue::array(GgufType::I32, {})},
      {"arr empty str", GgufValue::strings({})},
      {"arr nested",
       GgufValue::array(GgufType::ARRAY,
                        {GgufValue::array(GgufType::U32, {GgufValue::u32(1), GgufValue::u32(2)}),
                         GgufValue::array(GgufType::STRING, {GgufValue::str("s")}),
                         GgufValue::array(GgufType::F64, {})})},
  };
  GgufWriter w;
  for (const auto& [k, v] : kv) w.set(k, v);
  const std::string bytes = w.bytes();
  const GgufReader r = read_bytes(bytes);
  CHECK(r.version() == 3);
  CHECK(r.alignment() == 32);
  CHECK(r.tensors().empty());
  REQUIRE(r.keys().size() == kv.size());
  CHECK(r.metadata().size() == kv.size());
  for (std::size_t k = 0; k < kv.size(); ++k) {
    CAPTURE(kv[k].first);
    CHECK(r.keys()[k] == kv[k].first);  // file order = insertion order, not sorted
    REQUIRE(r.get(kv[k].first));
    CHECK(r.get(kv[k].first)->type == kv[k].second.type);
    CHECK(*r.get(kv[k].first) == kv[k].second);
  }
  // Field by field, so that a wrong operator== cannot hide a wrong value.
  CHECK(r.get("u8")->u == 200);
  CHECK(r.get("i8")->i == -100);
  CHECK(r.get("u16")->u == 60000);
  CHECK(r.get("i16")->i == -30000);
  CHECK(r.u32("u32") == 4'000'000'000u);
  CHECK(r.get("i32")->i == -2'000'000'000);
  CHECK(r.f32("f32") == -0.1f);
  CHECK(r.boolean("bool"));
  CHECK_FALSE(r.boolean("false"));
  CHECK(r.str("string") == std::string("h\xc3\xa9l\0lo", 7));
  CHECK(r.str("empty string").empty());
  CHECK(r.get("u64")->u == (std::uint64_t(1) << 63) + 5);
  CHECK(r.get("i64")->i == -(std::int64_t(1) << 62) - 3);
  CHECK(r.get("f64")->f == 0.1);
  CHECK(r.get("f64 inf")->f == -std::numeric_limits<double>::infinity());
  const auto& au = r.array("arr u32", GgufType::U32);
  REQUIRE(au.size() == 3);
  CHECK(au[2].u == 3);
  CHECK(r.array("arr f32", GgufType::F32)[1].f == double(-1e30f));
  CHECK(r.array("arr i8", GgufType::I8)[0].i == -1);
  CHECK(r.array("arr bool", GgufType::BOOL)[1].u == 1);
  const auto& as = r.array("arr str", GgufType::STRING);
  REQUIRE(as.size() == 4);
  CHECK(as[0].s.empty());
  CHECK(as[3].s == "<|endoftext|>");
  CHECK(r.array("arr empty i32", GgufType::I32).empty());
  CHECK(r.array("arr empty str", GgufType::STRING).empty());
  const auto& nested = r.array("arr nested", GgufType::ARRAY);
  REQUIRE(nested.size() == 3);
  CHECK(nested[0].elem == GgufType::U32);
  REQUIRE(nested[0].items.size() == 2);
  CHECK(nested[0].items[1].u == 2);
  CHECK(nested[1].elem == GgufType::STRING);
  REQUIRE(nested[1].items.size() == 1);
  CHECK(nested[1].items[0].s == "s");
  CHECK(nested[2].elem == GgufType::F64);
  CHECK(nested[2].items.empty());
  CHECK(r.get("arr nested")->brief() == "[array x 3]");
  CHECK(r.get("u32")->brief() == "4000000000");
  CHECK(r.get("i8")->brief() == "-100");
  CHECK(r.get("bool")->brief() == "true");
}

TEST_CASE("gguf: the writer's metadata bytes equal a file assembled by hand, type by type") {
  // Catches a writer and reader that agree on a wrong width (a u8 written as 4 bytes).
  GgufWriter w;
  w.set("a", uval(GgufType::U8, 0xab));
  w.set("b", ival(GgufType::I8, -2));
  w.set("c", uval(GgufType::U16, 0xbeef));
  w.set("d", ival(GgufType::I16, -3));
  w.set("e", GgufValue::u32(0xdeadbeef));
  w.set("f", GgufValue::i32(-4));
  w.set("g", GgufValue::f32(1.5f));
  w.set("h", GgufValue::boolean(true));
  w.set("i", GgufValue::str("xyz"));
  w.set("j", GgufValue::u64(0x0123456789abcdefull));
  w.set("k", ival(GgufType::I64, -5));
  w.set("l", fval(GgufType::F64, -2.25));
  w.set("m", GgufValue::array(GgufType::U16, {uval(GgufType::U16, 7), uval(GgufType::U16, 8)}));
  w.set("n", GgufValue::strings({"p", "qr"}));
  w.set("o", GgufValue::array(GgufType::ARRAY, {GgufValue::array(GgufType::I8, {ival(GgufType::I8, -1)})}));
  Raw r = head(0, 15);
  r.key("a", GgufType::U8).u8(0xab);
  r.key("b", GgufType::I8).u8(0xfe);
  r.key("c", GgufType::U16).pod(std::uint16_t(0xbeef));
  r.key("d", GgufType::I16).pod(std::int16_t(-3));
  r.key("e", GgufType::U32).u32(0xdeadbeef);
  r.key("f", GgufType::I32).pod(std::int32_t(-4));
  r.key("g", GgufType::F32).u32(0x3fc00000);
  r.key("h", GgufType::BOOL).u8(1);
  r.key("i", GgufType::STRING).str("xyz");
  r.key("j", GgufType::U64).u64(0x0123456789abcdefull);
  r.key("k", GgufType::I64).i64(-5);
  r.key("l", GgufType::F64).u64(0xc002000000000000ull);
  r.key("m", GgufType::ARRAY).array(GgufType::U16, 2).pod(std::uint16_t(7)).pod(std::uint16_t(8));
  r.key("n", GgufType::ARRAY).array(GgufType::STRING, 2).str("p").str("qr");
  r.key("o", GgufType::ARRAY).array(GgufType::ARRAY, 1).array(GgufType::I8, 1).u8(0xff);
  r.pad(32);
  CHECK(w.bytes() == r.b);
  const GgufReader g = read_bytes(r.b);
  CHECK(g.get("c")->u == 0xbeef);
  CHECK(g.get("l")->f == -2.25);
  CHECK(g.get("o")->items.at(0).items.at(0).i == -1);
}

TEST_CASE("gguf: set() replaces a key's value in place; get() sees the latest; remove() and remove_tensor()") {
  GgufWriter w;
  w.set("a", GgufValue::u32(1));
  w.set("b", GgufValue::str("two"));
  w.set("c", GgufValue::f32(3));
  w.set("a", GgufValue::str("one"));  // another type, same place
  w.set("c", GgufValue::f32(4));
  REQUIRE(w.get("a"));
  CHECK(w.get("a")->s == "one");
  CHECK(w.get("zzz") == nullptr);
  const std::string bytes = w.bytes();
  const GgufReader r = read_bytes(bytes);
  CHECK(r.keys() == std::vector<std::string>{"a", "b", "c"});
  CHECK(r.str("a") == "one");
  CHECK(r.f32("c") == 4);
  CHECK_THROWS_WITH_AS(w.set("", GgufValue::u32(1)), doctest::Contains("empty key"), hybrid::Error);

  // remove() keeps the others in order; a key set again goes to the end.
  CHECK(w.remove("a"));
  CHECK_FALSE(w.remove("a"));
  w.set("a", GgufValue::u32(9));
  const float v[8] = {};
  w.add_tensor("t0", GgmlType::F32, {8}, gguf_encode(GgmlType::F32, v, 8));
  w.add_tensor("t1", GgmlType::F32, {8}, gguf_encode(GgmlType::F32, v, 8));
  CHECK(w.remove_tensor("t0"));
  CHECK_FALSE(w.remove_tensor("t0"));
  CHECK(w.tensor_count() == 1);
  const std::string b2 = w.bytes();
  const GgufReader r2 = read_bytes(b2);
  CHECK(r2.keys() == std::vector<std::string>{"b", "c", "a"});
  REQUIRE(r2.tensors().size() == 1);
  CHECK(r2.tensors()[0].name == "t1");
  CHECK(r2.tensors()[0].offset == 0);  // laid out afresh
}

// ---- tensors --------------------------------------------------------------------------------

TEST_CASE("gguf: F32 / F16 / BF16 / Q8_0 tensors round-trip with shapes, offsets aligned to 32") {
  GgufWriter w;
  w.set("general.architecture", GgufValue::str("test"));
  Sample().add_to(w);
  const std::string bytes = w.bytes();
  CHECK(bytes.size() % 32 == 0);
  const GgufReader r = read_bytes(bytes);
  CHECK(r.alignment() == 32);
  check_sample(r, reinterpret_cast<const unsigned char*>(bytes.data()), 32);
  CHECK(r.tensors()[3].offset == 96);
}

TEST_CASE("gguf: general.alignment = 64 aligns the data section and every tensor to 64") {
  GgufWriter w;
  w.set("general.alignment", GgufValue::u32(64));
  Sample().add_to(w);
  const std::string bytes = w.bytes();
  CHECK(bytes.size() % 64 == 0);
  const GgufReader r = read_bytes(bytes);
  CHECK(r.alignment() == 64);
  CHECK(r.u32("general.alignment") == 64);
  check_sample(r, reinterpret_cast<const unsigned char*>(bytes.data()), 64);
  CHECK(r.tensors()[1].offset == 64);
  CHECK(r.tensors()[3].offset == 192);
}

TEST_CASE("gguf: Q8_0 quantises a block as ggml does; read_q8_0 gives its scale and int8 values") {
  // One block (ne {32}): scale = max|x| / 127 stored as f16, q = round(x / scale).
  float x[32];
  for (int k = 0; k < 32; ++k) x[k] = 0.3f * float(k) - 4.1f + (k % 3 == 0 ? 0.07f : 0.f);
  x[17] = -12.7f;  // the largest magnitude: q = -127
  float amax = 0;
  for (float v : x) amax = std::max(amax, std::fabs(v));
  REQUIRE(amax == 12.7f);
  const float d = amax / 127.f;
  const std::uint16_t d16 = f32_to_f16(d);
  std::int8_t q[32];
  for (int k = 0; k < 32; ++k) {
    const float y = x[k] / d;
    REQUIRE(std::fabs(std::fabs(y - std::trunc(y)) - 0.5f) > 1e-3f);  // no near-tie: x / d and x * (1 / d) agree
    q[k] = std::int8_t(std::roundf(y));
  }
  CHECK(q[17] == -127);

  const std::vector<unsigned char> enc = gguf_encode(GgmlType::Q8_0, x, 32);
  REQUIRE(enc.size() == 34);
  std::uint16_t h;
  std::memcpy(&h, enc.data(), 2);
  CHECK(h == d16);
  for (int k = 0; k < 32; ++k) CHECK(std::int8_t(enc[std::size_t(2 + k)]) == q[k]);

  GgufWriter w;
  w.add_tensor("blk.0.ffn_down.weight", GgmlType::Q8_0, {32}, enc);
  const std::string bytes = w.bytes();
  const GgufReader r = read_bytes(bytes);
  const GgufTensor& t = r.tensors().at(0);
  CHECK(t.bytes == 34);
  std::int8_t rq[32];
  float scale = -1;
  r.read_q8_0(t, rq, &scale);
  CHECK(scale == f16_to_f32(d16));
  CHECK(scale != d);  // 0.1 is not a half: the scale is rounded
  for (int k = 0; k < 32; ++k) CHECK(rq[k] == q[k]);
  float y[32];
  r.read_f32(t, y);
  for (int k = 0; k < 32; ++k) CHECK(y[k] == f16_to_f32(d16) * float(q[k]));
  // read_q8_0 on another type is an error naming the tensor and its type.
  GgufWriter w2;
  w2.add_tensor("f", GgmlType::F32, {1}, gguf_encode(GgmlType::F32, x, 1));
  const std::string b2 = w2.bytes();
  const GgufReader r2 = read_bytes(b2);
  CHECK_THROWS_WITH_AS(r2.read_q8_0(r2.tensors()[0], rq, &scale), doctest::Contains("tensor 'f' is F32, not Q8_0"),
                       hybrid::Error);
}

TEST_CASE("gguf: Q8_0 encode → read error is half a step plus the f16 rounding of the scale") {
  // 8 rows of 96 (3 blocks each), magnitudes from 1e-6 (an f16-subnormal scale) to 1e4,
  // and an all-zero block (scale 0, q 0).
  const std::int64_t cols = 96, rows = 8, n = cols * rows;
  std::vector<float> x(static_cast<std::size_t>(n));
  Rng rng(7);
  for (std::int64_t k = 0; k < n; ++k)
    x[std::size_t(k)] = float(rng.normal()) * std::pow(10.f, float(k / cols) - 6.f + float(k / cols) * 0.4f);
  std::fill(x.begin() + 32, x.begin() + 64, 0.f);
  GgufWriter w;
  w.add_tensor("w", GgmlType::Q8_0, {cols, rows}, gguf_encode(GgmlType::Q8_0, x.data(), n));
  const std::string bytes = w.bytes();
  const GgufReader r = read_bytes(bytes);
  const GgufTensor& t = r.tensors().at(0);
  CHECK(t.bytes == std::uint64_t(n / 32 * 34));
  std::vector<float> y(static_cast<std::size_t>(n)), scales(static_cast<std::size_t>(n / 32));
  std::vector<std::int8_t> q(static_cast<std::size_t>(n));
  r.read_f32(t, y.data());
  r.read_q8_0(t, q.data(), scales.data());
  CHECK(scales[1] == 0);
  for (std::int64_t b = 0; b < n / 32; ++b) {
    CAPTURE(b);
    float amax = 0;
    for (std::int64_t k = 0; k < 32; ++k) amax = std::max(amax, std::fabs(x[std::size_t(b * 32 + k)]));
    const float d = amax / 127.f, s = scales[std::size_t(b)];
    CHECK(s == f16_to_f32(f32_to_f16(d)));
    for (std::int64_t k = 0; k < 32; ++k) {
      const std::size_t i = std::size_t(b * 32 + k);
      CHECK(y[i] == s * float(q[i]));
      CHECK(std::abs(int(q[i])) <= 127);
      // Half a step of the exact scale d, plus what rounding d to f16 moved the value
      // (|q| × |s - d|), plus float rounding. Half the stored scale s alone is not a bound:
      // about 0.7% of normal draws land up to 0.55 s away.
      const float bound = 0.5f * d + float(std::abs(int(q[i]))) * std::fabs(s - d) + 1e-6f * amax;
      CHECK(std::fabs(x[i] - y[i]) <= bound);
    }
  }
}

// ---- one file, byte by byte ----------------------------------------------------------------

TEST_CASE("gguf: golden bytes of a file with one key and one F32 tensor") {
  // Key "a" = u32 7; tensor "t", F32, ne = [2], values {1, 2}.
  const unsigned char expect[] = {
      'G', 'G', 'U', 'F',                              // magic
      3, 0, 0, 0,                                      // version 3
      1, 0, 0, 0, 0, 0, 0, 0,                          // i64 tensor count
      1, 0, 0, 0, 0, 0, 0, 0,                          // i64 key count
      1, 0, 0, 0, 0, 0, 0, 0, 'a',                     // key: u64 length, bytes
      4, 0, 0, 0,                                      // value type u32
      7, 0, 0, 0,                                      // value
      1, 0, 0, 0, 0, 0, 0, 0, 't',                     // tensor name
      1, 0, 0, 0,                                      // u32 n_dims
      2, 0, 0, 0, 0, 0, 0, 0,                          // i64 ne[0]
      0, 0, 0, 0,                                      // ggml type F32
      0, 0, 0, 0, 0, 0, 0, 0,                          // u64 offset (74 bytes so far)
      0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,  // padding to 96
      0, 0, 0, 0, 0, 0,                                //
      0x00, 0x00, 0x80, 0x3f, 0x00, 0x00, 0x00, 0x40,  // data: 1.0f, 2.0f
      0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,  // padding to 128
      0, 0, 0, 0, 0, 0, 0, 0,                          //
  };
  static_assert(sizeof expect == 128);
  const std::string golden(reinterpret_cast<const char*>(expect), sizeof expect);

  GgufWriter w;
  w.set("a", GgufValue::u32(7));
  const float v[2] = {1, 2};
  w.add_tensor("t", GgmlType::F32, {2}, gguf_encode(GgmlType::F32, v, 2));
  const std::string got = w.bytes();
  REQUIRE(got.size() == golden.size());
  for (std::size_t k = 0; k < golden.size(); ++k) {
    CAPTURE(k);
    CHECK(int(static_cast<unsigned char>(got[k])) == int(expect[k]));
  }

  const GgufReader r = read_bytes(golden);
  CHECK(r.u32("a") == 7);
  REQUIRE(r.tensors().size() == 1);
  const GgufTensor& t = r.tensors()[0];
  CHECK(t.name == "t");
  CHECK(t.ne == std::vector<std::int64_t>{2});
  CHECK(t.offset == 0);
  CHECK(r.bytes(t) == reinterpret_cast<const unsigned char*>(golden.data()) + 96);
  float out[2];
  r.read_f32(t, out);
  CHECK(out[0] == 1);
  CHECK(out[1] == 2);

  // Version 2 has the same layout and is accepted; the trailing padding is optional.
  std::string v2 = golden;
  v2[4] = 2;
  CHECK(read_bytes(v2).version() == 2);
  CHECK(read_bytes(golden.substr(0, 104)).tensors().size() == 1);
}

// ---- malformed files -------------------------------------------------------------------------

TEST_CASE("gguf bad: magic, version and counts") {
  CHECK_BAD("", "does not start with the magic \"GGUF\"");
  CHECK_BAD("GGU", "does not start with the magic");
  std::string b = head(0, 0).b;
  b[3] = 'X';
  CHECK_BAD(b, "does not start with the magic");
  CHECK_BAD(head(0, 0, 1).b, "version 1 is not supported (expected 2 or 3)");
  CHECK_BAD(head(0, 0, 4).b, "version 4 is not supported");
  CHECK_BAD(head(0, 0, 0x03000000).b, "version 50331648 is not supported");  // big-endian file
  CHECK_BAD(head(0, -1).b, "key-value count -1 does not fit");
  CHECK_BAD(head(0, 1000).zeros(100).b, "key-value count 1000 does not fit");
  CHECK_BAD(head(-1, 0).b, "tensor count -1 does not fit");
  CHECK_BAD(head(std::int64_t(1) << 62, 0).b, "tensor count 4611686018427387904 does not fit");
  CHECK_NOTHROW(parse(head(0, 0).b));  // the smallest valid file
  // Every message names the file.
  CHECK_THROWS_WITH_AS(parse(head(0, 0, 1).b), doctest::Contains("GGUF file 'bad.gguf': "), hybrid::Error);
}

TEST_CASE("gguf bad: truncation at every length of a valid file throws hybrid::Error") {
  // Five keys, two tensors; the last tensor is 32 bytes, so the file has no trailing padding
  // and every shorter prefix lacks something the reader needs.
  Raw r = head(2, 5);
  r.key("general.architecture", GgufType::STRING).str("llama");
  r.key("general.alignment", GgufType::U32).u32(32);
  r.key("ids", GgufType::ARRAY).array(GgufType::I32, 3).pod(std::int32_t(1)).pod(std::int32_t(2)).pod(std::int32_t(3));
  r.key("tokens", GgufType::ARRAY).array(GgufType::STRING, 2).str("a").str("bc");
  r.key("flag", GgufType::BOOL).u8(1);
  r.tensor("a", {3}, kF16, 0).tensor("b", {8}, kF32, 32).pad(32);
  r.zeros(6).pad(32);
  for (int k = 0; k < 8; ++k) r.f32(float(k));
  const std::string full = r.b;
  {
    const GgufReader g = read_bytes(full);
    REQUIRE(g.tensors().size() == 2);
    float out[8];
    g.read_f32(g.tensors()[1], out);
    CHECK(out[7] == 7);
    CHECK(g.array("tokens", GgufType::STRING)[1].s == "bc");
  }
  for (std::size_t n = 0; n < full.size(); ++n) {
    CAPTURE(n);
    CHECK_THROWS_WITH_AS(parse(full.substr(0, n)), doctest::Contains("GGUF file 'bad.gguf': "), hybrid::Error);
  }
  // The messages say where and what.
  CHECK_BAD(full.substr(0, 10), "tensor count at byte 8 needs 8 bytes but the file has 2 left (truncated?)");
  CHECK_BAD(full.substr(0, full.size() - 1), "tensor 'b' (F32 [8], 32 bytes at offset 32) runs past the end");
}

TEST_CASE("gguf bad: strings and arrays longer than the file") {
  CHECK_BAD(head(0, 1).u64(1000).b + "abc" + std::string(20, '\0'), "key at byte 32 needs 1000 bytes");
  CHECK_BAD(head(0, 1).key("k", GgufType::STRING).u64(50).zeros(10).b, "string value at byte 45 needs 50 bytes");
  CHECK_BAD(head(0, 1).key("k", GgufType::STRING).u64(~std::uint64_t(0)).zeros(10).b,
            "string value: length 18446744073709551615 exceeds the limit");
  CHECK_BAD(head(0, 1).key("k", GgufType::ARRAY).array(GgufType::U32, 1'000'000).zeros(64).b,
            "key 'k': array of 1000000 u32 values does not fit in the 64 bytes left");
  CHECK_BAD(head(0, 1).key("k", GgufType::ARRAY).array(GgufType::STRING, std::uint64_t(1) << 61).zeros(64).b,
            "array of 2305843009213693952 string values does not fit");
  CHECK_BAD(head(0, 1).key("k", GgufType::ARRAY).array(GgufType::ARRAY, ~std::uint64_t(0)).zeros(64).b,
            "values does not fit");
  // An array that fits exactly is fine (positive control).
  CHECK_NOTHROW(parse(head(0, 1).key("k", GgufType::ARRAY).array(GgufType::U32, 2).u32(1).u32(2).b));
  CHECK_BAD(head(0, 1).key("k", GgufType::ARRAY).array(GgufType::U32, 3).u32(1).u32(2).b, "array of 3 u32 values");
}

TEST_CASE("gguf bad: value types, bools, keys") {
  CHECK_BAD(head(0, 1).str("k").u32(13).u32(0).b, "key 'k': value type 13 is not a GGUF value type (0-12)");
  CHECK_BAD(head(0, 1).str("k").u32(0xffffffff).u32(0).b, "value type 4294967295 is not a GGUF value type");
  CHECK_BAD(head(0, 1).key("k", GgufType::ARRAY).u32(13).u64(0).b,
            "key 'k': array element type 13 is not a GGUF value type");
  CHECK_BAD(head(0, 1).key("k", GgufType::BOOL).u8(2).b, "key 'k': a bool holds 2, expected 0 or 1");
  CHECK_BAD(head(0, 1).key("k", GgufType::ARRAY).array(GgufType::BOOL, 2).u8(1).u8(255).b, "a bool holds 255");
  CHECK_BAD(head(0, 2).key("k", GgufType::U8).u8(1).key("k", GgufType::U32).u32(1).b, "key 'k' appears twice");
  CHECK_BAD(head(0, 1).key("", GgufType::U8).u8(1).b, "key 0 is empty");
  // Arrays nest at most 4 deep.
  Raw deep = head(0, 1).key("k", GgufType::ARRAY);
  for (int k = 0; k < 4; ++k) deep.array(GgufType::ARRAY, 1);
  CHECK_BAD(Raw(deep).array(GgufType::U8, 0).b, "key 'k': arrays nested deeper than 4 levels");
  Raw ok = head(0, 1).key("k", GgufType::ARRAY);
  for (int k = 0; k < 3; ++k) ok.array(GgufType::ARRAY, 1);
  CHECK_NOTHROW(parse(ok.array(GgufType::U8, 0).b));
}

TEST_CASE("gguf bad: general.alignment") {
  CHECK_BAD(head(0, 1).key("general.alignment", GgufType::U32).u32(48).b,
            "general.alignment is 48, expected a power of two");
  CHECK_BAD(head(0, 1).key("general.alignment", GgufType::U32).u32(0).b, "general.alignment is 0");
  CHECK_BAD(head(0, 1).key("general.alignment", GgufType::U64).u64(32).b,
            "key 'general.alignment' has type u64, expected u32");
  CHECK_BAD(head(0, 1).key("general.alignment", GgufType::STRING).str("32").b,
            "key 'general.alignment' has type string, expected u32");
  CHECK_NOTHROW(parse(head(0, 1).key("general.alignment", GgufType::U32).u32(1).b));
  // Offsets are checked against the file's alignment, not the default.
  const std::string a64 =
      head(1, 1).key("general.alignment", GgufType::U32).u32(64).tensor("t", {8}, kF32, 32).pad(64).zeros(64).b;
  CHECK_BAD(a64, "tensor 't': offset 32 is not a multiple of the alignment 64");
}

TEST_CASE("gguf bad: tensor names, dimensions, types") {
  CHECK_NOTHROW(parse(one_tensor("t", {8}, kF32, 0, 32)));  // the control the others vary
  CHECK_NOTHROW(parse(one_tensor(std::string(63, 'n'), {8}, kF32, 0, 32)));
  CHECK_NOTHROW(parse(one_tensor("t", {2, 1, 2, 2}, kF32, 0, 32)));
  CHECK_BAD(one_tensor(std::string(64, 'n'), {8}, kF32, 0, 32), "has 64 bytes, expected 1 to 63");
  CHECK_BAD(one_tensor("", {8}, kF32, 0, 32), "tensor 0: name '' has 0 bytes");
  CHECK_BAD(head(1, 0).u64(100000).zeros(100).b, "tensor name: length 100000 exceeds the limit");
  CHECK_BAD(head(2, 0).tensor("t", {8}, kF32, 0).tensor("t", {8}, kF32, 32).pad(32).zeros(64).b,
            "tensor 't' appears twice");
  CHECK_BAD(one_tensor("t", {}, kF32, 0, 32), "tensor 't': 0 dimensions, expected 1 to 4");
  CHECK_BAD(one_tensor("t", {1, 1, 2, 2, 2}, kF32, 0, 32), "tensor 't': 5 dimensions, expected 1 to 4");
  CHECK_BAD(one_tensor("t", {8, 0}, kF32, 0, 32), "tensor 't': dimension 1 is 0, expected a positive size");
  CHECK_BAD(one_tensor("t", {-3}, kF32, 0, 32), "tensor 't': dimension 0 is -3, expected a positive size");
  CHECK_BAD(one_tensor("t", {1 << 30, 1 << 30}, kF32, 0, 32), "dimensions multiply to more than 2^50");
  CHECK_BAD(one_tensor("blk.0.ffn_up.weight", {256}, 12, 0, 144),
            "tensor 'blk.0.ffn_up.weight' has type Q4_K; this reader takes F32, F16, BF16 and Q8_0");
  CHECK_BAD(one_tensor("t", {32}, 2, 0, 18), "tensor 't' has type Q4_0");
  CHECK_BAD(one_tensor("t", {32}, 999, 0, 128), "tensor 't' has type unknown (999)");
  CHECK_BAD(one_tensor("t", {48, 2}, kQ8_0, 0, 128),
            "tensor 't': Q8_0 needs its first dimension (48) to be a multiple of 32");
  CHECK_NOTHROW(parse(one_tensor("t", {64, 2}, kQ8_0, 0, 136)));
}

TEST_CASE("gguf bad: tensor offsets") {
  CHECK_BAD(one_tensor("t", {8}, kF32, 16, 64), "tensor 't': offset 16 is not a multiple of the alignment 32");
  CHECK_BAD(one_tensor("t", {8}, kF32, 0, 31), "tensor 't' (F32 [8], 32 bytes at offset 0) runs past the end");
  CHECK_BAD(one_tensor("t", {8}, kF32, 64, 64), "32 bytes at offset 64) runs past the end of the data section (64");
  CHECK_BAD(one_tensor("t", {8}, kF32, ~std::uint64_t(0) / 32 * 32, 64), "runs past the end of the data section");
  CHECK_BAD(one_tensor("t", {1 << 20, 1 << 20}, kF32, 0, 64), "runs past the end of the data section");
  // Overlaps, either order in the file.
  CHECK_BAD(head(2, 0).tensor("a", {16}, kF32, 0).tensor("b", {8}, kF32, 32).pad(32).zeros(96).b,
            "tensor 'b' at offset 32 overlaps tensor 'a' (64 bytes at offset 0)");
  CHECK_BAD(head(2, 0).tensor("b", {8}, kF32, 32).tensor("a", {16}, kF32, 0).pad(32).zeros(96).b,
            "overlaps tensor 'a'");
  CHECK_BAD(head(2, 0).tensor("a", {8}, kF32, 0).tensor("b", {8}, kF32, 0).pad(32).zeros(96).b, "overlaps tensor");
  CHECK_NOTHROW(parse(head(2, 0).tensor("a", {8}, kF32, 0).tensor("b", {8}, kF32, 32).pad(32).zeros(64).b));
  // The header's padding itself running past the end.
  CHECK_BAD(head(1, 0).tensor("t", {1}, kF32, 0).b, "the data section would start at byte 64, past the end");
}

TEST_CASE("gguf bad: typed accessors on a missing key or a key of another type") {
  Raw b = head(0, 4);
  b.key("a", GgufType::U32).u32(7);
  b.key("s", GgufType::STRING).str("text");
  b.key("arr", GgufType::ARRAY).array(GgufType::U32, 1).u32(1);
  b.key("f", GgufType::F32).f32(0.5f);
  const GgufReader r = read_bytes(b.b, "acc.gguf");
  CHECK(r.u32("a") == 7);
  CHECK(r.has("a"));
  CHECK_FALSE(r.has("missing"));
  CHECK(r.get("missing") == nullptr);
  CHECK_THROWS_WITH_AS(r.u32("missing"),
                       doctest::Contains("GGUF file 'acc.gguf': key 'missing' is missing (expected type u32)"),
                       hybrid::Error);
  CHECK_THROWS_WITH_AS(r.f32("missing"), doctest::Contains("is missing (expected type f32)"), hybrid::Error);
  CHECK_THROWS_WITH_AS(r.str("missing"), doctest::Contains("is missing (expected type string)"), hybrid::Error);
  CHECK_THROWS_WITH_AS(r.boolean("missing"), doctest::Contains("is missing (expected type bool)"), hybrid::Error);
  CHECK_THROWS_WITH_AS(r.array("missing", GgufType::U32), doctest::Contains("key 'missing' is missing"),
                       hybrid::Error);
  CHECK_THROWS_WITH_AS(r.f32("a"), doctest::Contains("key 'a' has type u32 (7), expected f32"), hybrid::Error);
  CHECK_THROWS_WITH_AS(r.str("a"), doctest::Contains("key 'a' has type u32 (7), expected string"), hybrid::Error);
  CHECK_THROWS_WITH_AS(r.u32("s"), doctest::Contains("key 's' has type string (\"text\"), expected u32"), hybrid::Error);
  CHECK_THROWS_WITH_AS(r.u32("f"), doctest::Contains("key 'f' has type f32 (0.5), expected u32"), hybrid::Error);
  CHECK_THROWS_WITH_AS(r.array("a", GgufType::U32), doctest::Contains("key 'a' has type u32 (7), expected array"),
                       hybrid::Error);
  CHECK_THROWS_WITH_AS(r.u32("arr"), doctest::Contains("key 'arr' has type array ([u32 x 1]), expected u32"),
                       hybrid::Error);
  CHECK_THROWS_WITH_AS(r.array("arr", GgufType::STRING),
                       doctest::Contains("key 'arr' is an array of u32 values, expected an array of string values"), hybrid::Error);
  CHECK(r.array("arr", GgufType::U32).at(0).u == 1);
}

TEST_CASE("gguf: writer and value misuse is an error naming the fix") {
  GgufWriter w;
  const std::vector<unsigned char> b32(32);
  CHECK_THROWS_WITH_AS(w.add_tensor(std::string(64, 'n'), GgmlType::F32, {8}, b32),
                       doctest::Contains("has 64 bytes, expected 1 to 63"), hybrid::Error);
  CHECK_THROWS_WITH_AS(w.add_tensor("t", GgmlType::F32, {}, b32), doctest::Contains("0 dimensions"), hybrid::Error);
  CHECK_THROWS_WITH_AS(w.add_tensor("t", GgmlType::F32, {1, 1, 1, 2, 4}, b32), doctest::Contains("5 dimensions"),
                       hybrid::Error);
  CHECK_THROWS_WITH_AS(w.add_tensor("t", GgmlType::F32, {8, 0}, b32), doctest::Contains("a dimension of 0"),
                       hybrid::Error);
  CHECK_THROWS_WITH_AS(w.add_tensor("t", GgmlType::F32, {9}, b32),
                       doctest::Contains("has 32 bytes, expected 36 for F32"), hybrid::Error);
  CHECK_THROWS_WITH_AS(w.add_tensor("t", GgmlType::Q8_0, {16}, b32), doctest::Contains("multiple of 32"),
                       hybrid::Error);
  w.add_tensor("t", GgmlType::F32, {8}, b32);
  CHECK_THROWS_WITH_AS(w.add_tensor("t", GgmlType::F32, {8}, b32), doctest::Contains("tensor 't' added twice"),
                       hybrid::Error);
  w.set("general.alignment", GgufValue::u32(48));
  CHECK_THROWS_WITH_AS((void)w.bytes(), doctest::Contains("general.alignment must be a u32 power of two, got 48"),
                       hybrid::Error);
  w.set("general.alignment", GgufValue::u64(64));
  CHECK_THROWS_WITH_AS((void)w.bytes(), doctest::Contains("must be a u32 power of two"), hybrid::Error);
  CHECK_THROWS_WITH_AS(GgufValue::array(GgufType::U32, {GgufValue::i32(1)}),
                       doctest::Contains("an element of type i32 in an array of u32"), hybrid::Error);
  const float x[16] = {};
  CHECK_THROWS_WITH_AS(gguf_encode(GgmlType::Q8_0, x, 16), doctest::Contains("multiple of 32 values, got 16"),
                       hybrid::Error);
}

// ---- files on disk ---------------------------------------------------------------------------

TEST_CASE("gguf: write to a file, map it back; a rewrite replaces it; a bad directory leaves nothing") {
  TempDir tmp;
  const std::string path = tmp / "model.gguf";
  {
    GgufWriter w;
    w.set("general.name", GgufValue::str("first"));
    w.set("general.alignment", GgufValue::u32(64));  // padding past the last tensor on disk too
    Sample().add_to(w);
    w.write(path);
    const std::string bytes = w.bytes();
    CHECK(slurp(path) == bytes);  // write() streams what bytes() builds
    CHECK(w.size() == bytes.size());
  }
  GgufReader r(path);
  CHECK(r.path() == path);
  CHECK(r.str("general.name") == "first");
  CHECK(r.tensors().size() == 4);
  {
    // The mapping and its tensors move with the reader.
    GgufReader moved = std::move(r);
    check_sample(moved, moved.bytes(moved.tensors()[0]), 64);
    const std::string empty = head(0, 0).b;
    GgufReader again = read_bytes(empty);
    again = std::move(moved);
    check_sample(again, again.bytes(again.tensors()[0]), 64);
  }

  GgufWriter w2;
  w2.set("general.name", GgufValue::str("second"));
  w2.write(path);
  {
    const GgufReader r2(path);
    CHECK(r2.str("general.name") == "second");
    CHECK(r2.tensors().empty());
  }
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(tmp.dir)) names.push_back(e.path().filename().string());
  CHECK(names == std::vector<std::string>{"model.gguf"});  // no temporary left behind

  const std::string nodir = tmp / "no_such_dir/model.gguf";
  CHECK_THROWS_WITH_AS(w2.write(nodir), doctest::Contains("cannot create temporary file"), hybrid::Error);
  CHECK_FALSE(fs::exists(nodir));
  CHECK_FALSE(fs::exists(tmp / "no_such_dir"));

  // Opening: missing, a directory, too short, and a corrupt file named in the message.
  CHECK_THROWS_WITH_AS(GgufReader(tmp / "missing.gguf"), doctest::Contains("missing.gguf': cannot open"),
                       hybrid::Error);
  CHECK_THROWS_WITH_AS(GgufReader(tmp.dir.string()), doctest::Contains("not a regular file"), hybrid::Error);
  spit(tmp / "short.gguf", "GGUF\x03");
  CHECK_THROWS_WITH_AS(GgufReader(tmp / "short.gguf"), doctest::Contains("file is 5 bytes, too short for the 24-byte"),
                       hybrid::Error);
  spit(tmp / "v9.gguf", head(0, 0, 9).b);
  CHECK_THROWS_WITH_AS(GgufReader(tmp / "v9.gguf"), doctest::Contains("v9.gguf': version 9 is not supported"),
                       hybrid::Error);
}

}  // namespace hybrid_test_gguf
