// SentencePieceTokenizer: a SentencePiece `.model` (parameter-golf's tokenizers, LLaMA-1/2,
// Gemma, T5...) through the system libsentencepiece, so ids are the reference ones.
//
//   hybrid::SentencePieceTokenizer tok("fineweb_1024_bpe.model");
//   std::vector<int> ids = tok.encode("Hello world");   // no BOS added; prepend *tok.bos()
//   std::string text = tok.decode(ids);                 // SentencePiece's own decoding
//
// Encoding and decode() are libsentencepiece's: the model's normalizer applies (with
// remove_extra_whitespaces, the default, runs of spaces shrink to one and leading and
// trailing spaces go), and decode() drops the space of a "▁" on the first piece (even for
// models without add_dummy_prefix: decode of [▁the, ▁king] is "the king"). So
// decode(encode(s)) is the normalized s, equal to s only when normalization leaves s alone.
// decode_token(id) is for streaming: the piece with "▁" as a space, <0xNN> byte-fallback
// pieces as their byte, control tokens as "", the unknown token as SentencePiece's " ⁇ ";
// joined, they equal decode() but for that first space and for byte pieces that do not
// form valid UTF-8, which decode() turns into U+FFFD and decode_token leaves raw.
//
// bytes_per_token follows parameter-golf's bits-per-byte rule: the UTF-8 length of the
// piece without its leading "▁", plus 1 for that "▁"; byte-fallback pieces count 1;
// control, unknown and unused pieces count 0. Parameter-golf drops the "▁" byte when the
// previous token is a boundary (control / unknown / unused, e.g. the BOS starting each
// document); bytes_per_token(id) has no context and counts it, bytes_after(prev, id)
// applies the rule exactly. For a model without add_dummy_prefix (parameter-golf's) and
// text that needs no unknown token, the sum of bytes_per_token over encode(s) is the UTF-8
// length of decode(encode(s)), the normalized text; bytes_after with the BOS before the
// first token gives the same sum, since the normalized text never starts with a space.
//
// can_decode is false for control, unknown and unused pieces (not real text), except the
// EOS, which generation must be able to sample to stop. bos()/eos() come from the model
// (nullopt where the model has none, id -1).
//
// Missing or unreadable model files throw hybrid::Error naming the file; so do ids outside
// the vocabulary. The processor is shared read-only between copies and threads.
#pragma once
#include <sentencepiece_processor.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "../core/file.hpp"
#include "../infer/tokenizer.hpp"

namespace hybrid {

class SentencePieceTokenizer final : public Tokenizer {
 public:
  // Loads a .model file.
  explicit SentencePieceTokenizer(const std::string& model_path) {
    // Our own checks first: they give clearer messages than the library's status.
    load(read_file(model_path, "SentencePieceTokenizer", "a SentencePiece .model file"),
         "'" + model_path + "'");
  }

  // Loads a model from its serialized bytes (the contents of a .model file); `origin`
  // names it in error messages.
  static SentencePieceTokenizer from_serialized(std::string_view bytes,
                                                std::string_view origin = "serialized model") {
    SentencePieceTokenizer tok;
    tok.load(bytes, std::string(origin));
    return tok;
  }

  std::vector<int> encode(std::string_view text) const override {
    std::vector<int> ids;
    const auto st = sp_->Encode(text, &ids);
    HYBRID_CHECK(st.ok(), "SentencePieceTokenizer: encoding failed: ", st.ToString());
    return ids;
  }

  std::string decode_token(int id) const override {
    check_id(id, "SentencePieceTokenizer::decode_token");
    return pieces_[std::size_t(id)].text;
  }

  std::string decode(std::span<const int> ids) const override {
    for (std::size_t i = 0; i < ids.size(); ++i)
      HYBRID_CHECK(ids[i] >= 0 && ids[i] < vocab_size(), "SentencePieceTokenizer::decode: token id ",
                   ids[i], " at position ", i, " is outside the vocabulary [0, ", vocab_size(), ")");
    std::string out;
    const auto st = sp_->Decode(std::vector<int>(ids.begin(), ids.end()), &out);
    HYBRID_CHECK(st.ok(), "SentencePieceTokenizer: decoding failed: ", st.ToString());
    return out;
  }

  int vocab_size() const override { return int(pieces_.size()); }

  bool can_decode(int id) const override {
    if (id < 0 || id >= vocab_size()) return false;
    return !pieces_[std::size_t(id)].boundary || (eos_ && *eos_ == id);
  }

  std::optional<int> bos() const override { return bos_; }
  std::optional<int> eos() const override { return eos_; }

  // Context-free count: a leading "▁" is taken to follow a non-boundary token.
  double bytes_per_token(int id) const override {
    check_id(id, "SentencePieceTokenizer::bytes_per_token");
    const Piece& p = pieces_[std::size_t(id)];
    return double(p.base_bytes + (p.leading_space ? 1 : 0));
  }

