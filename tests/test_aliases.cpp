// Shipped aliases: exact parameter counts (compile-time and counted tensor by tensor on a
// built model), layout strings, summaries.
#include <doctest/doctest.h>

#include <hybrid/alias_registry.hpp>
#include <hybrid/model.hpp>

using namespace hybrid;

// This file's own namespace: the tests compile in batches (tests/CMakeLists.txt).
namespace hybrid_test_aliases {

static_assert(Golf15x3::n_params == 24'393'436);
static_assert(Golf15x3E2::n_params == 55'519'120);
static_assert(Hybrid18x6::n_params == 1'363'455'872);
static_assert(Lfm2Ssm1B2::n_params == 1'346'382'720);
static_assert(Lfm2_350M::n_params == 354'483'968);
static_assert(Lfm2_700M::n_params == 742'489'344);
static_assert(Lfm2_1B2::n_params == 1'170'340'608);

TEST_CASE("alias parameter counts match the published table") {
  CHECK(Golf15x3::n_params == 24'393'436);
  CHECK(Golf15x3E2::n_params == 55'519'120);
  CHECK(Hybrid18x6::n_params == 1'363'455'872);
  CHECK(Lfm2Ssm1B2::n_params == 1'346'382'720);
  CHECK(Lfm2_350M::n_params == 354'483'968);
  CHECK(Lfm2_700M::n_params == 742'489'344);
  CHECK(Lfm2_1B2::n_params == 1'170'340'608);
}

TEST_CASE("layout strings") {
  CHECK(Golf15x3::layout == "MMMMMMMMMMMMAAAMMM");
  CHECK(Hybrid18x6::layout == "MMMAMMMAMMMAMMMAMMMAMMMA");
  CHECK(Lfm2Ssm1B2::layout == "MMMMAMMMMAMMMMAMMMMAMMMMAMMMMA");
  CHECK(Lfm2_350M::layout == "CCACCACCACACACAC");
  CHECK(Golf15x3::n_blocks == 18);
}

template <class ModelT>
void check_counted() {
  ModelT m(1);
  CHECK(m.param_count() == ModelT::n_params);
  CHECK(m.layout_string() == std::string(ModelT::layout));
  CHECK(param_count(ModelT::desc()) == ModelT::n_params);
}

TEST_CASE("built models hold exactly the counted parameters") {
  check_counted<Golf15x3>();
  check_counted<TinyGolf15x3>();
  check_counted<TinyGolf15x3E2>();
  check_counted<TinyTransformer>();
  check_counted<TinyMamba>();
  check_counted<TinyHybrid18x6>();
  check_counted<TinyLfm2Ssm>();
  check_counted<TinyLfm2>();
  check_counted<TinyScaled>();
}

TEST_CASE("summary names every block kind with its state") {
  Golf15x3 m(0);
  const std::string s = m.summary("Golf15x3");
  CHECK(s.find("24393436 parameters") != std::string::npos);
  CHECK(s.find("Mamba2(N=32,P=64)") != std::string::npos);
  CHECK(s.find("GQA(8/4x64) + ReLU2(1024)") != std::string::npos);
  CHECK(s.find("MMMMMMMMMMMMAAAMMM") != std::string::npos);
}

TEST_CASE("initialisation is seeded and deterministic") {
  TinyHybrid18x6 a(7), b(7), c(8);
  bool same = true, differ = false;
  std::vector<const MatMap<double>*> pa, pb, pc;
  a.visit([&](const std::string&, const MatMap<double>& t, ParamRole) { pa.push_back(&t); });
  b.visit([&](const std::string&, const MatMap<double>& t, ParamRole) { pb.push_back(&t); });
  c.visit([&](const std::string&, const MatMap<double>& t, ParamRole) { pc.push_back(&t); });
  for (size_t i = 0; i < pa.size(); ++i) {
    same = same && (*pa[i] == *pb[i]);
    differ = differ || !(*pa[i] == *pc[i]);
  }
  CHECK(same);
  CHECK(differ);
}

TEST_CASE("aliases: the registry names each alias's scalar type, as generate --list-models shows it") {
  const auto scalar_of = [](const char* name) { return std::string(find_alias(name).scalar); };
  CHECK(scalar_of("TinyLfm2") ==
        (std::is_same_v<TinyLfm2::Scalar, float> ? "float" : "double"));
  CHECK(scalar_of("TinyScaled") ==
        (std::is_same_v<TinyScaled::Scalar, float> ? "float" : "double"));
  for (const auto& a : shipped_aliases()) CHECK((a.scalar == "float" || a.scalar == "double"));
}

}  // namespace hybrid_test_aliases
