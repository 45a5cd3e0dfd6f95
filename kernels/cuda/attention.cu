#include "kernels/cuda/attention.h"

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <initializer_list>

namespace moe::cuda {
namespace {

constexpr int kQ = 64;   // query rows per block (one thread each) in forward and dq
constexpr int kK = 32;   // key rows per shared-memory tile
constexpr int kKeyRows = 64;  // key rows per block (one thread each) in dk/dv
constexpr int kQTile = 32;    // query rows per shared-memory tile in dk/dv

// Forward: thread = query row; it keeps q and its output row in registers and walks the key
// tiles up to its own position with an online softmax (one rescale per tile).
template <int HD>
__global__ void __launch_bounds__(kQ) AttentionForwardKernel(float* out, float* lse, const float* qkv,
                                                             int t, int h, int hkv, float scale) {
  __shared__ float ks[kK][HD];
  __shared__ float vs[kK][HD];
  const int bh = blockIdx.y, bi = bh / h, hi = bh % h, g = hi / (h / hkv);
  const int64_t row_len = int64_t{h + 2 * hkv} * HD;
  const float* base = qkv + int64_t{bi} * t * row_len;
  const int i = blockIdx.x * kQ + threadIdx.x;
  float q[HD], o[HD];
  if (i < t) {
#pragma unroll
    for (int c = 0; c < HD; ++c) q[c] = base[i * row_len + int64_t{hi} * HD + c];
  }
#pragma unroll
  for (int c = 0; c < HD; ++c) o[c] = 0.0f;
  float m = -INFINITY, l = 0.0f;
  const int last_key = min(t - 1, (blockIdx.x + 1) * kQ - 1);
  for (int k0 = 0; k0 <= last_key; k0 += kK) {
    __syncthreads();
    for (int idx = threadIdx.x; idx < kK * HD; idx += kQ) {
      const int r = idx / HD, c = idx % HD, j = k0 + r;
      ks[r][c] = j < t ? base[j * row_len + int64_t{h + g} * HD + c] : 0.0f;
      vs[r][c] = j < t ? base[j * row_len + int64_t{h + hkv + g} * HD + c] : 0.0f;
    }
    __syncthreads();
    if (i >= t || k0 > i) continue;
    float s[kK];
    float tile_max = -INFINITY;
#pragma unroll
    for (int j = 0; j < kK; ++j) {
      float dot = 0.0f;
#pragma unroll
      for (int c = 0; c < HD; ++c) dot += q[c] * ks[j][c];
      s[j] = (k0 + j <= i) ? dot * scale : -INFINITY;
      tile_max = fmaxf(tile_max, s[j]);
    }
    const float m_new = fmaxf(m, tile_max);
    const float corr = expf(m - m_new);  // 0 on the first tile (m = -inf)
    l *= corr;
#pragma unroll
    for (int c = 0; c < HD; ++c) o[c] *= corr;
#pragma unroll
    for (int j = 0; j < kK; ++j) {
      const float p = expf(s[j] - m_new);  // 0 for masked keys
      l += p;
#pragma unroll
      for (int c = 0; c < HD; ++c) o[c] += p * vs[j][c];
    }
    m = m_new;
  }
  if (i < t) {
    const float inv = 1.0f / l;
    float* dst = out + (int64_t{bi} * t + i) * (int64_t{h} * HD) + int64_t{hi} * HD;
#pragma unroll
    for (int c = 0; c < HD; ++c) dst[c] = o[c] * inv;
    lse[(int64_t{bi} * h + hi) * t + i] = m + logf(l);
  }
}

// dsum (b, h, t) = rowsum(dout * out) per head.
__global__ void AttentionDsumKernel(float* dsum, const float* dout, const float* out, int b, int t,
                                    int h, int hd) {
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= int64_t{b} * h * t) return;
  const int i = static_cast<int>(idx % t);
  const int64_t bh = idx / t;
  const int hi = static_cast<int>(bh % h), bi = static_cast<int>(bh / h);
  const int64_t off = (int64_t{bi} * t + i) * (int64_t{h} * hd) + int64_t{hi} * hd;
  float acc = 0.0f;
  for (int c = 0; c < hd; ++c) acc += dout[off + c] * out[off + c];
  dsum[idx] = acc;
}

// The same, a warp per token row (all heads): lanes read float4s along the row, coalesced, and
// each head's HD / 4 lanes add up their part. HD divides 128, so heads never straddle the
// 128-column steps.
template <int HD>
__global__ void AttentionDsumRowsKernel(float* dsum, const float* dout, const float* out, int rows, int t, int h) {
  constexpr int kGroup = HD / 4;  // lanes per head
  const int row = (blockIdx.x * blockDim.x + threadIdx.x) / 32, lane = threadIdx.x % 32;
  if (row >= rows) return;
  const int bi = row / t, i = row % t, width = h * HD;
  const float4* o4 = reinterpret_cast<const float4*>(out + int64_t{row} * width);
  const float4* d4 = reinterpret_cast<const float4*>(dout + int64_t{row} * width);
  for (int c0 = 0; c0 < width; c0 += 128) {
    const int c = c0 + lane * 4;
    float acc = 0.0f;
    if (c < width) {
      const float4 o = o4[c / 4], d = d4[c / 4];
      acc = o.x * d.x + o.y * d.y + o.z * d.z + o.w * d.w;
    }
#pragma unroll
    for (int s = kGroup / 2; s > 0; s >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, s);
    if (c < width && lane % kGroup == 0) dsum[(int64_t{bi} * h + c / HD) * t + i] = acc;
  }
}

// dsum for every row and head: the warp-per-row kernel where the head size and alignment allow.
void AttentionDsum(float* dsum, const float* dout, const float* out, int b, int t, int h, int hd,
                   cudaStream_t stream) {
  const int rows = b * t;
  const bool vec = reinterpret_cast<uintptr_t>(dout) % 16 == 0 && reinterpret_cast<uintptr_t>(out) % 16 == 0;
  const unsigned blocks = static_cast<unsigned>((int64_t{rows} * 32 + 255) / 256);
  if (vec && hd == 64) {
    AttentionDsumRowsKernel<64><<<blocks, 256, 0, stream>>>(dsum, dout, out, rows, t, h);
  } else if (vec && hd == 32) {
    AttentionDsumRowsKernel<32><<<blocks, 256, 0, stream>>>(dsum, dout, out, rows, t, h);
  } else if (vec && hd == 16) {
    AttentionDsumRowsKernel<16><<<blocks, 256, 0, stream>>>(dsum, dout, out, rows, t, h);
  } else {
    AttentionDsumKernel<<<BlocksFor(int64_t{rows} * h, 256), 256, 0, stream>>>(dsum, dout, out, b, t, h, hd);
  }
  MOE_CUDA_LAUNCH_CHECK();
}

// dq: thread = query row, walking key tiles as the forward does.
template <int HD>
__global__ void __launch_bounds__(kQ) AttentionDqKernel(float* dqkv, const float* dout, const float* lse,
                                                        const float* dsum, const float* qkv, int t,
                                                        int h, int hkv, float scale) {
  __shared__ float ks[kK][HD];
  __shared__ float vs[kK][HD];
  const int bh = blockIdx.y, bi = bh / h, hi = bh % h, g = hi / (h / hkv);
  const int64_t row_len = int64_t{h + 2 * hkv} * HD;
  const float* base = qkv + int64_t{bi} * t * row_len;
  const int i = blockIdx.x * kQ + threadIdx.x;
  float q[HD], dq[HD], d_o[HD];
  float l = 0.0f, dsi = 0.0f;
  if (i < t) {
    const float* dorow = dout + (int64_t{bi} * t + i) * (int64_t{h} * HD) + int64_t{hi} * HD;
#pragma unroll
    for (int c = 0; c < HD; ++c) {
      q[c] = base[i * row_len + int64_t{hi} * HD + c];
      d_o[c] = dorow[c];
    }
    l = lse[(int64_t{bi} * h + hi) * t + i];
    dsi = dsum[(int64_t{bi} * h + hi) * t + i];
  }
#pragma unroll
  for (int c = 0; c < HD; ++c) dq[c] = 0.0f;
  const int last_key = min(t - 1, (blockIdx.x + 1) * kQ - 1);
  for (int k0 = 0; k0 <= last_key; k0 += kK) {
    __syncthreads();
    for (int idx = threadIdx.x; idx < kK * HD; idx += kQ) {
      const int r = idx / HD, c = idx % HD, j = k0 + r;
      ks[r][c] = j < t ? base[j * row_len + int64_t{h + g} * HD + c] : 0.0f;
      vs[r][c] = j < t ? base[j * row_len + int64_t{h + hkv + g} * HD + c] : 0.0f;
    }
    __syncthreads();
    if (i >= t || k0 > i) continue;
    const int jmax = min(kK - 1, i - k0);
    for (int j = 0; j <= jmax; ++j) {
      float s = 0.0f, dp = 0.0f;
#pragma unroll
      for (int c = 0; c < HD; ++c) {
        s += q[c] * ks[j][c];
        dp += d_o[c] * vs[j][c];
      }
      const float p = expf(s * scale - l);
      const float ds = p * (dp - dsi) * scale;
#pragma unroll
      for (int c = 0; c < HD; ++c) dq[c] += ds * ks[j][c];
    }
  }
  if (i < t) {
    float* dst = dqkv + (int64_t{bi} * t + i) * row_len + int64_t{hi} * HD;
#pragma unroll
    for (int c = 0; c < HD; ++c) dst[c] += dq[c];
  }
}

// dk, dv: thread = key row of one kv head; it walks every query head of its group and every
// query tile at or after its position, so each dk/dv element is written by one thread.
template <int HD>
__global__ void __launch_bounds__(kKeyRows) AttentionDkvKernel(float* dqkv, const float* dout,
                                                               const float* lse, const float* dsum,
                                                               const float* qkv, int t, int h, int hkv,
                                                               float scale) {
  __shared__ float vown[kKeyRows][HD + 1];  // this block's v rows, padded: each thread reads its own
  __shared__ float qs[kQTile][HD];
  __shared__ float dos[kQTile][HD];
  __shared__ float ls[kQTile], dss[kQTile];
  const int bg = blockIdx.y, bi = bg / hkv, g = bg % hkv, group = h / hkv;
  const int64_t row_len = int64_t{h + 2 * hkv} * HD;
  const int64_t out_len = int64_t{h} * HD;
  const float* base = qkv + int64_t{bi} * t * row_len;
  const int j0 = blockIdx.x * kKeyRows;
  const int j = j0 + threadIdx.x;
  for (int idx = threadIdx.x; idx < kKeyRows * HD; idx += kKeyRows) {
    const int r = idx / HD, c = idx % HD;
    vown[r][c] = j0 + r < t ? base[(j0 + r) * row_len + int64_t{h + hkv + g} * HD + c] : 0.0f;
  }
  float k[HD], dk[HD], dv[HD];
#pragma unroll
  for (int c = 0; c < HD; ++c) {
    k[c] = j < t ? base[j * row_len + int64_t{h + g} * HD + c] : 0.0f;
    dk[c] = 0.0f;
    dv[c] = 0.0f;
  }
  for (int hi = g * group; hi < (g + 1) * group; ++hi) {
    for (int i0 = j0; i0 < t; i0 += kQTile) {
      __syncthreads();
      for (int idx = threadIdx.x; idx < kQTile * HD; idx += kKeyRows) {
        const int r = idx / HD, c = idx % HD, i = i0 + r;
        qs[r][c] = i < t ? base[i * row_len + int64_t{hi} * HD + c] : 0.0f;
        dos[r][c] = i < t ? dout[(int64_t{bi} * t + i) * out_len + int64_t{hi} * HD + c] : 0.0f;
      }
      for (int r = threadIdx.x; r < kQTile; r += kKeyRows) {
        const int i = i0 + r;
        ls[r] = i < t ? lse[(int64_t{bi} * h + hi) * t + i] : 0.0f;
        dss[r] = i < t ? dsum[(int64_t{bi} * h + hi) * t + i] : 0.0f;
      }
      __syncthreads();
      if (j >= t) continue;
      const int rmin = max(0, j - i0);
      const int rmax = min(kQTile, t - i0);
      for (int r = rmin; r < rmax; ++r) {
        float s = 0.0f, dp = 0.0f;
#pragma unroll
        for (int c = 0; c < HD; ++c) {
          s += qs[r][c] * k[c];
          dp += dos[r][c] * vown[threadIdx.x][c];
        }
        const float p = expf(s * scale - ls[r]);
        const float ds = p * (dp - dss[r]) * scale;
#pragma unroll
        for (int c = 0; c < HD; ++c) {
          dv[c] += p * dos[r][c];
          dk[c] += ds * qs[r][c];
        }
      }
    }
  }
  if (j < t) {
    float* drow = dqkv + (int64_t{bi} * t + j) * row_len;
#pragma unroll
    for (int c = 0; c < HD; ++c) {
      drow[int64_t{h + g} * HD + c] += dk[c];
      drow[int64_t{h + hkv + g} * HD + c] += dv[c];
    }
  }
}

template <int HD>
void Forward(float* out, float* lse, const float* qkv, int b, int t, int h, int hkv, cudaStream_t stream) {
  const dim3 grid((t + kQ - 1) / kQ, b * h);
  AttentionForwardKernel<HD><<<grid, kQ, 0, stream>>>(out, lse, qkv, t, h, hkv, 1.0f / sqrtf(static_cast<float>(HD)));
  MOE_CUDA_LAUNCH_CHECK();
}

template <int HD>
void Backward(float* dqkv, const float* dout, const float* lse, const float* dsum, const float* qkv, int b,
              int t, int h, int hkv, cudaStream_t stream) {
  const float scale = 1.0f / sqrtf(static_cast<float>(HD));
  AttentionDqKernel<HD><<<dim3((t + kQ - 1) / kQ, b * h), kQ, 0, stream>>>(dqkv, dout, lse, dsum, qkv,
                                                                           t, h, hkv, scale);
  MOE_CUDA_LAUNCH_CHECK();
  AttentionDkvKernel<HD><<<dim3((t + kKeyRows - 1) / kKeyRows, b * hkv), kKeyRows, 0, stream>>>(
      dqkv, dout, lse, dsum, qkv, t, h, hkv, scale);
  MOE_CUDA_LAUNCH_CHECK();
}

// ---------------------------------------------------------------------------------------------
// Tensor-core path (bf16 jobs): the same flash algorithm on mma.sync m16n8k16 (bf16 operands,
// fp32 accumulation). q, k, v and dout come in bf16 (the model keeps a bf16 copy); each 64-row
// tile goes to shared memory by cp.async, two stages: the next tile loads while this one is
// multiplied. out, lse, dq/dk/dv stay fp32. Softmax statistics (max, sum, lse, dsum) are fp32; P and
// dS are rounded to bf16 for their products, as FlashAttention-2 does. A block is 4 warps, each
// owning 16 rows of a 64-row tile. Forward and dq walk key tiles; dk/dv walks query tiles of
// every head of its kv group, so every output element has one writer (no atomics).
// Fragment layouts (PTX ISA, mma.m16n8k16 .bf16): with g = lane / 4, q = lane % 4,
//   A (16x16, row): regs {a(g, 2q..), a(g+8, 2q..), a(g, 2q+8..), a(g+8, 2q+8..)}
//   B (16x8, col):  regs {b(2q.., g), b(2q+8.., g)}
//   C (16x8, f32):  {c(g, 2q), c(g, 2q+1), c(g+8, 2q), c(g+8, 2q+1)}
// Tiles stay row-major in shared memory: B operands whose k index runs along a row are read
// as 32-bit words, the others (the second products' V, K, Q, dout) through ldmatrix .trans.

constexpr int kTc = 64;  // rows per tile (queries or keys)
// 4 warps. Blocks of 8 warps (128 rows, each streamed tile shared by twice the rows) measured
// slower on an H100 (small: forward 0.385 against 0.316 ms, backward 1.34 against 1.01 ms).
constexpr int kTcThreads = 128;
constexpr float kLog2e = 1.4426950408889634f;

__device__ __forceinline__ void Mma(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ uint32_t Pack(float lo, float hi) {
  __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&v);
}

template <int PITCH>
__device__ __forceinline__ uint32_t Word(const bf16 (*s)[PITCH], int r, int c) {
  return *reinterpret_cast<const uint32_t*>(&s[r][c]);
}

// cp.async of 16 bytes global -> shared; src_bytes 0 writes zeros (rows past t).
__device__ __forceinline__ void CpAsync16(void* smem, const void* gmem, bool valid) {
  const uint32_t dst = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(gmem), "r"(valid ? 16 : 0));
}
__device__ __forceinline__ void CpAsyncCommit() { asm volatile("cp.async.commit_group;\n" ::); }
// Waits until at most N of this thread's committed groups are still in flight.
template <int N>
__device__ __forceinline__ void CpAsyncWait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

