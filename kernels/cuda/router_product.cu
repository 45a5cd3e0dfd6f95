#include "kernels/cuda/router_product.h"

#include <stdexcept>
#include <string>
#include <type_traits>

namespace moe::cuda {
namespace {

// A block: kRows tokens by BN experts (BN 16, 32 or 64), 256 threads as 16 x 16, each thread
// kRows / 16 = 4 tokens by BN / 16 experts in registers. d goes by in slices of kK: the block's
// slice of m and of w is staged in shared memory, transposed (slice position major), so that a
// thread reads its 4 tokens' values as one float4 (and, BN 64, its experts' as another). Rows of
// kRows + 4 floats keep float4 alignment.
constexpr int kThreads = 256, kRows = 64, kK = 32, kPitch = kRows + 4;

// 4 consecutive values of row `row` from column k (zeros past n rows or d columns).
template <bool kVec>
__device__ __forceinline__ float4 Load4(const float* x, int row, int rows, int k, int d) {
  float4 v = make_float4(0.f, 0.f, 0.f, 0.f);
  if (row >= rows) return v;
  const float* src = x + int64_t{row} * d + k;
  if (kVec && k + 3 < d) return *reinterpret_cast<const float4*>(src);
  v.x = k < d ? src[0] : 0.f;
  v.y = k + 1 < d ? src[1] : 0.f;
  v.z = k + 2 < d ? src[2] : 0.f;
  v.w = k + 3 < d ? src[3] : 0.f;
  return v;
}

template <int BN, bool kVec>
__global__ void __launch_bounds__(kThreads) RouterProductKernel(float* logits, const float* m, const float* w, int n,
                                                                int d, int e) {
  constexpr int TN = BN / 16;
  // Each thread's share of a slice, in float4s: m's kRows x kK, w's BN x kK (BN 16: half the
  // threads load one; BN 32: one each).
  constexpr int kQuads = kK / 4, kLoadsM = kRows * kQuads / kThreads;
  constexpr int kLoadsW = (BN * kQuads + kThreads - 1) / kThreads;
  __shared__ __align__(16) float ms[kK][kPitch];
  __shared__ __align__(16) float ws[kK][BN + 4];
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
  const int row0 = blockIdx.x * kRows, col0 = blockIdx.y * BN;
  float4 next_m[kLoadsM], next_w[kLoadsW];
  // The slice at k0 into registers (coalesced along d: 4 consecutive values a thread).
  auto fetch = [&](int k0) {
#pragma unroll
    for (int j = 0; j < kLoadsM; ++j) {
      const int i = threadIdx.x + j * kThreads;
      next_m[j] = Load4<kVec>(m, row0 + i / kQuads, n, k0 + (i % kQuads) * 4, d);
    }
#pragma unroll
    for (int j = 0; j < kLoadsW; ++j) {
      const int i = threadIdx.x + j * kThreads;
      next_w[j] = i < BN * kQuads ? Load4<kVec>(w, col0 + i / kQuads, e, k0 + (i % kQuads) * 4, d)
                                  : make_float4(0.f, 0.f, 0.f, 0.f);
    }
  };
  float acc[4][TN] = {};
  fetch(0);
  for (int k0 = 0; k0 < d; k0 += kK) {
    // The fetched slice into shared memory, transposed; the next one's loads start before the
    // products of this one, so that their latency hides behind them.
#pragma unroll
    for (int j = 0; j < kLoadsM; ++j) {
      const int i = threadIdx.x + j * kThreads, r = i / kQuads, q = (i % kQuads) * 4;
      ms[q][r] = next_m[j].x, ms[q + 1][r] = next_m[j].y, ms[q + 2][r] = next_m[j].z, ms[q + 3][r] = next_m[j].w;
    }
#pragma unroll
    for (int j = 0; j < kLoadsW; ++j) {
      const int i = threadIdx.x + j * kThreads, c = i / kQuads, q = (i % kQuads) * 4;
      if (i < BN * kQuads) {
        ws[q][c] = next_w[j].x, ws[q + 1][c] = next_w[j].y, ws[q + 2][c] = next_w[j].z, ws[q + 3][c] = next_w[j].w;
      }
    }
    __syncthreads();
    if (k0 + kK < d) fetch(k0 + kK);
#pragma unroll 8
    for (int kk = 0; kk < kK; ++kk) {
      const float4 a = *reinterpret_cast<const float4*>(&ms[kk][ty * 4]);
      const float av[4] = {a.x, a.y, a.z, a.w};
      float bv[TN];
      if constexpr (TN == 4) {
        const float4 b = *reinterpret_cast<const float4*>(&ws[kk][tx * 4]);
        bv[0] = b.x, bv[1] = b.y, bv[2] = b.z, bv[3] = b.w;
      } else {
#pragma unroll
        for (int j = 0; j < TN; ++j) bv[j] = ws[kk][tx * TN + j];
      }
      // d in order for each output: acc = fma(m_k, w_k, acc), k = 0, 1, ...
#pragma unroll
      for (int i = 0; i < 4; ++i) {
#pragma unroll
        for (int j = 0; j < TN; ++j) acc[i][j] = fmaf(av[i], bv[j], acc[i][j]);
      }
    }
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int row = row0 + ty * 4 + i;
    if (row >= n) continue;
#pragma unroll
    for (int j = 0; j < TN; ++j) {
      const int col = col0 + tx * TN + j;
      if (col < e) logits[int64_t{row} * e + col] = acc[i][j];
    }
  }
}

}  // namespace

void RouterProduct(float* logits, const float* m, const float* w, int n, int d, int e, cudaStream_t stream) {
  if (e < 1 || e > kRouterProductMaxExperts || d < 1) {
    throw std::invalid_argument("RouterProduct: e = " + std::to_string(e) + ", d = " + std::to_string(d) +
                                " (e must be 1.." + std::to_string(kRouterProductMaxExperts) + ", d at least 1)");
  }
  if (n <= 0) return;
  // float4 loads when every row starts 16 bytes aligned.
  const bool vec = d % 4 == 0 && reinterpret_cast<uintptr_t>(m) % 16 == 0 && reinterpret_cast<uintptr_t>(w) % 16 == 0;
  const unsigned rows = static_cast<unsigned>((int64_t{n} + kRows - 1) / kRows);
  // The narrowest tile that holds e (16 or 32 experts), else tiles of 64 side by side.
  auto launch = [&](auto bn) {
    constexpr int BN = decltype(bn)::value;
    const dim3 grid(rows, static_cast<unsigned>((e + BN - 1) / BN));
    if (vec) {
      RouterProductKernel<BN, true><<<grid, kThreads, 0, stream>>>(logits, m, w, n, d, e);
    } else {
      RouterProductKernel<BN, false><<<grid, kThreads, 0, stream>>>(logits, m, w, n, d, e);
    }
  };
  if (e <= 16) {
    launch(std::integral_constant<int, 16>{});
  } else if (e <= 32) {
    launch(std::integral_constant<int, 32>{});
  } else {
    launch(std::integral_constant<int, 64>{});
  }
  MOE_CUDA_LAUNCH_CHECK();
}

}  // namespace moe::cuda
