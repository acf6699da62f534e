// Helpers the benchmark programs share: wall time since a point, the median of repeated
// timings, the machine's load average (runs are comparable only on a quiet machine), and
// the process's resident memory from /proc (Linux; -1 / false elsewhere), and the read rate
// of a streaming sum (the same-run reference of bandwidth-bound measurements).
#pragma once
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

#include <hybrid/core/parallel.hpp>
#include <hybrid/core/tensor.hpp>

namespace bench {

using Clock = std::chrono::steady_clock;

inline double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

inline double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const std::size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

// The 1-minute load average, -1 where there is none.
inline double load_average() {
  double l = -1;
  if (std::FILE* f = std::fopen("/proc/loadavg", "r")) {
    if (std::fscanf(f, "%lf", &l) != 1) l = -1;
    std::fclose(f);
  }
  return l;
}

// A field of /proc/self/status in MiB (VmRSS: now, VmHWM: peak), -1 where there is none.
inline double status_mb(const char* field) {
  std::ifstream f("/proc/self/status");
  std::string line;
  const std::size_t n = std::strlen(field);
  while (std::getline(f, line))
    if (line.compare(0, n, field) == 0 && line.size() > n && line[n] == ':')
      return std::atof(line.c_str() + n + 1) / 1024.0;  // kB
  return -1;
}

// Resets VmHWM to the current RSS (Linux >= 4.0); false where the kernel refuses.
inline bool reset_peak() {
  std::FILE* f = std::fopen("/proc/self/clear_refs", "w");
  if (!f) return false;
  const bool ok = std::fputs("5", f) >= 0;
  return std::fclose(f) == 0 && ok;
}

// Seconds per pass of a streaming sum over the floats of buf (best of reps), each thread
// summing its contiguous part with Eigen's vectorised sum: the machine's read rate for data
// that does not fit in cache.
inline double stream_seconds(const std::vector<float>& buf, int reps) {
  using hybrid::Index;
  double best = 1e30, sink = 0;
  const int parts = hybrid::par::threads();
  const Index n = Index(buf.size());
  std::vector<double> sums(static_cast<std::size_t>(parts));
  for (int r = 0; r < reps; ++r) {
    const auto t0 = Clock::now();
#pragma omp parallel for schedule(static)
    for (int p = 0; p < parts; ++p) {
      const Index b = n * p / parts, e = n * (p + 1) / parts;
      sums[std::size_t(p)] = double(hybrid::CVecMap<float>(buf.data() + b, e - b).sum());
    }
    best = std::min(best, seconds_since(t0));
    for (double x : sums) sink += x;
  }
  if (sink == 12345.678) std::printf("#\n");  // keeps the sums
  return best;
}

}  // namespace bench
