// Decode tokens/s of Golf15x3E2 at batch 1 at several context depths, with the KV cache
// stored as f32 and as bf16, in one run. Beside each rate: the attention of the three GQA
// layers alone (the decode kernel over the head-major caches; on the f32 cache also over a
// row-major copy, the layout before, and the blocked attention_forward the kernel replaced)
// and a same-run reference: the time a plain streaming sum takes to read
// the bytes one step must read (weights + cache), so ratios hold on a noisy machine.
// One JSON object per line.
//   bench_decode_depth [--quick] [--threads N] [--tokens N] [--reps N] [--depths a,b,...]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <sstream>
#include <string>
#include <vector>

#include <hybrid/model.hpp>

#include "bench_util.hpp"
#include <hybrid/ops/attention_decode.hpp>
#ifdef _OPENMP
#include <omp.h>
#endif

using namespace hybrid;
using bench::Clock;
using bench::load_average;
using bench::seconds_since;
using bench::stream_seconds;

namespace {

// The first len rows of a cache buffer as (len, heads*P) row-major values.
Mat<float> row_major(const KvRows<float>& r, Index len) {
  Mat<float> m(len, r.cols());
  for (Index i = 0; i < len; ++i)
    for (Index c = 0; c < r.cols(); ++c) m(i, c) = r.at(i, c);
  return m;
}

// The state with every KV cache stored as d (rows rounded once), room for `rows` rows.
SequenceState<float> with_kv_dtype(const SequenceState<float>& s, DType d, Index rows) {
  SequenceState<float> out;
  out.pos = s.pos;
  for (const auto& l : s.layers) {
    if (const auto* c = std::get_if<KvCache<float>>(&l)) {
      KvCache<float> n(d, c->k.heads(), c->k.head_dim());
      n.window = c->window;
      n.start_pos = c->start_pos;
      n.reserve(std::max(rows, c->len));
      n.append(row_major(c->k, c->len), row_major(c->v, c->len));
      out.layers.emplace_back(std::move(n));
    } else {
      out.layers.push_back(l);
    }
  }
  return out;
}

std::size_t kv_bytes(const SequenceState<float>& s) {
  std::size_t n = 0;
  for (const auto& l : s.layers)
    if (const auto* c = std::get_if<KvCache<float>>(&l))
      n += std::size_t(2 * c->len * c->k.cols()) * c->k.elem_bytes();
  return n;
}

// How attention_seconds runs the GQA layers' attention over the caches.
enum class AttnPath {
  Decode,    // the decode kernel over the head-major caches
  RowMajor,  // the decode kernel over (len, G*P) row-major copies (the layout before)
  Blocked,   // attention_forward with one query row (the path before the decode kernel)
};

// The GQA layers' decode attention alone over the state's caches: seconds per step (best
// of reps). RowMajor and Blocked: f32 caches only.
double attention_seconds(const RuntimeModel<float>& m, const SequenceState<float>& s, AttnPath path,
                         int reps) {
  struct Layer { const GqaLayer<float>* g; const KvCache<float>* c; Mat<float> k, v; };
  std::vector<Layer> layers;
  for (int i = 0; i < m.n_blocks(); ++i)
    if (const auto* g = std::get_if<GqaLayer<float>>(&m.block(i).mixer()))
      layers.push_back({g, &std::get<KvCache<float>>(s.layers[std::size_t(i)]), {}, {}});
  if (layers.empty()) return 0;
  for (Layer& l : layers)
    if (path == AttnPath::RowMajor) l.k = row_major(l.c->k, l.c->len), l.v = row_major(l.c->v, l.c->len);
  const GqaSpec& sp = layers[0].g->spec();
  const Index ldq = Index(sp.n_heads) * sp.head_dim;
  Mat<float> q = Mat<float>::Random(1, ldq), o(1, ldq);
  const ops::DecodeDims d{1, sp.n_heads, sp.n_kv_heads, sp.head_dim};
  Index cap = 0;
  for (const Layer& l : layers) cap = std::max(cap, l.c->len);
  Buffer<float> work(std::max(ops::attention_decode_scratch(d, par::threads()),
                              ops::attention_scratch(ops::AttnDims{1, cap, sp.n_heads, sp.n_kv_heads, sp.head_dim},
                                                     par::threads())));
  double best = 1e30;
  for (int r = 0; r < reps; ++r) {
    const auto t0 = Clock::now();
    for (const Layer& l : layers) {
      const KvCache<float>& c = *l.c;
      const Index qpos = c.next_pos() - 1;
      ops::KvSpan<float> kv = c.span();
      if (path == AttnPath::Blocked) {
        ops::attention_forward<float>(q.data(), kv.k, kv.v, o.data(),
                                      ops::AttnDims{1, c.len, sp.n_heads, sp.n_kv_heads, sp.head_dim, kv.ld, kv.hs},
                                      l.g->scale(), qpos, c.start_pos, sp.window, nullptr, work.data());
        continue;
      }
      if (path == AttnPath::RowMajor) {
        kv = ops::KvSpan<float>{};
        kv.k = l.k.data(), kv.v = l.v.data(), kv.len = c.len, kv.kpos0 = c.start_pos;
      }
      ops::attention_decode<float>(d, q.data(), &kv, &qpos, o.data(), l.g->scale(), sp.window, work.data());
    }
    best = std::min(best, seconds_since(t0));
  }
  return best;
}

std::vector<int> parse_list(const char* s) {
  std::vector<int> v;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ',')) v.push_back(std::atoi(item.c_str()));
  return v;
}

}  // namespace

