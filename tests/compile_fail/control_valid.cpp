// expect-success: a valid model compiles, so the harness itself can fail.
#include <hybrid/typed_model.hpp>  // Model's own header: the checks fire where the type is formed
using namespace hybrid;
using Good = Model<Config<ModelSpec{.vocab = 256, .d_model = 64}>,
                   Block<Mamba2<Mamba2Spec{.d_state = 16, .expand = 2, .headdim = 32, .ngroups = 2}>>>;
static_assert(Good::n_params > 0);
