// LocalLauncher: runs `mpirun -np N moe-worker ...` on this machine in a session of its own,
// under a small monitor process that records mpirun's exit status in a file. The session, the
// status file and the per-rank output files let a restarted moed find the attempt again.
#pragma once

#include <string>
#include <vector>

#include "daemon/launcher.h"
#include "moe/v1/control.pb.h"

namespace moe::daemon {

struct LocalLauncherOptions {
  std::string mpirun = "mpirun";  // a name on PATH or a path
  std::string worker_bin;         // the moe-worker executable
};

// The program a launch runs for `name` (LocalLauncherOptions::mpirun): name itself when it has a
// '/', else the first PATH entry whose name/ is an executable regular file, as execvp finds it;
// "" when none is.
std::string ResolveOnPath(const std::string& name);

// The monitor's exit_status file as a wait status; DataLoss, naming the file and what it holds,
// when it cannot be read, is empty or is not a number (a full disk): never a silent 0.
absl::Status ParseExitStatus(const absl::StatusOr<std::string>& text, const std::string& path,
                             int* status);

class LocalLauncher final : public Launcher {
 public:
  explicit LocalLauncher(LocalLauncherOptions options) : options_(std::move(options)) {}
  std::string name() const override { return "local"; }
  absl::StatusOr<std::string> Launch(const LaunchRequest& request,
                                     const RecordLaunch& record) override;
  ProcessState Poll(const std::string& handle) override;
  void Terminate(const std::string& handle) override;
  void Kill(const std::string& handle) override;
  bool AnyAlive(const std::string& handle) override;
  bool CapturesOutput() const override { return true; }
  std::vector<OutputFile> OutputFiles(const std::string& handle) override;
  bool RunsOnThisMachine() const override { return true; }
  std::vector<int> Gpus(const std::string& handle) const override;
  // view->gpus: the handle's GPUs as CUDA_VISIBLE_DEVICES names them.
  void Describe(const std::string& handle, moe::v1::Job* view) const override;
  BatchJob BatchJobOf(const std::string&) const override { return {}; }
  BatchState BatchStateOf(const std::string&) override { return {}; }

  // Every live (non-zombie) process whose session id is sid, from /proc.
  static std::vector<int> SessionMembers(int sid);

 private:
  LocalLauncherOptions options_;
};

}  // namespace moe::daemon
