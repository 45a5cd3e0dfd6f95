// moed's queue, launcher and state machine through the real moed and moectl binaries, with
// tests/tools/fake_worker.sh standing in for moe-worker (same launch contract, no training):
// success, cancel, a rank killed (fail / restart), moed killed and restarted, the queue,
// a lost heartbeat, a damaged metrics spill file.
#include <signal.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <string>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/files.h"
#include "common/metrics_spill.h"
#include "gtest/gtest.h"
#include "tests/support/daemon_harness.h"
#include "tests/support/paths.h"

namespace moe::testing {
namespace {

using moe::v1::Job;
using moe::v1::JobState;

HarnessOptions FakeOptions(std::map<std::string, std::string> env) {
  HarnessOptions o;
  o.worker_bin = FakeWorkerPath();
  o.cancel_grace_s = 5;
  o.env = std::move(env);
  return o;
}

std::string SubmitOk(DaemonHarness& h, const std::string& path) {
  CommandResult r = h.Moectl({"submit", path});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  std::string id = r.out.substr(0, r.out.find('\n'));
  EXPECT_TRUE(absl::StartsWith(id, "j-")) << r.out;
  return id;
}

// Every rank's seqs are 1..n with no gap or repeat.
void ExpectContiguous(const std::vector<moe::v1::LogLine>& lines) {
  std::map<int, int64_t> last;
  for (const auto& l : lines) {
    EXPECT_EQ(l.seq(), last[l.rank()] + 1) << "rank " << l.rank() << ": " << l.text();
    last[l.rank()] = l.seq();
  }
}

int CountContaining(const std::vector<moe::v1::LogLine>& lines, int rank, const std::string& s) {
  int n = 0;
  for (const auto& l : lines) n += (l.rank() == rank && absl::StrContains(l.text(), s));
  return n;
}

TEST(DaemonLauncher, TwoRankJobSucceedsAndFollowReadsEveryLine) {
  DaemonHarness h(FakeOptions({{"FAKE_STEPS", "5"}, {"FAKE_STEP_SECONDS", "0.05"}}));
  ASSERT_TRUE(h.Start()) << h.MoedLog();
  CommandResult r = h.Moectl({"submit", h.WriteJob("ok", 2, 5), "--follow"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(absl::StrContains(r.out, "[1] rank 1 done after 5 steps")) << r.out;
  EXPECT_TRUE(absl::StrContains(r.err, "SUCCEEDED")) << r.err;
  const std::string id = "j-000001";
  std::vector<moe::v1::LogLine> lines = h.AllLogs(id);
  ExpectContiguous(lines);
  for (int rank : {0, 1}) {
    EXPECT_EQ(CountContaining(lines, rank, "\"step\""), 5) << "rank " << rank;
  }
  // The follower printed exactly the stored lines.
  EXPECT_EQ(static_cast<size_t>(std::count(r.out.begin(), r.out.end(), '\n')), lines.size() + 1);
  CommandResult st = h.Moectl({"status", id});
  EXPECT_EQ(st.exit_code, 0);
  EXPECT_TRUE(absl::StrContains(st.out, "SUCCEEDED")) << st.out;
  CommandResult tail = h.Moectl({"logs", id, "--rank", "1", "--tail", "1"});
  EXPECT_EQ(tail.out, "rank 1 done after 5 steps\n");
}

TEST(DaemonLauncher, CancelStopsEveryProcess) {
  DaemonHarness h(FakeOptions({{"FAKE_STEPS", "100000"}, {"FAKE_STEP_SECONDS", "0.1"}}));
  ASSERT_TRUE(h.Start()) << h.MoedLog();
  const std::string id = SubmitOk(h, h.WriteJob("long", 2, 100));
  Job job = h.WaitForState(id, moe::v1::JOB_STATE_RUNNING, 30);
  ASSERT_EQ(job.state(), moe::v1::JOB_STATE_RUNNING);
  const std::string job_dir = h.state_dir() + "/jobs/" + id + "/";
  ASSERT_FALSE(ProcessesMentioning(job_dir).empty());
  CommandResult r = h.Moectl({"cancel", id});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, id + " CANCELLED\n");
  EXPECT_TRUE(ProcessesMentioning(job_dir).empty());
  // The ranks checkpointed on SIGTERM: their last words are in the log.
  std::vector<moe::v1::LogLine> lines = h.AllLogs(id);
  EXPECT_EQ(CountContaining(lines, 0, "got SIGTERM"), 1);
  EXPECT_EQ(CountContaining(lines, 1, "got SIGTERM"), 1);
  // A second cancel: the job has ended.
  CommandResult again = h.Moectl({"cancel", id});
  EXPECT_EQ(again.exit_code, 1);
  EXPECT_TRUE(absl::StrContains(again.err, "already ended (CANCELLED)")) << again.err;
}

TEST(DaemonLauncher, RankExitFailsTheJobWithTheReason) {
  DaemonHarness h(FakeOptions({{"FAKE_STEPS", "50"}, {"FAKE_STEP_SECONDS", "0.05"},
                               {"FAKE_FAIL_RANK", "1"}, {"FAKE_FAIL_STEP", "3"},
                               {"FAKE_FAIL_CODE", "7"}}));
  ASSERT_TRUE(h.Start()) << h.MoedLog();
  const std::string id = SubmitOk(h, h.WriteJob("fails", 2, 50));
  Job job = h.WaitFor(id, [](const Job& j) { return j.state() >= moe::v1::JOB_STATE_SUCCEEDED; }, 60);
  EXPECT_EQ(job.state(), moe::v1::JOB_STATE_FAILED);
  EXPECT_TRUE(absl::StrContains(job.reason(), "code 7")) << job.reason();
  EXPECT_TRUE(absl::StrContains(job.reason(), "rank 1 stderr: rank 1 failing on purpose"))
      << job.reason();
  CommandResult logs = h.Moectl({"logs", id, "-f"});
  EXPECT_EQ(logs.exit_code, 1);
  EXPECT_TRUE(absl::StrContains(logs.out, "[1] rank 1 failing on purpose at step 3"));
  EXPECT_TRUE(ProcessesMentioning(h.state_dir() + "/jobs/" + id + "/").empty());
}

// 143 is the worker's exit on SIGTERM (128 + 15): the reason says so ("exited with code 143"
// left users to decode it).
TEST(DaemonLauncher, ARankStoppedBySigtermFromOutsideSaysSo) {
  DaemonHarness h(FakeOptions({{"FAKE_STEPS", "20"}, {"FAKE_STEP_SECONDS", "0.05"},
                               {"FAKE_FAIL_RANK", "0"}, {"FAKE_FAIL_STEP", "2"},
                               {"FAKE_FAIL_CODE", "143"}}));
  ASSERT_TRUE(h.Start()) << h.MoedLog();
  const std::string id = SubmitOk(h, h.WriteJob("sigterm", 1, 20));
  Job job = h.WaitFor(id, [](const Job& j) { return j.state() >= moe::v1::JOB_STATE_SUCCEEDED; }, 60);
  EXPECT_EQ(job.state(), moe::v1::JOB_STATE_FAILED);
  EXPECT_TRUE(absl::StrContains(job.reason(), "rank 0 exited with code 143 (it stopped on a SIGTERM sent from "
                                              "outside moed)"))
      << job.reason();
}

TEST(DaemonLauncher, KilledRankFailsOrRestartsFromCheckpoint) {
  DaemonHarness h(FakeOptions({{"FAKE_STEPS", "40"}, {"FAKE_STEP_SECONDS", "0.1"}}));
  ASSERT_TRUE(h.Start()) << h.MoedLog();
  for (int max_restarts : {0, 1}) {
    const std::string id =
        SubmitOk(h, h.WriteJob(absl::StrCat("kill-", max_restarts), 2, 40, max_restarts));
    Job job = h.WaitFor(id, [](const Job& j) { return j.state() == moe::v1::JOB_STATE_RUNNING; }, 30);
    ASSERT_EQ(job.state(), moe::v1::JOB_STATE_RUNNING);
    // Wait for a few steps, then kill -9 rank 1.
    h.WaitFor(id, [&](const Job&) { return CountContaining(h.AllLogs(id), 1, "\"step\"") >= 3; }, 30);
    std::vector<int> ranks;
    for (int pid : ProcessesMentioning(h.state_dir() + "/jobs/" + id + "/")) {
      std::ifstream env(absl::StrCat("/proc/", pid, "/environ"));
      std::string all((std::istreambuf_iterator<char>(env)), std::istreambuf_iterator<char>());
      std::ifstream cmd(absl::StrCat("/proc/", pid, "/cmdline"));
      std::string c((std::istreambuf_iterator<char>(cmd)), std::istreambuf_iterator<char>());
      if (absl::StrContains(all, std::string("OMPI_COMM_WORLD_RANK=1\0", 23)) &&
          absl::StrContains(c, "fake_worker")) {
        ranks.push_back(pid);
      }
    }
    ASSERT_FALSE(ranks.empty());
    for (int pid : ranks) kill(pid, SIGKILL);
    job = h.WaitFor(id, [](const Job& j) { return j.state() >= moe::v1::JOB_STATE_SUCCEEDED; }, 90);
    if (max_restarts == 0) {
      EXPECT_EQ(job.state(), moe::v1::JOB_STATE_FAILED);
      EXPECT_TRUE(absl::StrContains(job.reason(), "rank 1 was killed by signal 9")) << job.reason();
    } else {
      EXPECT_EQ(job.state(), moe::v1::JOB_STATE_SUCCEEDED) << job.reason();
      EXPECT_EQ(job.restarts(), 1);
      std::vector<moe::v1::LogLine> lines = h.AllLogs(id);
      ExpectContiguous(lines);
      EXPECT_EQ(CountContaining(lines, 1, "resuming from step"), 1);
      EXPECT_EQ(CountContaining(lines, 1, "done after 40 steps"), 1);
    }
    EXPECT_TRUE(ProcessesMentioning(h.state_dir() + "/jobs/" + id + "/").empty());
  }
}

TEST(DaemonLauncher, MoedKilledMidJobReattachesAndLosesNoLine) {
  DaemonHarness h(FakeOptions({{"FAKE_STEPS", "30"}, {"FAKE_STEP_SECONDS", "0.1"}}));
  ASSERT_TRUE(h.Start()) << h.MoedLog();
  const std::string id = SubmitOk(h, h.WriteJob("survive", 2, 30));
  h.WaitFor(id, [&](const Job&) { return CountContaining(h.AllLogs(id), 0, "\"step\"") >= 5; }, 30);
  h.Kill9();
  std::this_thread::sleep_for(std::chrono::milliseconds(500));  // the ranks write on, unseen
  ASSERT_TRUE(h.Start()) << h.MoedLog();
  Job job = h.WaitFor(id, [](const Job& j) { return j.state() >= moe::v1::JOB_STATE_SUCCEEDED; }, 60);
  EXPECT_EQ(job.state(), moe::v1::JOB_STATE_SUCCEEDED) << job.reason();
  EXPECT_EQ(job.restarts(), 0);
  EXPECT_TRUE(absl::StrContains(h.MoedLog(), "reattached")) << h.MoedLog();
  std::vector<moe::v1::LogLine> lines = h.AllLogs(id);
  ExpectContiguous(lines);
  for (int rank : {0, 1}) {
    EXPECT_EQ(CountContaining(lines, rank, "\"step\""), 30) << "rank " << rank;
  }
}

TEST(DaemonLauncher, QueueHoldsSecondJobUntilFirstEnds) {
  DaemonHarness h(FakeOptions({{"FAKE_STEPS", "15"}, {"FAKE_STEP_SECONDS", "0.1"}}));
  ASSERT_TRUE(h.Start()) << h.MoedLog();
  const std::string first = SubmitOk(h, h.WriteJob("first", 2, 15));
  const std::string second = SubmitOk(h, h.WriteJob("second", 2, 15));
  Job a = h.WaitForState(first, moe::v1::JOB_STATE_RUNNING, 30);
  ASSERT_EQ(a.state(), moe::v1::JOB_STATE_RUNNING);
  Job b = h.WaitFor(second, [](const Job& j) { return !j.reason().empty(); }, 5);
  EXPECT_EQ(b.state(), moe::v1::JOB_STATE_QUEUED);
  EXPECT_TRUE(absl::StrContains(b.reason(), "waiting for 2 ranks: 2 of 2 in use")) << b.reason();
  b = h.WaitFor(second, [](const Job& j) { return j.state() != moe::v1::JOB_STATE_QUEUED; }, 60);
  a = h.WaitFor(first, [](const Job&) { return true; }, 1);
  EXPECT_EQ(a.state(), moe::v1::JOB_STATE_SUCCEEDED);
  EXPECT_GE(b.started_unix_ms(), a.ended_unix_ms());
  b = h.WaitForState(second, moe::v1::JOB_STATE_SUCCEEDED, 60);
  EXPECT_EQ(b.state(), moe::v1::JOB_STATE_SUCCEEDED);
  // A job asking for more ranks than moed may use is refused at submit.
  CommandResult big = h.Moectl({"submit", h.WriteJob("big", 4, 5)});
  EXPECT_EQ(big.exit_code, 1);
  EXPECT_TRUE(absl::StrContains(big.err, "at most 2")) << big.err;
}

TEST(DaemonLauncher, SilentWorkersFailOnLostHeartbeat) {
  HarnessOptions o = FakeOptions({{"FAKE_STEPS", "100000"}, {"FAKE_STEP_SECONDS", "0.1"}});
  o.heartbeat_timeout_s = 1.5;  // the fake worker never reports over gRPC
  DaemonHarness h(o);
  ASSERT_TRUE(h.Start()) << h.MoedLog();
  const std::string id = SubmitOk(h, h.WriteJob("silent", 2, 100));
  Job job = h.WaitFor(id, [](const Job& j) { return j.state() >= moe::v1::JOB_STATE_SUCCEEDED; }, 30);
  EXPECT_EQ(job.state(), moe::v1::JOB_STATE_FAILED);
  EXPECT_TRUE(absl::StrContains(job.reason(), "lost heartbeat")) << job.reason();
  EXPECT_TRUE(ProcessesMentioning(h.state_dir() + "/jobs/" + id + "/").empty());

  // With max_restarts the attempt moed killed is relaunched (it went FAILED 200 ms after
  // "restart 1 of 1": the kill's reason was read as the relaunch's own failure).
  const std::string again = SubmitOk(h, h.WriteJob("silent-again", 2, 100, /*max_restarts=*/1));
  job = h.WaitFor(again, [](const Job& j) { return j.state() >= moe::v1::JOB_STATE_SUCCEEDED; }, 40);
  EXPECT_EQ(job.state(), moe::v1::JOB_STATE_FAILED);
  EXPECT_EQ(job.restarts(), 1);
  EXPECT_TRUE(absl::StrContains(job.reason(), "lost heartbeat")) << job.reason();
  EXPECT_TRUE(absl::StrContains(job.reason(), "(after 1 restarts)")) << job.reason();
  EXPECT_TRUE(std::filesystem::is_directory(h.state_dir() + "/jobs/" + again + "/attempt-1")) << again;
}

// A rank's reporter that could not deliver its metric points leaves them in the attempt's folder;
// moed stores them when the attempt ends. A file cut short (here inside its last record, beside a
// point at a step the job cannot reach) gives what parses, one line in moed's log naming the file,
// and the job still succeeds; the file is gone afterwards.
TEST(DaemonLauncher, ADamagedMetricsSpillStoresWhatParsesAndTheJobSucceeds) {
  const std::string dir = MakeTempDir("moe-launcher-spill-");
  const std::string prepared = dir + "/spill.pb";
  std::vector<moe::v1::MetricPoint> points;
  for (int64_t step : {1, 2, 9, 3, 4}) {
    points.emplace_back().set_step(step);
    points.back().set_loss(5.0 - static_cast<double>(step) / 4);
  }
  ASSERT_TRUE(WriteMetricsSpill(prepared, points).ok());
  absl::StatusOr<std::string> bytes = ReadFile(prepared);
  ASSERT_TRUE(bytes.ok());
  std::ofstream(prepared, std::ios::binary | std::ios::trunc)
      << bytes->substr(0, bytes->size() - 3);  // into the last record
  DaemonHarness h(FakeOptions(
      {{"FAKE_STEPS", "4"}, {"FAKE_STEP_SECONDS", "0.05"}, {"FAKE_SPILL_FILE", prepared}}));
  ASSERT_TRUE(h.Start()) << h.MoedLog();
  const std::string id = SubmitOk(h, h.WriteJob("spill", 2, 4));
  Job job =
      h.WaitFor(id, [](const Job& j) { return j.state() >= moe::v1::JOB_STATE_SUCCEEDED; }, 60);
  EXPECT_EQ(job.state(), moe::v1::JOB_STATE_SUCCEEDED) << job.reason() << h.MoedLog();
  std::vector<int64_t> steps;
  for (const moe::v1::MetricPoint& p : h.AllMetrics(id)) steps.push_back(p.step());
  EXPECT_EQ(steps, (std::vector<int64_t>{1, 2, 3}));
  EXPECT_EQ(job.latest().step(), 3);
  const std::string attempt_dir = h.state_dir() + "/jobs/" + id + "/attempt-0";
  const std::string spill = MetricsSpillPath(attempt_dir, 0);
  const std::string log = h.MoedLog();
  int said = 0;
  for (absl::string_view line : absl::StrSplit(log, '\n')) {
    if (absl::StrContains(line, spill)) {
      ++said;
      EXPECT_TRUE(absl::StrContains(line, "is damaged")) << line;
      EXPECT_TRUE(absl::StrContains(line, "stored 3 of the 4 points before the damage")) << line;
      EXPECT_TRUE(absl::StrContains(line, "skipped 1 at steps outside 0..4")) << line;
    }
  }
  EXPECT_EQ(said, 1) << log;
  EXPECT_TRUE(MetricsSpillFiles(attempt_dir).empty());
}

}  // namespace
}  // namespace moe::testing
