// Helpers shared by the test files: a self-removing temporary directory, whole-file read /
// write, checks on the message of a thrown hybrid::Error, seeded random matrices and token
// ids, and a stand-in model of named tensors.
#pragma once
#include <doctest/doctest.h>
#include <unistd.h>

#include <deque>
#include <filesystem>
#include <fstream>
#include <functional>
#include <initializer_list>
#include <iterator>
#include <string>
#include <tuple>
#include <vector>

#include <hybrid/core/error.hpp>
#include <hybrid/core/rng.hpp>
#include <hybrid/core/tensor.hpp>
#include <hybrid/layers/param.hpp>

namespace hybrid::test_util {

// A fresh directory under the system temp dir, removed with everything in it (even after a
// test took away its permissions).
struct TempDir {
  std::filesystem::path dir;
  TempDir() {
    static int counter = 0;
    dir = std::filesystem::temp_directory_path() /
          ("hybrid_test_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
    std::filesystem::create_directories(dir);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  ~TempDir() {
    std::error_code ec;
    std::filesystem::permissions(dir, std::filesystem::perms::owner_all,
                                 std::filesystem::perm_options::add, ec);
    std::filesystem::remove_all(dir, ec);
  }
  std::string operator/(const std::string& name) const { return (dir / name).string(); }
};

inline std::string slurp(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(f), {}};
}
inline void spit(const std::string& path, const std::string& bytes) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f << bytes;
}

inline bool contains(const std::string& s, const std::string& part) {
  return s.find(part) != std::string::npos;
}

// The message of the hybrid::Error that f throws ("" if none; other exceptions fail).
inline std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

// f must throw a hybrid::Error whose message holds every one of `words`.
inline void check_error(const std::function<void()>& f, std::initializer_list<std::string> words) {
  const std::string msg = error_of(f);
  INFO("message: ", msg);
  CHECK(!msg.empty());
  for (const auto& w : words) CHECK_MESSAGE(msg.find(w) != std::string::npos, "missing '", w, "'");
}

// An (r, c) matrix of standard normal draws from Rng(seed), drawn in double, stored as S.
template <class S = double>
Mat<S> random_mat(Index r, Index c, std::uint64_t seed) {
  Mat<S> m(r, c);
  Rng rng(seed);
  for (Index i = 0; i < m.size(); ++i) m.data()[i] = S(rng.normal());
  return m;
}

// A stand-in model for optimiser tests: named tensors with chosen roles in one parameter
// table and store, as the real models keep them. The store is allocated once with room for
// `capacity` values, so tensors added later do not move the earlier ones.
template <class S = double>
struct ToyModel {
  ParamTable table;
  Buffer<S> values;
  std::deque<MatMap<S>> maps;

  explicit ToyModel(Index capacity = Index(1) << 18) : values(capacity) { values.zero(); }
  ToyModel(const ToyModel&) = delete;
  MatMap<S>& add(const std::string& name, Index r, Index c, ParamRole role, std::uint64_t seed) {
    const Param p = table.add(name, r, c, role);
    HYBRID_CHECK(table.total() <= values.size(), "ToyModel: more than ", values.size(), " values");
    maps.emplace_back(values.data() + p.offset, r, c);
    maps.back() = random_mat<S>(r, c, seed);
    return maps.back();
  }
  MatMap<S>& operator[](std::size_t i) { return maps[i]; }
  const ParamTable& param_table() const { return table; }
  S* param_values() { return values.data(); }
  template <class F>
  void visit(F&& f) {
    for (std::size_t i = 0; i < maps.size(); ++i) f(table[i].name, maps[i], table[i].role);
  }
};

// n token ids drawn uniformly from [0, vocab), seeded.
inline std::vector<int> random_tokens(Index n, int vocab, std::uint64_t seed) {
  Rng rng(seed);
  std::vector<int> t(static_cast<std::size_t>(n));
  for (auto& x : t) x = int(rng.below(std::uint64_t(vocab)));
  return t;
}

}  // namespace hybrid::test_util
