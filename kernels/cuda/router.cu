#include "kernels/cuda/router.h"

#include <cfloat>
#include <cstdint>

#include "kernels/cuda/device.cuh"
#include "kernels/cuda/moe_internal.h"

namespace moe::cuda {
namespace {

using internal::CheckExperts;
using internal::CheckTopK;
using internal::kMaxExperts;
using internal::kMaxTopK;
using internal::kThreads;

// The scoring of kernels::RouterScoring, by value for the kernels (bias: device, may be null).
struct Scoring {
  bool plain = true, sigmoid = false;
  float inv_tau = 1.0f;
  const float* bias = nullptr;
};

Scoring ScoringOf(const kernels::RouterScoring& s) {
  return Scoring{s.plain(), s.sigmoid, 1.0f / s.temperature, s.bias};
}

// A block's tokens (one thread each) have their logits staged in shared memory, rows of `pitch`
// floats (odd, so that the threads' rows fall in different banks): read and written back in
// coalesced passes, where each thread's own row in global memory took a cache line a warp's lane
// at every access. The scores replace the logits in place. The arithmetic is the thread's alone,
// in the CPU's order (kernels/router.cc), so the bits are what they were.
struct RouterTile {
  int rows, pitch;
  size_t Bytes() const { return sizeof(float) * rows * pitch; }
};
// `tiles` such tiles a block: 128 tokens a block up to 64 experts; fewer past that (down to 32,
// 64 KB a tile at 512 experts).
RouterTile RouterTileFor(int e, int tiles) {
  const int pitch = e % 2 == 0 ? e + 1 : e;
  int rows = 128;
  while (rows > 32 && sizeof(float) * tiles * rows * pitch > 48 * 1024) rows /= 2;
  return RouterTile{rows, pitch};
}

// Dynamic shared memory past the default 48 KB needs the kernel's consent (per device).
template <typename Kernel>
void AllowSharedBytes(Kernel kernel, size_t bytes) {
  if (bytes > 48 * 1024) {
    MOE_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)));
  }
}

// rows x e floats from global memory (first row at src) into a tile, coalesced; and back.
__device__ __forceinline__ void LoadTile(float* tile, const float* src, int rows, int e, int pitch) {
  for (int i = threadIdx.x; i < rows * e; i += blockDim.x) tile[(i / e) * pitch + i % e] = src[i];
}
__device__ __forceinline__ void StoreTile(float* dst, const float* tile, int rows, int e, int pitch) {
  for (int i = threadIdx.x; i < rows * e; i += blockDim.x) dst[i] = tile[(i / e) * pitch + i % e];
}

