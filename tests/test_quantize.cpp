// Round-to-nearest quantisation (quant/quantize.hpp) at every width and scale rule, against
// the int8 storage packing of ops/qweight.hpp, and the k-bit packing of quant/bitpack.hpp.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include <hybrid/core/rng.hpp>
#include <hybrid/ops/qweight.hpp>
#include <hybrid/quant/bitpack.hpp>
#include <hybrid/quant/quantize.hpp>

#include "test_util.hpp"

using namespace hybrid;
using namespace hybrid::quant;
using hybrid::test_util::check_error;

// This file's own namespace: the tests compile in batches (tests/CMakeLists.txt).
namespace hybrid_test_quantize {

namespace {

constexpr ScaleRule kRules[] = {ScaleRule::RowMax, ScaleRule::MseClip, ScaleRule::SdClip};

// (rows, cols) standard normal draws, with `outliers` values per row set to +-amp (at
// seeded columns, alternating sign): heavy tails as trained weight rows have them.
std::vector<float> gaussian(Index rows, Index cols, std::uint64_t seed, int outliers = 0, float amp = 10.0f) {
  std::vector<float> w(std::size_t(rows * cols));
  Rng rng(seed);
  for (auto& x : w) x = float(rng.normal());
  for (Index r = 0; r < rows; ++r)
    for (int k = 0; k < outliers; ++k)
      w[std::size_t(r * cols) + rng.below(std::uint64_t(cols))] = (k % 2 ? -amp : amp);
  return w;
}

// Sum of squared error of group g of row r, as the test computes it from the tensor.
double group_err(const std::vector<float>& w, const QTensor& t, Index r, Index g) {
  double e = 0;
  for (Index c = g * t.group; c < (g + 1) * t.group; ++c) {
    const double d = double(w[std::size_t(r * t.cols + c)]) - double(t.value(r, c));
    e += d * d;
  }
  return e;
}

float group_amax(const float* w, Index n) {
  float a = 0;
  for (Index i = 0; i < n; ++i) a = std::max(a, std::abs(w[i]));
  return a;
}

double group_rms(const float* w, Index n) {
  double ss = 0;
  for (Index i = 0; i < n; ++i) ss += double(w[i]) * double(w[i]);
  return std::sqrt(ss / double(n));
}

}  // namespace

TEST_CASE("quantize: every width and rule keeps values inside the clip within half a step") {
  const Index R = 6, C = 256;
  const auto w = gaussian(R, C, 11, /*outliers=*/2, 8.0f);
  for (int bits = 2; bits <= 8; ++bits)
    for (ScaleRule rule : kRules)
      for (Index group : {Index(0), Index(64)}) {
        const QuantSpec spec{.bits = bits, .rule = rule, .sd_k = 3.0, .group = group};
        const QTensor t = quantize(w.data(), R, C, spec);
        INFO("bits ", bits, ", rule ", std::string(scale_rule_name(rule)), ", group ", group);
        REQUIRE_NOTHROW(t.check("test"));
        CHECK(t.bits == bits);
        CHECK(t.group == (group ? group : C));
        const int qmax = qmax_of(bits);
        int inside = 0, outside = 0, bad = 0;
        for (Index r = 0; r < R; ++r)
          for (Index c = 0; c < C; ++c) {
            const float x = w[std::size_t(r * C + c)], s = t.scale(r, c);
            const std::int8_t q = t.q[std::size_t(r * C + c)];
            const float clip = float(qmax) * s;
            const float slack = 4 * std::numeric_limits<float>::epsilon() * std::max(std::abs(x), clip);
            // RowMax's clip qmax * fl(amax / qmax) can fall an ulp short of amax: the slack.
            if (std::abs(x) <= clip + slack) {
              ++inside;
              if (!(std::abs(double(x) - double(t.value(r, c))) <= s / 2 + slack)) ++bad;
            } else {  // past the clip: clamped to the end of the grid on its side
              ++outside;
              if (q != (x < 0 ? -qmax : qmax)) ++bad;
            }
          }
        CHECK(bad == 0);
        CHECK(inside > R * C / 2);
        if (rule == ScaleRule::RowMax) CHECK(outside == 0);
        if (rule == ScaleRule::SdClip) CHECK(outside > 0);  // the 8-sigma outliers at k = 3
      }
}

TEST_CASE("quantize: rounding is to nearest with ties away from zero") {
  // max 127 at 8 bits: scale exactly 1, so w / scale is w itself.
  const std::vector<float> w{127.0f, 2.5f, -2.5f, 0.5f, -0.5f, 1.5f, 2.4999998f, -3.5000002f};
  const QTensor t = quantize(w.data(), 1, Index(w.size()), {.bits = 8});
  CHECK(t.scales[0] == 1.0f);
  CHECK(t.q == std::vector<std::int8_t>{127, 3, -3, 1, -1, 2, 2, -4});
  // The inner rounding is std::lround's on every float the grid can see.
  Rng rng(5);
  for (int i = 0; i < 100000; ++i) {
    const float x = float(rng.uniform(-127.0, 127.0));
    const float h = std::round(x * 2) / 2;  // nearby halves too
    for (float v : {x, h, std::nextafter(h, 0.0f), std::nextafter(h, 200.0f)}) {
      const std::int8_t got = quant::detail::quantize_value(v, 1.0f, 127);
      if (got != std::lround(std::clamp(v, -127.0f, 127.0f))) {
        FAIL_CHECK("quantize_value(", v, ") = ", int(got));
        return;
      }
    }
  }
}

TEST_CASE("quantize: RowMax reaches the group's max |w| at its max element") {
  const Index R = 8, C = 128;
  const auto w = gaussian(R, C, 21, 1, 5.0f);
  for (int bits = 2; bits <= 8; ++bits)
    for (Index group : {Index(0), Index(32)}) {
      INFO("bits ", bits, ", group ", group);
      const QTensor t = quantize(w.data(), R, C, {.bits = bits, .rule = ScaleRule::RowMax, .group = group});
      const int qmax = qmax_of(bits);
      for (Index r = 0; r < R; ++r)
        for (Index g = 0; g < t.groups_per_row(); ++g) {
          const float* src = w.data() + r * C + g * t.group;
          const Index at = std::max_element(src, src + t.group, [](float a, float b) {
                             return std::abs(a) < std::abs(b);
                           }) - src;
          const float amax = std::abs(src[at]);
          CHECK(t.scales[std::size_t(r * t.groups_per_row() + g)] == amax / float(qmax));
          const Index c = g * t.group + at;
          CHECK(std::abs(int(t.q[std::size_t(r * C + c)])) == qmax);
          // qmax * fl(amax / qmax) is amax up to the one rounding of the product in float.
          CHECK(std::abs(std::abs(t.value(r, c)) - amax) <= amax * std::numeric_limits<float>::epsilon());
        }
    }
}

TEST_CASE("quantize: MseClip is never worse than RowMax and beats it on heavy tails") {
  const Index R = 16, C = 256;
  SUBCASE("every group, every width, Gaussian and heavy-tailed") {
    for (int outliers : {0, 3}) {
      const auto w = gaussian(R, C, 31 + std::uint64_t(outliers), outliers, 12.0f);
      for (int bits = 2; bits <= 8; ++bits)
        for (Index group : {Index(0), Index(32), Index(128)}) {
          INFO("outliers ", outliers, ", bits ", bits, ", group ", group);
          const QTensor rm = quantize(w.data(), R, C, {.bits = bits, .rule = ScaleRule::RowMax, .group = group});
          const QTensor mc = quantize(w.data(), R, C, {.bits = bits, .rule = ScaleRule::MseClip, .group = group});
          int worse = 0;
          for (Index r = 0; r < R; ++r)
            for (Index g = 0; g < rm.groups_per_row(); ++g)
              if (group_err(w, mc, r, g) > group_err(w, rm, r, g)) ++worse;
          CHECK(worse == 0);
          CHECK(squared_error(w.data(), mc) <= squared_error(w.data(), rm));
        }
    }
  }
  SUBCASE("4 bits, Gaussian rows with outliers: strictly less on every row") {
    const Index C2 = 512;
    const auto w = gaussian(R, C2, 41, /*outliers=*/2, 8.0f);
    const QTensor rm = quantize(w.data(), R, C2, {.bits = 4, .rule = ScaleRule::RowMax});
    const QTensor mc = quantize(w.data(), R, C2, {.bits = 4, .rule = ScaleRule::MseClip});
    for (Index r = 0; r < R; ++r) CHECK(group_err(w, mc, r, 0) < group_err(w, rm, r, 0));
    // Measured 0.70: two 8-sigma values in 512 cost less clipped than their wide steps cost the rest.
    CHECK(squared_error(w.data(), mc) < 0.8 * squared_error(w.data(), rm));
  }
  SUBCASE("the chosen ratio is on the grid and beats every ratio of it") {
    const auto w = gaussian(4, C, 43, 2, 9.0f);
    const int bits = 3, qmax = qmax_of(bits);
    const QTensor mc = quantize(w.data(), 4, C, {.bits = bits, .rule = ScaleRule::MseClip});
    for (Index r = 0; r < 4; ++r) {
      const float* src = w.data() + r * C;
      const float amax = group_amax(src, C);
      const double c = double(mc.scales[std::size_t(r)]) * qmax / amax;
      CHECK(c >= 0.30 - 1e-6);
      CHECK(c <= 1.00 + 1e-6);
      CHECK(std::abs(c * 100 - std::round(c * 100)) < 1e-4);
      // Independent search with std::lround over the documented grid.
      double best = std::numeric_limits<double>::infinity();
      for (int p = 30; p <= 100; ++p) {
        const float s = float(double(amax) * p / (100.0 * qmax));
        double e = 0;
        for (Index i = 0; i < C; ++i) {
          const long q = std::clamp(std::lround(src[i] / s), long(-qmax), long(qmax));
          const double d = double(src[i]) - double(float(q) * s);
          e += d * d;
        }
        best = std::min(best, e);
      }
      CHECK(group_err(w, mc, r, 0) == doctest::Approx(best).epsilon(1e-12));
    }
  }
  SUBCASE("ties between clip ratios keep the larger one") {
    // 2 bits, max 25: c = p / 100 gives scale p / 4, exact. With y = 163 / 16 the error
    // 2 (y - s)^2 + (25 - s)^2 has its vertex at s = 15.125, halfway between the scales of
    // c = 0.60 and 0.61, and both errors are 146.3203125 exactly.
    const std::vector<float> w{25.0f, 10.1875f, -10.1875f};
    const QTensor mc = quantize(w.data(), 1, 3, {.bits = 2, .rule = ScaleRule::MseClip});
    CHECK(mc.scales[0] == 15.25f);
    CHECK(squared_error(w.data(), mc) == 146.3203125);
  }
  SUBCASE("a group that RowMax represents exactly keeps c = 1") {
    const std::vector<float> w{1.0f, -1.0f, 1.0f, 1.0f, -1.0f, 1.0f, 1.0f, -1.0f};
    const QTensor mc = quantize(w.data(), 1, 8, {.bits = 2, .rule = ScaleRule::MseClip});
    CHECK(mc.scales[0] == 1.0f);
    CHECK(squared_error(w.data(), mc) == 0.0);
  }
}

TEST_CASE("quantize: SdClip scales by k * rms / qmax and clamps the outliers") {
  const Index R = 8, C = 512;
  const auto w = gaussian(R, C, 51, /*outliers=*/2, 20.0f);
  for (int bits = 2; bits <= 8; ++bits)
    for (double k : {3.0, 8.0}) {
      INFO("bits ", bits, ", k ", k);
      const int qmax = qmax_of(bits);
      const QTensor t = quantize(w.data(), R, C, {.bits = bits, .rule = ScaleRule::SdClip, .sd_k = k});
      const QTensor rm = quantize(w.data(), R, C, {.bits = bits, .rule = ScaleRule::RowMax});
      for (Index r = 0; r < R; ++r) {
        const float* src = w.data() + r * C;
        const double rms = group_rms(src, C);
        const float amax = group_amax(src, C);
        const float s = t.scales[std::size_t(r)];
        CHECK(s < rm.scales[std::size_t(r)]);  // k * rms < amax: a finer grid than RowMax's
        CHECK(k * rms < amax);  // rms ~ 1.6 here, outliers at 20
        CHECK(double(s) == doctest::Approx(k * rms / qmax).epsilon(1e-7));
        // The max element lies past the clip: clamped, so its dequantised value falls short.
        const Index at = std::max_element(src, src + C, [](float a, float b) { return std::abs(a) < std::abs(b); }) - src;
        CHECK(std::abs(int(t.q[std::size_t(r * C + at)])) == qmax);
        CHECK(std::abs(t.value(r, at)) < amax);
        CHECK(std::abs(t.value(r, at)) == doctest::Approx(k * rms).epsilon(1e-6));
      }
    }
  SUBCASE("k past the max: a coarser grid than RowMax's, its outer codes unused") {
    const auto u = gaussian(2, 64, 53);  // no outliers: max / rms ~ 2.5 < 13
    const QTensor t = quantize(u.data(), 2, 64, {.bits = 6, .rule = ScaleRule::SdClip, .sd_k = 13.0});
    const QTensor rm = quantize(u.data(), 2, 64, {.bits = 6, .rule = ScaleRule::RowMax});
    for (Index r = 0; r < 2; ++r) {
      CHECK(double(t.scales[std::size_t(r)]) == doctest::Approx(13.0 * group_rms(u.data() + r * 64, 64) / 31).epsilon(1e-7));
      CHECK(t.scales[std::size_t(r)] > rm.scales[std::size_t(r)]);
    }
    int tmax = 0, rmax = 0;
    for (std::size_t i = 0; i < t.q.size(); ++i) tmax = std::max(tmax, std::abs(int(t.q[i]))), rmax = std::max(rmax, std::abs(int(rm.q[i])));
    CHECK(rmax == 31);
    CHECK(tmax < 16);  // max / rms ~ 2.5 of 13: about a fifth of the range
    CHECK(squared_error(u.data(), t) > squared_error(u.data(), rm));
  }
  SUBCASE("the rms is taken around zero, not the mean") {
    std::vector<float> m(64);
    for (std::size_t i = 0; i < m.size(); ++i) m[i] = 5.0f + (i % 2 ? 1.0f : -1.0f);  // mean 5, sd 1
    m[7] = 40.0f;
    const QTensor t = quantize(m.data(), 1, 64, {.bits = 4, .rule = ScaleRule::SdClip, .sd_k = 2.0});
    CHECK(double(t.scales[0]) == doctest::Approx(2.0 * group_rms(m.data(), 64) / 7).epsilon(1e-7));
    CHECK(t.scales[0] > 2.0f * 5.0f / 7);  // well above k * sd / qmax = 2/7
  }
}

TEST_CASE("quantize: int4 groups of 32, 64, 128 beat one scale per row when magnitude varies along the row") {
  const Index R = 8, C = 512;
  auto w = gaussian(R, C, 61);
  for (Index r = 0; r < R; ++r)
    for (Index c = 0; c < C; ++c) w[std::size_t(r * C + c)] *= std::pow(10.0f, 3.0f * float(c) / float(C));  // 1 to 1000
  for (ScaleRule rule : kRules) {
    INFO("rule ", std::string(scale_rule_name(rule)));
    const auto err = [&](Index group) {
      return squared_error(w.data(), quantize(w.data(), R, C, {.bits = 4, .rule = rule, .sd_k = 3.0, .group = group}));
    };
    const double row = err(0), g128 = err(128), g64 = err(64), g32 = err(32);
    CHECK(g128 < row);
    CHECK(g64 < g128);
    CHECK(g32 < g64);
    // The first 32 columns hold values ~1000x below the row max: one scale per row rounds them
    // all to 0, their own group's scale keeps them.
    const QTensor per_row = quantize(w.data(), R, C, {.bits = 4, .rule = rule, .sd_k = 3.0});
    const QTensor grouped = quantize(w.data(), R, C, {.bits = 4, .rule = rule, .sd_k = 3.0, .group = 32});
    double head_row = 0;
    for (Index c = 0; c < 32; ++c) {
      CHECK(per_row.q[std::size_t(c)] == 0);
      head_row += double(w[std::size_t(c)]) * double(w[std::size_t(c)]);
    }
    CHECK(group_err(w, grouped, 0, 0) < 0.1 * head_row);
  }
}

TEST_CASE("quantize: all-zero rows and groups get scale 0 and q 0") {
  const Index R = 4, C = 128;
  auto w = gaussian(R, C, 71);
  std::fill(w.begin() + 1 * C, w.begin() + 2 * C, 0.0f);      // row 1
  std::fill(w.begin() + 3 * C, w.begin() + 3 * C + 64, -0.0f);  // first half of row 3
  for (int bits = 2; bits <= 8; ++bits)
    for (ScaleRule rule : kRules)
      for (Index group : {Index(0), Index(64)}) {
        INFO("bits ", bits, ", rule ", std::string(scale_rule_name(rule)), ", group ", group);
        const QTensor t = quantize(w.data(), R, C, {.bits = bits, .rule = rule, .group = group});
        std::vector<float> out(std::size_t(R * C), -1.0f);
        dequantize(t, out.data());
        for (Index c = 0; c < C; ++c) {
          CHECK(t.q[std::size_t(C + c)] == 0);
          CHECK(out[std::size_t(C + c)] == 0.0f);
        }
        CHECK(t.scale(1, 0) == 0.0f);
        if (group == 64) {
          CHECK(t.scale(3, 0) == 0.0f);
          CHECK(t.scale(3, 64) > 0.0f);
        }
        for (float v : out) CHECK(std::isfinite(v));
      }
  const std::vector<float> z(64, 0.0f);
  const QTensor t = quantize(z.data(), 2, 32, {.bits = 6, .rule = ScaleRule::MseClip, .group = 32});
  CHECK(t.scales == std::vector<float>{0.0f, 0.0f});
  CHECK(squared_error(z.data(), t) == 0.0);
}

TEST_CASE("quantize: non-finite values and bad specs are errors that name the fix") {
  auto w = gaussian(4, 64, 81);
  for (float bad : {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity(),
                    -std::numeric_limits<float>::infinity()}) {
    auto v = w;
    v[2 * 64 + 37] = bad;
    v[3 * 64 + 1] = bad;  // the first one (row-major) is named
    for (ScaleRule rule : kRules)
      check_error([&] { quantize(v.data(), 4, 64, {.bits = 6, .rule = rule}); },
                  {"row 2", "column 37", "not finite"});
  }
  check_error([&] { quantize(w.data(), 4, 64, {.bits = 1}); }, {"1 bits", "2 to 8"});
  check_error([&] { quantize(w.data(), 4, 64, {.bits = 9}); }, {"9 bits", "2 to 8"});
  check_error([&] { quantize(w.data(), 4, 64, {.group = 48}); }, {"48", "64 columns", "divisor"});
  check_error([&] { quantize(w.data(), 4, 64, {.group = -32}); }, {"-32", "0 (one scale per row)"});
  check_error([&] { quantize(w.data(), 4, 64, {.rule = ScaleRule::SdClip, .sd_k = 0.0}); }, {"SdClip k", "k > 0"});
  check_error([&] { quantize(w.data(), 4, 64, {.rule = ScaleRule::SdClip, .sd_k = std::nan("")}); }, {"SdClip k"});
  check_error([&] { quantize(w.data(), 4, 0, {}); }, {"(4, 0)", "cols >= 1"});
  QTensor t = quantize(w.data(), 4, 64, {.bits = 4});
  t.q[5] = 8;  // outside [-7, 7]
  std::vector<float> out(w.size());
  check_error([&] { dequantize(t, out.data()); }, {"dequantize", "value 8", "[-7, 7]"});
}

TEST_CASE("quantize: int8 RowMax matches ops::pack_weight's int8 storage value for value") {
  const Index R = 64, C = 512;
  const auto w = gaussian(R, C, 91, 1, 6.0f);
  for (Index group : {Index(0), ops::kQ8Group}) {
    INFO("group ", group);
    const Index g = ops::weight_group("test", DType::I8, C, group);
    std::vector<std::int8_t> bytes(std::size_t(R * C));
    std::vector<float> scales(std::size_t(ops::packed_scales(DType::I8, R, C, g)));
    ops::pack_weight("test", w.data(), R, C, DType::I8, g, bytes.data(), scales.data());
    const QTensor t = quantize(w.data(), R, C, {.bits = 8, .rule = ScaleRule::RowMax, .group = group});
    CHECK(t.group == g);
    CHECK(t.scales == scales);  // bit for bit: both amax / 127 in float
    // The values agree except where w / scale is exactly k + 0.5: ops rounds those to even.
    int differ = 0, ties = 0;
    for (Index i = 0; i < R * C; ++i) {
      const float x = w[std::size_t(i)] / t.scales[std::size_t(i / g)];
      const bool tie = x - std::floor(x) == 0.5f;
      ties += tie;
      if (t.q[std::size_t(i)] != bytes[std::size_t(i)]) {
        ++differ;
        CHECK(tie);
        CHECK(std::abs(int(t.q[std::size_t(i)]) - int(bytes[std::size_t(i)])) == 1);
      }
    }
    CHECK(differ == ties);
    // And the dequantised floats are ops' dequant_rows floats.
    const ops::QWeight qw{DType::I8, R, C, g, bytes.data(), scales.data()};
    std::vector<float> a(std::size_t(R * C)), b(std::size_t(R * C));
    ops::dequant_rows(qw, 0, R, a.data());
    dequantize(t, b.data());
    int mismatch = 0;
    for (Index i = 0; i < R * C; ++i)
      if (a[std::size_t(i)] != b[std::size_t(i)] && t.q[std::size_t(i)] == bytes[std::size_t(i)]) ++mismatch;
    CHECK(mismatch == 0);
  }
  // A tie on purpose: scale 1, w = 2.5 -> ours 3 (away from zero), ops 2 (to even).
  const std::vector<float> tie{127.0f, 2.5f};
  const QTensor t = quantize(tie.data(), 1, 2, {.bits = 8});
  CHECK(int(t.q[1]) == 3);
  CHECK(int(f32_to_int8(2.5f, t.scales[0])) == 2);
}

TEST_CASE("quantize: dequantize and squared_error read the tensor as QTensor::value does") {
  const Index R = 5, C = 96;
  const auto w = gaussian(R, C, 101, 1);
  const QTensor t = quantize(w.data(), R, C, {.bits = 5, .rule = ScaleRule::MseClip, .group = 32});
  std::vector<float> out(std::size_t(R * C));
  dequantize(t, out.data());
  double e = 0;
  for (Index r = 0; r < R; ++r)
    for (Index c = 0; c < C; ++c) {
      CHECK(out[std::size_t(r * C + c)] == t.value(r, c));
      const double d = double(w[std::size_t(r * C + c)]) - double(out[std::size_t(r * C + c)]);
      e += d * d;
    }
  CHECK(squared_error(w.data(), t) == e);
  // Rows are quantised independently (whichever thread takes them): a slice gives the same rows.
  const auto big = gaussian(64, 1024, 103, 2);
  const QTensor a = quantize(big.data(), 64, 1024, {.bits = 4, .rule = ScaleRule::MseClip});
  const QTensor b = quantize(big.data() + 32 * 1024, 32, 1024, {.bits = 4, .rule = ScaleRule::MseClip});
  CHECK(std::equal(b.q.begin(), b.q.end(), a.q.begin() + 32 * 1024));
  CHECK(std::equal(b.scales.begin(), b.scales.end(), a.scales.begin() + 32));
}

TEST_CASE("bitpack: every width round-trips odd lengths in ceil(n * bits / 8) bytes") {
  Rng rng(111);
  for (int bits = 2; bits <= 8; ++bits) {
    const int lo = -(1 << (bits - 1)), hi = (1 << (bits - 1)) - 1;
    for (std::size_t n : {0, 1, 2, 3, 5, 7, 8, 9, 13, 31, 33, 100, 1001}) {
      INFO("bits ", bits, ", n ", n);
      std::vector<std::int8_t> q(n);
      for (auto& v : q) v = std::int8_t(lo + int(rng.below(std::uint64_t(hi - lo + 1))));
      if (n >= 2) q[0] = std::int8_t(lo), q[n - 1] = std::int8_t(hi);
      const auto bytes = pack_bits(q.data(), n, bits);
      CHECK(bytes.size() == (n * std::size_t(bits) + 7) / 8);
      CHECK(bytes.size() == packed_size(n, bits));
      std::vector<std::int8_t> back(n, 99);
      unpack_bits(bytes.data(), bytes.size(), n, bits, back.data());
      CHECK(back == q);
      if ((n * bits) % 8)  // the unused high bits of the last byte are zero
        CHECK((bytes.back() >> ((n * bits) % 8)) == 0);
    }
  }
  // A quantised tensor's values at their width.
  const auto w = gaussian(3, 64, 113, 1);
  for (int bits = 2; bits <= 8; ++bits) {
    const QTensor t = quantize(w.data(), 3, 64, {.bits = bits, .rule = ScaleRule::SdClip, .sd_k = 4.0});
    const auto bytes = pack_bits(t.q.data(), t.q.size(), bits);
    std::vector<std::int8_t> back(t.q.size());
    unpack_bits(bytes.data(), bytes.size(), back.size(), bits, back.data());
    CHECK(back == t.q);
  }
}

TEST_CASE("bitpack: two's complement fields, least significant bit first") {
  const std::vector<std::int8_t> q3{1, -1, 2};  // 001 111 010 from bit 0
  CHECK(pack_bits(q3.data(), 3, 3) == std::vector<std::uint8_t>{0xB9, 0x00});
  const std::vector<std::int8_t> q4{-8, 7, 1, -1};  // nibbles, low first
  CHECK(pack_bits(q4.data(), 4, 4) == std::vector<std::uint8_t>{0x78, 0xF1});
  const std::vector<std::int8_t> q2{1, -2, -1, 0, 1};  // 01 10 11 00 | 01
  CHECK(pack_bits(q2.data(), 5, 2) == std::vector<std::uint8_t>{0x39, 0x01});
  const std::vector<std::int8_t> q5{-16, 15};  // 10000 01111: 0xF0, 0x01
  CHECK(pack_bits(q5.data(), 2, 5) == std::vector<std::uint8_t>{0xF0, 0x01});
  const std::vector<std::int8_t> q8{-128, 127, -1};
  CHECK(pack_bits(q8.data(), 3, 8) == std::vector<std::uint8_t>{0x80, 0x7F, 0xFF});
}

TEST_CASE("bitpack: wrong sizes, values that do not fit and dirty padding are errors") {
  const std::vector<std::int8_t> q{1, 2, 3, -4, 0, 1, 2};
  const auto bytes = pack_bits(q.data(), 7, 3);  // 21 bits -> 3 bytes
  REQUIRE(bytes.size() == 3);
  std::vector<std::int8_t> out(7);
  std::vector<std::uint8_t> longer = bytes;
  longer.push_back(0);
  check_error([&] { unpack_bits(longer.data(), 4, 7, 3, out.data()); }, {"4 bytes", "7 values of 3 bits", "= 3 bytes"});
  check_error([&] { unpack_bits(bytes.data(), 2, 7, 3, out.data()); }, {"2 bytes", "= 3 bytes"});
  const std::vector<std::int8_t> big{0, 4};
  check_error([&] { pack_bits(big.data(), 2, 3); }, {"value 4", "index 1", "-4 to 3"});
  const std::vector<std::int8_t> neg{-5};
  check_error([&] { pack_bits(neg.data(), 1, 3); }, {"value -5", "index 0"});
  check_error([&] { pack_bits(q.data(), 7, 1); }, {"1 bits", "2 to 8"});
  check_error([&] { unpack_bits(bytes.data(), 3, 7, 9, out.data()); }, {"9 bits", "2 to 8"});
  std::vector<std::uint8_t> dirty = bytes;
  dirty.back() |= 0x80;  // bit 23, past the 21 used
  check_error([&] { unpack_bits(dirty.data(), 3, 7, 3, out.data()); }, {"padding bits", "not zero"});
}

}  // namespace hybrid_test_quantize
