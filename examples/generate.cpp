// generate: text from a shipped model alias (random-init weights), a saved checkpoint, a
// Hugging Face checkpoint directory (LFM2, GraniteMoeHybrid, Mamba2) or a GGUF file
// (granitehybrid, lfm2, mamba2, llama) with its tokenizer;
// streams the text, reports prefill / decode speed, and can dump the logits of every
// position or convert the model to a Hugging Face directory; the weights can be stored as
// bf16, f16 or int8 for inference. Every bad input ends with a message and exit code 2.
//
//   generate --prompt "ROMEO:" --max-new-tokens 32
//   generate --model Golf15x3E2 --weights-dtype int8 --weight-group 32 --prompt "ROMEO:"
//   generate --model TinyLfm2 --ids 256,72,105 --temperature 0 --dump-logits l.f32
//   generate --hf ./LFM2-350M --prompt "The capital of France is" --temperature 0
//   generate --gguf model.gguf --prompt "ROMEO:" --temperature 0
#include <Eigen/Core>
#include <bit>
#include <cerrno>
#include <charconv>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <cxxopts.hpp>
#include <iostream>
#include <optional>
#include <set>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include <sys/resource.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include <filesystem>
#include <memory>

#include <hybrid/alias_registry.hpp>
#include <hybrid/core/atomic_file.hpp>
#include <hybrid/core/file.hpp>
#include <hybrid/core/utf8.hpp>
#include <hybrid/gguf/import.hpp>
#include <hybrid/gguf/vocab.hpp>
#include <hybrid/hf/checkpoint.hpp>
#include <hybrid/infer/generate.hpp>
#include <hybrid/io/checkpoint.hpp>
#include <hybrid/model.hpp>
#ifdef HYBRID_HAVE_TOKENIZERS
#include <hybrid/tokenizer/bpe.hpp>
#include <hybrid/tokenizer/sentencepiece.hpp>
#include <hybrid/gguf/tokenizer.hpp>
#endif
#ifdef HYBRID_HAVE_COMPRESSION
#include <hybrid/quant/model_artifact.hpp>
#endif

#include "cli.hpp"

namespace {

using hybrid::fail;
using hybrid::cli::number;
using hybrid::cli::parse_ids;

struct Cli {
  std::string model = "Golf15x3";
  bool model_given = false;
  std::uint64_t seed = 0;
  std::string weights;
  std::string hf_dir, tokenizer, save_hf, gguf, artifact;
  std::optional<std::string> prompt;
  std::optional<std::vector<int>> ids;
  bool bos = false;
  hybrid::GenerateOptions gen;
  std::string dump_logits;
  std::string prompt_file;
  bool summary = false, quiet = false, raw = false, echo_prompt = true;
  hybrid::DType weights_dtype = hybrid::DType::F32;
  hybrid::Index weight_group = 0;  // int8 columns per scale, 0 = per row
  bool keep_storage = false;       // --gguf: keep the storage the file's tensor types gave
};

// ---- the shipped aliases -----------------------------------------------------------------

template <class S>
int run_model(hybrid::RuntimeModel<S>& model, const Cli& cli, const std::string& name,
              const std::string& origin, const hybrid::Tokenizer& tok);

// For a checkpoint without a tokenizer: prompts are given as --ids and each generated id is
// printed as [id]. Nothing is encoded from text.
class IdsOnlyTokenizer final : public hybrid::Tokenizer {
 public:
  IdsOnlyTokenizer(int vocab, std::optional<int> bos, std::optional<int> eos) : V_(vocab), bos_(bos), eos_(eos) {}
  std::vector<int> encode(std::string_view) const override {
    fail("this checkpoint has no tokenizer (no tokenizer.json or tokenizer.model beside it, no "
         "--tokenizer): give the prompt as --ids");
  }
  std::string decode_token(int id) const override {
    check_id(id, "decode_token");
    return "[" + std::to_string(id) + "]";
  }
  int vocab_size() const override { return V_; }
  std::optional<int> bos() const override { return bos_; }
  std::optional<int> eos() const override { return eos_; }

