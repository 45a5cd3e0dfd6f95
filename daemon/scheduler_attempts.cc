// Scheduler, the attempts of running jobs: launching one (recorded before its processes start),
// watching it (exit, heartbeats, the batch system), ingesting its output, and failing or
// retrying it.
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/files.h"
#include "common/metrics_spill.h"
#include "daemon/scheduler.h"
#include "daemon/scheduler_internal.h"
#include "google/protobuf/util/json_util.h"

namespace moe::daemon {
namespace {

using moe::v1::JobState;
constexpr int64_t kMaxLineBytes = 64 * 1024;   // a longer line is split
constexpr int64_t kReadChunk = 4 * 1024 * 1024;  // per file per tick

// 128 random bits as hex: a launch's report secret.
std::string NewSecret() {
  unsigned char bytes[16] = {};
  int fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
  size_t got = 0;
  while (fd >= 0 && got < sizeof(bytes)) {
    ssize_t n = read(fd, bytes + got, sizeof(bytes) - got);
    if (n <= 0) break;
    got += static_cast<size_t>(n);
  }
  if (fd >= 0) close(fd);
  std::string hex;
  for (unsigned char b : bytes) absl::StrAppend(&hex, absl::Hex(b, absl::kZeroPad2));
  return got == sizeof(bytes) ? hex : "";
}

// Reads [offset, offset + max) of path.
std::string ReadRange(const std::string& path, int64_t offset, int64_t max) {
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return "";
  std::string buf(static_cast<size_t>(max), '\0');
  ssize_t n = pread(fd, buf.data(), buf.size(), offset);
  close(fd);
  buf.resize(n > 0 ? static_cast<size_t>(n) : 0);
  return buf;
}

}  // namespace

void Scheduler::LaunchAttempt(Active& a) {
  LaunchRequest req;
  req.job_id = a.rec.job.id();
  req.attempt = a.rec.attempt;
  req.spec = a.rec.job.spec();
  req.job_dir = a.rec.job.state_dir();
  req.spec_path = req.job_dir + "/spec.json";
  req.checkpoint_dir = a.rec.checkpoint_dir;
  req.moed_address = options_.report_address;
  req.token = options_.token;
  req.resume = a.rec.attempt > 0;
  a.rec.report_secret = NewSecret();  // stored with the launch by record below
  req.report_secret = a.rec.report_secret;
  if (UsesGpus(a.rec) && a.gpus.empty()) a.gpus = FreeGpus(a.rec.job.spec().resources().ranks());
  req.gpus = a.gpus;
  a.last_heard.clear();
  a.pending_failure.clear();
  a.killed = false;
  a.attempt_started = Clock::now();
  Launcher* launcher = LauncherFor(a.rec);
  // The handle and the new state are stored before anything of the attempt runs (the launcher
  // holds it until record returns OK), so a moed killed at any point can never launch the
  // same attempt twice.
  bool record_failed = false;
  const RecordLaunch record = [&](const std::string& handle) -> absl::Status {
    JobRecord next = a.rec;
    next.launch_handle = handle;
    if (!launcher->RunsOnThisMachine()) {
      const BatchJob batch = launcher->BatchJobOf(handle);
      ApplyState(next, moe::v1::JOB_STATE_QUEUED,
                 absl::StrCat("submitted to ", batch.system, " as job ", batch.id, " (attempt ",
                              a.rec.attempt, ")"));
    } else {
      ApplyState(next, moe::v1::JOB_STATE_STARTING,
                 absl::StrCat("launched ", a.rec.job.spec().resources().ranks(), " ranks",
                              a.gpus.empty() ? ""
                                             : absl::StrCat(" on GPUs ", absl::StrJoin(a.gpus, ",")),
                              " (attempt ", a.rec.attempt, ")"));
    }
    if (absl::Status s = store_->UpdateJob(next); !s.ok()) {
      record_failed = true;
      return s;
    }
    a.rec = std::move(next);
    a.unstored = false;
    return absl::OkStatus();
  };
  absl::StatusOr<std::string> handle = launcher->Launch(req, record);
  if (!handle.ok()) {
    a.launched = false;
    a.rec.launch_handle.clear();
    if (record_failed) {
      // Nothing was started; the job keeps its place and the launch is tried again.
      LogDaemon(absl::StrCat("job ", a.rec.job.id(), ": cannot record the launch of attempt ",
                             a.rec.attempt, " (", handle.status().message(),
                             "); nothing was started, retrying"));
      a.launch_not_before = Clock::now() + std::chrono::milliseconds(250);
      return;
    }
    // Marked launched=false with a pending failure: Watch ends it on this tick.
    a.pending_failure = std::string(handle.status().message());
    return;
  }
  a.launched = true;
  if (!launcher->RunsOnThisMachine()) {
    const BatchJob batch = launcher->BatchJobOf(*handle);
    LogDaemon(absl::StrCat("job ", a.rec.job.id(), ": attempt ", a.rec.attempt, " is ",
                           batch.system, " job ", batch.id));
    return;
  }
  LogDaemon(absl::StrCat("job ", a.rec.job.id(), ": launched attempt ", a.rec.attempt));
}

bool Scheduler::Ingest(Active& a, bool final) {
  if (!a.launched) return true;
  // Over: the metric points its ranks could not report (moed was away when they ended), and any
  // an earlier attempt left, stored before its end is.
  if (final && !IngestMetricsSpills(a, 0, a.rec.attempt)) return false;
  Launcher* launcher = LauncherFor(a.rec);
  if (!launcher->CapturesOutput()) return true;
  for (const OutputFile& f : launcher->OutputFiles(a.rec.launch_handle)) {
    int64_t offset = a.offsets.count(f.path) ? a.offsets[f.path] : 0;
    while (true) {
      std::string data = ReadRange(f.path, offset, kReadChunk);
      if (data.empty()) break;
      std::vector<std::string> lines;
      size_t pos = 0;
      while (pos < data.size()) {
        size_t nl = data.find('\n', pos);
        if (nl == std::string::npos) {
          // A partial line waits for its newline unless the attempt ended (or it is huge).
          if (!final && static_cast<int64_t>(data.size() - pos) < kMaxLineBytes) break;
          nl = data.size();
        }
        size_t len = std::min<size_t>(nl - pos, kMaxLineBytes);
        std::string line = data.substr(pos, len);
        if (!line.empty() && line.back() == '\r') line.pop_back();
        lines.push_back(SanitizeUtf8(line));
        pos = len < nl - pos ? pos + len : nl + 1;
      }
      if (lines.empty()) break;
      const int64_t new_offset = offset + static_cast<int64_t>(std::min(pos, data.size()));
      absl::Status s =
          store_->AppendCapturedLines(a.rec.job.id(), f.rank, lines, NowUnixMs(), f.path,
                                      new_offset);
      if (!s.ok()) {
        if (a.ingest_error != s.message()) {
          LogDaemon(absl::StrCat("job ", a.rec.job.id(), ": cannot store log lines: ", s.message(),
                                 "; retrying until the store takes them"));
          a.ingest_error = std::string(s.message());
        }
        return false;
      }
      if (!a.ingest_error.empty()) {
        LogDaemon(absl::StrCat("job ", a.rec.job.id(), ": log lines stored again"));
        a.ingest_error.clear();
      }
      offset = new_offset;
      a.offsets[f.path] = offset;
      if (a.rec.job.state() == moe::v1::JOB_STATE_STARTING && !a.rec.cancel_requested) {
        Store(a, moe::v1::JOB_STATE_RUNNING, "");
      }
      if (static_cast<int64_t>(data.size()) < kReadChunk) break;
    }
  }
  return true;
}

bool Scheduler::IngestMetricsSpills(Active& a, int first, int last) {
  const std::string& id = a.rec.job.id();
  const int64_t max_step = a.rec.job.spec().train().steps();
  for (int attempt = first; attempt <= last; ++attempt) {
    for (const std::string& path : MetricsSpillFiles(AttemptDir(a.rec.job.state_dir(), attempt))) {
      absl::StatusOr<MetricsSpill> spill = ReadMetricsSpill(path);
      if (!spill.ok()) {
        if (!absl::IsNotFound(spill.status())) {
          LogDaemon(absl::StrCat("job ", id, ": cannot read the metric spill file ", path, " (",
                                 spill.status().message(), "); its points are not stored"));
        }
        continue;
      }
      // The report service's check: a point at a step the job cannot reach is not stored.
      std::vector<moe::v1::MetricPoint> points;
      size_t unreachable = 0;
      for (moe::v1::MetricPoint& p : spill->points) {
        if (p.step() < 0 || p.step() > max_step) {
          ++unreachable;
        } else {
          points.push_back(std::move(p));
        }
      }
      absl::StatusOr<int> added = store_->AddMetrics(id, attempt, points);
      if (!added.ok()) {
        if (a.spill_error != added.status().message()) {
          LogDaemon(absl::StrCat("job ", id, ": cannot store the metric points of ", path, ": ",
                                 added.status().message(),
                                 "; retrying until the store takes them"));
          a.spill_error = std::string(added.status().message());
        }
        return false;
      }
      a.spill_error.clear();
      // One line per file, naming it.
      const size_t old = points.size() - static_cast<size_t>(*added);
      std::string line =
          spill->damage.empty()
              ? absl::StrCat("job ", id, ": attempt ", attempt, " ended with ",
                             spill->points.size(), " metric points moed had not confirmed (",
                             path, "): stored ", *added)
              : absl::StrCat("job ", id, ": the metric spill file ", path, " of attempt ",
                             attempt, " is damaged (", spill->damage, "): stored ", *added,
                             " of the ", spill->points.size(),
                             " points before the damage, the rest is lost");
      if (old > 0) absl::StrAppend(&line, "; ", old, " were stored already");
      if (unreachable > 0) {
        absl::StrAppend(&line, "; skipped ", unreachable, " at steps outside 0..", max_step);
      }
      LogDaemon(line);
      if (unlink(path.c_str()) != 0 && errno != ENOENT) {
        LogDaemon(absl::StrCat("job ", id, ": cannot remove ", path, ": ", std::strerror(errno)));
      }
    }
  }
  return true;
}

void Scheduler::Failed(Active& a, const std::string& reason) {
  const int max_restarts = a.rec.job.spec().max_restarts();
  if (a.rec.job.restarts() < max_restarts) {
    a.rec.job.set_restarts(a.rec.job.restarts() + 1);
    a.rec.attempt += 1;
    a.launched = false;
    a.rec.launch_handle.clear();
    Store(a, moe::v1::JOB_STATE_RESTARTING,
          absl::StrCat("restart ", a.rec.job.restarts(), " of ", max_restarts, " after: ", reason));
    LogDaemon(absl::StrCat("job ", a.rec.job.id(), ": restarting after: ", reason));
    return;
  }
  Store(a, moe::v1::JOB_STATE_FAILED,
        max_restarts > 0 ? absl::StrCat(reason, " (after ", a.rec.job.restarts(), " restarts)")
                         : reason);
}

bool Scheduler::Watch(Active& a) {
  const Clock::time_point now = Clock::now();
  const std::string& handle = a.rec.launch_handle;
  Launcher* launcher = LauncherFor(a.rec);

  if (a.rec.cancel_requested) {
    if (a.launched) Ingest(a, /*final=*/false);
    if (!a.launched || !launcher->AnyAlive(handle)) {
      if (a.launched && !Ingest(a, /*final=*/true)) return false;
      a.rec.cancel_requested = false;
      // The ranks may have run their last step before the cancel reached them: an attempt that
      // ended with success trained the whole job, and its state says so.
      if (a.launched) {
        const ProcessState ps = launcher->Poll(handle);
        if (ps.kind == ProcessState::kExited && ps.exit_code == 0) {
          Store(a, moe::v1::JOB_STATE_SUCCEEDED,
                "finished all its steps before the cancel reached it");
          return true;
        }
      }
      Store(a, moe::v1::JOB_STATE_CANCELLED, "cancelled by request");
      return true;
    }
    if (now >= a.cancel_deadline) {
      if (!a.killed) {
        LogDaemon(absl::StrCat("job ", a.rec.job.id(), ": grace period over, SIGKILL"));
      }
      launcher->Kill(handle);
      a.killed = true;
    } else if (now - a.last_term >= std::chrono::seconds(1)) {
      launcher->Terminate(handle);  // ranks that started after the first SIGTERM
      a.last_term = now;
    }
    return false;
  }

  if (!a.launched) {
    if (!a.pending_failure.empty()) {  // the launch itself failed: not worth a restart
      Store(a, moe::v1::JOB_STATE_FAILED, a.pending_failure);
      return true;
    }
    if (now < a.launch_not_before) return false;
    LaunchAttempt(a);  // RESTARTING, or recovered without a live attempt
    return false;
  }

  Ingest(a, /*final=*/false);
  if (!a.pending_failure.empty()) {  // moed killed it; wait until nothing is left
    if (launcher->AnyAlive(handle)) {
      launcher->Kill(handle);
      return false;
    }
    if (!Ingest(a, /*final=*/true)) return false;
    // Cleared before Failed: a restart's next tick must launch it, not read the failure as the
    // launch's own (which ended the job FAILED 200 ms after "restart 1 of N").
    const std::string reason = std::move(a.pending_failure);
    a.pending_failure.clear();
    Failed(a, reason);
    return IsFinal(a.rec.job.state());
  }

  ProcessState ps = launcher->Poll(handle);
  if (ps.kind != ProcessState::kRunning) {
    if (launcher->AnyAlive(handle)) {
      launcher->Kill(handle);  // stragglers of an ended attempt
      if (ps.kind == ProcessState::kLost || launcher->AnyAlive(handle)) {
        if (ps.kind == ProcessState::kLost) a.pending_failure = ps.reason;
        return false;
      }
    }
    if (!Ingest(a, /*final=*/true)) return false;
    if (ps.kind == ProcessState::kExited && ps.exit_code == 0) {
      Store(a, moe::v1::JOB_STATE_SUCCEEDED, "");
      return true;
    }
    Failed(a, ps.reason);
    return IsFinal(a.rec.job.state());
  }
  if (!launcher->RunsOnThisMachine()) WatchBatch(a, now);

  // Heartbeats: every rank must report within the timeout of the launch (or of moed's start:
  // the ranks of a reattached attempt report to this moed afresh) and keep reporting.
  const auto timeout = options_.heartbeat_timeout;
  const double timeout_s = timeout.count() / 1000.0;
  std::string lost;
  if (a.last_heard.empty()) {
    if (now - a.attempt_started > timeout) {
      lost = absl::StrCat("lost heartbeat: no worker reported within ", timeout_s, " s of the launch");
    }
  } else {
    for (int rank = 0; rank < a.rec.job.spec().resources().ranks() && lost.empty(); ++rank) {
      const auto heard = a.last_heard.find(rank);
      if (heard == a.last_heard.end() && now - a.attempt_started > timeout) {
        lost = absl::StrCat("lost heartbeat: rank ", rank, " has not reported within ", timeout_s,
                            " s of the launch or of moed's start, while other ranks did");
      } else if (heard != a.last_heard.end() && now - heard->second > timeout) {
        lost = absl::StrCat("lost heartbeat from rank ", rank, " (nothing for ", timeout_s, " s)");
      }
    }
  }
  if (!lost.empty()) {
    LogDaemon(absl::StrCat("job ", a.rec.job.id(), ": ", lost, "; killing the attempt"));
    a.pending_failure = lost;
    launcher->Kill(handle);
  }
  return false;
}

void Scheduler::AdoptAttempt(Active& a, int attempt) {
  // The requeued attempts' spills before the new attempt's points (the final ingest retries).
  IngestMetricsSpills(a, a.rec.attempt, attempt - 1);
  a.rec.attempt = attempt;
  a.last_heard.clear();
  a.attempt_started = Clock::now();
  const BatchJob batch = LauncherFor(a.rec)->BatchJobOf(a.rec.launch_handle);
  Store(a, a.rec.job.state(),
        absl::StrCat(batch.system, " requeued job ", batch.id, ": attempt ", attempt,
                     " resumes from the newest checkpoint"));
  LogDaemon(absl::StrCat("job ", a.rec.job.id(), ": ", batch.system, " requeued it, attempt ",
                         attempt));
}

void Scheduler::WatchBatch(Active& a, Clock::time_point now) {
  Launcher* launcher = LauncherFor(a.rec);
  const BatchState info = launcher->BatchStateOf(a.rec.launch_handle);
  if (!info.known) return;
  if (info.attempt > a.rec.attempt) AdoptAttempt(a, info.attempt);
  const BatchJob batch = launcher->BatchJobOf(a.rec.launch_handle);
  const moe::v1::JobState st = a.rec.job.state();
  // Ranks of this attempt report, so an older answer that says pending is stale.
  if (info.pending && a.last_heard.empty()) {
    // Waiting in the batch system's queue: no heartbeat is due until it runs.
    std::string reason = absl::StrCat(batch.system, " job ", batch.id, " ", info.state);
    if (!info.reason.empty()) absl::StrAppend(&reason, ": ", info.reason);
    if (a.rec.attempt > 0) absl::StrAppend(&reason, " (attempt ", a.rec.attempt, ")");
    if (st != moe::v1::JOB_STATE_QUEUED || a.rec.job.reason() != reason) {
      Store(a, moe::v1::JOB_STATE_QUEUED, reason);
    }
    a.last_heard.clear();
    a.attempt_started = now;
  } else if (info.paused) {
    // Suspended or stopped (preemption, gang scheduling, scontrol suspend): its ranks are frozen,
    // so no heartbeat is due until it runs again (moed killed such a job after the timeout).
    for (auto& [rank, t] : a.last_heard) t = now;
    a.attempt_started = now;
    const std::string reason = absl::StrCat(batch.system, " job ", batch.id, " ", info.state);
    if (a.rec.job.reason() != reason) Store(a, st, reason);
    a.batch_paused = true;
  } else if (a.batch_paused) {
    a.batch_paused = false;
    Store(a, st, st == moe::v1::JOB_STATE_RUNNING ? "" : a.rec.job.reason());
  } else if (st == moe::v1::JOB_STATE_QUEUED) {
    Store(a, moe::v1::JOB_STATE_STARTING,
          absl::StrCat(batch.system, " job ", batch.id, " ", info.state, " on ",
                       info.node_list.empty() ? "?" : info.node_list));
    a.attempt_started = now;
  }
}


// What moed holds of an attempt that its store does not have yet, said beside the stored job.
std::string Scheduler::UnstoredNote(const Active& a) {
  if (a.unstored) {
    // The stored state stays what is shown (a moed killed now recovers from it); the one moed
    // holds is said beside it.
    const std::string held = a.rec.job.reason().empty()
                                 ? std::string(StateName(a.rec.job.state()))
                                 : absl::StrCat(StateName(a.rec.job.state()), ": ", a.rec.job.reason());
    return absl::StrCat("moed holds this job as ", held, " but could not store that yet (", a.store_error,
                        "); it retries every tick");
  }
  if (!a.ingest_error.empty() || !a.spill_error.empty()) {
    // Lines: read from the ranks' output files (captured output); points: the attempt's spill
    // files, read once its ranks are gone.
    const bool lines = !a.ingest_error.empty();
    return absl::StrCat("moed cannot store the job's ", lines ? "log lines" : "metric points", " (",
                        lines ? a.ingest_error : a.spill_error, "); they wait in ",
                        lines ? "the ranks' output files" : "the attempt's spill files (unsent-metrics.rank*.pb)",
                        ", the job's end is recorded after them, and moed retries every tick (free space in the "
                        "state directory)");
  }
  return "";
}

void Scheduler::ShowUnstored(moe::v1::Job* job) {
  std::lock_guard<std::mutex> lock(notes_mu_);  // never mu_: a tick may hold it for long (sbatch)
  auto it = notes_.find(job->id());
  if (it == notes_.end()) return;
  job->set_reason(job->reason().empty() ? it->second : absl::StrCat(job->reason(), "; ", it->second));
}

}  // namespace moe::daemon