__global__ void RouterForwardKernel(float* probs, float* lse, int32_t* expert_idx, float* weights,
                                    const float* logits, int n, int e, int k, Scoring sc, int pitch) {
  extern __shared__ float tile[];
  const int row0 = blockIdx.x * blockDim.x, rows = min(static_cast<int>(blockDim.x), n - row0);
  const int64_t first = int64_t{row0} * e;
  LoadTile(tile, logits + first, rows, e, pitch);
  __syncthreads();
  const int t = row0 + threadIdx.x;
  if (t < n) {
    float* z = tile + threadIdx.x * pitch;  // the logits, then the scores p in their place
    float* p = z;
    float mx = z[0];
    for (int x = 1; x < e; ++x) mx = fmaxf(mx, z[x]);
    if (sc.plain) {
      float sum = 0.0f;
      for (int x = 0; x < e; ++x) {
        p[x] = expf(z[x] - mx);
        sum += p[x];
      }
      const float inv = 1.0f / sum;
      for (int x = 0; x < e; ++x) p[x] *= inv;
      lse[t] = mx + logf(sum);
    } else {
      // lse of the raw logits (the z loss's); scores of logits / tau.
      float raw = 0.0f;
      for (int x = 0; x < e; ++x) raw += expf(z[x] - mx);
      lse[t] = mx + logf(raw);
      if (sc.sigmoid) {
        for (int x = 0; x < e; ++x) p[x] = 1.0f / (1.0f + expf(-z[x] * sc.inv_tau));
      } else {
        const float smx = mx * sc.inv_tau;
        float sum = 0.0f;
        for (int x = 0; x < e; ++x) {
          p[x] = expf(z[x] * sc.inv_tau - smx);
          sum += p[x];
        }
        const float inv = 1.0f / sum;
        for (int x = 0; x < e; ++x) p[x] *= inv;
      }
    }
    // A score that underflowed counts as the smallest normal float (kernels/router.cc's
    // FloorScores): the weights below stay finite when the bias picks only such experts.
    for (int x = 0; x < e; ++x) p[x] = fmaxf(p[x], FLT_MIN);
    // The choice ranks key(x) = p[x] (+ bias[x]); the weights are p of the picks.
    auto key = [&](int x) { return sc.bias != nullptr ? p[x] + sc.bias[x] : p[x]; };
    // Top-k by repeated selection: strictly greater wins, so ties go to the lower index. The picks
    // come in the strict order (p descending, index ascending), so pick j is the best expert after
    // pick j - 1 in that order: no set of picked experts to keep, for any e.
    int32_t* idx = expert_idx + int64_t{t} * k;
    float* w = weights + int64_t{t} * k;
    float picked_sum = 0.0f;
    int prev = -1;
    for (int j = 0; j < k; ++j) {
      int best = -1;
      for (int x = 0; x < e; ++x) {
        if (prev >= 0 && !(key(x) < key(prev) || (key(x) == key(prev) && x > prev))) continue;
        if (best < 0 || key(x) > key(best)) best = x;
      }
      prev = best;
      idx[j] = best;
      w[j] = p[best];
      picked_sum += p[best];
    }
    for (int j = 0; j < k; ++j) w[j] /= picked_sum;
  }
  __syncthreads();
  StoreTile(probs + first, tile, rows, e, pitch);
}

// The same for many experts (e > 64): a warp per token, lane l holding experts l, l + 32, ... in
// registers; max and sum by shuffles; pick j is the warp's best after pick j - 1 in the order
// (p descending, index ascending), the picks' weights added in pick order as above. (e <= 64
// keeps the thread per token, whose sums are the CPU's order.)
constexpr int kPerLane = kMaxExperts / 32;

