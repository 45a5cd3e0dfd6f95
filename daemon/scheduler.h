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
#include "common/path_policy.h"
#include "daemon/job_store.h"
#include "daemon/launcher.h"
#include "moe/v1/control.pb.h"

namespace moe::daemon {

struct SchedulerOptions {
  std::string state_dir;
  int max_ranks = 1;  // ranks of local device: cpu jobs at once
  int gpus = 0;       // GPUs for local device: cuda jobs (one rank per GPU), indices 0..gpus-1
  // Bytes of one GPU; a cuda job whose memory estimate is more is refused at submit
  // (FAILED_PRECONDITION) unless resources.allow_oversubscribe_memory. 0 = unknown, no check.
  int64_t gpu_memory_bytes = 0;
  std::string report_address;  // the address workers are told to report to
  std::string token;           // passed to workers (MOE_TOKEN) when auth is on
  std::chrono::milliseconds heartbeat_timeout{60000};
  std::chrono::milliseconds cancel_grace{30000};
  std::chrono::milliseconds poll_interval{200};
  // Submissions are refused (RESOURCE_EXHAUSTED) while state_dir's file system has less free.
  int64_t min_free_bytes = 0;
  // The directories jobs may read data from and write checkpoints to (moed --data-root,
  // --checkpoint-root); checked at submit, and again by the workers.
  PathPolicy paths;
  // How often the store's write-ahead log is folded back and truncated.
  std::chrono::milliseconds wal_checkpoint_interval{30000};
};

// Free bytes for an unprivileged writer on the file system holding path; -1 when unknown.
int64_t FreeBytes(const std::string& path);

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

  // spec must be valid (the service validated it); request_id (checked) is stored with the job.
  absl::StatusOr<moe::v1::Job> Submit(const moe::v1::JobSpec& spec, const std::string& spec_yaml,
                                      const std::string& request_id = {});
  // NotFound, FailedPrecondition for an ended job; otherwise starts the cancel and returns the
  // job as it is now (CANCELLED at once when it never started).
  absl::StatusOr<moe::v1::Job> Cancel(const std::string& id);
  // moectl resume: a finished job queued again as its next attempt, which resumes from the
  // newest complete checkpoint; steps > 0 replaces train.steps. See ResumeJobRequest.
  absl::StatusOr<moe::v1::Job> Resume(const std::string& id, int steps);

  // From the report service: a worker of (job, attempt) says hello / sends anything.
  // FailedPrecondition when the job is not running that attempt (a stale worker);
  // PermissionDenied when the report does not carry the launch's secret, or names a rank the
  // job does not have (world_size must be the job's ranks).
  absl::Status OnWorkerHello(const std::string& job_id, int attempt, int rank, int world_size,
                             const std::string& secret);
  // The same checks without the hello's effects (LastLogSeq).
  absl::Status CheckReporter(const std::string& job_id, int attempt, int rank, int world_size,
                             const std::string& secret);
  void OnWorkerReport(const std::string& job_id, int attempt, int rank);
  // Whether moed reads this job's log lines from the ranks' output files itself.
  bool CapturesOutput(const std::string& job_id);
  // An answer about a job (Get, List), as the store has it, told what moed holds when a write
  // failed (a full disk): its reason adds the state moed could not store yet, or why the job's
  // end waits (its log lines or metric points not stored). The state stays the stored one.
  void ShowUnstored(moe::v1::Job* job);

  // Holds submissions off while the lock lives, for delete and prune: a job being submitted that
  // starts from checkpoints they would remove is either stored before (and then seen, so they
  // stay) or checked after (and refused: its init_from is gone). Taken before the store's lock.
  std::unique_lock<std::mutex> HoldSubmits() { return std::unique_lock<std::mutex>(submit_mu_); }

  int max_ranks() const { return options_.max_ranks; }
  // OK, or RESOURCE_EXHAUSTED saying how much the state directory has free against the floor
  // (--min-free-space): what Submit refuses with and what /healthz reports.
  absl::Status CheckFreeSpace() const;

 private:
  using Clock = std::chrono::steady_clock;
  struct Active {
    JobRecord rec;
    bool launched = false;
    std::map<std::string, int64_t> offsets;  // output file -> bytes ingested
    std::map<int, Clock::time_point> last_heard;
    Clock::time_point attempt_started;
    std::string pending_failure;  // set when moed kills the attempt (lost heartbeat)
    // Why the store last refused its log lines: said once in moed's log, not every tick.
    std::string ingest_error;
    // The same for the metric points of its spill files.
    std::string spill_error;
    Clock::time_point cancel_deadline;
    Clock::time_point last_term;
    bool killed = false;
    bool batch_paused = false;  // the batch system suspended it: no heartbeat is due
    std::vector<int> gpus;  // local cuda jobs: the GPUs it holds, kept across its attempts
    // rec differs from the store (a write failed): retried every tick. A job whose final state
    // is not stored yet stays here (finished), so the store never shows it ended before it did
    // and never shows a state it did not reach.
    bool unstored = false;
    std::string store_error;  // why, while unstored
    bool finished = false;
    Clock::time_point launch_not_before;  // after a launch that could not be recorded
  };

  void Loop();
  void Tick() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // What ShowUnstored says of a: "" when the store holds what moed holds.
  static std::string UnstoredNote(const Active& a);
  void Admit() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void LaunchAttempt(Active& a) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Returns true when the job left the active set.
  bool Watch(Active& a) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // False when the store refused lines: then the attempt must not end yet (its lines are all
  // stored before its final state). final: the attempt is over; its metric spills are stored too.
  bool Ingest(Active& a, bool final) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Stores the metric points the ranks of attempts first..last left in their folders when they
  // could not report them (common/metrics_spill.h), and removes each file once stored; a damaged
  // file gives what parses and one line in moed's log. False when the store refused them: the
  // files stay for the next try.
  bool IngestMetricsSpills(Active& a, int first, int last) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The attempt ended with a failure: restart it if max_restarts allows, else FAILED.
  void Failed(Active& a, const std::string& reason) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Sets the state in rec and stores it; false (logged) when the store refused the write.
  bool SetState(JobRecord& rec, moe::v1::JobState state, const std::string& reason)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The same for an active job: a refused write is retried by Tick until it is stored.
  void Store(Active& a, moe::v1::JobState state, const std::string& reason)
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
  // The active job a report names, after the attempt, secret and rank checks.
  absl::StatusOr<Active*> ReporterJob(const std::string& job_id, int attempt, int rank,
                                      int world_size, const std::string& secret)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const SchedulerOptions options_;
  JobStore* const store_;
  const Launchers launchers_;

  std::mutex mu_;
  // Submit's checks of a checkpoint.dir against unfinished jobs and its store of the new job, one
  // submission at a time (two at once would each find the directory free).
  std::mutex submit_mu_;
  std::condition_variable wake_;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  std::deque<std::string> queue_ ABSL_GUARDED_BY(mu_);   // QUEUED job ids, oldest first
  std::map<std::string, Active> active_ ABSL_GUARDED_BY(mu_);  // holding ranks
  Clock::time_point last_wal_checkpoint_ ABSL_GUARDED_BY(mu_);
  std::thread thread_;
  // ShowUnstored's notes, job id -> note, published by every tick under their own lock.
  std::mutex notes_mu_;
  std::map<std::string, std::string> notes_ ABSL_GUARDED_BY(notes_mu_);
};

// Replaces bytes that are not valid UTF-8 with '?', so every line fits a proto string.
std::string SanitizeUtf8(std::string_view text);

}  // namespace moe::daemon
