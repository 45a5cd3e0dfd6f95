// Capacity drops under expert parallelism (MODEL.md "Capacity"): each rank caps every expert at
// ceil(c * N_rank * k / E) assignments of the tokens it routes, first come by token order, and
// the drop rate the trainer reports is the count of those drops over all ranks. The expected
// count is rebuilt here independently: the first block's router is recomputed from the initial
// weights with the kernels, and the capacity rule is applied by a plain loop per rank's slice.
#include <algorithm>
#include <cmath>
#include <memory>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/attention.h"
#include "kernels/embedding.h"
#include "kernels/matmul.h"
#include "kernels/rmsnorm.h"
#include "kernels/rope.h"
#include "kernels/router.h"
#include "kernels/threads.h"
#include "tests/support/mpi_env.h"
#include "tests/support/test_jobs.h"
#include "tests/support/training_runs.h"
#include "worker/parallel/comm_mpi.h"
#include "worker/data/dataset.h"
#include "worker/model/param_layout.h"
#include "worker/train/trainer.h"

namespace moe {
namespace {

[[maybe_unused]] ::testing::Environment* const kMpiEnv =
    ::testing::AddGlobalTestEnvironment(new testing::MpiEnvironment);

// Top-k expert choices (n, k) of block 0 for the batch, from the initial weights.
std::vector<int32_t> FirstBlockRouting(const ModelConfig& cfg, uint64_t seed, const std::vector<int32_t>& idx, int b) {
  ParamLayout layout(cfg, 0, 1);
  std::vector<float> w(layout.total());
  layout.Initialize(w.data(), seed);
  ModelTensors t = layout.Bind(w.data());
  const int T = cfg.seq_len, D = cfg.d, n = b * T, E = cfg.experts, k = cfg.top_k;
  std::vector<float> x(static_cast<size_t>(n) * D), a(x.size()), rstd(n), y(x.size()), proj(x.size());
  std::vector<float> qkv(static_cast<size_t>(n) * cfg.qkv_dim()), lse(static_cast<size_t>(b) * cfg.heads * T);
  kernels::EmbeddingForward(x.data(), idx.data(), t.wte, n, D);
  kernels::RmsNormForward(a.data(), rstd.data(), x.data(), t.blocks[0].attn_norm, n, D, kernels::kRmsNormEps);
  kernels::LinearForward(qkv.data(), a.data(), t.blocks[0].wqkv, n, D, cfg.qkv_dim());
  kernels::RopeForward(qkv.data(), b, T, cfg.heads, cfg.kv_heads, cfg.head_dim, cfg.rope_theta);
  kernels::AttentionForward(y.data(), lse.data(), qkv.data(), b, T, cfg.heads, cfg.kv_heads, cfg.head_dim);
  kernels::LinearForward(proj.data(), y.data(), t.blocks[0].wo, n, D, D);
  for (size_t i = 0; i < x.size(); ++i) x[i] += proj[i];
  kernels::RmsNormForward(a.data(), rstd.data(), x.data(), t.blocks[0].moe_norm, n, D, kernels::kRmsNormEps);
  std::vector<float> logits(static_cast<size_t>(n) * E), probs(logits.size()), rlse(n), weights(static_cast<size_t>(n) * k);
  std::vector<int32_t> choice(static_cast<size_t>(n) * k);
  kernels::LinearForward(logits.data(), a.data(), t.blocks[0].router, n, D, E);
  kernels::RouterForward(probs.data(), rlse.data(), choice.data(), weights.data(), logits.data(), n, E, k);
  return choice;
}

TEST(CapacityTest, ReportedDropRateIsTheCountedOne) {
  kernels::SetNumThreads(1);
  auto comm = CreateMpiCommunicator(testing::TestCommOptions());
  const int W = comm->world_size();
  moe::v1::JobSpec spec = testing::SmallShakespeareSpec(W);
  const double c = 0.5;  // tight: many drops
  spec.mutable_model()->mutable_moe()->set_capacity_factor(c);
  spec.mutable_train()->set_steps(1);
  spec.mutable_train()->set_log_every(1);
  spec.mutable_train()->set_eval_every(0);
  auto data = LoadDataset(spec.data());
  ASSERT_TRUE(data.ok()) << data.status();
  std::unique_ptr<Trainer> trainer = testing::NewTrainer(spec, comm.get(), &*data);
  ASSERT_NE(trainer, nullptr);
  TrainOutcome outcome;
  ASSERT_TRUE(trainer->Run(&outcome).ok());
  ASSERT_EQ(trainer->history().size(), 1u);
  const moe::v1::MoeLayerStats& reported = trainer->history()[0].layers(0);

  // The same global batch, routed by block 0 of the initial model.
  const ModelConfig cfg = ModelConfig::FromSpec(spec, data->vocab_size);
  const int B = spec.train().batch_size(), T = cfg.seq_len, E = cfg.experts, k = cfg.top_k;
  std::vector<int32_t> x(static_cast<size_t>(B) * T), y(x.size());
  SampleBatch(data->train, spec.train().seed(), /*stream=*/0, /*step=*/0, 0, B, T, x.data(), y.data());
  std::vector<int32_t> choice = FirstBlockRouting(cfg, spec.train().seed(), x, B);

  // Each rank routes its own B / W sequences and caps each expert on its own.
  const int n_rank = B / W * T;
  const int64_t cap = static_cast<int64_t>(std::ceil(c * n_rank * k / E));
  int64_t dropped = 0;
  std::vector<int64_t> routed(E, 0);
  for (int r = 0; r < W; ++r) {
    std::vector<int64_t> taken(E, 0);
    for (int t = r * n_rank; t < (r + 1) * n_rank; ++t) {
      for (int j = 0; j < k; ++j) {
        const int e = choice[static_cast<size_t>(t) * k + j];
        ++routed[e];
        if (taken[e] < cap) {
          ++taken[e];
        } else {
          ++dropped;
        }
      }
    }
  }
  ASSERT_GT(dropped, 0) << "capacity factor " << c << " should drop some assignments";
  ASSERT_EQ(reported.tokens_per_expert_size(), E);
  for (int e = 0; e < E; ++e) EXPECT_EQ(reported.tokens_per_expert(e), routed[e]) << "expert " << e;
  EXPECT_DOUBLE_EQ(reported.drop_rate(), static_cast<double>(dropped) / (static_cast<int64_t>(B) * T * k))
      << "W=" << W << " expected " << dropped << " drops";
}

}  // namespace
}  // namespace moe
