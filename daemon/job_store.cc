// JobStore: SQLite schema and queries. One connection behind a mutex; every multi-row change is
// one transaction, so a crash leaves either all of it or none.
#include "daemon/job_store.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "daemon/sqlite_util.h"

namespace moe::daemon {
namespace {

using moe::v1::JobState;

constexpr char kSchema[] = R"sql(
CREATE TABLE IF NOT EXISTS jobs(
  num INTEGER PRIMARY KEY,
  id TEXT UNIQUE NOT NULL,
  spec BLOB NOT NULL,
  spec_yaml TEXT NOT NULL DEFAULT '',
  state INTEGER NOT NULL,
  reason TEXT NOT NULL DEFAULT '',
  created_ms INTEGER NOT NULL,
  started_ms INTEGER NOT NULL DEFAULT 0,
  ended_ms INTEGER NOT NULL DEFAULT 0,
  restarts INTEGER NOT NULL DEFAULT 0,
  attempt INTEGER NOT NULL DEFAULT 0,
  latest BLOB,
  best_val_loss REAL NOT NULL DEFAULT 0,
  job_dir TEXT NOT NULL,
  checkpoint_dir TEXT NOT NULL,
  launch_handle TEXT NOT NULL DEFAULT '',
  cancel_requested INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS events(
  id INTEGER PRIMARY KEY, job_id TEXT NOT NULL, unix_ms INTEGER NOT NULL,
  state INTEGER NOT NULL, reason TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS events_job ON events(job_id);
CREATE TABLE IF NOT EXISTS logs(
  job_id TEXT NOT NULL, rank INTEGER NOT NULL, seq INTEGER NOT NULL,
  unix_ms INTEGER NOT NULL, text TEXT NOT NULL, PRIMARY KEY(job_id, rank, seq));
CREATE INDEX IF NOT EXISTS logs_job ON logs(job_id);
CREATE TABLE IF NOT EXISTS metrics(
  id INTEGER PRIMARY KEY, job_id TEXT NOT NULL, attempt INTEGER NOT NULL, step INTEGER NOT NULL,
  point BLOB NOT NULL, UNIQUE(job_id, attempt, step));
CREATE TABLE IF NOT EXISTS capture_offsets(
  job_id TEXT NOT NULL, path TEXT NOT NULL, offset INTEGER NOT NULL, PRIMARY KEY(job_id, path));
CREATE TABLE IF NOT EXISTS report_cursors(
  job_id TEXT NOT NULL, rank INTEGER NOT NULL, attempt INTEGER NOT NULL,
  last_src_seq INTEGER NOT NULL, PRIMARY KEY(job_id, rank, attempt));
CREATE TABLE IF NOT EXISTS deleted_jobs(
  num INTEGER PRIMARY KEY, id TEXT NOT NULL, deleted_ms INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS submit_requests(
  request_id TEXT PRIMARY KEY, job_id TEXT NOT NULL, spec BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS submit_requests_job ON submit_requests(job_id);
)sql";

std::string FormatId(int64_t num) { return absl::StrFormat("j-%06d", num); }

constexpr char kJobColumns[] =
    "id, spec, state, reason, created_ms, started_ms, ended_ms, restarts, attempt, latest, "
    "best_val_loss, job_dir, checkpoint_dir, launch_handle, cancel_requested, report_secret";

JobRecord RowToRecord(Stmt& s) {
  JobRecord r;
  r.job.set_id(s.Text(0));
  r.job.mutable_spec()->ParseFromString(s.Text(1));
  r.job.set_state(static_cast<JobState>(s.Int(2)));
  r.job.set_reason(s.Text(3));
  r.job.set_created_unix_ms(s.Int(4));
  r.job.set_started_unix_ms(s.Int(5));
  r.job.set_ended_unix_ms(s.Int(6));
  r.job.set_restarts(static_cast<int>(s.Int(7)));
  r.attempt = static_cast<int>(s.Int(8));
  std::string latest = s.Text(9);
  if (!latest.empty()) r.job.mutable_latest()->ParseFromString(latest);
  r.job.set_best_val_loss(s.Double(10));
  r.job.set_state_dir(s.Text(11));
  r.checkpoint_dir = s.Text(12);
  r.job.set_checkpoint_dir(r.checkpoint_dir);
  r.launch_handle = s.Text(13);
  r.cancel_requested = s.Int(14) != 0;
  r.report_secret = s.Text(15);
  return r;
}

}  // namespace

int64_t NowUnixMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

bool IsFinal(JobState state) {
  return state == moe::v1::JOB_STATE_SUCCEEDED || state == moe::v1::JOB_STATE_FAILED ||
         state == moe::v1::JOB_STATE_CANCELLED;
}

std::string StateName(JobState state) {
  std::string name = moe::v1::JobState_Name(state);
  constexpr char kPrefix[] = "JOB_STATE_";
  if (name.rfind(kPrefix, 0) == 0) name = name.substr(sizeof(kPrefix) - 1);
  return name.empty() ? "UNKNOWN" : name;
}

absl::StatusOr<std::unique_ptr<JobStore>> JobStore::Open(const std::string& path) {
  // Jobs, logs and specs are their users' business alone: the database is created 0600 (and an
  // older one tightened), and SQLite gives its -wal and -shm files the database's mode.
  if (int fd = open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600); fd >= 0) {
    fchmod(fd, 0600);
    close(fd);
  }
  sqlite3* db = nullptr;
  int rc = sqlite3_open_v2(path.c_str(), &db,
                           SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_FULLMUTEX,
                           nullptr);
  if (rc != SQLITE_OK) {
    std::string msg = db ? sqlite3_errmsg(db) : sqlite3_errstr(rc);
    sqlite3_close(db);
    const std::string fix = StoreFix(rc, path);
    return absl::FailedPreconditionError(absl::StrCat(
        "cannot open job store ", path, ": ", msg,
        fix.empty() ? " (check that --state-dir is writable)" : fix));
  }
  sqlite3_busy_timeout(db, 5000);
  std::unique_ptr<JobStore> store(new JobStore(db, path));
  std::lock_guard<std::mutex> lock(store->mu_);
  // journal_size_limit: after a checkpoint the WAL file is cut back to 4 MiB at most (SQLite
  // otherwise keeps it at its largest size, and it grows with every burst of log lines).
  for (const char* sql : {"PRAGMA journal_mode=WAL;", "PRAGMA synchronous=NORMAL;",
                          "PRAGMA journal_size_limit=4194304;", "PRAGMA wal_autocheckpoint=1000;",
                          kSchema}) {
    absl::Status s = store->Exec(sql);
    if (!s.ok()) {
      return absl::FailedPreconditionError(absl::StrCat("cannot initialise job store ", path, ": ",
                                                        s.message(),
                                                        StoreFix(sqlite3_errcode(db), path)));
    }
  }
  if (absl::Status s = store->Upgrade(); !s.ok()) {
    return absl::FailedPreconditionError(absl::StrCat("cannot upgrade job store ", path, ": ", s.message()));
  }
  return store;
}

JobStore::~JobStore() {
  std::lock_guard<std::mutex> lock(mu_);
  sqlite3_close(db_);
}

absl::Status JobStore::Exec(const char* sql) {
  char* err = nullptr;
  if (sqlite3_exec(db_, sql, nullptr, nullptr, &err) != SQLITE_OK) {
    std::string msg = err ? err : "unknown error";
    sqlite3_free(err);
    return absl::InternalError(absl::StrCat("sqlite: ", msg));
  }
  return absl::OkStatus();
}

absl::Status JobStore::Error(const char* what) {
  const int code = sqlite3_errcode(db_);
  const std::string msg =
      absl::StrCat("job store: ", what, ": ", sqlite3_errmsg(db_), StoreFix(code, path_));
  if (code == SQLITE_FULL) return absl::ResourceExhaustedError(msg);
  if (code == SQLITE_CORRUPT || code == SQLITE_NOTADB) return absl::DataLossError(msg);
  return absl::InternalError(msg);
}

absl::Status JobStore::Commit() {
  char* err = nullptr;
  if (sqlite3_exec(db_, "COMMIT;", nullptr, nullptr, &err) == SQLITE_OK) return absl::OkStatus();
  std::string msg = err ? err : "unknown error";
  sqlite3_free(err);
  const bool full = sqlite3_errcode(db_) == SQLITE_FULL;
  if (sqlite3_get_autocommit(db_) == 0) Exec("ROLLBACK;").IgnoreError();
  msg = absl::StrCat("job store: commit: ", msg);
  return full ? absl::ResourceExhaustedError(msg) : absl::InternalError(msg);
}

absl::Status JobStore::Fault(std::string_view op, const JobRecord* record) {
  return fault_ ? fault_(op, record) : absl::OkStatus();
}

void JobStore::SetWriteFaultForTest(WriteFault fault) {
  std::lock_guard<std::mutex> lock(mu_);
  fault_ = std::move(fault);
}

absl::Status JobStore::CheckpointWal() {
  std::lock_guard<std::mutex> lock(mu_);
  int log_frames = 0, done = 0;
  int rc = sqlite3_wal_checkpoint_v2(db_, nullptr, SQLITE_CHECKPOINT_TRUNCATE, &log_frames, &done);
  if (rc != SQLITE_OK && rc != SQLITE_BUSY) return Error("checkpoint the WAL");
  return absl::OkStatus();
}

void JobStore::Bump() {
  std::function<void()> listener;
  {
    std::lock_guard<std::mutex> lock(version_mu_);
    ++version_;
    listener = listener_;
  }
  version_cv_.notify_all();
  if (listener) listener();
}

void JobStore::SetChangeListener(std::function<void()> listener) {
  std::lock_guard<std::mutex> lock(version_mu_);
  listener_ = std::move(listener);
}

uint64_t JobStore::Version() {
  std::lock_guard<std::mutex> lock(version_mu_);
  return version_;
}

uint64_t JobStore::WaitForChange(uint64_t seen, std::chrono::steady_clock::time_point deadline) {
  std::unique_lock<std::mutex> lock(version_mu_);
  version_cv_.wait_until(lock, deadline, [&] { return version_ != seen; });
  return version_;
}

absl::StatusOr<JobRecord> JobStore::CreateJob(const moe::v1::JobSpec& spec,
                                              const std::string& spec_yaml,
                                              const std::string& job_root,
                                              const std::string& reason,
                                              const std::string& request_id) {
  JobRecord r;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (absl::Status s = Fault("create_job", nullptr); !s.ok()) return s;
    if (absl::Status s = Exec("BEGIN IMMEDIATE;"); !s.ok()) return s;
    int64_t num = 1;
    {
      // Ids of deleted jobs are never given out again.
      Stmt q(db_,
             "SELECT MAX(COALESCE((SELECT MAX(num) FROM jobs), 0), "
             "COALESCE((SELECT MAX(num) FROM deleted_jobs), 0)) + 1");
      if (q.Step() == SQLITE_ROW) num = q.Int(0);
    }
    // Nor an id whose folder is on disk: a store moved aside or restored from a backup would
    // otherwise hand a new job an old one's folder (its exit_status read as this job's end).
    struct stat st;
    while (::lstat(absl::StrCat(job_root, "/", FormatId(num)).c_str(), &st) == 0) ++num;
    const int64_t now = NowUnixMs();
    std::string id = FormatId(num);
    std::string job_dir = absl::StrCat(job_root, "/", id);
    std::string ckpt = spec.checkpoint().dir().empty() ? absl::StrCat(job_dir, "/checkpoints")
                                                       : spec.checkpoint().dir();
    Stmt ins(db_,
             "INSERT INTO jobs(num, id, spec, spec_yaml, state, reason, created_ms, job_dir, "
             "checkpoint_dir) VALUES(?,?,?,?,?,?,?,?,?)");
    ins.Bind(1, num).Bind(2, id).BindBlob(3, spec.SerializeAsString()).Bind(4, spec_yaml);
    ins.Bind(5, static_cast<int64_t>(moe::v1::JOB_STATE_QUEUED)).Bind(6, reason).Bind(7, now);
    ins.Bind(8, job_dir).Bind(9, ckpt);
    if (ins.Step() != SQLITE_DONE) {
      absl::Status err = Error("insert job");
      Exec("ROLLBACK;").IgnoreError();
      return err;
    }
    Stmt ev(db_, "INSERT INTO events(job_id, unix_ms, state, reason) VALUES(?,?,?,?)");
    ev.Bind(1, id).Bind(2, now).Bind(3, static_cast<int64_t>(moe::v1::JOB_STATE_QUEUED));
    ev.Bind(4, reason);
    if (ev.Step() != SQLITE_DONE) {
      absl::Status err = Error("insert event");
      Exec("ROLLBACK;").IgnoreError();
      return err;
    }
    if (!request_id.empty()) {  // the spec as submitted: a resend is compared with it (FindSubmit)
      Stmt req(db_, "INSERT INTO submit_requests(request_id, job_id, spec) VALUES(?,?,?)");
      req.Bind(1, request_id).Bind(2, id).BindBlob(3, spec.SerializeAsString());
      if (req.Step() != SQLITE_DONE) {
        absl::Status err = Error("insert the submit's request_id");
        Exec("ROLLBACK;").IgnoreError();
        return err;
      }
    }
    if (absl::Status s = Commit(); !s.ok()) return s;
    absl::StatusOr<JobRecord> got = GetJobLocked(id);
    if (!got.ok()) return got.status();
    r = *std::move(got);
  }
  Bump();
  return r;
}

void JobStore::NoteDeletedKept(const std::string& id, const std::string& kept) {
  std::lock_guard<std::mutex> lock(mu_);
  Stmt q(db_, "UPDATE deleted_jobs SET kept = ? WHERE id = ?");
  q.Bind(1, kept).Bind(2, id);
  q.Step();
}

absl::StatusOr<JobRecord> JobStore::GetJobLocked(const std::string& id) {
  Stmt q(db_, absl::StrCat("SELECT ", kJobColumns, " FROM jobs WHERE id = ?").c_str());
  q.Bind(1, id);
  int rc = q.Step();
  if (rc == SQLITE_ROW) return RowToRecord(q);
  if (rc == SQLITE_DONE) {
    // A deleted job leaves its id behind, so "no job" can say what happened to it.
    Stmt gone(db_, "SELECT deleted_ms, kept FROM deleted_jobs WHERE id = ?");
    gone.Bind(1, id);
    if (gone.Step() == SQLITE_ROW) {
      const std::string kept = gone.Text(1);
      return absl::NotFoundError(absl::StrCat(
          "job ", id, " was deleted at ",
          absl::FormatTime("%Y-%m-%d %H:%M:%S %Z", absl::FromUnixMillis(gone.Int(0)), absl::LocalTimeZone()),
          " (moectl delete or prune); its logs and metrics went with it",
          kept.empty() ? std::string()
                       : absl::StrCat("; it kept ", absl::StrReplaceAll(kept, {{"\n", ", "}}),
                                      ", which moed no longer tracks: remove them by hand when done with them")));
    }
    return absl::NotFoundError(
        absl::StrCat("no job '", id, "' (moectl list shows the jobs moed knows)"));
  }
  return Error("read job");
}

absl::StatusOr<JobRecord> JobStore::GetJob(const std::string& id) {
  std::lock_guard<std::mutex> lock(mu_);
  return GetJobLocked(id);
}

absl::StatusOr<std::vector<JobRecord>> JobStore::ListJobs() {
  std::lock_guard<std::mutex> lock(mu_);
  Stmt q(db_, absl::StrCat("SELECT ", kJobColumns, " FROM jobs ORDER BY num").c_str());
  std::vector<JobRecord> out;
  int rc;
  while ((rc = q.Step()) == SQLITE_ROW) out.push_back(RowToRecord(q));
  if (rc != SQLITE_DONE) return Error("list jobs");
  return out;
}

absl::Status JobStore::UpdateJob(const JobRecord& r) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (absl::Status s = Fault("update_job", &r); !s.ok()) return s;
    if (absl::Status s = Exec("BEGIN IMMEDIATE;"); !s.ok()) return s;
    auto fail = [&](const char* what) {
      absl::Status err = Error(what);
      Exec("ROLLBACK;").IgnoreError();
      return err;
    };
    int64_t old_state = -1;
    std::string old_reason;
    {
      Stmt q(db_, "SELECT state, reason FROM jobs WHERE id = ?");
      q.Bind(1, r.job.id());
      if (q.Step() != SQLITE_ROW) {
        Exec("ROLLBACK;").IgnoreError();
        return absl::NotFoundError(absl::StrCat("no job '", r.job.id(), "'"));
      }
      old_state = q.Int(0);
      old_reason = q.Text(1);
    }
    Stmt u(db_,
           "UPDATE jobs SET state=?, reason=?, started_ms=?, ended_ms=?, restarts=?, attempt=?, "
           "launch_handle=?, cancel_requested=?, report_secret=? WHERE id=?");
    u.Bind(1, static_cast<int64_t>(r.job.state())).Bind(2, r.job.reason());
    u.Bind(3, r.job.started_unix_ms()).Bind(4, r.job.ended_unix_ms());
    u.Bind(5, static_cast<int64_t>(r.job.restarts())).Bind(6, static_cast<int64_t>(r.attempt));
    u.Bind(7, r.launch_handle).Bind(8, static_cast<int64_t>(r.cancel_requested ? 1 : 0));
    u.Bind(9, r.report_secret).Bind(10, r.job.id());
    if (u.Step() != SQLITE_DONE) return fail("update job");
    if (old_state != r.job.state() || old_reason != r.job.reason()) {
      Stmt ev(db_, "INSERT INTO events(job_id, unix_ms, state, reason) VALUES(?,?,?,?)");
      ev.Bind(1, r.job.id()).Bind(2, NowUnixMs()).Bind(3, static_cast<int64_t>(r.job.state()));
      ev.Bind(4, r.job.reason());
      if (ev.Step() != SQLITE_DONE) return fail("insert event");
    }
    if (absl::Status s = Commit(); !s.ok()) return s;
    Fault("update_job_committed", &r).IgnoreError();
  }
  Bump();
  return absl::OkStatus();
}

