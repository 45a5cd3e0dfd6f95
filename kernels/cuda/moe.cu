#include "kernels/cuda/moe.h"

#include <cublas_v2.h>
#include <mma.h>

#include <algorithm>
#include <cstdio>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <initializer_list>
#include <vector>

#include "kernels/cuda/matmul.h"
#include "kernels/cuda/nn.h"

namespace moe::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kMaxExperts = 64;

__device__ __forceinline__ float WarpSum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// ---- router ----

__global__ void RouterForwardKernel(float* probs, float* lse, int32_t* expert_idx, float* weights,
                                    const float* logits, int n, int e, int k) {
  const int t = blockIdx.x * blockDim.x + threadIdx.x;
  if (t >= n) return;
  const float* z = logits + int64_t{t} * e;
  float* p = probs + int64_t{t} * e;
  float mx = z[0];
  for (int x = 1; x < e; ++x) mx = fmaxf(mx, z[x]);
  float sum = 0.0f;
  for (int x = 0; x < e; ++x) {
    p[x] = expf(z[x] - mx);
    sum += p[x];
  }
  const float inv = 1.0f / sum;
  for (int x = 0; x < e; ++x) p[x] *= inv;
  lse[t] = mx + logf(sum);
  // Top-k by repeated selection: strictly greater wins, so ties go to the lower index.
  int32_t* idx = expert_idx + int64_t{t} * k;
  float* w = weights + int64_t{t} * k;
  uint64_t picked = 0;
  float picked_sum = 0.0f;
  for (int j = 0; j < k; ++j) {
    int best = -1;
    for (int x = 0; x < e; ++x) {
      if ((picked >> x) & 1ull) continue;
      if (best < 0 || p[x] > p[best]) best = x;
    }
    picked |= 1ull << best;
    idx[j] = best;
    w[j] = p[best];
    picked_sum += p[best];
  }
  for (int j = 0; j < k; ++j) w[j] /= picked_sum;
}

__global__ void RouterStatsKernel(double* prob_sum, double* z_sum, double* entropy_sum,
                                  const float* probs, const float* lse, int n, int e) {
  __shared__ double acc[kMaxExperts + 2];
  for (int x = threadIdx.x; x < e + 2; x += blockDim.x) acc[x] = 0.0;
  __syncthreads();
  const int t = blockIdx.x * blockDim.x + threadIdx.x;
  if (t < n) {
    const float* p = probs + int64_t{t} * e;
    double ent = 0.0;
    for (int x = 0; x < e; ++x) {
      atomicAdd(acc + x, double{p[x]});
      if (p[x] > 0.0f) ent -= double{p[x]} * log(double{p[x]});
    }
    atomicAdd(acc + e, double{lse[t]} * lse[t]);
    atomicAdd(acc + e + 1, ent);
  }
  __syncthreads();
  for (int x = threadIdx.x; x < e; x += blockDim.x) atomicAdd(prob_sum + x, acc[x]);
  if (threadIdx.x == 0) {
    atomicAdd(z_sum, acc[e]);
    atomicAdd(entropy_sum, acc[e + 1]);
  }
}

__global__ void RouterBackwardKernel(float* dlogits, const float* dweights, const float* probs,
                                     const float* lse, const int32_t* expert_idx, const float* aux_grad,
                                     float z_scale, int n, int e, int k) {
  const int t = blockIdx.x * blockDim.x + threadIdx.x;
  if (t >= n) return;
  float dp[kMaxExperts];
  const float* p = probs + int64_t{t} * e;
  const int32_t* idx = expert_idx + int64_t{t} * k;
  for (int x = 0; x < e; ++x) dp[x] = aux_grad != nullptr ? aux_grad[x] : 0.0f;
  if (dweights != nullptr) {
    const float* dw = dweights + int64_t{t} * k;
    float s = 0.0f;
    for (int j = 0; j < k; ++j) s += p[idx[j]];
    float dw_dot_w = 0.0f;
    for (int j = 0; j < k; ++j) dw_dot_w += dw[j] * (p[idx[j]] / s);
    for (int j = 0; j < k; ++j) dp[idx[j]] += (dw[j] - dw_dot_w) / s;
  }
  float p_dot_dp = 0.0f;
  for (int x = 0; x < e; ++x) p_dot_dp += p[x] * dp[x];
  const float zc = 2.0f * z_scale * lse[t];
  float* dz = dlogits + int64_t{t} * e;
  for (int x = 0; x < e; ++x) dz[x] += p[x] * (dp[x] - p_dot_dp + zc);
}

__global__ void RouterCountStatsKernel(double* stats, const int32_t* routed, const int32_t* counts, int e) {
  if (threadIdx.x != 0 || blockIdx.x != 0) return;
  double dropped = 0.0;
  for (int x = 0; x < e; ++x) {
    stats[x] = routed[x];
    dropped += routed[x] - counts[x];
  }
  stats[2 * e + 2] = dropped;
}

__global__ void RouterAuxGradKernel(float* aux_grad, const double* stats, int e, double n_global, int k,
                                    double coef_e, float loss_scale) {
  const int x = threadIdx.x;
  if (x < e) aux_grad[x] = static_cast<float>(coef_e * (stats[x] / (n_global * k)) * loss_scale);
}

// ---- routing plan: a stable counting sort by expert ----

// One block of 1024 threads per expert: the rank of each of its assignments among the
// assignments to it, in assignment order (t, then j), by a block-wide prefix sum per chunk.
__global__ void __launch_bounds__(1024) PlanRankKernel(int32_t* assignment_to_slot, int32_t* counts,
                                                       int32_t* routed, const int32_t* expert_idx,
                                                       int nk, int64_t capacity) {
  __shared__ int warp_total[32];
  const int x = blockIdx.x, lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  int base = 0;
  for (int a0 = 0; a0 < nk; a0 += 1024) {
    const int a = a0 + threadIdx.x;
    const int flag = (a < nk && expert_idx[a] == x) ? 1 : 0;
    int v = flag;  // inclusive scan within the warp
    for (int o = 1; o < 32; o <<= 1) {
      const int y = __shfl_up_sync(0xffffffffu, v, o);
      if (lane >= o) v += y;
    }
    if (lane == 31) warp_total[warp] = v;
    __syncthreads();
    if (warp == 0) {
      int w = warp_total[lane];
      for (int o = 1; o < 32; o <<= 1) {
        const int y = __shfl_up_sync(0xffffffffu, w, o);
        if (lane >= o) w += y;
      }
      warp_total[lane] = w;  // inclusive over warps
    }
    __syncthreads();
    if (flag) {
      const int rank = base + v - 1 + (warp > 0 ? warp_total[warp - 1] : 0);
      assignment_to_slot[a] = (capacity > 0 && rank >= capacity) ? -1 : rank;
    }
    base += warp_total[31];
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    routed[x] = base;
    counts[x] = capacity > 0 ? static_cast<int>(min(static_cast<int64_t>(base), capacity)) : base;
  }
}

