// moectl logs: prints a job's lines and follows them, resuming after the last seq per rank when
// the stream breaks (a moed restart), so nothing is printed twice or skipped.
#include <chrono>
#include <cstdio>
#include <map>
#include <thread>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "client/commands.h"
#include "client/connection.h"

namespace moe::client {
namespace {

constexpr auto kReconnectFor = std::chrono::seconds(120);

}  // namespace

int FollowLogs(const std::string& job_id, int rank, int64_t tail, bool follow) {
  absl::StatusOr<ClientConfig> config = LoadClientConfig();
  if (!config.ok()) return FailConfig(config.status());
  auto stub = NewJobStub(*config);
  std::map<int, int64_t> after;
  bool first = true;
  bool warned = false;
  auto down_since = std::chrono::steady_clock::time_point::max();
  auto backoff = std::chrono::milliseconds(100);
  while (true) {
    grpc::ClientContext ctx;
    PrepareContext(ctx, *config, follow ? 0 : 60);
    moe::v1::StreamLogsRequest req;
    req.set_id(job_id);
    req.set_follow(follow);
    req.set_rank(rank);
    if (first) req.set_tail(tail);
    for (const auto& [r, seq] : after) (*req.mutable_after_seq())[r] = seq;
    auto reader = stub->StreamLogs(&ctx, req);
    moe::v1::LogLine line;
    while (reader->Read(&line)) {
      if (rank < 0) {
        std::printf("[%d] %s\n", line.rank(), line.text().c_str());
      } else {
        std::printf("%s\n", line.text().c_str());
      }
      after[line.rank()] = line.seq();
      // Following, each line goes out as it comes (a pipe or a file would otherwise hold it in
      // the buffer, and lose it if moectl is stopped); a reader gone (EPIPE) or a full disk ends it.
      // A reader gone (`| head`, `| grep -m1`) has what it wanted: stop reading the log.
      if (std::ferror(stdout) && StdoutReaderGone()) {
        ctx.TryCancel();
        return 0;
      }
      if (follow && !FlushStdout()) {
        if (StdoutReaderGone()) return 0;
        Fail(absl::StrCat("cannot write the logs: ", StdoutError()));
        ClearStdoutError();  // said once, here
        return 1;
      }
      down_since = std::chrono::steady_clock::time_point::max();
      backoff = std::chrono::milliseconds(100);
    }
    FlushStdout();
    grpc::Status s = reader->Finish();
    first = false;
    if (s.ok()) break;
    // A moed that stops ends the streams it serves: UNAVAILABLE, or CANCELLED when the stream was
    // open as the server shut down (moectl never cancels its own call). Both mean: reconnect.
    const bool lost = s.error_code() == grpc::StatusCode::UNAVAILABLE || s.error_code() == grpc::StatusCode::CANCELLED;
    if (follow && lost) {
      const auto now = std::chrono::steady_clock::now();
      if (down_since == std::chrono::steady_clock::time_point::max()) down_since = now;
      if (now - down_since > kReconnectFor) return Fail(DescribeError(s, *config));
      if (!warned) {
        std::fprintf(stderr, "moectl: lost moed at %s, reconnecting...\n", config->server.c_str());
        warned = true;
      }
      std::this_thread::sleep_for(backoff);
      backoff = std::min(backoff * 2, std::chrono::milliseconds(2000));
      // A fresh channel each try: the old one's connection attempts back off (seconds apart in
      // practice), so a moed back after a restart was seen 5-13 s late.
      stub = NewJobStub(*config);
      continue;
    }
    return Fail(DescribeError(s, *config));
  }
  // How the job stands decides the exit code.
  for (int tries = 0;; ++tries) {
    grpc::Status s;
    absl::StatusOr<moe::v1::Job> got = GetJob(*stub, *config, job_id, &s);
    if (!got.ok()) {
      if (s.error_code() == grpc::StatusCode::UNAVAILABLE && tries < 20) {
        std::this_thread::sleep_for(std::chrono::milliseconds(500));
        continue;
      }
      return Fail(DescribeError(s, *config));
    }
    const moe::v1::Job& job = *got;
    const moe::v1::JobState st = job.state();
    if (follow || st == moe::v1::JOB_STATE_FAILED || st == moe::v1::JOB_STATE_CANCELLED) {
      std::fprintf(stderr, "moectl: job %s %s%s%s\n", job_id.c_str(), StateName(st).c_str(),
                   job.reason().empty() ? "" : ": ", job.reason().c_str());
    }
    if (st == moe::v1::JOB_STATE_SUCCEEDED) return 0;
    if (follow || st == moe::v1::JOB_STATE_FAILED || st == moe::v1::JOB_STATE_CANCELLED) return 1;
    return 0;  // without -f, lines of a job still going are a success
  }
}

int RunLogs(const LogsOptions& o) {
  // The job first: a moed that cannot be reached, or a job it does not have, is said at once
  // (-f alone would read it as a lost moed and try again for two minutes).
  absl::StatusOr<ClientConfig> config = LoadClientConfig();
  if (!config.ok()) return FailConfig(config.status());
  auto stub = NewJobStub(*config);
  grpc::Status s;
  absl::StatusOr<moe::v1::Job> job = GetJob(*stub, *config, o.id, &s);
  if (!job.ok()) return Fail(DescribeError(s, *config));
  if (o.rank >= 0) {
    // A rank the job does not have is a usage error, not an empty log.
    const int ranks = job->spec().resources().ranks();
    if (o.rank >= ranks) {
      std::fprintf(stderr, "moectl logs: job %s has %d rank%s (0..%d); there is no rank %d\n",
                   o.id.c_str(), ranks, ranks == 1 ? "" : "s", ranks - 1, o.rank);
      return 2;
    }
  }
  return FollowLogs(o.id, o.rank, o.tail, o.follow);
}

}  // namespace moe::client