// Starts dst[r][c] = src row (r0 + r), columns [col, col + HD) (bf16); zeros past t.
template <int HD, int PITCH>
__device__ __forceinline__ void LoadTileAsync(bf16 (*dst)[PITCH], const bf16* src, int64_t row_len, int64_t col,
                                              int r0, int t) {
  constexpr int kChunks = HD / 8;  // 16-byte chunks per row
  for (int idx = threadIdx.x; idx < kTc * kChunks; idx += kTcThreads) {
    const int r = idx / kChunks, c = (idx % kChunks) * 8, i = r0 + r;
    CpAsync16(&dst[r][c], src + int64_t{min(i, t - 1)} * row_len + col + c, i < t);
  }
}

// Four 8x8 bf16 matrices, transposed on the way (ldmatrix .trans): lane l names row l % 8 of
// matrix l / 8 and receives, from each matrix, elements (2 (l % 4), l / 4) and (2 (l % 4) + 1, l / 4),
// which is the B fragment layout when the tile is stored k-major.
__device__ __forceinline__ void LdMatrixX4T(uint32_t& r0, uint32_t& r1, uint32_t& r2, uint32_t& r3, const bf16* p) {
  const uint32_t addr = static_cast<uint32_t>(__cvta_generic_to_shared(p));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
               : "r"(addr));
}

