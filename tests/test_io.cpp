// io/: safetensors reader and writer, ModelDesc JSON, checkpoints. Round trips of every
// shipped alias, and one test per way a file or a desc can be wrong (each asserting that
// the error names what was wrong).
#include <doctest/doctest.h>
#include <signal.h>
#include <sys/resource.h>
#include <unistd.h>

#include <bit>
#include <filesystem>
#include <fstream>
#include <functional>
#include <hybrid/io/checkpoint.hpp>
#include <hybrid/io/desc_json.hpp>
#include <hybrid/io/safetensors.hpp>
#include <hybrid/model.hpp>
#include <initializer_list>
#include <iterator>

using namespace hybrid;
namespace fs = std::filesystem;
using nlohmann::json;

#include "test_util.hpp"
using namespace hybrid::test_util;

// This file's own namespace: the tests compile in batches (tests/CMakeLists.txt).
namespace hybrid_test_io {

namespace {



// A file with the given raw header (length field = header.size()) and `data` zero bytes.
void write_raw(const std::string& path, const std::string& header, std::size_t data) {
  std::ofstream f(path, std::ios::binary);
  const std::uint64_t n = header.size();
  f.write(reinterpret_cast<const char*>(&n), 8);
  f << header << std::string(data, '\0');
}


// ---- field-by-field desc equality (doubles compared bit for bit) ---------------------

bool same(double a, double b) { return std::bit_cast<std::uint64_t>(a) == std::bit_cast<std::uint64_t>(b); }

void check_same(const ModelSpec& a, const ModelSpec& b) {
  CHECK(a.vocab == b.vocab);
  CHECK(a.d_model == b.d_model);
  CHECK(a.tied == b.tied);
  CHECK(a.norm == b.norm);
  CHECK(same(a.norm_eps, b.norm_eps));
  CHECK(a.max_context == b.max_context);
  CHECK(same(a.embedding_multiplier, b.embedding_multiplier));
  CHECK(same(a.residual_multiplier, b.residual_multiplier));
  CHECK(same(a.logits_divisor, b.logits_divisor));
  CHECK(same(a.logit_softcap, b.logit_softcap));
  CHECK(a.parallel_residual == b.parallel_residual);
  CHECK(same(a.init_std, b.init_std));
}
void check_same(const Mamba2Spec& a, const Mamba2Spec& b) {
  CHECK(a.d_state == b.d_state);
  CHECK(a.d_conv == b.d_conv);
  CHECK(same(a.expand, b.expand));
  CHECK(a.headdim == b.headdim);
  CHECK(a.ngroups == b.ngroups);
  CHECK(a.chunk == b.chunk);
  CHECK(a.conv_bias == b.conv_bias);
  CHECK(a.bias == b.bias);
  CHECK(a.norm_whole_width == b.norm_whole_width);
  CHECK(same(a.norm_eps, b.norm_eps));
  CHECK(same(a.dt_min, b.dt_min));
  CHECK(same(a.dt_max, b.dt_max));
  CHECK(same(a.dt_init_floor, b.dt_init_floor));
  CHECK(same(a.dt_limit_lo, b.dt_limit_lo));
  CHECK(same(a.dt_limit_hi, b.dt_limit_hi));
  CHECK(same(a.A_init_lo, b.A_init_lo));
  CHECK(same(a.A_init_hi, b.A_init_hi));
  CHECK(a.scan == b.scan);
}
void check_same(const GqaSpec& a, const GqaSpec& b) {
  CHECK(a.n_heads == b.n_heads);
  CHECK(a.n_kv_heads == b.n_kv_heads);
  CHECK(a.head_dim == b.head_dim);
  CHECK(a.rope == b.rope);
  CHECK(same(a.rope_theta, b.rope_theta));
  CHECK(a.window == b.window);
  CHECK(a.qk_norm == b.qk_norm);
  CHECK(a.output_gate == b.output_gate);
  CHECK(same(a.scale, b.scale));
  CHECK(a.bias == b.bias);
}
void check_same(const ShortConvSpec& a, const ShortConvSpec& b) {
  CHECK(a.L == b.L);
  CHECK(a.bias == b.bias);
}
void check_same(const NoChannelSpec&, const NoChannelSpec&) {}
void check_same(const MlpSpec& a, const MlpSpec& b) {
  CHECK(a.hidden == b.hidden);
  CHECK(a.bias == b.bias);
}
template <class V>
void check_same_variant(const V& a, const V& b) {
  REQUIRE(a.index() == b.index());
  std::visit([&](const auto& x) { check_same(x, std::get<std::decay_t<decltype(x)>>(b)); }, a);
}
void check_same(const ModelDesc& a, const ModelDesc& b) {
  check_same(a.model, b.model);
  REQUIRE(a.blocks.size() == b.blocks.size());
  for (std::size_t i = 0; i < a.blocks.size(); ++i) {
    INFO("block ", i);
    check_same_variant(a.blocks[i].mixer, b.blocks[i].mixer);
    check_same_variant(a.blocks[i].channel, b.blocks[i].channel);
    CHECK(a.blocks[i].norm == b.blocks[i].norm);
  }
}

// desc → JSON → text → JSON → desc is the identity.
void check_desc_round_trip(const ModelDesc& d) {
  const ModelDesc back = desc_from_json(json::parse(to_json(d).dump()));
  check_same(d, back);
}

// ---- checkpoint round trips -----------------------------------------------------------

template <class ModelT>
void check_checkpoint_round_trip(const TempDir& tmp) {
  using S = typename ModelT::Scalar;
  INFO("layout ", ModelT::layout, ", scalar ", sizeof(S) == 4 ? "float" : "double");
  const std::string path = tmp / "model.safetensors";
  ModelT m(7);
  save_model(m, path, {{"step", "123"}});
  {
    SafetensorsReader r(path);
    CHECK(r.metadata().at("step") == "123");
    CHECK(r.metadata().at("hybrid.format") == "hybrid-1");
    for (const auto& t : r.tensors()) CHECK(t.dtype == dtype_of<S>());
    std::size_t n = 0;
    m.visit([&](const std::string&, const MatMap<S>&, ParamRole) { ++n; });
    CHECK(r.tensors().size() == n);
  }
  const RuntimeModel<S> back = load_model<S>(path);
  check_same(back.desc(), m.desc());
  const std::vector<int> tokens{1, 5, 257, 0, 42, 3, 100, 7};  // (B=2, T=4)
  const Mat<S> want = m.forward(tokens, 2, 4);
  CHECK((want - back.forward(tokens, 2, 4)).cwiseAbs().maxCoeff() == S(0));
  ModelT other(99);  // a differently initialised model of the same type
  load_weights(other, path);
  CHECK((want - other.forward(tokens, 2, 4)).cwiseAbs().maxCoeff() == S(0));
}

template <class... Ms>
void round_trip_all(const TempDir& tmp) {
  (check_checkpoint_round_trip<Ms>(tmp), ...);
  (check_checkpoint_round_trip<typename Ms::template rebind<float>>(tmp), ...);
}

// Copies src to dst through `edit`, which may change the tensor list and metadata.
void rewrite(const std::string& src, const std::string& dst,
             const std::function<void(std::vector<TensorRef>&, std::map<std::string, std::string>&)>& edit) {
  SafetensorsReader r(src);
  std::vector<TensorRef> refs;
  for (const auto& t : r.tensors()) refs.push_back({t.name, t.dtype, t.shape, r.bytes(t)});
  auto md = r.metadata();
  edit(refs, md);
  write_safetensors(dst, refs, md);
}

}  // namespace

TEST_CASE("io: checkpoint round trip of every Tiny alias gives identical logits") {
  TempDir tmp;
  round_trip_all<TinyGolf15x3, TinyGolf15x3E2, TinyTransformer, TinyMamba, TinyHybrid18x6,
                 TinyLfm2Ssm, TinyLfm2, TinyScaled>(tmp);
}

TEST_CASE("checkpoint: dtype conversion on load (F32 file into a double model)") {
  TempDir tmp;
  TinyLfm2::rebind<float> f(3);
  save_model(f, tmp / "f.safetensors");
  TinyLfm2 d(4);
  load_weights(d, tmp / "f.safetensors");
  const std::vector<int> tokens{9, 8, 7, 6, 5};
  const Mat<double> want = f.forward(tokens, 1, 5).cast<double>();
  CHECK((want - d.forward(tokens, 1, 5)).cwiseAbs().maxCoeff() < 1e-4);
}

TEST_CASE("checkpoint: reserved metadata keys and files without a desc") {
  TempDir tmp;
  TinyMamba m(1);
  check_error([&] { save_model(m, tmp / "a.safetensors", {{"hybrid.desc", "x"}}); },
              {"hybrid.desc", "reserved"});
  CHECK(!fs::exists(tmp / "a.safetensors"));
  save_model(m, tmp / "a.safetensors");
  rewrite(tmp / "a.safetensors", tmp / "bare.safetensors",
          [](auto&, auto& md) { md.clear(); });
  check_error([&] { load_model<double>(tmp / "bare.safetensors"); }, {"bare.safetensors", "hybrid.desc"});
  TinyMamba other(2);
  load_weights(other, tmp / "bare.safetensors");  // a foreign file: names and shapes suffice
  const std::vector<int> tokens{1, 2, 3};
  CHECK((m.forward(tokens, 1, 3) - other.forward(tokens, 1, 3)).cwiseAbs().maxCoeff() == 0);
  rewrite(tmp / "a.safetensors", tmp / "fmt.safetensors",
          [](auto&, auto& md) { md["hybrid.format"] = "hybrid-9"; });
  check_error([&] { load_model<double>(tmp / "fmt.safetensors"); }, {"hybrid-9", "hybrid-1"});
  rewrite(tmp / "a.safetensors", tmp / "desc.safetensors",
          [](auto&, auto& md) { md["hybrid.desc"] = R"({"model": {"d_model": 32}, "blocks": []})"; });
  check_error([&] { load_model<double>(tmp / "desc.safetensors"); },
              {"desc.safetensors", "hybrid.desc", "model.vocab", "missing"});
}

TEST_CASE("checkpoint: missing, extra and mis-shaped tensors, layout mismatch, NaN weights") {
  TempDir tmp;
  const std::string good = tmp / "good.safetensors", bad = tmp / "bad.safetensors";
  TinyGolf15x3 m(5);
  save_model(m, good);
  TinyGolf15x3 into(6);

  {  // drop the first tensor of block 13 (an attention block)
    std::string victim;
    m.visit([&](const std::string& n, const MatMap<double>&, ParamRole) {
      if (victim.empty() && n.rfind("blocks.13.", 0) == 0) victim = n;
    });
    rewrite(good, bad, [&](auto& refs, auto&) {
      std::erase_if(refs, [&](const TensorRef& t) { return t.name == victim; });
    });
    check_error([&] { load_weights(into, bad); }, {"bad.safetensors", victim, "missing"});
  }
  static const double extra_data[3] = {1, 2, 3};
  rewrite(good, bad, [](auto& refs, auto&) {
    refs.push_back({"blocks.99.surprise", Dtype::F64, {3}, extra_data});
  });
  check_error([&] { load_weights(into, bad); }, {"blocks.99.surprise", "not a parameter"});

  static const double short_norm[16] = {};
  rewrite(good, bad, [](auto& refs, auto&) {
    for (auto& t : refs)
      if (t.name == "norm_f.weight") t.shape = {16}, t.data = short_norm;
  });
  check_error([&] { load_weights(into, bad); }, {"norm_f.weight", "[16]", "[32]", "shape"});
  // [1, n] is accepted for a (1, n) parameter.
  rewrite(good, bad, [](auto& refs, auto&) {
    for (auto& t : refs)
      if (t.name == "norm_f.weight") t.shape = {1, 32};
  });
  load_weights(into, bad);

  TinyMamba mamba(1);
  check_error([&] { load_weights(mamba, good); },
              {"layout", "MMMMMMMMMMMMAAAMMM", "\"MMMM\""});

  TinyMamba nan_model(2);
  nan_model.visit([](const std::string& n, MatMap<double>& t, ParamRole) {
    if (n == "norm_f.weight") t(0, 3) = std::numeric_limits<double>::quiet_NaN();
  });
  save_model(nan_model, bad);
  check_error([&] { load_model<double>(bad); }, {"bad.safetensors", "norm_f.weight", "non-finite"});
}

TEST_CASE("safetensors: F16, BF16, F32, F64 read with conversion; header is 8-byte aligned") {
  TempDir tmp;
  // F16: 1, -2.5, 65504 (max), 2^-24 (smallest subnormal), -0, +inf
  const std::uint16_t f16[6] = {0x3c00, 0xc100, 0x7bff, 0x0001, 0x8000, 0x7c00};
  // BF16: 1, -2.5, 3.140625, 1e38-ish (0x7e96 = 9.969e37)
  const std::uint16_t bf16[4] = {0x3f80, 0xc020, 0x4049, 0x7e96};
  const float f32[2] = {0.1f, -7.f};
  const double f64[3] = {0.1, 1e-300, -3};
  const std::string p = tmp / "mixed.safetensors";
  write_safetensors(p, {{"h", Dtype::F16, {2, 3}, f16}, {"b", Dtype::BF16, {4}, bf16},
                        {"s", Dtype::F32, {2}, f32}, {"d", Dtype::F64, {3, 1}, f64},
                        {"empty", Dtype::F32, {0, 5}, nullptr}},
                    {{"note", "unicode ✓"}});
  const std::string bytes = slurp(p);
  std::uint64_t n = 0;
  std::memcpy(&n, bytes.data(), 8);
  CHECK((8 + n) % 8 == 0);

  SafetensorsReader r(p);
  CHECK(r.metadata().at("note") == "unicode ✓");
  REQUIRE(r.tensors().size() == 5);
  CHECK(r.find("nope") == nullptr);
  const auto h = r.read<float>(*r.find("h"));
  CHECK(r.find("h")->shape == std::vector<std::int64_t>{2, 3});
  CHECK(h[0] == 1.f);
  CHECK(h[1] == -2.5f);
  CHECK(h[2] == 65504.f);
  CHECK(h[3] == std::ldexp(1.f, -24));
  CHECK((h[4] == 0.f && std::signbit(h[4])));
  CHECK(std::isinf(h[5]));
  const auto b = r.read<double>(*r.find("b"));
  CHECK(b[0] == 1.0);
  CHECK(b[1] == -2.5);
  CHECK(b[2] == 3.140625);
  CHECK(b[3] == double(std::bit_cast<float>(0x7e960000u)));
  CHECK(r.read<double>(*r.find("s"))[0] == double(0.1f));
  CHECK(r.read<float>(*r.find("d"))[0] == 0.1f);
  CHECK(r.read<double>(*r.find("d"))[1] == 1e-300);
  CHECK(r.find("empty")->numel() == 0);
  CHECK(r.read<float>(*r.find("empty")).empty());
}

TEST_CASE("safetensors: every malformed file is rejected with a message naming the problem") {
  TempDir tmp;
  const std::string p = tmp / "bad.safetensors";
  auto open = [&] { SafetensorsReader r(p); };
  auto hdr = [&](const std::string& h, std::size_t data) { write_raw(p, h, data); };
  const std::string f32_6 = R"({"a": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]}})";

  check_error([&] { SafetensorsReader r(tmp / "absent.safetensors"); }, {"absent.safetensors", "cannot open"});
  check_error([&] { SafetensorsReader r(tmp.dir.string()); }, {"not a regular file"});
  { std::ofstream(p) << "abc"; }
  check_error(open, {"bad.safetensors", "too short", "truncated"});
  {  // header length past the end
    std::ofstream f(p, std::ios::binary);
    const std::uint64_t n = 1000;
    f.write(reinterpret_cast<const char*>(&n), 8);
    f << "{}";
  }
  check_error(open, {"bad.safetensors", "header length 1000", "past the end"});
  hdr("{not json", 0);
  check_error(open, {"bad.safetensors", "not valid JSON"});
  hdr("[1, 2]", 0);
  check_error(open, {"must be a JSON object"});
  hdr(R"({"a": 5})", 0);
  check_error(open, {"'a'", "expected an object"});
  hdr(R"({"a": {"dtype": "I8", "shape": [4], "data_offsets": [0, 4]}})", 4);
  check_error(open, {"'a'", "unsupported dtype 'I8'", "F32"});
  hdr(R"({"a": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}})", 4);
  check_error(open, {"'a'", "shape[0]", "non-negative integer", "-1"});
  hdr(R"({"a": {"dtype": "F32", "shape": [1.5], "data_offsets": [0, 4]}})", 4);
  check_error(open, {"'a'", "shape[0]", "1.5"});
  hdr(R"({"a": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 20]}})", 20);
  check_error(open, {"'a'", "[2, 3]", "24 bytes", "hold 20"});
  hdr(R"({"a": {"dtype": "F32", "shape": [4294967296, 4294967296, 16], "data_offsets": [0, 4]}})", 4);
  check_error(open, {"'a'", "more than 2^63"});
  hdr(R"({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}})", 8);
  check_error(open, {"'a'", "[0, 16]", "past the end of the data buffer", "8 bytes"});
  hdr(R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}})", 8);
  check_error(open, {"'a'", "begin > end"});
  hdr(R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0]}})", 8);
  check_error(open, {"'a'", "data_offsets", "[begin, end]"});
  hdr(R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
          "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}})", 12);
  check_error(open, {"'b'", "overlap", "'a'"});
  hdr(R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
          "b": {"dtype": "F32", "shape": [1], "data_offsets": [12, 16]}})", 16);
  check_error(open, {"hole", "[8, 12)", "'b'"});
  hdr(f32_6, 28);
  check_error(open, {"hole", "[24, 28)"});
  hdr(R"({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
          "a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}})", 4);
  check_error(open, {"'a'", "twice"});
  hdr(R"({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4], "x": 1}})", 4);
  check_error(open, {"'a'", "unknown field 'x'"});
  hdr(R"({"__metadata__": {"k": 1}})", 0);
  check_error(open, {"__metadata__.k", "expected a string"});
  hdr(f32_6, 24);  // the well-formed baseline reads fine
  CHECK(SafetensorsReader(p).find("a")->numel() == 6);

  // A real checkpoint, truncated.
  TinyMamba m(1);
  save_model(m, p);
  fs::resize_file(p, fs::file_size(p) - 100);
  check_error(open, {"bad.safetensors", "past the end", "truncated"});

  check_error([&] { write_safetensors(p, {{"x", Dtype::F32, {1}, f32_6.data()}, {"x", Dtype::F32, {1}, f32_6.data()}}); },
              {"'x'", "twice"});
  check_error([&] { write_safetensors(p, {{"x", Dtype::F32, {-2}, f32_6.data()}}); }, {"'x'", "negative"});
}

