// Reporter: one background thread owns the gRPC stream. Queued items stay in memory until moed
// acknowledges them (LastLogSeq on every (re)connect and every few seconds), so a moed restart
// or a full state disk (moed refuses, e.g. RESOURCE_EXHAUSTED, until it stores again) loses
// nothing the queue can hold (max_held_bytes) and duplicates nothing (moed skips seqs it has).
// Log lines are queued only while moed wants them: once its ack says logs_from_output (it reads
// the ranks' output files itself) they are neither kept nor sent. What the bound drops is
// counted, and said in a "[moed] ... were lost" line once moed confirms again. A failed or
// refused stream is retried with backoff, and a stream sends the queue in slices, so the
// training thread's Log/Metrics never wait for a copy of the whole queue. Metric points
// moed has not confirmed when Close() gives up are written to the spill file, which moed stores
// when it reaps the attempt (a moed away when the job ends loses none of them either).
#include "worker/report/reporter.h"

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstddef>
#include <cstdlib>
#include <deque>
#include <mutex>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/metrics_spill.h"
#include "common/moed_channel.h"
#include "grpcpp/client_context.h"
#include "moe/v1/worker.grpc.pb.h"

namespace moe {
namespace {

using Clock = std::chrono::steady_clock;
constexpr size_t kMaxMetrics = 2000;  // past this the older half goes to a spill part
constexpr size_t kDefaultMaxHeldBytes = size_t{32} << 20;
constexpr size_t kItemOverhead = 64;  // per queued item, beside its text or serialized size
constexpr auto kHeartbeatEvery = std::chrono::seconds(2);
constexpr auto kAckEvery = std::chrono::seconds(5);
// With a queue half full (a run logging hundreds of steps a second), acks come this often: the
// queue then only fills, and spills, while moed is away.
constexpr auto kAckEveryWhenFilling = std::chrono::milliseconds(200);
constexpr auto kMaxBackoff = std::chrono::milliseconds(2000);
constexpr auto kCloseDeadline = std::chrono::seconds(3);
// A stream that lasted this long (or got something confirmed) worked: the backoff starts over.
constexpr auto kStreamWorked = std::chrono::seconds(5);
// What one pass of a stream copies out of the queue under the lock.
constexpr size_t kSliceBytes = size_t{1} << 20;

int64_t NowMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

bool Permanent(grpc::StatusCode code) {
  return code == grpc::StatusCode::NOT_FOUND || code == grpc::StatusCode::FAILED_PRECONDITION ||
         code == grpc::StatusCode::UNAUTHENTICATED || code == grpc::StatusCode::INVALID_ARGUMENT ||
         code == grpc::StatusCode::PERMISSION_DENIED;
}

}  // namespace

struct Reporter::Impl {
  ReporterOptions opts;
  bool enabled = false;

  mutable std::mutex mu;
  std::condition_variable cv;
  std::deque<moe::v1::LogLine> logs;        // unconfirmed, oldest first
  std::deque<int64_t> log_steps;            // the step each of logs was logged at
  size_t logs_sent = 0;                     // how many at the front went out on this stream
  size_t logs_bytes = 0;
  std::deque<moe::v1::MetricPoint> metrics;  // unconfirmed
  size_t metrics_sent = 0;
  size_t metrics_bytes = 0;
  size_t max_bytes = kDefaultMaxHeldBytes;  // each of logs_bytes and metrics_bytes
  int spill_parts = 0;                      // parts written (SpillPart)
  size_t spill_retry_at = 0;                // after a failed part: the queue size to try again at
  // Why moed has not been confirming (bits, cleared when it confirms again), for the notice.
  enum Trouble { kAway = 1, kRefused = 2 };
  int trouble = 0;
  std::string refusal;  // the message of moed's last refusal
  uint64_t confirmed_total = 0;  // items moed confirmed, ever (a stream that made progress)
  // What the bound dropped since the last notice: how many, first and last step, and why.
  struct Lost {
    int64_t n = 0, first = 0, last = 0;
    int why = 0;
    void Add(int64_t step, int trouble) {
      if (n++ == 0) first = step;
      last = step;
      why |= trouble;
    }
  };
  Lost lost_lines, lost_metrics;
  int64_t dropped_metrics = 0;
  size_t saved_count = 0;   // points of the queue's front in the spill file (SaveUnconfirmed)
  int64_t saved_front = 0;  // the step at the queue's front when they were written
  int save_failed = 0;
  int64_t next_seq = 1;
  int64_t step = 0;
  int64_t dropped = 0;
  bool logs_wanted = true;  // false once moed says it reads our output files itself
  bool closing = false;
  bool done = false;
  bool gave_up = false;
  bool is_connected = false;
  bool refused_said = false;  // the refusal line went to stderr (Run's thread only)
  grpc::ClientContext* live_ctx = nullptr;  // to cancel a stuck final flush