// A fragments of rows [r0, r0 + 16) of a row-major tile, for every 16-wide k chunk.
template <int HD, int PITCH>
__device__ __forceinline__ void LoadA(uint32_t (&a)[HD / 16][4], const bf16 (*s)[PITCH], int r0, int g, int q) {
#pragma unroll
  for (int kc = 0; kc < HD / 16; ++kc) {
    a[kc][0] = Word(s, r0 + g, kc * 16 + 2 * q);
    a[kc][1] = Word(s, r0 + g + 8, kc * 16 + 2 * q);
    a[kc][2] = Word(s, r0 + g, kc * 16 + 8 + 2 * q);
    a[kc][3] = Word(s, r0 + g + 8, kc * 16 + 8 + 2 * q);
  }
}

// acc (16 x 64) = A (16 x HD, fragments) * Y^T, Y a row-major (64 x HD) tile.
template <int HD, int PITCH>
__device__ __forceinline__ void MulABt(float (&acc)[kTc / 8][4], const uint32_t (&a)[HD / 16][4],
                                       const bf16 (*y)[PITCH], int g, int q) {
#pragma unroll
  for (int nt = 0; nt < kTc / 8; ++nt) {
    acc[nt][0] = acc[nt][1] = acc[nt][2] = acc[nt][3] = 0.f;
#pragma unroll
    for (int kc = 0; kc < HD / 16; ++kc)
      Mma(acc[nt], a[kc], Word(y, nt * 8 + g, kc * 16 + 2 * q), Word(y, nt * 8 + g, kc * 16 + 8 + 2 * q));
  }
}

