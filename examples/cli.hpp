// Flag-value parsing shared by the example programs: whole-value numbers and id lists,
// with errors that name the flag, the value and what was expected; and the main() that
// turns every error into a message and exit code 2.
#pragma once
#include <algorithm>
#include <charconv>
#include <cstdio>
#include <cxxopts.hpp>
#include <exception>
#include <string>
#include <system_error>
#include <type_traits>
#include <vector>

#include <hybrid/core/error.hpp>

namespace hybrid::cli {

// "1, 2,3" → {1, 2, 3}; anything else names the flag, the entry and what was expected.
inline std::vector<int> parse_ids(const std::string& flag, const std::string& text) {
  std::vector<int> out;
  std::size_t start = 0;
  for (int k = 0;; ++k) {
    const std::size_t comma = text.find(',', start);
    std::string piece = text.substr(start, comma == std::string::npos ? comma : comma - start);
    piece.erase(0, piece.find_first_not_of(" \t"));
    piece.erase(piece.find_last_not_of(" \t") + 1);
    int v = 0;
    const auto [end, ec] = std::from_chars(piece.data(), piece.data() + piece.size(), v);
    HYBRID_CHECK(!piece.empty(), flag, ": entry ", k, " is empty in '", text,
                 "'; expected comma-separated token ids like 1,2,3");
    HYBRID_CHECK(ec != std::errc::result_out_of_range, flag, ": entry ", k, " ('", piece,
                 "') is out of range for a token id");
    HYBRID_CHECK(ec == std::errc() && end == piece.data() + piece.size(), flag, ": entry ", k,
                 " ('", piece, "') is not an integer; expected comma-separated token ids like 1,2,3");
    HYBRID_CHECK(v >= 0, flag, ": entry ", k, " is ", v, "; token ids are >= 0");
    out.push_back(v);
    if (comma == std::string::npos) break;
    start = comma + 1;
  }
  return out;
}

// "a,b,,c" → {"a", "b", "c"}: a comma-separated list of paths or globs, empty entries dropped.
inline std::vector<std::string> split_list(const std::string& s) {
  std::vector<std::string> out;
  for (std::size_t a = 0; a <= s.size();) {
    const std::size_t b = std::min(s.find(',', a), s.size());
    if (b > a) out.push_back(s.substr(a, b - a));
    a = b + 1;
  }
  return out;
}

// A whole flag value as a number: "--top-k: '3x' is not an integer" rather than a bare
// parse failure.
template <class T>
T number(const char* flag, const std::string& text) {
  T v{};
  const char* b = text.data();
  const char* e = b + text.size();
  const auto [end, ec] = std::from_chars(b, e, v);
  constexpr const char* kind = std::is_floating_point_v<T> ? "a number"
                               : std::is_signed_v<T>       ? "an integer"
                                                           : "a non-negative integer";
  HYBRID_CHECK(ec != std::errc::result_out_of_range, flag, ": '", text, "' is out of range");
  HYBRID_CHECK(!text.empty() && ec == std::errc() && end == e, flag, ": '", text, "' is not ",
               kind);
  return v;
}

// main() of a program whose body is run(argc, argv): any error is printed as "error: ..."
// and the exit code is 2.
inline int guarded_main(int (*run)(int, char**), int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const cxxopts::exceptions::exception& e) {
    std::fprintf(stderr, "error: %s (see --help)\n", e.what());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
  }
  return 2;
}

}  // namespace hybrid::cli
