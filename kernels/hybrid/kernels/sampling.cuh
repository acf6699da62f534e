// Sampling on the device, as infer/sampling.hpp's Sampler does it on the host:
//  - greedy: the argmax of each row, the lowest id on ties (one block per row);
//  - temperature -> top-k -> top-p -> one draw: logits scaled in double, candidates (allowed
//    ids with a finite logit) sorted by (logit descending, id ascending) with CUB's stable
//    segmented radix sort when top-k cuts or top-p applies, else taken in id order (as the
//    CPU does), weights exp(l - max), the nucleus the smallest sorted prefix whose mass
//    reaches top_p, and the draw the first candidate whose running mass passes u * total,
//    u from the caller's hybrid::Rng (one per row), so a seed gives the CPU's stream.
// Sums run in parallel in double: a draw can differ from the CPU's only when u * total
// falls within rounding (~1e-16 relative) of a boundary. A NaN or +inf logit, or a row with
// nothing to pick, is reported on the host naming the row and the id. nvcc only.
#pragma once
#include <cub/block/block_reduce.cuh>
#include <cub/block/block_scan.cuh>
#include <cub/device/device_segmented_radix_sort.cuh>
#include <cuda/functional>

#include <climits>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "common.cuh"

namespace hybrid::kernels {

// out[r] = the id, or -1 when nothing can be picked; bad[r] = the first NaN / +inf id + 1, or 0.
template <class S>
__global__ void greedy_kernel(ops::DCView<S> logits, const std::uint8_t* allowed, Index n_allowed, int* out,
                              long long* bad) {
  __shared__ S best_v[kThreads];
  __shared__ int best_i[kThreads];
  __shared__ long long bad_i[kThreads];
  const Index r = blockIdx.x, V = logits.cols;
  const S* row = logits.row_ptr(r);
  S bv = -S(INFINITY);
  int bi = -1;
  long long first_bad = 0;
  for (Index i = threadIdx.x; i < V; i += blockDim.x) {
    const S v = row[i];
    if (isnan(v) || v == S(INFINITY)) {
      if (first_bad == 0) first_bad = i + 1;
      continue;
    }
    const bool ok = allowed == nullptr || (i < n_allowed && allowed[i] != 0);
    if (ok && v > -S(INFINITY) && (bi < 0 || v > bv)) bv = v, bi = int(i);  // ids ascend per thread
  }
  best_v[threadIdx.x] = bv;
  best_i[threadIdx.x] = bi;
  bad_i[threadIdx.x] = first_bad;
  __syncthreads();
  for (int s = blockDim.x / 2; s > 0; s >>= 1) {
    if (int(threadIdx.x) < s) {
      const S ov = best_v[threadIdx.x + s];
      const int oi = best_i[threadIdx.x + s];
      const int mi = best_i[threadIdx.x];
      if (oi >= 0 && (mi < 0 || ov > best_v[threadIdx.x] || (ov == best_v[threadIdx.x] && oi < mi)))
        best_v[threadIdx.x] = ov, best_i[threadIdx.x] = oi;
      const long long ob = bad_i[threadIdx.x + s], mb = bad_i[threadIdx.x];
      if (ob != 0 && (mb == 0 || ob < mb)) bad_i[threadIdx.x] = ob;
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    out[r] = best_i[0];
    bad[r] = bad_i[0];
  }
}

inline constexpr int kSampleThreads = 512;

// keys[r, i] = logit * inv_t for candidates (allowed, finite), -inf otherwise (-0 as +0, so
// the radix order ties it with +0 as the CPU comparison does); vals = i; count[r] = the
// candidates; bad[r] = first NaN / +inf id + 1 (atomicMin over ids + 1; ~0 = none).
template <class S>
__global__ void sample_prep_kernel(ops::DCView<S> logits, double inv_t, const std::uint8_t* allowed, Index n_allowed,
                                   double* keys, int* vals, int* count, unsigned long long* bad) {
  const Index R = logits.rows, V = logits.cols, n = R * V;
  for (Index e = Index(blockIdx.x) * blockDim.x + threadIdx.x; e < n; e += Index(gridDim.x) * blockDim.x) {
    const Index r = e / V, i = e % V;
    const S v = logits(r, i);
    double key = -INFINITY;
    if (isnan(v) || v == S(INFINITY)) {
      atomicMin(bad + r, static_cast<unsigned long long>(i + 1));
    } else if ((allowed == nullptr || (i < n_allowed && allowed[i] != 0)) && v > -S(INFINITY)) {
      key = double(v) * inv_t;
      if (key == 0) key = 0;
      atomicAdd(count + r, 1);
    }
    keys[e] = key;
    vals[e] = int(i);
  }
}

// One block per row. Candidate j of the row (in sorted order or id order) has key kj and id;
// finds the id drawn by u[r] as the CPU sampler does. (A template, as every kernel here, so
// that a program including this file beside the library links.)
template <int Threads = kSampleThreads>
__global__ void sample_draw_kernel(Index V, int top_k, double top_p, const double* keys_id, const double* keys_sorted,
                                   const int* ids_sorted, const int* count, const double* u, int* out) {
  using Reduce = cub::BlockReduce<double, Threads>;
  using ReduceI = cub::BlockReduce<long long, Threads>;
  using Scan = cub::BlockScan<double, Threads>;
  __shared__ union {
    typename Reduce::TempStorage reduce;
    typename ReduceI::TempStorage reduce_i;
    typename Scan::TempStorage scan;
  } tmp;
  __shared__ double s_mx;
  __shared__ long long s_found, s_last;
  const Index r = blockIdx.x;
  const long long ncand = count[r];
  if (ncand == 0) {  // reported on the host
    if (threadIdx.x == 0) out[r] = -1;
    return;
  }
  const bool cut = top_k > 0 && top_k < ncand;
  const bool sorted = cut || top_p < 1;
  const long long n = sorted ? (cut ? top_k : ncand) : V;  // id order walks every id, weight 0 if excluded
  const double* key = sorted ? keys_sorted + r * V : keys_id + r * V;
  // max of the candidates' keys (the first sorted one), and the last candidate's position
  double mx = -INFINITY;
  long long last = -1;
  for (long long j = threadIdx.x; j < n; j += blockDim.x)
    if (key[j] > -INFINITY) {
      mx = key[j] > mx ? key[j] : mx;
      last = j > last ? j : last;
    }
  mx = Reduce(tmp.reduce).Reduce(mx, ::cuda::maximum<>{});
  if (threadIdx.x == 0) s_mx = mx;
  __syncthreads();
  last = ReduceI(tmp.reduce_i).Reduce(last, ::cuda::maximum<>{});
  if (threadIdx.x == 0) s_last = last;
  __syncthreads();
  mx = s_mx;
  last = s_last;
  auto weight = [&](long long j) { return j < n && key[j] > -INFINITY ? exp(key[j] - mx) : 0.0; };
  // The mass of [0, end), summed chunk by chunk as first_reaching sums it, so that a draw
  // u * total with u < 1 always lands inside.
  auto mass = [&](long long end) -> double {
    double run = 0;
    for (long long j0 = 0; j0 < end; j0 += blockDim.x) {
      const long long j = j0 + threadIdx.x;
      double inc, agg;
      Scan(tmp.scan).InclusiveSum(j < end ? weight(j) : 0.0, inc, agg);
      run += agg;
      __syncthreads();
    }
    return run;
  };
  // The first position whose running mass reaches `target` (>= when ge, > otherwise).
  auto first_reaching = [&](double target, bool ge) -> long long {
    double run = 0;
    for (long long j0 = 0; j0 < n; j0 += blockDim.x) {
      const long long j = j0 + threadIdx.x;
      double inc, agg;
      Scan(tmp.scan).InclusiveSum(weight(j), inc, agg);
      const double cum = run + inc;
      long long hit = (j < n && (ge ? cum >= target : target < cum) && weight(j) > 0) ? j : LLONG_MAX;
      __syncthreads();
      hit = ReduceI(tmp.reduce_i).Reduce(hit, ::cuda::minimum<>{});
      if (threadIdx.x == 0) s_found = hit;
      __syncthreads();
      if (s_found != LLONG_MAX) return s_found;
      run += agg;
      __syncthreads();
    }
    return -1;
  };
  long long keep_end = n;  // candidates [0, keep_end)
  double total = mass(n);
  if (top_p < 1) {
    const long long k = first_reaching(top_p * total, true);
    keep_end = k < 0 ? n : k + 1;
    total = mass(keep_end);  // the nucleus' own mass
    if (keep_end - 1 < last) last = keep_end - 1;
  }
  const long long j = first_reaching(u[r] * total, false);
  const long long pick = (j >= 0 && j < keep_end) ? j : last;  // u rounded up to the total
  if (threadIdx.x == 0) out[r] = pick < 0 ? -1 : (sorted ? ids_sorted[r * V + pick] : int(pick));
}

template <class I>
__global__ void row_offsets_kernel(I* off, I R, I V) {
  for (I r = blockIdx.x * blockDim.x + threadIdx.x; r <= R; r += gridDim.x * blockDim.x) off[r] = r * V;
}

}  // namespace hybrid::kernels

namespace hybrid::ops {

template <class S>
void greedy_rows(const Context& ctx, DCView<S> logits, const std::uint8_t* allowed, Index n_allowed, int* ids) {
  const Index R = logits.rows, V = logits.cols;
  HYBRID_CHECK(V > 0, "sampling: the logits row is empty");
  HYBRID_CHECK(V <= Index(0x7fffffff), "sampling: a vocabulary of ", V, " ids does not fit token ids (int)");
  if (R == 0) return;
  HYBRID_CHECK(R <= Index(0x7fffffff), "greedy_rows: ", R, " rows exceed the grid");
  cuda::Scratch sc(ctx);
  int* dout = sc.get<int>(std::size_t(R));
  long long* dbad = sc.get<long long>(std::size_t(R));
  kernels::greedy_kernel<S><<<unsigned(R), kernels::kThreads, 0, ctx.raw_stream()>>>(logits, allowed, n_allowed,
                                                                                      dout, dbad);
  HYBRID_CUDA_LAUNCHED("greedy_kernel", "(", R, ", ", V, ")");
  std::vector<long long> bad(static_cast<std::size_t>(R));
  HYBRID_CUDA_CHECK(cudaMemcpyAsync(ids, dout, std::size_t(R) * sizeof(int), cudaMemcpyDeviceToHost, ctx.raw_stream()),
                    R, " ids");
  HYBRID_CUDA_CHECK(cudaMemcpyAsync(bad.data(), dbad, std::size_t(R) * sizeof(long long), cudaMemcpyDeviceToHost,
                                    ctx.raw_stream()),
                    R, " flags");
  ctx.sync();
  for (Index r = 0; r < R; ++r) {
    HYBRID_CHECK(bad[r] == 0, "sampling: the logit at position ", bad[r] - 1, " (token id ", bad[r] - 1, ") of row ",
                 r, " is NaN or +inf; the model produced non-finite logits");
    HYBRID_CHECK(ids[r] >= 0, "sampling: nothing can be sampled in row ", r,
                 ": every allowed token id has logit -inf, or none is allowed");
  }
}

template <class S>
void sample_rows(const Context& ctx, DCView<S> logits, float temperature, int top_k, float top_p,
                 const std::uint8_t* allowed, Index n_allowed, const double* u, int* ids) {
  // SamplingParams::validate's rules (infer/sampling.hpp), repetition penalty aside.
  HYBRID_CHECK(std::isfinite(temperature) && temperature >= 0,
               "sampling: temperature must be a finite value >= 0 (0 = greedy), got ", temperature);
  HYBRID_CHECK(top_k >= 0, "sampling: top_k must be >= 0 (0 = no top-k), got ", top_k);
  HYBRID_CHECK(top_p > 0 && top_p <= 1, "sampling: top_p must be in (0, 1] (1 = no nucleus filtering), got ", top_p);
  if (temperature == 0) return greedy_rows<S>(ctx, logits, allowed, n_allowed, ids);
  const Index R = logits.rows, V = logits.cols;
  HYBRID_CHECK(V > 0, "sampling: the logits row is empty");
  if (R == 0) return;
  HYBRID_CHECK(R * V < Index(0x7fffffff), "sampling (CUDA): ", R, " rows of ", V,
               " logits exceed the sort's 2^31 - 1 items");
  for (Index r = 0; r < R; ++r)
    HYBRID_CHECK(u[r] >= 0 && u[r] < 1, "sampling: the uniform draw of row ", r, " is ", u[r], ", expected [0, 1)");
  const cudaStream_t st = ctx.raw_stream();
  const auto shapes = [&] { return hybrid::detail::concat_str("(", R, ", ", V, ")"); };
  cuda::Scratch sc(ctx);
  const std::size_t n = std::size_t(R * V);
  double* keys = sc.get<double>(n);
  const bool sort = top_k > 0 || top_p < 1;  // rows decide on the device whether they use the order
  double* keys_sorted = sort ? sc.get<double>(n) : nullptr;
  int* vals = sc.get<int>(n);
  int* vals_sorted = sort ? sc.get<int>(n) : nullptr;
  int* count = sc.get<int>(std::size_t(R));
  unsigned long long* bad = sc.get<unsigned long long>(std::size_t(R));
  int* off = sc.get<int>(std::size_t(R + 1));
  const double* du = sc.upload(u, std::size_t(R), "uniform draws");
  int* dout = sc.get<int>(std::size_t(R));
  HYBRID_CUDA_CHECK(cudaMemsetAsync(count, 0, std::size_t(R) * sizeof(int), st), shapes());
  HYBRID_CUDA_CHECK(cudaMemsetAsync(bad, 0xff, std::size_t(R) * sizeof(unsigned long long), st), shapes());
  kernels::sample_prep_kernel<S><<<kernels::grid_for(R * V), kernels::kThreads, 0, st>>>(
      logits, 1.0 / double(temperature), allowed, n_allowed, keys, vals, count, bad);
  HYBRID_CUDA_LAUNCHED("sample_prep_kernel", shapes());
  kernels::row_offsets_kernel<int><<<1, 256, 0, st>>>(off, int(R), int(V));
  HYBRID_CUDA_LAUNCHED("row_offsets_kernel", shapes());
  if (sort) {
    std::size_t temp = 0;
    HYBRID_CUDA_CHECK(cub::DeviceSegmentedRadixSort::SortPairsDescending(nullptr, temp, keys, keys_sorted, vals,
                                                                         vals_sorted, int(n), int(R), off, off + 1,
                                                                         0, 64, st),
                      "sizing the sort of ", shapes());
    void* tmp = sc.get<unsigned char>(temp);
    HYBRID_CUDA_CHECK(cub::DeviceSegmentedRadixSort::SortPairsDescending(tmp, temp, keys, keys_sorted, vals,
                                                                         vals_sorted, int(n), int(R), off, off + 1,
                                                                         0, 64, st),
                      "sorting ", shapes());
  }
  kernels::sample_draw_kernel<><<<unsigned(R), kernels::kSampleThreads, 0, st>>>(V, top_k, double(top_p), keys,
                                                                              keys_sorted, vals_sorted, count, du, dout);
  HYBRID_CUDA_LAUNCHED("sample_draw_kernel", shapes());
  std::vector<unsigned long long> hbad(static_cast<std::size_t>(R));
  HYBRID_CUDA_CHECK(cudaMemcpyAsync(ids, dout, std::size_t(R) * sizeof(int), cudaMemcpyDeviceToHost, st), shapes());
  HYBRID_CUDA_CHECK(cudaMemcpyAsync(hbad.data(), bad, std::size_t(R) * sizeof(unsigned long long),
                                    cudaMemcpyDeviceToHost, st),
                    shapes());
  ctx.sync();
  for (Index r = 0; r < R; ++r) {
    HYBRID_CHECK(hbad[r] == ~0ull, "sampling: the logit at position ", hbad[r] - 1, " (token id ", hbad[r] - 1,
                 ") of row ", r, " is NaN or +inf; the model produced non-finite logits");
    HYBRID_CHECK(ids[r] >= 0, "sampling: nothing can be sampled in row ", r,
                 ": every allowed token id has logit -inf, or none is allowed");
  }
}

}  // namespace hybrid::ops