// Rank within expert -> global slot; offsets from the counts (every block recomputes them).
__global__ void PlanSlotKernel(int32_t* assignment_to_slot, int32_t* slot_to_assignment, int32_t* offsets,
                               const int32_t* counts, const int32_t* expert_idx, int nk, int e) {
  __shared__ int off[kMaxExperts + 1];
  if (threadIdx.x == 0) {
    off[0] = 0;
    for (int x = 0; x < e; ++x) off[x + 1] = off[x] + counts[x];
  }
  __syncthreads();
  if (blockIdx.x == 0) {
    for (int x = threadIdx.x; x <= e; x += blockDim.x) offsets[x] = off[x];
  }
  const int a = blockIdx.x * blockDim.x + threadIdx.x;
  if (a >= nk) return;
  const int r = assignment_to_slot[a];
  if (r < 0) return;
  const int slot = off[expert_idx[a]] + r;
  assignment_to_slot[a] = slot;
  slot_to_assignment[slot] = a;
}

// ---- permute / unpermute: one warp per assignment or token ----

__global__ void PermuteForwardKernel(float* xs, const float* x, const int32_t* a2s, int n, int k, int d) {
  const int a = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x % 32;
  if (a >= n * k) return;
  const int s = a2s[a];
  if (s < 0) return;
  const float* src = x + int64_t{a / k} * d;
  float* dst = xs + int64_t{s} * d;
  for (int c = lane; c < d; c += 32) dst[c] = src[c];
}

__global__ void PermuteBackwardKernel(float* dx, const float* dxs, const int32_t* a2s, int n, int k, int d) {
  const int t = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x % 32;
  if (t >= n) return;
  float* dst = dx + int64_t{t} * d;
  for (int j = 0; j < k; ++j) {
    const int s = a2s[int64_t{t} * k + j];
    if (s < 0) continue;
    const float* src = dxs + int64_t{s} * d;
    for (int c = lane; c < d; c += 32) dst[c] += src[c];
  }
}

__global__ void UnpermuteForwardKernel(float* out, const float* ys, const float* weights, const int32_t* a2s,
                                       int n, int k, int d) {
  const int t = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x % 32;
  if (t >= n) return;
  float* dst = out + int64_t{t} * d;
  for (int c = lane; c < d; c += 32) dst[c] = 0.0f;
  for (int j = 0; j < k; ++j) {
    const int64_t a = int64_t{t} * k + j;
    const int s = a2s[a];
    if (s < 0) continue;
    const float w = weights[a];
    const float* src = ys + int64_t{s} * d;
    for (int c = lane; c < d; c += 32) dst[c] += w * src[c];
  }
}

__global__ void UnpermuteBackwardKernel(float* dys, float* dweights, const float* dout, const float* ys,
                                        const float* weights, const int32_t* a2s, int n, int k, int d) {
  const int a = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x % 32;
  if (a >= n * k) return;
  const int s = a2s[a];
  if (s < 0) return;
  const float* g = dout + int64_t{a / k} * d;
  if (dys != nullptr) {
    const float w = weights[a];
    float* dst = dys + int64_t{s} * d;
    for (int c = lane; c < d; c += 32) dst[c] += w * g[c];
  }
  if (dweights != nullptr) {
    const float* y = ys + int64_t{s} * d;
    float dot = 0.0f;
    for (int c = lane; c < d; c += 32) dot += g[c] * y[c];
    dot = WarpSum(dot);
    if (lane == 0) dweights[a] += dot;
  }
}

// ---- grouped GEMM ----

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

// ---- fast path helpers ----

void CheckBlas(cublasStatus_t st, const char* what, const char* file, int line) {
  if (st == CUBLAS_STATUS_SUCCESS) return;
  std::fprintf(stderr, "cuBLAS error at %s:%d: %s: status %d\n", file, line, what, static_cast<int>(st));
  std::abort();
}
#define MOE_BLAS_CHECK(expr) CheckBlas((expr), #expr, __FILE__, __LINE__)

__device__ __forceinline__ float SigmoidF(float x) { return 1.0f / (1.0f + expf(-x)); }

#define MOE_GRID_LOOP(i, n)                                                                   \
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < (n); \
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)

// Eight bf16 as one 16-byte word and back.
__device__ __forceinline__ void Unpack8(uint4 w, float* f) {
  const uint32_t words[4] = {w.x, w.y, w.z, w.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    __nv_bfloat162 p;
    memcpy(&p, &words[i], 4);
    const float2 v = __bfloat1622float2(p);
    f[2 * i] = v.x;
    f[2 * i + 1] = v.y;
  }
}
__device__ __forceinline__ uint4 Pack8(const float* f) {
  uint32_t words[4];
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const __nv_bfloat162 p = __floats2bfloat162_rn(f[2 * i], f[2 * i + 1]);
    memcpy(&words[i], &p, 4);
  }
  return make_uint4(words[0], words[1], words[2], words[3]);
}

// h = silu(g) u, eight elements per thread (16-byte aligned pointers), the n % 8 tail by block 0.
__global__ void SwigluForwardBf16Vec8Kernel(bf16* h, const bf16* g, const bf16* u, int64_t n) {
  MOE_GRID_LOOP(i, n / 8) {
    float gv[8], uv[8];
    Unpack8(reinterpret_cast<const uint4*>(g)[i], gv);
    Unpack8(reinterpret_cast<const uint4*>(u)[i], uv);
#pragma unroll
    for (int e = 0; e < 8; ++e) gv[e] = gv[e] * SigmoidF(gv[e]) * uv[e];
    reinterpret_cast<uint4*>(h)[i] = Pack8(gv);
  }
  const int64_t tail = n - n / 8 * 8;
  if (blockIdx.x == 0 && threadIdx.x < tail) {
    const int64_t i = n / 8 * 8 + threadIdx.x;
    const float gi = __bfloat162float(g[i]), ui = __bfloat162float(u[i]);
    h[i] = __float2bfloat16(gi * SigmoidF(gi) * ui);
  }
}

// Two bf16 per thread; an odd tail element is done alone.
__global__ void SwigluForwardBf16Kernel(bf16* h, const bf16* g, const bf16* u, int64_t n) {
  MOE_GRID_LOOP(i, n / 2) {
    const float2 gv = __bfloat1622float2(reinterpret_cast<const __nv_bfloat162*>(g)[i]);
    const float2 uv = __bfloat1622float2(reinterpret_cast<const __nv_bfloat162*>(u)[i]);
    reinterpret_cast<__nv_bfloat162*>(h)[i] =
        __floats2bfloat162_rn(gv.x * SigmoidF(gv.x) * uv.x, gv.y * SigmoidF(gv.y) * uv.y);
  }
  if (n % 2 == 1 && blockIdx.x == 0 && threadIdx.x == 0) {
    const float gi = __bfloat162float(g[n - 1]), ui = __bfloat162float(u[n - 1]);
    h[n - 1] = __float2bfloat16(gi * SigmoidF(gi) * ui);
  }
}

