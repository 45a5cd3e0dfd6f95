// train.recompute: full on the CPU backend, the oracle (MODEL.md "Memory"; issue 17): each block
// runs again inside the backward from its saved input, with the same dropout masks,
// attention-dropout masks, expert dropout, routing and capacity drops, so the loss, the
// gradients and the trained weights are bit for bit those of recompute: none, with every option
// that draws or routes switched on; and the statistics of the rerun are not counted again (the
// router counts, drop rates, aux losses and loss-free balancing's biases equal none's). The
// activation memory it saves is checked against the process's peak in
// memory_estimate_cpu_test.cc.
#include <cstdint>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "common/model_stats.h"
#include "gtest/gtest.h"
#include "kernels/threads.h"
#include "tests/support/test_jobs.h"
#include "tests/support/training_runs.h"
#include "worker/data/dataset.h"
#include "worker/model/cpu/model.h"
#include "worker/parallel/comm_single.h"
#include "worker/train/trainer.h"

namespace moe {
namespace {

// Every option that draws masks or routes: dropout, attention dropout, expert dropout, capacity
// drops, shared experts, loss-free balancing; three blocks, two micro-steps per step.
moe::v1::JobSpec OptionsSpec(moe::v1::Recompute recompute) {
  moe::v1::JobSpec spec = testing::SmallShakespeareSpec();
  spec.set_name("recompute");
  auto* m = spec.mutable_model();
  m->set_n_layers(3);
  m->set_dropout(0.1);
  m->mutable_attention()->set_dropout(0.1);
  auto* e = m->mutable_moe();
  e->set_capacity_factor(1.0);
  e->set_expert_dropout(0.25);
  e->set_shared_experts(1);
  e->set_shared_expert_hidden(48);
  e->set_bias_update_rate(0.02);
  auto* t = spec.mutable_train();
  t->set_steps(8);
  t->set_grad_accum(2);
  t->set_log_every(1);
  t->set_eval_every(0);
  t->set_recompute(recompute);
  return spec;
}

bool SameBits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

TEST(Recompute, FullTrainsBitForBitLikeNone) {
  kernels::SetNumThreads(1);
  auto data = LoadDataset(OptionsSpec(moe::v1::RECOMPUTE_NONE).data());
  ASSERT_TRUE(data.ok()) << data.status();
  testing::OneRankRun none = testing::TrainOnOneRank(OptionsSpec(moe::v1::RECOMPUTE_NONE), &*data);
  testing::OneRankRun full = testing::TrainOnOneRank(OptionsSpec(moe::v1::RECOMPUTE_FULL), &*data);
  ASSERT_NE(none.trainer, nullptr);
  ASSERT_NE(full.trainer, nullptr);
  ASSERT_TRUE(full.trainer->model().config().recompute);
  ASSERT_FALSE(none.trainer->model().config().recompute);

  const auto& a = none.trainer->history();
  const auto& b = full.trainer->history();
  ASSERT_EQ(a.size(), 8u);
  ASSERT_EQ(b.size(), a.size());
  double dropped = 0, switched_off = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    SCOPED_TRACE("step " + std::to_string(i + 1));
    EXPECT_EQ(b[i].loss(), a[i].loss());
    EXPECT_EQ(b[i].aux_loss(), a[i].aux_loss());
    EXPECT_EQ(b[i].z_loss(), a[i].z_loss());
    EXPECT_EQ(b[i].grad_norm(), a[i].grad_norm());
    // The rerun counts nothing: the same router counts, drops and bias spreads as none.
    ASSERT_EQ(b[i].layers_size(), 3);
    ASSERT_EQ(a[i].layers_size(), 3);
    for (int l = 0; l < 3; ++l) {
      EXPECT_EQ(b[i].layers(l).SerializeAsString(), a[i].layers(l).SerializeAsString())
          << "layer " << l << ": " << b[i].layers(l).ShortDebugString() << " vs "
          << a[i].layers(l).ShortDebugString();
      dropped += a[i].layers(l).drop_rate();
      switched_off += a[i].layers(l).expert_dropout_rate();
    }
  }
  // The options acted, so the equality above covers them.
  EXPECT_GT(dropped, 0) << "the capacity rule dropped nothing";
  EXPECT_GT(switched_off, 0) << "expert dropout switched no expert off";

