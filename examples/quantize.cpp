// quantize: a trained model → a quantised, compressed artifact (quant/artifact.hpp), with a
// table of what it costs: parameters, artifact bytes, bytes per million parameters, what
// remains of parameter golf's 16,000,000-byte budget, and (with --eval) bits per byte of the
// float model and of the model read back from the artifact. Every bad input ends with a
// message and exit code 2.
//
//   quantize --weights run/model.safetensors --out model.hybq --bits 6 --rule sdclip --sd-k 12
//   quantize --weights run/model.safetensors --out model.hybq --method gptq --calib data/tinyshakespeare.txt
//   quantize --weights run/model.safetensors --out model.hybq --eval data/tinyshakespeare.txt
//   generate --artifact model.hybq --prompt "ROMEO:"
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <cxxopts.hpp>
#include <string>
#include <vector>

#include <hybrid/alias_registry.hpp>
#include <hybrid/core/file.hpp>
#include <hybrid/data/shards.hpp>
#include <hybrid/data/text.hpp>
#include <hybrid/gguf/import.hpp>
#include <hybrid/gguf/vocab.hpp>
#include <hybrid/io/checkpoint.hpp>
#include <hybrid/model.hpp>
#include <hybrid/quant/gptq.hpp>
#include <hybrid/quant/model_artifact.hpp>

#include "cli.hpp"