__device__ __forceinline__ void SwigluGrad(float d, float g, float u, float* dg, float* du) {
  const float s = SigmoidF(g);
  *dg = d * u * s * (1.0f + g * (1.0f - s));
  *du = d * g * s;
}

// Eight bf16 per thread (16-byte aligned pointers), the n % 8 tail by block 0.
__global__ void SwigluBackwardBf16Vec8Kernel(bf16* dg, bf16* du, const bf16* dh, const bf16* g, const bf16* u,
                                             int64_t n) {
  MOE_GRID_LOOP(i, n / 8) {
    float gv[8], uv[8], dv[8], dgv[8], duv[8];
    Unpack8(reinterpret_cast<const uint4*>(g)[i], gv);
    Unpack8(reinterpret_cast<const uint4*>(u)[i], uv);
    Unpack8(reinterpret_cast<const uint4*>(dh)[i], dv);
#pragma unroll
    for (int e = 0; e < 8; ++e) SwigluGrad(dv[e], gv[e], uv[e], &dgv[e], &duv[e]);
    reinterpret_cast<uint4*>(dg)[i] = Pack8(dgv);
    reinterpret_cast<uint4*>(du)[i] = Pack8(duv);
  }
  const int64_t tail = n - n / 8 * 8;
  if (blockIdx.x == 0 && threadIdx.x < tail) {
    const int64_t i = n / 8 * 8 + threadIdx.x;
    float dgi, dui;
    SwigluGrad(__bfloat162float(dh[i]), __bfloat162float(g[i]), __bfloat162float(u[i]), &dgi, &dui);
    dg[i] = __float2bfloat16(dgi);
    du[i] = __float2bfloat16(dui);
  }
}

// Two bf16 per thread when every pointer allows (kPairs), an odd tail alone; else one each.
template <bool kPairs>
__global__ void SwigluBackwardBf16Kernel(bf16* dg, bf16* du, const bf16* dh, const bf16* g, const bf16* u,
                                         int64_t n) {
  if constexpr (kPairs) {
    MOE_GRID_LOOP(i, n / 2) {
      const float2 gv = __bfloat1622float2(reinterpret_cast<const __nv_bfloat162*>(g)[i]);
      const float2 uv = __bfloat1622float2(reinterpret_cast<const __nv_bfloat162*>(u)[i]);
      const float2 dv = __bfloat1622float2(reinterpret_cast<const __nv_bfloat162*>(dh)[i]);
      float dg0, du0, dg1, du1;
      SwigluGrad(dv.x, gv.x, uv.x, &dg0, &du0);
      SwigluGrad(dv.y, gv.y, uv.y, &dg1, &du1);
      reinterpret_cast<__nv_bfloat162*>(dg)[i] = __floats2bfloat162_rn(dg0, dg1);
      reinterpret_cast<__nv_bfloat162*>(du)[i] = __floats2bfloat162_rn(du0, du1);
    }
  }
  const int64_t first = kPairs ? n - n % 2 : 0;
  for (int64_t i = first + static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    float dgi, dui;
    SwigluGrad(__bfloat162float(dh[i]), __bfloat162float(g[i]), __bfloat162float(u[i]), &dgi, &dui);
    dg[i] = __float2bfloat16(dgi);
    du[i] = __float2bfloat16(dui);
  }
}

// out += a (+ b when b is not null); two elements per thread when the pointers allow (kPairs).
template <bool kPairs>
__global__ void AccumulateBf16Kernel(float* out, const bf16* a, const bf16* b, int64_t n) {
  if constexpr (kPairs) {
    MOE_GRID_LOOP(i, n / 2) {
      float2 o = reinterpret_cast<float2*>(out)[i];
      const float2 av = __bfloat1622float2(reinterpret_cast<const __nv_bfloat162*>(a)[i]);
      o.x += av.x;
      o.y += av.y;
      if (b != nullptr) {
        const float2 bv = __bfloat1622float2(reinterpret_cast<const __nv_bfloat162*>(b)[i]);
        o.x += bv.x;
        o.y += bv.y;
      }
      reinterpret_cast<float2*>(out)[i] = o;
    }
  }
  const int64_t first = kPairs ? n - n % 2 : 0;
  for (int64_t i = first + static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    out[i] += __bfloat162float(a[i]) + (b != nullptr ? __bfloat162float(b[i]) : 0.0f);
  }
}

// Whether every pointer is a multiple of `bytes` (null counts as aligned).

unsigned ElementwiseBlocks(int64_t n) { return std::min<unsigned>(std::max(1u, BlocksFor(n, kThreads)), 8192); }

void AccumulateBf16(float* out, const bf16* a, const bf16* b, int64_t n, cudaStream_t stream) {
  if (out == nullptr || n <= 0) return;
  if (Aligned(8, {out}) && Aligned(4, {a, b})) {
    AccumulateBf16Kernel<true><<<ElementwiseBlocks(n / 2), kThreads, 0, stream>>>(out, a, b, n);
  } else {
    AccumulateBf16Kernel<false><<<ElementwiseBlocks(n), kThreads, 0, stream>>>(out, a, b, n);
  }
  MOE_CUDA_LAUNCH_CHECK();
}

void CheckExperts(int e) {
  if (e > kMaxExperts) {
    std::fprintf(stderr, "cuda router: %d experts, at most %d supported\n", e, kMaxExperts);
    std::abort();
  }
}

}  // namespace

void RouterForward(float* probs, float* lse, int32_t* expert_idx, float* weights, const float* logits,
                   int n, int e, int k, cudaStream_t stream) {
  CheckExperts(e);
  if (n <= 0) return;
  RouterForwardKernel<<<BlocksFor(n, 128), 128, 0, stream>>>(probs, lse, expert_idx, weights, logits, n, e, k);
  MOE_CUDA_LAUNCH_CHECK();
}

void RouterStats(double* prob_sum, double* z_sum, double* entropy_sum, const float* probs,
                 const float* lse, int n, int e, cudaStream_t stream) {
  CheckExperts(e);
  if (n <= 0) return;
  RouterStatsKernel<<<BlocksFor(n, kThreads), kThreads, 0, stream>>>(prob_sum, z_sum, entropy_sum, probs,
                                                                    lse, n, e);
  MOE_CUDA_LAUNCH_CHECK();
}

void RouterBackward(float* dlogits, const float* dweights, const float* probs, const float* lse,
                    const int32_t* expert_idx, const float* aux_grad, float z_scale, int n, int e, int k,
                    cudaStream_t stream) {
  CheckExperts(e);
  if (n <= 0) return;
  RouterBackwardKernel<<<BlocksFor(n, 128), 128, 0, stream>>>(dlogits, dweights, probs, lse, expert_idx,
                                                              aux_grad, z_scale, n, e, k);
  MOE_CUDA_LAUNCH_CHECK();
}

