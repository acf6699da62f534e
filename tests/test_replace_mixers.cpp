// Initialisation from a trained model: replace_mixers copies every tensor but the replaced
// blocks' mixers, whose values are a fresh initialisation.
#include <doctest/doctest.h>

#include <hybrid/aliases.hpp>
#include <hybrid/train/replace_mixers.hpp>

#include "test_util.hpp"

using namespace hybrid;
using hybrid::test_util::check_error;

// This file's own namespace: the tests compile in batches (tests/CMakeLists.txt).
namespace hybrid_test_replace_mixers {

TEST_CASE("replace_mixers: ShortConv blocks of an LFM2-style model become Mamba-2, the rest is copied") {
  RuntimeModel<double> src(TinyLfm2::desc(), 3);
  const int n = src.n_blocks();
  REQUIRE(n >= 2);
  Mamba2Spec mb{.d_state = 8, .expand = 2, .headdim = 16, .chunk = 8};
  InitRecord rec;
  RuntimeModel<double> out = replace_mixers(src, {{{0}, mb}}, 11, &rec);
  CHECK(rec.replaced == std::vector<int>{0});
  CHECK(rec.layout_before == src.layout_string());
  CHECK(rec.layout_after != rec.layout_before);
  CHECK(rec.layout_after[0] == 'M');
  CHECK(rec.layout_after.substr(1) == rec.layout_before.substr(1));
  CHECK(!rec.fresh.empty());
  CHECK(rec.copied.size() + rec.fresh.size() == out.param_table().size());
  // Copied tensors are the source's bit for bit; new ones are what a fresh model of the new
  // description with the same seed holds.
  RuntimeModel<double> fresh(out.desc(), 11);
  const auto& st = src.param_table().entries();
  for (const ParamInfo& e : out.param_table().entries()) {
    const double* v = out.param_values() + e.offset;
    const bool is_new = std::find(rec.fresh.begin(), rec.fresh.end(), e.name) != rec.fresh.end();
    CHECK_MESSAGE(is_new == (e.name.rfind("blocks.0.mixer.", 0) == 0), e.name);
    const double* ref = nullptr;
    if (is_new) {
      ref = fresh.param_values() + e.offset;
    } else {
      const auto it = std::find_if(st.begin(), st.end(), [&](const ParamInfo& f) { return f.name == e.name; });
      REQUIRE(it != st.end());
      ref = src.param_values() + it->offset;
    }
    CHECK_MESSAGE(std::equal(v, v + e.size(), ref), e.name);
  }
  // The copied blocks compute as before: the new model's output differs, but block 1 onwards
  // see the same weights (checked above), and the model runs.
  const std::vector<int> toks{1, 2, 3, 4, 5, 6};
  const Mat<double> y = out.forward(toks, 1, 6);
  CHECK(y.allFinite());
  CHECK((y - src.forward(toks, 1, 6)).cwiseAbs().maxCoeff() > 0);
  CHECK(rec.to_json()["new"].size() == rec.fresh.size());
}

TEST_CASE("replace_mixers: bad block lists and specs are refused with a clear error") {
  RuntimeModel<double> src(TinyLfm2::desc(), 3);
  std::string kind;
  CHECK(parse_block_list("0,2:mamba2", src.n_blocks(), kind) == std::vector<int>{0, 2});
  CHECK(kind == "mamba2");
  CHECK(parse_block_list("2,0:mamba2", src.n_blocks(), kind) == std::vector<int>{0, 2});
  check_error([&] { parse_block_list("0,0:mamba2", src.n_blocks(), kind); }, {"listed twice"});
  check_error([&] { parse_block_list("99:mamba2", src.n_blocks(), kind); }, {"does not exist"});
  check_error([&] { parse_block_list("0,x:mamba2", src.n_blocks(), kind); }, {"not a block index"});
  check_error([&] { parse_block_list("0,1", src.n_blocks(), kind); }, {"BLOCKS:KIND"});
  check_error([&] { parse_block_list("0,:mamba2", src.n_blocks(), kind); }, {"not a block index"});
  const Mamba2Spec bad{.d_state = 8, .expand = 2, .headdim = 7};  // 7 does not divide d_inner
  check_error([&] { (void)replace_mixers(src, {{{0}, bad}}, 1); }, {"does not fit this model"});
  const Mamba2Spec ok{.d_state = 8, .expand = 2, .headdim = 16};
  check_error([&] { (void)replace_mixers(src, {{{0}, ok}, {{0}, ok}}, 1); }, {"replaced twice"});
}

}  // namespace hybrid_test_replace_mixers
