// The invariant of MODEL.md's parallel layout: W ranks on a global batch give the same loss
// curve and the same weights (to rounding) as one rank, in dropless mode. Runs under mpirun at
// W = 1, 2 and 4; rank 0 also trains a one-process oracle and compares. Also: a run
// checkpointed by W ranks resumes on W ranks and on one rank with the same curve. And the same
// with the expert options that talk across ranks: loss-free balancing (biases from global
// counts, restored from the checkpoint), expert dropout (every rank draws the same experts) and
// shared experts (replicated like the dense weights). And train.recompute: full on W ranks, whose
// rerun exchanges the rows again, trains bit for bit like recompute: none; and bf16 master
// weights with their bf16 gradients.
#include <cmath>
#include <cstring>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/threads.h"
#include "tests/support/mpi_env.h"
#include "tests/support/paths.h"
#include "tests/support/test_jobs.h"
#include "tests/support/training_runs.h"
#include "worker/checkpoint/checkpoint.h"
#include "worker/parallel/comm_mpi.h"
#include "worker/parallel/comm_single.h"
#include "worker/data/dataset.h"
#include "worker/train/trainer.h"

namespace moe {
namespace {

[[maybe_unused]] ::testing::Environment* const kMpiEnv =
    ::testing::AddGlobalTestEnvironment(new testing::MpiEnvironment);

constexpr int kSteps = 20;

using testing::RelErr;

// MODEL.md's small Shakespeare job for W ranks, `steps` steps, every step logged, no evaluation,
// two micro-batches a step (accumulation splits the same global batch).
moe::v1::JobSpec EquivalenceSpec(int W, int steps) {
  moe::v1::JobSpec spec = testing::SmallShakespeareSpec(W);
  spec.mutable_train()->set_steps(steps);
  spec.mutable_train()->set_log_every(1);
  spec.mutable_train()->set_eval_every(0);
  spec.mutable_train()->set_grad_accum(2);
  return spec;
}

TEST(EquivalenceTest, RanksMatchOneRankAndResumeAcrossRankCounts) {
  kernels::SetNumThreads(1);
  auto comm = CreateMpiCommunicator(testing::TestCommOptions());
  const int W = comm->world_size();
  moe::v1::JobSpec spec = EquivalenceSpec(W, kSteps);
  spec.mutable_model()->set_dropout(0.1);  // masks keyed by global token: same on any W
  spec.mutable_checkpoint()->set_every(kSteps / 2);
  spec.mutable_checkpoint()->set_keep(5);
  auto data = LoadDataset(spec.data());
  ASSERT_TRUE(data.ok()) << data.status();

  // W ranks: 10 steps, checkpoint, then a resumed run for the other 10.
  const std::string dir = testing::SharedTempDir(comm.get(), "moe-equiv-");
  const std::vector<double> parallel = testing::TrainInTwoHalves(spec, comm.get(), &*data, dir);
  comm->Barrier();
  if (comm->rank() != 0) return;
  ASSERT_EQ(parallel.size(), static_cast<size_t>(kSteps));
  TrainOutcome outcome;

  // The one-process oracle on the same global batch.
  moe::v1::JobSpec one = spec;
  one.mutable_resources()->set_ranks(1);
  auto single = CreateSingleProcessCommunicator();
  std::unique_ptr<Trainer> oracle = testing::NewTrainer(one, single.get(), &*data);
  ASSERT_NE(oracle, nullptr);
  ASSERT_TRUE(oracle->Run(&outcome).ok());
  std::vector<double> expected = testing::Losses(*oracle);
  ASSERT_EQ(expected.size(), parallel.size());
  for (size_t i = 0; i < expected.size(); ++i) {
    EXPECT_LT(RelErr(parallel[i], expected[i]), 1e-5)
        << "W=" << W << " step " << i + 1 << ": " << parallel[i] << " vs " << expected[i];
  }

  // Final weights: the W-rank checkpoint (experts gathered by global index) against the oracle.
  auto latest = LatestCheckpoint(dir);
  ASSERT_TRUE(latest.ok()) << latest.status();
  auto ckpt = ReadCheckpoint(*latest);
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  ASSERT_EQ(ckpt->step, kSteps);
  int compared = 0;
  for (const NamedTensor& t : ckpt->tensors) {
    const ParamInfo* info = oracle->model().layout().Find(t.name);
    if (info == nullptr) continue;  // optimizer state
    const float* w = oracle->model().params().data() + info->offset;
    ASSERT_EQ(static_cast<int64_t>(t.data.size()), info->size) << t.name;
    double diff = 0, norm = 0;
    for (int64_t i = 0; i < info->size; ++i) {
      diff += (t.data[i] - w[i]) * static_cast<double>(t.data[i] - w[i]);
      norm += static_cast<double>(w[i]) * w[i];
    }
    EXPECT_LT(std::sqrt(diff / norm), 1e-5) << "W=" << W << " " << t.name;
    ++compared;
  }
  EXPECT_EQ(compared, static_cast<int>(oracle->model().layout().params().size()));

  // Resume the W-rank step-10 checkpoint on one rank: the same curve from step 11 on.
  const std::string one_dir = testing::MakeTempDir("moe-equiv-one-");
  std::filesystem::copy(dir + "/step_00000010", one_dir + "/step_00000010",
                        std::filesystem::copy_options::recursive);
  TrainerOptions o3;
  o3.checkpoint_dir = one_dir;
  o3.resume = true;
  std::unique_ptr<Trainer> resumed = testing::NewTrainer(one, single.get(), &*data, o3);
  ASSERT_NE(resumed, nullptr);
  ASSERT_TRUE(resumed->Run(&outcome).ok());
  std::vector<double> tail = testing::Losses(*resumed);
  ASSERT_EQ(tail.size(), static_cast<size_t>(kSteps / 2));
  for (size_t i = 0; i < tail.size(); ++i) {
    EXPECT_LT(RelErr(tail[i], expected[kSteps / 2 + i]), 1e-5) << "resumed on 1 rank, step " << kSteps / 2 + i + 1;
  }
}

TEST(EquivalenceTest, ExpertOptionsMatchOneRankAndResume) {
  kernels::SetNumThreads(1);
  auto comm = CreateMpiCommunicator(testing::TestCommOptions());
  const int W = comm->world_size();
  constexpr int kOptionSteps = 12;
  moe::v1::JobSpec spec = EquivalenceSpec(W, kOptionSteps);
  auto* e = spec.mutable_model()->mutable_moe();
  e->set_shared_experts(1);
  e->set_shared_expert_hidden(48);
  e->set_bias_update_rate(0.02);
  e->set_expert_dropout(0.25);
  spec.mutable_checkpoint()->set_every(kOptionSteps / 2);
  spec.mutable_checkpoint()->set_keep(5);
  auto data = LoadDataset(spec.data());
  ASSERT_TRUE(data.ok()) << data.status();

  const std::string dir = testing::SharedTempDir(comm.get(), "moe-equiv-opts-");
  const std::vector<double> parallel = testing::TrainInTwoHalves(spec, comm.get(), &*data, dir);
  comm->Barrier();
  if (comm->rank() != 0) return;
  ASSERT_EQ(parallel.size(), static_cast<size_t>(kOptionSteps));

  testing::OneRankRun one = testing::TrainOnOneRank(spec, &*data);
  ASSERT_NE(one.trainer, nullptr);
  Trainer* oracle = one.trainer.get();
  testing::ExpectSameCurve(parallel, testing::Losses(*oracle), 1e-5, W);
  // The options acted: biases moved, experts were switched off.
  const moe::v1::MetricPoint& last = oracle->history().back();
  ASSERT_EQ(last.layers_size(), 2);
  for (const auto& l : last.layers()) EXPECT_GT(l.router_bias_spread(), 0) << "layer " << l.layer();
  double off = 0;
  for (const auto& p : oracle->history()) {
    for (const auto& l : p.layers()) off += l.expert_dropout_rate();
  }
  EXPECT_GT(off, 0) << "expert dropout switched no expert off in " << kOptionSteps << " steps";

  // The W-rank checkpoint: weights (shared experts too) and the router biases as the oracle has them.
  auto latest = LatestCheckpoint(dir);
  ASSERT_TRUE(latest.ok()) << latest.status();
  auto ckpt = ReadCheckpoint(*latest);
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  const std::vector<float> oracle_bias = oracle->model().RouterBiases();
  ASSERT_EQ(oracle_bias.size(), 2u * 4u);
  int weights = 0, biases = 0;
  for (const NamedTensor& t : ckpt->tensors) {
    if (t.name.find(".moe.router_bias") != std::string::npos) {
      const int l = t.name == "blocks.0.moe.router_bias" ? 0 : 1;
      for (int x = 0; x < 4; ++x) EXPECT_EQ(t.data[x], oracle_bias[l * 4 + x]) << t.name << " expert " << x;
      ++biases;
      continue;
    }
    const ParamInfo* info = oracle->model().layout().Find(t.name);
    if (info == nullptr) continue;  // optimizer state
    const float* w = oracle->model().params().data() + info->offset;
    double diff = 0, norm = 0;
    for (int64_t i = 0; i < info->size; ++i) {
      diff += (t.data[i] - w[i]) * static_cast<double>(t.data[i] - w[i]);
      norm += static_cast<double>(w[i]) * w[i];
    }
    EXPECT_LT(std::sqrt(diff / norm), 1e-5) << "W=" << W << " " << t.name;
    ++weights;
  }
  EXPECT_EQ(weights, static_cast<int>(oracle->model().layout().params().size()));
  EXPECT_EQ(biases, 2);
}

// Trains `spec` on the communicator's W ranks and, on rank 0, on one rank: the same loss curve
// (within curve_tol) and the same replicated weights `names` (relative Frobenius, weight_tol).
void ExpectRanksMatchOneRank(const moe::v1::JobSpec& spec, Communicator* comm, const std::vector<std::string>& names,
                             double curve_tol, double weight_tol) {
  const int W = comm->world_size();
  auto data = LoadDataset(spec.data());
  ASSERT_TRUE(data.ok()) << data.status();
  TrainOutcome outcome;
  std::unique_ptr<Trainer> parallel = testing::NewTrainer(spec, comm, &*data);
  ASSERT_NE(parallel, nullptr);
  ASSERT_TRUE(parallel->Run(&outcome).ok());
  const std::vector<double> curve = testing::Losses(*parallel);
  comm->Barrier();
  if (comm->rank() != 0) return;

  testing::OneRankRun one = testing::TrainOnOneRank(spec, &*data);
  ASSERT_NE(one.trainer, nullptr);
  Trainer* oracle = one.trainer.get();
  ASSERT_EQ(curve.size(), static_cast<size_t>(spec.train().steps()));
  testing::ExpectSameCurve(curve, testing::Losses(*oracle), curve_tol, W);
  for (const std::string& name : names) {
    const ParamInfo* a = parallel->model().layout().Find(name);
    const ParamInfo* b = oracle->model().layout().Find(name);
    ASSERT_NE(a, nullptr) << name;
    ASSERT_NE(b, nullptr) << name;
    double diff = 0, norm = 0;
    for (int64_t i = 0; i < a->size; ++i) {
      const double d = parallel->model().params()[a->offset + i] - oracle->model().params()[b->offset + i];
      diff += d * d;
      norm += static_cast<double>(oracle->model().params()[b->offset + i]) * oracle->model().params()[b->offset + i];
    }
    EXPECT_LT(std::sqrt(diff / norm), weight_tol) << "W=" << W << " " << name;
  }
}

// The attention options (MODEL.md "Options: Attention") keep the invariant: QK-norm and the gate
// are per token, and attention-dropout masks are keyed by the global token, so W ranks draw the
// masks one rank draws.
TEST(EquivalenceTest, AttentionOptionsRanksMatchOneRank) {
  kernels::SetNumThreads(1);
  auto comm = CreateMpiCommunicator(testing::TestCommOptions());
  moe::v1::JobSpec spec = EquivalenceSpec(comm->world_size(), 10);
  auto* attn = spec.mutable_model()->mutable_attention();
  attn->set_qk_norm(true);
  attn->set_gate(true);
  attn->set_dropout(0.1);
  // The dense weights too: q_norm, k_norm and wg are replicated and must agree.
  ExpectRanksMatchOneRank(spec, comm.get(),
                          {"blocks.0.attn.q_norm.weight", "blocks.1.attn.k_norm.weight", "blocks.1.attn.wg.weight"},
                          1e-5, 1e-5);
}

// train.master_weights bf16: the step's gradients are rounded to bf16 once summed over ranks and
// micro-batches, and the weights' stochastic rounding draws by global element, so W ranks follow
// one rank's curve. A value that lands on a rounding boundary in one sum order and not the other
// moves by one bf16 step (0.4% of that element; 2e-5 to 8e-5 of a tensor's norm at W = 2 and 4),
// hence bounds looser than fp32's that still allow only a few such flips per tensor.
// (int8 moments amplify a flip through their block scale: not mixed in here.)
TEST(EquivalenceTest, Bf16MasterWeightsRanksMatchOneRank) {
  kernels::SetNumThreads(1);
  auto comm = CreateMpiCommunicator(testing::TestCommOptions());
  moe::v1::JobSpec spec = EquivalenceSpec(comm->world_size(), 10);
  spec.mutable_train()->set_master_weights(moe::v1::PRECISION_BF16);
  ExpectRanksMatchOneRank(spec, comm.get(), {"blocks.0.attn.wqkv.weight", "blocks.1.attn.wo.weight", "wte.weight"},
                          1e-4, 5e-4);
}

// Recompute full reruns each block inside the backward, the exchange of its rows included (every
// rank reruns the same block at the same point): on W ranks the same curve, router statistics and
// weights as recompute none, bit for bit, with capacity drops, expert dropout and dropout on.
TEST(EquivalenceTest, RecomputeMatchesNoneOnRanks) {
  kernels::SetNumThreads(1);
  auto comm = CreateMpiCommunicator(testing::TestCommOptions());
  const int W = comm->world_size();
  moe::v1::JobSpec spec = EquivalenceSpec(W, 6);
  spec.mutable_model()->set_dropout(0.1);
  spec.mutable_model()->mutable_attention()->set_dropout(0.1);
  auto* e = spec.mutable_model()->mutable_moe();
  e->set_capacity_factor(1.0);
  e->set_expert_dropout(0.25);
  e->set_shared_experts(1);
  e->set_shared_expert_hidden(48);
  e->set_bias_update_rate(0.02);
  auto data = LoadDataset(spec.data());
  ASSERT_TRUE(data.ok()) << data.status();
  TrainOutcome outcome;
  std::unique_ptr<Trainer> none = testing::NewTrainer(spec, comm.get(), &*data);
  ASSERT_NE(none, nullptr);
  ASSERT_TRUE(none->Run(&outcome).ok());
  spec.mutable_train()->set_recompute(moe::v1::RECOMPUTE_FULL);
  std::unique_ptr<Trainer> full = testing::NewTrainer(spec, comm.get(), &*data);
  ASSERT_NE(full, nullptr);
  ASSERT_TRUE(full->Run(&outcome).ok());

  ASSERT_EQ(full->history().size(), none->history().size());
  for (size_t i = 0; i < none->history().size(); ++i) {
    const moe::v1::MetricPoint &a = none->history()[i], &b = full->history()[i];
    EXPECT_EQ(b.loss(), a.loss()) << "W=" << W << " step " << i + 1;
    EXPECT_EQ(b.aux_loss(), a.aux_loss()) << "W=" << W << " step " << i + 1;
    ASSERT_EQ(b.layers_size(), a.layers_size());
    for (int l = 0; l < a.layers_size(); ++l) {
      EXPECT_EQ(b.layers(l).SerializeAsString(), a.layers(l).SerializeAsString())
          << "W=" << W << " step " << i + 1 << " layer " << l << ": " << b.layers(l).ShortDebugString() << " vs "
          << a.layers(l).ShortDebugString();
    }
  }
  std::vector<float> wa, wb;
  none->model().CopyToHost(ParamSet::kParams, &wa);
  full->model().CopyToHost(ParamSet::kParams, &wb);
  ASSERT_EQ(wa.size(), wb.size());
  EXPECT_EQ(std::memcmp(wa.data(), wb.data(), wa.size() * sizeof(float)), 0)
      << "W=" << W << " rank " << comm->rank() << ": the trained weights differ";
}

}  // namespace
}  // namespace moe