TEST_CASE("io: atomic write leaves the old file intact when a save fails") {
  TempDir tmp;
  const std::string p = tmp / "model.safetensors";
  TinyMamba small(1);
  save_model(small, p);
  const std::string before = slurp(p);
  auto no_leftovers = [&] {
    for (const auto& e : fs::directory_iterator(tmp.dir))
      CHECK_MESSAGE(e.path().filename().string().find(".tmp.") == std::string::npos,
                    "leftover ", e.path().string());
  };
  TinyGolf15x3 big(2);

  // 1. The write itself fails half-way (file size limit; works even as root).
  {
    rlimit old{};
    REQUIRE(::getrlimit(RLIMIT_FSIZE, &old) == 0);
    auto old_handler = ::signal(SIGXFSZ, SIG_IGN);
    rlimit lim = old;
    lim.rlim_cur = 64 * 1024;
    REQUIRE(::setrlimit(RLIMIT_FSIZE, &lim) == 0);
    const std::string msg = error_of([&] { save_model(big, p); });
    ::setrlimit(RLIMIT_FSIZE, &old);
    ::signal(SIGXFSZ, old_handler);
    INFO(msg);
    CHECK(msg.find("model.safetensors") != std::string::npos);
    CHECK(slurp(p) == before);
    no_leftovers();
  }
  // 2. The rename fails (the target is a directory): the temporary file is removed.
  {
    fs::create_directory(tmp / "adir");
    check_error([&] { save_model(big, tmp / "adir"); }, {"adir", "renaming"});
    CHECK(fs::is_directory(tmp / "adir"));
    no_leftovers();
  }
  // 3. The directory is not writable (only meaningful when not running as root).
  if (::geteuid() != 0) {
    fs::permissions(tmp.dir, fs::perms::owner_read | fs::perms::owner_exec);
    check_error([&] { save_model(big, p); }, {"model.safetensors", "cannot create"});
    fs::permissions(tmp.dir, fs::perms::owner_all);
    CHECK(slurp(p) == before);
  }
  // 4. A directory that does not exist.
  check_error([&] { save_model(big, tmp / "no/such/dir/m.safetensors"); }, {"cannot create"});
  CHECK(slurp(p) == before);
  // The original still loads.
  CHECK(load_model<double>(p).layout_string() == "MMMM");
}