void RouterCountStats(double* stats, const int32_t* routed, const int32_t* counts, int e, cudaStream_t stream) {
  CheckExperts(e);
  RouterCountStatsKernel<<<1, 32, 0, stream>>>(stats, routed, counts, e);
  MOE_CUDA_LAUNCH_CHECK();
}

void RouterAuxGrad(float* aux_grad, const double* stats, int e, double n_global, int k, double coef_e,
                   float loss_scale, cudaStream_t stream) {
  CheckExperts(e);
  RouterAuxGradKernel<<<1, kMaxExperts, 0, stream>>>(aux_grad, stats, e, n_global, k, coef_e, loss_scale);
  MOE_CUDA_LAUNCH_CHECK();
}

void BuildRoutingPlan(int32_t* counts, int32_t* routed, int32_t* offsets, int32_t* assignment_to_slot,
                      int32_t* slot_to_assignment, const int32_t* expert_idx, int n, int k, int e,
                      int64_t capacity, cudaStream_t stream) {
  CheckExperts(e);
  const int nk = n * k;
  PlanRankKernel<<<e, 1024, 0, stream>>>(assignment_to_slot, counts, routed, expert_idx, nk, capacity);
  MOE_CUDA_LAUNCH_CHECK();
  PlanSlotKernel<<<std::max(1u, BlocksFor(nk, kThreads)), kThreads, 0, stream>>>(
      assignment_to_slot, slot_to_assignment, offsets, counts, expert_idx, nk, e);
  MOE_CUDA_LAUNCH_CHECK();
}

void PermuteForward(float* xs, const float* x, const int32_t* a2s, int n, int k, int d, cudaStream_t stream) {
  if (n * k <= 0) return;
  PermuteForwardKernel<<<BlocksFor(int64_t{n} * k, kThreads / 32), kThreads, 0, stream>>>(xs, x, a2s, n, k, d);
  MOE_CUDA_LAUNCH_CHECK();
}

void PermuteBackward(float* dx, const float* dxs, const int32_t* a2s, int n, int k, int d, cudaStream_t stream) {
  if (n <= 0) return;
  PermuteBackwardKernel<<<BlocksFor(n, kThreads / 32), kThreads, 0, stream>>>(dx, dxs, a2s, n, k, d);
  MOE_CUDA_LAUNCH_CHECK();
}

void UnpermuteForward(float* out, const float* ys, const float* weights, const int32_t* a2s, int n, int k,
                      int d, cudaStream_t stream) {
  if (n <= 0) return;
  UnpermuteForwardKernel<<<BlocksFor(n, kThreads / 32), kThreads, 0, stream>>>(out, ys, weights, a2s, n, k, d);
  MOE_CUDA_LAUNCH_CHECK();
}

void UnpermuteBackward(float* dys, float* dweights, const float* dout, const float* ys, const float* weights,
                       const int32_t* a2s, int n, int k, int d, cudaStream_t stream) {
  if (n * k <= 0) return;
  UnpermuteBackwardKernel<<<BlocksFor(int64_t{n} * k, kThreads / 32), kThreads, 0, stream>>>(
      dys, dweights, dout, ys, weights, a2s, n, k, d);
  MOE_CUDA_LAUNCH_CHECK();
}

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

void ExpertsForward(float* ys, float* g, float* u, float* h, const float* xs, const float* w1,
                    const float* w3, const float* w2, const int32_t* offsets, int max_rows, int e_local,
                    int d, int f, bool tc, cudaStream_t stream) {
  if (max_rows <= 0) return;
  GroupedGemm(GroupedOp::kNN, e_local, offsets, max_rows, 0, f, d, 1.0f, xs, w1, 0.0f, g, tc, stream);
  GroupedGemm(GroupedOp::kNN, e_local, offsets, max_rows, 0, f, d, 1.0f, xs, w3, 0.0f, u, tc, stream);
  SwigluForward(h, g, u, int64_t{max_rows} * f, stream);
  GroupedGemm(GroupedOp::kNN, e_local, offsets, max_rows, 0, d, f, 1.0f, h, w2, 0.0f, ys, tc, stream);
}

void ExpertsBackward(float* dxs, float* dw1, float* dw3, float* dw2, const float* dys, const float* xs,
                     const float* g, const float* u, const float* h, const float* w1, const float* w3,
                     const float* w2, const int32_t* offsets, int max_rows, int e_local, int d, int f,
                     float* scratch, bool tc, cudaStream_t stream) {
  if (max_rows <= 0) return;
  float* dg = scratch;                          // (rows, f)
  float* du = scratch + int64_t{max_rows} * f;  // (rows, f): first dh = dy W2^T, then du
  GroupedGemm(GroupedOp::kNT, e_local, offsets, max_rows, 0, f, d, 1.0f, dys, w2, 0.0f, du, tc, stream);
  if (dw2 != nullptr) GroupedGemm(GroupedOp::kTN, e_local, offsets, max_rows, f, d, 0, 1.0f, h, dys, 1.0f, dw2, tc, stream);
  SwigluBackward(dg, du, du, g, u, int64_t{max_rows} * f, /*accumulate=*/false, stream);
  if (dw1 != nullptr) GroupedGemm(GroupedOp::kTN, e_local, offsets, max_rows, d, f, 0, 1.0f, xs, dg, 1.0f, dw1, tc, stream);
  if (dw3 != nullptr) GroupedGemm(GroupedOp::kTN, e_local, offsets, max_rows, d, f, 0, 1.0f, xs, du, 1.0f, dw3, tc, stream);
  if (dxs != nullptr) {
    GroupedGemm(GroupedOp::kNT, e_local, offsets, max_rows, 0, d, f, 1.0f, dg, w1, 1.0f, dxs, tc, stream);
    GroupedGemm(GroupedOp::kNT, e_local, offsets, max_rows, 0, d, f, 1.0f, du, w3, 1.0f, dxs, tc, stream);
  }
}

// grid.y walks the blocks, grid.x and the threads a block's words.
template <typename Word>
__global__ void CopyRowBlocksKernel(char* dst, const char* src, const RowBlocks blocks, int64_t row_bytes) {
  const int i = blockIdx.y;
  const int64_t words = blocks.rows[i] * row_bytes / sizeof(Word);
  const Word* s = reinterpret_cast<const Word*>(src + blocks.src_row[i] * row_bytes);
  Word* d = reinterpret_cast<Word*>(dst + blocks.dst_row[i] * row_bytes);
  for (int64_t w = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; w < words;
       w += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    d[w] = s[w];
  }
}

