// Continuing runs end to end through the real moed, moectl and moe-worker: `moectl resume` takes
// a finished job further from its newest checkpoint (same id, a new attempt), and a cancelled one
// a few steps further; `moectl submit --from` starts a new job from another job's newest checkpoint;
// a job whose checkpoint.dir holds another job's checkpoints is refused at submit with the path
// and the fix; `moectl export` of a job id writes a Hugging Face directory.
#include <algorithm>
#include <filesystem>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "google/protobuf/util/json_util.h"
#include "gtest/gtest.h"
#include "tests/support/daemon_harness.h"
#include "worker/checkpoint/checkpoint.h"

namespace moe::testing {
namespace {

using moe::v1::Job;

bool Ended(const Job& j) { return j.state() >= moe::v1::JOB_STATE_SUCCEEDED; }

std::string FirstLine(const std::string& s) { return s.substr(0, s.find('\n')); }

bool LogsContain(DaemonHarness& h, const std::string& id, const std::string& needle) {
  for (const auto& l : h.AllLogs(id)) {
    if (absl::StrContains(l.text(), needle)) return true;
  }
  return false;
}

HarnessOptions Options() {
  HarnessOptions o;
  o.max_ranks = 2;
  o.cancel_grace_s = 20;
  return o;
}

TEST(E2eResume, ResumeSubmitFromExportAndAForeignCheckpointDirectory) {
  DaemonHarness h(Options());
  ASSERT_TRUE(h.Start()) << h.MoedLog();
  CommandResult r = h.Moectl({"submit", h.WriteJob("base", 2, 4), "--follow"}, 300);
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err << h.MoedLog();
  const std::string base = FirstLine(r.out);
  Job job = h.WaitFor(base, Ended, 10);
  ASSERT_EQ(job.state(), moe::v1::JOB_STATE_SUCCEEDED) << job.reason();
  const std::string ckpt_dir = job.checkpoint_dir();
  ASSERT_TRUE(std::filesystem::exists(ckpt_dir + "/step_00000004")) << ckpt_dir;

  // All its steps are done: resume needs more.
  r = h.Moectl({"resume", base});
  EXPECT_EQ(r.exit_code, 1) << r.out;
  EXPECT_TRUE(absl::StrContains(r.err, "already trained all 4 steps")) << r.err;
  EXPECT_TRUE(absl::StrContains(r.err, "--steps N")) << r.err;
  r = h.Moectl({"resume", base, "--steps", "3"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_TRUE(absl::StrContains(r.err, "at step 4")) << r.err;

  // Six steps: the same job continues from step 4, as a new attempt.
  r = h.Moectl({"resume", base, "--steps", "6", "--follow"}, 300);
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err << h.MoedLog();
  EXPECT_TRUE(absl::StartsWith(r.out, base + " ")) << r.out;
  job = h.WaitFor(base, Ended, 10);
  EXPECT_EQ(job.state(), moe::v1::JOB_STATE_SUCCEEDED) << job.reason();
  EXPECT_EQ(job.spec().train().steps(), 6);
  EXPECT_EQ(job.latest().step(), 6);
  EXPECT_TRUE(LogsContain(h, base, "resumed from " + ckpt_dir + "/step_00000004 at step 4"));
  EXPECT_TRUE(std::filesystem::exists(ckpt_dir + "/step_00000006"));
  EXPECT_TRUE(std::filesystem::exists(job.state_dir() + "/spec.json"));

  // A new job from it: its weights start from base's newest checkpoint, in its own directory.
  r = h.Moectl({"submit", h.WriteJob("tuned", 1, 2), "--from", base, "--follow"}, 300);
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err << h.MoedLog();
  const std::string tuned = FirstLine(r.out);
  job = h.WaitFor(tuned, Ended, 10);
  EXPECT_EQ(job.state(), moe::v1::JOB_STATE_SUCCEEDED) << job.reason();
  EXPECT_EQ(job.spec().model().init_from(), ckpt_dir);
  EXPECT_NE(job.checkpoint_dir(), ckpt_dir);
  EXPECT_TRUE(LogsContain(h, tuned, "initialised the weights from checkpoint " + ckpt_dir + "/step_00000006 (step 6)"));

  // A job pointed at base's checkpoint directory is refused before anything runs.
  r = h.Moectl({"submit", h.WriteJob("thief", 1, 2, 0, absl::StrCat("checkpoint:\n  dir: ", ckpt_dir, "\n"))});
  EXPECT_EQ(r.exit_code, 1) << r.out;
  EXPECT_TRUE(absl::StrContains(r.err, ckpt_dir + " is not empty")) << r.err;
  EXPECT_TRUE(absl::StrContains(r.err, "the checkpoints of job " + base)) << r.err;
  EXPECT_TRUE(absl::StrContains(r.err, "moectl submit --from")) << r.err;

  // Export by job id: the newest checkpoint as a Hugging Face directory.
  const std::string out = h.work_dir() + "/hf";
  r = h.Moectl({"export", base, "--format", "hf", out});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(absl::StrContains(r.out, "step_00000006 (step 6) as MixtralForCausalLM")) << r.out;
  EXPECT_TRUE(std::filesystem::exists(out + "/model.safetensors"));
  EXPECT_TRUE(std::filesystem::exists(out + "/config.json"));
  r = h.Moectl({"export", base, "--format", "hf", out});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_TRUE(absl::StrContains(r.err, "is not empty")) << r.err;

  // Every checkpoint of base damaged (their MANIFESTs gone): resume says they are there and
  // damaged, not only that there is none.
  for (const auto& e : std::filesystem::directory_iterator(ckpt_dir)) {
    if (e.is_directory()) std::filesystem::remove(e.path() / "MANIFEST");
  }
  r = h.Moectl({"resume", base, "--steps", "8"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_TRUE(absl::StrContains(r.err, "step folders, newest step_00000006, are damaged or were cut short")) << r.err;

  // A running job cannot be resumed; once cancelled (it checkpoints), it goes on to its end.
  r = h.Moectl({"submit", h.WriteJob("long", 2, 100000, 0, "checkpoint:\n  every: 0\n")});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const std::string long_id = FirstLine(r.out);
  job = h.WaitFor(long_id, [](const Job& j) { return j.latest().step() >= 2 || Ended(j); }, 300);
  ASSERT_FALSE(Ended(job)) << job.reason();
  r = h.Moectl({"resume", long_id});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_TRUE(absl::StrContains(r.err, "only a finished")) << r.err;
  r = h.Moectl({"cancel", long_id}, 120);
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err << h.MoedLog();
  job = h.WaitFor(long_id, Ended, 10);
  ASSERT_EQ(job.state(), moe::v1::JOB_STATE_CANCELLED);
  const int64_t stopped_at = job.latest().step();
  ASSERT_GE(stopped_at, 2);
  const int64_t until = stopped_at + 3;
  r = h.Moectl({"resume", long_id, "--steps", std::to_string(until), "--follow"}, 600);
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err << h.MoedLog();
  job = h.WaitFor(long_id, Ended, 10);
  EXPECT_EQ(job.state(), moe::v1::JOB_STATE_SUCCEEDED) << job.reason();
  EXPECT_EQ(job.latest().step(), until);
  EXPECT_TRUE(LogsContain(h, long_id, "resumed from " + job.checkpoint_dir() + "/step_"));
}

// A job stopped (cancelled, moed shut down, preempted) during its last step has its checkpoint at
// train.steps with the final evaluation still to do (the checkpoint's meta says so, with the
// step's metric point): `moectl resume` takes it, the new attempt runs only that evaluation and
// stores the step's point with its val_loss; after that the job is done. Before, resume refused
// ("already trained all N steps") and the final val_loss was lost for good. The checkpoint of a
// stop at the last step is made here from a finished job's (the worker's side: train_test), as a
// real cancel cannot be timed to land in the last step.
TEST(E2eResume, AJobStoppedInItsLastStepResumesToRunItsFinalEvaluation) {
  DaemonHarness h(Options());
  ASSERT_TRUE(h.Start()) << h.MoedLog();
  CommandResult r = h.Moectl({"submit", h.WriteJob("last", 1, 4), "--follow"}, 300);
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err << h.MoedLog();
  const std::string id = FirstLine(r.out);
  Job job = h.WaitFor(id, Ended, 10);
  ASSERT_EQ(job.state(), moe::v1::JOB_STATE_SUCCEEDED) << job.reason();
  moe::v1::MetricPoint final_point;
  for (const auto& p : h.AllMetrics(id)) {
    if (p.step() == 4) final_point = p;
  }
  ASSERT_TRUE(final_point.has_val_loss());
  const double val_loss = final_point.val_loss();

  // Its final evaluation done, the job has nothing left.
  r = h.Moectl({"resume", id});
  EXPECT_EQ(r.exit_code, 1) << r.out;
  EXPECT_TRUE(absl::StrContains(r.err, "already trained all 4 steps")) << r.err;

  // The checkpoint a stop in step 4 writes: the step's point, no val_loss, the evaluation pending.
  const std::string step4 = job.checkpoint_dir() + "/step_00000004";
  absl::StatusOr<Checkpoint> ckpt = ReadCheckpoint(step4);
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  final_point.clear_has_val_loss();
  final_point.clear_val_loss();
  ASSERT_TRUE(google::protobuf::util::MessageToJsonString(final_point, &ckpt->meta[kFinalEvalPendingMeta]).ok());
  ASSERT_TRUE(WriteCheckpoint(job.checkpoint_dir(), *ckpt, 0).ok());

  r = h.Moectl({"resume", id, "--follow"}, 300);
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err << h.MoedLog();
  job = h.WaitFor(id, Ended, 10);
  EXPECT_EQ(job.state(), moe::v1::JOB_STATE_SUCCEEDED) << job.reason();
  EXPECT_TRUE(LogsContain(h, id, "resumed at step 4: running the final evaluation it missed"));
  EXPECT_FALSE(LogsContain(h, id, "nothing left to train"));
  // Each attempt stores its own step-4 point (moed keeps one per attempt and step), in order: the
  // first attempt's, then the one the resumed attempt sent with the val_loss it computed. Only one
  // (the first attempt's, which has a val_loss too) would mean the resume stored nothing.
  std::vector<moe::v1::MetricPoint> step4_points;
  for (const auto& p : h.AllMetrics(id)) {
    if (p.step() == 4) step4_points.push_back(p);
  }
  ASSERT_EQ(step4_points.size(), 2u) << "one step-4 point per attempt";
  const moe::v1::MetricPoint& got = step4_points.back();
  EXPECT_EQ(got.loss(), final_point.loss());
  EXPECT_EQ(got.grad_norm(), final_point.grad_norm());
  ASSERT_TRUE(got.has_val_loss());
  EXPECT_NEAR(got.val_loss(), val_loss, 1e-6 * std::max(1.0, val_loss));
  EXPECT_EQ(job.latest().step(), 4);
  EXPECT_TRUE(job.latest().has_val_loss());

  // Done now: the checkpoint was written again without the pending evaluation.
  r = h.Moectl({"resume", id});
  EXPECT_EQ(r.exit_code, 1) << r.out;
  EXPECT_TRUE(absl::StrContains(r.err, "already trained all 4 steps")) << r.err;
}

}  // namespace
}  // namespace moe::testing
