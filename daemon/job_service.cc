// JobServiceImpl: each RPC checks the token, does its work through absl::Status, and converts
// once at the end. Streams are reactors that read the store by rowid cursor on the FollowHub's
// thread and park there until the store changes.
#include "daemon/job_service.h"

#include <algorithm>
#include <atomic>
#include <deque>
#include <map>
#include <mutex>
#include <optional>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/job_spec.h"
#include "daemon/job_cleanup.h"
#include "common/job_id.h"
#include "daemon/status_util.h"

namespace moe::daemon {
namespace {

constexpr int kBatch = 1000;

grpc::ServerUnaryReactor* Answer(grpc::CallbackServerContext* context, const grpc::Status& status) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  reactor->Finish(status);
  return reactor;
}

}  // namespace

grpc::Status JobServiceImpl::Submit(const grpc::ServerContextBase& context,
                                    const moe::v1::SubmitJobRequest& request,
                                    moe::v1::Job* response) {
  if (absl::Status s = auth_->Check(context); !s.ok()) return ToGrpcStatus(s);
  std::vector<SpecError> errors = ValidateJobSpec(request.spec());
  if (!errors.empty()) {
    return ToGrpcStatus(absl::InvalidArgumentError(
        absl::StrCat("invalid job spec:\n", FormatSpecErrors(errors))));
  }
  // A submit sent again (its request_id used before) answers with the job the first one created,
  // as Get would. Of two sent at once, Scheduler::Submit answers the second (it looks again once
  // the submits' lock is its).
  const std::string& request_id = request.request_id();
  if (!request_id.empty()) {
    if (absl::Status s = CheckRequestId(request_id, "request_id"); !s.ok()) return ToGrpcStatus(s);
  }
  if (!request_id.empty()) {
    absl::StatusOr<std::optional<JobRecord>> first = store_->FindSubmit(request_id, request.spec());
    if (!first.ok()) return ToGrpcStatus(first.status());
    if (first->has_value()) {
      *response = (*first)->job;
      scheduler_->ShowUnstored(response);
      launchers_.For(response->spec())->Describe((*first)->launch_handle, response);
      return grpc::Status::OK;
    }
  }
  absl::StatusOr<moe::v1::Job> job = scheduler_->Submit(request.spec(), request.spec_yaml(), request_id);
  if (!job.ok()) return ToGrpcStatus(job.status());
  *response = *std::move(job);
  return grpc::Status::OK;
}

grpc::Status JobServiceImpl::Get(const grpc::ServerContextBase& context,
                                 const moe::v1::GetJobRequest& request, moe::v1::Job* response) {
  if (absl::Status s = auth_->Check(context); !s.ok()) return ToGrpcStatus(s);
  if (absl::Status s = CheckJobId(request.id()); !s.ok()) return ToGrpcStatus(s);
  absl::StatusOr<JobRecord> rec = store_->GetJob(request.id());
  if (!rec.ok()) return ToGrpcStatus(rec.status());
  *response = rec->job;
  scheduler_->ShowUnstored(response);
  launchers_.For(response->spec())->Describe(rec->launch_handle, response);
  return grpc::Status::OK;
}

grpc::Status JobServiceImpl::List(const grpc::ServerContextBase& context,
                                  moe::v1::ListJobsResponse* response) {
  if (absl::Status s = auth_->Check(context); !s.ok()) return ToGrpcStatus(s);
  absl::StatusOr<std::vector<JobRecord>> jobs = store_->ListJobs();
  if (!jobs.ok()) return ToGrpcStatus(jobs.status());
  for (JobRecord& r : *jobs) {
    moe::v1::Job* job = response->add_jobs();
    *job = std::move(r.job);
    scheduler_->ShowUnstored(job);
    launchers_.For(job->spec())->Describe(r.launch_handle, job);
  }
  return grpc::Status::OK;
}

grpc::Status JobServiceImpl::Cancel(const grpc::ServerContextBase& context,
                                    const moe::v1::CancelJobRequest& request,
                                    moe::v1::Job* response) {
  if (absl::Status s = auth_->Check(context); !s.ok()) return ToGrpcStatus(s);
  if (absl::Status s = CheckJobId(request.id()); !s.ok()) return ToGrpcStatus(s);
  absl::StatusOr<moe::v1::Job> job = scheduler_->Cancel(request.id());
  if (!job.ok()) return ToGrpcStatus(job.status());
  *response = *std::move(job);
  return grpc::Status::OK;
}

