#include "kernels/dropout.h"

namespace moe::kernels {

uint64_t SplitMix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

float CounterUniform(uint64_t seed, uint64_t counter) {
  // The seed is mixed once and xor-ed with the counter, then mixed again: for a fixed seed the
  // map counter -> bits is a bijection, so no two elements of one mask share a draw.
  // The top 24 bits give an exact float in [0, 1).
  const uint64_t bits = SplitMix64(SplitMix64(seed) ^ counter);
  return static_cast<float>(bits >> 40) * (1.0f / 16777216.0f);
}

void DropoutForward(float* out, const float* in, int64_t n, float p, uint64_t seed,
                    uint64_t offset) {
  if (p == 0.0f) {
    if (out == in) return;
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; ++i) out[i] = in[i];
    return;
  }
  const float scale = 1.0f / (1.0f - p);
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    out[i] = CounterUniform(seed, offset + i) >= p ? in[i] * scale : 0.0f;
  }
}

void DropoutBackward(float* din, const float* dout, int64_t n, float p, uint64_t seed,
                     uint64_t offset) {
  if (p == 0.0f) {
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; ++i) din[i] += dout[i];
    return;
  }
  const float scale = 1.0f / (1.0f - p);
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    if (CounterUniform(seed, offset + i) >= p) din[i] += dout[i] * scale;
  }
}

}  // namespace moe::kernels
