// GGUF files pinned to llama.cpp (tests/fixtures/gguf, made by make_gguf_fixtures.py): files
// we exported and files llama.cpp's own converter wrote, each with the logits llama.cpp
// computes from it for a prompt and 8 greedy tokens. Our import must give the same logits
// and the same greedy tokens; re-exporting our files must give back the same file.
#include <doctest/doctest.h>

#include <cmath>
#include <filesystem>
#include <memory>
#include <set>
#include <hybrid/gguf/export.hpp>
#include <hybrid/gguf/import.hpp>
#include <hybrid/hf/checkpoint.hpp>
#include <hybrid/io/safetensors.hpp>
#include <hybrid/model.hpp>
#ifdef HYBRID_HAVE_TOKENIZERS
#include <hybrid/gguf/tokenizer.hpp>
#include <hybrid/tokenizer/bpe.hpp>
#endif
#include <string>
#include <vector>

using namespace hybrid;
namespace fs = std::filesystem;

// This file's own namespace: the tests compile in batches (tests/CMakeLists.txt).
namespace hybrid_test_gguf_parity {

namespace {

const fs::path kDir = fs::path(HYBRID_FIXTURES_DIR) / "gguf";

std::vector<double> fixture(const SafetensorsReader& r, const std::string& name) {
  const TensorInfo* t = r.find(name);
  REQUIRE_MESSAGE(t, "expected.safetensors lacks ", name);
  std::vector<double> v(std::size_t(t->numel()));
  r.read(*t, v.data());
  return v;
}

// Logits of the prompt (all positions) and of each greedy token fed back, as llama.cpp
// decodes: rows T + k are the logits after token k of the greedy continuation.
void check_against_llama_cpp(const std::string& stem) {
  CAPTURE(stem);
  const SafetensorsReader ex((kDir / "expected.safetensors").string());
  const auto pf = fixture(ex, stem + ".prompt"), gf = fixture(ex, stem + ".greedy"), lf = fixture(ex, stem + ".logits");
  const GgufReader r((kDir / (stem + ".gguf")).string());
  const RuntimeModel<float> m = gguf::load_gguf<float>(r);
  const int V = m.vocab();
  const std::vector<int> prompt(pf.begin(), pf.end());
  const Index T = Index(prompt.size());
  REQUIRE(lf.size() == std::size_t((T + Index(gf.size())) * V));
  double err = 0, scale = 0;
  const Mat<float> all = m.forward(prompt, 1, T);
  for (Index t = 0; t < T; ++t)
    for (int v = 0; v < V; ++v) {
      err = std::max(err, std::abs(double(all(t, v)) - lf[std::size_t(t * V + v)]));
      scale = std::max(scale, std::abs(lf[std::size_t(t * V + v)]));
    }
  std::vector<SequenceState<float>> st;
  const auto pre = m.prefill({prompt}, st);
  Index arg;
  pre[0].row(0).maxCoeff(&arg);
  for (std::size_t k = 0; k < gf.size(); ++k) {
    CAPTURE(k);
    CHECK(int(arg) == int(gf[k]));
    const std::vector<int> tok{int(gf[k])};
    const Mat<float> l = m.step(tok, st);
    for (int v = 0; v < V; ++v)
      err = std::max(err, std::abs(double(l(0, v)) - lf[std::size_t((T + Index(k)) * V + v)]));
    l.row(0).maxCoeff(&arg);
  }
  MESSAGE(stem, ": max |logit - llama.cpp| ", err, " (logits up to ", scale, ")");
  CHECK(err <= 1e-4);
}

// Our files: exporting what we imported gives the same metadata and tensors (A = -exp(A_log)
// to one ulp, through the log on import).
void check_reexport(const std::string& stem) {
  CAPTURE(stem);
  const GgufReader r((kDir / (stem + ".gguf")).string());
  const RuntimeModel<float> m = gguf::load_gguf<float>(r);
  const std::string bytes = gguf::to_gguf(m).bytes();
  const GgufReader b = GgufReader::from_memory(bytes.data(), bytes.size(), "re-export");
  CHECK(b.keys() == r.keys());
  for (const std::string& k : r.keys()) {
    CAPTURE(k);
    CHECK(*b.get(k) == *r.get(k));
  }
  // The same tensors (a model without a Mamba-2 conv bias is written with zeros, which
  // import as a bias, so the order may differ; llama.cpp finds tensors by name).
  REQUIRE(b.tensors().size() == r.tensors().size());
  for (const GgufTensor& x : r.tensors()) {
    CAPTURE(x.name);
    const GgufTensor* y = b.find(x.name);
    REQUIRE(y);
    REQUIRE(x.ne == y->ne);
    CHECK(x.type == y->type);
    std::vector<float> vx(std::size_t(x.numel())), vy(vx.size());
    r.read_f32(x, vx.data());
    b.read_f32(*y, vy.data());
    double worst = 0;
    for (std::size_t k = 0; k < vx.size(); ++k)
      worst = std::max(worst, double(std::abs(vx[k] - vy[k])) / std::max(1e-30, double(std::abs(vx[k]))));
    CHECK(worst <= (x.name.ends_with("ssm_a") ? 2.5e-7 : 0.0));
  }
}

// A file llama.cpp's converter wrote from tests/fixtures/hf/<hf_dir>: its logits on that
// fixture's ids are transformers' (expected.safetensors of the Hugging Face fixture).
void check_against_transformers(const std::string& hf_dir, const std::string& stem) {
  CAPTURE(stem);
  const fs::path hf = fs::path(HYBRID_FIXTURES_DIR) / "hf" / hf_dir;
  const SafetensorsReader ex((hf / "expected.safetensors").string());
  const auto idsf = fixture(ex, "ids"), lf = fixture(ex, "logits");
  const TensorInfo* it = ex.find("ids");
  const Index B = it->shape[0], T = it->shape[1];
  const RuntimeModel<float> m = gguf::load_gguf<float>((kDir / (stem + ".gguf")).string());
  const std::vector<int> ids(idsf.begin(), idsf.end());
  const Mat<float> l = m.forward(ids, B, T);
  REQUIRE(std::size_t(l.size()) == lf.size());
  double err = 0;
  for (Index k = 0; k < l.size(); ++k) err = std::max(err, std::abs(double(l.data()[k]) - lf[std::size_t(k)]));
  MESSAGE(stem, " vs transformers: max logit err ", err);
  CHECK(err <= 1e-4);
}

}  // namespace

TEST_CASE("GGUF parity: our exports compute in our import what llama.cpp computes") {
  for (const char* stem : {"ours_granitehybrid", "ours_lfm2", "ours_mamba2", "ours_llama"}) {
    check_against_llama_cpp(stem);
    check_reexport(stem);
  }
}

TEST_CASE("GGUF parity: files written by llama.cpp's converter import and compute its logits") {
  check_against_llama_cpp("llamacpp_granite_nope");
  check_against_llama_cpp("llamacpp_mamba2_g1_untied");
  check_against_llama_cpp("llamacpp_lfm2_bpe");
}

TEST_CASE("GGUF parity: llama.cpp-converted checkpoints compute transformers' logits") {
  check_against_transformers("mamba2_g1_untied", "llamacpp_mamba2_g1_untied");
  check_against_transformers("lfm2_bpe_tokenizer", "llamacpp_lfm2_bpe");
}

#ifdef HYBRID_HAVE_TOKENIZERS
// The LFM2 file carries the fixture's tokenizer.json as llama.cpp's converter writes it
// (tokens, merges, token types, pre-tokenizer "lfm2", BOS added): rebuilt from the file it
// must encode the fixture's prompt as transformers did, encode and decode as the
// tokenizer.json does, and generate transformers' greedy tokens.
TEST_CASE("GGUF parity: a llama.cpp-converted LFM2 file tokenizes and generates as transformers") {
  const fs::path hf = fs::path(HYBRID_FIXTURES_DIR) / "hf" / "lfm2_bpe_tokenizer";
  const SafetensorsReader ex((hf / "expected.safetensors").string());
  const auto pf = fixture(ex, "decode.prompt"), gf = fixture(ex, "decode.tokens");
  const std::string text = ex.metadata().at("prompt_text");
  const GgufReader r((kDir / "llamacpp_lfm2_bpe.gguf").string());
  const std::unique_ptr<Tokenizer> tok = gguf::tokenizer_from_gguf(r);
  REQUIRE(tok);
  const BpeTokenizer orig((hf / "tokenizer.json").string());
  REQUIRE(tok->vocab_size() == orig.vocab_size());
  std::vector<int> ids;
  REQUIRE(tok->bos().has_value());
  ids.push_back(*tok->bos());
  const std::vector<int> enc = tok->encode(text);
  ids.insert(ids.end(), enc.begin(), enc.end());
  CHECK(ids == std::vector<int>(pf.begin(), pf.end()));
  for (const std::string& t : {text, std::string("Hello world, it's 2026!\n\tindented  twice  "),
                              std::string("caf\xc3\xa9 na\xc3\xafve \xe2\x80\x94 123456789")}) {
    CAPTURE(t);
    const std::vector<int> a = orig.encode(t);
    CHECK(tok->encode(t) == a);
    CHECK(tok->decode(a) == orig.decode(a));
  }
  const RuntimeModel<float> model = gguf::load_gguf<float>(r);
  GenerateOptions opt;
  opt.max_new_tokens = int(gf.size());
  opt.sampling.temperature = 0;
  opt.stop_tokens = std::set<int>{};
  opt.restrict_to_tokenizer = false;  // transformers may pick any id, special ones included
  const GenerationResult g = generate(model, *tok, ids, opt);
  CHECK(g.tokens == std::vector<int>(gf.begin(), gf.end()));
}
#endif

}  // namespace hybrid_test_gguf_parity
