// The CPU trainer end to end on one rank: it learns shakespeare, and a run stopped and resumed
// from its checkpoint gives bitwise the same losses as an unstopped run.
#include <cmath>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "gtest/gtest.h"
#include "kernels/threads.h"
#include "tests/support/paths.h"
#include "tests/support/test_jobs.h"
#include "tests/support/training_runs.h"
#include "worker/checkpoint/checkpoint.h"
#include "worker/parallel/comm_single.h"
#include "worker/data/dataset.h"
#include "worker/train/trainer.h"

namespace moe {
namespace {

using testing::Losses;

TEST(TrainTest, SmallModelLearnsShakespeare) {
  kernels::SetNumThreads(1);
  moe::v1::JobSpec spec = testing::SmallShakespeareSpec();
  spec.mutable_train()->set_steps(300);
  auto data = LoadDataset(spec.data());
  ASSERT_TRUE(data.ok()) << data.status();
  ASSERT_EQ(data->vocab_size, 65);
  auto comm = CreateSingleProcessCommunicator();
  TrainerOptions opts;
  opts.checkpoint_dir = "";
  std::unique_ptr<Trainer> trainer = testing::NewTrainer(spec, comm.get(), &*data, opts);
  ASSERT_NE(trainer, nullptr);
  const double val0 = trainer->Evaluate().value();
  TrainOutcome outcome;
  ASSERT_TRUE(trainer->Run(&outcome).ok());
  const double val = trainer->Evaluate().value();
  // Untrained: ~ln(65) = 4.17. This 0.1M-parameter model reaches 2.37 after 300 steps of
  // 512 tokens; 2.5 is a bar only a model that really learns clears.
  EXPECT_GT(val0, 4.0);
  EXPECT_LT(val, 2.5) << "val loss after 300 steps";
  ASSERT_FALSE(trainer->history().empty());
  EXPECT_TRUE(trainer->history().back().has_val_loss());
}

// The attention options of MODEL.md (QK-norm, gated attention, attention dropout) train too: the
// same bar as the base model.
TEST(TrainTest, QkNormAndGatedAttentionLearnShakespeare) {
  kernels::SetNumThreads(1);
  moe::v1::JobSpec spec = testing::SmallShakespeareSpec();
  spec.mutable_train()->set_steps(300);
  auto* attn = spec.mutable_model()->mutable_attention();
  attn->set_qk_norm(true);
  attn->set_gate(true);
  attn->set_dropout(0.05);
  auto data = LoadDataset(spec.data());
  ASSERT_TRUE(data.ok()) << data.status();
  auto comm = CreateSingleProcessCommunicator();
  TrainerOptions opts;
  opts.checkpoint_dir = "";
  std::unique_ptr<Trainer> trainer = testing::NewTrainer(spec, comm.get(), &*data, opts);
  ASSERT_NE(trainer, nullptr);
  ASSERT_NE(trainer->model().layout().Find("blocks.1.attn.wg.weight"), nullptr);
  const double val0 = trainer->Evaluate().value();
  TrainOutcome outcome;
  ASSERT_TRUE(trainer->Run(&outcome).ok());
  const double val = trainer->Evaluate().value();
  EXPECT_GT(val0, 4.0);
  EXPECT_LT(val, 2.5) << "val loss after 300 steps with qk_norm, gate and attention dropout";
}

TEST(TrainTest, ResumeEqualsUninterrupted) {
  kernels::SetNumThreads(1);
  moe::v1::JobSpec spec = testing::SmallShakespeareSpec();
  spec.mutable_train()->set_steps(30);
  spec.mutable_train()->set_log_every(1);
  spec.mutable_train()->set_eval_every(0);
  spec.mutable_model()->set_dropout(0.1);  // dropout masks must resume too
  auto data = LoadDataset(spec.data());
  ASSERT_TRUE(data.ok()) << data.status();
  auto comm = CreateSingleProcessCommunicator();

  TrainerOptions full_opts;
  std::unique_ptr<Trainer> full = testing::NewTrainer(spec, comm.get(), &*data, full_opts);
  ASSERT_NE(full, nullptr);
  TrainOutcome outcome;
  ASSERT_TRUE(full->Run(&outcome).ok());

  const std::string dir = testing::MakeTempDir("moe-resume-");
  TrainerOptions first_opts;
  first_opts.checkpoint_dir = dir;
  first_opts.max_steps = 12;  // stops after 12 steps with a checkpoint (every = 12 below)
  spec.mutable_checkpoint()->set_every(12);
  std::unique_ptr<Trainer> first = testing::NewTrainer(spec, comm.get(), &*data, first_opts);
  ASSERT_NE(first, nullptr);
  ASSERT_TRUE(first->Run(&outcome).ok());
  ASSERT_TRUE(LatestCheckpoint(dir).ok());

  TrainerOptions second_opts;
  second_opts.checkpoint_dir = dir;
  second_opts.resume = true;
  std::unique_ptr<Trainer> second = testing::NewTrainer(spec, comm.get(), &*data, second_opts);
  ASSERT_NE(second, nullptr);
  ASSERT_TRUE(second->Run(&outcome).ok());

  std::vector<double> a = Losses(*full), b = Losses(*first), c = Losses(*second);
  b.insert(b.end(), c.begin(), c.end());
  ASSERT_EQ(a.size(), 30u);
  ASSERT_EQ(b.size(), 30u);
  for (size_t i = 0; i < a.size(); ++i) EXPECT_EQ(a[i], b[i]) << "step " << i + 1;  // bitwise
  EXPECT_EQ(full->model().params(), second->model().params());
}

// A resume at or past train.steps trains nothing and says so (it printed only where it resumed).
TEST(TrainTest, AResumeWithNoStepsLeftSaysSo) {
  kernels::SetNumThreads(1);
  moe::v1::JobSpec spec = testing::SmallShakespeareSpec();
  spec.mutable_train()->set_steps(2);
  spec.mutable_train()->set_eval_every(0);
  auto data = LoadDataset(spec.data());
  ASSERT_TRUE(data.ok()) << data.status();
  auto comm = CreateSingleProcessCommunicator();
  const std::string dir = testing::MakeTempDir("moe-done-");
  TrainerOptions opts;
  opts.checkpoint_dir = dir;
  TrainOutcome outcome;
  {
    std::unique_ptr<Trainer> t = testing::NewTrainer(spec, comm.get(), &*data, opts);
    ASSERT_TRUE(t->Run(&outcome).ok());
  }
  for (const int steps : {2, 1}) {
    spec.mutable_train()->set_steps(steps);
    std::vector<std::string> log;
    opts.resume = true;
    opts.on_log = [&log](const std::string& line) { log.push_back(line); };
    std::unique_ptr<Trainer> t = testing::NewTrainer(spec, comm.get(), &*data, opts);
    ASSERT_TRUE(t->Run(&outcome).ok());
    EXPECT_EQ(Losses(*t).size(), 0u) << "steps " << steps;
    std::string all;
    for (const std::string& l : log) all += l + "\n";
    EXPECT_NE(all.find("nothing left to train: the checkpoint is at step 2 and train.steps is " +
                       std::to_string(steps)),
              std::string::npos)
        << all;
  }
}

// SmallShakespeareSpec for `steps` steps, no warm-up, evaluated at the last step only.
moe::v1::JobSpec ShortRunSpec(int steps) {
  moe::v1::JobSpec spec = testing::SmallShakespeareSpec();
  spec.mutable_train()->set_steps(steps);
  spec.mutable_train()->set_warmup_steps(0);
  spec.mutable_train()->set_eval_every(100);
  return spec;
}

// A job whose updates blow the weights up (weight_decay 1e300: inf after the first step, a NaN
// loss after) stops with the reason instead of training on to "success"; before, it ran every
// step, and its checkpoints of inf weights (every step, keep 2) replaced the good ones.
TEST(TrainTest, ADivergedRunStopsWithTheReasonAndKeepsItsGoodCheckpoints) {
  kernels::SetNumThreads(1);
  moe::v1::JobSpec spec = ShortRunSpec(6);
  spec.mutable_train()->set_weight_decay(1e300);
  spec.mutable_checkpoint()->set_every(1);
  spec.mutable_checkpoint()->set_keep(2);
  auto data = LoadDataset(spec.data());
  ASSERT_TRUE(data.ok()) << data.status();
  auto comm = CreateSingleProcessCommunicator();
  TrainerOptions opts;
  opts.checkpoint_dir = testing::MakeTempDir("diverged-");
  std::vector<std::string> lines;
  opts.on_log = [&lines](const std::string& line) { lines.push_back(line); };
  std::unique_ptr<Trainer> trainer = testing::NewTrainer(spec, comm.get(), &*data, opts);
  ASSERT_NE(trainer, nullptr);
  TrainOutcome outcome;
  absl::Status st = trainer->Run(&outcome);
  ASSERT_FALSE(st.ok());
  EXPECT_TRUE(absl::StrContains(st.message(), "not a finite number") || absl::StrContains(st.message(), "diverged"))
      << st;
  EXPECT_LT(trainer->history().size(), 6u);
  // Without checkpoints it gets as far as the NaN loss of step 2, and stops there; its metric
  // line stays JSON (null, not printf's "-nan").
  opts.checkpoint_dir = "";
  trainer = testing::NewTrainer(spec, comm.get(), &*data, opts);
  ASSERT_NE(trainer, nullptr);
  st = trainer->Run(&outcome);
  EXPECT_TRUE(absl::StrContains(st.message(), "the training diverged: the loss is nan at step 2")) << st;
  ASSERT_FALSE(lines.empty());
  EXPECT_TRUE(absl::StrContains(lines.back(), "\"step\": 2, \"loss\": null")) << lines.back();
  EXPECT_FALSE(absl::StrContains(lines.back(), "nan")) << lines.back();
  // Whatever checkpoint is left holds numbers.
  absl::StatusOr<std::string> latest = LatestCheckpoint(opts.checkpoint_dir);
  if (latest.ok()) {
    absl::StatusOr<Checkpoint> c = ReadCheckpoint(*latest);
    ASSERT_TRUE(c.ok()) << c.status();
    for (const NamedTensor& t : c->tensors) {
      for (float v : t.data) ASSERT_TRUE(std::isfinite(v)) << *latest << " " << t.name;
    }
  }
}

// The validation loss reads eval_batches batches of batch_size sequences whatever grad_accum is:
// before, each batch was one micro-batch, so grad_accum 2 evaluated half the tokens (another loss).
TEST(TrainTest, ValidationLossDoesNotDependOnGradAccum) {
  kernels::SetNumThreads(1);
  std::vector<double> val;
  for (int accum : {1, 2, 4}) {
    moe::v1::JobSpec spec = ShortRunSpec(1);
    spec.mutable_train()->set_batch_size(4);
    spec.mutable_train()->set_grad_accum(accum);
    spec.mutable_train()->set_lr(1e-9);
    spec.mutable_train()->set_min_lr(0);
    spec.mutable_train()->set_eval_every(1);
    spec.mutable_train()->set_eval_batches(2);
    auto data = LoadDataset(spec.data());
    ASSERT_TRUE(data.ok()) << data.status();
    testing::OneRankRun run = testing::TrainOnOneRank(spec, &*data);
    ASSERT_NE(run.trainer, nullptr);
    ASSERT_TRUE(run.trainer->history().back().has_val_loss());
    val.push_back(run.trainer->history().back().val_loss());
  }
  EXPECT_NEAR(val[1], val[0], 1e-5 * val[0]);
  EXPECT_NEAR(val[2], val[0], 1e-5 * val[0]);
}

// A gradient that is no number while the loss still is (lr 3e5 here; 1e6 breaks the model down
// into all-zero gradients first, the test below) is not applied:
// the run stops at that step with the weights of the step before, all of them numbers. Before,
// the update went in and the next step's NaN loss blamed the learning rate a step late.
TEST(TrainTest, ANonFiniteGradientIsNotAppliedAndStopsTheRun) {
  kernels::SetNumThreads(1);
  moe::v1::JobSpec spec = ShortRunSpec(6);
  spec.mutable_train()->set_lr(3e5);
  spec.mutable_train()->set_min_lr(0);
  auto data = LoadDataset(spec.data());
  ASSERT_TRUE(data.ok()) << data.status();
  testing::OneRankRun run = testing::RunOnOneRank(spec, &*data);
  ASSERT_NE(run.trainer, nullptr);
  Trainer* trainer = run.trainer.get();
  const absl::Status& st = run.status;
  ASSERT_FALSE(st.ok());
  EXPECT_TRUE(absl::StrContains(st.message(), "the training diverged: the gradient's norm is nan at step"))
      << st;
  EXPECT_TRUE(absl::StrContains(st.message(), "the step's update was not applied")) << st;
  ASSERT_FALSE(trainer->history().empty());
  const moe::v1::MetricPoint& last = trainer->history().back();
  EXPECT_TRUE(std::isfinite(last.loss()));
  EXPECT_FALSE(std::isfinite(last.grad_norm()));
  std::vector<float> weights;
  trainer->model().CopyToHost(ParamSet::kParams, &weights);
  ASSERT_FALSE(weights.empty());
  for (float v : weights) ASSERT_TRUE(std::isfinite(v));
}

// Every gradient 0 while the loss is above 0 (here all activations dropped; an update large
// enough to overflow RMSNorm's mean square does the same): the run stops at once. Before, the
// loss stayed finite, the run "succeeded" and checkpointed a model that could not learn.
TEST(TrainTest, AllZeroGradientsWithALossStopTheRun) {
  kernels::SetNumThreads(1);
  moe::v1::JobSpec spec = ShortRunSpec(4);
  spec.mutable_model()->set_dropout(0.9999999);
  auto data = LoadDataset(spec.data());
  ASSERT_TRUE(data.ok()) << data.status();
  testing::OneRankRun run = testing::RunOnOneRank(spec, &*data);
  ASSERT_NE(run.trainer, nullptr);
  const absl::Status& st = run.status;
  ASSERT_FALSE(st.ok());
  EXPECT_TRUE(absl::StrContains(st.message(), "the training broke down: every gradient is 0 at step 1")) << st;
  EXPECT_TRUE(absl::StrContains(st.message(), "lower model.dropout (0.9999999)")) << st;
}

// When a router loss's coefficient is what blew the loss up, the reason names it beside lr.
TEST(TrainTest, ADivergenceNamesALargeRouterLossCoefficient) {
  kernels::SetNumThreads(1);
  moe::v1::JobSpec spec = testing::SmallShakespeareSpec();
  spec.mutable_train()->set_steps(3);
  spec.mutable_train()->set_eval_every(100);
  spec.mutable_model()->mutable_moe()->set_aux_loss_coef(1e300);
  auto data = LoadDataset(spec.data());
  ASSERT_TRUE(data.ok()) << data.status();
  testing::OneRankRun run = testing::RunOnOneRank(spec, &*data);
  ASSERT_NE(run.trainer, nullptr);
  const absl::Status& st = run.status;
  EXPECT_TRUE(absl::StrContains(st.message(), "the training diverged")) << st;
  EXPECT_TRUE(absl::StrContains(st.message(), "model.moe.aux_loss_coef (1e+300)")) << st;
  EXPECT_FALSE(absl::StrContains(st.message(), "z_loss_coef")) << st;
}

TEST(TrainTest, RefusesACheckpointOfAnotherModel) {
  kernels::SetNumThreads(1);
  moe::v1::JobSpec spec = testing::SmallShakespeareSpec();
  spec.mutable_train()->set_steps(2);
  auto data = LoadDataset(spec.data());
  ASSERT_TRUE(data.ok()) << data.status();
  auto comm = CreateSingleProcessCommunicator();
  const std::string dir = testing::MakeTempDir("moe-mismatch-");
  TrainerOptions opts;
  opts.checkpoint_dir = dir;
  TrainOutcome outcome;
  {
    std::unique_ptr<Trainer> t = testing::NewTrainer(spec, comm.get(), &*data, opts);
    ASSERT_NE(t, nullptr);
    ASSERT_TRUE(t->Run(&outcome).ok());
  }
  spec.mutable_model()->set_d_model(32);
  opts.resume = true;
  std::unique_ptr<Trainer> other = testing::NewTrainer(spec, comm.get(), &*data, opts);
  ASSERT_NE(other, nullptr);
  absl::Status st = other->Run(&outcome);
  ASSERT_FALSE(st.ok());
  EXPECT_NE(std::string(st.message()).find("does not fit this job's model"), std::string::npos) << st;
}

// Flips one byte in the middle of a checkpoint's weights (the manifest's checksum catches it).
void FlipByte(const std::string& ckpt_dir) {
  const std::string path = ckpt_dir + "/model.safetensors";
  std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
  f.seekg(0, std::ios::end);
  const std::streamoff mid = f.tellg() / 2;
  f.seekg(mid);
  char c = 0;
  f.read(&c, 1);
  c = static_cast<char>(c ^ 0x40);
  f.seekp(mid);
  f.write(&c, 1);
}

TEST(TrainTest, ResumeSkipsADamagedCheckpointAndFailsWhenNoneIsGood) {
  kernels::SetNumThreads(1);
  moe::v1::JobSpec spec = testing::SmallShakespeareSpec();
  spec.mutable_train()->set_steps(6);
  spec.mutable_checkpoint()->set_every(2);
  spec.mutable_checkpoint()->set_keep(3);
  auto data = LoadDataset(spec.data());
  ASSERT_TRUE(data.ok()) << data.status();
  auto comm = CreateSingleProcessCommunicator();
  const std::string dir = testing::MakeTempDir("moe-damaged-");
  TrainerOptions opts;
  opts.checkpoint_dir = dir;
  opts.max_steps = 4;  // checkpoints at steps 2 and 4
  TrainOutcome outcome;
  {
    std::unique_ptr<Trainer> t = testing::NewTrainer(spec, comm.get(), &*data, opts);
    ASSERT_TRUE(t->Run(&outcome).ok());
  }
  FlipByte(dir + "/step_00000004");
  std::vector<std::string> log;
  opts.resume = true;
  opts.max_steps = 0;  // resume only: where does it start?
  opts.on_log = [&log](const std::string& line) { log.push_back(line); };
  {
    std::unique_ptr<Trainer> t = testing::NewTrainer(spec, comm.get(), &*data, opts);
    ASSERT_TRUE(t->Run(&outcome).ok());
  }
  std::string all;
  for (const std::string& l : log) all += l + "\n";
  EXPECT_NE(all.find("skipping damaged checkpoint " + dir + "/step_00000004"), std::string::npos)
      << all;
  EXPECT_NE(all.find("resumed from " + dir + "/step_00000002 at step 2"), std::string::npos) << all;

  // Every checkpoint damaged: the run fails saying so (no silent start from step 0) ...
  FlipByte(dir + "/step_00000002");
  log.clear();
  {
    std::unique_ptr<Trainer> t = testing::NewTrainer(spec, comm.get(), &*data, opts);
    absl::Status st = t->Run(&outcome);
    ASSERT_FALSE(st.ok());
    EXPECT_EQ(st.code(), absl::StatusCode::kDataLoss);
    EXPECT_NE(std::string(st.message()).find("every checkpoint under"), std::string::npos) << st;
    EXPECT_NE(std::string(st.message()).find("start_over_if_damaged"), std::string::npos) << st;
  }
  // ... unless the job asks to start over.
  spec.mutable_checkpoint()->set_start_over_if_damaged(true);
  log.clear();
  opts.max_steps = 1;
  {
    std::unique_ptr<Trainer> t = testing::NewTrainer(spec, comm.get(), &*data, opts);
    ASSERT_TRUE(t->Run(&outcome).ok());
  }
  all.clear();
  for (const std::string& l : log) all += l + "\n";
  EXPECT_NE(all.find("starting over from step 0"), std::string::npos) << all;
}

// The log lines of a run, one string.
std::string Joined(const std::vector<std::string>& lines) {
  std::string all;
  for (const std::string& l : lines) all += l + "\n";
  return all;
}

// A stop (SIGTERM: a cancel, moed's shutdown, preemption) during the last step, or during its
// final evaluation, checkpoints the step with its metric point and the evaluation still to do; a
// resume runs just that evaluation and emits the step's point (its own loss) with the val_loss an
// uninterrupted run gets. Before, the checkpoint at train.steps left nothing to resume ("nothing
// left to train") and the job never had its final val_loss.
TEST(TrainTest, AStopAtTheLastStepLeavesItsFinalEvaluationToTheResume) {
  kernels::SetNumThreads(1);
  const moe::v1::JobSpec spec = ShortRunSpec(3);
  auto data = LoadDataset(spec.data());
  ASSERT_TRUE(data.ok()) << data.status();
  testing::OneRankRun straight = testing::TrainOnOneRank(spec, &*data);
  ASSERT_NE(straight.trainer, nullptr);
  const moe::v1::MetricPoint want = straight.trainer->history().back();
  ASSERT_EQ(want.step(), 3);
  ASSERT_TRUE(want.has_val_loss());

  // The stop is polled once at the end of each step, then after each evaluation batch: from
  // poll 3 on it comes during step 3 (its evaluation is skipped), from poll 4 on during the
  // evaluation's first batch.
  for (const int first_stopped_poll : {3, 4}) {
    SCOPED_TRACE(first_stopped_poll == 3 ? "stop during the step" : "stop during the evaluation");
    TrainerOptions opts;
    opts.checkpoint_dir = testing::MakeTempDir("moe-last-step-stop-");
    int polls = 0;
    opts.stop_requested = [&polls, first_stopped_poll] { return ++polls >= first_stopped_poll; };
    std::vector<std::string> log;
    opts.on_log = [&log](const std::string& line) { log.push_back(line); };
    TrainOutcome outcome = TrainOutcome::kFinished;
    {
      testing::OneRankRun run = testing::RunOnOneRank(spec, &*data, opts);
      ASSERT_NE(run.trainer, nullptr);
      ASSERT_TRUE(run.status.ok()) << run.status;
      ASSERT_FALSE(run.trainer->history().empty());
      ASSERT_EQ(run.trainer->history().back().step(), 3);
      EXPECT_FALSE(run.trainer->history().back().has_val_loss());
      EXPECT_EQ(run.trainer->history().back().loss(), want.loss());
    }
    // RunOnOneRank keeps no outcome: the log says the run stopped.
    EXPECT_TRUE(absl::StrContains(Joined(log), "stop requested: checkpointed at step 3, exiting")) << Joined(log);
    EXPECT_TRUE(absl::StrContains(Joined(log), "the final evaluation at step 3 did not run: a resume runs it"))
        << Joined(log);
    const std::string step3 = opts.checkpoint_dir + "/step_00000003";
    auto meta = ReadCheckpointMeta(step3);
    ASSERT_TRUE(meta.ok()) << meta.status();
    EXPECT_EQ(meta->count(kFinalEvalPendingMeta), 1u);

    // A resume stopped again during that evaluation keeps it pending.
    opts.resume = true;
    opts.stop_requested = [] { return true; };
    log.clear();
    {
      auto comm = CreateSingleProcessCommunicator();
      std::unique_ptr<Trainer> t = testing::NewTrainer(spec, comm.get(), &*data, opts);
      ASSERT_NE(t, nullptr);
      ASSERT_TRUE(t->Run(&outcome).ok());
      EXPECT_EQ(outcome, TrainOutcome::kStopped);
      EXPECT_TRUE(t->history().empty());
    }
    EXPECT_TRUE(absl::StrContains(Joined(log), "stop requested during the final evaluation at step 3"))
        << Joined(log);
    meta = ReadCheckpointMeta(step3);
    ASSERT_TRUE(meta.ok()) << meta.status();
    EXPECT_EQ(meta->count(kFinalEvalPendingMeta), 1u);

    // The resume that is let run: the step's own point, with the val_loss, and nothing trained.
    opts.stop_requested = nullptr;
    log.clear();
    {
      auto comm = CreateSingleProcessCommunicator();
      std::unique_ptr<Trainer> t = testing::NewTrainer(spec, comm.get(), &*data, opts);
      ASSERT_NE(t, nullptr);
      ASSERT_TRUE(t->Run(&outcome).ok());
      EXPECT_EQ(outcome, TrainOutcome::kFinished);
      ASSERT_EQ(t->history().size(), 1u);
      const moe::v1::MetricPoint& got = t->history()[0];
      EXPECT_EQ(got.step(), 3);
      EXPECT_EQ(got.loss(), want.loss());
      EXPECT_EQ(got.grad_norm(), want.grad_norm());
      EXPECT_EQ(got.lr(), want.lr());
      EXPECT_EQ(got.aux_loss(), want.aux_loss());
      EXPECT_EQ(got.layers_size(), want.layers_size());
      EXPECT_GT(got.unix_ms(), 0);
      ASSERT_TRUE(got.has_val_loss());
      EXPECT_EQ(got.val_loss(), want.val_loss());
    }
    EXPECT_TRUE(absl::StrContains(Joined(log), "resumed at step 3: running the final evaluation it missed"))
        << Joined(log);
    EXPECT_FALSE(absl::StrContains(Joined(log), "nothing left to train")) << Joined(log);
    meta = ReadCheckpointMeta(step3);
    ASSERT_TRUE(meta.ok()) << meta.status();
    EXPECT_EQ(meta->count(kFinalEvalPendingMeta), 0u);

    // Done now: a further resume has nothing left, as for a run that was never stopped.
    log.clear();
    {
      auto comm = CreateSingleProcessCommunicator();
      std::unique_ptr<Trainer> t = testing::NewTrainer(spec, comm.get(), &*data, opts);
      ASSERT_NE(t, nullptr);
      ASSERT_TRUE(t->Run(&outcome).ok());
      EXPECT_TRUE(t->history().empty());
    }
    EXPECT_TRUE(absl::StrContains(Joined(log), "nothing left to train: the checkpoint is at step 3")) << Joined(log);
  }
}

// A stop before the last step leaves no evaluation pending: the resume trains on as before.
TEST(TrainTest, AStopBeforeTheLastStepLeavesNoEvaluationPending) {
  kernels::SetNumThreads(1);
  const moe::v1::JobSpec spec = ShortRunSpec(3);
  auto data = LoadDataset(spec.data());
  ASSERT_TRUE(data.ok()) << data.status();
  TrainerOptions opts;
  opts.checkpoint_dir = testing::MakeTempDir("moe-mid-stop-");
  opts.stop_requested = [] { return true; };
  testing::OneRankRun run = testing::RunOnOneRank(spec, &*data, opts);
  ASSERT_NE(run.trainer, nullptr);
  ASSERT_TRUE(run.status.ok()) << run.status;
  ASSERT_EQ(run.trainer->history().size(), 1u);
  auto meta = ReadCheckpointMeta(opts.checkpoint_dir + "/step_00000001");
  ASSERT_TRUE(meta.ok()) << meta.status();
  EXPECT_EQ(meta->count(kFinalEvalPendingMeta), 0u);
}

}  // namespace
}  // namespace moe
