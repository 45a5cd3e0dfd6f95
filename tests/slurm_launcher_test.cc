// SlurmLauncher against stand-in sbatch, scontrol and scancel scripts on PATH (no Slurm): what it
// makes of each Slurm job state, of what sbatch prints, of a missing tool, of a state dir that
// Slurm's file name patterns would change; and the batch script when scontrol is missing.
#include "daemon/slurm_launcher.h"

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <memory>
#include <string>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
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
    Script("scancel", "echo \"$@\" >> \"" + dir_ + "/scancel.calls\"\n");
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

  LaunchRequest Request() {
    LaunchRequest req;
    req.job_id = "j-000001";
    req.job_dir = dir_ + "/job";
    req.checkpoint_dir = dir_ + "/job/checkpoints";
    req.spec.set_name("x");
    req.spec.mutable_resources()->set_ranks(1);
    req.spec.mutable_resources()->mutable_slurm()->set_partition("p");
    EXPECT_TRUE(MakeDirs(req.job_dir).ok());
    return req;
  }
  SlurmLauncherOptions Options() {
    SlurmLauncherOptions o;
    o.worker_bin = "/bin/true";
    o.template_path = moe::testing::SourceDir() + "/deploy/slurm/moe-job.sbatch.tmpl";
    return o;
  }

  std::string dir_, path_;
  std::unique_ptr<SlurmLauncher> launcher_;
};

