// Gated attention (model.attention.gate, the G1 position of Qiu et al. 2025): each head's
// attention output is multiplied elementwise by sigmoid(a @ wg^T), a the block's normalised
// input. The matmul is the model's (LinearForward / LinearBackward with wg); this is the gate.
#pragma once

#include <cstdint>

namespace moe::kernels {

// count = n h hd floats in each buffer.
// gate (n, h hd): the gate logits a @ wg^T in, sigmoid of them out (in place).
// out (n, h hd) = y * gate ; y is the attention output (kept for the backward). out may alias y
// only when no backward follows.
void AttentionGateForward(float* out, float* gate, const float* y, int64_t count);

// dy (n, h hd) += dout * gate ; dlogits (n, h hd) = dout * y * gate (1 - gate) (overwritten; may
// alias dout): the gradient of the gate logits, for LinearBackward with wg.
void AttentionGateBackward(float* dy, float* dlogits, const float* dout, const float* y, const float* gate,
                           int64_t count);

}  // namespace moe::kernels