void CopyRowBlocks(void* dst, const void* src, const RowBlocks& blocks, int64_t row_bytes, cudaStream_t stream) {
  if (blocks.count <= 0 || row_bytes <= 0) return;
  int64_t most = 0;
  for (int i = 0; i < blocks.count; ++i) most = std::max(most, blocks.rows[i]);
  if (most == 0) return;
  const dim3 grid(std::min<unsigned>(BlocksFor(most * row_bytes / 16 + 1, kThreads), 1024), blocks.count);
  const uintptr_t bits = reinterpret_cast<uintptr_t>(dst) | reinterpret_cast<uintptr_t>(src) |
                         static_cast<uintptr_t>(row_bytes);
  char* d = static_cast<char*>(dst);
  const char* s = static_cast<const char*>(src);
  if (bits % 16 == 0) {
    CopyRowBlocksKernel<int4><<<grid, kThreads, 0, stream>>>(d, s, blocks, row_bytes);
  } else if (bits % 4 == 0) {
    CopyRowBlocksKernel<int32_t><<<grid, kThreads, 0, stream>>>(d, s, blocks, row_bytes);
  } else {
    CopyRowBlocksKernel<int16_t><<<grid, kThreads, 0, stream>>>(d, s, blocks, row_bytes);
  }
  MOE_CUDA_LAUNCH_CHECK();
}

// ---- fast path ----

namespace {

// Rows of `blocks` from bf16 src to fp32 out: out = src, or out += src (kAccumulate); grid.y
// walks the blocks as in CopyRowBlocksKernel. Two elements per thread when the pointers allow.
template <bool kAccumulate, bool kPairs>
__global__ void RowBlocksToFloatKernel(float* out, const bf16* src, const RowBlocks blocks, int d) {
  const int i = blockIdx.y;
  const int64_t n = blocks.rows[i] * d;
  float* o = out + blocks.dst_row[i] * d;
  const bf16* s = src + blocks.src_row[i] * d;
  const int64_t first = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  if constexpr (kPairs) {
    for (int64_t j = first; j < n / 2; j += stride) {
      const float2 v = __bfloat1622float2(reinterpret_cast<const __nv_bfloat162*>(s)[j]);
      float2& w = reinterpret_cast<float2*>(o)[j];
      w = kAccumulate ? make_float2(w.x + v.x, w.y + v.y) : v;
    }
  } else {
    for (int64_t j = first; j < n; j += stride) o[j] = (kAccumulate ? o[j] : 0.0f) + __bfloat162float(s[j]);
  }
}

void RowBlocksToFloat(float* out, const bf16* src, const RowBlocks& blocks, int d, bool accumulate,
                      cudaStream_t stream) {
  int64_t most = 0;
  for (int i = 0; i < blocks.count; ++i) most = std::max(most, blocks.rows[i]);
  if (most == 0 || d <= 0) return;
  const bool pairs = d % 2 == 0 && Aligned(8, {out}) && Aligned(4, {src});
  const dim3 grid(std::min<unsigned>(BlocksFor(most * d / (pairs ? 2 : 1), kThreads), 1024), blocks.count);
  if (accumulate) {
    if (pairs) RowBlocksToFloatKernel<true, true><<<grid, kThreads, 0, stream>>>(out, src, blocks, d);
    else RowBlocksToFloatKernel<true, false><<<grid, kThreads, 0, stream>>>(out, src, blocks, d);
  } else {
    if (pairs) RowBlocksToFloatKernel<false, true><<<grid, kThreads, 0, stream>>>(out, src, blocks, d);
    else RowBlocksToFloatKernel<false, false><<<grid, kThreads, 0, stream>>>(out, src, blocks, d);
  }
  MOE_CUDA_LAUNCH_CHECK();
}

// The layout's rows from compact fp32 rows: grid.y = expert x, whose span[x] rows from
// dst_row[x] on take its rows[x] rows from src row src_row[x] on, then zeros.
struct LayoutBlocks {
  int64_t src_row[RowBlocks::kMax], dst_row[RowBlocks::kMax], rows[RowBlocks::kMax], span[RowBlocks::kMax];
};

__global__ void ToLayoutKernel(bf16* dst, const float* src, const LayoutBlocks blocks, int d) {
  const int x = blockIdx.y;
  const int64_t real = blocks.rows[x] * d, n = blocks.span[x] * d;
  bf16* o = dst + blocks.dst_row[x] * d;
  const float* s = src + blocks.src_row[x] * d;
  for (int64_t j = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; j < n;
       j += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    o[j] = __float2bfloat16(j < real ? s[j] : 0.0f);
  }
}

int64_t CountSum(const int32_t* host_counts, int e_local) {
  int64_t rows = 0;
  for (int x = 0; x < e_local; ++x) rows += host_counts[x];
  return rows;
}

}  // namespace

ExpertLayout PlanExpertLayout(const int32_t* host_counts, int e_local) {
  // Chunks are a multiple of 128 rows: few distinct shapes over a run, so that cuBLAS picks its
  // kernel for each once (a new shape costs a heuristic query on the host, on the critical path).
  constexpr int64_t kStep = 128;
  auto round_up = [](int64_t v) { return (v + kStep - 1) / kStep * kStep; };
  ExpertLayout l;
  const int64_t rows = CountSum(host_counts, e_local);
  auto compact = [&]() {
    l = ExpertLayout();
    l.rows = rows;
    for (int x = 0; x < e_local; ++x) l.start[x + 1] = l.start[x] + host_counts[x];
    return l;
  };
  if (rows <= 0 || e_local > RowBlocks::kMax || e_local > ExpertLayout::kMaxChunks) return compact();
  int64_t cap = 0;
  for (int x = 0; x < e_local; ++x) cap = std::max(cap, round_up(host_counts[x]));
  if (e_local * cap <= 2 * rows || e_local * cap <= rows + kStep * e_local) {
    l.chunk = static_cast<int>(cap);
    l.chunks = e_local;
    l.strided = true;
    for (int x = 0; x <= e_local; ++x) l.first_chunk[x] = x;
  } else {
    // Chunks of the largest count over j: the fewest padded rows, an extra chunk index (one
    // more weight-gradient call over the experts that have it) counted as a quarter of a full one.
    int64_t best_cost = -1;
    for (int j = 2; j <= 8; ++j) {
      const int64_t chunk = round_up((cap + j - 1) / j);
      int64_t chunks = 0, most = 0;
      for (int x = 0; x < e_local; ++x) {
        const int64_t c = (host_counts[x] + chunk - 1) / chunk;
        chunks += c;
        most = std::max(most, c);
      }
      const int64_t cost = chunks * chunk + (most - 1) * chunk * e_local / 4;
      if (chunks <= ExpertLayout::kMaxChunks && (best_cost < 0 || cost < best_cost)) {
        best_cost = cost;
        l.chunk = static_cast<int>(chunk);
      }
    }
    if (best_cost < 0) return compact();
    l.chunks = 0;
    for (int x = 0; x < e_local; ++x) {
      l.first_chunk[x] = l.chunks;
      l.chunks += static_cast<int>((host_counts[x] + l.chunk - 1) / l.chunk);
    }
    l.first_chunk[e_local] = l.chunks;
  }
  l.rows = int64_t{l.chunks} * l.chunk;
  for (int x = 0; x <= e_local; ++x) l.start[x] = int64_t{l.first_chunk[x]} * l.chunk;
  return l;
}

