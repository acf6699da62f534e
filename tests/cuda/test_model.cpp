// Whole models on the GPU (RuntimeModel<S, Cuda>) against the same models on the CPU: the
// logits of every Tiny layout, packed documents, and the bf16 GEMM mode. Part of
// hybrid_cuda_tests (main in test_kernels.cpp: without a device these are skipped).
#include <doctest/doctest.h>

#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include <hybrid/alias_registry.hpp>
#include <hybrid/cuda/model.hpp>
#include <hybrid/model.hpp>

#include "../test_util.hpp"
#include "compare.hpp"

using namespace hybrid;

namespace hybrid_test_cuda_model {

namespace {

using cuda_test::rel_err;

// Rows whose largest logit leads the runner-up by more than `margin` pick the same id.
template <class S>
void check_argmax(const Mat<S>& gpu, const Mat<S>& cpu, double margin) {
  for (Index r = 0; r < cpu.rows(); ++r) {
    Index best = 0;
    cpu.row(r).maxCoeff(&best);
    double second = -std::numeric_limits<double>::infinity();
    for (Index c = 0; c < cpu.cols(); ++c)
      if (c != best) second = std::max(second, double(cpu(r, c)));
    if (double(cpu(r, best)) - second <= margin) continue;
    Index g = 0;
    gpu.row(r).maxCoeff(&g);
    CHECK(g == best);
  }
}

template <class S>
double tol() { return std::is_same_v<S, float> ? 2e-4 : 1e-9; }

}  // namespace

TEST_CASE_TEMPLATE("every Tiny layout's logits on the GPU match the CPU model", S, float, double) {
  std::vector<std::pair<std::string, ModelDesc>> layouts;
  for (const AliasInfo& a : shipped_aliases())
    if (std::string(a.name).rfind("Tiny", 0) == 0) layouts.emplace_back(a.name, a.desc());
  layouts.emplace_back("TinyGolfOptions", TinyGolfOptions::desc());
  for (const auto& [name, desc] : layouts) {
    CAPTURE(name);
    const RuntimeModel<S> cpu(desc, 3);
    RuntimeModel<S, Cuda> gpu(cpu);
    for (const auto& [B, T] : {std::pair<Index, Index>{1, 1}, {2, 21}, {1, 70}}) {
      CAPTURE(B);
      CAPTURE(T);
      const std::vector<int> tok = test_util::random_tokens(B * T, cpu.vocab(), 5 + T);
      const Mat<S> ref = cpu.forward(tok, B, T);
      const Mat<S> got = gpu.forward(tok, B, T);
      CHECK(rel_err<S>(got, ref) <= tol<S>());
      check_argmax<S>(got, ref, 1e-3);
      const Mat<S> last = gpu.forward(tok, B, T, false);
      CHECK(rel_err<S>(last, cpu.forward(tok, B, T, nullptr, false)) <= tol<S>());
    }
  }
}

TEST_CASE("packed documents on the GPU match the CPU model") {
  const RuntimeModel<float> cpu(find_alias("TinyLfm2").desc(), 7);
  RuntimeModel<float, Cuda> gpu(cpu);
  const Index B = 2, T = 24;
  const std::vector<int> tok = test_util::random_tokens(B * T, cpu.vocab(), 9);
  const std::vector<Index> starts{5, 17, 24, 30};
  TrainingOptions o;
  o.doc_starts = starts;
  Tape<float> host;
  const Mat<float> ref = cpu.logits(host, tok, B, T, o).val();
  CHECK(rel_err<float>(gpu.forward(tok, B, T, starts), ref) <= 2e-4);
}

TEST_CASE("a typed model with Config<spec, float, Cuda> runs on the GPU with the CPU type's values") {
  using Cpu = Model<Config<tiny::model, float>, Repeat<2, tiny::M>, tiny::A, tiny::M>;
  using Gpu = Model<Config<tiny::model, float, Cuda>, Repeat<2, tiny::M>, tiny::A, tiny::M>;
  static_assert(std::is_same_v<Gpu::Device, Cuda> && Gpu::n_params == Cpu::n_params);
  static_assert(std::is_same_v<Gpu::rebind<double>::Device, Cuda>);
  const Cpu cpu(11);
  Gpu gpu(11);  // the same seed, the same values
  const std::vector<int> tok = test_util::random_tokens(2 * 33, tiny::model.vocab, 4);
  CHECK(rel_err<float>(gpu.forward(tok, 2, 33), cpu.forward(tok, 2, 33)) <= 2e-4);
}

TEST_CASE("the bf16 GEMM mode stays near the float model, and new weights reach the device by upload()") {
  RuntimeModel<float> cpu(find_alias("TinyHybrid18x6").desc(), 4);
  RuntimeModel<float, Cuda>::Options o;
  o.context.gemm = cuda::GemmMode::Bf16;
  RuntimeModel<float, Cuda> gpu(cpu, o);
  const std::vector<int> tok = test_util::random_tokens(40, cpu.vocab(), 2);
  const Mat<float> ref = cpu.forward(tok, 1, 40);
  const double e = rel_err<float>(gpu.forward(tok, 1, 40), ref);
  CHECK(e > 0);  // bf16 inputs round
  CHECK(e <= 3e-2);
  gpu.host().init(99);  // other weights: the device keeps the old ones until upload()
  const Mat<float> fresh = gpu.host().forward(tok, 1, 40);
  const double stale = rel_err<float>(gpu.forward(tok, 1, 40), fresh);
  gpu.upload();
  const double now = rel_err<float>(gpu.forward(tok, 1, 40), fresh);
  CHECK(now <= 3e-2);
  CHECK(stale > 4 * now);
}

}  // namespace hybrid_test_cuda_model
