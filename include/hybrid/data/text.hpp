// Byte-level text as a data source (ByteTokenizer ids 0-255) with nanoGPT's 90/10
// train / val split.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "source.hpp"

namespace hybrid::data {

// Byte-level text (ByteTokenizer ids 0-255, no BOS): train = the first int(n (1 - f))
// bytes, val = the rest, f = 0.1 as nanoGPT. Train windows of T+1 bytes start uniformly in
// [0, n_train - T - 1]; val windows start at 0, T, 2T, ... of the val split.
class TextSource final : public Source {
 public:
  TextSource(std::string path, std::uint64_t seed, double val_fraction = 0.1)
      : path_(std::move(path)), seed_(seed), rng_(derive_seed(seed, "train")) {
    text_ = detail::read_file_bytes(path_, "TextSource");
    n_train_ = detail::train_split(Index(text_.size()), val_fraction);
  }

  Batch train_batch(Index B, Index T) override {
    detail::check_BT(B, T, "TextSource");
    HYBRID_CHECK(n_train_ >= T + 1, "TextSource '", path_, "': the train split has ", n_train_,
                 " tokens, a window needs T + 1 = ", T + 1, "; use a smaller T");
    Batch b;
    b.B = B;
    b.T = T;
    b.tokens.resize(std::size_t(B * T));
    b.targets.resize(std::size_t(B * T));
    for (Index r = 0; r < B; ++r) {
      const Index s = Index(rng_.below(std::uint64_t(n_train_ - T)));
      for (Index t = 0; t < T; ++t) {
        b.tokens[std::size_t(r * T + t)] = byte_at(s + t);
        b.targets[std::size_t(r * T + t)] = byte_at(s + t + 1);
      }
    }
    ++draws_;
    return b;
  }

  std::vector<Batch> val_batches(Index B, Index T, Index max_batches) override {
    detail::check_BT(B, T, "TextSource");
    HYBRID_CHECK(n_val() >= T + 1, "TextSource '", path_, "': the val split has ", n_val(),
                 " tokens, a window needs T + 1 = ", T + 1, "; use a smaller T");
    return detail::window_batches(n_val(), B, T, max_batches, [&](Index s, Index n, int* out) {
      for (Index i = 0; i < n; ++i) out[i] = byte_at(n_train_ + s + i);
    });
  }

  std::string state() const override {
    return detail::pack_state("text", fingerprint(), draws_, rng_);
  }
  void set_state(const std::string& s) override {
    detail::unpack_state(s, "text", fingerprint(), draws_, rng_);
  }
  std::string describe() const override {
    return ::hybrid::detail::concat_str("text('", path_, "', train ", n_train_, " + val ", n_val(),
                                        " bytes, seed=", seed_, ")");
  }
  int vocab_needed() const override { return 256; }

  Index n_train() const { return n_train_; }
  Index n_val() const { return Index(text_.size()) - n_train_; }
  std::string_view train_text() const {
    return std::string_view(text_).substr(0, std::size_t(n_train_));
  }
  std::string_view val_text() const {
    return std::string_view(text_).substr(std::size_t(n_train_));
  }

 private:
  int byte_at(Index i) const { return static_cast<unsigned char>(text_[std::size_t(i)]); }
  std::uint64_t fingerprint() const {
    return derive_seed(std::uint64_t(text_.size()), std::to_string(n_train_));
  }

  std::string path_, text_;
  std::uint64_t seed_;
  Rng rng_;
  Index n_train_ = 0;
  std::uint64_t draws_ = 0;
};

}  // namespace hybrid::data
