// The expert options on the GPU against the CPU (kernels/router.h, routing_plan.h, experts.h):
// sigmoid scores, temperature and the balancing bias in the choice (forward, statistics,
// backward with the aux and z terms), and expert dropout in the routing plan and the count
// statistics; and whole models (fp32 and bf16) with the router options, relu2 / gelu experts or
// shared experts on the GPU against the CPU model (loss, counts, gradients, the biases). Skips without a GPU (the device script runs it).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "worker/model/moe_bookkeeping.h"

#ifdef MOE_WITH_CUDA
#include "kernels/cuda/moe.h"
#include "kernels/cuda/router.h"
#include "kernels/cuda/routing_plan.h"
#include "kernels/router.h"
#include "kernels/routing_plan.h"
#include "tests/support/bf16_parity.h"
#include "tests/support/cuda_ops.h"
#include "tests/support/test_jobs.h"
#include "worker/model/cpu/model.h"
#include "worker/model/cuda/cuda_model.h"
#include "worker/parallel/comm_single.h"
#endif

namespace moe {
namespace {

#ifndef MOE_WITH_CUDA

TEST(CudaExpertRecipesTest, NeedsCuda) { GTEST_SKIP() << "built without CUDA"; }

#else

using testing::Dev;
using testing::kFp32Tol;
using testing::Randn;
using testing::RelErr;

struct ScoringCase {
  const char* name;
  bool sigmoid;
  float tau;
  bool bias;
  int e, k;
};

class CudaRouterScoringTest : public ::testing::TestWithParam<ScoringCase> {};

TEST_P(CudaRouterScoringTest, ForwardStatsAndBackwardMatchCpu) {
  SKIP_WITHOUT_GPU();
  const ScoringCase& c = GetParam();
  const int n = 77, E = c.e, k = c.k;
  const std::vector<float> logits = Randn(static_cast<size_t>(n) * E, 40, 2.0f);
  const std::vector<float> bias = Randn(E, 41, 0.2f);
  Dev<float> bias_d(bias);
  kernels::RouterScoring cpu, gpu;
  cpu.sigmoid = gpu.sigmoid = c.sigmoid;
  cpu.temperature = gpu.temperature = c.tau;
  cpu.bias = c.bias ? bias.data() : nullptr;
  gpu.bias = c.bias ? bias_d.get() : nullptr;

  std::vector<float> probs(n * E), lse(n), w(n * k);
  std::vector<int32_t> idx(n * k);
  kernels::RouterForward(probs.data(), lse.data(), idx.data(), w.data(), logits.data(), n, E, k, cpu);
  Dev<float> logits_d(logits), probs_d(n * E), lse_d(n), w_d(n * k);
  Dev<int32_t> idx_d(n * k);
  cuda::RouterForward(probs_d.get(), lse_d.get(), idx_d.get(), w_d.get(), logits_d.get(), n, E, k, gpu, nullptr);
  EXPECT_LT(RelErr(probs_d.Host(), probs), kFp32Tol);
  EXPECT_LT(RelErr(lse_d.Host(), lse), kFp32Tol);
  EXPECT_EQ(idx_d.Host(), idx);
  EXPECT_LT(RelErr(w_d.Host(), w), kFp32Tol);

  std::vector<double> prob_sum(E, 0.0);
  double z = 0, ent = 0;
  kernels::RouterStats(prob_sum.data(), &z, &ent, probs.data(), lse.data(), n, E, c.sigmoid);
  Dev<double> stats_d(E + 2, 0.0);
  cuda::RouterStats(stats_d.get(), stats_d.get() + E, stats_d.get() + E + 1, probs_d.get(), lse_d.get(), n, E,
                    c.sigmoid, nullptr);
  const std::vector<double> st = stats_d.Host();
  for (int x = 0; x < E; ++x) EXPECT_NEAR(st[x], prob_sum[x], 1e-5 * n);
  EXPECT_NEAR(st[E], z, 1e-5 * std::abs(z) + 1e-9);
  EXPECT_NEAR(st[E + 1], ent, 1e-5 * std::abs(ent) + 1e-9);

  const std::vector<float> dweights = Randn(n * k, 42), aux = Randn(E, 43, 0.3f);
  std::vector<float> dlogits(n * E, 0.f);
  kernels::RouterBackward(dlogits.data(), dweights.data(), probs.data(), lse.data(), idx.data(), aux.data(), 0.02f,
                          n, E, k, cpu, logits.data());
  Dev<float> dweights_d(dweights), aux_d(aux), dlogits_d(n * E);
  cuda::RouterBackward(dlogits_d.get(), dweights_d.get(), probs_d.get(), lse_d.get(), idx_d.get(), aux_d.get(),
                       0.02f, n, E, k, gpu, logits_d.get(), nullptr);
  EXPECT_LT(RelErr(dlogits_d.Host(), dlogits), kFp32Tol);
}

INSTANTIATE_TEST_SUITE_P(Scorings, CudaRouterScoringTest,
                         ::testing::Values(ScoringCase{"softmax_bias", false, 1.0f, true, 8, 2},
                                           ScoringCase{"softmax_tau05", false, 0.5f, false, 7, 3},
                                           ScoringCase{"sigmoid", true, 1.0f, false, 16, 4},
                                           ScoringCase{"sigmoid_tau2_bias_e64", true, 2.0f, true, 64, 6},
                                           ScoringCase{"softmax_bias_e200", false, 1.0f, true, 200, 8},
                                           ScoringCase{"sigmoid_tau05_e512", true, 0.5f, false, 512, 4}),
                         [](const ::testing::TestParamInfo<ScoringCase>& info) { return std::string(info.param.name); });

TEST(CudaExpertDropoutTest, PlanAndCountStatsMatchCpu) {
  SKIP_WITHOUT_GPU();
  for (const double capacity : {0.0, 1.0}) {
    const int n = 101, E = 12, k = 2;
    const std::vector<float> logits = Randn(static_cast<size_t>(n) * E, 44, 1.5f);
    std::vector<float> probs(n * E), lse(n), w(n * k);
    std::vector<int32_t> idx(n * k);
    kernels::RouterForward(probs.data(), lse.data(), idx.data(), w.data(), logits.data(), n, E, k);
    const std::vector<uint8_t> off = ExpertsSwitchedOff(7, 0.3f, E);
    ASSERT_NE(std::count(off.begin(), off.end(), 1), 0) << "no expert off: pick another seed";
    Dev<uint8_t> off_d(off);
    const int64_t cap = ExpertCapacity(capacity, n, k, E);
    const kernels::RoutingPlan plan = kernels::BuildRoutingPlan(idx.data(), n, k, E, cap, off.data());
    Dev<int32_t> idx_d(idx), counts_d(E), routed_d(E), offsets_d(E + 1), a2s_d(n * k), s2a_d(n * k, -7);
    cuda::BuildRoutingPlan(counts_d.get(), routed_d.get(), offsets_d.get(), a2s_d.get(), s2a_d.get(), idx_d.get(), n,
                           k, E, cap, off_d.get(), nullptr);
    EXPECT_EQ(counts_d.Host(), plan.counts) << "capacity " << capacity;
    EXPECT_EQ(offsets_d.Host(), plan.offsets);
    EXPECT_EQ(a2s_d.Host(), plan.assignment_to_slot);
    std::vector<int32_t> s2a = s2a_d.Host();
    s2a.resize(plan.kept());
    EXPECT_EQ(s2a, plan.slot_to_assignment);

    const RouterStatsSlots slot{E};
    Dev<double> stats_d(slot.size(), 0.0);
    cuda::RouterCountStats(stats_d.get(), routed_d.get(), counts_d.get(), E, off_d.get(), nullptr);
    const std::vector<double> st = stats_d.Host();
    for (int x = 0; x < E; ++x) EXPECT_EQ(st[slot.routed() + x], static_cast<double>(plan.routed[x]));
    EXPECT_EQ(st[slot.dropped()], static_cast<double>(plan.dropped));
    EXPECT_EQ(st[slot.expert_dropped()], static_cast<double>(plan.expert_dropped));
  }
}

struct ModelRecipe {
  const char* name;
  bool bf16;
  void (*options)(ModelConfig*);
};

class CudaRecipeModelTest : public ::testing::TestWithParam<ModelRecipe> {};

TEST_P(CudaRecipeModelTest, MatchesTheCpuModel) {
  SKIP_WITHOUT_GPU();
  const ModelRecipe& c = GetParam();
  ModelConfig cfg = testing::CaseConfig({"moe", 8, 2, 4, 2, 0.0, true, 0.0f}, /*vocab=*/37, /*d=*/64,
                                        /*seq_len=*/33, /*ffn=*/48);
  c.options(&cfg);
  auto comm = CreateSingleProcessCommunicator();
  Model cpu(cfg, comm.get());
  cpu.InitParams(42);
  std::mt19937 rng(7);
  std::normal_distribution<float> noise(0.f, 0.1f);
  for (float& w : cpu.params()) w += noise(rng);
  // Biases that decide choices outright (expert 0 in, expert 7 out), without near-ties.
  std::vector<float> bias(static_cast<size_t>(cfg.layers) * cfg.experts, 0.f);
  for (int l = 0; l < cfg.layers; ++l) {
    bias[static_cast<size_t>(l) * cfg.experts] = 2.f;
    bias[static_cast<size_t>(l + 1) * cfg.experts - 1] = -2.f;
  }
  cpu.SetRouterBiases(bias);
  auto made = MakeCudaModel(cfg, comm.get(), c.bf16);
  ASSERT_TRUE(made.ok()) << made.status();
  TrainModel& gpu = **made;
  gpu.InitParams(42);
  gpu.CopyFromHost(ParamSet::kParams, cpu.params());
  gpu.SetRouterBiases(bias);
  EXPECT_EQ(gpu.RouterBiases(), cpu.RouterBiases());

  const int b = 3, n = b * cfg.seq_len;
  std::vector<int32_t> idx(n), tgt(n);
  std::uniform_int_distribution<int> tok(0, cfg.vocab - 1);
  for (int i = 0; i < n; ++i) {
    idx[i] = tok(rng);
    tgt[i] = tok(rng);
  }
  BatchContext ctx;
  ctx.train = true;
  ctx.dropout_seed = 99;
  ctx.global_tokens = n;
  ctx.loss_scale = 1.0f / n;
  const ForwardResult rc = cpu.Forward(idx.data(), tgt.data(), b, ctx);
  const ForwardResult rg = gpu.Forward(idx.data(), tgt.data(), b, ctx);
  const double tol = c.bf16 ? 1e-2 : 1e-4;
  const double loss_c = rc.ce_sum / n + rc.aux_loss + rc.z_loss;
  const double loss_g = rg.ce_sum / n + rg.aux_loss + rg.z_loss;
  EXPECT_LT(std::abs(loss_g - loss_c) / loss_c, tol) << "loss cpu " << loss_c << " gpu " << loss_g;
  ASSERT_EQ(rg.layers.size(), rc.layers.size());
  if (!c.bf16 && cfg.is_moe()) {
    EXPECT_LT(std::abs(rg.aux_loss - rc.aux_loss), 1e-4 * rc.aux_loss);
    for (size_t l = 0; l < rc.layers.size(); ++l) {
      EXPECT_EQ(rg.layers[l].routed, rc.layers[l].routed) << "layer " << l;
      EXPECT_EQ(rg.layers[l].dropped, rc.layers[l].dropped) << "layer " << l;
      EXPECT_EQ(rg.layers[l].expert_dropped, rc.layers[l].expert_dropped) << "layer " << l;
    }
  }
  if (cfg.expert_dropout > 0) {
    int64_t expert_dropped = 0;
    for (const auto& l : rc.layers) expert_dropped += l.expert_dropped;
    EXPECT_GT(expert_dropped, 0) << "expert dropout switched nothing off: pick another seed";
  }

  cpu.ZeroGrads();
  gpu.ZeroGrads();
  cpu.Backward();
  gpu.Backward();
  std::vector<float> gg;
  gpu.CopyToHost(ParamSet::kGrads, &gg);
  // bf16: testing::Bf16GradBound (tests/support/bf16_parity.h), as cuda_model_test.
  const std::vector<int64_t> moves = testing::RoutingMoves(rc, rg);
  for (const ParamInfo& info : cpu.layout().params()) {
    const std::vector<float> a(gg.begin() + info.offset, gg.begin() + info.offset + info.size);
    const std::vector<float> w(cpu.grads().begin() + info.offset, cpu.grads().begin() + info.offset + info.size);
    EXPECT_LT(RelErr(a, w), c.bf16 ? testing::Bf16GradBound(info.name, moves) : 1e-3) << info.name;
  }
  for (size_t l = 0; c.bf16 && l < moves.size(); ++l) {
    EXPECT_LE(moves[l], testing::AllowedMoves(rc.layers[l])) << "layer " << l;
  }
  // Evaluation switches expert dropout off.
  if (cfg.expert_dropout > 0) {
    ctx.train = false;
    EXPECT_EQ(gpu.Forward(idx.data(), tgt.data(), b, ctx).layers[0].expert_dropped, 0);
  }
}

void RouterOptions(ModelConfig* c) {
  c->router_sigmoid = true;
  c->router_temperature = 1.5f;
  c->bias_update_rate = 0.01f;
  c->expert_dropout = 0.25f;
}
void Relu2(ModelConfig* c) { c->activation = ModelConfig::Activation::kRelu2; }
void GeluSoftmaxTau(ModelConfig* c) {
  c->activation = ModelConfig::Activation::kGelu;
  c->router_temperature = 0.7f;
}

void SharedSwiglu(ModelConfig* c) {
  c->shared_experts = 2;
  c->shared_ffn = 40;
}
void SharedRelu2Bias(ModelConfig* c) {
  c->activation = ModelConfig::Activation::kRelu2;
  c->shared_experts = 1;
  c->shared_ffn = 56;
  c->bias_update_rate = 0.01f;
}
void DenseGeluShared(ModelConfig* c) {
  c->experts = 1;
  c->top_k = 1;
  c->activation = ModelConfig::Activation::kGelu;
  c->shared_experts = 1;
  c->shared_ffn = 24;
}

// model.norm_eps far from the default, on every norm (QK-norm's too).
void QkNormEps(ModelConfig* c) {
  c->qk_norm = true;
  c->norm_eps = 0.05f;
}
INSTANTIATE_TEST_SUITE_P(Recipes, CudaRecipeModelTest,
                         ::testing::Values(ModelRecipe{"router_options_fp32", false, RouterOptions},
                                           ModelRecipe{"router_options_bf16", true, RouterOptions},
                                           ModelRecipe{"relu2_fp32", false, Relu2},
                                           ModelRecipe{"relu2_bf16", true, Relu2},
                                           ModelRecipe{"gelu_tau_fp32", false, GeluSoftmaxTau},
                                           ModelRecipe{"gelu_tau_bf16", true, GeluSoftmaxTau},
                                           ModelRecipe{"shared_swiglu_fp32", false, SharedSwiglu},
                                           ModelRecipe{"shared_swiglu_bf16", true, SharedSwiglu},
                                           ModelRecipe{"shared_relu2_bias_fp32", false, SharedRelu2Bias},
                                           ModelRecipe{"shared_relu2_bias_bf16", true, SharedRelu2Bias},
                                           ModelRecipe{"dense_gelu_shared_fp32", false, DenseGeluShared},
                                           ModelRecipe{"dense_gelu_shared_bf16", true, DenseGeluShared},
                                           ModelRecipe{"qk_norm_eps_fp32", false, QkNormEps},
                                           ModelRecipe{"qk_norm_eps_bf16", true, QkNormEps}),
                         [](const ::testing::TestParamInfo<ModelRecipe>& info) { return std::string(info.param.name); });

#endif  // MOE_WITH_CUDA

}  // namespace
}  // namespace moe
