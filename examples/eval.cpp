// eval: loss and bits per byte of a model — our checkpoint, a shipped alias, a Hugging Face
// directory, a GGUF file or a quantised artifact — on a text file or on parameter-golf
// shards, by sliding windows (window L, stride S: every token scored once, with at least
// L - S tokens of context after the first window), optionally with score-first test-time
// training (each chunk scored, then adapted on). Bytes per token follow REFERENCE.md §6 for
// the byte tokenizer, SentencePiece and byte-level BPE. A progress line goes to stderr; the
// result is a markdown table on stdout and, with --json, a JSON object. Every bad input ends
// with a message and exit code 2. With --mc FILE it scores multiple-choice items instead
// (acc, acc_norm, acc_bytes with standard errors, as lm-evaluation-harness; eval/mc.hpp).
//
//   eval --weights run/model.safetensors --text data/tinyshakespeare.txt --window 1024 --stride 64
//   eval --artifact model.hybq --text data/tinyshakespeare.txt --split val --json result.json
//   eval --hf ./ckpt --shards 'fineweb_val_*.bin' --tokenizer fineweb_1024_bpe.model
//   eval --weights m.safetensors --text data/tinyshakespeare.txt --ttt-steps 1 --ttt-chunk 32768
//   eval --hf tests/fixtures/hf/lfm2_bpe_tokenizer --mc tests/fixtures/mc/arc_easy.jsonl --bos
#include <Eigen/Core>
#include <cmath>
#include <cstdio>
#include <cxxopts.hpp>
#include <filesystem>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include <unistd.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include <hybrid/alias_registry.hpp>
#include <hybrid/core/atomic_file.hpp>
#include <hybrid/core/file.hpp>
#include <hybrid/data/source.hpp>
#include <hybrid/eval/bpb.hpp>
#include <hybrid/eval/sliding.hpp>
#include <hybrid/eval/stream.hpp>
#include <hybrid/eval/mc.hpp>
#include <hybrid/eval/ttt.hpp>
#include <hybrid/gguf/import.hpp>
#include <hybrid/gguf/vocab.hpp>
#include <hybrid/hf/checkpoint.hpp>
#include <hybrid/io/checkpoint.hpp>
#include <hybrid/runtime_model.hpp>
#ifdef HYBRID_HAVE_TOKENIZERS
#include <hybrid/gguf/tokenizer.hpp>
#include <hybrid/tokenizer/bpe.hpp>
#include <hybrid/tokenizer/sentencepiece.hpp>
#endif
#ifdef HYBRID_HAVE_COMPRESSION
#include <hybrid/quant/model_artifact.hpp>
#endif

#include "cli.hpp"
#include "model_source.hpp"

