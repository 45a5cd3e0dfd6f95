// The attention entry points: which path runs (for bf16 jobs cuDNN's fused attention where it
// can, cudnn_sdpa.h, then tensor cores where the head size and the buffers allow, else fp32
// SIMT), and the row sums dsum = rowsum(dout * out) that the project's backward paths start from.
// The project's kernels are in attention_fp32.cu and attention_tc.cu.
#include "kernels/cuda/attention.h"

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <initializer_list>

#include "kernels/cuda/attention_internal.cuh"
#include "kernels/cuda/cudnn_sdpa.h"
#include "kernels/cuda/matmul.h"
#include "kernels/cuda/rope.h"

namespace moe::cuda {
namespace {

// dsum (b, h, t) = rowsum(dout * out) per head.
// O: fp32, or bf16 (the output as the tensor-core forward wrote it for the wo product, each
// value read as the float it is).
__device__ __forceinline__ float ToF(float v) { return v; }
__device__ __forceinline__ float ToF(bf16 v) { return __bfloat162float(v); }
__device__ __forceinline__ float4 Load4(const float* p) { return *reinterpret_cast<const float4*>(p); }
__device__ __forceinline__ float4 Load4(const bf16* p) { return internal::LoadBf16x4(p); }

template <typename O>
__global__ void AttentionDsumKernel(float* dsum, const float* dout, const O* out, int b, int t, int h, int hd) {
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= int64_t{b} * h * t) return;
  const int i = static_cast<int>(idx % t);
  const int64_t bh = idx / t;
  const int hi = static_cast<int>(bh % h), bi = static_cast<int>(bh / h);
  const int64_t off = (int64_t{bi} * t + i) * (int64_t{h} * hd) + int64_t{hi} * hd;
  float acc = 0.0f;
  for (int c = 0; c < hd; ++c) acc += dout[off + c] * ToF(out[off + c]);
  dsum[idx] = acc;
}

// The same, a warp per token row (all heads): lanes read four values at a time along the row,
// coalesced, and each head's HD / 4 lanes add up their part. HD divides 128, so heads never
// straddle the 128-column steps.
template <int HD, typename O>
__global__ void AttentionDsumRowsKernel(float* dsum, const float* dout, const O* out, int rows, int t, int h) {
  constexpr int kGroup = HD / 4;  // lanes per head
  const int row = (blockIdx.x * blockDim.x + threadIdx.x) / 32, lane = threadIdx.x % 32;
  if (row >= rows) return;
  const int bi = row / t, i = row % t, width = h * HD;
  const O* orow = out + int64_t{row} * width;
  const float4* d4 = reinterpret_cast<const float4*>(dout + int64_t{row} * width);
  for (int c0 = 0; c0 < width; c0 += 128) {
    const int c = c0 + lane * 4;
    float acc = 0.0f;
    if (c < width) {
      const float4 o = Load4(orow + c), d = d4[c / 4];
      acc = o.x * d.x + o.y * d.y + o.z * d.z + o.w * d.w;
    }
#pragma unroll
    for (int s = kGroup / 2; s > 0; s >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, s);
    if (c < width && lane % kGroup == 0) dsum[(int64_t{bi} * h + c / HD) * t + i] = acc;
  }
}

// dsum for every row and head: the warp-per-row kernel where the head size and alignment allow.
template <typename O>
void AttentionDsum(float* dsum, const float* dout, const O* out, int b, int t, int h, int hd, cudaStream_t stream) {
  const int rows = b * t;
  const bool vec = Aligned(16, {dout}) && Aligned(4 * sizeof(O), {out});
  const unsigned blocks = static_cast<unsigned>((int64_t{rows} * 32 + 255) / 256);
  if (vec && hd == 64) {
    AttentionDsumRowsKernel<64><<<blocks, 256, 0, stream>>>(dsum, dout, out, rows, t, h);
  } else if (vec && hd == 32) {
    AttentionDsumRowsKernel<32><<<blocks, 256, 0, stream>>>(dsum, dout, out, rows, t, h);
  } else if (vec && hd == 128) {
    AttentionDsumRowsKernel<128><<<blocks, 256, 0, stream>>>(dsum, dout, out, rows, t, h);
  } else if (vec && hd == 16) {
    AttentionDsumRowsKernel<16><<<blocks, 256, 0, stream>>>(dsum, dout, out, rows, t, h);
  } else {
    AttentionDsumKernel<<<BlocksFor(int64_t{rows} * h, 256), 256, 0, stream>>>(dsum, dout, out, b, t, h, hd);
  }
  MOE_CUDA_LAUNCH_CHECK();
}

// The tensor-core kernels read rows in 16-byte pieces: every row start must be 16-byte aligned
// (hd a multiple of 8 makes every row and head offset one; the buffers must be too).
bool TcAligned(int hd, std::initializer_list<const void*> ptrs) {
  return internal::TcRunsHeadSize(hd) && Aligned(16, ptrs);
}

}  // namespace

