// The shipped aliases by name, as run-time descriptions: programs that take `--model NAME`
// build RuntimeModel<S>(entry.desc(), seed) in whichever scalar type they run.
#pragma once
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include "aliases.hpp"

namespace hybrid {

struct AliasInfo {
  const char* name;
  Index params;
  std::string_view layout;
  ModelDesc (*desc)();
  std::string_view scalar;  // "float" or "double": the scalar type the alias is declared in
};

namespace detail {
template <class M>
AliasInfo alias_info(const char* name) {
  return {name, M::n_params, M::layout, &M::desc,
          std::is_same_v<typename M::Scalar, float> ? "float" : "double"};
}
}  // namespace detail

inline const std::vector<AliasInfo>& shipped_aliases() {
  static const std::vector<AliasInfo> all{
      detail::alias_info<Golf15x3>("Golf15x3"),
      detail::alias_info<Golf15x3E2>("Golf15x3E2"),
      detail::alias_info<GolfTransformer9>("GolfTransformer9"),
      detail::alias_info<GolfMamba18>("GolfMamba18"),
      detail::alias_info<Hybrid18x6>("Hybrid18x6"),
      detail::alias_info<Lfm2Ssm1B2>("Lfm2Ssm1B2"),
      detail::alias_info<Lfm2_350M>("Lfm2_350M"),
      detail::alias_info<Lfm2_700M>("Lfm2_700M"),
      detail::alias_info<Lfm2_1B2>("Lfm2_1B2"),
      detail::alias_info<TinyGolf15x3>("TinyGolf15x3"),
      detail::alias_info<TinyGolf15x3E2>("TinyGolf15x3E2"),
      detail::alias_info<TinyTransformer>("TinyTransformer"),
      detail::alias_info<TinyMamba>("TinyMamba"),
      detail::alias_info<TinyHybrid18x6>("TinyHybrid18x6"),
      detail::alias_info<TinyLfm2Ssm>("TinyLfm2Ssm"),
      detail::alias_info<TinyLfm2>("TinyLfm2"),
      detail::alias_info<TinyScaled>("TinyScaled"),
  };
  return all;
}

inline const AliasInfo& find_alias(std::string_view name) {
  for (const auto& a : shipped_aliases())
    if (name == a.name) return a;
  std::string names;
  for (const auto& a : shipped_aliases()) names += std::string(names.empty() ? "" : ", ") + a.name;
  fail("unknown model '", name, "'; shipped aliases: ", names);
}

}  // namespace hybrid
