// Softmax cross-entropy over the vocabulary, fused.
#pragma once

#include <cstdint>

namespace moe::kernels {

// losses (n) = lse(logits[i]) - logits[i, targets[i]] ; lse (n) saved. Returns the sum of losses
// (double). A target < 0 is ignored (loss 0, no gradient).
double CrossEntropyForward(float* losses, float* lse, const float* logits, const int32_t* targets,
                           int n, int v);
// dlogits (n, v) = scale * (softmax(logits) - onehot(target)). Overwrites dlogits, which may
// alias logits. scale is 1 / (tokens in the global batch).
void CrossEntropyBackward(float* dlogits, const float* logits, const float* lse,
                          const int32_t* targets, float scale, int n, int v);

}  // namespace moe::kernels
