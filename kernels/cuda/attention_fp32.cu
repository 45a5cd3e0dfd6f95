// The fp32 SIMT attention kernels (fp32 jobs, and the oracle of the tensor-core path): forward,
// dq and dk/dv, flash style. A query (or key) row belongs to R consecutive lanes, each holding
// HC of its columns in registers: R = 1 for head sizes up to 64 (a thread per row), R = 4 or 8
// above, where one thread's registers could not hold a whole row; dot products add up the R
// lanes' parts by shuffles. The kernels are built for padded head sizes HD = HC R and read the
// columns from hd to HD as zeros, which add nothing to any product.
#include <cmath>
#include <cstdio>
#include <cstdlib>

#include "kernels/cuda/attention_internal.cuh"

namespace moe::cuda::internal {
namespace {

// Query rows per block in forward and dq, key rows per block in dk/dv (R lanes each).
template <int R>
constexpr int RowsPerBlock() {
  return R == 1 ? 64 : 32;
}
// Key rows per shared-memory tile in forward and dq (ks + vs: at most 32 KB).
template <int HD>
constexpr int KeyTile() {
  return HD <= 128 ? 32 : 16;
}
// Query rows per shared-memory tile in dk/dv.
template <int HD>
constexpr int QueryTile() {
  return HD <= 64 ? 32 : (HD <= 128 ? 16 : 8);
}

// The sum of v over the R lanes of a row (consecutive lanes of one warp; R divides 32).
template <int R>
__device__ __forceinline__ float RowSum(float v) {
  if constexpr (R > 1) {
    const unsigned lane = threadIdx.x % 32;
    const unsigned mask = ((1u << R) - 1u) << (lane & ~static_cast<unsigned>(R - 1));
#pragma unroll
    for (int o = R / 2; o > 0; o >>= 1) v += __shfl_xor_sync(mask, v, o);
  }
  return v;
}

// Forward: a row of R lanes per query; it keeps q and its output row in registers and walks the
// key tiles up to its own position with an online softmax (one rescale per tile).
template <int HC, int R, bool kDrop>
__global__ void __launch_bounds__(RowsPerBlock<R>() * R)
    ForwardKernel(float* out, float* lse, const float* qkv, int t, int h, int hkv, int hd, float scale, AttnDrop drop) {
  constexpr int HD = HC * R, kRows = RowsPerBlock<R>(), kThreads = kRows * R, kK = KeyTile<HD>();
  __shared__ float ks[kK][HD];
  __shared__ float vs[kK][HD];
  const int bh = blockIdx.y, bi = bh / h, hi = bh % h, g = hi / (h / hkv);
  const int64_t row_len = int64_t{h + 2 * hkv} * hd;
  const float* base = qkv + int64_t{bi} * t * row_len;
  const int i = blockIdx.x * kRows + threadIdx.x / R, c0 = (threadIdx.x % R) * HC;
  float q[HC], o[HC];
#pragma unroll
  for (int c = 0; c < HC; ++c) {
    q[c] = (i < t && c0 + c < hd) ? base[i * row_len + int64_t{hi} * hd + c0 + c] : 0.0f;
    o[c] = 0.0f;
  }
  float m = -INFINITY, l = 0.0f;
  const int last_key = min(t - 1, (blockIdx.x + 1) * kRows - 1);
  for (int k0 = 0; k0 <= last_key; k0 += kK) {
    __syncthreads();
    for (int idx = threadIdx.x; idx < kK * HD; idx += kThreads) {
      const int r = idx / HD, c = idx % HD, j = k0 + r;
      const bool ok = j < t && c < hd;
      ks[r][c] = ok ? base[j * row_len + int64_t{h + g} * hd + c] : 0.0f;
      vs[r][c] = ok ? base[j * row_len + int64_t{h + hkv + g} * hd + c] : 0.0f;
    }
    __syncthreads();
    if (i >= t || k0 > i) continue;  // the same for the R lanes of a row
    float s[kK];
    float tile_max = -INFINITY;
#pragma unroll
    for (int j = 0; j < kK; ++j) {
      float dot = 0.0f;
#pragma unroll
      for (int c = 0; c < HC; ++c) dot += q[c] * ks[j][c0 + c];
      dot = RowSum<R>(dot);
      s[j] = (k0 + j <= i) ? dot * scale : -INFINITY;
      tile_max = fmaxf(tile_max, s[j]);
    }
    const float m_new = fmaxf(m, tile_max);
    const float corr = expf(m - m_new);  // 0 on the first tile (m = -inf)
    l *= corr;
#pragma unroll
    for (int c = 0; c < HC; ++c) o[c] *= corr;
#pragma unroll
    for (int j = 0; j < kK; ++j) {
      float p = expf(s[j] - m_new);  // 0 for masked keys
      l += p;                        // the softmax's sum is the undropped one
      if (kDrop && p != 0.0f) p *= drop.Factor(bi, i, hi, h, t, k0 + j);
#pragma unroll
      for (int c = 0; c < HC; ++c) o[c] += p * vs[j][c0 + c];
    }
    m = m_new;
  }
  if (i < t) {
    const float inv = 1.0f / l;
    float* dst = out + (int64_t{bi} * t + i) * (int64_t{h} * hd) + int64_t{hi} * hd;
#pragma unroll
    for (int c = 0; c < HC; ++c) {
      if (c0 + c < hd) dst[c0 + c] = o[c] * inv;
    }
    if (c0 == 0) lse[(int64_t{bi} * h + hi) * t + i] = m + logf(l);
  }
}

// dq: a row of R lanes per query, walking key tiles as the forward does. With dropout mask M and
// scale s = 1 / (1 - p): dS = P o (M s dP - dsum) * scale.
template <int HC, int R, bool kDrop>
__global__ void __launch_bounds__(RowsPerBlock<R>() * R)
    DqKernel(float* dqkv, const float* dout, const float* lse, const float* dsum, const float* qkv, int t, int h,
             int hkv, int hd, float scale, AttnDrop drop) {
  constexpr int HD = HC * R, kRows = RowsPerBlock<R>(), kThreads = kRows * R, kK = KeyTile<HD>();
  __shared__ float ks[kK][HD];
  __shared__ float vs[kK][HD];
  const int bh = blockIdx.y, bi = bh / h, hi = bh % h, g = hi / (h / hkv);
  const int64_t row_len = int64_t{h + 2 * hkv} * hd;
  const float* base = qkv + int64_t{bi} * t * row_len;
  const int i = blockIdx.x * kRows + threadIdx.x / R, c0 = (threadIdx.x % R) * HC;
  float q[HC], dq[HC], d_o[HC];
  float l = 0.0f, dsi = 0.0f;
  const float* dorow = dout + (int64_t{bi} * t + i) * (int64_t{h} * hd) + int64_t{hi} * hd;
#pragma unroll
  for (int c = 0; c < HC; ++c) {
    const bool ok = i < t && c0 + c < hd;
    q[c] = ok ? base[i * row_len + int64_t{hi} * hd + c0 + c] : 0.0f;
    d_o[c] = ok ? dorow[c0 + c] : 0.0f;
    dq[c] = 0.0f;
  }
  if (i < t) {
    l = lse[(int64_t{bi} * h + hi) * t + i];
    dsi = dsum[(int64_t{bi} * h + hi) * t + i];
  }
  const int last_key = min(t - 1, (blockIdx.x + 1) * kRows - 1);
  for (int k0 = 0; k0 <= last_key; k0 += kK) {
    __syncthreads();
    for (int idx = threadIdx.x; idx < kK * HD; idx += kThreads) {
      const int r = idx / HD, c = idx % HD, j = k0 + r;
      const bool ok = j < t && c < hd;
      ks[r][c] = ok ? base[j * row_len + int64_t{h + g} * hd + c] : 0.0f;
      vs[r][c] = ok ? base[j * row_len + int64_t{h + hkv + g} * hd + c] : 0.0f;
    }
    __syncthreads();
    if (i >= t || k0 > i) continue;
    const int jmax = min(kK - 1, i - k0);
    for (int j = 0; j <= jmax; ++j) {
      float s = 0.0f, dp = 0.0f;
#pragma unroll
      for (int c = 0; c < HC; ++c) {
        s += q[c] * ks[j][c0 + c];
        dp += d_o[c] * vs[j][c0 + c];
      }
      s = RowSum<R>(s);
      dp = RowSum<R>(dp);
      const float p = expf(s * scale - l);
      if (kDrop) dp *= drop.Factor(bi, i, hi, h, t, k0 + j);
      const float ds = p * (dp - dsi) * scale;
#pragma unroll
      for (int c = 0; c < HC; ++c) dq[c] += ds * ks[j][c0 + c];
    }
  }
  if (i < t) {
    float* dst = dqkv + (int64_t{bi} * t + i) * row_len + int64_t{hi} * hd;
#pragma unroll
    for (int c = 0; c < HC; ++c) {
      if (c0 + c < hd) dst[c0 + c] += dq[c];
    }
  }
}

// dk, dv: a row of R lanes per key of one kv head; it walks every query head of its group and
// every query tile at or after its position, so each dk/dv element is written by one thread.
// dv = (P o M s)^T dout, dk = dS^T q. v sits in shared memory for a thread per row (registers
// are full with k, dk, dv), in registers otherwise.
template <int HC, int R, bool kDrop>
__global__ void __launch_bounds__(RowsPerBlock<R>() * R)
    DkvKernel(float* dqkv, const float* dout, const float* lse, const float* dsum, const float* qkv, int t, int h,
              int hkv, int hd, float scale, AttnDrop drop) {
  constexpr int HD = HC * R, kRows = RowsPerBlock<R>(), kThreads = kRows * R, kQT = QueryTile<HD>();
  constexpr int kOwnRows = R == 1 ? kRows : 1;
  __shared__ float vown[kOwnRows][HD + 1];  // R = 1: this block's v rows, padded: each thread reads its own
  __shared__ float qs[kQT][HD];
  __shared__ float dos[kQT][HD];
  __shared__ float ls[kQT], dss[kQT];
  const int bg = blockIdx.y, bi = bg / hkv, g = bg % hkv, group = h / hkv;
  const int64_t row_len = int64_t{h + 2 * hkv} * hd;
  const int64_t out_len = int64_t{h} * hd;
  const float* base = qkv + int64_t{bi} * t * row_len;
  const int j0 = blockIdx.x * kRows;
  const int jr = threadIdx.x / R, j = j0 + jr, c0 = (threadIdx.x % R) * HC;
  float k[HC], dk[HC], dv[HC], v[R == 1 ? 1 : HC];
  (void)v;
  (void)vown;
  if constexpr (R == 1) {
    for (int idx = threadIdx.x; idx < kRows * HD; idx += kThreads) {
      const int r = idx / HD, c = idx % HD;
      vown[r][c] = (j0 + r < t && c < hd) ? base[(j0 + r) * row_len + int64_t{h + hkv + g} * hd + c] : 0.0f;
    }
  }
#pragma unroll
  for (int c = 0; c < HC; ++c) {
    const bool ok = j < t && c0 + c < hd;
    k[c] = ok ? base[j * row_len + int64_t{h + g} * hd + c0 + c] : 0.0f;
    if constexpr (R > 1) v[c] = ok ? base[j * row_len + int64_t{h + hkv + g} * hd + c0 + c] : 0.0f;
    dk[c] = 0.0f;
    dv[c] = 0.0f;
  }
  auto vc = [&](int c) -> float {
    if constexpr (R == 1) {
      return vown[jr][c];
    } else {
      return v[c];
    }
  };
  for (int hi = g * group; hi < (g + 1) * group; ++hi) {
    for (int i0 = j0; i0 < t; i0 += kQT) {
      __syncthreads();
      for (int idx = threadIdx.x; idx < kQT * HD; idx += kThreads) {
        const int r = idx / HD, c = idx % HD, i = i0 + r;
        const bool ok = i < t && c < hd;
        qs[r][c] = ok ? base[i * row_len + int64_t{hi} * hd + c] : 0.0f;
        dos[r][c] = ok ? dout[(int64_t{bi} * t + i) * out_len + int64_t{hi} * hd + c] : 0.0f;
      }
      for (int r = threadIdx.x; r < kQT; r += kThreads) {
        const int i = i0 + r;
        ls[r] = i < t ? lse[(int64_t{bi} * h + hi) * t + i] : 0.0f;
        dss[r] = i < t ? dsum[(int64_t{bi} * h + hi) * t + i] : 0.0f;
      }
      __syncthreads();
      if (j >= t) continue;  // the same for the R lanes of a row
      const int rmin = max(0, j - i0);
      const int rmax = min(kQT, t - i0);
      for (int r = rmin; r < rmax; ++r) {
        float s = 0.0f, dp = 0.0f;
#pragma unroll
        for (int c = 0; c < HC; ++c) {
          s += qs[r][c0 + c] * k[c];
          dp += dos[r][c0 + c] * vc(c);
        }
        s = RowSum<R>(s);
        dp = RowSum<R>(dp);
        const float p = expf(s * scale - ls[r]);
        float pd = p;
        if constexpr (kDrop) {
          const float f = drop.Factor(bi, i0 + r, hi, h, t, j);
          pd = p * f;
          dp *= f;
        }
        const float ds = p * (dp - dss[r]) * scale;
#pragma unroll
        for (int c = 0; c < HC; ++c) {
          dv[c] += pd * dos[r][c0 + c];
          dk[c] += ds * qs[r][c0 + c];
        }
      }
    }
  }
  if (j < t) {
    float* drow = dqkv + (int64_t{bi} * t + j) * row_len;
#pragma unroll
    for (int c = 0; c < HC; ++c) {
      if (c0 + c >= hd) continue;
      drow[int64_t{h + g} * hd + c0 + c] += dk[c];
      drow[int64_t{h + hkv + g} * hd + c0 + c] += dv[c];
    }
  }
}

template <int HC, int R, bool kDrop>
void Launch(float* out, float* lse, const float* qkv, int b, int t, int h, int hkv, int hd, const AttnDrop& drop,
            cudaStream_t stream) {
  constexpr int kRows = RowsPerBlock<R>();
  const dim3 grid((t + kRows - 1) / kRows, b * h);
  ForwardKernel<HC, R, kDrop><<<grid, kRows * R, 0, stream>>>(out, lse, qkv, t, h, hkv, hd,
                                                              1.0f / sqrtf(static_cast<float>(hd)), drop);
  MOE_CUDA_LAUNCH_CHECK();
}

template <int HC, int R, bool kDrop>
void LaunchBackward(float* dqkv, const float* dout, const float* lse, const float* dsum, const float* qkv, int b,
                    int t, int h, int hkv, int hd, const AttnDrop& drop, cudaStream_t stream) {
  constexpr int kRows = RowsPerBlock<R>();
  const float scale = 1.0f / sqrtf(static_cast<float>(hd));
  const int tiles = (t + kRows - 1) / kRows;
  DqKernel<HC, R, kDrop><<<dim3(tiles, b * h), kRows * R, 0, stream>>>(dqkv, dout, lse, dsum, qkv, t, h, hkv, hd,
                                                                       scale, drop);
  MOE_CUDA_LAUNCH_CHECK();
  DkvKernel<HC, R, kDrop><<<dim3(tiles, b * hkv), kRows * R, 0, stream>>>(dqkv, dout, lse, dsum, qkv, t, h, hkv, hd,
                                                                          scale, drop);
  MOE_CUDA_LAUNCH_CHECK();
}

// The kernels without dropout carry none of its code (the registers of the plain path).
template <int HC, int R>
void Forward(float* out, float* lse, const float* qkv, int b, int t, int h, int hkv, int hd, const AttnDrop& drop,
             cudaStream_t stream) {
  if (drop.p > 0.0f) return Launch<HC, R, true>(out, lse, qkv, b, t, h, hkv, hd, drop, stream);
  Launch<HC, R, false>(out, lse, qkv, b, t, h, hkv, hd, drop, stream);
}

template <int HC, int R>
void Backward(float* dqkv, const float* dout, const float* lse, const float* dsum, const float* qkv, int b, int t,
              int h, int hkv, int hd, const AttnDrop& drop, cudaStream_t stream) {
  if (drop.p > 0.0f) return LaunchBackward<HC, R, true>(dqkv, dout, lse, dsum, qkv, b, t, h, hkv, hd, drop, stream);
  LaunchBackward<HC, R, false>(dqkv, dout, lse, dsum, qkv, b, t, h, hkv, hd, drop, stream);
}

[[noreturn]] void BadHeadSize(int hd) {
  std::fprintf(stderr, "cuda attention: head size %d is not a multiple of 8 up to 256\n", hd);
  std::abort();
}

}  // namespace

// Padded head sizes: a thread per row up to 64 (8, 16, 32, 64), then R lanes of 24 or 32
// columns (96, 128, 192, 256).
void SimtForward(float* out, float* lse, const float* qkv, int b, int t, int h, int hkv, int hd, const AttnDrop& drop,
                 cudaStream_t stream) {
  if (hd <= 0 || hd % 8 != 0 || hd > 256) BadHeadSize(hd);
  if (hd <= 8) return Forward<8, 1>(out, lse, qkv, b, t, h, hkv, hd, drop, stream);
  if (hd <= 16) return Forward<16, 1>(out, lse, qkv, b, t, h, hkv, hd, drop, stream);
  if (hd <= 32) return Forward<32, 1>(out, lse, qkv, b, t, h, hkv, hd, drop, stream);
  if (hd <= 64) return Forward<64, 1>(out, lse, qkv, b, t, h, hkv, hd, drop, stream);
  if (hd <= 96) return Forward<24, 4>(out, lse, qkv, b, t, h, hkv, hd, drop, stream);
  if (hd <= 128) return Forward<32, 4>(out, lse, qkv, b, t, h, hkv, hd, drop, stream);
  if (hd <= 192) return Forward<24, 8>(out, lse, qkv, b, t, h, hkv, hd, drop, stream);
  return Forward<32, 8>(out, lse, qkv, b, t, h, hkv, hd, drop, stream);
}

void SimtBackward(float* dqkv, const float* dout, const float* lse, const float* dsum, const float* qkv, int b, int t,
                  int h, int hkv, int hd, const AttnDrop& drop, cudaStream_t stream) {
  if (hd <= 0 || hd % 8 != 0 || hd > 256) BadHeadSize(hd);
  if (hd <= 8) return Backward<8, 1>(dqkv, dout, lse, dsum, qkv, b, t, h, hkv, hd, drop, stream);
  if (hd <= 16) return Backward<16, 1>(dqkv, dout, lse, dsum, qkv, b, t, h, hkv, hd, drop, stream);
  if (hd <= 32) return Backward<32, 1>(dqkv, dout, lse, dsum, qkv, b, t, h, hkv, hd, drop, stream);
  if (hd <= 64) return Backward<64, 1>(dqkv, dout, lse, dsum, qkv, b, t, h, hkv, hd, drop, stream);
  if (hd <= 96) return Backward<24, 4>(dqkv, dout, lse, dsum, qkv, b, t, h, hkv, hd, drop, stream);
  if (hd <= 128) return Backward<32, 4>(dqkv, dout, lse, dsum, qkv, b, t, h, hkv, hd, drop, stream);
  if (hd <= 192) return Backward<24, 8>(dqkv, dout, lse, dsum, qkv, b, t, h, hkv, hd, drop, stream);
  return Backward<32, 8>(dqkv, dout, lse, dsum, qkv, b, t, h, hkv, hd, drop, stream);
}

}  // namespace moe::cuda::internal
