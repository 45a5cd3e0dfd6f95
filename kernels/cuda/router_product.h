// The router's fp32 product logits = m @ router^T on the CUDA cores, for the narrow outputs of a
// router (e <= kRouterProductMaxExperts): a tile of 64 tokens by 16, 32 or 64 experts a block.
// fp32 throughout, d summed in one fixed order per output: the same bits every run, within fp32
// rounding of the cuBLAS product that stays the oracle (CudaContext::Linear with fp32, used for
// wider routers). Measured on an H100 (2026-12-07), with the router kernels' shared-memory tiles
// (router.cu) in the same build: fine64's forward 41.7 ms against 45.0 ms before, medium's 50.9
// against 52.2 (one round of `scripts/device_ab.sh`). Alone, at 16384 tokens, it beats cuBLAS at
// e = 8 (36 against 43 us) but not at 32 (58 against 52) or 64 (88 against 68): which of the two
// changes the step's gain comes from was not measured (the call that would split them never ran).
#pragma once

#include <cstdint>

#include "kernels/cuda/common.h"

namespace moe::cuda {

inline constexpr int kRouterProductMaxExperts = 64;

// logits (n, e) = m (n, d) @ w^T, w (e, d) row-major (the router weight's layout); all fp32 on
// the device. e in [1, kRouterProductMaxExperts], d >= 1.
void RouterProduct(float* logits, const float* m, const float* w, int n, int d, int e, cudaStream_t stream);

}  // namespace moe::cuda
