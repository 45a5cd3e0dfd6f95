// The tensor-core attention kernels (bf16 jobs): the flash algorithm on mma.sync m16n8k16 (bf16
// operands, fp32 accumulation). q, k, v and dout come in bf16 (the model keeps a bf16 copy);
// each 64-row tile goes to shared memory by cp.async, two stages: the next tile loads while this
// one is multiplied. out, lse, dq/dk/dv stay fp32 (but see RopeBack below). Softmax statistics (max, sum, lse, dsum) are
// fp32; P and dS are rounded to bf16 for their products, as FlashAttention-2 does. A block is 4
// warps, each owning 16 rows of a 64-row tile. Forward and dq walk key tiles; dk/dv walks query
// tiles of every head of its kv group, so every output element has one writer (no atomics).
//
// Head sizes: the kernels are built for HD in {16, 32, 64, 96, 128, 192, 256} and run any hd that
// is a multiple of 8 up to HD, the columns from hd to HD loaded as zeros (they add nothing to any
// product) and never stored. What grows with HD is held where it fits: the forward keeps q's
// fragments in registers up to 128; the backward reads its A operands (q, dout; k, v) from
// shared memory at each product (fewer registers, more blocks an SM); above 128, dk/dv is split
// into two column halves (grid.z), each block recomputing the scores, so that the accumulators
// fit the registers. Tiles live in dynamic shared memory: at HD 256 six 64-row tiles take 203 KB
// (the H100/H200 limit per block is 227 KB).
//
// The backward of bf16 jobs without QK-norm also does RoPE's backward as it stores (RopeBack):
// dq and dk rotated back and rounded, dv rounded, straight into the qkv product's bf16 output
// gradient, where the kernel is built for hd itself and dk/dv is not split (hd 16 to 128).
// Tiles, fragments and products: attention_tc_tiles.cuh.
#include <algorithm>
#include <cmath>

#include "kernels/cuda/attention_internal.cuh"
#include "kernels/cuda/attention_tc_tiles.cuh"

