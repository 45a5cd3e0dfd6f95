// Causal self-attention with grouped KV heads on the GPU, flash style: no (t, t) score matrix
// is stored; forward keeps the log-sum-exp of each score row, backward recomputes the
// probabilities from it. Same layouts and conventions as kernels/attention.h: the fused qkv
// buffer's rows are [q: h*hd | k: hkv*hd | v: hkv*hd]. Two paths: fp32 SIMT (AttentionForward /
// AttentionBackward; fp32 jobs, and the oracle for the fast path; attention_fp32.cu) and tensor
// cores (...Bf16; bf16 jobs; attention_tc.cu). Any head size hd that is a multiple of 8 up to 256
// (common/backend_limits.h): the kernels are built for a few padded head sizes and read the
// columns past hd as zeros.
#pragma once

#include <cstdint>

#include "kernels/cuda/common.h"

namespace moe::cuda {

// Attention dropout (model.attention.dropout, MODEL.md) inside the kernels, training only: the
// probability of query i attending to key j in head hh of sequence bi is kept when
// kernels::CounterUniform(seed, kernels::AttentionDropoutCounter(first_token + bi t + i, hh, h,
// t, j)) >= p, and kept ones are scaled by 1 / (1 - p): the CPU's masks, bit for bit. The
// log-sum-exp stays that of the undropped softmax; the backward draws the same masks.
struct AttentionDropout {
  float p = 0.0f;           // 0: off
  uint64_t seed = 0;        // the layer's seed for this micro-step (TrainModel's AttentionDropoutSeed)
  int64_t first_token = 0;  // global index of this rank's first token (BatchContext::first_token)
};

// out (b, t, h*hd), lse (b, h, t).
void AttentionForward(float* out, float* lse, const float* qkv, int b, int t, int h, int hkv, int hd,
                      const AttentionDropout& drop, cudaStream_t stream);
// dqkv (b, t, (h + 2 hkv) hd) += . scratch: b * h * t floats (rowsum(dout * out)).
void AttentionBackward(float* dqkv, const float* dout, const float* out, const float* lse,
                       const float* qkv, int b, int t, int h, int hkv, int hd, float* scratch,
                       const AttentionDropout& drop, cudaStream_t stream);

// The same for bf16 jobs. Without attention dropout these go to cuDNN's fused attention first
// (kernels/cuda/cudnn_sdpa.h: the forward where out16 is given, the backward in
// AttentionRopeBackwardBf16), whose outputs agree with the kernels below to bf16 rounding; the
// rest of this comment is about those kernels.
// On tensor cores (mma.sync bf16, fp32 accumulation; fp32 softmax statistics, P and dS
// rounded to bf16), reading q, k, v from qkv16 (qkv in bf16, same layout) and, backward, dout
// from dout16 (dout in bf16); out, lse, dqkv and the statistics stay fp32. Agrees with the fp32
// path to bf16 rounding (about 1e-2 relative). hd 16 to 256; hd 8 (or a buffer not 16-byte
// aligned) takes the fp32 path on qkv and dout.
// out16 (may be null): out in bf16 as well, the bits CastToBf16 of out gives (wo's product input).
// out may be null where the tensor cores run (CudaAttentionOnTensorCores(hd), 16-byte aligned
// buffers): out16 alone is written, and the backward then takes it in place of out.
void AttentionForwardBf16(float* out, float* lse, const float* qkv, const bf16* qkv16, int b, int t, int h,
                          int hkv, int hd, const AttentionDropout& drop, cudaStream_t stream, bf16* out16 = nullptr);
// AttentionBackwardBf16 adds to dqkv as AttentionBackward does, or with `overwrite` writes it
// (the caller need not clear it). out null (tensor cores only): dsum = rowsum(dout * out16), the
// bf16 output's values, as FlashAttention-2 computes it from its bf16 output. The model gives
// the fp32 out (with out16's dsum shakespeare-moe's best val loss was 0.005 and 0.010 worse).
void AttentionBackwardBf16(float* dqkv, const float* dout, const bf16* dout16, const float* out, const float* lse,
                           const float* qkv, const bf16* qkv16, int b, int t, int h, int hkv, int hd, float* scratch,
                           const AttentionDropout& drop, cudaStream_t stream, bool overwrite = false,
                           const bf16* out16 = nullptr);

// The backward and then RoPE's backward (bf16 jobs without QK-norm): dqkv16 gets
// RopeBackwardToBf16 of the dqkv that AttentionBackwardBf16 with `overwrite` writes, the qkv
// product's output gradient, bit for bit. Where the tensor-core kernels for hd itself run (hd 16,
// 32, 64, 96, 128, every buffer 16-byte aligned) they rotate and round as they store, and dqkv
// (fp32) is not written; elsewhere dqkv is written and RoPE's backward reads it. rope_cos, rope_sin: (t, hd / 2), as RopeBackward's.
void AttentionRopeBackwardBf16(bf16* dqkv16, float* dqkv, const float* dout, const bf16* dout16, const float* out,
                               const float* lse, const float* qkv, const bf16* qkv16, const float* rope_cos,
                               const float* rope_sin, int b, int t, int h, int hkv, int hd, float* scratch,
                               const AttentionDropout& drop, cudaStream_t stream);

// Without dropout (evaluation, and jobs without model.attention.dropout).
inline void AttentionForward(float* out, float* lse, const float* qkv, int b, int t, int h, int hkv, int hd,
                             cudaStream_t stream) {
  AttentionForward(out, lse, qkv, b, t, h, hkv, hd, AttentionDropout{}, stream);
}
inline void AttentionBackward(float* dqkv, const float* dout, const float* out, const float* lse, const float* qkv,
                              int b, int t, int h, int hkv, int hd, float* scratch, cudaStream_t stream) {
  AttentionBackward(dqkv, dout, out, lse, qkv, b, t, h, hkv, hd, scratch, AttentionDropout{}, stream);
}
inline void AttentionForwardBf16(float* out, float* lse, const float* qkv, const bf16* qkv16, int b, int t, int h,
                                 int hkv, int hd, cudaStream_t stream) {
  AttentionForwardBf16(out, lse, qkv, qkv16, b, t, h, hkv, hd, AttentionDropout{}, stream);
}
inline void AttentionBackwardBf16(float* dqkv, const float* dout, const bf16* dout16, const float* out,
                                  const float* lse, const float* qkv, const bf16* qkv16, int b, int t, int h, int hkv,
                                  int hd, float* scratch, cudaStream_t stream) {
  AttentionBackwardBf16(dqkv, dout, dout16, out, lse, qkv, qkv16, b, t, h, hkv, hd, scratch, AttentionDropout{},
                        stream);
}

}  // namespace moe::cuda