namespace {

using namespace hybrid;
using cli::number;

// ---- the model and its tokenizer --------------------------------------------------------------

struct Loaded {
  std::optional<RuntimeModel<float>> model;
  std::string origin;                    // for the table
  std::unique_ptr<Tokenizer> tokenizer;  // the source's own, nullptr: none
};

bool ends_with(const std::string& s, const char* tail) {
  const std::string t(tail);
  return s.size() >= t.size() && s.compare(s.size() - t.size(), t.size(), t) == 0;
}

// A tokenizer file: a Hugging Face tokenizer.json (byte-level BPE) or a SentencePiece .model.
std::unique_ptr<Tokenizer> tokenizer_file(const std::string& path, [[maybe_unused]] const char* flag) {
  if (path == "byte") return std::make_unique<ByteTokenizer>();
#ifdef HYBRID_HAVE_TOKENIZERS
  if (ends_with(path, ".json")) return std::make_unique<BpeTokenizer>(path);
  return std::make_unique<SentencePieceTokenizer>(path);
#else
  fail(flag, " '", path, "': this build has no tokenizer support (libsentencepiece and PCRE2 were not "
       "found at configure time); only 'byte' is available");
#endif
}

std::unique_ptr<Tokenizer> hf_tokenizer(const std::string& dir) {
  namespace fs = std::filesystem;
  for (const char* f : {"tokenizer.json", "tokenizer.model"})
    if (fs::exists(fs::path(dir) / f)) return tokenizer_file((fs::path(dir) / f).string(), "--hf tokenizer");
  return nullptr;
}

std::unique_ptr<Tokenizer> gguf_tokenizer(const GgufReader& r) {
  if (gguf::is_byte_vocab(r)) return std::make_unique<ByteTokenizer>();
#ifdef HYBRID_HAVE_TOKENIZERS
  try {
    if (r.get("tokenizer.ggml.model")) return gguf::tokenizer_from_gguf(r);
  } catch (const Error& e) {  // a vocabulary we cannot rebuild
    fail(e.what(), "; give --tokenizer FILE (or 'byte') to count the bytes of the file's ids");
  }
#endif
  return nullptr;
}

// own_tokenizer: also load the tokenizer an HF directory or a GGUF file holds. The model
// comes through model_source.hpp (the loader train --teacher / --init-from use), with float
// parameters: for GGUF Q8_0 tensors and artifacts they hold the dequantised values, so the
// fused scoring path computes what the file holds.
Loaded load_source(const cxxopts::ParseResult& res, bool own_tokenizer) {
  const auto str = [&](const char* k) { return res[k].as<std::string>(); };
  Loaded l;
  if (res.count("model")) {
    const auto seed = number<std::uint64_t>("--seed", str("seed"));
    l.model.emplace(find_alias(str("model")).desc(), seed);
    l.origin = str("model") + " (random init, seed " + std::to_string(seed) + ")";
    return l;
  }
  using model_source::Kind;
  const auto [flag, kind] = res.count("weights") ? std::pair{"weights", Kind::Checkpoint}
                            : res.count("hf")    ? std::pair{"hf", Kind::HfDir}
                            : res.count("gguf")  ? std::pair{"gguf", Kind::Gguf}
                                                 : std::pair{"artifact", Kind::Artifact};
  const std::string path = str(flag);
  model_source::Loaded m = model_source::load(path, kind, (std::string("--") + flag).c_str());
  l.model.emplace(std::move(*m.model));
  l.origin = std::move(m.origin);
  if (own_tokenizer && kind == Kind::HfDir) l.tokenizer = hf_tokenizer(path);
  if (own_tokenizer && kind == Kind::Gguf) l.tokenizer = gguf_tokenizer(GgufReader(path));
  return l;
}

// SentencePiece's leading-space rule needs the concrete type (eval/bpb.hpp).
eval::TokenBytes byte_table(const Tokenizer& tok, int V) {
#ifdef HYBRID_HAVE_TOKENIZERS
  if (const auto* sp = dynamic_cast<const SentencePieceTokenizer*>(&tok)) return eval::token_bytes(*sp, V);
#endif
  return eval::token_bytes(tok, V);
}

std::string tokenizer_name(const Tokenizer& tok) {
  if (dynamic_cast<const ByteTokenizer*>(&tok)) return "byte-level (ids 0-255 are 1 byte, BOS/EOS 0)";
#ifdef HYBRID_HAVE_TOKENIZERS
  if (dynamic_cast<const SentencePieceTokenizer*>(&tok))
    return "SentencePiece, " + std::to_string(tok.vocab_size()) + " pieces (parameter-golf byte rule)";
  if (dynamic_cast<const BpeTokenizer*>(&tok))
    return "byte-level BPE, " + std::to_string(tok.vocab_size()) + " ids (bytes of each token's decoding)";
#endif
  return std::to_string(tok.vocab_size()) + " ids";
}

// ---- the data ---------------------------------------------------------------------------------

struct Data {
  std::unique_ptr<eval::TokenStream> stream;
  std::string what;  // for the table and the messages
};

Data load_data(const cxxopts::ParseResult& res, const Tokenizer& tok, bool bos) {
  const auto str = [&](const char* k) { return res[k].as<std::string>(); };
  Data d;
  if (res.count("shards")) {
    const auto entries = cli::split_list(str("shards"));
    HYBRID_CHECK(!entries.empty(), "--shards: no file given; expected comma-separated paths or globs");
    d.stream = std::make_unique<eval::ShardStream>(entries);
    d.what = d.stream->describe();
    return d;
  }
  const std::string path = str("text"), split = str("split");
  const std::string text = read_file(path, "--text", "a text file");
  HYBRID_CHECK(!text.empty(), "--text: '", path, "' is empty");
  // train's split: the first int(0.9 n) bytes train, the rest val (data/text.hpp).
  const std::size_t cut = std::size_t(data::detail::train_split(Index(text.size()), 0.1));
  const std::string_view part = split == "val"     ? std::string_view(text).substr(cut)
                                : split == "train" ? std::string_view(text).substr(0, cut)
                                                   : std::string_view(text);
  std::vector<int> ids;
  if (bos) ids.push_back(*tok.bos());
  const std::vector<int> enc = tok.encode(part);
  ids.insert(ids.end(), enc.begin(), enc.end());
  d.what = "'" + path + "', " + (split == "all" ? std::string("all") : split + " split") + " (" +
           std::to_string(part.size()) + " bytes)";
  d.stream = std::make_unique<eval::IdStream>(std::move(ids), "--text " + d.what);
  return d;
}

// ---- progress and output ----------------------------------------------------------------------

class ProgressLine {
 public:
  explicit ProgressLine(bool on) : on_(on), tty_(on && ::isatty(STDERR_FILENO)) {}

