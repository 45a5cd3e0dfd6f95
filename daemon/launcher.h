// Launcher: how moed starts, watches, signals, describes and finds the output of one attempt of
// a job; Launchers: the ones a moed has, chosen by a job spec's resources.launcher.
// LocalLauncher (mpirun on this machine) and SlurmLauncher (sbatch + srun) implement it.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "moe/v1/control.pb.h"
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
  std::string report_secret;   // this launch's reports must carry it; passed as MOE_REPORT_SECRET
  bool resume = false;
  // device cuda, local launcher: the GPUs the ranks get, as CUDA numbers them for moed (rank r
  // on gpus[r]); empty for cpu jobs.
  std::vector<int> gpus;
};

// <job_dir>/attempt-N: an attempt's folder under either launcher (its ranks' output, its exit
// status, the metric points its reporters could not deliver: common/metrics_spill.h).
inline std::string AttemptDir(const std::string& job_dir, int attempt) {
  return job_dir + "/attempt-" + std::to_string(attempt);
}

// What a rank's stderr file says last, for a failed job's reason (either launcher): its last
// line, or a worker's own failure ("moe-worker rank N: ...") with the lines after it (a list of
// problems) joined by " | ": past 12 lines, the first 11, how many more and the file, and the
// last; at most about 500 characters of lines; "" for an empty or unreadable file.
std::string LastStderrMessage(const std::string& path);

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

// An attempt in the queue of a batch system (Slurm): who it is there, from the handle alone.
struct BatchJob {
  std::string system;  // "Slurm"
  std::string id;      // the batch system's job id
};

// Where an attempt stands in its batch system, as the launcher last saw it.
struct BatchState {
  bool known = false;     // the batch system answered at least once; nothing below is set before
  std::string state;      // its word for it: PENDING, RUNNING, COMPLETED, ...
  std::string reason;     // why a pending job waits (Resources, Priority, ...); "" when none given
  std::string node_list;  // where it runs
  int attempt = 0;        // moed's attempt that runs now: a requeue by the batch system moves it on
  bool pending = false;   // waiting in the queue (before its first run, or after a requeue)
  bool paused = false;    // suspended or stopped after it ran: its processes are frozen
};

// Stores an attempt's handle durably (the scheduler's job record); OK only once it is stored.
using RecordLaunch = std::function<absl::Status(const std::string& handle)>;

class Launcher {
 public:
  virtual ~Launcher() = default;
  virtual std::string name() const = 0;
  // Why no job of this launcher could launch now (a file of moed's it needs cannot be read),
  // checked at submit and resume so such a job is refused there, not failed at its launch.
  virtual absl::Status CheckCanLaunch() const { return absl::OkStatus(); }
  // Starts the attempt; returns an opaque handle that survives a moed restart (it is stored).
  // Nothing of the job runs before record(handle) has returned OK: the launcher prepares the
  // attempt held (a monitor waiting on a pipe; a Slurm job submitted --hold), records it, and
  // only then lets it go. When record fails, or moed dies before it returns, the held attempt
  // goes away without running, so a restarted moed can never find two copies of one attempt.
  // A record error is returned as it is (its message does not start with "launch error").
  virtual absl::StatusOr<std::string> Launch(const LaunchRequest& request,
                                             const RecordLaunch& record) = 0;
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

  // Whether the ranks run on this machine: the job then takes moed's ranks (--max-ranks) or GPUs
  // and waits for them in moed's FIFO queue. Otherwise a batch system queues and places it:
  // moed submits it at once and follows it there (BatchStateOf).
  virtual bool RunsOnThisMachine() const = 0;
  // The GPUs of this machine a handle's ranks got (LaunchRequest::gpus); empty when none.
  virtual std::vector<int> Gpus(const std::string& handle) const = 0;
  // Fills the job view moectl gets (GetJob, ListJobs) with what the handle tells, asking no one:
  // the GPUs of a local job; the Slurm job id and node list of a Slurm job.
  virtual void Describe(const std::string& handle, moe::v1::Job* view) const = 0;

  // Launchers that do not run on this machine: the attempt in its batch system, from the
  // handle alone (empty for the others, and for a handle that never reached the batch system).
  virtual BatchJob BatchJobOf(const std::string& handle) const = 0;
  // The attempt as the batch system last told (it is asked at most so often); known = false
  // for launchers without a batch system.
  virtual BatchState BatchStateOf(const std::string& handle) = 0;
};

// The launchers of one moed, by the kind a job spec asks for (resources.launcher). moed.cc builds
// the concrete ones; the scheduler and the job service see only Launcher.
struct Launchers {
  Launcher* local = nullptr;  // LAUNCHER_LOCAL and LAUNCHER_UNSPECIFIED jobs
  Launcher* slurm = nullptr;  // LAUNCHER_SLURM jobs; when null, they run on local

  Launcher* For(const moe::v1::JobSpec& spec) const {
    return spec.resources().launcher() == moe::v1::LAUNCHER_SLURM && slurm != nullptr ? slurm
                                                                                       : local;
  }
};

}  // namespace moe::daemon
