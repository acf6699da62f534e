// A model from anything the library loads, for the example programs: our checkpoint (a
// save_model / train checkpoint .safetensors file), a Hugging Face directory, a GGUF file or
// a quantised artifact (with artifact support: hybrid::compress). The float parameters
// are what the caller gets (GGUF Q8_0 tensors and artifacts dequantised), ready to run,
// score or train.
#pragma once
#include <filesystem>
#include <optional>
#include <string>

#include <hybrid/core/error.hpp>
#include <hybrid/gguf/import.hpp>
#include <hybrid/hf/checkpoint.hpp>
#include <hybrid/io/checkpoint.hpp>
#include <hybrid/runtime_model.hpp>
#ifdef HYBRID_HAVE_COMPRESSION
#include <hybrid/quant/model_artifact.hpp>
#endif

namespace model_source {

enum class Kind { Checkpoint, HfDir, Gguf, Artifact };

struct Loaded {
  std::optional<hybrid::RuntimeModel<float>> model;
  std::string origin;  // "GGUF llama from m.gguf", for logs and tables
};

inline bool ends_with(const std::string& s, const char* tail) {
  const std::string t(tail);
  return s.size() >= t.size() && s.compare(s.size() - t.size(), t.size(), t) == 0;
}

// What a path holds, by its form: a directory is a Hugging Face checkpoint, *.gguf a GGUF
// file, *.hybq an artifact, anything else our checkpoint.
inline Kind kind_of(const std::string& path) {
  if (std::filesystem::is_directory(path)) return Kind::HfDir;
  if (ends_with(path, ".gguf")) return Kind::Gguf;
  if (ends_with(path, ".hybq")) return Kind::Artifact;
  return Kind::Checkpoint;
}

// flag: the option that named the path, for errors ("--teacher").
inline Loaded load(const std::string& path, Kind kind, const char* flag) {
  using namespace hybrid;
  const char* what = kind == Kind::Checkpoint ? "our checkpoint (.safetensors, as train --save writes)"
                    : kind == Kind::Gguf       ? "a .gguf file"
                                               : "a .hybq artifact (quantize --out)";
  HYBRID_CHECK(kind == Kind::HfDir || std::filesystem::is_regular_file(path), flag, " '", path,
               "': no such file (expected ", what, ")");
  Loaded l;
  switch (kind) {
    case Kind::Checkpoint:
      l.model.emplace(load_model<float>(path));
      l.origin = "checkpoint " + path;
      break;
    case Kind::HfDir: {
      const hf::HfCheckpoint ck(path);
      l.model.emplace(ck.config().desc);
      ck.load_into(*l.model);
      l.origin = std::string(hf::architecture(ck.config().family)) + " from " + path;
      break;
    }
    case Kind::Gguf: {
      const GgufReader r(path);
      const gguf::GgufModelInfo info = gguf::describe(r);
      l.model.emplace(info.desc);
      gguf::load_into(r, info, *l.model);
      l.origin = std::string("GGUF ") + gguf::arch_name(info.arch) + " from " + path;
      break;
    }
    case Kind::Artifact:
#ifdef HYBRID_HAVE_COMPRESSION
      l.model.emplace(quant::load_artifact_model(quant::read_artifact(path), path));
      l.origin = "quantised artifact " + path;
      break;
#else
      fail(flag, " '", path, "': this build has no artifact support (liblzma, zstd and brotli were not "
           "found at configure time)");
#endif
  }
  l.model->set_weight_storage(DType::F32);
  return l;
}

inline Loaded load(const std::string& path, const char* flag) {
  HYBRID_CHECK(std::filesystem::exists(path), flag, " '", path, "': no such file or directory (expected our "
               "checkpoint, a Hugging Face directory, a .gguf file or a .hybq artifact)");
  return load(path, kind_of(path), flag);
}

}  // namespace model_source
