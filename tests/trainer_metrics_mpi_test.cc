// The trainer's throughput metrics on W ranks (run under mpirun at W = 1, 2 and 4) with the same
// work per rank: MFU is per device (a backend that reports a device peak gets the global model
// FLOP/s over W peaks, so it does not grow with W), the CPU backend (peak 0) reports none, and
// peak_memory_mb is the largest rank's high-water mark (a maximum, not a sum, over ranks); and a
// stop in the last step that one rank sees leaves the final evaluation to the resume on all ranks.
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <memory>
#include <utility>
#include <vector>

#include "common/model_stats.h"
#include "gtest/gtest.h"
#include "kernels/threads.h"
#include "tests/support/mpi_env.h"
#include "tests/support/test_jobs.h"
#include "tests/support/training_runs.h"
#include "worker/data/dataset.h"
#include "worker/model/cpu/model.h"
#include "worker/parallel/comm_mpi.h"
#include "worker/train/trainer.h"

namespace moe {
namespace {

[[maybe_unused]] ::testing::Environment* const kMpiEnv =
    ::testing::AddGlobalTestEnvironment(new testing::MpiEnvironment);

constexpr int kSequencesPerRank = 4;

// The CPU model, reporting a device peak as a GPU backend does.
class DevicePeakModel final : public TrainModel {
 public:
  DevicePeakModel(std::unique_ptr<TrainModel> inner, double peak_flops)
      : inner_(std::move(inner)), peak_flops_(peak_flops) {}

  const ModelConfig& config() const override { return inner_->config(); }
  const ParamLayout& layout() const override { return inner_->layout(); }
  void InitParams(uint64_t seed) override { inner_->InitParams(seed); }
  void ZeroGrads() override { inner_->ZeroGrads(); }
  ForwardResult Forward(const int32_t* idx, const int32_t* targets, int b, const BatchContext& ctx) override {
    return inner_->Forward(idx, targets, b, ctx);
  }
  void Backward() override { inner_->Backward(); }
  CommSeconds ReduceGrads() override { return inner_->ReduceGrads(); }
  void GradSquaredNorms(double* dense_sq, double* expert_sq) override { inner_->GradSquaredNorms(dense_sq, expert_sq); }
  void OptimizerStep(int64_t step, double lr, double muon_lr, double weight_decay, float clip_scale) override {
    inner_->OptimizerStep(step, lr, muon_lr, weight_decay, clip_scale);
  }
  double PeakFlopsPerSecond() const override { return peak_flops_; }
  int64_t PeakMemoryBytes() const override { return inner_->PeakMemoryBytes(); }
  void CopyToHost(ParamSet set, std::vector<float>* out) override { inner_->CopyToHost(set, out); }
  void CopyFromHost(ParamSet set, const std::vector<float>& in) override { inner_->CopyFromHost(set, in); }
  const std::vector<float>& params() override { return inner_->params(); }

