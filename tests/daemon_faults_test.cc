// moed under store and disk failures, by fault injection: every state change refused by the
// store (the job is never shown in a state it did not reach, and nothing runs before its launch
// is recorded), an empty or garbage exit-status file (a failure, never success), moed killed
// between a launch and its record (never two copies of an attempt), a cancel that cannot be
// recorded (the answer says so and nothing is signalled), log lines the store refuses (retried,
// said once in moed's log), a full state directory (tmpfs when the test may mount one), the
// free-space floor, and the bounded write-ahead log.
#include <signal.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <fstream>
#include <mutex>
#include <set>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/files.h"
#include "daemon/job_store.h"
#include "daemon/local_launcher.h"
#include "daemon/scheduler.h"
#include "gtest/gtest.h"
#include "tests/support/daemon_harness.h"
#include "tests/support/paths.h"

namespace moe::daemon {
namespace {

using moe::v1::JobState;
using std::chrono::milliseconds;

// Runs nothing; the test ends each attempt with an exit code. CaptureFrom gives rank 0 an output
// file that moed reads as its log.
class FakeLauncher : public Launcher {
 public:
  std::string name() const override { return "fake"; }
  absl::StatusOr<std::string> Launch(const LaunchRequest& req,
                                     const RecordLaunch& record) override {
    const std::string handle = absl::StrCat("fake attempt=", req.attempt);
    // Locked from the record on: a test that sees the stored launch and then asks launches()
    // waits for the count (it read 0 between the two under load).
    std::lock_guard<std::mutex> lock(mu_);
    if (absl::Status s = record(handle); !s.ok()) return s;
    ++launches_;
    exit_code_ = -1;
    return handle;
  }
  ProcessState Poll(const std::string&) override {
    std::lock_guard<std::mutex> lock(mu_);
    ProcessState ps;
    if (exit_code_ >= 0) {
      ps.kind = ProcessState::kExited;
      ps.exit_code = exit_code_;
      ps.reason = absl::StrCat("exited with code ", exit_code_);
    }
    return ps;
  }
  void Terminate(const std::string&) override {
    std::lock_guard<std::mutex> lock(mu_);
    ++terminates_;
  }
  void Kill(const std::string&) override {}
  bool AnyAlive(const std::string&) override {
    std::lock_guard<std::mutex> lock(mu_);
    return exit_code_ < 0;
  }
  bool CapturesOutput() const override { return !output_.empty(); }
  std::vector<OutputFile> OutputFiles(const std::string&) override {
    if (output_.empty()) return {};
    return {{0, output_}};
  }
  bool RunsOnThisMachine() const override { return true; }
  std::vector<int> Gpus(const std::string&) const override { return {}; }
  void Describe(const std::string&, moe::v1::Job*) const override {}
  BatchJob BatchJobOf(const std::string&) const override { return {}; }
  BatchState BatchStateOf(const std::string&) override { return {}; }

  void CaptureFrom(const std::string& path) { output_ = path; }  // before the scheduler starts
  void Exit(int code) {
    std::lock_guard<std::mutex> lock(mu_);
    exit_code_ = code;
  }
  int launches() {
    std::lock_guard<std::mutex> lock(mu_);
    return launches_;
  }
  int terminates() {
    std::lock_guard<std::mutex> lock(mu_);
    return terminates_;
  }

