// convert: a model from one format into others — a shipped alias (random init), our
// checkpoint, a Hugging Face directory or a GGUF file in; GGUF (for llama.cpp), a Hugging
// Face directory or our checkpoint out. Every bad input ends with a message and exit code 2.
//
//   convert --weights run/model.safetensors --to-gguf model.gguf
//   convert --model Golf15x3E2 --to-gguf golf-q8.gguf --type q8_0
//   convert --hf ./granite-tiny --to-gguf granite.gguf
//   convert --gguf llama-made.gguf --to-hf ./back --to-weights back.safetensors
//   convert --hf ./lfm2 --replace 0,1,3:mamba2 --to-weights student.safetensors   # then distil

#include <cstdio>
#include <cxxopts.hpp>
#include <filesystem>
#include <map>
#include <optional>
#include <string>

#include <hybrid/alias_registry.hpp>
#include <hybrid/gguf/export.hpp>
#include <hybrid/gguf/import.hpp>
#include <hybrid/hf/checkpoint.hpp>
#include <hybrid/io/checkpoint.hpp>
#include <hybrid/model.hpp>
#include <hybrid/train/replace_mixers.hpp>
#ifdef HYBRID_HAVE_TOKENIZERS
#include <hybrid/gguf/tokenizer.hpp>
#endif

#include "cli.hpp"

