// KV caches and decode attention: the cache's reserve / append / trim rules in f32 and bf16,
// the decode kernel (split-K over the keys) against the blocked attention_forward, and
// whole models decoding over a bf16 cache against the f32 cache.
#include <doctest/doctest.h>

#include <cmath>
#include <string>
#include <vector>

#include <hybrid/alias_registry.hpp>
#include <hybrid/model.hpp>
#include <hybrid/ops/attention_decode.hpp>

#include "test_util.hpp"

using namespace hybrid;
using test_util::check_error;
using test_util::random_mat;

// This file's own namespace: the tests compile in batches (tests/CMakeLists.txt).
namespace hybrid_test_kv_decode {

namespace {

// Rows of the row's position plus half the column (below 128: exact in bf16; above, the
// check rounds as the cache does): what a grown or trimmed cache must still hold.
Mat<float> position_rows(Index p0, Index n, Index cols) {
  Mat<float> m(n, cols);
  for (Index i = 0; i < n; ++i)
    for (Index c = 0; c < cols; ++c) m(i, c) = float(p0 + i) + 0.5f * float(c);
  return m;
}

void check_positions(const KvCache<float>& c, Index cols) {
  for (Index i = 0; i < c.len; ++i)
    for (Index col = 0; col < cols; ++col) {
      float want = float(c.start_pos + i) + 0.5f * float(col);
      if (c.dtype() == DType::BF16) want = bf16_to_f32(f32_to_bf16(want));  // exact below 128
      REQUIRE(c.k.at(i, col) == want);
      REQUIRE(c.v.at(i, col) == -want);
    }
}

}  // namespace

TEST_CASE("kv cache: reserve, in-place append, geometric growth keeping the rows") {
  for (DType d : {DType::F32, DType::BF16}) {
    CAPTURE(std::string(dtype_name(d)));
    KvCache<float> c(d, 2, 3);  // 2 heads x 3: each head's rows contiguous
    CHECK(c.dtype() == d);
    const Index cols = 6;
    c.reserve(10);
    CHECK(c.k.rows() == 10);
    CHECK(c.k.cols() == cols);
    CHECK(c.bytes() == std::size_t(2 * 10 * cols) * (d == DType::BF16 ? 2 : 4));
    const void* before = d == DType::BF16 ? static_cast<const void*>(c.k.bf16()) : c.k.data();
    Index pos = 0;
    for (Index n : {3, 1, 6}) {  // 10 rows: the reserved buffer, written in place
      const Mat<float> r = position_rows(pos, n, cols);
      const Mat<float> nr = -r;
      c.append(r, nr);
      pos += n;
    }
    CHECK(c.len == 10);
    CHECK(c.k.rows() == 10);
    CHECK((d == DType::BF16 ? static_cast<const void*>(c.k.bf16()) : c.k.data()) == before);
    check_positions(c, cols);
    const Mat<float> r = position_rows(pos, 1, cols), nr = -r;
    c.append(r, nr);  // full: doubles
    CHECK(c.k.rows() == 20);
    CHECK(c.len == 11);
    check_positions(c, cols);
    c.reserve(5);  // smaller than held: nothing happens
    CHECK(c.k.rows() == 20);
    c.reserve(64);
    CHECK(c.k.rows() == 64);
    check_positions(c, cols);
    const Mat<float> big = position_rows(11, 100, cols), nbig = -big;
    c.append(big, nbig);  // past the capacity: doubles
    CHECK(c.k.rows() == 128);
    CHECK(c.len == 111);
    check_positions(c, cols);
    const Mat<float> huge = position_rows(111, 200, cols), nhuge = -huge;
    c.append(huge, nhuge);  // past twice the capacity at once: exactly what is needed
    CHECK(c.k.rows() == 311);
    CHECK(c.len == 311);
    check_positions(c, cols);
    KvCache<float> copy = c;  // states are values
    CHECK(copy.len == c.len);
    check_positions(copy, cols);
  }
}

TEST_CASE("kv cache: bf16 rows are the rounded values, and each storage names its reader") {
  const Mat<float> r = random_mat<float>(3, 8, 4), nr = -r;
  KvCache<float> h(DType::BF16, 2, 4), f(DType::F32, 2, 4);
  h.append(r, nr);
  f.append(r, nr);
  // Head-major: head c / 4's row i at (c / 4) * capacity * 4 + i * 4, as the span says.
  const ops::KvSpan<float> hs = h.span(), fs = f.span();
  CHECK(hs.bf16());
  CHECK(!fs.bf16());
  CHECK(hs.len == 3);
  CHECK(fs.ld == 4);
  CHECK(fs.hs == f.k.rows() * 4);
  for (Index i = 0; i < 3; ++i)
    for (Index c = 0; c < 8; ++c) {
      const Index at = (c / 4) * fs.hs + i * fs.ld + c % 4;
      CHECK(h.k.at(i, c) == bf16_to_f32(f32_to_bf16(r(i, c))));
      CHECK(hs.kh[at] == f32_to_bf16(r(i, c)));
      CHECK(hs.vh[at] == f32_to_bf16(-r(i, c)));
      CHECK(fs.k[at] == r(i, c));
      CHECK(fs.v[at] == -r(i, c));
    }
  check_error([&] { (void)h.k.data(); }, {"bf16 cache", "bf16()"});
  check_error([&] { (void)f.k.bf16(); }, {"f32 cache", "data()"});
  check_error([] { KvCache<float> c(DType::I8, 1, 1); }, {"int8", "f32 or bf16"});
  check_error([] { KvCache<float> c(DType::F32, 0, 4); }, {"(heads, head_dim) = (0, 4)", "positive"});
  check_error([&] {
    const Mat<float> w = random_mat<float>(1, 4, 1);
    f.append(w, w);
  }, {"4 columns", "2 heads x 4 = 8"});
  check_error([&] {
    KvCache<float> none;
    none.append(r, nr);
  }, {"no layout", "make_state"});
}

TEST_CASE("kv cache: a window keeps at most two windows and drops to one, content intact") {
  for (DType d : {DType::F32, DType::BF16}) {
    CAPTURE(std::string(dtype_name(d)));
    KvCache<float> c(d, 3, 2);
    c.window = 5;
    const Index cols = 6;
    Index pos = 0;
    for (Index n : {1, 1, 4, 1, 3, 1, 1, 7, 1, 1, 1, 2, 1}) {
      const Mat<float> r = position_rows(pos, n, cols), nr = -r;
      c.append(r, nr);
      pos += n;
      CHECK(c.next_pos() == pos);
      c.trim();
      CHECK(c.len <= 2 * 5);
      CHECK(c.len >= std::min<Index>(pos, 5));
      CHECK(c.next_pos() == pos);
      check_positions(c, cols);
    }
    CHECK(c.start_pos > 0);
  }
}

TEST_CASE("kv cache: GQA states in the chosen storage and their bytes per token") {
  const RuntimeModel<float> m(find_alias("TinyTransformer").desc(), 1);
  const auto& gqa = std::get<GqaLayer<float>>(m.block(0).mixer());
  CHECK(gqa.state_bytes_per_token(DType::BF16) * 2 == gqa.state_bytes_per_token());
  CHECK(gqa.state_bytes_per_token() == 4 * 2 * gqa.spec().n_kv_heads * gqa.spec().head_dim);
  const KvCache<float> s = gqa.make_state(40, DType::BF16);
  CHECK(s.dtype() == DType::BF16);
  CHECK(s.k.rows() == 40);
  CHECK(Index(s.bytes()) == 40 * gqa.state_bytes_per_token(DType::BF16));
  const LayerState<float> ls = m.block(0).make_state(8, DType::BF16);
  CHECK(std::get<KvCache<float>>(ls).dtype() == DType::BF16);
}

namespace {

// Decode over B caches against attention_forward with one query row per sequence.
// head_major: the spans of KvCaches (heads' rows contiguous, capacity above the length);
// otherwise (len, G*P) row-major buffers with the span's default strides.
template <class S>
void check_decode(int H, int G, int P, const std::vector<Index>& lens, int window, bool bf16,
                  Index splits, bool head_major, std::uint64_t seed) {
  const Index B = Index(lens.size()), ldq = Index(H) * P, ldk = Index(G) * P;
  const Mat<S> q = random_mat<S>(B, ldq, seed);
  std::vector<Mat<S>> ks, vs;
  std::vector<std::vector<std::uint16_t>> kh(B), vh(B);
  std::vector<ops::KvSpan<S>> kv(B);
  std::vector<Index> qpos(B);
  for (Index b = 0; b < B; ++b) {
    ks.push_back(random_mat<S>(lens[b], ldk, seed + 10 + b));
    vs.push_back(random_mat<S>(lens[b], ldk, seed + 20 + b));
    kv[b].len = lens[b];
    kv[b].kpos0 = 3 * b;            // a trimmed cache starts later
    qpos[b] = kv[b].kpos0 + lens[b] - 1 + (b == 2 ? 4 : 0);  // sequence 2: a query past its keys
    if (bf16) {
      for (Mat<S>* m : {&ks[b], &vs[b]}) {
        auto& h = m == &ks[b] ? kh[b] : vh[b];
        h.resize(std::size_t(m->size()));
        for (Index i = 0; i < m->size(); ++i) {
          h[std::size_t(i)] = f32_to_bf16(float(m->data()[i]));
          m->data()[i] = S(bf16_to_f32(h[std::size_t(i)]));  // the reference sees the rounded values
        }
      }
      kv[b].kh = kh[b].data();
      kv[b].vh = vh[b].data();
    } else {
      kv[b].k = ks[b].data();
      kv[b].v = vs[b].data();
    }
  }
  std::vector<KvCache<S>> caches;
  for (Index b = 0; head_major && b < B; ++b) {
    caches.emplace_back(bf16 ? DType::BF16 : DType::F32, G, P);
    caches.back().reserve(lens[b] + 5);
    caches.back().append(ks[b], vs[b]);  // bf16: already rounded, so stored exactly
  }
  for (Index b = 0; head_major && b < B; ++b) {
    kv[b] = caches[std::size_t(b)].span();
    kv[b].kpos0 = 3 * b;
  }
  const S scale = S(1) / std::sqrt(S(P));
  Mat<S> got(B, ldq), want(B, ldq);
  got.setConstant(S(7));
  const ops::DecodeDims d{B, H, G, P};
  Buffer<S> work(ops::attention_decode_scratch(d, par::threads(), splits));
  ops::attention_decode<S>(d, q.data(), kv.data(), qpos.data(), got.data(), scale, window,
                           work.data(), splits);
  for (Index b = 0; b < B; ++b)
    ops::attention_forward<S>(q.data() + b * ldq, ks[b].data(), vs[b].data(), want.data() + b * ldq,
                              ops::AttnDims{1, lens[b], H, G, P}, scale, qpos[b], kv[b].kpos0,
                              window);
  const double tol = std::is_same_v<S, double> ? 1e-13 : 2e-6;
  const double err = double((got - want).cwiseAbs().maxCoeff());
  CAPTURE(err);
  CHECK(err <= tol * std::max(1.0, double(want.cwiseAbs().maxCoeff())));
}

}  // namespace

TEST_CASE_TEMPLATE("attention_decode: matches attention_forward (lengths, windows, GQA, B, splits)",
                   S, float, double) {
  struct Heads { int H, G, P; };
  const Heads heads[] = {{4, 4, 8}, {8, 2, 16}, {6, 1, 64}};
  const std::vector<std::vector<Index>> batches = {{1}, {2}, {65}, {777}, {1, 130, 64}, {300, 5, 1025}};
  std::uint64_t seed = 1;
  for (const Heads& h : heads)
    for (const auto& lens : batches)
      for (int window : {0, 1, 7, 200})
        for (Index splits : {0, 1, 3, 7})
          for (bool bf16 : {false, true})
          for (bool head_major : {false, true}) {
            if (bf16 && std::is_same_v<S, double> && splits > 1) continue;  // covered in float
            CAPTURE(h.H);
            CAPTURE(h.G);
            CAPTURE(lens.size());
            CAPTURE(lens.back());
            CAPTURE(window);
            CAPTURE(splits);
            CAPTURE(bf16);
            CAPTURE(head_major);
            check_decode<S>(h.H, h.G, h.P, lens, window, bf16, splits, head_major, seed++);
          }
}

TEST_CASE_TEMPLATE("attention_forward over a head-major KV cache equals it over row-major keys", S, float, double) {
  const int H = 6, G = 3, P = 8;
  const Index len = 70, T = 9, W = Index(G) * P;
  for (int window : {0, 5}) {
    CAPTURE(window);
    const Mat<S> k = random_mat<S>(len, W, 31), v = random_mat<S>(len, W, 32);
    const Mat<S> q = random_mat<S>(T, Index(H) * P, 33);
    KvCache<S> c(DType::F32, G, P);
    c.reserve(len + 13);  // the head stride is capacity * P, not len * P
    c.append(k, v);
    const ops::KvSpan<S> sp = c.span();
    const Index qpos0 = len - T;  // the chunk's queries are the cache's last T rows
    Mat<S> got(T, Index(H) * P), want(T, Index(H) * P);
    ops::attention_forward<S>(q.data(), sp.k, sp.v, got.data(),
                              ops::AttnDims{T, len, H, G, P, sp.ld, sp.hs}, S(0.3), qpos0, 0, window);
    ops::attention_forward<S>(q.data(), k.data(), v.data(), want.data(), ops::AttnDims{T, len, H, G, P},
                              S(0.3), qpos0, 0, window);
    CHECK((got - want).cwiseAbs().maxCoeff() == S(0));  // the same sums in the same order
  }
  const ops::AttnDims strided{2, 2, 2, 1, 4, 4, 64};
  std::vector<S> buf(256, S(0.5)), lse(4, S(0));
  check_error([&] {
    ops::attention_backward<S>(buf.data(), buf.data(), buf.data(), buf.data(), lse.data(), buf.data(),
                               buf.data(), nullptr, nullptr, strided, S(1), 0, 0, 0);
  }, {"attention_backward", "row-major", "kv_ld 4", "kv_hs 64"});
}

#ifdef HYBRID_DECODE_SIMD
namespace {

// One work item by the AVX-512 body against the Eigen body that specifies it: the partial
// (max, sum, unnormalised o) of every query head.
template <int W, class KT>
void check_simd_item(int rep, Index n, Index ld, std::uint64_t seed) {
  const int P = 16 * W;
  const Index pr = P + 2 + 3;  // heads' partials apart by more than their size
  const Mat<float> q = random_mat<float>(1, Index(rep) * P, seed);
  const Mat<float> k = random_mat<float>(n, ld, seed + 1), v = random_mat<float>(n, ld, seed + 2);
  std::vector<std::uint16_t> kh(std::size_t(n * ld)), vh(std::size_t(n * ld));
  for (Index i = 0; i < n * ld; ++i) kh[std::size_t(i)] = f32_to_bf16(k.data()[i]), vh[std::size_t(i)] = f32_to_bf16(v.data()[i]);
  const ops::DecodeDims d{1, rep, 1, P};
  std::vector<float> work(std::size_t(ops::detail::decode_thread_scratch(d)));
  std::vector<float> want(std::size_t(rep * pr), 9.f), got(std::size_t(rep * pr), 9.f);
  const float scale = 1.f / std::sqrt(float(P));
  const KT* kp;
  const KT* vp;
  if constexpr (std::is_same_v<KT, float>) kp = k.data(), vp = v.data();
  else kp = kh.data(), vp = vh.data();
  ops::detail::decode_slice<float>(q.data(), kp, vp, ld, n, rep, P, scale, want.data(), pr, work.data());
  ops::detail::decode_slice_simd<W>(q.data(), kp, vp, ld, n, rep, scale, got.data(), pr, work.data(),
                                    ops::detail::kDecodeTile);
  for (int r = 0; r < rep; ++r) {
    const float* a = want.data() + r * pr;
    const float* b = got.data() + r * pr;
    CHECK(b[0] == doctest::Approx(a[0]).epsilon(1e-5));  // running max
    CHECK(b[1] == doctest::Approx(a[1]).epsilon(1e-5));  // sum of exp
    double err = 0, mag = 1;
    for (int c = 0; c < P; ++c) err = std::max(err, double(std::abs(a[2 + c] - b[2 + c]))), mag = std::max(mag, double(std::abs(a[2 + c])));
    CHECK(err <= 2e-5 * mag);
    for (Index c = P + 2; c < pr; ++c) CHECK(b[c] == 9.f);  // nothing written past the partial
  }
}

template <int W>
void check_simd_width() {
  std::uint64_t seed = 100 + W;
  std::vector<int> reps = {1, 2, 3, 4, 5, 8};
  if (W == 1) reps.push_back(32);  // the SIMD item's own scratch term is the larger one
  for (int rep : reps)
    for (Index n : {1, 7, 16, 17, 127, 128, 129, 300})
      for (Index ld : {Index(16 * W), Index(16 * W * 3)}) {
        CAPTURE(rep);
        CAPTURE(n);
        CAPTURE(ld);
        check_simd_item<W, float>(rep, n, ld, seed++);
        check_simd_item<W, std::uint16_t>(rep, n, ld, seed++);
      }
}

}  // namespace

TEST_CASE("attention_decode: the AVX-512 work item equals the Eigen one (head dim P 16-128, rep, tails, strides)") {
  check_simd_width<1>();
  check_simd_width<2>();
  check_simd_width<4>();
  check_simd_width<8>();
}
#endif

namespace {

// Fresh states of m whose attention caches store dtype d.
std::vector<SequenceState<float>> states_with(const RuntimeModel<float>& m, Index B, DType d) {
  std::vector<SequenceState<float>> st;
  for (Index b = 0; b < B; ++b) {
    SequenceState<float> s;
    for (int i = 0; i < m.n_blocks(); ++i) s.layers.push_back(m.block(i).make_state(0, d));
    st.push_back(std::move(s));
  }
  return st;
}

// Logits of two chunks (T = 9 then T = 5, the chunked path over a filled cache) and six
// decode steps of B = 2 sequences, stacked.
Mat<float> chunks_then_steps(const RuntimeModel<float>& m, DType d) {
  std::vector<SequenceState<float>> st = states_with(m, 2, d);
  std::vector<SequenceState<float>*> ptr{&st[0], &st[1]};
  Rng rng(3);
  auto toks = [&](Index n) {
    std::vector<int> t(static_cast<std::size_t>(n));
    for (auto& x : t) x = int(rng.below(std::uint64_t(m.vocab())));
    return t;
  };
  Mat<float> out(0, m.vocab());
  auto add = [&](const Mat<float>& l) {
    out.conservativeResize(out.rows() + l.rows(), Eigen::NoChange);
    out.bottomRows(l.rows()) = l;
  };
  for (Index T : {9, 5}) {
    const std::vector<int> t = toks(2 * T);
    add(m.forward(t, 2, T, ptr.data(), true));
  }
  for (int s = 0; s < 6; ++s) add(m.step(toks(2), st));
  return out;
}

}  // namespace

// Random-init Tiny models (attention with windows, GQA 4:1, an output gate, QK norm) with
// keys and values stored in bf16, against the f32 cache: max |difference| / max |logit|
// measured at most 3.5e-3 (TinyLfm2, QK norm); bound 2e-2.
TEST_CASE("kv cache: bf16 cache logits within a bound of the f32 cache, prefill chunks and decode") {
  for (const char* name : {"TinyTransformer", "TinyHybrid18x6", "TinyLfm2Ssm", "TinyLfm2", "TinyGolf15x3E2"}) {
    CAPTURE(std::string(name));
    const RuntimeModel<float> m(find_alias(name).desc(), 11);
    const Mat<float> want = chunks_then_steps(m, DType::F32);
    const Mat<float> got = chunks_then_steps(m, DType::BF16);
    const double scale = double(want.cwiseAbs().maxCoeff());
    const double err = double((got - want).cwiseAbs().maxCoeff()) / scale;
    MESSAGE(std::string(name), ": bf16 cache against f32, max |diff| / max |logit| = ", err);
    CHECK(err <= 2e-2);
    CHECK(err > 0);  // the bf16 rows were read
  }
}

// The f32 cache keeps the decode exact: a step after prefill equals the full forward (the
// decode kernel against the blocked attention, in double).
TEST_CASE("kv cache: decode over an f32 cache matches the full forward in double") {
  TinyHybrid18x6 m(5);
  const std::vector<int> toks = {1, 7, 99, 3, 250, 12, 40, 41, 8, 200, 17};
  const Mat<double> full = m.forward(toks, 1, Index(toks.size()));
  std::vector<SequenceState<double>> st;
  m.prefill({std::vector<int>(toks.begin(), toks.begin() + 4)}, st);
  for (std::size_t i = 4; i < toks.size(); ++i) {
    const Mat<double> l = m.step(std::span<const int>(&toks[i], 1), st);
    CHECK((l.row(0) - full.row(Index(i))).cwiseAbs().maxCoeff() <= 1e-10);
  }
}

}  // namespace hybrid_test_kv_decode
