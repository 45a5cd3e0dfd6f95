// Compact storage of optimizer state and weights (MODEL.md "Memory"): AdamW's m and v and Muon's
// momentum as bf16 or as int8 blocks, and bf16 weights rounded stochastically. The arithmetic
// stays fp32: a block is decoded, updated and encoded again. The codes and the rounding are
// plain functions both backends call (the CUDA kernels include this header's inline parts).
#pragma once

#include <cstdint>
#include <cstring>
#include <vector>

#include "kernels/dropout.h"

namespace moe::kernels {

// How train.optimizer_state stores one buffer (worker/model/optimizer_state.h on the CPU,
// kernels/cuda/state_codec.h on the GPU: byte for byte the same layout).
enum class StateFormat { kFp32, kBf16, kInt8 };

// int8 state: blocks of at most this many values, one fp32 scale (the block's largest |x|) each.
constexpr int kStateBlock = 2048;
constexpr int kInt8CodeSize = 256;

// The 256 values an int8 state byte stands for, in [-1, 1] (signed: m, Muon's momentum) or
// [0, 1] (unsigned: v), ascending. Non-linear, as in 8-bit Adam: most codes sit near zero,
// spaced geometrically over seven decades, so small moments keep their relative precision.
const std::vector<float>& Int8Code(bool is_signed);

// The index of the code nearest v in a table of kInt8CodeSize ascending values (the lower one on
// a tie; below the table 0, above it the last). Both backends encode through this.
MOE_HOST_DEVICE inline int NearestCode(const float* code, float v) {
  int lo = 0, count = kInt8CodeSize;  // lo ends at the first code >= v (std::lower_bound)
  while (count > 0) {
    const int half = count / 2;
    if (code[lo + half] < v) {
      lo += half + 1;
      count -= half + 1;
    } else {
      count = half;
    }
  }
  if (lo == 0) return 0;
  if (lo == kInt8CodeSize) return kInt8CodeSize - 1;
  return (v - code[lo - 1] <= code[lo] - v) ? lo - 1 : lo;
}

// q[i] = the code nearest x[i] / scale, scale = max |x| over the block (0 -> all zero codes).
void EncodeInt8Block(const float* x, int n, bool is_signed, uint8_t* q, float* scale);
// x[i] = code[q[i]] * scale.
void DecodeInt8Block(const uint8_t* q, int n, bool is_signed, float scale, float* x);

// bf16 by round-to-nearest-even (finite values; NaN stays NaN).
MOE_HOST_DEVICE inline uint16_t Bf16Bits(float x) {
  uint32_t u;
  memcpy(&u, &x, 4);
  if ((u & 0x7f800000u) == 0x7f800000u && (u & 0x007fffffu) != 0) return static_cast<uint16_t>((u >> 16) | 0x40);
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}
MOE_HOST_DEVICE inline float FromBf16Bits(uint16_t b) {
  const uint32_t u = static_cast<uint32_t>(b) << 16;
  float x;
  memcpy(&x, &u, 4);
  return x;
}
// x[0, n) in place to the nearest bf16 values (kept as fp32), on every OpenMP thread.
void RoundToBf16Values(float* x, int64_t n);
// bf16 by stochastic rounding: up with probability equal to the dropped fraction, from the
// counter-based RNG (the same draw for the same (seed, counter) on every rank and backend), so
// that updates smaller than a bf16 step still move the weight on average.
MOE_HOST_DEVICE inline uint16_t Bf16BitsStochastic(float x, uint32_t random24) {
  uint32_t u;
  memcpy(&u, &x, 4);
  if ((u & 0x7f800000u) == 0x7f800000u) return Bf16Bits(x);  // inf, NaN
  // The low 16 bits against a uniform 16-bit threshold (the top 16 of the 24 random bits).
  const uint32_t low = u & 0xffffu, threshold = (random24 >> 8) & 0xffffu;
  u = (u & 0xffff0000u) + (low > threshold ? 0x10000u : 0u);
  return static_cast<uint16_t>(u >> 16);
}

}  // namespace moe::kernels
