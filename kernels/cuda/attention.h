// Causal self-attention with grouped KV heads on the GPU, flash style: no (t, t) score matrix
// is stored; forward keeps the log-sum-exp of each score row, backward recomputes the
// probabilities from it. Same layouts and conventions as kernels/attention.h: the fused qkv
// buffer's rows are [q: h*hd | k: hkv*hd | v: hkv*hd]. Two paths: fp32 SIMT (AttentionForward /
// AttentionBackward; fp32 jobs, and the oracle for the fast path) and tensor cores
// (...Bf16; bf16 jobs). hd in {8, 16, 32, 64}.
#pragma once

#include "kernels/cuda/common.h"

namespace moe::cuda {

// out (b, t, h*hd), lse (b, h, t).
void AttentionForward(float* out, float* lse, const float* qkv, int b, int t, int h, int hkv, int hd,
                      cudaStream_t stream);
// dqkv (b, t, (h + 2 hkv) hd) += . scratch: b * h * t floats (rowsum(dout * out)).
void AttentionBackward(float* dqkv, const float* dout, const float* out, const float* lse,
                       const float* qkv, int b, int t, int h, int hkv, int hd, float* scratch,
                       cudaStream_t stream);

// The same on tensor cores (mma.sync bf16, fp32 accumulation; fp32 softmax statistics, P and dS
// rounded to bf16), reading q, k, v from qkv16 (qkv in bf16, same layout) and, backward, dout
// from dout16 (dout in bf16); out, lse, dqkv and the statistics stay fp32. Agrees with the fp32
// path to bf16 rounding (about 1e-2 relative). hd 16, 32, 64; any other hd (or a buffer not
// 16-byte aligned) takes the fp32 path on qkv and dout.
void AttentionForwardBf16(float* out, float* lse, const float* qkv, const bf16* qkv16, int b, int t, int h,
                          int hkv, int hd, cudaStream_t stream);
void AttentionBackwardBf16(float* dqkv, const float* dout, const bf16* dout16, const float* out, const float* lse,
                           const float* qkv, const bf16* qkv16, int b, int t, int h, int hkv, int hd, float* scratch,
                           cudaStream_t stream);

}  // namespace moe::cuda
