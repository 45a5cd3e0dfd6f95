#include "kernels/router.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

namespace moe::kernels {
namespace {

// A score below the smallest normal float counts as that value: a score that underflows to 0
// (a sigmoid of a logit far below 0, a softmax far below its maximum, more so at a small
// temperature) would make the renormalised weights p_pick / sum(p_pick) 0 / 0 when the bias picks
// only such experts, and P_e's normalisation of sigmoid scores 0 / 0 when all of a token's do.
// Scores that do not underflow are unchanged, bit for bit.
void FloorScores(float* p, int e) {
  for (int x = 0; x < e; ++x) p[x] = std::max(p[x], std::numeric_limits<float>::min());
}

// Scores p (e) and lse of the raw logits z (e) of one token.
void ScoreToken(float* p, float* lse, const float* z, int e, const RouterScoring& s) {
  float mx = z[0];
  for (int x = 1; x < e; ++x) mx = std::max(mx, z[x]);
  if (s.plain()) {
    float sum = 0.0f;
    for (int x = 0; x < e; ++x) {
      p[x] = std::exp(z[x] - mx);
      sum += p[x];
    }
    const float inv = 1.0f / sum;
    for (int x = 0; x < e; ++x) p[x] *= inv;
    FloorScores(p, e);
    *lse = mx + std::log(sum);
    return;
  }
  float raw_sum = 0.0f;
  for (int x = 0; x < e; ++x) raw_sum += std::exp(z[x] - mx);
  *lse = mx + std::log(raw_sum);
  const float inv_tau = 1.0f / s.temperature;
  if (s.sigmoid) {
    for (int x = 0; x < e; ++x) p[x] = 1.0f / (1.0f + std::exp(-z[x] * inv_tau));
    FloorScores(p, e);
    return;
  }
  // softmax(z / tau): the maximum of z / tau is mx / tau (tau > 0).
  const float smx = mx * inv_tau;
  float sum = 0.0f;
  for (int x = 0; x < e; ++x) {
    p[x] = std::exp(z[x] * inv_tau - smx);
    sum += p[x];
  }
  const float inv = 1.0f / sum;
  for (int x = 0; x < e; ++x) p[x] *= inv;
  FloorScores(p, e);
}

}  // namespace

void RouterForward(float* probs, float* lse, int32_t* expert_idx, float* weights,
                   const float* logits, int n, int e, int k) {
  RouterForward(probs, lse, expert_idx, weights, logits, n, e, k, RouterScoring{});
}

void RouterForward(float* probs, float* lse, int32_t* expert_idx, float* weights,
                   const float* logits, int n, int e, int k, const RouterScoring& scoring) {
  const float* bias = scoring.bias;
#pragma omp parallel for schedule(static)
  for (int t = 0; t < n; ++t) {
    const float* z = logits + int64_t{t} * e;
    float* p = probs + int64_t{t} * e;
    ScoreToken(p, lse + t, z, e, scoring);

    // Top-k of p (+ bias) by repeated selection (k and e are small): strictly greater wins, so a
    // tie goes to the lower expert index; picked experts are excluded by index.
    auto key = [&](int x) { return bias != nullptr ? p[x] + bias[x] : p[x]; };
    int32_t* idx = expert_idx + int64_t{t} * k;
    float* w = weights + int64_t{t} * k;
    float picked_sum = 0.0f;
    for (int j = 0; j < k; ++j) {
      int best = -1;
      for (int x = 0; x < e; ++x) {
        if (std::find(idx, idx + j, x) != idx + j) continue;
        if (best < 0 || key(x) > key(best)) best = x;
      }
      idx[j] = best;
      w[j] = p[best];
      picked_sum += p[best];
    }
    for (int j = 0; j < k; ++j) w[j] /= picked_sum;
  }
}

void RouterStats(double* prob_sum, double* z_sum, double* entropy_sum, const float* probs,
                 const float* lse, int n, int e) {
  RouterStats(prob_sum, z_sum, entropy_sum, probs, lse, n, e, /*normalize=*/false);
}

void RouterStats(double* prob_sum, double* z_sum, double* entropy_sum, const float* probs,
                 const float* lse, int n, int e, bool normalize) {
  // Sequential over tokens: a fixed summation order, and n * e is small next to the GEMMs.
  double z = 0.0, ent = 0.0;
  for (int t = 0; t < n; ++t) {
    const float* p = probs + int64_t{t} * e;
    if (normalize) {
      double s = 0.0;
      for (int x = 0; x < e; ++x) s += p[x];
      for (int x = 0; x < e; ++x) {
        const double q = p[x] / s;
        prob_sum[x] += q;
        if (q > 0.0) ent -= q * std::log(q);
      }
    } else {
      for (int x = 0; x < e; ++x) {
        prob_sum[x] += p[x];
        if (p[x] > 0.0f) ent -= double{p[x]} * std::log(double{p[x]});
      }
    }
    z += double{lse[t]} * lse[t];
  }
  *z_sum += z;
  *entropy_sum += ent;
}

void RouterBackward(float* dlogits, const float* dweights, const float* probs, const float* lse,
                    const int32_t* expert_idx, const float* aux_grad, float z_scale, int n, int e,
                    int k) {
  RouterBackward(dlogits, dweights, probs, lse, expert_idx, aux_grad, z_scale, n, e, k, RouterScoring{},
                 nullptr);
}

void RouterBackward(float* dlogits, const float* dweights, const float* probs, const float* lse,
                    const int32_t* expert_idx, const float* aux_grad, float z_scale, int n, int e,
                    int k, const RouterScoring& scoring, const float* logits) {
  const bool plain = scoring.plain();
  const float inv_tau = 1.0f / scoring.temperature;
#pragma omp parallel
  {
    std::vector<float> dp(e);  // dloss / dprobs of one token
#pragma omp for schedule(static)
    for (int t = 0; t < n; ++t) {
      const float* p = probs + int64_t{t} * e;
      const int32_t* idx = expert_idx + int64_t{t} * k;
      if (scoring.sigmoid && aux_grad != nullptr) {
        // q = p / s, s = sum p: d(sum_e a_e q_e)/dp_x = (a_x - sum_e a_e q_e) / s.
        float s = 0.0f, a_dot_q = 0.0f;
        for (int x = 0; x < e; ++x) s += p[x];
        for (int x = 0; x < e; ++x) a_dot_q += aux_grad[x] * (p[x] / s);
        for (int x = 0; x < e; ++x) dp[x] = (aux_grad[x] - a_dot_q) / s;
      } else {
        for (int x = 0; x < e; ++x) dp[x] = aux_grad != nullptr ? aux_grad[x] : 0.0f;
      }
      if (dweights != nullptr) {
        // w_j = p_j / S, S = sum of picked p: dp_j += (dw_j - sum_m dw_m w_m) / S.
        // With k = 1, w = p / p = 1 exactly and this is exactly 0.
        const float* dw = dweights + int64_t{t} * k;
        float s = 0.0f;
        for (int j = 0; j < k; ++j) s += p[idx[j]];
        float dw_dot_w = 0.0f;
        for (int j = 0; j < k; ++j) dw_dot_w += dw[j] * (p[idx[j]] / s);
        for (int j = 0; j < k; ++j) dp[idx[j]] += (dw[j] - dw_dot_w) / s;
      }
      float* dz = dlogits + int64_t{t} * e;
      const float zc = 2.0f * z_scale * lse[t];
      if (plain) {
        // Softmax backward, plus the z term: d(z_scale * lse^2)/dlogits = 2 z_scale lse p.
        float p_dot_dp = 0.0f;
        for (int x = 0; x < e; ++x) p_dot_dp += p[x] * dp[x];
        for (int x = 0; x < e; ++x) dz[x] += p[x] * (dp[x] - p_dot_dp + zc);
        continue;
      }
      // Scores of logits / tau; the z term through softmax of the raw logits.
      if (scoring.sigmoid) {
        for (int x = 0; x < e; ++x) dz[x] += dp[x] * p[x] * (1.0f - p[x]) * inv_tau;
      } else {
        float p_dot_dp = 0.0f;
        for (int x = 0; x < e; ++x) p_dot_dp += p[x] * dp[x];
        for (int x = 0; x < e; ++x) dz[x] += p[x] * (dp[x] - p_dot_dp) * inv_tau;
      }
      if (z_scale != 0.0f) {
        const float* z = logits + int64_t{t} * e;
        for (int x = 0; x < e; ++x) dz[x] += zc * std::exp(z[x] - lse[t]);
      }
    }
  }
}

}  // namespace moe::kernels
