// Sharded safetensors checkpoints, laid out as Hugging Face writes them:
//
//   dir/model.safetensors.index.json   {"metadata": {"total_size": 123, ...},
//                                        "weight_map": {"embed.weight": "model-00001-of-00002.safetensors",
//                                                       "lm_head.weight": "model-00002-of-00002.safetensors"}}
//   dir/model-00001-of-00002.safetensors
//   dir/model-00002-of-00002.safetensors
//
// or, for a model small enough, one dir/model.safetensors and no index. SafetensorsSet opens
// either layout and checks that the index and the shards agree exactly: every tensor of
// weight_map is in the shard it names, and every tensor of every shard is in weight_map under
// that shard. A mismatch means a half-copied or hand-edited checkpoint, and loading it anyway
// would silently mix weights, so it is an error naming the tensor and both places.
//
//   SafetensorsSet ck("checkpoints/step-1000");           // a directory (or one of the files)
//   if (const auto* e = ck.find("embed.weight"))           // nullptr if absent
//     e->reader->read(*e->info, w.data());                 // or e->reader->try_view<float>(*e->info)
//   ck.read("lm_head.weight", out.data());                 // throws if absent
//
//   write_sharded("out", tensors, 2'000'000'000, {{"format", "pt"}});
#pragma once
#include <filesystem>
#include <map>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

#include "../core/atomic_file.hpp"
#include "safetensors.hpp"

namespace hybrid {

inline constexpr const char* safetensors_index_file = "model.safetensors.index.json";
inline constexpr const char* safetensors_single_file = "model.safetensors";

// An index file's contents, checked (see parse_safetensors_index).
struct SafetensorsIndex {
  // "metadata": string values as they are; others (HF writes "total_size" as a number) as
  // their JSON text.
  std::map<std::string, std::string> metadata;
  // "weight_map": tensor name → shard file, relative to the index's directory.
  std::map<std::string, std::string> weight_map;
};

namespace sharded_detail {

// Why `shard` may not be opened relative to the checkpoint directory, or "" if it may. The
// index comes from the checkpoint, which may come from anywhere: it must not name files
// outside the directory.
inline std::string bad_shard_path(const std::string& shard) {
  if (shard.empty()) return "is empty";
  if (shard.find('\0') != std::string::npos) return "contains a NUL character";
  if (shard.front() == '/') return "is absolute";
  for (const auto& part : std::filesystem::path(shard))
    if (part == "..") return "contains '..'";
  return "";
}

}  // namespace sharded_detail

// Parses an index file's text and checks its shape: an object with "weight_map" (an object
// mapping each tensor name to a shard path; at least one tensor) and optionally "metadata"
// (an object), nothing else; no key twice; shard paths relative, without "..". `where`
// names the file in errors.
inline SafetensorsIndex parse_safetensors_index(std::string_view text, const std::string& where) {
  auto bad = [&](const auto&... a) {
    throw Error(st_detail::printable(hybrid::detail::concat_str("safetensors index '", where, "': ", a...)));
  };
  auto in = [](const std::vector<std::string>& path) -> std::string {
    return path.empty() ? "the top-level object" : "\"" + path[0] + "\"";
  };
  nlohmann::json j;
  try {
    j = st_detail::parse_json_checked(text, safetensors_max_depth, in);
  } catch (const Error& e) {
    bad(e.what());
  }
  if (!j.is_object())
    bad("expected an object {\"metadata\": {...}, \"weight_map\": {...}}, got ", st_detail::json_brief(j));
  for (const auto& [k, v] : j.items())
    if (k != "metadata" && k != "weight_map")
      bad("unknown field '", k, "' (expected metadata, weight_map)");

  SafetensorsIndex idx;
  if (auto md = j.find("metadata"); md != j.end()) {
    if (!md->is_object()) bad("metadata must be an object, got ", st_detail::json_brief(*md));
    for (const auto& [k, v] : md->items()) idx.metadata[k] = v.is_string() ? v.get<std::string>() : v.dump();
  }
  auto wm = j.find("weight_map");
  if (wm == j.end())
    bad("missing field 'weight_map' (expected an object mapping tensor names to shard files)");
  if (!wm->is_object())
    bad("weight_map must be an object mapping tensor names to shard files, got ", st_detail::json_brief(*wm));
  if (wm->empty()) bad("weight_map is empty (expected at least one tensor)");
  for (const auto& [name, shard] : wm->items()) {
    if (!shard.is_string())
      bad("weight_map.", name, ": expected the shard's file name as a string, got ", st_detail::json_brief(shard));
    const std::string s = shard.get<std::string>();
    if (const std::string why = sharded_detail::bad_shard_path(s); !why.empty())
      bad("weight_map.", name, ": shard path '", s, "' ", why,
          " (expected a file name relative to the index's directory)");
    idx.weight_map[name] = s;
  }
  return idx;
}

// The tensors of a checkpoint directory, single-file or sharded, behind one lookup.
class SafetensorsSet {
 public:
  // Where one tensor lives: the reader of its file and its entry there.
  struct Entry {
    const SafetensorsReader* reader = nullptr;
    const TensorInfo* info = nullptr;
  };

