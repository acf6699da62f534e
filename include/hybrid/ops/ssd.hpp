// Mamba-2 selective state-space scan (SSD), forward (REFERENCE.md §1): the plain
// recurrence and the chunked form, which give the same y and final state.
//   S_t = exp(dt_t A) S_{t-1} + dt_t x_t ⊗ B_t      y_t = S_t · C_t + D x_t
// Raw pointers and dims, so that a CUDA twin can keep the same signature.
#pragma once
#include <algorithm>
#include <cmath>
#include <vector>

#if defined(__SSE__)
#include <xmmintrin.h>
#endif

#include "../config.hpp"
#include "../core/error.hpp"
#include "../core/buffer.hpp"
#include "../core/parallel.hpp"
#include "../core/tensor.hpp"
#include "ssd_dims.hpp"

#if defined(_OPENMP)
#define HYBRID_SSD_OMP(directive) _Pragma(#directive)
#else
#define HYBRID_SSD_OMP(directive)
#endif

namespace hybrid::ops {

// Calls with T <= kSsdShortT tokens run the recurrence on the state in place, (H, P, N),
// instead of transposing it in and out (see recurrent_short).
inline constexpr Index kSsdShortT = 8;

// Chunk length for the CPU (bench/bench_ssd, 2 threads, float, T = 1024). Where Auto picks
// the chunked scan (states > 48 KiB), e.g. (H, P, N) = (16, 64, 256): Q = 32 6.16 ms,
// 64 6.11, 128 6.80, 256 8.52. Golf (12, 64, 32) with chunked forced: Q = 32 1.07 ms,
// 64 1.22, 128 1.65, 256 2.64 (the recurrence: 0.57). Smaller chunks do fewer flops
// (2QP per token and head) at a lower GEMM efficiency; 64 is the best trade measured.
inline constexpr int kSsdDefaultChunk = 64;

// The chunk length the CPU scan runs: `requested` where a model forces one
// (Mamba2Spec::chunk > 0), the measured rule above where it leaves it to the device (0).
constexpr int ssd_chunk(int requested) { return requested > 0 ? requested : kSsdDefaultChunk; }

namespace ssd_detail {

template <class S>
using CStrided = Eigen::Map<const Mat<S>, 0, Eigen::OuterStride<>>;  // rows of a wider matrix
template <class S>
using Strided = Eigen::Map<Mat<S>, 0, Eigen::OuterStride<>>;
template <class S>
using ArrMap = Eigen::Map<Eigen::Array<S, Eigen::Dynamic, 1>>;
template <class S>  // for rows that start on a multiple of kPad in an aligned buffer
using AlignedArr = Eigen::Map<Eigen::Array<S, Eigen::Dynamic, 1>, Eigen::AlignedMax>;
template <class S>
using CAlignedArr = Eigen::Map<const Eigen::Array<S, Eigen::Dynamic, 1>, Eigen::AlignedMax>;

// Flushes denormals to zero on the calling thread while alive (x86 MXCSR FTZ|DAZ), then
// restores the caller's mode. Decays exp(segsum) underflow into the float denormal range
// in every long chunk, and denormal operands slowed the GEMMs 4x (measured, Golf, float).
// Only terms below the smallest normal (1.2e-38 in float) change, to 0. No-op off x86.
class FlushDenormals {
 public:
#if defined(__SSE__)
  FlushDenormals() : saved_(_mm_getcsr()) { _mm_setcsr(saved_ | 0x8040u); }
  ~FlushDenormals() { _mm_setcsr(saved_); }
#else
  FlushDenormals() = default;
#endif
  FlushDenormals(const FlushDenormals&) = delete;
  FlushDenormals& operator=(const FlushDenormals&) = delete;

#if defined(__SSE__)
 private:
  unsigned saved_;
#endif
};

// Software prefetch of n contiguous values. A head's slice of a row of x or y is P values
// with a stride of H*P between rows, which the hardware prefetchers do not follow: without
// this the recurrence waited on memory for T = 4096 (1.5x slower per token than T = 1024).
template <int Write, class S>
inline void prefetch(const S* p, int n) {
#if defined(__GNUC__)
  const char* c = reinterpret_cast<const char*>(p);
  for (std::size_t i = 0; i < std::size_t(n) * sizeof(S); i += 64)
    __builtin_prefetch(c + i, Write);
#else
  (void)p, (void)n;
#endif
}

inline void check_dims(const SsdDims& d) {
  HYBRID_CHECK(d.T >= 0, "ssd: T = ", d.T, ", expected >= 0");
  HYBRID_CHECK(d.H > 0 && d.P > 0 && d.N > 0 && d.G > 0, "ssd: dims H = ", d.H, ", P = ", d.P,
               ", N = ", d.N, ", G = ", d.G, ", expected all > 0");
  HYBRID_CHECK(d.H % d.G == 0, "ssd: H = ", d.H, " is not a multiple of G = ", d.G,
               " (heads are split into G equal groups)");
}

template <class S>
void check_args(const SsdDims& d, const SsdArgs<S>& a) {
  check_dims(d);
  if (d.T == 0) return;
  HYBRID_CHECK(a.x && a.dt && a.A && a.B && a.C && a.y,
               "ssd: x, dt, A, B, C and y must be non-null when T = ", d.T, " > 0");
}

// T = 0: the state passes through unchanged.
template <class S>
void pass_state(const SsdDims& d, const SsdArgs<S>& a) {
  if (!a.state_out || a.state_out == a.state_in) return;
  const Index n = Index(d.H) * d.P * d.N;
  if (a.state_in) std::copy(a.state_in, a.state_in + n, a.state_out);
  else std::fill(a.state_out, a.state_out + n, S(0));
}

// Masked segment sum of one chunk, one row at a time. On return from step t, run[s] holds
// segsum[t][s] = a[s+1] + ... + a[t] for s <= t (run[t] = 0): each entry is a sum over its
// own segment only, so exp(run[s]) never subtracts two long cumulative sums.
// run: (L) — call with t = 0, 1, ... in order.
template <class S>
inline void segsum_step(const S* a, int t, S* run) {
  for (int s = 0; s < t; ++s) run[s] += a[t];
  run[t] = S(0);
}

inline constexpr int kRecurrentBlock = 64;  // tokens per block of the recurrence

// Row widths are padded to kPad so that Eigen's vectorised exp has no scalar tail.
inline constexpr int kPad = 16;
inline constexpr Index pad(Index n) { return (n + kPad - 1) / kPad * kPad; }

// Intra-chunk decay Ld (L, L), leading dimension ld (a multiple of kPad), times an
// optional elementwise factor F (L, L), ld ldf, and column scale v (L):
//   Ld[t][s] = exp(segsum[t][s]) * F[t][s] * v[s] for s <= t, 0 for t < s < L.
// Rows are computed over pad(t + 1) columns, so F and v are read up to column pad(L) and
// columns [L, pad(L)) of Ld hold junk. run (pad(L)) is scratch, zeros on entry; on return
// it holds segsum[L-1][.], so exp(run[s]) is the decay from step s to the chunk end.
template <class S>
void chunk_decay(const S* a, int L, S* Ld, int ld, S* run, const S* F = nullptr, int ldf = 0,
                 const S* v = nullptr) {
  for (int t = 0; t < L; ++t) {
    segsum_step(a, t, run);
    S* row = Ld + Index(t) * ld;
    const int w = int(std::min<Index>(ld, pad(t + 1)));
    if (F)
      AlignedArr<S>(row, w) =
          AlignedArr<S>(run, w).exp() * CAlignedArr<S>(F + Index(t) * ldf, w) *
          CAlignedArr<S>(v, w);
    else
      AlignedArr<S>(row, w) = AlignedArr<S>(run, w).exp();
    std::fill(row + t + 1, row + std::max(L, t + 1), S(0));
  }
}

// Buffers of the chunked scan. Every block starts on a multiple of kPad elements (64-byte
// aligned in an aligned buffer), so that Eigen's packet loops peel no scalar head (scalar
// expf was 12% of the time before).
//   lhs (Q, K) per thread:   [ Wc | M ]  Wc in columns [No-N, No), M in [No, No+L)
//   rs (N+Q, P) per head:    [ S^T ; X ] the head's state, transposed, stays in rows [0, N)
//                            between chunks; rows [N, N+L) take the chunk's x
// so that y = [Wc | M] [S^T ; X] is one GEMM for any L, and the state never moves.
struct ChunkLayout {
  int Qp, No, K;             // padded Q; column of M in lhs; ld of lhs
  Index rs, wb, vec, total;  // per-thread offsets; rs = size of one head's block
  ChunkLayout(int Q, int P, int N)
      : Qp(int(pad(Q))), No(int(pad(N))), K(int(pad(N) + pad(Q))) {
    rs = pad(Index(N + Q) * P);
    wb = Index(Q) * K;             // (Q, N)  B rows scaled by their decay to the chunk end
    vec = wb + pad(Index(Q) * N);  // 4 x (Qp): a, dt, run, exp(cum)
    total = vec + 4 * Index(Qp);
  }
};

// One chunk of one head, given the chunk's C B^T for the head's group.
//   cb (L, L), ld Qp     x, y (L, P), row strides xs, ys     Bg, Cg (L, N), row stride bs
//   dt (L), stride dts   rs (N+L, P): [S^T ; X], S^T on entry, updated to the exit state
// y = [Wc | M] [S^T ; X]: M = CB ∘ decay ∘ dt_s (+ D on the diagonal: the skip) gives the
// intra-chunk and skip terms, Wc[t] = exp(cum_t) C_t the inter-chunk term.
template <class S>
void chunk_head(const ChunkLayout& lay, int L, int P, int N, Index xs, Index ys, Index bs, Index dts,
                S A, S Dh, const S* cb, const S* x, const S* dt, const S* Bg, const S* Cg,
                S* y, S* rs, S* work) {
  const int Qp = lay.Qp, K = lay.K, Lp = int(pad(L));
  S* lhs = work;
  S* a = work + lay.vec;
  S* d = a + Qp;
  S* run = d + Qp;
  S* ecum = run + Qp;
  std::fill(a, a + 4 * Index(Qp), S(0));  // padded tails must be finite
  for (int t = 0; t < L; ++t) {
    d[t] = dt[t * dts];
    a[t] = d[t] * A;
  }
  S* M = lhs + lay.No;
  chunk_decay(a, L, M, K, run, cb, Qp, d);
  for (int t = 0; t < L; ++t) M[Index(t) * K + t] += Dh;
  S c = S(0);  // cum_t = a_0 + ... + a_t: decay from the chunk start
  for (int t = 0; t < L; ++t) ecum[t] = c += a[t];
  AlignedArr<S>(ecum, Lp) = AlignedArr<S>(ecum, Lp).exp();
  for (int t = 0; t < L; ++t)
    ArrMap<S>(M + Index(t) * K - N, N) =
        ecum[t] * Eigen::Map<const Eigen::Array<S, Eigen::Dynamic, 1>>(Cg + t * bs, N);

  MatMap<S> R(rs, N + L, P);
  R.bottomRows(L) = CStrided<S>(x, L, P, Eigen::OuterStride<>(xs));
  Strided<S> Y(y, L, P, Eigen::OuterStride<>(ys));
  Y.noalias() = CStrided<S>(M - N, L, N + L, Eigen::OuterStride<>(K)) * R;

  // chunk state: S = exp(cum_last) S + sum_s exp(segsum[L-1][s]) dt_s x_s ⊗ B_s
  AlignedArr<S>(run, Lp) = AlignedArr<S>(run, Lp).exp() * AlignedArr<S>(d, Lp);
  MatMap<S> Wb(work + lay.wb, L, N);
  for (int s = 0; s < L; ++s)
    Wb.row(s).array() =
        run[s] * Eigen::Map<const Eigen::Array<S, 1, Eigen::Dynamic>>(Bg + s * bs, N);
  auto St = R.topRows(N);  // (N, P)
  St *= ecum[L - 1];
  St.noalias() += Wb.transpose() * R.bottomRows(L);
}

// One token of the recurrence for one head, the state held transposed: st (N, P), row
// stride P, so that the update and y_t = S_t · C_t are both axpys over P (no horizontal
// sums). Columns go in blocks of 4 Eigen packets kept in registers across the loop over n
// (plain loops left GCC spilling them, and it prefers 256-bit vectors on this CPU: 2.4x
// slower); leftover columns are done one by one.
//   x, y (P)   b, c (N)   e = exp(dt A)
template <class S>
inline void recurrent_token(int N, int P, S e, S dt, S Dh, const S* x, const S* b, const S* c,
                            S* st, S* y) {
  namespace ei = Eigen::internal;
  using Pk = typename ei::packet_traits<S>::type;
  constexpr int PS = ei::packet_traits<S>::size, W = 4 * PS;
  const Pk pe = ei::pset1<Pk>(e), pdt = ei::pset1<Pk>(dt), pD = ei::pset1<Pk>(Dh);
  // Four named packets, not arrays: at -O2 GCC kept arrays in memory (1.8x slower).
  auto update = [&](S* r, Pk pb, Pk pc, Pk xd, Pk& acc) {
    const Pk v = ei::pmadd(pe, ei::ploadu<Pk>(r), ei::pmul(pb, xd));
    ei::pstoreu(r, v);
    acc = ei::pmadd(pc, v, acc);
  };
  int p0 = 0;
  for (; p0 + W <= P; p0 += W) {
    const S* xp = x + p0;
    const Pk x0 = ei::ploadu<Pk>(xp), x1 = ei::ploadu<Pk>(xp + PS),
             x2 = ei::ploadu<Pk>(xp + 2 * PS), x3 = ei::ploadu<Pk>(xp + 3 * PS);
    const Pk d0 = ei::pmul(pdt, x0), d1 = ei::pmul(pdt, x1), d2 = ei::pmul(pdt, x2),
             d3 = ei::pmul(pdt, x3);
    Pk a0 = ei::pmul(pD, x0), a1 = ei::pmul(pD, x1), a2 = ei::pmul(pD, x2),
       a3 = ei::pmul(pD, x3);
    for (int n = 0; n < N; ++n) {
      S* row = st + Index(n) * P + p0;
      const Pk pb = ei::pset1<Pk>(b[n]), pc = ei::pset1<Pk>(c[n]);
      update(row, pb, pc, d0, a0);
      update(row + PS, pb, pc, d1, a1);
      update(row + 2 * PS, pb, pc, d2, a2);
      update(row + 3 * PS, pb, pc, d3, a3);
    }
    S* yp = y + p0;
    ei::pstoreu(yp, a0);
    ei::pstoreu(yp + PS, a1);
    ei::pstoreu(yp + 2 * PS, a2);
    ei::pstoreu(yp + 3 * PS, a3);
  }
  for (int p = p0; p < P; ++p) {
    const S xd = dt * x[p];
    S acc = Dh * x[p];
    for (int n = 0; n < N; ++n) {
      S& v = st[Index(n) * P + p];
      v = e * v + b[n] * xd;
      acc += c[n] * v;
    }
    y[p] = acc;
  }
}

// The same step with the state in its own layout, st (P, N), updated in place: no
// transposes, but a horizontal sum per row of S · C. For short calls (decode), where
// transposing the state in and out would cost more than the tokens themselves.
template <class S>
inline void recurrent_token_pn(int N, int P, S e, S dt, S Dh, const S* x, const S* b,
                               const S* c, S* st, S* y) {
  namespace ei = Eigen::internal;
  using Pk = typename ei::packet_traits<S>::type;
  constexpr int PS = ei::packet_traits<S>::size;
  const Pk pe = ei::pset1<Pk>(e);
  for (int p = 0; p < P; ++p) {
    S* row = st + Index(p) * N;
    const S xd = dt * x[p];
    const Pk pxd = ei::pset1<Pk>(xd);
    Pk acc = ei::pset1<Pk>(S(0));
    int n = 0;
    for (; n + PS <= N; n += PS) {
      const Pk v = ei::pmadd(pe, ei::ploadu<Pk>(row + n), ei::pmul(pxd, ei::ploadu<Pk>(b + n)));
      ei::pstoreu(row + n, v);
      acc = ei::pmadd(v, ei::ploadu<Pk>(c + n), acc);
    }
    S sum = ei::predux(acc) + Dh * x[p];
    for (; n < N; ++n) {
      row[n] = e * row[n] + xd * b[n];
      sum += row[n] * c[n];
    }
    y[p] = sum;
  }
}

// Short calls: the state stays (H, P, N) and is updated in place in state_out.
//   x, y (T, H*P)   st (H, P, N)
template <class S>
void recurrent_short(const SsdDims& d, const SsdArgs<S>& args, S* work) {
  const int H = d.H, P = d.P, N = d.N, hpg = H / d.G;
  const Index xs = args.x_stride(d), ys = Index(H) * P, bs = args.bc_stride(d), hs = Index(N) * P;
  S* st = args.state_out ? args.state_out : work;  // (H, P, N)
  HYBRID_SSD_OMP(omp parallel for schedule(static))
  for (int h = 0; h < H; ++h) {
    [[maybe_unused]] FlushDenormals ftz;
    S* sh = st + h * hs;
    if (!args.state_in) std::fill(sh, sh + hs, S(0));
    else if (args.state_in != st) std::copy_n(args.state_in + h * hs, hs, sh);
    const Index go = Index(h / hpg) * N;
    for (Index t = 0; t < d.T; ++t) {
      const S dt = args.dt[t * H + h];
      recurrent_token_pn(N, P, std::exp(dt * args.A[h]), dt, args.D ? args.D[h] : S(0),
                         args.x + t * xs + Index(h) * P, args.B + t * bs + go,
                         args.C + t * bs + go, sh, args.y + t * ys + Index(h) * P);
    }
  }
}

}  // namespace ssd_detail

// Scratch of each path for `threads` threads (values of the scalar type): the recurrence's
// transposed states and per-thread decays; the chunked scan's C B^T products, [S^T ; X]
// blocks and per-thread work.
inline Index ssd_recurrent_scratch(const SsdDims& d, int threads) {
  return ssd_detail::pad(Index(d.H) * d.N * d.P) + Index(threads) * ssd_detail::kRecurrentBlock;
}
inline Index ssd_chunked_scratch(const SsdDims& d, int Q, int threads) {
  if (d.T <= 0 || Q <= 0) return 0;
  const int q = int(std::min<Index>(Q, d.T));
  const ssd_detail::ChunkLayout lay(q, d.P, d.N);
  const Index nc = (d.T + q - 1) / q;
  return Index(d.G) * nc * q * lay.Qp + Index(d.H) * lay.rs + Index(threads) * lay.total;
}

// Plain recurrence (REFERENCE.md §1 step 6), one token at a time, in blocks of kTb tokens:
// a thread runs each of its heads through the block (the head's state, N*P values, stays in
// L1 meanwhile; 8 KiB for Golf, float) then goes on to the next block, so that the rows of
// x and y it touches stay in the TLB and caches.
template <class S>
void ssd_recurrent(const SsdDims& d, const SsdArgs<S>& args, S* work = nullptr) {
  ssd_detail::check_args(d, args);
  if (d.T == 0) return ssd_detail::pass_state(d, args);
  Buffer<S> own;
  work = scratch_or_own(work, ssd_recurrent_scratch(d, par::threads()), own);
  if (d.T <= kSsdShortT) return ssd_detail::recurrent_short(d, args, work);
  const int H = d.H, P = d.P, N = d.N, hpg = H / d.G;
  const Index T = d.T, xs = args.x_stride(d), ys = Index(H) * P, bs = args.bc_stride(d),
              hs = Index(N) * P;
  constexpr int kTb = ssd_detail::kRecurrentBlock;  // tokens per block
  constexpr Index kAhead = kTb;  // tokens prefetched ahead: 8 or 32 left T = 4096 slower
  S* states = work;  // (H, N, P): transposed states, then kTb values per thread
  HYBRID_SSD_OMP(omp parallel) {
    [[maybe_unused]] ssd_detail::FlushDenormals ftz;
    S* e = states + ssd_detail::pad(Index(H) * hs) + par::thread_id() * kTb;  // exp(dt A)
    // schedule(static) everywhere: a thread owns the same heads in every loop below.
    HYBRID_SSD_OMP(omp for schedule(static) nowait)
    for (int h = 0; h < H; ++h) {
      MatMap<S> st(states + h * hs, N, P);
      if (args.state_in) st = CMatMap<S>(args.state_in + h * hs, P, N).transpose();
      else st.setZero();
    }
    for (Index t0 = 0; t0 < T; t0 += kTb) {
      const int nb = int(std::min<Index>(kTb, T - t0));
      HYBRID_SSD_OMP(omp for schedule(static) nowait)
      for (int h = 0; h < H; ++h) {
        const S A = args.A[h], Dh = args.D ? args.D[h] : S(0);
        const Index go = Index(h / hpg) * N;
        S* st = states + h * hs;
        for (int i = 0; i < nb; ++i) e[i] = args.dt[(t0 + i) * H + h] * A;
        ssd_detail::ArrMap<S>(e, nb) = ssd_detail::ArrMap<S>(e, nb).exp();
        for (Index t = t0; t < t0 + nb; ++t) {
          const S* xt = args.x + t * xs + Index(h) * P;
          S* yt = args.y + t * ys + Index(h) * P;
          if (t + kAhead < T) {
            ssd_detail::prefetch<0>(xt + kAhead * xs, P);
            ssd_detail::prefetch<1>(yt + kAhead * ys, P);
          }
          ssd_detail::recurrent_token(N, P, e[t - t0], args.dt[t * H + h], Dh, xt,
                                      args.B + t * bs + go, args.C + t * bs + go, st, yt);
        }
      }
    }
    if (args.state_out) {
      HYBRID_SSD_OMP(omp for schedule(static) nowait)
      for (int h = 0; h < H; ++h) {
        MatMap<S>(args.state_out + h * hs, P, N) =
            CMatMap<S>(states + h * hs, N, P).transpose();
      }
    }
  }
}

// Chunked SSD with chunk length Q (REFERENCE.md §1). A shorter last chunk is the same as
// padding with steps that have a = 0 and x~ = 0 (padding after discretisation). C B^T is
// computed once per (group, chunk), all chunks up front; then each thread runs its heads
// through the chunks in order, holding each head's state transposed in its [S^T ; X] block.
template <class S>
void ssd_chunked(const SsdDims& d, int Q, const SsdArgs<S>& args, S* work_buf = nullptr) {
  ssd_detail::check_args(d, args);
  HYBRID_CHECK(Q > 0, "ssd_chunked: chunk length Q = ", Q, ", expected > 0");
  if (d.T == 0) return ssd_detail::pass_state(d, args);
  const int H = d.H, P = d.P, N = d.N, G = d.G, hpg = H / G;
  const Index T = d.T, xs = args.x_stride(d), ys = Index(H) * P, bs = args.bc_stride(d);
  Buffer<S> own;
  work_buf = scratch_or_own(work_buf, ssd_chunked_scratch(d, Q, par::threads()), own);
  Q = int(std::min<Index>(Q, T));
  const ssd_detail::ChunkLayout lay(Q, P, N);
  const int Qp = lay.Qp, nc = int((T + Q - 1) / Q);
  S* cb = work_buf;                          // (G, nc, Q, Qp): C_c B_c^T
  S* rs = cb + Index(G) * nc * Q * Qp;       // (H, N+Q, P): [S^T ; X]
  S* per_thread = rs + Index(H) * lay.rs;    // lay.total per thread
  HYBRID_SSD_OMP(omp parallel) {
    [[maybe_unused]] ssd_detail::FlushDenormals ftz;
    HYBRID_SSD_OMP(omp for schedule(static) nowait)
    for (int h = 0; h < H; ++h) {
      MatMap<S> st(rs + h * lay.rs, N, P);  // rows [0, N) of [S^T ; X]
      if (args.state_in) st = CMatMap<S>(args.state_in + Index(h) * P * N, P, N).transpose();
      else st.setZero();
    }
    HYBRID_SSD_OMP(omp for schedule(static))
    for (int i = 0; i < G * nc; ++i) {
      const int g = i / nc, c = i % nc;
      const Index t0 = Index(c) * Q;
      const int L = int(std::min<Index>(Q, T - t0));
      const Index off = t0 * bs + Index(g) * N;
      ssd_detail::CStrided<S> Cm(args.C + off, L, N, Eigen::OuterStride<>(bs));
      ssd_detail::CStrided<S> Bm(args.B + off, L, N, Eigen::OuterStride<>(bs));
      ssd_detail::Strided<S> CB(cb + Index(i) * Q * Qp, L, Qp, Eigen::OuterStride<>(Qp));
      CB.leftCols(L).noalias() = Cm * Bm.transpose();
      CB.rightCols(Qp - L).setZero();  // read by chunk_decay's padded rows
    }
    S* work = per_thread + par::thread_id() * lay.total;
    // Chunk-outer: a thread reads the rows of one chunk for all its heads together (the
    // order of x and y in memory). schedule(static) gives a thread the same heads in every
    // loop, so no barrier is needed between chunks, nor before the state is written out.
    for (int c = 0; c < nc; ++c) {
      const Index t0 = Index(c) * Q;
      const int L = int(std::min<Index>(Q, T - t0));
      HYBRID_SSD_OMP(omp for schedule(static) nowait)
      for (int h = 0; h < H; ++h) {
        const int g = h / hpg;
        for (Index t = t0 + Q; t < std::min(T, t0 + 2 * Index(Q)); ++t)  // next chunk's x
          ssd_detail::prefetch<0>(args.x + t * xs + Index(h) * P, P);
        ssd_detail::chunk_head<S>(
            lay, L, P, N, xs, ys, bs, H, args.A[h], args.D ? args.D[h] : S(0),
            cb + (Index(g) * nc + c) * Q * Qp, args.x + t0 * xs + Index(h) * P,
            args.dt + t0 * H + h, args.B + t0 * bs + Index(g) * N,
            args.C + t0 * bs + Index(g) * N, args.y + t0 * ys + Index(h) * P,
            rs + h * lay.rs, work);
      }
    }
    if (args.state_out) {
      HYBRID_SSD_OMP(omp for schedule(static) nowait)
      for (int h = 0; h < H; ++h) {
        MatMap<S>(args.state_out + Index(h) * P * N, P, N) =
            CMatMap<S>(rs + h * lay.rs, N, P).transpose();
      }
    }
  }
}

// Flop counts (multiply and add each count 1; exp, dt*x, the D skip and the decay masks,
// all O(T*H*(P+Q)), are not counted).
// Recurrent, per token and head: e*S + (dt x) ⊗ B is 3PN, S · C is 2PN.
inline double ssd_flops_recurrent(const SsdDims& d) {
  return double(d.T) * d.H * 5.0 * d.P * d.N;
}
// Chunked, per chunk of length L, as computed (the dense L x L products include their
// masked upper triangle): C B^T 2L²N per group; per head Y_diag 2L²P, Y_off 2LNP,
// chunk state 2LNP, state decay PN.
inline double ssd_flops_chunked(const SsdDims& d, int Q) {
  if (d.T <= 0 || Q <= 0) return 0;
  auto chunk = [&](double L) {
    return d.G * 2 * L * L * d.N + d.H * (2 * L * L * d.P + 4 * L * d.N * d.P + d.P * d.N);
  };
  const Index q = std::min<Index>(Q, d.T), full = d.T / q, rest = d.T % q;
  return double(full) * chunk(double(q)) + (rest ? chunk(double(rest)) : 0.0);
}

// Whether Auto runs the chunked scan. Measured on the 2-core Sapphire Rapids (AVX-512,
// 48 KiB L1d) with OMP_NUM_THREADS=1 and thread CPU time (both paths split heads over
// threads the same way), T = 1024, float unless noted, chunked at its best Q:
//   state N*P*sizeof(S)   (H, P, N)         recurrent   chunked (Q)
//     8 KiB               (12, 64, 32)        1.03 ms     1.87 (16)   recurrent 1.8x  Golf
//    16 KiB  double       (12, 64, 32)        2.34        3.63 (16)   recurrent 1.5x
//    32 KiB               (32, 64, 128)      11.1        14.4  (16)   recurrent 1.3x
//    40 KiB               (16, 64, 160)       6.10        7.75 (32)   recurrent 1.3x
//    48 KiB               (16, 64, 192)       8.17        9.08 (32)   recurrent 1.1x
//    48 KiB               (16, 128, 96)       8.97        9.38 (32)   recurrent 1.05x
//    64 KiB               (16, 64, 256)      18.6        11.6  (64)   chunked 1.6x
//    64 KiB               (8, 128, 128)       9.88        6.16 (32)   chunked 1.6x
//    64 KiB  double       (32, 64, 128)      41.3        28.9  (32)   chunked 1.4x
//   128 KiB               (16, 128, 256)     39.8        23.5  (64)   chunked 1.7x
// The recurrence wins while a head's state fits in L1, the chunked scan beyond. Short
// calls favour the recurrence (no GEMM set-up): for (16, 64, 256) chunked overtakes between
// T = 16 (0.36 vs 0.51 ms) and T = 32 (0.84 vs 0.67 ms).
inline bool ssd_auto_chunked(const SsdDims& d, std::size_t scalar_bytes) {
  return d.T >= 32 && std::size_t(d.N) * d.P * scalar_bytes > 48 * 1024;
}

inline ScanPath ssd_resolve_path(const SsdDims& d, ScanPath path, std::size_t scalar_bytes) {
  if (path != ScanPath::Auto) return path;
  return ssd_auto_chunked(d, scalar_bytes) ? ScanPath::Chunked : ScanPath::Recurrent;
}

// Scratch of ssd_forward (values of the scalar type) for `threads` threads.
inline Index ssd_forward_scratch(const SsdDims& d, int Q, ScanPath path, std::size_t scalar_bytes,
                                 int threads) {
  if (d.T == 0) return 0;
  return ssd_resolve_path(d, path, scalar_bytes) == ScanPath::Recurrent
             ? ssd_recurrent_scratch(d, threads)
             : ssd_chunked_scratch(d, Q, threads);
}

// Chunked or Recurrent run the named path; Auto picks by ssd_auto_chunked. work: 64-byte
// aligned, ssd_forward_scratch(d, Q, path, sizeof(S), par::threads()) values, or nullptr to
// allocate them here.
template <class S>
void ssd_forward(const SsdDims& d, int Q, ScanPath path, const SsdArgs<S>& args, S* work = nullptr) {
  HYBRID_CHECK(Q > 0, "ssd_forward: chunk length Q = ", Q, ", expected > 0");
  path = ssd_resolve_path(d, path, sizeof(S));
  if (path == ScanPath::Recurrent) ssd_recurrent(d, args, work);
  else ssd_chunked(d, Q, args, work);
}

}  // namespace hybrid::ops

#undef HYBRID_SSD_OMP
