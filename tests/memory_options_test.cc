// The memory options of the CPU backend (MODEL.md "Memory"; issue 17): AdamW's moments stored as
// bf16 or int8 and bf16 master weights train the small Shakespeare job to within a few percent
// of the fp32 run's loss, the int8 moments hold a quarter of the bytes, the weights stay bf16
// values, and a run resumed from a checkpoint equals the uninterrupted one (the moments go to
// the checkpoint in fp32 and re-encode to the same codes).
#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/state_codec.h"
#include "kernels/threads.h"
#include "tests/support/paths.h"
#include "tests/support/test_jobs.h"
#include "tests/support/training_runs.h"
#include "worker/data/dataset.h"
#include "worker/model/model_config.h"
#include "worker/model/param_layout.h"
#include "worker/parallel/comm_single.h"
#include "worker/train/trainer.h"

namespace moe {
namespace {

moe::v1::JobSpec Spec(moe::v1::StateStorage state, moe::v1::Precision master) {
  moe::v1::JobSpec spec = testing::SmallShakespeareSpec();
  spec.mutable_train()->set_steps(40);
  spec.mutable_train()->set_eval_every(40);
  spec.mutable_train()->set_eval_batches(1);
  spec.mutable_train()->set_log_every(1);
  spec.mutable_train()->set_optimizer_state(state);
  spec.mutable_train()->set_master_weights(master);
  return spec;
}

std::vector<double> Train(const moe::v1::JobSpec& spec, Dataset* data, std::vector<float>* weights = nullptr,
                          std::vector<float>* grads = nullptr) {
  auto comm = CreateSingleProcessCommunicator();
  std::unique_ptr<Trainer> t = testing::NewTrainer(spec, comm.get(), data);
  if (t == nullptr) return {};
  TrainOutcome outcome;
  EXPECT_TRUE(t->Run(&outcome).ok());
  if (weights) t->model().CopyToHost(ParamSet::kParams, weights);
  if (grads) t->model().CopyToHost(ParamSet::kGrads, grads);
  return testing::Losses(*t);
}

double MeanOfLast(const std::vector<double>& v, int n) {
  double s = 0;
  for (int i = 0; i < n; ++i) s += v[v.size() - 1 - i];
  return s / n;
}

TEST(MemoryOptions, CompactStateAndBf16WeightsTrainLikeFp32) {
  kernels::SetNumThreads(1);
  Dataset data = *LoadDataset(testing::SmallShakespeareSpec().data());
  const std::vector<double> base = Train(Spec(moe::v1::STATE_FP32, moe::v1::PRECISION_FP32), &data);
  ASSERT_EQ(base.size(), 40u);
  ASSERT_LT(MeanOfLast(base, 5), base.front() - 0.3);  // it learns
  struct Case {
    moe::v1::StateStorage state;
    moe::v1::Precision master;
  };
  // 40 steps into training the loss still falls fast, so runs that round differently differ by
  // a percent or two; a broken state (lost or mis-scaled moments) misses by far more.
  const double tolerance = 0.04;  // of the mean of the last 5 losses, relative
  for (const Case& c : {Case{moe::v1::STATE_BF16, moe::v1::PRECISION_FP32}, Case{moe::v1::STATE_INT8, moe::v1::PRECISION_FP32},
                        Case{moe::v1::STATE_FP32, moe::v1::PRECISION_BF16}, Case{moe::v1::STATE_INT8, moe::v1::PRECISION_BF16}}) {
    std::vector<float> w, g;
    const std::vector<double> run = Train(Spec(c.state, c.master), &data, &w, &g);
    ASSERT_EQ(run.size(), base.size());
    EXPECT_NEAR(MeanOfLast(run, 5), MeanOfLast(base, 5), tolerance * MeanOfLast(base, 5))
        << "state " << c.state << ", master " << c.master;
    if (c.master == moe::v1::PRECISION_BF16) {
      for (float x : w) ASSERT_EQ(kernels::FromBf16Bits(kernels::Bf16Bits(x)), x) << "a weight is not a bf16 value";
      // The last step's gradients: the blocks' matrices' are bf16 values (and not all zero); the
      // norm gains, routers and embedding keep fp32 ones.
      const ParamLayout layout(ModelConfig::FromSpec(Spec(c.state, c.master), data.vocab_size), 0, 1);
      ASSERT_EQ(static_cast<int64_t>(g.size()), layout.total());
      int64_t matrices = 0, bf16_values = 0, nonzero = 0, fp32_only = 0;
      for (const ParamInfo& info : layout.params()) {
        for (int64_t i = info.offset; i < info.offset + info.size; ++i) {
          const bool is_bf16 = kernels::FromBf16Bits(kernels::Bf16Bits(g[i])) == g[i];
          if (Bf16Gradient(info)) {
            ++matrices;
            bf16_values += is_bf16;
            nonzero += g[i] != 0.f;
          } else {
            fp32_only += !is_bf16;
          }
        }
      }
      EXPECT_EQ(bf16_values, matrices) << "a block matrix's gradient is not a bf16 value";
      EXPECT_GT(nonzero, 0);
      EXPECT_GT(fp32_only, 0) << "the other gradients are not rounded";
    }
  }
}

TEST(MemoryOptions, Int8StateResumesToTheSameCurve) {
  kernels::SetNumThreads(1);
  moe::v1::JobSpec spec = Spec(moe::v1::STATE_INT8, moe::v1::PRECISION_BF16);
  spec.mutable_train()->set_steps(10);
  spec.mutable_train()->set_eval_every(10);
  Dataset data = *LoadDataset(spec.data());
  const std::vector<double> straight = Train(spec, &data);
  auto comm = CreateSingleProcessCommunicator();
  const std::vector<double> halves =
      testing::TrainInTwoHalves(spec, comm.get(), &data, testing::MakeTempDir("int8-resume-"));
  ASSERT_EQ(halves.size(), straight.size());
  for (size_t i = 0; i < straight.size(); ++i) EXPECT_EQ(halves[i], straight[i]) << "step " << i + 1;
}

}  // namespace
}  // namespace moe