void AttentionForward(float* out, float* lse, const float* qkv, int b, int t, int h, int hkv, int hd,
                      const AttentionDropout& drop, cudaStream_t stream) {
  if (b * t == 0) return;
  internal::SimtForward(out, lse, qkv, b, t, h, hkv, hd, internal::MakeAttnDrop(drop), stream);
}

void AttentionBackward(float* dqkv, const float* dout, const float* out, const float* lse,
                       const float* qkv, int b, int t, int h, int hkv, int hd, float* scratch,
                       const AttentionDropout& drop, cudaStream_t stream) {
  if (b * t == 0) return;
  AttentionDsum(scratch, dout, out, b, t, h, hd, stream);
  internal::SimtBackward(dqkv, dout, lse, scratch, qkv, b, t, h, hkv, hd, internal::MakeAttnDrop(drop), stream);
}

void AttentionForwardBf16(float* out, float* lse, const float* qkv, const bf16* qkv16, int b, int t, int h,
                          int hkv, int hd, const AttentionDropout& drop, cudaStream_t stream, bf16* out16) {
  if (b * t == 0) return;
  if (!TcAligned(hd, {out, qkv16, out16})) {
    if (out == nullptr) {
      std::fprintf(stderr, "AttentionForwardBf16: no fp32 output off the tensor cores (hd %d)\n", hd);
      std::abort();
    }
    AttentionForward(out, lse, qkv, b, t, h, hkv, hd, drop, stream);
    if (out16 != nullptr) CastToBf16(out16, out, int64_t{b} * t * h * hd, stream);
    return;
  }
  // cuDNN's fused attention unless turned off (cudnn_sdpa.h): it writes bf16 alone, so the fp32
  // output, where wanted, is those values.
  if (drop.p == 0.f && out16 != nullptr && CudnnAttentionWanted() &&
      CudnnAttentionForward(out16, lse, qkv16, b, t, h, hkv, hd, stream)) {
    if (out != nullptr) CastToFloat(out, out16, int64_t{b} * t * h * hd, stream);
    return;
  }
  internal::TcForward(out, out16, lse, qkv16, b, t, h, hkv, hd, internal::MakeAttnDrop(drop), stream);
}