int main(int argc, char** argv) {
  int threads = 2, n_tok = 32, reps = 3, chunk = 1024;
  std::vector<int> depths = {2048, 8192, 32768};
  bool quick = false, depths_given = false;
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--quick")) quick = true;
    else if (!std::strcmp(argv[i], "--threads") && i + 1 < argc) threads = std::atoi(argv[++i]);
    else if (!std::strcmp(argv[i], "--tokens") && i + 1 < argc) n_tok = std::atoi(argv[++i]);
    else if (!std::strcmp(argv[i], "--reps") && i + 1 < argc) reps = std::atoi(argv[++i]);
    else if (!std::strcmp(argv[i], "--depths") && i + 1 < argc) depths = parse_list(argv[++i]), depths_given = true;
    else {
      std::fprintf(stderr, "usage: bench_decode_depth [--quick] [--threads N] [--tokens N] [--reps N] [--depths a,b,...]\n");
      return 2;
    }
  }
  if (quick) {
    n_tok = 8, reps = 2;
    if (!depths_given) depths = {512, 2048};
  }
  if (threads < 1 || n_tok < 1 || reps < 1 || depths.empty() ||
      *std::min_element(depths.begin(), depths.end()) < 1) {
    std::fprintf(stderr, "bench_decode_depth: --threads, --tokens, --reps and every depth must be >= 1\n");
    return 2;
  }
#ifdef _OPENMP
  omp_set_num_threads(threads);
#else
  threads = 1;
