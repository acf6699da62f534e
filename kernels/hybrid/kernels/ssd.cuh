// CUDA twin of ops/ssd.hpp's chunked scan (forward), in the four passes of the SSD
// algorithm (REFERENCE.md §1), with the chunk's log-decay a_t = dt_t A_h summed within the
// chunk (cum_t, ending at the chunk's last token):
//   1. cumsum:  cum[c, h, t]                                    one thread per (chunk, head)
//   2. state:   S_c[p, n] = sum_s exp(cum_last - cum_s) dt_s x_s[p] B_s[n]     per (c, h, p, n)
//   3. pass:    the state entering each chunk, S_in(c+1) = exp(cum_last(c)) S_in(c) + S_c,
//               sequential over chunks, parallel over (h, p, n); the final state out
//   4. scan:    y_t = sum_{s<=t} exp(cum_t - cum_s) (C_t . B_s) dt_s x_s
//                     + exp(cum_t) C_t . S_in(c) + D x_t                       per (c, h, t-tile)
// States and sums in the scalar type (float states for float models), any T (the last
// chunk is shorter), any G dividing H, 64-bit offsets throughout. Workspace:
// ssd_chunked_cuda_scratch(d, Q) values from the context's arena. nvcc only.
#pragma once
#include "common.cuh"