  std::thread thread;

  moe::v1::WorkerHello Hello() const {
    moe::v1::WorkerHello h;
    h.set_job_id(opts.job_id);
    h.set_rank(opts.rank);
    h.set_world_size(opts.world_size);
    h.set_attempt(opts.attempt);
    char host[256] = {};
    gethostname(host, sizeof(host) - 1);
    h.set_host(host);
    h.set_pid(static_cast<int>(getpid()));
    return h;
  }

  void AddAuth(grpc::ClientContext& ctx) const {
    if (!opts.token.empty()) ctx.AddMetadata("authorization", "Bearer " + opts.token);
    if (!opts.report_secret.empty()) ctx.AddMetadata("x-moe-report-secret", opts.report_secret);
  }

  // Queue bookkeeping (mu held).
  void PopLog() {
    logs_bytes -= std::min(logs_bytes, logs.front().text().size() + kItemOverhead);
    logs.pop_front();
    log_steps.pop_front();
    if (logs_sent > 0) --logs_sent;
  }
  void PopMetric() {
    metrics_bytes -= std::min(metrics_bytes, metrics.front().ByteSizeLong() + kItemOverhead);
    metrics.pop_front();
    if (metrics_sent > 0) --metrics_sent;
  }
  moe::v1::LogLine& PushLog(const std::string& text) {
    moe::v1::LogLine& l = logs.emplace_back();
    l.set_rank(opts.rank);
    l.set_seq(next_seq++);
    l.set_unix_ms(NowMs());
    l.set_text(text);
    log_steps.push_back(step);
    logs_bytes += text.size() + kItemOverhead;
    return l;
  }
  // The bound: the oldest go, counted for the notice (mu held).
  void Trim() {
    while (logs_bytes > max_bytes && logs.size() > 1) {
      lost_lines.Add(log_steps.front(), trouble);
      ++dropped;
      PopLog();
    }
    while (metrics_bytes > max_bytes && metrics.size() > 1) {
      lost_metrics.Add(metrics.front().step(), trouble);
      ++dropped_metrics;
      PopMetric();
    }
  }

  // Drops what moed acknowledged. Once moed confirms again after the bound dropped something,
  // the loss is said: on stderr (the rank's output, which moed stores with the local launcher)
  // and, while moed wants reported lines (Slurm), as a log line of its own. Returns the notices
  // to print.
  std::vector<std::string> ApplyAck(const moe::v1::ReportAck& ack) {
    std::vector<std::string> notices;
    std::lock_guard<std::mutex> lock(mu);
    if (ack.logs_from_output() && logs_wanted) {
      // moed stores the rank's output files, which hold every line printed: none is kept here,
      // and none that the bound dropped before this ack was lost.
      logs_wanted = false;
      logs.clear();
      log_steps.clear();
      logs_bytes = 0;
      logs_sent = 0;
      lost_lines = Lost{};
      dropped = 0;
    }
    size_t confirmed = 0;
    while (!logs.empty() && logs.front().seq() <= ack.last_log_seq()) {
      PopLog();
      ++confirmed;
    }
    while (!metrics.empty() && metrics.front().step() <= ack.last_metric_step()) {
      PopMetric();
      ++confirmed;
    }
    confirmed_total += confirmed;
    if (confirmed > 0 || (logs.empty() && metrics.empty())) trouble = 0;
    if (confirmed == 0) return notices;
    auto say = [&](Lost& lost, const char* what) {
      if (lost.n == 0) return;
      std::string while_;
      switch (lost.why) {
        case kAway:
          while_ = "while moed could not be reached";
          break;
        case kRefused:
          while_ = absl::StrCat("while moed could not store them (", refusal, ")");
          break;
        case kAway | kRefused:
          while_ = absl::StrCat("while moed could not be reached or could not store them (", refusal, ")");
          break;
        default:
          while_ = "before moed confirmed them";
      }
      std::string text = absl::StrCat("[moed] ", lost.n, " ", what, lost.n == 1 ? "" : "s", " of rank ", opts.rank,
                                      " ", lost.n == 1 ? "was" : "were", " lost ", while_, ": more than the ",
                                      max_bytes >= (size_t{1} << 20) ? absl::StrCat(max_bytes >> 20, " MiB")
                                                                     : absl::StrCat(max_bytes >> 10, " KiB"),
                                      " the worker keeps (steps ", lost.first, "-", lost.last, ")");
      lost = Lost{};
      if (logs_wanted) PushLog(text);  // else stderr is the rank's output, which moed stores
      notices.push_back(std::move(text));
    };
    say(lost_lines, "log line");
    say(lost_metrics, "metric point");
    if (!notices.empty()) cv.notify_all();
    return notices;
  }
  void Print(const std::vector<std::string>& notices) {
    for (const std::string& n : notices) std::fprintf(stderr, "%s\n", n.c_str());
    if (!notices.empty()) std::fflush(stderr);
  }

