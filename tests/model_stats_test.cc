// Unit tests of the model arithmetic (common/model_stats.h): parameters, FLOPs and memory,
// against docs/MODEL.md's table and reference_moe.py's active_params().
#include "common/model_stats.h"

#include <cmath>
#include <cstdint>
#include <vector>

#include "gtest/gtest.h"
#include "moe/v1/job.pb.h"

namespace moe {
namespace {

v1::JobSpec Reference(int vocab, int d, int layers, int heads, int experts, int k, int ffn, int seq,
                      int batch) {
  v1::JobSpec s;
  v1::ModelSpec* m = s.mutable_model();
  m->set_vocab_size(vocab);
  m->set_d_model(d);
  m->set_n_layers(layers);
  m->set_n_heads(heads);
  m->set_n_kv_heads(heads);
  m->set_seq_len(seq);
  m->set_tie_embeddings(true);
  m->mutable_moe()->set_num_experts(experts);
  m->mutable_moe()->set_top_k(k);
  m->mutable_moe()->set_expert_hidden(ffn);
  s.mutable_train()->set_batch_size(batch);
  s.mutable_train()->set_grad_accum(1);
  s.mutable_train()->set_precision(v1::PRECISION_FP32);
  s.mutable_resources()->set_ranks(1);
  return s;
}

// reference_moe.py: L * (4 d^2 + k 3 d f + d E + 2 d) + V d + d.
int64_t ReferenceActive(int64_t V, int64_t d, int64_t L, int64_t E, int64_t k, int64_t f) {
  return L * (4 * d * d + k * 3 * d * f + d * E + 2 * d) + V * d + d;
}

// Rounds to three significant figures, as the table prints.
double ThreeFigures(double v) {
  double scale = std::pow(10.0, std::floor(std::log10(v)) - 2);
  return std::round(v / scale) * scale;
}

TEST(ModelStatsTest, MatchesTheReferenceTable) {
  struct Row {
    v1::JobSpec spec;
    double active;  // MODEL.md, 3 significant figures
    double total;
    int64_t reference_active;
  };
  const std::vector<Row> rows = {
      {Reference(65, 384, 6, 6, 8, 2, 512, 256, 64), 10.7e6, 31.9e6,
       ReferenceActive(65, 384, 6, 8, 2, 512)},
      {Reference(50304, 768, 12, 12, 8, 2, 1536, 1024, 16), 152e6, 407e6,
       ReferenceActive(50304, 768, 12, 8, 2, 1536)},
      {Reference(50304, 1024, 16, 16, 32, 4, 1024, 1024, 16), 321e6, 1.73e9,
       ReferenceActive(50304, 1024, 16, 32, 4, 1024)},
  };
  for (const Row& r : rows) {
    ModelStats s = ComputeModelStats(r.spec);
    EXPECT_EQ(s.active_params, r.reference_active);
    EXPECT_DOUBLE_EQ(ThreeFigures(static_cast<double>(s.active_params)), r.active);
    EXPECT_DOUBLE_EQ(ThreeFigures(static_cast<double>(s.total_params)), r.total);
    const v1::ModelSpec& m = r.spec.model();
    EXPECT_DOUBLE_EQ(s.flops_per_token, 6.0 * static_cast<double>(s.active_params) +
                                            6.0 * m.n_layers() * m.d_model() * m.seq_len());
    EXPECT_EQ(s.params_per_rank, s.total_params);  // one rank holds every expert
    EXPECT_EQ(s.weight_bytes, 4 * s.total_params);
    EXPECT_EQ(s.grad_bytes, 4 * s.total_params);
    EXPECT_EQ(s.optimizer_bytes, 8 * s.total_params);
  }
  // Exact values for tiny: 8 experts of 3 * 384 * 512 per layer, 2 of them active.
  ModelStats tiny = ComputeModelStats(rows[0].spec);
  EXPECT_EQ(tiny.total_params, 31898880);
  EXPECT_EQ(tiny.active_params, 10665216);
}

TEST(ModelStatsTest, VariantsChangeTheCountsAsTheShapesSay) {
  const v1::JobSpec tiny = Reference(65, 384, 6, 6, 8, 2, 512, 256, 64);
  const ModelStats base = ComputeModelStats(tiny);

  v1::JobSpec untied = tiny;
  untied.mutable_model()->set_tie_embeddings(false);
  EXPECT_EQ(ComputeModelStats(untied).total_params - base.total_params, 65 * 384);
  EXPECT_EQ(ComputeModelStats(untied).active_params - base.active_params, 65 * 384);

  v1::JobSpec gqa = tiny;  // wqkv: (H + 2 Hkv) hd x D instead of 3 D x D
  gqa.mutable_model()->set_n_kv_heads(2);
  EXPECT_EQ(base.total_params - ComputeModelStats(gqa).total_params, 6 * 384 * (2 * 4 * 64));

  v1::JobSpec dense = Reference(65, 384, 6, 6, 1, 1, 1024, 256, 64);  // no router
  ModelStats d = ComputeModelStats(dense);
  EXPECT_EQ(d.total_params, d.active_params);
  EXPECT_EQ(d.total_params, 6 * (4 * 384 * 384 + 3 * 384 * 1024 + 2 * 384) + 65 * 384 + 384);

  // Two ranks: each holds half of the experts and the replicated rest.
  v1::JobSpec two = tiny;
  two.mutable_resources()->set_ranks(2);
  ModelStats t = ComputeModelStats(two);
  const int64_t experts = 6 * 8 * 3 * 384 * 512;
  EXPECT_EQ(t.params_per_rank, base.total_params - experts / 2);
  EXPECT_EQ(t.optimizer_bytes, 8 * t.params_per_rank);
  // ... and half of the batch: half of the activations; grad_accum 2 halves them again.
  EXPECT_EQ(t.activation_bytes * 2, base.activation_bytes);
  v1::JobSpec accum = two;
  accum.mutable_train()->set_grad_accum(2);
  EXPECT_NEAR(ComputeModelStats(accum).activation_bytes * 2, t.activation_bytes, 2);
  EXPECT_EQ(ComputeModelStats(accum).weight_bytes, t.weight_bytes);

  // The CPU activation formula of common/memory_estimate.cc, for tiny on one rank (elements per
  // token, fp32): per block the attention half 5 D + 2 + 3 D + H, the MoE half router 2 E + 1,
  // weights, ids and the plan's two tables 4 k, xs, ys 2 k D, expert rows in, out, wire 3 k D,
  // hidden 3 k F; after the blocks 2 D + 3 + V + 4.
  const int64_t tokens = 64 * 256;
  const int64_t per_block = 5 * 384 + 2 + 3 * 384 + 6 + (2 * 8 + 1 + 4 * 2 + 5 * 2 * 384 + 3 * 2 * 512);
  EXPECT_EQ(base.activation_bytes, tokens * (6 * per_block + 2 * 384 + 3 + 65 + 4) * 4);
  // The backward's buffers: 3 D + 3 D, and in the MoE backward 4 k D + 2 k F + k + E.
  EXPECT_EQ(base.workspace_bytes, tokens * (6 * 384 + 4 * 2 * 384 + 2 * 2 * 512 + 2 + 8) * 4);
  EXPECT_EQ(base.runtime_bytes, 0);
  EXPECT_EQ(base.total_bytes, base.weight_bytes + base.grad_bytes + base.optimizer_bytes + base.activation_bytes +
                                  base.workspace_bytes);
}

}  // namespace
}  // namespace moe
