// The whole model on one GPU against the CPU model on the same weights and batch: losses (fp32
// within 1e-4 relative, bf16 within 1e-2) and every parameter's gradient, over dense and MoE
// models, GQA on and off, k = 1..4, capacity drops, tied and untied heads, dropout; then the
// trainer with device cuda: the same loss curve as the CPU trainer (fp32), resume from a GPU
// checkpoint, and learning in bf16; head sizes 80 and 128. Skips without a GPU.
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "common/backend_limits.h"
#include "gtest/gtest.h"
#include "kernels/state_codec.h"
#include "tests/support/bf16_parity.h"
#include "tests/support/paths.h"
#include "tests/support/test_jobs.h"
#include "tests/support/training_runs.h"
#include "worker/checkpoint/checkpoint.h"
#include "worker/parallel/comm_single.h"
#include "worker/model/cuda/cuda_model.h"
#include "worker/data/dataset.h"
#include "worker/model/cpu/model.h"
#include "worker/train/make_model.h"
#include "worker/train/trainer.h"

#ifdef MOE_WITH_CUDA
#include "kernels/cuda/common.h"
#endif

namespace moe {
namespace {

#ifndef MOE_WITH_CUDA

TEST(CudaModelTest, NeedsCuda) { GTEST_SKIP() << "built without CUDA: no GPU model to test"; }

#else

#define SKIP_WITHOUT_GPU()                                      \
  do {                                                          \
    if (!cuda::HaveGpu()) GTEST_SKIP() << "no CUDA GPU on this machine"; \
  } while (0)

using Case = testing::ModelCase;

double RelErr(const float* a, const float* b, int64_t n) {
  double num = 0, den = 0;
  for (int64_t i = 0; i < n; ++i) {
    if (std::isnan(a[i])) return INFINITY;
    num += (double{a[i]} - b[i]) * (double{a[i]} - b[i]);
    den += double{b[i]} * b[i];
  }
  return den == 0 ? std::sqrt(num) : std::sqrt(num / den);
}

// The GPU model against the CPU model on cfg: loss, every gradient, one optimizer step.
void ExpectParity(const ModelConfig& cfg, bool bf16, const std::string& name) {
  auto comm = CreateSingleProcessCommunicator();
  Model cpu(cfg, comm.get());
  cpu.InitParams(42);
  // Larger weights than the 0.02 init, so that every layer matters to the loss: 0.1 at width 64,
  // scaled by 1/sqrt(width / 64) so that wider models keep the same activation scale (at d 512
  // a flat 0.1 saturates the softmaxes, and bf16's rounding then moves gradients by ~10%).
  std::mt19937 rng(7);
  std::normal_distribution<float> noise(0.f, 0.1f * std::sqrt(64.f / static_cast<float>(std::max(cfg.d, 64))));
  for (float& w : cpu.params()) w += noise(rng);
  // bf16 master weights hold bf16 values on both backends (the GPU keeps no fp32 copy to compare).
  if (cfg.bf16_master) kernels::RoundToBf16Values(cpu.params().data(), cpu.layout().total());
  auto made = MakeCudaModel(cfg, comm.get(), bf16);
  ASSERT_TRUE(made.ok()) << made.status();
  TrainModel& gpu = **made;
  gpu.InitParams(42);
  gpu.CopyFromHost(ParamSet::kParams, cpu.params());
  EXPECT_EQ(gpu.params(), cpu.params());

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
  ctx.first_token = 5 * cfg.seq_len;
  ctx.global_tokens = n;
  ctx.loss_scale = 1.0f / n;
  const ForwardResult rc = cpu.Forward(idx.data(), tgt.data(), b, ctx);
  const ForwardResult rg = gpu.Forward(idx.data(), tgt.data(), b, ctx);
  const double tol = bf16 ? 1e-2 : 1e-4;
  const double loss_c = rc.ce_sum / n + rc.aux_loss + rc.z_loss;
  const double loss_g = rg.ce_sum / n + rg.aux_loss + rg.z_loss;
  EXPECT_LT(std::abs(loss_g - loss_c) / loss_c, tol) << "loss cpu " << loss_c << " gpu " << loss_g;
  EXPECT_LT(std::abs(rg.ce_sum - rc.ce_sum) / rc.ce_sum, tol);
  if (cfg.is_moe()) {
    EXPECT_LT(std::abs(rg.aux_loss - rc.aux_loss), tol * rc.aux_loss);
    EXPECT_LT(std::abs(rg.z_loss - rc.z_loss), tol * rc.z_loss + 1e-12);
    ASSERT_EQ(rg.layers.size(), rc.layers.size());
    if (bf16) {
      const std::vector<int64_t> moves = testing::RoutingMoves(rc, rg);
      for (size_t l = 0; l < rc.layers.size(); ++l) {
        EXPECT_LE(moves[l], testing::AllowedMoves(rc.layers[l])) << "layer " << l;
      }
    } else {
      for (size_t l = 0; l < rc.layers.size(); ++l) {
        EXPECT_EQ(rg.layers[l].routed, rc.layers[l].routed) << "layer " << l;
        EXPECT_EQ(rg.layers[l].dropped, rc.layers[l].dropped) << "layer " << l;
      }
    }
  }
  std::printf("[ %s bf16=%d ] loss cpu %.8f gpu %.8f rel %.2e\n", name.c_str(), bf16 ? 1 : 0, loss_c, loss_g,
              std::abs(loss_g - loss_c) / loss_c);

  cpu.ZeroGrads();
  gpu.ZeroGrads();
  cpu.Backward();
  gpu.Backward();
  cpu.ReduceGrads();  // one rank: only bf16 master weights' rounding
  gpu.ReduceGrads();
  std::vector<float> gg;
  gpu.CopyToHost(ParamSet::kGrads, &gg);
  // bf16: testing::Bf16GradBound (tests/support/bf16_parity.h): 5e-2, looser for the router and
  // for the MoE weights of a layer where a near-tie flipped under bf16.
  const double gtol = bf16 ? 5e-2 : 1e-3;
  const std::vector<int64_t> moves = bf16 ? testing::RoutingMoves(rc, rg) : std::vector<int64_t>{};
  for (const ParamInfo& info : cpu.layout().params()) {
    const double err = RelErr(gg.data() + info.offset, cpu.grads().data() + info.offset, info.size);
    EXPECT_LT(err, bf16 ? testing::Bf16GradBound(info.name, moves) : gtol) << info.name;
    if (cfg.bf16_master && Bf16Gradient(info)) {  // stored bf16 (bf16 products) or as bf16 values
      for (int64_t i = info.offset; i < info.offset + info.size; ++i) {
        ASSERT_EQ(kernels::FromBf16Bits(kernels::Bf16Bits(gg[i])), gg[i]) << info.name << " is not bf16 at " << i;
      }
    }
  }

  // One optimizer step on both: the updated weights agree.
  double dc = 0, ec = 0, dg = 0, eg = 0;
  cpu.GradSquaredNorms(&dc, &ec);
  gpu.GradSquaredNorms(&dg, &eg);
  EXPECT_LT(std::abs(std::sqrt(dg + eg) - std::sqrt(dc + ec)) / std::sqrt(dc + ec), gtol);
  cpu.OptimizerStep(1, 1e-3, 1e-3, 0.1, 0.5f);
  gpu.OptimizerStep(1, 1e-3, 1e-3, 0.1, 0.5f);
  // The first AdamW step moves each weight by about lr * sign(grad): a gradient near zero that
  // flips sign under bf16 rounding moves its weight by 2 lr, hence the looser bf16 bound.
  EXPECT_LT(RelErr(gpu.params().data(), cpu.params().data(), cpu.layout().total()), bf16 ? 1e-2 : 1e-3);

  // Later steps (ZeroGrads leaves the bf16 experts' gradients to the first Backward to write):
  // a step's gradients do not depend on the last step's, micro-batches add up, and a step with no
  // Backward reads zeros.
  auto step_grads = [&](int backwards) {
    std::vector<float> out;
    gpu.ZeroGrads();
    for (int i = 0; i < backwards; ++i) {
      gpu.Forward(idx.data(), tgt.data(), b, ctx);
      gpu.Backward();
    }
    gpu.ReduceGrads();
    gpu.CopyToHost(ParamSet::kGrads, &out);
    return out;
  };
  const std::vector<float> once = step_grads(1), again = step_grads(1), twice = step_grads(2), none = step_grads(0);
  EXPECT_EQ(once, again);
  std::vector<float> doubled(once.size());
  for (size_t i = 0; i < once.size(); ++i) doubled[i] = 2 * once[i];
  EXPECT_LT(RelErr(twice.data(), doubled.data(), once.size()), cfg.bf16_master ? 1e-2 : 1e-5);
  EXPECT_EQ(none, std::vector<float>(once.size(), 0.f));
}

class CudaModelParityTest : public ::testing::TestWithParam<std::tuple<Case, bool>> {};

// train.master_weights bf16: the blocks' matrices' gradients in bf16 (worker/model/cuda/
// device_grads.h), the CPU's rounded to the same bf16 values; the step then rounds the weights.
class CudaModelBf16MasterTest : public ::testing::TestWithParam<bool> {};

TEST_P(CudaModelBf16MasterTest, LossAndGradientsMatchCpu) {
  SKIP_WITHOUT_GPU();
  const bool bf16 = GetParam();
  for (const Case& c : {Case{"moe", 4, 2, 4, 2, 0.0, false, 0.0f}, Case{"dense", 1, 1, 4, 4, 0.0, true, 0.0f}}) {
    ModelConfig cfg = testing::CaseConfig(c, /*vocab=*/37, /*d=*/64, /*seq_len=*/33, /*ffn=*/48);
    cfg.bf16_master = true;
    ExpectParity(cfg, bf16, std::string(c.name) + "_bf16_master");
  }
}
INSTANTIATE_TEST_SUITE_P(Precisions, CudaModelBf16MasterTest, ::testing::Bool());

// The bf16 head in chunks of rows (CudaHeadChunkRows: one chunk at these sizes): 99 tokens in
// chunks of 40, 40 and 19 give the one-chunk loss and gradients.
TEST(CudaModelHeadChunksTest, ChunkedHeadMatchesCpu) {
  SKIP_WITHOUT_GPU();
  ModelConfig cfg = testing::CaseConfig(Case{"moe", 4, 2, 4, 2, 0.0, false, 0.0f}, /*vocab=*/37, /*d=*/64,
                                        /*seq_len=*/33, /*ffn=*/48);
  cfg.head_chunk_rows = 40;
  ExpectParity(cfg, /*bf16=*/true, "moe_head_chunks_40");
  cfg.head_chunk_rows = 1;
  ExpectParity(cfg, /*bf16=*/true, "moe_head_chunks_1");
}

TEST_P(CudaModelParityTest, LossAndGradientsMatchCpu) {
  SKIP_WITHOUT_GPU();
  const auto [c, bf16] = GetParam();
  ExpectParity(testing::CaseConfig(c, /*vocab=*/37, /*d=*/64, /*seq_len=*/33, /*ffn=*/48), bf16, c.name);
}

// Head sizes the first kernels did not run (common/backend_limits.h: multiples of 8 up to 256):
// hd 128 with GQA (4 heads over 2 kv heads, d 512) and MQA, hd 80, through the whole model.
class CudaModelHeadSizeTest : public ::testing::TestWithParam<std::tuple<int, int, bool>> {};

TEST_P(CudaModelHeadSizeTest, LossAndGradientsMatchCpu) {
  SKIP_WITHOUT_GPU();
  const auto [hd, kv_heads, bf16] = GetParam();
  const Case c{"heads", 4, 2, 4, kv_heads, 0.0, true, 0.0f};
  const ModelConfig cfg = testing::CaseConfig(c, /*vocab=*/37, /*d=*/4 * hd, /*seq_len=*/33, /*ffn=*/48);
  ASSERT_EQ(cfg.head_dim, hd);
  ExpectParity(cfg, bf16, "hd" + std::to_string(hd) + "_kv" + std::to_string(kv_heads));
}

// Attention dropout (model.attention.dropout) through the whole model: the GPU draws the CPU's
// masks (keyed by global token, head and layer), so loss and gradients agree as without it.
// Runs once the CPU attention applies dropout (BackendRuns for the CPU says so).
class CudaModelAttentionDropoutTest : public ::testing::TestWithParam<bool> {};

TEST_P(CudaModelAttentionDropoutTest, LossAndGradientsMatchCpu) {
  SKIP_WITHOUT_GPU();
  if (!BackendRuns(/*cuda=*/false, RecipeOption::kAttentionDropout)) {
    GTEST_SKIP() << "the CPU attention does not run model.attention.dropout yet: no oracle";
  }
  const Case c{"attn_dropout", 4, 2, 4, 2, 0.0, true, 0.0f};
  ModelConfig cfg = testing::CaseConfig(c, /*vocab=*/37, /*d=*/64, /*seq_len=*/33, /*ffn=*/48);
  cfg.attn_dropout = 0.2f;
  ExpectParity(cfg, GetParam(), "attn_dropout");
}

INSTANTIATE_TEST_SUITE_P(Precisions, CudaModelAttentionDropoutTest, ::testing::Bool());

INSTANTIATE_TEST_SUITE_P(HeadSizes, CudaModelHeadSizeTest,
                         ::testing::Combine(::testing::Values(128), ::testing::Values(2, 1), ::testing::Bool()));
INSTANTIATE_TEST_SUITE_P(HeadSize80, CudaModelHeadSizeTest,
                         ::testing::Combine(::testing::Values(80), ::testing::Values(2), ::testing::Bool()));

INSTANTIATE_TEST_SUITE_P(
    Models, CudaModelParityTest,
    ::testing::Combine(::testing::Values(Case{"dense", 1, 1, 4, 4, 0.0, true, 0.0f},
                                         Case{"moe_k2_gqa_untied", 4, 2, 4, 2, 0.0, false, 0.1f},
                                         Case{"moe_k3_mqa_capacity", 5, 3, 4, 1, 1.0, true, 0.1f},
                                         Case{"moe_k4_capacity_half", 8, 4, 2, 2, 0.5, true, 0.0f},
                                         Case{"moe_k1", 4, 1, 4, 4, 0.0, true, 0.0f}),
                       ::testing::Bool()),
    [](const auto& info) {
      return std::string(std::get<0>(info.param).name) + (std::get<1>(info.param) ? "_bf16" : "_fp32");
    });

moe::v1::JobSpec CudaSpec(bool bf16) {
  moe::v1::JobSpec spec = testing::SmallShakespeareSpec();
  spec.mutable_resources()->set_device(moe::v1::DEVICE_CUDA);
  spec.mutable_train()->set_precision(bf16 ? moe::v1::PRECISION_BF16 : moe::v1::PRECISION_FP32);
  return spec;
}

using testing::Losses;

// A CUDA job of `steps` steps that logs every step's loss (the curves these tests compare), with
// residual dropout 0.1 and no evaluation.
moe::v1::JobSpec LossCurveSpec(bool bf16, int steps) {
  moe::v1::JobSpec spec = CudaSpec(bf16);
  spec.mutable_train()->set_steps(steps);
  spec.mutable_train()->set_log_every(1);
  spec.mutable_train()->set_eval_every(0);
  spec.mutable_model()->set_dropout(0.1);
  return spec;
}

TEST(CudaTrainerTest, SameLossCurveAsCpuAndResumes) {
  SKIP_WITHOUT_GPU();
  moe::v1::JobSpec spec = LossCurveSpec(/*bf16=*/false, 30);
  auto data = LoadDataset(spec.data());
  ASSERT_TRUE(data.ok()) << data.status();
  auto comm = CreateSingleProcessCommunicator();
  std::unique_ptr<Trainer> gpu = testing::NewTrainer(spec, comm.get(), &*data);
  ASSERT_NE(gpu, nullptr);
  TrainOutcome outcome;
  ASSERT_TRUE(gpu->Run(&outcome).ok());
  moe::v1::JobSpec cpu_spec = spec;
  cpu_spec.mutable_resources()->set_device(moe::v1::DEVICE_CPU);
  std::unique_ptr<Trainer> cpu = testing::NewTrainer(cpu_spec, comm.get(), &*data);
  ASSERT_NE(cpu, nullptr);
  ASSERT_TRUE(cpu->Run(&outcome).ok());
  const std::vector<double> a = Losses(*cpu), g = Losses(*gpu);
  ASSERT_EQ(a.size(), 30u);
  ASSERT_EQ(g.size(), 30u);
  for (size_t i = 0; i < a.size(); ++i) EXPECT_NEAR(g[i], a[i], 1e-3 * a[i]) << "step " << i + 1;

  // Stop at 12 with a checkpoint, resume: the curve goes on as the uninterrupted one.
  const std::string dir = testing::MakeTempDir("moe-cuda-resume-");
  TrainerOptions first_opts;
  first_opts.checkpoint_dir = dir;
  first_opts.max_steps = 12;
  spec.mutable_checkpoint()->set_every(12);
  std::unique_ptr<Trainer> first = testing::NewTrainer(spec, comm.get(), &*data, first_opts);
  ASSERT_NE(first, nullptr);
  ASSERT_TRUE(first->Run(&outcome).ok());
  TrainerOptions second_opts;
  second_opts.checkpoint_dir = dir;
  second_opts.resume = true;
  std::unique_ptr<Trainer> second = testing::NewTrainer(spec, comm.get(), &*data, second_opts);
  ASSERT_NE(second, nullptr);
  ASSERT_TRUE(second->Run(&outcome).ok());
  std::vector<double> b = Losses(*first), c = Losses(*second);
  b.insert(b.end(), c.begin(), c.end());
  ASSERT_EQ(b.size(), 30u);
  // Bit for bit: the step sums in a fixed order (SameJobTwiceSameBits), and the checkpoint holds
  // the weights, the optimizer's state and the data position exactly.
  for (size_t i = 0; i < g.size(); ++i) EXPECT_EQ(b[i], g[i]) << "step " << i + 1;
}

// The same job twice on one GPU: the same loss at every step, bit for bit. No sum depends on the
// order in which threads finish (kernels/cuda/reduce.h, the embedding's grouped rows), with the
// options that add sums of their own on (QK-norm's weights) and every dropout.
TEST(CudaTrainerTest, SameJobTwiceSameBits) {
  SKIP_WITHOUT_GPU();
  moe::v1::JobSpec spec = LossCurveSpec(/*bf16=*/true, 15);
  spec.mutable_model()->mutable_attention()->set_qk_norm(true);
  spec.mutable_model()->mutable_attention()->set_dropout(0.1);
  spec.mutable_model()->mutable_moe()->set_expert_dropout(0.1);
  auto data = LoadDataset(spec.data());
  ASSERT_TRUE(data.ok()) << data.status();
  auto comm = CreateSingleProcessCommunicator();
  std::vector<double> runs[2];
  for (std::vector<double>& losses : runs) {
    std::unique_ptr<Trainer> trainer = testing::NewTrainer(spec, comm.get(), &*data);
    ASSERT_NE(trainer, nullptr);
    TrainOutcome outcome;
    ASSERT_TRUE(trainer->Run(&outcome).ok());
    losses = Losses(*trainer);
  }
  ASSERT_EQ(runs[0].size(), 15u);
  EXPECT_EQ(runs[0], runs[1]);
}

// bf16 stopped half-way and resumed: the same bits as the run that went through. The resumed run
// meets the products' shapes (the experts' rows follow the routing) in another order from a fresh
// plan cache, so each shape's cuBLASLt algorithm must depend on the shape alone (Blas::Canonical).
TEST(CudaTrainerTest, Bf16ResumeSameBitsAsTheRunThrough) {
  SKIP_WITHOUT_GPU();
  moe::v1::JobSpec spec = LossCurveSpec(/*bf16=*/true, 16);
  auto data = LoadDataset(spec.data());
  ASSERT_TRUE(data.ok()) << data.status();
  auto comm = CreateSingleProcessCommunicator();
  std::unique_ptr<Trainer> through = testing::NewTrainer(spec, comm.get(), &*data);
  ASSERT_NE(through, nullptr);
  TrainOutcome outcome;
  ASSERT_TRUE(through->Run(&outcome).ok());
  // To step 8 (a checkpoint there), then a resume for the rest.
  EXPECT_EQ(testing::TrainInTwoHalves(spec, comm.get(), &*data, testing::MakeTempDir("moe-cuda-bf16-resume-")),
            Losses(*through));
}

// AdamW overlapping the next forward (DeviceOptimizer::Step, the default) against the update on
// the model's stream (MOE_OPT_OVERLAP=0): the same loss, grad norm and val loss at every step, bit
// for bit, with an evaluation and a checkpoint right after updates still in flight, and a resume.
TEST(CudaTrainerTest, OverlappedUpdateSameBitsAsSynchronous) {
  SKIP_WITHOUT_GPU();
  moe::v1::JobSpec spec = CudaSpec(/*bf16=*/true);
  spec.mutable_train()->set_steps(12);
  spec.mutable_train()->set_log_every(1);
  spec.mutable_train()->set_eval_every(4);
  spec.mutable_train()->set_eval_batches(2);
  spec.mutable_model()->set_dropout(0.1);
  spec.mutable_model()->set_tie_embeddings(false);
  auto data = LoadDataset(spec.data());
  ASSERT_TRUE(data.ok()) << data.status();
  auto comm = CreateSingleProcessCommunicator();
  std::vector<moe::v1::MetricPoint> runs[2];
  for (int overlap = 0; overlap < 2; ++overlap) {
    setenv("MOE_OPT_OVERLAP", overlap == 1 ? "1" : "0", 1);
    // To step 6 (a checkpoint there), then a resume for the rest.
    runs[overlap] = testing::TrainInTwoHalvesPoints(spec, comm.get(), &*data,
                                                    testing::MakeTempDir("moe-cuda-overlap-"));
  }
  unsetenv("MOE_OPT_OVERLAP");
  ASSERT_EQ(runs[0].size(), 12u);
  ASSERT_EQ(runs[1].size(), runs[0].size());
  int evals = 0;
  for (size_t i = 0; i < runs[0].size(); ++i) {
    EXPECT_EQ(runs[1][i].loss(), runs[0][i].loss()) << "step " << i + 1;
    EXPECT_EQ(runs[1][i].grad_norm(), runs[0][i].grad_norm()) << "step " << i + 1;
    EXPECT_EQ(runs[1][i].has_val_loss(), runs[0][i].has_val_loss()) << "step " << i + 1;
    if (runs[0][i].has_val_loss()) {
      ++evals;
      EXPECT_EQ(runs[1][i].val_loss(), runs[0][i].val_loss()) << "step " << i + 1;
    }
  }
  EXPECT_GE(evals, 2);
}

TEST(CudaTrainerTest, LearnsShakespeareInBf16) {
  SKIP_WITHOUT_GPU();
  moe::v1::JobSpec spec = CudaSpec(/*bf16=*/true);
  spec.mutable_train()->set_steps(300);
  auto data = LoadDataset(spec.data());
  ASSERT_TRUE(data.ok()) << data.status();
  auto comm = CreateSingleProcessCommunicator();
  std::unique_ptr<Trainer> trainer = testing::NewTrainer(spec, comm.get(), &*data);
  ASSERT_NE(trainer, nullptr);
  const double val0 = trainer->Evaluate().value();
  TrainOutcome outcome;
  ASSERT_TRUE(trainer->Run(&outcome).ok());
  const double val = trainer->Evaluate().value();
  // The CPU trainer's bar (train_test.cc): 2.37 after 300 steps in fp32.
  EXPECT_GT(val0, 4.0);
  EXPECT_LT(val, 2.5) << "val loss after 300 steps";
}


TEST(CudaModelTest, CpuJobsStayOnTheCpuModel) {
  // Runs everywhere: device cpu gives the CPU model, whatever the build.
  moe::v1::JobSpec spec = testing::SmallShakespeareSpec();
  ModelConfig cfg = ModelConfig::FromSpec(spec, 65);
  auto comm = CreateSingleProcessCommunicator();
  auto m = MakeTrainModel(spec, cfg, comm.get());
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_NE(dynamic_cast<Model*>(m->get()), nullptr);
  EXPECT_EQ(CudaModelDeviceBytes(**m), 0);
}


// The attention options (MODEL.md "Options: Attention"): QK-norm and the gate.
class CudaAttentionOptionsParityTest : public ::testing::TestWithParam<std::tuple<Case, bool>> {};

TEST_P(CudaAttentionOptionsParityTest, LossAndGradientsMatchCpu) {
  SKIP_WITHOUT_GPU();
  const auto [c, bf16] = GetParam();
  ModelConfig cfg = testing::CaseConfig(c, /*vocab=*/37, /*d=*/64, /*seq_len=*/33, /*ffn=*/48);
  cfg.qk_norm = true;
  cfg.attn_gate = true;
  ExpectParity(cfg, bf16, c.name);
}

INSTANTIATE_TEST_SUITE_P(
    QkNormGate, CudaAttentionOptionsParityTest,
    ::testing::Combine(::testing::Values(Case{"qk_gate_dense", 1, 1, 4, 4, 0.0, true, 0.0f},
                                         Case{"qk_gate_moe_k2_gqa_untied", 4, 2, 4, 2, 0.0, false, 0.1f}),
                       ::testing::Bool()),
    [](const ::testing::TestParamInfo<std::tuple<Case, bool>>& info) {
      return std::string(std::get<0>(info.param).name) + (std::get<1>(info.param) ? "_bf16" : "_fp32");
    });

#endif  // MOE_WITH_CUDA

}  // namespace
}  // namespace moe
