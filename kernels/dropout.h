// Dropout with a counter-based RNG: element i keeps with probability 1 - p, decided by a hash
// of (seed, offset + i) alone, so any backend and any split of the batch over ranks draws the
// same mask for the same global element.
#pragma once

#include <cstdint>

namespace moe::kernels {

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