// Every state scontrol prints is queued, running, paused (suspended: no heartbeat is due) or
// ended. CONFIGURING (nodes booting) and RESV_DEL_HOLD ran nothing yet, so they are waiting, not
// running: moed counted them as running and killed them when no rank reported within the timeout.
TEST_F(SlurmLauncherFake, EachSlurmStateIsWaitingRunningPausedOrEnded) {
  int id = 100;
  // SPECIAL_EXIT: Slurm requeued the job after a special exit code and holds it (moed counted it
  // as ended while Slurm still had it); it is QUEUED until released or cancelled.
  for (const std::string state :
       {"PENDING", "REQUEUED", "REQUEUE_HOLD", "CONFIGURING", "RESV_DEL_HOLD", "SPECIAL_EXIT"}) {
    const std::string handle = Job(std::to_string(++id), state);
    BatchState b = launcher_->BatchStateOf(handle);
    EXPECT_TRUE(b.known && b.pending) << state;
    EXPECT_FALSE(b.paused) << state;
    EXPECT_EQ(launcher_->Poll(handle).kind, ProcessState::kRunning) << state;
    EXPECT_TRUE(launcher_->AnyAlive(handle)) << state;
    EXPECT_EQ(absl::StrContains(b.reason, "scontrol release " + std::to_string(id)),
              state == "SPECIAL_EXIT")
        << state << ": " << b.reason;
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
  SlurmLauncher launcher(Options());
  const LaunchRequest req = Request();
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

// Without scontrol on PATH a submitted job waited held forever (nothing released it), was never
// followed, and could not requeue itself at its time limit. The launch now fails before sbatch,
// saying which tool is missing and how to get it.
TEST_F(SlurmLauncherFake, MissingClientToolIsALaunchErrorBeforeSbatch) {
  Script("sbatch", "echo \"$@\" >> \"" + dir_ + "/sbatch.calls\"; echo 4711\n");
  ASSERT_EQ(unlink((dir_ + "/bin/scontrol").c_str()), 0);
  setenv("PATH", (dir_ + "/bin").c_str(), 1);  // the real Slurm's tools out of reach
  EXPECT_EQ(SlurmLauncher::MissingTools(), std::vector<std::string>{"scontrol"});
  SlurmLauncher launcher(Options());
  absl::StatusOr<std::string> handle =
      launcher.Launch(Request(), [](const std::string&) { return absl::OkStatus(); });
  ASSERT_FALSE(handle.ok());
  EXPECT_EQ(handle.status().code(), absl::StatusCode::kFailedPrecondition);
  for (const std::string& part :
       std::vector<std::string>{"launch error: Slurm's scontrol is not on moed's PATH (" + dir_,
                                "requeue it", "install Slurm's client tools", "on PATH"}) {
    EXPECT_TRUE(absl::StrContains(handle.status().message(), part)) << handle.status();
  }
  EXPECT_FALSE(ReadFile(dir_ + "/sbatch.calls").ok()) << "sbatch ran: a job was left held";

  // A job moed already follows (after a restart without scontrol) stays as it was: running.
  const std::string followed = Job("4712", "RUNNING");
  EXPECT_EQ(launcher.Poll(followed).kind, ProcessState::kRunning);
  EXPECT_TRUE(launcher.AnyAlive(followed));
}

// sbatch expands %j, %x, ... in --output, and %% is one %: a state dir with % in its path wrote
// the batch output elsewhere (moed read none). A backslash turns all expansion off and is dropped,
// so it cannot be written: refused. --chdir is a plain path. srun's rank files are named relative
// to the job folder, so its path never goes through srun's pattern (Slurm 25.11 expands it twice).
TEST_F(SlurmLauncherFake, StateDirWithPercentReachesSbatchEscaped) {
  LaunchRequest req = Request();
  req.job_dir = "/state/100%x %j%%/jobs/j-000001";
  absl::StatusOr<std::vector<std::string>> args = SlurmLauncher::SbatchArgs(req);
  ASSERT_TRUE(args.ok()) << args.status();
  EXPECT_NE(std::find(args->begin(), args->end(),
                      "--output=/state/100%%x %%j%%%%/jobs/j-000001/slurm-%j.out"),
            args->end());
  EXPECT_NE(std::find(args->begin(), args->end(), "--chdir=/state/100%x %j%%/jobs/j-000001"),
            args->end());

  req.job_dir = "/state/a\\b/jobs/j-000001";
  args = SlurmLauncher::SbatchArgs(req);
  ASSERT_FALSE(args.ok());
  EXPECT_EQ(args.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(args.status().message(), "holds a backslash")) << args.status();
  EXPECT_TRUE(absl::StrContains(args.status().message(), "--state-dir")) << args.status();

  absl::StatusOr<std::string> script = SlurmLauncher(Options()).Render(Request());
  ASSERT_TRUE(script.ok()) << script.status();
  for (absl::string_view line : absl::StrSplit(*script, '\n')) {
    if (!absl::StrContains(line, "--output=") && !absl::StrContains(line, "--error=")) continue;
    EXPECT_FALSE(absl::StrContains(line, "$run_dir") || absl::StrContains(line, "$job_dir") ||
                 absl::StrContains(line, dir_))
        << line;
  }
}

// The batch script on a node without scontrol: it says so at its start, and when the time-limit
// requeue fails it says what happens (TIMEOUT at the limit, resume from the checkpoint) and writes
// the exit status of the run instead of "requeued". It requeued nothing and said nothing.
TEST_F(SlurmLauncherFake, BatchScriptWithoutScontrolSaysItCannotRequeue) {
  ASSERT_EQ(unlink((dir_ + "/bin/scontrol").c_str()), 0);
  // srun's stand-in: on USR1 it writes a checkpoint, on TERM it stops as a rank does.
  Script("srun", "trap 'mkdir -p \"$CKPT/step_1\"; : > \"$CKPT/step_1/MANIFEST\"' USR1\n"
                 "trap 'exit 143' TERM\n: > \"" + dir_ + "/srun.started\"\n"
                 "while true; do sleep 0.1; done\n");
  const LaunchRequest req = Request();
  absl::StatusOr<std::string> script = SlurmLauncher(Options()).Render(req);
  ASSERT_TRUE(script.ok()) << script.status();
  ASSERT_TRUE(WriteFileAtomic(dir_ + "/job.sbatch", *script).ok());
  const std::string run = absl::StrCat(
      "set -u; d='", dir_, "'; for t in mkdir mv find head touch seq sleep dirname rm hostname; do "
      "ln -s \"$(command -v $t)\" \"$d/bin/$t\"; done; cd \"$d/job\"; "
      "PATH=\"$d/bin\" SLURM_JOB_ID=77 SLURM_NTASKS=1 CKPT='", req.checkpoint_dir, "' "
      "/bin/bash \"$d/job.sbatch\" > \"$d/out\" 2>&1 & pid=$!; "
      "for i in $(seq 100); do [ -e \"$d/srun.started\" ] && break; sleep 0.1; done; "
      "kill -USR1 $pid; "
      "for i in $(seq 200); do grep -q 'requeue 77 failed' \"$d/out\" && break; sleep 0.1; done; "
      "kill -TERM $pid; wait $pid; echo $? > \"$d/rc\"");
  ASSERT_TRUE(WriteFileAtomic(dir_ + "/run.sh", run).ok());
  ASSERT_EQ(std::system(("/bin/bash " + dir_ + "/run.sh").c_str()), 0);
  const std::string out = ReadFile(dir_ + "/out").value_or("");
  EXPECT_TRUE(absl::StrContains(out, "moe: warning: scontrol is not on PATH")) << out;
  EXPECT_TRUE(absl::StrContains(out, "moe: error: scontrol requeue 77 failed")) << out;
  EXPECT_TRUE(absl::StrContains(out, "moectl resume")) << out;
  EXPECT_EQ(ReadFile(dir_ + "/rc").value_or(""), "143\n");
  EXPECT_EQ(ReadFile(dir_ + "/job/attempt-0/exit_status").value_or(""), "143\n");
}

}  // namespace
}  // namespace moe::daemon
