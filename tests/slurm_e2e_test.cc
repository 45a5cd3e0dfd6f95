// End to end on a real one-machine Slurm cluster (scripts/slurm_test_cluster.sh: Debian's munge,
// slurmctld, slurmd, started without systemd): moed with `launcher: slurm` runs a 2-rank CPU job
// through sbatch + srun --mpi=pmix to SUCCEEDED with its logs and metrics; a cancelled job leaves
// squeue and no process behind; the time-limit signal makes the job checkpoint, requeue itself
// and resume. Skips (with the reason) when not root, when MOE_SKIP_SLURM=1, or when the cluster
// cannot be started.
#include <sys/file.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <iterator>
#include <string>
#include <chrono>
#include <thread>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "gtest/gtest.h"
#include "tests/support/daemon_harness.h"
#include "tests/support/paths.h"

namespace moe::testing {
namespace {

using moe::v1::Job;
using Clock = std::chrono::steady_clock;

constexpr char kSlurmDir[] = "/tmp/moe-slurm";

std::string ClusterScript() { return SourceDir() + "/scripts/slurm_test_cluster.sh"; }
std::map<std::string, std::string> SlurmEnv() {
  return {{"SLURM_CONF", absl::StrCat(kSlurmDir, "/etc/slurm.conf")},
          {"MOE_SLURM_DIR", kSlurmDir}};
}

bool Ended(const Job& j) { return j.state() >= moe::v1::JOB_STATE_SUCCEEDED; }

std::string ReadAll(const std::string& path) {
  std::ifstream in(path);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

// Live processes whose environment holds SLURM_JOB_ID=<id>: what a Slurm job left running.
std::vector<int> ProcessesOfSlurmJob(const std::string& slurm_id) {
  std::vector<int> out;
  const std::string needle = absl::StrCat("SLURM_JOB_ID=", slurm_id);
  for (int pid : ProcessesMentioning("")) {
    std::string env = ReadAll(absl::StrCat("/proc/", pid, "/environ"));
    std::string stat = ReadAll(absl::StrCat("/proc/", pid, "/stat"));
    size_t close = stat.rfind(')');
    if (close != std::string::npos && close + 2 < stat.size() && stat[close + 2] == 'Z') continue;
    for (absl::string_view var : absl::StrSplit(env, '\0')) {
      if (var == needle) out.push_back(pid);
    }
  }
  return out;
}

bool AnyLogContains(const std::vector<moe::v1::LogLine>& lines, int rank, const std::string& s) {
  for (const auto& l : lines) {
    if (l.rank() == rank && absl::StrContains(l.text(), s)) return true;
  }
  return false;
}

class SlurmE2e : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    skip_.clear();
    if (const char* s = std::getenv("MOE_SKIP_SLURM"); s != nullptr && std::string(s) == "1") {
      skip_ = "MOE_SKIP_SLURM=1";
      return;
    }
    if (geteuid() != 0) {
      skip_ = "needs root to install and run a Slurm test cluster (munged, slurmctld, slurmd)";
      return;
    }
    // One test process at a time drives the cluster (ctest -j runs tests side by side).
    lock_fd_ = open("/tmp/moe-slurm-test.lock", O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (lock_fd_ < 0 || flock(lock_fd_, LOCK_EX) != 0) {
      skip_ = "cannot lock /tmp/moe-slurm-test.lock";
      return;
    }
    CommandResult r = RunCommand({"/bin/bash", ClusterScript(), "start"}, SlurmEnv(), 900);
    if (r.exit_code != 0) {
      skip_ = absl::StrCat("the Slurm test cluster did not start (exit ", r.exit_code,
                           "): ", r.out, r.err);
    }
  }

  static void TearDownTestSuite() {
    if (lock_fd_ < 0) return;
    if (skip_.empty()) RunCommand({"/bin/bash", ClusterScript(), "stop"}, SlurmEnv(), 120);
    close(lock_fd_);  // releases the lock
    lock_fd_ = -1;
  }

  void SetUp() override {
    if (!skip_.empty()) GTEST_SKIP() << "Slurm tests skipped: " << skip_;
  }

  static HarnessOptions Options() {
    HarnessOptions o;
    o.max_ranks = 1;  // Slurm jobs do not count against moed's own --max-ranks
    o.cancel_grace_s = 60;
    o.env = SlurmEnv();
    return o;
  }

  // A tiny 2-rank CPU job for the test cluster's "debug" partition.
  static std::string WriteSlurmJob(DaemonHarness& h, const std::string& name, int steps,
                                   const std::string& extra_yaml = "") {
    std::string path = h.work_dir() + "/" + name + ".yaml";
    std::ofstream out(path);
    out << "name: " << name << R"(
model:
  d_model: 32
  n_layers: 1
  n_heads: 2
  n_kv_heads: 1
  seq_len: 32
  moe:
    num_experts: 2
    top_k: 1
    expert_hidden: 32
data:
  path: )" << ShakespearePath()
        << R"(
  tokenizer: char
train:
  steps: )" << steps
        << R"(
  batch_size: 4
  lr: 1.0e-3
  warmup_steps: 1
  log_every: 1
  eval_every: 5
  eval_batches: 1
resources:
  ranks: 2
  device: cpu
  launcher: slurm
  threads_per_rank: 1
  slurm:
    partition: debug
    nodes: 1
    ranks_per_node: 2
)" << extra_yaml;
    return path;
  }

  static std::string Submit(DaemonHarness& h, const std::string& path) {
    CommandResult r = h.Moectl({"submit", path});
    EXPECT_EQ(r.exit_code, 0) << r.out << r.err;
    return std::string(absl::StripAsciiWhitespace(r.out.substr(0, r.out.find('\n'))));
  }

  // A Slurm client command (found on PATH) against the test cluster.
  static CommandResult Slurm(const std::vector<std::string>& argv) {
    std::vector<std::string> args = {"/usr/bin/env"};
    args.insert(args.end(), argv.begin(), argv.end());
    return RunCommand(args, SlurmEnv(), 60);
  }

  // A long job (checkpoints only when stopped) submitted and seen training: its moed id and
  // Slurm id, or empty ones (the failure recorded) when it did not get that far.
  static std::pair<std::string, std::string> SubmitTraining(DaemonHarness& h, const std::string& name, int steps) {
    const std::string id = Submit(h, WriteSlurmJob(h, name, steps, "checkpoint:\n  every: 0\n"));
    if (id.empty()) return {};
    Job job = h.WaitFor(id, [](const Job& j) { return j.latest().step() >= 3 || Ended(j); }, 120);
    if (job.state() != moe::v1::JOB_STATE_RUNNING) {
      ADD_FAILURE() << "job " << id << " is not training: " << job.reason() << h.MoedLog();
      return {};
    }
    return {id, job.slurm_job_id()};
  }

  // A requeued job, back in Slurm's queue: its requeue delay (BeginTime, 2 minutes) skipped, it
  // runs again, resumes from its checkpoint and SUCCEEDS with every step. The job at its end.
  static Job RunsAgainToTheEnd(DaemonHarness& h, const std::string& id, const std::string& slurm_id, int steps) {
    CommandResult u = Slurm({"scontrol", "update", "JobId=" + slurm_id, "StartTime=now"});
    EXPECT_EQ(u.exit_code, 0) << u.out << u.err;
    Job job = h.WaitFor(id, Ended, 150);
    EXPECT_EQ(job.state(), moe::v1::JOB_STATE_SUCCEEDED) << job.reason() << h.MoedLog();
    EXPECT_EQ(job.slurm_job_id(), slurm_id);  // the same Slurm job, run again
    EXPECT_EQ(job.latest().step(), steps);
    EXPECT_TRUE(AnyLogContains(h.AllLogs(id), 0, "resumed from")) << "the requeued run did not resume";
    return job;
  }

  static std::string skip_;
  static int lock_fd_;
};

