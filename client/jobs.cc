// moectl submit, list, status, cancel.
#include <fnmatch.h>

#include <algorithm>
#include <chrono>
#include <random>
#include <cstdio>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/time/time.h"
#include "client/commands.h"
#include "client/connection.h"
#include "client/expert_load.h"
#include "client/output.h"
#include "common/moed_channel.h"
#include "common/files.h"
#include "common/job_spec.h"

namespace moe::client {
namespace {

std::string FormatTime(int64_t unix_ms) {
  if (unix_ms <= 0) return "-";
  return absl::FormatTime("%Y-%m-%d %H:%M:%S", absl::FromUnixMillis(unix_ms),
                          absl::LocalTimeZone());
}

std::string Progress(const moe::v1::Job& j) {
  if (!j.has_latest()) return absl::StrCat("0/", j.spec().train().steps());
  return absl::StrCat(j.latest().step(), "/", j.spec().train().steps());
}

std::string Loss(const moe::v1::Job& j) {
  return j.has_latest() ? Fixed(j.latest().loss(), 4) : "-";
}

std::string Throughput(const moe::v1::Job& j) {
  return j.has_latest() && j.latest().tokens_per_s() > 0
             ? absl::StrFormat("%.0f", j.latest().tokens_per_s())
             : "-";
}

absl::StatusOr<std::vector<moe::v1::Job>> ListAll(moe::v1::JobService::Stub& stub,
                                                  const ClientConfig& c, grpc::Status* status) {
  grpc::ClientContext ctx;
  PrepareContext(ctx, c, 10);
  moe::v1::ListJobsResponse resp;
  *status = stub.ListJobs(&ctx, moe::v1::ListJobsRequest(), &resp);
  if (!status->ok()) return absl::UnknownError(status->error_message());
  return std::vector<moe::v1::Job>(resp.jobs().begin(), resp.jobs().end());
}

// How often moectl sends a submit whose answer did not come (each with the same request id).
constexpr int kSubmitAttempts = 3;

// An answer that never came leaves the outcome unknown: moed may have stored the job. A call cut
// off (UNAVAILABLE) counts only once moed was reached: without a connection the request was never
// sent.
bool OutcomeUnknown(const grpc::Status& s, bool reached) {
  const grpc::StatusCode c = s.error_code();
  return c == grpc::StatusCode::DEADLINE_EXCEEDED || c == grpc::StatusCode::CANCELLED ||
         c == grpc::StatusCode::UNKNOWN || (c == grpc::StatusCode::UNAVAILABLE && reached);
}

// A request id no other submit has: "moectl-" and 128 random bits in hex.
std::string NewRequestId() {
  std::random_device rd;
  std::string id = "moectl-";
  for (int i = 0; i < 4; ++i) absl::StrAppend(&id, absl::Hex(rd(), absl::kZeroPad8));
  return id;
}

void PrintJson(const std::vector<moe::v1::Job>& jobs) {
  Json out = Json::array();
  for (const moe::v1::Job& j : jobs) out.push_back(JobToJson(j));
  std::printf("%s\n", out.dump(2).c_str());
}

void PrintCsv(const std::vector<moe::v1::Job>& jobs) {
  std::printf("%s", CsvLine(JobCsvHeader()).c_str());
  for (const moe::v1::Job& j : jobs) std::printf("%s", CsvLine(JobCsvRow(j)).c_str());
}

void PrintDetail(const moe::v1::Job& j) {
  std::printf("job       %s (%s)\n", j.id().c_str(), j.spec().name().c_str());
  std::printf("state     %s\n", StateName(j.state()).c_str());
  if (!j.reason().empty()) std::printf("reason    %s\n", j.reason().c_str());
  const int64_t total = j.spec().train().steps();
  std::printf("step      %s", Progress(j).c_str());
  if (total > 0 && j.has_latest()) std::printf(" (%.1f%%)", 100.0 * j.latest().step() / total);
  std::printf("\n");
  if (j.has_latest()) {
    std::printf("loss      %s", Fixed(j.latest().loss(), 4).c_str());
    if (j.latest().has_val_loss()) std::printf("  val %s", Fixed(j.latest().val_loss(), 4).c_str());
    if (j.best_val_loss() > 0) std::printf("  best val %s", Fixed(j.best_val_loss(), 4).c_str());
    std::printf("\n");
  }
  std::printf("tokens/s  %s\n", Throughput(j).c_str());
  if (j.state() == moe::v1::JOB_STATE_RUNNING) {
    std::printf("ETA       %s\n", FormatDuration(EstimateSecondsLeft(j)).c_str());
  }
  std::printf("restarts  %d of %d\n", j.restarts(), j.spec().max_restarts());
  std::printf("ranks     %d", j.spec().resources().ranks());
  if (j.spec().resources().device() == moe::v1::DEVICE_CUDA) {
    std::printf(", device cuda%s%s", j.gpus().empty() ? "" : " on GPUs ",
                absl::StrJoin(j.gpus(), ",").c_str());
  }
  std::printf("\n");
  std::printf("%s", FormatExpertLoad(j, j.latest()).c_str());
  if (!j.slurm_job_id().empty()) {
    std::printf("slurm     job %s on %s\n", j.slurm_job_id().c_str(),
                j.node_list().empty() ? "(no nodes yet)" : j.node_list().c_str());
  }
  std::printf("created   %s\n", FormatTime(j.created_unix_ms()).c_str());
  std::printf("started   %s\n", FormatTime(j.started_unix_ms()).c_str());
  if (j.ended_unix_ms() > 0) std::printf("ended     %s\n", FormatTime(j.ended_unix_ms()).c_str());
  std::printf("dir       %s\n", j.state_dir().c_str());
}

constexpr size_t kReasonWidth = 60;

}  // namespace

int RunSubmit(const SubmitOptions& o) {
  const std::string& path = o.file;
  ParsedSpec parsed = LoadJobSpecFile(path);
  if (!parsed.ok()) {
    std::fprintf(stderr, "%s\n", FormatSpecErrors(parsed.errors).c_str());
    std::fprintf(stderr, "moectl: %s refused: %zu error%s; nothing was submitted\n", path.c_str(),
                 parsed.errors.size(), parsed.errors.size() == 1 ? "" : "s");
    return 2;
  }
  for (const SpecError& w : parsed.warnings) std::fprintf(stderr, "warning: %s\n", w.ToString().c_str());
  absl::StatusOr<ClientConfig> config = LoadClientConfig();
  if (!config.ok()) return FailConfig(config.status());
  moe::v1::SubmitJobRequest req;
  *req.mutable_spec() = parsed.spec;
  if (absl::StatusOr<std::string> text = ReadFile(path); text.ok()) req.set_spec_yaml(*text);
  std::shared_ptr<grpc::Channel> channel = NewMoedChannel(config->server);
  auto stub = moe::v1::JobService::NewStub(channel);
  if (!o.from_job.empty()) {
    if (!parsed.spec.model().init_from().empty()) {
      std::fprintf(stderr, "moectl submit: %s sets model.init_from and --from names a job; give one of them\n",
                   path.c_str());
      return 2;
    }
    grpc::Status gs;
    absl::StatusOr<moe::v1::Job> from = GetJob(*stub, *config, o.from_job, &gs);
    if (!from.ok()) return Fail(absl::StrCat("--from ", o.from_job, ": ", DescribeError(gs, *config)));
    // The worker reads the newest complete checkpoint there when the new job starts.
    req.mutable_spec()->mutable_model()->set_init_from(from->checkpoint_dir());
  }
  // Resends carry the same request id, so moed answers one that already arrived with its job
  // instead of queueing a second (SubmitJobRequest.request_id).
  req.set_request_id(o.request_id.empty() ? NewRequestId() : o.request_id);
  moe::v1::Job job;
  grpc::Status s;
  bool reached = false, unknown = false;  // unknown: some try may have queued the job
  for (int attempt = 0; attempt < kSubmitAttempts; ++attempt) {
    if (attempt > 0) std::this_thread::sleep_for(std::chrono::milliseconds(250 << attempt));
    grpc::ClientContext ctx;
    PrepareContext(ctx, *config, 30);
    reached = Connect(*channel, 10) || reached;
    s = stub->SubmitJob(&ctx, req, &job);
    unknown = unknown || OutcomeUnknown(s, reached);
    if (!OutcomeUnknown(s, reached)) break;  // an answer, or moed never reached: sending again changes nothing
  }
  if (!s.ok()) {
    std::string message = DescribeError(s, *config);
    // The checkpoint directory --from put into model.init_from is what moed's check names.
    if (!o.from_job.empty() && absl::StrContains(message, "model.init_from")) {
      message = absl::StrCat("--from ", o.from_job, " (model.init_from = its checkpoint directory ",
                             req.spec().model().init_from(), "): ", message);
    }
    return Fail(absl::StrCat(
        message, unknown
                     ? absl::StrCat("; moed may have queued the job before the call ended: the same command with "
                                    "--request-id ",
                                    req.request_id(), " answers with that job, or submits it if moed has none")
                     : ""));
  }
  std::printf("%s\n", job.id().c_str());
  FlushStdout();
  if (o.follow) return FollowLogs(job.id(), -1, 0, true);
  return 0;
}

int RunList(const ListOptions& o) {
  absl::StatusOr<ClientConfig> config = LoadClientConfig();
  if (!config.ok()) return FailConfig(config.status());
  auto stub = NewJobStub(*config);
  grpc::Status s;
  absl::StatusOr<std::vector<moe::v1::Job>> all = ListAll(*stub, *config, &s);
  if (!all.ok()) return Fail(DescribeError(s, *config));
  std::vector<moe::v1::Job> jobs;
  for (const moe::v1::Job& j : *all) {
    if (!o.states.empty() &&
        std::find(o.states.begin(), o.states.end(), StateName(j.state())) == o.states.end()) {
      continue;
    }
    if (!o.name_pattern.empty() && fnmatch(o.name_pattern.c_str(), j.spec().name().c_str(), 0) != 0) {
      continue;
    }
    jobs.push_back(j);
  }
  // moed lists in id order: the newest N are the last N.
  if (o.limit > 0 && jobs.size() > static_cast<size_t>(o.limit)) {
    jobs.erase(jobs.begin(), jobs.end() - o.limit);
  }
  if (o.output == OutputFormat::kJson) {
    PrintJson(jobs);
    return 0;
  }
  if (o.output == OutputFormat::kCsv) {
    PrintCsv(jobs);
    return 0;
  }
  std::printf("%-10s %-20s %-11s %5s %-19s %s\n", "ID", "NAME", "STATE", "RANKS", "CREATED",
              "REASON");
  for (const moe::v1::Job& j : jobs) {
    std::printf("%-10s %-20s %-11s %5d %-19s %s\n", j.id().c_str(), j.spec().name().c_str(),
                StateName(j.state()).c_str(), j.spec().resources().ranks(),
                FormatTime(j.created_unix_ms()).c_str(), Clip(j.reason(), kReasonWidth).c_str());
  }
  return 0;
}

int RunStatus(const StatusOptions& o) {
  absl::StatusOr<ClientConfig> config = LoadClientConfig();
  if (!config.ok()) return FailConfig(config.status());
  auto stub = NewJobStub(*config);
  grpc::Status s;
  std::vector<moe::v1::Job> jobs;
  if (o.ids.empty()) {
    absl::StatusOr<std::vector<moe::v1::Job>> all = ListAll(*stub, *config, &s);
    if (!all.ok()) return Fail(DescribeError(s, *config));
    jobs = *std::move(all);
  } else {
    for (const std::string& id : o.ids) {
      absl::StatusOr<moe::v1::Job> job = GetJob(*stub, *config, id, &s);
      if (!job.ok()) return Fail(DescribeError(s, *config));
      jobs.push_back(*std::move(job));
    }
  }
  if (o.output == OutputFormat::kJson) {
    PrintJson(jobs);
    return 0;
  }
  if (o.output == OutputFormat::kCsv) {
    PrintCsv(jobs);
    return 0;
  }
  if (!o.ids.empty()) {
    for (size_t i = 0; i < jobs.size(); ++i) {
      if (i > 0) std::printf("\n");
      PrintDetail(jobs[i]);
    }
    return 0;
  }
  std::printf("%-10s %-16s %-11s %-11s %9s %9s %7s %8s %s\n", "ID", "NAME", "STATE", "STEP",
              "LOSS", "TOK/S", "ETA", "RESTARTS", "REASON");
  for (const moe::v1::Job& j : jobs) {
    std::printf("%-10s %-16s %-11s %-11s %9s %9s %7s %8d %s\n", j.id().c_str(),
                j.spec().name().c_str(), StateName(j.state()).c_str(), Progress(j).c_str(),
                Loss(j).c_str(), Throughput(j).c_str(),
                j.state() == moe::v1::JOB_STATE_RUNNING
                    ? FormatDuration(EstimateSecondsLeft(j)).c_str()
                    : "-",
                j.restarts(), Clip(j.reason(), kReasonWidth).c_str());
  }
  return 0;
}

int RunResume(const ResumeOptions& o) {
  absl::StatusOr<ClientConfig> config = LoadClientConfig();
  if (!config.ok()) return FailConfig(config.status());
  auto stub = NewJobStub(*config);
  grpc::ClientContext ctx;
  PrepareContext(ctx, *config, 30);
  moe::v1::ResumeJobRequest req;
  req.set_id(o.id);
  req.set_steps(o.steps);
  moe::v1::Job job;
  grpc::Status s = stub->ResumeJob(&ctx, req, &job);
  if (!s.ok()) return Fail(DescribeError(s, *config));
  std::printf("%s %s (%s)\n", job.id().c_str(), StateName(job.state()).c_str(), job.reason().c_str());
  FlushStdout();
  if (o.follow) return FollowLogs(job.id(), -1, 0, true);
  return 0;
}

int RunCancel(const CancelOptions& o) {
  const double wait_s = o.wait_s;
  absl::StatusOr<ClientConfig> config = LoadClientConfig();
  if (!config.ok()) return FailConfig(config.status());
  auto stub = NewJobStub(*config);
  const std::string& id = o.id;
  moe::v1::CancelJobRequest req;
  req.set_id(id);
  moe::v1::Job job;
  // A cancel is idempotent (a second one answers with the job as it is), so a connection that
  // fails once is tried again for about a second before moed counts as unreachable, as the wait
  // below rides out an unreachable moed between its polls.
  grpc::Status s;
  for (int attempt = 0; attempt < 6; ++attempt) {
    if (attempt > 0) std::this_thread::sleep_for(std::chrono::milliseconds(200));
    grpc::ClientContext ctx;
    PrepareContext(ctx, *config, 10);
    s = stub->CancelJob(&ctx, req, &job);
    if (s.error_code() != grpc::StatusCode::UNAVAILABLE) break;
  }
  if (!s.ok()) return Fail(DescribeError(s, *config));
  if (o.no_wait) {
    std::printf("%s %s (%s)\n", id.c_str(), StateName(job.state()).c_str(), job.reason().c_str());
    return 0;
  }
  // CANCELLED comes once no process of the job is left (SIGTERM, grace, SIGKILL).
  const auto deadline = std::chrono::steady_clock::now() +
                        std::chrono::milliseconds(static_cast<int64_t>(wait_s * 1000));
  // moed gone meanwhile: said once; the cancel it recorded stands for the next moed.
  bool unreachable = false;
  while (job.state() != moe::v1::JOB_STATE_CANCELLED && job.state() != moe::v1::JOB_STATE_FAILED &&
         job.state() != moe::v1::JOB_STATE_SUCCEEDED) {
    if (std::chrono::steady_clock::now() > deadline) {
      if (unreachable) {
        return Fail(absl::StrCat("moed at ", config->server, " is still unreachable after ", wait_s, " s, with ", id,
                                 " last seen ", StateName(job.state()), "; the cancel is recorded, and moed stops "
                                 "the job when it runs again (moectl status ", id, ")"));
      }
      return Fail(absl::StrCat(id, " is still ", StateName(job.state()), " after ", wait_s,
                               " s; moed keeps stopping it (moectl status ", id, ")"));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    absl::StatusOr<moe::v1::Job> now = GetJob(*stub, *config, id, &s);
    if (now.ok()) {
      job = *std::move(now);
      if (unreachable) std::fprintf(stderr, "moectl: moed at %s answers again\n", config->server.c_str());
      unreachable = false;
    } else if (s.error_code() != grpc::StatusCode::UNAVAILABLE) {
      return Fail(DescribeError(s, *config));
    } else if (!unreachable) {
      std::fprintf(stderr,
                   "moectl: lost moed at %s; the cancel is recorded (a restarted moed finishes it); waiting "
                   "for it until --wait runs out\n",
                   config->server.c_str());
      unreachable = true;
    }
  }
  if (job.state() == moe::v1::JOB_STATE_CANCELLED) {
    std::printf("%s %s\n", id.c_str(), StateName(job.state()).c_str());
    return 0;
  }
  // It ended otherwise before the cancel took (its last step, a failure): why, in its words.
  std::printf("%s %s (%s)\n", id.c_str(), StateName(job.state()).c_str(), job.reason().c_str());
  return 1;
}

}  // namespace moe::client
