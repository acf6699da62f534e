// Threading helpers for the CPU ops. OpenMP is optional: without it (or with one thread)
// every helper runs its body once, serially, over the whole range.
//
// Rule for ops: work is split only when it is large enough to pay for a fork (the `work`
// argument, in rough multiply-adds or element visits) and never from inside a parallel
// region, so nested calls stay serial instead of oversubscribing the cores.
#pragma once
#include <algorithm>
#include <cstdint>
#include <utility>
#include <vector>

#include "buffer.hpp"

#if defined(_OPENMP)
#include <omp.h>
#define HYBRID_OMP(directive) _Pragma(#directive)
#else
#define HYBRID_OMP(directive)
#endif

namespace hybrid::par {

// Below this many element visits an elementwise op stays on one thread.
inline constexpr std::int64_t kMinParallelWork = std::int64_t(1) << 15;

// Threads a parallel region started here would get (1 inside a parallel region).
inline int threads() {
#if defined(_OPENMP)
  return omp_in_parallel() ? 1 : omp_get_max_threads();
#else
  return 1;
#endif
}

// This thread's number in the current parallel region (0 outside one): picks a thread's
// slice of a per-thread workspace.
inline int thread_id() {
#if defined(_OPENMP)
  return omp_get_thread_num();
#else
  return 0;
#endif
}

// Threads to use for `work` units with at least `min_per_thread` units each.
inline int threads_for(std::int64_t work, std::int64_t min_per_thread = kMinParallelWork) {
  const int t = threads();
  if (t <= 1 || work < 2 * min_per_thread) return 1;
  return int(std::min<std::int64_t>(t, work / min_per_thread));
}

// Splits [0, n) into `parts` contiguous ranges, ends rounded up to multiples of `align`
// (except the last), and calls f(part, begin, end) for each non-empty range, one per thread.
template <class F>
void for_parts(std::int64_t n, int parts, F&& f, std::int64_t align = 1) {
  if (parts <= 1 || n <= align) {
    if (n > 0) f(0, std::int64_t(0), n);
    return;
  }
  const std::int64_t per = ((n + parts - 1) / parts + align - 1) / align * align;
  HYBRID_OMP(omp parallel for schedule(static) num_threads(parts))
  for (int p = 0; p < parts; ++p) {
    const std::int64_t b = std::min(n, p * per), e = std::min(n, b + per);
    if (b < e) f(p, b, e);
  }
}

// As for_parts, calling f(begin, end).
template <class F>
void for_ranges(std::int64_t n, int parts, F&& f, std::int64_t align = 1) {
  for_parts(n, parts, [&](int, std::int64_t b, std::int64_t e) { f(b, e); }, align);
}

// Row-parallel: calls f(r0, r1) over row ranges of [0, rows) when rows * cols is large.
template <class F>
void for_rows(std::int64_t rows, std::int64_t cols, F&& f) {
  for_ranges(rows, threads_for(rows * cols), std::forward<F>(f));
}

// Row-parallel with a reduction: f(r0, r1, acc, part) handles rows [r0, r1) (range number
// `part`) and adds its share of an n-entry sum (a parameter gradient) into acc. One range:
// acc is `out` itself. Several: each range gets a zeroed buffer, added into `out`
// afterwards in range order, so a given thread count always gives the same result.
// out == nullptr: acc is nullptr too. scratch: reduce_scratch(rows, cols, n) values, or
// nullptr to allocate them here.
inline std::int64_t reduce_parts(std::int64_t rows, std::int64_t cols) { return threads_for(rows * cols); }
inline std::int64_t reduce_scratch(std::int64_t rows, std::int64_t cols, std::int64_t n) {
  const std::int64_t parts = reduce_parts(rows, cols);
  return parts > 1 ? parts * n : 0;
}
template <class S, class F>
void for_rows_reduce(std::int64_t rows, std::int64_t cols, S* out, std::int64_t n, F&& f,
                     S* scratch = nullptr) {
  const int parts = int(reduce_parts(rows, cols));
  if (parts <= 1 || !out) {
    for_parts(rows, parts, [&](int p, std::int64_t b, std::int64_t e) { f(b, e, out, p); });
    return;
  }
  Buffer<S> own;
  scratch = scratch_or_own(scratch, parts * n, own);
  std::fill(scratch, scratch + parts * n, S(0));
  for_parts(rows, parts, [&](int p, std::int64_t b, std::int64_t e) { f(b, e, scratch + p * n, p); });
  for (int p = 0; p < parts; ++p)
    for (std::int64_t i = 0; i < n; ++i) out[i] += scratch[p * n + i];
}

}  // namespace hybrid::par
