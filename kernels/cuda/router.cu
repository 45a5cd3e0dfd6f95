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
  RouterForwardKernel<<<BlocksFor(n, 128), 128, 0, stream>>>(probs, lse, expert_idx, weights, logits, n, e, k);
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