absl::Status JobStore::UpdateJobSpec(const std::string& id, const moe::v1::JobSpec& spec) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (absl::Status s = Fault("update_job", nullptr); !s.ok()) return s;
    Stmt u(db_, "UPDATE jobs SET spec=? WHERE id=?");
    u.BindBlob(1, spec.SerializeAsString()).Bind(2, id);
    if (u.Step() != SQLITE_DONE) return Error("update job spec");
    if (sqlite3_changes(db_) == 0) return absl::NotFoundError(absl::StrCat("no job '", id, "'"));
  }
  Bump();
  return absl::OkStatus();
}

absl::StatusOr<std::vector<JobEvent>> JobStore::Events(const std::string& id) {
  std::lock_guard<std::mutex> lock(mu_);
  Stmt q(db_, "SELECT unix_ms, state, reason FROM events WHERE job_id = ? ORDER BY id");
  q.Bind(1, id);
  std::vector<JobEvent> out;
  int rc;
  while ((rc = q.Step()) == SQLITE_ROW) {
    out.push_back({q.Int(0), static_cast<JobState>(q.Int(1)), q.Text(2)});
  }
  if (rc != SQLITE_DONE) return Error("read events");
  return out;
}

absl::Status JobStore::InsertLinesLocked(
    const std::string& job_id, int rank,
    const std::vector<std::pair<int64_t, std::string>>& lines) {
  int64_t seq = 0;
  {
    Stmt q(db_, "SELECT COALESCE(MAX(seq), 0) FROM logs WHERE job_id = ? AND rank = ?");
    q.Bind(1, job_id).Bind(2, static_cast<int64_t>(rank));
    if (q.Step() != SQLITE_ROW) return Error("read last seq");
    seq = q.Int(0);
  }
  Stmt ins(db_, "INSERT INTO logs(job_id, rank, seq, unix_ms, text) VALUES(?,?,?,?,?)");
  for (const auto& [ms, text] : lines) {
    ins.Reset();
    ins.Bind(1, job_id).Bind(2, static_cast<int64_t>(rank)).Bind(3, ++seq).Bind(4, ms);
    ins.Bind(5, text);
    if (ins.Step() != SQLITE_DONE) return Error("insert log line");
  }
  return absl::OkStatus();
}

