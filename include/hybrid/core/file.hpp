// Reading a whole file, with errors that name the reader, the path and what was expected.
#pragma once
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <string_view>
#include <system_error>

#include "error.hpp"

namespace hybrid {

// The bytes of the regular file at `path`. `who` starts every message; `expected` says what
// the file should have been ("a Hugging Face tokenizer.json file"):
//   "<who>: cannot open '<path>': no such file (expected <expected>)"
//   "<who>: '<path>' is not a file (expected <expected>)"
//   "<who>: error while reading '<path>'"
// An empty file is returned as an empty string; callers that need content check it.
inline std::string read_file(const std::filesystem::path& path, std::string_view who,
                             std::string_view expected) {
  std::error_code ec;
  HYBRID_CHECK(std::filesystem::exists(path, ec), who, ": cannot open '", path.string(),
               "': no such file (expected ", expected, ")");
  HYBRID_CHECK(std::filesystem::is_regular_file(path, ec), who, ": '", path.string(),
               "' is not a file (expected ", expected, ")");
  std::ifstream in(path, std::ios::binary);
  HYBRID_CHECK(in.good(), who, ": cannot open '", path.string(), "' for reading");
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  HYBRID_CHECK(!in.bad(), who, ": error while reading '", path.string(), "'");
  return bytes;
}

}  // namespace hybrid
