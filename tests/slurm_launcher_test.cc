// SlurmLauncher against stand-in sbatch and scontrol scripts on PATH (no Slurm): what it makes of
// each Slurm job state, and of what sbatch prints.
#include "daemon/slurm_launcher.h"

#include <sys/stat.h>

#include <chrono>
#include <cstdlib>
#include <memory>
#include <string>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/files.h"
#include "gtest/gtest.h"
#include "tests/support/paths.h"

namespace moe::daemon {
namespace {

class SlurmLauncherFake : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = moe::testing::MakeTempDir("moe-slurm-fake-");
    ASSERT_TRUE(MakeDirs(dir_ + "/bin").ok());
    // scontrol show job -o ID prints the line in $dir/scontrol.ID.
    Script("scontrol", "cat \"" + dir_ + "/scontrol.${4:-x}\" 2>/dev/null || "
                       "{ echo 'slurm_load_jobs error: Invalid job id specified'; exit 1; }\n");
    path_ = std::getenv("PATH");
    setenv("PATH", (dir_ + "/bin:" + path_).c_str(), 1);
    SlurmLauncherOptions o;
    o.refresh = std::chrono::milliseconds(0);
    launcher_ = std::make_unique<SlurmLauncher>(o);
  }
  void TearDown() override { setenv("PATH", path_.c_str(), 1); }

  void Script(const std::string& name, const std::string& body) {
    const std::string path = dir_ + "/bin/" + name;
    ASSERT_TRUE(WriteFileAtomic(path, "#!/bin/bash\n" + body).ok());
    ASSERT_EQ(chmod(path.c_str(), 0755), 0);
  }
  // A job `id` that scontrol shows in state.
  std::string Job(const std::string& id, const std::string& state) {
    EXPECT_TRUE(WriteFileAtomic(dir_ + "/scontrol." + id,
                                absl::StrCat("JobId=", id, " JobName=moe-j-1-x JobState=", state,
                                             " Reason=None Restarts=0 ExitCode=0:9 NodeList=n1\n"))
                    .ok());
    return absl::StrCat("slurm=", id, " base=0 dir=", dir_);
  }

  std::string dir_, path_;
  std::unique_ptr<SlurmLauncher> launcher_;
};

// Every state scontrol prints is queued, running, paused (suspended: no heartbeat is due) or
// ended. CONFIGURING (nodes booting) and RESV_DEL_HOLD ran nothing yet, so they are waiting, not
// running: moed counted them as running and killed them when no rank reported within the timeout.
TEST_F(SlurmLauncherFake, EachSlurmStateIsWaitingRunningPausedOrEnded) {
  int id = 100;
  for (const std::string state :
       {"PENDING", "REQUEUED", "REQUEUE_HOLD", "CONFIGURING", "RESV_DEL_HOLD"}) {
    BatchState b = launcher_->BatchStateOf(Job(std::to_string(++id), state));
    EXPECT_TRUE(b.known && b.pending) << state;
    EXPECT_FALSE(b.paused) << state;
  }
  for (const std::string state : {"SUSPENDED", "STOPPED"}) {
    const std::string handle = Job(std::to_string(++id), state);
    EXPECT_TRUE(launcher_->BatchStateOf(handle).paused) << state;
    EXPECT_TRUE(launcher_->AnyAlive(handle)) << state;
    EXPECT_EQ(launcher_->Poll(handle).kind, ProcessState::kRunning) << state;
  }
  for (const std::string state : {"RUNNING", "COMPLETING", "SIGNALING"}) {
    const std::string handle = Job(std::to_string(++id), state);
    BatchState b = launcher_->BatchStateOf(handle);
    EXPECT_FALSE(b.pending || b.paused) << state;
    EXPECT_EQ(launcher_->Poll(handle).kind, ProcessState::kRunning) << state;
  }
  for (const std::string state : {"PREEMPTED", "NODE_FAIL", "OUT_OF_MEMORY", "TIMEOUT",
                                  "BOOT_FAIL", "DEADLINE", "CANCELLED", "FAILED"}) {
    const std::string handle = Job(std::to_string(++id), state);
    ProcessState ps = launcher_->Poll(handle);
    EXPECT_EQ(ps.kind, ProcessState::kExited) << state;
    EXPECT_NE(ps.exit_code, 0) << state;
    EXPECT_TRUE(absl::StartsWith(ps.reason, "Slurm job " + std::to_string(id) + " ended " + state))
        << ps.reason;
    EXPECT_TRUE(absl::StrContains(ps.reason, ", signal 9 (Killed)")) << ps.reason;
    if (state == "OUT_OF_MEMORY") {
      EXPECT_TRUE(absl::StrContains(ps.reason, "--mem=")) << ps.reason;
    }
    EXPECT_FALSE(launcher_->AnyAlive(handle)) << state;
  }
}

// sbatch (or a site's wrapper around it) that prints "Submitted batch job N" despite --parsable:
// the job is queued held, and moed must know its id to release or cancel it (it left it held).
TEST_F(SlurmLauncherFake, SbatchsSubmittedLineGivesTheJobId) {
  Script("sbatch", "echo 'sbatch: warning: a site note'; echo 'Submitted batch job 4711'\n");
  Script("scontrol", "echo \"$@\" >> \"" + dir_ + "/scontrol.calls\"\n");
  SlurmLauncherOptions o;
  o.worker_bin = "/bin/true";
  o.template_path = moe::testing::SourceDir() + "/deploy/slurm/moe-job.sbatch.tmpl";
  SlurmLauncher launcher(o);
  LaunchRequest req;
  req.job_id = "j-000001";
  req.job_dir = dir_ + "/job";
  req.checkpoint_dir = dir_ + "/job/checkpoints";
  req.spec.set_name("x");
  req.spec.mutable_resources()->set_ranks(1);
  req.spec.mutable_resources()->mutable_slurm()->set_partition("p");
  ASSERT_TRUE(MakeDirs(req.job_dir).ok());
  std::string recorded;
  absl::StatusOr<std::string> handle = launcher.Launch(req, [&](const std::string& h) {
    recorded = h;
    return absl::OkStatus();
  });
  ASSERT_TRUE(handle.ok()) << handle.status();
  EXPECT_TRUE(absl::StartsWith(*handle, "slurm=4711 ")) << *handle;
  EXPECT_EQ(recorded, *handle);
  EXPECT_EQ(ReadFile(dir_ + "/scontrol.calls").value_or(""), "release 4711\n");

  // Nothing that reads as an id: the error says where a held job would be.
  Script("sbatch", "echo 'Your job is in the queue'\n");
  handle = launcher.Launch(req, [](const std::string&) { return absl::OkStatus(); });
  ASSERT_FALSE(handle.ok());
  EXPECT_TRUE(absl::StrContains(handle.status().message(),
                                "sbatch printed no job id: Your job is in the queue"))
      << handle.status();
  EXPECT_TRUE(absl::StrContains(handle.status().message(), "squeue --name=moe-j-000001-x"))
      << handle.status();
}

}  // namespace
}  // namespace moe::daemon