namespace moe::cuda::internal {
namespace {

// Row g + 8 r of a 16 x HD accumulator (this thread's columns of it), rotated back by RoPE at
// position pos (pairs (c, c + HD / 2), one thread holding both) and rounded to bf16 into dst, the
// row's head. 0 + x as the overwriting fp32 stores add it (-0 becomes +0): the bits
// RopeBackwardToBf16 gives from those stores.
template <int HD>
__device__ __forceinline__ void StoreRopedBf16(const float (&acc)[HD / 8][4], int r, bf16* dst, int pos,
                                               const RopeBack& rope, int q) {
  constexpr int kHalf = HD / 2;
  const float* cs = rope.cos_t + int64_t{pos} * kHalf;
  const float* sn = rope.sin_t + int64_t{pos} * kHalf;
#pragma unroll
  for (int nt = 0; nt < HD / 16; ++nt) {
    const int c = nt * 8 + 2 * q;
    float na[2], nc[2];
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      RopeRotate(0.f + acc[nt][2 * r + e], 0.f + acc[nt + HD / 16][2 * r + e], cs[c + e], sn[c + e] * -1.0f, na[e],
                 nc[e]);
    }
    *reinterpret_cast<__nv_bfloat162*>(dst + c) = __floats2bfloat162_rn(na[0], na[1]);
    *reinterpret_cast<__nv_bfloat162*>(dst + kHalf + c) = __floats2bfloat162_rn(nc[0], nc[1]);
  }
}

// The same row unrotated (dv), rounded to bf16 into dst.
template <int HD>
__device__ __forceinline__ void StoreBf16Row(const float (&acc)[HD / 8][4], int r, bf16* dst, int q) {
#pragma unroll
  for (int nt = 0; nt < HD / 8; ++nt) {
    *reinterpret_cast<__nv_bfloat162*>(dst + nt * 8 + 2 * q) =
        __floats2bfloat162_rn(0.f + acc[nt][2 * r], 0.f + acc[nt][2 * r + 1]);
  }
}

// Where each kernel keeps its operands, by HD.
template <int HD>
struct TcPlan {
  static constexpr int P = HD + 8;
  static constexpr bool kQInRegs = HD <= 128;   // forward: q fragments in registers
  static constexpr int kSlices = HD > 128 ? 2 : 1;  // dk/dv column halves
  // The backward's stores can apply RoPE's backward (RopeBack): both columns of each pair in one
  // thread's registers at indices known when compiled.
  template <bool kExact>
  static constexpr bool kRopes = kExact && kSlices == 1;
  // The backward reads its A fragments (q, dout; k, v) from shared memory at each product, and up
  // to HD 64 keeps to the registers that let 4 dq or 3 dk/dv blocks share an SM (a few bytes of
  // spills; above 64 the accumulators need the registers). On an H100 (DISABLED_AttentionTiming,
  // small) the backward took 0.547 ms so against 0.601 with the fragments in registers and the
  // registers the compiler chose (2 blocks an SM each).
  static constexpr int kDqBlocks = HD <= 64 ? 4 : 1, kDkvBlocks = HD <= 64 ? 3 : 1;
  static constexpr size_t kForwardBytes = 5 * TileBytes<P>();                      // q, 2 k, 2 v
  static constexpr size_t kDqBytes = 6 * TileBytes<P>();                           // 2 k, 2 v, q, dout
  static constexpr size_t kDkvBytes = 6 * TileBytes<P>() + 4 * kTc * sizeof(float);  // 2 q, 2 dout, k, v
};

// The kernels store through RopeBack exactly where the callers expect it (Backward16 runs RoPE's
// backward itself elsewhere): for each kernel's HD built for hd itself.
static_assert(TcRopesInStores(16) == TcPlan<16>::kRopes<true> && TcRopesInStores(32) == TcPlan<32>::kRopes<true> &&
              TcRopesInStores(64) == TcPlan<64>::kRopes<true> && TcRopesInStores(96) == TcPlan<96>::kRopes<true> &&
              TcRopesInStores(128) == TcPlan<128>::kRopes<true> &&
              TcRopesInStores(192) == TcPlan<192>::kRopes<true> &&
              TcRopesInStores(256) == TcPlan<256>::kRopes<true>);

// Which (tile, head) a block of the 1-D grid takes: heads (b h, or b hkv for dk/dv) in groups of
// `group`, and within a group rank-major, so that each group's heaviest tiles (rank 0) start
// before its lighter ones. group 1 runs one head's tiles after another.
struct BlockOrder {
  int tiles, heads, group;
};

__device__ __forceinline__ void Locate(const BlockOrder& o, int& rank, int& head) {
  const int per = o.group * o.tiles, gi = blockIdx.x / per;
  const int first = gi * o.group, size = min(o.group, o.heads - first), r = blockIdx.x - gi * per;
  rank = r / size;
  head = first + r % size;
}

// Forward: the heaviest (last) query tiles first (BlockOrder).
// Shared tiles: 0 q, 1-2 k stages, 3-4 v stages.
template <int HD, bool kDrop, bool kExact>
__global__ void __launch_bounds__(kTcThreads) ForwardTcKernel(float* out, bf16* out16, float* lse, const bf16* qkv, int t, int h,
                                                              int hkv, int hd, float scale, AttnDrop drop,
                                                              BlockOrder order) {
  using Plan = TcPlan<HD>;
  constexpr int P = Plan::P;
  if constexpr (kExact) hd = HD;  // the head size the kernel is built for: addresses fold
  extern __shared__ __align__(16) unsigned char smem[];
  const Tile<P> qs = TileAt<P>(smem, 0);
  auto ks = [&](int st) { return TileAt<P>(smem, 1 + st); };
  auto vs = [&](int st) { return TileAt<P>(smem, 3 + st); };
  int rank = 0, bh = 0;
  Locate(order, rank, bh);
  const int q0 = (order.tiles - 1 - rank) * kTc;
  const int bi = bh / h, hi = bh % h, kvh = hi / (h / hkv);
  const int64_t row_len = int64_t{h + 2 * hkv} * hd;
  const int64_t k_col = int64_t{h + kvh} * hd, v_col = int64_t{h + hkv + kvh} * hd;
  const bf16* base = qkv + int64_t{bi} * t * row_len;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, q = lane % 4;
  const float sl2 = scale * kLog2e;  // scores in log2 units
  LoadTileAsync<HD>(qs, base, row_len, int64_t{hi} * hd, q0, t, hd);
  LoadTileAsync<HD>(ks(0), base, row_len, k_col, 0, t, hd);
  LoadTileAsync<HD>(vs(0), base, row_len, v_col, 0, t, hd);
  CpAsyncCommit();
  uint32_t qa[Plan::kQInRegs ? HD / 16 : 1][4];
  float o[HD / 8][4] = {};
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};
  const int row[2] = {q0 + warp * 16 + g, q0 + warp * 16 + g + 8};
  const int tiles = q0 / kTc + 1;
  for (int j = 0; j < tiles; ++j) {
    const int k0 = j * kTc, st = j & 1;
    if (j + 1 < tiles) {
      LoadTileAsync<HD>(ks(st ^ 1), base, row_len, k_col, k0 + kTc, t, hd);
      LoadTileAsync<HD>(vs(st ^ 1), base, row_len, v_col, k0 + kTc, t, hd);
    }
    CpAsyncCommit();
    CpAsyncWait<1>();  // all but the prefetch just issued: tile j (and q) have landed
    __syncthreads();
    float s[kTc / 8][4];
    if constexpr (Plan::kQInRegs) {
      if (j == 0) LoadA<HD>(qa, qs, warp * 16, lane);
      MulABt<HD>(s, qa, ks(st), lane);
    } else {
      MulABtShared<HD>(s, qs, warp * 16, ks(st), lane);
    }
    float mx[2] = {-INFINITY, -INFINITY};
    if (j + 1 < tiles) {  // wholly below the diagonal (k0 + 64 <= q0 < t): nothing to mask
#pragma unroll
      for (int nt = 0; nt < kTc / 8; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          s[nt][e] *= sl2;
          mx[e / 2] = fmaxf(mx[e / 2], s[nt][e]);
        }
    } else {
#pragma unroll
      for (int nt = 0; nt < kTc / 8; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int jj = k0 + nt * 8 + 2 * q + (e & 1);
          s[nt][e] = (jj > row[e / 2] || jj >= t) ? -INFINITY : s[nt][e] * sl2;
          mx[e / 2] = fmaxf(mx[e / 2], s[nt][e]);
        }
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
    if constexpr (kDrop) {  // the sum above is the undropped softmax's; P V takes the dropped P
#pragma unroll
      for (int nt = 0; nt < kTc / 8; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int jj = k0 + nt * 8 + 2 * q + (e & 1), i = row[e / 2];
          if (i < t && jj <= i) s[nt][e] *= drop.Factor(bi, i, hi, h, t, jj);
        }
    }
    MulPZ<HD>(o, s, vs(st), lane);
    __syncthreads();  // stage st is refilled by the next iteration's prefetch
  }
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int i = row[r];
    const float lsum = QuadSum(l[r]);
    if (i >= t) continue;
    const float inv = 1.0f / lsum;
    const int64_t at = (int64_t{bi} * t + i) * (int64_t{h} * hd) + int64_t{hi} * hd;  // out, out16 (either may be null)
#pragma unroll
    for (int nt = 0; nt < HD / 8; ++nt) {
      if (nt * 8 >= hd) break;
      const float2 v = make_float2(o[nt][2 * r] * inv, o[nt][2 * r + 1] * inv);
      if (out != nullptr) *reinterpret_cast<float2*>(out + at + nt * 8 + 2 * q) = v;
      if (out16 != nullptr) {  // the same values rounded, as CastToBf16 would round them
        *reinterpret_cast<__nv_bfloat162*>(out16 + at + nt * 8 + 2 * q) = __floats2bfloat162_rn(v.x, v.y);
      }
    }
    if (q == 0) lse[(int64_t{bi} * h + hi) * t + i] = (m[r] + log2f(lsum)) / kLog2e;
  }
}

