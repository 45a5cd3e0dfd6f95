// Scheduler: queue admission, submit and cancel, worker hellos and reports, recovery after a
// restart of moed. Running attempts (launch, watch, output, retry) are in scheduler_attempts.cc.
#include "daemon/scheduler.h"

#include <fcntl.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <thread>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/files.h"
#include "common/job_spec.h"
#include "common/memory_fit.h"
#include "daemon/scheduler_internal.h"
#include "google/protobuf/util/json_util.h"
#include "worker/checkpoint/checkpoint.h"
#include "worker/checkpoint/checkpoint_dir.h"

namespace moe::daemon {
namespace {

using moe::v1::JobState;

}  // namespace

void LogDaemon(const std::string& msg) { std::fprintf(stderr, "moed: %s\n", msg.c_str()); }

void ApplyState(JobRecord& rec, moe::v1::JobState state, const std::string& reason) {
  rec.job.set_state(state);
  rec.job.set_reason(reason);
  const int64_t now = NowUnixMs();
  if (state == moe::v1::JOB_STATE_STARTING && rec.job.started_unix_ms() == 0) {
    rec.job.set_started_unix_ms(now);
  }
  if (IsFinal(state)) rec.job.set_ended_unix_ms(now);
}

namespace {

// The spec the workers read (<job folder>/spec.json).
absl::Status WriteSpecJson(const std::string& dir, const moe::v1::JobSpec& spec) {
  std::string json;
  google::protobuf::util::JsonPrintOptions opts;
  opts.add_whitespace = true;
  opts.preserve_proto_field_names = true;
  if (!google::protobuf::util::MessageToJsonString(spec, &json, opts).ok()) {
    return absl::InternalError("cannot write the spec as JSON");
  }
  return WriteFileAtomic(dir + "/spec.json", json);
}

// A new job's checkpoint.dir must be absent or empty: a directory with another run's checkpoints
// would be overwritten and rotated away (the worker checks again when it claims the directory).
absl::Status CheckCheckpointDirFree(const std::string& dir) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (dir.empty() || !fs::is_directory(dir, ec) || fs::is_empty(dir, ec)) return absl::OkStatus();
  std::string owner = "files no job owns";
  if (absl::StatusOr<std::string> text = ReadFile(dir + "/.moe-owner"); text.ok()) {
    owner = absl::StrCat("the checkpoints of ", absl::StripTrailingAsciiWhitespace(*text));
  }
  return absl::FailedPreconditionError(absl::StrCat(
      "checkpoint.dir: ", dir, " is not empty (it holds ", owner,
      "); give this job its own checkpoint.dir (or leave it out), start from those weights with "
      "model.init_from: ", dir, " (moectl submit --from JOB), or continue that job with moectl resume JOB"));
}

// ... and no unfinished job (queued, starting, running: it has not written there yet, or is
// writing there now) names the same directory as its checkpoint.dir.
absl::Status CheckCheckpointDirUnclaimed(JobStore* store, const std::string& dir) {
  if (dir.empty()) return absl::OkStatus();
  absl::StatusOr<std::vector<JobRecord>> jobs = store->ListJobs();
  if (!jobs.ok()) return jobs.status();
  for (const JobRecord& rec : *jobs) {
    if (IsFinal(rec.job.state()) || !SameDirectory(rec.job.spec().checkpoint().dir(), dir)) continue;
    return absl::FailedPreconditionError(absl::StrCat(
        "checkpoint.dir: ", dir, " is the checkpoint directory of job ", rec.job.id(), " (",
        StateName(rec.job.state()), "), which will write its checkpoints there; give this job its own "
        "checkpoint.dir (or leave it out), or submit it with model.init_from: ", dir,
        " once that job has written a checkpoint"));
  }
  return absl::OkStatus();
}

// model.init_from names a Hugging Face directory or holds a complete checkpoint now.
absl::Status CheckInitFrom(const std::string& dir) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (dir.empty() || fs::exists(fs::path(dir) / "config.json", ec) || fs::exists(fs::path(dir) / "MANIFEST", ec)) {
    return absl::OkStatus();
  }
  if (absl::StatusOr<std::string> latest = LatestCheckpoint(dir); !latest.ok()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "model.init_from: ", dir, " is neither a Hugging Face model directory (config.json) nor holds a "
        "complete checkpoint yet (a job writes its first one at checkpoint.every steps, or when it ends)"));
  }
  return absl::OkStatus();
}