int64_t ExpertLayoutRows(const int32_t* host_counts, int e_local) {
  return PlanExpertLayout(host_counts, e_local).rows;
}

RowBlocks ExpertLayoutToCompact(const int32_t* host_counts, int e_local) {
  const ExpertLayout l = PlanExpertLayout(host_counts, e_local);
  RowBlocks blocks;
  int64_t o = 0;
  for (int x = 0; x < e_local; ++x) {
    if (host_counts[x] > 0) {
      blocks.src_row[blocks.count] = l.start[x];
      blocks.dst_row[blocks.count] = o;
      blocks.rows[blocks.count] = host_counts[x];
      ++blocks.count;
    }
    o += host_counts[x];
  }
  return blocks;
}

void ToExpertLayout(bf16* dst, const float* src, const int32_t* host_counts, int e_local, int d,
                    cudaStream_t stream) {
  const ExpertLayout l = PlanExpertLayout(host_counts, e_local);
  if (l.chunk == 0) return CastToBf16(dst, src, CountSum(host_counts, e_local) * d, stream);
  LayoutBlocks blocks;  // one per expert, empty ones included: grid.y is the expert
  int64_t o = 0, most = 0;
  for (int x = 0; x < e_local; ++x) {
    blocks.src_row[x] = o;
    blocks.dst_row[x] = l.start[x];
    blocks.rows[x] = host_counts[x];
    blocks.span[x] = l.start[x + 1] - l.start[x];
    most = std::max(most, blocks.span[x]);
    o += host_counts[x];
  }
  if (most == 0) return;
  const dim3 grid(std::min<unsigned>(BlocksFor(most * d, kThreads), 1024), e_local);
  ToLayoutKernel<<<grid, kThreads, 0, stream>>>(dst, src, blocks, d);
  MOE_CUDA_LAUNCH_CHECK();
}

GroupedBlas::GroupedBlas() {
  cublasHandle_t h = nullptr;
  MOE_BLAS_CHECK(cublasCreate(&h));
  handle_ = h;
  MOE_CUDA_CHECK(cudaMalloc(&device_ptrs_, sizeof(void*) * 3 * kTable));
}

GroupedBlas::~GroupedBlas() {
  cudaFree(device_ptrs_);
  cublasDestroy(static_cast<cublasHandle_t>(handle_));
}

void GroupedBlas::Gemm(GroupedOp op, int groups, const int32_t* host_counts, int m, int n, int k, float alpha,
                       float beta, std::initializer_list<Operands> sets, cudaStream_t stream) {
  if (n <= 0 || (op == GroupedOp::kTN && m <= 0)) return;
  // Row-major C (rows, cols) = A B is column-major C^T = B^T A^T: cuBLAS's A is our b.
  std::vector<cublasOperation_t> ta, tb;
  std::vector<int> mm, nn, kk, lda, ldb, ldc, group_size;
  std::vector<float> alphas, betas;
  // cuBLAS's A, B and C pointer arrays, uploaded below.
  std::vector<const void*> table(3 * kMaxProblems, nullptr);
  int count = 0;
  for (const Operands& s : sets) {
    int64_t o = 0;  // first row of group x
    for (int x = 0; x < groups; ++x) {
      const int rows = host_counts[x];
      if (rows <= 0) {
        if (op == GroupedOp::kTN && beta == 0.0f && m > 0 && n > 0) {
          MOE_CUDA_CHECK(cudaMemsetAsync(s.c + int64_t{x} * m * n, 0, sizeof(bf16) * m * n, stream));
        }
        continue;
      }
      if (count == kMaxProblems) {
        std::fprintf(stderr, "GroupedBlas: more than %d products in one call\n", kMaxProblems);
        std::abort();
      }
      switch (op) {
        case GroupedOp::kNN:  // c[rows] (rows, n) = a[rows] (rows, k) @ b_x (k, n)
          ta.push_back(CUBLAS_OP_N), tb.push_back(CUBLAS_OP_N);
          mm.push_back(n), nn.push_back(rows), kk.push_back(k);
          lda.push_back(n), ldb.push_back(k), ldc.push_back(n);
          table[count] = s.b + int64_t{x} * k * n;
          table[kMaxProblems + count] = s.a + o * k;
          table[2 * kMaxProblems + count] = s.c + o * n;
          break;
        case GroupedOp::kNT:  // c[rows] (rows, n) = a[rows] (rows, k) @ b_x^T, b_x (n, k)
          ta.push_back(CUBLAS_OP_T), tb.push_back(CUBLAS_OP_N);
          mm.push_back(n), nn.push_back(rows), kk.push_back(k);
          lda.push_back(k), ldb.push_back(k), ldc.push_back(n);
          table[count] = s.b + int64_t{x} * n * k;
          table[kMaxProblems + count] = s.a + o * k;
          table[2 * kMaxProblems + count] = s.c + o * n;
          break;
        case GroupedOp::kTN:  // c_x (m, n) = a[rows]^T (m, rows) @ b[rows] (rows, n)
          ta.push_back(CUBLAS_OP_N), tb.push_back(CUBLAS_OP_T);
          mm.push_back(n), nn.push_back(m), kk.push_back(rows);
          lda.push_back(n), ldb.push_back(m), ldc.push_back(n);
          table[count] = s.b + o * n;
          table[kMaxProblems + count] = s.a + o * m;
          table[2 * kMaxProblems + count] = s.c + int64_t{x} * m * n;
          break;
      }
      alphas.push_back(alpha);
      betas.push_back(beta);
      group_size.push_back(1);
      ++count;
      o += rows;
    }
  }
  if (count == 0) return;
  // The pointer arrays go up by a copy on `stream` (from pageable memory it is staged at once,
  // so `table` may go); the calls are ordered on `stream`, so one device table serves them all.
  void** ptrs = device_ptrs_;
  MOE_CUDA_CHECK(cudaMemcpyAsync(ptrs, table.data(), sizeof(void*) * table.size(), cudaMemcpyHostToDevice, stream));
  cublasHandle_t h = static_cast<cublasHandle_t>(handle_);
  MOE_BLAS_CHECK(cublasSetStream(h, stream));
  MOE_BLAS_CHECK(cublasGemmGroupedBatchedEx(
      h, ta.data(), tb.data(), mm.data(), nn.data(), kk.data(), alphas.data(),
      const_cast<const void* const*>(ptrs), CUDA_R_16BF, lda.data(),
      const_cast<const void* const*>(ptrs + kMaxProblems), CUDA_R_16BF, ldb.data(), betas.data(),
      ptrs + 2 * kMaxProblems, CUDA_R_16BF, ldc.data(), count, group_size.data(), CUBLAS_COMPUTE_32F));
}

