// Launcher: how moed starts, watches, signals and finds the output of one attempt of a job.
// LocalLauncher (mpirun on this machine) and SlurmLauncher (sbatch + srun) implement it.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "moe/v1/job.pb.h"

namespace moe::daemon {

struct LaunchRequest {
  std::string job_id;
  int attempt = 0;
  moe::v1::JobSpec spec;
  std::string job_dir;         // <state-dir>/jobs/<id>
  std::string spec_path;       // <job_dir>/spec.json
  std::string checkpoint_dir;
  std::string moed_address;    // where workers report
  std::string token;           // "" when auth is off; passed as MOE_TOKEN
  bool resume = false;
  // device cuda, local launcher: the GPUs the ranks get, as CUDA numbers them for moed (rank r
  // on gpus[r]); empty for cpu jobs.
  std::vector<int> gpus;
};

// What the launcher reports about a launched attempt.
struct ProcessState {
  enum Kind { kRunning, kExited, kLost };
  Kind kind = kRunning;
  int exit_code = 0;    // kExited: the launcher process's exit code (or 128 + signal)
  int term_signal = 0;  // kExited by a signal
  std::string reason;   // kExited with failure or kLost: a human reason, with the rank if known
};

// One file of a rank's output that moed ingests into its log store.
struct OutputFile {
  int rank = 0;
  std::string path;
};

class Launcher {
 public:
  virtual ~Launcher() = default;
  virtual std::string name() const = 0;
  // Starts the attempt; returns an opaque handle that survives a moed restart (it is stored).
  virtual absl::StatusOr<std::string> Launch(const LaunchRequest& request) = 0;
  virtual ProcessState Poll(const std::string& handle) = 0;
  // Asks the ranks to stop (they checkpoint on SIGTERM), or kills every process of the attempt.
  virtual void Terminate(const std::string& handle) = 0;
  virtual void Kill(const std::string& handle) = 0;
  // Whether any process of the attempt is left.
  virtual bool AnyAlive(const std::string& handle) = 0;
  // Files holding the ranks' output, when the launcher captures it (empty otherwise, and then
  // the log lines come over the workers' report streams).
  virtual bool CapturesOutput() const = 0;
  virtual std::vector<OutputFile> OutputFiles(const std::string& handle) = 0;
};

}  // namespace moe::daemon