  void GiveUp(const grpc::Status& s) {
    std::fprintf(stderr, "moe-worker rank %d: moed refused reports (%s); training goes on\n",
                 opts.rank, s.error_message().c_str());
    std::lock_guard<std::mutex> lock(mu);
    gave_up = true;
    logs.clear();
    log_steps.clear();
    logs_bytes = 0;
    metrics.clear();
    metrics_bytes = 0;
  }

  // The oldest points of a full queue (moed away for kMaxMetrics points), written while training
  // goes on to the next part of the spill (common/metrics_spill.h): moed stores them with the rest
  // when it reaps the attempt, and skips any it had already.
  // A part that cannot be written (the spill's disk is full too: it is moed's state disk) leaves
  // the points in memory, up to max_held_bytes; false then.
  bool SpillPart(const std::vector<moe::v1::MetricPoint>& oldest, int part) {
    const std::string path = MetricsSpillPartPath(opts.spill_path, part);
    const std::string what = absl::StrCat("moed has not confirmed ", oldest.size(), " metric points (steps ",
                                          oldest.front().step(), " to ", oldest.back().step(), "), more than its queue keeps");
    if (absl::Status s = WriteMetricsSpill(path, oldest); !s.ok()) {
      std::remove(path.c_str());
      std::fprintf(stderr, "moe-worker rank %d: %s and they cannot be left for it (%s); kept in memory\n", opts.rank,
                   what.c_str(), std::string(s.message()).c_str());
      return false;
    }
    std::fprintf(stderr, "moe-worker rank %d: %s; left them in %s for moed to store\n", opts.rank, what.c_str(),
                 path.c_str());
    return true;
  }

  // Once the thread has stopped: the metric points moed has not confirmed go to the spill file.
  void Spill() {
    std::vector<moe::v1::MetricPoint> left;
    bool stale = false;  // an outage's file of points moed has all confirmed since
    {
      std::lock_guard<std::mutex> lock(mu);
      left.assign(metrics.begin(), metrics.end());
      metrics.clear();
      metrics_bytes = 0;
      metrics_sent = 0;
      stale = saved_count > 0 && !gave_up && left.empty();  // (reports stopped: moed lacks them)
      saved_count = 0;
    }
    if (left.empty()) {
      if (stale) std::remove(opts.spill_path.c_str());
      return;
    }
    const std::string what = absl::StrCat(
        "moed did not confirm ", left.size(), " metric point", left.size() == 1 ? "" : "s",
        " (steps ", left.front().step(), " to ", left.back().step(), ") before the end");
    if (opts.spill_path.empty()) {
      std::fprintf(stderr, "moe-worker rank %d: %s; they are lost\n", opts.rank, what.c_str());
      return;
    }
    if (absl::Status s = WriteMetricsSpill(opts.spill_path, left); !s.ok()) {
      std::fprintf(stderr, "moe-worker rank %d: %s and cannot be left for it (%s); they are lost\n",
                   opts.rank, what.c_str(), std::string(s.message()).c_str());
      return;
    }
    std::fprintf(stderr, "moe-worker rank %d: %s; left them in %s for moed to store\n", opts.rank,
                 what.c_str(), opts.spill_path.c_str());
  }

