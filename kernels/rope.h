// Rotary position embedding (half-split pairs, base theta: 10000 by default, the job's
// model.attention.rope_theta) on the q and k parts of a fused qkv buffer: each token row is
// [q: h*hd | k: hkv*hd | v: hkv*hd]; v is left alone.
#pragma once

#include <cmath>
#include <cstdint>

namespace moe::kernels {

constexpr float kRopeTheta = 10000.0f;

// cos/sin tables (t, hd/2) in fp32, as reference_moe.py's rope_tables: angle(pos, i) =
// pos / theta^(2i / hd). Both backends take their tables from here.
inline void RopeTables(float* cos_t, float* sin_t, int t, int hd, float theta) {
  const int half = hd / 2;
  for (int i = 0; i < half; ++i) {
    const float inv_freq = 1.0f / std::pow(theta, static_cast<float>(2 * i) / hd);
    for (int pos = 0; pos < t; ++pos) {
      const float angle = static_cast<float>(pos) * inv_freq;
      cos_t[int64_t{pos} * half + i] = std::cos(angle);
      sin_t[int64_t{pos} * half + i] = std::sin(angle);
    }
  }
}

// In place on qkv (b, t, (h + 2 hkv) * hd); position of a row is its index within its sequence.
void RopeForward(float* qkv, int b, int t, int h, int hkv, int hd, float theta = kRopeTheta);
// In place on dqkv: rotates the q and k gradients back (the transpose of the forward rotation).
void RopeBackward(float* dqkv, int b, int t, int h, int hkv, int hd, float theta = kRopeTheta);

}  // namespace moe::kernels