TEST_CASE("desc json: every shipped alias desc round-trips field by field") {
  check_desc_round_trip(Golf15x3::desc());
  check_desc_round_trip(Golf15x3E2::desc());
  check_desc_round_trip(GolfTransformer9::desc());
  check_desc_round_trip(GolfMamba18::desc());
  check_desc_round_trip(Hybrid18x6::desc());
  check_desc_round_trip(Lfm2Ssm1B2::desc());
  check_desc_round_trip(Lfm2_350M::desc());
  check_desc_round_trip(Lfm2_700M::desc());
  check_desc_round_trip(Lfm2_1B2::desc());
  check_desc_round_trip(TinyGolf15x3::desc());
  check_desc_round_trip(TinyGolf15x3E2::desc());
  check_desc_round_trip(TinyTransformer::desc());
  check_desc_round_trip(TinyMamba::desc());
  check_desc_round_trip(TinyHybrid18x6::desc());
  check_desc_round_trip(TinyLfm2Ssm::desc());
  check_desc_round_trip(TinyLfm2::desc());
  check_desc_round_trip(TinyScaled::desc());
}

TEST_CASE("desc json: non-default values, infinity and defaults") {
  ModelDesc d;
  d.model = ModelSpec{.vocab = 7, .d_model = 24, .tied = false, .norm = NormKind::Layer,
                      .norm_eps = 1.0 / 3, .max_context = 99, .embedding_multiplier = 0.1,
                      .residual_multiplier = 1e-7, .logits_divisor = -2.5, .logit_softcap = 30,
                      .parallel_residual = true, .init_std = 0.0123456789012345678};
  d.blocks.push_back({Mamba2Spec{.d_state = 3, .d_conv = 2, .expand = 1.5, .headdim = 12,
                                 .ngroups = 3, .chunk = 5, .conv_bias = false, .bias = true,
                                 .norm_whole_width = true, .norm_eps = 2e-6, .dt_min = 0.01,
                                 .dt_max = 0.2, .dt_init_floor = 3e-5, .dt_limit_lo = -1,
                                 .dt_limit_hi = 7.25, .A_init_lo = 0.5, .A_init_hi = 8,
                                 .scan = ScanPath::Recurrent},
                      Relu2Spec{{.hidden = 5, .bias = true}}, NormKind::Layer});
  d.blocks.push_back({GqaSpec{.n_heads = 6, .n_kv_heads = 3, .head_dim = 4, .rope = false,
                              .rope_theta = 123.5, .window = 9, .qk_norm = true,
                              .output_gate = true, .scale = 0.3, .bias = true},
                      SwiGluSpec{{.hidden = 11}}});
  d.blocks.push_back({ShortConvSpec{.L = 5, .bias = true}});
  d.blocks.push_back({Mamba2Spec{.headdim = 8, .scan = ScanPath::Chunked}});
  check_desc_round_trip(d);
  const json j = to_json(d);
  CHECK(j["blocks"][3]["mixer"]["dt_limit_hi"] == "inf");
  CHECK(j["blocks"][0]["mixer"]["kind"] == "mamba2");
  CHECK(j["blocks"][1]["mixer"]["kind"] == "attention");
  CHECK(j["blocks"][2]["mixer"]["kind"] == "shortconv");
  CHECK(j["blocks"][2]["channel"]["kind"] == "none");

  // Only the required fields: everything else takes the spec defaults.
  const ModelDesc m = desc_from_json(json::parse(R"({
      "model": {"vocab": 10, "d_model": 64},
      "blocks": [{"mixer": {"kind": "mamba2"}},
                 {"mixer": {"kind": "attention"}, "channel": {"kind": "swiglu", "hidden": 8}},
                 {"mixer": {"kind": "shortconv", "L": 2}, "norm": "layer"}]})"));
  ModelDesc want;
  want.model = ModelSpec{.vocab = 10, .d_model = 64};
  want.blocks = {{Mamba2Spec{}}, {GqaSpec{}, SwiGluSpec{{.hidden = 8}}},
                 {ShortConvSpec{.L = 2}, NoChannelSpec{}, NormKind::Layer}};
  check_same(m, want);
  CHECK(std::isinf(std::get<Mamba2Spec>(m.blocks[0].mixer).dt_limit_hi));
  // Integers are accepted for doubles, "-inf" as well.
  const ModelDesc n = desc_from_json(json::parse(R"({"model": {"vocab": 10, "d_model": 64},
      "blocks": [{"mixer": {"kind": "mamba2", "expand": 1, "dt_limit_lo": "-inf"}}]})"));
  CHECK(std::get<Mamba2Spec>(n.blocks[0].mixer).expand == 1.0);
  CHECK(std::get<Mamba2Spec>(n.blocks[0].mixer).dt_limit_lo == -INFINITY);
}

