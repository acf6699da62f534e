// Bits per byte (REFERENCE.md §6): BPB = Σ CE_nats / (ln 2 · Σ bytes) over the scored target
// tokens, with the bytes of each target from a per-id table built from the tokenizer, and
// the Totals that the evaluators sum (nats, bytes, tokens, all in double).
//
//   const TokenBytes tb = token_bytes(ByteTokenizer(), model.vocab());   // ids 0-255: 1 byte
//   const TokenBytes sp = token_bytes(sp_tokenizer, model.vocab());      // parameter-golf's rule
//   double b = sp.count(prev_id, id);
//
// The rule, as parameter-golf's evaluation counts it: a token stands for the UTF-8 length of
// its piece without a leading "▁", plus 1 for that "▁" when the previous token is not a
// boundary (control, unknown or unused); byte-fallback pieces count 1, control, unknown and
// unused ones 0; ids beyond the tokenizer's vocabulary (a model's padded rows) count 0 and
// are boundaries. For a byte-level model bytes = tokens (the BOS / EOS ids count 0).
#pragma once
#include <algorithm>
#include <cmath>
#include <concepts>
#include <cstdint>
#include <vector>

#include "../core/error.hpp"
#include "../core/tensor.hpp"
#include "../infer/tokenizer.hpp"

namespace hybrid::eval {

// What the scored tokens of an evaluation add up to. nats: Σ cross-entropy (natural log) of
// the scored targets; bytes: Σ their byte counts; tokens: how many were scored.
struct Totals {
  double nats = 0;
  double bytes = 0;
  Index tokens = 0;

  Totals& operator+=(const Totals& o) {
    nats += o.nats;
    bytes += o.bytes;
    tokens += o.tokens;
    return *this;
  }
  // Mean cross-entropy, nats per scored token.
  double loss() const {
    HYBRID_CHECK(tokens > 0, "eval: no token was scored, so there is no loss");
    return nats / double(tokens);
  }
  // Σ nats / (ln 2 · Σ bytes).
  double bits_per_byte() const {
    HYBRID_CHECK(bytes > 0, "eval: the ", tokens, " scored tokens stand for 0 bytes (only "
                 "control tokens?), so bits per byte is undefined");
    return nats / (std::log(2.0) * bytes);
  }
};

// Per model id: base bytes, whether a leading-space byte is added after a non-boundary
// token, and whether the id is a boundary. Sized to the model's vocabulary.
struct TokenBytes {
  std::vector<double> base;              // (V) bytes without the leading space
  std::vector<std::uint8_t> space;       // (V) 1: the piece starts with SentencePiece's "▁"
  std::vector<std::uint8_t> boundary;    // (V) 1: control / unknown / unused / beyond the tokenizer

  int vocab() const { return int(base.size()); }

  // Bytes of target `id` that follows `prev` (prev < 0: nothing before it, a boundary).
  double count(int prev, int id) const {
    HYBRID_CHECK(id >= 0 && id < vocab(), "eval: token id ", id,
                 " has no byte count; the table covers ids [0, ", vocab(), ")");
    const bool after_text = prev >= 0 && prev < vocab() && !boundary[std::size_t(prev)];
    return base[std::size_t(id)] + (space[std::size_t(id)] && after_text ? 1.0 : 0.0);
  }

  // Σ bytes over a stream's targets: ids[i] counted after ids[i - 1], the first after `prev`.
  double sum(const int* ids, Index n, int prev = -1) const {
    double s = 0;
    for (Index i = 0; i < n; ++i) {
      s += count(prev, ids[i]);
      prev = ids[i];
    }
    return s;
  }
};

namespace detail {
inline TokenBytes sized_table(int tokenizer_vocab, int model_vocab) {
  HYBRID_CHECK(model_vocab > 0, "token_bytes: the model's vocabulary must be positive, got ",
               model_vocab);
  HYBRID_CHECK(tokenizer_vocab > 0, "token_bytes: the tokenizer has no ids");
  TokenBytes t;
  t.base.assign(std::size_t(model_vocab), 0.0);
  t.space.assign(std::size_t(model_vocab), 0);
  t.boundary.assign(std::size_t(model_vocab), 1);  // ids beyond the tokenizer: no text
  return t;
}
}  // namespace detail

// Any tokenizer whose pieces do not depend on their neighbours (byte-level, byte-level BPE):
// Tokenizer::bytes_per_token for each id it has, 0 for the model's ids beyond it.
inline TokenBytes token_bytes(const Tokenizer& tok, int model_vocab) {
  const int n = tok.vocab_size();
  TokenBytes t = detail::sized_table(n, model_vocab);
  for (int id = 0; id < std::min(n, model_vocab); ++id) {
    t.base[std::size_t(id)] = tok.bytes_per_token(id);
    t.boundary[std::size_t(id)] = t.base[std::size_t(id)] == 0 ? 1 : 0;
  }
  return t;
}

// A tokenizer whose leading space depends on the previous token (SentencePieceTokenizer:
// bytes_after(prev, id) applies parameter-golf's rule, bytes_per_token(id) assumes a
// non-boundary before it). Chosen over the overload above whenever the static type has
// bytes_after; a SentencePiece tokenizer seen only as `const Tokenizer&` would lose the rule.
template <class Tok>
  requires requires(const Tok& t, int a) {
    { t.bytes_after(a, a) } -> std::convertible_to<double>;
    { t.is_control(a) } -> std::convertible_to<bool>;
  }
TokenBytes token_bytes(const Tok& tok, int model_vocab) {
  const int n = tok.vocab_size();
  TokenBytes t = detail::sized_table(n, model_vocab);
  for (int id = 0; id < std::min(n, model_vocab); ++id) {
    const double alone = tok.bytes_after(-1, id);  // after a boundary: no space byte
    t.base[std::size_t(id)] = alone;
    t.space[std::size_t(id)] = tok.bytes_per_token(id) > alone ? 1 : 0;
    // Control, unknown and unused pieces: can_decode is false for them (the EOS, a control
    // token that generation may sample, is caught by is_control).
    t.boundary[std::size_t(id)] = !tok.can_decode(id) || tok.is_control(id) ? 1 : 0;
  }
  return t;
}

}  // namespace hybrid::eval
