// Rotary position embedding (half-split pairs, theta 10000) on the q and k parts of a fused
// qkv buffer: each token row is [q: h*hd | k: hkv*hd | v: hkv*hd]; v is left alone.
#pragma once

namespace moe::kernels {

constexpr float kRopeTheta = 10000.0f;

// In place on qkv (b, t, (h + 2 hkv) * hd); position of a row is its index within its sequence.
void RopeForward(float* qkv, int b, int t, int h, int hkv, int hd);
// In place on dqkv: rotates the q and k gradients back (the transpose of the forward rotation).
void RopeBackward(float* dqkv, int b, int t, int h, int hkv, int hd);

}  // namespace moe::kernels