std::string SlurmE2e::skip_;
int SlurmE2e::lock_fd_ = -1;


TEST_F(SlurmE2e, TwoRankCpuJobSucceedsWithLogsAndMetrics) {
  DaemonHarness h(Options());
  ASSERT_TRUE(h.Start()) << h.MoedLog();
  const std::string id = Submit(h, WriteSlurmJob(h, "slurm-ok", 12));
  ASSERT_FALSE(id.empty());
  Job job = h.WaitFor(id, Ended, 150);
  ASSERT_EQ(job.state(), moe::v1::JOB_STATE_SUCCEEDED) << job.reason() << h.MoedLog();
  EXPECT_FALSE(job.slurm_job_id().empty());
  char host[256] = {};
  gethostname(host, sizeof(host) - 1);
  EXPECT_EQ(job.node_list(), std::string(host).substr(0, std::string(host).find('.')));

  // Logs came over gRPC (CapturesOutput() is false for slurm): rank 0 says the world has 2 ranks.
  std::vector<moe::v1::LogLine> lines = h.AllLogs(id);
  EXPECT_TRUE(AnyLogContains(lines, 0, "2 rank(s)")) << lines.size() << " lines";
  std::vector<moe::v1::MetricPoint> points = h.AllMetrics(id);
  ASSERT_FALSE(points.empty());
  EXPECT_EQ(points.back().step(), 12);
  EXPECT_EQ(job.latest().step(), 12);
  // srun started two tasks, each wrote its own output file.
  const std::string run = absl::StrCat(h.state_dir(), "/jobs/", id, "/attempt-0/ranks/");
  EXPECT_TRUE(absl::StrContains(ReadAll(run + "rank.0.out"), "2 rank(s)"));
  EXPECT_EQ(access((run + "rank.1.out").c_str(), F_OK), 0);

  CommandResult st = h.Moectl({"status", id});
  EXPECT_EQ(st.exit_code, 0) << st.err;
  EXPECT_TRUE(absl::StrContains(st.out, job.slurm_job_id())) << st.out;
  EXPECT_TRUE(absl::StrContains(st.out, job.node_list())) << st.out;
}