 private:
  std::mutex mu_;
  int exit_code_ = -1;
  int launches_ = 0;
  int terminates_ = 0;
  std::string output_;
};

moe::v1::JobSpec Spec(int max_restarts = 0) {
  moe::v1::JobSpec s;
  s.set_name("fault");
  s.mutable_resources()->set_ranks(1);
  s.mutable_resources()->set_launcher(moe::v1::LAUNCHER_LOCAL);
  s.mutable_train()->set_steps(10);
  s.set_max_restarts(max_restarts);
  return s;
}

class DaemonFaults : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = moe::testing::MakeTempDir("moe-faults-");
    auto store = JobStore::Open(dir_ + "/moed.db");
    ASSERT_TRUE(store.ok()) << store.status();
    store_ = *std::move(store);
    // Refuses every update_job whose record is in a state listed in refuse_.
    store_->SetWriteFaultForTest([this](std::string_view op, const JobRecord* rec) {
      std::lock_guard<std::mutex> lock(fault_mu_);
      if (op == "update_job" && rec != nullptr &&
          (refuse_.count(rec->job.state()) > 0 || (refuse_cancel_ && rec->cancel_requested))) {
        ++refused_;
        return absl::ResourceExhaustedError("injected: database or disk is full");
      }
      if (op == "append_lines" && refuse_lines_) {
        return absl::ResourceExhaustedError("injected: database or disk is full");
      }
      return absl::OkStatus();
    });
  }
  void StartScheduler(int64_t min_free_bytes = 0) {
    SchedulerOptions o;
    o.state_dir = dir_;
    o.max_ranks = 2;
    o.poll_interval = milliseconds(10);
    o.min_free_bytes = min_free_bytes;
    scheduler_ = std::make_unique<Scheduler>(o, store_.get(), Launchers{&launcher_, nullptr});
    ASSERT_TRUE(scheduler_->Recover().ok());
    scheduler_->Start();
  }
  void TearDown() override { scheduler_.reset(); }

  void Refuse(std::set<JobState> states, bool cancel = false) {
    std::lock_guard<std::mutex> lock(fault_mu_);
    refuse_ = std::move(states);
    refuse_cancel_ = cancel;
    refused_ = 0;
  }
  void RefuseLines(bool refuse) {
    std::lock_guard<std::mutex> lock(fault_mu_);
    refuse_lines_ = refuse;
  }
  int refused() {
    std::lock_guard<std::mutex> lock(fault_mu_);
    return refused_;
  }
  JobState Stored(const std::string& id) {
    absl::StatusOr<JobRecord> rec = store_->GetJob(id);
    return rec.ok() ? rec->job.state() : moe::v1::JOB_STATE_UNSPECIFIED;
  }
  // Waits (up to 10 s) for the stored state.
  JobState WaitStored(const std::string& id, JobState state) {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (Stored(id) != state && std::chrono::steady_clock::now() < deadline) {
      std::this_thread::sleep_for(milliseconds(5));
    }
    return Stored(id);
  }
  // While the store refuses, the scheduler retries: the stored state stays `held`.
  void ExpectHeld(const std::string& id, JobState held) {
    const auto until = std::chrono::steady_clock::now() + milliseconds(600);
    while (std::chrono::steady_clock::now() < until) {
      ASSERT_EQ(Stored(id), held) << moe::v1::JobState_Name(Stored(id));
      std::this_thread::sleep_for(milliseconds(10));
    }
    EXPECT_GT(refused(), 1) << "the write was not retried";
  }
  std::string Submit(int max_restarts = 0) {
    absl::StatusOr<moe::v1::Job> job = scheduler_->Submit(Spec(max_restarts), "");
    EXPECT_TRUE(job.ok()) << job.status();
    return job.ok() ? job->id() : "";
  }

  std::string dir_;
  FakeLauncher launcher_;
  std::unique_ptr<JobStore> store_;
  std::unique_ptr<Scheduler> scheduler_;
  std::mutex fault_mu_;
  std::set<JobState> refuse_;
  bool refuse_cancel_ = false;
  bool refuse_lines_ = false;
  int refused_ = 0;
};

TEST_F(DaemonFaults, NothingRunsBeforeItsLaunchIsStored) {
  StartScheduler();
  Refuse({moe::v1::JOB_STATE_STARTING});
  const std::string id = Submit();
  ExpectHeld(id, moe::v1::JOB_STATE_QUEUED);
  EXPECT_EQ(launcher_.launches(), 0);  // every launch was held and dropped unrecorded
  Refuse({});
  EXPECT_EQ(WaitStored(id, moe::v1::JOB_STATE_STARTING), moe::v1::JOB_STATE_STARTING);
  EXPECT_EQ(launcher_.launches(), 1);
}

