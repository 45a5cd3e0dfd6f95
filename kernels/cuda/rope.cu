#include "kernels/cuda/rope.h"

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "kernels/cuda/device.cuh"
#include "kernels/rope.h"

namespace moe::cuda {
namespace {

using internal::kThreads;

// W consecutive floats at p (16-byte aligned when W is 4): one float4 access, or W scalar ones.
template <int W>
__device__ __forceinline__ void LoadW(float (&dst)[W], const float* p) {
  if constexpr (W == 4) {
    const float4 q = *reinterpret_cast<const float4*>(p);
    dst[0] = q.x, dst[1] = q.y, dst[2] = q.z, dst[3] = q.w;
  } else {
#pragma unroll
    for (int j = 0; j < W; ++j) dst[j] = p[j];
  }
}
template <int W>
__device__ __forceinline__ void StoreW(float* p, const float (&src)[W]) {
  if constexpr (W == 4) {
    *reinterpret_cast<float4*>(p) = make_float4(src[0], src[1], src[2], src[3]);
  } else {
#pragma unroll
    for (int j = 0; j < W; ++j) p[j] = src[j];
  }
}

// Position pos's cosines and sines of pairs [i, i + W) (half pairs a head), the sines times sign.
template <int W>
__device__ __forceinline__ void LoadAngle(float (&cs)[W], float (&s)[W], const float* cos_t, const float* sin_t,
                                          int pos, int half, int i, float sign) {
  LoadW<W>(cs, cos_t + pos * half + i);
  LoadW<W>(s, sin_t + pos * half + i);
#pragma unroll
  for (int j = 0; j < W; ++j) s[j] *= sign;
}

// The pairs (a, c) rotated by the angle whose cosine and sine are cs, s (both kernels below).
template <int W>
__device__ __forceinline__ void Rotate(const float (&a)[W], const float (&c)[W], const float (&cs)[W],
                                       const float (&s)[W], float (&na)[W], float (&nc)[W]) {
#pragma unroll
  for (int j = 0; j < W; ++j) internal::RopeRotate(a[j], c[j], cs[j], s[j], na[j], nc[j]);
}

template <int W>
__device__ __forceinline__ void StoreBf16W(bf16* p, const float (&src)[W]) {
  if constexpr (W == 4) {
    internal::StoreBf16x4(p, make_float4(src[0], src[1], src[2], src[3]));
  } else {
#pragma unroll
    for (int j = 0; j < W; ++j) p[j] = __float2bfloat16(src[j]);
  }
}

// The same loads and stores on bf16 (RoPE's backward in place on the bf16 gradients cuDNN's
// attention writes): each value read as the float it is, rounded back as it is stored.
template <int W>
__device__ __forceinline__ void LoadW(float (&dst)[W], const bf16* p) {
  if constexpr (W == 4) {
    const float4 q = internal::LoadBf16x4(p);
    dst[0] = q.x, dst[1] = q.y, dst[2] = q.z, dst[3] = q.w;
  } else {
#pragma unroll
    for (int j = 0; j < W; ++j) dst[j] = __bfloat162float(p[j]);
  }
}
template <int W>
__device__ __forceinline__ void StoreW(bf16* p, const float (&src)[W]) {
  StoreBf16W<W>(p, src);
}

// Rotated heads one thread loads before it stores any of them (memory-level parallelism).
constexpr int kRopeHeadsPerStep = 4;

// RoPE in place on the q and k heads (the first `heads` of each row of row_len T: fp32, or bf16), pairs
// (i, i + hd/2). Block (x, y): threadIdx.y picks one of blockDim.y rows (row = b * t + pos),
// threadIdx.x a group of W pairs i = W * threadIdx.x + j (striding by W * blockDim.x when hd / 2 is
// larger); the thread reads that group's cos/sin once and walks every rotated head of its row,
// kRopeHeadsPerStep heads at a time. W = 4 (four values an access) needs hd/2 % 4 == 0, 16-byte
// aligned tables and qkv 16-byte (fp32) or 8-byte (bf16) aligned; W = 1 takes any even hd. All
// index math is 32-bit but the row offset.
template <typename T, int W>
__global__ void RopeKernel(T* qkv, const float* cos_t, const float* sin_t, int rows, int t, int heads, int row_len,
                           int hd, float sign) {
  const int row = blockIdx.x * blockDim.y + threadIdx.y;
  if (row >= rows) return;
  const int half = hd / 2, pos = row % t;
  T* base = qkv + int64_t{row} * row_len;
  for (int i = threadIdx.x * W; i < half; i += blockDim.x * W) {
    float cs[W], s[W];
    LoadAngle<W>(cs, s, cos_t, sin_t, pos, half, i, sign);
    for (int head0 = 0; head0 < heads; head0 += kRopeHeadsPerStep) {
      float a[kRopeHeadsPerStep][W], c[kRopeHeadsPerStep][W];
#pragma unroll
      for (int u = 0; u < kRopeHeadsPerStep; ++u) {
        if (head0 + u < heads) {
          LoadW<W>(a[u], base + (head0 + u) * hd + i);
          LoadW<W>(c[u], base + (head0 + u) * hd + half + i);
        }
      }
#pragma unroll
      for (int u = 0; u < kRopeHeadsPerStep; ++u) {
        if (head0 + u < heads) {
          float na[W], nc[W];
          Rotate<W>(a[u], c[u], cs, s, na, nc);
          StoreW<W>(base + (head0 + u) * hd + i, na);
          StoreW<W>(base + (head0 + u) * hd + half + i, nc);
        }
      }
    }
  }
}

// Into a bf16 copy (the forward: the tensor-core attention's input; the backward: the qkv
// product's output gradient): each row's q and k heads rotated as RopeKernel rotates them (sign
// as there), then rounded, and its v heads rounded, from fp32 qkv left as it is. The same threads
// and pairs as RopeKernel (W, blockDim); all_heads = h + 2 hkv.
template <int W>
__global__ void RopeToBf16Kernel(bf16* __restrict__ out, const float* __restrict__ qkv, const float* cos_t,
                                 const float* sin_t, int rows, int t, int heads, int all_heads, int row_len, int hd,
                                 float sign) {
  const int row = blockIdx.x * blockDim.y + threadIdx.y;
  if (row >= rows) return;
  const int half = hd / 2, pos = row % t;
  const float* base = qkv + int64_t{row} * row_len;
  bf16* dst = out + int64_t{row} * row_len;
  for (int i = threadIdx.x * W; i < half; i += blockDim.x * W) {
    float cs[W], s[W];
    LoadAngle<W>(cs, s, cos_t, sin_t, pos, half, i, sign);
#pragma unroll 4
    for (int head = 0; head < all_heads; ++head) {
      float a[W], c[W];
      LoadW<W>(a, base + head * hd + i);
      LoadW<W>(c, base + head * hd + half + i);
      if (head < heads) {
        float na[W], nc[W];
        Rotate<W>(a, c, cs, s, na, nc);
        StoreBf16W<W>(dst + head * hd + i, na);
        StoreBf16W<W>(dst + head * hd + half + i, nc);
      } else {
        StoreBf16W<W>(dst + head * hd + i, a);
        StoreBf16W<W>(dst + head * hd + half + i, c);
      }
    }
  }
}

// The launch both kernels take for `rows` rows of `half` pairs a head: threadIdx.x over the pair
// groups of one head (at most kThreads), threadIdx.y over rows; vec: four pairs a thread (W = 4).
struct RopeLaunch {
  dim3 block;
  unsigned blocks;
};
RopeLaunch RopeLaunchFor(int rows, int half, bool vec) {
  const int groups = vec ? half / 4 : half;
  RopeLaunch l;
  l.block = dim3(std::min(groups, kThreads), std::max(1, kThreads / groups));
  l.blocks = BlocksFor(rows, static_cast<int>(l.block.y));
  return l;
}

// Both directions: sign = +1 rotates by the angle, -1 by minus the angle (the transpose).
void Rope(float* qkv, const float* cos_t, const float* sin_t, int b, int t, int h, int hkv, int hd,
          float sign, cudaStream_t stream) {
  const int rows = b * t, heads = h + hkv, half = hd / 2;
  if (rows <= 0 || heads <= 0 || half <= 0) return;
  const int row_len = (h + 2 * hkv) * hd;
  const bool vec = half % 4 == 0 && Aligned(16, {qkv, cos_t, sin_t});
  const RopeLaunch l = RopeLaunchFor(rows, half, vec);
  if (vec) {
    RopeKernel<float, 4><<<l.blocks, l.block, 0, stream>>>(qkv, cos_t, sin_t, rows, t, heads, row_len, hd, sign);
  } else {
    RopeKernel<float, 1><<<l.blocks, l.block, 0, stream>>>(qkv, cos_t, sin_t, rows, t, heads, row_len, hd, sign);
  }
  MOE_CUDA_LAUNCH_CHECK();
}

void RopeToBf16(bf16* qkv16, const float* qkv, const float* cos_t, const float* sin_t, int b, int t, int h, int hkv,
                int hd, float sign, cudaStream_t stream) {
  const int rows = b * t, heads = h + hkv, half = hd / 2;
  if (rows <= 0 || heads <= 0 || half <= 0) return;
  const int all_heads = h + 2 * hkv, row_len = all_heads * hd;
  const bool vec = half % 4 == 0 && Aligned(16, {qkv, cos_t, sin_t}) && Aligned(8, {qkv16});
  const RopeLaunch l = RopeLaunchFor(rows, half, vec);
  if (vec) {
    RopeToBf16Kernel<4><<<l.blocks, l.block, 0, stream>>>(qkv16, qkv, cos_t, sin_t, rows, t, heads, all_heads,
                                                          row_len, hd, sign);
  } else {
    RopeToBf16Kernel<1><<<l.blocks, l.block, 0, stream>>>(qkv16, qkv, cos_t, sin_t, rows, t, heads, all_heads,
                                                          row_len, hd, sign);
  }
  MOE_CUDA_LAUNCH_CHECK();
}

void RopeBf16(bf16* qkv16, const float* cos_t, const float* sin_t, int b, int t, int h, int hkv, int hd, float sign,
              cudaStream_t stream) {
  const int rows = b * t, heads = h + hkv, half = hd / 2;
  if (rows <= 0 || heads <= 0 || half <= 0) return;
  const int row_len = (h + 2 * hkv) * hd;
  const bool vec = half % 4 == 0 && Aligned(16, {cos_t, sin_t}) && Aligned(8, {qkv16});
  const RopeLaunch l = RopeLaunchFor(rows, half, vec);
  if (vec) {
    RopeKernel<bf16, 4><<<l.blocks, l.block, 0, stream>>>(qkv16, cos_t, sin_t, rows, t, heads, row_len, hd, sign);
  } else {
    RopeKernel<bf16, 1><<<l.blocks, l.block, 0, stream>>>(qkv16, cos_t, sin_t, rows, t, heads, row_len, hd, sign);
  }
  MOE_CUDA_LAUNCH_CHECK();
}

}  // namespace

void RopeForward(float* qkv, const float* cos_t, const float* sin_t, int b, int t, int h, int hkv,
                 int hd, cudaStream_t stream) {
  Rope(qkv, cos_t, sin_t, b, t, h, hkv, hd, 1.0f, stream);
}

void RopeForwardToBf16(bf16* qkv16, const float* qkv, const float* cos_t, const float* sin_t, int b, int t, int h,
                       int hkv, int hd, cudaStream_t stream) {
  RopeToBf16(qkv16, qkv, cos_t, sin_t, b, t, h, hkv, hd, 1.0f, stream);
}

void RopeBackwardToBf16(bf16* dqkv16, const float* dqkv, const float* cos_t, const float* sin_t, int b, int t, int h,
                        int hkv, int hd, cudaStream_t stream) {
  RopeToBf16(dqkv16, dqkv, cos_t, sin_t, b, t, h, hkv, hd, -1.0f, stream);
}

void RopeBackward(float* dqkv, const float* cos_t, const float* sin_t, int b, int t, int h, int hkv,
                  int hd, cudaStream_t stream) {
  Rope(dqkv, cos_t, sin_t, b, t, h, hkv, hd, -1.0f, stream);
}

void RopeBackwardBf16(bf16* dqkv16, const float* cos_t, const float* sin_t, int b, int t, int h, int hkv, int hd,
                      cudaStream_t stream) {
  RopeBf16(dqkv16, cos_t, sin_t, b, t, h, hkv, hd, -1.0f, stream);
}

}  // namespace moe::cuda
