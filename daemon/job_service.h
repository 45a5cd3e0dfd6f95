// JobServiceImpl: the gRPC JobService moectl talks to: submit (validated again here), get, list,
// cancel, delete and prune finished jobs, and log / metric streams that follow a job live until it
// ends.
#pragma once

#include <string>

#include "daemon/auth.h"
#include "daemon/job_store.h"
#include "daemon/launcher.h"
#include "daemon/scheduler.h"
#include "moe/v1/control.grpc.pb.h"

namespace moe::daemon {

class JobServiceImpl final : public moe::v1::JobService::Service {
 public:
  // launchers describe a job's launch handle in GetJob and ListJobs; jobs_root
  // (<state-dir>/jobs) bounds what DeleteJob and PruneJobs remove.
  JobServiceImpl(JobStore* store, Scheduler* scheduler, Launchers launchers,
                 const TokenAuth* auth, std::string jobs_root)
      : store_(store),
        scheduler_(scheduler),
        launchers_(launchers),
        auth_(auth),
        jobs_root_(std::move(jobs_root)) {}

  grpc::Status SubmitJob(grpc::ServerContext* context, const moe::v1::SubmitJobRequest* request,
                         moe::v1::Job* response) override;
  grpc::Status GetJob(grpc::ServerContext* context, const moe::v1::GetJobRequest* request,
                      moe::v1::Job* response) override;
  grpc::Status ListJobs(grpc::ServerContext* context, const moe::v1::ListJobsRequest* request,
                        moe::v1::ListJobsResponse* response) override;
  grpc::Status CancelJob(grpc::ServerContext* context, const moe::v1::CancelJobRequest* request,
                         moe::v1::Job* response) override;
  grpc::Status ResumeJob(grpc::ServerContext* context, const moe::v1::ResumeJobRequest* request,
                         moe::v1::Job* response) override;
  grpc::Status DeleteJob(grpc::ServerContext* context, const moe::v1::DeleteJobRequest* request,
                         moe::v1::DeleteJobResponse* response) override;
  grpc::Status PruneJobs(grpc::ServerContext* context, const moe::v1::PruneJobsRequest* request,
                         moe::v1::PruneJobsResponse* response) override;
  grpc::Status StreamLogs(grpc::ServerContext* context,
                          const moe::v1::StreamLogsRequest* request,
                          grpc::ServerWriter<moe::v1::LogLine>* writer) override;
  grpc::Status StreamMetrics(grpc::ServerContext* context,
                             const moe::v1::StreamMetricsRequest* request,
                             grpc::ServerWriter<moe::v1::MetricPoint>* writer) override;

 private:
  JobStore* const store_;
  Scheduler* const scheduler_;
  const Launchers launchers_;
  const TokenAuth* const auth_;
  const std::string jobs_root_;
};

}  // namespace moe::daemon