TEST_F(DaemonFaults, RefusedEndsAreRetriedAndNeverShownAsSuccess) {
  StartScheduler();
  // SUCCEEDED cannot be stored: the store keeps showing the job live, then SUCCEEDED.
  std::string id = Submit();
  ASSERT_EQ(WaitStored(id, moe::v1::JOB_STATE_STARTING), moe::v1::JOB_STATE_STARTING);
  Refuse({moe::v1::JOB_STATE_SUCCEEDED});
  launcher_.Exit(0);
  ExpectHeld(id, moe::v1::JOB_STATE_STARTING);
  // What moectl status is answered meanwhile: the stored state, and why it is behind.
  moe::v1::Job shown = store_->GetJob(id)->job;
  scheduler_->ShowUnstored(&shown);
  EXPECT_EQ(shown.state(), moe::v1::JOB_STATE_STARTING);
  EXPECT_TRUE(absl::StrContains(shown.reason(), "moed holds this job as SUCCEEDED but could not store that yet "
                                                "(injected: database or disk is full)"))
      << shown.reason();
  Refuse({});
  EXPECT_EQ(WaitStored(id, moe::v1::JOB_STATE_SUCCEEDED), moe::v1::JOB_STATE_SUCCEEDED);

  // FAILED likewise.
  id = Submit();
  ASSERT_EQ(WaitStored(id, moe::v1::JOB_STATE_STARTING), moe::v1::JOB_STATE_STARTING);
  Refuse({moe::v1::JOB_STATE_FAILED});
  launcher_.Exit(3);
  ExpectHeld(id, moe::v1::JOB_STATE_STARTING);
  shown = store_->GetJob(id)->job;
  scheduler_->ShowUnstored(&shown);
  EXPECT_TRUE(absl::StrContains(shown.reason(), "moed holds this job as FAILED: exited with code 3 but could not"))
      << shown.reason();
  Refuse({});
  EXPECT_EQ(WaitStored(id, moe::v1::JOB_STATE_FAILED), moe::v1::JOB_STATE_FAILED);
  EXPECT_EQ(store_->GetJob(id)->job.reason(), "exited with code 3");
  // Stored and gone from the active set: nothing to add, from the next tick's notes on.
  for (auto until = std::chrono::steady_clock::now() + std::chrono::seconds(10);
       std::chrono::steady_clock::now() < until; std::this_thread::sleep_for(milliseconds(10))) {
    shown = store_->GetJob(id)->job;
    scheduler_->ShowUnstored(&shown);
    if (shown.reason() == "exited with code 3") break;
  }
  EXPECT_EQ(shown.reason(), "exited with code 3");
}

TEST_F(DaemonFaults, RefusedRunningAndRestartingAreRetried) {
  StartScheduler();
  const std::string id = Submit(/*max_restarts=*/1);
  ASSERT_EQ(WaitStored(id, moe::v1::JOB_STATE_STARTING), moe::v1::JOB_STATE_STARTING);
  Refuse({moe::v1::JOB_STATE_RUNNING});
  ASSERT_TRUE(scheduler_->OnWorkerHello(id, 0, 0, 1, store_->GetJob(id)->report_secret).ok());
  ExpectHeld(id, moe::v1::JOB_STATE_STARTING);
  Refuse({});
  ASSERT_EQ(WaitStored(id, moe::v1::JOB_STATE_RUNNING), moe::v1::JOB_STATE_RUNNING);

  // The restart cannot be stored: no second launch until it is.
  Refuse({moe::v1::JOB_STATE_RESTARTING, moe::v1::JOB_STATE_STARTING});
  launcher_.Exit(3);
  ExpectHeld(id, moe::v1::JOB_STATE_RUNNING);
  EXPECT_EQ(launcher_.launches(), 1);
  Refuse({});
  ASSERT_EQ(WaitStored(id, moe::v1::JOB_STATE_STARTING), moe::v1::JOB_STATE_STARTING);
  EXPECT_EQ(launcher_.launches(), 2);
  EXPECT_EQ(store_->GetJob(id)->attempt, 1);
  EXPECT_EQ(store_->GetJob(id)->job.restarts(), 1);
}

