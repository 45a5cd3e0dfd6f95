// Causal self-attention with grouped KV heads: query head i reads kv head i / (h / hkv).
// Works on the fused qkv buffer: each token row is [q: h*hd | k: hkv*hd | v: hkv*hd].
#pragma once

namespace moe::kernels {

// out (b, t, h*hd) = softmax(q k^T / sqrt(hd) + causal) v ; lse (b, h, t) saved for backward
// (log-sum-exp of each score row, so backward recomputes probabilities without storing them).
void AttentionForward(float* out, float* lse, const float* qkv, int b, int t, int h, int hkv, int hd);
// dqkv (b, t, (h + 2 hkv) * hd) += .
void AttentionBackward(float* dqkv, const float* dout, const float* out, const float* lse,
                       const float* qkv, int b, int t, int h, int hkv, int hd);

}  // namespace moe::kernels
