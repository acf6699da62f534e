// Model<Config, Layout...>: a model as one type. Sizes live in the type: every block is
// checked against the model width at compile time, and the parameter count and layout
// string are constexpr. Storage and compute are RuntimeModel's, so a compile-time model
// and one built from a file run exactly the same code.
//
//   using Golf = Model<Config<ModelSpec{.vocab = 1024, .d_model = 512}>,
//                      Repeat<12, M>, Repeat<3, A>, Repeat<3, M>>;
//   Golf m(/*seed=*/1);   // Golf::n_params, Golf::layout == "MMMMMMMMMMMMAAAMMM"
//
// Config's third argument is where the model runs: Cpu (the default) or Cuda, which needs
// <hybrid/cuda/model.hpp> (hybrid::cuda) and gives RuntimeModel<S, Cuda>'s interface.
#pragma once
#include <array>
#include <string_view>

#include "block.hpp"
#include "layout.hpp"
#include "runtime_model.hpp"

namespace hybrid {

template <ModelSpec Sp, class S = float, class Dev = Cpu>
struct Config {
  static_assert(std::is_same_v<S, float> || std::is_same_v<S, double>,
                "Config: the scalar type must be float or double");
  static_assert(std::is_same_v<Dev, Cpu> || std::is_same_v<Dev, Cuda>,
                "Config: the device must be hybrid::Cpu or hybrid::Cuda");
  static constexpr ModelSpec spec = Sp;
  using Scalar = S;
  using Device = Dev;
  template <class T>
  using rebind = Config<Sp, T, Dev>;
};

namespace detail {
template <class Cfg, class List>
struct model_traits;
template <class Cfg, class... Bs>
struct model_traits<Cfg, TypeList<Bs...>> {
  static constexpr ModelSpec spec = Cfg::spec;
  static_assert(spec.vocab > 0, "Model: Config's vocab must be positive");
  static_assert(spec.d_model > 0, "Model: Config's d_model must be positive");
  static_assert(sizeof...(Bs) > 0, "Model: the layout has no blocks");
  static constexpr bool valid = (Bs::template check<spec.d_model>() && ...);
  static constexpr int n_blocks = sizeof...(Bs);
  static constexpr Index n_params =
      model_level_params(spec, int(sizeof...(Bs))) + (param_count(Bs::desc(), spec) + ...);
  static constexpr std::array<char, sizeof...(Bs) + 1> layout{Bs::code..., '\0'};
  static ModelDesc desc() { return ModelDesc{spec, {Bs::desc()...}}; }
};
}  // namespace detail

template <class Cfg, class... Layout>
class Model : public RuntimeModel<typename Cfg::Scalar, typename Cfg::Device> {
  using traits = detail::model_traits<Cfg, flatten_t<Layout...>>;
  static_assert(traits::valid);

 public:
  using config = Cfg;
  using blocks = flatten_t<Layout...>;
  template <class T>
  using rebind = Model<typename Cfg::template rebind<T>, Layout...>;

  static constexpr int n_blocks = traits::n_blocks;
  static constexpr Index n_params = traits::n_params;
  static constexpr std::string_view layout{traits::layout.data(), std::size_t(n_blocks)};
  static ModelDesc desc() { return traits::desc(); }

  explicit Model(std::uint64_t seed = 0)
      : RuntimeModel<typename Cfg::Scalar, typename Cfg::Device>(desc(), seed) {}
};

}  // namespace hybrid