TEST_F(DaemonFaults, CancelThatCannotBeStoredSaysSoAndSignalsNothing) {
  StartScheduler();
  const std::string id = Submit();
  ASSERT_EQ(WaitStored(id, moe::v1::JOB_STATE_STARTING), moe::v1::JOB_STATE_STARTING);
  Refuse({}, /*cancel=*/true);
  absl::StatusOr<moe::v1::Job> c = scheduler_->Cancel(id);
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_TRUE(absl::StrContains(c.status().message(), "nothing was signalled")) << c.status();
  EXPECT_EQ(launcher_.terminates(), 0);
  EXPECT_FALSE(store_->GetJob(id)->cancel_requested);

  // Stored: signalled; CANCELLED refused: held (not CANCELLED, not SUCCEEDED) until stored.
  Refuse({moe::v1::JOB_STATE_CANCELLED});
  c = scheduler_->Cancel(id);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(launcher_.terminates(), 1);
  launcher_.Exit(143);  // what the ranks do on SIGTERM (checkpoint, exit 143)
  ExpectHeld(id, moe::v1::JOB_STATE_STARTING);
  Refuse({});
  EXPECT_EQ(WaitStored(id, moe::v1::JOB_STATE_CANCELLED), moe::v1::JOB_STATE_CANCELLED);
}

TEST_F(DaemonFaults, RefusedLogLinesAreRetriedAndSaidOnceInMoedsLog) {
  const std::string output = dir_ + "/rank0.out";
  std::ofstream(output) << "line 1\nline 2\n";
  launcher_.CaptureFrom(output);
  RefuseLines(true);
  ::testing::internal::CaptureStderr();
  StartScheduler();
  const std::string id = Submit();
  ASSERT_EQ(WaitStored(id, moe::v1::JOB_STATE_STARTING), moe::v1::JOB_STATE_STARTING);
  std::this_thread::sleep_for(milliseconds(500));  // some 50 ticks, each one refused
  moe::v1::Job shown;
  for (auto until = std::chrono::steady_clock::now() + std::chrono::seconds(10);
       std::chrono::steady_clock::now() < until; std::this_thread::sleep_for(milliseconds(10))) {
    shown = store_->GetJob(id)->job;
    scheduler_->ShowUnstored(&shown);
    if (!shown.reason().empty()) break;
  }
  EXPECT_TRUE(absl::StrContains(shown.reason(), "moed cannot store the job's log lines (injected: database or "
                                                "disk is full); they wait in the ranks' output files"))
      << shown.reason();
  RefuseLines(false);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (store_->ReadLogs(id, 0, 10)->size() < 2 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(milliseconds(10));
  }
  const std::string said = ::testing::internal::GetCapturedStderr();
  EXPECT_EQ(store_->ReadLogs(id, 0, 10)->size(), 2u);
  size_t refusals = 0;
  for (size_t at = said.find("cannot store log lines"); at != std::string::npos;
       at = said.find("cannot store log lines", at + 1)) {
    ++refusals;
  }
  EXPECT_EQ(refusals, 1u) << said;  // was one line per tick: a flood while the disk is full
  EXPECT_TRUE(absl::StrContains(said, "log lines stored again")) << said;
}

