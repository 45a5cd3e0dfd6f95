// train.recompute: full on one GPU (MODEL.md "Memory"; issue 17): the CUDA model with recompute
// full against itself with recompute none on the same weights and batches, two micro-steps
// (gradients accumulate) with every option that draws or routes (dropout, attention dropout,
// expert dropout, capacity drops, shared experts, a non-zero balancing bias) and a dense model:
// the same losses and router counts, and every gradient within 1e-5 (fp32) or 2e-2 (bf16); the
// model's own peak of device memory falls to a fraction. Skips without a GPU.
#include <cmath>
#include <cstdio>
#include <memory>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "gtest/gtest.h"
#include "tests/support/test_jobs.h"
#include "worker/model/cuda/cuda_model.h"
#include "worker/parallel/comm_single.h"

#ifdef MOE_WITH_CUDA
#include "kernels/cuda/common.h"
#endif

namespace moe {
namespace {

#ifndef MOE_WITH_CUDA

TEST(CudaRecomputeTest, NeedsCuda) { GTEST_SKIP() << "built without CUDA: no GPU model to test"; }

#else

// ||a - b|| / ||b|| over n values (||a - b|| when b is zero).
double RelErr(const float* a, const float* b, int64_t n) {
  double num = 0, den = 0;
  for (int64_t i = 0; i < n; ++i) {
    if (std::isnan(a[i])) return INFINITY;
    num += (double{a[i]} - b[i]) * (double{a[i]} - b[i]);
    den += double{b[i]} * b[i];
  }
  return den == 0 ? std::sqrt(num) : std::sqrt(num / den);
}

// Every option that draws masks or routes, on three blocks; dense when experts is 1.
ModelConfig OptionsConfig(int experts, int layers, int d, int seq_len, int ffn) {
  const testing::ModelCase c{"options", experts, experts > 1 ? 2 : 1, 4, 2, experts > 1 ? 1.25 : 0.0, false, 0.1f};
  ModelConfig cfg = testing::CaseConfig(c, /*vocab=*/37, d, seq_len, ffn);
  cfg.layers = layers;
  cfg.qk_norm = true;
  cfg.attn_gate = true;
  cfg.attn_dropout = 0.1f;
  cfg.shared_experts = 1;
  cfg.shared_ffn = 32;
  if (experts > 1) {
    cfg.expert_dropout = 0.3f;
    cfg.bias_update_rate = 0.01f;
  }
  return cfg;
}

struct GpuRun {
  std::vector<ForwardResult> results;  // one per micro-step
  std::vector<float> grads;
  int64_t peak_bytes = 0;  // TrainModel::PeakMemoryBytes: the model's device allocations
};

// Two micro-steps of b sequences on the GPU model of cfg (recompute as asked), from weights
// (the layout's total) and, when the job balances by bias, a fixed non-zero bias.
GpuRun TrainTwoMicroSteps(ModelConfig cfg, bool recompute, bool bf16, const std::vector<float>& weights, int b) {
  cfg.recompute = recompute;
  auto comm = CreateSingleProcessCommunicator();
  GpuRun run;
  auto made = MakeCudaModel(cfg, comm.get(), bf16);
  EXPECT_TRUE(made.ok()) << made.status();
  if (!made.ok()) return run;
  TrainModel& model = **made;
  model.InitParams(42);
  if (!weights.empty()) model.CopyFromHost(ParamSet::kParams, weights);
  if (cfg.balances_by_bias()) {
    std::vector<float> bias(static_cast<size_t>(cfg.layers) * cfg.experts);
    for (size_t i = 0; i < bias.size(); ++i) bias[i] = 0.01f * static_cast<float>(i % 5) - 0.02f;
    model.SetRouterBiases(bias);
  }
  const int n = b * cfg.seq_len;
  std::mt19937 rng(3);
  std::uniform_int_distribution<int> tok(0, cfg.vocab - 1);
  std::vector<int32_t> idx(2 * n), tgt(2 * n);
  for (int i = 0; i < 2 * n; ++i) {
    idx[i] = tok(rng);
    tgt[i] = tok(rng);
  }
  model.ZeroGrads();
  for (int micro = 0; micro < 2; ++micro) {
    BatchContext ctx;
    ctx.train = true;
    ctx.dropout_seed = 77 + micro;
    ctx.first_token = 0;
    ctx.global_tokens = n;
    ctx.loss_scale = 1.0f / static_cast<float>(2 * n);
    ctx.last_micro_step = micro == 1;
    run.results.push_back(model.Forward(idx.data() + micro * n, tgt.data() + micro * n, b, ctx));
    model.Backward();
  }
  model.ReduceGrads();
  model.CopyToHost(ParamSet::kGrads, &run.grads);
  run.peak_bytes = model.PeakMemoryBytes();
  return run;
}

// The layout's initial weights plus noise, so that every layer matters to the loss.
std::vector<float> NoisyWeights(const ModelConfig& cfg) {
  ParamLayout layout(cfg, 0, 1);
  std::vector<float> w(layout.total(), 0.f);
  layout.Initialize(w.data(), 42);
  std::mt19937 rng(7);
  std::normal_distribution<float> noise(0.f, 0.1f);
  for (float& x : w) x += noise(rng);
  return w;
}

// (experts, bf16)
class CudaRecomputeTest : public ::testing::TestWithParam<std::tuple<int, bool>> {};

TEST_P(CudaRecomputeTest, FullMatchesNone) {
  if (!cuda::HaveGpu()) GTEST_SKIP() << "no CUDA GPU on this machine";
  const auto [experts, bf16] = GetParam();
  const ModelConfig cfg = OptionsConfig(experts, /*layers=*/3, /*d=*/64, /*seq_len=*/33, /*ffn=*/48);
  const std::vector<float> weights = NoisyWeights(cfg);
  const GpuRun none = TrainTwoMicroSteps(cfg, /*recompute=*/false, bf16, weights, /*b=*/3);
  const GpuRun full = TrainTwoMicroSteps(cfg, /*recompute=*/true, bf16, weights, /*b=*/3);
  ASSERT_EQ(none.results.size(), 2u);
  ASSERT_EQ(full.results.size(), 2u);
  // The forward passes are the same computation in both modes: the losses agree to the
  // rounding of the statistics' sums.
  const double ltol = bf16 ? 1e-3 : 1e-6;
  int64_t dropped = 0, switched_off = 0;
  for (size_t m = 0; m < 2; ++m) {
    const ForwardResult &x = none.results[m], &y = full.results[m];
    EXPECT_LT(std::abs(y.ce_sum - x.ce_sum), ltol * std::abs(x.ce_sum)) << "micro-step " << m;
    EXPECT_LT(std::abs(y.aux_loss - x.aux_loss), ltol * std::abs(x.aux_loss) + 1e-12) << "micro-step " << m;
    EXPECT_LT(std::abs(y.z_loss - x.z_loss), ltol * std::abs(x.z_loss) + 1e-12) << "micro-step " << m;
    ASSERT_EQ(y.layers.size(), x.layers.size());
    for (size_t l = 0; l < x.layers.size(); ++l) {
      EXPECT_EQ(y.layers[l].routed, x.layers[l].routed) << "micro-step " << m << " layer " << l;
      EXPECT_EQ(y.layers[l].dropped, x.layers[l].dropped) << "micro-step " << m << " layer " << l;
      EXPECT_EQ(y.layers[l].expert_dropped, x.layers[l].expert_dropped) << "micro-step " << m << " layer " << l;
      dropped += x.layers[l].dropped;
      switched_off += x.layers[l].expert_dropped;
    }
  }
  if (experts > 1) {
    EXPECT_GT(dropped, 0) << "the capacity rule dropped nothing";
    EXPECT_GT(switched_off, 0) << "expert dropout switched no expert off";
  }
  // Every gradient: the rerun recomputes the activations the backward reads; only the order of
  // atomic sums may differ between two runs.
  ParamLayout layout(cfg, 0, 1);
  ASSERT_EQ(none.grads.size(), static_cast<size_t>(layout.total()));
  ASSERT_EQ(full.grads.size(), none.grads.size());
  const double gtol = bf16 ? 2e-2 : 1e-5;
  for (const ParamInfo& info : layout.params()) {
    const double err = RelErr(full.grads.data() + info.offset, none.grads.data() + info.offset, info.size);
    EXPECT_LT(err, gtol) << info.name;
  }
  std::printf("[ experts=%d bf16=%d ] ce %.8f vs %.8f, peak %.2f MiB vs %.2f MiB\n", experts, bf16 ? 1 : 0,
              full.results[0].ce_sum, none.results[0].ce_sum, static_cast<double>(full.peak_bytes) / (1 << 20),
              static_cast<double>(none.peak_bytes) / (1 << 20));
}

INSTANTIATE_TEST_SUITE_P(Models, CudaRecomputeTest,
                         ::testing::Combine(::testing::Values(4, 1), ::testing::Values(false, true)));

// Six blocks whose activations dwarf the weights: the model's peak of device memory with
// recompute full (each block's input, one block's other activations) is well under none's.
class CudaRecomputeMemoryTest : public ::testing::TestWithParam<bool> {};

TEST_P(CudaRecomputeMemoryTest, PeakFalls) {
  if (!cuda::HaveGpu()) GTEST_SKIP() << "no CUDA GPU on this machine";
  const bool bf16 = GetParam();
  ModelConfig cfg = OptionsConfig(/*experts=*/8, /*layers=*/6, /*d=*/64, /*seq_len=*/128, /*ffn=*/128);
  cfg.capacity_factor = 0;
  cfg.expert_dropout = 0;
  const GpuRun none = TrainTwoMicroSteps(cfg, /*recompute=*/false, bf16, {}, /*b=*/16);
  const GpuRun full = TrainTwoMicroSteps(cfg, /*recompute=*/true, bf16, {}, /*b=*/16);
  ASSERT_GT(none.peak_bytes, 0);
  ASSERT_GT(full.peak_bytes, 0);
  std::printf("[ bf16=%d ] peak device memory: none %.1f MiB, full %.1f MiB\n", bf16 ? 1 : 0,
              static_cast<double>(none.peak_bytes) / (1 << 20), static_cast<double>(full.peak_bytes) / (1 << 20));
  EXPECT_LT(static_cast<double>(full.peak_bytes), 0.7 * static_cast<double>(none.peak_bytes));
  // And the same gradients at this size too.
  const double gtol = bf16 ? 2e-2 : 1e-5;
  ASSERT_EQ(full.grads.size(), none.grads.size());
  EXPECT_LT(RelErr(full.grads.data(), none.grads.data(), static_cast<int64_t>(none.grads.size())), gtol);
}

INSTANTIATE_TEST_SUITE_P(Precisions, CudaRecomputeMemoryTest, ::testing::Values(false, true));

#endif  // MOE_WITH_CUDA

}  // namespace
}  // namespace moe
