// JobServiceImpl: each RPC checks the token, does its work through absl::Status, and converts
// once at the end. Streams read the store by rowid cursor and sleep on its change signal.
#include "daemon/job_service.h"

#include <chrono>
#include <map>

#include "absl/strings/str_cat.h"
#include "common/job_spec.h"
#include "daemon/job_cleanup.h"
#include "daemon/status_util.h"

namespace moe::daemon {
namespace {

constexpr int kBatch = 1000;
constexpr auto kFollowWait = std::chrono::milliseconds(500);

absl::Status CheckId(const std::string& id) {
  if (id.empty()) {
    return absl::InvalidArgumentError("id: the job id is empty (moectl list shows the jobs)");
  }
  return absl::OkStatus();
}

}  // namespace

grpc::Status JobServiceImpl::SubmitJob(grpc::ServerContext* context,
                                       const moe::v1::SubmitJobRequest* request,
                                       moe::v1::Job* response) {
  if (absl::Status s = auth_->Check(*context); !s.ok()) return ToGrpcStatus(s);
  std::vector<SpecError> errors = ValidateJobSpec(request->spec());
  if (!errors.empty()) {
    return ToGrpcStatus(absl::InvalidArgumentError(
        absl::StrCat("invalid job spec:\n", FormatSpecErrors(errors))));
  }
  absl::StatusOr<moe::v1::Job> job = scheduler_->Submit(request->spec(), request->spec_yaml());
  if (!job.ok()) return ToGrpcStatus(job.status());
  *response = *std::move(job);
  return grpc::Status::OK;
}

grpc::Status JobServiceImpl::GetJob(grpc::ServerContext* context,
                                    const moe::v1::GetJobRequest* request,
                                    moe::v1::Job* response) {
  if (absl::Status s = auth_->Check(*context); !s.ok()) return ToGrpcStatus(s);
  if (absl::Status s = CheckId(request->id()); !s.ok()) return ToGrpcStatus(s);
  absl::StatusOr<JobRecord> rec = store_->GetJob(request->id());
  if (!rec.ok()) return ToGrpcStatus(rec.status());
  *response = rec->job;
  launchers_.For(response->spec())->Describe(rec->launch_handle, response);
  return grpc::Status::OK;
}

grpc::Status JobServiceImpl::ListJobs(grpc::ServerContext* context,
                                      const moe::v1::ListJobsRequest* request,
                                      moe::v1::ListJobsResponse* response) {
  if (absl::Status s = auth_->Check(*context); !s.ok()) return ToGrpcStatus(s);
  absl::StatusOr<std::vector<JobRecord>> jobs = store_->ListJobs();
  if (!jobs.ok()) return ToGrpcStatus(jobs.status());
  for (JobRecord& r : *jobs) {
    moe::v1::Job* job = response->add_jobs();
    *job = std::move(r.job);
    launchers_.For(job->spec())->Describe(r.launch_handle, job);
  }
  return grpc::Status::OK;
}

grpc::Status JobServiceImpl::CancelJob(grpc::ServerContext* context,
                                       const moe::v1::CancelJobRequest* request,
                                       moe::v1::Job* response) {
  if (absl::Status s = auth_->Check(*context); !s.ok()) return ToGrpcStatus(s);
  if (absl::Status s = CheckId(request->id()); !s.ok()) return ToGrpcStatus(s);
  absl::StatusOr<moe::v1::Job> job = scheduler_->Cancel(request->id());
  if (!job.ok()) return ToGrpcStatus(job.status());
  *response = *std::move(job);
  return grpc::Status::OK;
}

grpc::Status JobServiceImpl::ResumeJob(grpc::ServerContext* context,
                                       const moe::v1::ResumeJobRequest* request,
                                       moe::v1::Job* response) {
  if (absl::Status s = auth_->Check(*context); !s.ok()) return ToGrpcStatus(s);
  if (absl::Status s = CheckId(request->id()); !s.ok()) return ToGrpcStatus(s);
  if (request->steps() < 0) {
    return ToGrpcStatus(absl::InvalidArgumentError("steps: must be 0 (keep the job's) or a step count"));
  }
  absl::StatusOr<moe::v1::Job> job = scheduler_->Resume(request->id(), request->steps());
  if (!job.ok()) return ToGrpcStatus(job.status());
  *response = *std::move(job);
  return grpc::Status::OK;
}

grpc::Status JobServiceImpl::DeleteJob(grpc::ServerContext* context,
                                       const moe::v1::DeleteJobRequest* request,
                                       moe::v1::DeleteJobResponse* response) {
  if (absl::Status s = auth_->Check(*context); !s.ok()) return ToGrpcStatus(s);
  if (absl::Status s = CheckId(request->id()); !s.ok()) return ToGrpcStatus(s);
  absl::StatusOr<moe::v1::DeleteJobResponse> out =
      DeleteFinishedJob(*store_, jobs_root_, request->id(), request->checkpoints());
  if (!out.ok()) return ToGrpcStatus(out.status());
  *response = *std::move(out);
  return grpc::Status::OK;
}

grpc::Status JobServiceImpl::PruneJobs(grpc::ServerContext* context,
                                       const moe::v1::PruneJobsRequest* request,
                                       moe::v1::PruneJobsResponse* response) {
  if (absl::Status s = auth_->Check(*context); !s.ok()) return ToGrpcStatus(s);
  absl::StatusOr<moe::v1::PruneJobsResponse> out = daemon::PruneJobs(*store_, jobs_root_, *request);
  if (!out.ok()) return ToGrpcStatus(out.status());
  *response = *std::move(out);
  return grpc::Status::OK;
}

grpc::Status JobServiceImpl::StreamLogs(grpc::ServerContext* context,
                                        const moe::v1::StreamLogsRequest* request,
                                        grpc::ServerWriter<moe::v1::LogLine>* writer) {
  if (absl::Status s = auth_->Check(*context); !s.ok()) return ToGrpcStatus(s);
  const std::string& id = request->id();
  if (absl::Status s = CheckId(id); !s.ok()) return ToGrpcStatus(s);
  if (request->rank() < -1) {
    return ToGrpcStatus(absl::InvalidArgumentError(
        absl::StrCat("rank: ", request->rank(), " is not a rank (use -1 for every rank)")));
  }
  if (request->tail() < 0) {
    return ToGrpcStatus(absl::InvalidArgumentError("tail: must be 0 (all) or a line count"));
  }
  if (absl::StatusOr<JobRecord> rec = store_->GetJob(id); !rec.ok()) {
    return ToGrpcStatus(rec.status());
  } else if (request->rank() >= rec->job.spec().resources().ranks()) {
    return ToGrpcStatus(absl::InvalidArgumentError(
        absl::StrCat("rank: job ", id, " has ranks 0..", rec->job.spec().resources().ranks() - 1,
                     ", not ", request->rank())));
  }
  std::map<int, int64_t> after(request->after_seq().begin(), request->after_seq().end());
  if (request->tail() > 0) {
    absl::StatusOr<std::map<int, int64_t>> last = store_->LastSeqs(id);
    if (!last.ok()) return ToGrpcStatus(last.status());
    for (const auto& [rank, seq] : *last) {
      after[rank] = std::max(after[rank], seq - request->tail());
    }
  }
  int64_t cursor = 0;
  while (true) {
    const uint64_t version = store_->Version();
    absl::StatusOr<std::vector<StoredLogLine>> lines = store_->ReadLogs(id, cursor, kBatch);
    if (!lines.ok()) return ToGrpcStatus(lines.status());
    for (const StoredLogLine& l : *lines) {
      cursor = l.rowid;
      const int rank = l.line.rank();
      if (request->rank() >= 0 && rank != request->rank()) continue;
      auto it = after.find(rank);
      if (it != after.end() && l.line.seq() <= it->second) continue;
      if (!writer->Write(l.line)) return grpc::Status::OK;  // the reader went away
      after[rank] = l.line.seq();
    }
    if (static_cast<int>(lines->size()) == kBatch) continue;
    if (!request->follow()) return grpc::Status::OK;
    absl::StatusOr<JobRecord> rec = store_->GetJob(id);
    if (!rec.ok()) return ToGrpcStatus(rec.status());
    if (IsFinal(rec->job.state())) {
      // A job's lines are all stored before its final state: one more read finishes it.
      absl::StatusOr<std::vector<StoredLogLine>> rest = store_->ReadLogs(id, cursor, 1);
      if (rest.ok() && rest->empty()) return grpc::Status::OK;
      continue;
    }
    if (context->IsCancelled()) return grpc::Status(grpc::StatusCode::CANCELLED, "cancelled");
    store_->WaitForChange(version, std::chrono::steady_clock::now() + kFollowWait);
  }
}

grpc::Status JobServiceImpl::StreamMetrics(grpc::ServerContext* context,
                                           const moe::v1::StreamMetricsRequest* request,
                                           grpc::ServerWriter<moe::v1::MetricPoint>* writer) {
  if (absl::Status s = auth_->Check(*context); !s.ok()) return ToGrpcStatus(s);
  const std::string& id = request->id();
  if (absl::Status s = CheckId(id); !s.ok()) return ToGrpcStatus(s);
  if (absl::StatusOr<JobRecord> rec = store_->GetJob(id); !rec.ok()) {
    return ToGrpcStatus(rec.status());
  }
  int64_t cursor = 0;
  while (true) {
    const uint64_t version = store_->Version();
    absl::StatusOr<std::vector<StoredMetric>> points = store_->ReadMetrics(id, cursor, kBatch);
    if (!points.ok()) return ToGrpcStatus(points.status());
    for (const StoredMetric& m : *points) {
      cursor = m.rowid;
      if (m.point.step() <= request->after_step()) continue;
      if (!writer->Write(m.point)) return grpc::Status::OK;
    }
    if (static_cast<int>(points->size()) == kBatch) continue;
    if (!request->follow()) return grpc::Status::OK;
    absl::StatusOr<JobRecord> rec = store_->GetJob(id);
    if (!rec.ok()) return ToGrpcStatus(rec.status());
    if (IsFinal(rec->job.state())) {
      absl::StatusOr<std::vector<StoredMetric>> rest = store_->ReadMetrics(id, cursor, 1);
      if (rest.ok() && rest->empty()) return grpc::Status::OK;
      continue;
    }
    if (context->IsCancelled()) return grpc::Status(grpc::StatusCode::CANCELLED, "cancelled");
    store_->WaitForChange(version, std::chrono::steady_clock::now() + kFollowWait);
  }
}

}  // namespace moe::daemon