 private:
  int V_;
  std::optional<int> bos_, eos_;
};

// An alias from the registry (alias_registry.hpp), built in the scalar type it is declared
// in; RuntimeModel(desc, seed) is what the typed Model<> runs, so the weights are the same.
// Stored weights compute in float, so with --weights-dtype a double alias is built in float.
int run_alias(const Cli& cli) {
  const hybrid::AliasInfo& a = hybrid::find_alias(cli.model);
  std::string origin =
      "random-init weights (seed " + std::to_string(cli.seed) + "): the text is noise";
  if (a.scalar == "double" && cli.weights_dtype == hybrid::DType::F32) {
    hybrid::RuntimeModel<double> model(a.desc(), cli.seed);
    return run_model(model, cli, cli.model, origin, hybrid::ByteTokenizer());
  }
  if (a.scalar == "double") origin += "; built in float for --weights-dtype";
  hybrid::RuntimeModel<float> model(a.desc(), cli.seed);
  return run_model(model, cli, cli.model, origin, hybrid::ByteTokenizer());
}

std::string with_commas(hybrid::Index n) {
  const std::string digits = std::to_string(n);
  std::string s;
  for (std::size_t i = 0; i < digits.size(); ++i) {
    if (i > 0 && (digits.size() - i) % 3 == 0) s += ',';
    s += digits[i];
  }
  return s;
}

std::string model_table() {
  std::string out;
  char buf[256];
  for (const auto& m : hybrid::shipped_aliases()) {
    std::snprintf(buf, sizeof buf, "  %-17s %15s params  %-6.*s  %.*s\n", m.name,
                  with_commas(m.params).c_str(), int(m.scalar.size()), m.scalar.data(),
                  int(m.layout.size()), m.layout.data());
    out += buf;
  }
  return out;
}

// ---- flag parsing --------------------------------------------------------------------------

// ---- output ----------------------------------------------------------------------------------

// Writes generated bytes to stdout as they arrive: printable ASCII, \n, \t and complete valid
// UTF-8 characters verbatim; control bytes, C1 controls and malformed UTF-8 as \xNN, so that
// a random model cannot send escape sequences to the terminal. --raw writes bytes as they are.
class TextSink {
 public:
  explicit TextSink(bool raw) : raw_(raw) {}

  void put(std::string_view bytes) {
    for (char c : bytes) put_byte(static_cast<unsigned char>(c));
    std::fflush(stdout);
  }
  void finish() {
    escape_pending();
    std::fflush(stdout);
  }

 private:
  void put_byte(unsigned char c) {
    if (raw_) {
      std::fputc(c, stdout);
      return;
    }
    if (!pending_.empty()) {
      if ((c & 0xC0) == 0x80) {
        pending_ += char(c);
        if (pending_.size() == need_) complete();
        return;
      }
      escape_pending();
    }
    if (c < 0x80) {
      if (c == '\n' || c == '\t' || (c >= 0x20 && c < 0x7f)) std::fputc(c, stdout);
      else escape(c);
      return;
    }
    need_ = hybrid::utf8_lead(c).len;
    if (need_ == 0) escape(c);
    else pending_.assign(1, char(c));
  }
  void complete() {
    std::uint32_t cp = 0;
    const bool ok = hybrid::next_utf8(pending_, 0, cp) == need_ &&
                    cp >= 0xA0;  // U+0080..U+009F are C1 controls
    if (ok) std::fwrite(pending_.data(), 1, pending_.size(), stdout), pending_.clear();
    else escape_pending();
  }
  void escape_pending() {
    for (char c : pending_) escape(static_cast<unsigned char>(c));
    pending_.clear();
  }
  static void escape(unsigned char c) { std::fprintf(stdout, "\\x%02X", unsigned(c)); }