void GroupedBlas::Padded(GroupedOp op, int experts, int cap, int n, int k, float beta, const bf16* a,
                         const bf16* b, bf16* c, cudaStream_t stream) {
  if (op == GroupedOp::kTN) {
    std::fprintf(stderr, "GroupedBlas::Padded: kTN is PaddedWeightGrad\n");
    std::abort();
  }
  if (experts <= 0 || cap <= 0 || n <= 0 || k <= 0) return;
  // c_x (cap, n) = a_x (cap, k) @ op(b_x): kNN's b_x is (k, n), kNT's (n, k).
  const bool nt = op == GroupedOp::kNT;
  lt_.GemmBatched(false, nt, cap, n, k, 1.0f, a, k, int64_t{cap} * k, b, nt ? k : n, int64_t{k} * n, beta, c, n,
                  int64_t{cap} * n, experts, DType::kBF16, DType::kBF16, stream);
}

void GroupedBlas::PaddedWeightGrad(int experts, int cap, int m, int n, const bf16* a, const bf16* b, float* c,
                                   cudaStream_t stream) {
  if (experts <= 0 || cap <= 0 || m <= 0 || n <= 0) return;
  // c_x (m, n) += a_x^T (m, cap) @ b_x (cap, n).
  lt_.GemmBatched(true, false, m, n, cap, 1.0f, a, m, int64_t{cap} * m, b, n, int64_t{cap} * n, 1.0f, c, n,
                  int64_t{m} * n, experts, DType::kBF16, DType::kF32, stream);
}

void** GroupedBlas::Upload(const std::vector<const void*>& table, int count, int* align, cudaStream_t stream) {
  *align = CommonAlignment(table.data(), table.size());
  // From pageable memory the copy is staged at once, so `table` may go; the calls are ordered
  // on `stream`, so one device table serves them all.
  void** ptrs = device_ptrs_;
  for (int i = 0; i < 3; ++i) {
    MOE_CUDA_CHECK(cudaMemcpyAsync(ptrs + i * kTable, table.data() + int64_t{i} * count, sizeof(void*) * count,
                                   cudaMemcpyHostToDevice, stream));
  }
  return ptrs;
}

void GroupedBlas::Products(GroupedOp op, const ExpertLayout& l, int e_local, int n, int k, float beta, const bf16* a,
                           const bf16* b, bf16* c, cudaStream_t stream) {
  if (l.strided) return Padded(op, e_local, l.chunk, n, k, beta, a, b, c, stream);
  if (op == GroupedOp::kTN || l.chunk <= 0) {
    std::fprintf(stderr, "GroupedBlas::Products: needs kNN or kNT on a strided or chunked layout\n");
    std::abort();
  }
  if (l.chunks <= 0 || n <= 0 || k <= 0) return;
  // Chunk j of expert x: c_j (chunk, n) = a_j (chunk, k) @ op(b_x) + beta c_j.
  const int chunks = l.chunks;
  std::vector<const void*> table(3 * static_cast<size_t>(chunks));
  for (int x = 0; x < e_local; ++x) {
    for (int j = l.first_chunk[x]; j < l.first_chunk[x + 1]; ++j) {
      table[j] = a + int64_t{j} * l.chunk * k;
      table[chunks + j] = b + int64_t{x} * k * n;
      table[2 * chunks + j] = c + int64_t{j} * l.chunk * n;
    }
  }
  int align = 0;
  void** p = Upload(table, chunks, &align, stream);
  const bool nt = op == GroupedOp::kNT;
  lt_.GemmPointerArray(false, nt, l.chunk, n, k, 1.0f, const_cast<const void* const*>(p), k,
                       const_cast<const void* const*>(p + kTable), nt ? k : n, beta, p + 2 * kTable, n, chunks, align,
                       DType::kBF16, DType::kBF16, stream);
}

void GroupedBlas::WeightGrad(const ExpertLayout& l, int e_local, int m, int n, const bf16* a, const bf16* b, float* c,
                             cudaStream_t stream) {
  if (l.strided) return PaddedWeightGrad(e_local, l.chunk, m, n, a, b, c, stream);
  if (l.chunk <= 0) {
    std::fprintf(stderr, "GroupedBlas::WeightGrad: needs a strided or chunked layout\n");
    std::abort();
  }
  if (l.chunks <= 0 || m <= 0 || n <= 0) return;
  // c_x (m, n) += sum over expert x's chunks j of a_j^T (m, chunk) @ b_j (chunk, n): one call per
  // chunk index i over the experts that have an i-th chunk (distinct outputs within a call).
  int most = 0;
  for (int x = 0; x < e_local; ++x) most = std::max(most, l.first_chunk[x + 1] - l.first_chunk[x]);
  for (int i = 0; i < most; ++i) {
    std::vector<int> experts;
    for (int x = 0; x < e_local; ++x) {
      if (l.first_chunk[x] + i < l.first_chunk[x + 1]) experts.push_back(x);
    }
    const int count = static_cast<int>(experts.size());
    std::vector<const void*> table(3 * static_cast<size_t>(count));
    for (int e = 0; e < count; ++e) {
      const int64_t j = l.first_chunk[experts[e]] + i;
      table[e] = a + j * l.chunk * m;
      table[count + e] = b + j * l.chunk * n;
      table[2 * count + e] = c + int64_t{experts[e]} * m * n;
    }
    int align = 0;
    void** p = Upload(table, count, &align, stream);
    lt_.GemmPointerArray(true, false, m, n, l.chunk, 1.0f, const_cast<const void* const*>(p), m,
                         const_cast<const void* const*>(p + kTable), n, 1.0f, p + 2 * kTable, n, count, align,
                         DType::kBF16, DType::kF32, stream);
  }
}

