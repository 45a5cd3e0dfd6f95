// The building blocks of the tensor-core attention kernels (attention_tc.cu): 64-row bf16 tiles
// in shared memory, their loads by cp.async, their fragments by ldmatrix, and the three products
// the kernels are made of (mma.sync m16n8k16, bf16 operands, fp32 accumulation).
//
// Fragment layouts (PTX ISA, mma.m16n8k16 .bf16): with g = lane / 4, q = lane % 4,
//   A (16x16, row): regs {a(g, 2q..), a(g+8, 2q..), a(g, 2q+8..), a(g+8, 2q+8..)}
//   B (16x8, col):  regs {b(2q.., g), b(2q+8.., g)}
//   C (16x8, f32):  {c(g, 2q), c(g, 2q+1), c(g+8, 2q), c(g+8, 2q+1)}
// Tiles stay row-major in shared memory and every fragment comes by ldmatrix: A operands and the
// B operands whose k index runs along a row as they lie, the others (the second products' V, K,
// Q, dout) through .trans.
#pragma once

#include <cstdint>

#include "kernels/cuda/device.cuh"

namespace moe::cuda::internal {
namespace {

constexpr int kTc = 64;  // rows per tile (queries or keys)
// 4 warps. Blocks of 8 warps (128 rows, each streamed tile shared by twice the rows) measured
// slower on an H100 (small: forward 0.385 against 0.316 ms, backward 1.34 against 1.01 ms).
constexpr int kTcThreads = 128;
constexpr float kLog2e = 1.4426950408889634f;

// A 64-row tile of pitch P (HD + 8: fragment reads and ldmatrix are conflict-free).
template <int P>
using Tile = bf16 (*)[P];

template <int P>
constexpr size_t TileBytes() {
  return size_t{kTc} * P * sizeof(bf16);
}

// Tile n of the block's dynamic shared memory.
template <int P>
__device__ __forceinline__ Tile<P> TileAt(unsigned char* smem, int n) {
  return reinterpret_cast<Tile<P>>(smem + n * TileBytes<P>());
}

// Columns [c0, ...) of a tile, as a tile of the same pitch.
template <int P>
__device__ __forceinline__ Tile<P> Cols(Tile<P> s, int c0) {
  return reinterpret_cast<Tile<P>>(&s[0][c0]);
}

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

// cp.async of 16 bytes global -> shared; src_bytes 0 writes zeros (rows past t, columns past hd).
__device__ __forceinline__ void CpAsync16(void* smem, const void* gmem, bool valid) {
  const uint32_t dst = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(gmem), "r"(valid ? 16 : 0));
}
// The same for 4 bytes (through L1: .cg takes 16 bytes only).
__device__ __forceinline__ void CpAsync4(void* smem, const void* gmem, bool valid) {
  const uint32_t dst = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(dst), "l"(gmem), "r"(valid ? 4 : 0));
}
__device__ __forceinline__ void CpAsyncCommit() { asm volatile("cp.async.commit_group;\n" ::); }
// Waits until at most N of this thread's committed groups are still in flight.
template <int N>
__device__ __forceinline__ void CpAsyncWait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

