// expect: headdim must divide d_inner
#include <hybrid/typed_model.hpp>  // Model's own header: the checks fire where the type is formed
using namespace hybrid;
using Bad = Model<Config<ModelSpec{.vocab = 256, .d_model = 64}>,
                  Block<Mamba2<Mamba2Spec{.d_state = 16, .expand = 2, .headdim = 48}>>>;
static_assert(Bad::n_params > 0);
