#include "kernels/cuda/router.h"

#include <cstdint>

#include "kernels/cuda/device.cuh"
#include "kernels/cuda/moe_internal.h"

namespace moe::cuda {
namespace {

using internal::CheckExperts;
using internal::kMaxExperts;
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

__global__ void RouterForwardKernel(float* probs, float* lse, int32_t* expert_idx, float* weights,
                                    const float* logits, int n, int e, int k, Scoring sc) {
  const int t = blockIdx.x * blockDim.x + threadIdx.x;
  if (t >= n) return;
  const float* z = logits + int64_t{t} * e;
  float* p = probs + int64_t{t} * e;
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
  // Top-k of p (+ bias) by repeated selection: strictly greater wins, so ties go to the lower
  // index.
  int32_t* idx = expert_idx + int64_t{t} * k;
  float* w = weights + int64_t{t} * k;
  uint64_t picked = 0;
  float picked_sum = 0.0f;
  for (int j = 0; j < k; ++j) {
    int best = -1;
    for (int x = 0; x < e; ++x) {
      if ((picked >> x) & 1ull) continue;
      if (best < 0) {
        best = x;
        continue;
      }
      const float kx = sc.bias != nullptr ? p[x] + sc.bias[x] : p[x];
      const float kb = sc.bias != nullptr ? p[best] + sc.bias[best] : p[best];
      if (kx > kb) best = x;
    }
    picked |= 1ull << best;
    idx[j] = best;
    w[j] = p[best];
    picked_sum += p[best];
  }
  for (int j = 0; j < k; ++j) w[j] /= picked_sum;
}

__global__ void RouterStatsKernel(double* prob_sum, double* z_sum, double* entropy_sum,
                                  const float* probs, const float* lse, int n, int e, bool normalize) {
  __shared__ double acc[kMaxExperts + 2];
  for (int x = threadIdx.x; x < e + 2; x += blockDim.x) acc[x] = 0.0;
  __syncthreads();
  const int t = blockIdx.x * blockDim.x + threadIdx.x;
  if (t < n) {
    const float* p = probs + int64_t{t} * e;
    double ent = 0.0;
    if (normalize) {
      double s = 0.0;
      for (int x = 0; x < e; ++x) s += p[x];
      for (int x = 0; x < e; ++x) {
        const double q = p[x] / s;
        atomicAdd(acc + x, q);
        if (q > 0.0) ent -= q * log(q);
      }
    } else {
      for (int x = 0; x < e; ++x) {
        atomicAdd(acc + x, double{p[x]});
        if (p[x] > 0.0f) ent -= double{p[x]} * log(double{p[x]});
      }
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
                                     float z_scale, int n, int e, int k, Scoring sc, const float* logits) {
  const int t = blockIdx.x * blockDim.x + threadIdx.x;
  if (t >= n) return;
  float dp[kMaxExperts];
  const float* p = probs + int64_t{t} * e;
  const int32_t* idx = expert_idx + int64_t{t} * k;
  if (sc.sigmoid && aux_grad != nullptr) {
    // The aux loss reads the normalised scores q = p / sum p.
    float s = 0.0f, a_dot_q = 0.0f;
    for (int x = 0; x < e; ++x) s += p[x];
    for (int x = 0; x < e; ++x) a_dot_q += aux_grad[x] * (p[x] / s);
    for (int x = 0; x < e; ++x) dp[x] = (aux_grad[x] - a_dot_q) / s;
  } else {
    for (int x = 0; x < e; ++x) dp[x] = aux_grad != nullptr ? aux_grad[x] : 0.0f;
  }
  if (dweights != nullptr) {
    const float* dw = dweights + int64_t{t} * k;
    float s = 0.0f;
    for (int j = 0; j < k; ++j) s += p[idx[j]];
    float dw_dot_w = 0.0f;
    for (int j = 0; j < k; ++j) dw_dot_w += dw[j] * (p[idx[j]] / s);
    for (int j = 0; j < k; ++j) dp[idx[j]] += (dw[j] - dw_dot_w) / s;
  }
  const float zc = 2.0f * z_scale * lse[t];
  float* dz = dlogits + int64_t{t} * e;
  if (sc.plain) {
    float p_dot_dp = 0.0f;
    for (int x = 0; x < e; ++x) p_dot_dp += p[x] * dp[x];
    for (int x = 0; x < e; ++x) dz[x] += p[x] * (dp[x] - p_dot_dp + zc);
    return;
  }
  if (sc.sigmoid) {
    for (int x = 0; x < e; ++x) dz[x] += dp[x] * p[x] * (1.0f - p[x]) * sc.inv_tau;
  } else {
    float p_dot_dp = 0.0f;
    for (int x = 0; x < e; ++x) p_dot_dp += p[x] * dp[x];
    for (int x = 0; x < e; ++x) dz[x] += p[x] * (dp[x] - p_dot_dp) * sc.inv_tau;
  }
  if (z_scale != 0.0f) {
    const float* z = logits + int64_t{t} * e;
    for (int x = 0; x < e; ++x) dz[x] += zc * expf(z[x] - lse[t]);
  }
}

__global__ void RouterCountStatsKernel(double* stats, const int32_t* routed, const int32_t* counts, int e,
                                       uint64_t expert_off) {
  if (threadIdx.x != 0 || blockIdx.x != 0) return;
  double dropped = 0.0, expert_dropped = 0.0;
  for (int x = 0; x < e; ++x) {
    stats[x] = routed[x];
    if ((expert_off >> x) & 1ull) {
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
  if (n <= 0) return;
  RouterForwardKernel<<<BlocksFor(n, 128), 128, 0, stream>>>(probs, lse, expert_idx, weights, logits, n, e, k,
                                                             ScoringOf(scoring));
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
  RouterStatsKernel<<<BlocksFor(n, kThreads), kThreads, 0, stream>>>(prob_sum, z_sum, entropy_sum, probs,
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
  if (n <= 0) return;
  RouterBackwardKernel<<<BlocksFor(n, 128), 128, 0, stream>>>(dlogits, dweights, probs, lse, expert_idx,
                                                              aux_grad, z_scale, n, e, k, ScoringOf(scoring),
                                                              logits);
  MOE_CUDA_LAUNCH_CHECK();
}

void RouterCountStats(double* stats, const int32_t* routed, const int32_t* counts, int e, cudaStream_t stream) {
  RouterCountStats(stats, routed, counts, e, /*expert_off=*/0, stream);
}

void RouterCountStats(double* stats, const int32_t* routed, const int32_t* counts, int e, uint64_t expert_off,
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
