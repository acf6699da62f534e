// Layout helpers: a model's block sequence written as types.
//   Repeat<12, M>, Repeat<3, A>, Repeat<3, M>      15 SSM + 3 attention
//   Repeat<6, Pattern<M, M, M, A>>                  18:6
//   EveryKth<30, 5, A, M>                           attention at blocks 4, 9, ..., 29
// flatten_t<Layout...> is the TypeList of Block types in order.
#pragma once
#include <utility>

namespace hybrid {

template <class... Ts>
struct TypeList {
  static constexpr int size = sizeof...(Ts);
};

template <class... Xs>
struct Pattern {};
template <int N, class... Xs>
struct Repeat {
  static_assert(N >= 0, "Repeat<N, ...>: N must be >= 0");
};
// N blocks; block i (0-based) is Special when (i + 1) % K == 0, else Default.
template <int N, int K, class Special, class Default>
struct EveryKth {
  static_assert(K > 0, "EveryKth<N, K, ...>: K must be positive");
};

namespace detail {
template <class... Ls>
struct concat;
template <>
struct concat<> {
  using type = TypeList<>;
};
template <class... A>
struct concat<TypeList<A...>> {
  using type = TypeList<A...>;
};
template <class... A, class... B, class... Rest>
struct concat<TypeList<A...>, TypeList<B...>, Rest...> {
  using type = typename concat<TypeList<A..., B...>, Rest...>::type;
};

template <class X>
struct flatten {
  using type = TypeList<X>;
};
template <class... Xs>
struct flatten<Pattern<Xs...>> {
  using type = typename concat<typename flatten<Xs>::type...>::type;
};
template <class... Xs>
struct flatten<Repeat<0, Xs...>> {
  using type = TypeList<>;
};
template <int N, class... Xs>
struct flatten<Repeat<N, Xs...>> {
  using type = typename concat<typename flatten<Pattern<Xs...>>::type,
                               typename flatten<Repeat<N - 1, Xs...>>::type>::type;
};
template <int K, class Sp, class Df, class Seq>
struct every_kth;
template <int K, class Sp, class Df, std::size_t... I>
struct every_kth<K, Sp, Df, std::index_sequence<I...>> {
  using type = typename concat<
      typename flatten<std::conditional_t<(I + 1) % K == 0, Sp, Df>>::type...>::type;
};
template <int N, int K, class Sp, class Df>
struct flatten<EveryKth<N, K, Sp, Df>> {
  using type = typename every_kth<K, Sp, Df, std::make_index_sequence<N>>::type;
};
}  // namespace detail

template <class... Layout>
using flatten_t = typename detail::flatten<Pattern<Layout...>>::type;

}  // namespace hybrid
