// Job deletion: the rows go first (one transaction), then the files; a checkpoint directory
// another stored job also uses is kept.
#include "daemon/job_cleanup.h"

#include <filesystem>
#include <set>
#include <system_error>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/files.h"
#include "worker/checkpoint/checkpoint_dir.h"

namespace moe::daemon {
namespace {

namespace fs = std::filesystem;

// True when path is inside (or is) dir, both made absolute and normal.
bool Within(const fs::path& path, const fs::path& dir) {
  const fs::path p = fs::absolute(path).lexically_normal(), d = fs::absolute(dir).lexically_normal();
  auto pi = p.begin(), di = d.begin();
  for (; di != d.end() && !di->empty(); ++di, ++pi) {
    if (pi == p.end() || *pi != *di) return false;
  }
  return true;
}

void RemoveAll(const fs::path& path, moe::v1::DeleteJobResponse* out) {
  std::error_code ec;
  if (!fs::exists(path, ec)) return;
  fs::remove_all(path, ec);
  if (ec) {
    out->add_kept_paths(absl::StrCat(path.string(), " (cannot remove: ", ec.message(), ")"));
  } else {
    out->add_removed_paths(path.string());
  }
}

// Another stored job that uses the same checkpoint directory, so that it stays whatever was asked:
// "" when none, else which one and how (one that writes there; one not ended yet that starts from
// it, model.init_from: moectl submit --from, still queued); and how a kept one is listed.
std::string OtherJobUsing(const std::vector<JobRecord>& jobs, const std::string& id, const std::string& ckpt) {
  for (const JobRecord& other : jobs) {
    if (other.job.id() == id) continue;
    if (SameDirectory(other.checkpoint_dir, ckpt)) return absl::StrCat("shared with another job, ", other.job.id());
    const std::string& from = other.job.spec().model().init_from();
    std::error_code ec;  // (links resolved, as SameDirectory does: a step folder reached through one)
    if (!IsFinal(other.job.state()) && !from.empty() && !ckpt.empty() &&
        (SameDirectory(from, ckpt) || Within(fs::weakly_canonical(from, ec), fs::weakly_canonical(ckpt, ec)))) {
      return absl::StrCat("job ", other.job.id(), " starts from it (model.init_from) and has not ended");
    }
  }
  return "";
}
// Whether a checkpoint directory has nothing to keep: missing, empty, or only the job's
// .moe-owner marker (a job that ended before its first checkpoint).
// A directory that cannot be looked at holds something, as far as this knows.
bool HoldsNoCheckpoints(const fs::path& ckpt) {
  std::error_code ec;
  const fs::file_status st = fs::symlink_status(ckpt, ec);
  if (ec) return ec == std::errc::no_such_file_or_directory;
  if (!fs::is_directory(st)) return false;
  fs::directory_iterator it(ckpt, ec), end;
  for (; !ec && it != end; it.increment(ec)) {
    if (it->path().filename() != ".moe-owner") return false;
  }
  return !ec;
}
// Whether deleting a job keeps the checkpoints folder inside its job folder (the rest goes): one
// another job names always; its own without --checkpoints, when there is a checkpoint to keep.
bool KeepsCheckpointsInFolder(const fs::path& ckpt, bool shared, bool checkpoints) {
  return shared || (!checkpoints && !HoldsNoCheckpoints(ckpt));
}
std::string KeptCheckpoints(const fs::path& ckpt, const std::string& user) {
  return user.empty() ? ckpt.string() : absl::StrCat(ckpt.string(), " (", user, ")");
}

// A checkpoint.dir of the job's own choosing (outside its job folder): only what the job wrote
// there goes (its step_* checkpoints, their unfinished .tmp-step_* copies, then the .moe-owner
// marker), and the directory itself once it is empty (never recursively). Without a marker that
// names this job (another owner took it over, or no job ever claimed it) everything stays, as it
// does when the directory cannot be listed. A symbolic link is followed: the checkpoints are in
// the directory it names, and the link stays.
void RemoveOwnCheckpoints(const fs::path& ckpt, const std::string& owner, moe::v1::DeleteJobResponse* out) {
  std::error_code ec;
  const fs::path dir = fs::canonical(ckpt, ec);
  if (ec || !fs::is_directory(dir, ec)) {
    if (fs::exists(ckpt, ec)) out->add_kept_paths(absl::StrCat(ckpt.string(), " (not a directory)"));
    return;
  }
  const fs::path marker = dir / ".moe-owner";
  absl::StatusOr<std::string> text = ReadFile(marker.string());
  const std::string found = text.ok() ? std::string(absl::StripAsciiWhitespace(*text)) : "";
  if (found != owner) {
    out->add_kept_paths(absl::StrCat(
        dir.string(), " (",
        text.ok() ? absl::StrCat("its .moe-owner names ", found, ", not this ", owner)
                  : "no .moe-owner names this job as its owner",
        "; remove what you no longer need by hand)"));
    return;
  }
  std::vector<fs::path> own;
  bool other = false;
  fs::directory_iterator it(dir, ec);
  for (; !ec && it != fs::directory_iterator(); it.increment(ec)) {
    const std::string name = it->path().filename().string();
    if (checkpoint_dir::ParseStepDirName(name) >= 0 || absl::StartsWith(name, ".tmp-step_")) {
      own.push_back(it->path());
    } else if (name != ".moe-owner") {
      other = true;
    }
  }
  if (ec) {
    out->add_kept_paths(absl::StrCat(dir.string(), " (cannot list it: ", ec.message(), ")"));
    return;
  }
  const int kept_before = out->kept_paths_size();
  for (const fs::path& p : own) RemoveAll(p, out);
  if (out->kept_paths_size() != kept_before) return;  // a checkpoint stayed: so does its marker
  RemoveAll(marker, out);
  fs::path named = fs::path(ckpt).lexically_normal();
  if (!named.has_filename()) named = named.parent_path();  // "dir/"
  if (other) {
    out->add_kept_paths(absl::StrCat(dir.string(), " (it holds files this job did not write)"));
  } else if (fs::is_symlink(named, ec)) {
    out->add_kept_paths(absl::StrCat(dir.string(), " (emptied; ", ckpt.string(), " links to it)"));
  } else if (fs::remove(dir, ec); ec) {  // empty now, or something appeared: then it stays
    out->add_kept_paths(absl::StrCat(dir.string(), " (", ec.message(), ")"));
  } else {
    out->add_removed_paths(dir.string());
  }
}

}  // namespace

absl::StatusOr<moe::v1::DeleteJobResponse> DeleteFinishedJob(JobStore& store,
                                                             const std::string& jobs_root,
                                                             const std::string& id,
                                                             bool checkpoints) {
  absl::StatusOr<JobRecord> rec = store.DeleteJob(id);
  if (!rec.ok()) return rec.status();
  moe::v1::DeleteJobResponse out;
  *out.mutable_job() = rec->job;
  const fs::path job_dir = rec->job.state_dir(), ckpt = rec->checkpoint_dir;
  absl::StatusOr<std::vector<JobRecord>> all = store.ListJobs();
  const std::string user = all.ok() ? OtherJobUsing(*all, id, ckpt.string()) : "";
  const bool shared = !user.empty();
  const bool remove_ckpt = checkpoints && !shared && !ckpt.empty();
  std::error_code ec;
  if (!job_dir.empty() && Within(job_dir, jobs_root) && fs::is_directory(job_dir, ec)) {
    const bool ckpt_inside = !ckpt.empty() && Within(ckpt, job_dir);
    if (!ckpt_inside || !KeepsCheckpointsInFolder(ckpt, shared, checkpoints)) {
      RemoveAll(job_dir, &out);
    } else {
      // Keep the checkpoints: remove every entry of the job folder that does not hold them.
      for (const fs::directory_entry& e : fs::directory_iterator(job_dir, ec)) {
        if (!Within(ckpt, e.path())) RemoveAll(e.path(), &out);
      }
    }
  }
  if (remove_ckpt) {
    // (Inside the job folder it went with the folder.) The owner string moe-worker writes.
    const std::string owner =
        absl::StrCat("job ", rec->job.id(), " of ", fs::absolute(job_dir, ec).lexically_normal().string());
    RemoveOwnCheckpoints(ckpt, owner, &out);
  } else if (!ckpt.empty() && fs::exists(ckpt, ec)) {  // (an empty one inside went with the folder)
    out.add_kept_paths(KeptCheckpoints(ckpt, user));
  }
  // Said again to whoever asks about the job later (moectl status or delete --checkpoints).
  if (out.kept_paths_size() > 0) store.NoteDeletedKept(id, absl::StrJoin(out.kept_paths(), "\n"));
  return out;
}

absl::StatusOr<moe::v1::PruneJobsResponse> PruneJobs(JobStore& store, const std::string& jobs_root,
                                                     const moe::v1::PruneJobsRequest& request) {
  std::set<int> states;
  for (int s : request.states()) {
    if (!IsFinal(static_cast<moe::v1::JobState>(s))) {
      return absl::InvalidArgumentError(absl::StrCat(
          "states: ", StateName(static_cast<moe::v1::JobState>(s)),
          " is not a final state (SUCCEEDED, FAILED or CANCELLED); running jobs are never pruned"));
    }
    states.insert(s);
  }
  if (request.older_than_ms() < 0) {
    return absl::InvalidArgumentError("older_than_ms: must not be negative");
  }
  absl::StatusOr<std::vector<JobRecord>> jobs = store.ListJobs();
  if (!jobs.ok()) return jobs.status();
  const int64_t cutoff = NowUnixMs() - request.older_than_ms();
  moe::v1::PruneJobsResponse out;
  for (const JobRecord& r : *jobs) {
    const moe::v1::Job& j = r.job;
    if (!IsFinal(j.state()) || j.ended_unix_ms() > cutoff) continue;
    if (!states.empty() && !states.count(j.state())) continue;
    if (request.dry_run()) {  // what a real run would remove (DeleteFinishedJob's rules)
      moe::v1::DeleteJobResponse* d = out.add_deleted();
      *d->mutable_job() = j;
      std::error_code ec;
      const fs::path job_dir = j.state_dir(), ckpt = r.checkpoint_dir;
      const bool own_folder = !ckpt.empty() && !job_dir.empty() && Within(ckpt, job_dir);
      if (!job_dir.empty() && Within(job_dir, jobs_root) && fs::exists(job_dir, ec)) {
        const std::string user = OtherJobUsing(*jobs, j.id(), r.checkpoint_dir);
        if (own_folder && KeepsCheckpointsInFolder(ckpt, !user.empty(), request.checkpoints())) {
          d->add_removed_paths(absl::StrCat(job_dir.string(), " (all but its checkpoints)"));
          d->add_kept_paths(KeptCheckpoints(ckpt, user));
        } else {
          d->add_removed_paths(job_dir.string());
        }
      }
      if (!ckpt.empty() && !own_folder && fs::exists(ckpt, ec)) {
        const std::string user = OtherJobUsing(*jobs, j.id(), r.checkpoint_dir);
        if (request.checkpoints() && user.empty()) {
          d->add_removed_paths(absl::StrCat(ckpt.string(), " (what the job wrote there)"));
        } else {
          d->add_kept_paths(KeptCheckpoints(ckpt, user));
        }
      }
      continue;
    }
    absl::StatusOr<moe::v1::DeleteJobResponse> d =
        DeleteFinishedJob(store, jobs_root, j.id(), request.checkpoints());
    if (d.ok()) {
      *out.add_deleted() = *std::move(d);
    } else if (!absl::IsNotFound(d.status()) && !absl::IsFailedPrecondition(d.status())) {
      return d.status();  // a job deleted or restarted meanwhile is simply skipped
    }
  }
  return out;
}

}  // namespace moe::daemon