__global__ void RouterForwardWarpKernel(float* probs, float* lse, int32_t* expert_idx, float* weights,
                                        const float* logits, int n, int e, int k) {
  const int t = (blockIdx.x * blockDim.x + threadIdx.x) / 32, lane = threadIdx.x % 32;
  if (t >= n) return;  // whole warps leave together
  const float* z = logits + int64_t{t} * e;
  float* p = probs + int64_t{t} * e;
  float v[kPerLane];
  float mx = -INFINITY;
#pragma unroll
  for (int r = 0; r < kPerLane; ++r) {
    const int x = lane + 32 * r;
    v[r] = x < e ? z[x] : -INFINITY;
    mx = fmaxf(mx, v[r]);
  }
  for (int o = 16; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
  float sum = 0.0f;
#pragma unroll
  for (int r = 0; r < kPerLane; ++r) {
    v[r] = lane + 32 * r < e ? expf(v[r] - mx) : 0.0f;
    sum += v[r];
  }
  sum = internal::WarpSum(sum);
  const float inv = 1.0f / sum;
#pragma unroll
  for (int r = 0; r < kPerLane; ++r) {
    const int x = lane + 32 * r;
    v[r] = fmaxf(v[r] * inv, FLT_MIN);  // as the kernel above
    if (x < e) p[x] = v[r];
  }
  if (lane == 0) lse[t] = mx + logf(sum);
  float prev_p = 0.0f, picked_sum = 0.0f, my_w = 0.0f;
  int prev = -1, my_idx = 0;  // lane j keeps pick j
  for (int j = 0; j < k; ++j) {
    float best_p = -1.0f;
    int best = -1;
#pragma unroll
    for (int r = 0; r < kPerLane; ++r) {
      const int x = lane + 32 * r;
      if (x >= e) continue;
      if (prev >= 0 && !(v[r] < prev_p || (v[r] == prev_p && x > prev))) continue;
      if (best < 0 || v[r] > best_p) {  // x rises with r: ties keep the lower index
        best_p = v[r];
        best = x;
      }
    }
    for (int o = 16; o > 0; o >>= 1) {
      const float op = __shfl_xor_sync(0xffffffffu, best_p, o);
      const int ob = __shfl_xor_sync(0xffffffffu, best, o);
      if (ob >= 0 && (best < 0 || op > best_p || (op == best_p && ob < best))) {
        best_p = op;
        best = ob;
      }
    }
    prev = best;
    prev_p = best_p;
    picked_sum += best_p;
    if (lane == j) {
      my_idx = best;
      my_w = best_p;
    }
  }
  if (lane < k) {
    expert_idx[int64_t{t} * k + lane] = my_idx;
    weights[int64_t{t} * k + lane] = my_w / picked_sum;
  }
}

// Statistics over a chunk of kStatsRows tokens per block: thread x sums expert x's column (reads
// coalesced across the experts, no shared atomics, so that 512 experts cost what 64 did), the
// entropy terms of the elements it read, and the z terms of one token each; one global atomic per
// expert and block.
constexpr int kStatsRows = 64;

__global__ void RouterStatsKernel(double* prob_sum, double* z_sum, double* entropy_sum,
                                  const float* probs, const float* lse, int n, int e, bool normalize) {
  __shared__ double part[2][kThreads / 32];
  __shared__ double row_sum[kStatsRows];  // normalize: each token's sum of scores
  const int t0 = blockIdx.x * kStatsRows, t1 = min(n, t0 + kStatsRows);
  if (normalize) {
    for (int t = t0 + threadIdx.x; t < t1; t += blockDim.x) {
      double s = 0.0;
      for (int x = 0; x < e; ++x) s += probs[int64_t{t} * e + x];
      row_sum[t - t0] = s;
    }
    __syncthreads();
  }
  double ent = 0.0, z = 0.0;
  for (int x = threadIdx.x; x < e; x += blockDim.x) {
    double col = 0.0;
    for (int t = t0; t < t1; ++t) {
      const float p = probs[int64_t{t} * e + x];
      if (normalize) {
        const double q = p / row_sum[t - t0];
        col += q;
        if (q > 0.0) ent -= q * log(q);
      } else {
        col += p;
        if (p > 0.0f) ent -= double{p} * log(double{p});
      }
    }
    atomicAdd(prob_sum + x, col);
  }
  for (int t = t0 + threadIdx.x; t < t1; t += blockDim.x) z += double{lse[t]} * lse[t];
  ent = internal::WarpSumD(ent);
  z = internal::WarpSumD(z);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) {
    part[0][warp] = ent;
    part[1][warp] = z;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    double e_sum = 0.0, z_total = 0.0;
    for (int w = 0; w < static_cast<int>(blockDim.x / 32); ++w) {
      e_sum += part[0][w];
      z_total += part[1][w];
    }
    atomicAdd(z_sum, z_total);
    atomicAdd(entropy_sum, e_sum);
  }
}

