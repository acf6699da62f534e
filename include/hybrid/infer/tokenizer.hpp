// Tokenizer: the interface generation, sampling and evaluation see (encode, decode, which
// ids are real text, special ids, bytes per token for bits-per-byte), and ByteTokenizer,
// the one the shipped aliases use: ids 0-255 are bytes, 256 is BOS, 257 is EOS.
// SentencePiece and BPE tokenizers plug in by deriving from Tokenizer.
#pragma once
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "../core/error.hpp"

namespace hybrid {

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;

  // Text → ids. No BOS is added; callers that want one prepend *bos().
  virtual std::vector<int> encode(std::string_view text) const = 0;

  // Bytes of one token, for streaming: the concatenation of decode_token over a sequence
  // is its decoding for byte-level tokenizers. Special tokens decode to "". The bytes may
  // end inside a multi-byte UTF-8 character that the next token completes.
  virtual std::string decode_token(int id) const = 0;

  // Ids → text. Tokenizers whose pieces depend on their neighbours (SentencePiece's
  // leading space) override this; the default joins decode_token.
  virtual std::string decode(std::span<const int> ids) const {
    std::string out;
    for (int id : ids) out += decode_token(id);
    return out;
  }

  // Ids are [0, vocab_size()). A model's vocabulary may be larger (padded to a multiple of
  // 64 or 128); ids beyond the tokenizer's have no text and must not be sampled.
  virtual int vocab_size() const = 0;
  virtual bool can_decode(int id) const { return id >= 0 && id < vocab_size(); }

  virtual std::optional<int> bos() const { return std::nullopt; }
  virtual std::optional<int> eos() const { return std::nullopt; }

  // UTF-8 bytes the token stands for, for bits-per-byte = sum(nll) / (ln 2 * sum(bytes)).
  // Special tokens stand for 0 bytes.
  virtual double bytes_per_token(int id) const { return double(decode_token(id).size()); }

 protected:
  void check_id(int id, const char* what) const {
    HYBRID_CHECK(id >= 0 && id < vocab_size(), what, ": token id ", id,
                 " is outside the tokenizer's vocabulary [0, ", vocab_size(), ")");
  }
};

// mask[i] = 1 when the model's id i may be sampled: it is below model_vocab and the
// tokenizer can decode it. Sized model_vocab.
inline std::vector<std::uint8_t> decodable_mask(const Tokenizer& tok, int model_vocab) {
  HYBRID_CHECK(model_vocab > 0, "decodable_mask: model vocab must be positive, got ", model_vocab);
  std::vector<std::uint8_t> mask(std::size_t(model_vocab), 0);
  for (int i = 0; i < model_vocab; ++i) mask[std::size_t(i)] = tok.can_decode(i) ? 1 : 0;
  return mask;
}

// Raw bytes as tokens, so every byte string round-trips exactly (including 0 and 255).
//   encode("hi") == {104, 105};   decode({256, 104, 105, 257}) == "hi"
class ByteTokenizer final : public Tokenizer {
 public:
  static constexpr int kBos = 256;
  static constexpr int kEos = 257;
  static constexpr int kVocab = 258;

  std::vector<int> encode(std::string_view text) const override {
    std::vector<int> ids(text.size());
    for (std::size_t i = 0; i < text.size(); ++i) ids[i] = static_cast<unsigned char>(text[i]);
    return ids;
  }

  std::string decode_token(int id) const override {
    check_id(id, "ByteTokenizer::decode_token");
    if (id >= 256) return {};
    return std::string(1, static_cast<char>(static_cast<unsigned char>(id)));
  }

  std::string decode(std::span<const int> ids) const override {
    std::string out;
    out.reserve(ids.size());
    for (std::size_t i = 0; i < ids.size(); ++i) {
      HYBRID_CHECK(ids[i] >= 0 && ids[i] < kVocab, "ByteTokenizer::decode: token id ", ids[i],
                   " at position ", i, " is outside the vocabulary [0, ", kVocab, ")");
      if (ids[i] < 256) out += static_cast<char>(static_cast<unsigned char>(ids[i]));
    }
    return out;
  }

  int vocab_size() const override { return kVocab; }
  std::optional<int> bos() const override { return kBos; }
  std::optional<int> eos() const override { return kEos; }
  double bytes_per_token(int id) const override {
    check_id(id, "ByteTokenizer::bytes_per_token");
    return id < 256 ? 1.0 : 0.0;
  }
};

}  // namespace hybrid