// dq. grid (query tiles, b * h). dS = P o (M s dP - dsum) * scale (M s: the dropout factors);
// dq = dS K. Shared tiles: 0-1 k stages, 2-3 v stages, 4 q, 5 dout.
template <int HD, bool kDrop, bool kExact>
__global__ void __launch_bounds__(kTcThreads, TcPlan<HD>::kDqBlocks) DqTcKernel(float* dqkv, const bf16* dout, const float* lse,
                                                         const float* dsum, const bf16* qkv, int t, int h, int hkv,
                                                         int hd, float scale, AttnDrop drop, bool overwrite,
                                                         RopeBack rope, BlockOrder order) {
  using Plan = TcPlan<HD>;
  constexpr int P = Plan::P;
  if constexpr (kExact) hd = HD;  // the head size the kernel is built for: addresses fold
  extern __shared__ __align__(16) unsigned char smem[];
  auto ks = [&](int st) { return TileAt<P>(smem, st); };
  auto vs = [&](int st) { return TileAt<P>(smem, 2 + st); };
  const Tile<P> qs = TileAt<P>(smem, 4), dos = TileAt<P>(smem, 5);
  int rank = 0, bh = 0;
  Locate(order, rank, bh);
  const int q0 = (order.tiles - 1 - rank) * kTc;
  const int bi = bh / h, hi = bh % h, kvh = hi / (h / hkv);
  const int64_t row_len = int64_t{h + 2 * hkv} * hd;
  const int64_t k_col = int64_t{h + kvh} * hd, v_col = int64_t{h + hkv + kvh} * hd;
  const bf16* base = qkv + int64_t{bi} * t * row_len;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, q = lane % 4;
  const float sl2 = scale * kLog2e;
  LoadTileAsync<HD>(qs, base, row_len, int64_t{hi} * hd, q0, t, hd);
  LoadTileAsync<HD>(dos, dout + int64_t{bi} * t * h * hd, int64_t{h} * hd, int64_t{hi} * hd, q0, t, hd);
  LoadTileAsync<HD>(ks(0), base, row_len, k_col, 0, t, hd);
  LoadTileAsync<HD>(vs(0), base, row_len, v_col, 0, t, hd);
  CpAsyncCommit();  // the loop waits for this group with key tile 0's
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
      LoadTileAsync<HD>(ks(st ^ 1), base, row_len, k_col, k0 + kTc, t, hd);
      LoadTileAsync<HD>(vs(st ^ 1), base, row_len, v_col, k0 + kTc, t, hd);
    }
    CpAsyncCommit();
    CpAsyncWait<1>();
    __syncthreads();
    float s[kTc / 8][4], dp[kTc / 8][4];
    MulABtShared<HD>(s, qs, warp * 16, ks(st), lane);
    MulABtShared<HD>(dp, dos, warp * 16, vs(st), lane);
    if (j + 1 < tiles && q0 + kTc <= t) {  // wholly below the diagonal, every row real: all live
#pragma unroll
      for (int nt = 0; nt < kTc / 8; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const float p = exp2f(s[nt][e] * sl2 - lr[e / 2]);
          const float dpe =
              kDrop ? dp[nt][e] * drop.Factor(bi, row[e / 2], hi, h, t, k0 + nt * 8 + 2 * q + (e & 1)) : dp[nt][e];
          s[nt][e] = p * (dpe - dr[e / 2]) * scale;
        }
    } else {
#pragma unroll
      for (int nt = 0; nt < kTc / 8; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int jj = k0 + nt * 8 + 2 * q + (e & 1), i = row[e / 2];
          const bool live = !(jj > i || jj >= t || i >= t);
          const float p = live ? exp2f(s[nt][e] * sl2 - lr[e / 2]) : 0.f;
          const float dpe = (kDrop && live) ? dp[nt][e] * drop.Factor(bi, i, hi, h, t, jj) : dp[nt][e];
          s[nt][e] = p * (dpe - dr[e / 2]) * scale;
        }
    }
    MulPZ<HD>(dq, s, ks(st), lane);
    __syncthreads();
  }
  if constexpr (Plan::template kRopes<kExact>) {
    if (rope.dqkv16 != nullptr) {
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        if (row[r] >= t) continue;
        bf16* dst = rope.dqkv16 + (int64_t{bi} * t + row[r]) * row_len + int64_t{hi} * HD;
        StoreRopedBf16<HD>(dq, r, dst, row[r], rope, q);
      }
      return;
    }
  }
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    if (row[r] >= t) continue;
    float* dst = dqkv + (int64_t{bi} * t + row[r]) * row_len + int64_t{hi} * hd;