// acc (16 x HD) += P (16 x 64, C fragments rounded to bf16) * Z, Z a row-major (64 x HD) tile.
template <int HD, int PITCH>
__device__ __forceinline__ void MulPZ(float (&acc)[HD / 8][4], const float (&p)[kTc / 8][4],
                                      const bf16 (*z)[PITCH], int lane) {
  const int mtx = lane / 8, zr = lane % 8 + (mtx & 1) * 8, zc = (mtx >> 1) * 8;
#pragma unroll
  for (int kc = 0; kc < kTc / 16; ++kc) {
    const uint32_t a[4] = {Pack(p[2 * kc][0], p[2 * kc][1]), Pack(p[2 * kc][2], p[2 * kc][3]),
                           Pack(p[2 * kc + 1][0], p[2 * kc + 1][1]), Pack(p[2 * kc + 1][2], p[2 * kc + 1][3])};
#pragma unroll
    for (int np = 0; np < HD / 16; ++np) {
      uint32_t b0, b1, b2, b3;  // n tiles 2 np (b0, b1) and 2 np + 1 (b2, b3)
      LdMatrixX4T(b0, b1, b2, b3, &z[kc * 16 + zr][np * 16 + zc]);
      Mma(acc[2 * np], a, b0, b1);
      Mma(acc[2 * np + 1], a, b2, b3);
    }
  }
}

