// Device side of kernels/cuda/state_codec.h: reading and writing stored optimizer state and
// weights, for the .cu files whose updates go through them (state_codec.cu, muon.cu). The
// arithmetic that must match the CPU bit for bit uses the _rn intrinsics, which the compiler
// never fuses into multiply-adds (the CPU build does not either).
#pragma once

#include <cstdint>

#include "kernels/cuda/device.cuh"
#include "kernels/cuda/state_codec.h"

namespace moe::cuda::internal {

using kernels::StateFormat;

// Threads per state block in the int8 kernels (one thread block per state block): each thread
// holds kStateBlock / kStateThreads values in registers between the decode and the encode.
inline constexpr int kStateThreads = 256;
inline constexpr int kStatePerThread = kernels::kStateBlock / kStateThreads;
static_assert(kernels::kStateBlock % kStateThreads == 0, "a state block splits evenly over its threads");

// Element i of an fp32 or bf16 state buffer, and back.
template <StateFormat F>
__device__ __forceinline__ float LoadState(const StateRef& s, int64_t i) {
  if constexpr (F == StateFormat::kBf16) {
    return kernels::FromBf16Bits(static_cast<const uint16_t*>(s.values)[i]);
  } else {
    return static_cast<const float*>(s.values)[i];
  }
}
template <StateFormat F>
__device__ __forceinline__ void StoreState(const StateRef& s, int64_t i, float x) {
  if constexpr (F == StateFormat::kBf16) {
    static_cast<uint16_t*>(s.values)[i] = kernels::Bf16Bits(x);
  } else {
    static_cast<float*>(s.values)[i] = x;
  }
}

// kernels::DecodeInt8Block for one value: code[q] * scale.
__device__ __forceinline__ float DecodeInt8(const float* code, uint8_t q, float scale) {
  return __fmul_rn(code[q], scale);
}
// kernels::EncodeInt8Block for one value of a block whose largest |value| is absmax.
__device__ __forceinline__ uint8_t EncodeInt8(const float* code, float x, float absmax) {
  return static_cast<uint8_t>(kernels::NearestCode(code, absmax > 0.f ? __fdiv_rn(x, absmax) : 0.f));
}

// The largest v over the kStateThreads threads of the block, to every thread (NaN ignored, as
// std::max on the CPU). scratch: kStateThreads / 32 floats of shared memory used by no one else.
__device__ __forceinline__ float BlockMax(float v, float* scratch) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  if (threadIdx.x % 32 == 0) scratch[threadIdx.x / 32] = v;
  __syncthreads();
  float m = 0.f;
  for (int w = 0; w < kStateThreads / 32; ++w) m = fmaxf(m, scratch[w]);
  return m;
}

// The code table of an int8 state into shared memory (every thread calls it; it syncs).
__device__ __forceinline__ void LoadCode(float* shared_code, const float* code) {
  for (int j = threadIdx.x; j < kernels::kInt8CodeSize; j += blockDim.x) shared_code[j] = code[j];
  __syncthreads();
}

// Weight i as fp32 (from the fp32 weights when there are, else the bf16 ones).
__device__ __forceinline__ float LoadWeight(const WeightsRef& w, int64_t i) {
  return w.f32 != nullptr ? w.f32[i] : __bfloat162float(w.b16[i]);
}
// Weight i = p: stochastically rounded to bf16 (master_weights bf16; the CPU's draw, see
// WeightsRef), else fp32 and its bf16 copy rounded to nearest.
__device__ __forceinline__ void StoreWeight(const WeightsRef& w, int64_t i, float p) {
  if (w.stochastic) {
    // kernels::CounterUniform(key, c) * 2^24 = the top 24 bits of the draw, exactly.
    const uint64_t draw = SplitMix64(w.round_seed ^ static_cast<uint64_t>(w.round_first + i));
    const uint16_t bits = kernels::Bf16BitsStochastic(p, static_cast<uint32_t>(draw >> 40));
    if (w.f32 != nullptr) w.f32[i] = kernels::FromBf16Bits(bits);
    if (w.b16 != nullptr) w.b16[i] = __ushort_as_bfloat16(bits);
  } else {
    if (w.f32 != nullptr) w.f32[i] = p;
    if (w.b16 != nullptr) w.b16[i] = __float2bfloat16(p);
  }
}

}  // namespace moe::cuda::internal