// Constant time in the secret's bytes. An attempt launched before moed had secrets has none.
bool SecretMatches(const std::string& expected, const std::string& given) {
  if (expected.empty()) return true;
  unsigned char diff = expected.size() == given.size() ? 0 : 1;
  for (size_t i = 0; i < expected.size(); ++i) {
    diff |= static_cast<unsigned char>(expected[i] ^ (i < given.size() ? given[i] : 0));
  }
  return diff == 0;
}

std::string Mib(int64_t bytes) { return absl::StrCat(bytes / (1024 * 1024), " MiB"); }

}  // namespace

std::string SanitizeUtf8(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  size_t i = 0;
  while (i < s.size()) {
    unsigned char c = static_cast<unsigned char>(s[i]);
    int len = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xE ? 3 : (c >> 3) == 0x1E ? 4 : 0;
    bool ok = len > 0 && i + len <= s.size();
    for (int k = 1; ok && k < len; ++k) {
      ok = (static_cast<unsigned char>(s[i + k]) & 0xC0) == 0x80;
    }
    if (ok && len == 2 && c < 0xC2) ok = false;  // overlong
    if (ok) {
      out.append(s.substr(i, len));
      i += len;
    } else {
      out.push_back('?');
      ++i;
    }
  }
  return out;
}

Scheduler::Scheduler(SchedulerOptions options, JobStore* store, Launchers launchers)
    : options_(std::move(options)), store_(store), launchers_(launchers) {}

Launcher* Scheduler::LauncherFor(const JobRecord& rec) const {
  return launchers_.For(rec.job.spec());
}

bool Scheduler::InBatchSystem(const JobRecord& rec) const {
  return !LauncherFor(rec)->RunsOnThisMachine();
}

bool Scheduler::UsesGpus(const JobRecord& rec) const {
  return !InBatchSystem(rec) && rec.job.spec().resources().device() == moe::v1::DEVICE_CUDA;
}

bool Scheduler::CapturesOutput(const std::string& job_id) {
  std::lock_guard<std::mutex> lock(mu_);
  if (auto it = active_.find(job_id); it != active_.end()) {
    return LauncherFor(it->second.rec)->CapturesOutput();
  }
  absl::StatusOr<JobRecord> rec = store_->GetJob(job_id);
  return rec.ok() ? LauncherFor(*rec)->CapturesOutput() : launchers_.local->CapturesOutput();
}

Scheduler::~Scheduler() { Stop(); }

void Scheduler::Start() {
  {
    // Reattached attempts' ranks can report only now that moed serves again: their heartbeat
    // clock starts here, not when Recover read them (recovery may take a while).
    std::lock_guard<std::mutex> lock(mu_);
    const Clock::time_point now = Clock::now();
    for (auto& [id, a] : active_) a.attempt_started = std::max(a.attempt_started, now);
  }
  thread_ = std::thread([this] { Loop(); });
}

void Scheduler::Stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  wake_.notify_all();
  if (thread_.joinable()) thread_.join();
}

int64_t FreeBytes(const std::string& path) {
  struct statvfs st;
  if (statvfs(path.c_str(), &st) != 0) return -1;
  return static_cast<int64_t>(st.f_bavail) * static_cast<int64_t>(st.f_frsize);
}