grpc::Status JobServiceImpl::Resume(const grpc::ServerContextBase& context,
                                    const moe::v1::ResumeJobRequest& request, moe::v1::Job* response) {
  if (absl::Status s = auth_->Check(context); !s.ok()) return ToGrpcStatus(s);
  if (absl::Status s = CheckJobId(request.id()); !s.ok()) return ToGrpcStatus(s);
  if (request.steps() < 0) {
    return ToGrpcStatus(absl::InvalidArgumentError("steps: must be 0 (keep the job's) or a step count"));
  }
  absl::StatusOr<moe::v1::Job> job = scheduler_->Resume(request.id(), request.steps());
  if (!job.ok()) return ToGrpcStatus(job.status());
  *response = *std::move(job);
  return grpc::Status::OK;
}

grpc::Status JobServiceImpl::Delete(const grpc::ServerContextBase& context,
                                    const moe::v1::DeleteJobRequest& request,
                                    moe::v1::DeleteJobResponse* response) {
  if (absl::Status s = auth_->Check(context); !s.ok()) return ToGrpcStatus(s);
  if (absl::Status s = CheckJobId(request.id()); !s.ok()) return ToGrpcStatus(s);
  std::unique_lock<std::mutex> no_submits = scheduler_->HoldSubmits();
  absl::StatusOr<moe::v1::DeleteJobResponse> out =
      DeleteFinishedJob(*store_, jobs_root_, request.id(), request.checkpoints());
  if (!out.ok()) return ToGrpcStatus(out.status());
  *response = *std::move(out);
  return grpc::Status::OK;
}

grpc::Status JobServiceImpl::Prune(const grpc::ServerContextBase& context,
                                   const moe::v1::PruneJobsRequest& request,
                                   moe::v1::PruneJobsResponse* response) {
  if (absl::Status s = auth_->Check(context); !s.ok()) return ToGrpcStatus(s);
  std::unique_lock<std::mutex> no_submits = scheduler_->HoldSubmits();
  absl::StatusOr<moe::v1::PruneJobsResponse> out = daemon::PruneJobs(*store_, jobs_root_, request);
  if (!out.ok()) return ToGrpcStatus(out.status());
  *response = *std::move(out);
  return grpc::Status::OK;
}

grpc::ServerUnaryReactor* JobServiceImpl::SubmitJob(grpc::CallbackServerContext* context,
                                                    const moe::v1::SubmitJobRequest* request,
                                                    moe::v1::Job* response) {
  return Answer(context, Submit(*context, *request, response));
}

grpc::ServerUnaryReactor* JobServiceImpl::GetJob(grpc::CallbackServerContext* context,
                                                 const moe::v1::GetJobRequest* request,
                                                 moe::v1::Job* response) {
  return Answer(context, Get(*context, *request, response));
}

grpc::ServerUnaryReactor* JobServiceImpl::ListJobs(grpc::CallbackServerContext* context,
                                                   const moe::v1::ListJobsRequest* /*request*/,
                                                   moe::v1::ListJobsResponse* response) {
  return Answer(context, List(*context, response));
}

grpc::ServerUnaryReactor* JobServiceImpl::CancelJob(grpc::CallbackServerContext* context,
                                                    const moe::v1::CancelJobRequest* request,
                                                    moe::v1::Job* response) {
  return Answer(context, Cancel(*context, *request, response));
}

grpc::ServerUnaryReactor* JobServiceImpl::ResumeJob(grpc::CallbackServerContext* context,
                                                    const moe::v1::ResumeJobRequest* request,
                                                    moe::v1::Job* response) {
  return Answer(context, Resume(*context, *request, response));
}

grpc::ServerUnaryReactor* JobServiceImpl::DeleteJob(grpc::CallbackServerContext* context,
                                                    const moe::v1::DeleteJobRequest* request,
                                                    moe::v1::DeleteJobResponse* response) {
  return Answer(context, Delete(*context, *request, response));
}

grpc::ServerUnaryReactor* JobServiceImpl::PruneJobs(grpc::CallbackServerContext* context,
                                                    const moe::v1::PruneJobsRequest* request,
                                                    moe::v1::PruneJobsResponse* response) {
  return Answer(context, Prune(*context, *request, response));
}