void ExpertsForwardBf16(GroupedBlas& blas, const int32_t* host_counts, float* ys, bf16* ys16, bf16* g16,
                        bf16* u16, bf16* h16, const bf16* xs16, const bf16* w1, const bf16* w3, const bf16* w2,
                        int e_local, int d, int f, bf16* scratch16, cudaStream_t stream) {
  const int64_t rows = CountSum(host_counts, e_local);
  if (rows <= 0) return;
  const ExpertLayout l = PlanExpertLayout(host_counts, e_local);
  const int64_t lrows = l.rows;
  bf16* y16 = scratch16;  // (lrows, d): the output in the experts' layout
  if (l.chunk > 0) {
    blas.Products(GroupedOp::kNN, l, e_local, f, d, 0.0f, xs16, w1, g16, stream);
    blas.Products(GroupedOp::kNN, l, e_local, f, d, 0.0f, xs16, w3, u16, stream);
  } else {
    blas.Gemm(GroupedOp::kNN, e_local, host_counts, 0, f, d, 1.0f, 0.0f, {{xs16, w1, g16}, {xs16, w3, u16}}, stream);
  }
  if (Aligned(16, {h16, g16, u16})) {
    SwigluForwardBf16Vec8Kernel<<<ElementwiseBlocks(std::max<int64_t>(1, lrows * f / 8)), kThreads, 0, stream>>>(
        h16, g16, u16, lrows * f);
  } else {
    SwigluForwardBf16Kernel<<<ElementwiseBlocks(lrows * f / 2), kThreads, 0, stream>>>(h16, g16, u16, lrows * f);
  }
  MOE_CUDA_LAUNCH_CHECK();
  if (l.chunk > 0) {
    blas.Products(GroupedOp::kNN, l, e_local, d, f, 0.0f, h16, w2, y16, stream);
  } else {
    blas.Gemm(GroupedOp::kNN, e_local, host_counts, 0, d, f, 1.0f, 0.0f, {{h16, w2, y16}}, stream);
  }
  const RowBlocks blocks = ExpertLayoutToCompact(host_counts, e_local);
  if (ys16 != nullptr) CopyRowBlocks(ys16, y16, blocks, sizeof(bf16) * d, stream);
  if (ys != nullptr) RowBlocksToFloat(ys, y16, blocks, d, /*accumulate=*/false, stream);
}

// Scratch parts start on 16-byte boundaries (8 bf16): paired loads and cuBLAS's fast kernels.
int64_t Pad8(int64_t n) { return (n + 7) / 8 * 8; }

int64_t ExpertsBf16Scratch(int64_t layout_rows, int e_local, int d, int f) {
  return 3 * Pad8(layout_rows * f) + 2 * Pad8(layout_rows * d) + 3 * Pad8(int64_t{e_local} * d * f);
}

void ExpertsBackwardBf16(GroupedBlas& blas, const int32_t* host_counts, float* dxs, float* dw1, float* dw3,
                         float* dw2, const bf16* dys16, const bf16* xs16, const bf16* g16, const bf16* u16,
                         const bf16* h16, const bf16* w1, const bf16* w3, const bf16* w2, int e_local, int d,
                         int f, bf16* scratch16, cudaStream_t stream) {
  const int64_t rows = CountSum(host_counts, e_local);
  if (rows <= 0) return;
  const ExpertLayout l = PlanExpertLayout(host_counts, e_local);
  const int64_t lrows = l.rows;
  const int64_t wsize = int64_t{e_local} * d * f;
  bf16* dh16 = scratch16;                  // (lrows, f)
  bf16* dg16 = dh16 + Pad8(lrows * f);     // (lrows, f)
  bf16* du16 = dg16 + Pad8(lrows * f);     // (lrows, f)
  bf16* dxa16 = du16 + Pad8(lrows * f);    // (lrows, d): dg W1^T (padded: + du W3^T)
  bf16* dxb16 = dxa16 + Pad8(lrows * d);   // (lrows, d): du W3^T (compact)
  bf16* dw1_16 = dxb16 + Pad8(lrows * d);  // (e, d, f), compact only: this step's products, added to
  bf16* dw3_16 = dw1_16 + Pad8(wsize);     // the fp32 gradients
  bf16* dw2_16 = dw3_16 + Pad8(wsize);     // (e, f, d)
  if (l.chunk > 0) {
    blas.Products(GroupedOp::kNT, l, e_local, f, d, 0.0f, dys16, w2, dh16, stream);
    if (dw2 != nullptr) blas.WeightGrad(l, e_local, f, d, h16, dys16, dw2, stream);
  } else {
    blas.Gemm(GroupedOp::kNT, e_local, host_counts, 0, f, d, 1.0f, 0.0f, {{dys16, w2, dh16}}, stream);
    if (dw2 != nullptr) {
      blas.Gemm(GroupedOp::kTN, e_local, host_counts, f, d, 0, 1.0f, 0.0f, {{h16, dys16, dw2_16}}, stream);
      AccumulateBf16(dw2, dw2_16, nullptr, wsize, stream);
    }
  }
  // The zero rows of the strided or chunked layout stay zero: dh = 0 there, and so dg = du = 0.
  const int64_t elems = lrows * f;
  if (Aligned(16, {dg16, du16, dh16, g16, u16})) {
    SwigluBackwardBf16Vec8Kernel<<<ElementwiseBlocks(std::max<int64_t>(1, elems / 8)), kThreads, 0, stream>>>(
        dg16, du16, dh16, g16, u16, elems);
  } else if (Aligned(4, {dg16, du16, dh16, g16, u16})) {
    SwigluBackwardBf16Kernel<true><<<ElementwiseBlocks(elems / 2), kThreads, 0, stream>>>(dg16, du16, dh16, g16,
                                                                                          u16, elems);
  } else {
    SwigluBackwardBf16Kernel<false><<<ElementwiseBlocks(elems), kThreads, 0, stream>>>(dg16, du16, dh16, g16, u16,
                                                                                       elems);
  }
  MOE_CUDA_LAUNCH_CHECK();
  if (l.chunk > 0) {
    if (dw1 != nullptr) blas.WeightGrad(l, e_local, d, f, xs16, dg16, dw1, stream);
    if (dw3 != nullptr) blas.WeightGrad(l, e_local, d, f, xs16, du16, dw3, stream);
  } else if (dw1 != nullptr || dw3 != nullptr) {
    blas.Gemm(GroupedOp::kTN, e_local, host_counts, d, f, 0, 1.0f, 0.0f, {{xs16, dg16, dw1_16}, {xs16, du16, dw3_16}},
              stream);
    AccumulateBf16(dw1, dw1_16, nullptr, wsize, stream);
    AccumulateBf16(dw3, dw3_16, nullptr, wsize, stream);
  }
  if (dxs == nullptr) return;
  if (l.chunk > 0) {
    // dx = dg W1^T + du W3^T in one layout buffer (the second product adds to the first), then
    // added to the compact fp32 rows.
    blas.Products(GroupedOp::kNT, l, e_local, d, f, 0.0f, dg16, w1, dxa16, stream);
    blas.Products(GroupedOp::kNT, l, e_local, d, f, 1.0f, du16, w3, dxa16, stream);
    RowBlocksToFloat(dxs, dxa16, ExpertLayoutToCompact(host_counts, e_local), d, /*accumulate=*/true, stream);
  } else {
    blas.Gemm(GroupedOp::kNT, e_local, host_counts, 0, d, f, 1.0f, 0.0f, {{dg16, w1, dxa16}, {du16, w3, dxb16}},
              stream);
    AccumulateBf16(dxs, dxa16, dxb16, rows * d, stream);
  }
}

}  // namespace moe::cuda
