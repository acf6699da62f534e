// Text → documents → shards (data/shards.hpp: the three document formats, BOS per document,
// the val split, surplus shards removed, ids checked against the vocabulary) and SentencePiece
// BPE training with parameter golf's settings (tokenizer/sp_train.hpp): the special ids, the
// byte pieces, golf's options visible in the encoding, bit-identical output, atomic writes,
// shards with BOS 1 read back by ShardSource, bad inputs named.
#include <doctest/doctest.h>

#include <algorithm>
#include <filesystem>
#include <hybrid/data/shards.hpp>
#include <string>
#include <vector>

#include "test_util.hpp"

#ifdef HYBRID_HAVE_TOKENIZERS
#include <hybrid/tokenizer/sp_train.hpp>
#endif

using namespace hybrid;
using namespace hybrid::data;
using test_util::check_error;
using test_util::slurp;
using test_util::spit;
using test_util::TempDir;

// This file's own namespace: the tests compile in batches (tests/CMakeLists.txt).
namespace hybrid_test_sp_train {

namespace {

std::vector<int> stream_of(const std::vector<std::string>& files) {
  std::vector<int> out;
  for (const auto& f : files) {
    ShardReader r(f);
    for (Index i = 0; i < r.size(); ++i) out.push_back(r[i]);
  }
  return out;
}

// The documents of a shard stream: the runs that follow each BOS.
std::vector<std::vector<int>> split_at(const std::vector<int>& stream, int bos) {
  std::vector<std::vector<int>> docs;
  for (int id : stream) {
    REQUIRE_MESSAGE((id == bos || !docs.empty()), "the stream does not start with the BOS ", bos);
    if (id == bos) docs.emplace_back();
    else docs.back().push_back(id);
  }
  return docs;
}

}  // namespace

TEST_CASE("documents: text, paragraphs and JSONL; bad files named") {
  TempDir tmp;
  spit(tmp / "p.txt", "\n\nFirst:\nline one\n\n  \n\nSecond:\r\nline two\n\n\nThird\n");
  CHECK(read_documents(tmp / "p.txt", DocFormat::Text).size() == 1);
  const auto paras = read_documents(tmp / "p.txt", DocFormat::Paragraphs);
  REQUIRE(paras.size() == 3);
  CHECK(paras[0] == "First:\nline one");
  CHECK(paras[1] == "Second:\r\nline two");
  CHECK(paras[2] == "Third");

  spit(tmp / "d.jsonl", "{\"text\": \"one\\ntwo\", \"id\": 7}\n\n{\"text\": \"caf\\u00e9\"}\n");
  const auto js = read_documents(tmp / "d.jsonl", DocFormat::Jsonl);
  REQUIRE(js.size() == 2);
  CHECK(js[0] == "one\ntwo");
  CHECK(js[1] == "caf\xC3\xA9");

  spit(tmp / "bad.jsonl", "{\"text\": \"ok\"}\n{\"txt\": \"no\"}\n");
  check_error([&] { read_documents(tmp / "bad.jsonl", DocFormat::Jsonl); },
              {"bad.jsonl", "line 2", "\"text\"", "missing"});
  spit(tmp / "num.jsonl", "{\"text\": 5}\n");
  check_error([&] { read_documents(tmp / "num.jsonl", DocFormat::Jsonl); },
              {"num.jsonl", "line 1", "not a string"});
  spit(tmp / "broken.jsonl", "{\"text\": \"a\"}\n{\"text\": \n");
  check_error([&] { read_documents(tmp / "broken.jsonl", DocFormat::Jsonl); },
              {"broken.jsonl", "line 2", "not valid JSON"});
  spit(tmp / "blank.txt", "\n \n\n");
  check_error([&] { read_documents(tmp / "blank.txt", DocFormat::Paragraphs); },
              {"blank.txt", "no document"});
  check_error([&] { read_documents(tmp / "absent.txt", DocFormat::Text); }, {"absent.txt"});
  check_error([&] { read_documents(tmp / "absent.jsonl", DocFormat::Jsonl); }, {"absent.jsonl", "cannot open"});
  CHECK(doc_format_from_name("paragraphs") == DocFormat::Paragraphs);
  check_error([&] { doc_format_from_name("csv"); }, {"'csv'", "text, paragraphs or jsonl"});
}

TEST_CASE("documents_to_shards: a BOS per document, the split, surplus shards removed") {
  TempDir tmp;
  std::vector<std::string> docs;
  for (int d = 0; d < 20; ++d) docs.push_back(std::string(std::size_t(5 + d), char('a' + d)));
  const ByteTokenizer bytes;
  const std::string prefix = tmp / "sub/b";
  const ShardSummary s = documents_to_shards(docs, bytes, 256, prefix, {.tokens_per_shard = 64});
  CHECK(s.train_docs == 18);  // int(20 * 0.9)
  CHECK(s.val_docs == 2);
  Index want_train = 0;
  for (int d = 0; d < 18; ++d) want_train += 1 + 5 + d;
  CHECK(s.train_tokens == want_train);
  CHECK(s.train_files.size() == std::size_t((want_train + 63) / 64));
  const auto train = split_at(stream_of(s.train_files), 256);
  REQUIRE(train.size() == 18);
  for (int d = 0; d < 18; ++d) CHECK(bytes.decode(train[std::size_t(d)]) == docs[std::size_t(d)]);
  const auto val = split_at(stream_of(s.val_files), 256);
  REQUIRE(val.size() == 2);
  CHECK(bytes.decode(val[1]) == docs[19]);

  // golf's split: the first val_docs documents are val
  const ShardSummary g = documents_to_shards(docs, bytes, 256, tmp / "g", {.val_docs = 3});
  CHECK(g.val_docs == 3);
  const auto gval = split_at(stream_of(g.val_files), 256);
  REQUIRE(gval.size() == 3);
  CHECK(bytes.decode(gval[0]) == docs[0]);
  CHECK(bytes.decode(split_at(stream_of(g.train_files), 256)[0]) == docs[3]);

  // a shorter run over the same prefix leaves no shard of the longer one behind
  const ShardSummary shorter = documents_to_shards({"xyz"}, bytes, 256, prefix, {.val_fraction = 0});
  CHECK(shorter.train_files.size() == 1);
  CHECK(shorter.val_files.empty());
  Index left = 0;
  for (const auto& e : std::filesystem::directory_iterator(tmp / "sub")) left += e.is_regular_file();
  CHECK(left == 1);
  CHECK(stream_of(shorter.train_files) == std::vector<int>{256, 'x', 'y', 'z'});

  check_error([&] { documents_to_shards(docs, bytes, 300, tmp / "x"); }, {"bos id 300", "[0, 258)"});
  check_error([&] { documents_to_shards(docs, bytes, 256, tmp / "x", {.tokens_per_shard = 0}); },
              {"tokens_per_shard"});
  check_error([&] { documents_to_shards(docs, bytes, 256, tmp / "x", {.val_docs = 21}); },
              {"21 val documents", "has 20"});
  spit(tmp / "t.txt", "abc");
  check_error([&] { file_to_shards(tmp / "t.txt", DocFormat::Text, bytes, 256, tmp / "x", {.val_docs = 1}); },
              {"t.txt", "val_docs", "paragraphs or jsonl"});
}

TEST_CASE("ShardSource: ids at or past the vocabulary it was opened with are named") {
  TempDir tmp;
  std::vector<std::uint16_t> ids(200, 5);
  ids[150] = 700;
  write_shard(tmp / "a.bin", ids);
  ShardSource ok({tmp / "a.bin"}, {tmp / "a.bin"}, 1, 1024);
  CHECK(ok.vocab_needed() == 1024);
  ok.train_batch(4, 16);
  ShardSource small({tmp / "a.bin"}, {tmp / "a.bin"}, 1, 512);
  check_error([&] { small.val_batches(1, 199, 0); },
              {"a.bin", "token id 700", "position 150", "[0, 512)", "701"});
  check_error([&] { for (int k = 0; k < 50; ++k) small.train_batch(8, 100); }, {"token id 700", "[0, 512)"});
  check_error([&] { ShardSource({tmp / "a.bin"}, {}, 1, 70000); }, {"vocab 70000", "uint16"});
}

#ifdef HYBRID_HAVE_TOKENIZERS

namespace {

// The first `bytes` of tinyshakespeare as paragraphs (speeches).
std::vector<std::string> shakespeare_docs(std::size_t bytes) {
  const std::string text = slurp(std::string(HYBRID_DATA_DIR) + "/tinyshakespeare.txt");
  REQUIRE_MESSAGE(text.size() > bytes, "data/tinyshakespeare.txt is missing or short");
  TempDir tmp;
  spit(tmp / "slice.txt", text.substr(0, bytes));
  return read_documents(tmp / "slice.txt", DocFormat::Paragraphs);
}

}  // namespace

TEST_CASE("train_sentencepiece: parameter golf's special ids, byte pieces and options") {
  const auto docs = shakespeare_docs(200000);
  SpTrainOptions opt;
  opt.vocab_size = 512;
  const SpTrainReport rep = train_sentencepiece(docs, opt);
  CHECK(rep.vocab_size == 512);
  CHECK(rep.documents == std::int64_t(docs.size()));
  CHECK(rep.sentences >= rep.documents);
  const auto tok = SentencePieceTokenizer::from_serialized(rep.model);
  CHECK(tok.vocab_size() == 512);
  CHECK(tok.pad() == 0);
  CHECK(tok.bos() == 1);
  CHECK(tok.eos() == 2);
  CHECK(tok.unk() == 3);
  CHECK(tok.piece(0) == "<pad>");
  CHECK(tok.piece(1) == "<s>");
  CHECK(tok.piece(2) == "</s>");
  CHECK(tok.piece(3) == "<unk>");
  for (int b = 0; b < 256; ++b) {  // byte fallback: <0x00>..<0xFF> right after the specials
    char want[8];
    std::snprintf(want, sizeof want, "<0x%02X>", b);
    CHECK(tok.is_byte(4 + b));
    CHECK(tok.piece(4 + b) == want);
  }
  CHECK_FALSE(tok.is_byte(260));

  // encode / decode through SentencePieceTokenizer
  const std::string line = "First Citizen: Before we proceed any further, hear me speak.";
  const auto ids = tok.encode(line);
  CHECK(ids.size() < line.size() / 2);  // merges were learnt
  CHECK(tok.decode(ids) == line);
  CHECK(tok.decode(tok.encode("MENENIUS:\nWhat  work's, my\tcountrymen")) ==
        "MENENIUS: What work's, my countrymen");  // nmt_nfkc: breaks and tabs are spaces
  const std::string snow = "snow \xE2\x98\x83 and caf\xC3\xA9";  // not in the corpus: byte pieces
  const auto sid = tok.encode(snow);
  CHECK(std::count_if(sid.begin(), sid.end(), [&](int i) { return tok.is_byte(i); }) >= 3);
  CHECK_FALSE(std::any_of(sid.begin(), sid.end(), [&](int i) { return tok.is_unknown(i); }));
  CHECK(tok.decode(sid) == snow);
  // split_digits: one piece per digit; add_dummy_prefix off: no "▁" before the first word
  const auto digits = tok.encode("1605");
  CHECK(digits.size() == 4);
  CHECK(tok.decode(digits) == "1605");
  CHECK(tok.piece(tok.encode("the king")[0]).rfind("\xE2\x96\x81", 0) != 0);

  // bit-identical on a second run; a different vocabulary gives a different model
  CHECK(train_sentencepiece(docs, opt).model == rep.model);
  SpTrainOptions other = opt;
  other.vocab_size = 600;
  CHECK(train_sentencepiece(docs, other).model != rep.model);
  // max_documents: the first documents only
  SpTrainOptions few = opt;
  few.max_documents = 200;
  few.vocab_size = 400;
  const SpTrainReport fr = train_sentencepiece(docs, few);
  CHECK(fr.documents == 200);
  // a sample of the sentences: the same model on every run too
  SpTrainOptions sample = opt;
  sample.input_sentence_size = 300;
  const std::string sampled = train_sentencepiece(docs, sample).model;
  CHECK(sampled != rep.model);
  CHECK(train_sentencepiece(docs, sample).model == sampled);
}

TEST_CASE("train_sentencepiece: a file read as one document is cut into sentences") {
  TempDir tmp;
  const std::string text = slurp(std::string(HYBRID_DATA_DIR) + "/tinyshakespeare.txt").substr(0, 120000);
  SpTrainOptions opt;
  opt.vocab_size = 400;
  opt.max_sentence_length = 1000;
  const SpTrainReport rep = train_sentencepiece({text}, opt);
  CHECK(rep.documents == 1);
  CHECK(rep.sentences >= 120);  // 120 KB in pieces of at most 1000 bytes
  CHECK(rep.vocab_size == 400);
}

TEST_CASE("train_sentencepiece_file: atomic, and bad options named") {
  TempDir tmp;
  const auto docs = shakespeare_docs(100000);
  SpTrainOptions opt;
  opt.vocab_size = 400;
  const std::string path = tmp / "tok.model";
  const SpTrainReport rep = train_sentencepiece_file(docs, path, opt);
  CHECK(slurp(path) == rep.model);
  SentencePieceTokenizer tok(path);
  CHECK(tok.vocab_size() == 400);

  // a failing training leaves the file as it was and no temporary behind
  SpTrainOptions tiny = opt;
  tiny.vocab_size = 100;  // fewer than the specials, 256 bytes and the characters need
  check_error([&] { train_sentencepiece_file(docs, path, tiny); },
              {"trainer failed", "vocab_size 100", "Vocabulary size"});
  CHECK(slurp(path) == rep.model);
  Index files = 0;
  for (const auto& e : std::filesystem::directory_iterator(tmp.dir)) files += e.is_regular_file();
  CHECK(files == 1);

  SpTrainOptions bad = opt;
  bad.vocab_size = 70000;
  check_error([&] { train_sentencepiece(docs, bad); }, {"vocab_size 70000", "65536", "uint16"});
  bad = opt;
  bad.character_coverage = 0;
  check_error([&] { train_sentencepiece(docs, bad); }, {"character_coverage 0"});
  bad = opt;
  bad.threads = 0;
  check_error([&] { train_sentencepiece(docs, bad); }, {"threads 0"});
  check_error([&] { train_sentencepiece({"", " \n\t", std::string(3, '\0')}, opt); }, {"hold no text"});
  bad = opt;
  bad.trainer_flags["bos_id"] = "5";
  bad.trainer_flags["unk_id"] = "3";
  check_error([&] { train_sentencepiece(docs, bad); }, {"bos id is 5", "expected 1"});
}

TEST_CASE("SentencePiece shards: BOS 1 per document, read back by ShardSource") {
  TempDir tmp;
  const auto docs = shakespeare_docs(150000);
  SpTrainOptions opt;
  opt.vocab_size = 512;
  const auto tok = SentencePieceTokenizer::from_serialized(train_sentencepiece(docs, opt).model);
  const std::string prefix = tmp / "sp";
  const ShardSummary s = documents_to_shards(docs, tok, *tok.bos(), prefix, {.tokens_per_shard = 4096});
  CHECK(s.train_docs + s.val_docs == Index(docs.size()));
  CHECK(s.val_docs == Index(docs.size()) - Index(double(docs.size()) * 0.9));
  const auto train = stream_of(s.train_files), val = stream_of(s.val_files);
  CHECK(train.front() == 1);
  CHECK(val.front() == 1);
  const auto train_docs = split_at(train, 1);
  REQUIRE(train_docs.size() == std::size_t(s.train_docs));
  for (std::size_t d = 0; d < train_docs.size(); d += 97)  // each run is the document's encoding
    CHECK(train_docs[d] == tok.encode(docs[d]));
  CHECK(*std::max_element(train.begin(), train.end()) < 512);

  ShardSource src({prefix + "_train_*.bin"}, {prefix + "_val_*.bin"}, 3, tok.vocab_size());
  CHECK(src.train_tokens() == s.train_tokens);
  CHECK(src.val_tokens() == s.val_tokens);
  const Batch b = src.train_batch(4, 64);
  CHECK(*std::max_element(b.tokens.begin(), b.tokens.end()) < 512);
  CHECK(ShardSource({prefix + "_train_*.bin"}, {}, 3).vocab_needed() <= 512);

  // parameter golf's bytes: the val stream's bytes are the normalized documents' UTF-8
  const double bpt = val_bytes_per_token(src, [&](int p, int id) { return tok.bytes_after(p, id); });
  double want = 0;
  for (std::size_t d = std::size_t(s.train_docs); d < docs.size(); ++d)
    want += double(tok.decode(tok.encode(docs[d])).size());
  CHECK(bpt * double(s.val_tokens) == doctest::Approx(want).epsilon(1e-12));
  CHECK(bpt > 1.5);  // BPE pieces hold more than a byte on average
  src.set_bytes_per_token(bpt);
  CHECK(src.bytes_per_token() == bpt);

  // a model opened with too small a vocabulary names the id
  ShardSource narrow({prefix + "_train_*.bin"}, {prefix + "_val_*.bin"}, 3, 300);
  check_error([&] { narrow.val_batches(8, 64, 0); }, {"outside the vocabulary [0, 300)"});
}

#endif  // HYBRID_HAVE_TOKENIZERS

}  // namespace hybrid_test_sp_train