absl::Status JobStore::AppendCapturedLines(const std::string& job_id, int rank,
                                           const std::vector<std::string>& lines,
                                           int64_t unix_ms, const std::string& path,
                                           int64_t new_offset) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (absl::Status s = Fault("append_lines", nullptr); !s.ok()) return s;
    if (absl::Status s = Exec("BEGIN IMMEDIATE;"); !s.ok()) return s;
    std::vector<std::pair<int64_t, std::string>> rows;
    rows.reserve(lines.size());
    for (const std::string& l : lines) rows.emplace_back(unix_ms, l);
    absl::Status s = InsertLinesLocked(job_id, rank, rows);
    if (s.ok()) {
      Stmt up(db_, "INSERT OR REPLACE INTO capture_offsets(job_id, path, offset) VALUES(?,?,?)");
      up.Bind(1, job_id).Bind(2, path).Bind(3, new_offset);
      if (up.Step() != SQLITE_DONE) s = Error("store capture offset");
    }
    if (!s.ok()) {
      Exec("ROLLBACK;").IgnoreError();
      return s;
    }
    if (absl::Status c = Commit(); !c.ok()) return c;
  }
  Bump();
  return absl::OkStatus();
}

absl::StatusOr<std::map<std::string, int64_t>> JobStore::CaptureOffsets(
    const std::string& job_id) {
  std::lock_guard<std::mutex> lock(mu_);
  Stmt q(db_, "SELECT path, offset FROM capture_offsets WHERE job_id = ?");
  q.Bind(1, job_id);
  std::map<std::string, int64_t> out;
  int rc;
  while ((rc = q.Step()) == SQLITE_ROW) out[q.Text(0)] = q.Int(1);
  if (rc != SQLITE_DONE) return Error("read capture offsets");
  return out;
}