  bool raw_;
  std::string pending_;  // the start of a multi-byte character
  std::size_t need_ = 0;
};

// Raw little-endian float32 [T, V], replaced atomically (core/atomic_file.hpp) so that a
// reader never sees a partial file. The temporary is opened before generating, so a bad
// path fails early.
class LogitsFile {
 public:
  explicit LogitsFile(const std::string& path) : f_(path, "--dump-logits: '" + path + "'") {}

  void commit(const hybrid::Mat<float>& logits) {  // (T, V)
    std::vector<std::uint32_t> buf(std::size_t(logits.cols()));
    for (hybrid::Index t = 0; t < logits.rows(); ++t) {
      for (hybrid::Index v = 0; v < logits.cols(); ++v) {
        std::uint32_t u = std::bit_cast<std::uint32_t>(logits(t, v));
        if constexpr (std::endian::native == std::endian::big)
          u = (u >> 24) | ((u >> 8) & 0xFF00u) | ((u << 8) & 0xFF0000u) | (u << 24);
        buf[std::size_t(v)] = u;
      }
      f_.write(buf.data(), buf.size() * sizeof(std::uint32_t));
    }
    f_.commit();
  }

 private:
  hybrid::AtomicFile f_;
};

template <class S>
int run_model(hybrid::RuntimeModel<S>& model, const Cli& cli, const std::string& name,
              const std::string& origin, const hybrid::Tokenizer& tok) {
  const int V = model.vocab();
  if (!cli.save_hf.empty()) {
    hybrid::hf::save_hf(model, cli.save_hf);  // the float weights, whatever --weights-dtype says
    std::fprintf(stderr, "wrote %s (config.json + model.safetensors, %s)\n", cli.save_hf.c_str(),
                 hybrid::hf::architecture(hybrid::hf::family_for(model.desc())));
    if (!cli.prompt && !cli.ids && cli.prompt_file.empty()) return 0;
  }
  if (!cli.keep_storage) model.set_weight_storage(cli.weights_dtype, cli.weight_group);
  // Generation reads the stored weights only: their float values are given back, so a Q8_0
  // file or an int8 artifact does not also occupy its float size in memory.
  if (model.weight_store()) model.release_packed_floats();
  std::vector<int> prompt;
  if (cli.bos) {
    HYBRID_CHECK(tok.bos().has_value(), "--bos: the tokenizer has no BOS token");
    prompt.push_back(*tok.bos());
  }
  if (cli.ids) prompt.insert(prompt.end(), cli.ids->begin(), cli.ids->end());
  if (cli.prompt) {
    const auto enc = tok.encode(*cli.prompt);
    prompt.insert(prompt.end(), enc.begin(), enc.end());
  }
  if (!cli.prompt_file.empty()) {
    const std::string text = hybrid::read_file(cli.prompt_file, "--prompt-file", "a text file");
    HYBRID_CHECK(!text.empty(), "--prompt-file: '", cli.prompt_file, "' is empty");
    const auto enc = tok.encode(text);
    prompt.insert(prompt.end(), enc.begin(), enc.end());
  }
  if (!cli.ids && !cli.prompt && cli.prompt_file.empty() && tok.bos()) prompt.assign(1, *tok.bos());
  HYBRID_CHECK(!prompt.empty(), "the prompt is empty; give --prompt TEXT, --ids or --bos");
  for (std::size_t k = 0; k < prompt.size(); ++k)
    HYBRID_CHECK(prompt[k] < V, cli.ids ? "--ids" : cli.prompt ? "--prompt" : "--prompt-file", ": token id ", prompt[k],
                 " (prompt position ", k, ") is outside model ", name, "'s vocabulary [0, ", V, ")");

  hybrid::GenerateOptions opt = cli.gen;
  if (!opt.stop_tokens && (!tok.eos() || *tok.eos() >= V)) opt.stop_tokens = std::set<int>{};  // no EOS id
  opt.return_logits = !cli.dump_logits.empty();

  if (cli.summary) std::cout << model.summary(name) << std::flush;
  if (!cli.quiet)
    std::fprintf(stderr, "model %s: %s parameters, layout %s, vocab %d (tokenizer: %d ids%s)\n  %s\n",
                 name.c_str(), with_commas(model.param_count()).c_str(),
                 model.layout_string().c_str(), V, tok.vocab_size(),
                 V > tok.vocab_size() ? ", only those are sampled" : "", origin.c_str());
  if (!cli.quiet && model.weight_store()) {
    const hybrid::WeightStore& ws = *model.weight_store();
    const std::string kind = ws.dtype() != hybrid::DType::I8 ? ""
                             : ws.group() ? ", a scale per 32 columns" : ", a scale per row";
    std::fprintf(stderr, "  weights stored as %s%s%s: %.1f MiB for %lld of the projections, embedding and "
                 "head (norms, convolutions and SSM dynamics stay f32); %.1f MiB of their float values "
                 "given back\n",
                 hybrid::dtype_name(ws.dtype()), kind.c_str(), ws.mixed() ? " and the file's other types" : "",
                 double(ws.bytes()) / (1 << 20), (long long)ws.tensors(),
                 double(model.released_float_bytes()) / (1 << 20));
  }

  std::optional<LogitsFile> dump;
  if (!cli.dump_logits.empty()) dump.emplace(cli.dump_logits);
  TextSink sink(cli.raw);
  const auto text = [&](int id) {
    if (tok.can_decode(id)) return tok.decode_token(id);
    char buf[24];
    std::snprintf(buf, sizeof buf, "[%d]", id);  // an id the tokenizer has no text for
    return std::string(buf);
  };
  if (!cli.quiet && cli.echo_prompt)
    for (int id : prompt) sink.put(text(id));
  hybrid::GenerationResult r;
  try {
    r = hybrid::generate(model, tok, prompt, opt, [&](int id) { sink.put(text(id)); });
  } catch (...) {
    sink.finish();
    std::fputc('\n', stdout);
    std::fflush(stdout);
    throw;
  }
  sink.finish();
  std::fputc('\n', stdout);
  std::fflush(stdout);

  if (!cli.quiet) {
    const auto& tm = r.timing;
    rusage ru{};
    getrusage(RUSAGE_SELF, &ru);  // ru_maxrss: kB on Linux
    std::fprintf(stderr,
                 "prefill: %lld tokens, %.1f tokens/s | decode: %lld tokens, %.1f tokens/s | "
                 "%zu new tokens, stopped by %s | peak RSS %.0f MiB\n",
                 (long long)tm.prefill_tokens, tm.prefill_tokens_per_s(),
                 (long long)tm.decode_tokens, tm.decode_tokens_per_s(), r.tokens.size(),
                 hybrid::to_string(r.stop), double(ru.ru_maxrss) / 1024.0);
  }
  if (dump) {
    dump->commit(r.logits);
    std::fprintf(stderr, "logits: T=%lld V=%lld float32 little-endian, row-major -> %s\n",
                 (long long)r.logits.rows(), (long long)r.logits.cols(), cli.dump_logits.c_str());
  }
  return 0;
}

// The tokenizer of a Hugging Face checkpoint: --tokenizer, else tokenizer.json or
// tokenizer.model in the directory, else ids only.
std::unique_ptr<hybrid::Tokenizer> hf_tokenizer(const Cli& cli, const hybrid::hf::HfConfig& cfg, int vocab) {
  namespace fs = std::filesystem;
  std::string path = cli.tokenizer;
  if (path.empty())
    for (const char* f : {"tokenizer.json", "tokenizer.model"})
      if (fs::exists(fs::path(cli.hf_dir) / f)) {
        path = (fs::path(cli.hf_dir) / f).string();
        break;
      }
  if (path.empty()) return std::make_unique<IdsOnlyTokenizer>(vocab, cfg.bos, cfg.eos);
#ifdef HYBRID_HAVE_TOKENIZERS
  if (path.size() >= 5 && path.compare(path.size() - 5, 5, ".json") == 0)
    return std::make_unique<hybrid::BpeTokenizer>(path);
  return std::make_unique<hybrid::SentencePieceTokenizer>(path);
#else
  fail("tokenizer '", path, "': this build has no tokenizer support (libsentencepiece and PCRE2 "
       "were not found at configure time); give the prompt as --ids");
#endif
}

// The tokenizer a GGUF file holds: our byte vocabulary, none (ids only), or a BPE /
// SentencePiece vocabulary.
std::unique_ptr<hybrid::Tokenizer> gguf_tokenizer(const hybrid::GgufReader& r, int vocab) {
  if (hybrid::gguf::is_byte_vocab(r)) return std::make_unique<hybrid::ByteTokenizer>();
  const hybrid::GgufValue* m = r.get("tokenizer.ggml.model");
  if (!m || (m->type == hybrid::GgufType::STRING && (m->s == "none" || m->s == "no_vocab")))
    return std::make_unique<IdsOnlyTokenizer>(vocab, std::nullopt, std::nullopt);
#ifdef HYBRID_HAVE_TOKENIZERS
  auto tok = hybrid::gguf::tokenizer_from_gguf(r);
  if (!tok) return std::make_unique<IdsOnlyTokenizer>(vocab, std::nullopt, std::nullopt);
  return tok;
#else
  fail("GGUF '", r.path(), "': this build has no tokenizer support (libsentencepiece and PCRE2 were not "
       "found at configure time) for its '", m->brief(), "' vocabulary; give the prompt as --ids");
#endif
}

int run(int argc, char** argv) {
  cxxopts::Options options(
      "generate",
      "Generate text with a hybrid Mamba-2 / attention model: a shipped alias or --weights with\n"
      "the byte tokenizer (ids 0-255 bytes, 256 BOS, 257 EOS), or a Hugging Face checkpoint\n"
      "(--hf) or a GGUF file (--gguf) with its own tokenizer. The text streams to stdout\n"
      "(control bytes and malformed UTF-8 shown as \\xNN unless --raw); model info and the\n"
      "prefill / decode tokens/s line go to stderr. Errors exit with code 2.\n");
  options.add_options("Model")
      ("model", "Shipped alias to build (see --list-models; random-init weights)",
       cxxopts::value<std::string>()->default_value("Golf15x3"))
      ("list-models", "Print every alias with its parameter count, scalar type and layout")
      ("seed", "Weight-init seed for --model", cxxopts::value<std::string>()->default_value("0"))
      ("weights", "Load a checkpoint saved by hybrid::save_model (safetensors; its layout is "
                  "in the file, so not with --model)", cxxopts::value<std::string>())
      ("hf", "Load a Hugging Face checkpoint directory: config.json (Lfm2ForCausalLM, "
             "GraniteMoeHybridForCausalLM or Mamba2ForCausalLM) + model.safetensors or shards; "
             "its tokenizer.json / tokenizer.model is used when present",
       cxxopts::value<std::string>())
      ("gguf", "Load a GGUF file (llama.cpp's granitehybrid, lfm2, mamba2 or llama; F32, F16, BF16 "
       "or Q8_0, whose int8 blocks are then the inference weights) with the tokenizer it holds",
       cxxopts::value<std::string>())
      ("artifact", "Load a quantised artifact written by quantize (byte tokenizer); its integers "
       "are the inference weights", cxxopts::value<std::string>())
      ("tokenizer", "Tokenizer file for --hf: a Hugging Face tokenizer.json (byte-level BPE) or a "
                    "SentencePiece .model", cxxopts::value<std::string>())
      ("save-hf", "Write the model as a Hugging Face directory (config.json + model.safetensors) "
                  "that transformers loads, then exit unless a prompt is given",
       cxxopts::value<std::string>())
      ("summary", "Print the model summary (blocks, parameters, state sizes) to stdout")
      ("weights-dtype", "Store the weights of the projections, embedding and head for "
                        "inference as f32, bf16, f16 or int8 (activations and sums stay float; "
                        "norms, convolutions and SSM dynamics stay f32)",
       cxxopts::value<std::string>()->default_value("f32"))
      ("weight-group", "int8 columns per scale: row (one scale per row) or 32 (GGUF Q8_0's "
                       "blocks; every packed width must be a multiple of 32)",
       cxxopts::value<std::string>()->default_value("row"))
      ("threads", "Threads for OpenMP and Eigen (default: all cores)", cxxopts::value<std::string>());
  options.add_options("Prompt")
      ("prompt", "Prompt text, encoded as bytes", cxxopts::value<std::string>())
      ("ids", "Prompt as raw token ids instead of text, e.g. 256,72,105 (ids may exceed the "
              "tokenizer's 258 up to the model's vocab)", cxxopts::value<std::string>())
      ("prompt-file", "Prompt text read from a file (a long context: it is prefilled in chunks "
       "of --prefill-chunk tokens; the echo of a prompt file is skipped)", cxxopts::value<std::string>())
      ("bos", "Prepend the BOS id (256). With no prompt given the prompt is BOS alone");
  options.add_options("Generation")
      ("max-new-tokens", "Tokens to generate at most",
       cxxopts::value<std::string>()->default_value("64"))
      ("kv-dtype", "What the attention KV caches store: f32, or bf16 (half the memory of a long "
       "context; keys and values rounded, sums in float)",
       cxxopts::value<std::string>()->default_value("f32"))
      ("prefill-chunk", "Prompt tokens per forward pass of the prefill: memory grows with the "
       "chunk, not the prompt; 0 = the whole prompt in one pass",
       cxxopts::value<std::string>()->default_value(std::to_string(hybrid::PrefillOptions{}.chunk)))
      ("temperature", "Softmax temperature; 0 = greedy (argmax)",
       cxxopts::value<std::string>()->default_value("1"))
      ("top-k", "Sample among the k most likely ids; 0 = all", cxxopts::value<std::string>()->default_value("0"))
      ("top-p", "Nucleus: the smallest most-likely set with mass >= p, in (0, 1]; 1 = off",
       cxxopts::value<std::string>()->default_value("1"))
      ("repetition-penalty", "Divide positive / multiply negative logits of ids already in "
                             "the context by this (> 0; 1 = off)",
       cxxopts::value<std::string>()->default_value("1"))
      ("sample-seed", "Seed of the sampler (same seed, same text on every platform)",
       cxxopts::value<std::string>()->default_value("0"))
      ("stop", "Stop token ids, e.g. 10,257 (replaces the default, EOS = 257); 'none' = no stop",
       cxxopts::value<std::string>());
  options.add_options("Output")
      ("dump-logits", "Write the logits of every position (prompt, then generated) as raw "
                      "little-endian float32 [T, V] to FILE", cxxopts::value<std::string>())
      ("quiet", "Print only the generated text (no prompt echo, info or speed line)")
      ("raw", "Write generated bytes to stdout unescaped")
      ("h,help", "Show this help");
  options.custom_help("[options]");

  const auto res = options.parse(argc, argv);
  if (res.count("help")) {
    std::cout << options.help({"Model", "Prompt", "Generation", "Output"})
              << "\nModels (--model NAME):\n" << model_table();
    return 0;
  }
  if (res.count("list-models")) {
    std::cout << model_table();
    return 0;
  }
  HYBRID_CHECK(res.unmatched().empty(), "unexpected argument '", res.unmatched().front(),
               "'; every value needs its flag (see --help)");

  Cli cli;
  cli.model = res["model"].as<std::string>();
  cli.model_given = res.count("model") > 0;
  const auto str = [&](const char* name) { return res[name].as<std::string>(); };
  cli.seed = number<std::uint64_t>("--seed", str("seed"));
  if (res.count("weights")) cli.weights = res["weights"].as<std::string>();
  if (res.count("hf")) cli.hf_dir = res["hf"].as<std::string>();
  if (res.count("tokenizer")) cli.tokenizer = res["tokenizer"].as<std::string>();
  if (res.count("save-hf")) cli.save_hf = res["save-hf"].as<std::string>();
  if (res.count("gguf")) cli.gguf = res["gguf"].as<std::string>();
  if (res.count("artifact")) cli.artifact = res["artifact"].as<std::string>();
  HYBRID_CHECK(cli.tokenizer.empty() || !cli.hf_dir.empty(), "--tokenizer goes with --hf");
  HYBRID_CHECK(int(!cli.weights.empty()) + int(!cli.hf_dir.empty()) + int(cli.model_given) + int(!cli.gguf.empty()) +
                       int(!cli.artifact.empty()) <=
                   1,
               "give one of --model, --weights, --hf, --gguf and --artifact");
  if (res.count("prompt")) cli.prompt = res["prompt"].as<std::string>();
  if (res.count("ids")) cli.ids = parse_ids("--ids", res["ids"].as<std::string>());
  if (res.count("prompt-file")) cli.prompt_file = res["prompt-file"].as<std::string>();
  HYBRID_CHECK(int(cli.prompt.has_value()) + int(cli.ids.has_value()) + int(!cli.prompt_file.empty()) <= 1,
               "give one of --prompt, --ids and --prompt-file");
  cli.echo_prompt = cli.prompt_file.empty();
  cli.bos = res.count("bos") > 0;
  cli.gen.max_new_tokens = number<int>("--max-new-tokens", str("max-new-tokens"));
  cli.gen.sampling = {.temperature = number<float>("--temperature", str("temperature")),
                      .top_k = number<int>("--top-k", str("top-k")),
                      .top_p = number<float>("--top-p", str("top-p")),
                      .repetition_penalty =
                          number<float>("--repetition-penalty", str("repetition-penalty")),
                      .seed = number<std::uint64_t>("--sample-seed", str("sample-seed"))};
  cli.gen.sampling.validate();
  HYBRID_CHECK(cli.gen.max_new_tokens >= 0, "--max-new-tokens must be >= 0, got ",
               cli.gen.max_new_tokens);
  cli.gen.prefill_chunk = number<hybrid::Index>("--prefill-chunk", str("prefill-chunk"));
  cli.gen.kv_dtype = hybrid::parse_dtype(str("kv-dtype"));
  HYBRID_CHECK(cli.gen.kv_dtype == hybrid::DType::F32 || cli.gen.kv_dtype == hybrid::DType::BF16,
               "--kv-dtype: '", str("kv-dtype"), "' is not f32 or bf16");
  HYBRID_CHECK(cli.gen.prefill_chunk >= 0, "--prefill-chunk must be >= 0 (0 = whole prompt), got ",
               cli.gen.prefill_chunk);
  if (res.count("stop")) {
    const auto s = res["stop"].as<std::string>();
    cli.gen.stop_tokens.emplace();
    if (s != "none")
      for (int id : parse_ids("--stop", s)) cli.gen.stop_tokens->insert(id);
  }
  if (res.count("dump-logits")) {
    cli.dump_logits = res["dump-logits"].as<std::string>();
    HYBRID_CHECK(!cli.dump_logits.empty(), "--dump-logits needs a file name");
  }
  cli.summary = res.count("summary") > 0;
  cli.weights_dtype = hybrid::parse_dtype(str("weights-dtype"));
  {
    const std::string g = str("weight-group");
    HYBRID_CHECK(g == "row" || g == "32", "--weight-group: '", g, "' is not 'row' or '32'");
    HYBRID_CHECK(res.count("weight-group") == 0 || cli.weights_dtype == hybrid::DType::I8,
                 "--weight-group goes with --weights-dtype int8 (the other types have no scales)");
    cli.weight_group = g == "row" ? 0 : 32;
  }
  cli.quiet = res.count("quiet") > 0;
  cli.raw = res.count("raw") > 0;
  if (res.count("threads")) {
    const int n = number<int>("--threads", str("threads"));
    HYBRID_CHECK(n >= 1, "--threads must be >= 1, got ", n);
#ifdef _OPENMP
    omp_set_num_threads(n);
#endif
    Eigen::setNbThreads(n);
  }

  if (!cli.weights.empty()) {
    HYBRID_CHECK(!cli.model_given, "give either --model or --weights, not both: a checkpoint ",
                 "holds its own layout");
    auto model = hybrid::load_model<float>(cli.weights);
    return run_model<float>(model, cli, cli.weights, "weights from " + cli.weights, hybrid::ByteTokenizer());
  }
  if (!cli.artifact.empty()) {
#ifdef HYBRID_HAVE_COMPRESSION
    cli.keep_storage = res.count("weights-dtype") == 0;  // the artifact's integers as they are
    // Kept as they are, those tensors need no float copy (--save-hf writes floats).
    auto model = hybrid::quant::load_artifact_model(hybrid::quant::read_artifact(cli.artifact), cli.artifact,
                                                    {.float_copy = !cli.keep_storage || !cli.save_hf.empty()});
    return run_model<float>(model, cli, cli.artifact, "quantised artifact " + cli.artifact, hybrid::ByteTokenizer());
#else
    fail("--artifact: this build has no artifact support (liblzma, zstd and brotli were not found at "
         "configure time)");
#endif
  }
  if (!cli.gguf.empty()) {
    const hybrid::GgufReader r(cli.gguf);
    const hybrid::gguf::GgufModelInfo info = hybrid::gguf::describe(r);
    cli.keep_storage = res.count("weights-dtype") == 0;  // the file's Q8_0 / F16 / BF16 tensors as they are
    // Kept as the file stores them, those tensors need no float copy (--save-hf writes floats).
    hybrid::RuntimeModel<float> model =
        hybrid::gguf::load_gguf<float>(r, {.float_copy = !cli.keep_storage || !cli.save_hf.empty()});
    std::unique_ptr<hybrid::Tokenizer> tok;
    try {
      tok = gguf_tokenizer(r, model.vocab());
    } catch (const hybrid::Error& e) {  // a vocabulary we cannot rebuild: ids still work
      if (!cli.ids) fail(e.what(), "; give the prompt as --ids to run without the file's tokenizer");
      if (!cli.quiet) std::fprintf(stderr, "note: the file's tokenizer is not usable (%s); running on ids\n", e.what());
      tok = std::make_unique<IdsOnlyTokenizer>(model.vocab(), std::nullopt, std::nullopt);
    }
    return run_model<float>(model, cli, cli.gguf,
                            std::string("GGUF ") + hybrid::gguf::arch_name(info.arch) + " from " + cli.gguf, *tok);
  }
  if (!cli.hf_dir.empty()) {
    const hybrid::hf::HfCheckpoint ck(cli.hf_dir);
    hybrid::RuntimeModel<float> model(ck.config().desc);
    ck.load_into(model);
    const auto tok = hf_tokenizer(cli, ck.config(), model.vocab());
    return run_model<float>(model, cli, cli.hf_dir,
                            std::string(hybrid::hf::architecture(ck.config().family)) + " from " + cli.hf_dir,
                            *tok);
  }
  return run_alias(cli);
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const std::exception& e) {
    std::fflush(stdout);
    std::fprintf(stderr, "error: %s\n", e.what());
  } catch (...) {
    std::fflush(stdout);
    std::fprintf(stderr, "error: unknown exception\n");
  }
  return 2;
}
