// cuDNN's fused flash attention (its graph API, cudnn_graph.h) as a second fast path for the bf16
// jobs' causal attention, beside the project's tensor-core kernels (attention_tc.cu), which stay
// its test oracle and the fallback. Same layouts as kernels/cuda/attention.h: q, k, v read in
// place from the fused bf16 qkv buffer (rows [q: h*hd | k: hkv*hd | v: hkv*hd]), the output in
// bf16, the log-sum-exp (b, h, t) in natural-log units of the scaled scores (the tensor-core
// forward's, so either backward can follow either forward). No attention dropout: jobs with
// model.attention.dropout keep the project's kernels (their masks are the CPU's, bit for bit).
//
// Which path runs: cuDNN where it can, unless MOE_ATTENTION=ours asks for the project's kernels.
// A shape cuDNN refuses (or a machine without libcudnn) runs the project's kernels, said once on
// stderr per shape.
#pragma once

#include <cstdint>
#include <string>

#include "kernels/cuda/common.h"

namespace moe::cuda {

// Whether the bf16 attention goes to cuDNN first (MOE_ATTENTION, read once), and the same set
// in code (tests comparing the two paths).
bool CudnnAttentionWanted();
void SetCudnnAttentionWanted(bool wanted);

// out16 (b, t, h*hd) and lse (b, h, t) from qkv16. False (nothing written) where cuDNN cannot run
// this shape; *why says why when given.
bool CudnnAttentionForward(bf16* out16, float* lse, const bf16* qkv16, int b, int t, int h, int hkv, int hd,
                           cudaStream_t stream, std::string* why = nullptr);

// dqkv16 (b, t, (h + 2 hkv) hd) written (not added to): the gradients of q, k and v, from the
// forward's out16 and lse and the output gradient dout16 (b, t, h*hd). Deterministic (the same
// bits every run) unless MOE_CUDNN_ATOMIC_DQ=1, which lets cuDNN sum dq with atomics. False
// (nothing written) where cuDNN cannot run this shape.
bool CudnnAttentionBackward(bf16* dqkv16, const bf16* qkv16, const bf16* out16, const bf16* dout16, const float* lse,
                            int b, int t, int h, int hkv, int hd, cudaStream_t stream, std::string* why = nullptr);

}  // namespace moe::cuda
