// End to end through the real moed, moectl and moe-worker on a temp state dir and free ports:
// a 2-rank CPU job trains to SUCCEEDED with metrics matching its log and its per-rank expert load
// in moectl status; moed killed mid-job and restarted still finishes it with complete logs and
// metrics, and a `moectl logs -f` that was following it reconnects and prints every line once; a
// rank killed with max_restarts 1
// resumes from its checkpoint and finishes; a CPU job's points carry its peak memory, in
// `moectl metrics --format csv` and in the table; with moed down when a job ends, the next moed
// still stores every metric point the job logged (from its reporter's spill file).
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <fstream>
#include <iterator>
#include <map>
#include <set>
#include <string>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "common/metrics_spill.h"
#include "gtest/gtest.h"
#include "tests/support/daemon_harness.h"

namespace moe::testing {
namespace {

using moe::v1::Job;

bool Ended(const Job& j) { return j.state() >= moe::v1::JOB_STATE_SUCCEEDED; }

// moectl's output lines, sorted: ranks interleave differently in a live stream.
std::vector<std::string> SortedLines(const std::string& out) {
  std::vector<std::string> lines = absl::StrSplit(out, '\n', absl::SkipEmpty());
  std::sort(lines.begin(), lines.end());
  return lines;
}

void ExpectContiguous(const std::vector<moe::v1::LogLine>& lines) {
  std::map<int, int64_t> last;
  for (const auto& l : lines) {
    ASSERT_EQ(l.seq(), last[l.rank()] + 1) << "rank " << l.rank() << ": " << l.text();
    last[l.rank()] = l.seq();
  }
}

// Every metric point has its JSON line in rank 0's log, with the same loss.
void ExpectMetricsMatchLog(const std::vector<moe::v1::MetricPoint>& points,
                           const std::vector<moe::v1::LogLine>& lines) {
  std::set<std::string> rank0;
  for (const auto& l : lines) {
    if (l.rank() == 0) rank0.insert(l.text().substr(0, l.text().find(", \"aux_loss\"")));
  }
  for (const auto& p : points) {
    std::string head = absl::StrFormat("{\"step\": %d, \"loss\": %.6f", p.step(), p.loss());
    EXPECT_TRUE(rank0.count(head)) << "no log line for " << head;
  }
}

HarnessOptions RealWorker() {
  HarnessOptions o;
  o.max_ranks = 2;
  o.cancel_grace_s = 20;
  return o;
}

TEST(E2eControl, TwoRankCpuJobSucceedsWithMetricsMatchingItsLog) {
  DaemonHarness h(RealWorker());
  ASSERT_TRUE(h.Start()) << h.MoedLog();
  CommandResult r = h.Moectl({"submit", h.WriteJob("e2e-ok", 2, 10), "--follow"}, 600);
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err << h.MoedLog();
  const std::string id = r.out.substr(0, r.out.find('\n'));
  Job job = h.WaitFor(id, Ended, 10);
  EXPECT_EQ(job.state(), moe::v1::JOB_STATE_SUCCEEDED) << job.reason();
  std::vector<moe::v1::LogLine> lines = h.AllLogs(id);
  ExpectContiguous(lines);
  std::vector<moe::v1::MetricPoint> points = h.AllMetrics(id);
  ASSERT_FALSE(points.empty());
  EXPECT_EQ(points.back().step(), 10);
  EXPECT_EQ(job.latest().step(), 10);
  ExpectMetricsMatchLog(points, lines);
  CommandResult m = h.Moectl({"metrics", id});
  EXPECT_EQ(m.exit_code, 0) << m.err;
  EXPECT_TRUE(absl::StrContains(m.out, "* train")) << m.out;
  // Per-expert load per rank: 4 experts on 2 ranks, experts 0-1 on rank 0 and 2-3 on rank 1.
  EXPECT_TRUE(absl::StrContains(m.out, "TOKENS % PER RANK")) << m.out;
  CommandResult st = h.Moectl({"status", id});
  EXPECT_EQ(st.exit_code, 0) << st.err;
  EXPECT_TRUE(absl::StrContains(st.out, "experts   4 on 2 ranks (2 each), step 10: tokens routed"))
      << st.out;
  EXPECT_TRUE(absl::StrContains(st.out, "rank 0  experts 0-1  tokens ")) << st.out;
  EXPECT_TRUE(absl::StrContains(st.out, "rank 1  experts 2-3  tokens ")) << st.out;
  EXPECT_TRUE(ProcessesMentioning(h.state_dir() + "/jobs/" + id + "/").empty());
}

TEST(E2eControl, MoedKilledMidJobRestartsAndTheJobFinishesComplete) {
  DaemonHarness h(RealWorker());
  ASSERT_TRUE(h.Start()) << h.MoedLog();
  CommandResult sub = h.Moectl({"submit", h.WriteJob("e2e-survive", 2, 60)});
  ASSERT_EQ(sub.exit_code, 0) << sub.err;
  const std::string id = sub.out.substr(0, sub.out.find('\n'));
  // A follower streaming the logs while moed dies: it must reconnect and end with every line.
  CommandResult follow;
  std::thread follower([&] { follow = h.Moectl({"logs", id, "-f"}, 900); });
  Job job = h.WaitFor(id, [](const Job& j) { return j.latest().step() >= 3 || Ended(j); }, 300);
  if (Ended(job)) follower.join();
  ASSERT_FALSE(Ended(job)) << "the job ended before moed could be killed: " << job.reason();
  h.Kill9();
  ASSERT_TRUE(h.Start()) << h.MoedLog();
  job = h.WaitFor(id, Ended, 600);
  follower.join();
  EXPECT_EQ(job.state(), moe::v1::JOB_STATE_SUCCEEDED) << job.reason() << h.MoedLog();
  std::vector<moe::v1::LogLine> lines = h.AllLogs(id);
  ExpectContiguous(lines);
  std::vector<moe::v1::MetricPoint> points = h.AllMetrics(id);
  ASSERT_FALSE(points.empty());
  EXPECT_EQ(points.back().step(), 60);
  ExpectMetricsMatchLog(points, lines);
  // moectl logs reads the whole job back and exits 0 for a job that succeeded.
  CommandResult logs = h.Moectl({"logs", id, "-f"});
  EXPECT_EQ(logs.exit_code, 0) << logs.err;
  EXPECT_EQ(static_cast<size_t>(std::count(logs.out.begin(), logs.out.end(), '\n')), lines.size());
  // The follower across the restart printed the same lines, each once, and said it reconnected.
  EXPECT_EQ(follow.exit_code, 0) << follow.err;
  EXPECT_TRUE(absl::StrContains(follow.err, "reconnecting")) << follow.err;
  EXPECT_EQ(SortedLines(follow.out), SortedLines(logs.out));
}

// The live ranks (moe-worker processes) of a job.
std::vector<int> WorkersOf(DaemonHarness& h, const std::string& id) {
  std::vector<int> out;
  for (int pid : ProcessesMentioning(h.state_dir() + "/jobs/" + id + "/")) {
    std::ifstream comm(absl::StrCat("/proc/", pid, "/comm"));
    std::string name;
    if (std::getline(comm, name) && name == "moe-worker") out.push_back(pid);
  }
  return out;
}

// moed away when a job ends: rank 0's reporter cannot deliver its last points, so it leaves them
// in the attempt's folder, and the next moed stores them as it finishes the attempt. Every logged
// step is then stored once, as the worker's log says. (The ranks are paused while moed stops, so
// the job cannot end first.)
TEST(E2eControl, MoedDownWhenTheJobEndsLosesNoMetricPoint) {
  constexpr int kSteps = 60;
  DaemonHarness h(RealWorker());
  ASSERT_TRUE(h.Start()) << h.MoedLog();
  CommandResult sub = h.Moectl({"submit", h.WriteJob("e2e-spill", 2, kSteps)});
  ASSERT_EQ(sub.exit_code, 0) << sub.err;
  const std::string id = sub.out.substr(0, sub.out.find('\n'));
  std::vector<int> workers;
  h.WaitFor(id, [&](const Job& j) { return (workers = WorkersOf(h, id)).size() == 2 || Ended(j); },
            300);
  ASSERT_EQ(workers.size(), 2u) << h.MoedLog();
  // Paused once moed has a point or two: those come again in the spill file, stored once.
  Job job = h.WaitFor(id, [](const Job& j) { return j.latest().step() >= 1 || Ended(j); }, 300);
  for (int pid : workers) kill(pid, SIGSTOP);
  ASSERT_FALSE(Ended(job)) << job.reason();
  job = h.WaitFor(id, [](const Job&) { return true; }, 5);
  ASSERT_LT(job.latest().step(), kSteps) << "the job reported its last step before it was paused";
  h.Stop();
  for (int pid : workers) kill(pid, SIGCONT);
  // The ranks train on and end while moed is away; the monitor then writes the exit status.
  const std::string attempt_dir = h.state_dir() + "/jobs/" + id + "/attempt-0";
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(300);
  while (access((attempt_dir + "/exit_status").c_str(), F_OK) != 0 &&
         std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  ASSERT_EQ(access((attempt_dir + "/exit_status").c_str(), F_OK), 0) << "the job did not end";
  EXPECT_EQ(MetricsSpillFiles(attempt_dir),
            std::vector<std::string>{MetricsSpillPath(attempt_dir, 0)});

  ASSERT_TRUE(h.Start()) << h.MoedLog();
  job = h.WaitFor(id, Ended, 120);
  EXPECT_EQ(job.state(), moe::v1::JOB_STATE_SUCCEEDED) << job.reason() << h.MoedLog();
  std::vector<moe::v1::MetricPoint> points = h.AllMetrics(id);
  std::vector<int64_t> steps, expected;
  for (const auto& p : points) steps.push_back(p.step());
  for (int s = 1; s <= kSteps; ++s) expected.push_back(s);
  EXPECT_EQ(steps, expected) << h.MoedLog();
  EXPECT_EQ(job.latest().step(), kSteps);
  std::vector<moe::v1::LogLine> lines = h.AllLogs(id);
  ExpectMetricsMatchLog(points, lines);
  int rank0_steps = 0;
  for (const auto& l : lines) {
    if (l.rank() == 0 && absl::StartsWith(l.text(), "{\"step\": ")) ++rank0_steps;
  }
  EXPECT_EQ(rank0_steps, kSteps);  // the worker's own record: one line per logged step
  EXPECT_TRUE(MetricsSpillFiles(attempt_dir).empty());
  CommandResult st = h.Moectl({"status", id});
  EXPECT_TRUE(absl::StrContains(st.out, absl::StrCat("step      ", kSteps, "/", kSteps))) << st.out;
}

TEST(E2eControl, KilledRankRestartsFromCheckpointAndFinishes) {
  DaemonHarness h(RealWorker());
  ASSERT_TRUE(h.Start()) << h.MoedLog();
  CommandResult sub =
      h.Moectl({"submit", h.WriteJob("e2e-restart", 2, 60, 1, "checkpoint:\n  every: 2\n")});
  ASSERT_EQ(sub.exit_code, 0) << sub.err;
  const std::string id = sub.out.substr(0, sub.out.find('\n'));
  Job job = h.WaitFor(id, [](const Job& j) { return j.latest().step() >= 5 || Ended(j); }, 300);
  ASSERT_FALSE(Ended(job)) << job.reason();
  int killed = 0;
  for (int pid : ProcessesMentioning(h.state_dir() + "/jobs/" + id + "/")) {
    std::ifstream env(absl::StrCat("/proc/", pid, "/environ"));
    std::string all((std::istreambuf_iterator<char>(env)), std::istreambuf_iterator<char>());
    std::ifstream cmd(absl::StrCat("/proc/", pid, "/cmdline"));
    std::string c((std::istreambuf_iterator<char>(cmd)), std::istreambuf_iterator<char>());
    if (absl::StrContains(all, std::string("OMPI_COMM_WORLD_RANK=1\0", 23)) &&
        absl::StrContains(c, "moe-worker")) {
      killed += kill(pid, SIGKILL) == 0;
    }
  }
  ASSERT_GT(killed, 0);
  job = h.WaitFor(id, Ended, 600);
  EXPECT_EQ(job.state(), moe::v1::JOB_STATE_SUCCEEDED) << job.reason() << h.MoedLog();
  EXPECT_EQ(job.restarts(), 1);
  ExpectContiguous(h.AllLogs(id));
  EXPECT_EQ(h.AllMetrics(id).back().step(), 60);
}

TEST(E2eControl, CpuJobReportsPeakMemoryInMetrics) {
  DaemonHarness h(RealWorker());
  ASSERT_TRUE(h.Start()) << h.MoedLog();
  CommandResult r = h.Moectl({"submit", h.WriteJob("e2e-memory", 1, 3), "--follow"}, 600);
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err << h.MoedLog();
  const std::string id = r.out.substr(0, r.out.find('\n'));
  Job job = h.WaitFor(id, Ended, 10);
  EXPECT_EQ(job.state(), moe::v1::JOB_STATE_SUCCEEDED) << job.reason();

  CommandResult csv = h.Moectl({"metrics", id, "--format", "csv"});
  ASSERT_EQ(csv.exit_code, 0) << csv.err;
  std::vector<std::string> lines = absl::StrSplit(csv.out, '\n', absl::SkipEmpty());
  ASSERT_EQ(lines.size(), 4u) << csv.out;  // the header and steps 1-3
  std::vector<std::string> header = absl::StrSplit(lines[0], ',');
  const size_t col = std::find(header.begin(), header.end(), "peak_memory_mb") - header.begin();
  ASSERT_LT(col, header.size()) << lines[0];
  for (size_t i = 1; i < lines.size(); ++i) {
    std::vector<std::string> row = absl::StrSplit(lines[i], ',');
    ASSERT_EQ(row.size(), header.size()) << lines[i];
    double mb = 0;
    ASSERT_TRUE(absl::SimpleAtod(row[col], &mb)) << lines[i];
    EXPECT_GT(mb, 1) << lines[i];  // a worker's resident set is megabytes, at least
  }
  CommandResult table = h.Moectl({"metrics", id});
  EXPECT_EQ(table.exit_code, 0) << table.err;
  EXPECT_TRUE(absl::StrContains(table.out, "PEAK_MB")) << table.out;
}

}  // namespace
}  // namespace moe::testing