 private:
  std::unique_ptr<TrainModel> inner_;
  double peak_flops_;
};

// The small job with kSequencesPerRank sequences per rank per step.
moe::v1::JobSpec SameWorkPerRank(int world) {
  moe::v1::JobSpec spec = testing::SmallShakespeareSpec(world);
  spec.mutable_train()->set_batch_size(kSequencesPerRank * world);
  spec.mutable_train()->set_steps(2);
  spec.mutable_train()->set_eval_every(0);
  return spec;
}

// Every rank's value, in rank order (collective).
std::vector<double> AllRanks(Communicator* comm, double mine) {
  std::vector<double> v(static_cast<size_t>(comm->world_size()), 0.0);
  v[static_cast<size_t>(comm->rank())] = mine;
  comm->AllReduceSum(v.data(), static_cast<int64_t>(v.size()));
  return v;
}

TEST(TrainerMetricsTest, MfuIsPerDevice) {
  kernels::SetNumThreads(1);
  auto comm = CreateMpiCommunicator(testing::TestCommOptions());
  const int W = comm->world_size();
  const moe::v1::JobSpec spec = SameWorkPerRank(W);
  auto data = LoadDataset(spec.data());
  ASSERT_TRUE(data.ok()) << data.status();
  const ModelConfig cfg = ModelConfig::FromSpec(spec, data->vocab_size);
  const double peak = 1e10;  // FLOP/s of one "device"
  auto model = std::make_unique<DevicePeakModel>(std::make_unique<Model>(cfg, comm.get()), peak);
  auto trainer = Trainer::Create(spec, comm.get(), &*data, TrainerOptions{}, std::move(model));
  ASSERT_TRUE(trainer.ok()) << trainer.status();
  (*trainer)->Step(0);  // warm-up
  const moe::v1::MetricPoint p = (*trainer)->Step(1).metrics;

  // tokens/s counts every rank's tokens ...
  const double tokens = static_cast<double>(kSequencesPerRank) * W * cfg.seq_len;
  EXPECT_NEAR(p.tokens_per_s() * p.step_ms() / 1e3 / tokens, 1.0, 1e-12);
  // ... and MFU is one device's share of them in model FLOPs over one device's peak: it depends
  // on the work per rank and its speed, not on W (the old formula was W times this).
  moe::v1::JobSpec sized = spec;
  sized.mutable_model()->set_vocab_size(cfg.vocab);
  const double flops_per_token = ComputeModelStats(sized).flops_per_token;
  const double per_device_tokens_per_s = p.tokens_per_s() / W;
  ASSERT_GT(p.mfu(), 0);
  EXPECT_NEAR(p.mfu() / (flops_per_token * per_device_tokens_per_s / peak), 1.0, 1e-12) << W << " ranks";

  // The CPU backend knows no peak: no MFU, as before.
  auto cpu = Trainer::Create(spec, comm.get(), &*data, TrainerOptions{});
  ASSERT_TRUE(cpu.ok()) << cpu.status();
  EXPECT_EQ((*cpu)->Step(0).metrics.mfu(), 0);
}

TEST(TrainerMetricsTest, PeakMemoryIsTheLargestRanks) {
  kernels::SetNumThreads(1);
  auto comm = CreateMpiCommunicator(testing::TestCommOptions());
  const int W = comm->world_size();
  const moe::v1::JobSpec spec = SameWorkPerRank(W);
  auto data = LoadDataset(spec.data());
  ASSERT_TRUE(data.ok()) << data.status();
  std::unique_ptr<Trainer> trainer = testing::NewTrainer(spec, comm.get(), &*data);
  ASSERT_NE(trainer, nullptr);
  // Rank 0 touches 64 MiB more than the others, so its peak is the largest by far and a sum
  // over ranks would exceed every rank's own peak.
  std::vector<char> ballast;
  if (comm->rank() == 0) {
    ballast.resize(size_t{64} << 20);
    std::memset(ballast.data(), 1, ballast.size());
  }
  const std::vector<double> before = AllRanks(comm.get(), static_cast<double>(trainer->model().PeakMemoryBytes()));
  const StepResult r = trainer->Step(0);
  const std::vector<double> after = AllRanks(comm.get(), static_cast<double>(trainer->model().PeakMemoryBytes()));

  const double reported = r.metrics.peak_memory_mb() * (1 << 20);  // bytes
  EXPECT_GE(before[0], static_cast<double>(size_t{64} << 20));
  EXPECT_GE(reported, *std::max_element(before.begin(), before.end()));
  EXPECT_LE(reported, *std::max_element(after.begin(), after.end())) << "a sum over " << W << " ranks?";
  EXPECT_EQ(ballast.empty() ? 1 : ballast.back(), 1);  // the ballast lives until here
}

// A stop that only the last rank sees, in the last step: every rank agrees on it, the checkpoint
// keeps the final evaluation pending, and a resume on all the ranks runs just that evaluation (a
// collective) and gives every rank the step's point with the val_loss of a run never stopped.
TEST(TrainerMetricsTest, AStopOnOneRankInTheLastStepLeavesTheFinalEvaluationToTheResume) {
  kernels::SetNumThreads(1);
  auto comm = CreateMpiCommunicator(testing::TestCommOptions());
  const int W = comm->world_size();
  const moe::v1::JobSpec spec = SameWorkPerRank(W);  // 2 steps, evaluated at the last only
  auto data = LoadDataset(spec.data());
  ASSERT_TRUE(data.ok()) << data.status();
  TrainOutcome outcome = TrainOutcome::kFinished;
  std::unique_ptr<Trainer> straight = testing::NewTrainer(spec, comm.get(), &*data);
  ASSERT_NE(straight, nullptr);
  ASSERT_TRUE(straight->Run(&outcome).ok());
  const moe::v1::MetricPoint want = straight->history().back();
  ASSERT_TRUE(want.has_val_loss());

  TrainerOptions opts;
  opts.checkpoint_dir = testing::SharedTempDir(comm.get(), "moe-mpi-last-stop-");
  int polls = 0;
  const bool stopper = comm->rank() == W - 1;
  opts.stop_requested = [&polls, stopper] { return stopper && ++polls >= 2; };  // poll 2: step 2's end
  std::unique_ptr<Trainer> stopped = testing::NewTrainer(spec, comm.get(), &*data, opts);
  ASSERT_NE(stopped, nullptr);
  ASSERT_TRUE(stopped->Run(&outcome).ok());
  EXPECT_EQ(outcome, TrainOutcome::kStopped);
  ASSERT_EQ(stopped->history().back().step(), 2);
  EXPECT_FALSE(stopped->history().back().has_val_loss());
  stopped.reset();

  opts.resume = true;
  opts.stop_requested = nullptr;
  std::unique_ptr<Trainer> resumed = testing::NewTrainer(spec, comm.get(), &*data, opts);
  ASSERT_NE(resumed, nullptr);
  ASSERT_TRUE(resumed->Run(&outcome).ok());
  EXPECT_EQ(outcome, TrainOutcome::kFinished);
  ASSERT_EQ(resumed->history().size(), 1u);
  const moe::v1::MetricPoint& got = resumed->history()[0];
  EXPECT_EQ(got.step(), 2);
  EXPECT_EQ(got.loss(), want.loss());
  ASSERT_TRUE(got.has_val_loss());
  EXPECT_NEAR(got.val_loss(), want.val_loss(), 1e-9 * want.val_loss()) << W << " ranks";
}

}  // namespace
}  // namespace moe
