// What the MoE layer's .cu files share and callers never see: the router's expert limit, the row
// count of per-expert counts, and the copy of layout rows to fp32 (expert_layout.cu defines it).
#pragma once

#include <cstdint>
#include <cstdio>
#include <cstdlib>

#include "kernels/cuda/common.h"
#include "kernels/cuda/expert_layout.h"

namespace moe::cuda::internal {

// The router and the routing plan keep one value per expert in shared memory, and the router
// its picks of a token in registers (common/backend_limits.h states the same limits to users).
constexpr int kMaxExperts = 512;
constexpr int kMaxTopK = 8;

inline void CheckExperts(int e) {
  if (e > kMaxExperts) {
    std::fprintf(stderr, "cuda router: %d experts, at most %d supported\n", e, kMaxExperts);
    std::abort();
  }
}

inline void CheckTopK(int k) {
  if (k < 1 || k > kMaxTopK) {
    std::fprintf(stderr, "cuda router: top-k %d, between 1 and %d supported\n", k, kMaxTopK);
    std::abort();
  }
}

inline int64_t CountSum(const int32_t* host_counts, int e_local) {
  int64_t rows = 0;
  for (int x = 0; x < e_local; ++x) rows += host_counts[x];
  return rows;
}

// Rows of `blocks` from bf16 src (rows of d) to fp32 out: out = src, or out += src (accumulate).
void RowBlocksToFloat(float* out, const bf16* src, const RowBlocks& blocks, int d, bool accumulate,
                      cudaStream_t stream);

}  // namespace moe::cuda::internal
