// An owning, 64-byte-aligned, uninitialised array on a device: the one allocation behind a
// parameter store, a gradient store or an arena block. The host version is here; the CUDA
// one (cudaMalloc) is a specialisation in kernels/.
#pragma once
#include <sys/mman.h>

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
    if (n > 0) {
      // Large buffers (weights, gradients, arena blocks) start on a 2 MiB boundary and ask for
      // transparent huge pages: a decode step streams every weight once, and with 4 KiB pages
      // that is one TLB miss per page.
      const bool huge = std::size_t(n) * sizeof(S) >= kHugeBytes;
      const std::size_t align = huge ? kHugePage : 64;
      const std::size_t bytes = (std::size_t(n) * sizeof(S) + align - 1) / align * align;
      p_.reset(static_cast<S*>(std::aligned_alloc(align, bytes)));
      if (!p_) throw std::bad_alloc();
#ifdef MADV_HUGEPAGE
      if (huge) (void)::madvise(p_.get(), bytes, MADV_HUGEPAGE);  // advice only: failure is harmless
#endif
    }
  }
  Buffer(const Buffer& o) : Buffer(o.n_) {
    if (n_) std::memcpy(p_.get(), o.p_.get(), std::size_t(n_) * sizeof(S));
  }
  Buffer& operator=(const Buffer& o) {
    if (this != &o) *this = Buffer(o);
    return *this;
  }
  Buffer(Buffer&& o) noexcept : p_(std::move(o.p_)), n_(std::exchange(o.n_, 0)) {}
  Buffer& operator=(Buffer&& o) noexcept {
    p_ = std::move(o.p_);
    n_ = std::exchange(o.n_, 0);
    return *this;
  }

  S* data() { return p_.get(); }
  const S* data() const { return p_.get(); }
  Index size() const { return n_; }
  void zero() {
    if (n_) std::memset(static_cast<void*>(p_.get()), 0, std::size_t(n_) * sizeof(S));
  }

 private:
  struct Free {
    void operator()(S* p) const { std::free(p); }
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
