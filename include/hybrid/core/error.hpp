// Errors: one exception type for every bad input (files, flags, token ids, shapes),
// with a message that names what was wrong and what was expected.
#pragma once
#include <sstream>
#include <stdexcept>
#include <string>

namespace hybrid {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what) : std::runtime_error(what) {}
};

namespace detail {
template <class... Args>
std::string concat_str(const Args&... args) {
  std::ostringstream os;
  (os << ... << args);
  return os.str();
}
}  // namespace detail

// fail("token id ", id, " >= vocab ", V) — throws hybrid::Error with the pieces joined.
template <class... Args>
[[noreturn]] void fail(const Args&... args) {
  throw Error(detail::concat_str(args...));
}

}  // namespace hybrid

// HYBRID_CHECK(cond, pieces...) — run-time check of user input; throws hybrid::Error.
#define HYBRID_CHECK(cond, ...)                 \
  do {                                          \
    if (!(cond)) ::hybrid::fail(__VA_ARGS__);   \
  } while (0)