TEST_CASE("desc json: bad descs name the JSON path and what was expected") {
  json good = to_json(TinyHybrid18x6::desc());
  REQUIRE_NOTHROW(desc_from_json(good));
  auto with = [&](const std::function<void(json&)>& edit) {
    json j = good;
    edit(j);
    return [j] { desc_from_json(j); };
  };
  check_error(with([](json& j) { j["blocks"][3]["mixer"]["head_dim"] = "x"; }),
              {"blocks[3].mixer.head_dim: expected an integer, got \"x\""});
  check_error(with([](json& j) { j["blocks"][1]["mixer"]["headdim"] = 2.5; }),
              {"blocks[1].mixer.headdim", "expected an integer", "2.5"});
  check_error(with([](json& j) { j["blocks"][1]["mixer"]["d_state"] = 1e12; }),
              {"blocks[1].mixer.d_state", "expected an integer"});
  check_error(with([](json& j) { j["blocks"][1]["mixer"]["d_state"] = 4000000000LL; }),
              {"blocks[1].mixer.d_state", "expected an integer", "4000000000"});
  check_error(with([](json& j) { j["blocks"][0]["mixer"]["expand"] = "two"; }),
              {"blocks[0].mixer.expand", "expected a number", "\"two\""});
  check_error(with([](json& j) { j["model"]["tied"] = 1; }), {"model.tied", "true or false"});
  check_error(with([](json& j) { j["blocks"][2]["mixer"]["kind"] = "mamba3"; }),
              {"blocks[2].mixer.kind", "\"mamba2\", \"attention\", \"shortconv\"", "\"mamba3\""});
  check_error(with([](json& j) { j["blocks"][0]["channel"]["kind"] = "geglu"; }),
              {"blocks[0].channel.kind", "\"swiglu\"", "\"geglu\""});
  check_error(with([](json& j) { j["blocks"][0]["norm"] = "batch"; }),
              {"blocks[0].norm", "\"rms\", \"layer\"", "\"batch\""});
  check_error(with([](json& j) { j["blocks"][0]["mixer"]["scan"] = 3; }),
              {"blocks[0].mixer.scan", "\"recurrent\"", "got 3"});
  check_error(with([](json& j) { j["model"].erase("vocab"); }), {"model.vocab", "missing"});
  check_error(with([](json& j) { j["model"].erase("d_model"); }), {"model.d_model", "missing"});
  check_error(with([](json& j) { j.erase("blocks"); }), {"blocks", "missing"});
  check_error(with([](json& j) { j["blocks"] = json::object(); }), {"blocks", "expected an array"});
  check_error(with([](json& j) { j["blocks"] = json::array(); }), {"blocks", "empty"});
  check_error(with([](json& j) { j["blocks"][4] = 3; }), {"blocks[4]", "expected an object"});
  check_error(with([](json& j) { j["blocks"][5].erase("mixer"); }), {"blocks[5].mixer", "missing"});
  check_error(with([](json& j) { j["blocks"][5]["mixer"].erase("kind"); }),
              {"blocks[5].mixer.kind", "missing"});
  check_error(with([](json& j) { j["blocks"][6]["channel"].erase("hidden"); }),
              {"blocks[6].channel.hidden", "missing"});
  check_error(with([](json& j) { j["blocks"][0]["mixer"]["d_sate"] = 4; }),
              {"blocks[0].mixer.d_sate", "unknown field", "d_state"});
  check_error(with([](json& j) { j["model"]["vocab"] = 0; }), {"model", "vocab must be positive"});
  check_error(with([](json& j) { j["blocks"][7]["mixer"]["n_kv_heads"] = 3; }),
              {"blocks[7].mixer", "n_kv_heads 3 does not divide n_heads 4"});
  check_error(with([](json& j) { j["blocks"][6]["channel"]["hidden"] = 0; }),
              {"blocks[6].channel", "hidden width must be positive"});
  check_error([] { desc_from_json(json::array()); }, {"expected an object"});
}

