// ParamLayout (worker/model/param_layout.h): each tensor's block index is the one its name
// carries, the blocks' replicated tensors lie contiguous (the GPU's gradient buckets and the
// overlapped update's groups read ParamInfo::block), and Muon takes only the blocks' matrices.
#include <cstdlib>
#include <string>

#include "gtest/gtest.h"
#include "tests/support/test_jobs.h"
#include "worker/model/param_layout.h"

namespace moe {
namespace {

// The block index a state_dict name carries ("blocks.L."), or -1.
int BlockOfName(const std::string& name) {
  if (name.rfind("blocks.", 0) != 0) return -1;
  return std::atoi(name.c_str() + 7);
}

TEST(ParamLayout, BlockIndexMatchesTheNameAndTheBlocksAreContiguous) {
  for (int world : {1, 2}) {
    for (int experts : {1, 4}) {
      testing::ModelCase c{"case", experts, experts > 1 ? 2 : 1, 4, 2, 0, /*tied=*/false, 0};
      ModelConfig cfg = testing::CaseConfig(c, 50, 32, 16, 48);
      cfg.layers = 3;
      cfg.qk_norm = true;
      cfg.attn_gate = true;
      cfg.shared_experts = 1;
      cfg.shared_ffn = 24;
      const ParamLayout layout(cfg, /*rank=*/world - 1, world);
      int last_dense_block = -1;
      int64_t dense_end[3] = {0, 0, 0};
      for (const ParamInfo& p : layout.params()) {
        SCOPED_TRACE(p.name);
        EXPECT_EQ(p.block, BlockOfName(p.name));
        EXPECT_LT(p.block, cfg.layers);
        if (p.block < 0) {
          EXPECT_FALSE(p.muon);
        }
        if (p.expert || p.block < 0) continue;
        // Replicated block tensors: block by block, each block's right after its previous one.
        EXPECT_GE(p.block, last_dense_block);
        if (p.block == last_dense_block) {
          EXPECT_EQ(p.offset, dense_end[p.block]);
        }
        last_dense_block = p.block;
        dense_end[p.block] = p.offset + p.size;
      }
      EXPECT_EQ(last_dense_block, cfg.layers - 1);
    }
  }
}

}  // namespace
}  // namespace moe