  std::vector<float> wa, wb, ma, mb;
  none.trainer->model().CopyToHost(ParamSet::kParams, &wa);
  full.trainer->model().CopyToHost(ParamSet::kParams, &wb);
  EXPECT_TRUE(SameBits(wa, wb)) << "the trained weights differ";
  none.trainer->model().CopyToHost(ParamSet::kAdamV, &ma);
  full.trainer->model().CopyToHost(ParamSet::kAdamV, &mb);
  EXPECT_TRUE(SameBits(ma, mb)) << "AdamW's v differs";
  const std::vector<float> bias_a = none.trainer->model().RouterBiases();
  const std::vector<float> bias_b = full.trainer->model().RouterBiases();
  ASSERT_EQ(bias_a.size(), 3u * 4u);
  EXPECT_TRUE(SameBits(bias_a, bias_b)) << "loss-free balancing's biases differ";
}

// One forward and backward of the Model itself: the same ForwardResult and every gradient bit
// for bit, on a second micro-step too (gradients accumulate), with the gate and QK-norm on.
TEST(Recompute, FullGivesTheSameGradients) {
  kernels::SetNumThreads(1);
  const testing::ModelCase c{"moe", 4, 2, 4, 2, 1.25, false, 0.1f};
  ModelConfig cfg = testing::CaseConfig(c, 48, 32, 16, 40);
  cfg.layers = 3;
  cfg.qk_norm = true;
  cfg.attn_gate = true;
  cfg.attn_dropout = 0.15f;
  cfg.expert_dropout = 0.3f;
  cfg.shared_experts = 2;
  cfg.shared_ffn = 24;
  cfg.bias_update_rate = 0.01f;
  const int b = 3, n = b * cfg.seq_len;
  std::mt19937 rng(5);
  std::vector<int32_t> idx(2 * n), targets(2 * n);
  for (int32_t& t : idx) t = static_cast<int32_t>(rng() % cfg.vocab);
  for (int32_t& t : targets) t = static_cast<int32_t>(rng() % cfg.vocab);

  struct Run {
    std::vector<ForwardResult> results;
    std::vector<float> grads;
  };
  auto run = [&](bool recompute) {
    ModelConfig rc = cfg;
    rc.recompute = recompute;
    auto comm = CreateSingleProcessCommunicator();
    Model model(rc, comm.get());
    model.InitParams(11);
    // A non-zero bias, so that the rerun must route with it too.
    std::vector<float> bias(static_cast<size_t>(rc.layers) * rc.experts);
    for (size_t i = 0; i < bias.size(); ++i) bias[i] = 0.01f * static_cast<float>(i % 5) - 0.02f;
    model.SetRouterBiases(bias);
    model.ZeroGrads();
    Run r;
    for (int micro = 0; micro < 2; ++micro) {
      BatchContext ctx;
      ctx.train = true;
      ctx.dropout_seed = 1234 + micro;
      ctx.first_token = 0;
      ctx.global_tokens = n;
      ctx.loss_scale = 1.f / static_cast<float>(2 * n);
      ctx.last_micro_step = micro == 1;
      r.results.push_back(model.Forward(idx.data() + micro * n, targets.data() + micro * n, b, ctx));
      model.Backward();
    }
    model.CopyToHost(ParamSet::kGrads, &r.grads);
    return r;
  };
  const Run none = run(false), full = run(true);
  ASSERT_EQ(full.results.size(), none.results.size());
  int64_t expert_dropped = 0, dropped = 0;
  for (size_t m = 0; m < none.results.size(); ++m) {
    const ForwardResult &x = none.results[m], &y = full.results[m];
    EXPECT_EQ(y.ce_sum, x.ce_sum) << "micro-step " << m;
    EXPECT_EQ(y.aux_loss, x.aux_loss) << "micro-step " << m;
    EXPECT_EQ(y.z_loss, x.z_loss) << "micro-step " << m;
    ASSERT_EQ(y.layers.size(), x.layers.size());
    for (size_t l = 0; l < x.layers.size(); ++l) {
      EXPECT_EQ(y.layers[l].routed, x.layers[l].routed) << "micro-step " << m << " layer " << l;
      EXPECT_EQ(y.layers[l].dropped, x.layers[l].dropped) << "micro-step " << m << " layer " << l;
      EXPECT_EQ(y.layers[l].expert_dropped, x.layers[l].expert_dropped) << "micro-step " << m << " layer " << l;
      EXPECT_EQ(y.layers[l].entropy_sum, x.layers[l].entropy_sum) << "micro-step " << m << " layer " << l;
      dropped += x.layers[l].dropped;
      expert_dropped += x.layers[l].expert_dropped;
    }
  }
  EXPECT_GT(dropped, 0);
  EXPECT_GT(expert_dropped, 0);
  ASSERT_EQ(full.grads.size(), none.grads.size());
  int64_t nonzero = 0;
  for (float g : none.grads) nonzero += g != 0.f;
  EXPECT_GT(nonzero, static_cast<int64_t>(none.grads.size()) / 2);
  for (size_t i = 0; i < none.grads.size(); ++i) {
    ASSERT_EQ(std::memcmp(&full.grads[i], &none.grads[i], sizeof(float)), 0)
        << "gradient " << i << ": " << full.grads[i] << " vs " << none.grads[i];
  }
}

// The estimate moectl validate prints: recompute full keeps far fewer activation bytes.
TEST(Recompute, EstimateKeepsAFractionOfTheActivations) {
  for (moe::v1::Device device : {moe::v1::DEVICE_CPU, moe::v1::DEVICE_CUDA}) {
    moe::v1::JobSpec spec = OptionsSpec(moe::v1::RECOMPUTE_NONE);
    spec.mutable_model()->set_vocab_size(65);
    spec.mutable_resources()->set_device(device);
    const ModelStats none = ComputeModelStats(spec);
    spec.mutable_train()->set_recompute(moe::v1::RECOMPUTE_FULL);
    const ModelStats full = ComputeModelStats(spec);
    EXPECT_LT(full.activation_bytes, none.activation_bytes) << device;
    EXPECT_EQ(full.weight_bytes, none.weight_bytes) << device;
    EXPECT_EQ(full.workspace_bytes, none.workspace_bytes) << device;
  }
}

}  // namespace
}  // namespace moe