TEST_F(DaemonFaults, SubmitBelowTheFreeSpaceFloorIsResourceExhausted) {
  StartScheduler(/*min_free_bytes=*/int64_t{1} << 60);
  absl::StatusOr<moe::v1::Job> job = scheduler_->Submit(Spec(), "");
  ASSERT_FALSE(job.ok());
  EXPECT_EQ(job.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_TRUE(absl::StrContains(job.status().message(), "--min-free-space")) << job.status();
  EXPECT_EQ(scheduler_->CheckFreeSpace().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_TRUE(store_->ListJobs()->empty());
}

TEST(DaemonExitStatus, EmptyOrGarbageIsAFailureNeverZero) {
  int status = -7;
  ASSERT_TRUE(ParseExitStatus(std::string("0\n"), "x", &status).ok());
  EXPECT_EQ(status, 0);
  ASSERT_TRUE(ParseExitStatus(std::string("256\n"), "x", &status).ok());
  EXPECT_EQ(status, 256);
  for (const std::string bad : {"", "\n", "  ", "garbage", "12abc", "-1", "99999999", "\x01\x02"}) {
    absl::Status s = ParseExitStatus(bad, "/a/exit_status", &status);
    EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss) << "'" << bad << "'";
    EXPECT_TRUE(absl::StrContains(s.message(), "counted as a failure")) << s;
  }
  EXPECT_FALSE(ParseExitStatus(absl::InternalError("EIO"), "x", &status).ok());

  // Through the launcher: an attempt whose monitor left an empty or garbage file failed.
  const std::string dir = moe::testing::MakeTempDir("moe-exit-status-");
  LocalLauncher launcher(LocalLauncherOptions{"mpirun", "/bin/true"});
  const std::string handle = absl::StrCat("pid=0 start=0 dir=", dir);
  for (const std::string text : {"", "garbage\n"}) {
    ASSERT_TRUE(WriteFileAtomic(dir + "/exit_status", text).ok());
    ProcessState ps = launcher.Poll(handle);
    EXPECT_EQ(ps.kind, ProcessState::kExited);
    EXPECT_NE(ps.exit_code, 0);
    EXPECT_TRUE(absl::StrContains(ps.reason, "exit status")) << ps.reason;
  }
  ASSERT_TRUE(WriteFileAtomic(dir + "/exit_status", "0\n").ok());
  EXPECT_EQ(launcher.Poll(handle).exit_code, 0);
}

// moed (here: a child process running the store, scheduler and the real local launcher) is
// killed with SIGKILL at `kill_at` during its first launch; a new one recovers from the store.
// Returns the attempt that finally ran and how many times any rank started.
struct KilledLaunch {
  std::string dir;
  int final_attempt = -1;
  JobState final_state = moe::v1::JOB_STATE_UNSPECIFIED;
  int rank_starts = 0;
};

KilledLaunch KillDuringLaunch(const std::string& kill_at) {
  KilledLaunch out;
  out.dir = moe::testing::MakeTempDir("moe-kill-launch-");
  setenv("FAKE_STEPS", "2", 1);
  setenv("FAKE_STEP_SECONDS", "0.05", 1);
  const LocalLauncherOptions lo{"mpirun", moe::testing::FakeWorkerPath()};
  SchedulerOptions so;
  so.state_dir = out.dir;
  so.max_ranks = 1;
  so.poll_interval = milliseconds(20);
  pid_t child = fork();
  if (child == 0) {
    auto store = JobStore::Open(out.dir + "/moed.db");
    if (!store.ok()) _exit(3);
    (*store)->SetWriteFaultForTest([kill_at](std::string_view op, const JobRecord* rec) {
      if (op == kill_at && rec != nullptr && !rec->launch_handle.empty()) raise(SIGKILL);
      return absl::OkStatus();
    });
    LocalLauncher launcher(lo);
    Scheduler scheduler(so, store->get(), Launchers{&launcher, nullptr});
    (void)scheduler.Submit(Spec(), "");  // launches at once: killed inside
    _exit(4);
  }
  int status = 0;
  waitpid(child, &status, 0);
  EXPECT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL) << "status " << status;
  std::this_thread::sleep_for(milliseconds(300));  // a held monitor sees moed gone and leaves

  auto store = JobStore::Open(out.dir + "/moed.db");
  EXPECT_TRUE(store.ok());
  if (!store.ok()) return out;
  LocalLauncher launcher(lo);
  Scheduler scheduler(so, store->get(), Launchers{&launcher, nullptr});
  EXPECT_TRUE(scheduler.Recover().ok());
  scheduler.Start();
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  absl::StatusOr<JobRecord> rec;
  while (std::chrono::steady_clock::now() < deadline) {
    rec = (*store)->GetJob("j-000001");
    if (rec.ok() && IsFinal(rec->job.state())) break;
    std::this_thread::sleep_for(milliseconds(50));
  }
  scheduler.Stop();
  if (!rec.ok()) return out;
  out.final_state = rec->job.state();
  out.final_attempt = rec->attempt;
  for (int attempt = 0; attempt <= 2; ++attempt) {
    absl::StatusOr<std::string> text = ReadFile(
        absl::StrCat(out.dir, "/jobs/j-000001/attempt-", attempt, "/ranks/1/rank.0/stdout"));
    if (!text.ok()) continue;
    for (size_t p = 0; (p = text->find(" starting", p)) != std::string::npos; ++p) {
      ++out.rank_starts;
    }
  }
  unsetenv("FAKE_STEPS");
  unsetenv("FAKE_STEP_SECONDS");
  return out;
}