namespace {

// cuDNN's backward unless turned off, where it can (the RoPE path: bf16 gradients written, no dropout),
// then RoPE's backward in place on them. The bf16 forward output it reads is out16, or out
// rounded into dqkv's memory (free in this path: the gradients go to rope.dqkv16).
bool CudnnBackward(const bf16* dout16, const float* out, const bf16* out16, const float* lse, const bf16* qkv16, int b,
                   int t, int h, int hkv, int hd, const AttentionDropout& drop, cudaStream_t stream, bool overwrite,
                   const internal::RopeBack& rope, float* dqkv) {
  if (drop.p != 0.f || !overwrite || rope.dqkv16 == nullptr || !CudnnAttentionWanted()) return false;
  const bf16* o16 = out16;
  if (o16 == nullptr) {
    if (out == nullptr || dqkv == nullptr) return false;
    bf16* tmp = reinterpret_cast<bf16*>(dqkv);
    CastToBf16(tmp, out, int64_t{b} * t * h * hd, stream);
    o16 = tmp;
  }
  if (!CudnnAttentionBackward(rope.dqkv16, qkv16, o16, dout16, lse, b, t, h, hkv, hd, stream)) return false;
  RopeBackwardBf16(rope.dqkv16, rope.cos_t, rope.sin_t, b, t, h, hkv, hd, stream);
  return true;
}

// The tensor-core or fp32 backward of AttentionBackwardBf16; with rope.dqkv16 set (overwrite),
// RoPE's backward into bf16 as well, in the kernels' stores where they can (then true) or after.
void Backward16(float* dqkv, const float* dout, const bf16* dout16, const float* out, const float* lse,
                const float* qkv, const bf16* qkv16, int b, int t, int h, int hkv, int hd, float* scratch,
                const AttentionDropout& drop, cudaStream_t stream, bool overwrite, const bf16* out16,
                const internal::RopeBack& rope) {
  if (b * t == 0) return;
  if (!TcAligned(hd, {dqkv, dout16, qkv16, rope.dqkv16})) {
    if (out == nullptr) {
      std::fprintf(stderr, "AttentionBackwardBf16: no fp32 output off the tensor cores (hd %d)\n", hd);
      std::abort();
    }
    if (overwrite) {
      MOE_CUDA_CHECK(cudaMemsetAsync(dqkv, 0, sizeof(float) * b * t * int64_t{h + 2 * hkv} * hd, stream));
    }
    AttentionBackward(dqkv, dout, out, lse, qkv, b, t, h, hkv, hd, scratch, drop, stream);
  } else {
    if (CudnnBackward(dout16, out, out16, lse, qkv16, b, t, h, hkv, hd, drop, stream, overwrite, rope, dqkv)) return;
    if (out != nullptr) {
      AttentionDsum(scratch, dout, out, b, t, h, hd, stream);
    } else if (out16 != nullptr) {
      AttentionDsum(scratch, dout, out16, b, t, h, hd, stream);
    } else {
      std::fprintf(stderr, "AttentionBackwardBf16: neither the fp32 nor the bf16 forward output given\n");
      std::abort();
    }
    internal::TcBackward(dqkv, dout16, lse, scratch, qkv16, b, t, h, hkv, hd, internal::MakeAttnDrop(drop), overwrite,
                         rope, stream);
    if (rope.dqkv16 == nullptr || (overwrite && internal::TcRopesInStores(hd))) return;
  }
  if (rope.dqkv16 != nullptr) RopeBackwardToBf16(rope.dqkv16, dqkv, rope.cos_t, rope.sin_t, b, t, h, hkv, hd, stream);
}

}  // namespace

void AttentionBackwardBf16(float* dqkv, const float* dout, const bf16* dout16, const float* out, const float* lse,
                           const float* qkv, const bf16* qkv16, int b, int t, int h, int hkv, int hd, float* scratch,
                           const AttentionDropout& drop, cudaStream_t stream, bool overwrite, const bf16* out16) {
  Backward16(dqkv, dout, dout16, out, lse, qkv, qkv16, b, t, h, hkv, hd, scratch, drop, stream, overwrite, out16,
             internal::RopeBack{});
}

void AttentionRopeBackwardBf16(bf16* dqkv16, float* dqkv, const float* dout, const bf16* dout16, const float* out,
                               const float* lse, const float* qkv, const bf16* qkv16, const float* rope_cos,
                               const float* rope_sin, int b, int t, int h, int hkv, int hd, float* scratch,
                               const AttentionDropout& drop, cudaStream_t stream) {
  Backward16(dqkv, dout, dout16, out, lse, qkv, qkv16, b, t, h, hkv, hd, scratch, drop, stream, /*overwrite=*/true,
             nullptr, internal::RopeBack{dqkv16, rope_cos, rope_sin});
}

}  // namespace moe::cuda
