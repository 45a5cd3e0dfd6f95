// Scheduler: the queue and the job state machine. Jobs wait QUEUED (FIFO) until their ranks fit
// (device cpu: in --max-ranks; device cuda: one free GPU per rank), then their Launcher starts
// them (batch jobs go to their batch system at once); one thread polls the running attempts,
// ingests their output into the store, watches heartbeats, drives cancels and restarts, and on
// start finds again the jobs a previous moed left running.
#pragma once

#include <chrono>
#include <condition_variable>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "daemon/job_store.h"
#include "daemon/launcher.h"
#include "moe/v1/control.pb.h"

namespace moe::daemon {

struct SchedulerOptions {
  std::string state_dir;
  int max_ranks = 1;  // ranks of local device: cpu jobs at once
  int gpus = 0;       // GPUs for local device: cuda jobs (one rank per GPU), indices 0..gpus-1
  std::string report_address;  // the address workers are told to report to
  std::string token;           // passed to workers (MOE_TOKEN) when auth is on
  std::chrono::milliseconds heartbeat_timeout{60000};
  std::chrono::milliseconds cancel_grace{30000};
  std::chrono::milliseconds poll_interval{200};
};

class Scheduler {
 public:
  // launchers.For(spec) runs a job.
  Scheduler(SchedulerOptions options, JobStore* store, Launchers launchers);
  ~Scheduler();

  // Reads the store: queues QUEUED jobs again and reattaches to (or relaunches) the jobs a
  // previous moed left STARTING, RUNNING or RESTARTING. Call once, before Start.
  absl::Status Recover();
  void Start();
  void Stop();

  // spec must be valid (the service validated it).
  absl::StatusOr<moe::v1::Job> Submit(const moe::v1::JobSpec& spec, const std::string& spec_yaml);
  // NotFound, FailedPrecondition for an ended job; otherwise starts the cancel and returns the
  // job as it is now (CANCELLED at once when it never started).
  absl::StatusOr<moe::v1::Job> Cancel(const std::string& id);

  // From the report service: a worker of (job, attempt) says hello / sends anything.
  // FailedPrecondition when the job is not running that attempt (a stale worker).
  absl::Status OnWorkerHello(const std::string& job_id, int attempt, int rank);
  void OnWorkerReport(const std::string& job_id, int attempt, int rank);
  // Whether moed reads this job's log lines from the ranks' output files itself.
  bool CapturesOutput(const std::string& job_id);

  int max_ranks() const { return options_.max_ranks; }

 private:
  using Clock = std::chrono::steady_clock;
  struct Active {
    JobRecord rec;
    bool launched = false;
    std::map<std::string, int64_t> offsets;  // output file -> bytes ingested
    std::map<int, Clock::time_point> last_heard;
    Clock::time_point attempt_started;
    std::string pending_failure;  // set when moed kills the attempt (lost heartbeat)
    Clock::time_point cancel_deadline;
    Clock::time_point last_term;
    bool killed = false;
    std::vector<int> gpus;  // local cuda jobs: the GPUs it holds, kept across its attempts
  };

  void Loop();
  void Tick() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Admit() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void LaunchAttempt(Active& a) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Returns true when the job left the active set.
  bool Watch(Active& a) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Ingest(Active& a, bool final) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The attempt ended with a failure: restart it if max_restarts allows, else FAILED.
  void Failed(Active& a, const std::string& reason) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void SetState(JobRecord& rec, moe::v1::JobState state, const std::string& reason)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Ranks of the local cpu jobs, and GPUs of the local cuda jobs, that hold them now.
  int UsedRanks() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  int UsedGpus() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The lowest n GPUs no active job holds.
  std::vector<int> FreeGpus(int n) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The launcher a job asked for (resources.launcher).
  Launcher* LauncherFor(const JobRecord& rec) const;
  // Its launcher hands it to a batch system (Slurm), which queues and places it, not moed.
  bool InBatchSystem(const JobRecord& rec) const;
  // A device: cuda job run on this machine: it takes one GPU per rank here.
  bool UsesGpus(const JobRecord& rec) const;
  // Batch jobs: pending in the batch system shows as QUEUED with its reason; a requeue there
  // moves the attempt on.
  void WatchBatch(Active& a, Clock::time_point now) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void AdoptAttempt(Active& a, int attempt) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const SchedulerOptions options_;
  JobStore* const store_;
  const Launchers launchers_;

  std::mutex mu_;
  std::condition_variable wake_;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  std::deque<std::string> queue_ ABSL_GUARDED_BY(mu_);   // QUEUED job ids, oldest first
  std::map<std::string, Active> active_ ABSL_GUARDED_BY(mu_);  // holding ranks
  std::thread thread_;
};

// Replaces bytes that are not valid UTF-8 with '?', so every line fits a proto string.
std::string SanitizeUtf8(std::string_view text);

}  // namespace moe::daemon
