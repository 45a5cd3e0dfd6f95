#include "kernels/cuda/attention.h"

#include <cmath>
#include <cstdio>
#include <cstdlib>

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
  const int64_t rows = int64_t{b} * h * t;
  AttentionDsumKernel<<<BlocksFor(rows, 256), 256, 0, stream>>>(scratch, dout, out, b, t, h, hd);
  MOE_CUDA_LAUNCH_CHECK();
  switch (hd) {
    case 8: return Backward<8>(dqkv, dout, lse, scratch, qkv, b, t, h, hkv, stream);
    case 16: return Backward<16>(dqkv, dout, lse, scratch, qkv, b, t, h, hkv, stream);
    case 32: return Backward<32>(dqkv, dout, lse, scratch, qkv, b, t, h, hkv, stream);
    case 64: return Backward<64>(dqkv, dout, lse, scratch, qkv, b, t, h, hkv, stream);
    default: BadHeadDim(hd);
  }
}

}  // namespace moe::cuda