absl::Status JobStore::AppendReportedLines(const std::string& job_id, int attempt,
                                           const std::vector<moe::v1::LogLine>& lines) {
  if (lines.empty()) return absl::OkStatus();
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (absl::Status f = Fault("append_lines", nullptr); !f.ok()) return f;
    if (absl::Status s = Exec("BEGIN IMMEDIATE;"); !s.ok()) return s;
    absl::Status s;
    std::map<int, std::vector<std::pair<int64_t, std::string>>> by_rank;
    std::map<int, int64_t> cursor;
    for (const moe::v1::LogLine& l : lines) {
      auto it = cursor.find(l.rank());
      if (it == cursor.end()) {
        Stmt q(db_,
               "SELECT last_src_seq FROM report_cursors WHERE job_id=? AND rank=? AND attempt=?");
        q.Bind(1, job_id).Bind(2, static_cast<int64_t>(l.rank()));
        q.Bind(3, static_cast<int64_t>(attempt));
        it = cursor.emplace(l.rank(), q.Step() == SQLITE_ROW ? q.Int(0) : 0).first;
      }
      if (l.seq() <= it->second) continue;  // already stored: a resend after a reconnect
      it->second = l.seq();
      by_rank[l.rank()].emplace_back(l.unix_ms(), l.text());
    }
    for (const auto& [rank, rows] : by_rank) {
      s = InsertLinesLocked(job_id, rank, rows);
      if (!s.ok()) break;
      Stmt up(db_,
              "INSERT OR REPLACE INTO report_cursors(job_id, rank, attempt, last_src_seq) "
              "VALUES(?,?,?,?)");
      up.Bind(1, job_id).Bind(2, static_cast<int64_t>(rank)).Bind(3, static_cast<int64_t>(attempt));
      up.Bind(4, cursor[rank]);
      if (up.Step() != SQLITE_DONE) {
        s = Error("store report cursor");
        break;
      }
    }
    if (!s.ok()) {
      Exec("ROLLBACK;").IgnoreError();
      return s;
    }
    if (absl::Status c = Commit(); !c.ok()) return c;
  }
  Bump();
  return absl::OkStatus();
}