#pragma unroll
    for (int nt = 0; nt < HD / 8; ++nt) {
      if (nt * 8 >= hd) break;
      float2* d2 = reinterpret_cast<float2*>(dst + nt * 8 + 2 * q);
      const float2 v = overwrite ? make_float2(0.f, 0.f) : *d2;  // 0 + dq: as if added to zeros
      *d2 = make_float2(v.x + dq[nt][2 * r], v.y + dq[nt][2 * r + 1]);
    }
  }
}

// dk/dv's step: the probabilities P o M (into sc, transposed: rows keys) and dS (into dp) of the
// key rows `key` against query tile i0 (ls, dss: the lse and dsum of its rows as the forward and
// the caller wrote them; lse goes to log2 units here, rounded as before the product).
// kAllLive: a tile wholly below the diagonal, every query real, so no score is masked.
template <bool kAllLive, bool kDrop>
__device__ __forceinline__ void DkvScores(float (&sc)[kTc / 8][4], float (&dp)[kTc / 8][4], const int (&key)[2],
                                          int i0, int t, const float* ls, const float* dss, float sl2, float scale,
                                          const AttnDrop& drop, int bi, int hi, int h, int q) {
#pragma unroll
  for (int nt = 0; nt < kTc / 8; ++nt) {
    const float2 l2 = *reinterpret_cast<const float2*>(ls + nt * 8 + 2 * q);
    const float2 d2 = *reinterpret_cast<const float2*>(dss + nt * 8 + 2 * q);
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      const int c = nt * 8 + 2 * q + e, i = i0 + c;
      const float lse2 = __fmul_rn(e ? l2.y : l2.x, kLog2e), ds = e ? d2.y : d2.x;  // lse in log2 units
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        const int j = key[r];
        const bool live = kAllLive || !(j > i || i >= t || j >= t);
        const float p = live ? exp2f(sc[nt][2 * r + e] * sl2 - lse2) : 0.f;
        const float f = (kDrop && live) ? drop.Factor(bi, i, hi, h, t, j) : 1.0f;
        sc[nt][2 * r + e] = p * f;
        dp[nt][2 * r + e] = p * (dp[nt][2 * r + e] * f - ds) * scale;
      }
    }
  }
}