  void update(const eval::Progress& p) {
    if (!on_) return;
    const bool last = p.windows_done == p.windows;
    if (!last && p.seconds - shown_ < (tty_ ? 0.5 : 10.0)) return;
    shown_ = p.seconds;
    char chunk[64] = "";
    if (p.chunk >= 0) std::snprintf(chunk, sizeof chunk, " | chunk %lld/%lld", (long long)p.chunk + 1, (long long)p.chunks);
    const double bpb = p.totals.bytes > 0 ? p.totals.nats / (std::log(2.0) * p.totals.bytes) : 0.0;
    std::fprintf(stderr, "%seval: %lld tokens scored (window %lld/%lld) | running bpb %.4f | %.0f tok/s%s%s",
                 tty_ ? "\r" : "", (long long)p.totals.tokens, (long long)p.windows_done, (long long)p.windows, bpb,
                 p.seconds > 0 ? double(p.totals.tokens) / p.seconds : 0.0, chunk, tty_ ? "\x1b[K" : "\n");
    pending_ = tty_;
    std::fflush(stderr);
  }
  void finish() {
    if (pending_) std::fputc('\n', stderr);
    pending_ = false;
  }

 private:
  bool on_, tty_;
  bool pending_ = false;
  double shown_ = -1e9;
};

std::string with_commas(long long n) {
  const std::string digits = std::to_string(n < 0 ? -n : n);
  std::string s = n < 0 ? "-" : "";
  for (std::size_t i = 0; i < digits.size(); ++i) {
    if (i > 0 && (digits.size() - i) % 3 == 0) s += ',';
    s += digits[i];
  }
  return s;
}

// ---- multiple choice (--mc) --------------------------------------------------------------------

int run_mc(const Loaded& src, const RuntimeModel<float>& model, const Tokenizer& tok,
           const std::vector<eval::McItem>& items, const eval::McOptions& mo, const std::string& path,
           const std::string& json_path, bool quiet) {
  const std::string what = "'" + path + "', " + std::to_string(items.size()) + (items.size() == 1 ? " item" : " items");
  if (!quiet)
    std::fprintf(stderr, "model: %s, %s parameters, layout %s, vocab %d\ndata: %s; tokenizer: %s\n",
                 src.origin.c_str(), with_commas(model.param_count()).c_str(), model.layout_string().c_str(),
                 model.vocab(), what.c_str(), tokenizer_name(tok).c_str());
  const bool tty = !quiet && ::isatty(STDERR_FILENO);
  double shown = -1e9;
  const auto progress = [&](const eval::McProgress& p) {
    if (quiet || (p.items_done < p.items && p.seconds - shown < (tty ? 0.5 : 10.0))) return;
    shown = p.seconds;
    std::fprintf(stderr, "%seval: %lld/%lld items | %.1f items/s%s", tty ? "\r" : "", (long long)p.items_done,
                 (long long)p.items, p.seconds > 0 ? double(p.items_done) / p.seconds : 0.0,
                 tty ? (p.items_done == p.items ? "\x1b[K\n" : "\x1b[K") : "\n");
    std::fflush(stderr);
  };
  const eval::McResult r = eval::evaluate_mc(model, tok, items, mo, progress);
  const Index max_length = mo.max_length > 0 ? mo.max_length : model.spec().max_context;
  const auto& m = r.metrics;
  nlohmann::json per_item = nlohmann::json::array();
  for (std::size_t k = 0; k < r.items.size(); ++k)
    per_item.push_back({{"line", items[k].line}, {"gold", items[k].gold}, {"logliks", r.items[k].logliks},
                        {"pred", r.items[k].pred}, {"pred_norm", r.items[k].pred_norm},
                        {"pred_bytes", r.items[k].pred_bytes}});
  // A standard error of NaN (one item) is written as null.
  const auto se = [](double v) { return std::isfinite(v) ? nlohmann::json(v) : nlohmann::json(nullptr); };
  const nlohmann::json j = {{"source", src.origin},   {"data", what},
                            {"tokenizer", tokenizer_name(tok)},
                            {"bos", mo.bos},          {"max_length", max_length},
                            {"items", m.items},       {"choices", r.choices},
                            {"tokens", r.tokens},     {"acc", m.acc.mean},
                            {"acc_stderr", se(m.acc.se)}, {"acc_norm", m.acc_norm.mean},
                            {"acc_norm_stderr", se(m.acc_norm.se)}, {"acc_bytes", m.acc_bytes.mean},
                            {"acc_bytes_stderr", se(m.acc_bytes.se)}, {"seconds", r.seconds},
                            {"per_item", per_item}};
  if (json_path == "-") {
    std::printf("%s\n", j.dump(2).c_str());
    return 0;
  }
  if (!json_path.empty()) write_file_atomic(json_path, "--json '" + json_path + "'", j.dump(2) + "\n");
  std::printf("| model | %s |\n|---|---|\n", src.origin.c_str());
  std::printf("| data | %s (multiple choice), %lld choices, %s continuation tokens |\n", what.c_str(),
              (long long)r.choices, with_commas(r.tokens).c_str());
  std::printf("| tokenizer | %s |\n", tokenizer_name(tok).c_str());
  std::printf("| context | %s, %s |\n", mo.bos ? "BOS first" : "no BOS",
              max_length > 0 ? ("at most " + std::to_string(max_length) + " tokens per choice, cut from the left").c_str()
                             : "no length limit");
  std::printf("\n| metric | value | stderr |\n|---|---|---|\n");
  const auto row = [](const char* name, const eval::McStat& st) {  // n/a: one item, no variance
    if (std::isfinite(st.se)) std::printf("| %s | %.4f | %.4f |\n", name, st.mean, st.se);
    else std::printf("| %s | %.4f | n/a |\n", name, st.mean);
  };
  row("acc", m.acc);
  row("acc_norm", m.acc_norm);
  row("acc_bytes", m.acc_bytes);
  std::printf("\n%lld item%s in %.2f s\n", (long long)m.items, m.items == 1 ? "" : "s", r.seconds);
  return 0;
}

// ---- main -------------------------------------------------------------------------------------

int run(int argc, char** argv) {
  cxxopts::Options options(
      "eval",
      "Loss (nats per token) and bits per byte of a model on a text file or on parameter-golf\n"
      "shards. Sliding windows of --window L inputs every --stride S tokens: the first window\n"
      "scores all its L targets, each later one only its last S, so every token is scored once\n"
      "with at least L - S tokens of context. With --ttt-steps k (score-first test-time\n"
      "training) the stream goes in chunks: each chunk is scored first, then the model takes k\n"
      "optimiser steps on it; the result is the sum of the scores before adaptation. With\n"
      "--ttt-lora-rank r the weights stay frozen and rank-r LoRA adapters are what adapts (an\n"
      "--artifact's dequantised weights stay exactly the artifact's).\n"
      "Bits per byte = sum of nats / (ln 2 * sum of bytes), with the bytes of each token as\n"
      "parameter golf counts them (REFERENCE.md §6). With --mc FILE instead of --text or\n"
      "--shards: multiple-choice items (JSONL {\"context\", \"choices\", \"gold\"}), each choice\n"
      "scored by its log-likelihood after the context as lm-evaluation-harness does, reported\n"
      "as acc (the largest log-likelihood is gold), acc_norm (divided by the choice's length\n"
      "in characters) and acc_bytes (in UTF-8 bytes), each +- its standard error.\n"
      "Errors exit with code 2.\n");
  options.add_options("Model (one of)")
      ("weights", "Our checkpoint (hybrid::save_model, as train --save writes)", cxxopts::value<std::string>())
      ("model", "A shipped alias with random-init weights (a baseline; see generate --list-models)",
       cxxopts::value<std::string>())
      ("seed", "Weight-init seed for --model", cxxopts::value<std::string>()->default_value("0"))
      ("hf", "A Hugging Face checkpoint directory (LFM2, GraniteMoeHybrid, Mamba2) with its "
             "tokenizer.json or tokenizer.model", cxxopts::value<std::string>())
      ("gguf", "A GGUF file (granitehybrid, lfm2, mamba2, llama) with the tokenizer it holds",
       cxxopts::value<std::string>())
      ("artifact", "A quantised artifact written by quantize (evaluated on its dequantised values, "
                   "which are exactly what it holds)", cxxopts::value<std::string>());
  options.add_options("Data (one of)")
      ("text", "A text file, encoded with the tokenizer", cxxopts::value<std::string>())
      ("split", "Which part of --text: val (the last 10%, train's validation split), train (the "
                "first 90%) or all", cxxopts::value<std::string>()->default_value("val"))
      ("bos", "Put the tokenizer's BOS id before the text (it is then the first input, never a target); "
              "with --mc, before every context (as lm-eval does for tokenizers that add it, e.g. LFM2's)")
      ("shards", "Parameter-golf shards read as one stream: comma-separated paths or globs, e.g. "
                 "'data/fineweb_val_*.bin'", cxxopts::value<std::string>())
      ("tokenizer", "The tokenizer for encoding --text or --mc and counting bytes: 'byte', a Hugging Face "
                    "tokenizer.json or a SentencePiece .model (default: the source's own; byte-level "
                    "for --weights, --model and --artifact)", cxxopts::value<std::string>())
      ("max-tokens", "Score at most N tokens (the first N + 1 of the stream); 0 = all",
       cxxopts::value<std::string>()->default_value("0"))
      ("mc", "Multiple-choice items, JSON Lines: {\"context\": str, \"choices\": [str, ...], \"gold\": "
             "int} (optional \"target_delimiter\", default \" \"); reports acc, acc_norm, acc_bytes",
       cxxopts::value<std::string>())
      ("mc-limit", "With --mc: score the first N items only; 0 = all",
       cxxopts::value<std::string>()->default_value("0"))
      ("mc-max-length", "With --mc: at most L input tokens per choice, the context cut from the left "
                        "(lm-eval's max_length); 0 = the model's maximum context, if any",
       cxxopts::value<std::string>()->default_value("0"));
  options.add_options("Evaluation")
      ("window", "L: inputs per window", cxxopts::value<std::string>()->default_value("1024"))
      ("stride", "S: tokens each window after the first scores (1 <= S <= L); 0 = L, plain "
                 "non-overlapping windows", cxxopts::value<std::string>()->default_value("0"))
      ("batch", "Windows per forward pass (more: faster, more memory)",
       cxxopts::value<std::string>()->default_value("4"))
      ("threads", "Threads for OpenMP and Eigen (default: all cores)", cxxopts::value<std::string>());
  options.add_options("Test-time training (score first)")
      ("ttt-steps", "Optimiser steps on each chunk after it is scored; 0 = none",
       cxxopts::value<std::string>()->default_value("0"))
      ("ttt-chunk", "Tokens per chunk (rounded to whole windows)",
       cxxopts::value<std::string>()->default_value("32768"))
      ("ttt-lr", "Learning rate: AdamW's for every tensor (adamw), Muon's for the matrices (muon)",
       cxxopts::value<std::string>()->default_value("1e-4"))
      ("ttt-optim", "adamw (every tensor) or muon (Muon on the matrices, AdamW at --ttt-adam-lr on "
                    "the rest)", cxxopts::value<std::string>()->default_value("adamw"))
      ("ttt-adam-lr", "With --ttt-optim muon: AdamW's learning rate for the non-matrix tensors",
       cxxopts::value<std::string>()->default_value("1e-4"))
      ("ttt-clip", "Global gradient-norm clipping of each step; 0 = off",
       cxxopts::value<std::string>()->default_value("1"))
      ("ttt-seq-len", "Tokens per adaptation sequence; 0 = --window",
       cxxopts::value<std::string>()->default_value("0"))
      ("ttt-lora-rank", "Adapt rank-R LoRA adapters (B = 0 at the start) on the frozen weights instead of "
                        "the weights; 0 = the weights", cxxopts::value<std::string>()->default_value("0"))
      ("ttt-lora-alpha", "The adapters' alpha (their branch is scaled by alpha / R)",
       cxxopts::value<std::string>()->default_value("16"))
      ("ttt-lora-targets", "Projections the adapters sit on, comma-separated: attn, mamba, conv, mlp, all, "
                           "or kinds such as attn.q,mlp.down (as train --lora-targets)",
       cxxopts::value<std::string>()->default_value("all"));
  options.add_options("Output")
      ("json", "Also write the result as a JSON object to FILE ('-' = stdout, instead of the table)",
       cxxopts::value<std::string>())
      ("quiet", "No model line and no progress line on stderr")
      ("h,help", "Show this help");
  options.custom_help("[options]");
  const auto res = options.parse(argc, argv);
  if (res.count("help")) {
    std::printf("%s\n", options.help({"Model (one of)", "Data (one of)", "Evaluation",
                                      "Test-time training (score first)", "Output"}).c_str());
    return 0;
  }
  HYBRID_CHECK(res.unmatched().empty(), "unexpected argument '", res.unmatched().empty() ? "" : res.unmatched()[0],
               "' (flags start with --; see --help)");
  const auto str = [&](const char* k) { return res[k].as<std::string>(); };

  // Flags first, so that a bad one fails before a model is loaded.
  HYBRID_CHECK(res.count("weights") + res.count("model") + res.count("hf") + res.count("gguf") + res.count("artifact") == 1,
               "give exactly one model: --weights, --model, --hf, --gguf or --artifact");
  HYBRID_CHECK(res.count("text") + res.count("shards") + res.count("mc") == 1,
               "give exactly one data source: --text FILE, --shards LIST or --mc FILE");
  const bool mc = res.count("mc") > 0;
  for (const char* f : {"window", "stride", "batch", "max-tokens", "ttt-steps"})
    HYBRID_CHECK(!mc || res.count(f) == 0, "--", f, " goes with --text or --shards, not --mc");
  for (const char* f : {"mc-limit", "mc-max-length"}) HYBRID_CHECK(mc || res.count(f) == 0, "--", f, " goes with --mc");
  std::vector<eval::McItem> mc_items;
  eval::McOptions mo;
  if (mc) {
    mo.limit = number<Index>("--mc-limit", str("mc-limit"));
    mo.max_length = number<Index>("--mc-max-length", str("mc-max-length"));
    HYBRID_CHECK(mo.limit >= 0, "--mc-limit must be >= 0 (0 = all), got ", mo.limit);
    HYBRID_CHECK(mo.max_length >= 0, "--mc-max-length must be >= 0 (0 = the model's), got ", mo.max_length);
    mc_items = eval::read_mc_jsonl(str("mc"), mo.limit);  // a bad file fails before the model loads
  }
  HYBRID_CHECK(res.count("seed") == 0 || res.count("model"), "--seed goes with --model");
  const std::string split = str("split");
  HYBRID_CHECK(split == "val" || split == "train" || split == "all", "--split: '", split,
               "' is not val, train or all");
  HYBRID_CHECK(res.count("split") == 0 || res.count("text"), "--split goes with --text");
  HYBRID_CHECK(res.count("bos") == 0 || res.count("text") || mc,
               "--bos goes with --text or --mc (shards hold their own BOS ids)");
  eval::SlidingOptions so;
  so.window = number<Index>("--window", str("window"));
  so.stride = number<Index>("--stride", str("stride"));
  so.batch = number<Index>("--batch", str("batch"));
  so.max_tokens = number<Index>("--max-tokens", str("max-tokens"));
  HYBRID_CHECK(so.window >= 1, "--window must be >= 1 token, got ", so.window);
  HYBRID_CHECK(so.stride >= 0 && so.stride <= so.window, "--stride (", so.stride, ") must be between 1 and --window (",
               so.window, "), or 0 for --window; a larger stride would leave tokens unscored");
  HYBRID_CHECK(so.batch >= 1, "--batch must be >= 1 window, got ", so.batch);
  HYBRID_CHECK(so.max_tokens >= 0, "--max-tokens must be >= 0 (0 = all), got ", so.max_tokens);
  HYBRID_CHECK(so.max_tokens == 0 || so.max_tokens >= so.window, "--max-tokens (", so.max_tokens,
               ") must be at least --window (", so.window, "): the first window alone scores ", so.window, " tokens");
  eval::TttOptions to;
  to.steps = number<int>("--ttt-steps", str("ttt-steps"));
  to.chunk = number<Index>("--ttt-chunk", str("ttt-chunk"));
  to.seq_len = number<Index>("--ttt-seq-len", str("ttt-seq-len"));
  HYBRID_CHECK(to.steps >= 0, "--ttt-steps must be >= 0 (0 = no test-time training), got ", to.steps);
  HYBRID_CHECK(to.chunk >= 1, "--ttt-chunk must be >= 1 token, got ", to.chunk);
  HYBRID_CHECK(to.seq_len >= 0, "--ttt-seq-len must be >= 0 (0 = --window), got ", to.seq_len);
  const double lr = number<double>("--ttt-lr", str("ttt-lr")), adam_lr = number<double>("--ttt-adam-lr", str("ttt-adam-lr"));
  const double clip = number<double>("--ttt-clip", str("ttt-clip"));
  HYBRID_CHECK(std::isfinite(lr) && lr > 0, "--ttt-lr must be a positive number, got ", lr);
  HYBRID_CHECK(std::isfinite(adam_lr) && adam_lr > 0, "--ttt-adam-lr must be a positive number, got ", adam_lr);
  HYBRID_CHECK(std::isfinite(clip) && clip >= 0, "--ttt-clip must be >= 0 (0 = off), got ", clip);
  const std::string optim = str("ttt-optim");
  if (optim == "adamw") {
    to.optim = train::OptimConfig::adamw(lr, 0.0);
  } else if (optim == "muon") {
    to.optim = train::OptimConfig{};
    to.optim.matrix = {lr, 0.0};
    to.optim.embedding = to.optim.scalar = to.optim.dynamics = {adam_lr, 0.0};
  } else {
    fail("--ttt-optim: '", optim, "' is not adamw or muon");
  }
  to.optim.max_grad_norm = clip;
  const int lora_rank = number<int>("--ttt-lora-rank", str("ttt-lora-rank"));
  HYBRID_CHECK(lora_rank >= 0, "--ttt-lora-rank must be >= 0 (0 = adapt the weights), got ", lora_rank);
  if (lora_rank > 0) {
    train::LoraConfig lc;
    lc.rank = lora_rank;
    lc.alpha = number<double>("--ttt-lora-alpha", str("ttt-lora-alpha"));
    lc.targets = cli::split_list(str("ttt-lora-targets"));
    to.lora = lc;
  }
  for (const char* f : {"ttt-lora-alpha", "ttt-lora-targets"})
    HYBRID_CHECK(res.count(f) == 0 || lora_rank > 0, "--", f, " goes with --ttt-lora-rank R (R >= 1)");
  to.validate();
  for (const char* f : {"ttt-chunk", "ttt-lr", "ttt-optim", "ttt-adam-lr", "ttt-clip", "ttt-seq-len", "ttt-lora-rank"})
    HYBRID_CHECK(res.count(f) == 0 || to.steps > 0, "--", f, " goes with --ttt-steps k (k >= 1)");
  HYBRID_CHECK(res.count("ttt-adam-lr") == 0 || optim == "muon", "--ttt-adam-lr goes with --ttt-optim muon");
  std::string json_path;
  if (res.count("json")) {
    json_path = str("json");
    HYBRID_CHECK(!json_path.empty(), "--json needs a file name (or '-' for stdout)");
  }
  const bool quiet = res.count("quiet") > 0;
  if (res.count("threads")) {
    const int n = number<int>("--threads", str("threads"));
    HYBRID_CHECK(n >= 1, "--threads must be >= 1, got ", n);
#ifdef _OPENMP
    omp_set_num_threads(n);
#endif
    Eigen::setNbThreads(n);
  }

  Loaded src = load_source(res, res.count("tokenizer") == 0);
  RuntimeModel<float>& model = *src.model;
  std::unique_ptr<Tokenizer> tok;
  if (res.count("tokenizer")) tok = tokenizer_file(str("tokenizer"), "--tokenizer");
  else if (src.tokenizer) tok = std::move(src.tokenizer);
  else if (res.count("hf") || res.count("gguf"))
    fail(res.count("hf") ? "--hf '" + str("hf") + "' has no tokenizer.json or tokenizer.model"
                         : "--gguf '" + str("gguf") + "' holds no usable tokenizer",
         "; give --tokenizer FILE (bits per byte needs the bytes each token stands for)");
  else tok = std::make_unique<ByteTokenizer>();
  const bool bos = res.count("bos") > 0;
  HYBRID_CHECK(!bos || tok->bos().has_value(), "--bos: the tokenizer has no BOS id");
  if (mc) {
    mo.bos = bos;
    return run_mc(src, model, *tok, mc_items, mo, str("mc"), json_path, quiet);
  }

  const Data data = load_data(res, *tok, bos);
  const Index n = data.stream->size();
  HYBRID_CHECK(n >= so.window + 1, res.count("text") ? "--text " : "--shards ", data.what, " is ", n,
               " tokens, but --window ", so.window, " needs at least ", so.window + 1,
               " (a window of inputs and one more target); use a smaller --window",
               res.count("text") && split != "all" ? " or --split all" : "");
  const eval::TokenBytes bytes = byte_table(*tok, model.vocab());

  if (!quiet)
    std::fprintf(stderr, "model: %s, %s parameters, layout %s, vocab %d\ndata: %s, %s tokens; tokenizer: %s\n",
                 src.origin.c_str(), with_commas(model.param_count()).c_str(), model.layout_string().c_str(),
                 model.vocab(), data.what.c_str(), with_commas(n).c_str(), tokenizer_name(*tok).c_str());
  if (!quiet && tok->vocab_size() > model.vocab())
    std::fprintf(stderr, "note: the tokenizer has %d ids, the model's vocabulary %d: an id beyond it is an error\n",
                 tok->vocab_size(), model.vocab());
  ProgressLine line(!quiet);
  const auto progress = [&](const eval::Progress& p) { line.update(p); };
  eval::EvalResult r;
  try {
    r = to.steps > 0 ? eval::evaluate_ttt(model, *data.stream, bytes, so, to, {}, progress)
                     : eval::evaluate_sliding(model, *data.stream, bytes, so, progress);
  } catch (...) {
    line.finish();
    throw;
  }
  line.finish();

  const double loss = r.totals.loss(), bpb = r.totals.bits_per_byte();
  const Index stride = so.resolved_stride();
  nlohmann::json j = {{"source", src.origin},
                      {"data", data.what},
                      {"tokenizer", tokenizer_name(*tok)},
                      {"window", so.window},
                      {"stride", stride},
                      {"windows", r.windows},
                      {"tokens", r.totals.tokens},
                      {"bytes", r.totals.bytes},
                      {"nats", r.totals.nats},
                      {"loss", loss},
                      {"bpb", bpb},
                      {"seconds", r.seconds}};
  if (to.steps > 0) {
    j["ttt"] = {{"optimizer", optim}, {"lr", lr}, {"steps", to.steps}, {"chunk", to.chunk}, {"chunks", r.chunks},
                {"adapt_steps", r.adapt_steps}, {"adapt_seconds", r.adapt_seconds}};
    j["ttt"]["lora"] = to.lora ? nlohmann::json{{"rank", to.lora->rank}, {"alpha", to.lora->alpha},
                                                {"targets", to.lora->targets}, {"parameters", r.adapter_params}}
                               : nlohmann::json(nullptr);
  } else
    j["ttt"] = nullptr;
  if (json_path == "-") {
    std::printf("%s\n", j.dump(2).c_str());
    return 0;
  }
  if (!json_path.empty()) write_file_atomic(json_path, "--json '" + json_path + "'", j.dump(2) + "\n");

  std::printf("| model | %s |\n|---|---|\n", src.origin.c_str());
  std::printf("| data | %s |\n", data.what.c_str());
  std::printf("| tokenizer | %s |\n", tokenizer_name(*tok).c_str());
  std::printf("| windows | %s of %lld inputs, stride %lld |\n", with_commas(r.windows).c_str(), (long long)so.window,
              (long long)stride);
  if (to.steps > 0)
    std::printf("| test-time training | %s lr %g, %d step%s on each of %lld chunks of ~%lld tokens after scoring it "
                "(%.1f s) |\n",
                optim.c_str(), lr, to.steps, to.steps == 1 ? "" : "s", (long long)r.chunks, (long long)to.chunk,
                r.adapt_seconds);
  if (to.lora)
    std::printf("| adapted | LoRA rank %d, alpha %g on %s (%s parameters); the weights frozen |\n", to.lora->rank,
                to.lora->alpha, str("ttt-lora-targets").c_str(), with_commas(r.adapter_params).c_str());
  std::printf("| tokens | %s |\n", with_commas(r.totals.tokens).c_str());
  std::printf("| bytes | %s |\n", with_commas((long long)std::llround(r.totals.bytes)).c_str());
  std::printf("| loss (nats/token) | %.6f |\n", loss);
  std::printf("| bits per byte | %.6f |\n", bpb);
  std::printf("| time | %.2f s, %.0f tokens/s |\n", r.seconds, r.seconds > 0 ? double(r.totals.tokens) / r.seconds : 0.0);
  return 0;
}

}  // namespace

int main(int argc, char** argv) { return hybrid::cli::guarded_main(run, argc, argv); }