__device__ __forceinline__ float QuadMax(float v) {
  v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 1));
  return fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 2));
}
__device__ __forceinline__ float QuadSum(float v) {
  v += __shfl_xor_sync(0xffffffffu, v, 1);
  return v + __shfl_xor_sync(0xffffffffu, v, 2);
}

// Forward. grid (query tiles, b * h); the heaviest (last) query tiles are launched first.
template <int HD>
__global__ void __launch_bounds__(kTcThreads) AttentionForwardTcKernel(float* out, float* lse, const bf16* qkv,
                                                                       int t, int h, int hkv, float scale) {
  constexpr int P = HD + 8;  // padded pitch: fragment reads and ldmatrix are conflict-free
  __shared__ __align__(16) bf16 qs[kTc][P];
  __shared__ __align__(16) bf16 ks[2][kTc][P];  // two stages of key and value tiles
  __shared__ __align__(16) bf16 vs[2][kTc][P];
  const int q0 = (gridDim.x - 1 - blockIdx.x) * kTc;
  const int bh = blockIdx.y, bi = bh / h, hi = bh % h, kvh = hi / (h / hkv);
  const int64_t row_len = int64_t{h + 2 * hkv} * HD;
  const int64_t k_col = int64_t{h + kvh} * HD, v_col = int64_t{h + hkv + kvh} * HD;
  const bf16* base = qkv + int64_t{bi} * t * row_len;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, q = lane % 4;
  const float sl2 = scale * kLog2e;  // scores in log2 units
  LoadTileAsync<HD>(qs, base, row_len, int64_t{hi} * HD, q0, t);
  LoadTileAsync<HD>(ks[0], base, row_len, k_col, 0, t);
  LoadTileAsync<HD>(vs[0], base, row_len, v_col, 0, t);
  CpAsyncCommit();
  uint32_t qa[HD / 16][4];
  float o[HD / 8][4] = {};
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};
  const int row[2] = {q0 + warp * 16 + g, q0 + warp * 16 + g + 8};
  const int tiles = q0 / kTc + 1;
  for (int j = 0; j < tiles; ++j) {
    const int k0 = j * kTc, st = j & 1;
    if (j + 1 < tiles) {
      LoadTileAsync<HD>(ks[st ^ 1], base, row_len, k_col, k0 + kTc, t);
      LoadTileAsync<HD>(vs[st ^ 1], base, row_len, v_col, k0 + kTc, t);
    }
    CpAsyncCommit();
    CpAsyncWait<1>();  // all but the prefetch just issued: tile j (and q) have landed
    __syncthreads();
    if (j == 0) LoadA<HD>(qa, qs, warp * 16, g, q);
    float s[kTc / 8][4];
    MulABt<HD>(s, qa, ks[st], g, q);
    float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
    for (int nt = 0; nt < kTc / 8; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int jj = k0 + nt * 8 + 2 * q + (e & 1);
        s[nt][e] = (jj > row[e / 2] || jj >= t) ? -INFINITY : s[nt][e] * sl2;
        mx[e / 2] = fmaxf(mx[e / 2], s[nt][e]);
      }
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const float m_new = fmaxf(m[r], QuadMax(mx[r]));
      const float corr = exp2f(m[r] - m_new);  // 0 on the first tile
      m[r] = m_new;
      l[r] *= corr;
#pragma unroll
      for (int nt = 0; nt < HD / 8; ++nt) {
        o[nt][2 * r] *= corr;
        o[nt][2 * r + 1] *= corr;
      }
    }