// dk, dv. grid (key tiles, b * hkv, column slices); walks every query head of the group and
// every query tile at or after the key tile (steps s: head s / per_head, tile s % per_head).
// dv = (P o M s)^T dout, dk = dS^T q, each on the block's HD / slices columns. Shared tiles:
// 0-1 q stages, 2-3 dout stages, 4 k, 5 v; then the lse and dsum stages.
template <int HD, bool kDrop, bool kExact>
__global__ void __launch_bounds__(kTcThreads, TcPlan<HD>::kDkvBlocks) DkvTcKernel(float* dqkv, const bf16* dout, const float* lse,
                                                          const float* dsum, const bf16* qkv, int t, int h, int hkv,
                                                          int hd, float scale, AttnDrop drop, bool overwrite,
                                                          RopeBack rope, BlockOrder order) {
  using Plan = TcPlan<HD>;
  constexpr int P = Plan::P, HS = HD / Plan::kSlices;
  if constexpr (kExact) hd = HD;  // the head size the kernel is built for: addresses fold
  extern __shared__ __align__(16) unsigned char smem[];
  auto qs = [&](int st) { return TileAt<P>(smem, st); };
  auto ds = [&](int st) { return TileAt<P>(smem, 2 + st); };
  const Tile<P> kt = TileAt<P>(smem, 4), vt = TileAt<P>(smem, 5);
  float (*ls)[kTc] = reinterpret_cast<float (*)[kTc]>(smem + 6 * TileBytes<P>());
  float (*dss)[kTc] = ls + 2;
  int rank = 0, bg = 0;
  Locate(order, rank, bg);
  const int j0 = rank * kTc, c0 = blockIdx.z * HS;
  const int bi = bg / hkv, kvh = bg % hkv, group = h / hkv;
  const int64_t row_len = int64_t{h + 2 * hkv} * hd, out_len = int64_t{h} * hd;
  const bf16* base = qkv + int64_t{bi} * t * row_len;
  const bf16* dbase = dout + int64_t{bi} * t * out_len;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, q = lane % 4;
  const float sl2 = scale * kLog2e;
  LoadTileAsync<HD>(kt, base, row_len, int64_t{h + kvh} * hd, j0, t, hd);
  LoadTileAsync<HD>(vt, base, row_len, int64_t{h + hkv + kvh} * hd, j0, t, hd);
  CpAsyncCommit();  // the loop waits for this group with step 0's
  const int key[2] = {j0 + warp * 16 + g, j0 + warp * 16 + g + 8};
  const int first = j0 / kTc, per_head = (t + kTc - 1) / kTc - first, steps = group * per_head;
  // Starts step s's query and dout tiles (and their lse, dsum) into stage st.
  auto issue = [&](int s, int st) {
    const int hi = kvh * group + s / per_head, i0 = (first + s % per_head) * kTc;
    LoadTileAsync<HD>(qs(st), base, row_len, int64_t{hi} * hd, i0, t, hd);
    LoadTileAsync<HD>(ds(st), dbase, out_len, int64_t{hi} * hd, i0, t, hd);
    for (int x = threadIdx.x; x < 2 * kTc; x += kTcThreads) {  // rows past t: zeros
      const int r = x % kTc, i = i0 + r;
      const int64_t at = (int64_t{bi} * h + hi) * t + min(i, t - 1);
      CpAsync4(x < kTc ? &ls[st][r] : &dss[st][r], x < kTc ? lse + at : dsum + at, i < t);
    }
  };
  float dk[HS / 8][4] = {}, dv[HS / 8][4] = {};
  issue(0, 0);
  CpAsyncCommit();
  for (int s = 0; s < steps; ++s) {
    const int st = s & 1, hi = kvh * group + s / per_head, i0 = (first + s % per_head) * kTc;
    if (s + 1 < steps) issue(s + 1, st ^ 1);
    CpAsyncCommit();
    CpAsyncWait<1>();
    __syncthreads();
    float sc[kTc / 8][4], dp[kTc / 8][4];
    MulABtShared<HD>(sc, kt, warp * 16, qs(st), lane);  // s^T: rows keys, columns queries
    MulABtShared<HD>(dp, vt, warp * 16, ds(st), lane);
    // Wholly below the diagonal with every query real (i0 > j0 puts the key tile before the last,
    // so every key is real): every score is live.
    if (i0 > j0 && i0 + kTc <= t) {
      DkvScores<true, kDrop>(sc, dp, key, i0, t, ls[st], dss[st], sl2, scale, drop, bi, hi, h, q);
    } else {
      DkvScores<false, kDrop>(sc, dp, key, i0, t, ls[st], dss[st], sl2, scale, drop, bi, hi, h, q);
    }
    MulPZ<HS>(dv, sc, Cols<P>(ds(st), c0), lane);
    MulPZ<HS>(dk, dp, Cols<P>(qs(st), c0), lane);
    __syncthreads();
  }
  if constexpr (Plan::template kRopes<kExact>) {
    if (rope.dqkv16 != nullptr) {
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        if (key[r] >= t) continue;
        bf16* drow = rope.dqkv16 + (int64_t{bi} * t + key[r]) * row_len;
        StoreRopedBf16<HD>(dk, r, drow + int64_t{h + kvh} * HD, key[r], rope, q);
        StoreBf16Row<HD>(dv, r, drow + int64_t{h + hkv + kvh} * HD, q);
      }
      return;
    }
  }
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    if (key[r] >= t) continue;
    float* drow = dqkv + (int64_t{bi} * t + key[r]) * row_len;
