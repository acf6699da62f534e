// Quantised artifacts (quant/artifact.hpp): bit-exact round trips for every width 2..8 and
// several group sizes under each codec alone and the automatic choice; the automatic choice
// never larger than a single codec; truncation at every length, byte flips in the header, a
// payload and the checksum, unknown versions, corrupt sizes and fields, decompression bombs,
// each naming the file and what is wrong; atomic writes.
#include <doctest/doctest.h>

#include <cmath>
#include <filesystem>
#include <hybrid/alias_registry.hpp>
#include <hybrid/quant/artifact.hpp>
#include <set>

#include "test_util.hpp"

using namespace hybrid;
using namespace hybrid::quant;
using namespace hybrid::test_util;
namespace fs = std::filesystem;
using nlohmann::json;

// This file's own namespace: the tests compile in batches (tests/CMakeLists.txt).
namespace hybrid_test_artifact {

namespace {

ModelDesc tiny_desc() {
  return desc_from_layout("MA", ModelSpec{.vocab = 64, .d_model = 32},
                          Mamba2Spec{.d_state = 8, .expand = 2, .headdim = 16},
                          GqaSpec{.n_heads = 4, .n_kv_heads = 2, .head_dim = 8}, ShortConvSpec{},
                          NoChannelSpec{}, Relu2Spec{{64}});
}

// Values drawn as a quantiser would leave them: roughly normal, std qmax / 3, clipped.
QTensor random_q(int bits, Index rows, Index cols, Index group, std::uint64_t seed) {
  QTensor t;
  t.bits = bits, t.rows = rows, t.cols = cols, t.group = group;
  Rng rng(seed);
  const int qm = qmax_of(bits);
  for (Index i = 0; i < rows * cols; ++i)
    t.q.push_back(std::int8_t(std::clamp(int(std::lround(rng.normal() * qm / 3.0)), -qm, qm)));
  for (Index i = 0; i < rows * (cols / group); ++i) t.scales.push_back(float(0.002 + 0.01 * rng.uniform()));
  if (!t.scales.empty()) t.scales[0] = 0;        // an all-zero group
  if (t.scales.size() > 1) t.scales[1] = 3e-7f;  // an f16 subnormal
  return t;
}

std::vector<float> random_floats(std::size_t n, std::uint64_t seed) {
  Rng rng(seed);
  std::vector<float> v(n);
  for (float& x : v) x = float(rng.normal());
  return v;
}

// Every width 2..8 with a scale per row, per 8 and per 32 columns; an f32-scale tensor; a
// prefixed stream; float tensors of every rank kind, f16 and f32, empty ones included.
Artifact sample() {
  Artifact a;
  a.desc = tiny_desc();
  a.policy = {{"bits", {{"matrix", 6}, {"embed", 8}}},
              {"method", "gptq"},
              {"sdclip_k", 12.85},
              {"nested", json::array({1, json::object({{"a", nullptr}}), -2.5})}};
  std::uint64_t seed = 1;
  for (int bits = 2; bits <= 8; ++bits)
    for (Index group : {Index(64), Index(8), Index(32)})
      a.tensors.push_back(ArtifactTensor::quantized(std::string(1, 'w').append(std::to_string(bits)).append("_g").append(std::to_string(group)),
                                                    random_q(bits, 3 + bits % 3, 64, group, seed++)));
  QTensor big = random_q(6, 4, 16, 16, seed++);
  big.scales[2] = 1e6f;  // needs f32 scales
  a.tensors.push_back(ArtifactTensor::quantized("w6_f32scales", big, DType::F32));
  a.tensors.push_back(
      ArtifactTensor::quantized("embed.weight", random_q(8, 16, 32, 32, seed++), DType::F16, "embed"));
  a.tensors.push_back(ArtifactTensor::quantized("empty_q", random_q(4, 0, 16, 8, seed++)));
  a.tensors.push_back(ArtifactTensor::floats("norm_f.weight", {32}, random_floats(32, seed++)));
  a.tensors.push_back(ArtifactTensor::floats("A_log", {4}, {0.1f, -0.f, 65504.f, 1e-7f}));
  a.tensors.push_back(
      ArtifactTensor::floats("conv1d.weight", {2, 3, 4}, random_floats(24, seed++), DType::F32));
  a.tensors.push_back(ArtifactTensor::floats("D", {}, {1.5f}, DType::F32));
  a.tensors.push_back(ArtifactTensor::floats("empty", {0, 5}, {}));
  a.tensors.push_back(ArtifactTensor::floats("embed.scale", {3}, {1.f, 2.f, 3.f}, DType::F16, "embed"));
  return a;
}

ArtifactOptions only(Codec c, ShuffleMode m = ShuffleMode::Try) {
  ArtifactOptions o;
  o.codecs = {c};
  o.shuffle = m;
  return o;
}

Artifact read_mem(const std::string& b, const ArtifactReadOptions& o = {}, ArtifactReport* r = nullptr) {
  return read_artifact_memory(b.data(), b.size(), "mem.hybq", o, r);
}

// The file with its header replaced by edit(header) and the header checksum recomputed.
template <class Edit>
std::string rewrite(const std::string& b, Edit edit) {
  std::uint64_t n;
  std::memcpy(&n, b.data() + 8, 8);
  json h = json::parse(b.substr(16, n));
  edit(h);
  const std::string text = h.dump();
  std::string out = b.substr(0, 8);
  artifact_detail::put_u64(out, text.size());
  out += text;
  artifact_detail::put_u64(out, artifact_detail::crc64(out.data(), out.size()));
  return out + b.substr(24 + n);
}
json header_of(const std::string& b) {
  std::uint64_t n;
  std::memcpy(&n, b.data() + 8, 8);
  return json::parse(b.substr(16, n));
}
std::size_t payload_start(const std::string& b) {
  std::uint64_t n;
  std::memcpy(&n, b.data() + 8, 8);
  return 24 + std::size_t(n);
}

void bad_mem(const std::string& b, std::initializer_list<std::string> words) {
  check_error([&] { read_mem(b); }, {"quantised artifact 'mem.hybq'"});
  check_error([&] { read_mem(b); }, words);
}

}  // namespace

TEST_CASE(
    "artifact: bit-exact round trip, every width and group, each codec alone and the automatic choice") {
  const Artifact a = sample();
  const Artifact want = as_stored(a);
  struct Case {
    const char* name;
    ArtifactOptions opt;
  };
  std::vector<Case> cases{{"auto", {}}};
  for (Codec c : {Codec::Raw, Codec::Lzma, Codec::Zstd, Codec::Brotli})
    for (ShuffleMode m : {ShuffleMode::Try, ShuffleMode::Off, ShuffleMode::On})
      cases.push_back({codec_name(c), only(c, m)});
  for (ShuffleMode m : {ShuffleMode::Off, ShuffleMode::On}) {
    ArtifactOptions o;
    o.shuffle = m;
    cases.push_back({"auto", o});
  }
  for (const Case& c : cases) {
    INFO("codecs: ", c.name, ", shuffle mode ", int(c.opt.shuffle));
    ArtifactReport rep;
    const std::string bytes = artifact_bytes(a, c.opt, &rep);
    CHECK(rep.total_bytes == bytes.size());
    ArtifactReport rrep;
    const Artifact b = read_mem(bytes, {}, &rrep);
    CHECK(bit_equal(b, want));
    CHECK(to_json(b.desc) == to_json(a.desc));
    CHECK(b.policy == a.policy);
    REQUIRE(b.tensors.size() == a.tensors.size());
    for (std::size_t i = 0; i < a.tensors.size(); ++i) {
      const ArtifactTensor &x = a.tensors[i], &y = b.tensors[i];
      INFO("tensor ", x.name);
      CHECK(y.name == x.name);
      CHECK(y.stream == x.stream);
      if (x.kind == ArtifactTensor::Kind::Quantized) {
        CHECK(y.q.q == x.q.q);  // exact
        REQUIRE(y.q.scales.size() == x.q.scales.size());
        for (std::size_t k = 0; k < x.q.scales.size(); ++k)  // the documented f16 rounding
          CHECK(y.q.scales[k] ==
                (x.scale_type == DType::F16 ? f16_to_f32(f32_to_f16(x.q.scales[k])) : x.q.scales[k]));
      } else {
        CHECK(y.shape == x.shape);
        REQUIRE(y.values.size() == x.values.size());
        for (std::size_t k = 0; k < x.values.size(); ++k)
          CHECK(y.values[k] == (x.dtype == DType::F16 ? f16_to_f32(f32_to_f16(x.values[k])) : x.values[k]));
      }
    }
    // The reader's report is the writer's, less the candidates.
    REQUIRE(rrep.streams.size() == rep.streams.size());
    CHECK(rrep.total_bytes == rep.total_bytes);
    CHECK(rrep.header_bytes == rep.header_bytes);
    for (std::size_t s = 0; s < rep.streams.size(); ++s) {
      CHECK(rrep.streams[s].name == rep.streams[s].name);
      CHECK(rrep.streams[s].codec == rep.streams[s].codec);
      CHECK(rrep.streams[s].shuffle == rep.streams[s].shuffle);
      CHECK(rrep.streams[s].stored_bytes == rep.streams[s].stored_bytes);
      CHECK(rrep.streams[s].raw_bytes == rep.streams[s].raw_bytes);
      CHECK(rrep.streams[s].tensors == rep.streams[s].tensors);
      if (c.opt.codecs.size() == 1) CHECK(rep.streams[s].codec == c.opt.codecs[0]);
      if (c.opt.shuffle == ShuffleMode::Off) CHECK(rep.streams[s].shuffle == Shuffle::None);
      if (c.opt.shuffle == ShuffleMode::On) CHECK(rep.streams[s].shuffle != Shuffle::None);
    }
  }
}

TEST_CASE("artifact: streams by type and by prefix; the documented f16 rounding") {
  ArtifactReport rep;
  const std::string bytes = artifact_bytes(sample(), only(Codec::Raw), &rep);
  std::vector<std::string> names;
  for (const auto& s : rep.streams) names.push_back(s.name);
  CHECK(names == std::vector<std::string>{"q2", "scale_f16", "q3", "q4", "q5", "q6", "q7", "q8", "scale_f32",
                                          "embed.q8", "embed.scale_f16", "f16", "f32", "embed.f16"});
  const json h = header_of(bytes);
  CHECK(h["tensors"][0]["kind"] == "q");
  CHECK(h["tensors"][0]["q"]["stream"] == 0);
  CHECK(h["tensors"][0]["scales"]["stream"] == 1);
  CHECK(h["streams"][0]["raw_size"] == 3 * 5 * 64);  // three 5-row q2 tensors
  // 0.1 is not an f16: the file holds the nearest one, 0.0999755859375, and returns exactly it.
  Artifact a = sample();
  a.tensors.push_back(
      ArtifactTensor::floats("tenth", {2}, {0.1f, 1.00048828125f}));  // second: a tie, to even (1)
  const Artifact b = read_mem(artifact_bytes(a, only(Codec::Zstd)));
  CHECK(b.tensors.back().values[0] == 0.0999755859375f);
  CHECK(b.tensors.back().values[1] == 1.0f);
  for (const auto& t : b.tensors)
    if (t.name == "A_log") CHECK(std::signbit(t.values[1]));  // -0 stays -0
}

TEST_CASE("artifact: the automatic choice is never larger than any single codec") {
  Artifact a;
  a.desc = tiny_desc();
  a.policy = {{"bits", 6}};
  // Realistic statistics: int6 rows with a scale per row (SDClip-like), int8 embeddings.
  for (int i = 0; i < 4; ++i)
    a.tensors.push_back(
        ArtifactTensor::quantized("m" + std::to_string(i), random_q(6, 96, 256, 256, 10 + i)));
  a.tensors.push_back(ArtifactTensor::quantized("embed", random_q(8, 64, 32, 32, 20)));
  a.tensors.push_back(ArtifactTensor::floats("norm", {32}, random_floats(32, 21)));
  for (ShuffleMode m : {ShuffleMode::Try, ShuffleMode::Off, ShuffleMode::On}) {
    ArtifactOptions o;
    o.shuffle = m;
    ArtifactReport rep;
    const std::size_t automatic = artifact_bytes(a, o, &rep).size();
    if (m == ShuffleMode::Try) MESSAGE("\n", format_report(rep));
    for (Codec c : {Codec::Raw, Codec::Lzma, Codec::Zstd, Codec::Brotli}) {
      ArtifactReport one;
      const std::size_t single = artifact_bytes(a, only(c, m), &one).size();
      INFO("codec ", codec_name(c), ", shuffle mode ", int(m));
      CHECK(automatic <= single);
      for (std::size_t s = 0; s < rep.streams.size(); ++s)
        CHECK(rep.streams[s].stored_bytes <= one.streams[s].stored_bytes);
    }
  }
  // Deterministic whatever the thread count.
  ArtifactOptions one_thread, four;
  one_thread.threads = 1, four.threads = 4;
  CHECK(artifact_bytes(a, one_thread) == artifact_bytes(a, four));
}

TEST_CASE("artifact: shuffles invert; bit-plane padding must be zero") {
  Rng rng(3);
  for (int bits = 2; bits <= 8; ++bits)
    for (std::size_t n : {0, 1, 7, 8, 9, 100}) {
      std::string raw(n, '\0');
      const int qm = qmax_of(bits);
      for (char& c : raw) c = char(int(rng.below(std::uint64_t(2 * qm + 1))) - qm);
      const std::string p = artifact_detail::bitplane(raw, bits);
      CHECK(p.size() == std::size_t(bits) * ((n + 7) / 8));
      CHECK(artifact_detail::un_bitplane(p, n, bits) == raw);
      if (n % 8) {
        std::string q = p;
        q.back() = char(0x80);
        CHECK_THROWS_AS(artifact_detail::un_bitplane(q, n, bits), Error);
      }
    }
  const std::string r = "abcdefgh";
  CHECK(artifact_detail::byteplane(r, 2) == "acegbdfh");
  CHECK(artifact_detail::un_byteplane(artifact_detail::byteplane(r, 4), 4) == r);
}

TEST_CASE("artifact: truncation at every length is an error naming the file and what was cut") {
  for (const auto& opt : {only(Codec::Raw), ArtifactOptions{}}) {
    const std::string b = artifact_bytes(sample(), opt);
    // Every length up to the payload (cheap: rejected before the header is parsed), then
    // every length near a stream boundary and every 7th between (each parses the header).
    const std::size_t ps = payload_start(b);
    std::set<std::size_t> near;
    const json h = header_of(b);
    for (const auto& s : h["streams"])
      for (std::size_t e :
           {s["offset"].get<std::size_t>(), s["offset"].get<std::size_t>() + s["size"].get<std::size_t>()})
        for (std::size_t d = 0; d < 5; ++d)
          near.insert(ps + e + d), near.insert(ps + e - std::min(e + ps, d));
    for (std::size_t n = 0; n < b.size(); ++n) {
      if (n > ps && (n - ps) % 7 && !near.count(n)) continue;
      const std::string cut = b.substr(0, n);
      const std::string msg = error_of([&] { read_mem(cut); });
      INFO("prefix of ", n, " of ", b.size(), " bytes: ", msg);
      REQUIRE(!msg.empty());
      CHECK(contains(msg, "mem.hybq"));
      CHECK(contains(msg, "truncated"));
      if (n >= payload_start(b)) CHECK(contains(msg, "stream '"));
    }
    CHECK_NOTHROW(read_mem(b));
  }
}

TEST_CASE(
    "artifact: a flipped byte anywhere is caught; in the header, a payload and the checksum it is named") {
  const std::string b = artifact_bytes(sample());
  const std::size_t ps = payload_start(b);
  auto flip = [&](std::size_t at) {
    std::string c = b;
    c[at] = char(c[at] ^ 0x20);
    return c;
  };
  bad_mem(flip(16 + (ps - 24) / 2), {"header checksum mismatch"});  // inside the JSON
  bad_mem(flip(ps - 3), {"header checksum mismatch"});              // the checksum itself
  const json h = header_of(b);
  for (const auto& s : h["streams"]) {
    if (s["size"].get<std::size_t>() == 0) continue;
    const std::string name = s["name"];
    bad_mem(flip(ps + s["offset"].get<std::size_t>() + s["size"].get<std::size_t>() / 2),
            {"stream '" + name + "'", "checksum of the stored (compressed) bytes mismatch"});
  }
  bad_mem(flip(0), {"not a quantised artifact", "HYBQ"});
  // Every byte: an error with the checksums; without them never a crash, and whatever is
  // accepted is a valid artifact.
  ArtifactReadOptions unchecked;
  unchecked.verify_checksums = false;
  int accepted = 0, tried = 0;
  for (std::size_t i = 0; i < b.size(); ++i) {
    // Past the preamble each read parses the header (slow under ASan): every byte where a
    // checksum catches it before that, every 3rd or 5th elsewhere.
    if (i >= ps + 8 && i % 3) continue;
    const std::string c = flip(i);
    INFO("byte ", i);
    CHECK_THROWS_AS(read_mem(c), Error);
    if (i % 5 && ((i >= 16 && i < ps - 8) || i >= ps + 8)) continue;
    ++tried;
    try {
      const Artifact x = read_mem(c, unchecked);
      for (const auto& t : x.tensors)
        if (t.kind == ArtifactTensor::Kind::Quantized) t.q.check("accepted");
      ++accepted;
    } catch (const Error&) {
    }
  }
  MESSAGE(accepted, " of ", tried, " flipped files tried read without checksums");
  // The stream checksum of the decompressed bytes: a payload changed consistently with the
  // stored checksum but not the raw one (a different valid value, here in a raw stream).
  std::string r = artifact_bytes(sample(), only(Codec::Raw, ShuffleMode::Off));
  const std::size_t rps = payload_start(r);
  r[rps] = char(r[rps] == 1 ? 0 : 1);  // q2's first value: still in range
  r = rewrite(r, [&](json& j) {
    j["streams"][0]["crc64"] = artifact_detail::hex16(
        artifact_detail::crc64(r.data() + rps, j["streams"][0]["size"].get<std::size_t>()));
  });
  bad_mem(r, {"stream 'q2'", "checksum of the decompressed bytes mismatch"});
}

TEST_CASE("artifact: unknown version, bad magic, corrupt header length") {
  const std::string b = artifact_bytes(sample(), only(Codec::Zstd));
  std::string v = b;
  v[4] = 2;
  bad_mem(v, {"format version 2 is not supported", "version 1"});
  v = b;
  v[8] = char(0xff), v[9] = char(0xff), v[10] = char(0xff), v[11] = char(0x7f);
  bad_mem(v, {"header length", "exceeds the limit"});
  bad_mem("HYB", {"truncated", "16-byte preamble"});
  bad_mem("PK\3\4 and more bytes than a preamble", {"not a quantised artifact", "50 4b 03 04"});
  bad_mem("", {"truncated"});
}

TEST_CASE("artifact: corrupt sizes, offsets and fields are errors naming the field") {
  const std::string b = artifact_bytes(sample(), only(Codec::Lzma));
  const json h = header_of(b);
  const std::size_t last = h["streams"].size() - 1;
  auto edit = [&](auto f, std::initializer_list<std::string> words) { bad_mem(rewrite(b, f), words); };
  edit([](json& j) { j["streams"][0]["size"] = j["streams"][0]["size"].get<int>() + 1; },
       {"streams[1]", "at payload offset", "expected"});
  edit([&](json& j) { j["streams"][last]["size"] = j["streams"][last]["size"].get<int>() + 1; },
       {"truncated", "stream '"});
  edit([&](json& j) { j["streams"][last]["size"] = j["streams"][last]["size"].get<int>() - 1; },
       {"1 unexpected bytes after the last stream"});
  edit([](json& j) { j["streams"][1]["raw_size"] = j["streams"][1]["raw_size"].get<int>() + 1; },
       {"streams[1]", "raw_size", "not a multiple of 2"});
  edit([](json& j) { j["streams"][1]["raw_size"] = j["streams"][1]["raw_size"].get<int>() + 2; },
       {"stream 'scale_f16'", "but its tensors hold"});
  edit([](json& j) { j["streams"][0]["raw_size"] = 8; }, {"tensors[", "needs bytes", "raw_size 8"});
  edit([](json& j) { j["tensors"][1]["q"]["offset"] = 0; },
       {"tensors[1].q.offset", "expected", "without holes or overlap"});
  edit([](json& j) { j["tensors"][0]["bits"] = 9; }, {"tensors[0].bits", "[2, 8]"});
  edit([](json& j) { j["tensors"][0]["group"] = 7; }, {"tensors[0]", "group", "does not divide cols 64"});
  edit([](json& j) { j["tensors"][0]["group"] = 0; }, {"does not divide"});
  edit([](json& j) { j["tensors"][0]["shape"] = {-4, 64}; }, {"tensors[0].shape[0]", "a dimension"});
  edit([](json& j) { j["tensors"][0]["shape"] = {4, 64, 1}; }, {"[rows, cols]"});
  edit([](json& j) { j["tensors"][0]["shape"] = {3, 64}; }, {"tensors[1].q.offset", "expected 192"});
  edit([](json& j) { j["tensors"][0]["name"] = 5; }, {"tensors[0].name", "expected a string"});
  edit([](json& j) { j["tensors"][1]["name"] = j["tensors"][0]["name"]; }, {"names two tensors"});
  edit([](json& j) { j["tensors"][0]["kind"] = "int4"; }, {"tensors[0].kind", "\"q\", \"float\""});
  edit([](json& j) { j["tensors"][0]["extra"] = 1; }, {"tensors[0]", "unknown field 'extra'"});
  edit([](json& j) { j["tensors"][0]["q"]["stream"] = 99; },
       {"tensors[0].q.stream", "the index of a stream"});
  edit([](json& j) { j["tensors"][0]["scales"]["stream"] = 0; }, {"tensors[0].scales", "stream 'q2' of i8"});
  edit([](json& j) { j["tensors"][0]["scale_type"] = "bf16"; }, {"tensors[0].scale_type"});
  edit([](json& j) { j["streams"][0]["codec"] = "zip"; }, {"streams[0].codec", "\"lzma\""});
  edit([](json& j) { j["streams"][0]["shuffle"] = "byteplane"; }, {"streams[0].shuffle", "\"bitplane\""});
  edit([](json& j) { j["streams"][0]["bits"] = 3; }, {"stream 'q2' of i8 (3 bits)"});
  edit([](json& j) { j["streams"][0]["name"] = "weights"; },
       {"expected a stream named 'q2' or '<prefix>.q2'"});
  edit([](json& j) { j["streams"][0]["crc64"] = "xyz"; }, {"streams[0].crc64", "hex"});
  edit([](json& j) { j["streams"][0].erase("raw_crc64"); }, {"streams[0].raw_crc64", "missing"});
  edit([](json& j) { j["policy"] = json::array(); }, {"policy", "a JSON object"});
  edit([](json& j) { j["desc"]["model"]["vocab"] = -1; }, {"header: desc: model", "vocab"});
  edit([](json& j) { j["extra"] = 1; }, {"unknown field 'extra'"});
  edit([](json& j) { j.erase("tensors"); }, {"tensors", "missing"});
  edit([](json& j) { j["tensors"] = json::array(); }, {"holds no tensor's bytes"});
  edit([](json& j) { j["tensors"][2]["scale_type"] = "f32"; },
       {"tensors[2].scales", "stream 'scale_f16' of f16"});
  // Text the JSON object model cannot express: a key twice, a NUL, nesting.
  auto text = [&](const std::string& t) {
    std::string out = b.substr(0, 8);
    artifact_detail::put_u64(out, t.size());
    out += t;
    artifact_detail::put_u64(out, artifact_detail::crc64(out.data(), out.size()));
    return out;
  };
  bad_mem(text(R"({"desc": {}, "desc": {}})"), {"key 'desc' appears twice"});
  bad_mem(text(std::string("{\"a\"\0: 1}", 9)), {"NUL byte"});
  bad_mem(text(std::string(40, '[') + std::string(40, ']')), {"nested more than"});
  bad_mem(text("[]"), {"expected a JSON object"});
}

TEST_CASE("artifact: decompression bombs and size caps") {
  Artifact a;
  a.desc = tiny_desc();
  a.tensors.push_back(ArtifactTensor::quantized("w", random_q(8, 4, 64, 64, 1)));
  // Shapes claiming far more values than the description's model holds.
  const std::string b = artifact_bytes(a, only(Codec::Zstd, ShuffleMode::Off));
  bad_mem(rewrite(b,
                  [](json& j) {
                    j["tensors"][0]["shape"] = {1 << 20, 1 << 20};
                  }),
          {"artifact_value_cap", "decompression bomb"});
  bad_mem(rewrite(b,
                  [](json& j) {
                    j["tensors"][0]["shape"] = {std::int64_t(1) << 40, std::int64_t(1) << 40};
                  }),
          {"tensors[0].shape[0]", "a dimension in"});
  ArtifactReadOptions tight;
  tight.max_raw_bytes = 100;
  check_error([&] { read_mem(b, tight); }, {"mem.hybq", "more than the reader's limit of 100"});
  // A stream that decompresses to far more than its recorded size, for each codec; then one
  // that decompresses to less.
  for (Codec c : {Codec::Lzma, Codec::Zstd, Codec::Brotli}) {
    INFO(codec_name(c));
    const std::string f = artifact_bytes(a, only(c, ShuffleMode::Off));
    const std::size_t ps = payload_start(f);
    for (std::size_t n : {std::size_t(4) << 20, std::size_t(100)}) {
      const std::string bomb = artifact_detail::compress(c, std::string(n, '\0'), ArtifactOptions{});
      const json h = header_of(f);
      const std::size_t s0 = h["streams"][0]["size"];
      std::string g = f.substr(0, ps) + bomb + f.substr(ps + s0);
      g = rewrite(g, [&](json& j) {
        j["streams"][0]["size"] = bomb.size();
        j["streams"][0]["crc64"] = artifact_detail::hex16(artifact_detail::crc64(bomb.data(), bomb.size()));
        j["streams"][1]["offset"] = bomb.size();
      });
      if (n > 256)
        bad_mem(g, {"stream 'q8'", "more than"});
      else
        bad_mem(g, {"stream 'q8'", "100 bytes, expected 256"});
    }
  }
  // A zstd frame that records no content size, in a small window: caught by the output
  // bound itself.
  const std::string f = artifact_bytes(a, only(Codec::Zstd, ShuffleMode::Off));
  const std::size_t ps = payload_start(f);
  const std::string zeros(1 << 20, '\0');
  std::string bomb(ZSTD_compressBound(zeros.size()), '\0');
  ZSTD_CCtx* cc = ZSTD_createCCtx();
  ZSTD_CCtx_setParameter(cc, ZSTD_c_contentSizeFlag, 0);
  ZSTD_CCtx_setParameter(cc, ZSTD_c_windowLog, 10);
  bomb.resize(ZSTD_compress2(cc, bomb.data(), bomb.size(), zeros.data(), zeros.size()));
  ZSTD_freeCCtx(cc);
  const std::size_t s0 = header_of(f)["streams"][0]["size"];
  std::string g = rewrite(f.substr(0, ps) + bomb + f.substr(ps + s0), [&](json& j) {
    j["streams"][0]["size"] = bomb.size();
    j["streams"][0]["crc64"] = artifact_detail::hex16(artifact_detail::crc64(bomb.data(), bomb.size()));
    j["streams"][1]["offset"] = bomb.size();
  });
  bad_mem(g, {"stream 'q8'", "decompresses to more than the expected 256 bytes"});
}

TEST_CASE("artifact: the writer refuses what the reader would refuse, naming the tensor") {
  auto refuse = [](Artifact a, std::initializer_list<std::string> words,
                   ArtifactOptions o = only(Codec::Raw)) {
    check_error([&] { (void)artifact_bytes(a, o); }, words);
  };
  Artifact base;
  base.desc = tiny_desc();
  base.tensors.push_back(ArtifactTensor::quantized("w", random_q(4, 2, 16, 8, 1)));
  Artifact a = base;
  a.tensors.push_back(a.tensors[0]);
  refuse(a, {"tensor 'w'", "used twice"});
  a = base, a.tensors[0].name = "";
  refuse(a, {"empty name"});
  a = base, a.tensors[0].q.q[3] = 8;
  refuse(a, {"tensor 'w'", "value 8 outside the 4-bit range"});
  a = base, a.tensors[0].q.group = 5;
  refuse(a, {"tensor 'w'", "group"});
  a = base, a.tensors[0].q.scales[1] = NAN;
  refuse(a, {"tensor 'w': scale 1", "finite"});
  a = base, a.tensors[0].q.scales[1] = 1e6f;
  refuse(a, {"tensor 'w': scale 1", "overflows f16", "f32"});
  a.tensors[0].scale_type = DType::F32;
  CHECK(read_mem(artifact_bytes(a, only(Codec::Raw))).tensors[0].q.scales[1] == 1e6f);
  a = base, a.tensors[0].scale_type = DType::BF16;
  refuse(a, {"scale_type bf16"});
  a = base, a.tensors.push_back(ArtifactTensor::floats("f", {2, 3}, {1, 2, 3}));
  refuse(a, {"tensor 'f'", "6 values but 3"});
  a = base, a.tensors.push_back(ArtifactTensor::floats("f", {1}, {1e5f}));
  refuse(a, {"tensor 'f': value 0", "overflows f16"});
  a = base, a.tensors.push_back(ArtifactTensor::floats("f", {1}, {1}, DType::I8));
  refuse(a, {"dtype int8"});
  a = base, a.policy = json::array();
  refuse(a, {"policy must be a JSON object"});
  a = base, a.policy = {{"x", NAN}};
  refuse(a, {"policy does not survive"});
  json deep = 1;
  for (int i = 0; i < 40; ++i) deep = json::array({deep});
  a = base, a.policy = {{"deep", deep}};
  refuse(a, {"would not read back", "nested"});
  a = base, a.tensors[0].name = "\xff\xfe";
  refuse(a, {"UTF-8"});
  a = base, a.desc.model.vocab = 0;
  refuse(a, {"desc", "vocab"});
  a = base, a.tensors.push_back(ArtifactTensor::floats("huge", {Index(artifact_value_cap(a.desc))}, {}));
  a.tensors.back().values.resize(std::size_t(artifact_value_cap(a.desc)));
  refuse(a, {"more than artifact_value_cap"});
  refuse(base, {"codecs is empty"}, ArtifactOptions{.codecs = {}});
  refuse(base, {"listed twice"}, ArtifactOptions{.codecs = {Codec::Zstd, Codec::Zstd}});
  refuse(base, {"zstd_level 30"}, ArtifactOptions{.zstd_level = 30});
}

TEST_CASE("artifact: param_bound equals param_count for every shipped alias and option mix") {
  for (const auto& a : shipped_aliases()) {
    INFO(a.name);
    CHECK(artifact_detail::param_bound(a.desc()) == double(param_count(a.desc())));
  }
  ModelSpec m{.vocab = 50, .d_model = 24, .tied = false, .norm = NormKind::Layer};
  for (bool bias : {false, true}) {
    m.parallel_residual = bias;
    const ModelDesc d = desc_from_layout(
        "MACMA", m,
        Mamba2Spec{
            .d_state = 4, .expand = 1.5, .headdim = 12, .ngroups = 3, .conv_bias = !bias, .bias = bias},
        GqaSpec{.n_heads = 4,
                .n_kv_heads = 2,
                .head_dim = 6,
                .qk_norm = bias,
                .output_gate = !bias,
                .bias = bias},
        ShortConvSpec{.L = 3, .bias = bias}, SwiGluSpec{{40, bias}}, Relu2Spec{{30, !bias}});
    CHECK(artifact_detail::param_bound(d) == double(param_count(d)));
  }
}

TEST_CASE("artifact: files are written atomically and read back; errors name the path") {
  TempDir tmp;
  const std::string path = tmp / "model.hybq";
  const Artifact a = sample();
  const ArtifactReport rep = write_artifact(path, a, only(Codec::Zstd));
  CHECK(fs::file_size(path) == rep.total_bytes);
  CHECK(bit_equal(read_artifact(path), as_stored(a)));
  const std::string before = slurp(path);
  auto temps = [&] {
    int n = 0;
    for (const auto& e : fs::directory_iterator(tmp.dir)) n += is_atomic_temp(e.path().filename().string());
    return n;
  };
  // A failing write leaves the existing file as it was and no temporary behind.
  Artifact broken = a;
  broken.tensors.push_back(broken.tensors[0]);
  check_error([&] { write_artifact(path, broken); },
              {"writing quantised artifact '" + path + "'", "used twice"});
  CHECK(slurp(path) == before);
  // A target that cannot be replaced (a non-empty directory): the rename fails after the
  // temporary was written, and the temporary is removed.
  const std::string dir_target = tmp / "occupied";
  fs::create_directories(dir_target + "/inside");
  check_error([&] { write_artifact(dir_target, a, only(Codec::Raw)); },
              {"occupied", "renaming over the target"});
  CHECK(fs::is_directory(dir_target + "/inside"));
  CHECK(temps() == 0);
  // Into a missing directory: an error, and nothing appears.
  const std::string nowhere = tmp / "missing/model.hybq";
  check_error([&] { write_artifact(nowhere, a, only(Codec::Raw)); },
              {"missing/model.hybq", "cannot create temporary file"});
  CHECK(!fs::exists(tmp / "missing"));
  // Replacing works; the report of a read names the streams.
  write_artifact(path, a, only(Codec::Raw));
  CHECK(slurp(path) != before);
  ArtifactReport rr;
  CHECK(bit_equal(read_artifact(path, {}, &rr), as_stored(a)));
  const std::string table = format_report(rr);
  CHECK(contains(table, "embed.scale_f16"));
  CHECK(contains(table, "total"));
  CHECK(contains(table, "bytes left for code"));
  // Reading: a missing file and a corrupt file name the path.
  check_error([&] { read_artifact(tmp / "absent.hybq"); }, {"absent.hybq", "no such file"});
  spit(tmp / "bad.hybq", before.substr(0, 30));
  check_error([&] { read_artifact(tmp / "bad.hybq"); },
              {"quantised artifact '" + (tmp / "bad.hybq") + "'", "truncated"});
}

}  // namespace hybrid_test_artifact