// Starts dst[r][c] = src row (r0 + r), columns [col, col + HD) (bf16); zeros past t and past hd
// (hd a multiple of 8: a 16-byte chunk is all in or all out).
template <int HD, int PITCH>
__device__ __forceinline__ void LoadTileAsync(bf16 (*dst)[PITCH], const bf16* src, int64_t row_len, int64_t col,
                                              int r0, int t, int hd) {
  constexpr int kChunks = HD / 8;  // 16-byte chunks per row
  for (int idx = threadIdx.x; idx < kTc * kChunks; idx += kTcThreads) {
    const int r = idx / kChunks, c = (idx % kChunks) * 8, i = r0 + r;
    const bool ok = i < t && c < hd;
    CpAsync16(&dst[r][c], src + int64_t{min(i, t - 1)} * row_len + col + (ok ? c : 0), ok);
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

// The same as they lie (no .trans): lane l receives elements (l / 4, 2 (l % 4)) and
// (l / 4, 2 (l % 4) + 1) of each matrix, the A fragment layout and, for a tile whose k index runs
// along a row, the B one. One instruction where the 32-bit reads took four.
__device__ __forceinline__ void LdMatrixX4(uint32_t& r0, uint32_t& r1, uint32_t& r2, uint32_t& r3, const bf16* p) {
  const uint32_t addr = static_cast<uint32_t>(__cvta_generic_to_shared(p));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
               : "r"(addr));
}

// The A fragment of rows [r0, r0 + 16), k chunk kc, of a row-major tile: the matrices (rows r0,
// k 0), (r0 + 8, 0), (r0, 8), (r0 + 8, 8) give a[0..3].
template <int PITCH>
__device__ __forceinline__ void LoadAChunk(uint32_t (&a)[4], const bf16 (*s)[PITCH], int r0, int kc, int lane) {
  LdMatrixX4(a[0], a[1], a[2], a[3], &s[r0 + lane % 8 + ((lane / 8) & 1) * 8][kc * 16 + (lane / 16) * 8]);
}

// A fragments of rows [r0, r0 + 16) of a row-major tile, for every 16-wide k chunk.
template <int HD, int PITCH>
__device__ __forceinline__ void LoadA(uint32_t (&a)[HD / 16][4], const bf16 (*s)[PITCH], int r0, int lane) {
#pragma unroll
  for (int kc = 0; kc < HD / 16; ++kc) LoadAChunk(a[kc], s, r0, kc, lane);
}

// The B fragments of n tiles 2 np and 2 np + 1 (rows [16 np, 16 np + 16) of a row-major tile Y,
// read as Y^T), k chunk kc: b[0], b[1] for the first, b[2], b[3] for the second.
template <int PITCH>
__device__ __forceinline__ void LoadBtPair(uint32_t (&b)[4], const bf16 (*y)[PITCH], int np, int kc, int lane) {
  LdMatrixX4(b[0], b[1], b[2], b[3], &y[np * 16 + lane % 8 + (lane / 16) * 8][kc * 16 + ((lane / 8) & 1) * 8]);
}

// acc (16 x 64) = A (16 x HD, fragments) * Y^T, Y a row-major (64 x HD) tile. Each acc[nt] sums
// its k chunks in order.
template <int HD, int PITCH>
__device__ __forceinline__ void MulABt(float (&acc)[kTc / 8][4], const uint32_t (&a)[HD / 16][4],
                                       const bf16 (*y)[PITCH], int lane) {
#pragma unroll
  for (int np = 0; np < kTc / 16; ++np) {
    float(&c0)[4] = acc[2 * np];
    float(&c1)[4] = acc[2 * np + 1];
    c0[0] = c0[1] = c0[2] = c0[3] = c1[0] = c1[1] = c1[2] = c1[3] = 0.f;
#pragma unroll
    for (int kc = 0; kc < HD / 16; ++kc) {
      uint32_t b[4];
      LoadBtPair(b, y, np, kc, lane);
      Mma(c0, a[kc], b[0], b[1]);
      Mma(c1, a[kc], b[2], b[3]);
    }
  }
}

// The same with A read from rows [r0, r0 + 16) of a shared tile, one k chunk at a time (the
// backward, and the forward above HD 128: fewer registers held). Same sums in the same order.
template <int HD, int PITCH>
__device__ __forceinline__ void MulABtShared(float (&acc)[kTc / 8][4], const bf16 (*x)[PITCH], int r0,
                                             const bf16 (*y)[PITCH], int lane) {
#pragma unroll
  for (int nt = 0; nt < kTc / 8; ++nt) acc[nt][0] = acc[nt][1] = acc[nt][2] = acc[nt][3] = 0.f;
#pragma unroll
  for (int kc = 0; kc < HD / 16; ++kc) {
    uint32_t a[4];
    LoadAChunk(a, x, r0, kc, lane);
#pragma unroll
    for (int np = 0; np < kTc / 16; ++np) {
      uint32_t b[4];
      LoadBtPair(b, y, np, kc, lane);
      Mma(acc[2 * np], a, b[0], b[1]);
      Mma(acc[2 * np + 1], a, b[2], b[3]);
    }
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

}  // namespace
}  // namespace moe::cuda::internal
