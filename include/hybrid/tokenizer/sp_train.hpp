// Training a SentencePiece BPE tokenizer with parameter golf's settings through
// libsentencepiece's own trainer, from documents in memory; the .model written atomically.
// Needs hybrid::tokenizers (libsentencepiece and libsentencepiece_train;
// HYBRID_HAVE_TOKENIZERS).
//
//   std::vector<std::string> docs = data::read_documents("corpus.jsonl", data::DocFormat::Jsonl);
//   SpTrainReport r = train_sentencepiece_file(docs, "tok.model");    // vocab 1024
//   SentencePieceTokenizer tok("tok.model");   // pad 0, bos 1, eos 2, unk 3, <0x00>..<0xFF>
//
// Parameter golf's settings (REFERENCE.md §6; openai/parameter-golf
// data/download_hf_docs_and_tokenize.py): model_type bpe, vocab_size 1024,
// character_coverage 0.999, byte_fallback, split_digits, normalization nmt_nfkc (which turns
// line breaks and tabs into spaces), add_dummy_prefix off, pad 0 / bos 1 / eos 2 / unk 3,
// hard_vocab_limit off. With byte fallback the vocabulary holds 4 special pieces, 256 byte
// pieces and every character of the kept coverage, so it must exceed ~260 + the corpus's
// character count; the trainer's own message says by how much when it does not.
//
// Sentences: as golf does, each document with NUL bytes made spaces and surrounding white
// space stripped, empty ones dropped. Golf's trainer skips documents longer than
// max_sentence_length bytes (4192); here they are cut at line breaks into pieces of at most
// that length (a longer line at a character boundary), so a file read as one document
// (data::DocFormat::Text) still trains.
//
// Determinism: the output is bit-identical across runs for the same documents, options and
// libsentencepiece version (tests/test_sp_train.cpp trains twice and compares the bytes).
// It depends on the thread count (with 0.1.97, 1 and 2 threads give different models), so
// threads defaults to 1. libsentencepiece's process-wide generator is given a fixed seed
// before training, for versions whose sentence sample (input_sentence_size) draws on it;
// 0.1.97's sample came out the same whatever the seed.
#pragma once
#include <sentencepiece_processor.h>
#include <sentencepiece_trainer.h>

#include <algorithm>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "../core/atomic_file.hpp"
#include "../core/error.hpp"
#include "sentencepiece.hpp"

namespace hybrid {

struct SpTrainOptions {
  int vocab_size = 1024;
  double character_coverage = 0.999;
  std::int64_t max_documents = 0;        // > 0: only the first this many documents
  std::int64_t input_sentence_size = 0;  // > 0: a sample of this many sentences
  int max_sentence_length = 4192;        // bytes; longer documents are cut at line breaks
  int threads = 1;                       // the result depends on it (see above)
  bool verbose = false;                  // the trainer's progress log on stderr
  // Further trainer flags by libsentencepiece's names ("model_type" = "unigram", ...); they
  // override the settings above. The special ids are checked after training either way.
  std::map<std::string, std::string> trainer_flags;
};

// What came out: the serialized model and figures for a log line.
struct SpTrainReport {
  std::string model;  // the .model file's bytes
  int vocab_size = 0;
  std::int64_t documents = 0, sentences = 0, bytes = 0;  // what the trainer was given
};

inline constexpr unsigned kSpTrainSeed = 20240520;  // libsentencepiece's generator (see above)

namespace detail {

// The trainer's input: the sentences, already cut.
class SpSentences final : public sentencepiece::SentenceIterator {
 public:
  explicit SpSentences(std::vector<std::string> s) : s_(std::move(s)) {}
  bool done() const override { return i_ >= s_.size(); }
  void Next() override { ++i_; }
  const std::string& value() const override { return s_[i_]; }
  sentencepiece::util::Status status() const override { return {}; }

