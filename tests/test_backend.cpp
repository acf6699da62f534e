// The tape's backend seam (autograd/backend.hpp), checked on the host: a backend whose
// memory is unreadable outside its own ops (PROT_NONE pages, opened only while one of its
// ops runs) runs every Tiny layout's forward. Its logits must equal the host tape's bit for
// bit, and any layer or model code that touched a backend value directly, instead of going
// through the backend, would fault. So this checks that the whole forward path, which the
// CUDA backend runs on the GPU, hands every op to the backend.
#include <doctest/doctest.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <csignal>
#include <unistd.h>

#include <cstring>
#include <string>
#include <vector>

#include <hybrid/alias_registry.hpp>
#include <hybrid/model.hpp>

#include "test_util.hpp"

using namespace hybrid;
using hybrid::test_util::contains;
using hybrid::test_util::error_of;

// This file's own namespace: the tests compile in batches (tests/CMakeLists.txt).
namespace hybrid_test_backend {

namespace {

// Host memory that only the backend's ops may touch: one mapping, PROT_NONE except inside
// an op (or a transfer), which runs the ops/ function on it.
template <class S>
class ProtectedBackend final : public Backend<S> {
 public:
  ProtectedBackend(Index n_params, std::size_t bytes) : bytes_(round_up(bytes, page())) {
    base_ = static_cast<unsigned char*>(mmap(nullptr, bytes_, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
    REQUIRE(base_ != MAP_FAILED);
    params_ = View<S>(reinterpret_cast<S*>(base_), 1, n_params);
    floor_ = round_up(sizeof(S) * std::size_t(n_params), 256);
    used_ = floor_;
    REQUIRE(floor_ <= bytes_);
  }
  ~ProtectedBackend() override { munmap(base_, bytes_); }
  ProtectedBackend(const ProtectedBackend&) = delete;
  ProtectedBackend& operator=(const ProtectedBackend&) = delete;

  const char* name() const override { return "protected host"; }
  View<S> parameters() override { return params_; }
  S* alloc(Index n) override {
    const std::size_t at = round_up(used_, 256), need = sizeof(S) * std::size_t(std::max<Index>(n, 1));
    HYBRID_CHECK(at + need <= bytes_, "protected backend: out of memory");
    used_ = at + need;
    high_ = std::max(high_, used_);
    return reinterpret_cast<S*>(base_ + at);
  }
  std::size_t mark() const override { return used_; }
  void release(std::size_t m) override { used_ = m; }
  void rewind() override { used_ = floor_; }
  std::size_t used() const { return used_ - floor_; }
  std::size_t high_water() const { return high_ - floor_; }
  // Calls through the backend so far (every op is one).
  long calls() const { return calls_; }
  // The first byte of the mapping, for the fault test.
  const volatile unsigned char* raw() const { return base_; }

  void upload(CView<S> host, View<S> dst) override { Open o(*this); ops::copy<S>(host, dst); }
  void download(CView<S> src, View<S> host) override { Open o(*this); ops::copy<S>(src, host); }

  void copy(CView<S> x, View<S> y) override { Open o(*this); ops::copy<S>(x, y); }
  void add(CView<S> x, CView<S> y, S alpha, View<S> z) override { Open o(*this); ops::add_forward<S>(x, y, alpha, z); }
  void scale(CView<S> x, S alpha, View<S> z) override { Open o(*this); ops::scale_forward<S>(x, alpha, z); }
  void mul(CView<S> a, CView<S> b, View<S> z) override { Open o(*this); ops::mul_forward<S>(a, b, z); }
  void scale_rows(CView<S> x, const S* s, View<S> y) override { Open o(*this); ops::scale_rows_forward<S>(x, s, y); }
  void gather_rows(CView<S> x, const Index* idx, Index n, View<S> y) override {
    Open o(*this);
    ops::gather_rows_forward<S>(x, idx, n, y);
  }
  void silu(CView<S> x, View<S> y) override { Open o(*this); ops::silu_forward<S>(x, y); }
  void sigmoid_gate(CView<S> g0, CView<S> g, View<S> y) override { Open o(*this); ops::sigmoid_gate_forward<S>(g0, g, y); }
  void swiglu(CView<S> a, CView<S> u, View<S> h) override { Open o(*this); ops::swiglu_forward<S>(a, u, h); }
  void relu2(CView<S> x, View<S> y) override { Open o(*this); ops::relu2_forward<S>(x, y); }
  void dt_softplus(CView<S> raw, CView<S> bias, S lo, S hi, View<S> dt) override {
    Open o(*this);
    ops::dt_softplus_forward<S>(raw, bias, lo, hi, dt);
  }
  void softcap(View<S> l, S cap) override { Open o(*this); ops::softcap_forward<S>(l, cap); }
  void neg_exp(CView<S> x, View<S> y) override {
    Open o(*this);
    for (Index r = 0; r < x.rows; ++r)
      for (Index c = 0; c < x.cols; ++c) y(r, c) = -std::exp(x(r, c));
  }
  void rmsnorm(CView<S> x, CView<S> w, S eps, View<S> y) override { Open o(*this); ops::rmsnorm_forward<S>(x, w, eps, y); }
  void layernorm(CView<S> x, CView<S> w, CView<S> b, S eps, View<S> y) override {
    Open o(*this);
    ops::layernorm_forward<S>(x, w, b, eps, y);
  }
  void gated_rmsnorm(CView<S> y, CView<S> z, CView<S> w, Index group, S eps, View<S> out) override {
    Open o(*this);
    ops::gated_rmsnorm_forward<S>(y, z, w, group, eps, out);
  }
  void embedding(CView<S> table, const int* ids, Index R, S mult, View<S> out) override {
    Open o(*this);
    ops::embedding_forward<S>(table, ids, R, mult, out);
  }
  void linear(CView<S> x, CView<S> W, CView<S> b, View<S> y) override { Open o(*this); ops::linear_forward<S>(x, W, b, y); }
  void causal_conv1d(CView<S> u, CView<S> w, CView<S> b, CView<S> hist, View<S> y, View<S> hist_out) override {
    Open o(*this);
    ops::causal_conv1d_forward<S>(u, w, b, hist, y, hist_out);
  }
  void ssd(const ops::SsdDims& d, int chunk, ScanPath path, const ops::SsdArgs<S>& a) override {
    Open o(*this);
    ops::ssd_forward<S>(d, chunk, path, a);
  }
  void rope(View<S> x, int n_heads, int P, Index pos0, double base, int rot) override {
    Open o(*this);
    ops::rope_forward<S>(x, n_heads, P, pos0, base, rot);
  }
  void attention(const S* q, const S* k, const S* v, S* out, const ops::AttnDims& d, S scale, Index qpos0,
                 Index kpos0, int window) override {
    Open o(*this);
    ops::attention_forward<S>(q, k, v, out, d, scale, qpos0, kpos0, window);
  }

 private:
  struct Open {
    ProtectedBackend& b;
    explicit Open(ProtectedBackend& be) : b(be) {
      ++b.calls_;
      REQUIRE(mprotect(b.base_, b.bytes_, PROT_READ | PROT_WRITE) == 0);
    }
    ~Open() { mprotect(b.base_, b.bytes_, PROT_NONE); }
  };
  static std::size_t page() { return std::size_t(sysconf(_SC_PAGESIZE)); }
  static std::size_t round_up(std::size_t n, std::size_t a) { return (n + a - 1) / a * a; }

  std::size_t bytes_;
  unsigned char* base_ = nullptr;
  View<S> params_;
  std::size_t floor_ = 0, used_ = 0, high_ = 0;
  long calls_ = 0;
};

template <class S>
std::unique_ptr<ProtectedBackend<S>> backend_for(const RuntimeModel<S>& m) {
  auto b = std::make_unique<ProtectedBackend<S>>(m.param_table().total(), std::size_t(64) << 20);
  b->upload(CView<S>(m.param_values(), 1, m.param_table().total()), b->parameters());
  return b;
}

template <class S>
void check_layout(const ModelDesc& desc, const char* name) {
  CAPTURE(name);
  const RuntimeModel<S> m(desc, 3);
  auto dev = backend_for(m);
  const Index B = 2, T = 21;  // T above the Tiny chunk of 8, not a multiple of it
  const std::vector<int> tok = test_util::random_tokens(B * T, m.vocab(), 5);
  const Mat<S> ref = m.forward(tok, B, T);
  Tape<S> t;
  t.set_backend(dev.get());
  const long before = dev->calls();
  const Mat<S> got = m.forward(tok, B, T, nullptr, true, &t);
  CHECK(dev->calls() > before + 4 * m.n_blocks());  // every block ran its ops there
  REQUIRE(got.rows() == ref.rows());
  REQUIRE(got.cols() == ref.cols());
  CHECK((got.array() == ref.array()).all());
  CHECK(dev->used() == 0);  // the forward gave back everything it took
  // Last-position logits and a second call on the same tape.
  const Mat<S> last = m.forward(tok, B, T, nullptr, false, &t);
  const Mat<S> last_ref = m.forward(tok, B, T, nullptr, false);
  CHECK((last.array() == last_ref.array()).all());
}

}  // namespace

TEST_CASE_TEMPLATE("every Tiny layout's forward on a backend equals the host forward bit for bit", S, float,
                   double) {
  for (const AliasInfo& a : shipped_aliases())
    if (std::string(a.name).rfind("Tiny", 0) == 0) check_layout<S>(a.desc(), a.name);
  check_layout<S>(TinyGolfOptions::desc(), "TinyGolfOptions");  // bigram embedding, U-Net skips, softcap
}

TEST_CASE("packed documents run on a backend as on the host") {
  const RuntimeModel<double> m(find_alias("TinyLfm2").desc(), 7);
  auto dev = backend_for(m);
  const Index B = 2, T = 24;
  const std::vector<int> tok = test_util::random_tokens(B * T, m.vocab(), 9);
  const std::vector<Index> starts{5, 17, 24, 30};
  TrainingOptions o;
  o.doc_starts = starts;
  Tape<double> host;
  const Mat<double> ref = m.logits(host, tok, B, T, o).val();
  Tape<double> t;
  t.set_backend(dev.get());
  const Var<double> l = m.logits(t, tok, B, T, o);
  Mat<double> got(l.rows, l.cols);
  dev->download(l.value(), View<double>(got));
  CHECK((got.array() == ref.array()).all());
}

TEST_CASE("a backend's memory faults outside its ops, so the equality above checks the seam") {
  const RuntimeModel<float> m(find_alias("TinyMamba").desc(), 1);
  auto dev = backend_for(m);
  const pid_t pid = fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {  // the child reads a parameter value directly: it must die of SIGSEGV
    struct sigaction dfl {};  // the default action, not the test runner's or a sanitizer's report
    dfl.sa_handler = SIG_DFL;
    sigemptyset(&dfl.sa_mask);
    sigaction(SIGSEGV, &dfl, nullptr);
    sigaction(SIGBUS, &dfl, nullptr);
    const volatile unsigned char v = dev->raw()[0];
    (void)v;
    _exit(0);
  }
  int status = 0;
  REQUIRE(waitpid(pid, &status, 0) == pid);
  CHECK(WIFSIGNALED(status));
  if (WIFSIGNALED(status)) CHECK(WTERMSIG(status) == SIGSEGV);
}

TEST_CASE("what a backend tape cannot do is an error naming it") {
  const RuntimeModel<float> m(find_alias("TinyHybrid18x6").desc(), 2);
  auto dev = backend_for(m);
  const std::vector<int> tok = test_util::random_tokens(8, m.vocab(), 3);
  {  // recording
    Tape<float> rec(true);
    CHECK(contains(error_of([&] { rec.set_backend(dev.get()); }), "cannot run on a backend"));
    Tape<float> t;
    t.set_backend(dev.get());
    CHECK(contains(error_of([&] { t.set_recording(true); }), "inference only"));
  }
  Tape<float> t;
  t.set_backend(dev.get());
  {  // decode state lives on the host
    SequenceState<float> st = m.new_state();
    SequenceState<float>* p = &st;
    CHECK(contains(error_of([&] { m.forward(tok, 1, 8, &p, true, &t); }), "decode state"));
  }
  {  // training and evaluation read host values
    Tape<float> u;
    u.set_backend(dev.get());
    const std::vector<int> tg(8, 1);
    CHECK(contains(error_of([&] { m.loss(u, tok, tg, 1, 8); }), "host tape"));
    CHECK(contains(error_of([&] { m.score(u, tok, tg, 1, 8); }), "host tape"));
  }
  {  // a backend holding another model's values
    const RuntimeModel<float> other(find_alias("TinyMamba").desc(), 2);
    CHECK(contains(error_of([&] { other.forward(tok, 1, 8, nullptr, true, &t); }), "parameter values"));
  }
}

}  // namespace hybrid_test_backend