#endif

  const double load_before = load_average();
  const RuntimeModel<float> model(Golf15x3E2::desc(), 1);
  std::size_t weight_bytes = 0;
  for (const auto& e : model.param_table().entries()) weight_bytes += 4 * std::size_t(e.size());
  Rng rng(7);
  const int max_depth = *std::max_element(depths.begin(), depths.end());
  std::vector<int> prompt(static_cast<std::size_t>(max_depth)), toks(static_cast<std::size_t>(n_tok + 2));
  for (auto& t : prompt) t = int(rng.below(std::uint64_t(model.vocab())));
  for (auto& t : toks) t = int(rng.below(std::uint64_t(model.vocab())));

  // One prefill, in chunks, to the deepest context; each depth's state is a copy taken on the way.
  std::vector<int> sorted = depths;
  std::sort(sorted.begin(), sorted.end());
  SequenceState<float> st = model.new_state(max_depth);
  SequenceState<float>* stp = &st;
  Tape<float> ctx(false);
  std::vector<std::pair<int, SequenceState<float>>> at_depth;
  double prefill_s = 0;
  for (int d : sorted) {
    const auto t0 = Clock::now();
    while (st.pos < d) {
      const Index n = std::min<Index>(chunk, d - st.pos);
      model.forward(std::span<const int>(prompt.data() + st.pos, std::size_t(n)), 1, n, &stp, false, &ctx);
    }
    prefill_s += seconds_since(t0);
    std::printf("{\"case\":\"decode_depth_prefill\",\"model\":\"Golf15x3E2\",\"threads\":%d,"
                "\"depth\":%d,\"chunk\":%d,\"cumulative_s\":%.2f}\n", threads, d, chunk, prefill_s);
    std::fflush(stdout);
    at_depth.emplace_back(d, st);
  }

  for (const auto& [depth, base] : at_depth) {
    const DType kinds[] = {DType::F32, DType::BF16};
    double rate[2] = {0, 0};
    for (int k = 0; k < 2; ++k) {
      const DType kd = kinds[k];
      const Index rows = depth + n_tok + 2;
      // Each repetition decodes from the same depth; the best time counts.
      double best = 1e30;
      std::size_t kvb = 0;
      for (int r = 0; r < reps; ++r) {
        SequenceState<float> s = with_kv_dtype(base, kd, rows);
        SequenceState<float>* sp = &s;
        kvb = kv_bytes(s);
        Tape<float> tape(false);
        for (int w = 0; w < 2; ++w)  // sizes the tape's arena
          model.step(std::span<const int>(&toks[std::size_t(w)], 1), std::span<SequenceState<float>* const>(&sp, 1), tape);
        const auto t0 = Clock::now();
        for (int i = 0; i < n_tok; ++i)
          model.step(std::span<const int>(&toks[std::size_t(i + 2)], 1), std::span<SequenceState<float>* const>(&sp, 1), tape);
        best = std::min(best, seconds_since(t0));
      }
      rate[k] = n_tok / best;
      const SequenceState<float> s = with_kv_dtype(base, kd, rows);
      const double attn = attention_seconds(model, s, AttnPath::Decode, reps * 3);
      const bool f32 = kd == DType::F32;
      const double rowmaj = f32 ? attention_seconds(model, s, AttnPath::RowMajor, reps * 3) : 0.0;
      const double blocked = f32 ? attention_seconds(model, s, AttnPath::Blocked, reps * 3) : 0.0;
      // The bytes a step must read, streamed once by a plain sum: the reference rate.
      std::vector<float> buf((weight_bytes + kvb) / 4, 1.0f);
      const double ref = stream_seconds(buf, 3);
      std::vector<float> kvbuf(std::max<std::size_t>(kvb / 4, 1), 1.0f);
      const double ref_kv = stream_seconds(kvbuf, 5);
      std::printf("{\"case\":\"decode_depth\",\"model\":\"Golf15x3E2\",\"kv_dtype\":\"%s\",\"batch\":1,"
                  "\"threads\":%d,\"depth\":%d,\"tokens\":%d,\"reps\":%d,\"tokens_per_s\":%.2f,"
                  "\"step_ms\":%.3f,\"attn_ms\":%.3f,\"attn_row_major_ms\":%.3f,\"attn_blocked_ms\":%.3f,\"kv_bytes\":%zu,"
                  "\"weight_bytes\":%zu,\"stream_ms\":%.3f,\"stream_kv_ms\":%.3f,"
                  "\"step_vs_stream\":%.3f,\"attn_vs_stream_kv\":%.3f}\n",
                  dtype_name(kd), threads, depth, n_tok, reps, rate[k], 1e3 / rate[k], 1e3 * attn,
                  1e3 * rowmaj, 1e3 * blocked, kvb, weight_bytes, 1e3 * ref, 1e3 * ref_kv,
                  (1.0 / rate[k]) / ref, ref_kv > 0 ? attn / ref_kv : 0.0);
      std::fflush(stdout);
    }
    std::printf("{\"case\":\"decode_depth_summary\",\"model\":\"Golf15x3E2\",\"threads\":%d,\"depth\":%d,"
                "\"f32_tokens_per_s\":%.2f,\"bf16_tokens_per_s\":%.2f,\"bf16_ratio\":%.3f}\n",
                threads, depth, rate[0], rate[1], rate[1] / rate[0]);
  }
  std::printf("{\"case\":\"decode_depth_machine\",\"threads\":%d,\"loadavg_before\":%.2f,\"loadavg_after\":%.2f}\n",
              threads, load_before, load_average());
  return 0;
}
