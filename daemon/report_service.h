// ReportServiceImpl: the WorkerReportService each moe-worker rank streams to: hello, then
// metrics, log lines and heartbeats. Every message counts as a heartbeat for the scheduler.
// On gRPC's callback API: an open report stream is a reactor waiting for its next read, not a
// thread.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <tuple>
#include <vector>

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

  // Free bytes where a job's rank output files are written (statvfs of its state dir); tests
  // replace it to play a full disk. nullptr = statvfs.
  static void SetFreeSpaceForTest(std::function<int64_t(const std::string& dir)> free_space);

 private:
  // A captured job's reported lines (rank, attempt): the output file is the source, but it sits
  // on moed's state disk; while that disk is (nearly) full the rank's printed lines may never
  // reach the file. So a reported line is confirmed to the reporter only once it is kLag old
  // and the disk had room all along; lines the reporter sent while it had none are refused
  // (RESOURCE_EXHAUSTED: the reporter keeps them) and, once the disk has room again and the
  // reporter resends them, stored from the report under a "[moed]" line that says why.
  struct OutputWatch {
    std::string state_dir;
    int64_t acked = 0;  // lines confirmed to the reporter
    std::vector<std::pair<std::chrono::steady_clock::time_point, int64_t>> pending;  // healthy, aging
    int64_t outage_upto = 0;  // the last seq received while the disk was full (0: no outage)
    std::vector<moe::v1::LogLine> refill;  // the outage's lines resent, stored together
  };
  absl::Status WatchOutput(const moe::v1::WorkerHello& hello, const moe::v1::LogLine& line);
  // Stores w's refill (watch_mu_ held); the ack then passes the outage.
  absl::Status StoreRefill(const moe::v1::WorkerHello& hello, OutputWatch& w);
  OutputWatch& Watch(const moe::v1::WorkerHello& hello);  // watch_mu_ held

  std::mutex watch_mu_;
  std::map<std::tuple<std::string, int, int>, OutputWatch> watch_;

  JobStore* const store_;
  Scheduler* const scheduler_;
  const TokenAuth* const auth_;
};

}  // namespace moe::daemon
