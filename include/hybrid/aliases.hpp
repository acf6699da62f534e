// Shipped research variants, each one type alias. Norms are RMSNorm, no linear biases,
// conv bias on, Mamba-2 G = 1 and d_conv 4 unless stated. Tiny* versions keep each
// layout at test size (vocab 258 = the byte tokenizer's).
#pragma once
#include "typed_model.hpp"

namespace hybrid {

namespace golf {
// Parameter-golf sizes (REFERENCE.md §6): vocab 1024, d 512, GQA 8/4 x 64.
inline constexpr ModelSpec model{.vocab = 1024, .d_model = 512, .tied = true};
inline constexpr GqaSpec attn{.n_heads = 8, .n_kv_heads = 4, .head_dim = 64};
using M = Block<Mamba2<Mamba2Spec{.d_state = 32, .expand = 1.5, .headdim = 64}>>;
using A = Block<GQA<attn>, ReLU2<1024>>;
using M2 = Block<Mamba2<Mamba2Spec{.d_state = 32, .expand = 2, .headdim = 64}>, SwiGLU<1024>>;
using A2 = Block<GQA<attn>, SwiGLU<1024>>;
}  // namespace golf

/// The public parameter-golf "15 SSM + 3 GQA" entry's layout (REFERENCE.md §6): Mamba-2
/// blocks without a channel at 0–11 and 15–17, GQA + ReLU² MLP (hidden 1024) at 12–14.
/// 24,393,436 parameters.
using Golf15x3 = Model<Config<golf::model>, Repeat<12, golf::M>, Repeat<3, golf::A>,
                       Repeat<3, golf::M>>;

/// The same layout in the form llama.cpp's `granitehybrid` runs (REFERENCE.md §5): expand 2
/// and a SwiGLU (hidden 1024) in every block. 55,519,120 parameters.
using Golf15x3E2 = Model<Config<golf::model>, Repeat<12, golf::M2>, Repeat<3, golf::A2>,
                         Repeat<3, golf::M2>>;

/// Pure-transformer ablation at golf size: the parameter-golf baseline's shape, 9 × (GQA +
/// ReLU² MLP ×2). 17,049,088 parameters (the baseline's 17.06M adds skip weights).
using GolfTransformer9 = Model<Config<golf::model>, Repeat<9, golf::A>>;

/// Pure Mamba-2 ablation at golf size: 18 Mamba-2 blocks, no channel.
using GolfMamba18 = Model<Config<golf::model>, Repeat<18, golf::M>>;

/// Mamba-2 + gated attention 18:6 at ~1.3B (the "Hybrid LLM" recipe: [M M M A] × 6, gated
/// attention to suppress sinks, SwiGLU 4096 in every block, untied). 1,363,455,872 params.
using Hybrid18x6 = Model<
    Config<ModelSpec{.vocab = 50304, .d_model = 2048, .tied = false}>,
    Repeat<6, Pattern<Block<Mamba2<Mamba2Spec{.d_state = 128, .expand = 2, .headdim = 64}>,
                            SwiGLU<4096>>,
                      Block<Mamba2<Mamba2Spec{.d_state = 128, .expand = 2, .headdim = 64}>,
                            SwiGLU<4096>>,
                      Block<Mamba2<Mamba2Spec{.d_state = 128, .expand = 2, .headdim = 64}>,
                            SwiGLU<4096>>,
                      Block<GQA<GqaSpec{.n_heads = 16, .n_kv_heads = 4, .head_dim = 128,
                                        .output_gate = true}>,
                            SwiGLU<4096>>>>>;

/// LFM2-SSM design: LFM2-1.2B's cadence with Mamba-2 in place of ShortConv — 30 blocks,
/// sliding-window GQA at 4, 9, ..., 29, SwiGLU 6144 everywhere, tied. 1,346,382,720 params.
using Lfm2Ssm1B2 = Model<
    Config<ModelSpec{.vocab = 65536, .d_model = 1536, .tied = true}>,
    EveryKth<30, 5,
             Block<GQA<GqaSpec{.n_heads = 8, .n_kv_heads = 2, .head_dim = 192,
                               .rope_theta = 1e6, .window = 1024}>,
                   SwiGLU<6144>>,
             Block<Mamba2<Mamba2Spec{.d_state = 256, .expand = 2, .headdim = 64}>,
                   SwiGLU<6144>>>>;

namespace lfm2 {
// LFM2 as published (REFERENCE.md §3): 16 blocks, GQA with QK-norm at 2, 5, 8, 10, 12, 14,
// ShortConv (L 3, no bias) elsewhere, SwiGLU everywhere, vocab 65536, tied, theta 1e6.
template <int D, int Heads, int Ff>
struct Family {
  using C = Block<ShortConv<ShortConvSpec{.L = 3}>, SwiGLU<Ff>>;
  using A = Block<GQA<GqaSpec{.n_heads = Heads, .n_kv_heads = 8, .head_dim = 64,
                              .rope_theta = 1e6, .qk_norm = true}>,
                  SwiGLU<Ff>>;
  using type = Model<Config<ModelSpec{.vocab = 65536, .d_model = D, .tied = true}>,
                     Pattern<C, C, A, C, C, A, C, C, A, C, A, C, A, C, A, C>>;
};
}  // namespace lfm2

/// LiquidAI LFM2-350M. 354,483,968 parameters.
using Lfm2_350M = lfm2::Family<1024, 16, 4608>::type;
/// LiquidAI LFM2-700M. 742,489,344 parameters.
using Lfm2_700M = lfm2::Family<1536, 24, 6912>::type;
/// LiquidAI LFM2-1.2B. 1,170,340,608 parameters.
using Lfm2_1B2 = lfm2::Family<2048, 32, 8192>::type;

// ---- Tiny versions of every layout, for tests (chunk 8 so that T > Q is cheap) -------

namespace tiny {
inline constexpr ModelSpec model{.vocab = 258, .d_model = 32, .tied = true};
inline constexpr GqaSpec attn{.n_heads = 4, .n_kv_heads = 2, .head_dim = 8};
using M = Block<Mamba2<Mamba2Spec{.d_state = 8, .expand = 1.5, .headdim = 16, .chunk = 8}>>;
using A = Block<GQA<attn>, ReLU2<64>>;
using M2 = Block<Mamba2<Mamba2Spec{.d_state = 8, .expand = 2, .headdim = 16, .ngroups = 2,
                                   .chunk = 8}>,
                 SwiGLU<64>>;
using A2 = Block<GQA<attn>, SwiGLU<64>>;
using HM = Block<Mamba2<Mamba2Spec{.d_state = 16, .expand = 2, .headdim = 8, .ngroups = 2,
                                   .chunk = 8}>,
                 SwiGLU<64>>;
using HA = Block<GQA<GqaSpec{.n_heads = 4, .n_kv_heads = 1, .head_dim = 8,
                             .output_gate = true}>,
                 SwiGLU<64>>;
using SA = Block<GQA<GqaSpec{.n_heads = 2, .n_kv_heads = 1, .head_dim = 16, .rope_theta = 1e6,
                             .window = 6}>,
                 SwiGLU<64>>;
using SM = Block<Mamba2<Mamba2Spec{.d_state = 16, .expand = 2, .headdim = 16, .chunk = 8}>,
                 SwiGLU<64>>;
using LC = Block<ShortConv<ShortConvSpec{.L = 3}>, SwiGLU<48>>;
using LA = Block<GQA<GqaSpec{.n_heads = 4, .n_kv_heads = 2, .head_dim = 8, .rope_theta = 1e6,
                             .qk_norm = true}>,
                 SwiGLU<48>>;
// Non-neutral options: Granite-style multipliers, parallel residual, LayerNorm, NoPE,
// explicit attention scale, logit soft-cap, whole-width gated norm with G > 1, biases.
inline constexpr ModelSpec scaled{.vocab = 258, .d_model = 32, .tied = false,
                                  .norm = NormKind::Layer, .embedding_multiplier = 12,
                                  .residual_multiplier = 0.22, .logits_divisor = 8,
                                  .logit_softcap = 30, .parallel_residual = true};
using XM = Block<Mamba2<Mamba2Spec{.d_state = 8, .expand = 2, .headdim = 8, .ngroups = 2,
                                   .chunk = 8, .bias = true, .norm_whole_width = true,
                                   .dt_limit_lo = 0.001, .dt_limit_hi = 0.5}>,
                 SwiGLU<64, true>, LayerNorm>;
using XA = Block<GQA<GqaSpec{.n_heads = 4, .n_kv_heads = 2, .head_dim = 8, .rope = false,
                             .scale = 0.0078125, .bias = true}>,
                 ReLU2<64, true>, LayerNorm>;
// The golf-entry options: U-Net skips, a 61-bucket bigram embedding 16 wide (projected to
// d 32), partial RoPE (4 of each head's 8 dims rotated).
inline constexpr ModelSpec golf_options{.vocab = 258, .d_model = 32, .tied = true,
                                        .unet_skips = true, .bigram_buckets = 61,
                                        .bigram_dim = 16};
using PA = Block<GQA<GqaSpec{.n_heads = 4, .n_kv_heads = 2, .head_dim = 8, .rope_dims = 4}>,
                 ReLU2<64>>;
}  // namespace tiny

using TinyGolf15x3 = Model<Config<tiny::model, double>, Repeat<12, tiny::M>, Repeat<3, tiny::A>,
                           Repeat<3, tiny::M>>;
using TinyGolf15x3E2 = Model<Config<tiny::model, double>, Repeat<12, tiny::M2>,
                             Repeat<3, tiny::A2>, Repeat<3, tiny::M2>>;
using TinyTransformer = Model<Config<tiny::model, double>, Repeat<3, tiny::A>>;
using TinyMamba = Model<Config<tiny::model, double>, Repeat<4, tiny::M>>;
using TinyHybrid18x6 = Model<Config<ModelSpec{.vocab = 258, .d_model = 32, .tied = false}, double>,
                             Repeat<2, Pattern<tiny::HM, tiny::HM, tiny::HM, tiny::HA>>>;
using TinyLfm2Ssm = Model<Config<tiny::model, double>, EveryKth<10, 5, tiny::SA, tiny::SM>>;
using TinyLfm2 = Model<Config<tiny::model, double>,
                       Pattern<tiny::LC, tiny::LC, tiny::LA, tiny::LC, tiny::LC, tiny::LA>>;
using TinyScaled = Model<Config<tiny::scaled, double>, Repeat<2, Pattern<tiny::XM, tiny::XA>>>;
// Five blocks: an encoder of two, a decoder of three whose first two take skips.
using TinyGolfOptions = Model<Config<tiny::golf_options, double>,
                              Pattern<tiny::M, tiny::PA, tiny::M, tiny::PA, tiny::M>>;

}  // namespace hybrid