#pragma unroll
    for (int nt = 0; nt < kTc / 8; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        s[nt][e] = exp2f(s[nt][e] - m[e / 2]);
        l[e / 2] += s[nt][e];
      }
    MulPZ<HD>(o, s, vs[st], lane);
    __syncthreads();  // stage st is refilled by the next iteration's prefetch
  }
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int i = row[r];
    const float lsum = QuadSum(l[r]);
    if (i >= t) continue;
    const float inv = 1.0f / lsum;
    float* dst = out + (int64_t{bi} * t + i) * (int64_t{h} * HD) + int64_t{hi} * HD;
#pragma unroll
    for (int nt = 0; nt < HD / 8; ++nt)
      *reinterpret_cast<float2*>(dst + nt * 8 + 2 * q) = make_float2(o[nt][2 * r] * inv, o[nt][2 * r + 1] * inv);
    if (q == 0) lse[(int64_t{bi} * h + hi) * t + i] = (m[r] + log2f(lsum)) / kLog2e;
  }
}

// dq. grid (query tiles, b * h). dS = P o (dP - dsum) * scale; dq = dS K.
template <int HD>
__global__ void __launch_bounds__(kTcThreads) AttentionDqTcKernel(float* dqkv, const bf16* dout, const float* lse,
                                                                  const float* dsum, const bf16* qkv, int t,
                                                                  int h, int hkv, float scale) {
  constexpr int P = HD + 8;
  __shared__ __align__(16) bf16 ks[2][kTc][P];  // q (stage 1) first, then key tiles
  __shared__ __align__(16) bf16 vs[2][kTc][P];  // dout (stage 1) first, then value tiles
  const int q0 = (gridDim.x - 1 - blockIdx.x) * kTc;
  const int bh = blockIdx.y, bi = bh / h, hi = bh % h, kvh = hi / (h / hkv);
  const int64_t row_len = int64_t{h + 2 * hkv} * HD;
  const int64_t k_col = int64_t{h + kvh} * HD, v_col = int64_t{h + hkv + kvh} * HD;
  const bf16* base = qkv + int64_t{bi} * t * row_len;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, q = lane % 4;
  const float sl2 = scale * kLog2e;
  LoadTileAsync<HD>(ks[1], base, row_len, int64_t{hi} * HD, q0, t);
  LoadTileAsync<HD>(vs[1], dout + int64_t{bi} * t * h * HD, int64_t{h} * HD, int64_t{hi} * HD, q0, t);
  LoadTileAsync<HD>(ks[0], base, row_len, k_col, 0, t);
  LoadTileAsync<HD>(vs[0], base, row_len, v_col, 0, t);
  CpAsyncCommit();
  CpAsyncWait<0>();
  __syncthreads();
  uint32_t qa[HD / 16][4], da[HD / 16][4];
  LoadA<HD>(qa, ks[1], warp * 16, g, q);
  LoadA<HD>(da, vs[1], warp * 16, g, q);
  __syncthreads();  // stage 1 now takes key tile 1
  const int row[2] = {q0 + warp * 16 + g, q0 + warp * 16 + g + 8};
  float lr[2], dr[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const bool ok = row[r] < t;
    lr[r] = ok ? lse[(int64_t{bi} * h + hi) * t + row[r]] * kLog2e : 0.f;
    dr[r] = ok ? dsum[(int64_t{bi} * h + hi) * t + row[r]] : 0.f;
  }
  float dq[HD / 8][4] = {};
  const int tiles = q0 / kTc + 1;
  for (int j = 0; j < tiles; ++j) {
    const int k0 = j * kTc, st = j & 1;
    if (j + 1 < tiles) {
      LoadTileAsync<HD>(ks[st ^ 1], base, row_len, k_col, k0 + kTc, t);
      LoadTileAsync<HD>(vs[st ^ 1], base, row_len, v_col, k0 + kTc, t);
    }
    CpAsyncCommit();
    CpAsyncWait<1>();
    __syncthreads();
    float s[kTc / 8][4], dp[kTc / 8][4];
    MulABt<HD>(s, qa, ks[st], g, q);
    MulABt<HD>(dp, da, vs[st], g, q);
#pragma unroll
    for (int nt = 0; nt < kTc / 8; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int jj = k0 + nt * 8 + 2 * q + (e & 1), i = row[e / 2];
        const float p = (jj > i || jj >= t || i >= t) ? 0.f : exp2f(s[nt][e] * sl2 - lr[e / 2]);
        s[nt][e] = p * (dp[nt][e] - dr[e / 2]) * scale;
      }
    MulPZ<HD>(dq, s, ks[st], lane);
    __syncthreads();
  }
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    if (row[r] >= t) continue;
    float* dst = dqkv + (int64_t{bi} * t + row[r]) * row_len + int64_t{hi} * HD;
#pragma unroll
    for (int nt = 0; nt < HD / 8; ++nt) {
      float2* d2 = reinterpret_cast<float2*>(dst + nt * 8 + 2 * q);
      const float2 v = *d2;
      *d2 = make_float2(v.x + dq[nt][2 * r], v.y + dq[nt][2 * r + 1]);
    }
  }
}

