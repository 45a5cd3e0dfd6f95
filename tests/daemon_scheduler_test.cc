// Scheduler against the Launcher interface alone: a stand-in batch launcher (what SlurmLauncher
// is to moed) and a stand-in launcher on this machine, so the batch path (submitted, pending with
// the batch system's reason, placed, requeued, ended) runs without Slurm.
#include "daemon/scheduler.h"

#include <chrono>
#include <mutex>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "tests/support/paths.h"

namespace moe::daemon {
namespace {

using std::chrono::milliseconds;

// Runs nothing: every attempt stays running until the test ends it.
class FakeLauncher : public Launcher {
 public:
  explicit FakeLauncher(bool batch) : batch_(batch) {}
  std::string name() const override { return batch_ ? "fakebatch" : "fakelocal"; }
  absl::StatusOr<std::string> Launch(const LaunchRequest&, const RecordLaunch& record) override {
    const std::string handle = batch_ ? "batch=7" : "local=1";
    if (absl::Status s = record(handle); !s.ok()) return s;
    std::lock_guard<std::mutex> lock(mu_);
    ++launches_;
    return handle;
  }
  ProcessState Poll(const std::string&) override {
    std::lock_guard<std::mutex> lock(mu_);
    ProcessState ps;
    if (exited_) ps.kind = ProcessState::kExited;
    return ps;
  }
  void Terminate(const std::string&) override {}
  void Kill(const std::string&) override {
    std::lock_guard<std::mutex> lock(mu_);
    ++kills_;
  }
  bool AnyAlive(const std::string&) override {
    std::lock_guard<std::mutex> lock(mu_);
    return !exited_;
  }
  bool CapturesOutput() const override { return false; }
  std::vector<OutputFile> OutputFiles(const std::string&) override { return {}; }
  bool RunsOnThisMachine() const override { return !batch_; }
  std::vector<int> Gpus(const std::string&) const override { return {}; }
  void Describe(const std::string&, moe::v1::Job*) const override {}
  BatchJob BatchJobOf(const std::string& handle) const override {
    if (!batch_ || handle.empty()) return {};
    return {"Fakebatch", "7"};
  }
  BatchState BatchStateOf(const std::string&) override {
    std::lock_guard<std::mutex> lock(mu_);
    return state_;
  }

  void SetState(BatchState state) {
    std::lock_guard<std::mutex> lock(mu_);
    state_ = std::move(state);
  }
  void Exit() {
    std::lock_guard<std::mutex> lock(mu_);
    exited_ = true;
  }
  int launches() {
    std::lock_guard<std::mutex> lock(mu_);
    return launches_;
  }
  int kills() {
    std::lock_guard<std::mutex> lock(mu_);
    return kills_;
  }

 private:
  const bool batch_;
  std::mutex mu_;
  BatchState state_;
  bool exited_ = false;
  int launches_ = 0;
  int kills_ = 0;
};

moe::v1::JobSpec Spec(moe::v1::Launcher launcher, int ranks) {
  moe::v1::JobSpec s;
  s.set_name("fake");
  s.mutable_resources()->set_ranks(ranks);
  s.mutable_resources()->set_launcher(launcher);
  s.mutable_train()->set_steps(10);
  return s;
}

class DaemonScheduler : public ::testing::Test {
 protected:
  void SetUp() override { Start(milliseconds(60000)); }
  void Start(milliseconds heartbeat_timeout) {
    scheduler_.reset();
    const std::string dir = moe::testing::MakeTempDir("moe-scheduler-");
    auto store = JobStore::Open(dir + "/moed.db");
    ASSERT_TRUE(store.ok()) << store.status();
    store_ = *std::move(store);
    SchedulerOptions o;
    o.state_dir = dir;
    o.max_ranks = 2;
    o.poll_interval = milliseconds(10);
    o.heartbeat_timeout = heartbeat_timeout;
    scheduler_ = std::make_unique<Scheduler>(o, store_.get(), Launchers{&local_, &batch_});
    ASSERT_TRUE(scheduler_->Recover().ok());
    scheduler_->Start();
  }
  void TearDown() override { scheduler_.reset(); }

