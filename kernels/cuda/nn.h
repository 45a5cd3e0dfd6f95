// The elementwise and row-wise ops of MODEL.md on the GPU, each the twin of a CPU kernel in
// kernels/*.h with the same shapes and the same accumulate (+=) conventions: embedding, dropout
// (kernels::CounterUniform bit for bit), RMSNorm, RoPE, SwiGLU, residual add, fused softmax
// cross-entropy, AdamW and squared norms. All pointers are device pointers; stream last.
#pragma once

#include <cstdint>

#include "kernels/cuda/common.h"

namespace moe::cuda {

// out (n, d) = wte[idx] ; dwte[idx[i]] += dout[i] (fp32 atomics: order not fixed).
void EmbeddingForward(float* out, const int32_t* idx, const float* wte, int n, int d, cudaStream_t stream);
void EmbeddingBackward(float* dwte, const float* dout, const int32_t* idx, int n, int d, cudaStream_t stream);

// out = in * keep / (1 - p) (out may alias in) ; din += dout * keep / (1 - p).
void DropoutForward(float* out, const float* in, int64_t n, float p, uint64_t seed, uint64_t offset,
                    cudaStream_t stream);
void DropoutBackward(float* din, const float* dout, int64_t n, float p, uint64_t seed, uint64_t offset,
                     cudaStream_t stream);

// out (n, d), rstd (n) ; dinp (n, d) += , dweight (d) += (either may be null).
void RmsNormForward(float* out, float* rstd, const float* inp, const float* weight, int n, int d,
                    cudaStream_t stream);
void RmsNormBackward(float* dinp, float* dweight, const float* dout, const float* inp,
                     const float* weight, const float* rstd, int n, int d, cudaStream_t stream);

// cos, sin tables (t, hd/2) on the host, computed exactly as kernels/rope.cc does.
void RopeTablesHost(float* cos_t, float* sin_t, int t, int hd);
// In place on qkv (b, t, (h + 2 hkv) hd); cos_t, sin_t (t, hd/2) device tables.
void RopeForward(float* qkv, const float* cos_t, const float* sin_t, int b, int t, int h, int hkv,
                 int hd, cudaStream_t stream);
void RopeBackward(float* dqkv, const float* cos_t, const float* sin_t, int b, int t, int h, int hkv,
                  int hd, cudaStream_t stream);

// h = silu(g) * u ; dg, du += (accumulate) or = (overwrite) the SwiGLU gradients. dh may alias du
// when overwriting (each element is read before it is written).
void SwigluForward(float* h, const float* g, const float* u, int64_t n, cudaStream_t stream);
void SwigluBackward(float* dg, float* du, const float* dh, const float* g, const float* u, int64_t n,
                    bool accumulate, cudaStream_t stream);

// x += y.
// out = x + y (n elements; out may not alias x or y).
void AddOut(float* out, const float* x, const float* y, int64_t n, cudaStream_t stream);

// losses (n), lse (n) from logits (n, v) ; a target < 0 gives loss 0.
void CrossEntropyForward(float* losses, float* lse, const float* logits, const int32_t* targets, int n,
                         int v, cudaStream_t stream);
// dlogits (n, v) = scale * (softmax - onehot), written as fp32 (may alias logits) or bf16.
void CrossEntropyBackward(float* dlogits, const float* logits, const float* lse, const int32_t* targets,
                          float scale, int n, int v, cudaStream_t stream);
void CrossEntropyBackwardBf16(bf16* dlogits, const float* logits, const float* lse,
                              const int32_t* targets, float scale, int n, int v, cudaStream_t stream);

// AdamW as kernels::AdamWUpdate (bc1, bc2 = 1 - beta^step, computed by the caller in double then
// rounded to float as the CPU does). param_bf16 (n), when not null, gets the updated weights in
// bf16 (the copy the bf16 products read).
void AdamWUpdate(float* param, bf16* param_bf16, const float* grad, float* m, float* v, int64_t n,
                 float lr, float beta1, float beta2, float eps, float weight_decay, float bc1, float bc2,
                 float grad_scale, cudaStream_t stream);

// *out += sum of x^2 (double; out is one device double).
void SquaredNorm(double* out, const float* x, int64_t n, cudaStream_t stream);
// *out += sum of x (double).
void Sum(double* out, const float* x, int64_t n, cudaStream_t stream);

}  // namespace moe::cuda
