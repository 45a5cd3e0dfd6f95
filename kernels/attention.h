// Causal self-attention with grouped KV heads: query head i reads kv head i / (h / hkv).
// Works on the fused qkv buffer: each token row is [q: h*hd | k: hkv*hd | v: hkv*hd].
#pragma once

#include <cstdint>

namespace moe::kernels {

// Attention dropout (model.attention.dropout, training only): probability [i, j] of head h in
// sequence b is zeroed with probability p and the kept ones scaled by 1 / (1 - p), the draw
// CounterUniform(seed, AttentionDropoutCounter(first_token + b T + i, h, H, T, j)) (dropout.h),
// so any split of the batch over ranks draws the same masks. p == 0: no dropout.
struct AttentionDropout {
  float p = 0.0f;
  uint64_t seed = 0;         // AttentionDropoutSeed(step seed, layer)
  int64_t first_token = 0;   // global index of this batch's first token
};

// out (b, t, h*hd) = softmax(q k^T / sqrt(hd) + causal) v ; lse (b, h, t) saved for backward
// (log-sum-exp of each score row, so backward recomputes probabilities without storing them;
// the undropped softmax's, also under dropout).
void AttentionForward(float* out, float* lse, const float* qkv, int b, int t, int h, int hkv, int hd,
                      const AttentionDropout& dropout = {});
// dqkv (b, t, (h + 2 hkv) * hd) += . dropout: the forward's.
void AttentionBackward(float* dqkv, const float* dout, const float* out, const float* lse,
                       const float* qkv, int b, int t, int h, int hkv, int hd,
                       const AttentionDropout& dropout = {});

}  // namespace moe::kernels
