// JobStore: moed's durable state in one SQLite database (WAL mode): jobs, their state changes,
// every log line (per-rank contiguous seq), every metric point, and the byte offsets of the rank
// output files already ingested, so a restarted moed neither loses nor repeats a line.
#pragma once

#include <sqlite3.h>

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "moe/v1/control.pb.h"

namespace moe::daemon {

// A job as stored: the public view plus what only moed needs to run it.
struct JobRecord {
  moe::v1::Job job;
  int attempt = 0;              // 0 for the first launch, +1 per relaunch
  std::string launch_handle;    // launcher-specific, e.g. "pid=12 start=345 dir=/x"
  bool cancel_requested = false;
  std::string checkpoint_dir;
  // The secret of the current launch: its workers' reports must carry it (moed gives it to them
  // in MOE_REPORT_SECRET). "" for attempts launched before moed had one.
  std::string report_secret;
};

struct StoredLogLine {
  int64_t rowid = 0;  // store order, a cursor for followers
  moe::v1::LogLine line;
};

struct StoredMetric {
  int64_t rowid = 0;
  int attempt = 0;
  moe::v1::MetricPoint point;
};

struct JobEvent {
  int64_t unix_ms = 0;
  moe::v1::JobState state = moe::v1::JOB_STATE_UNSPECIFIED;
  std::string reason;
};

// What moed has already stored from one worker process (rank, attempt): reporters resend only
// what is newer.
struct ReportCursor {
  int64_t last_src_seq = 0;
  int64_t last_metric_step = -1;
};

int64_t NowUnixMs();
bool IsFinal(moe::v1::JobState state);
std::string StateName(moe::v1::JobState state);  // "RUNNING"

class JobStore {
 public:
  // Opens (creating if needed) the database at path.
  static absl::StatusOr<std::unique_ptr<JobStore>> Open(const std::string& path);
  ~JobStore();
  JobStore(const JobStore&) = delete;
  JobStore& operator=(const JobStore&) = delete;

  // Stores a new QUEUED job with the next id (j-000001, ...). job_root is <state-dir>/jobs. A
  // request_id (SubmitJobRequest's) is stored with the job and the spec, in the same transaction.
  absl::StatusOr<JobRecord> CreateJob(const moe::v1::JobSpec& spec, const std::string& spec_yaml,
                                      const std::string& job_root, const std::string& reason,
                                      const std::string& request_id = {});
  // The job an earlier submit with this request_id created (nullopt: none did, or its job was
  // deleted); AlreadyExists when that submit's spec differs from spec (job_store_submits.cc).
  absl::StatusOr<std::optional<JobRecord>> FindSubmit(const std::string& request_id,
                                                      const moe::v1::JobSpec& spec);
  absl::StatusOr<JobRecord> GetJob(const std::string& id);  // NotFound for an unknown id
  absl::StatusOr<std::vector<JobRecord>> ListJobs();
  // Writes the mutable columns; records an event when the state or reason changed.
  absl::Status UpdateJob(const JobRecord& record);
  // Replaces a job's spec (moectl resume --steps); the caller then updates its state.
  absl::Status UpdateJobSpec(const std::string& id, const moe::v1::JobSpec& spec);
  absl::StatusOr<std::vector<JobEvent>> Events(const std::string& id);
  // Removes a finished job's rows (job, events, logs, metrics, cursors) in one transaction and
  // returns what it was; its id is never reused. FailedPrecondition for a job not final.
  absl::StatusOr<JobRecord> DeleteJob(const std::string& id);
  // What the deletion of job id left on disk (its kept checkpoints, one path a line): said
  // afterwards by every "was deleted" answer about it. Best effort: an error changes nothing.
  void NoteDeletedKept(const std::string& id, const std::string& kept);

