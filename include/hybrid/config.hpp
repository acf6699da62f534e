// Configuration of a model and of each component. Every spec is a literal (structural)
// type, so it can be a template argument (sizes checked at compile time) or filled in at
// run time (sizes read from a file) — the same struct either way.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

#include "core/error.hpp"

namespace hybrid {

enum class NormKind { RMS, Layer };
enum class ScanPath { Auto, Chunked, Recurrent };

// Model-wide settings. The multipliers are neutral by default (REFERENCE.md §4).
struct ModelSpec {
  int vocab = 0;
  int d_model = 0;
  bool tied = true;                 // LM head shares the embedding matrix
  NormKind norm = NormKind::RMS;    // norm of every block and the final norm
  double norm_eps = 1e-5;
  int max_context = 0;              // 0: no limit imposed by the model
  double embedding_multiplier = 1;  // embeddings are multiplied by this
  double residual_multiplier = 1;   // each branch output is multiplied by this
  double logits_divisor = 1;        // logits are divided by this
  double logit_softcap = 0;         // 0: off; else logits = c * tanh(logits / c)
  bool parallel_residual = false;   // x += Mixer(N(x)) + Channel(N(x)) with one norm
  double init_std = 0.02;           // embedding initialisation
  // Parameter-golf options (docs/architecture.md, "Golf-entry options"); off by default.
  bool unet_skips = false;  // decoder block j's input += skip_weights[j] * encoder block
                            // (n_enc-1-j)'s output, n_enc = n_blocks / 2
  int bigram_buckets = 0;   // hashed bigram embedding: 0 off, else the table's rows (>= 2;
                            // the last row is the bucket of a sequence's first token)
  int bigram_dim = 0;       // the bigram table's width; 0 = d_model (no projection), else
                            // projected to d_model by a learned (D, bigram_dim) matrix
};

// The bigram table's width and whether it is projected to d_model.
constexpr int bigram_width(const ModelSpec& m) { return m.bigram_dim > 0 ? m.bigram_dim : m.d_model; }
constexpr bool bigram_projected(const ModelSpec& m) {
  return m.bigram_buckets > 0 && bigram_width(m) != m.d_model;
}

// The bucket of token `cur` after token `prev` (prev < 0: cur starts its sequence) in a
// table of `buckets` rows: (36313 cur XOR 27191 prev) mod (buckets - 1), computed exactly in
// 64 bits, and buckets - 1 for a first token. The same hash as the parameter-golf entries'
// BigramHashEmbedding (which compute it in int32: identical while 36313 * id < 2^31, i.e.
// for ids up to 59,138).
constexpr int bigram_bucket(int prev, int cur, int buckets) {
  if (prev < 0) return buckets - 1;
  const std::uint64_t h = (std::uint64_t(36313) * std::uint64_t(cur)) ^
                          (std::uint64_t(27191) * std::uint64_t(prev));
  return int(h % std::uint64_t(buckets - 1));
}

// Mamba-2 mixer (REFERENCE.md §1). d_inner = expand * d_model.
struct Mamba2Spec {
  int d_state = 128;  // N
  int d_conv = 4;     // K
  double expand = 2;
  int headdim = 64;   // P
  int ngroups = 1;    // G
  int chunk = 0;      // Q, chunk length of the SSD scan; 0: the measured rule of the device
                     // that runs it (ops::ssd_chunk on the CPU); > 0 forces Q
  bool conv_bias = true;
  bool bias = false;  // biases of in_proj / out_proj
  bool norm_whole_width = false;  // gated RMSNorm over all of d_inner instead of per group
  double norm_eps = 1e-5;
  double dt_min = 1e-3, dt_max = 0.1, dt_init_floor = 1e-4;
  double dt_limit_lo = 0, dt_limit_hi = std::numeric_limits<double>::infinity();
  double A_init_lo = 1, A_init_hi = 16;
  ScanPath scan = ScanPath::Auto;

  constexpr double d_inner_exact(int d_model) const { return expand * d_model; }
  constexpr int d_inner(int d_model) const { return static_cast<int>(expand * d_model); }
  constexpr int nheads(int d_model) const { return headdim ? d_inner(d_model) / headdim : 0; }
  constexpr int conv_dim(int d_model) const { return d_inner(d_model) + 2 * ngroups * d_state; }
  constexpr int in_proj_dim(int d_model) const {
    return 2 * d_inner(d_model) + 2 * ngroups * d_state + nheads(d_model);
  }
};

// Grouped-query attention (REFERENCE.md §2).
struct GqaSpec {
  int n_heads = 8;
  int n_kv_heads = 8;
  int head_dim = 64;
  bool rope = true;            // false: NoPE
  double rope_theta = 10000;
  int window = 0;              // 0: full causal; else key s visible from t iff t - s < window
  bool qk_norm = false;        // per-head RMSNorm of q and k before RoPE (LFM2)
  bool output_gate = false;    // o = attn * sigmoid(x Wg^T) before o_proj (gated attention)
  double scale = 0;            // 0: 1/sqrt(head_dim); else this (Granite attention_multiplier)
  bool bias = false;
  int rope_dims = 0;           // partial RoPE: 0 = all of head_dim; else the first rope_dims
                               // dims of each head rotate (even, <= head_dim), the rest pass

