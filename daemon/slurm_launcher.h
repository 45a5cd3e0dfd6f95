// SlurmLauncher: runs a job's ranks as a Slurm batch job. It renders the batch template
// (deploy/slurm/moe-job.sbatch.tmpl) into the job's folder, submits it with `sbatch --parsable`,
// follows it with `scontrol show job` (then sacct, then the exit_status file the script writes),
// cancels it with scancel, and finds it again after a moed restart from the stored handle.
#pragma once

#include <chrono>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "daemon/launcher.h"
#include "moe/v1/control.pb.h"

namespace moe::daemon {

struct SlurmLauncherOptions {
  std::string worker_bin;      // moe-worker, at the same path on every node
  std::string template_path;   // the batch script template
  std::string mpi = "pmix";    // "pmix": srun --mpi=pmix; "mpirun": mpirun inside the allocation
  std::string mpirun = "mpirun";
  std::string report_address;  // where ranks report; "" = LaunchRequest::moed_address
  // Slurm is asked about a job at most this often (each Poll/AnyAlive in between is answered
  // from the last answer), so a busy moed does not load slurmctld.
  std::chrono::milliseconds refresh{2000};
  double command_timeout_s = 60;  // sbatch, scontrol, scancel, sacct
};

// Where a submitted job stands in Slurm, as last seen.
struct SlurmJobInfo {
  std::string slurm_job_id;
  bool known = false;      // Slurm (or the script's exit_status file) answered at least once
  std::string state;       // Slurm's JobState: PENDING, RUNNING, COMPLETED, ...
  std::string reason;      // Slurm's Reason, for PENDING: Resources, Priority, BeginTime, ...
  std::string node_list;
  int attempt = 0;         // moed's attempt the job runs now: base + Slurm's restart count
  // Waiting in Slurm's queue (before the first run or after a requeue), held ones included.
  bool pending() const;
  bool paused() const;     // suspended or stopped (SIGSTOP): its processes are frozen
};

class SlurmLauncher final : public Launcher {
 public:
  // Says in moed's log when sbatch is on PATH but another client tool it needs is not.
  explicit SlurmLauncher(SlurmLauncherOptions options);
  std::string name() const override { return "slurm"; }
  // The batch template must be readable (moed --slurm-template, or the one found from moed's path).
  absl::Status CheckCanLaunch() const override;
  absl::StatusOr<std::string> Launch(const LaunchRequest& request,
                                     const RecordLaunch& record) override;
  ProcessState Poll(const std::string& handle) override;
  // Pending: scancel. Running: SIGTERM to the batch script and every step (the ranks write a
  // checkpoint and exit 143, the script then ends); Slurm ends the job.
  void Terminate(const std::string& handle) override;
  void Kill(const std::string& handle) override;
  // Whether Slurm still holds the job (pending, running, completing: its epilog has not ended).
  bool AnyAlive(const std::string& handle) override;
  bool CapturesOutput() const override { return false; }
  std::vector<OutputFile> OutputFiles(const std::string&) override { return {}; }
  bool RunsOnThisMachine() const override { return false; }
  std::vector<int> Gpus(const std::string&) const override { return {}; }
  // Fills view->slurm_job_id and node_list from a handle and the node-list file the batch
  // script writes, without asking Slurm.
  void Describe(const std::string& handle, moe::v1::Job* view) const override;
  // {"Slurm", Slurm's job id}.
  BatchJob BatchJobOf(const std::string& handle) const override;
  // Info in the launcher's words; Slurm's Reason "None" is no reason.
  BatchState BatchStateOf(const std::string& handle) override;

  // The job as last seen (asks Slurm when that is older than options.refresh).
  SlurmJobInfo Info(const std::string& handle);

  // Whether a stored launch handle is one of ours.
  static bool IsSlurmHandle(const std::string& handle);
  // The batch script for a request: the template with every {{NAME}} replaced.
  absl::StatusOr<std::string> Render(const LaunchRequest& request) const;
  // sbatch's arguments (without the script path) for a request.
  static absl::StatusOr<std::vector<std::string>> SbatchArgs(const LaunchRequest& request);
  // The Slurm client tools moed runs (sbatch, scontrol, scancel) that are not on PATH now.
  static std::vector<std::string> MissingTools();

 private:
  struct Cached {
    SlurmJobInfo info;
    int exit_code = 0;  // from ExitCode=rc:sig, once final
    int term_signal = 0;
    std::chrono::steady_clock::time_point refreshed;
    bool said_scontrol_missing = false;  // moed's log said so once for this job
  };
  // Re-reads the job from Slurm when the cached answer is older than refresh (or force).
  Cached Refresh(const std::string& handle, bool force);

  const SlurmLauncherOptions options_;
  std::mutex mu_;
  std::map<std::string, Cached> cache_ ABSL_GUARDED_BY(mu_);  // by Slurm job id
};

// Slurm's JobState values that end a job (nothing of it runs any more).
bool IsFinalSlurmState(const std::string& state);

}  // namespace moe::daemon
