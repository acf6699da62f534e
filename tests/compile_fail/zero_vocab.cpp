// expect: vocab must be positive
#include <hybrid/model.hpp>
using namespace hybrid;
using Bad = Model<Config<ModelSpec{.vocab = 0, .d_model = 64}>,
                  Block<GQA<GqaSpec{.n_heads = 2, .n_kv_heads = 2, .head_dim = 8}>>>;
static_assert(Bad::n_params > 0);
