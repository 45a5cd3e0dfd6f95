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
std::string ReportSecret(const grpc::ServerContextBase& context) {
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

grpc::ServerUnaryReactor* ReportServiceImpl::LastLogSeq(grpc::CallbackServerContext* context,
                                                       const moe::v1::WorkerHello* request,
                                                       moe::v1::ReportAck* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  absl::Status s = auth_->Check(*context);
  if (s.ok()) s = store_->GetJob(request->job_id()).status();
  if (s.ok()) {
    s = scheduler_->CheckReporter(request->job_id(), request->attempt(), request->rank(),
                                  request->world_size(), ReportSecret(*context));
  }
  if (s.ok()) s = FillAck(*request, response);
  reactor->Finish(ToGrpcStatus(s));
  return reactor;
}

absl::Status ReportServiceImpl::Hello(const grpc::ServerContextBase& context,
                                      const moe::v1::WorkerReport& msg, int64_t* max_step) {
  if (msg.kind_case() != moe::v1::WorkerReport::kHello) {
    return absl::InvalidArgumentError("the first message of a report stream must be a hello");
  }
  const moe::v1::WorkerHello& hello = msg.hello();
  if (hello.rank() < 0 || (hello.world_size() > 0 && hello.rank() >= hello.world_size())) {
    return absl::InvalidArgumentError(absl::StrCat("hello: rank ", hello.rank(),
                                                   " is outside world size ", hello.world_size()));
  }
  if (absl::Status s = scheduler_->OnWorkerHello(hello.job_id(), hello.attempt(), hello.rank(),
                                                 hello.world_size(), ReportSecret(context));
      !s.ok()) {
    return s;
  }
  absl::StatusOr<JobRecord> rec = store_->GetJob(hello.job_id());
  if (!rec.ok()) return rec.status();
  *max_step = rec->job.spec().train().steps();
  return absl::OkStatus();
}

absl::Status ReportServiceImpl::Store(const moe::v1::WorkerHello& hello, int64_t max_step,
                                      const moe::v1::WorkerReport& msg) {
  const std::string& job_id = hello.job_id();
  scheduler_->OnWorkerReport(job_id, hello.attempt(), hello.rank());
  switch (msg.kind_case()) {
    case moe::v1::WorkerReport::kMetrics:
      if (msg.metrics().step() < 0 || msg.metrics().step() > max_step) {
        return absl::InvalidArgumentError(absl::StrCat(
            "metric at step ", msg.metrics().step(), " for job ", job_id, ", which trains ",
            max_step, " steps: not a step this job can reach"));
      }
      return store_->AddMetric(job_id, hello.attempt(), msg.metrics());
    case moe::v1::WorkerReport::kLog:
      if (!scheduler_->CapturesOutput(job_id)) {
        moe::v1::LogLine line = msg.log();
        line.set_rank(hello.rank());
        return store_->AppendReportedLines(job_id, hello.attempt(), {line});
      }
      return absl::OkStatus();
    default:
      return absl::OkStatus();  // heartbeats (and a repeated hello) only keep the job alive
  }
}

namespace {

// One rank's report stream: read, check or store, read again. The reads are sequential, so one
// reaction at a time touches it; the store writes are short. When the worker closes its side
// the ack says what moed has; when the call is cancelled (the worker went away, or moed's
// shutdown) the pending read ends with ok = false and the stream finishes.
class ReportStream final : public grpc::ServerReadReactor<moe::v1::WorkerReport> {
 public:
  ReportStream(ReportServiceImpl* service, grpc::CallbackServerContext* context,
               moe::v1::ReportAck* response)
      : service_(service), context_(context), response_(response) {
    StartRead(&msg_);
  }

  void OnReadDone(bool ok) override {
    if (!ok) {
      if (!said_hello_) {
        return Finish(ToGrpcStatus(
            absl::InvalidArgumentError("empty report stream: send a hello first")));
      }
      return Finish(ToGrpcStatus(service_->FillAck(hello_, response_)));
    }
    absl::Status s;
    if (!said_hello_) {
      s = service_->Hello(*context_, msg_, &max_step_);
      if (s.ok()) {
        hello_ = msg_.hello();
        said_hello_ = true;
      }
    } else {
      s = service_->Store(hello_, max_step_, msg_);
    }
    if (!s.ok()) return Finish(ToGrpcStatus(s));
    StartRead(&msg_);
  }

  void OnDone() override { delete this; }

 private:
  ReportServiceImpl* const service_;
  grpc::CallbackServerContext* const context_;
  moe::v1::ReportAck* const response_;
  moe::v1::WorkerReport msg_;
  moe::v1::WorkerHello hello_;
  bool said_hello_ = false;
  int64_t max_step_ = 0;
};

class RefusedReport final : public grpc::ServerReadReactor<moe::v1::WorkerReport> {
 public:
  explicit RefusedReport(const grpc::Status& status) { Finish(status); }
  void OnDone() override { delete this; }
};

}  // namespace

grpc::ServerReadReactor<moe::v1::WorkerReport>* ReportServiceImpl::Report(
    grpc::CallbackServerContext* context, moe::v1::ReportAck* response) {
  if (absl::Status s = auth_->Check(*context); !s.ok()) {
    return new RefusedReport(ToGrpcStatus(s));
  }
  return new ReportStream(this, context, response);
}

}  // namespace moe::daemon