TEST(DaemonKill9, BeforeTheLaunchIsRecordedNothingRanAndTheJobRunsOnce) {
  KilledLaunch k = KillDuringLaunch("update_job");
  EXPECT_EQ(k.final_state, moe::v1::JOB_STATE_SUCCEEDED);
  EXPECT_EQ(k.final_attempt, 0);  // the unrecorded launch never ran: attempt 0 runs once
  EXPECT_EQ(k.rank_starts, 1);
  absl::StatusOr<std::string> log = ReadFile(k.dir + "/jobs/j-000001/attempt-0/mpirun.log");
  ASSERT_TRUE(log.ok());
  EXPECT_TRUE(absl::StrContains(*log, "the launch was not recorded; nothing was started")) << *log;
}

TEST(DaemonKill9, AfterTheRecordBeforeTheStartTheNextAttemptRunsOnce) {
  KilledLaunch k = KillDuringLaunch("update_job_committed");
  EXPECT_EQ(k.final_state, moe::v1::JOB_STATE_SUCCEEDED);
  EXPECT_EQ(k.final_attempt, 1);  // attempt 0 was recorded but never released
  EXPECT_EQ(k.rank_starts, 1);
}

// A real full disk: a 2 MiB tmpfs as the state directory (needs root and mount; else skipped,
// the injected faults above cover the same paths).
TEST(DaemonFullDisk, StoreRefusesWritesThenRecoversWhenSpaceIsFreed) {
  const std::string dir = moe::testing::MakeTempDir("moe-tmpfs-");
  if (geteuid() != 0 || mount("moe-test", dir.c_str(), "tmpfs", 0, "size=2m,mode=0700") != 0) {
    GTEST_SKIP() << "cannot mount a tmpfs here (needs root)";
  }
  struct Unmount {
    std::string dir;
    ~Unmount() { umount2(dir.c_str(), MNT_DETACH); }
  } unmount{dir};
  auto store = JobStore::Open(dir + "/moed.db");
  ASSERT_TRUE(store.ok()) << store.status();
  absl::StatusOr<JobRecord> rec = (*store)->CreateJob(Spec(), "", dir + "/jobs", "queued");
  ASSERT_TRUE(rec.ok()) << rec.status();
  // Fill the file system.
  {
    std::ofstream filler(dir + "/filler", std::ios::binary);
    std::string block(64 * 1024, 'x');
    for (int i = 0; i < 64 && filler.write(block.data(), block.size()); ++i) {
    }
  }
  absl::Status s;
  std::vector<std::string> lines(2000, std::string(200, 'l'));
  for (int i = 0; i < 50 && s.ok(); ++i) {
    s = (*store)->AppendCapturedLines(rec->job.id(), 0, lines, 1, "/f", i);
  }
  ASSERT_FALSE(s.ok()) << "the tmpfs never filled";
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted) << s;
  EXPECT_TRUE(FreeBytes(dir) < (int64_t{1} << 20));
  // Space comes back: the store writes again (no transaction left open by the failure).
  unlink((dir + "/filler").c_str());
  (*store)->CheckpointWal().IgnoreError();
  rec->job.set_state(moe::v1::JOB_STATE_FAILED);
  EXPECT_TRUE((*store)->UpdateJob(*rec).ok());
  EXPECT_EQ((*store)->GetJob(rec->job.id())->job.state(), moe::v1::JOB_STATE_FAILED);
}

TEST(DaemonStoreWal, CheckpointKeepsTheWalSmall) {
  const std::string dir = moe::testing::MakeTempDir("moe-wal-");
  auto store = JobStore::Open(dir + "/moed.db");
  ASSERT_TRUE(store.ok());
  absl::StatusOr<JobRecord> rec = (*store)->CreateJob(Spec(), "", dir + "/jobs", "queued");
  ASSERT_TRUE(rec.ok());
  std::vector<std::string> lines(1000, std::string(500, 'l'));
  for (int i = 0; i < 30; ++i) {
    ASSERT_TRUE((*store)->AppendCapturedLines(rec->job.id(), 0, lines, 1, "/f", i).ok());
  }
  ASSERT_TRUE((*store)->CheckpointWal().ok());
  struct stat st;
  ASSERT_EQ(stat((dir + "/moed.db-wal").c_str(), &st), 0);
  EXPECT_LE(st.st_size, 4 << 20);
  EXPECT_EQ(st.st_mode & 077, 0u) << "the store is readable by others";
  ASSERT_EQ(stat((dir + "/moed.db").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 077, 0u) << "the store is readable by others";
}

}  // namespace
}  // namespace moe::daemon
