// An owning, 64-byte-aligned, uninitialised array on a device: the one allocation behind a
// parameter store, a gradient store or an arena block. The host version is here; the CUDA
// one (cudaMalloc) is a specialisation in kernels/.
#pragma once
#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>
#include <utility>

#include "device.hpp"
#include "index.hpp"

namespace hybrid {

template <class S, class Dev = Cpu>
class Buffer;

template <class S>
class Buffer<S, Cpu> {
 public:
  static constexpr std::size_t kHugePage = std::size_t(2) << 20;
  static constexpr std::size_t kHugeBytes = std::size_t(8) << 20;
  Buffer() = default;
  explicit Buffer(Index n) : n_(n) {
    if (n <= 0) return;
    const std::size_t want = std::size_t(n) * sizeof(S);
    if (want >= kHugeBytes) {
      map(want);
      return;
    }
    p_.reset(static_cast<S*>(std::aligned_alloc(64, (want + 63) / 64 * 64)));
    if (!p_) throw std::bad_alloc();
  }
  Buffer(const Buffer& o) : Buffer(o.n_) {
    if (n_) std::memcpy(p_.get(), o.p_.get(), std::size_t(n_) * sizeof(S));
  }
  Buffer& operator=(const Buffer& o) {
    if (this != &o) *this = Buffer(o);
    return *this;
  }
  Buffer(Buffer&& o) noexcept : p_(std::move(o.p_)), n_(std::exchange(o.n_, 0)) {}  // the deleter moves too
  Buffer& operator=(Buffer&& o) noexcept {
    p_ = std::move(o.p_);
    n_ = std::exchange(o.n_, 0);
    return *this;
  }

  S* data() { return p_.get(); }
  const S* data() const { return p_.get(); }
  Index size() const { return n_; }
  // Whether the buffer is a mapping of its own (8 MiB and up): it starts as zero pages,
  // which cost no memory until written.
  bool mapped() const { return p_.get_deleter().mapped != 0; }
  void zero() {
    if (n_) std::memset(static_cast<void*>(p_.get()), 0, std::size_t(n_) * sizeof(S));
  }
  // Gives the memory pages lying wholly inside elements [begin, end) back to the system
  // (Linux: they read as zero afterwards and cost nothing until written again). The values
  // there are gone: the caller must never read them. Returns the bytes given back (0 where
  // the range spans no whole page, or off Linux, where the values stay as they were).
  std::size_t release(Index begin, Index end) {
    if (!p_ || begin >= end) return 0;
#if defined(__linux__) && defined(MADV_DONTNEED)
    const std::size_t page = std::size_t(::sysconf(_SC_PAGESIZE));
    const auto lo = reinterpret_cast<std::uintptr_t>(p_.get() + begin);
    const auto hi = reinterpret_cast<std::uintptr_t>(p_.get() + end);
    const std::uintptr_t a = (lo + page - 1) / page * page, b = hi / page * page;
    if (b <= a) return 0;
    if (::madvise(reinterpret_cast<void*>(a), b - a, MADV_DONTNEED) != 0) return 0;
    return b - a;
#else
    return 0;
#endif
  }

 private:
  // Large buffers (weights, gradients, arena blocks) are anonymous mappings on a 2 MiB
  // boundary with transparent huge pages asked for: a decode step streams every weight once,
  // and with 4 KiB pages that is one TLB miss per page.
  void map(std::size_t want) {
    const std::size_t bytes = (want + kHugePage - 1) / kHugePage * kHugePage;
    void* raw = ::mmap(nullptr, bytes + kHugePage, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (raw == MAP_FAILED) throw std::bad_alloc();
    const auto r = reinterpret_cast<std::uintptr_t>(raw);
    const std::uintptr_t a = (r + kHugePage - 1) / kHugePage * kHugePage;
    if (a > r) ::munmap(raw, a - r);  // the slop on either side of the aligned range
    if (r + kHugePage > a) ::munmap(reinterpret_cast<void*>(a + bytes), r + kHugePage - a);
#ifdef MADV_HUGEPAGE
    (void)::madvise(reinterpret_cast<void*>(a), bytes, MADV_HUGEPAGE);  // advice only: failure is harmless
#endif
    p_ = std::unique_ptr<S[], Free>(reinterpret_cast<S*>(a), Free{bytes});
  }
  struct Free {
    std::size_t mapped = 0;  // bytes of an own mapping, 0 for aligned_alloc memory
    void operator()(S* p) const {
      if (mapped) ::munmap(static_cast<void*>(p), mapped);
      else std::free(p);
    }
  };
  std::unique_ptr<S[], Free> p_;
  Index n_ = 0;
};

// The caller's scratch when it gave one, else `own` allocated to n values: ops take their
// workspace from the caller (a tape's arena) and allocate only for callers without one.
template <class S>
S* scratch_or_own(S* scratch, Index n, Buffer<S>& own) {
  if (scratch) return scratch;
  own = Buffer<S>(n > 0 ? n : 1);
  return own.data();
}

}  // namespace hybrid
