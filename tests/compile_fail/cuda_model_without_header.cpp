// expect: RuntimeModel<S, Cuda> is declared in <hybrid/cuda/model.hpp>
#include <hybrid/typed_model.hpp>  // the CUDA model's header is not included
using namespace hybrid;
using Gpu = Model<Config<ModelSpec{.vocab = 64, .d_model = 64}, float, Cuda>,
                  Block<GQA<GqaSpec{.n_heads = 2, .n_kv_heads = 2, .head_dim = 32}>>>;
Gpu make() { return Gpu(1); }
