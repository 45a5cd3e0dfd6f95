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

// Four floats to four bf16 at dst (8-byte aligned), each rounded to nearest even as
// __float2bfloat16 rounds: one 8-byte store.
__device__ __forceinline__ void StoreBf16x4(bf16* dst, float4 v) {
  const __nv_bfloat162 lo = __floats2bfloat162_rn(v.x, v.y), hi = __floats2bfloat162_rn(v.z, v.w);
  uint2 bits;
  memcpy(&bits.x, &lo, sizeof(bits.x));
  memcpy(&bits.y, &hi, sizeof(bits.y));
  *reinterpret_cast<uint2*>(dst) = bits;
}

// Four bf16 at src (8-byte aligned) as four floats (exact): one 8-byte load.
__device__ __forceinline__ float4 LoadBf16x4(const bf16* src) {
  const uint2 bits = *reinterpret_cast<const uint2*>(src);
  __nv_bfloat162 lo, hi;
  memcpy(&lo, &bits.x, sizeof(lo));
  memcpy(&hi, &bits.y, sizeof(hi));
  const float2 a = __bfloat1622float2(lo), b = __bfloat1622float2(hi);
  return make_float4(a.x, a.y, b.x, b.y);
}

// RoPE's rotation of the pair (a, c) by the angle whose cosine is cs and sine s (the sine's
// negative for the backward): each product and sum rounded on its own, no fused multiply-add, so
// that every kernel that rotates (rope.cu's; the attention backward's stores) gives the same bits.
__device__ __forceinline__ void RopeRotate(float a, float c, float cs, float s, float& na, float& nc) {
  na = __fsub_rn(__fmul_rn(a, cs), __fmul_rn(c, s));
  nc = __fadd_rn(__fmul_rn(a, s), __fmul_rn(c, cs));
}

// kernels::SplitMix64 and kernels::CounterUniform, bit for bit: a kernel takes the seed mixed once
// on the host (SplitMix64(seed)) and draws CounterUniformMixed(mixed, counter), the top 24 bits of
// one more mix of (mixed ^ counter) as a float in [0, 1). Dropout and attention dropout share it.
__host__ __device__ __forceinline__ uint64_t SplitMix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}
__device__ __forceinline__ float CounterUniformMixed(uint64_t mixed_seed, uint64_t counter) {
  const uint64_t bits = SplitMix64(mixed_seed ^ counter);
  return static_cast<float>(bits >> 40) * (1.0f / 16777216.0f);
}

}  // namespace moe::cuda::internal

#define MOE_GRID_STRIDE(i, n)                                                              \
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < (n); \
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
