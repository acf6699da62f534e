// Parity with transformers: every checkpoint under tests/fixtures/hf/ (written by
// make_fixtures.py, versions in VERSIONS.json) is loaded with load_hf and must reproduce
// what transformers computed with it: full-sequence logits, every layer's output, the final
// norm, greedy decode step logits (prefill, then one token at a time), the loss and the
// gradient of every parameter.
//
// Tolerances (float32 model against float32 transformers):
//   logits, decode logits         |ours - theirs| <= 1e-4 absolute
//   hidden states                 <= 1e-4 × max(1, max |theirs|)
//   loss                          <= 1e-5 absolute
//   gradient of each tensor       max |ours - theirs| <= 1e-4 × ||theirs||_2
// A double model is checked against the same numbers (its error is transformers' float32
// rounding) with the same bounds.
#include <doctest/doctest.h>

#include <cmath>
#include <algorithm>
#include <filesystem>
#include <set>
#include <string>
#include <vector>

#include <hybrid/hf/checkpoint.hpp>
#include <hybrid/infer/generate.hpp>
#ifdef HYBRID_HAVE_TOKENIZERS
#include <hybrid/core/utf8.hpp>
#include <hybrid/tokenizer/bpe.hpp>
#endif

using namespace hybrid;
namespace fs = std::filesystem;

