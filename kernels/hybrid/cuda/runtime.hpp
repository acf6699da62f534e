// The CUDA runtime as the library uses it: checked calls (an error names the call, where it
// was made and the shapes involved), a stream per model context, device buffers
// (Buffer<S, Cuda>), host <-> device copies of views, and a device arena for op workspaces.
// Plain C++ over the CUDA runtime API: host code compiled by the C++ compiler includes it,
// and so do the kernels compiled by nvcc. Nothing here launches a kernel.
#pragma once
#include <cuda_runtime_api.h>

#include <cstddef>
#include <string>
#include <utility>

#include "hybrid/core/buffer.hpp"
#include "hybrid/core/error.hpp"
#include "hybrid/core/view.hpp"

namespace hybrid::cuda {

// Throws hybrid::Error for a failed call: "CUDA: cudaMalloc(&p, bytes) failed at
// file:line (out of memory): <context>".
inline void check(cudaError_t e, const char* call, const char* file, int line,
                  const std::string& context = {}) {
  if (e == cudaSuccess) return;
  (void)cudaGetLastError();  // clear a sticky launch error so that the next call reports its own
  fail("CUDA: ", call, " failed at ", file, ":", line, " (", cudaGetErrorName(e), ": ",
       cudaGetErrorString(e), ")", context.empty() ? "" : ": ", context);
}

}  // namespace hybrid::cuda

// HYBRID_CUDA_CHECK(call, pieces...): the pieces (shapes, sizes) join the error message,
// which is built only when the call failed (decode makes many calls per token).
#define HYBRID_CUDA_CHECK(call, ...)                                                            \
  do {                                                                                          \
    const cudaError_t hybrid_cuda_e_ = (call);                                                  \
    if (hybrid_cuda_e_ != cudaSuccess)                                                          \
      ::hybrid::cuda::check(hybrid_cuda_e_, #call, __FILE__, __LINE__,                          \
                            ::hybrid::detail::concat_str(std::string() __VA_OPT__(, ) __VA_ARGS__)); \
  } while (0)

namespace hybrid::cuda {

// The number of CUDA devices this process can use; 0 when there is no driver or device
// (never throws: callers decide whether that is an error).
inline int device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    (void)cudaGetLastError();
    return 0;
  }
  return n;
}

// A stream: the one queue a model context's kernels, copies and GEMMs run on, in order.
// Owning (created non-blocking, destroyed with the object); Stream::null() is the legacy
// default stream, for callers that manage none.
class Stream {
 public:
  Stream() { HYBRID_CUDA_CHECK(cudaStreamCreateWithFlags(&s_, cudaStreamNonBlocking)); owned_ = true; }
  static Stream null() { return Stream(nullptr); }
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;
  Stream(Stream&& o) noexcept : s_(std::exchange(o.s_, nullptr)), owned_(std::exchange(o.owned_, false)) {}
  Stream& operator=(Stream&& o) noexcept {
    std::swap(s_, o.s_);
    std::swap(owned_, o.owned_);
    return *this;
  }
  ~Stream() {
    if (owned_ && s_) (void)cudaStreamDestroy(s_);
  }
  cudaStream_t get() const { return s_; }
  void sync() const { HYBRID_CUDA_CHECK(cudaStreamSynchronize(s_), "synchronising the stream"); }

 private:
  explicit Stream(std::nullptr_t) {}
  cudaStream_t s_ = nullptr;
  bool owned_ = false;
};

}  // namespace hybrid::cuda

namespace hybrid {

// Device memory: the one allocation behind a parameter store, a gradient store or a device
// arena, 256-byte aligned (cudaMalloc's guarantee). Uninitialised; zero() clears it.
template <class S>
class Buffer<S, Cuda> {
 public:
  Buffer() = default;
  explicit Buffer(Index n) : n_(n) {
    HYBRID_CHECK(n >= 0, "Buffer<Cuda>: negative size ", n);
    if (n > 0) {
      void* p = nullptr;
      HYBRID_CUDA_CHECK(cudaMalloc(&p, std::size_t(n) * sizeof(S)), n, " values of ", sizeof(S),
                        " bytes");
      p_ = static_cast<S*>(p);
    }
  }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  Buffer(Buffer&& o) noexcept : p_(std::exchange(o.p_, nullptr)), n_(std::exchange(o.n_, 0)) {}
  Buffer& operator=(Buffer&& o) noexcept {
    std::swap(p_, o.p_);
    std::swap(n_, o.n_);
    return *this;
  }
  ~Buffer() {
    if (p_) (void)cudaFree(p_);
  }
  S* data() { return p_; }
  const S* data() const { return p_; }
  Index size() const { return n_; }
  View<S, Cuda> view(Index rows, Index cols) {
    HYBRID_CHECK(rows * cols <= n_, "Buffer<Cuda>: a (", rows, ", ", cols, ") view of ", n_, " values");
    return View<S, Cuda>(p_, rows, cols);
  }
  // On the stream the buffer's users run on (an unordered default stream would race them).
  void zero(cudaStream_t s) {
    if (n_) HYBRID_CUDA_CHECK(cudaMemsetAsync(p_, 0, std::size_t(n_) * sizeof(S), s), n_, " values");
  }

