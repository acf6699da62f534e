// expect: n_kv_heads must divide n_heads
#include <hybrid/typed_model.hpp>  // Model's own header: the checks fire where the type is formed
using namespace hybrid;
using Bad = Model<Config<ModelSpec{.vocab = 256, .d_model = 64}>,
                  Block<GQA<GqaSpec{.n_heads = 6, .n_kv_heads = 4, .head_dim = 16}>>>;
static_assert(Bad::n_params > 0);
