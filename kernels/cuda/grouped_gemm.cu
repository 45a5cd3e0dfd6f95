#include "kernels/cuda/grouped_gemm.h"

#include <mma.h>

#include <cstdint>

namespace moe::cuda {
namespace {

// Operand element (i, kk) of op(A) and (kk, j) of op(B) for group x, zero outside the matrix.
// rows: the group's row count m_x; o: its first row.
template <GroupedOp kOp>
__device__ __forceinline__ float FetchA(const float* a, int64_t o, int rows, int m, int k, int i, int kk) {
  if constexpr (kOp == GroupedOp::kTN) {
    return (kk < rows && i < m) ? a[(o + kk) * m + i] : 0.0f;
  } else {
    return (i < rows && kk < k) ? a[(o + i) * k + kk] : 0.0f;
  }
}
template <GroupedOp kOp>
__device__ __forceinline__ float FetchB(const float* b, int64_t o, int rows, int n, int k, int kk, int j) {
  if constexpr (kOp == GroupedOp::kNN) {
    return (kk < k && j < n) ? b[int64_t{kk} * n + j] : 0.0f;
  } else if constexpr (kOp == GroupedOp::kNT) {
    return (kk < k && j < n) ? b[int64_t{j} * k + kk] : 0.0f;
  } else {
    return (kk < rows && j < n) ? b[(o + kk) * n + j] : 0.0f;
  }
}

// Per block: which group, its rows, and where its operands and output start. Returns false when
// the block has no work (a row tile past the group's rows).
template <GroupedOp kOp>
struct Tile {
  const float* a;
  const float* b;
  float* c;  // the element (0, 0) of this group's output
  int64_t o;  // first row of the group in the grouped buffers
  int rows;   // m_x
  int m_eff;  // rows of the output matrix this group writes (m_x for NN/NT, m for TN)
  int k_eff;  // length of the reduction (k for NN/NT, m_x for TN)
  __device__ bool Init(const int32_t* offsets, const float* a_, const float* b_, float* c_, int m,
                       int n, int k, int row0) {
    const int x = blockIdx.z;
    o = offsets[x];
    rows = offsets[x + 1] - offsets[x];
    a = a_;
    if constexpr (kOp == GroupedOp::kTN) {
      b = b_;
      c = c_ + int64_t{x} * m * n;
      m_eff = m;
      k_eff = rows;
      return row0 < m;
    } else {
      b = b_ + int64_t{x} * k * n;
      c = c_ + o * n;
      m_eff = rows;
      k_eff = k;
      return row0 < rows;
    }
  }
};

constexpr int kWmmaBM = 128, kWmmaBN = 128, kWmmaBK = 32;

template <GroupedOp kOp>
__global__ void __launch_bounds__(256) GroupedGemmWmmaKernel(const int32_t* offsets, int m, int n, int k,
                                                             float alpha, const float* a_, const float* b_,
                                                             float beta, float* c_) {
  using namespace nvcuda;
  __shared__ __align__(32) bf16 as[kWmmaBM][kWmmaBK + 8];
  __shared__ __align__(32) bf16 bs[kWmmaBK][kWmmaBN + 8];
  __shared__ __align__(32) float scratch[8][16 * 16];
  const int row0 = blockIdx.y * kWmmaBM, col0 = blockIdx.x * kWmmaBN;
  Tile<kOp> tile;
  if (!tile.Init(offsets, a_, b_, c_, m, n, k, row0)) return;
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int warp_m = warp / 4, warp_n = warp % 4;  // 2 x 4 warps, each 64 x 32
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[4][2];
#pragma unroll
  for (int fi = 0; fi < 4; ++fi)
#pragma unroll
    for (int fj = 0; fj < 2; ++fj) wmma::fill_fragment(acc[fi][fj], 0.0f);

  for (int k0 = 0; k0 < tile.k_eff; k0 += kWmmaBK) {
    // Coalesced loads: consecutive threads walk the operand's contiguous dimension.
#pragma unroll 4
    for (int l = tid; l < kWmmaBM * kWmmaBK; l += 256) {
      int i, kk;
      if constexpr (kOp == GroupedOp::kTN) {
        i = l % kWmmaBM;
        kk = l / kWmmaBM;
      } else {
        kk = l % kWmmaBK;
        i = l / kWmmaBK;
      }
      as[i][kk] = __float2bfloat16(FetchA<kOp>(tile.a, tile.o, tile.rows, m, k, row0 + i, k0 + kk));
    }
#pragma unroll 4
    for (int l = tid; l < kWmmaBK * kWmmaBN; l += 256) {
      int kk, j;
      if constexpr (kOp == GroupedOp::kNT) {
        kk = l % kWmmaBK;
        j = l / kWmmaBK;
      } else {
        j = l % kWmmaBN;
        kk = l / kWmmaBN;
      }
      bs[kk][j] = __float2bfloat16(FetchB<kOp>(tile.b, tile.o, tile.rows, n, k, k0 + kk, col0 + j));
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < kWmmaBK; kk += 16) {
      wmma::fragment<wmma::matrix_a, 16, 16, 16, bf16, wmma::row_major> fa[4];
      wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, wmma::row_major> fb[2];
#pragma unroll
      for (int fi = 0; fi < 4; ++fi) wmma::load_matrix_sync(fa[fi], &as[warp_m * 64 + fi * 16][kk], kWmmaBK + 8);
#pragma unroll
      for (int fj = 0; fj < 2; ++fj) wmma::load_matrix_sync(fb[fj], &bs[kk][warp_n * 32 + fj * 16], kWmmaBN + 8);
#pragma unroll
      for (int fi = 0; fi < 4; ++fi)
#pragma unroll
        for (int fj = 0; fj < 2; ++fj) wmma::mma_sync(acc[fi][fj], fa[fi], fb[fj], acc[fi][fj]);
    }
    __syncthreads();
  }
  // Epilogue through a per-warp 16 x 16 scratch, with bounds and beta.
#pragma unroll
  for (int fi = 0; fi < 4; ++fi) {
#pragma unroll
    for (int fj = 0; fj < 2; ++fj) {
      wmma::store_matrix_sync(scratch[warp], acc[fi][fj], 16, wmma::mem_row_major);
      __syncwarp();
      for (int e = lane; e < 256; e += 32) {
        const int i = row0 + warp_m * 64 + fi * 16 + e / 16;
        const int j = col0 + warp_n * 32 + fj * 16 + e % 16;
        if (i < tile.m_eff && j < n) {
          float* dst = tile.c + int64_t{i} * n + j;
          const float v = alpha * scratch[warp][e];
          *dst = beta != 0.0f ? v + beta * *dst : v;
        }
      }
      __syncwarp();
    }
  }
}

constexpr int kFmaBM = 64, kFmaBN = 64, kFmaBK = 16;

// fp32 FMA version: 256 threads, 4 x 4 outputs each.
template <GroupedOp kOp>
__global__ void __launch_bounds__(256) GroupedGemmFmaKernel(const int32_t* offsets, int m, int n, int k,
                                                            float alpha, const float* a_, const float* b_,
                                                            float beta, float* c_) {
  __shared__ float as[kFmaBK][kFmaBM];
  __shared__ float bs[kFmaBK][kFmaBN];
  const int row0 = blockIdx.y * kFmaBM, col0 = blockIdx.x * kFmaBN;
  Tile<kOp> tile;
  if (!tile.Init(offsets, a_, b_, c_, m, n, k, row0)) return;
  const int tid = threadIdx.x, ty = tid / 16, tx = tid % 16;
  float acc[4][4] = {};
  for (int k0 = 0; k0 < tile.k_eff; k0 += kFmaBK) {
    for (int l = tid; l < kFmaBM * kFmaBK; l += 256) {
      int i, kk;
      if constexpr (kOp == GroupedOp::kTN) {
        i = l % kFmaBM;
        kk = l / kFmaBM;
      } else {
        kk = l % kFmaBK;
        i = l / kFmaBK;
      }
      as[kk][i] = FetchA<kOp>(tile.a, tile.o, tile.rows, m, k, row0 + i, k0 + kk);
    }
    for (int l = tid; l < kFmaBK * kFmaBN; l += 256) {
      int kk, j;
      if constexpr (kOp == GroupedOp::kNT) {
        kk = l % kFmaBK;
        j = l / kFmaBK;
      } else {
        j = l % kFmaBN;
        kk = l / kFmaBN;
      }
      bs[kk][j] = FetchB<kOp>(tile.b, tile.o, tile.rows, n, k, k0 + kk, col0 + j);
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < kFmaBK; ++kk) {
      float av[4], bv[4];
#pragma unroll
      for (int r = 0; r < 4; ++r) av[r] = as[kk][ty * 4 + r];
#pragma unroll
      for (int c = 0; c < 4; ++c) bv[c] = bs[kk][tx * 4 + c];
#pragma unroll
      for (int r = 0; r < 4; ++r)
#pragma unroll
        for (int c = 0; c < 4; ++c) acc[r][c] += av[r] * bv[c];
    }
    __syncthreads();
  }
#pragma unroll
  for (int r = 0; r < 4; ++r) {
#pragma unroll
    for (int c = 0; c < 4; ++c) {
      const int i = row0 + ty * 4 + r, j = col0 + tx * 4 + c;
      if (i < tile.m_eff && j < n) {
        float* dst = tile.c + int64_t{i} * n + j;
        const float v = alpha * acc[r][c];
        *dst = beta != 0.0f ? v + beta * *dst : v;
      }
    }
  }
}

template <GroupedOp kOp>
void LaunchGrouped(int groups, const int32_t* offsets, int max_rows, int m, int n, int k, float alpha,
                   const float* a, const float* b, float beta, float* c, bool tensor_cores,
                   cudaStream_t stream) {
  const int out_rows = kOp == GroupedOp::kTN ? m : max_rows;
  if (tensor_cores) {
    const dim3 grid((n + kWmmaBN - 1) / kWmmaBN, (out_rows + kWmmaBM - 1) / kWmmaBM, groups);
    GroupedGemmWmmaKernel<kOp><<<grid, 256, 0, stream>>>(offsets, m, n, k, alpha, a, b, beta, c);
  } else {
    const dim3 grid((n + kFmaBN - 1) / kFmaBN, (out_rows + kFmaBM - 1) / kFmaBM, groups);
    GroupedGemmFmaKernel<kOp><<<grid, 256, 0, stream>>>(offsets, m, n, k, alpha, a, b, beta, c);
  }
  MOE_CUDA_LAUNCH_CHECK();
}

}  // namespace

void GroupedGemm(GroupedOp op, int groups, const int32_t* offsets, int max_rows, int m, int n, int k,
                 float alpha, const float* a, const float* b, float beta, float* c, bool tensor_cores,
                 cudaStream_t stream) {
  if (groups <= 0 || n <= 0) return;
  if (op != GroupedOp::kTN && max_rows <= 0) return;
  if (op == GroupedOp::kTN && m <= 0) return;
  switch (op) {
    case GroupedOp::kNN:
      return LaunchGrouped<GroupedOp::kNN>(groups, offsets, max_rows, m, n, k, alpha, a, b, beta, c,
                                           tensor_cores, stream);
    case GroupedOp::kNT:
      return LaunchGrouped<GroupedOp::kNT>(groups, offsets, max_rows, m, n, k, alpha, a, b, beta, c,
                                           tensor_cores, stream);
    case GroupedOp::kTN:
      return LaunchGrouped<GroupedOp::kTN>(groups, offsets, max_rows, m, n, k, alpha, a, b, beta, c,
                                           tensor_cores, stream);
  }
}

}  // namespace moe::cuda
