// Tokenizer metadata of a GGUF file (the tokenizer.ggml.* keys llama.cpp reads).
//
// The byte vocabulary of our ByteTokenizer (ids 0-255 bytes, 256 BOS, 257 EOS) is written as
// a "gpt2" BPE vocabulary without merges: token b is GPT-2's byte-level character for byte b,
// so llama.cpp's BPE tokenizer, finding no merge, maps every byte of a text to its own id;
// 256 and 257 are control tokens, ids past 257 (a vocabulary padded for the kernels) unused
// placeholders. Reading a file back recognises exactly that vocabulary.
//
//   set_byte_vocab(writer, model_vocab);          // export
//   if (is_byte_vocab(reader)) tok = ByteTokenizer();   // import
#pragma once
#include <string>
#include <vector>

#include "../io/gguf.hpp"
#include "../infer/tokenizer.hpp"
#include "../tokenizer/bytes.hpp"

namespace hybrid::gguf {

// llama.cpp's token types.
enum class TokenType : std::int32_t { Normal = 1, Unknown = 2, Control = 3, UserDefined = 4, Unused = 5, Byte = 6 };

inline std::string byte_vocab_token(int id) {
  if (id < 256) return detail::bpe::byte_alphabet().utf8[std::size_t(id)];
  if (id == ByteTokenizer::kBos) return "<|bos|>";
  if (id == ByteTokenizer::kEos) return "<|eos|>";
  return "[PAD" + std::to_string(id) + "]";
}

inline void set_byte_vocab(GgufWriter& w, int model_vocab) {
  HYBRID_CHECK(model_vocab >= ByteTokenizer::kVocab, "GGUF export: the byte vocabulary needs ",
               ByteTokenizer::kVocab, " ids (256 bytes, BOS, EOS) but the model has ", model_vocab,
               "; write it without a vocabulary instead");
  std::vector<std::string> tokens;
  std::vector<GgufValue> types;
  for (int id = 0; id < model_vocab; ++id) {
    tokens.push_back(byte_vocab_token(id));
    const TokenType t = id < 256 ? TokenType::Normal
                        : id < ByteTokenizer::kVocab ? TokenType::Control : TokenType::Unused;
    types.push_back(GgufValue::i32(std::int32_t(t)));
  }
  w.set("tokenizer.ggml.model", GgufValue::str("gpt2"));
  w.set("tokenizer.ggml.pre", GgufValue::str("default"));
  w.set("tokenizer.ggml.tokens", GgufValue::strings(tokens));
  w.set("tokenizer.ggml.token_type", GgufValue::array(GgufType::I32, std::move(types)));
  w.set("tokenizer.ggml.merges", GgufValue::array(GgufType::STRING, {}));
  w.set("tokenizer.ggml.bos_token_id", GgufValue::u32(ByteTokenizer::kBos));
  w.set("tokenizer.ggml.eos_token_id", GgufValue::u32(ByteTokenizer::kEos));
  w.set("tokenizer.ggml.add_bos_token", GgufValue::boolean(false));
  w.set("tokenizer.ggml.add_eos_token", GgufValue::boolean(false));
}

// No vocabulary: llama.cpp then takes the size from {arch}.vocab_size and runs on ids.
inline void set_no_vocab(GgufWriter& w, const std::string& arch, int model_vocab) {
  w.set("tokenizer.ggml.model", GgufValue::str("none"));
  w.set(arch + ".vocab_size", GgufValue::u32(std::uint32_t(model_vocab)));
}

// Whether the file holds exactly the byte vocabulary set_byte_vocab writes (its padding
// placeholders aside).
inline bool is_byte_vocab(const GgufReader& r) {
  const GgufValue* model = r.get("tokenizer.ggml.model");
  const GgufValue* tokens = r.get("tokenizer.ggml.tokens");
  const GgufValue* merges = r.get("tokenizer.ggml.merges");
  if (!model || model->type != GgufType::STRING || model->s != "gpt2") return false;
  if (!tokens || tokens->type != GgufType::ARRAY || tokens->elem != GgufType::STRING) return false;
  if (merges && (merges->type != GgufType::ARRAY || !merges->items.empty())) return false;
  if (tokens->items.size() < std::size_t(ByteTokenizer::kVocab)) return false;
  for (int id = 0; id < ByteTokenizer::kVocab; ++id)
    if (tokens->items[std::size_t(id)].s != byte_vocab_token(id)) return false;
  return true;
}

}  // namespace hybrid::gguf
