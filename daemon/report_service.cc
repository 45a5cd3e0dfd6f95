// ReportServiceImpl: stores what workers send. Log lines come from one source only: when the
// launcher captures the ranks' output files (local), reported lines are dropped and the ack
// tells reporters not to send them; otherwise (slurm) they are stored, deduplicated by the
// reporter's own sequence numbers. With captured output the reporters still send their lines,
// and moed uses them only where a nearly full state disk may have kept them out of the output
// files (OutputWatch in report_service.h).
#include "daemon/report_service.h"

#include <sys/statvfs.h>

#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "daemon/status_util.h"

namespace moe::daemon {
namespace {

using SteadyClock = std::chrono::steady_clock;
// Below this much free space a rank's output file may lose what it prints.
constexpr int64_t kOutputRoom = int64_t{1} << 20;
// A reported line is confirmed once this old with room on the disk all along: its output file
// write (Open MPI's, a moment after the print) has landed by then.
constexpr auto kLag = std::chrono::seconds(2);

std::mutex free_space_mu;
std::function<int64_t(const std::string&)>* free_space_hook = nullptr;

int64_t FreeSpace(const std::string& dir) {
  {
    std::lock_guard<std::mutex> lock(free_space_mu);
    if (free_space_hook != nullptr) return (*free_space_hook)(dir);
  }
  struct statvfs st {};
  if (dir.empty() || statvfs(dir.c_str(), &st) != 0) return kOutputRoom;  // unknown: assume room
  return static_cast<int64_t>(st.f_bavail) * static_cast<int64_t>(st.f_frsize);
}

std::string ClockTime(int64_t unix_ms) {
  return absl::FormatTime("%H:%M:%S", absl::FromUnixMillis(unix_ms), absl::LocalTimeZone());
}

// The launch's secret a worker sends with every report (x-moe-report-secret metadata).
std::string ReportSecret(const grpc::ServerContextBase& context) {
  auto it = context.client_metadata().find(kReportSecretHeader);
  if (it == context.client_metadata().end()) return "";
  return std::string(it->second.data(), it->second.size());
}

}  // namespace

void ReportServiceImpl::SetFreeSpaceForTest(std::function<int64_t(const std::string& dir)> free_space) {
  std::lock_guard<std::mutex> lock(free_space_mu);
  delete free_space_hook;
  free_space_hook = free_space ? new std::function<int64_t(const std::string&)>(std::move(free_space)) : nullptr;
}

ReportServiceImpl::OutputWatch& ReportServiceImpl::Watch(const moe::v1::WorkerHello& hello) {
  OutputWatch& w = watch_[{hello.job_id(), hello.attempt(), hello.rank()}];
  if (w.state_dir.empty()) {
    absl::StatusOr<JobRecord> rec = store_->GetJob(hello.job_id());
    if (rec.ok()) w.state_dir = rec->job.state_dir();
  }
  // Lines old enough, received while the disk had room, are in the output file.
  const auto now = SteadyClock::now();
  size_t aged = 0;
  while (aged < w.pending.size() && now - w.pending[aged].first >= kLag) w.acked = w.pending[aged++].second;
  w.pending.erase(w.pending.begin(), w.pending.begin() + static_cast<std::ptrdiff_t>(aged));
  return w;
}

absl::Status ReportServiceImpl::StoreRefill(const moe::v1::WorkerHello& hello, OutputWatch& w) {
  const std::vector<moe::v1::LogLine> refill = std::move(w.refill);
  w.refill.clear();
  if (refill.empty()) return absl::OkStatus();
  const int64_t last = refill.back().seq();
  std::vector<std::string> lines;
  lines.reserve(refill.size() + 1);
  lines.push_back(absl::StrCat(
      "[moed] the state disk had less than ", kOutputRoom >> 20, " MiB free from ",
      ClockTime(refill.front().unix_ms()), " to ", ClockTime(refill.back().unix_ms()), ": rank ", hello.rank(),
      "'s output file may lack what it printed then, so the ", refill.size(), " line",
      refill.size() == 1 ? "" : "s", " the worker kept follow (a line may repeat one above)"));
  for (const moe::v1::LogLine& l : refill) lines.push_back(l.text());
  // The offset of a path no file has: the last reported seq stored, in the same transaction.
  absl::Status s = store_->AppendCapturedLines(
      hello.job_id(), hello.rank(), lines, NowUnixMs(),
      absl::StrCat("reported:attempt", hello.attempt(), ":rank", hello.rank()), last);
  if (!s.ok()) return s;  // the reporter resends them
  w.acked = std::max(w.acked, std::max(last, w.outage_upto));
  w.outage_upto = 0;
  w.pending.clear();
  return absl::OkStatus();
}

absl::Status ReportServiceImpl::WatchOutput(const moe::v1::WorkerHello& hello, const moe::v1::LogLine& line) {
  std::lock_guard<std::mutex> lock(watch_mu_);
  OutputWatch& w = Watch(hello);
  if (line.seq() <= w.acked) return absl::OkStatus();  // a resend
  const bool room = FreeSpace(w.state_dir) >= kOutputRoom;
  if (room && w.outage_upto > 0) {
    if (line.seq() <= w.outage_upto) {
      // The outage's lines, resent now that there is room: stored together once all are here.
      if (w.refill.empty() || line.seq() > w.refill.back().seq()) w.refill.push_back(line);
      return line.seq() == w.outage_upto ? StoreRefill(hello, w) : absl::OkStatus();
    }
    // Past the outage (the reporter's bound dropped its last lines, and says so itself).
    if (absl::Status s = StoreRefill(hello, w); !s.ok()) return s;
    w.outage_upto = 0;
  }
  if (!room) {
    w.outage_upto = std::max(w.outage_upto, line.seq());
    w.refill.clear();
    w.pending.clear();
    return absl::ResourceExhaustedError(absl::StrCat(
        "the state directory ", w.state_dir, " has less than ", kOutputRoom >> 20,
        " MiB free, so the ranks' output files may lose lines: the worker keeps them until moed has room"));
  }
  w.pending.emplace_back(SteadyClock::now(), line.seq());
  return absl::OkStatus();
}

absl::Status ReportServiceImpl::FillAck(const moe::v1::WorkerHello& hello,
                                        moe::v1::ReportAck* ack) {
  absl::StatusOr<ReportCursor> cursor =
      store_->GetReportCursor(hello.job_id(), hello.rank(), hello.attempt());
  if (!cursor.ok()) return cursor.status();
  ack->set_last_log_seq(cursor->last_src_seq);
  ack->set_last_metric_step(cursor->last_metric_step);
  const bool captured = scheduler_->CapturesOutput(hello.job_id());
  ack->set_logs_from_output(captured);
  if (captured) {
    std::lock_guard<std::mutex> lock(watch_mu_);
    OutputWatch& w = Watch(hello);
    if (!w.refill.empty() && FreeSpace(w.state_dir) >= kOutputRoom) {
      StoreRefill(hello, w).IgnoreError();  // the stream ended before the outage's last line
    }
    ack->set_last_log_seq(w.acked);
  }
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
      return WatchOutput(hello, msg.log());
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
