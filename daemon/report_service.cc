// ReportServiceImpl: stores what workers send. Log lines come from one source only: when the
// launcher captures the ranks' output files (local), reported lines are dropped and the ack
// tells reporters not to send them; otherwise (slurm) they are stored, deduplicated by the
// reporter's own sequence numbers.
#include "daemon/report_service.h"

#include <vector>

#include "absl/strings/str_cat.h"
#include "daemon/status_util.h"

namespace moe::daemon {
namespace {

// The launch's secret a worker sends with every report (x-moe-report-secret metadata).
std::string ReportSecret(const grpc::ServerContext& context) {
  auto it = context.client_metadata().find(kReportSecretHeader);
  if (it == context.client_metadata().end()) return "";
  return std::string(it->second.data(), it->second.size());
}

}  // namespace

absl::Status ReportServiceImpl::FillAck(const moe::v1::WorkerHello& hello,
                                        moe::v1::ReportAck* ack) {
  absl::StatusOr<ReportCursor> cursor =
      store_->GetReportCursor(hello.job_id(), hello.rank(), hello.attempt());
  if (!cursor.ok()) return cursor.status();
  ack->set_last_log_seq(cursor->last_src_seq);
  ack->set_last_metric_step(cursor->last_metric_step);
  ack->set_logs_from_output(scheduler_->CapturesOutput(hello.job_id()));
  return absl::OkStatus();
}

grpc::Status ReportServiceImpl::LastLogSeq(grpc::ServerContext* context,
                                           const moe::v1::WorkerHello* request,
                                           moe::v1::ReportAck* response) {
  if (absl::Status s = auth_->Check(*context); !s.ok()) return ToGrpcStatus(s);
  if (absl::StatusOr<JobRecord> rec = store_->GetJob(request->job_id()); !rec.ok()) {
    return ToGrpcStatus(rec.status());
  }
  if (absl::Status s = scheduler_->CheckReporter(request->job_id(), request->attempt(),
                                                 request->rank(), request->world_size(),
                                                 ReportSecret(*context));
      !s.ok()) {
    return ToGrpcStatus(s);
  }
  return ToGrpcStatus(FillAck(*request, response));
}

grpc::Status ReportServiceImpl::Report(grpc::ServerContext* context,
                                       grpc::ServerReader<moe::v1::WorkerReport>* reader,
                                       moe::v1::ReportAck* response) {
  if (absl::Status s = auth_->Check(*context); !s.ok()) return ToGrpcStatus(s);
  moe::v1::WorkerReport msg;
  if (!reader->Read(&msg)) {
    return ToGrpcStatus(absl::InvalidArgumentError("empty report stream: send a hello first"));
  }
  if (msg.kind_case() != moe::v1::WorkerReport::kHello) {
    return ToGrpcStatus(
        absl::InvalidArgumentError("the first message of a report stream must be a hello"));
  }
  const moe::v1::WorkerHello hello = msg.hello();
  const std::string& job_id = hello.job_id();
  const int attempt = hello.attempt();
  if (hello.rank() < 0 || (hello.world_size() > 0 && hello.rank() >= hello.world_size())) {
    return ToGrpcStatus(absl::InvalidArgumentError(
        absl::StrCat("hello: rank ", hello.rank(), " is outside world size ",
                     hello.world_size())));
  }
  if (absl::Status s = scheduler_->OnWorkerHello(job_id, attempt, hello.rank(),
                                                 hello.world_size(), ReportSecret(*context));
      !s.ok()) {
    return ToGrpcStatus(s);
  }
  absl::StatusOr<JobRecord> rec = store_->GetJob(job_id);
  if (!rec.ok()) return ToGrpcStatus(rec.status());
  const int64_t max_step = rec->job.spec().train().steps();
  const bool captured = scheduler_->CapturesOutput(job_id);
  while (reader->Read(&msg)) {
    scheduler_->OnWorkerReport(job_id, attempt, hello.rank());
    absl::Status s;
    switch (msg.kind_case()) {
      case moe::v1::WorkerReport::kMetrics:
        if (msg.metrics().step() < 0 || msg.metrics().step() > max_step) {
          return ToGrpcStatus(absl::InvalidArgumentError(absl::StrCat(
              "metric at step ", msg.metrics().step(), " for job ", job_id, ", which trains ",
              max_step, " steps: not a step this job can reach")));
        }
        s = store_->AddMetric(job_id, attempt, msg.metrics());
        break;
      case moe::v1::WorkerReport::kLog:
        if (!captured) {
          moe::v1::LogLine line = msg.log();
          line.set_rank(hello.rank());
          s = store_->AppendReportedLines(job_id, attempt, {line});
        }
        break;
      default:
        break;  // heartbeats (and a repeated hello) only keep the job alive
    }
    if (!s.ok()) return ToGrpcStatus(s);
  }
  return ToGrpcStatus(FillAck(hello, response));
}

}  // namespace moe::daemon
