// Memory a backend cannot get during training ends the run with the memory named (GPU or host)
// and the step: Trainer::Run turns a backend's AllocationError, or a bare std::bad_alloc from a
// step's host buffers, into "out of GPU memory: ..., in step N" (what moe-worker prints and moed
// keeps as the FAILED reason), never an abort.
#include <memory>
#include <new>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "gtest/gtest.h"
#include "kernels/threads.h"
#include "tests/support/test_jobs.h"
#include "worker/data/dataset.h"
#include "worker/model/allocation_error.h"
#include "worker/model/cpu/model.h"
#include "worker/parallel/comm_single.h"
#include "worker/train/trainer.h"

namespace moe {
namespace {

// The CPU model, whose forward pass number `fail_at` (1-based) cannot get its memory.
class FailingModel final : public TrainModel {
 public:
  FailingModel(std::unique_ptr<TrainModel> inner, int fail_at, bool gpu)
      : inner_(std::move(inner)), fail_at_(fail_at), gpu_(gpu) {}

  const ModelConfig& config() const override { return inner_->config(); }
  const ParamLayout& layout() const override { return inner_->layout(); }
  void InitParams(uint64_t seed) override { inner_->InitParams(seed); }
  void ZeroGrads() override { inner_->ZeroGrads(); }
  ForwardResult Forward(const int32_t* idx, const int32_t* targets, int b, const BatchContext& ctx) override {
    if (++forwards_ == fail_at_) {
      if (gpu_) {
        throw AllocationError("could not allocate 2 GiB on GPU 0 (1 GiB of 80 GiB free) after 79 GiB for the model",
                              AllocationError::Memory::kGpu, int64_t{80} << 30);
      }
      throw std::bad_alloc();
    }
    return inner_->Forward(idx, targets, b, ctx);
  }
  void Backward() override { inner_->Backward(); }
  CommSeconds ReduceGrads() override { return inner_->ReduceGrads(); }
  void GradSquaredNorms(double* dense_sq, double* expert_sq) override { inner_->GradSquaredNorms(dense_sq, expert_sq); }
  void OptimizerStep(int64_t step, double lr, double muon_lr, double weight_decay, float clip_scale) override {
    inner_->OptimizerStep(step, lr, muon_lr, weight_decay, clip_scale);
  }
  int64_t PeakMemoryBytes() const override { return inner_->PeakMemoryBytes(); }
  void CopyToHost(ParamSet set, std::vector<float>* out) override { inner_->CopyToHost(set, out); }
  void CopyFromHost(ParamSet set, const std::vector<float>& in) override { inner_->CopyFromHost(set, in); }
  const std::vector<float>& params() override { return inner_->params(); }

 private:
  std::unique_ptr<TrainModel> inner_;
  int fail_at_;
  bool gpu_;
  int forwards_ = 0;
};

// Runs the small job with forward pass `fail_at` failing; the error Run throws.
std::string RunUntilOutOfMemory(int fail_at, bool gpu, int64_t* step) {
  kernels::SetNumThreads(1);
  moe::v1::JobSpec spec = testing::SmallShakespeareSpec();
  spec.mutable_train()->set_steps(5);
  spec.mutable_train()->set_eval_every(0);
  absl::StatusOr<Dataset> data = LoadDataset(spec.data());
  EXPECT_TRUE(data.ok()) << data.status();
  if (!data.ok()) return "";
  std::unique_ptr<Communicator> comm = CreateSingleProcessCommunicator();
  const ModelConfig cfg = ModelConfig::FromSpec(spec, data->vocab_size);
  auto model = std::make_unique<FailingModel>(std::make_unique<Model>(cfg, comm.get()), fail_at, gpu);
  TrainerOptions opts;
  opts.checkpoint_dir = "";
  absl::StatusOr<std::unique_ptr<Trainer>> trainer =
      Trainer::Create(spec, comm.get(), &*data, opts, std::move(model));
  EXPECT_TRUE(trainer.ok()) << trainer.status();
  if (!trainer.ok()) return "";
  TrainOutcome outcome;
  try {
    (void)(*trainer)->Run(&outcome);
  } catch (const AllocationError& e) {
    *step = e.step();
    return e.what();
  }
  ADD_FAILURE() << "Run did not throw AllocationError";
  return "";
}

TEST(OutOfMemory, GpuAllocationFailureNamesTheGpuAndTheStep) {
  int64_t step = 0;
  const std::string what = RunUntilOutOfMemory(3, /*gpu=*/true, &step);
  EXPECT_EQ(step, 3);
  EXPECT_EQ(what,
            "out of GPU memory: could not allocate 2 GiB on GPU 0 (1 GiB of 80 GiB free) after 79 GiB for the "
            "model, in step 3");
}

TEST(OutOfMemory, HostAllocationFailureInAStepNamesHostMemory) {
  int64_t step = 0;
  const std::string what = RunUntilOutOfMemory(2, /*gpu=*/false, &step);
  EXPECT_EQ(step, 2);
  EXPECT_TRUE(absl::StartsWith(what, "out of host memory: could not allocate the step's host buffers")) << what;
  EXPECT_TRUE(absl::EndsWith(what, ", in step 2")) << what;
}

TEST(OutOfMemory, BeforeTheFirstStepItIsTheModel) {
  const AllocationError e("could not allocate 12 GiB for the model's parameters");
  EXPECT_EQ(e.step(), 0);
  EXPECT_STREQ(e.what(), "out of host memory: could not allocate 12 GiB for the model's parameters, while building "
                         "the model");
}

}  // namespace
}  // namespace moe