  // Waits (up to 10 s) until the job is in state with reason; returns the job as last read.
  moe::v1::Job WaitFor(const std::string& id, moe::v1::JobState state, const std::string& reason) {
    moe::v1::Job job;
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (std::chrono::steady_clock::now() < deadline) {
      absl::StatusOr<JobRecord> rec = store_->GetJob(id);
      if (rec.ok()) job = rec->job;
      if (job.state() == state && job.reason() == reason) break;
      std::this_thread::sleep_for(milliseconds(5));
    }
    return job;
  }

  FakeLauncher local_{/*batch=*/false};
  FakeLauncher batch_{/*batch=*/true};
  std::unique_ptr<JobStore> store_;
  std::unique_ptr<Scheduler> scheduler_;
};

TEST_F(DaemonScheduler, BatchJobFollowsItsBatchSystem) {
  // More ranks than --max-ranks: a batch job does not take moed's ranks, and is handed over at
  // once.
  absl::StatusOr<moe::v1::Job> job = scheduler_->Submit(Spec(moe::v1::LAUNCHER_SLURM, 4), "");
  ASSERT_TRUE(job.ok()) << job.status();
  const std::string id = job->id();
  EXPECT_EQ(job->state(), moe::v1::JOB_STATE_QUEUED);
  EXPECT_EQ(job->reason(), "submitted to Fakebatch as job 7 (attempt 0)");
  EXPECT_EQ(batch_.launches(), 1);
  EXPECT_EQ(local_.launches(), 0);

  BatchState b;
  b.known = true;
  b.state = "PENDING";
  b.reason = "Resources";
  b.pending = true;
  batch_.SetState(b);
  moe::v1::Job now = WaitFor(id, moe::v1::JOB_STATE_QUEUED, "Fakebatch job 7 PENDING: Resources");
  EXPECT_EQ(now.reason(), "Fakebatch job 7 PENDING: Resources");

  // A local job is not held back by the batch job (it holds none of moed's ranks).
  absl::StatusOr<moe::v1::Job> local = scheduler_->Submit(Spec(moe::v1::LAUNCHER_LOCAL, 2), "");
  ASSERT_TRUE(local.ok()) << local.status();
  EXPECT_EQ(local->state(), moe::v1::JOB_STATE_STARTING);
  EXPECT_EQ(local->reason(), "launched 2 ranks (attempt 0)");
  EXPECT_EQ(local_.launches(), 1);
  EXPECT_EQ(scheduler_->Submit(Spec(moe::v1::LAUNCHER_LOCAL, 3), "").status().code(),
            absl::StatusCode::kInvalidArgument);

  b.state = "RUNNING";
  b.reason = "";
  b.node_list = "n[1-2]";
  b.pending = false;
  batch_.SetState(b);
  now = WaitFor(id, moe::v1::JOB_STATE_STARTING, "Fakebatch job 7 RUNNING on n[1-2]");
  EXPECT_EQ(now.reason(), "Fakebatch job 7 RUNNING on n[1-2]");
  ASSERT_TRUE(scheduler_->OnWorkerHello(id, 0, 0, 4, store_->GetJob(id)->report_secret).ok());
  now = WaitFor(id, moe::v1::JOB_STATE_RUNNING, "");
  EXPECT_EQ(now.state(), moe::v1::JOB_STATE_RUNNING);

  // The batch system requeues the job: it waits again as the next attempt.
  b.state = "PENDING";
  b.reason = "BeginTime";
  b.attempt = 1;
  b.pending = true;
  batch_.SetState(b);
  now = WaitFor(id, moe::v1::JOB_STATE_QUEUED, "Fakebatch job 7 PENDING: BeginTime (attempt 1)");
  EXPECT_EQ(now.reason(), "Fakebatch job 7 PENDING: BeginTime (attempt 1)");
  EXPECT_EQ(scheduler_->OnWorkerHello(id, 0, 0, 4, store_->GetJob(id)->report_secret).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(batch_.launches(), 1);  // the batch system runs it again, moed does not

  batch_.Exit();
  now = WaitFor(id, moe::v1::JOB_STATE_SUCCEEDED, "");
  EXPECT_EQ(now.state(), moe::v1::JOB_STATE_SUCCEEDED);
}

// Slurm suspends a running job (preemption, gang scheduling, scontrol suspend): its ranks are
// frozen and send nothing, which is no lost heartbeat. moed killed such a job after the timeout.
TEST_F(DaemonScheduler, SuspendedBatchJobIsNotKilledForItsSilence) {
  Start(milliseconds(300));
  absl::StatusOr<moe::v1::Job> job = scheduler_->Submit(Spec(moe::v1::LAUNCHER_SLURM, 4), "");
  ASSERT_TRUE(job.ok()) << job.status();
  const std::string id = job->id();
  BatchState b;
  b.known = true;
  b.state = "RUNNING";
  b.node_list = "n1";
  batch_.SetState(b);
  WaitFor(id, moe::v1::JOB_STATE_STARTING, "Fakebatch job 7 RUNNING on n1");
  for (int rank = 0; rank < 4; ++rank) {
    ASSERT_TRUE(scheduler_->OnWorkerHello(id, 0, rank, 4, store_->GetJob(id)->report_secret).ok());
  }
  ASSERT_EQ(WaitFor(id, moe::v1::JOB_STATE_RUNNING, "").state(), moe::v1::JOB_STATE_RUNNING);

  b.state = "SUSPENDED";
  b.pending = true;  // SlurmLauncher counts it as waiting too
  b.paused = true;
  batch_.SetState(b);
  moe::v1::Job now = WaitFor(id, moe::v1::JOB_STATE_RUNNING, "Fakebatch job 7 SUSPENDED");
  EXPECT_EQ(now.reason(), "Fakebatch job 7 SUSPENDED");
  std::this_thread::sleep_for(milliseconds(1200));  // four heartbeat timeouts
  EXPECT_EQ(batch_.kills(), 0);
  EXPECT_EQ(store_->GetJob(id)->job.reason(), "Fakebatch job 7 SUSPENDED");

  // Resumed: the reason goes, and heartbeats are due again.
  b.state = "RUNNING";
  b.pending = false;
  b.paused = false;
  batch_.SetState(b);
  now = WaitFor(id, moe::v1::JOB_STATE_RUNNING, "");
  EXPECT_EQ(now.reason(), "");
  EXPECT_EQ(batch_.kills(), 0);
}

// Every rank must report, not just some: a rank hung before its first report to this moed (one
// stopped while moed was down, its attempt reattached) was never watched once another rank
// reported, and the job stayed RUNNING until the ranks' own collective timeout.
TEST_F(DaemonScheduler, ARankThatNeverReportsIsALostHeartbeat) {
  Start(milliseconds(1500));  // rank 0 reports every 50 ms: a loaded machine cannot stall it that long
  absl::StatusOr<moe::v1::Job> job = scheduler_->Submit(Spec(moe::v1::LAUNCHER_LOCAL, 2), "");
  ASSERT_TRUE(job.ok()) << job.status();
  const std::string id = job->id();
  const std::string secret = store_->GetJob(id)->report_secret;
  ASSERT_TRUE(scheduler_->OnWorkerHello(id, 0, 0, 2, secret).ok());
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (local_.kills() == 0 && std::chrono::steady_clock::now() < deadline) {
    scheduler_->OnWorkerReport(id, 0, 0);  // rank 0 keeps reporting
    std::this_thread::sleep_for(milliseconds(50));
  }
  ASSERT_GT(local_.kills(), 0) << "rank 1 never reported, yet the attempt was not killed";
  local_.Exit();
  moe::v1::Job ended;
  while (std::chrono::steady_clock::now() < deadline) {
    ended = store_->GetJob(id)->job;
    if (ended.state() == moe::v1::JOB_STATE_FAILED) break;
    std::this_thread::sleep_for(milliseconds(10));
  }
  EXPECT_EQ(ended.state(), moe::v1::JOB_STATE_FAILED);
  EXPECT_TRUE(absl::StrContains(ended.reason(), "rank 1 has not reported within 1.5 s")) << ended.reason();
}

TEST(DaemonLaunchers, ChooseBySpec) {
  FakeLauncher local(false), batch(true);
  const Launchers both{&local, &batch};
  EXPECT_EQ(both.For(Spec(moe::v1::LAUNCHER_LOCAL, 1)), &local);
  EXPECT_EQ(both.For(Spec(moe::v1::LAUNCHER_UNSPECIFIED, 1)), &local);
  EXPECT_EQ(both.For(Spec(moe::v1::LAUNCHER_SLURM, 1)), &batch);
  const Launchers local_only{&local, nullptr};
  EXPECT_EQ(local_only.For(Spec(moe::v1::LAUNCHER_SLURM, 1)), &local);
}

}  // namespace
}  // namespace moe::daemon
