// Host memory of checkpointing: a ~25M-parameter CPU job trained in a child process with and
// without a checkpoint, then resumed from it. Saving and resuming may add one host copy of a
// parameter set (4 bytes per parameter) and one tensor, never the whole checkpoint (which
// holds weights, AdamW m and v: 12 bytes per parameter).
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <memory>
#include <string>

#include "gtest/gtest.h"
#include "kernels/threads.h"
#include "tests/support/paths.h"
#include "tests/support/test_jobs.h"
#include "tests/support/training_runs.h"
#include "worker/checkpoint/checkpoint.h"
#include "worker/data/dataset.h"
#include "worker/parallel/comm_single.h"
#include "worker/train/trainer.h"

namespace moe {
namespace {

// D 256, 4 layers, 8 experts of F 1024: 8 * 3 * 256 * 1024 = 6.3M expert weights per layer.
// One sequence of 32 tokens per step keeps activations small beside the parameters.
moe::v1::JobSpec BigSpec(int steps) {
  moe::v1::JobSpec spec = testing::SmallShakespeareSpec();
  auto* m = spec.mutable_model();
  m->set_d_model(256);
  m->set_n_layers(4);
  m->mutable_moe()->set_num_experts(8);
  m->mutable_moe()->set_expert_hidden(1024);
  auto* t = spec.mutable_train();
  t->set_steps(steps);
  t->set_batch_size(1);
  t->set_eval_every(0);
  t->set_eval_batches(1);
  t->set_warmup_steps(1);
  return spec;
}

struct ChildRun {
  bool ok = false;
  int64_t params = 0;
  int64_t max_rss_bytes = 0;  // the child's peak resident set
};

// Trains spec in a child process (checkpoint_dir "" writes none); its peak RSS from wait4.
ChildRun RunChild(const moe::v1::JobSpec& spec, const std::string& checkpoint_dir, bool resume) {
  int fds[2];
  if (::pipe(fds) != 0) return {};
  pid_t pid = ::fork();
  if (pid < 0) return {};
  if (pid == 0) {
    ::close(fds[0]);
    kernels::SetNumThreads(1);
    auto data = LoadDataset(spec.data());
    if (!data.ok()) ::_exit(2);
    auto comm = CreateSingleProcessCommunicator();
    TrainerOptions opts;
    opts.checkpoint_dir = checkpoint_dir;
    opts.resume = resume;
    std::unique_ptr<Trainer> trainer = testing::NewTrainer(spec, comm.get(), &*data, opts);
    if (trainer == nullptr) ::_exit(3);
    TrainOutcome outcome;
    absl::Status st = trainer->Run(&outcome);
    if (!st.ok()) {
      std::fprintf(stderr, "child: %s\n", std::string(st.message()).c_str());
      ::_exit(4);
    }
    const int64_t params = trainer->model().layout().total();
    if (::write(fds[1], &params, sizeof(params)) != sizeof(params)) ::_exit(5);
    ::_exit(0);
  }
  ::close(fds[1]);
  ChildRun run;
  if (::read(fds[0], &run.params, sizeof(run.params)) != sizeof(run.params)) run.params = 0;
  ::close(fds[0]);
  int status = 0;
  struct rusage usage = {};
  if (::wait4(pid, &status, 0, &usage) != pid) return {};
  run.ok = WIFEXITED(status) && WEXITSTATUS(status) == 0 && run.params > 0;
  run.max_rss_bytes = static_cast<int64_t>(usage.ru_maxrss) * 1024;  // ru_maxrss is in KiB
  return run;
}

TEST(CheckpointMemory, SaveAndResumeHoldOneParameterSetNotTheCheckpoint) {
  // Nothing runs in this process before the forks (no OpenMP runtime to inherit).
  const moe::v1::JobSpec spec = BigSpec(2);
  moe::v1::JobSpec longer = spec;
  longer.mutable_train()->set_steps(3);
  const std::string dir = testing::MakeTempDir("moe-ckpt-memory-");

  const ChildRun plain = RunChild(spec, "", false);
  ASSERT_TRUE(plain.ok);
  const ChildRun saved = RunChild(spec, dir, false);
  ASSERT_TRUE(saved.ok);
  ASSERT_TRUE(LatestCheckpoint(dir).ok());
  const ChildRun resumed = RunChild(longer, dir, true);
  ASSERT_TRUE(resumed.ok);
  ASSERT_TRUE(std::filesystem::exists(dir + "/step_00000003"));

  const double p = static_cast<double>(plain.params);
  ASSERT_GT(p, 20e6);
  const double save_extra = (saved.max_rss_bytes - plain.max_rss_bytes) / p;
  const double resume_extra = (resumed.max_rss_bytes - plain.max_rss_bytes) / p;
  std::printf("{\"params\": %.0f, \"peak_rss_mib\": {\"no_checkpoint\": %.1f, \"save\": %.1f, "
              "\"resume_and_save\": %.1f}, \"extra_bytes_per_param\": {\"save\": %.2f, "
              "\"resume_and_save\": %.2f}}\n",
              p, plain.max_rss_bytes / 1048576.0, saved.max_rss_bytes / 1048576.0,
              resumed.max_rss_bytes / 1048576.0, save_extra, resume_extra);
  // One host set is 4 bytes per parameter; the old path held 16 (save) and 24 (resume).
  EXPECT_LT(save_extra, 8.0);
  EXPECT_LT(resume_extra, 8.0);
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace moe