 private:
  std::vector<std::string> s_;
  std::size_t i_ = 0;
};

inline std::string_view strip_space(std::string_view s) {
  const char* ws = " \t\n\r\f\v";
  const std::size_t a = s.find_first_not_of(ws);
  if (a == std::string_view::npos) return {};
  return s.substr(a, s.find_last_not_of(ws) - a + 1);
}

// One document → sentences of at most `max_len` bytes (see the header comment).
inline void cut_sentences(std::string doc, std::size_t max_len, std::vector<std::string>& out) {
  for (char& c : doc)
    if (c == '\0') c = ' ';
  std::string_view rest = strip_space(doc);
  while (!rest.empty()) {
    std::size_t take = rest.size();
    if (take > max_len) {
      const std::size_t nl = rest.rfind('\n', max_len);
      if (nl != std::string_view::npos && nl > 0) {
        take = nl;
      } else {  // one line longer than max_len: back up to the start of a character
        take = max_len;
        while (take > 0 && (static_cast<unsigned char>(rest[take]) & 0xC0) == 0x80) --take;
        if (take == 0) take = max_len;
      }
    }
    const std::string_view piece = strip_space(rest.substr(0, take));
    if (!piece.empty()) out.emplace_back(piece);
    rest = strip_space(rest.substr(take));
  }
}

}  // namespace detail

// Trains on `docs` and returns the serialized model. Throws naming the option for bad
// options, and with libsentencepiece's message (e.g. a vocabulary smaller than the
// characters need) when its trainer fails.
inline SpTrainReport train_sentencepiece(const std::vector<std::string>& docs,
                                         const SpTrainOptions& opt = {}) {
  HYBRID_CHECK(opt.vocab_size >= 5 && opt.vocab_size <= 65536, "train_sentencepiece: vocab_size ",
               opt.vocab_size, "; expected 5 to 65536 (4 special ids, and shards store uint16 ids)");
  HYBRID_CHECK(opt.character_coverage > 0 && opt.character_coverage <= 1,
               "train_sentencepiece: character_coverage ", opt.character_coverage, "; expected (0, 1]");
  HYBRID_CHECK(opt.max_sentence_length >= 16, "train_sentencepiece: max_sentence_length ",
               opt.max_sentence_length, "; expected at least 16 bytes");
  HYBRID_CHECK(opt.threads >= 1, "train_sentencepiece: threads ", opt.threads, "; expected >= 1");
  HYBRID_CHECK(opt.max_documents >= 0 && opt.input_sentence_size >= 0,
               "train_sentencepiece: max_documents and input_sentence_size must be >= 0 (0: all)");

  SpTrainReport rep;
  std::vector<std::string> sentences;
  const std::size_t n_docs = opt.max_documents > 0
                                 ? std::min(docs.size(), std::size_t(opt.max_documents))
                                 : docs.size();
  for (std::size_t d = 0; d < n_docs; ++d) {
    detail::cut_sentences(docs[d], std::size_t(opt.max_sentence_length), sentences);
    rep.bytes += std::int64_t(docs[d].size());
  }
  rep.documents = std::int64_t(n_docs);
  rep.sentences = std::int64_t(sentences.size());
  HYBRID_CHECK(!sentences.empty(), "train_sentencepiece: the ", n_docs,
               " documents hold no text to train on (every one is empty or white space)");

  std::unordered_map<std::string, std::string> kw{
      {"model_type", "bpe"},
      {"vocab_size", std::to_string(opt.vocab_size)},
      {"character_coverage", std::to_string(opt.character_coverage)},
      {"byte_fallback", "true"},
      {"split_digits", "true"},
      {"normalization_rule_name", "nmt_nfkc"},
      {"add_dummy_prefix", "false"},
      {"pad_id", "0"},
      {"bos_id", "1"},
      {"eos_id", "2"},
      {"unk_id", "3"},
      {"hard_vocab_limit", "false"},
      {"max_sentence_length", std::to_string(opt.max_sentence_length)},
      {"input_sentence_size", std::to_string(opt.input_sentence_size)},
      {"num_threads", std::to_string(opt.threads)},
      {"minloglevel", opt.verbose ? "0" : "1"},
  };
  for (const auto& [k, v] : opt.trainer_flags) kw[k] = v;
  sentencepiece::SetRandomGeneratorSeed(kSpTrainSeed);
  detail::SpSentences it(std::move(sentences));
  const auto st = sentencepiece::SentencePieceTrainer::Train(kw, &it, &rep.model);
  HYBRID_CHECK(st.ok(), "train_sentencepiece: libsentencepiece's trainer failed on ", rep.sentences,
               " sentences (vocab_size ", opt.vocab_size, "): ", st.ToString());

  // Read it back through our own tokenizer: the ids shards and training rely on.
  const SentencePieceTokenizer tok = SentencePieceTokenizer::from_serialized(rep.model, "the trained model");
  rep.vocab_size = tok.vocab_size();
  const auto id_is = [&](std::optional<int> got, int want, const char* what) {
    HYBRID_CHECK(got && *got == want, "train_sentencepiece: the trained model's ", what, " id is ",
                 got ? std::to_string(*got) : std::string("missing"), ", expected ", want,
                 " (parameter golf's pad 0 / bos 1 / eos 2 / unk 3; check trainer_flags)");
  };
  id_is(tok.pad(), 0, "pad");
  id_is(tok.bos(), 1, "bos");
  id_is(tok.eos(), 2, "eos");
  id_is(tok.unk(), 3, "unk");
  return rep;
}

// The same, writing the model to `model_path` (a temporary beside it, then a rename: an
// existing file stays as it was when training fails).
inline SpTrainReport train_sentencepiece_file(const std::vector<std::string>& docs,
                                              const std::string& model_path,
                                              const SpTrainOptions& opt = {}) {
  SpTrainReport rep = train_sentencepiece(docs, opt);
  write_file_atomic(model_path, "train_sentencepiece: '" + model_path + "'", rep.model);
  return rep;
}

}  // namespace hybrid
