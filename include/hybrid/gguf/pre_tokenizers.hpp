// The pre-tokenizers a Hugging Face tokenizer.json and llama.cpp's tokenizer.ggml.pre can both
// name: each llama.cpp name with the tokenizer.json steps (regex, split behaviour, ByteLevel
// flags, ignore_merges) that produce its pieces, and the reduction of a tokenizer.json
// pre_tokenizer to those steps. Used by gguf/tokenizer.hpp in both directions.
#pragma once
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "../core/json.hpp"

namespace hybrid::gguf::tok_detail {


using json = nlohmann::json;

// HF's original patterns, as tokenizer.json files hold them.
inline constexpr const char* kRegexLlama3 =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
inline constexpr const char* kRegexQwen2 =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
inline constexpr const char* kRegexQwen35 =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
inline constexpr const char* kRegexGpt4o =
    R"([^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
inline constexpr const char* kRegexTekken =
    R"([^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

// A pre_tokenizer step reduced to what decides the pieces (trim_offsets only moves offsets).
inline json byte_level(bool prefix_space, bool use_regex) {
  return {{"type", "ByteLevel"}, {"add_prefix_space", prefix_space}, {"use_regex", use_regex}};
}
inline json split_isolated(const char* regex) {
  return {{"type", "Split"}, {"pattern", {{"Regex", regex}}}, {"behavior", "Isolated"}, {"invert", false}};
}
inline json digits(bool individual) { return {{"type", "Digits"}, {"individual_digits", individual}}; }

// llama.cpp's pre-tokenizer names (src/llama-vocab.cpp) whose pieces a tokenizer.json can
// describe: export writes names[0] unless asked for another of the same row. Names that
// also change llama.cpp's defaults beyond keys written here (add_sep, a null BOS) are left
// out.
struct PreTokenizer {
  std::vector<std::string> names;
  std::vector<json> steps;  // canonical steps, as canonical_steps() gives them
  bool ignore_merges = false;
};

inline const std::vector<PreTokenizer>& pre_tokenizers() {
  static const std::vector<PreTokenizer> table = [] {
    const json bl_regex = byte_level(false, true), bl_plain = byte_level(false, false);
    return std::vector<PreTokenizer>{
        {{"gpt-2", "phi-2", "mpt", "olmo", "jais", "exaone4"}, {bl_regex}, false},
        {{"llama-bpe", "llama3", "llama-v3", "lfm2", "falcon3", "falcon-h1", "pixtral", "midm-2.0"},
         {split_isolated(kRegexLlama3), bl_plain}, true},
        {{"smaug-bpe", "dbrx"}, {split_isolated(kRegexLlama3), bl_plain}, false},
        {{"qwen2", "deepseek-r1-qwen", "megrez", "stablelm2"}, {split_isolated(kRegexQwen2), bl_plain}, false},
        {{"qwen35"}, {split_isolated(kRegexQwen35), bl_plain}, false},
        {{"starcoder", "refact", "smollm", "codeshell", "command-r", "exaone", "minerva-7b"},
         {digits(true), bl_regex}, false},
        {{"gpt-4o", "llama4", "kanana2"}, {split_isolated(kRegexGpt4o), bl_plain}, false},
        {{"tekken"}, {split_isolated(kRegexTekken), bl_plain}, true},
    };
  }();
  return table;
}

inline const PreTokenizer* pre_tokenizer_named(std::string_view name) {
  for (const auto& p : pre_tokenizers())
    for (const auto& n : p.names)
      if (n == name) return &p;
  return nullptr;
}

inline std::string known_pre_names() {
  std::string s;
  for (const auto& p : pre_tokenizers()) s += (s.empty() ? "" : ", ") + p.names[0];
  return s;
}

// The steps of a tokenizer.json pre_tokenizer (Sequences flattened), each reduced to the
// fields that decide the pieces, with HF's defaults filled in. Unknown step types are kept
// as written: they match no table row.
inline void canonical_steps(const JsonFields& f, const json& p, const std::string& path, std::vector<json>& out,
                            int depth = 0) {
  if (depth > 8) f.fail(path, "Sequences nested deeper than 8 levels");
  f.object(p, path);
  const std::string type = f.string(f.require(p, "type", path), JsonFields::join(path, "type"));
  const auto flag = [&](const char* key, bool dflt) {
    const json* v = f.find(p, key, path);
    return v ? f.boolean(*v, JsonFields::join(path, key)) : dflt;
  };
  if (type == "Sequence") {
    const json& list = f.array(f.require(p, "pretokenizers", path), JsonFields::join(path, "pretokenizers"));
    for (std::size_t i = 0; i < list.size(); ++i)
      canonical_steps(f, list[i], JsonFields::at(path + ".pretokenizers", i), out, depth + 1);
  } else if (type == "ByteLevel") {
    out.push_back(byte_level(flag("add_prefix_space", true), flag("use_regex", true)));
  } else if (type == "Digits") {
    out.push_back(digits(flag("individual_digits", false)));
  } else if (type == "Split") {
    json s = {{"type", "Split"}, {"pattern", f.require(p, "pattern", path)},
              {"behavior", f.require(p, "behavior", path)}, {"invert", flag("invert", false)}};
    out.push_back(std::move(s));
  } else {
    out.push_back(p);
  }
}

// "Split(Regex "(?i:'s|'t|..." Isolated) + ByteLevel(add_prefix_space=true, use_regex=true)"
inline const char* tf(bool b) { return b ? "true" : "false"; }

inline std::string describe(const std::vector<json>& steps) {
  std::string s;
  for (const json& st : steps) {
    if (!s.empty()) s += " + ";
    const std::string type = st.contains("type") && st["type"].is_string() ? st["type"].get<std::string>() : "?";
    if (type == "ByteLevel")
      s += hybrid::detail::concat_str("ByteLevel(add_prefix_space=", tf(st["add_prefix_space"].get<bool>()),
                              ", use_regex=", tf(st["use_regex"].get<bool>()), ")");
    else if (type == "Digits")
      s += hybrid::detail::concat_str("Digits(individual_digits=", tf(st["individual_digits"].get<bool>()), ")");
    else if (type == "Split")
      s += "Split(" + json_brief(st["pattern"]) + " " + json_brief(st["behavior"]) +
           (st["invert"].get<bool>() ? " inverted)" : ")");
    else
      s += json_brief(st);
  }
  return s.empty() ? "none" : s;
}

// Full tokenizer.json pre_tokenizer for canonical steps.
inline json hf_pre_tokenizer(const std::vector<json>& steps) {
  json list = json::array();
  for (json st : steps) {
    if (st["type"] == "ByteLevel") st["trim_offsets"] = false;
    list.push_back(std::move(st));
  }
  return {{"type", "Sequence"}, {"pretokenizers", std::move(list)}};
}

}  // namespace hybrid::gguf::tok_detail