TEST_CASE("desc json: an expand whose d_inner does not fit an int is rejected (fuzz regression)") {
  // fuzz/fuzz_desc_json found "expand": 1e99 reaching an undefined double → int conversion
  // in Mamba2Spec::d_inner; NaN and negative values took the same road.
  auto desc = [](const std::string& expand) {
    return [expand] {
      desc_from_json(json::parse(R"({"model": {"vocab": 10, "d_model": 8}, "blocks": [{"mixer":
          {"kind": "mamba2", "headdim": 8, "expand": )" + expand + "}}]}"));
    };
  };
  check_error(desc("1e99"), {"blocks[0].mixer", "d_inner = expand * d_model", "at most 2147483647"});
  check_error(desc("268435456"), {"blocks[0].mixer", "at most 2147483647"});  // 2^31 exactly
  check_error(desc("\"inf\""), {"blocks[0].mixer", "d_inner"});
  check_error(desc("\"nan\""), {"blocks[0].mixer", "d_inner"});
  check_error(desc("-8"), {"blocks[0].mixer", "must be positive"});
  check_error(desc("0"), {"blocks[0].mixer", "must be positive"});
  CHECK(std::get<Mamba2Spec>(desc_from_json(json::parse(R"({"model": {"vocab": 10, "d_model": 8},
      "blocks": [{"mixer": {"kind": "mamba2", "headdim": 8, "expand": 3}}]})")).blocks[0].mixer).expand == 3);
}

}  // namespace hybrid_test_io
