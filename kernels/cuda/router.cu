#include "kernels/cuda/router.h"

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
      if (prev >= 0 && !(p[x] < p[prev] || (p[x] == p[prev] && x > prev))) continue;
      if (best < 0 || p[x] > p[best]) best = x;
    }
    prev = best;
    idx[j] = best;
    w[j] = p[best];
    picked_sum += p[best];
  }
  for (int j = 0; j < k; ++j) w[j] /= picked_sum;
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
    v[r] *= inv;
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
                                  const float* probs, const float* lse, int n, int e) {
  __shared__ double part[2][kThreads / 32];
  const int t0 = blockIdx.x * kStatsRows, t1 = min(n, t0 + kStatsRows);
  double ent = 0.0, z = 0.0;
  for (int x = threadIdx.x; x < e; x += blockDim.x) {
    double col = 0.0;
    for (int t = t0; t < t1; ++t) {
      const float p = probs[int64_t{t} * e + x];
      col += p;
      if (p > 0.0f) ent -= double{p} * log(double{p});
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

__global__ void RouterBackwardKernel(float* dlogits, const float* dweights, const float* probs,
                                     const float* lse, const int32_t* expert_idx, const float* aux_grad,
                                     float z_scale, int n, int e, int k) {
  const int t = blockIdx.x * blockDim.x + threadIdx.x;
  if (t >= n) return;
  // dp[x] = aux_grad[x] + the top-k term of each pick j with idx[j] == x (added in j order),
  // formed where it is used rather than stored: e may be 512.
  const float* p = probs + int64_t{t} * e;
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
  auto dp = [&](int x) {
    float v = aux_grad != nullptr ? aux_grad[x] : 0.0f;
    for (int j = 0; j < picks; ++j) {
      if (pick[j] == x) v += dpick[j];
    }
    return v;
  };
  float p_dot_dp = 0.0f;
  for (int x = 0; x < e; ++x) p_dot_dp += p[x] * dp(x);
  const float zc = 2.0f * z_scale * lse[t];
  float* dz = dlogits + int64_t{t} * e;
  for (int x = 0; x < e; ++x) dz[x] += p[x] * (dp(x) - p_dot_dp + zc);
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

}  // namespace

void RouterForward(float* probs, float* lse, int32_t* expert_idx, float* weights, const float* logits,
                   int n, int e, int k, cudaStream_t stream) {
  CheckExperts(e);
  CheckTopK(k);
  if (n <= 0) return;
  if (e > 64) {
    RouterForwardWarpKernel<<<BlocksFor(int64_t{n} * 32, 256), 256, 0, stream>>>(probs, lse, expert_idx, weights,
                                                                                 logits, n, e, k);
  } else {
    RouterForwardKernel<<<BlocksFor(n, 128), 128, 0, stream>>>(probs, lse, expert_idx, weights, logits, n, e, k);
  }
  MOE_CUDA_LAUNCH_CHECK();
}

void RouterStats(double* prob_sum, double* z_sum, double* entropy_sum, const float* probs,
                 const float* lse, int n, int e, cudaStream_t stream) {
  CheckExperts(e);
  if (n <= 0) return;
  RouterStatsKernel<<<BlocksFor(n, kStatsRows), kThreads, 0, stream>>>(prob_sum, z_sum, entropy_sum, probs,
                                                                      lse, n, e);
  MOE_CUDA_LAUNCH_CHECK();
}

void RouterBackward(float* dlogits, const float* dweights, const float* probs, const float* lse,
                    const int32_t* expert_idx, const float* aux_grad, float z_scale, int n, int e, int k,
                    cudaStream_t stream) {
  CheckExperts(e);
  CheckTopK(k);
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

}  // namespace moe::cuda
