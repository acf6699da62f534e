// Backward of the Mamba-2 SSD scan, chunk by chunk (no per-token loop over the sequence):
// one forward pass over chunk states to recover each chunk's incoming state, then a
// reverse pass over chunks carrying dS, the gradient of the state leaving the chunk.
// Per chunk (length L <= Q), with a = dt*A, x~ = dt*x, Acum = inclusive cumsum of a,
// Lmat(t,s) = exp(sum_{s<k<=t} a_k) for s <= t (built as a segsum, as the forward does):
//   y_t     = sum_s (C_t.B_s) Lmat(t,s) x~_s + exp(Acum_t) S_in C_t + D x_t
//   S_out   = exp(Acum_L) S_in + sum_s Lmat(L,s) x~_s (x) B_s
// Every gradient is ACCUMULATED (+=); a nullptr gradient is skipped. The initial state
// (if any) gets no gradient: training starts every sequence from zero.
#pragma once
#include <algorithm>
#include <cmath>
#include <vector>

#include "ssd.hpp"

namespace hybrid::ops {

// dx, dB and dC have the row strides of x, B and C (SsdArgs::ldx, ldbc).
template <class S>
struct SsdGrads {
  S* dx = nullptr;   // (T, H*P)
  S* ddt = nullptr;  // (T, H)
  S* dA = nullptr;   // (H)   gradient w.r.t. A (the caller chains to A_log)
  S* dB = nullptr;   // (T, G*N)
  S* dC = nullptr;   // (T, G*N)
  S* dD = nullptr;   // (H)
};

// Scratch of ssd_backward for dims d and chunk Q: per head, its chunk states and the
// chunk's work matrices; plus head-private dB, dC (heads of a group share B and C).
inline Index ssd_backward_head_scratch(const SsdDims& d, int Q) {
  const Index T = d.T, P = d.P, N = d.N, q = std::min<Index>(Q, std::max<Index>(T, 1));
  const Index nc = (T + q - 1) / q;
  return T + nc * P * N + 3 * P * N + 5 * q + 5 * q * P + 5 * q * q + q * N;
}
inline Index ssd_backward_scratch(const SsdDims& d, int Q) {
  return Index(d.H) * (ssd_backward_head_scratch(d, Q) + 2 * d.T * d.N);
}

// a: the forward's inputs (y and state_out are not read); dy: (T, H*P). work:
// ssd_backward_scratch(d, Q) values, or nullptr to allocate them here.
template <class S>
void ssd_backward(const SsdDims& d, int Q, const SsdArgs<S>& a, const S* dy, const SsdGrads<S>& g,
                  S* work = nullptr) {
  HYBRID_CHECK(Q > 0, "ssd_backward: chunk length must be positive, got ", Q);
  HYBRID_CHECK(d.G > 0 && d.H % d.G == 0, "ssd_backward: G ", d.G, " does not divide H ", d.H);
  const Index T = d.T, P = d.P, N = d.N, H = d.H, GN = a.bc_stride(d), HP = H * P,
              XS = a.x_stride(d);
  if (T <= 0) return;
  using Strided = Eigen::Map<const Mat<S>, 0, Eigen::OuterStride<>>;
  using StridedOut = Eigen::Map<Mat<S>, 0, Eigen::OuterStride<>>;
  Q = int(std::min<Index>(Q, T));
  const Index n_chunks = (T + Q - 1) / Q;
  Buffer<S> own;
  work = scratch_or_own(work, ssd_backward_scratch(d, Q), own);
  const Index per_head = ssd_backward_head_scratch(d, Q);
  const bool want_bc = g.dB || g.dC;
  S* dBh = work + H * per_head;  // (H, T, N) each, head-private, reduced after the loop
  S* dCh = dBh + H * T * N;
  if (want_bc) std::fill(dBh, dBh + 2 * H * T * N, S(0));
  const Index work_size = T * H * P * N;
#pragma omp parallel for schedule(dynamic) if (work_size > 200000)
  for (Index h = 0; h < H; ++h) {
    // The head's scratch, carved in order (every buffer is written before it is read).
    S* w0 = work + h * per_head;
    auto take = [&](Index n) { S* p = w0; w0 += n; return p; };
    const Index grp = h / (H / d.G);
    const Strided X(a.x + h * P, T, P, Eigen::OuterStride<>(XS));
    const Strided Bg(a.B + grp * N, T, N, Eigen::OuterStride<>(GN));
    const Strided Cg(a.C + grp * N, T, N, Eigen::OuterStride<>(GN));
    const Strided dY(dy + h * P, T, P, Eigen::OuterStride<>(HP));
    const S Ah = a.A[h];
    VecMap<S> dt(take(T), T);
    for (Index t = 0; t < T; ++t) dt[t] = a.dt[t * H + h];
    // Incoming state of every chunk: (n_chunks) x (P, N).
    S* Sin = take(n_chunks * P * N);
    MatMap<S> Sc(take(P * N), P, N);
    if (a.state_in) Sc = CMatMap<S>(a.state_in + h * P * N, P, N);
    else Sc.setZero();
    VecMap<S> w(take(Q), Q);       // w_s = exp(sum_{s<k<L} a_k)
    S* xt_buf = take(Index(Q) * P);  // x~ = dt * x of a chunk, (L, P)
    for (Index c = 0; c < n_chunks; ++c) {
      const Index t0 = c * Q, L = std::min<Index>(Q, T - t0);
      MatMap<S>(Sin + c * P * N, P, N) = Sc;
      S acc = 0;
      for (Index s = L - 1; s >= 0; --s) {
        w[s] = std::exp(acc);
        acc += dt[t0 + s] * Ah;
      }
      // acc == Acum_L
      MatMap<S> Xt(xt_buf, L, P);
      Xt = X.middleRows(t0, L);
      for (Index s = 0; s < L; ++s) Xt.row(s) *= dt[t0 + s] * w[s];
      Sc *= std::exp(acc);
      Sc.noalias() += Xt.transpose() * Bg.middleRows(t0, L);
    }
    MatMap<S> dS(take(P * N), P, N), dSin(take(P * N), P, N);
    dS.setZero();
    S* dxt_buf = take(Index(Q) * P);
    S* lm_buf = take(Index(Q) * Q);
    S* cb_buf = take(Index(Q) * Q);
    S* dm_buf = take(Index(Q) * Q);
    S* dcb_buf = take(Index(Q) * Q);
    S* e_buf = take(Index(Q) * Q);
    S* vec_buf = take(4 * Index(Q));
    S* dys_buf = take(Index(Q) * P);
    S* csi_buf = take(Index(Q) * P);
    S* dsb_buf = take(Index(Q) * P);
    S* xds_buf = take(Index(Q) * N);
    S dAh = 0, dDh = 0;
    for (Index c = n_chunks - 1; c >= 0; --c) {
      const Index t0 = c * Q, L = std::min<Index>(Q, T - t0);
      const MatMap<S> Si(Sin + c * P * N, P, N);
      const auto Bc = Bg.middleRows(t0, L);
      const auto Cc = Cg.middleRows(t0, L);
      const auto dYc = dY.middleRows(t0, L);
      VecMap<S> av(vec_buf, L), Acum(vec_buf + Q, L), dAcum(vec_buf + 2 * Q, L), eA(vec_buf + 3 * Q, L);
      dAcum.setZero();
      S run = 0;
      for (Index t = 0; t < L; ++t) {
        av[t] = dt[t0 + t] * Ah;
        run += av[t];
        Acum[t] = run;
      }
      MatMap<S> Xt(xt_buf, L, P);  // x~ = dt * x
      Xt = X.middleRows(t0, L);
      for (Index t = 0; t < L; ++t) Xt.row(t) *= dt[t0 + t];
      MatMap<S> dXt(dxt_buf, L, P);
      dXt.setZero();
      // Segsum decay Lm(t, s) = exp(sum_{s<k<=t} a_k) = exp(Acum_t - Acum_s), s <= t: one
      // vectorised exp per row (the sums of a chunk are short, so the difference of the
      // running sums loses nothing that matters next to the exp's own rounding).
      MatMap<S> Lm(lm_buf, L, L);
      Lm.setZero();
      for (Index t = 0; t < L; ++t)
        Lm.row(t).head(t + 1).array() = (Acum[t] - Acum.head(t + 1).transpose().array()).exp();
      eA = Acum.array().exp();
      // Inter-chunk output: Y_off[t] = eA_t * (S_in C_t).
      MatMap<S> dYs(dys_buf, L, P);  // rows scaled by eA
      dYs = dYc;
      for (Index t = 0; t < L; ++t) dYs.row(t) *= eA[t];
      dSin.noalias() = dYs.transpose() * Cc;  // (P, N)
      MatMap<S> CSi(csi_buf, L, P);
      CSi.noalias() = Cc * Si.transpose();  // (L, P): S_in C_t
      for (Index t = 0; t < L; ++t) dAcum[t] += eA[t] * dYc.row(t).dot(CSi.row(t));
      if (want_bc) {
        StridedOut dCo(dCh + (h * T + t0) * N, L, N, Eigen::OuterStride<>(N));
        dCo.noalias() += dYs * Si;
      }
      // State leaving the chunk: S_out = exp(Acum_L) S_in + sum_s w_s x~_s (x) B_s.
      const S eL = eA[L - 1];
      dSin += eL * dS;
      dAcum[L - 1] += eL * (dS.array() * Si.array()).sum();
      MatMap<S> DSB(dsb_buf, L, P);
      DSB.noalias() = Bc * dS.transpose();  // (L, P): row s = dS B_s
      for (Index s = 0; s < L; ++s) {
        const S ws = Lm(L - 1, s);
        dXt.row(s) += ws * DSB.row(s);
        const S e = ws * Xt.row(s).dot(DSB.row(s));
        dAcum[L - 1] += e;
        dAcum[s] -= e;
      }
      if (want_bc) {
        StridedOut dBo(dBh + (h * T + t0) * N, L, N, Eigen::OuterStride<>(N));
        MatMap<S> XdS(xds_buf, L, N);
        XdS.noalias() = Xt * dS;  // (L, N)
        for (Index s = 0; s < L; ++s) XdS.row(s) *= Lm(L - 1, s);
        dBo += XdS;
      }
      // Intra-chunk: Y_diag = (CB o Lm) x~.
      MatMap<S> CB(cb_buf, L, L), dM(dm_buf, L, L), dCB(dcb_buf, L, L), E(e_buf, L, L);
      CB.noalias() = Cc * Bc.transpose();
      dM.noalias() = dYc * Xt.transpose();
      for (Index t = 0; t + 1 < L; ++t) dM.row(t).tail(L - 1 - t).setZero();  // keep s <= t
      E = CB.cwiseProduct(Lm);
      dXt.noalias() += E.transpose() * dYc;
      dCB = dM.cwiseProduct(Lm);
      if (want_bc) {
        StridedOut dCo(dCh + (h * T + t0) * N, L, N, Eigen::OuterStride<>(N));
        StridedOut dBo(dBh + (h * T + t0) * N, L, N, Eigen::OuterStride<>(N));
        dCo.noalias() += dCB * Bc;
        dBo.noalias() += dCB.transpose() * Cc;
      }
      E = dCB.cwiseProduct(CB);
      for (Index t = 0; t < L; ++t) dAcum[t] += E.row(t).sum() - E.col(t).sum();
      dS = dSin;
      // Acum -> a (reverse cumsum), a = dt A, x~ = dt x.
      S rev = 0;
      for (Index t = L - 1; t >= 0; --t) {
        rev += dAcum[t];
        const Index tt = t0 + t;
        dAh += rev * dt[tt];
        if (g.ddt) g.ddt[tt * H + h] += rev * Ah + X.row(tt).dot(dXt.row(t));
        if (g.dx) {
          Eigen::Map<RowVec<S>> dxr(g.dx + tt * XS + h * P, P);
          dxr += dt[tt] * dXt.row(t);
        }
      }
    }
    // D skip: y += D x.
    if (a.D) {
      for (Index t = 0; t < T; ++t) {
        dDh += dY.row(t).dot(X.row(t));
        if (g.dx) {
          Eigen::Map<RowVec<S>> dxr(g.dx + t * XS + h * P, P);
          dxr += a.D[h] * dY.row(t);
        }
      }
      if (g.dD) g.dD[h] += dDh;
    }
    if (g.dA) g.dA[h] += dAh;
  }
  if (want_bc) {
    const Index rep = H / d.G;
    for (Index h = 0; h < H; ++h) {
      const Index grp = h / rep;
      for (Index t = 0; t < T; ++t)
        for (Index n = 0; n < N; ++n) {
          if (g.dB) g.dB[t * GN + grp * N + n] += dBh[(h * T + t) * N + n];
          if (g.dC) g.dC[t * GN + grp * N + n] += dCh[(h * T + t) * N + n];
        }
    }
  }
}

}  // namespace hybrid::ops