absl::StatusOr<ReportCursor> JobStore::GetReportCursor(const std::string& job_id, int rank,
                                                       int attempt) {
  std::lock_guard<std::mutex> lock(mu_);
  ReportCursor c;
  {
    Stmt q(db_, "SELECT last_src_seq FROM report_cursors WHERE job_id=? AND rank=? AND attempt=?");
    q.Bind(1, job_id).Bind(2, static_cast<int64_t>(rank)).Bind(3, static_cast<int64_t>(attempt));
    if (q.Step() == SQLITE_ROW) c.last_src_seq = q.Int(0);
  }
  {
    Stmt q(db_, "SELECT COALESCE(MAX(step), -1) FROM metrics WHERE job_id=? AND attempt=?");
    q.Bind(1, job_id).Bind(2, static_cast<int64_t>(attempt));
    if (q.Step() == SQLITE_ROW) c.last_metric_step = q.Int(0);
  }
  return c;
}

absl::StatusOr<std::vector<StoredLogLine>> JobStore::ReadLogs(const std::string& job_id,
                                                              int64_t after_rowid, int limit) {
  std::lock_guard<std::mutex> lock(mu_);
  Stmt q(db_,
         "SELECT rowid, rank, seq, unix_ms, text FROM logs WHERE job_id = ? AND rowid > ? "
         "ORDER BY rowid LIMIT ?");
  q.Bind(1, job_id).Bind(2, after_rowid).Bind(3, static_cast<int64_t>(limit));
  std::vector<StoredLogLine> out;
  int rc;
  while ((rc = q.Step()) == SQLITE_ROW) {
    StoredLogLine l;
    l.rowid = q.Int(0);
    l.line.set_rank(static_cast<int>(q.Int(1)));
    l.line.set_seq(q.Int(2));
    l.line.set_unix_ms(q.Int(3));
    l.line.set_text(q.Text(4));
    out.push_back(std::move(l));
  }
  if (rc != SQLITE_DONE) return Error("read logs");
  return out;
}

