// Replacing a file atomically (temporary beside it, flush, fsync, rename), so that a reader
// or a crash never sees half a file; and removal of the temporaries that dead writers left.
#pragma once
#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <cerrno>
#include <charconv>
#include <concepts>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>

#include "error.hpp"

namespace hybrid {

// The temporary that this process uses for `target`: "<target>.tmp.<pid>". The pid in the
// name is what lets a later writer tell a dead writer's leftover from a live one's file.
inline std::string atomic_temp_path(const std::string& target) {
  return target + ".tmp." + std::to_string(::getpid());
}

// The writer pid of a temporary named "<target_name>.tmp.<pid>" (file names, no directory),
// or nullopt when `name` is not such a temporary. Pids that cannot be a process (0, or too
// large for pid_t) still parse, as -1: no live writer can own them.
inline std::optional<long long> atomic_temp_pid(std::string_view name,
                                                std::string_view target_name) {
  const std::string_view mid = ".tmp.";
  if (name.size() <= target_name.size() + mid.size() || !name.starts_with(target_name) ||
      name.substr(target_name.size(), mid.size()) != mid)
    return std::nullopt;
  const std::string_view digits = name.substr(target_name.size() + mid.size());
  for (char c : digits)
    if (c < '0' || c > '9') return std::nullopt;
  pid_t pid = 0;
  const auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), pid);
  if (ec != std::errc() || end != digits.data() + digits.size() || pid <= 0) return -1;
  return pid;
}

// True for any file name "<something>.tmp.<digits>": listings of finished files skip these.
inline bool is_atomic_temp(std::string_view name) {
  const std::size_t at = name.rfind(".tmp.");
  return at != std::string_view::npos && at > 0 &&
         atomic_temp_pid(name, name.substr(0, at)).has_value();
}

// Whether a writer with this pid may still be running. EPERM means the process exists but
// is not ours to signal, so only ESRCH ("no such process") counts as dead.
inline bool writer_alive(long long pid) {
  if (pid <= 0) return false;
  return ::kill(pid_t(pid), 0) == 0 || errno != ESRCH;
}

// Removes "<target>.tmp.<pid>" files beside `target` whose writer is dead. Temporaries of
// live writers (this process included) are left alone: they may be mid-write. Best effort:
// a directory that cannot be listed, or a file that vanished meanwhile, is not an error.
inline void remove_stale_temps(const std::filesystem::path& target) {
  namespace fs = std::filesystem;
  const fs::path dir = target.has_parent_path() ? target.parent_path() : fs::path(".");
  const std::string name = target.filename().string();
  std::error_code ec;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    const auto pid = atomic_temp_pid(it->path().filename().string(), name);
    if (pid && !writer_alive(*pid)) {
      std::error_code rm;
      fs::remove(it->path(), rm);
    }
  }
}

// One atomic replacement of `path`. The constructor clears dead writers' temporaries and
// opens "<path>.tmp.<pid>" (so a bad path fails before any work is done); the caller writes
// through file(); commit() flushes, fsyncs, closes and renames over `path`. Destroyed
// without commit() — or when any step fails — the temporary is removed and an existing
// `path` is left as it was. Errors read
//   "<what>: cannot create temporary file '<temporary>': <reason>"
//   "<what>: <step> '<temporary>' failed: <reason>"   (step: writing, fsync of, ...)
// where `what` names the target, e.g. "write_shard: 'train_000.bin'".
class AtomicFile {
 public:
  AtomicFile(std::string path, std::string what)
      : path_(std::move(path)), tmp_(atomic_temp_path(path_)), what_(std::move(what)) {
    remove_stale_temps(path_);
    f_ = std::fopen(tmp_.c_str(), "wb");
    if (!f_) fail(what_, ": cannot create temporary file '", tmp_, "': ", std::strerror(errno));
  }
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;
  ~AtomicFile() { discard(); }

  std::FILE* file() const { return f_; }
  const std::string& temp_path() const { return tmp_; }

  // Writes n bytes; throws on a short write (disk full, I/O error).
  void write(const void* data, std::size_t n) {
    if (n && std::fwrite(data, 1, n, f_) != n) abort("writing");
  }
  void write(std::string_view bytes) { write(bytes.data(), bytes.size()); }

  // `step` for a caller whose own writes through file() failed.
  [[noreturn]] void abort(const char* step) {
    const std::string why = errno ? std::strerror(errno) : "unknown error";
    discard();
    fail(what_, ": ", step, " '", tmp_, "' failed: ", why);
  }

  void commit() {
    HYBRID_CHECK(f_, what_, ": commit() called twice");
    if (std::fflush(f_) != 0) abort("flushing");
    if (::fsync(::fileno(f_)) != 0) abort("fsync of");
    const int rc = std::fclose(f_);
    f_ = nullptr;
    if (rc != 0) abort("closing");
    if (std::rename(tmp_.c_str(), path_.c_str()) != 0) abort("renaming over the target");
    committed_ = true;
    // Make the rename itself durable; best effort, as some file systems refuse to fsync a
    // directory, and a failure here no longer endangers either file.
    std::string dir = std::filesystem::path(path_).parent_path().string();
    if (dir.empty()) dir = ".";
    if (const int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC); dfd >= 0) {
      (void)::fsync(dfd);
      ::close(dfd);
    }
  }

 private:
  void discard() noexcept {
    if (f_) {
      std::fclose(f_);
      f_ = nullptr;
    }
    if (!committed_) std::remove(tmp_.c_str());
  }

  std::string path_, tmp_, what_;
  std::FILE* f_ = nullptr;
  bool committed_ = false;
};

// The same as one call: `fill(AtomicFile&)` writes the bytes, then the file is committed.
template <class Fill>
  requires std::invocable<Fill&, AtomicFile&>
void write_file_atomic(const std::string& path, std::string what, Fill&& fill) {
  AtomicFile f(path, std::move(what));
  fill(f);
  f.commit();
}

inline void write_file_atomic(const std::string& path, std::string what, std::string_view bytes) {
  write_file_atomic(path, std::move(what), [&](AtomicFile& f) { f.write(bytes); });
}

}  // namespace hybrid
