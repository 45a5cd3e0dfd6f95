// ReportServiceImpl: the WorkerReportService each moe-worker rank streams to: hello, then
// metrics, log lines and heartbeats. Every message counts as a heartbeat for the scheduler.
#pragma once

#include "daemon/auth.h"
#include "daemon/job_store.h"
#include "daemon/scheduler.h"
#include "moe/v1/worker.grpc.pb.h"

namespace moe::daemon {

// The metadata key of a launch's report secret (worker/report/reporter.cc sends it).
inline constexpr char kReportSecretHeader[] = "x-moe-report-secret";

class ReportServiceImpl final : public moe::v1::WorkerReportService::Service {
 public:
  ReportServiceImpl(JobStore* store, Scheduler* scheduler, const TokenAuth* auth)
      : store_(store), scheduler_(scheduler), auth_(auth) {}

  grpc::Status Report(grpc::ServerContext* context,
                      grpc::ServerReader<moe::v1::WorkerReport>* reader,
                      moe::v1::ReportAck* response) override;
  grpc::Status LastLogSeq(grpc::ServerContext* context, const moe::v1::WorkerHello* request,
                          moe::v1::ReportAck* response) override;

 private:
  absl::Status FillAck(const moe::v1::WorkerHello& hello, moe::v1::ReportAck* ack);

  JobStore* const store_;
  Scheduler* const scheduler_;
  const TokenAuth* const auth_;
};

}  // namespace moe::daemon
