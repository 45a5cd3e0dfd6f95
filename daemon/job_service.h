// JobServiceImpl: the gRPC JobService moectl talks to: submit (validated again here), get, list,
// cancel, delete and prune finished jobs, and log / metric streams that follow a job live until it
// ends. On gRPC's callback API: a stream is a reactor the FollowHub pumps, so a follower costs
// no thread.
#pragma once

#include <string>

#include "daemon/auth.h"
#include "daemon/follow_hub.h"
#include "daemon/job_store.h"
#include "daemon/launcher.h"
#include "daemon/scheduler.h"
#include "moe/v1/control.grpc.pb.h"

namespace moe::daemon {

class JobServiceImpl final : public moe::v1::JobService::CallbackService {
 public:
  // launchers describe a job's launch handle in GetJob and ListJobs; jobs_root
  // (<state-dir>/jobs) bounds what DeleteJob and PruneJobs remove; hub pumps the streams.
  JobServiceImpl(JobStore* store, Scheduler* scheduler, Launchers launchers,
                 const TokenAuth* auth, std::string jobs_root, FollowHub* hub)
      : store_(store),
        scheduler_(scheduler),
        launchers_(launchers),
        auth_(auth),
        jobs_root_(std::move(jobs_root)),
        hub_(hub) {}

  grpc::ServerUnaryReactor* SubmitJob(grpc::CallbackServerContext* context,
                                      const moe::v1::SubmitJobRequest* request,
                                      moe::v1::Job* response) override;
  grpc::ServerUnaryReactor* GetJob(grpc::CallbackServerContext* context,
                                   const moe::v1::GetJobRequest* request,
                                   moe::v1::Job* response) override;
  grpc::ServerUnaryReactor* ListJobs(grpc::CallbackServerContext* context,
                                     const moe::v1::ListJobsRequest* request,
                                     moe::v1::ListJobsResponse* response) override;
  grpc::ServerUnaryReactor* CancelJob(grpc::CallbackServerContext* context,
                                      const moe::v1::CancelJobRequest* request,
                                      moe::v1::Job* response) override;
  grpc::ServerUnaryReactor* ResumeJob(grpc::CallbackServerContext* context,
                                      const moe::v1::ResumeJobRequest* request,
                                      moe::v1::Job* response) override;
  grpc::ServerUnaryReactor* DeleteJob(grpc::CallbackServerContext* context,
                                      const moe::v1::DeleteJobRequest* request,
                                      moe::v1::DeleteJobResponse* response) override;
  grpc::ServerUnaryReactor* PruneJobs(grpc::CallbackServerContext* context,
                                      const moe::v1::PruneJobsRequest* request,
                                      moe::v1::PruneJobsResponse* response) override;
  grpc::ServerWriteReactor<moe::v1::LogLine>* StreamLogs(
      grpc::CallbackServerContext* context, const moe::v1::StreamLogsRequest* request) override;
  grpc::ServerWriteReactor<moe::v1::MetricPoint>* StreamMetrics(
      grpc::CallbackServerContext* context,
      const moe::v1::StreamMetricsRequest* request) override;

 private:
  // The unary calls' work; each answers once through its reactor.
  grpc::Status Submit(const grpc::ServerContextBase& context,
                      const moe::v1::SubmitJobRequest& request, moe::v1::Job* response);
  grpc::Status Get(const grpc::ServerContextBase& context, const moe::v1::GetJobRequest& request,
                   moe::v1::Job* response);
  grpc::Status List(const grpc::ServerContextBase& context, moe::v1::ListJobsResponse* response);
  grpc::Status Cancel(const grpc::ServerContextBase& context,
                      const moe::v1::CancelJobRequest& request, moe::v1::Job* response);
  grpc::Status Resume(const grpc::ServerContextBase& context,
                      const moe::v1::ResumeJobRequest& request, moe::v1::Job* response);
  grpc::Status Delete(const grpc::ServerContextBase& context,
                      const moe::v1::DeleteJobRequest& request,
                      moe::v1::DeleteJobResponse* response);
  grpc::Status Prune(const grpc::ServerContextBase& context,
                     const moe::v1::PruneJobsRequest& request,
                     moe::v1::PruneJobsResponse* response);

  JobStore* const store_;
  Scheduler* const scheduler_;
  const Launchers launchers_;
  const TokenAuth* const auth_;
  const std::string jobs_root_;
  FollowHub* const hub_;
};

}  // namespace moe::daemon
