#include "tests/support/paths.h"

#include <cstdlib>
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

std::string MakeTempDir(const std::string& prefix) {
  const char* tmp = std::getenv("TMPDIR");
  std::string pattern = std::string(tmp ? tmp : "/tmp") + "/" + prefix + "XXXXXX";
  std::vector<char> buf(pattern.begin(), pattern.end());
  buf.push_back('\0');
  if (mkdtemp(buf.data()) == nullptr) throw std::runtime_error("mkdtemp failed for " + pattern);
  return std::string(buf.data());
}

}  // namespace moe::testing