#pragma unroll
    for (int nt = 0; nt < HS / 8; ++nt) {
      const int c = c0 + nt * 8;
      if (c >= hd) break;
      float2* k2 = reinterpret_cast<float2*>(drow + int64_t{h + kvh} * hd + c + 2 * q);
      float2* v2 = reinterpret_cast<float2*>(drow + int64_t{h + hkv + kvh} * hd + c + 2 * q);
      const float2 zero = make_float2(0.f, 0.f), kx = overwrite ? zero : *k2, vx = overwrite ? zero : *v2;
      *k2 = make_float2(kx.x + dk[nt][2 * r], kx.y + dk[nt][2 * r + 1]);
      *v2 = make_float2(vx.x + dv[nt][2 * r], vx.y + dv[nt][2 * r + 1]);
    }
  }
}

// The launch order of a kernel's blocks over `tiles` tiles of `heads` heads (BlockOrder): groups
// of 16 heads, the heaviest tiles of a group first. On the H200 (DISABLED_AttentionTiming, hd 64 to
// 256) 2-9% faster than one head at a time (group 1: the last heads' heavy tiles start near the
// end of the grid), and for the backward faster than all heads at once (which reads every head's
// k, v together, past what the L2 keeps).
BlockOrder OrderOf(int tiles, int heads) { return BlockOrder{tiles, heads, std::min(16, heads)}; }