// Tokens as the forward's (a thread each), their scores p and logits' gradient rows staged in
// two shared tiles (RouterTile), the arithmetic the thread's alone as before.
__global__ void RouterBackwardKernel(float* dlogits, const float* dweights, const float* probs,
                                     const float* lse, const int32_t* expert_idx, const float* aux_grad,
                                     float z_scale, int n, int e, int k, Scoring sc, const float* logits,
                                     int pitch) {
  extern __shared__ float tiles[];
  const int row0 = blockIdx.x * blockDim.x, rows = min(static_cast<int>(blockDim.x), n - row0);
  const int64_t first = int64_t{row0} * e;
  float* p_tile = tiles;
  float* dz_tile = tiles + blockDim.x * pitch;
  LoadTile(p_tile, probs + first, rows, e, pitch);
  LoadTile(dz_tile, dlogits + first, rows, e, pitch);
  __syncthreads();
  const int t = row0 + threadIdx.x;
  if (t < n) {
    // dp[x] = aux_grad[x] + the top-k term of each pick j with idx[j] == x (added in j order),
    // formed where it is used rather than stored: e may be 512.
    const float* p = p_tile + threadIdx.x * pitch;
    const int32_t* idx = expert_idx + int64_t{t} * k;
    int32_t pick[kMaxTopK];
    float dpick[kMaxTopK];
    int picks = 0;
    if (dweights != nullptr) {
      const float* dw = dweights + int64_t{t} * k;
      float s = 0.0f;
      for (int j = 0; j < k; ++j) s += p[idx[j]];
      float dw_dot_w = 0.0f;
      for (int j = 0; j < k; ++j) dw_dot_w += dw[j] * (p[idx[j]] / s);
      for (int j = 0; j < k; ++j) {
        pick[j] = idx[j];
        dpick[j] = (dw[j] - dw_dot_w) / s;
      }
      picks = k;
    }
    // Sigmoid: the aux loss reads the normalised scores q = p / s, s = sum p:
    // d(sum_e a_e q_e)/dp_x = (a_x - sum_e a_e q_e) / s.
    float s_sum = 1.0f, a_dot_q = 0.0f;
    const bool normalised_aux = sc.sigmoid && aux_grad != nullptr;
    if (normalised_aux) {
      s_sum = 0.0f;
      for (int x = 0; x < e; ++x) s_sum += p[x];
      for (int x = 0; x < e; ++x) a_dot_q += aux_grad[x] * (p[x] / s_sum);
    }
    auto dp = [&](int x) {
      float v = aux_grad == nullptr ? 0.0f : normalised_aux ? (aux_grad[x] - a_dot_q) / s_sum : aux_grad[x];
      for (int j = 0; j < picks; ++j) {
        if (pick[j] == x) v += dpick[j];
      }
      return v;
    };
    const float zc = 2.0f * z_scale * lse[t];
    float* dz = dz_tile + threadIdx.x * pitch;
    if (sc.plain) {
      float p_dot_dp = 0.0f;
      for (int x = 0; x < e; ++x) p_dot_dp += p[x] * dp(x);
      for (int x = 0; x < e; ++x) dz[x] += p[x] * (dp(x) - p_dot_dp + zc);
    } else {
      // Scores of logits / tau; the z term through softmax of the raw logits.
      if (sc.sigmoid) {
        for (int x = 0; x < e; ++x) dz[x] += dp(x) * p[x] * (1.0f - p[x]) * sc.inv_tau;
      } else {
        float p_dot_dp = 0.0f;
        for (int x = 0; x < e; ++x) p_dot_dp += p[x] * dp(x);
        for (int x = 0; x < e; ++x) dz[x] += p[x] * (dp(x) - p_dot_dp) * sc.inv_tau;
      }
      if (z_scale != 0.0f) {
        const float* z = logits + int64_t{t} * e;
        for (int x = 0; x < e; ++x) dz[x] += zc * expf(z[x] - lse[t]);
      }
    }
  }
  __syncthreads();
  StoreTile(dlogits + first, dz_tile, rows, e, pitch);
}

__global__ void RouterCountStatsKernel(double* stats, const int32_t* routed, const int32_t* counts, int e,
                                       const uint8_t* expert_off) {
  if (threadIdx.x != 0 || blockIdx.x != 0) return;
  double dropped = 0.0, expert_dropped = 0.0;
  for (int x = 0; x < e; ++x) {
    stats[x] = routed[x];
    if (expert_off != nullptr && expert_off[x] != 0) {
      expert_dropped += routed[x];
    } else {
      dropped += routed[x] - counts[x];
    }
  }
  stats[2 * e + 2] = dropped;
  stats[2 * e + 3] = expert_dropped;
}

__global__ void RouterAuxGradKernel(float* aux_grad, const double* stats, int e, double n_global, int k,
                                    double coef_e, float loss_scale) {
  const int x = threadIdx.x;
  if (x < e) aux_grad[x] = static_cast<float>(coef_e * (stats[x] / (n_global * k)) * loss_scale);
}

}  // namespace

void RouterForward(float* probs, float* lse, int32_t* expert_idx, float* weights, const float* logits,
                   int n, int e, int k, cudaStream_t stream) {
  RouterForward(probs, lse, expert_idx, weights, logits, n, e, k, kernels::RouterScoring{}, stream);
}