namespace hybrid::kernels {

inline constexpr int kSsdRowsPerBlock = 16;  // query rows t of a chunk per scan block
inline constexpr int kSsdMaxChunk = 256;

struct SsdGeom {
  Index T, nc;
  int H, P, N, G, Q, rep;  // rep = H / G
  Index ldx, ldbc;
  HYBRID_HOST_DEVICE Index chunk_len(Index c) const { return (c + 1) * Q <= T ? Q : T - c * Q; }
};

template <class S>
__global__ void ssd_cumsum_kernel(SsdGeom g, const S* dt, const S* A, S* cum) {
  const Index c = blockIdx.x;
  const Index L = g.chunk_len(c), t0 = c * g.Q;
  for (int h = threadIdx.x; h < g.H; h += blockDim.x) {
    S run = 0;
    S* out = cum + (c * g.H + h) * g.Q;
    for (Index t = 0; t < L; ++t) {
      run += dt[(t0 + t) * g.H + h] * A[h];
      out[t] = run;
    }
  }
}

// grid (nc, H, ceil(P*N / blockDim)); shared: Q weights exp(cum_last - cum_s) dt_s.
template <class S>
__global__ void ssd_state_kernel(SsdGeom g, const S* x, const S* dt, const S* B, const S* cum, S* states) {
  extern __shared__ unsigned char smem_raw[];
  S* wgt = reinterpret_cast<S*>(smem_raw);
  const Index c = blockIdx.x;
  const int h = blockIdx.y, grp = h / g.rep;
  const Index L = g.chunk_len(c), t0 = c * g.Q;
  const S* cc = cum + (c * g.H + h) * g.Q;
  for (Index s = threadIdx.x; s < L; s += blockDim.x) wgt[s] = dev_exp(cc[L - 1] - cc[s]) * dt[(t0 + s) * g.H + h];
  __syncthreads();
  const Index idx = Index(blockIdx.z) * blockDim.x + threadIdx.x;
  if (idx >= Index(g.P) * g.N) return;
  const int p = int(idx / g.N), n = int(idx % g.N);
  const S* xs = x + t0 * g.ldx + Index(h) * g.P + p;
  const S* bs = B + t0 * g.ldbc + Index(grp) * g.N + n;
  S acc = 0;
  for (Index s = 0; s < L; ++s) acc += wgt[s] * xs[s * g.ldx] * bs[s * g.ldbc];
  states[((c * g.H + h) * g.P + p) * g.N + n] = acc;
}

// grid (H, ceil(P*N / blockDim)). states[c] becomes the state entering chunk c.
template <class S>
__global__ void ssd_pass_kernel(SsdGeom g, const S* cum, S* states, const S* state_in, S* state_out) {
  const Index idx = Index(blockIdx.y) * blockDim.x + threadIdx.x, PN = Index(g.P) * g.N;
  if (idx >= PN) return;
  const int h = blockIdx.x;
  S s = state_in ? state_in[h * PN + idx] : S(0);
  for (Index c = 0; c < g.nc; ++c) {
    S* st = states + (c * g.H + h) * PN + idx;
    const S local = *st;
    *st = s;
    s = dev_exp(cum[(c * g.H + h) * g.Q + g.chunk_len(c) - 1]) * s + local;
  }
  if (state_out) state_out[h * PN + idx] = s;
}

// grid (nc, H, ceil(Q / kSsdRowsPerBlock)); shared: scores (rows, Q), cum (Q), dt (Q).
template <class S>
__global__ void ssd_scan_kernel(SsdGeom g, const S* x, const S* dt, const S* B, const S* C, const S* D,
                                const S* cum, const S* states, S* y) {
  extern __shared__ unsigned char smem_raw[];
  S* score = reinterpret_cast<S*>(smem_raw);  // (kSsdRowsPerBlock, Q)
  S* cc = score + kSsdRowsPerBlock * g.Q;       // (Q)
  S* dd = cc + g.Q;                             // (Q)
  const Index c = blockIdx.x;
  const int h = blockIdx.y, grp = h / g.rep;
  const Index L = g.chunk_len(c), t0 = c * g.Q, r0 = Index(blockIdx.z) * kSsdRowsPerBlock;
  if (r0 >= L) return;  // the whole block: the last chunk is shorter
  const Index rows = L - r0 < kSsdRowsPerBlock ? L - r0 : kSsdRowsPerBlock;
  const S* cg = cum + (c * g.H + h) * g.Q;
  for (Index s = threadIdx.x; s < L; s += blockDim.x) {
    cc[s] = cg[s];
    dd[s] = dt[(t0 + s) * g.H + h];
  }
  __syncthreads();
  const Index goff = Index(grp) * g.N;
  // scores: exp(cum_t - cum_s) dt_s (C_t . B_s) for s <= t
  for (Index e = threadIdx.x; e < rows * L; e += blockDim.x) {
    const Index i = e / L, s = e % L, t = r0 + i;
    S v = 0;
    if (s <= t) {
      const S* ct = C + (t0 + t) * g.ldbc + goff;
      const S* bs = B + (t0 + s) * g.ldbc + goff;
      S dot = 0;
      for (int n = 0; n < g.N; ++n) dot += ct[n] * bs[n];
      v = dev_exp(cc[t] - cc[s]) * dd[s] * dot;
    }
    score[i * g.Q + s] = v;
  }
  __syncthreads();
  const S* st = states + (c * g.H + h) * Index(g.P) * g.N;  // the state entering the chunk, (P, N)
  const S Dh = D ? D[h] : S(0);
  for (Index e = threadIdx.x; e < rows * g.P; e += blockDim.x) {
    const Index i = e / g.P, t = r0 + i;
    const int p = int(e % g.P);
    const S* xcol = x + t0 * g.ldx + Index(h) * g.P + p;
    S acc = 0;
    for (Index s = 0; s <= t; ++s) acc += score[i * g.Q + s] * xcol[s * g.ldx];
    const S* ct = C + (t0 + t) * g.ldbc + goff;
    const S* sp = st + Index(p) * g.N;
    S inter = 0;
    for (int n = 0; n < g.N; ++n) inter += ct[n] * sp[n];
    acc += dev_exp(cc[t]) * inter + Dh * xcol[t * g.ldx];
    y[(t0 + t) * (Index(g.H) * g.P) + Index(h) * g.P + p] = acc;
  }
}

// The recurrence, for decode and other short calls: one warp per (head, p) keeps its state
// row S[p, :] in registers (lane l holds n = l, l + 32, ...; NU = ceil(N / 32)) across the T
// tokens: S = exp(dt A) S + dt x_p B, y_p = S . C + D x_p (a warp sum).
template <class S, int NU>
__global__ void ssd_recurrent_kernel(SsdGeom g, const S* x, const S* dt, const S* A, const S* B, const S* C,
                                     const S* D, const S* state_in, S* y, S* state_out) {
  const Index w = (Index(blockIdx.x) * blockDim.x + threadIdx.x) >> 5;
  if (w >= Index(g.H) * g.P) return;  // a whole warp
  const int lane = threadIdx.x & 31, h = int(w / g.P), p = int(w % g.P), grp = h / g.rep;
  const Index row = (Index(h) * g.P + p) * g.N;  // S[h, p, :] in (H, P, N)
  S st[NU];
#pragma unroll
  for (int u = 0; u < NU; ++u) {
    const int n = lane + 32 * u;
    st[u] = (state_in && n < g.N) ? state_in[row + n] : S(0);
  }
  const S Ah = A[h], Dh = D ? D[h] : S(0);
  for (Index t = 0; t < g.T; ++t) {
    const S dtt = dt[t * g.H + h], xp = x[t * g.ldx + Index(h) * g.P + p], e = dev_exp(dtt * Ah);
    const S* bt = B + t * g.ldbc + Index(grp) * g.N;
    const S* ct = C + t * g.ldbc + Index(grp) * g.N;
    S part = 0;
#pragma unroll
    for (int u = 0; u < NU; ++u) {
      const int n = lane + 32 * u;
      if (n < g.N) {
        st[u] = e * st[u] + dtt * xp * bt[n];
        part += st[u] * ct[n];
      }
    }
    part = warp_sum(part);
    if (lane == 0) y[t * (Index(g.H) * g.P) + Index(h) * g.P + p] = part + Dh * xp;
  }
  if (state_out) {
#pragma unroll
    for (int u = 0; u < NU; ++u) {
      const int n = lane + 32 * u;
      if (n < g.N) state_out[row + n] = st[u];
    }
  }
}

}  // namespace hybrid::kernels

