// Muon's Newton-Schulz plan (kernels/muon_plan.h): tensors grouped by wide shape in order, groups
// cut into chunks at the workspace cap without splitting a tensor, the workspace fitting every
// chunk; and the CUDA memory estimate counting that workspace for Muon jobs.
#include <cstdint>
#include <vector>

#include "common/memory_estimate.h"
#include "common/model_stats.h"
#include "gtest/gtest.h"
#include "kernels/muon_plan.h"

namespace moe {
namespace {

using kernels::MuonChunk;
using kernels::MuonStride;
using kernels::MuonTensorShape;
using kernels::MuonWorkspaceSize;
using kernels::PlanMuonChunks;

TEST(MuonPlan, GroupsByWideShapeInOrder) {
  // Two layers of wqkv (48 x 16), wo (16 x 16), w1 (4, 16, 48), w2 (4, 48, 16).
  const std::vector<MuonTensorShape> t = {{1, 48, 16}, {1, 16, 16}, {1, 48, 16}, {1, 16, 16},
                                          {4, 16, 48}, {4, 48, 16}, {4, 16, 48}, {4, 48, 16}};
  MuonWorkspaceSize size;
  const std::vector<MuonChunk> chunks = PlanMuonChunks(t, &size);
  ASSERT_EQ(chunks.size(), 2u);
  EXPECT_EQ(chunks[0].tensors, (std::vector<size_t>{0, 2, 4, 5, 6, 7}));
  EXPECT_EQ(chunks[0].batch, 18);
  EXPECT_EQ(chunks[1].tensors, (std::vector<size_t>{1, 3}));
  EXPECT_EQ(chunks[1].batch, 2);
  EXPECT_EQ(size.elements, 18 * MuonStride(16 * 48));
  EXPECT_EQ(size.gram, 18 * MuonStride(16 * 16));
  EXPECT_EQ(size.batch, 18);
  EXPECT_EQ(size.partials, 18);  // one chunk of kMuonNormChunk each
}

TEST(MuonPlan, ChunksAtTheCapWithoutSplittingATensor) {
  // Config small's expert tensors: 8 matrices of 768 x 1536, 36 of them (w1, w3, w2 x 12 layers).
  std::vector<MuonTensorShape> t;
  for (int l = 0; l < 12; ++l) {
    t.push_back({8, 1536, 768});
    t.push_back({8, 1536, 768});
    t.push_back({8, 768, 1536});
  }
  MuonWorkspaceSize size;
  const std::vector<MuonChunk> chunks = PlanMuonChunks(t, &size);
  const int64_t per_tensor = 8 * MuonStride(768 * 1536);
  const int64_t per_chunk = kernels::kMuonWorkspaceCapElements / per_tensor;  // 14 tensors
  ASSERT_EQ(chunks.size(), static_cast<size_t>((36 + per_chunk - 1) / per_chunk));
  size_t next = 0;
  for (const MuonChunk& c : chunks) {
    EXPECT_LE(static_cast<int64_t>(c.tensors.size()) * per_tensor, kernels::kMuonWorkspaceCapElements);
    EXPECT_EQ(c.batch, 8 * static_cast<int64_t>(c.tensors.size()));
    for (size_t j : c.tensors) EXPECT_EQ(j, next++);
  }
  EXPECT_EQ(next, t.size());
  EXPECT_EQ(size.elements, per_chunk * per_tensor);
  EXPECT_EQ(size.batch, 8 * per_chunk);
  EXPECT_EQ(size.partials, 8 * per_chunk * (768 * 1536 / kernels::kMuonNormChunk));
  EXPECT_EQ(size.Bytes(true), 6 * size.elements + 4 * size.gram + 8 * (size.batch + size.partials));
}

TEST(MuonPlan, ATensorOverTheCapRaisesItAndRunsAlone) {
  const std::vector<MuonTensorShape> t = {{1, 64, 64}, {40000, 64, 64}, {1, 64, 64}};
  ASSERT_GT(40000 * MuonStride(64 * 64), kernels::kMuonWorkspaceCapElements);
  MuonWorkspaceSize size;
  const std::vector<MuonChunk> chunks = PlanMuonChunks(t, &size);
  ASSERT_EQ(chunks.size(), 3u);
  for (size_t j = 0; j < 3; ++j) EXPECT_EQ(chunks[j].tensors, std::vector<size_t>{j});
  EXPECT_EQ(size.elements, 40000 * MuonStride(64 * 64));
}

TEST(MuonPlan, CudaMemoryEstimateCountsTheWorkspace) {
  v1::JobSpec spec;
  v1::ModelSpec* m = spec.mutable_model();
  m->set_d_model(768);
  m->set_n_layers(12);
  m->set_n_heads(12);
  m->set_seq_len(1024);
  m->set_vocab_size(50304);
  m->mutable_moe()->set_num_experts(8);
  m->mutable_moe()->set_top_k(2);
  m->mutable_moe()->set_expert_hidden(1536);
  spec.mutable_resources()->set_device(v1::DEVICE_CUDA);
  spec.mutable_resources()->set_ranks(1);
  spec.mutable_train()->set_batch_size(16);
  spec.mutable_train()->set_precision(v1::PRECISION_BF16);
  const RankParams p = CountRankParams(spec);
  const MemoryEstimate adamw = EstimateMemory(spec, p);
  spec.mutable_train()->set_optimizer(v1::OPTIMIZER_MUON);
  const MemoryEstimate muon = EstimateMemory(spec, p);
  // The expert group is the largest (768 x 1536 matrices, capped); wqkv and wo are smaller.
  std::vector<MuonTensorShape> experts(36, MuonTensorShape{8, 1536, 768});
  MuonWorkspaceSize size;
  PlanMuonChunks(experts, &size);
  EXPECT_EQ(muon.workspace - adamw.workspace, size.Bytes(true));
  EXPECT_EQ(muon.total - adamw.total, size.Bytes(true));
}

}  // namespace
}  // namespace moe