  // `path` is a directory (holding model.safetensors.index.json, else model.safetensors), an
  // index file (shards relative to its directory), or a single .safetensors file. Opens
  // and validates every file; throws hybrid::Error naming the file and the problem.
  explicit SafetensorsSet(const std::string& path) : path_(path) {
    namespace fs = std::filesystem;
    std::error_code ec;
    const fs::path p(path);
    if (fs::is_directory(p, ec)) {
      if (fs::exists(p / safetensors_index_file, ec)) open_index((p / safetensors_index_file).string());
      else if (fs::exists(p / safetensors_single_file, ec)) open_single((p / safetensors_single_file).string());
      else
        fail("checkpoint directory '", path, "': holds neither ", safetensors_index_file, " nor ",
             safetensors_single_file, " (expected a safetensors checkpoint)");
    } else if (path.size() >= 5 && path.compare(path.size() - 5, 5, ".json") == 0) {
      open_index(path);
    } else {
      open_single(path);
    }
  }
  SafetensorsSet(SafetensorsSet&&) noexcept = default;  // readers keep their addresses
  SafetensorsSet& operator=(SafetensorsSet&&) noexcept = default;

  // What was opened, as given to the constructor.
  const std::string& path() const { return path_; }
  // True when opened through an index file.
  bool sharded() const { return sharded_; }
  // One reader per file, in the order of their file names.
  const std::vector<SafetensorsReader>& files() const { return files_; }
  // The index's metadata (see SafetensorsIndex) or, for a single file, its __metadata__.
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  std::size_t size() const { return entries_.size(); }

  // nullptr if no file holds the tensor.
  const Entry* find(std::string_view name) const {
    auto it = entries_.find(name);
    return it == entries_.end() ? nullptr : &it->second;
  }
  // Every tensor name, sorted.
  std::vector<std::string> names() const {
    std::vector<std::string> n;
    n.reserve(entries_.size());
    for (const auto& [k, e] : entries_) n.push_back(k);
    return n;
  }
  // The tensor converted to S (float or double), numel() elements written to out.
  template <class S>
  void read(std::string_view name, S* out) const {
    at(name).reader->read(*at(name).info, out);
  }
  template <class S>
  std::vector<S> read(std::string_view name) const {
    const Entry& e = at(name);
    return e.reader->read<S>(*e.info);
  }
  // The entry of a tensor that must exist; throws naming the checkpoint and the tensor.
  const Entry& at(std::string_view name) const {
    if (const Entry* e = find(name)) return *e;
    fail("checkpoint '", path_, "': no tensor '", name, "' (it holds ", entries_.size(),
         " tensors in ", files_.size(), " file", files_.size() == 1 ? "" : "s", ")");
  }

