// A model context on one GPU: the stream every op of the context runs on, a cuBLASLt handle
// with its workspace, the GEMM mode, and a device arena for op workspaces. One per thread of
// work (a model's forward, a decode loop); contexts share nothing, so two run concurrently.
// Plain C++ over the CUDA runtime and cuBLASLt APIs.
#pragma once
#include <cublasLt.h>

#include <cstddef>
#include <utility>

#include "runtime.hpp"

namespace hybrid::cuda {

inline void check_blas(cublasStatus_t s, const char* call, const char* file, int line,
                       const std::string& context = {}) {
  if (s == CUBLAS_STATUS_SUCCESS) return;
  fail("cuBLASLt: ", call, " failed at ", file, ":", line, " (", cublasLtGetStatusName(s), ": ",
       cublasLtGetStatusString(s), ")", context.empty() ? "" : ": ", context);
}

}  // namespace hybrid::cuda

#define HYBRID_CUBLAS_CHECK(call, ...)                                                          \
  do {                                                                                          \
    const cublasStatus_t hybrid_blas_s_ = (call);                                               \
    if (hybrid_blas_s_ != CUBLAS_STATUS_SUCCESS)                                                \
      ::hybrid::cuda::check_blas(hybrid_blas_s_, #call, __FILE__, __LINE__,                     \
                                 ::hybrid::detail::concat_str(std::string() __VA_OPT__(, ) __VA_ARGS__)); \
  } while (0)

namespace hybrid::cuda {

// How a float GEMM runs. Exact: float inputs, float products and sums, no TF32 (what the
// tests compare against the CPU). Bf16: inputs rounded to bf16, float accumulation (the
// inference mode; weights stored in bf16 skip the rounding of W).
enum class GemmMode { Exact, Bf16 };

struct ContextOptions {
  int device = 0;
  std::size_t arena_bytes = std::size_t(256) << 20;        // op workspaces (chunked SSD states, bf16 copies)
  std::size_t gemm_workspace_bytes = std::size_t(32) << 20;  // cuBLASLt's (H100 guidance: 32 MiB)
  GemmMode gemm = GemmMode::Exact;
};

class Context {
 public:
  explicit Context(const ContextOptions& o = {}) : opt_(o) {
    const int n = device_count();
    HYBRID_CHECK(o.device >= 0 && o.device < n, "cuda::Context: device ", o.device, " asked, ", n,
                 " CUDA device(s) visible");
    HYBRID_CUDA_CHECK(cudaSetDevice(o.device), "device ", o.device);
    stream_ = Stream();
    arena_ = DeviceArena(o.arena_bytes);
    gemm_ws_ = Buffer<unsigned char, Cuda>(Index(o.gemm_workspace_bytes));
    HYBRID_CUBLAS_CHECK(cublasLtCreate(&lt_));
  }
  Context(const Context&) = delete;
  Context& operator=(const Context&) = delete;
  ~Context() {
    if (lt_) (void)cublasLtDestroy(lt_);
  }

  const Stream& stream() const { return stream_; }
  cudaStream_t raw_stream() const { return stream_.get(); }
  cublasLtHandle_t blas() const { return lt_; }
  void* gemm_workspace() const { return const_cast<unsigned char*>(gemm_ws_.data()); }
  std::size_t gemm_workspace_bytes() const { return std::size_t(gemm_ws_.size()); }
  GemmMode gemm_mode() const { return opt_.gemm; }
  void set_gemm_mode(GemmMode m) { opt_.gemm = m; }
  DeviceArena& arena() const { return arena_; }
  int device() const { return opt_.device; }
  // Makes the context's device the calling thread's current one: a thread other than the
  // one that made the context calls this before its first launch.
  void activate() const { HYBRID_CUDA_CHECK(cudaSetDevice(opt_.device), "device ", opt_.device); }
  void sync() const { stream_.sync(); }

 private:
  ContextOptions opt_;
  Stream stream_ = Stream::null();
  mutable DeviceArena arena_;
  Buffer<unsigned char, Cuda> gemm_ws_;
  cublasLtHandle_t lt_ = nullptr;
};

// The scratch an op asked for, from the context's arena, released when the scope ends.
class Scratch {
 public:
  explicit Scratch(const Context& c) : c_(c), a_(c.arena()), m_(a_.mark()) {}
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  ~Scratch() { a_.release(m_); }
  template <class T>
  T* get(std::size_t n) { return a_.alloc_array<T>(n > 0 ? n : 1); }
  // n host values copied into fresh scratch on the context's stream (token ids, positions,
  // per-call tables); `what` names them in an error.
  template <class T>
  T* upload(const T* host, std::size_t n, const char* what) {
    T* d = get<T>(n);
    if (n)
      HYBRID_CUDA_CHECK(cudaMemcpyAsync(d, host, n * sizeof(T), cudaMemcpyHostToDevice, c_.raw_stream()), n, " ",
                        what);
    return d;
  }

 private:
  const Context& c_;
  DeviceArena& a_;
  DeviceArena::Mark m_;
};

}  // namespace hybrid::cuda