  // While moed is away the unconfirmed points go to the spill file as they come (appended; the
  // file is rewritten only when the queue's front moved), so that a rank killed before Close
  // (mpirun ending the attempt after another rank failed) still leaves them for moed. When moed
  // is back, what it confirmed leaves the file (the file goes when nothing is left); Close's
  // Spill replaces it.
  void SaveUnconfirmed() {
    std::vector<moe::v1::MetricPoint> add;
    bool rewrite = false;
    {
      std::lock_guard<std::mutex> lock(mu);
      if (opts.spill_path.empty()) return;
      if (metrics.empty()) {
        if (saved_count > 0 && !gave_up) std::remove(opts.spill_path.c_str());
        saved_count = 0;
        return;
      }
      rewrite = saved_count == 0 || metrics.front().step() != saved_front || saved_count > metrics.size();
      const size_t from = rewrite ? 0 : saved_count;
      if (from == metrics.size()) return;
      add.assign(metrics.begin() + static_cast<std::ptrdiff_t>(from), metrics.end());
      saved_front = metrics.front().step();
      saved_count = metrics.size();
    }
    const absl::Status st = rewrite ? WriteMetricsSpill(opts.spill_path, add) : AppendMetricsSpill(opts.spill_path, add);
    if (!st.ok()) {
      std::lock_guard<std::mutex> lock(mu);
      saved_count = 0;  // written whole next time
      if (save_failed++ == 0) {
        std::fprintf(stderr, "moe-worker rank %d: cannot keep the metric points moed has not confirmed in %s (%s)\n",
                     opts.rank, opts.spill_path.c_str(), std::string(st.message()).c_str());
      }
    }
  }

  // Asks moed what it has stored; false when moed cannot be reached.
  bool Ack(moe::v1::WorkerReportService::Stub& stub, grpc::Status* status) {
    grpc::ClientContext ctx;
    AddAuth(ctx);
    // Wait for the channel to connect (within the deadline) instead of failing fast on a
    // cached connect error: moed may be back already.
    ctx.set_wait_for_ready(true);
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(1));
    moe::v1::ReportAck ack;
    *status = stub.LastLogSeq(&ctx, Hello(), &ack);
    if (!status->ok()) return false;
    Print(ApplyAck(ack));
    return true;
  }

  // Waits out the backoff (doubled for next time); false when closing and nothing is left, or
  // the close deadline passed.
  bool Backoff(std::chrono::milliseconds& backoff, Clock::time_point close_by) {
    std::unique_lock<std::mutex> lock(mu);
    if (closing && logs.empty() && metrics.empty()) return false;
    // Closing: Close() waits at most kCloseDeadline, so retries come quicker.
    cv.wait_for(lock, closing ? std::min(backoff, std::chrono::milliseconds(100)) : backoff,
                [&] { return closing && Clock::now() >= close_by; });
    backoff = std::min(backoff * 2, kMaxBackoff);
    return true;
  }

  void Run() {
    // Reconnects quickly when moed comes back.
    auto stub = moe::v1::WorkerReportService::NewStub(NewMoedChannel(opts.moed_address));
    auto backoff = std::chrono::milliseconds(100);
    Clock::time_point close_by = Clock::time_point::max();
    bool outage = false;
    while (true) {
      {
        std::lock_guard<std::mutex> lock(mu);
        if (gave_up || (closing && Clock::now() >= close_by)) break;
        if (closing && close_by == Clock::time_point::max()) close_by = Clock::now() + kCloseDeadline;
      }
      grpc::Status status;
      if (!Ack(*stub, &status)) {
        if (Permanent(status.error_code())) {
          GiveUp(status);
          break;
        }
        if (!outage) {  // one line per outage, for the rank's log
          std::fprintf(stderr, "moe-worker rank %d: cannot reach moed at %s (%s), retrying\n",
                       opts.rank, opts.moed_address.c_str(), status.error_message().c_str());
          outage = true;
        }
        {
          std::lock_guard<std::mutex> lock(mu);
          trouble |= kAway;
        }
        SaveUnconfirmed();
        if (!Backoff(backoff, close_by)) break;
        continue;
      }
      if (outage) {
        std::fprintf(stderr, "moe-worker rank %d: reconnected to moed\n", opts.rank);
        outage = false;
        SaveUnconfirmed();  // what moed confirmed leaves the file
      }
      const Clock::time_point stream_start = Clock::now();
      uint64_t confirmed_before;
      {
        std::lock_guard<std::mutex> lock(mu);
        confirmed_before = confirmed_total;
      }
      status = Stream(*stub, close_by);
      if (status.ok()) break;  // closed cleanly after a flush
      if (Permanent(status.error_code())) {
        GiveUp(status);
        break;
      }
      // A failed or refused stream (moed went away, or cannot store: a full state disk) is
      // retried after the backoff, which starts over only after a stream that worked.
      const bool worked = Clock::now() - stream_start >= kStreamWorked;
      const bool away = status.error_code() == grpc::StatusCode::UNAVAILABLE ||
                        status.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED ||
                        status.error_code() == grpc::StatusCode::CANCELLED;
      {
        std::lock_guard<std::mutex> lock(mu);
        if (worked || confirmed_total > confirmed_before) {
          backoff = std::chrono::milliseconds(100);
          refused_said = false;
        }
        trouble |= away ? kAway : kRefused;
        if (!away) refusal = status.error_message();
      }
      if (!away && !refused_said) {  // one line per refusal spell, for the rank's log
        std::fprintf(stderr, "moe-worker rank %d: moed cannot store reports (%s); keeping them, retrying\n",
                     opts.rank, status.error_message().c_str());
        refused_said = true;
      }
      if (!Backoff(backoff, close_by)) break;
    }
    std::lock_guard<std::mutex> lock(mu);
    done = true;
    is_connected = false;
    cv.notify_all();
  }

