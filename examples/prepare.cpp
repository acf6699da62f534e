// prepare: text → what train reads. --train-tokenizer trains a SentencePiece BPE tokenizer
// with parameter golf's settings (tokenizer/sp_train.hpp: vocab 1024, byte fallback, pad 0 /
// bos 1 / eos 2 / unk 3); --to-shards writes parameter-golf shards (data/shards.hpp), each
// document after a BOS: byte level (BOS 256) or, with --tokenizer, the model's ids (BOS 1).
// Both in one call shard with the tokenizer just trained. Every bad input ends with a
// message and exit code 2.
//
//   prepare --train-tokenizer corpus.txt --tokenizer tok.model --to-shards corpus.txt --prefix shards/sp
//   train --shards-train 'shards/sp_train_*.bin' --shards-val 'shards/sp_val_*.bin' --tokenizer tok.model ...
#include <chrono>
#include <cstdio>
#include <cxxopts.hpp>
#include <memory>
#include <string>
#include <vector>

#include <hybrid/data/shards.hpp>
#ifdef HYBRID_HAVE_TOKENIZERS
#include <hybrid/tokenizer/sentencepiece.hpp>
#include <hybrid/tokenizer/sp_train.hpp>
#endif

#include "cli.hpp"

namespace {

using namespace hybrid;

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

int run(int argc, char** argv) {
  cxxopts::Options options(
      "prepare",
      "Prepare text for train. --train-tokenizer FILE trains a SentencePiece BPE tokenizer with\n"
      "parameter golf's settings (vocab 1024, byte fallback, split digits, nmt_nfkc, no dummy\n"
      "prefix, pad 0 / bos 1 / eos 2 / unk 3) and writes it to --tokenizer. --to-shards FILE\n"
      "writes parameter-golf shards <prefix>_train_NNNNNN.bin and <prefix>_val_NNNNNN.bin, each\n"
      "document after a BOS: byte level (BOS 256) or the --tokenizer's ids (BOS 1, no EOS), as\n"
      "parameter golf's shards are. Given both, the shards use the tokenizer just trained.");
  options.add_options("Input")
      ("format", "How the text splits into documents: text (the whole file is one document; "
       "its last 10% of bytes are val), paragraphs (separated by blank lines), jsonl (one JSON "
       "object per line with a string field \"text\", as parameter golf's docs_selected.jsonl)",
       cxxopts::value<std::string>()->default_value("text"));
  options.add_options("Tokenizer")
      ("train-tokenizer", "Train a tokenizer on this text file and write it to --tokenizer", cxxopts::value<std::string>())
      ("tokenizer", "The SentencePiece .model: written by --train-tokenizer (a temporary, then a rename), "
       "read by --to-shards", cxxopts::value<std::string>())
      ("vocab", "Vocabulary size, at most 65536 (shards hold uint16 ids)", cxxopts::value<std::string>()->default_value("1024"))
      ("character-coverage", "Share of the characters the pieces cover; the rest go to byte pieces",
       cxxopts::value<std::string>()->default_value("0.999"))
      ("max-docs", "Train on the first N documents only (0 = all)", cxxopts::value<std::string>()->default_value("0"))
      ("input-sentence-size", "Train on a sample of N sentences, drawn by libsentencepiece (0 = all)",
       cxxopts::value<std::string>()->default_value("0"))
      ("max-sentence-length", "Bytes per training sentence; longer documents are cut at line breaks",
       cxxopts::value<std::string>()->default_value("4192"))
      ("threads", "Trainer threads (the model depends on the count, not only on the input)",
       cxxopts::value<std::string>()->default_value("1"))
      ("verbose", "Show libsentencepiece's training log");
  options.add_options("Shards")
      ("to-shards", "Write shards of this text file", cxxopts::value<std::string>())
      ("prefix", "Output prefix of the shards (directories are created; surplus shards of an earlier, "
       "longer run with the same prefix are removed)", cxxopts::value<std::string>()->default_value("shards/data"))
      ("tokens-per-shard", "Tokens per shard file", cxxopts::value<std::string>()->default_value("100000000"))
      ("val-fraction", "Share of the documents (format text: of the bytes) that go to val, the last ones",
       cxxopts::value<std::string>()->default_value("0.1"))
      ("val-docs", "Instead: the first N documents are val, as parameter golf takes its first 50,000 "
       "(paragraphs or jsonl)", cxxopts::value<std::string>());
  options.add_options()("h,help", "Show this help");
  options.custom_help("[options]");
  const auto res = options.parse(argc, argv);
  if (res.count("help")) {
    std::printf("%s\n", options.help({"", "Input", "Tokenizer", "Shards"}).c_str());
    return 0;
  }
  HYBRID_CHECK(res.unmatched().empty(), "unexpected argument '", res.unmatched().empty() ? "" : res.unmatched()[0],
               "' (flags start with --; see --help)");
  HYBRID_CHECK(res.count("train-tokenizer") || res.count("to-shards"),
               "nothing to do: give --train-tokenizer FILE (with --tokenizer OUT) and/or --to-shards FILE (see --help)");
  const auto str = [&](const char* k) { return res[k].as<std::string>(); };
  const data::DocFormat format = [&] {
    try {
      return data::doc_format_from_name(str("format"));
    } catch (const Error& e) {
      fail("--format: ", e.what());
    }
  }();

#ifndef HYBRID_HAVE_TOKENIZERS
  HYBRID_CHECK(!res.count("train-tokenizer") && !res.count("tokenizer"),
               "--train-tokenizer / --tokenizer: this prepare was built without libsentencepiece "
               "(hybrid::tokenizers); only byte-level --to-shards is available");
#else
  if (res.count("train-tokenizer")) {
    HYBRID_CHECK(res.count("tokenizer"), "--train-tokenizer needs --tokenizer OUT.model (where the model goes)");
    SpTrainOptions opt;
    opt.vocab_size = cli::number<int>("--vocab", str("vocab"));
    HYBRID_CHECK(opt.vocab_size >= 5 && opt.vocab_size <= 65536, "--vocab must be 5 to 65536 (shards hold uint16 ids), got ",
                 opt.vocab_size);
    opt.character_coverage = cli::number<double>("--character-coverage", str("character-coverage"));
    HYBRID_CHECK(opt.character_coverage > 0 && opt.character_coverage <= 1,
                 "--character-coverage must be in (0, 1], got ", opt.character_coverage);
    opt.max_documents = cli::number<std::int64_t>("--max-docs", str("max-docs"));
    HYBRID_CHECK(opt.max_documents >= 0, "--max-docs must be >= 0 (0 = all), got ", opt.max_documents);
    opt.input_sentence_size = cli::number<std::int64_t>("--input-sentence-size", str("input-sentence-size"));
    HYBRID_CHECK(opt.input_sentence_size >= 0, "--input-sentence-size must be >= 0 (0 = all), got ",
                 opt.input_sentence_size);
    opt.max_sentence_length = cli::number<int>("--max-sentence-length", str("max-sentence-length"));
    HYBRID_CHECK(opt.max_sentence_length >= 16, "--max-sentence-length must be at least 16 bytes, got ",
                 opt.max_sentence_length);
    opt.threads = cli::number<int>("--threads", str("threads"));
    HYBRID_CHECK(opt.threads >= 1, "--threads must be >= 1, got ", opt.threads);
    opt.verbose = res.count("verbose") > 0;

    const auto t0 = std::chrono::steady_clock::now();
    const std::vector<std::string> docs = data::read_documents(str("train-tokenizer"), format);
    const SpTrainReport rep = train_sentencepiece_file(docs, str("tokenizer"), opt);
    std::printf("tokenizer: %d pieces (BPE, byte fallback) from %lld documents, %lld sentences, %lld bytes "
                "in %.1f s -> %s\n",
                rep.vocab_size, (long long)rep.documents, (long long)rep.sentences, (long long)rep.bytes,
                seconds_since(t0), str("tokenizer").c_str());
  }
#endif

  if (res.count("to-shards")) {
    data::ShardWriteOptions opt;
    opt.tokens_per_shard = cli::number<Index>("--tokens-per-shard", str("tokens-per-shard"));
    HYBRID_CHECK(opt.tokens_per_shard >= 1, "--tokens-per-shard must be >= 1, got ", opt.tokens_per_shard);
    opt.val_fraction = cli::number<double>("--val-fraction", str("val-fraction"));
    HYBRID_CHECK(opt.val_fraction >= 0 && opt.val_fraction < 1, "--val-fraction must be in [0, 1), got ",
                 opt.val_fraction);
    if (res.count("val-docs")) {
      opt.val_docs = cli::number<Index>("--val-docs", str("val-docs"));
      HYBRID_CHECK(opt.val_docs >= 0, "--val-docs must be >= 0, got ", opt.val_docs);
      HYBRID_CHECK(format != data::DocFormat::Text,
                   "--val-docs counts documents; --format text reads the file as one (use paragraphs or jsonl)");
    }
    std::unique_ptr<Tokenizer> tok = std::make_unique<ByteTokenizer>();
    std::string what = "bytes, BOS 256";
#ifdef HYBRID_HAVE_TOKENIZERS
    if (res.count("tokenizer")) {
      tok = std::make_unique<SentencePieceTokenizer>(str("tokenizer"));
      HYBRID_CHECK(tok->bos(), "--tokenizer: '", str("tokenizer"), "' has no BOS piece to start documents with");
      what = str("tokenizer") + " ids, BOS " + std::to_string(*tok->bos());
    }
#endif
    const auto t0 = std::chrono::steady_clock::now();
    const data::ShardSummary s = data::file_to_shards(str("to-shards"), format, *tok, *tok->bos(), str("prefix"), opt);
    std::printf("shards (%s) in %.1f s:\n", what.c_str(), seconds_since(t0));
    const auto line = [&](const char* split, Index docs, Index tokens, std::size_t files) {
      std::printf("  %-5s %lld documents, %lld tokens in %zu file%s %s_%s_*.bin\n", split, (long long)docs,
                  (long long)tokens, files, files == 1 ? "" : "s", str("prefix").c_str(), split);
    };
    line("train", s.train_docs, s.train_tokens, s.train_files.size());
    line("val", s.val_docs, s.val_tokens, s.val_files.size());
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) { return hybrid::cli::guarded_main(run, argc, argv); }
