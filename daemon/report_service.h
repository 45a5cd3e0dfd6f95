// ReportServiceImpl: the WorkerReportService each moe-worker rank streams to: hello, then
// metrics, log lines and heartbeats. Every message counts as a heartbeat for the scheduler.
// On gRPC's callback API: an open report stream is a reactor waiting for its next read, not a
// thread.
#pragma once

#include "daemon/auth.h"
#include "daemon/job_store.h"
#include "daemon/scheduler.h"
#include "moe/v1/worker.grpc.pb.h"

namespace moe::daemon {

// The metadata key of a launch's report secret (worker/report/reporter.cc sends it).
inline constexpr char kReportSecretHeader[] = "x-moe-report-secret";

class ReportServiceImpl final : public moe::v1::WorkerReportService::CallbackService {
 public:
  ReportServiceImpl(JobStore* store, Scheduler* scheduler, const TokenAuth* auth)
      : store_(store), scheduler_(scheduler), auth_(auth) {}

  grpc::ServerReadReactor<moe::v1::WorkerReport>* Report(grpc::CallbackServerContext* context,
                                                         moe::v1::ReportAck* response) override;
  grpc::ServerUnaryReactor* LastLogSeq(grpc::CallbackServerContext* context,
                                       const moe::v1::WorkerHello* request,
                                       moe::v1::ReportAck* response) override;

  // The report stream's steps (ReportStream in report_service.cc calls them).
  // The first message: a hello from a rank of the attempt moed runs, with its secret.
  absl::Status Hello(const grpc::ServerContextBase& context, const moe::v1::WorkerReport& msg,
                     int64_t* max_step);
  // Every later message: stored (metrics; log lines unless moed captures the output files).
  absl::Status Store(const moe::v1::WorkerHello& hello, int64_t max_step,
                     const moe::v1::WorkerReport& msg);
  absl::Status FillAck(const moe::v1::WorkerHello& hello, moe::v1::ReportAck* ack);

 private:

  JobStore* const store_;
  Scheduler* const scheduler_;
  const TokenAuth* const auth_;
};

}  // namespace moe::daemon