 private:
  void open_single(const std::string& file) {
    files_.emplace_back(file);
    metadata_ = files_[0].metadata();
    for (const auto& t : files_[0].tensors()) entries_[t.name] = {&files_[0], &t};
  }

  void open_index(const std::string& index_path) {
    namespace fs = std::filesystem;
    sharded_ = true;
    auto bad = [&](const auto&... a) {
      throw Error(st_detail::printable(hybrid::detail::concat_str("sharded checkpoint '", index_path, "': ", a...)));
    };
    std::string text;
    {
      std::FILE* f = std::fopen(index_path.c_str(), "rb");
      if (!f) bad("cannot open the index: ", std::strerror(errno));
      char buf[1 << 14];
      std::size_t n;
      while ((n = std::fread(buf, 1, sizeof buf, f)) > 0) {
        text.append(buf, n);
        if (text.size() > safetensors_max_header) {
          std::fclose(f);
          bad("the index is over ", safetensors_max_header, " bytes (expected a small JSON file)");
        }
      }
      const bool err = std::ferror(f);
      std::fclose(f);
      if (err) bad("cannot read the index");
    }
    const SafetensorsIndex idx = parse_safetensors_index(text, index_path);
    metadata_ = idx.metadata;

    // Shards by normalised path ("./a" and "a" are one file), each opened once.
    const fs::path dir = fs::path(index_path).parent_path();
    std::map<std::string, std::string> norm;  // shard as written → normalised
    std::map<std::string, std::string> first_tensor;  // normalised → a tensor it should hold
    for (const auto& [name, shard] : idx.weight_map) {
      const std::string n = fs::path(shard).lexically_normal().string();
      norm[shard] = n;
      first_tensor.emplace(n, name);
    }
    std::map<std::string, std::size_t> slot;  // normalised shard → index in files_
    files_.reserve(first_tensor.size());      // no reallocation: entries_ point into files_
    for (const auto& [shard, tensor] : first_tensor) {
      try {
        files_.emplace_back((dir / shard).string());
      } catch (const Error& e) {
        bad("shard '", shard, "' (listed for tensor '", tensor, "'): ", e.what());
      }
      slot[shard] = files_.size() - 1;
    }

    // Every tensor of the map is in the shard it names ...
    for (const auto& [name, shard] : idx.weight_map) {
      const SafetensorsReader& r = files_[slot.at(norm.at(shard))];
      const TensorInfo* t = r.find(name);
      if (!t) {
        std::string elsewhere;
        for (const auto& other : files_)
          if (other.find(name)) elsewhere = " (it is in '" + other.path() + "')";
        bad("weight_map puts tensor '", name, "' in shard '", shard, "', but '", r.path(),
            "' does not hold it", elsewhere);
      }
      entries_[name] = {&r, t};
    }
    // ... and every tensor of every shard is in the map, under that shard.
    for (const auto& r : files_)
      for (const auto& t : r.tensors()) {
        auto it = idx.weight_map.find(t.name);
        if (it == idx.weight_map.end())
          bad("shard '", r.path(), "' holds tensor '", t.name,
              "', which weight_map does not list (expected every tensor of every shard there)");
        if (entries_.at(t.name).reader != &r)
          bad("shard '", r.path(), "' holds tensor '", t.name, "', but weight_map puts it in '",
              it->second, "' (a tensor must be in exactly one shard)");
      }
  }