TEST_F(SlurmE2e, CancelledJobLeavesSqueueAndNoProcess) {
  DaemonHarness h(Options());
  ASSERT_TRUE(h.Start()) << h.MoedLog();
  const std::string id = Submit(h, WriteSlurmJob(h, "slurm-cancel", 100000));
  ASSERT_FALSE(id.empty());
  Job job = h.WaitFor(id, [](const Job& j) { return j.latest().step() >= 2 || Ended(j); }, 120);
  ASSERT_EQ(job.state(), moe::v1::JOB_STATE_RUNNING) << job.reason() << h.MoedLog();
  const std::string slurm_id = job.slurm_job_id();
  ASSERT_FALSE(slurm_id.empty());
  ASSERT_FALSE(ProcessesOfSlurmJob(slurm_id).empty());

  CommandResult c = h.Moectl({"cancel", id, "--wait", "90"}, 120);
  EXPECT_EQ(c.exit_code, 0) << c.out << c.err;
  job = h.WaitFor(id, Ended, 30);
  EXPECT_EQ(job.state(), moe::v1::JOB_STATE_CANCELLED) << job.reason();
  // moed stores CANCELLED only once Slurm reports the job ended (not even COMPLETING).
  CommandResult q = Slurm({"squeue", "-h", "-j", slurm_id, "-o", "%i %T"});
  EXPECT_EQ(absl::StripAsciiWhitespace(q.out), "") << q.err;
  EXPECT_TRUE(ProcessesOfSlurmJob(slurm_id).empty());
  EXPECT_TRUE(ProcessesMentioning(h.state_dir() + "/jobs/" + id + "/").empty());
  // The ranks got SIGTERM and wrote a checkpoint before they exited.
  bool checkpoint = false;
  for (const auto& l : h.AllLogs(id)) checkpoint |= absl::StrContains(l.text(), "checkpoint");
  EXPECT_TRUE(checkpoint) << "no log line mentions a checkpoint";
}

