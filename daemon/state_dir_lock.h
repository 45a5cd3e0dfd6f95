// StateDirLock: one moed per state directory. An exclusive flock on <state-dir>/moed.lock, held
// for moed's life and dropped by the kernel however moed ends (SIGKILL included). A second moed
// on the same directory would launch the queued jobs again and store every log line twice.
#pragma once

#include <memory>
#include <string>
#include <utility>

#include "absl/status/statusor.h"
#include "common/files.h"

namespace moe::daemon {

class StateDirLock {
 public:
  // FAILED_PRECONDITION naming the moed that holds the directory (its pid and --listen) and the
  // fixes, when another process holds it.
  static absl::StatusOr<std::unique_ptr<StateDirLock>> Acquire(const std::string& state_dir,
                                                               const std::string& listen);
  StateDirLock(const StateDirLock&) = delete;
  StateDirLock& operator=(const StateDirLock&) = delete;

 private:
  explicit StateDirLock(DirectoryLock lock) : lock_(std::move(lock)) {}
  DirectoryLock lock_;  // released with this object
};

}  // namespace moe::daemon
