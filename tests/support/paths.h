// Where tests find the source tree, the built binaries and the shared data.
#pragma once

#include <string>

namespace moe::testing {

std::string SourceDir();                // the repository root
std::string BinDir();                   // build/bin with moed, moectl, moe-worker
std::string SharedDir();                // ../shared beside the repository
std::string ShakespearePath();          // ../shared/data/tinyshakespeare/input.txt
// A fresh directory under $TMPDIR, removed with what it holds when the test program exits
// (MOE_KEEP_TEST_DIRS=1 keeps it, to look at after a failure).
std::string MakeTempDir(const std::string& prefix);

}  // namespace moe::testing
