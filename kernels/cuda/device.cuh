// What the .cu files share on the device side: the block size, the grid-stride loop and warp
// sums. Device code, for .cu files only (common.h is the part plain C++ includes).
#pragma once

#include <algorithm>
#include <cstdint>

#include "kernels/cuda/common.h"

namespace moe::cuda::internal {

// Threads per block of the elementwise, row-wise and MoE kernels.
inline constexpr int kThreads = 256;

// Grid-stride loops over at most this many blocks.
inline unsigned GridFor(int64_t n) { return std::min<unsigned>(BlocksFor(n, kThreads), 65535u); }

__device__ __forceinline__ float WarpSum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ double WarpSumD(double v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

}  // namespace moe::cuda::internal

#define MOE_GRID_STRIDE(i, n)                                                              \
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < (n); \
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
