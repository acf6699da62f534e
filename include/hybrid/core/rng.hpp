// Seeded random numbers with results that are identical on every platform and standard
// library (std::*_distribution is implementation-defined, so it is not used).
#pragma once
#include <cmath>
#include <cstdint>
#include <random>
#include <sstream>
#include <stdexcept>
#include <string>
#include <cstdlib>
#include <string_view>

namespace hybrid {

class Rng {
 public:
  explicit Rng(std::uint64_t seed = 0) : gen_(seed) {}

  std::uint64_t next_u64() { return gen_(); }
  // Uniform in [0, 1) with 53 random bits.
  double uniform() { return static_cast<double>(gen_() >> 11) * 0x1.0p-53; }
  double uniform(double lo, double hi) { return lo + (hi - lo) * uniform(); }
  // Standard normal by Box-Muller (both outputs used).
  double normal() {
    if (has_spare_) {
      has_spare_ = false;
      return spare_;
    }
    double u1 = uniform(), u2 = uniform();
    if (u1 < 1e-300) u1 = 1e-300;
    const double r = std::sqrt(-2.0 * std::log(u1));
    const double th = 6.283185307179586476925 * u2;
    spare_ = r * std::sin(th);
    has_spare_ = true;
    return r * std::cos(th);
  }
  // Uniform integer in [0, n).
  std::uint64_t below(std::uint64_t n) { return n ? gen_() % n : 0; }

  std::mt19937_64& engine() { return gen_; }

  // The full generator state as text (for checkpoints), and back: a resumed run draws
  // exactly the numbers the uninterrupted run would have.
  std::string state() const {
    std::ostringstream os;
    os << gen_ << ' ' << has_spare_ << ' ' << std::hexfloat << spare_;
    return os.str();
  }
  void set_state(const std::string& s) {
    std::istringstream is(s);
    is >> gen_ >> has_spare_;
    std::string sp;
    is >> sp;
    if (is.fail()) throw std::runtime_error("Rng::set_state: malformed generator state");
    spare_ = std::strtod(sp.c_str(), nullptr);
  }

 private:
  std::mt19937_64 gen_;
  double spare_ = 0.0;
  bool has_spare_ = false;
};

// Seed for a named tensor: initialisation does not depend on the order tensors are visited.
inline std::uint64_t derive_seed(std::uint64_t seed, std::string_view name) {
  std::uint64_t h = 1469598103934665603ull ^ (seed * 0x9E3779B97F4A7C15ull);
  for (unsigned char c : name) h = (h ^ c) * 1099511628211ull;
  // splitmix64 finaliser
  h += 0x9E3779B97F4A7C15ull;
  h = (h ^ (h >> 30)) * 0xBF58476D1CE4E5B9ull;
  h = (h ^ (h >> 27)) * 0x94D049BB133111EBull;
  return h ^ (h >> 31);
}

}  // namespace hybrid