absl::Status Scheduler::CheckFreeSpace() const {
  if (options_.min_free_bytes <= 0) return absl::OkStatus();
  const int64_t free = FreeBytes(options_.state_dir);
  if (free < 0 || free >= options_.min_free_bytes) return absl::OkStatus();
  return absl::ResourceExhaustedError(absl::StrCat(
      "moed's state directory ", options_.state_dir, " has ", Mib(free), " free, below the ",
      Mib(options_.min_free_bytes), " moed keeps for the jobs it runs (--min-free-space); new "
      "jobs are refused until space is freed (delete old jobs' checkpoints or logs, or lower "
      "--min-free-space)"));
}

void Scheduler::Loop() {
  std::unique_lock<std::mutex> lock(mu_);
  last_wal_checkpoint_ = Clock::now();
  while (!stop_) {
    Tick();
    if (Clock::now() - last_wal_checkpoint_ >= options_.wal_checkpoint_interval) {
      if (absl::Status s = store_->CheckpointWal(); !s.ok()) LogDaemon(std::string(s.message()));
      last_wal_checkpoint_ = Clock::now();
    }
    wake_.wait_for(lock, options_.poll_interval, [this] { return stop_; });
  }
}

bool Scheduler::SetState(JobRecord& rec, JobState state, const std::string& reason) {
  ApplyState(rec, state, reason);
  if (absl::Status s = store_->UpdateJob(rec); !s.ok()) {
    LogDaemon(absl::StrCat("job ", rec.job.id(), ": cannot store state ", StateName(state), ": ",
                           s.message(), "; retrying"));
    return false;
  }
  return true;
}

void Scheduler::Store(Active& a, JobState state, const std::string& reason) {
  ApplyState(a.rec, state, reason);
  absl::Status s = store_->UpdateJob(a.rec);
  a.unstored = !s.ok();
  a.store_error = std::string(s.message());
  if (!s.ok()) {
    LogDaemon(absl::StrCat("job ", a.rec.job.id(), ": cannot store state ", StateName(state), ": ",
                           s.message(), "; retrying"));
  }
}

int Scheduler::UsedRanks() const {
  int used = 0;
  for (const auto& [id, a] : active_) {
    if (!InBatchSystem(a.rec) && !UsesGpus(a.rec)) used += a.rec.job.spec().resources().ranks();
  }
  return used;
}

int Scheduler::UsedGpus() const {
  int used = 0;
  for (const auto& [id, a] : active_) {
    if (UsesGpus(a.rec)) used += a.rec.job.spec().resources().ranks();
  }
  return used;
}

std::vector<int> Scheduler::FreeGpus(int n) const {
  std::vector<bool> held(static_cast<size_t>(options_.gpus), false);
  for (const auto& [id, a] : active_) {
    for (int g : a.gpus) {
      if (g >= 0 && g < options_.gpus) held[static_cast<size_t>(g)] = true;
    }
  }
  std::vector<int> out;
  for (int g = 0; g < options_.gpus && static_cast<int>(out.size()) < n; ++g) {
    if (!held[static_cast<size_t>(g)]) out.push_back(g);
  }
  return out;
}

