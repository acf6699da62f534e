// data/: synthetic tasks (layout, oracle and constant predictors, seeding, resume),
// byte-level text (nanoGPT split, windows, val), parameter-golf shards (round trip, every
// way a shard can be bad), text_to_shards → ShardSource, accuracy and bits per byte.
#include <doctest/doctest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <functional>
#include <hybrid/data/shards.hpp>
#include <hybrid/data/source.hpp>
#include <hybrid/data/synthetic.hpp>
#include <hybrid/data/text.hpp>
#include <initializer_list>
#include <iterator>
#include <set>

using namespace hybrid;
using namespace hybrid::data;
namespace fs = std::filesystem;

#include "test_util.hpp"
using namespace hybrid::test_util;

// This file's own namespace: the tests compile in batches (tests/CMakeLists.txt).
namespace hybrid_test_data {

namespace {


std::string random_bytes(std::size_t n, std::uint64_t seed) {
  Rng rng(seed);
  std::string s(n, '\0');
  for (auto& c : s) c = char(rng.below(256));
  return s;
}


bool same(const Batch& a, const Batch& b) {
  return a.B == b.B && a.T == b.T && a.tokens == b.tokens && a.targets == b.targets;
}

// One-hot logits (B*T, V) from a causal predictor: predict(seq, t) sees seq[0..t] only.
using Predictor = std::function<int(std::span<const int> seen)>;
Mat<float> oracle_logits(const Batch& b, int V, const Predictor& predict) {
  Mat<float> logits = Mat<float>::Zero(b.B * b.T, V);
  for (Index r = 0; r < b.B; ++r)
    for (Index t = 0; t < b.T; ++t) {
      if (b.targets[std::size_t(r * b.T + t)] < 0) continue;
      const int p = predict(std::span<const int>(b.tokens.data() + r * b.T, std::size_t(t + 1)));
      REQUIRE(p >= 0);
      REQUIRE(p < V);
      logits(r * b.T + t, p) = 1;
    }
  return logits;
}
// The best accuracy any constant guess reaches.
double best_constant_accuracy(const Batch& b, int V) {
  double best = 0;
  for (int c = 0; c < V; ++c) {
    Mat<float> logits = Mat<float>::Zero(b.B * b.T, V);
    logits.col(c).setOnes();
    best = std::max(best, accuracy(logits, b));
  }
  return best;
}
// The id that followed the first earlier occurrence of the current id.
int recall_first(std::span<const int> s) {
  const Index t = Index(s.size()) - 1;
  for (Index j = 0; j + 1 < t; ++j)
    if (s[std::size_t(j)] == s[std::size_t(t)]) return s[std::size_t(j + 1)];
  return -1;
}
// The id that followed the most recent earlier occurrence of the current id.
int recall_last(std::span<const int> s) {
  const Index t = Index(s.size()) - 1;
  for (Index j = t - 1; j >= 0; --j)
    if (s[std::size_t(j)] == s[std::size_t(t)])
      return j + 1 < Index(s.size()) ? s[std::size_t(j + 1)] : -1;
  return -1;
}

void check_ids(const Batch& b, int V) {
  REQUIRE(Index(b.tokens.size()) == b.B * b.T);
  REQUIRE(Index(b.targets.size()) == b.B * b.T);
  for (int x : b.tokens) REQUIRE((x >= 0 && x < V));
  for (int x : b.targets) REQUIRE((x >= -1 && x < V));
}

// Seeding, val determinism and resume, the same for every source.
void check_source_contract(const std::function<std::unique_ptr<Source>(std::uint64_t)>& make,
                           Index B, Index T) {
  auto a = make(11), b = make(11), c = make(12);
  const Batch a1 = a->train_batch(B, T), b1 = b->train_batch(B, T), c1 = c->train_batch(B, T);
  CHECK(same(a1, b1));
  CHECK_FALSE(same(a1, c1));
  CHECK_FALSE(same(a1, a->train_batch(B, T)));  // the stream moves on

  // val: the same every call, and asking for it leaves the train stream alone
  auto v1 = a->val_batches(B, T, 2), v2 = a->val_batches(B, T, 2);
  REQUIRE(v1.size() == v2.size());
  for (std::size_t i = 0; i < v1.size(); ++i) CHECK(same(v1[i], v2[i]));
  b->train_batch(B, T);
  CHECK(same(a->train_batch(B, T), b->train_batch(B, T)));

  // resume: a fresh source given the state draws what the original draws next
  const std::string st = a->state();
  const Batch n1 = a->train_batch(B, T), n2 = a->train_batch(B, T);
  auto r = make(11);
  r->set_state(st);
  CHECK(same(r->train_batch(B, T), n1));
  CHECK(same(r->train_batch(B, T), n2));
  auto r2 = make(99);  // the seed of the resumed object does not matter
  r2->set_state(st);
  CHECK(same(r2->train_batch(B, T), n1));
  CHECK(r->state() == a->state());
  check_error([&] { r->set_state("garbage"); }, {"malformed"});
}

}  // namespace

// ---- synthetic tasks -------------------------------------------------------------------

TEST_CASE("data: mqar layout, oracle and chance") {
  const MqarConfig c{258, 8, 8, 64};
  MqarSource src(c, 3);
  CHECK(src.vocab_needed() == 258);
  const int v0 = src.first_value();
  CHECK(v0 == 129);
  const Batch b = src.train_batch(64, 64);
  check_ids(b, 258);
  for (Index r = 0; r < b.B; ++r) {
    const int* tok = b.tokens.data() + r * b.T;
    const int* tgt = b.targets.data() + r * b.T;
    std::set<int> keys;
    for (Index i = 0; i < c.n_pairs; ++i) {
      CHECK((tok[2 * i] >= 1 && tok[2 * i] < v0));  // keys and values from disjoint ranges
      CHECK(tok[2 * i + 1] >= v0);
      CHECK(tgt[2 * i] == -1);
      CHECK(tgt[2 * i + 1] == -1);
      keys.insert(tok[2 * i]);
    }
    CHECK(Index(keys.size()) == c.n_pairs);  // distinct keys: every query has one answer
    Index scored = 0;
    for (Index t = 2 * c.n_pairs; t < b.T; ++t) {
      if (tgt[t] < 0) continue;
      ++scored;
      // the target is the value paired with the queried key in the context
      bool found = false;
      for (Index i = 0; i < c.n_pairs; ++i)
        if (tok[2 * i] == tok[t]) {
          CHECK(tgt[t] == tok[2 * i + 1]);
          found = true;
        }
      CHECK(found);
      CHECK(tok[t + 1] == tgt[t]);  // the answer is the next input
    }
    CHECK(scored == c.n_queries);
  }
  CHECK(b.scored() == 64 * c.n_queries);
  CHECK(accuracy(oracle_logits(b, 258, recall_first), b) == 1.0);
  CHECK(best_constant_accuracy(b, 258) < 0.05);  // chance 1/129

  // vocab 9, as in the header's example: keys 1-4, values 5-8, blank 0
  MqarSource small({9, 2, 2, 10}, 1);
  const Batch s = small.train_batch(16, 10);
  check_ids(s, 9);
  for (Index r = 0; r < 16; ++r)
    for (Index t = 4; t < 10; ++t)
      if (s.targets[std::size_t(r * 10 + t)] >= 0) CHECK(s.tokens[std::size_t(r * 10 + t)] <= 4);
  CHECK(accuracy(oracle_logits(s, 9, recall_first), s) == 1.0);

  check_error([] { MqarSource bad({9, 5, 1, 0}, 1); }, {"n_pairs"});
  check_error([] { MqarSource bad({258, 8, 8, 20}, 1); }, {"too short"});
  check_error([&] { src.train_batch(2, 32); }, {"T = 64", "T = 32"});
  MqarSource follow({258, 4, 4, 0}, 1);  // T = 0 follows the batch
  CHECK(follow.train_batch(2, 40).T == 40);
  check_error([&] { follow.train_batch(2, 8); }, {"too short", "16"});
}

TEST_CASE("data: mqar with more queries than pairs") {
  MqarSource src({258, 4, 12, 0}, 5);
  const Batch b = src.train_batch(16, 64);
  CHECK(b.scored() == 16 * 12);
  CHECK(accuracy(oracle_logits(b, 258, recall_first), b) == 1.0);
}

TEST_CASE("data: selective copy layout, oracle and chance") {
  const SelectiveCopyConfig c{258, 16, 64};
  SelectiveCopySource src(c, 4);
  const Batch b = src.train_batch(32, 64);
  check_ids(b, 258);
  const Index m = 64 - c.n_data;
  for (Index r = 0; r < b.B; ++r) {
    const int* tok = b.tokens.data() + r * b.T;
    const int* tgt = b.targets.data() + r * b.T;
    std::vector<int> data;
    for (Index t = 0; t < m; ++t) {
      CHECK(tgt[t] == -1);
      CHECK(tok[t] != SelectiveCopySource::kMarker);
      if (tok[t] != SelectiveCopySource::kBlank) data.push_back(tok[t]);
    }
    REQUIRE(Index(data.size()) == c.n_data);
    CHECK(tok[m] == SelectiveCopySource::kMarker);
    for (Index i = 0; i < c.n_data; ++i) {
      CHECK(tgt[m + i] == data[std::size_t(i)]);  // the data in order
      if (i >= 1) CHECK(tok[m + i] == data[std::size_t(i - 1)]);
    }
  }
  auto copier = [](std::span<const int> s) {
    Index m = 0;
    while (s[std::size_t(m)] != SelectiveCopySource::kMarker) ++m;
    std::vector<int> data;
    for (Index t = 0; t < m; ++t)
      if (s[std::size_t(t)] != SelectiveCopySource::kBlank) data.push_back(s[std::size_t(t)]);
    return data[s.size() - 1 - std::size_t(m)];
  };
  CHECK(accuracy(oracle_logits(b, 258, copier), b) == 1.0);
  CHECK(best_constant_accuracy(b, 258) < 0.05);  // chance 1/256

  // data positions are spread over the context, not bunched
  std::set<Index> positions;
  for (Index r = 0; r < b.B; ++r)
    for (Index t = 0; t < m; ++t)
      if (b.tokens[std::size_t(r * 64 + t)] != 0) positions.insert(t);
  CHECK(Index(positions.size()) > m / 2);

  check_error([] { SelectiveCopySource bad({258, 16, 20}, 1); }, {"too short", "32"});
  check_error([] { SelectiveCopySource bad({2, 1, 0}, 1); }, {"vocab"});
}

TEST_CASE("data: induction heads layout, oracle and chance") {
  for (Index L : {2, 5}) {
    CAPTURE(L);
    const InductionConfig c{258, L, 64};
    InductionSource src(c, 6);
    const Batch b = src.train_batch(64, 64);
    check_ids(b, 258);
    CHECK(b.scored() == 64 * (L - 1));
    for (Index r = 0; r < b.B; ++r) {
      const int* tok = b.tokens.data() + r * b.T;
      const int* tgt = b.targets.data() + r * b.T;
      for (Index t = 0; t < b.T; ++t) {
        if (tgt[t] < 0) continue;
        // the scored id occurred exactly once before, followed by the target
        Index earlier = 0;
        for (Index j = 0; j < t; ++j)
          if (tok[j] == tok[t]) {
            ++earlier;
            CHECK(tok[j + 1] == tgt[t]);
          }
        CHECK(earlier == 1);
        CHECK(tok[t + 1] == tgt[t]);
      }
    }
    CHECK(accuracy(oracle_logits(b, 258, recall_last), b) == 1.0);
    CHECK(best_constant_accuracy(b, 258) < 0.05);
  }
  // the header's example sizes: vocab 10, T 10
  InductionSource tiny({10, 2, 10}, 2);
  const Batch t = tiny.train_batch(32, 10);
  check_ids(t, 10);
  CHECK(accuracy(oracle_logits(t, 10, recall_last), t) == 1.0);
  check_error([] { InductionSource bad({258, 1, 0}, 1); }, {"pattern_len"});
  check_error([] { InductionSource bad({4, 4, 0}, 1); }, {"vocab"});
}

TEST_CASE("data: synthetic seeding, val and resume") {
  check_source_contract([](std::uint64_t s) { return make_mqar({258, 8, 8, 0}, s); }, 4, 48);
  check_source_contract([](std::uint64_t s) { return make_selective_copy({258, 8, 0}, s); }, 4, 32);
  check_source_contract([](std::uint64_t s) { return make_induction({258, 3, 0}, s); }, 4, 32);

  auto m = make_mqar({258, 8, 8, 0}, 1);
  const auto val = m->val_batches(4, 48, 3);
  CHECK(val.size() == 3);
  CHECK_FALSE(same(val[0], val[1]));
  check_error([&] { m->val_batches(4, 48, 0); }, {"max_batches"});
  // a state from another task or another configuration is refused
  auto s = make_selective_copy({258, 8, 0}, 1);
  check_error([&] { s->set_state(m->state()); }, {"mqar", "selective_copy"});
  auto m2 = make_mqar({258, 4, 8, 0}, 1);
  check_error([&] { m2->set_state(m->state()); }, {"configuration"});
  CHECK(m->describe().find("pairs=8") != std::string::npos);
}

TEST_CASE("data: accuracy and bits_per_byte") {
  Batch b;
  b.B = 1;
  b.T = 4;
  b.tokens = {0, 0, 0, 0};
  b.targets = {2, -1, 1, 0};
  Mat<double> logits(4, 3);
  logits << 0, 1, 5,  //  argmax 2 = target
      9, 0, 0,        //  not scored
      3, 1, 0,        //  argmax 0 != 1
      0, 0, 0;        //  tie → first index 0 = target
  CHECK(accuracy(logits, b) == doctest::Approx(2.0 / 3.0));
  b.targets = {-1, -1, -1, -1};
  CHECK(accuracy(logits, b) == 0.0);
  check_error([&] { accuracy(Mat<double>(3, 3), b); }, {"rows"});

  CHECK(bits_per_byte(std::log(2.0), 1.0) == doctest::Approx(1.0).epsilon(1e-15));
  CHECK(bits_per_byte(1.47, 1.0) == doctest::Approx(2.1208).epsilon(1e-4));
  CHECK(bits_per_byte(std::log(2.0), 4.0) == doctest::Approx(0.25));
  check_error([] { bits_per_byte(1.0, 0.0); }, {"bytes_per_token"});
}

// ---- text ------------------------------------------------------------------------------

TEST_CASE("data: text split, windows and val") {
  TempDir tmp;
  const std::string path = tmp / "t.txt", bytes = random_bytes(1003, 77);
  spit(path, bytes);
  TextSource src(path, 5);
  CHECK(src.n_train() == 902);  // int(1003 * 0.9)
  CHECK(src.n_val() == 101);
  CHECK(src.train_text() == std::string_view(bytes).substr(0, 902));
  CHECK(src.val_text() == std::string_view(bytes).substr(902));
  CHECK(src.vocab_needed() == 256);
  CHECK(src.bytes_per_token() == 1.0);

  const Index T = 16;
  const std::string_view train = src.train_text();
  Index lo = 1 << 30, hi = -1;
  for (int k = 0; k < 20; ++k) {
    const Batch b = src.train_batch(8, T);
    check_ids(b, 256);
    for (Index r = 0; r < b.B; ++r) {
      std::string w;
      for (Index t = 0; t < T; ++t) {
        w += char(b.tokens[std::size_t(r * T + t)]);
        if (t + 1 < T)
          CHECK(b.targets[std::size_t(r * T + t)] == b.tokens[std::size_t(r * T + t + 1)]);
      }
      w += char(b.targets[std::size_t(r * T + T - 1)]);
      const auto at = train.find(w);  // the window lies inside the train split
      REQUIRE(at != std::string_view::npos);
      lo = std::min(lo, Index(at));
      hi = std::max(hi, Index(at));
    }
  }
  CHECK(lo < 100);  // starts spread over [0, 902 - 17]
  CHECK(hi > 780);
  CHECK(hi <= 902 - T - 1);

  // val: windows at 0, 16, 32, ... of the val split; 6 windows → batches of 4 and 2
  const auto val = src.val_batches(4, T, 0);
  REQUIRE(val.size() == 2);
  CHECK(val[0].B == 4);
  CHECK(val[1].B == 2);
  for (Index k = 0; k < 6; ++k) {
    const Batch& b = val[std::size_t(k / 4)];
    const Index r = k % 4;
    for (Index t = 0; t < T; ++t) {
      CHECK(b.tokens[std::size_t(r * T + t)] ==
            int((unsigned char)bytes[std::size_t(902 + k * T + t)]));
      CHECK(b.targets[std::size_t(r * T + t)] ==
            int((unsigned char)bytes[std::size_t(902 + k * T + t + 1)]));
    }
  }
  CHECK(src.val_batches(4, T, 1).size() == 1);
  CHECK(same(src.val_batches(4, T, 1)[0], val[0]));

  check_source_contract([&](std::uint64_t s) { return std::make_unique<TextSource>(path, s); }, 4,
                        T);

  check_error([&] { src.train_batch(1, 902); }, {"train split", "902", "T + 1 = 903"});
  check_error([&] { src.val_batches(1, 101, 0); }, {"val split", "101"});
  check_error([&] { TextSource bad(tmp / "missing.txt", 1); }, {"missing.txt", "no such file"});
  spit(tmp / "empty.txt", "");
  check_error([&] { TextSource bad(tmp / "empty.txt", 1); }, {"empty.txt", "empty"});
  // a state from a different file is refused
  spit(tmp / "other.txt", random_bytes(500, 1));
  TextSource other(tmp / "other.txt", 5);
  check_error([&] { other.set_state(src.state()); }, {"different"});
}

TEST_CASE("data: tinyshakespeare split") {
  const std::string path = std::string(HYBRID_DATA_DIR) + "/tinyshakespeare.txt";
  TextSource src(path, 1337);
  CHECK(src.n_train() + src.n_val() == 1115394);
  CHECK(src.n_train() == 1003854);
  CHECK(src.n_val() == 111540);
  CHECK(src.train_text().substr(0, 14) == "First Citizen:");
  const Batch b = src.train_batch(12, 64);
  check_ids(b, 256);
  const auto val = src.val_batches(12, 64, 0);
  Index windows = 0;
  for (const auto& v : val) windows += v.B;
  CHECK(windows == (111540 - 1) / 64);
}

// ---- shards ----------------------------------------------------------------------------

TEST_CASE("data: shard round trip and exact header") {
  TempDir tmp;
  std::vector<std::uint16_t> toks(1000);
  Rng rng(3);
  for (auto& t : toks) t = std::uint16_t(rng.below(65536));
  toks[0] = 0;
  toks[1] = 65535;
  const std::string path = tmp / "s.bin";
  write_shard(path, toks);
  // no temp file left beside it
  CHECK(std::distance(fs::directory_iterator(tmp.dir), fs::directory_iterator{}) == 1);

  const std::string raw = slurp(path);
  REQUIRE(raw.size() == 1024 + 2 * 1000);
  auto i32 = [&](std::size_t i) {
    std::uint32_t v = 0;
    for (int k = 0; k < 4; ++k)
      v |= std::uint32_t((unsigned char)raw[4 * i + std::size_t(k)]) << (8 * k);
    return std::int32_t(v);
  };
  CHECK(i32(0) == 20240520);
  CHECK(i32(1) == 1);
  CHECK(i32(2) == 1000);
  for (std::size_t i = 3; i < 256; ++i) CHECK(i32(i) == 0);
  CHECK((unsigned char)raw[1024 + 2] == 0xFF);  // little-endian uint16
  CHECK((unsigned char)raw[1024 + 3] == 0xFF);
  CHECK((unsigned char)raw[1024 + 4] == (toks[2] & 0xFF));
  CHECK((unsigned char)raw[1024 + 5] == (toks[2] >> 8));

  ShardReader r(path);
  CHECK(r.size() == 1000);
  CHECK(r.header(0) == 20240520);
  CHECK(r.header(1) == 1);
  CHECK(r.header(2) == 1000);
  for (Index i = 0; i < 1000; ++i) REQUIRE(r[i] == toks[std::size_t(i)]);
  std::vector<int> part(10);
  r.read(990, 10, part.data());
  for (Index i = 0; i < 10; ++i) CHECK(part[std::size_t(i)] == toks[std::size_t(990 + i)]);
  check_error([&] { r.read(995, 10, part.data()); }, {"s.bin", "outside"});
  ShardReader moved = std::move(r);
  CHECK(moved.size() == 1000);
  CHECK(moved[1] == 65535);

  write_shard(tmp / "empty.bin", {});
  CHECK(ShardReader(tmp / "empty.bin").size() == 0);
  write_shard(path, std::vector<std::uint16_t>{1, 2, 3});  // overwrites in place
  CHECK(ShardReader(path).size() == 3);
  check_error([&] { write_shard(tmp / "no/such/dir/x.bin", toks); }, {"x.bin"});
}

TEST_CASE("data: bad shards name the file and the field") {
  TempDir tmp;
  const std::string good = tmp / "good.bin";
  write_shard(good, std::vector<std::uint16_t>(100, 7));
  const std::string raw = slurp(good);
  auto variant = [&](const std::string& name, std::string bytes) {
    spit(tmp / name, bytes);
    return tmp / name;
  };
  auto put_i32 = [](std::string s, std::size_t field, std::int32_t v) {
    for (int k = 0; k < 4; ++k)
      s[4 * field + std::size_t(k)] = char((std::uint32_t(v) >> (8 * k)) & 0xFF);
    return s;
  };
  check_error([&] { ShardReader r(variant("magic.bin", put_i32(raw, 0, 20240521))); },
              {"magic.bin", "header[0]", "magic", "20240521", "20240520"});
  check_error([&] { ShardReader r(variant("version.bin", put_i32(raw, 1, 2))); },
              {"version.bin", "version", "expected 1"});
  check_error([&] { ShardReader r(variant("trunc.bin", raw.substr(0, raw.size() - 3))); },
              {"trunc.bin", "n_tokens", "1224", "1221", "truncated"});
  check_error([&] { ShardReader r(variant("count.bin", put_i32(raw, 2, 150))); },
              {"count.bin", "n_tokens", "150", "truncated"});
  check_error([&] { ShardReader r(variant("extra.bin", put_i32(raw, 2, 50))); },
              {"extra.bin", "n_tokens", "trailing"});
  check_error([&] { ShardReader r(variant("neg.bin", put_i32(raw, 2, -1))); },
              {"neg.bin", "n_tokens", "-1"});
  check_error([&] { ShardReader r(variant("short.bin", raw.substr(0, 100))); },
              {"short.bin", "too short", "1024"});
  check_error([&] { ShardReader r(tmp / "absent.bin"); }, {"absent.bin", "cannot open"});
}

TEST_CASE("data: text_to_shards then ShardSource reproduces the text") {
  TempDir tmp;
  const std::string text_path = tmp / "corpus.txt", bytes = random_bytes(3000, 9);
  spit(text_path, bytes);
  const std::string prefix = tmp / "out/bytes";  // the directory is created
  const auto files = text_to_shards(text_path, prefix, 500, 0.1);
  // train: BOS + 2700 bytes = 2701 tokens → 6 shards; val: BOS + 300 → 1 shard
  REQUIRE(files.size() == 7);
  CHECK(files[0] == prefix + "_train_000000.bin");
  CHECK(files[5] == prefix + "_train_000005.bin");
  CHECK(files[6] == prefix + "_val_000000.bin");

  std::vector<int> train_stream{256}, val_stream{256};
  for (std::size_t i = 0; i < 2700; ++i) train_stream.push_back((unsigned char)bytes[i]);
  for (std::size_t i = 2700; i < 3000; ++i) val_stream.push_back((unsigned char)bytes[i]);
  std::vector<int> got;
  for (std::size_t f = 0; f < 6; ++f) {
    ShardReader r(files[f]);
    CHECK(r.size() == (f < 5 ? 500 : 201));
    for (Index i = 0; i < r.size(); ++i) got.push_back(r[i]);
  }
  CHECK(got == train_stream);

  ShardSource src({prefix + "_train_*.bin"}, {prefix + "_val_*.bin"}, 21);
  CHECK(src.train_shards().size() == 6);
  CHECK(src.train_tokens() == 2701);
  CHECK(src.val_tokens() == 301);
  CHECK(src.vocab_needed() == 257);  // bytes and the BOS
  CHECK(ShardSource({files[0]}, {}, 1, 258).vocab_needed() == 258);
  const Index T = 32;
  for (int k = 0; k < 10; ++k) {
    const Batch b = src.train_batch(8, T);
    for (Index r = 0; r < b.B; ++r) {
      std::vector<int> w(b.tokens.begin() + r * T, b.tokens.begin() + (r + 1) * T);
      w.push_back(b.targets[std::size_t(r * T + T - 1)]);
      for (Index t = 0; t + 1 < T; ++t)
        CHECK(b.targets[std::size_t(r * T + t)] == b.tokens[std::size_t(r * T + t + 1)]);
      const auto at = std::search(train_stream.begin(), train_stream.end(), w.begin(), w.end());
      REQUIRE(at != train_stream.end());
      const Index s = Index(at - train_stream.begin());
      CHECK(s % 500 + T + 1 <= 500);  // inside one shard
    }
  }
  // val: the val stream in order
  const auto val = src.val_batches(4, T, 0);
  Index k = 0;
  for (const auto& b : val)
    for (Index r = 0; r < b.B; ++r, ++k)
      for (Index t = 0; t < T; ++t) {
        CHECK(b.tokens[std::size_t(r * T + t)] == val_stream[std::size_t(k * T + t)]);
        CHECK(b.targets[std::size_t(r * T + t)] == val_stream[std::size_t(k * T + t + 1)]);
      }
  CHECK(k == (301 - 1) / T);

  // small shards: val windows run across shard boundaries
  const auto small = text_to_shards(text_path, tmp / "small", 128, 0.1);
  ShardSource s2({tmp / "small_train_*.bin"}, {tmp / "small_val_*.bin"}, 1);
  CHECK(s2.val_shards().size() == 3);  // 301 tokens
  const auto v2 = s2.val_batches(2, 50, 0);
  k = 0;
  for (const auto& b : v2)
    for (Index r = 0; r < b.B; ++r, ++k)
      for (Index t = 0; t < 50; ++t)
        CHECK(b.tokens[std::size_t(r * 50 + t)] == val_stream[std::size_t(k * 50 + t)]);
  CHECK(k == 6);

  check_source_contract(
      [&](std::uint64_t s) {
        return std::make_unique<ShardSource>(std::vector<std::string>{prefix + "_train_*.bin"},
                                             std::vector<std::string>{files[6]}, s);
      },
      4, T);

  check_error([&] { src.train_batch(1, 500); }, {"no train shard", "501"});
  check_error([&] { ShardSource bad({tmp / "nothing_*.bin"}, {}, 1); },
              {"nothing_*.bin", "matches no file"});
  check_error([&] { ShardSource({files[0]}, {}, 1).val_batches(1, 4, 0); }, {"no val shards"});
  ShardSource fewer({files[0], files[1]}, {}, 21);
  check_error([&] { fewer.set_state(src.state()); }, {"different"});

  // a custom BOS id, and no BOS
  const auto custom = text_to_shards(text_path, tmp / "bos1", 10000, 0.1, 1);
  CHECK(ShardReader(custom[0])[0] == 1);
  const auto none = text_to_shards(text_path, tmp / "nobos", 10000, 0.1, -1);
  CHECK(ShardReader(none[0]).size() == 2700);
  CHECK(ShardReader(none[1]).size() == 300);
}

}  // namespace hybrid_test_data