 private:
  S* p_ = nullptr;
  Index n_ = 0;
};

}  // namespace hybrid

namespace hybrid::cuda {

namespace detail {
// dst <- src, same shape, either side strided, on `s`: one run when both are contiguous (no
// pitch limit; 2D copies cap the pitch near 2 GiB), else one 2D copy.
template <class S>
void copy_view(S* dst, Index dld, const S* src, Index sld, Index rows, Index cols, cudaMemcpyKind kind,
               const Stream& s) {
  if (rows <= 1 || (dld == cols && sld == cols))
    HYBRID_CUDA_CHECK(cudaMemcpyAsync(dst, src, std::size_t(rows * cols) * sizeof(S), kind, s.get()), "(", rows,
                      ", ", cols, ")");
  else
    HYBRID_CUDA_CHECK(cudaMemcpy2DAsync(dst, dld * sizeof(S), src, sld * sizeof(S), cols * sizeof(S), rows, kind,
                                        s.get()),
                      "(", rows, ", ", cols, ") source ld ", sld, ", destination ld ", dld);
}
}  // namespace detail

// Host view -> device view of the same shape (each may be strided), on `s`. The host
// memory must stay valid until the stream reaches the copy (pageable memory: the call
// returns once it is staged).
template <class S>
void upload(CView<S> src, View<S, Cuda> dst, const Stream& s) {
  HYBRID_CHECK(src.rows == dst.rows && src.cols == dst.cols, "upload: host (", src.rows, ", ",
               src.cols, ") to device (", dst.rows, ", ", dst.cols, "); expected the same shape");
  if (src.empty()) return;
  detail::copy_view(dst.data, dst.ld, src.data, src.ld, src.rows, src.cols, cudaMemcpyHostToDevice, s);
}

// Device view -> host view of the same shape; waits for the stream, so the host data is
// ready on return.
template <class S>
void download(View<const S, Cuda> src, View<S> dst, const Stream& s) {
  HYBRID_CHECK(src.rows == dst.rows && src.cols == dst.cols, "download: device (", src.rows, ", ",
               src.cols, ") to host (", dst.rows, ", ", dst.cols, "); expected the same shape");
  if (src.empty()) return;
  detail::copy_view(dst.data, dst.ld, src.data, src.ld, src.rows, src.cols, cudaMemcpyDeviceToHost, s);
  s.sync();
}

// A bump arena in one device allocation reserved up front: op workspaces and a forward's
// activations come from it, mark()/release() scope them, and nothing is allocated after the
// reservation (what a captured decode graph needs). Asking for more than is reserved is an
// error naming both sizes, never a silent reallocation under live views.
class DeviceArena {
 public:
  DeviceArena() = default;
  explicit DeviceArena(std::size_t bytes) : buf_(Index(bytes)) {}
  void* alloc(std::size_t bytes, std::size_t align = 256) {
    const std::size_t off = (used_ + align - 1) / align * align;
    HYBRID_CHECK(off + bytes <= std::size_t(buf_.size()), "DeviceArena: ", bytes, " bytes asked with ",
                 used_, " of ", buf_.size(), " in use; reserve a larger arena");
    used_ = off + bytes;
    if (used_ > high_water_) high_water_ = used_;
    return buf_.data() + off;
  }
  template <class T>
  T* alloc_array(std::size_t n) {
    return static_cast<T*>(alloc(n * sizeof(T), alignof(T) > 256 ? alignof(T) : 256));
  }
  using Mark = std::size_t;
  Mark mark() const { return used_; }
  void release(Mark m) { used_ = m; }
  void rewind() { used_ = 0; }
  std::size_t used() const { return used_; }
  std::size_t high_water() const { return high_water_; }
  std::size_t reserved() const { return std::size_t(buf_.size()); }

 private:
  Buffer<unsigned char, Cuda> buf_;
  std::size_t used_ = 0, high_water_ = 0;
};

}  // namespace hybrid::cuda
