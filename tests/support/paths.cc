#include "tests/support/paths.h"

#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <mutex>
#include <stdexcept>
#include <vector>

namespace moe::testing {

std::string SourceDir() { return MOE_SOURCE_DIR; }
std::string BinDir() { return MOE_BIN_DIR; }

std::string SharedDir() {
  if (const char* env = std::getenv("MOE_SHARED_DIR")) return env;
  return SourceDir() + "/../shared";
}

std::string ShakespearePath() { return SharedDir() + "/data/tinyshakespeare/input.txt"; }

namespace {

// The folders MakeTempDir made, removed when the test program exits (by the process that made
// them: a forked child that exits leaves its parent's alone). MOE_KEEP_TEST_DIRS=1 keeps them.
struct TempDirs {
  std::mutex mu;
  pid_t owner = getpid();
  std::vector<std::string> dirs;
};

TempDirs& Made() {
  static TempDirs* made = [] {
    auto* m = new TempDirs;  // never destroyed: the exit handler below reads it
    std::atexit([] {
      TempDirs& t = Made();
      const char* keep = std::getenv("MOE_KEEP_TEST_DIRS");
      if (getpid() != t.owner || (keep != nullptr && std::string(keep) == "1")) return;
      std::lock_guard<std::mutex> lock(t.mu);
      for (const std::string& d : t.dirs) {
        std::error_code ignored;
        std::filesystem::remove_all(d, ignored);
      }
    });
    return m;
  }();
  return *made;
}

}  // namespace

std::string MakeTempDir(const std::string& prefix) {
  const char* tmp = std::getenv("TMPDIR");
  std::string pattern = std::string(tmp ? tmp : "/tmp") + "/" + prefix + "XXXXXX";
  std::vector<char> buf(pattern.begin(), pattern.end());
  buf.push_back('\0');
  if (mkdtemp(buf.data()) == nullptr) throw std::runtime_error("mkdtemp failed for " + pattern);
  TempDirs& made = Made();
  std::lock_guard<std::mutex> lock(made.mu);
  made.dirs.emplace_back(buf.data());
  return made.dirs.back();
}

}  // namespace moe::testing
