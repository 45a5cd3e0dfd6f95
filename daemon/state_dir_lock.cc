// StateDirLock: flock(LOCK_EX | LOCK_NB) on <state-dir>/moed.lock; the file names its holder.
#include "daemon/state_dir_lock.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "common/files.h"

namespace moe::daemon {

absl::StatusOr<std::unique_ptr<StateDirLock>> StateDirLock::Acquire(const std::string& state_dir,
                                                                    const std::string& listen) {
  const std::string path = state_dir + "/moed.lock";
  // O_CLOEXEC: the lock is moed's alone (the launchers' monitors close every other descriptor).
  const int fd = open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (fd < 0) {
    return absl::FailedPreconditionError(absl::StrCat("--state-dir: cannot open ", path, ": ",
                                                      std::strerror(errno),
                                                      " (check that --state-dir is writable)"));
  }
  if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
    const int err = errno;
    close(fd);
    if (err != EWOULDBLOCK) {
      return absl::FailedPreconditionError(
          absl::StrCat("--state-dir: cannot lock ", path, ": ", std::strerror(err)));
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
  if (ftruncate(fd, 0) == 0) (void)!pwrite(fd, who.data(), who.size(), 0);
  return std::unique_ptr<StateDirLock>(new StateDirLock(fd));
}

StateDirLock::~StateDirLock() { close(fd_); }

}  // namespace moe::daemon
