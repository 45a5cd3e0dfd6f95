// The GPU sampler (model/cuda/cuda_decoder.h): at every position its logits are those of the CPU
// model's forward pass over the whole context (fp32, within 1e-4 of the largest logit), for MoE
// with GQA and MQA, a dense model, an untied head and the recipe options it runs; and a
// checkpoint's greedy tokens are the same on the GPU with the cache as on the CPU without it.
// Skips without a GPU (the device script runs it).
#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/threads.h"
#include "tests/support/paths.h"
#include "tests/support/test_jobs.h"
#include "tests/support/training_runs.h"
#include "worker/data/dataset.h"
#include "worker/model/cpu/model.h"
#include "worker/model/cuda/cuda_decoder.h"
#include "worker/parallel/comm_single.h"
#include "worker/sample/generate.h"

#ifdef MOE_WITH_CUDA
#include "kernels/cuda/common.h"
#endif

namespace moe {
namespace {

#ifndef MOE_WITH_CUDA

TEST(CudaDecoderTest, NeedsCuda) { GTEST_SKIP() << "built without CUDA"; }

#else

struct DecoderCase {
  const char* name;
  testing::ModelCase shape;
  void (*options)(ModelConfig*);
};

void NoOptions(ModelConfig*) {}
// The expert options the decoder runs: activations, shared experts, the router's scoring and bias.
void Relu2Shared(ModelConfig* c) {
  c->activation = ModelConfig::Activation::kRelu2;
  c->shared_experts = 2;
  c->shared_ffn = 32;
}
void GeluSigmoidBias(ModelConfig* c) {
  c->activation = ModelConfig::Activation::kGelu;
  c->router_sigmoid = true;
  c->router_temperature = 0.7f;
  c->bias_update_rate = 0.001f;
}
void QkNormAndGate(ModelConfig* cfg) {
  cfg->qk_norm = true;
  cfg->attn_gate = true;
}

class CudaDecoderMatchesForward : public ::testing::TestWithParam<DecoderCase> {};

TEST_P(CudaDecoderMatchesForward, AtEveryPosition) {
  if (!cuda::HaveGpu()) GTEST_SKIP() << "no CUDA GPU on this machine";
  const DecoderCase& c = GetParam();
  const int V = 53, D = 64, T = 20, F = 48;
  ModelConfig cfg = testing::CaseConfig(c.shape, V, D, T, F);
  cfg.dropout = 0;
  c.options(&cfg);
  auto comm = CreateSingleProcessCommunicator();
  Model model(cfg, comm.get());
  model.InitParams(11);
  if (cfg.balances_by_bias()) {  // biases that change choices: the decoder must route with them
    std::vector<float> bias(static_cast<size_t>(cfg.layers) * cfg.experts);
    for (size_t i = 0; i < bias.size(); ++i) bias[i] = 0.02f * static_cast<float>(i % 5);
    model.SetRouterBiases(bias);
  }
  std::vector<int32_t> x(T), y(T, 0);
  for (int t = 0; t < T; ++t) x[t] = (t * 7 + 5) % V;
  BatchContext bc;
  bc.train = false;
  bc.global_tokens = T;
  bc.loss_scale = 1.0f / T;
  model.Forward(x.data(), y.data(), 1, bc);
  const std::vector<float> full = model.logits();
  absl::StatusOr<std::unique_ptr<TokenDecoder>> decoder =
      MakeCudaDecoder(cfg, model.layout(), model.params(), model.RouterBiases());
  ASSERT_TRUE(decoder.ok()) << decoder.status();
  for (int t = 0; t < T; ++t) {
    const std::vector<float>& row = (*decoder)->Step(x[t]);
    double err = 0, ref = 0;
    for (int v = 0; v < V; ++v) {
      const float want = full[static_cast<size_t>(t) * V + v];
      err = std::max(err, static_cast<double>(std::fabs(row[v] - want)));
      ref = std::max(ref, static_cast<double>(std::fabs(want)));
    }
    EXPECT_LT(err, 1e-4 * std::max(1.0, ref)) << c.name << " position " << t;
  }
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, CudaDecoderMatchesForward,
    ::testing::Values(DecoderCase{"moe_gqa", {"moe_gqa", 4, 2, 4, 2, 0, true, 0}, NoOptions},
                      DecoderCase{"moe_mqa_untied", {"moe_mqa", 8, 3, 4, 1, 0, false, 0}, NoOptions},
                      DecoderCase{"dense", {"dense", 1, 1, 2, 2, 0, true, 0}, NoOptions},
                      DecoderCase{"moe_relu2_shared", {"moe", 4, 2, 4, 2, 0, true, 0}, Relu2Shared},
                      DecoderCase{"moe_gelu_sigmoid_bias", {"moe", 4, 2, 4, 4, 0, false, 0}, GeluSigmoidBias},
                      DecoderCase{"qk_norm_gate_gqa", {"qk", 4, 2, 4, 2, 0, true, 0}, QkNormAndGate}),
    [](const ::testing::TestParamInfo<DecoderCase>& info) { return std::string(info.param.name); });

TEST(CudaSampling, GreedyTokensMatchTheCpuWithoutTheCache) {
  if (!cuda::HaveGpu()) GTEST_SKIP() << "no CUDA GPU on this machine";
  kernels::SetNumThreads(1);
  moe::v1::JobSpec spec = testing::SmallShakespeareSpec();
  spec.set_name("cuda-sample");
  spec.mutable_train()->set_steps(20);
  spec.mutable_train()->set_eval_every(20);
  spec.mutable_train()->set_eval_batches(1);
  Dataset data = *LoadDataset(spec.data());
  const std::string dir = testing::MakeTempDir("cuda-sample-");
  TrainerOptions train;
  train.checkpoint_dir = dir;
  ASSERT_NE(testing::TrainOnOneRank(spec, &data, train).trainer, nullptr);
  SampleOptions opts;
  opts.checkpoint = dir;
  opts.prompt = "KING: ";
  opts.tokens = 60;
  opts.top_k = 1;  // greedy
  opts.device = "cuda";
  std::string used;
  opts.device_used = &used;
  absl::StatusOr<std::string> gpu = GenerateText(opts);
  ASSERT_TRUE(gpu.ok()) << gpu.status();
  EXPECT_EQ(used, "cuda");
  opts.kv_cache = false;
  opts.device = "cpu";
  absl::StatusOr<std::string> cpu = GenerateText(opts);
  ASSERT_TRUE(cpu.ok()) << cpu.status();
  EXPECT_EQ(*gpu, *cpu);
}

#endif

}  // namespace
}  // namespace moe