namespace {

// A followed stream of T (log lines, metric points) read from the store in rowid order: the
// hub pumps it (read a batch, write it item by item, park until the store changes) and it
// ends once the job is final and every stored item has been sent. Ownership passes between the
// hub and gRPC (a write in flight) as FollowHub describes; the owner alone finishes the call.
template <typename T>
class StreamReactor : public grpc::ServerWriteReactor<T>, public Follower {
 public:
  StreamReactor(FollowHub* hub, JobStore* store, std::string id, bool follow)
      : hub_(hub), store_(store), id_(std::move(id)), follow_(follow) {}

  void Start() { Requeue(); }

  void Pump() override {
    if (cancelled_) return this->Finish(grpc::Status(grpc::StatusCode::CANCELLED, "cancelled"));
    const uint64_t version = store_->Version();
    bool full = false;
    if (absl::Status s = ReadMore(&full); !s.ok()) return this->Finish(ToGrpcStatus(s));
    if (!pending_.empty()) return this->StartWrite(&pending_.front());
    if (full) return Requeue();  // a whole batch of items this stream skips
    if (!follow_) return this->Finish(grpc::Status::OK);
    absl::StatusOr<JobRecord> rec = store_->GetJob(id_);
    if (!rec.ok()) return this->Finish(ToGrpcStatus(rec.status()));
    if (IsFinal(rec->job.state())) {
      // A job's items are all stored before its final state: one more read finishes it.
      absl::StatusOr<bool> more = MoreStored();
      if (more.ok() && !*more) return this->Finish(grpc::Status::OK);
      return Requeue();
    }
    hub_->Park(this, version);
  }

  void Abandon() override { this->Finish(ShuttingDown()); }

  void OnWriteDone(bool ok) override {
    if (!ok) return this->Finish(grpc::Status::OK);  // the reader went away
    pending_.pop_front();
    if (!pending_.empty()) return this->StartWrite(&pending_.front());
    Requeue();
  }

  void OnCancel() override {
    cancelled_ = true;
    hub_->Wake(this);  // a parked stream finishes now, not at its next recheck
  }

  void OnDone() override { delete this; }

 protected:
  // Appends the next items after the cursor to pending_; *full when the store had a whole
  // batch (there may be more).
  virtual absl::Status ReadMore(bool* full) = 0;
  // Whether the store holds anything after the cursor.
  virtual absl::StatusOr<bool> MoreStored() = 0;

  const std::string& id() const { return id_; }
  JobStore* store() const { return store_; }
  std::deque<T> pending_;  // written front first; the front is in flight

 private:
  static grpc::Status ShuttingDown() {
    return grpc::Status(grpc::StatusCode::UNAVAILABLE,
                        "moed is shutting down; reconnect to its next start");
  }
  void Requeue() {
    if (!hub_->Schedule(this)) this->Finish(ShuttingDown());
  }

  FollowHub* const hub_;
  JobStore* const store_;
  const std::string id_;
  const bool follow_;
  std::atomic<bool> cancelled_{false};
};

class LogStream final : public StreamReactor<moe::v1::LogLine> {
 public:
  LogStream(FollowHub* hub, JobStore* store, const moe::v1::StreamLogsRequest& request,
            std::map<int, int64_t> after)
      : StreamReactor(hub, store, request.id(), request.follow()),
        rank_(request.rank()),
        after_(std::move(after)) {}

 private:
  absl::Status ReadMore(bool* full) override {
    absl::StatusOr<std::vector<StoredLogLine>> lines = store()->ReadLogs(id(), cursor_, kBatch);
    if (!lines.ok()) return lines.status();
    *full = static_cast<int>(lines->size()) == kBatch;
    for (StoredLogLine& l : *lines) {
      cursor_ = l.rowid;
      const int rank = l.line.rank();
      if (rank_ >= 0 && rank != rank_) continue;
      auto it = after_.find(rank);
      if (it != after_.end() && l.line.seq() <= it->second) continue;
      after_[rank] = l.line.seq();
      pending_.push_back(std::move(l.line));
    }
    return absl::OkStatus();
  }
  absl::StatusOr<bool> MoreStored() override {
    absl::StatusOr<std::vector<StoredLogLine>> rest = store()->ReadLogs(id(), cursor_, 1);
    if (!rest.ok()) return rest.status();
    return !rest->empty();
  }