  // Parameter-golf's exact count for `id` following `prev` (prev < 0: nothing before it,
  // which counts as a boundary).
  double bytes_after(int prev, int id) const {
    check_id(id, "SentencePieceTokenizer::bytes_after");
    if (prev >= 0) check_id(prev, "SentencePieceTokenizer::bytes_after (previous token)");
    const Piece& p = pieces_[std::size_t(id)];
    const bool prev_boundary = prev < 0 || pieces_[std::size_t(prev)].boundary;
    return double(p.base_bytes + (p.leading_space && !prev_boundary ? 1 : 0));
  }

  // The piece as written in the model ("▁the", "<0x0A>", "<s>").
  const std::string& piece(int id) const {
    check_id(id, "SentencePieceTokenizer::piece");
    return sp_->IdToPiece(id);
  }
  bool is_control(int id) const { return in_range(id) && sp_->IsControl(id); }
  bool is_byte(int id) const { return in_range(id) && sp_->IsByte(id); }
  bool is_unknown(int id) const { return in_range(id) && sp_->IsUnknown(id); }
  std::optional<int> pad() const { return pad_; }
  std::optional<int> unk() const { return unk_; }

 private:
  struct Piece {
    std::string text;         // decode_token's bytes
    int base_bytes = 0;       // bytes without the leading "▁"
    bool leading_space = false;
    bool boundary = false;    // control, unknown or unused
  };

  SentencePieceTokenizer() = default;

  bool in_range(int id) const { return id >= 0 && id < vocab_size(); }

  void load(std::string_view bytes, const std::string& origin) {
    HYBRID_CHECK(!bytes.empty(), "SentencePieceTokenizer: ", origin,
                 " is empty (expected a serialized SentencePiece ModelProto)");
    auto sp = std::make_shared<sentencepiece::SentencePieceProcessor>();
    const auto st = sp->LoadFromSerializedProto(bytes);
    HYBRID_CHECK(st.ok(), "SentencePieceTokenizer: ", origin,
                 " is not a valid SentencePiece model (expected a serialized ModelProto): ",
                 st.ToString());
    const int n = sp->GetPieceSize();
    HYBRID_CHECK(n > 0, "SentencePieceTokenizer: ", origin, " has no pieces (expected a vocabulary)");
    sp_ = std::move(sp);

    static constexpr std::string_view kSpace = "\xE2\x96\x81";  // "▁", SentencePiece's space
    pieces_.assign(std::size_t(n), Piece{});
    for (int id = 0; id < n; ++id) {
      Piece& p = pieces_[std::size_t(id)];
      const std::string& s = sp_->IdToPiece(id);
      if (sp_->IsControl(id) || sp_->IsUnused(id)) {
        p.boundary = true;
      } else if (sp_->IsUnknown(id)) {
        p.boundary = true;
        p.text = " \xE2\x81\x87 ";  // " ⁇ ", what SentencePiece decodes the unknown piece to
      } else if (sp_->IsByte(id)) {
        p.text = std::string(1, char(byte_value(s, origin, id)));
        p.base_bytes = 1;
      } else {
        std::string_view rest = s;
        if (rest.substr(0, kSpace.size()) == kSpace) {
          p.leading_space = true;
          rest.remove_prefix(kSpace.size());
        }
        p.base_bytes = int(rest.size());
        // Every "▁" in the piece is a space in the text (pieces may hold several).
        for (std::size_t i = 0; i < s.size();) {
          if (std::string_view(s).substr(i, kSpace.size()) == kSpace) {
            p.text += ' ';
            i += kSpace.size();
          } else {
            p.text += s[i++];
          }
        }
      }
    }
    const auto special = [&](int id) -> std::optional<int> {
      return id >= 0 && id < n ? std::optional<int>(id) : std::nullopt;
    };
    bos_ = special(sp_->bos_id());
    eos_ = special(sp_->eos_id());
    pad_ = special(sp_->pad_id());
    unk_ = special(sp_->unk_id());
  }

  // The byte of a byte-fallback piece "<0xNN>".
  static int byte_value(const std::string& s, const std::string& origin, int id) {
    const auto hex = [](char c) {
      return c >= '0' && c <= '9' ? c - '0' : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                             : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
    };
    const bool ok = s.size() == 6 && s.compare(0, 3, "<0x") == 0 && s[5] == '>' &&
                    hex(s[3]) >= 0 && hex(s[4]) >= 0;
    HYBRID_CHECK(ok, "SentencePieceTokenizer: ", origin, ": byte piece ", id, " is '", s,
                 "' (expected <0xNN>)");
    return hex(s[3]) * 16 + hex(s[4]);
  }

  std::shared_ptr<const sentencepiece::SentencePieceProcessor> sp_;
  std::vector<Piece> pieces_;
  std::optional<int> bos_, eos_, pad_, unk_;
};

}  // namespace hybrid
