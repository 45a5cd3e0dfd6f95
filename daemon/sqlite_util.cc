// The advice a user gets with an SQLite error from the job store.
#include "daemon/sqlite_util.h"

#include "absl/strings/str_cat.h"

namespace moe::daemon {

std::string StoreFix(int code, const std::string& path) {
  switch (code & 0xff) {
    case SQLITE_FULL:
      return " (the state directory's file system is full)";
    case SQLITE_CORRUPT:
    case SQLITE_NOTADB:
      return absl::StrCat(" (", path,
                          " is damaged or is not moed's database: with moed stopped, move it "
                          "aside to start with no jobs, or rebuild it with `sqlite3 ", path,
                          " .recover | sqlite3 ", path,
                          ".recovered` and move that into its place)");
    case SQLITE_READONLY:
    case SQLITE_CANTOPEN:
    case SQLITE_PERM:
      return " (check that --state-dir is writable)";
    default:
      return "";
  }
}

}  // namespace moe::daemon
