// Where tests find the source tree, the built binaries and the shared data.
#pragma once

#include <string>

namespace moe::testing {

std::string SourceDir();                // the repository root
std::string BinDir();                   // build/bin with moed, moectl, moe-worker
std::string SharedDir();                // ../shared beside the repository
std::string ShakespearePath();          // ../shared/data/tinyshakespeare/input.txt
std::string MakeTempDir(const std::string& prefix);  // a fresh directory under $TMPDIR

}  // namespace moe::testing
