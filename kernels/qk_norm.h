// QK-norm (model.attention.qk_norm): every q head and every k head vector of a fused qkv buffer
// is RMS-normalised over its hd values and scaled by a per-block weight shared by the heads
// (q_norm for q heads, k_norm for k heads), after the split and before RoPE. v is left alone.
// Each token row of qkv is [q: h*hd | k: hkv*hd | v: hkv*hd].
#pragma once

#include <cstdint>

namespace moe::kernels {

// In place on qkv (n, (h + 2 hkv) hd). rstd (n, h + hkv): 1 / sqrt(mean(x^2) + eps) of each
// q then k head vector. raw (n, (h + hkv) hd) receives the q and k values before the norm, for
// the backward; null when no backward follows (inference).
void QkNormForward(float* qkv, float* rstd, float* raw, const float* q_weight, const float* k_weight,
                   int64_t n, int h, int hkv, int hd, float eps);

// In place on dqkv's q and k parts: the gradient with respect to the normalised vectors becomes
// the gradient with respect to the raw ones. dq_weight, dk_weight (hd) += (may be null).
void QkNormBackward(float* dqkv, float* dq_weight, float* dk_weight, const float* raw, const float* rstd,
                    const float* q_weight, const float* k_weight, int64_t n, int h, int hkv, int hd);

}  // namespace moe::kernels