  // The dims of each head that RoPE rotates (k), and whether that is fewer than all.
  constexpr int rotated_dims() const { return rope_dims > 0 ? rope_dims : head_dim; }
  constexpr bool partial_rope() const { return rope && rotated_dims() < head_dim; }
};

// rope_dims for a fraction of head_dim rotated: fraction * head_dim rounded to the nearest
// even number (halves up), at least 2; 0 (all dims) when that is head_dim.
inline int rope_dims_for_fraction(double fraction, int head_dim) {
  HYBRID_CHECK(fraction > 0 && fraction <= 1, "partial RoPE: the rotated fraction of the head "
               "dim must be in (0, 1], got ", fraction);
  HYBRID_CHECK(head_dim >= 2 && head_dim % 2 == 0, "partial RoPE: head_dim must be even and at "
               "least 2, got ", head_dim);
  const int k = 2 * std::max(1, int(std::floor(fraction * head_dim / 2 + 0.5)));
  return k >= head_dim ? 0 : k;
}

// LFM2 gated short convolution (REFERENCE.md §3).
struct ShortConvSpec {
  int L = 3;
  bool bias = false;
};

struct MlpSpec {
  int hidden = 0;
  bool bias = false;
};

// ---- run-time validation: the same rules as the compile-time static_asserts ----------

inline void validate(const Mamba2Spec& s, int d_model) {
  HYBRID_CHECK(d_model > 0, "Mamba2: d_model must be positive, got ", d_model);
  HYBRID_CHECK(s.d_state > 0 && s.d_conv > 0 && s.headdim > 0 && s.ngroups > 0,
               "Mamba2: d_state, d_conv, headdim and ngroups must be positive");
  HYBRID_CHECK(s.chunk >= 0, "Mamba2: chunk must be >= 0 (0: the scan's measured rule), got ", s.chunk);
  // Checked before d_inner() converts it to int, which is undefined for NaN or a value
  // outside int's range (found by fuzz/fuzz_desc_json with "expand": 1e99).
  HYBRID_CHECK(s.expand > 0 && s.d_inner_exact(d_model) <= std::numeric_limits<int>::max(),
               "Mamba2: d_inner = expand * d_model = ", s.d_inner_exact(d_model),
               " must be positive and at most ", std::numeric_limits<int>::max());
  HYBRID_CHECK(s.d_inner_exact(d_model) == static_cast<double>(s.d_inner(d_model)),
               "Mamba2: expand * d_model = ", s.d_inner_exact(d_model),
               " is not an integer; pick expand so that d_inner is whole");
  HYBRID_CHECK(s.d_inner(d_model) % s.headdim == 0, "Mamba2: headdim ", s.headdim,
               " does not divide d_inner ", s.d_inner(d_model));
  HYBRID_CHECK(s.nheads(d_model) % s.ngroups == 0, "Mamba2: ngroups ", s.ngroups,
               " does not divide nheads ", s.nheads(d_model));
  HYBRID_CHECK(s.dt_min > 0 && s.dt_max >= s.dt_min, "Mamba2: need 0 < dt_min <= dt_max");
  HYBRID_CHECK(s.dt_limit_lo <= s.dt_limit_hi, "Mamba2: dt_limit_lo ", s.dt_limit_lo,
               " exceeds dt_limit_hi ", s.dt_limit_hi);
}

inline void validate(const GqaSpec& s, int d_model) {
  HYBRID_CHECK(d_model > 0, "GQA: d_model must be positive, got ", d_model);
  HYBRID_CHECK(s.n_heads > 0 && s.n_kv_heads > 0 && s.head_dim > 0,
               "GQA: n_heads, n_kv_heads and head_dim must be positive");
  HYBRID_CHECK(s.n_heads % s.n_kv_heads == 0, "GQA: n_kv_heads ", s.n_kv_heads,
               " does not divide n_heads ", s.n_heads);
  HYBRID_CHECK(!s.rope || s.head_dim % 2 == 0, "GQA: RoPE needs an even head_dim, got ",
               s.head_dim);
  HYBRID_CHECK(s.window >= 0, "GQA: window must be >= 0, got ", s.window);
  HYBRID_CHECK(s.rope_dims == 0 || s.rope, "GQA: rope_dims = ", s.rope_dims,
               " is set but RoPE is off (rope = false); leave rope_dims at 0");
  HYBRID_CHECK(s.rope_dims >= 0 && s.rope_dims <= s.head_dim && s.rope_dims % 2 == 0,
               "GQA: rope_dims must be an even number in [0, head_dim = ", s.head_dim,
               "] (0 = all), got ", s.rope_dims);
}

inline void validate(const ShortConvSpec& s, int d_model) {
  HYBRID_CHECK(d_model > 0, "ShortConv: d_model must be positive, got ", d_model);
  HYBRID_CHECK(s.L > 0, "ShortConv: L must be positive, got ", s.L);
}

inline void validate(const MlpSpec& s, int) {
  HYBRID_CHECK(s.hidden > 0, "MLP: hidden width must be positive, got ", s.hidden);
}

inline void validate(const ModelSpec& s) {
  HYBRID_CHECK(s.vocab > 0, "Model: vocab must be positive, got ", s.vocab);
  HYBRID_CHECK(s.d_model > 0, "Model: d_model must be positive, got ", s.d_model);
  HYBRID_CHECK(s.norm_eps > 0, "Model: norm_eps must be positive");
  HYBRID_CHECK(s.logits_divisor != 0, "Model: logits_divisor must be non-zero");
  HYBRID_CHECK(s.max_context >= 0, "Model: max_context must be >= 0");
  HYBRID_CHECK(s.bigram_buckets == 0 || s.bigram_buckets >= 2, "Model: bigram_buckets must be 0 "
               "(off) or at least 2 (one hashed bucket and the first-token bucket), got ",
               s.bigram_buckets);
  HYBRID_CHECK(s.bigram_dim >= 0, "Model: bigram_dim must be >= 0 (0 = d_model), got ", s.bigram_dim);
  HYBRID_CHECK(s.bigram_dim == 0 || s.bigram_buckets > 0, "Model: bigram_dim = ", s.bigram_dim,
               " is set but the bigram embedding is off (bigram_buckets = 0)");
}

}  // namespace hybrid