// dk, dv. grid (key tiles, b * hkv); walks every query head of the group and every query tile
// at or after the key tile (steps s: head s / per_head, tile s % per_head). dv = P^T dout,
// dk = dS^T q.
template <int HD>
__global__ void __launch_bounds__(kTcThreads) AttentionDkvTcKernel(float* dqkv, const bf16* dout, const float* lse,
                                                                   const float* dsum, const bf16* qkv, int t,
                                                                   int h, int hkv, float scale) {
  constexpr int P = HD + 8;
  __shared__ __align__(16) bf16 qs[2][kTc][P];  // k (stage 1) first, then query tiles
  __shared__ __align__(16) bf16 ds[2][kTc][P];  // v (stage 1) first, then dout tiles
  __shared__ float ls[2][kTc], dss[2][kTc];
  const int j0 = blockIdx.x * kTc;
  const int bg = blockIdx.y, bi = bg / hkv, kvh = bg % hkv, group = h / hkv;
  const int64_t row_len = int64_t{h + 2 * hkv} * HD, out_len = int64_t{h} * HD;
  const bf16* base = qkv + int64_t{bi} * t * row_len;
  const bf16* dbase = dout + int64_t{bi} * t * out_len;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, q = lane % 4;
  const float sl2 = scale * kLog2e;
  LoadTileAsync<HD>(qs[1], base, row_len, int64_t{h + kvh} * HD, j0, t);
  LoadTileAsync<HD>(ds[1], base, row_len, int64_t{h + hkv + kvh} * HD, j0, t);
  CpAsyncCommit();
  CpAsyncWait<0>();
  __syncthreads();
  uint32_t ka[HD / 16][4], va[HD / 16][4];
  LoadA<HD>(ka, qs[1], warp * 16, g, q);
  LoadA<HD>(va, ds[1], warp * 16, g, q);
  __syncthreads();
  const int key[2] = {j0 + warp * 16 + g, j0 + warp * 16 + g + 8};
  const int first = j0 / kTc, per_head = (t + kTc - 1) / kTc - first, steps = group * per_head;
  // Starts step s's query and dout tiles (and their lse, dsum) into stage st.
  auto issue = [&](int s, int st) {
    const int hi = kvh * group + s / per_head, i0 = (first + s % per_head) * kTc;
    LoadTileAsync<HD>(qs[st], base, row_len, int64_t{hi} * HD, i0, t);
    LoadTileAsync<HD>(ds[st], dbase, out_len, int64_t{hi} * HD, i0, t);
    for (int r = threadIdx.x; r < kTc; r += kTcThreads) {
      const int i = i0 + r;
      ls[st][r] = i < t ? lse[(int64_t{bi} * h + hi) * t + i] * kLog2e : 0.f;
      dss[st][r] = i < t ? dsum[(int64_t{bi} * h + hi) * t + i] : 0.f;
    }
  };
  float dk[HD / 8][4] = {}, dv[HD / 8][4] = {};
  issue(0, 0);
  CpAsyncCommit();
  for (int s = 0; s < steps; ++s) {
    const int st = s & 1, i0 = (first + s % per_head) * kTc;
    if (s + 1 < steps) issue(s + 1, st ^ 1);
    CpAsyncCommit();
    CpAsyncWait<1>();
    __syncthreads();
    float sc[kTc / 8][4], dp[kTc / 8][4];
    MulABt<HD>(sc, ka, qs[st], g, q);  // s^T: rows keys, columns queries
    MulABt<HD>(dp, va, ds[st], g, q);
#pragma unroll
    for (int nt = 0; nt < kTc / 8; ++nt)
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const int c = nt * 8 + 2 * q + e, i = i0 + c;
#pragma unroll
        for (int r = 0; r < 2; ++r) {
          const int j = key[r];
          const float p = (j > i || i >= t || j >= t) ? 0.f : exp2f(sc[nt][2 * r + e] * sl2 - ls[st][c]);
          sc[nt][2 * r + e] = p;
          dp[nt][2 * r + e] = p * (dp[nt][2 * r + e] - dss[st][c]) * scale;
        }
      }
    MulPZ<HD>(dv, sc, ds[st], lane);
    MulPZ<HD>(dk, dp, qs[st], lane);
    __syncthreads();
  }
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    if (key[r] >= t) continue;
    float* drow = dqkv + (int64_t{bi} * t + key[r]) * row_len;
#pragma unroll
    for (int nt = 0; nt < HD / 8; ++nt) {
      float2* k2 = reinterpret_cast<float2*>(drow + int64_t{h + kvh} * HD + nt * 8 + 2 * q);
      float2* v2 = reinterpret_cast<float2*>(drow + int64_t{h + hkv + kvh} * HD + nt * 8 + 2 * q);
      const float2 kx = *k2, vx = *v2;
      *k2 = make_float2(kx.x + dk[nt][2 * r], kx.y + dk[nt][2 * r + 1]);
      *v2 = make_float2(vx.x + dv[nt][2 * r], vx.y + dv[nt][2 * r + 1]);
    }
  }
}