  // One stream: hello, then everything queued, heartbeats, periodic acks. Returns OK only when
  // closing and all was sent.
  grpc::Status Stream(moe::v1::WorkerReportService::Stub& stub, Clock::time_point& close_by) {
    grpc::ClientContext ctx;
    AddAuth(ctx);
    moe::v1::ReportAck ack;
    std::unique_ptr<grpc::ClientWriter<moe::v1::WorkerReport>> writer =
        stub.Report(&ctx, &ack);
    {
      std::lock_guard<std::mutex> lock(mu);
      live_ctx = &ctx;
      logs_sent = 0;  // resend what is unconfirmed
      metrics_sent = 0;
      is_connected = true;
    }
    auto finish = [&]() {
      grpc::Status s = writer->Finish();
      std::lock_guard<std::mutex> lock(mu);
      live_ctx = nullptr;
      is_connected = false;
      return s;
    };
    moe::v1::WorkerReport hello;
    *hello.mutable_hello() = Hello();
    if (!writer->Write(hello)) return finish();
    Clock::time_point next_beat = Clock::now();
    Clock::time_point last_ack = Clock::now(), next_ack = last_ack + kAckEvery;
    while (true) {
      std::vector<moe::v1::WorkerReport> batch;
      bool flush_and_stop = false;
      bool filling = false;
      {
        std::unique_lock<std::mutex> lock(mu);
        cv.wait_until(lock, std::min(next_beat, next_ack), [&] {
          return closing || logs_sent < logs.size() || metrics_sent < metrics.size();
        });
        if (closing && close_by == Clock::time_point::max()) close_by = Clock::now() + kCloseDeadline;
        // A slice of what is unsent (after a reconnect that is the whole queue, up to 64 MiB):
        // the rest goes on the next passes, without holding the lock meanwhile.
        size_t slice = 0;
        for (; metrics_sent < metrics.size() && slice < kSliceBytes; ++metrics_sent) {
          *batch.emplace_back().mutable_metrics() = metrics[metrics_sent];
          slice += metrics[metrics_sent].ByteSizeLong() + kItemOverhead;
        }
        for (; logs_sent < logs.size() && slice < kSliceBytes; ++logs_sent) {
          *batch.emplace_back().mutable_log() = logs[logs_sent];
          slice += logs[logs_sent].text().size() + kItemOverhead;
        }
        const bool all_sent = metrics_sent >= metrics.size() && logs_sent >= logs.size();
        if (Clock::now() >= next_beat) {
          moe::v1::Heartbeat* hb = batch.emplace_back().mutable_heartbeat();
          hb->set_step(step);
          hb->set_unix_ms(NowMs());
          next_beat = Clock::now() + kHeartbeatEvery;
        }
        flush_and_stop = closing && (all_sent || Clock::now() >= close_by);
        filling = metrics.size() >= kMaxMetrics / 2 || logs_bytes >= max_bytes / 2;
      }
      for (const moe::v1::WorkerReport& r : batch) {
        if (!writer->Write(r)) return finish();
      }
      if (flush_and_stop) {
        writer->WritesDone();
        grpc::Status s = finish();
        if (s.ok()) Print(ApplyAck(ack));
        std::lock_guard<std::mutex> lock(mu);
        const bool all_sent = logs_sent >= logs.size() && metrics_sent >= metrics.size();
        if (s.ok() && all_sent) return grpc::Status::OK;
        if (Clock::now() >= close_by) return grpc::Status::OK;  // out of time: give up quietly
        return s.ok() ? grpc::Status(grpc::StatusCode::UNAVAILABLE, "more to send") : s;
      }
      const Clock::time_point now = Clock::now();
      if (now >= next_ack || (filling && now >= last_ack + kAckEveryWhenFilling)) {
        grpc::Status s;
        Ack(stub, &s);  // trims the queue; a failure shows up on the stream soon enough
        last_ack = Clock::now();
        next_ack = last_ack + kAckEvery;
      }
    }
  }
};