// Dynamic shared memory past the default 48 KB needs the kernel's consent (per device).
template <typename Kernel>
void AllowSharedBytes(Kernel kernel, size_t bytes) {
  if (bytes > 48 * 1024) {
    MOE_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)));
  }
}

template <int HD, bool kDrop, bool kExact>
void Forward(float* out, bf16* out16, float* lse, const bf16* qkv16, int b, int t, int h, int hkv, int hd,
             const AttnDrop& drop, cudaStream_t stream) {
  constexpr size_t bytes = TcPlan<HD>::kForwardBytes;
  auto* kernel = ForwardTcKernel<HD, kDrop, kExact>;
  AllowSharedBytes(kernel, bytes);
  const BlockOrder order = OrderOf((t + kTc - 1) / kTc, b * h);
  kernel<<<order.tiles * order.heads, kTcThreads, bytes, stream>>>(
      out, out16, lse, qkv16, t, h, hkv, hd, 1.0f / sqrtf(static_cast<float>(hd)), drop, order);
  MOE_CUDA_LAUNCH_CHECK();
}

template <int HD, bool kDrop, bool kExact>
void Backward(float* dqkv, const bf16* dout16, const float* lse, const float* dsum, const bf16* qkv16, int b, int t,
              int h, int hkv, int hd, const AttnDrop& drop, bool overwrite, const RopeBack& rope_in,
              cudaStream_t stream) {
  using Plan = TcPlan<HD>;
  const RopeBack rope = Plan::template kRopes<kExact> && overwrite ? rope_in : RopeBack{};
  const float scale = 1.0f / sqrtf(static_cast<float>(hd));
  const int tiles = (t + kTc - 1) / kTc;
  auto* dq = DqTcKernel<HD, kDrop, kExact>;
  AllowSharedBytes(dq, Plan::kDqBytes);
  const BlockOrder q_order = OrderOf(tiles, b * h), kv_order = OrderOf(tiles, b * hkv);
  dq<<<q_order.tiles * q_order.heads, kTcThreads, Plan::kDqBytes, stream>>>(dqkv, dout16, lse, dsum, qkv16, t, h, hkv,
                                                                            hd, scale, drop, overwrite, rope, q_order);
  MOE_CUDA_LAUNCH_CHECK();
  auto* dkv = DkvTcKernel<HD, kDrop, kExact>;
  AllowSharedBytes(dkv, Plan::kDkvBytes);
  dkv<<<dim3(kv_order.tiles * kv_order.heads, 1, Plan::kSlices), kTcThreads, Plan::kDkvBytes, stream>>>(
      dqkv, dout16, lse, dsum, qkv16, t, h, hkv, hd, scale, drop, overwrite, rope, kv_order);
  MOE_CUDA_LAUNCH_CHECK();
}