absl::StatusOr<std::map<int, int64_t>> JobStore::LastSeqs(const std::string& job_id) {
  std::lock_guard<std::mutex> lock(mu_);
  Stmt q(db_, "SELECT rank, MAX(seq) FROM logs WHERE job_id = ? GROUP BY rank");
  q.Bind(1, job_id);
  std::map<int, int64_t> out;
  int rc;
  while ((rc = q.Step()) == SQLITE_ROW) out[static_cast<int>(q.Int(0))] = q.Int(1);
  if (rc != SQLITE_DONE) return Error("read last seqs");
  return out;
}

absl::Status JobStore::AddMetric(const std::string& job_id, int attempt,
                                 const moe::v1::MetricPoint& p) {
  return AddMetrics(job_id, attempt, {p}).status();
}

absl::StatusOr<int> JobStore::AddMetrics(const std::string& job_id, int attempt,
                                         const std::vector<moe::v1::MetricPoint>& points) {
  int added = 0;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (absl::Status s = Fault("add_metric", nullptr); !s.ok()) return s;
    if (absl::Status s = Exec("BEGIN IMMEDIATE;"); !s.ok()) return s;
    auto fail = [&](const char* what) {
      absl::Status err = Error(what);
      Exec("ROLLBACK;").IgnoreError();
      return err;
    };
    // Prepared once for the batch, reset for each point.
    Stmt ins(db_, "INSERT OR IGNORE INTO metrics(job_id, attempt, step, point) VALUES(?,?,?,?)");
    Stmt up(db_,
            "UPDATE jobs SET latest = ? WHERE id = ? AND NOT EXISTS (SELECT 1 FROM metrics "
            "WHERE job_id = ? AND (attempt > ? OR (attempt = ? AND step > ?)))");
    Stmt best(db_,
              "UPDATE jobs SET best_val_loss = ? WHERE id = ? AND "
              "(best_val_loss = 0 OR best_val_loss > ?)");
    for (const moe::v1::MetricPoint& p : points) {
      const std::string blob = p.SerializeAsString();
      ins.Reset();
      ins.Bind(1, job_id).Bind(2, static_cast<int64_t>(attempt)).Bind(3, p.step());
      ins.BindBlob(4, blob);
      if (ins.Step() != SQLITE_DONE) return fail("insert metric");
      if (sqlite3_changes(db_) == 0) continue;  // stored before: a resend
      ++added;
      up.Reset();
      up.BindBlob(1, blob).Bind(2, job_id).Bind(3, job_id).Bind(4, static_cast<int64_t>(attempt));
      up.Bind(5, static_cast<int64_t>(attempt)).Bind(6, p.step());
      if (up.Step() != SQLITE_DONE) return fail("update latest metric");
      if (p.has_val_loss()) {
        best.Reset();
        best.Bind(1, p.val_loss()).Bind(2, job_id).Bind(3, p.val_loss());
        if (best.Step() != SQLITE_DONE) return fail("update best val loss");
      }
    }
    if (absl::Status s = Commit(); !s.ok()) return s;
  }
  if (added > 0) Bump();
  return added;
}