namespace hybrid::ops {

// Values of S, plus the arena's alignment of its two pieces.
inline Index ssd_chunked_cuda_scratch(const SsdDims& d, int Q) {
  HYBRID_CHECK(Q >= 1, "ssd: chunk ", Q, " must be >= 1");
  const Index nc = (d.T + Q - 1) / Q;
  return nc * d.H * (Index(Q) + Index(d.P) * d.N) + 2 * 256;
}

template <class S>
void ssd_recurrent(const Context& ctx, const SsdDims& d, const SsdArgs<S>& a) {
  HYBRID_CHECK(d.H > 0 && d.P > 0 && d.N > 0 && d.G > 0 && d.H % d.G == 0, "ssd: (H, P, N, G) = (", d.H, ", ",
               d.P, ", ", d.N, ", ", d.G, "); expected positive sizes with G dividing H");
  HYBRID_CHECK(d.N <= 256, "ssd (CUDA): the recurrence keeps a state row in registers; N = ", d.N,
               " exceeds 256");
  HYBRID_CHECK(d.T >= 0 && (d.T == 0 || (a.y && a.x && a.dt && a.A && a.B && a.C)),
               "ssd: x, dt, A, B, C and y are required");
  HYBRID_CHECK(a.x_stride(d) >= Index(d.H) * d.P && a.bc_stride(d) >= Index(d.G) * d.N, "ssd: row strides (",
               a.x_stride(d), ", ", a.bc_stride(d), ") below the widths (", Index(d.H) * d.P, ", ",
               Index(d.G) * d.N, ")");
  const kernels::SsdGeom g{d.T, 1, d.H, d.P, d.N, d.G, 1, d.H / d.G, a.x_stride(d), a.bc_stride(d)};
  const Index warps = Index(d.H) * d.P;
  const unsigned blocks = unsigned((warps * 32 + kernels::kThreads - 1) / kernels::kThreads);
  const auto shapes = [&] { return hybrid::detail::concat_str("(T, H, P, N, G) = (", d.T, ", ", d.H, ", ", d.P, ", ", d.N, ", ",
                                                 d.G, ")"); };
  const cudaStream_t st = ctx.raw_stream();
  auto go = [&](auto kernel) {
    kernel<<<blocks, kernels::kThreads, 0, st>>>(g, a.x, a.dt, a.A, a.B, a.C, a.D, a.state_in, a.y, a.state_out);
    HYBRID_CUDA_LAUNCHED("ssd_recurrent_kernel", shapes());
  };
  const int nu = (d.N + 31) / 32;
  if (nu <= 1) go(kernels::ssd_recurrent_kernel<S, 1>);
  else if (nu <= 2) go(kernels::ssd_recurrent_kernel<S, 2>);
  else if (nu <= 4) go(kernels::ssd_recurrent_kernel<S, 4>);
  else go(kernels::ssd_recurrent_kernel<S, 8>);
}

template <class S>
void ssd_chunked(const Context& ctx, const SsdDims& d, int Q, const SsdArgs<S>& a) {
  HYBRID_CHECK(d.H > 0 && d.P > 0 && d.N > 0 && d.G > 0 && d.H % d.G == 0, "ssd: (H, P, N, G) = (", d.H, ", ",
               d.P, ", ", d.N, ", ", d.G, "); expected positive sizes with G dividing H");
  HYBRID_CHECK(Q >= 1 && Q <= kernels::kSsdMaxChunk, "ssd (CUDA): chunk ", Q, " outside [1, ",
               kernels::kSsdMaxChunk, "]");
  HYBRID_CHECK(d.T >= 0, "ssd: T = ", d.T);
  const Index PN = Index(d.P) * d.N;
  HYBRID_CHECK(d.T == 0 || (a.y && a.x && a.dt && a.A && a.B && a.C), "ssd: x, dt, A, B, C and y are required");
  HYBRID_CHECK(d.H <= 65535 && (PN + kernels::kThreads - 1) / kernels::kThreads <= 65535, "ssd (CUDA): H = ", d.H,
               " or P * N = ", PN, " exceeds the grid");
  HYBRID_CHECK(a.x_stride(d) >= Index(d.H) * d.P && a.bc_stride(d) >= Index(d.G) * d.N, "ssd: row strides (",
               a.x_stride(d), ", ", a.bc_stride(d), ") below the widths (", Index(d.H) * d.P, ", ",
               Index(d.G) * d.N, ")");
  const cudaStream_t st = ctx.raw_stream();
  if (d.T == 0) {  // no tokens: the state passes through
    if (a.state_out && a.state_out != a.state_in) {
      if (a.state_in)
        HYBRID_CUDA_CHECK(cudaMemcpyAsync(a.state_out, a.state_in, std::size_t(d.H * PN) * sizeof(S),
                                          cudaMemcpyDeviceToDevice, st), "ssd state (", d.H, ", ", d.P, ", ", d.N, ")");
      else
        HYBRID_CUDA_CHECK(cudaMemsetAsync(a.state_out, 0, std::size_t(d.H * PN) * sizeof(S), st), "ssd state");
    }
    return;
  }
  const kernels::SsdGeom g{d.T, (d.T + Q - 1) / Q, d.H, d.P, d.N, d.G, Q, d.H / d.G, a.x_stride(d), a.bc_stride(d)};
  HYBRID_CHECK(g.nc <= Index(0x7fffffff), "ssd: ", g.nc, " chunks exceed the grid");
  cuda::Scratch sc(ctx);
  S* cum = sc.get<S>(std::size_t(g.nc * d.H * Q));
  S* states = sc.get<S>(std::size_t(g.nc * d.H * PN));
  const auto shapes = [&] { return hybrid::detail::concat_str("(T, H, P, N, G) = (", d.T, ", ", d.H, ", ", d.P, ", ", d.N, ", ", d.G,
                                         "), Q ", Q); };
  const int th = kernels::kThreads;
  kernels::ssd_cumsum_kernel<<<unsigned(g.nc), th, 0, st>>>(g, a.dt, a.A, cum);
  HYBRID_CUDA_LAUNCHED("ssd_cumsum_kernel", shapes());
  const unsigned pn_blocks = unsigned((PN + th - 1) / th);
  kernels::ssd_state_kernel<<<dim3(unsigned(g.nc), unsigned(d.H), pn_blocks), th, Q * sizeof(S), st>>>(
      g, a.x, a.dt, a.B, cum, states);
  HYBRID_CUDA_LAUNCHED("ssd_state_kernel", shapes());
  kernels::ssd_pass_kernel<<<dim3(unsigned(d.H), pn_blocks), th, 0, st>>>(g, cum, states, a.state_in, a.state_out);
  HYBRID_CUDA_LAUNCHED("ssd_pass_kernel", shapes());
  const unsigned row_blocks = unsigned((Q + kernels::kSsdRowsPerBlock - 1) / kernels::kSsdRowsPerBlock);
  const std::size_t smem = std::size_t(kernels::kSsdRowsPerBlock + 2) * Q * sizeof(S);
  kernels::ssd_scan_kernel<<<dim3(unsigned(g.nc), unsigned(d.H), row_blocks), th, smem, st>>>(
      g, a.x, a.dt, a.B, a.C, a.D, cum, states, a.y);
  HYBRID_CUDA_LAUNCHED("ssd_scan_kernel", shapes());
}

}  // namespace hybrid::ops