namespace {

using namespace hybrid;
using namespace hybrid::quant;

ScaleRule parse_rule(const std::string& s) {
  if (s == "rowmax") return ScaleRule::RowMax;
  if (s == "mse") return ScaleRule::MseClip;
  if (s == "sdclip") return ScaleRule::SdClip;
  fail("--rule: '", s, "' is not rowmax, mse or sdclip");
}

Index parse_group(const std::string& s) {
  if (s == "row") return 0;
  for (Index g : {32, 64, 128})
    if (s == std::to_string(g)) return g;
  fail("--group: '", s, "' is not row, 32, 64 or 128");
}

// Bits per byte of byte-level next-token prediction on `text`: windows of T + 1 bytes,
// stride T, at most n of them, each scored on its T predictions.
double bits_per_byte(const RuntimeModel<float>& m, const std::string& text, Index T, Index n) {
  HYBRID_CHECK(m.vocab() >= 256, "--eval scores bytes, but the model's vocabulary has ", m.vocab(), " ids");
  double nats = 0;
  Index scored = 0;
  std::vector<int> ids(static_cast<std::size_t>(T));
  for (Index w = 0; w < n && (w + 1) * T + 1 <= Index(text.size()); ++w) {
    const std::size_t at = std::size_t(w * T);
    for (Index t = 0; t < T; ++t) ids[std::size_t(t)] = static_cast<unsigned char>(text[at + std::size_t(t)]);
    const Mat<float> l = m.forward(ids, 1, T);
    for (Index t = 0; t < T; ++t) {
      const int target = static_cast<unsigned char>(text[at + std::size_t(t) + 1]);
      const double mx = l.row(t).maxCoeff();
      const double lse = mx + std::log((l.row(t).array() - float(mx)).exp().cast<double>().sum());
      nats += lse - double(l(t, target));
      ++scored;
    }
  }
  HYBRID_CHECK(scored > 0, "--eval: the validation text is shorter than one window of ", T + 1, " bytes");
  return nats / double(scored) / std::log(2.0);
}

int run(int argc, char** argv) {
  cxxopts::Options options(
      "quantize",
      "Quantise a model into a compressed artifact: every projection, the embedding and the head\n"
      "as k-bit integers with a float16 scale per row or per group of columns, the small tensors\n"
      "(norms, biases, convolutions, SSM dynamics) as float16; each stream of bytes compressed\n"
      "by whichever of xz, zstd and brotli makes it smallest. Prints parameters, artifact bytes,\n"
      "bytes per million parameters, what remains of parameter golf's 16,000,000-byte budget\n"
      "(code bytes not counted) and, with --eval, bits per byte before and after. The artifact\n"
      "runs in generate --artifact.");
  options.add_options("Source")
      ("weights", "Our checkpoint (hybrid::save_model, as train --save writes)", cxxopts::value<std::string>())
      ("gguf", "A GGUF file (granitehybrid, lfm2, mamba2, llama)", cxxopts::value<std::string>())
      ("model", "A shipped alias with random-init weights (for sizes only)", cxxopts::value<std::string>())
      ("seed", "Weight-init seed for --model", cxxopts::value<std::string>()->default_value("0"));
  options.add_options("Quantisation")
      ("bits", "Bits of the projections (attention, MLP, Mamba-2 / ShortConv in and out), 2 to 8",
       cxxopts::value<std::string>()->default_value("6"))
      ("embed-bits", "Bits of the embedding and an untied head, 2 to 8, or 'float16'",
       cxxopts::value<std::string>()->default_value("8"))
      ("rule", "Scale rule: rowmax (max |w| of the group), mse (least-squared-error clip of the "
       "max), sdclip (clip at --sd-k root-mean-squares)", cxxopts::value<std::string>()->default_value("rowmax"))
      ("sd-k", "sdclip's multiple of the group's root-mean-square", cxxopts::value<std::string>()->default_value("12"))
      ("group", "Columns per scale: row, 32, 64 or 128 (a tensor whose columns it does not divide "
       "gets one scale per row)", cxxopts::value<std::string>()->default_value("row"))
      ("fast", "Try only zstd (level 22) instead of every codec: quicker, usually a little larger");
  options.add_options("GPTQ")
      ("method", "rtn (round to nearest) or gptq (each column's rounding error corrected on the "
       "columns after it, weighted by the calibration inputs; the embedding stays round-to-nearest)",
       cxxopts::value<std::string>()->default_value("rtn"))
      ("calib", "gptq: calibration text, byte level; windows drawn from its first 90% (train's split)",
       cxxopts::value<std::string>())
      ("calib-shards", "gptq: calibration token shards (comma-separated paths or globs)",
       cxxopts::value<std::string>())
      ("calib-self", "gptq: calibrate on the model's own samples (temperature 1) instead of data")
      ("calib-first", "--calib-self: the id each sample starts from (default: 256, the byte "
       "vocabulary's BOS, when the model has it, else 1)", cxxopts::value<std::string>())
      ("calib-seqs", "gptq: calibration sequences", cxxopts::value<std::string>()->default_value("32"))
      ("calib-len", "gptq: tokens per calibration sequence", cxxopts::value<std::string>()->default_value("256"))
      ("calib-seed", "gptq: seed of the calibration windows or samples", cxxopts::value<std::string>()->default_value("1"))
      ("damp", "gptq: damping, a fraction of mean(diag H) added to H's diagonal",
       cxxopts::value<std::string>()->default_value("0.01"))
      ("gptq-block", "gptq: columns per lazy-update block", cxxopts::value<std::string>()->default_value("128"))
      ("no-act-order", "gptq: columns in their own order instead of descending diag(H)")
      ("lqer-rank", "Add a rank-R correction of each projection's quantisation error (LQER; 0 = off), "
       "weighted by the calibration inputs with --method gptq", cxxopts::value<std::string>()->default_value("0"))
      ("lqer-bits", "Bits of the LQER factors (one scale per factor row)", cxxopts::value<std::string>()->default_value("4"))
      ("sequential", "gptq: gather each block's inputs with the blocks before it already quantised "
       "(one calibration forward per block; slower, usually better)");
  options.add_options("Output")
      ("out", "The artifact to write (a temporary file, then a rename)", cxxopts::value<std::string>())
      ("eval", "A text file: bits per byte of the float model and of the artifact's model on its last "
       "10% (train's validation split), byte level", cxxopts::value<std::string>())
      ("eval-seqs", "Windows of --seq-len bytes scored by --eval", cxxopts::value<std::string>()->default_value("16"))
      ("seq-len", "Window length of --eval", cxxopts::value<std::string>()->default_value("256"))
      ("code", "Files or directories (comma-separated; directories counted recursively) whose raw "
       "bytes count as code toward the 16,000,000-byte budget, as parameter golf counts its training "
       "script, e.g. include,examples/train.cpp,examples/eval.cpp", cxxopts::value<std::string>())
      ("streams", "Also print every stream: codec, shuffle, raw and stored bytes")
      ("h,help", "Show this help");
  options.custom_help("[options]");
  const auto res = options.parse(argc, argv);
  if (res.count("help")) {
    std::printf("%s\n", options.help().c_str());
    return 0;
  }
  HYBRID_CHECK(res.unmatched().empty(), "unexpected argument '", res.unmatched().empty() ? "" : res.unmatched()[0],
               "' (flags start with --; see --help)");
  HYBRID_CHECK(res.count("weights") + res.count("gguf") + res.count("model") == 1,
               "give exactly one source: --weights, --gguf or --model");
  HYBRID_CHECK(res.count("out"), "--out FILE is required (where the artifact goes)");
  const auto str = [&](const char* k) { return res[k].as<std::string>(); };

  // Code bytes, before anything is written (a bad path writes no artifact).
  long long code = 0;
  int files = 0;
  if (res.count("code")) {
    for (const std::string& path : cli::split_list(str("code"))) {
      std::error_code ec;
      HYBRID_CHECK(std::filesystem::exists(path, ec), "--code: '", path, "' does not exist");
      if (std::filesystem::is_directory(path, ec)) {
        for (const auto& f : std::filesystem::recursive_directory_iterator(path))
          if (f.is_regular_file()) code += (long long)f.file_size(), ++files;
      } else {
        code += (long long)std::filesystem::file_size(path), ++files;
      }
    }
  }
  QuantPolicy policy;
  QuantSpec spec{.bits = cli::number<int>("--bits", str("bits")), .rule = parse_rule(str("rule")),
                 .sd_k = cli::number<double>("--sd-k", str("sd-k")), .group = parse_group(str("group"))};
  HYBRID_CHECK(spec.bits >= 2 && spec.bits <= 8, "--bits must be 2 to 8, got ", spec.bits);
  HYBRID_CHECK(spec.sd_k > 0, "--sd-k must be positive, got ", spec.sd_k);
  policy.set_all(spec);
  if (str("embed-bits") == "float16") {
    policy.quantize_embedding = false;
  } else {
    policy.embedding.bits = cli::number<int>("--embed-bits", str("embed-bits"));
    HYBRID_CHECK(policy.embedding.bits >= 2 && policy.embedding.bits <= 8, "--embed-bits must be 2 to 8 or float16");
  }

  std::string origin;
  RuntimeModel<float> model = [&] {
    if (res.count("weights")) {
      origin = str("weights");
      return load_model<float>(origin);
    }
    if (res.count("gguf")) {
      origin = str("gguf");
      return gguf::load_gguf<float>(origin);
    }
    origin = str("model") + " (random init)";
    return RuntimeModel<float>(find_alias(str("model")).desc(), cli::number<std::uint64_t>("--seed", str("seed")));
  }();
  model.set_weight_storage(DType::F32);  // quantise the float values

  const std::string method = str("method");
  HYBRID_CHECK(method == "rtn" || method == "gptq", "--method: '", method, "' is not rtn or gptq");
  const int calib_sources = int(res.count("calib") + res.count("calib-shards") + res.count("calib-self"));
  HYBRID_CHECK(method == "gptq" || calib_sources == 0,
               "--calib, --calib-shards and --calib-self calibrate GPTQ; add --method gptq");
  Artifact a;
  std::vector<GptqTensorReport> greport;
  Hessians hessians;
  LqerSpec lqer;
  lqer.rank = cli::number<int>("--lqer-rank", str("lqer-rank"));
  lqer.factor.bits = cli::number<int>("--lqer-bits", str("lqer-bits"));
  HYBRID_CHECK(lqer.rank >= 0, "--lqer-rank must be >= 0 (0 = off), got ", lqer.rank);
  HYBRID_CHECK(lqer.factor.bits >= 2 && lqer.factor.bits <= 8, "--lqer-bits must be 2 to 8, got ", lqer.factor.bits);
  if (method == "rtn") {
    a = quantize_model(model, policy);
  } else {
    HYBRID_CHECK(calib_sources == 1, "--method gptq needs exactly one of --calib FILE, --calib-shards GLOB, --calib-self");
    const Index B = cli::number<Index>("--calib-seqs", str("calib-seqs")), T = cli::number<Index>("--calib-len", str("calib-len"));
    HYBRID_CHECK(B >= 1 && T >= 1, "--calib-seqs and --calib-len must be >= 1");
    const auto seed = cli::number<std::uint64_t>("--calib-seed", str("calib-seed"));
    std::vector<int> calib;
    if (res.count("calib-self")) {
      const int first = res.count("calib-first") ? cli::number<int>("--calib-first", str("calib-first"))
                                                 : (model.vocab() > ByteTokenizer::kBos ? ByteTokenizer::kBos : 1);
      calib = self_calibration(model, B, T, first, seed);
    } else {
      std::unique_ptr<data::Source> src;
      if (res.count("calib")) {
        src = std::make_unique<data::TextSource>(str("calib"), seed);
      } else {
        const std::vector<std::string> paths = cli::split_list(str("calib-shards"));
        src = std::make_unique<data::ShardSource>(paths, paths, seed, int(model.vocab()));
      }
      HYBRID_CHECK(src->vocab_needed() <= model.vocab(), "calibration data has ids up to ", src->vocab_needed() - 1,
                   "; the model's vocabulary has ", model.vocab(), " ids");
      calib = src->train_batch(B, T).tokens;
    }
    GptqOptions go;
    go.damp = cli::number<double>("--damp", str("damp"));
    go.block = cli::number<Index>("--gptq-block", str("gptq-block"));
    go.act_order = !res.count("no-act-order");
    go.sequential = res.count("sequential") > 0;
    HYBRID_CHECK(go.damp > 0 && go.block >= 1, "--damp must be > 0 and --gptq-block >= 1");
    a = quantize_model_gptq(model, policy, calib, B, T, go, &greport, &hessians);
    a.policy["calibration"] = res.count("calib-self") ? "self" : res.count("calib") ? str("calib") : str("calib-shards");
  }
  const int corrected = lqer.rank > 0 ? add_lqer(a, model, lqer, hessians.empty() ? nullptr : &hessians) : 0;
  ArtifactOptions ao;
  if (res.count("fast")) ao.codecs = {Codec::Raw, Codec::Zstd};
  const std::string out = str("out");
  const ArtifactReport rep = write_artifact(out, a, ao);
  const Artifact back = read_artifact(out);
  const RuntimeModel<float> qm = load_artifact_model(back, out);

  int qt = 0, ft = 0;
  for (const auto& t : a.tensors) (t.kind == ArtifactTensor::Kind::Quantized ? qt : ft)++;
  const double mparams = double(model.param_count()) / 1e6;
  std::printf("| source | %s |\n|---|---|\n", origin.c_str());
  std::printf("| layout | %s |\n", model.layout_string().c_str());
  std::printf("| parameters | %lld |\n", (long long)model.param_count());
  std::printf("| policy | %s |\n", a.policy.dump().c_str());
  std::printf("| tensors | %d quantised, %d float16 |\n", qt, ft);
  std::printf("| artifact | %s: %llu bytes |\n", out.c_str(), (unsigned long long)rep.total_bytes);
  std::printf("| bytes per million parameters | %.0f |\n", double(rep.total_bytes) / mparams);
  if (res.count("code")) {
    std::printf("| code | %d files, %lld bytes (raw) |\n", files, code);
    std::printf("| total (artifact + code) | %lld bytes; %lld left of 16,000,000 |\n", (long long)rep.total_bytes + code,
                (long long)artifact_golf_limit - (long long)rep.total_bytes - code);
  } else {
    std::printf("| left of 16,000,000 bytes (before code bytes) | %lld |\n",
                (long long)artifact_golf_limit - (long long)rep.total_bytes);
  }
  if (corrected > 0)
    std::printf("| LQER | %d projections, rank %d, %d-bit factors%s |\n", corrected, lqer.rank, lqer.factor.bits,
                hessians.empty() ? "" : ", weighted by the calibration inputs");
  if (!greport.empty()) {
    double rtn = 0, gptq = 0;
    for (const auto& r : greport) rtn += r.rtn_error, gptq += r.gptq_error;
    std::printf("| GPTQ | %zu projections; layer-output error on the calibration inputs %.4g, round-to-nearest %.4g (%.3f) |\n",
                greport.size(), gptq, rtn, rtn > 0 ? gptq / rtn : 0.0);
  }
  if (res.count("eval")) {
    const std::string text = read_file(str("eval"), "--eval", "a text file");
    const std::string val = text.substr(text.size() * 9 / 10);
    const Index T = cli::number<Index>("--seq-len", str("seq-len")), n = cli::number<Index>("--eval-seqs", str("eval-seqs"));
    HYBRID_CHECK(T >= 1 && n >= 1, "--seq-len and --eval-seqs must be >= 1");
    const double before = bits_per_byte(model, val, T, n), after = bits_per_byte(qm, val, T, n);
    std::printf("| bits per byte, float | %.4f |\n", before);
    std::printf("| bits per byte, artifact | %.4f (%+.4f) |\n", after, after - before);
    std::printf("| evaluated | %lld windows of %lld bytes of the last 10%% of %s |\n", (long long)std::min<Index>(n, Index(val.size() - 1) / T),
                (long long)T, str("eval").c_str());
  }
  if (res.count("streams")) std::printf("\n%s", format_report(rep).c_str());
  return 0;
}

}  // namespace

int main(int argc, char** argv) { return hybrid::cli::guarded_main(run, argc, argv); }
