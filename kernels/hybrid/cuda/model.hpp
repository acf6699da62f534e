// RuntimeModel<S, Cuda>: a model on an NVIDIA GPU. It keeps the host model (description,
// layers, float master weights) and a copy of the weights on the device, and runs the host
// model's own forward on a tape whose backend is the GPU (CudaBackend): the same layer
// code, every op a CUDA kernel. Plain C++; link hybrid::cuda.
//
//   RuntimeModel<float> cpu(find_alias("TinyMamba").desc(), seed);
//   RuntimeModel<float, Cuda> gpu(cpu);                 // uploads the weights
//   Mat<float> logits = gpu.forward(tokens, B, T);       // (B*T, V), computed on the GPU
//   Model<Config<spec, float, Cuda>, Layout...> typed(seed);  // a typed model is one too
//
// Fresh sequences (B prompts of T tokens, packed documents too); decode state on the device
// (prefill / step, KV caches) is not here yet: continue sequences on the host model.
// Weights stay float on the device; ContextOptions::gemm = GemmMode::Bf16 runs the
// projections with bf16 inputs and float accumulation.
#pragma once
#include <memory>
#include <span>
#include <utility>
#include <vector>

#include "hybrid/runtime_model.hpp"
#include "backend.hpp"
#include "context.hpp"

namespace hybrid {

template <class S>
class RuntimeModel<S, Cuda> {
 public:
  using Scalar = S;
  using Device = Cuda;

  struct Options {
    cuda::ContextOptions context{};
    std::size_t activation_bytes = std::size_t(1) << 30;  // the forward's device arena
  };

  // Copies the host model (a typed Model<...> converts too) and uploads its float values.
  explicit RuntimeModel(RuntimeModel<S> host, const Options& o = Options{})
      : host_(std::move(host)), ctx_(std::make_unique<cuda::Context>(o.context)),
        dev_(std::make_unique<cuda::CudaBackend<S>>(*ctx_, host_.param_table().total(), o.activation_bytes)) {
    tape_.set_backend(dev_.get());
    upload();
  }
  // A new model of this description (RuntimeModel<S>(d, seed)'s values), on the device.
  explicit RuntimeModel(ModelDesc d, std::uint64_t seed = 0, const Options& o = Options{})
      : RuntimeModel(RuntimeModel<S>(std::move(d), seed), o) {}
  RuntimeModel(RuntimeModel&&) = default;  // the backend and context stay where they are

  // The host model: description, parameter table, float values (the master copy).
  const RuntimeModel<S>& host() const { return host_; }
  RuntimeModel<S>& host() { return host_; }
  const ModelDesc& desc() const { return host_.desc(); }
  int vocab() const { return host_.vocab(); }
  cuda::Context& context() { return *ctx_; }
  cuda::CudaBackend<S>& backend() { return *dev_; }

  // Copies the host model's float values to the device again (after training or loading
  // changed them).
  void upload() {
    host_.require_floats("RuntimeModel<S, Cuda>::upload");
    const Index n = host_.param_table().total();
    dev_->upload(CView<S>(host_.param_values(), 1, n), dev_->parameters());
    ctx_->sync();
  }

  // tokens: B*T ids (sequence-major), checked on the host. Returns logits (B*T, V), or
  // (B, V) for the last position of each sequence, copied back to the host.
  Mat<S> forward(std::span<const int> tokens, Index B, Index T, bool all_logits = true) {
    return host_.forward(tokens, B, T, nullptr, all_logits, &tape_);
  }
  // The same with packed documents (TrainingOptions::doc_starts; nothing else of the
  // options applies to inference).
  Mat<S> forward(std::span<const int> tokens, Index B, Index T, std::span<const Index> doc_starts) {
    TrainingOptions o;
    o.doc_starts = doc_starts;
    tape_.rewind();
    const Var<S> l = host_.logits(tape_, tokens, B, T, o);
    Mat<S> out(l.rows, l.cols);
    dev_->download(l.value(), View<S>(out));
    tape_.rewind();
    return out;
  }
  // The device tape the forwards run on (its usage() tells the activation bytes a call took).
  Tape<S>& tape() { return tape_; }

 private:
  RuntimeModel<S> host_;
  std::unique_ptr<cuda::Context> ctx_;
  std::unique_ptr<cuda::CudaBackend<S>> dev_;
  Tape<S> tape_;
};

}  // namespace hybrid