namespace {

using namespace hybrid;

std::optional<GgmlType> parse_type(const std::string& s) {
  if (s == "f32") return GgmlType::F32;
  if (s == "f16") return GgmlType::F16;
  if (s == "bf16") return GgmlType::BF16;
  if (s == "q8_0") return GgmlType::Q8_0;
  return std::nullopt;
}

struct Source {
  Source(RuntimeModel<float> m, std::string o) : model(std::move(m)), origin(std::move(o)) {}
  RuntimeModel<float> model;
  std::string origin;
  std::string hf_dir;                  // --hf: where a tokenizer may be
  std::optional<GgufReader> gguf;      // --gguf: its tokenizer keys are carried over
  bool byte_tokenizer = false;         // aliases and our checkpoints use ByteTokenizer
};

// The tokenizer.* keys of a GGUF file, to carry over as they are.
std::vector<std::pair<std::string, GgufValue>> tokenizer_keys(const GgufReader& r) {
  std::vector<std::pair<std::string, GgufValue>> out;
  for (const std::string& k : r.keys())
    if (k.rfind("tokenizer.", 0) == 0) out.emplace_back(k, *r.get(k));
  return out;
}

// --vocab auto|bytes|none|FILE → the export's vocabulary.
void choose_vocab(const std::string& v, const Source& src, bool allow_prefix_space, gguf::ExportOptions& opt,
                  std::string& what) {
  namespace fs = std::filesystem;
  const int V = src.model.vocab();
  auto from_file = [&](const std::string& path) {
#ifdef HYBRID_HAVE_TOKENIZERS
    opt.vocab = gguf::VocabKind::None;
    gguf::TokenizerExportOptions t;
    t.model_vocab = V;
    t.allow_prefix_space = allow_prefix_space;
    opt.extra = gguf::tokenizer_metadata(path, t);
    what = "tokenizer from " + path;
#else
    fail("--vocab: this build has no tokenizer support (libsentencepiece and PCRE2 were not found at "
         "configure time), so '", path, "' cannot be carried over; give --vocab none");
#endif
  };
  if (v == "bytes") {
    opt.vocab = gguf::VocabKind::Bytes;
    what = "byte vocabulary";
  } else if (v == "none") {
    opt.vocab = gguf::VocabKind::None;
    what = "no vocabulary (ids only)";
  } else if (v != "auto") {
    HYBRID_CHECK(fs::is_regular_file(v), "--vocab: '", v, "' is not auto, bytes, none or a tokenizer file");
    from_file(v);
  } else if (src.gguf) {
    opt.vocab = gguf::VocabKind::None;
    opt.extra = tokenizer_keys(*src.gguf);
    what = "the source file's tokenizer";
  } else if (!src.hf_dir.empty()) {
    for (const char* f : {"tokenizer.json", "tokenizer.model"})
      if (fs::exists(fs::path(src.hf_dir) / f)) return from_file((fs::path(src.hf_dir) / f).string());
    opt.vocab = gguf::VocabKind::None;
    what = "no vocabulary (the checkpoint has no tokenizer.json or tokenizer.model)";
  } else if (src.byte_tokenizer && V >= ByteTokenizer::kVocab) {
    opt.vocab = gguf::VocabKind::Bytes;
    what = "byte vocabulary";
  } else {
    opt.vocab = gguf::VocabKind::None;
    what = "no vocabulary (ids only)";
  }
}

int run(int argc, char** argv) {
  cxxopts::Options options(
      "convert",
      "Convert a model between formats. One source: a shipped alias (--model) or a model\n"
      "description (--config) with random-init weights, our checkpoint (--weights), a Hugging\n"
      "Face directory (--hf) or a GGUF file (--gguf). Any of the outputs: a GGUF file for\n"
      "llama.cpp (--to-gguf), a Hugging Face directory (--to-hf), our checkpoint\n"
      "(--to-weights). The GGUF architecture follows the layout (granitehybrid, lfm2, mamba2 or\n"
      "llama); a layout it cannot express is an error naming the feature. Files are written\n"
      "through a temporary and a rename.");
  options.add_options("Source")
      ("model", "Shipped alias to build with random-init weights (see generate --list-models)",
       cxxopts::value<std::string>())
      ("config", "A model description JSON (as train --config takes), built with random-init weights",
       cxxopts::value<std::string>())
      ("seed", "Weight-init seed for --model / --config", cxxopts::value<std::string>()->default_value("0"))
      ("weights", "Our checkpoint (hybrid::save_model, as train writes)", cxxopts::value<std::string>())
      ("hf", "Hugging Face checkpoint directory (LFM2, GraniteMoeHybrid, Mamba2)", cxxopts::value<std::string>())
      ("gguf", "GGUF file (granitehybrid, lfm2, mamba2, llama; F32/F16/BF16/Q8_0)", cxxopts::value<std::string>());
  options.add_options("Replace mixers (initialise a hybrid from a trained model)")
      ("replace", "BLOCKS:KIND: give these blocks (0-based, comma-separated) a freshly initialised mixer of "
       "KIND (mamba2), copying everything else (embedding, norms, other mixers, MLPs, head); the outputs "
       "then hold the new model, and --to-weights records what was copied and what is new",
       cxxopts::value<std::string>())
      ("mamba-d-state", "the new Mamba-2 mixers' state size N", cxxopts::value<std::string>()->default_value("64"))
      ("mamba-expand", "the new Mamba-2 mixers' expand (d_inner = expand * d_model)",
       cxxopts::value<std::string>()->default_value("2"))
      ("mamba-headdim", "the new Mamba-2 mixers' head dim P (must divide d_inner)",
       cxxopts::value<std::string>()->default_value("64"))
      ("mamba-groups", "the new Mamba-2 mixers' B/C groups G (must divide the heads)",
       cxxopts::value<std::string>()->default_value("1"))
      ("init-seed", "seed of the new mixers' initialisation", cxxopts::value<std::string>()->default_value("0"));
  options.add_options("Output")
      ("to-gguf", "Write a GGUF file", cxxopts::value<std::string>())
      ("arch", "GGUF architecture: auto (from the layout), granitehybrid, lfm2, mamba2, llama",
       cxxopts::value<std::string>()->default_value("auto"))
      ("type", "GGUF type of the projections, embedding and head: f32, f16, bf16, q8_0 (norms, "
       "convolutions and SSM dynamics are always f32; a q8_0 tensor whose rows are not a "
       "multiple of 32 stays f32)", cxxopts::value<std::string>()->default_value("f32"))
      ("vocab", "GGUF vocabulary: auto (the source's tokenizer: a GGUF's own, an HF directory's "
       "tokenizer.json / tokenizer.model, else the byte vocabulary when the model has >= 258 "
       "ids), bytes (ids 0-255 bytes, 256 BOS, 257 EOS), none (ids only), or a tokenizer.json / "
       "tokenizer.model file", cxxopts::value<std::string>()->default_value("auto"))
      ("allow-prefix-space", "Carry over a byte-level BPE tokenizer that adds a space before the "
       "text (HF's ByteLevel add_prefix_space): llama.cpp does not add it, so the first word of a "
       "text tokenizes differently there (refused without this flag)")
      ("name", "general.name of the GGUF file", cxxopts::value<std::string>())
      ("to-hf", "Write a Hugging Face directory (config.json + model.safetensors)", cxxopts::value<std::string>())
      ("to-weights", "Write our checkpoint (safetensors with the layout in its metadata)",
       cxxopts::value<std::string>())
      ("summary", "Print the model summary (blocks, parameters) to stdout")
      ("h,help", "Show this help");
  options.custom_help("[options]");
  const auto res = options.parse(argc, argv);
  if (res.count("help")) {
    std::printf("%s\n", options.help().c_str());
    return 0;
  }
  HYBRID_CHECK(res.unmatched().empty(), "unexpected argument '", res.unmatched().empty() ? "" : res.unmatched()[0],
               "' (flags start with --; see --help)");
  const int sources =
      int(res.count("model") + res.count("config") + res.count("weights") + res.count("hf") + res.count("gguf"));
  HYBRID_CHECK(sources == 1, "give exactly one source: --model, --config, --weights, --hf or --gguf (got ", sources,
               ")");
  HYBRID_CHECK(res.count("to-gguf") + res.count("to-hf") + res.count("to-weights") > 0 || res.count("summary"),
               "nothing to do: give --to-gguf, --to-hf, --to-weights or --summary");
  for (const char* f : {"arch", "type", "vocab", "name", "allow-prefix-space"})
    HYBRID_CHECK(res.count(f) == 0 || res.count("to-gguf"), "--", f, " goes with --to-gguf");
  HYBRID_CHECK(res.count("seed") == 0 || res.count("model") || res.count("config"), "--seed goes with --model or --config");
  const auto str = [&](const char* k) { return res[k].as<std::string>(); };

  // ---- the source --------------------------------------------------------------------------
  std::optional<Source> src;
  if (res.count("model")) {
    const AliasInfo& a = find_alias(str("model"));
    const auto seed = cli::number<std::uint64_t>("--seed", str("seed"));
    src.emplace(RuntimeModel<float>(a.desc(), seed), str("model") + " (random init, seed " + std::to_string(seed) + ")");
    src->byte_tokenizer = true;
  } else if (res.count("config")) {
    const std::string path = str("config");
    const nlohmann::json j = read_json_file(path, "--config", "a model desc JSON file");
    ModelDesc d;
    try {
      d = desc_from_json(j);
    } catch (const Error& e) {
      fail("--config: '", path, "': ", e.what());
    }
    const auto seed = cli::number<std::uint64_t>("--seed", str("seed"));
    src.emplace(RuntimeModel<float>(d, seed), path + " (random init, seed " + std::to_string(seed) + ")");
    src->byte_tokenizer = true;
  } else if (res.count("weights")) {
    src.emplace(load_model<float>(str("weights")), "checkpoint " + str("weights"));
    src->byte_tokenizer = true;
  } else if (res.count("hf")) {
    src.emplace(hf::load_hf<float>(str("hf")), "Hugging Face directory " + str("hf"));
    src->hf_dir = str("hf");
  } else {
    GgufReader r(str("gguf"));
    const gguf::GgufModelInfo info = gguf::describe(r);
    RuntimeModel<float> m(info.desc);
    gguf::load_into(r, info, m);
    src.emplace(std::move(m), std::string("GGUF ") + gguf::arch_name(info.arch) + " " + str("gguf"));
    src->gguf.emplace(std::move(r));
  }
  std::optional<InitRecord> record;
  if (res.count("replace")) {
    std::string kind;
    const std::vector<int> blocks = parse_block_list(str("replace"), src->model.n_blocks(), kind);
    HYBRID_CHECK(kind == "mamba2", "--replace: the kind '", kind, "' is not one this program makes (mamba2)");
    Mamba2Spec mb;
    mb.d_state = cli::number<int>("--mamba-d-state", str("mamba-d-state"));
    mb.expand = cli::number<double>("--mamba-expand", str("mamba-expand"));
    mb.headdim = cli::number<int>("--mamba-headdim", str("mamba-headdim"));
    mb.ngroups = cli::number<int>("--mamba-groups", str("mamba-groups"));
    InitRecord rec;
    RuntimeModel<float> student =
        replace_mixers(src->model, {{blocks, mb}}, cli::number<std::uint64_t>("--init-seed", str("init-seed")), &rec);
    std::fprintf(stderr, "replaced the mixers of %zu blocks: layout %s -> %s; %zu tensors copied, %zu new\n",
                 rec.replaced.size(), rec.layout_before.c_str(), rec.layout_after.c_str(), rec.copied.size(),
                 rec.fresh.size());
    src->origin = src->origin + " with blocks " + str("replace");
    src->model = std::move(student);
    record = std::move(rec);
  } else {
    for (const char* f : {"mamba-d-state", "mamba-expand", "mamba-headdim", "mamba-groups", "init-seed"})
      HYBRID_CHECK(res.count(f) == 0, "--", f, " goes with --replace");
  }
  RuntimeModel<float>& model = src->model;
  std::fprintf(stderr, "source: %s: %lld parameters, layout %s, vocab %d\n", src->origin.c_str(),
               (long long)model.param_count(), model.layout_string().c_str(), model.vocab());
  if (res.count("summary")) std::printf("%s", model.summary(src->origin).c_str());

  // ---- the outputs -------------------------------------------------------------------------
  if (res.count("to-gguf")) {
    gguf::ExportOptions opt;
    if (str("arch") != "auto") {
      opt.arch = gguf::parse_arch(str("arch"));
      HYBRID_CHECK(opt.arch, "--arch: '", str("arch"), "' is not auto, granitehybrid, lfm2, mamba2 or llama");
    }
    const auto type = parse_type(str("type"));
    HYBRID_CHECK(type, "--type: '", str("type"), "' is not f32, f16, bf16 or q8_0");
    opt.type = *type;
    if (res.count("name")) opt.name = str("name");
    std::string vocab;
    choose_vocab(str("vocab"), *src, res.count("allow-prefix-space") > 0, opt, vocab);
    const std::string out = str("to-gguf");
    const gguf::ExportReport rep = gguf::write_gguf(model, out, opt);
    std::string types;
    for (const auto& [t, n] : rep.tensors_by_type) types += (types.empty() ? "" : ", ") + std::to_string(n) + " " + t;
    std::fprintf(stderr, "wrote %s: %s, %.2f MB, tensors %s; %s\n", out.c_str(), gguf::arch_name(rep.arch),
                 double(rep.bytes) / 1e6, types.c_str(), vocab.c_str());
    if (!rep.kept_f32.empty())
      std::fprintf(stderr, "  kept f32 (rows not a multiple of 32 for q8_0): %zu tensors, e.g. %s\n",
                   rep.kept_f32.size(), rep.kept_f32[0].c_str());
  }
  if (res.count("to-hf")) {
    hf::save_hf(model, str("to-hf"));
    std::fprintf(stderr, "wrote %s (config.json + model.safetensors, %s)\n", str("to-hf").c_str(),
                 hf::architecture(hf::family_for(model.desc())));
  }
  if (res.count("to-weights")) {
    std::map<std::string, std::string> meta{{"converted_from", src->origin}};
    if (record) meta["init_record"] = record->to_json().dump();  // {replaced_blocks, copied, new, layouts}
    save_model(model, str("to-weights"), meta);
    std::fprintf(stderr, "wrote %s\n", str("to-weights").c_str());
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) { return hybrid::cli::guarded_main(run, argc, argv); }