  std::string path_;
  bool sharded_ = false;
  std::vector<SafetensorsReader> files_;
  std::map<std::string, std::string> metadata_;
  std::map<std::string, Entry, std::less<>> entries_;
};

// Writes `tensors` into `dir` (created if missing) as Hugging Face lays out checkpoints:
// when their data fits in max_shard_bytes (or there is at most one tensor), one
// model.safetensors, and any model.safetensors.index.json left there is removed (it would
// shadow the new file); else shards model-00001-of-0000N.safetensors, filled in the given
// order, a new one started when the next tensor would overflow max_shard_bytes (a tensor
// larger than that gets a shard of its own), then the index, written last so that a reader
// never finds an index naming shards not yet written. Every shard's __metadata__ and the
// index's metadata hold `metadata`; the index's also "total_size" (the data bytes of all
// tensors). Each file is replaced atomically but the set is not: rewriting a checkpoint in
// place, a reader that opens it meanwhile may see old and new shards of the same name
// mixed, so write to a fresh directory when that matters. A shard set written over a
// model.safetensors leaves that file behind (the index takes precedence when reading).
// Returns the names of the files written, index last.
inline std::vector<std::string> write_sharded(const std::string& dir, const std::vector<TensorRef>& tensors,
                                              std::uint64_t max_shard_bytes,
                                              const std::map<std::string, std::string>& metadata = {}) {
  namespace fs = std::filesystem;
  auto bad = [&](const auto&... a) { fail("writing sharded checkpoint '", dir, "': ", a...); };
  if (max_shard_bytes == 0) bad("max_shard_bytes must be positive");
  if (metadata.count("total_size"))
    bad("metadata key 'total_size' is reserved (the index records the data size under it)");

  // Sizes first (write_safetensors checks each shard again), and names unique across shards.
  std::vector<std::uint64_t> sizes;
  std::set<std::string> seen;
  std::uint64_t total = 0;
  for (const auto& t : tensors) {
    if (!seen.insert(t.name).second) bad("tensor name '", t.name, "' is used twice");
    std::uint64_t n = dtype_size(t.dtype);
    for (auto d : t.shape)
      if (d < 0 || __builtin_mul_overflow(n, std::uint64_t(d), &n))
        bad("tensor '", t.name, "': invalid shape ", st_detail::shape_str(t.shape));
    if (__builtin_add_overflow(total, n, &total)) bad("the tensors hold more than 2^64 bytes");
    sizes.push_back(n);
  }
  std::vector<std::vector<TensorRef>> shards(1);
  std::uint64_t in_shard = 0;
  for (std::size_t i = 0; i < tensors.size(); ++i) {
    if (!shards.back().empty() && (in_shard > max_shard_bytes || sizes[i] > max_shard_bytes - in_shard)) {
      shards.emplace_back();
      in_shard = 0;
    }
    shards.back().push_back(tensors[i]);
    in_shard += sizes[i];
  }

  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) bad("cannot create the directory: ", ec.message());
  const fs::path d(dir);
  if (shards.size() == 1) {
    write_safetensors((d / safetensors_single_file).string(), tensors, metadata);
    if (fs::exists(d / safetensors_index_file, ec) && !fs::remove(d / safetensors_index_file, ec))
      bad("wrote ", safetensors_single_file, " but cannot remove the stale ", safetensors_index_file,
          " that shadows it: ", ec.message());
    return {safetensors_single_file};
  }

  std::vector<std::string> written;
  nlohmann::json weight_map = nlohmann::json::object();
  const std::size_t n = shards.size();
  if (n > 99999) bad(n, " shards; the file naming allows at most 99999 (raise max_shard_bytes)");
  for (std::size_t i = 0; i < n; ++i) {
    char name[64];
    std::snprintf(name, sizeof name, "model-%05zu-of-%05zu.safetensors", i + 1, n);
    write_safetensors((d / name).string(), shards[i], metadata);
    for (const auto& t : shards[i]) weight_map[t.name] = name;
    written.push_back(name);
  }
  nlohmann::json md = nlohmann::json::object();
  for (const auto& [k, v] : metadata) md[k] = v;
  md["total_size"] = total;
  std::string text;
  try {
    text = nlohmann::json{{"metadata", md}, {"weight_map", weight_map}}.dump(2) + "\n";
  } catch (const nlohmann::json::exception& e) {  // names or metadata that are not UTF-8
    bad("cannot encode the index: ", e.what());
  }
  const std::string index = (d / safetensors_index_file).string();
  write_file_atomic(index, "writing safetensors index '" + index + "'", text);
  written.push_back(safetensors_index_file);
  return written;
}

}  // namespace hybrid