absl::Status Scheduler::Recover() {
  absl::StatusOr<std::vector<JobRecord>> jobs = store_->ListJobs();
  if (!jobs.ok()) return jobs.status();
  std::lock_guard<std::mutex> lock(mu_);
  for (JobRecord& rec : *jobs) {
    const JobState st = rec.job.state();
    if (st == moe::v1::JOB_STATE_QUEUED && rec.launch_handle.empty()) {
      queue_.push_back(rec.job.id());
      continue;
    }
    if (IsFinal(st)) continue;
    const std::string id = rec.job.id();
    Active& a = active_[id];
    a.rec = std::move(rec);
    a.attempt_started = Clock::now();
    absl::StatusOr<std::map<std::string, int64_t>> offsets = store_->CaptureOffsets(id);
    if (offsets.ok()) a.offsets = *std::move(offsets);
    a.launched = !a.rec.launch_handle.empty() && st != moe::v1::JOB_STATE_RESTARTING;
    if (UsesGpus(a.rec)) a.gpus = LauncherFor(a.rec)->Gpus(a.rec.launch_handle);
    if (a.rec.cancel_requested) {
      if (a.launched) LauncherFor(a.rec)->Terminate(a.rec.launch_handle);
      a.cancel_deadline = Clock::now() + options_.cancel_grace;
      a.last_term = Clock::now();
      LogDaemon(absl::StrCat("job ", id, ": resuming its cancel"));
      continue;
    }
    if (!a.launched) continue;  // relaunched by the next tick
    ProcessState ps = LauncherFor(a.rec)->Poll(a.rec.launch_handle);
    if (ps.kind == ProcessState::kLost) {
      // Nothing of the attempt is left (or only strays): relaunch from the newest checkpoint.
      // This is moed's doing, not the job's, so it does not count against max_restarts.
      Ingest(a, /*final=*/true);
      // Strays go before the relaunch, as every other path waits for them: a rank 0 still
      // dying holds the checkpoint directory's lock, and the new attempt would be refused.
      Launcher* launcher = LauncherFor(a.rec);
      launcher->Kill(a.rec.launch_handle);
      for (int i = 0; i < 200 && launcher->AnyAlive(a.rec.launch_handle); ++i) {
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
      }
      a.launched = false;
      a.rec.attempt += 1;
      a.rec.launch_handle.clear();
      Store(a, moe::v1::JOB_STATE_RESTARTING,
            absl::StrCat("moed restarted and found no live process of the job (", ps.reason,
                         "); resuming from the newest checkpoint"));
      LogDaemon(absl::StrCat("job ", id, ": no live process found, relaunching"));
    } else {
      LogDaemon(absl::StrCat("job ", id, ": reattached to attempt ", a.rec.attempt));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<moe::v1::Job> Scheduler::Submit(const moe::v1::JobSpec& spec, const std::string& spec_yaml,
                                               const std::string& request_id) {
  if (absl::Status s = CheckFreeSpace(); !s.ok()) return s;
  if (absl::Status s = CheckSpecPaths(options_.paths, spec); !s.ok()) return s;
  std::lock_guard<std::mutex> one_at_a_time(submit_mu_);
  // A twin of this submit (its request_id) stored while this one waited: that job is the answer.
  if (!request_id.empty()) {
    absl::StatusOr<std::optional<JobRecord>> first = store_->FindSubmit(request_id, spec);
    if (!first.ok()) return first.status();
    if (first->has_value()) return (*first)->job;
  }
  if (absl::Status s = CheckCheckpointDirFree(spec.checkpoint().dir()); !s.ok()) return s;
  if (absl::Status s = CheckCheckpointDirUnclaimed(store_, spec.checkpoint().dir()); !s.ok()) return s;
  if (absl::Status s = CheckInitFrom(spec.model().init_from()); !s.ok()) return s;
  if (absl::Status s = launchers_.For(spec)->CheckCanLaunch(); !s.ok()) return s;
  const int ranks = spec.resources().ranks();
  const bool local = launchers_.For(spec)->RunsOnThisMachine();
  const bool cuda = spec.resources().device() == moe::v1::DEVICE_CUDA;
  if (local && cuda && ranks > options_.gpus) {
    return absl::FailedPreconditionError(absl::StrCat(
        "resources.ranks: a device: cuda job runs one rank per GPU and asks for ", ranks,
        " ranks, but moed ",
        options_.gpus == 0 ? "sees no GPU"
                           : absl::StrCat("sees only ", options_.gpus, " GPU",
                                          options_.gpus == 1 ? "" : "s"),
        " on this machine (CUDA_VISIBLE_DEVICES, else /dev/nvidia*, or moed --gpus); ",
        options_.gpus == 0 ? "use device: cpu"
                           : absl::StrCat("lower resources.ranks to ", options_.gpus),
        ", or submit it to a moed on a machine with ", ranks, " GPUs"));
  }
  if (cuda && options_.gpu_memory_bytes > 0 && !spec.resources().allow_oversubscribe_memory()) {
    const MemoryFit fit = CheckGpuFit(spec, options_.gpu_memory_bytes);
    if (!fit.fits) {
      return absl::FailedPreconditionError(absl::StrCat(
          "resources: the job does not fit the memory of moed's GPUs (", FormatBytes(static_cast<double>(fit.have)),
          " each, moed --gpu-memory or nvidia-smi): it ", DescribeFit(fit),
          ". Change the job, or set resources.allow_oversubscribe_memory: true to run it anyway"));
    }
  }
  if (local && !cuda && ranks > options_.max_ranks) {
    return absl::InvalidArgumentError(absl::StrCat(
        "resources.ranks: the job asks for ", ranks, " ranks but this moed may use at most ",
        options_.max_ranks, " (lower resources.ranks, or start moed with --max-ranks ", ranks,
        ")"));
  }
  absl::StatusOr<JobRecord> rec =
      store_->CreateJob(spec, spec_yaml, options_.state_dir + "/jobs", "waiting in the queue", request_id);
  if (!rec.ok()) return rec.status();
  const std::string dir = rec->job.state_dir();
  absl::Status s = MakeDirs(dir);
  if (s.ok()) s = WriteSpecJson(dir, spec);
  if (s.ok() && !spec_yaml.empty()) s = WriteFileAtomic(dir + "/spec.yaml", spec_yaml);
  std::lock_guard<std::mutex> lock(mu_);
  if (!s.ok()) {
    SetState(*rec, moe::v1::JOB_STATE_FAILED,
             absl::StrCat("cannot write the job's files: ", s.message()));
    return absl::InternalError(absl::StrCat("cannot write the files of job ", rec->job.id(),
                                            " under ", dir, ": ", s.message()));
  }
  queue_.push_back(rec->job.id());
  Admit();
  wake_.notify_all();
  absl::StatusOr<JobRecord> now = store_->GetJob(rec->job.id());
  if (!now.ok()) return now.status();
  return now->job;
}

absl::StatusOr<moe::v1::Job> Scheduler::Cancel(const std::string& id) {
  absl::StatusOr<JobRecord> rec = store_->GetJob(id);
  if (!rec.ok()) return rec.status();
  std::lock_guard<std::mutex> lock(mu_);
  auto it = active_.find(id);
  if (it != active_.end()) {
    Active& a = it->second;
    if (a.finished) {
      return absl::FailedPreconditionError(absl::StrCat(
          "job ", id, " already ended (", StateName(a.rec.job.state()),
          ", being stored); there is nothing to cancel"));
    }
    if (!a.rec.cancel_requested) {
      // Stored first, signalled after: the answer is the truth either way (a cancel moed could
      // not record has not touched the job, and a restarted moed resumes a recorded one).
      JobRecord next = a.rec;
      next.cancel_requested = true;
      next.job.set_reason("cancelling: waiting for the ranks to stop");
      if (absl::Status s = store_->UpdateJob(next); !s.ok()) {
        return absl::Status(s.code(), absl::StrCat("cannot record the cancel of job ", id, " (",
                                                   s.message(),
                                                   "); nothing was signalled and the job goes "
                                                   "on; try again"));
      }
      a.rec = std::move(next);
      a.unstored = false;
      a.cancel_deadline = Clock::now() + options_.cancel_grace;
      a.last_term = Clock::now();
      if (a.launched) LauncherFor(a.rec)->Terminate(a.rec.launch_handle);
    }
    wake_.notify_all();
    return a.rec.job;
  }
  auto q = std::find(queue_.begin(), queue_.end(), id);
  if (q != queue_.end()) {
    JobRecord next = *rec;
    ApplyState(next, moe::v1::JOB_STATE_CANCELLED, "cancelled while queued");
    if (absl::Status s = store_->UpdateJob(next); !s.ok()) {
      return absl::Status(s.code(), absl::StrCat("cannot record the cancel of job ", id, " (",
                                                 s.message(), "); it is still queued; try again"));
    }
    queue_.erase(q);
    return next.job;
  }
  // Re-read: the job may have ended between the first read and the lock.
  rec = store_->GetJob(id);
  if (!rec.ok()) return rec.status();
  return absl::FailedPreconditionError(absl::StrCat("job ", id, " already ended (",
                                                    StateName(rec->job.state()),
                                                    "); there is nothing to cancel"));
}

absl::StatusOr<moe::v1::Job> Scheduler::Resume(const std::string& id, int steps) {
  if (absl::Status s = CheckFreeSpace(); !s.ok()) return s;
  std::lock_guard<std::mutex> lock(mu_);
  absl::StatusOr<JobRecord> rec = store_->GetJob(id);
  if (!rec.ok()) return rec.status();
  if (!IsFinal(rec->job.state()) || active_.count(id)) {
    return absl::FailedPreconditionError(absl::StrCat(
        "job ", id, " is ", StateName(rec->job.state()),
        "; only a finished (SUCCEEDED, FAILED or CANCELLED) job can be resumed"));
  }
  if (absl::Status s = launchers_.For(rec->job.spec())->CheckCanLaunch(); !s.ok()) return s;
  absl::StatusOr<std::string> latest = LatestCheckpoint(rec->checkpoint_dir);
  if (!latest.ok()) {
    // Step folders that are there but none complete: damage or a cut-short write, said as such.
    int folders = 0;
    int64_t newest_step = -1;
    std::string newest;
    std::error_code ec;
    for (const auto& e : std::filesystem::directory_iterator(rec->checkpoint_dir, ec)) {
      const std::string name = e.path().filename().string();
      const int64_t step = checkpoint_dir::ParseStepDirName(name);
      if (step >= 0 && e.is_directory(ec)) {
        ++folders;
        if (step > newest_step) newest_step = step, newest = name;
      }
    }
    const char* kWhy = ": a MANIFEST missing or a file of another size than it lists)";
    const std::string found =
        folders == 0   ? ""
        : folders == 1 ? absl::StrCat(" (its step folder ", newest, " is damaged or was cut short", kWhy)
                       : absl::StrCat(" (its ", folders, " step folders, newest ", newest,
                                      ", are damaged or were cut short", kWhy);
    return absl::FailedPreconditionError(absl::StrCat(
        "job ", id, " has no complete checkpoint in ", rec->checkpoint_dir, found,
        " to continue from; submit its job file again to start over"));
  }
  const std::string name = std::filesystem::path(*latest).filename().string();
  const int64_t at = std::atoll(name.substr(name.find('_') + 1).c_str());
  moe::v1::JobSpec spec = rec->job.spec();
  // A stop (cancel, shutdown, preemption) during the last step skipped the final evaluation; the
  // checkpoint says so, and a resume runs just that evaluation.
  bool final_eval_only = false;
  if (steps <= 0 && at == spec.train().steps()) {
    absl::StatusOr<std::map<std::string, std::string>> meta = ReadCheckpointMeta(*latest);
    final_eval_only = meta.ok() && meta->count(kFinalEvalPendingMeta) > 0;
  }
  if (steps > 0) {
    if (steps <= at) {
      return absl::InvalidArgumentError(absl::StrCat(
          "steps: the newest checkpoint of job ", id, " is at step ", at, "; give more steps than that"));
    }
    spec.mutable_train()->set_steps(steps);
    std::vector<SpecError> errors = ValidateJobSpec(spec);
    if (!errors.empty()) {
      return absl::InvalidArgumentError(absl::StrCat("with train.steps ", steps, " the job is not valid:\n",
                                                     FormatSpecErrors(errors)));
    }
  } else if (at >= spec.train().steps() && !final_eval_only) {
    return absl::FailedPreconditionError(absl::StrCat(
        "job ", id, " already trained all ", spec.train().steps(), " steps (checkpoint ", *latest,
        "); give more with moectl resume ", id, " --steps N"));
  }
  // The workers read the spec from the job folder: it changes before the job is queued.
  if (steps > 0) {
    if (absl::Status s = WriteSpecJson(rec->job.state_dir(), spec); !s.ok()) return s;
    if (absl::Status s = store_->UpdateJobSpec(id, spec); !s.ok()) return s;
    *rec->job.mutable_spec() = spec;
  }
  JobRecord next = *rec;
  next.attempt += 1;  // attempts after the first resume from the newest checkpoint
  next.launch_handle.clear();
  next.cancel_requested = false;
  next.report_secret.clear();
  next.job.set_ended_unix_ms(0);
  next.job.set_state(moe::v1::JOB_STATE_QUEUED);
  next.job.set_reason(
      final_eval_only
          ? absl::StrCat("resumed (moectl resume): runs the final evaluation that step ", at, " missed (", *latest, ")")
          : absl::StrCat("resumed (moectl resume): continues from step ", at, " of ", spec.train().steps(), " (",
                         *latest, ")"));
  if (absl::Status s = store_->UpdateJob(next); !s.ok()) {
    return absl::Status(s.code(), absl::StrCat("cannot record the resume of job ", id, " (", s.message(),
                                               "); nothing changed; try again"));
  }
  queue_.push_back(id);
  Admit();
  wake_.notify_all();
  absl::StatusOr<JobRecord> now = store_->GetJob(id);
  if (!now.ok()) return now.status();
  return now->job;
}

absl::StatusOr<Scheduler::Active*> Scheduler::ReporterJob(const std::string& job_id,
                                                          int attempt, int rank, int world_size,
                                                          const std::string& secret) {
  auto it = active_.find(job_id);
  if (it == active_.end()) {
    absl::StatusOr<JobRecord> rec = store_->GetJob(job_id);
    if (!rec.ok()) return rec.status();
    return absl::FailedPreconditionError(absl::StrCat(
        "job ", job_id, " is ", StateName(rec->job.state()), ", not running; stop reporting"));
  }
  Active& a = it->second;
  if (InBatchSystem(a.rec) && a.launched && attempt > a.rec.attempt &&
      SecretMatches(a.rec.report_secret, secret)) {
    AdoptAttempt(a, attempt);
  }
  if (attempt != a.rec.attempt || !a.launched || a.finished) {
    return absl::FailedPreconditionError(absl::StrCat("job ", job_id, " runs attempt ",
                                                      a.rec.attempt, ", not ", attempt));
  }
  if (!SecretMatches(a.rec.report_secret, secret)) {
    return absl::PermissionDeniedError(absl::StrCat(
        "report for job ", job_id, " attempt ", attempt, secret.empty() ? " without" : " with a wrong",
        " report secret: only the ranks moed launched (MOE_REPORT_SECRET) may report"));
  }
  const int ranks = a.rec.job.spec().resources().ranks();
  if (rank < 0 || rank >= ranks || world_size != ranks) {
    return absl::PermissionDeniedError(absl::StrCat(
        "report as rank ", rank, " of ", world_size, " for job ", job_id, ", which runs ", ranks,
        ranks == 1 ? " rank" : " ranks", ": no such rank"));
  }
  return &a;
}

absl::Status Scheduler::CheckReporter(const std::string& job_id, int attempt, int rank,
                                      int world_size, const std::string& secret) {
  std::lock_guard<std::mutex> lock(mu_);
  return ReporterJob(job_id, attempt, rank, world_size, secret).status();
}

absl::Status Scheduler::OnWorkerHello(const std::string& job_id, int attempt, int rank,
                                      int world_size, const std::string& secret) {
  std::lock_guard<std::mutex> lock(mu_);
  absl::StatusOr<Active*> found = ReporterJob(job_id, attempt, rank, world_size, secret);
  if (!found.ok()) return found.status();
  Active& a = **found;
  a.last_heard[rank] = Clock::now();
  if ((a.rec.job.state() == moe::v1::JOB_STATE_STARTING ||
       a.rec.job.state() == moe::v1::JOB_STATE_QUEUED) &&
      !a.rec.cancel_requested) {
    Store(a, moe::v1::JOB_STATE_RUNNING, "");
  }
  return absl::OkStatus();
}

void Scheduler::OnWorkerReport(const std::string& job_id, int attempt, int rank) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = active_.find(job_id);
  if (it == active_.end() || it->second.rec.attempt != attempt) return;
  it->second.last_heard[rank] = Clock::now();
}

void Scheduler::Tick() {
  for (auto it = active_.begin(); it != active_.end();) {
    Active& a = it->second;
    if (a.unstored) {
      absl::Status s = store_->UpdateJob(a.rec);
      a.unstored = !s.ok();
      a.store_error = std::string(s.message());
      if (s.ok()) {
        LogDaemon(absl::StrCat("job ", a.rec.job.id(), ": stored ", StateName(a.rec.job.state()),
                               " after an earlier failure"));
      }
    }
    if (!a.finished && Watch(a)) a.finished = true;
    if (a.finished && !a.unstored) {
      it = active_.erase(it);
    } else {
      ++it;
    }
  }
  Admit();
  // What Get and List add to the stored record (ShowUnstored), as of this tick.
  std::map<std::string, std::string> notes;
  for (const auto& [id, a] : active_) {
    if (std::string note = UnstoredNote(a); !note.empty()) notes.emplace(id, std::move(note));
  }
  std::lock_guard<std::mutex> lock(notes_mu_);
  notes_.swap(notes);
}

void Scheduler::Admit() {
  for (auto it = queue_.begin(); it != queue_.end();) {
    absl::StatusOr<JobRecord> rec = store_->GetJob(*it);
    if (!rec.ok() || rec->job.state() != moe::v1::JOB_STATE_QUEUED || !InBatchSystem(*rec)) {
      ++it;
      continue;
    }
    it = queue_.erase(it);
    Active& a = active_[rec->job.id()];
    a.rec = *std::move(rec);
    LaunchAttempt(a);
  }
  while (!queue_.empty()) {
    const std::string id = queue_.front();
    absl::StatusOr<JobRecord> rec = store_->GetJob(id);
    if (!rec.ok() || rec->job.state() != moe::v1::JOB_STATE_QUEUED) {
      queue_.pop_front();
      continue;
    }
    const int ranks = rec->job.spec().resources().ranks();
    const bool gpus = UsesGpus(*rec);
    const int used = gpus ? UsedGpus() : UsedRanks();
    const int limit = gpus ? options_.gpus : options_.max_ranks;
    if (used + ranks > limit) {
      // FIFO: the head waits, and so does everything behind it (no starvation of big jobs).
      std::string reason =
          gpus ? absl::StrCat("waiting for ", ranks, ranks == 1 ? " GPU: " : " GPUs: ", used,
                              " of ", limit, " in use")
               : absl::StrCat("waiting for ", ranks, " ranks: ", used, " of ", limit,
                              " in use (--max-ranks)");
      if (rec->job.reason() != reason) SetState(*rec, moe::v1::JOB_STATE_QUEUED, reason);
      for (size_t i = 1; i < queue_.size(); ++i) {
        absl::StatusOr<JobRecord> other = store_->GetJob(queue_[i]);
        std::string behind = absl::StrCat("waiting behind ", id, " in the queue");
        if (other.ok() && other->job.state() == moe::v1::JOB_STATE_QUEUED &&
            other->job.reason() != behind) {
          SetState(*other, moe::v1::JOB_STATE_QUEUED, behind);
        }
      }
      return;
    }
    queue_.pop_front();
    Active& a = active_[id];
    a.rec = *std::move(rec);
    LaunchAttempt(a);
  }
}

}  // namespace moe::daemon
