// Dropout with a counter-based RNG: element i keeps with probability 1 - p, decided by a hash
// of (seed, offset + i) alone, so any backend and any split of the batch over ranks draws the
// same mask for the same global element.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define MOE_HOST_DEVICE __host__ __device__
#else
#define MOE_HOST_DEVICE
#endif

namespace moe::kernels {

// Attention dropout draws CounterUniform(AttentionDropoutSeed(..), counter) for the probability
// of query token i attending to key j in head h: query is i's global token index (the batch's
// first token over all ranks + b * T + i), so any number of ranks draws the same masks.
inline MOE_HOST_DEVICE uint64_t AttentionDropoutCounter(uint64_t query, int head, int heads,
                                                        int seq_len, int key) {
  return (query * static_cast<uint64_t>(heads) + static_cast<uint64_t>(head)) *
             static_cast<uint64_t>(seq_len) + static_cast<uint64_t>(key);
}

// splitmix64's output function: a bijective 64-bit mix (Steele, Lea, Flood 2014). The one hash
// behind every counter-based draw (dropout masks, data sampling, dropout site seeds).
uint64_t SplitMix64(uint64_t x);

// A uniform float in [0, 1) from (seed, counter): the one RNG every backend implements.
float CounterUniform(uint64_t seed, uint64_t counter);

// out = in * keep / (1 - p). p == 0 copies. out may alias in.
void DropoutForward(float* out, const float* in, int64_t n, float p, uint64_t seed, uint64_t offset);
// din += dout * keep / (1 - p).
void DropoutBackward(float* din, const float* dout, int64_t n, float p, uint64_t seed,
                     uint64_t offset);

}  // namespace moe::kernels