  // Appends lines captured from a rank's output file and moves that file's offset, atomically.
  absl::Status AppendCapturedLines(const std::string& job_id, int rank,
                                   const std::vector<std::string>& lines, int64_t unix_ms,
                                   const std::string& path, int64_t new_offset);
  absl::StatusOr<std::map<std::string, int64_t>> CaptureOffsets(const std::string& job_id);
  // Appends lines a reporter sent (src_seq = the reporter's own numbering); lines at or below
  // the cursor of (job, rank, attempt) are duplicates of a resend and are skipped.
  absl::Status AppendReportedLines(const std::string& job_id, int attempt,
                                   const std::vector<moe::v1::LogLine>& lines);
  absl::StatusOr<ReportCursor> GetReportCursor(const std::string& job_id, int rank, int attempt);

  // Lines with rowid > after_rowid, in store order, at most limit.
  absl::StatusOr<std::vector<StoredLogLine>> ReadLogs(const std::string& job_id,
                                                      int64_t after_rowid, int limit);
  // Highest seq per rank.
  absl::StatusOr<std::map<int, int64_t>> LastSeqs(const std::string& job_id);

  // Stores a point (a resend of a stored (attempt, step) is ignored) and updates the job's
  // latest point and best val loss.
  absl::Status AddMetric(const std::string& job_id, int attempt, const moe::v1::MetricPoint& p);
  // The same for points of one attempt in one transaction (a spill file's); returns how many
  // were new. The latest point moves only to one newer than every stored point (a later attempt,
  // or a later step of the same one), so points stored late never move it back.
  absl::StatusOr<int> AddMetrics(const std::string& job_id, int attempt,
                                 const std::vector<moe::v1::MetricPoint>& points);
  absl::StatusOr<std::vector<StoredMetric>> ReadMetrics(const std::string& job_id,
                                                        int64_t after_rowid, int limit);

  // Folds the write-ahead log into the database and truncates it (PRAGMA wal_checkpoint
  // (TRUNCATE)), so the WAL stays bounded however long moed runs; the scheduler calls it
  // periodically. A reader in the way makes it a partial checkpoint, not an error.
  absl::Status CheckpointWal();

  // Fault injection for tests: called before every write with its name ("create_job",
  // "update_job", "append_lines", "add_metric") and, for update_job, the record; a non-OK
  // status is returned as that write's error and nothing is written. Also called once an
  // update_job is committed ("update_job_committed"; its answer is ignored), so a test can stop
  // moed right after a record.
  using WriteFault = std::function<absl::Status(std::string_view op, const JobRecord* record)>;
  void SetWriteFaultForTest(WriteFault fault);

  // Change notification for followers: every write bumps the version.
  uint64_t Version();
  // Waits until the version differs from seen or the deadline passes; returns the version.
  uint64_t WaitForChange(uint64_t seen, std::chrono::steady_clock::time_point deadline);
  // Called after every change (on the writer's thread, no store lock held): the stream
  // reactors' FollowHub wakes its parked followers with it. Set once, before serving.
  void SetChangeListener(std::function<void()> listener);

 private:
  JobStore(sqlite3* db, std::string path) : path_(std::move(path)), db_(db) {}
  absl::Status Exec(const char* sql) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Adds the columns a store from an older moed lacks (job_store_upgrade.cc).
  absl::Status Upgrade() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status Error(const char* what) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // COMMIT; when it fails (a full disk), ROLLBACK, so the connection never stays inside a
  // transaction that would make every later BEGIN fail.
  absl::Status Commit() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status Fault(std::string_view op, const JobRecord* record)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::StatusOr<JobRecord> GetJobLocked(const std::string& id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status InsertLinesLocked(const std::string& job_id, int rank,
                                 const std::vector<std::pair<int64_t, std::string>>& lines)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Bump();

  const std::string path_;  // the database file, for messages
  std::mutex mu_;
  sqlite3* db_ ABSL_GUARDED_BY(mu_);
  WriteFault fault_ ABSL_GUARDED_BY(mu_);

  std::mutex version_mu_;
  std::condition_variable version_cv_;
  uint64_t version_ ABSL_GUARDED_BY(version_mu_) = 0;
  std::function<void()> listener_ ABSL_GUARDED_BY(version_mu_);
};

}  // namespace moe::daemon