  const int rank_;
  std::map<int, int64_t> after_;  // per rank, the last seq sent (or asked to skip)
  int64_t cursor_ = 0;
};

class MetricStream final : public StreamReactor<moe::v1::MetricPoint> {
 public:
  MetricStream(FollowHub* hub, JobStore* store, const moe::v1::StreamMetricsRequest& request)
      : StreamReactor(hub, store, request.id(), request.follow()),
        after_step_(request.after_step()) {}

 private:
  absl::Status ReadMore(bool* full) override {
    absl::StatusOr<std::vector<StoredMetric>> points =
        store()->ReadMetrics(id(), cursor_, kBatch);
    if (!points.ok()) return points.status();
    *full = static_cast<int>(points->size()) == kBatch;
    for (StoredMetric& m : *points) {
      cursor_ = m.rowid;
      if (m.point.step() <= after_step_) continue;
      pending_.push_back(std::move(m.point));
    }
    return absl::OkStatus();
  }
  absl::StatusOr<bool> MoreStored() override {
    absl::StatusOr<std::vector<StoredMetric>> rest = store()->ReadMetrics(id(), cursor_, 1);
    if (!rest.ok()) return rest.status();
    return !rest->empty();
  }

  const int64_t after_step_;
  int64_t cursor_ = 0;
};

// A stream refused before it starts: answers its status and goes.
template <typename T>
class RefusedStream final : public grpc::ServerWriteReactor<T> {
 public:
  explicit RefusedStream(const grpc::Status& status) { this->Finish(status); }
  void OnDone() override { delete this; }
};

}  // namespace

grpc::ServerWriteReactor<moe::v1::LogLine>* JobServiceImpl::StreamLogs(
    grpc::CallbackServerContext* context, const moe::v1::StreamLogsRequest* request) {
  auto refuse = [](const absl::Status& s) {
    return new RefusedStream<moe::v1::LogLine>(ToGrpcStatus(s));
  };
  if (absl::Status s = auth_->Check(*context); !s.ok()) return refuse(s);
  const std::string& id = request->id();
  if (absl::Status s = CheckJobId(id); !s.ok()) return refuse(s);
  if (request->rank() < -1) {
    return refuse(absl::InvalidArgumentError(
        absl::StrCat("rank: ", request->rank(), " is not a rank (use -1 for every rank)")));
  }
  if (request->tail() < 0) {
    return refuse(absl::InvalidArgumentError("tail: must be 0 (all) or a line count"));
  }
  if (absl::StatusOr<JobRecord> rec = store_->GetJob(id); !rec.ok()) {
    return refuse(rec.status());
  } else if (request->rank() >= rec->job.spec().resources().ranks()) {
    return refuse(absl::InvalidArgumentError(
        absl::StrCat("rank: job ", id, " has ranks 0..", rec->job.spec().resources().ranks() - 1,
                     ", not ", request->rank())));
  }
  std::map<int, int64_t> after(request->after_seq().begin(), request->after_seq().end());
  if (request->tail() > 0) {
    absl::StatusOr<std::map<int, int64_t>> last = store_->LastSeqs(id);
    if (!last.ok()) return refuse(last.status());
    for (const auto& [rank, seq] : *last) {
      after[rank] = std::max(after[rank], seq - request->tail());
    }
  }
  auto* stream = new LogStream(hub_, store_, *request, std::move(after));
  stream->Start();
  return stream;
}

grpc::ServerWriteReactor<moe::v1::MetricPoint>* JobServiceImpl::StreamMetrics(
    grpc::CallbackServerContext* context, const moe::v1::StreamMetricsRequest* request) {
  auto refuse = [](const absl::Status& s) {
    return new RefusedStream<moe::v1::MetricPoint>(ToGrpcStatus(s));
  };
  if (absl::Status s = auth_->Check(*context); !s.ok()) return refuse(s);
  if (absl::Status s = CheckJobId(request->id()); !s.ok()) return refuse(s);
  if (absl::StatusOr<JobRecord> rec = store_->GetJob(request->id()); !rec.ok()) {
    return refuse(rec.status());
  }
  auto* stream = new MetricStream(hub_, store_, *request);
  stream->Start();
  return stream;
}

}  // namespace moe::daemon