template <int HD>
void ForwardTc(float* out, float* lse, const bf16* qkv16, int b, int t, int h, int hkv, cudaStream_t stream) {
  const dim3 grid((t + kTc - 1) / kTc, b * h);
  AttentionForwardTcKernel<HD><<<grid, kTcThreads, 0, stream>>>(out, lse, qkv16, t, h, hkv,
                                                               1.0f / sqrtf(static_cast<float>(HD)));
  MOE_CUDA_LAUNCH_CHECK();
}

template <int HD>
void BackwardTc(float* dqkv, const bf16* dout16, const float* lse, const float* dsum, const bf16* qkv16, int b,
                int t, int h, int hkv, cudaStream_t stream) {
  const float scale = 1.0f / sqrtf(static_cast<float>(HD));
  const int tiles = (t + kTc - 1) / kTc;
  AttentionDqTcKernel<HD><<<dim3(tiles, b * h), kTcThreads, 0, stream>>>(dqkv, dout16, lse, dsum, qkv16, t, h,
                                                                         hkv, scale);
  MOE_CUDA_LAUNCH_CHECK();
  AttentionDkvTcKernel<HD><<<dim3(tiles, b * hkv), kTcThreads, 0, stream>>>(dqkv, dout16, lse, dsum, qkv16, t,
                                                                            h, hkv, scale);
  MOE_CUDA_LAUNCH_CHECK();
}

// The tensor-core kernels read rows in 16-byte pieces: every row start must be 16-byte aligned.
bool TcAligned(int hd, std::initializer_list<const void*> ptrs) { return hd % 16 == 0 && Aligned(16, ptrs); }

[[noreturn]] void BadHeadDim(int hd) {
  std::fprintf(stderr, "cuda attention: head size %d is not one of 8, 16, 32, 64\n", hd);
  std::abort();
}

}  // namespace

void AttentionForward(float* out, float* lse, const float* qkv, int b, int t, int h, int hkv, int hd,
                      cudaStream_t stream) {
  if (b * t == 0) return;
  switch (hd) {
    case 8: return Forward<8>(out, lse, qkv, b, t, h, hkv, stream);
    case 16: return Forward<16>(out, lse, qkv, b, t, h, hkv, stream);
    case 32: return Forward<32>(out, lse, qkv, b, t, h, hkv, stream);
    case 64: return Forward<64>(out, lse, qkv, b, t, h, hkv, stream);
    default: BadHeadDim(hd);
  }
}

void AttentionBackward(float* dqkv, const float* dout, const float* out, const float* lse,
                       const float* qkv, int b, int t, int h, int hkv, int hd, float* scratch,
                       cudaStream_t stream) {
  if (b * t == 0) return;
  AttentionDsum(scratch, dout, out, b, t, h, hd, stream);
  switch (hd) {
    case 8: return Backward<8>(dqkv, dout, lse, scratch, qkv, b, t, h, hkv, stream);
    case 16: return Backward<16>(dqkv, dout, lse, scratch, qkv, b, t, h, hkv, stream);
    case 32: return Backward<32>(dqkv, dout, lse, scratch, qkv, b, t, h, hkv, stream);
    case 64: return Backward<64>(dqkv, dout, lse, scratch, qkv, b, t, h, hkv, stream);
    default: BadHeadDim(hd);
  }
}

void AttentionForwardBf16(float* out, float* lse, const float* qkv, const bf16* qkv16, int b, int t, int h,
                          int hkv, int hd, cudaStream_t stream) {
  if (b * t == 0) return;
  if (!TcAligned(hd, {out, qkv16})) return AttentionForward(out, lse, qkv, b, t, h, hkv, hd, stream);
  switch (hd) {
    case 16: return ForwardTc<16>(out, lse, qkv16, b, t, h, hkv, stream);
    case 32: return ForwardTc<32>(out, lse, qkv16, b, t, h, hkv, stream);
    case 64: return ForwardTc<64>(out, lse, qkv16, b, t, h, hkv, stream);
    default: return AttentionForward(out, lse, qkv, b, t, h, hkv, hd, stream);
  }
}

void AttentionBackwardBf16(float* dqkv, const float* dout, const bf16* dout16, const float* out, const float* lse,
                           const float* qkv, const bf16* qkv16, int b, int t, int h, int hkv, int hd, float* scratch,
                           cudaStream_t stream) {
  if (b * t == 0) return;
  if (!TcAligned(hd, {dqkv, dout16, qkv16}) || (hd != 16 && hd != 32 && hd != 64))
    return AttentionBackward(dqkv, dout, out, lse, qkv, b, t, h, hkv, hd, scratch, stream);
  AttentionDsum(scratch, dout, out, b, t, h, hd, stream);
  switch (hd) {
    case 16: return BackwardTc<16>(dqkv, dout16, lse, scratch, qkv16, b, t, h, hkv, stream);
    case 32: return BackwardTc<32>(dqkv, dout16, lse, scratch, qkv16, b, t, h, hkv, stream);
    default: return BackwardTc<64>(dqkv, dout16, lse, scratch, qkv16, b, t, h, hkv, stream);
  }
}

}  // namespace moe::cuda
