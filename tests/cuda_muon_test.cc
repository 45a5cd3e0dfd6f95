// Muon on the GPU (kernels/cuda/muon.h) against the CPU oracle (kernels/muon.h): Newton-Schulz
// over batches of wide, tall and square matrices, two full updates (momentum and weights) of one
// tensor and of a group of tensors, in fp32 and with bf16 products; then the CUDA model's
// optimizer step against the CPU model's on the same weights and gradients, and a Muon job's
// loss curve on the GPU against the CPU's.
// Skips without a GPU.
#include <cmath>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/muon.h"
#include "tests/support/test_jobs.h"
#include "tests/support/training_runs.h"
#include "worker/data/dataset.h"
#include "worker/model/cpu/model.h"
#include "worker/model/cuda/cuda_model.h"
#include "worker/parallel/comm_single.h"
#include "worker/train/trainer.h"

#ifdef MOE_WITH_CUDA
#include "kernels/cuda/muon.h"
#include "tests/support/cuda_ops.h"
#endif

namespace moe {
namespace {

#ifndef MOE_WITH_CUDA

TEST(CudaMuonTest, NeedsCuda) { GTEST_SKIP() << "built without CUDA: no GPU Muon to test"; }

#else

using testing::Dev;
using testing::RelErr;

struct Shape {
  int batch, rows, cols;
};
const Shape kShapes[] = {{1, 3, 5}, {4, 24, 16}, {3, 32, 32}, {8, 64, 96}, {1, 192, 64}, {2, 1, 40}};

// fp32: the CPU's math in another summation order, through five iterations that amplify the
// smallest singular directions' rounding (up to 3.4445^5); bf16: operands rounded to 8 bits of
// mantissa at every product of the five iterations (3.4e-2 measured on an H200 for the worst
// shape while b A still read A in fp32, which a CPU emulation puts above the present path;
// Newton-Schulz only needs the singular values near 1, not these digits).
double Tolerance(cuda::DType type) { return type == cuda::DType::kBF16 ? 5e-2 : 2e-4; }

class CudaMuonTest : public ::testing::TestWithParam<cuda::DType> {};

TEST_P(CudaMuonTest, NewtonSchulzMatchesCpu) {
  SKIP_WITHOUT_GPU();
  const cuda::DType type = GetParam();
  cuda::Blas blas;
  for (const Shape& s : kShapes) {
    const std::vector<float> u = testing::Randn(static_cast<size_t>(s.batch) * s.rows * s.cols, 3 + s.rows, 0.05f);
    std::vector<float> want = u;
    kernels::NewtonSchulz(want.data(), s.batch, s.rows, s.cols);
    testing::MuonScratch w(testing::MuonScratch::For(s.batch, s.rows, s.cols));
    Dev<float> x(u);
    cuda::NewtonSchulz(&blas, w.ws, type, x.get(), s.batch, s.rows, s.cols, nullptr);
    EXPECT_LT(RelErr(x.Host(), want), Tolerance(type)) << s.batch << "x" << s.rows << "x" << s.cols;
  }
}

TEST_P(CudaMuonTest, TwoUpdatesMatchCpu) {
  SKIP_WITHOUT_GPU();
  const cuda::DType type = GetParam();
  cuda::Blas blas;
  for (const Shape& s : kShapes) {
    const size_t n = static_cast<size_t>(s.batch) * s.rows * s.cols;
    std::vector<float> w = testing::Randn(n, 10 + s.cols, 0.02f), m(n, 0.f);
    testing::MuonScratch ws(testing::MuonScratch::For(s.batch, s.rows, s.cols));
    Dev<float> dw(w), dm(m);
    Dev<cuda::bf16> dw16(n);
    kernels::MuonConfig cfg;
    cfg.lr = 0.02f;
    cfg.weight_decay = 0.1f;
    for (int step = 0; step < 2; ++step) {
      const std::vector<float> g = testing::Randn(n, 100 + step);
      Dev<float> dg(g);
      kernels::MuonUpdate(w.data(), g.data(), m.data(), s.batch, s.rows, s.cols, cfg, 0.5f);
      cuda::MuonUpdate(&blas, ws.ws, type, dw.get(), dw16.get(), dg.get(), dm.get(), s.batch, s.rows, s.cols, cfg.lr,
                       cfg.weight_decay, 0.5f, nullptr);
    }
    const std::string what = std::to_string(s.batch) + "x" + std::to_string(s.rows) + "x" + std::to_string(s.cols);
    EXPECT_LT(RelErr(dm.Host(), m), 1e-6) << what << ": momentum (elementwise, no products)";
    // The update is about lr * 0.2 sqrt(max) * 1 / sqrt(min) per element against weights of 0.02:
    // the weights' error is the update's, scaled down.
    const std::vector<float> got = dw.Host();
    EXPECT_LT(RelErr(got, w), Tolerance(type)) << what << ": weights";
    const std::vector<float> got16 = testing::ToFloat(dw16.Host());
    for (size_t i = 0; i < n; ++i) ASSERT_EQ(got16[i], __bfloat162float(__float2bfloat16(got[i]))) << what;
  }
}

// The optimizer's grouping: tensors of one wide shape (24 x 40, two wide and one tall), each with
// its own weight decay, in one Newton-Schulz run of 6 matrices; each against the CPU oracle.
TEST_P(CudaMuonTest, GroupOfTensorsMatchesCpu) {
  SKIP_WITHOUT_GPU();
  const cuda::DType type = GetParam();
  cuda::Blas blas;
  const Shape shapes[] = {{2, 24, 40}, {3, 40, 24}, {1, 24, 40}};
  const float decays[] = {0.1f, 0.f, 0.1f};
  const float lr = 0.02f;
  testing::MuonScratch ws(testing::MuonScratch::For(6, 24, 40));
  std::vector<std::vector<float>> w, m;
  std::vector<std::unique_ptr<Dev<float>>> dw, dm;
  std::vector<std::unique_ptr<Dev<cuda::bf16>>> dw16;
  for (uint32_t j = 0; j < 3; ++j) {
    const size_t n = static_cast<size_t>(shapes[j].batch) * shapes[j].rows * shapes[j].cols;
    w.push_back(testing::Randn(n, 20 + j, 0.02f));
    m.emplace_back(n, 0.f);
    dw.push_back(std::make_unique<Dev<float>>(w[j]));
    dm.push_back(std::make_unique<Dev<float>>(m[j]));
    dw16.push_back(std::make_unique<Dev<cuda::bf16>>(n));
  }
  for (uint32_t step = 0; step < 2; ++step) {
    std::vector<std::unique_ptr<Dev<float>>> dg;
    std::vector<cuda::MuonTensor> group;
    for (uint32_t j = 0; j < 3; ++j) {
      const Shape& s = shapes[j];
      const std::vector<float> g = testing::Randn(w[j].size(), 100 + 10 * step + j);
      kernels::MuonConfig cfg;
      cfg.lr = lr;
      cfg.weight_decay = decays[j];
      kernels::MuonUpdate(w[j].data(), g.data(), m[j].data(), s.batch, s.rows, s.cols, cfg, 0.5f);
      dg.push_back(std::make_unique<Dev<float>>(g));
      cuda::MuonTensor t;
      t.w.f32 = dw[j]->get();
      t.w.b16 = dw16[j]->get();
      t.grad = dg[j]->get();
      t.momentum.values = dm[j]->get();
      t.batch = s.batch;
      t.rows = s.rows;
      t.cols = s.cols;
      t.weight_decay = decays[j];
      group.push_back(t);
    }
    cuda::MuonUpdateGroup(&blas, ws.ws, type, group.data(), group.size(), lr, 0.5f, nullptr);
    MOE_CUDA_CHECK(cudaDeviceSynchronize());  // before dg is freed
  }
  for (size_t j = 0; j < 3; ++j) {
    const std::string what = "tensor " + std::to_string(j);
    EXPECT_LT(RelErr(dm[j]->Host(), m[j]), 1e-6) << what << ": momentum";
    const std::vector<float> got = dw[j]->Host();
    EXPECT_LT(RelErr(got, w[j]), Tolerance(type)) << what << ": weights";
    const std::vector<float> got16 = testing::ToFloat(dw16[j]->Host());
    for (size_t i = 0; i < got.size(); ++i) ASSERT_EQ(got16[i], __bfloat162float(__float2bfloat16(got[i]))) << what;
  }
}

INSTANTIATE_TEST_SUITE_P(Products, CudaMuonTest, ::testing::Values(cuda::DType::kF32, cuda::DType::kBF16),
                         [](const auto& info) { return info.param == cuda::DType::kBF16 ? "bf16" : "fp32"; });

// The model's step: the CPU and CUDA models from the same weights, gradients and momentum take
// two steps; Muon's tensors and AdamW's agree.
TEST(CudaMuonModelTest, OptimizerStepMatchesCpuModel) {
  SKIP_WITHOUT_GPU();
  for (const bool bf16 : {false, true}) {
    ModelConfig cfg = testing::CaseConfig(testing::ModelCase{"moe", 4, 2, 4, 2, 0.0, false, 0.0f}, 37, 64, 16, 48);
    cfg.muon = true;
    auto comm = CreateSingleProcessCommunicator();
    Model cpu(cfg, comm.get());
    cpu.InitParams(42);
    cpu.grads() = testing::Randn(cpu.layout().total(), 5, 0.05f);
    auto made = MakeCudaModel(cfg, comm.get(), bf16);
    ASSERT_TRUE(made.ok()) << made.status();
    TrainModel& gpu = **made;
    gpu.InitParams(42);
    gpu.CopyFromHost(ParamSet::kGrads, cpu.grads());
    for (int step = 1; step <= 2; ++step) {
      cpu.OptimizerStep(step, 1e-3, 0.02, 0.1, 0.8f);
      gpu.OptimizerStep(step, 1e-3, 0.02, 0.1, 0.8f);
    }
    std::vector<float> gw, gm, cm;
    gpu.CopyToHost(ParamSet::kParams, &gw);
    gpu.CopyToHost(ParamSet::kAdamM, &gm);
    cpu.CopyToHost(ParamSet::kAdamM, &cm);
    for (const ParamInfo& info : cpu.layout().params()) {
      auto slice = [&](const std::vector<float>& v) {
        return std::vector<float>(v.begin() + info.offset, v.begin() + info.offset + info.size);
      };
      EXPECT_LT(RelErr(slice(gm), slice(cm)), 1e-6) << info.name << (bf16 ? " bf16" : " fp32");
      // AdamW tensors see no products; Muon's through Newton-Schulz.
      const double tol = info.muon ? Tolerance(bf16 ? cuda::DType::kBF16 : cuda::DType::kF32) : 1e-6;
      EXPECT_LT(RelErr(slice(gw), slice(cpu.params())), tol) << info.name << (bf16 ? " bf16" : " fp32");
    }
  }
}

TEST(CudaMuonModelTest, MuonJobSameLossCurveAsCpu) {
  SKIP_WITHOUT_GPU();
  moe::v1::JobSpec spec = testing::SmallShakespeareSpec();
  spec.mutable_resources()->set_device(moe::v1::DEVICE_CUDA);
  spec.mutable_train()->set_steps(20);
  spec.mutable_train()->set_log_every(1);
  spec.mutable_train()->set_eval_every(0);
  spec.mutable_train()->set_optimizer(moe::v1::OPTIMIZER_MUON);
  spec.mutable_train()->set_muon_lr(0.02);
  auto data = LoadDataset(spec.data());
  ASSERT_TRUE(data.ok()) << data.status();
  auto comm = CreateSingleProcessCommunicator();
  TrainOutcome outcome;
  std::unique_ptr<Trainer> gpu = testing::NewTrainer(spec, comm.get(), &*data);
  ASSERT_NE(gpu, nullptr);
  ASSERT_TRUE(gpu->Run(&outcome).ok());
  moe::v1::JobSpec cpu_spec = spec;
  cpu_spec.mutable_resources()->set_device(moe::v1::DEVICE_CPU);
  std::unique_ptr<Trainer> cpu = testing::NewTrainer(cpu_spec, comm.get(), &*data);
  ASSERT_NE(cpu, nullptr);
  ASSERT_TRUE(cpu->Run(&outcome).ok());
  const std::vector<double> a = testing::Losses(*cpu), g = testing::Losses(*gpu);
  ASSERT_EQ(a.size(), 20u);
  ASSERT_EQ(g.size(), 20u);
  // As CudaTrainerTest's AdamW curve (1e-3): fp32 both, only the summation orders differ.
  for (size_t i = 0; i < a.size(); ++i) EXPECT_NEAR(g[i], a[i], 1e-3 * a[i]) << "step " << i + 1;
}

#endif  // MOE_WITH_CUDA

}  // namespace
}  // namespace moe
