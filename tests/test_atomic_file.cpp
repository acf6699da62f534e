// core/atomic_file.hpp: a write replaces the target whole or not at all, failures name the
// path and the step, and temporaries of dead writers are removed while live ones are kept.
#include <doctest/doctest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <csignal>
#include <filesystem>
#include <fstream>
#include <hybrid/core/atomic_file.hpp>
#include <string>

#include "test_util.hpp"

using namespace hybrid;
using namespace hybrid::test_util;
namespace fs = std::filesystem;

// This file's own namespace: the tests compile in batches (tests/CMakeLists.txt).
namespace hybrid_test_atomic_file {

namespace {
// A pid no process can have: one above the kernel's limit.
long long dead_pid() {
  long long pid_max = 4194304;  // the largest limit Linux allows
  std::ifstream("/proc/sys/kernel/pid_max") >> pid_max;
  return pid_max + 1;
}
std::size_t entries(const fs::path& dir) {
  return std::size_t(std::distance(fs::directory_iterator(dir), fs::directory_iterator{}));
}
}  // namespace

TEST_CASE("atomic_file: writes, replaces, and leaves no temporary behind") {
  TempDir tmp;
  const std::string p = tmp / "out.bin";
  write_file_atomic(p, "test: '" + p + "'", "first");
  CHECK(slurp(p) == "first");
  write_file_atomic(p, "test: '" + p + "'", [](AtomicFile& f) {
    f.write("sec", 3);
    f.write(std::string_view("ond"));
  });
  CHECK(slurp(p) == "second");
  CHECK(entries(tmp.dir) == 1);
}

TEST_CASE("atomic_file: temporary names parse to their writer's pid") {
  CHECK(atomic_temp_pid("m.safetensors.tmp.123", "m.safetensors") == 123);
  CHECK(!atomic_temp_pid("m.safetensors.tmp.12a", "m.safetensors"));
  CHECK(!atomic_temp_pid("m.safetensors.tmp.", "m.safetensors"));
  CHECK(!atomic_temp_pid("n.safetensors.tmp.123", "m.safetensors"));
  CHECK(!atomic_temp_pid("m.safetensors", "m.safetensors"));
  CHECK(atomic_temp_pid("m.tmp.99999999999999999999", "m") == -1);  // too large: no writer
  CHECK(atomic_temp_pid("m.tmp.0", "m") == -1);
  CHECK(is_atomic_temp("step_00000003.safetensors.tmp.42"));
  CHECK(!is_atomic_temp("step_00000003.safetensors"));
  CHECK(!is_atomic_temp(".tmp.42"));
  CHECK(writer_alive(::getpid()));
  CHECK(!writer_alive(dead_pid()));
}

TEST_CASE("atomic_file: a dead writer's temporary is removed, a live writer's is kept") {
  TempDir tmp;
  const std::string p = tmp / "shard.bin";
  const std::string dead = p + ".tmp." + std::to_string(dead_pid());
  const std::string other_target = tmp / "other.bin.tmp." + std::to_string(dead_pid());
  const std::string not_a_pid = p + ".tmp.x1";
  // This process is alive: its temporary of another target must survive.
  const std::string mine_elsewhere = tmp / "other.bin.tmp." + std::to_string(::getpid());
  for (const auto& f : {dead, other_target, not_a_pid, mine_elsewhere}) spit(f, "partial");

  // A child that waits on a pipe is a live writer of `p`.
  int fds[2];
  REQUIRE(::pipe(fds) == 0);
  const pid_t child = ::fork();
  REQUIRE(child >= 0);
  if (child == 0) {
    char c;
    ::close(fds[1]);
    (void)!::read(fds[0], &c, 1);
    ::_exit(0);
  }
  ::close(fds[0]);
  const std::string live = p + ".tmp." + std::to_string(child);
  spit(live, "partial");

  write_file_atomic(p, "test", "data");
  CHECK(slurp(p) == "data");
  CHECK(!fs::exists(dead));
  CHECK(fs::exists(live));
  CHECK(fs::exists(other_target));  // another target's: not this writer's business
  CHECK(fs::exists(not_a_pid));
  CHECK(fs::exists(mine_elsewhere));

  // Once the child has exited (and been reaped) its temporary is stale.
  ::close(fds[1]);
  int status = 0;
  REQUIRE(::waitpid(child, &status, 0) == child);
  write_file_atomic(p, "test", "data2");
  CHECK(!fs::exists(live));
  CHECK(slurp(p) == "data2");
}

TEST_CASE("atomic_file: a failed write leaves the old target intact and no temporary") {
  TempDir tmp;
  const std::string p = tmp / "model.safetensors";
  spit(p, "old contents");

  // The filler fails half-way (as a short write would).
  CHECK_THROWS_AS(write_file_atomic(p, "test", [](AtomicFile& f) {
                    f.write("new", 3);
                    fail("filler gave up");
                  }),
                  Error);
  CHECK(slurp(p) == "old contents");
  CHECK(entries(tmp.dir) == 1);

  // A step failing inside the writer names the target, the step and the temporary.
  {
    AtomicFile f(p, "test: '" + p + "'");
    f.write("new", 3);
    errno = ENOSPC;
    check_error([&] { f.abort("writing"); }, {"model.safetensors", "writing", ".tmp.", "No space"});
  }
  CHECK(slurp(p) == "old contents");
  CHECK(entries(tmp.dir) == 1);

  // Abandoned without commit(): nothing changes.
  { AtomicFile f(p, "test"); f.write("new", 3); }
  CHECK(slurp(p) == "old contents");
  CHECK(entries(tmp.dir) == 1);

  // The temporary cannot be created: the error names the path and the step.
  const std::string nowhere = tmp / "no/such/dir/x.bin";
  check_error([&] { write_file_atomic(nowhere, "test: '" + nowhere + "'", "x"); },
              {"x.bin", "cannot create temporary file", "No such file"});

  // The rename fails (the target is a non-empty directory): the temporary goes too.
  const std::string d = tmp / "dir";
  fs::create_directories(fs::path(d) / "inside");
  check_error([&] { write_file_atomic(d, "test: '" + d + "'", "x"); },
              {"dir", "renaming over the target"});
  CHECK(fs::is_directory(fs::path(d) / "inside"));
  CHECK(entries(tmp.dir) == 2);
}

}  // namespace hybrid_test_atomic_file