// This file's own namespace: the tests compile in batches (tests/CMakeLists.txt).
namespace hybrid_test_hf_parity {

namespace {

const fs::path kHfDir = fs::path(HYBRID_FIXTURES_DIR) / "hf";

std::vector<std::string> cases() {
  std::vector<std::string> out;
  for (const auto& e : fs::directory_iterator(kHfDir))
    if (e.is_directory() && fs::exists(e.path() / "expected.safetensors")) out.push_back(e.path().filename());
  std::sort(out.begin(), out.end());
  return out;
}

struct Expected {
  SafetensorsReader r;
  explicit Expected(const fs::path& p) : r(p.string()) {}
  std::vector<double> get(const std::string& n) const {
    const TensorInfo* t = r.find(n);
    REQUIRE_MESSAGE(t, "fixture lacks tensor ", n);
    std::vector<double> v(std::size_t(t->numel()));
    r.read(*t, v.data());
    return v;
  }
  std::vector<std::int64_t> shape(const std::string& n) const { return r.find(n)->shape; }
};

template <class M>
double max_abs_diff(const M& ours, const std::vector<double>& ref) {
  REQUIRE(std::size_t(ours.size()) == ref.size());
  double e = 0;
  for (Index i = 0; i < ours.size(); ++i) e = std::max(e, std::abs(double(ours.data()[i]) - ref[std::size_t(i)]));
  return e;
}

double max_abs(const std::vector<double>& v) {
  double m = 0;
  for (double x : v) m = std::max(m, std::abs(x));
  return m;
}

template <class S>
void check_case(const std::string& name) {
  CAPTURE(name);
  const fs::path dir = kHfDir / name;
  Expected ex(dir / "expected.safetensors");
  RuntimeModel<S> model = hf::load_hf<S>(dir.string());
  const hf::Family fam = hf::HfCheckpoint(dir.string()).config().family;

  const auto idsf = ex.get("ids");
  const auto ishape = ex.shape("ids");
  const Index B = ishape[0], T = ishape[1];
  std::vector<int> ids(idsf.begin(), idsf.end());
  const int V = model.vocab();

  // Full-sequence logits.
  const Mat<S> logits = model.forward(ids, B, T);
  const double e_logits = max_abs_diff(logits, ex.get("logits"));
  MESSAGE(name, " (", std::string(sizeof(S) == 4 ? "float" : "double"), "): logits max err ", e_logits);
  CHECK(e_logits <= 1e-4);

  // Every layer's output and the final norm.
  const std::vector<Mat<S>> hs = model.hidden_states(ids, B, T);
  REQUIRE(int(hs.size()) == model.n_blocks() + 1);
  double e_hidden = 0;
  for (int l = 0; l <= model.n_blocks(); ++l) {
    const auto ref = ex.get(l < model.n_blocks() ? "hidden." + std::to_string(l) : std::string("final"));
    const double e = max_abs_diff(hs[std::size_t(l)], ref) / std::max(1.0, max_abs(ref));
    CAPTURE(l);
    CHECK(e <= 1e-4);
    e_hidden = std::max(e_hidden, e);
  }
  MESSAGE(name, ": hidden states max scaled err ", e_hidden);

  // Greedy decode: prefill the prompt, then one token at a time; the tokens must be the
  // ones transformers chose and each step's logits must match.
  {
    const auto pf = ex.get("decode.prompt"), tf = ex.get("decode.tokens"), lf = ex.get("decode.logits");
    std::vector<std::vector<int>> prompt{std::vector<int>(pf.begin(), pf.end())};
    std::vector<SequenceState<S>> st;
    const auto pre = model.prefill(prompt, st);
    Index arg;
    pre[0].row(0).maxCoeff(&arg);
    double e_dec = 0;
    for (std::size_t s = 0; s < tf.size(); ++s) {
      CAPTURE(s);
      CHECK(int(arg) == int(tf[s]));
      const std::vector<int> tok{int(tf[s])};
      const Mat<S> l = model.step(tok, st);
      for (int v = 0; v < V; ++v) e_dec = std::max(e_dec, std::abs(double(l(0, v)) - lf[s * std::size_t(V) + std::size_t(v)]));
      l.row(0).maxCoeff(&arg);
    }
    MESSAGE(name, ": decode steps ", tf.size(), ", max logit err ", e_dec);
    CHECK(e_dec <= 1e-4);
  }

  // Loss and the gradient of every parameter: positions 0..T-2 predict 1..T-1.
  std::vector<int> toks, tg;
  for (Index b = 0; b < B; ++b)
    for (Index t = 0; t + 1 < T; ++t) toks.push_back(ids[std::size_t(b * T + t)]), tg.push_back(ids[std::size_t(b * T + t + 1)]);
  GradStore<S> grads(model);
  Tape<S> tape(true, &grads);
  const Var<S> loss = model.loss(tape, toks, tg, B, T - 1);
  const double our_loss = double(loss.val()(0, 0));
  tape.backward(loss);
  const double ref_loss = ex.get("loss")[0];
  MESSAGE(name, ": loss ", our_loss, " vs ", ref_loss);
  CHECK(std::abs(our_loss - ref_loss) <= 1e-5);
  double worst = 0;
  std::string worst_name;
  int checked = 0;
  for (const auto& e : grads.entries()) {
    const hf::ckpt_detail::Slot slot =
        hf::ckpt_detail::slot_for(e.name, e.rows, e.cols, model.desc(), fam);
    const auto ref_all = ex.get("grad." + slot.hf);
    const Index n = e.size();
    const std::size_t off = std::size_t(slot.row0 * e.cols);
    const S* eg = grads.grad_of(e);
    double diff = 0, norm = 0;
    for (Index i = 0; i < n; ++i) {
      const double r = ref_all[off + std::size_t(i)];
      diff = std::max(diff, std::abs(double(eg[i]) - r));
      norm += r * r;
    }
    norm = std::sqrt(norm);
    const double rel = diff / std::max(norm, 1e-30);
    CAPTURE(e.name);
    CAPTURE(slot.hf);
    CHECK(norm > 0);
    CHECK(rel <= 1e-4);
    if (rel > worst) worst = rel, worst_name = e.name;
    ++checked;
  }
  MESSAGE(name, ": ", checked, " parameter gradients, worst max|diff|/||g|| ", worst, " (", worst_name, ")");
}

}  // namespace

TEST_CASE("hf parity: the fixtures cover the three families") {
  const auto cs = cases();
  CHECK(cs.size() >= 5);
  std::set<hf::Family> fams;
  for (const auto& c : cs) fams.insert(hf::HfCheckpoint((kHfDir / c).string()).config().family);
  CHECK(fams.size() == 3);
}

TEST_CASE("hf parity: float model vs transformers") {
  for (const auto& c : cases()) check_case<float>(c);
}

TEST_CASE("hf parity: double model vs transformers") {
  for (const auto& c : cases()) check_case<double>(c);
}

#ifdef HYBRID_HAVE_TOKENIZERS

// The checkpoint that ships a tokenizer.json: text → ids as transformers' tokenizer gives
// them, and the greedy continuation (checked token by token above) decodes to the same text.
TEST_CASE("hf parity: tokenizer.json prompt and continuation match transformers") {
  const fs::path dir = kHfDir / "lfm2_bpe_tokenizer";
  SafetensorsReader ex((dir / "expected.safetensors").string());
  const auto& meta = ex.metadata();
  REQUIRE(meta.count("prompt_text"));
  const BpeTokenizer tok((dir / "tokenizer.json").string());
  std::vector<double> prompt(std::size_t(ex.find("decode.prompt")->numel())), gen(std::size_t(ex.find("decode.tokens")->numel()));
  ex.read(*ex.find("decode.prompt"), prompt.data());
  ex.read(*ex.find("decode.tokens"), gen.data());
  const hf::HfConfig cfg = hf::HfCheckpoint(dir.string()).config();
  REQUIRE(cfg.bos.has_value());
  std::vector<int> ids{*cfg.bos};
  const auto enc = tok.encode(meta.at("prompt_text"));
  ids.insert(ids.end(), enc.begin(), enc.end());
  CHECK(ids == std::vector<int>(prompt.begin(), prompt.end()));
  const std::vector<int> out(gen.begin(), gen.end());
  // transformers' decode replaces invalid UTF-8 with U+FFFD; ours gives the exact bytes.
  CHECK(utf8_replace(tok.decode(out)) == meta.at("generated_text"));
  // And generation through the library's own loop picks the same tokens.
  const RuntimeModel<float> model = hf::load_hf<float>(dir.string());
  GenerateOptions opt;
  opt.max_new_tokens = int(out.size());
  opt.sampling.temperature = 0;
  opt.stop_tokens = std::set<int>{};
  opt.restrict_to_tokenizer = false;  // transformers may pick any id, special ones included
  const GenerationResult r = generate(model, tok, ids, opt);
  CHECK(r.tokens == out);
}
#endif

}  // namespace hybrid_test_hf_parity