absl::StatusOr<std::vector<StoredMetric>> JobStore::ReadMetrics(const std::string& job_id,
                                                                int64_t after_rowid, int limit) {
  std::lock_guard<std::mutex> lock(mu_);
  Stmt q(db_,
         "SELECT id, attempt, point FROM metrics WHERE job_id = ? AND id > ? ORDER BY id LIMIT ?");
  q.Bind(1, job_id).Bind(2, after_rowid).Bind(3, static_cast<int64_t>(limit));
  std::vector<StoredMetric> out;
  int rc;
  while ((rc = q.Step()) == SQLITE_ROW) {
    StoredMetric m;
    m.rowid = q.Int(0);
    m.attempt = static_cast<int>(q.Int(1));
    m.point.ParseFromString(q.Text(2));
    out.push_back(std::move(m));
  }
  if (rc != SQLITE_DONE) return Error("read metrics");
  return out;
}

absl::StatusOr<JobRecord> JobStore::DeleteJob(const std::string& id) {
  JobRecord r;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (absl::Status s = Exec("BEGIN IMMEDIATE;"); !s.ok()) return s;
    absl::StatusOr<JobRecord> rec = GetJobLocked(id);
    if (!rec.ok()) {
      Exec("ROLLBACK;").IgnoreError();
      return rec.status();
    }
    if (!IsFinal(rec->job.state())) {
      Exec("ROLLBACK;").IgnoreError();
      // A cancel under way needs no second one: the job is deletable once it is CANCELLED.
      return absl::FailedPreconditionError(absl::StrCat(
          "job ", id, " is ", StateName(rec->job.state()), "; only a finished job can be deleted (",
          rec->cancel_requested
              ? absl::StrCat("it is being cancelled: its ranks are stopping; delete it once it is "
                             "CANCELLED, which moectl cancel ", id, " waits for")
              : absl::StrCat("moectl cancel ", id, " first"),
          ")"));
    }
    r = *std::move(rec);
    Stmt num(db_, "SELECT num FROM jobs WHERE id = ?");
    num.Bind(1, id);
    const int64_t n = num.Step() == SQLITE_ROW ? num.Int(0) : 0;
    Stmt tomb(db_, "INSERT OR REPLACE INTO deleted_jobs(num, id, deleted_ms) VALUES(?,?,?)");
    tomb.Bind(1, n).Bind(2, id).Bind(3, NowUnixMs());
    if (tomb.Step() != SQLITE_DONE) {
      absl::Status err = Error("record deleted job");
      Exec("ROLLBACK;").IgnoreError();
      return err;
    }
    for (const char* sql :
         {"DELETE FROM events WHERE job_id = ?", "DELETE FROM logs WHERE job_id = ?",
          "DELETE FROM metrics WHERE job_id = ?", "DELETE FROM capture_offsets WHERE job_id = ?",
          "DELETE FROM report_cursors WHERE job_id = ?", "DELETE FROM submit_requests WHERE job_id = ?",
          "DELETE FROM jobs WHERE id = ?"}) {
      Stmt del(db_, sql);
      del.Bind(1, id);
      if (del.Step() != SQLITE_DONE) {
        absl::Status err = Error("delete job rows");
        Exec("ROLLBACK;").IgnoreError();
        return err;
      }
    }
    if (absl::Status s = Exec("COMMIT;"); !s.ok()) return s;
  }
  Bump();
  return r;
}

}  // namespace moe::daemon