// The kernels without dropout carry none of its code, and those for hd == HD fold the head size
// into their addresses (the registers of the plain path: padding costs a few, and spills at 64).
template <int HD>
void ForwardEither(float* out, bf16* out16, float* lse, const bf16* qkv16, int b, int t, int h, int hkv, int hd,
                   const AttnDrop& drop, cudaStream_t stream) {
  const bool exact = hd == HD, on = drop.p > 0.0f;
  if (on && exact) return Forward<HD, true, true>(out, out16, lse, qkv16, b, t, h, hkv, hd, drop, stream);
  if (on) return Forward<HD, true, false>(out, out16, lse, qkv16, b, t, h, hkv, hd, drop, stream);
  if (exact) return Forward<HD, false, true>(out, out16, lse, qkv16, b, t, h, hkv, hd, drop, stream);
  Forward<HD, false, false>(out, out16, lse, qkv16, b, t, h, hkv, hd, drop, stream);
}

template <int HD>
void BackwardEither(float* dqkv, const bf16* dout16, const float* lse, const float* dsum, const bf16* qkv16, int b,
                    int t, int h, int hkv, int hd, const AttnDrop& drop, bool overwrite, const RopeBack& rope,
                    cudaStream_t stream) {
  const bool exact = hd == HD, on = drop.p > 0.0f;
  if (on && exact) {
    return Backward<HD, true, true>(dqkv, dout16, lse, dsum, qkv16, b, t, h, hkv, hd, drop, overwrite, rope, stream);
  }
  if (on) {
    return Backward<HD, true, false>(dqkv, dout16, lse, dsum, qkv16, b, t, h, hkv, hd, drop, overwrite, rope, stream);
  }
  if (exact) {
    return Backward<HD, false, true>(dqkv, dout16, lse, dsum, qkv16, b, t, h, hkv, hd, drop, overwrite, rope, stream);
  }
  Backward<HD, false, false>(dqkv, dout16, lse, dsum, qkv16, b, t, h, hkv, hd, drop, overwrite, rope, stream);
}

}  // namespace

void TcForward(float* out, bf16* out16, float* lse, const bf16* qkv16, int b, int t, int h, int hkv, int hd,
               const AttnDrop& drop, cudaStream_t stream) {
  if (hd <= 16) return ForwardEither<16>(out, out16, lse, qkv16, b, t, h, hkv, hd, drop, stream);
  if (hd <= 32) return ForwardEither<32>(out, out16, lse, qkv16, b, t, h, hkv, hd, drop, stream);
  if (hd <= 64) return ForwardEither<64>(out, out16, lse, qkv16, b, t, h, hkv, hd, drop, stream);
  if (hd <= 96) return ForwardEither<96>(out, out16, lse, qkv16, b, t, h, hkv, hd, drop, stream);
  if (hd <= 128) return ForwardEither<128>(out, out16, lse, qkv16, b, t, h, hkv, hd, drop, stream);
  if (hd <= 192) return ForwardEither<192>(out, out16, lse, qkv16, b, t, h, hkv, hd, drop, stream);
  return ForwardEither<256>(out, out16, lse, qkv16, b, t, h, hkv, hd, drop, stream);
}

void TcBackward(float* dqkv, const bf16* dout16, const float* lse, const float* dsum, const bf16* qkv16, int b, int t,
                int h, int hkv, int hd, const AttnDrop& drop, bool overwrite, const RopeBack& rope,
                cudaStream_t stream) {
  auto run = [&](auto either) { either(dqkv, dout16, lse, dsum, qkv16, b, t, h, hkv, hd, drop, overwrite, rope, stream); };
  if (hd <= 16) return run(BackwardEither<16>);
  if (hd <= 32) return run(BackwardEither<32>);
  if (hd <= 64) return run(BackwardEither<64>);
  if (hd <= 96) return run(BackwardEither<96>);
  if (hd <= 128) return run(BackwardEither<128>);
  if (hd <= 192) return run(BackwardEither<192>);
  run(BackwardEither<256>);
}

}  // namespace moe::cuda::internal
