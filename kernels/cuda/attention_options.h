// The attention options on the GPU (MODEL.md "Options: Attention"), fp32 twins of
// kernels/qk_norm.h and kernels/attention_gate.h with the same arguments and accumulation rules.
#pragma once

#include <cstdint>

#include "kernels/cuda/common.h"

namespace moe::cuda {

// QK-norm in place on qkv (n, (h + 2 hkv) hd); rstd (n, h + hkv); raw (n, (h + hkv) hd) gets
// the values before the norm (may be null). eps: RMSNorm's epsilon (model.norm_eps).
void QkNormForward(float* qkv, float* rstd, float* raw, const float* q_weight, const float* k_weight, int64_t n,
                   int h, int hkv, int hd, float eps, cudaStream_t stream);
// In place on dqkv's q and k parts; dq_weight, dk_weight (hd) += (may be null), summed in a fixed
// order (reduce.h: partials is scratch for PartialsFloats(2 hd) floats). hd <= 256.
void QkNormBackward(float* dqkv, float* dq_weight, float* dk_weight, const float* raw, const float* rstd,
                    const float* q_weight, const float* k_weight, int64_t n, int h, int hkv, int hd,
                    float* partials, cudaStream_t stream);

// gate (count): logits in, sigmoid out; out = y * gate (out may alias y when no backward follows).
void AttentionGateForward(float* out, float* gate, const float* y, int64_t count, cudaStream_t stream);
// out = y * gate, gate already the sigmoid (the backward's recomputation of the gated output).
void AttentionGateApply(float* out, const float* y, const float* gate, int64_t count, cudaStream_t stream);
// The same two in bf16 (the wo product's operand alone, rounded as CastToBf16 rounds).
void AttentionGateForwardBf16(bf16* out, float* gate, const float* y, int64_t count, cudaStream_t stream);
void AttentionGateApplyBf16(bf16* out, const float* y, const float* gate, int64_t count, cudaStream_t stream);
// dy += dout * gate (dy = when accumulate is false: no clearing pass before it);
// dlogits = dout * y * gate (1 - gate); dlogits may alias dout.
void AttentionGateBackward(float* dy, float* dlogits, const float* dout, const float* y, const float* gate,
                           int64_t count, cudaStream_t stream, bool accumulate = true);

}  // namespace moe::cuda
