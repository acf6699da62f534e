// After a first step has sized every buffer, a decode step and a training step allocate
// nothing on the heap: operator new is replaced by a counting one, and Eigen's own
// allocations are caught by EIGEN_RUNTIME_NO_MALLOC (with eigen_assert kept on in this
// Release build). A program of its own: the model code is compiled here with the checks
// on, and sanitizers (which replace the allocator) are not used for it.
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <new>

namespace alloc_check {
std::atomic<bool> counting{false};
std::atomic<long> news{0}, eigen{0};
inline void eigen_failed(const char* what) {
  if (counting) ++eigen;
  else std::fprintf(stderr, "eigen_assert failed: %s\n", what);
}
}  // namespace alloc_check

#define EIGEN_RUNTIME_NO_MALLOC
#define eigen_assert(x)                               \
  do {                                                \
    if (!(x)) ::alloc_check::eigen_failed(#x);        \
  } while (0)

#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#include <hybrid/alias_registry.hpp>
#include <hybrid/model.hpp>
#include <hybrid/train/optim.hpp>

namespace {
void* counted(std::size_t n, std::size_t align = 0) {
  if (alloc_check::counting) ++alloc_check::news;
  void* p = align > alignof(std::max_align_t) ? std::aligned_alloc(align, (n + align - 1) / align * align)
                                              : std::malloc(n ? n : 1);
  if (!p) throw std::bad_alloc();
  return p;
}
}  // namespace

void* operator new(std::size_t n) { return counted(n); }
void* operator new[](std::size_t n) { return counted(n); }
void* operator new(std::size_t n, std::align_val_t a) { return counted(n, std::size_t(a)); }
void* operator new[](std::size_t n, std::align_val_t a) { return counted(n, std::size_t(a)); }
void* operator new(std::size_t n, const std::nothrow_t&) noexcept { return std::malloc(n ? n : 1); }
void operator delete(void* p) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t) noexcept { std::free(p); }
void operator delete(void* p, std::align_val_t) noexcept { std::free(p); }
void operator delete[](void* p, std::align_val_t) noexcept { std::free(p); }
void operator delete(void* p, std::size_t, std::align_val_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t, std::align_val_t) noexcept { std::free(p); }

using namespace hybrid;

namespace {
// Runs f with the counters on; returns (operator new calls, Eigen heap allocations).
template <class F>
std::pair<long, long> count(F&& f) {
  alloc_check::news = 0;
  alloc_check::eigen = 0;
  Eigen::internal::set_is_malloc_allowed(false);
  alloc_check::counting = true;
  f();
  alloc_check::counting = false;
  Eigen::internal::set_is_malloc_allowed(true);
  return {alloc_check::news.load(), alloc_check::eigen.load()};
}

const char* const kModels[] = {"TinyHybrid18x6", "TinyGolf15x3E2", "TinyLfm2", "TinyScaled",
                               "TinyMamba", "TinyTransformer"};
}  // namespace

TEST_CASE("alloc: a decode step allocates nothing after the first") {
  for (const char* name : kModels) {
    CAPTURE(name);
    RuntimeModel<float> m(find_alias(name).desc(), 1);
    Tape<float> ctx(false);
    std::vector<SequenceState<float>> states;
    for (int b = 0; b < 2; ++b) states.push_back(m.new_state(/*reserve_tokens=*/64));
    std::vector<SequenceState<float>*> ptr{&states[0], &states[1]};
    std::vector<int> tok{3, 7};
    for (int i = 0; i < 3; ++i) m.step(tok, ptr, ctx);  // sizes the arena
    const std::size_t blocks = ctx.arena().allocations();
    const auto [news, eigen] = count([&] {
      for (int i = 0; i < 8; ++i) {
        const CView<float> l = m.step(tok, ptr, ctx);
        tok[0] = int(i % 7) + 1;
        tok[1] = int(l.cols > 9 ? 9 : 1);
      }
    });
    CHECK(news == 0);
    CHECK(eigen == 0);
    CHECK(ctx.arena().allocations() == blocks);
    CHECK(states[0].pos == 11);
  }
}

TEST_CASE("alloc: a training step (forward, backward, optimiser) allocates nothing after the first") {
  for (const char* name : kModels) {
    CAPTURE(name);
    RuntimeModel<float> m(find_alias(name).desc(), 2);
    GradStore<float> grads(m);
    train::Optimizer<float> opt(grads, train::OptimConfig{});
    Tape<float> tape(true, &grads);
    const Index B = 2, T = 24;
    std::vector<int> toks(B * T), tg(B * T);
    for (Index i = 0; i < B * T; ++i) toks[i] = int((i * 7 + 3) % m.vocab()), tg[i] = int((i * 5 + 1) % m.vocab());
    auto step = [&] {
      grads.zero();
      tape.rewind();
      tape.backward(m.loss(tape, toks, tg, B, T));
      opt.step(1.0);
    };
    step();
    step();
    const std::size_t blocks = tape.arena().allocations();
    const auto [news, eigen] = count([&] {
      for (int i = 0; i < 2; ++i) step();
    });
    CHECK(news == 0);
    CHECK(eigen == 0);
    CHECK(tape.arena().allocations() == blocks);
  }
}
