// Host/device annotation so that shape and index logic compiles with and without nvcc.
#pragma once

#if defined(__CUDACC__)
#define HYBRID_HOST_DEVICE __host__ __device__
#else
#define HYBRID_HOST_DEVICE
#endif

namespace hybrid {
// Device tags: the CPU (Eigen) path is the specification; CUDA kernels in kernels/ are
// selected by the Cuda tag and tested against it.
struct Cpu {};
struct Cuda {};
}  // namespace hybrid
