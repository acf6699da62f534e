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

// a: the forward's inputs (y and state_out are not read); dy: (T, H*P).
template <class S>
void ssd_backward(const SsdDims& d, int Q, const SsdArgs<S>& a, const S* dy, const SsdGrads<S>& g) {
  HYBRID_CHECK(Q > 0, "ssd_backward: chunk length must be positive, got ", Q);
  HYBRID_CHECK(d.G > 0 && d.H % d.G == 0, "ssd_backward: G ", d.G, " does not divide H ", d.H);
  const Index T = d.T, P = d.P, N = d.N, H = d.H, GN = a.bc_stride(d), HP = H * P,
              XS = a.x_stride(d);
  if (T <= 0) return;
  using Strided = Eigen::Map<const Mat<S>, 0, Eigen::OuterStride<>>;
  using StridedOut = Eigen::Map<Mat<S>, 0, Eigen::OuterStride<>>;
  const Index n_chunks = (T + Q - 1) / Q;
  // Head-private dB, dC (heads of a group share B and C), reduced after the parallel loop.
  const bool want_bc = g.dB || g.dC;
  std::vector<S> dBh(want_bc ? std::size_t(H * T * N) : 0), dCh(want_bc ? std::size_t(H * T * N) : 0);
  const Index work = T * H * P * N;
#pragma omp parallel for schedule(dynamic) if (work > 200000)
  for (Index h = 0; h < H; ++h) {
    const Index grp = h / (H / d.G);
    const Strided X(a.x + h * P, T, P, Eigen::OuterStride<>(XS));
    const Strided Bg(a.B + grp * N, T, N, Eigen::OuterStride<>(GN));
    const Strided Cg(a.C + grp * N, T, N, Eigen::OuterStride<>(GN));
    const Strided dY(dy + h * P, T, P, Eigen::OuterStride<>(HP));
    const S Ah = a.A[h];
    Vec<S> dt(T);
    for (Index t = 0; t < T; ++t) dt[t] = a.dt[t * H + h];
    // Incoming state of every chunk: (n_chunks) x (P, N).
    std::vector<Mat<S>> Sin(static_cast<std::size_t>(n_chunks));
    Mat<S> Sc = a.state_in ? Mat<S>(CMatMap<S>(a.state_in + h * P * N, P, N)) : Mat<S>::Zero(P, N);
    for (Index c = 0; c < n_chunks; ++c) {
      const Index t0 = c * Q, L = std::min<Index>(Q, T - t0);
      Sin[std::size_t(c)] = Sc;
      Vec<S> w(L);  // w_s = exp(sum_{s<k<L} a_k)
      S acc = 0;
      for (Index s = L - 1; s >= 0; --s) {
        w[s] = std::exp(acc);
        acc += dt[t0 + s] * Ah;
      }
      // acc == Acum_L
      Mat<S> Xt = X.middleRows(t0, L);
      for (Index s = 0; s < L; ++s) Xt.row(s) *= dt[t0 + s] * w[s];
      Sc = std::exp(acc) * Sc + Xt.transpose() * Bg.middleRows(t0, L);
    }
    Mat<S> dS = Mat<S>::Zero(P, N), dXt, dSin, CB, Lm, dM, E;
    S dAh = 0, dDh = 0;
    for (Index c = n_chunks - 1; c >= 0; --c) {
      const Index t0 = c * Q, L = std::min<Index>(Q, T - t0);
      const Mat<S>& Si = Sin[std::size_t(c)];
      const auto Bc = Bg.middleRows(t0, L);
      const auto Cc = Cg.middleRows(t0, L);
      const auto dYc = dY.middleRows(t0, L);
      Vec<S> av(L), Acum(L), dAcum = Vec<S>::Zero(L);
      S run = 0;
      for (Index t = 0; t < L; ++t) {
        av[t] = dt[t0 + t] * Ah;
        run += av[t];
        Acum[t] = run;
      }
      Mat<S> Xt = X.middleRows(t0, L);  // x~ = dt * x
      for (Index t = 0; t < L; ++t) Xt.row(t) *= dt[t0 + t];
      dXt.setZero(L, P);
      // Segsum decay Lm(t, s) = exp(sum_{s<k<=t} a_k) = exp(Acum_t - Acum_s), s <= t: one
      // vectorised exp per row (the sums of a chunk are short, so the difference of the
      // running sums loses nothing that matters next to the exp's own rounding).
      Lm.setZero(L, L);
      for (Index t = 0; t < L; ++t)
        Lm.row(t).head(t + 1).array() = (Acum[t] - Acum.head(t + 1).transpose().array()).exp();
      const Vec<S> eA = Acum.array().exp();
      // Inter-chunk output: Y_off[t] = eA_t * (S_in C_t).
      Mat<S> dYs = dYc;  // rows scaled by eA
      for (Index t = 0; t < L; ++t) dYs.row(t) *= eA[t];
      dSin.noalias() = dYs.transpose() * Cc;  // (P, N)
      const Mat<S> CSi = Cc * Si.transpose();  // (L, P): S_in C_t
      for (Index t = 0; t < L; ++t) dAcum[t] += eA[t] * dYc.row(t).dot(CSi.row(t));
      if (want_bc) {
        StridedOut dCo(dCh.data() + (h * T + t0) * N, L, N, Eigen::OuterStride<>(N));
        dCo.noalias() += dYs * Si;
      }
      // State leaving the chunk: S_out = exp(Acum_L) S_in + sum_s w_s x~_s (x) B_s.
      const S eL = eA[L - 1];
      dSin += eL * dS;
      dAcum[L - 1] += eL * (dS.array() * Si.array()).sum();
      const Mat<S> DSB = Bc * dS.transpose();  // (L, P): row s = dS B_s
      for (Index s = 0; s < L; ++s) {
        const S ws = Lm(L - 1, s);
        dXt.row(s) += ws * DSB.row(s);
        const S e = ws * Xt.row(s).dot(DSB.row(s));
        dAcum[L - 1] += e;
        dAcum[s] -= e;
      }
      if (want_bc) {
        StridedOut dBo(dBh.data() + (h * T + t0) * N, L, N, Eigen::OuterStride<>(N));
        Mat<S> XdS = Xt * dS;  // (L, N)
        for (Index s = 0; s < L; ++s) XdS.row(s) *= Lm(L - 1, s);
        dBo += XdS;
      }
      // Intra-chunk: Y_diag = (CB o Lm) x~.
      CB.noalias() = Cc * Bc.transpose();
      dM.noalias() = dYc * Xt.transpose();
      for (Index t = 0; t + 1 < L; ++t) dM.row(t).tail(L - 1 - t).setZero();  // keep s <= t
      dXt.noalias() += (CB.cwiseProduct(Lm)).transpose() * dYc;
      const Mat<S> dCB = dM.cwiseProduct(Lm);
      if (want_bc) {
        StridedOut dCo(dCh.data() + (h * T + t0) * N, L, N, Eigen::OuterStride<>(N));
        StridedOut dBo(dBh.data() + (h * T + t0) * N, L, N, Eigen::OuterStride<>(N));
        dCo.noalias() += dCB * Bc;
        dBo.noalias() += dCB.transpose() * Cc;
      }
      E = dCB.cwiseProduct(CB);
      dAcum += E.rowwise().sum() - E.colwise().sum().transpose();
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
          if (g.dB) g.dB[t * GN + grp * N + n] += dBh[std::size_t((h * T + t) * N + n)];
          if (g.dC) g.dC[t * GN + grp * N + n] += dCh[std::size_t((h * T + t) * N + n)];
        }
    }
  }
}

}  // namespace hybrid::ops