void RouterForward(float* probs, float* lse, int32_t* expert_idx, float* weights, const float* logits,
                   int n, int e, int k, const kernels::RouterScoring& scoring, cudaStream_t stream) {
  CheckExperts(e);
  CheckTopK(k);
  if (n <= 0) return;
  // The warp per token runs the base scoring; the expert options take the thread per token at
  // any e (the picks' order trick holds for any e).
  if (e > 64 && scoring.plain() && scoring.bias == nullptr) {
    RouterForwardWarpKernel<<<BlocksFor(int64_t{n} * 32, 256), 256, 0, stream>>>(probs, lse, expert_idx, weights,
                                                                                 logits, n, e, k);
  } else {
    const RouterTile tile = RouterTileFor(e, 1);
    AllowSharedBytes(RouterForwardKernel, tile.Bytes());
    RouterForwardKernel<<<BlocksFor(n, tile.rows), tile.rows, tile.Bytes(), stream>>>(
        probs, lse, expert_idx, weights, logits, n, e, k, ScoringOf(scoring), tile.pitch);
  }
  MOE_CUDA_LAUNCH_CHECK();
}

void RouterStats(double* prob_sum, double* z_sum, double* entropy_sum, const float* probs,
                 const float* lse, int n, int e, cudaStream_t stream) {
  RouterStats(prob_sum, z_sum, entropy_sum, probs, lse, n, e, /*normalize=*/false, stream);
}

void RouterStats(double* prob_sum, double* z_sum, double* entropy_sum, const float* probs,
                 const float* lse, int n, int e, bool normalize, cudaStream_t stream) {
  CheckExperts(e);
  if (n <= 0) return;
  RouterStatsKernel<<<BlocksFor(n, kStatsRows), kThreads, 0, stream>>>(prob_sum, z_sum, entropy_sum, probs,
                                                                      lse, n, e, normalize);
  MOE_CUDA_LAUNCH_CHECK();
}

void RouterBackward(float* dlogits, const float* dweights, const float* probs, const float* lse,
                    const int32_t* expert_idx, const float* aux_grad, float z_scale, int n, int e, int k,
                    cudaStream_t stream) {
  RouterBackward(dlogits, dweights, probs, lse, expert_idx, aux_grad, z_scale, n, e, k, kernels::RouterScoring{},
                 nullptr, stream);
}

void RouterBackward(float* dlogits, const float* dweights, const float* probs, const float* lse,
                    const int32_t* expert_idx, const float* aux_grad, float z_scale, int n, int e, int k,
                    const kernels::RouterScoring& scoring, const float* logits, cudaStream_t stream) {
  CheckExperts(e);
  CheckTopK(k);
  if (n <= 0) return;
  const RouterTile tile = RouterTileFor(e, 2);
  AllowSharedBytes(RouterBackwardKernel, 2 * tile.Bytes());
  RouterBackwardKernel<<<BlocksFor(n, tile.rows), tile.rows, 2 * tile.Bytes(), stream>>>(
      dlogits, dweights, probs, lse, expert_idx, aux_grad, z_scale, n, e, k, ScoringOf(scoring), logits, tile.pitch);
  MOE_CUDA_LAUNCH_CHECK();
}

void RouterCountStats(double* stats, const int32_t* routed, const int32_t* counts, int e, cudaStream_t stream) {
  RouterCountStats(stats, routed, counts, e, /*expert_off=*/nullptr, stream);
}

void RouterCountStats(double* stats, const int32_t* routed, const int32_t* counts, int e, const uint8_t* expert_off,
                      cudaStream_t stream) {
  CheckExperts(e);
  RouterCountStatsKernel<<<1, 32, 0, stream>>>(stats, routed, counts, e, expert_off);
  MOE_CUDA_LAUNCH_CHECK();
}

void RouterAuxGrad(float* aux_grad, const double* stats, int e, double n_global, int k, double coef_e,
                   float loss_scale, cudaStream_t stream) {
  CheckExperts(e);
  RouterAuxGradKernel<<<1, kMaxExperts, 0, stream>>>(aux_grad, stats, e, n_global, k, coef_e, loss_scale);
  MOE_CUDA_LAUNCH_CHECK();
}

}  // namespace moe::cuda