Reporter::Reporter(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

std::unique_ptr<Reporter> Reporter::Create(const ReporterOptions& opts) {
  auto impl = std::make_unique<Impl>();
  impl->opts = opts;
  if (opts.max_held_bytes > 0) impl->max_bytes = opts.max_held_bytes;
  if (impl->opts.token.empty()) {
    if (const char* t = std::getenv("MOE_TOKEN")) impl->opts.token = t;
  }
  if (impl->opts.report_secret.empty()) {
    if (const char* t = std::getenv("MOE_REPORT_SECRET")) impl->opts.report_secret = t;
  }
  impl->enabled = !opts.moed_address.empty();
  std::unique_ptr<Reporter> r(new Reporter(std::move(impl)));
  if (r->impl_->enabled) {
    Impl* p = r->impl_.get();
    p->thread = std::thread([p] { p->Run(); });
  }
  return r;
}

Reporter::~Reporter() { Close(); }

void Reporter::Log(const std::string& line) {
  if (!impl_->enabled) return;
  {
    std::lock_guard<std::mutex> lock(impl_->mu);
    if (!impl_->logs_wanted || impl_->gave_up || impl_->closing) return;
    impl_->PushLog(line);
    impl_->Trim();
  }
  impl_->cv.notify_all();
}

void Reporter::Metrics(const moe::v1::MetricPoint& point) {
  if (!impl_->enabled) return;
  Impl& m = *impl_;
  std::vector<moe::v1::MetricPoint> oldest;
  int part = 0;
  {
    std::lock_guard<std::mutex> lock(m.mu);
    if (m.gave_up || m.closing) return;
    // A full queue: its older half goes to a spill part, when there is a spill path and the last
    // part that could not be written is a half queue ago (else they stay in memory, to the bound).
    if (!m.opts.spill_path.empty() && m.metrics.size() >= kMaxMetrics && m.metrics.size() >= m.spill_retry_at) {
      oldest.assign(m.metrics.begin(), m.metrics.begin() + static_cast<std::ptrdiff_t>(kMaxMetrics / 2));
      part = ++m.spill_parts;
    }
    m.metrics.push_back(point);
    if (m.metrics.back().unix_ms() == 0) m.metrics.back().set_unix_ms(NowMs());
    m.metrics_bytes += m.metrics.back().ByteSizeLong() + kItemOverhead;
    m.step = std::max(m.step, point.step());
  }
  if (!oldest.empty()) {
    const bool written = m.SpillPart(oldest, part);
    std::lock_guard<std::mutex> lock(m.mu);
    if (written) {
      // Those at the front went out on this stream, unconfirmed: moed stores them from the part.
      while (!m.metrics.empty() && m.metrics.front().step() <= oldest.back().step()) m.PopMetric();
      m.spill_retry_at = 0;
    } else {
      m.spill_retry_at = m.metrics.size() + kMaxMetrics / 2;
    }
  }
  {
    std::lock_guard<std::mutex> lock(m.mu);
    m.Trim();
  }
  m.cv.notify_all();
}

void Reporter::SetStep(int64_t step) {
  if (!impl_->enabled) return;
  std::lock_guard<std::mutex> lock(impl_->mu);
  impl_->step = step;
}

void Reporter::Close() {
  if (!impl_->enabled || !impl_->thread.joinable()) return;
  {
    std::unique_lock<std::mutex> lock(impl_->mu);
    impl_->closing = true;
    impl_->cv.notify_all();
    if (!impl_->cv.wait_for(lock, kCloseDeadline + std::chrono::seconds(1),
                            [&] { return impl_->done; })) {
      if (impl_->live_ctx != nullptr) impl_->live_ctx->TryCancel();
    }
  }
  impl_->thread.join();
  impl_->Spill();
}

int64_t Reporter::dropped_lines() const {
  std::lock_guard<std::mutex> lock(impl_->mu);
  return impl_->dropped;
}

int64_t Reporter::dropped_metrics() const {
  std::lock_guard<std::mutex> lock(impl_->mu);
  return impl_->dropped_metrics;
}

bool Reporter::connected() const {
  std::lock_guard<std::mutex> lock(impl_->mu);
  return impl_->is_connected;
}

}  // namespace moe
