// RuntimeModel::release_packed_floats: a model with stored weights gives the float pages of
// its stored tensors back and computes exactly what it did; whatever needs those floats
// afterwards refuses with an error naming the call.
#include <doctest/doctest.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <functional>
#include <string>
#include <vector>

#include <unistd.h>
#ifdef __linux__
#include <sys/mman.h>
#endif

#include <hybrid/alias_registry.hpp>
#include <hybrid/gguf/export.hpp>
#include <hybrid/gguf/import.hpp>
#include <hybrid/io/checkpoint.hpp>
#include <hybrid/model.hpp>
#include <hybrid/train/replace_mixers.hpp>

#include "test_util.hpp"

using namespace hybrid;
using namespace test_util;

// This file's own namespace: the tests compile in batches (tests/CMakeLists.txt).
namespace hybrid_test_release_floats {

namespace {

// Prefill (B = 2, T = 11) logits, then four decode steps of three sequences after prompts of
// 6 tokens, as one matrix each.
struct Run {
  Mat<float> forward, decode;
};
Run run(const RuntimeModel<float>& m) {
  const std::vector<int> toks = random_tokens(22, m.vocab(), 9);
  Run r;
  r.forward = m.forward(toks, 2, 11);
  std::vector<std::vector<int>> prompts(3, std::vector<int>(toks.begin(), toks.begin() + 6));
  prompts[1][2] = 3, prompts[2][5] = 1;
  std::vector<SequenceState<float>> st;
  m.prefill(prompts, st);
  r.decode.resize(0, m.vocab());
  for (int s = 0; s < 4; ++s) {
    const std::vector<int> step{toks[std::size_t(6 + s)], toks[std::size_t(11 + s)], toks[std::size_t(16 + s)]};
    const Mat<float> l = m.step(step, st);
    r.decode.conservativeResize(r.decode.rows() + l.rows(), Eigen::NoChange);
    r.decode.bottomRows(l.rows()) = l;
  }
  return r;
}

// f(e, a, b) for every tensor e the store holds, with [a, b) the whole pages inside its
// float values (a == b when it spans none).
template <class F>
void for_stored(const RuntimeModel<float>& m, F&& f) {
  const std::size_t page = std::size_t(::sysconf(_SC_PAGESIZE));
  for (const auto& e : m.param_table().entries()) {
    if (!m.weight_store()->find(Param{e.offset, e.rows, e.cols})) continue;
    const auto lo = reinterpret_cast<std::uintptr_t>(m.param_values() + e.offset);
    const auto hi = reinterpret_cast<std::uintptr_t>(m.param_values() + e.offset + e.size());
    const std::uintptr_t a = (lo + page - 1) / page * page, b = hi / page * page;
    f(e, a, std::max(a, b));
  }
}

// Float bytes of the tensors the store holds, and the part of them in whole pages.
struct Extent {
  std::size_t bytes = 0, whole_pages = 0;
};
Extent packed_extent(const RuntimeModel<float>& m) {
  Extent x;
  for_stored(m, [&](const ParamInfo& e, std::uintptr_t a, std::uintptr_t b) {
    x.bytes += sizeof(float) * std::size_t(e.size());
    x.whole_pages += b - a;
  });
  return x;
}

#ifdef __linux__
// Resident bytes (mincore) of the whole pages inside m's stored tensors.
std::size_t resident_packed_bytes(const RuntimeModel<float>& m) {
  const std::size_t page = std::size_t(::sysconf(_SC_PAGESIZE));
  std::size_t resident = 0;
  for_stored(m, [&](const ParamInfo&, std::uintptr_t a, std::uintptr_t b) {
    if (b == a) return;
    std::vector<unsigned char> v((b - a) / page);
    REQUIRE(::mincore(reinterpret_cast<void*>(a), b - a, v.data()) == 0);
    for (unsigned char c : v) resident += (c & 1) ? page : 0;
  });
  return resident;
}
#endif

// TinyGolf15x3E2 (seed 5) as a GGUF file with its projections in `type`.
std::string gguf_bytes(GgmlType type) {
  gguf::ExportOptions opt;
  opt.type = type;
  return gguf::to_gguf(RuntimeModel<float>(TinyGolf15x3E2::desc(), 5), opt).bytes();
}

}  // namespace

// Bit for bit: with the stored tensors' floats given back (on Linux they read as zero), a
// forward that still read one of them would compute something else.
TEST_CASE("release_packed_floats: every Tiny alias computes the same logits without its float copy") {
  int aliases = 0;
  for (const auto& a : shipped_aliases()) {
    if (std::string(a.name).rfind("Tiny", 0) != 0) continue;
    ++aliases;
    CAPTURE(std::string(a.name));
    for (const DType d : {DType::I8, DType::BF16}) {
      CAPTURE(std::string(dtype_name(d)));
      RuntimeModel<float> m(a.desc(), 13);
      m.set_weight_storage(d);
      const Run want = run(m);
      RuntimeModel<float> r = m;
      const Extent x = packed_extent(r);
      const std::size_t given = r.release_packed_floats();
      CHECK(r.floats_released());
      CHECK(!m.floats_released());
      CHECK(r.weight_store() == m.weight_store());
#ifdef __linux__
      CHECK(given == x.whole_pages);
      CHECK(given > 0);
      MESSAGE(std::string(a.name), " ", std::string(dtype_name(d)), ": ", given, " of ", x.bytes,
              " float bytes given back (the rest shares a page with a float tensor)");
      CHECK(resident_packed_bytes(r) == 0);
      // The released pages read as zero: the test below runs without those values.
      Index nonzero = 0;
      for (const auto& e : r.param_table().entries())
        if (r.weight_store()->find(Param{e.offset, e.rows, e.cols}) && e.size() > 4096)
          for (Index i = 1024; i < e.size() - 1024; ++i) nonzero += r.param_values()[e.offset + i] != 0;
      CHECK(nonzero == 0);
#else
      CHECK(given == 0);
#endif
      const Run got = run(r);
      CHECK(got.forward == want.forward);
      CHECK(got.decode == want.decode);
      CHECK(r.release_packed_floats() == given);  // a second call changes nothing
      // A copy of a released model holds no float copy either and computes the same.
      const RuntimeModel<float> c = r;
      CHECK(c.floats_released());
#ifdef __linux__
      CHECK(resident_packed_bytes(c) == 0);
#endif
      CHECK(run(c).forward == want.forward);
    }
  }
  CHECK(aliases == 8);
}

TEST_CASE("release_packed_floats: what needs the float values refuses, naming the call") {
  RuntimeModel<float> m(find_alias("TinyLfm2").desc(), 3);
  check_error([&] { m.release_packed_floats(); }, {"no stored weights", "set_weight_storage"});
  m.set_weight_storage(DType::I8);
  m.release_packed_floats();
  const std::vector<std::string> words{"release_packed_floats", "load the model again"};
  const auto refuses = [&](const std::function<void()>& f, const char* what) {
    CAPTURE(std::string(what));
    const std::string e = error_of(f);
    for (const auto& w : words) CHECK(contains(e, w));
    CHECK(contains(e, what));
  };
  refuses([&] { m.set_weight_storage(DType::F32); }, "set_weight_storage");
  refuses([&] { m.set_weight_storage(DType::BF16); }, "set_weight_storage");
  refuses([&] { m.check_finite(); }, "visit");
  refuses([&] { m.visit([](const std::string&, MatMap<float>&, ParamRole) {}); }, "visit");
  const TempDir dir;
  const std::string path = dir / "released.safetensors";
  refuses([&] { save_model(m, path); }, "visit");
  CHECK(!std::filesystem::exists(path));
  refuses([&] { (void)gguf::to_gguf(m, {}); }, "visit");
  refuses([&] { (void)replace_mixers(m, {{{0}, Mamba2Spec{}}}, 1); }, "replace_mixers");
  // Training: a recording tape never takes stored weights.
  GradStore<float> grads(m);
  Tape<float> tape(true, &grads);
  const std::vector<int> toks{1, 2, 3, 4}, tg{2, 3, 4, 5};
  check_error([&] { m.loss(tape, toks, tg, 1, 4); }, {"recording tape"});
}

// A GGUF file's Q8_0 blocks (and F16 / BF16 values) go straight into the weight storage
// with LoadOptions::float_copy = false: the model computes what the model loaded with its
// float copy computes, bit for bit, and holds no float page of those tensors.
TEST_CASE("GGUF load without the float copy: Q8_0, F16 and BF16 files compute the same") {
  for (const GgmlType type : {GgmlType::Q8_0, GgmlType::F16, GgmlType::BF16}) {
    CAPTURE(int(type));
    const std::string bytes = gguf_bytes(type);
    const GgufReader rd = GgufReader::from_memory(bytes.data(), bytes.size(), "test");
    const RuntimeModel<float> full = gguf::load_gguf<float>(rd);
    REQUIRE(full.weight_store());
    CHECK(!full.floats_released());
    const RuntimeModel<float> lean = gguf::load_gguf<float>(rd, {.float_copy = false});
    CHECK(lean.floats_released());
    REQUIRE(lean.weight_store());
    CHECK(lean.weight_store()->bytes() == full.weight_store()->bytes());
    const Run want = run(full), got = run(lean);
    CHECK(got.forward == want.forward);
    CHECK(got.decode == want.decode);
#ifdef __linux__
    CHECK(lean.released_float_bytes() > 0);
    CHECK(resident_packed_bytes(lean) == 0);
#endif
    // The float tensors nothing else holds are the file's.
    for (const auto& e : full.param_table().entries())
      if (!full.weight_store()->find(Param{e.offset, e.rows, e.cols})) {
        CAPTURE(e.name);
        CHECK(std::equal(full.param_values() + e.offset, full.param_values() + e.offset + e.size(),
                         lean.param_values() + e.offset));
      }
    // The same from the usual release after a load with the copy.
    RuntimeModel<float> later = full;
    later.release_packed_floats();
    CHECK(run(later).decode == want.decode);
  }
}

TEST_CASE("GGUF load without the float copy: non-finite stored values and double models are errors") {
  for (const GgmlType type : {GgmlType::Q8_0, GgmlType::F16, GgmlType::BF16}) {
    CAPTURE(int(type));
    std::string bytes = gguf_bytes(type);
    const GgufReader rd = GgufReader::from_memory(bytes.data(), bytes.size(), "test");
    const GgufTensor* t = rd.find("blk.0.ssm_in.weight");
    REQUIRE(t);
    REQUIRE(t->type == type);
    // The second block's scale (Q8_0) or the second value (F16 / BF16) becomes +inf.
    const std::size_t at = std::size_t(rd.bytes(*t) - reinterpret_cast<const unsigned char*>(bytes.data())) +
                           (type == GgmlType::Q8_0 ? 34 : 2);
    const std::uint16_t inf = type == GgmlType::BF16 ? 0x7f80 : 0x7c00;
    std::memcpy(&bytes[at], &inf, 2);
    const GgufReader bad = GgufReader::from_memory(bytes.data(), bytes.size(), "test");
    check_error([&] { (void)gguf::load_gguf<float>(bad, {.float_copy = false}); },
                {"blk.0.ssm_in.weight", "finite"});
    check_error([&] { (void)gguf::load_gguf<float>(bad); }, {"finite"});  // the float path says so too
  }
  const std::string bytes = gguf_bytes(GgmlType::Q8_0);
  const GgufReader rd = GgufReader::from_memory(bytes.data(), bytes.size(), "test");
  check_error([&] { (void)gguf::load_gguf<double>(rd, {.float_copy = false}); },
              {"float copy", "RuntimeModel<float>", "double"});
}

}  // namespace hybrid_test_release_floats
