// Expert parallelism on GPUs: the same bf16 job on W GPUs (one rank each, NCCL) gives the loss
// curve of one GPU, within bf16 tolerance, and checkpoints that resume on another W. Runs under
// mpirun at W = 1, 2 and 4; rank 0 also trains the one-GPU oracle. Skips, on every rank,
// without a GPU per rank (CI has none; scripts/device_check.sh runs it on the GPU machine).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "tests/support/mpi_env.h"
#include "tests/support/paths.h"
#include "tests/support/test_jobs.h"
#include "tests/support/training_runs.h"
#include "worker/parallel/comm_mpi.h"
#include "worker/parallel/comm_single.h"
#include "worker/data/dataset.h"
#include "worker/train/trainer.h"

#ifdef MOE_WITH_CUDA
#include <cuda_runtime.h>
#endif

namespace moe {
namespace {

[[maybe_unused]] ::testing::Environment* const kMpiEnv =
    ::testing::AddGlobalTestEnvironment(new testing::MpiEnvironment);

constexpr int kSteps = 20;

// Whether every rank has a GPU of its own on its host (agreed by all ranks, so all skip or none).
bool EveryRankHasAGpu(Communicator* comm) {
  int gpus = 0;
#ifdef MOE_WITH_CUDA
  if (cudaGetDeviceCount(&gpus) != cudaSuccess) gpus = 0;
#endif
  // Ranks of one job run on one host here: W GPUs are needed.
  double missing = gpus >= comm->world_size() ? 0.0 : 1.0;
  comm->AllReduceSum(&missing, 1);
  return missing == 0.0;
}

TEST(CudaEquivalenceTest, GpusMatchOneGpuAndResumeAcrossGpuCounts) {
  auto comm = CreateMpiCommunicator(testing::TestCommOptions());
  const int W = comm->world_size();
  if (!EveryRankHasAGpu(comm.get())) GTEST_SKIP() << "needs one CUDA GPU per rank (" << W << ")";
  moe::v1::JobSpec spec = testing::SmallShakespeareSpec(W);
  spec.mutable_model()->mutable_moe()->set_num_experts(8);  // 8, 4 or 2 experts per GPU
  spec.mutable_model()->set_dropout(0.1);                   // masks keyed by global token
  spec.mutable_resources()->set_device(moe::v1::DEVICE_CUDA);
  spec.mutable_train()->set_precision(moe::v1::PRECISION_BF16);
  spec.mutable_train()->set_steps(kSteps);
  spec.mutable_train()->set_log_every(1);
  spec.mutable_train()->set_eval_every(0);
  spec.mutable_train()->set_grad_accum(2);  // the dense all-reduce waits for the last micro-step
  spec.mutable_checkpoint()->set_every(kSteps / 2);
  spec.mutable_checkpoint()->set_keep(5);
  auto data = LoadDataset(spec.data());
  ASSERT_TRUE(data.ok()) << data.status();

  // W GPUs: 10 steps and a checkpoint, then a resumed run for the other 10.
  const std::string dir = testing::SharedTempDir(comm.get(), "moe-gpu-equiv-");
  const std::vector<double> parallel = testing::TrainInTwoHalves(spec, comm.get(), &*data, dir);
  comm->Barrier();
  if (comm->rank() != 0) return;
  ASSERT_EQ(parallel.size(), static_cast<size_t>(kSteps));
  TrainOutcome outcome;

  // The oracle: one GPU, the same global batch, from scratch; and the W-GPU step-10
  // checkpoint resumed on one GPU.
  auto single = CreateSingleProcessCommunicator();
  moe::v1::JobSpec one = spec;
  one.mutable_resources()->set_ranks(1);
  std::unique_ptr<Trainer> oracle = testing::NewTrainer(one, single.get(), &*data);
  ASSERT_NE(oracle, nullptr);
  ASSERT_TRUE(oracle->Run(&outcome).ok());
  const std::vector<double> ref = testing::Losses(*oracle);
  ASSERT_EQ(ref.size(), static_cast<size_t>(kSteps));
  const std::string one_dir = testing::MakeTempDir("moe-gpu-equiv-one-");
  std::filesystem::copy(dir + "/step_00000010", one_dir + "/step_00000010",
                        std::filesystem::copy_options::recursive);
  TrainerOptions o3;
  o3.checkpoint_dir = one_dir;
  o3.resume = true;
  std::unique_ptr<Trainer> resumed = testing::NewTrainer(one, single.get(), &*data, o3);
  ASSERT_NE(resumed, nullptr);
  ASSERT_TRUE(resumed->Run(&outcome).ok());
  const std::vector<double> tail = testing::Losses(*resumed);
  ASSERT_EQ(tail.size(), static_cast<size_t>(kSteps / 2));

  // bf16 tolerance: the experts' inputs, outputs and gradients cross the wire in bf16 and
  // sums run in another order; a wrong route, a missing gradient or a lost step moves the
  // curve by far more (the loss falls ~0.05 per step here).
  double worst = 0;
  for (int i = 0; i < kSteps; ++i) {
    const double err = std::abs(parallel[i] - ref[i]) / ref[i];
    worst = std::max(worst, err);
    EXPECT_LT(err, 1e-2) << "step " << i + 1 << ": " << W << " GPUs " << parallel[i] << ", one GPU " << ref[i];
  }
  for (int i = 0; i < kSteps / 2; ++i) {
    EXPECT_LT(std::abs(tail[i] - parallel[kSteps / 2 + i]) / parallel[kSteps / 2 + i], 1e-2)
        << "resumed on one GPU, step " << kSteps / 2 + i + 1;
  }
  std::printf("[ %d GPUs ] loss step 1 %.5f step %d %.5f; one GPU %.5f %.5f; worst rel diff %.2e\n", W,
              parallel.front(), kSteps, parallel.back(), ref.front(), ref.back(), worst);
}

// The expert options across GPUs: loss-free balancing (biases from the global counts, through
// the checkpoint), expert dropout (every GPU draws the same experts), shared experts and relu2.
TEST(CudaEquivalenceTest, ExpertOptionsOnGpusMatchOneGpu) {
  auto comm = CreateMpiCommunicator(testing::TestCommOptions());
  const int W = comm->world_size();
  if (!EveryRankHasAGpu(comm.get())) GTEST_SKIP() << "needs one CUDA GPU per rank (" << W << ")";
  moe::v1::JobSpec spec = testing::SmallShakespeareSpec(W);
  auto* e = spec.mutable_model()->mutable_moe();
  e->set_num_experts(8);
  e->set_activation(moe::v1::ACTIVATION_RELU2);
  e->set_shared_experts(1);
  e->set_shared_expert_hidden(64);
  e->set_bias_update_rate(0.01);
  e->set_expert_dropout(0.2);
  spec.mutable_resources()->set_device(moe::v1::DEVICE_CUDA);
  spec.mutable_train()->set_precision(moe::v1::PRECISION_BF16);
  spec.mutable_train()->set_steps(kSteps);
  spec.mutable_train()->set_log_every(1);
  spec.mutable_train()->set_eval_every(0);
  spec.mutable_train()->set_grad_accum(2);
  spec.mutable_checkpoint()->set_every(kSteps / 2);
  spec.mutable_checkpoint()->set_keep(5);
  auto data = LoadDataset(spec.data());
  ASSERT_TRUE(data.ok()) << data.status();
  const std::string dir = testing::SharedTempDir(comm.get(), "moe-gpu-equiv-opts-");
  const std::vector<double> parallel = testing::TrainInTwoHalves(spec, comm.get(), &*data, dir);
  comm->Barrier();
  if (comm->rank() != 0) return;
  ASSERT_EQ(parallel.size(), static_cast<size_t>(kSteps));
  auto single = CreateSingleProcessCommunicator();
  moe::v1::JobSpec one = spec;
  one.mutable_resources()->set_ranks(1);
  std::unique_ptr<Trainer> oracle = testing::NewTrainer(one, single.get(), &*data);
  ASSERT_NE(oracle, nullptr);
  TrainOutcome outcome;
  ASSERT_TRUE(oracle->Run(&outcome).ok());
  const std::vector<double> ref = testing::Losses(*oracle);
  ASSERT_EQ(ref.size(), static_cast<size_t>(kSteps));
  for (int i = 0; i < kSteps; ++i) {
    EXPECT_LT(std::abs(parallel[i] - ref[i]) / ref[i], 1e-2)
        << "step " << i + 1 << ": " << W << " GPUs " << parallel[i] << ", one GPU " << ref[i];
  }
  const moe::v1::MetricPoint& last = oracle->history().back();
  ASSERT_GT(last.layers_size(), 0);
  EXPECT_GT(last.layers(0).router_bias_spread(), 0);
}

}  // namespace
}  // namespace moe