TEST_F(SlurmE2e, TimeLimitSignalCheckpointsRequeuesAndResumes) {
  DaemonHarness h(Options());
  ASSERT_TRUE(h.Start()) << h.MoedLog();
  // Enough steps that the run is still training when the signal lands: with 150 the tiny job
  // once finished first on a loaded machine (SUCCEEDED, no requeue to see).
  const int kSteps = 800;
  const auto [id, slurm_id] = SubmitTraining(h, "slurm-requeue", kSteps);
  ASSERT_FALSE(slurm_id.empty());

  // What Slurm does --signal=B:USR1@N seconds before the time limit: SIGUSR1 to the batch shell.
  CommandResult s = Slurm({"scancel", "--batch", "--signal=USR1", slurm_id});
  ASSERT_EQ(s.exit_code, 0) << s.out << s.err;
  // The script passes it to the ranks (checkpoint, keep going), then requeues the job; Slurm
  // holds a requeued job for a while (BeginTime), which moed shows as QUEUED with that reason.
  Job job = h.WaitFor(id, [](const Job& j) {
    return (j.state() == moe::v1::JOB_STATE_QUEUED && absl::StrContains(j.reason(), "BeginTime")) ||
           Ended(j);
  }, 120);
  ASSERT_EQ(job.state(), moe::v1::JOB_STATE_QUEUED) << job.reason() << h.MoedLog();
  const std::string ckpt_dir = absl::StrCat(h.state_dir(), "/jobs/", id, "/checkpoints");
  CommandResult ls = RunCommand({"/bin/bash", "-c", "ls -d " + ckpt_dir + "/step_*/MANIFEST"}, {}, 10);
  EXPECT_EQ(ls.exit_code, 0) << "no complete checkpoint in " << ckpt_dir << ": " << ls.err;

  RunsAgainToTheEnd(h, id, slurm_id, kSteps);
  const std::string job_dir = absl::StrCat(h.state_dir(), "/jobs/", id);
  EXPECT_EQ(ReadAll(job_dir + "/attempt-0/exit_status"), "requeued\n");
  EXPECT_EQ(ReadAll(job_dir + "/attempt-1/exit_status"), "0\n");
  CommandResult sc = Slurm({"scontrol", "show", "job", "-o", slurm_id});
  EXPECT_TRUE(absl::StrContains(sc.out, "Restarts=1")) << sc.out;
}

// An administrator's `scontrol requeuehold State=SpecialExit`: Slurm stops the running job and
// holds it in SPECIAL_EXIT. moed shows it QUEUED with a reason that says how to go on (not
// ended: nothing failed); `scontrol release` runs it again, from its checkpoint, to SUCCEEDED.
TEST_F(SlurmE2e, SpecialExitHoldIsQueuedUntilReleasedThenResumes) {
  DaemonHarness h(Options());
  ASSERT_TRUE(h.Start()) << h.MoedLog();
  const int kSteps = 800;
  const auto [id, slurm_id] = SubmitTraining(h, "slurm-special-exit", kSteps);
  ASSERT_FALSE(slurm_id.empty());

  CommandResult r = Slurm({"scontrol", "requeuehold", "State=SpecialExit", slurm_id});
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  Job job = h.WaitFor(id, [](const Job& j) {
    return (j.state() == moe::v1::JOB_STATE_QUEUED && absl::StrContains(j.reason(), "scontrol release")) || Ended(j);
  }, 120);
  ASSERT_EQ(job.state(), moe::v1::JOB_STATE_QUEUED) << job.reason() << h.MoedLog();
  EXPECT_TRUE(absl::StrContains(job.reason(), "special exit")) << job.reason();
  // Still held a while later: moed neither ends it nor loses it.
  std::this_thread::sleep_for(std::chrono::seconds(3));
  job = h.WaitFor(id, [](const Job&) { return true; }, 10);
  EXPECT_EQ(job.state(), moe::v1::JOB_STATE_QUEUED) << job.reason();

  CommandResult rel = Slurm({"scontrol", "release", slurm_id});
  ASSERT_EQ(rel.exit_code, 0) << rel.out << rel.err;
  RunsAgainToTheEnd(h, id, slurm_id, kSteps);
}

}  // namespace
}  // namespace moe::testing
