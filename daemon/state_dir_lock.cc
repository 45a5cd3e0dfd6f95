// StateDirLock: common/files.h's DirectoryLock on <state-dir>/moed.lock; the file names its holder.
#include "daemon/state_dir_lock.h"

#include <unistd.h>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/files.h"

namespace moe::daemon {

absl::StatusOr<std::unique_ptr<StateDirLock>> StateDirLock::Acquire(const std::string& state_dir,
                                                                    const std::string& listen) {
  const std::string path = state_dir + "/moed.lock";
  // Close-on-exec: the lock is moed's alone (the launchers' monitors close every other descriptor).
  absl::StatusOr<DirectoryLock> lock = DirectoryLock::TakeFile(path);
  if (!lock.ok()) {
    const std::string why(lock.status().message());  // "cannot open PATH: ..." or "cannot lock PATH: ..."
    if (lock.status().code() != absl::StatusCode::kFailedPrecondition) {
      return absl::FailedPreconditionError(absl::StrCat(
          "--state-dir: ", why,
          absl::StartsWith(why, "cannot open") ? " (check that --state-dir is writable)" : ""));
    }
    absl::StatusOr<std::string> holder = ReadFile(path);
    const std::string who(holder.ok() ? absl::StripAsciiWhitespace(*holder) : "");
    return absl::FailedPreconditionError(absl::StrCat(
        "--state-dir: ", state_dir, " is in use by another moed",
        who.empty() ? "" : absl::StrCat(" (", who, ")"),
        "; two moeds on one state directory would run its jobs twice. Stop that moed first, "
        "or give this one its own --state-dir"));
  }
  // Who holds it, for the message above (without it the message names no pid).
  const std::string who = absl::StrCat("pid ", getpid(), ", --listen ", listen, "\n");
  if (ftruncate(lock->fd(), 0) == 0) (void)!pwrite(lock->fd(), who.data(), who.size(), 0);
  return std::unique_ptr<StateDirLock>(new StateDirLock(*std::move(lock)));
}

}  // namespace moe::daemon
