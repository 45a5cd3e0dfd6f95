// Small file helpers shared by the programs: whole-file reads and atomic writes
// (temp file + fsync + rename), so a crash never leaves a half-written file under the real name.
#pragma once

#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace moe {

absl::StatusOr<std::string> ReadFile(const std::string& path);
// Writes path.tmp.<pid>, fsyncs it, renames it over path and fsyncs the directory.
absl::Status WriteFileAtomic(const std::string& path, std::string_view contents);
// fsync a directory, so a rename inside it survives a crash.
absl::Status SyncDir(const std::string& dir);
// mkdir -p.
absl::Status MakeDirs(const std::string& path);

}  // namespace moe
