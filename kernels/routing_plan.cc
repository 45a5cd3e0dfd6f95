#include "kernels/routing_plan.h"

#include <cmath>
#include <cstdio>
#include <cstdlib>

namespace moe::kernels {

RoutingPlan BuildRoutingPlan(const int32_t* expert_idx, int n, int k, int e,
                             int64_t capacity, const uint8_t* expert_off) {
  RoutingPlan plan;
  plan.n = n;
  plan.k = k;
  plan.e = e;
  plan.capacity = capacity;
  plan.counts.assign(e, 0);
  plan.routed.assign(e, 0);
  plan.offsets.assign(e + 1, 0);
  plan.assignment_to_slot.assign(int64_t{n} * k, -1);

  // First pass, in assignment order (t, then j): keep or drop, and the rank within the expert.
  for (int64_t a = 0; a < int64_t{n} * k; ++a) {
    const int32_t x = expert_idx[a];
    if (x < 0 || x >= e) {
      std::fprintf(stderr, "BuildRoutingPlan: assignment %lld has expert %d, not in [0, %d)\n",
                   static_cast<long long>(a), x, e);
      std::abort();
    }
    ++plan.routed[x];
    if (expert_off != nullptr && expert_off[x] != 0) {
      ++plan.expert_dropped;
      continue;
    }
    if (plan.capacity > 0 && plan.counts[x] >= plan.capacity) {
      ++plan.dropped;
      continue;
    }
    plan.assignment_to_slot[a] = plan.counts[x]++;
  }
  for (int x = 0; x < e; ++x) plan.offsets[x + 1] = plan.offsets[x] + plan.counts[x];

  // Second pass: rank within expert -> global slot (experts in order, tokens in order within).
  plan.slot_to_assignment.assign(plan.kept(), -1);
  for (int64_t a = 0; a < int64_t{n} * k; ++a) {
    int32_t& slot = plan.assignment_to_slot[a];
    if (slot < 0) continue;
    slot += plan.offsets[expert_idx[a]];
    plan.slot_to_assignment[slot] = static_cast<int32_t>(a);
  }
  return plan;
}

void PermuteForward(float* xs, const float* x, const RoutingPlan& plan, int d) {
  const int kept = plan.kept();
#pragma omp parallel for schedule(static)
  for (int s = 0; s < kept; ++s) {
    const int64_t tok = plan.slot_to_assignment[s] / plan.k;
    const float* src = x + tok * d;
    float* dst = xs + int64_t{s} * d;
#pragma omp simd
    for (int c = 0; c < d; ++c) dst[c] = src[c];
  }
}

void PermuteBackward(float* dx, const float* dxs, const RoutingPlan& plan, int d) {
  // Per token (not per slot): a token's k slots add into one row, so this avoids races.
#pragma omp parallel for schedule(static)
  for (int t = 0; t < plan.n; ++t) {
    float* dst = dx + int64_t{t} * d;
    for (int j = 0; j < plan.k; ++j) {
      const int32_t s = plan.assignment_to_slot[int64_t{t} * plan.k + j];
      if (s < 0) continue;
      const float* src = dxs + int64_t{s} * d;
#pragma omp simd
      for (int c = 0; c < d; ++c) dst[c] += src[c];
    }
  }
}

void UnpermuteForward(float* out, const float* ys, const float* weights, const RoutingPlan& plan,
                      int d) {
#pragma omp parallel for schedule(static)
  for (int t = 0; t < plan.n; ++t) {
    float* dst = out + int64_t{t} * d;
    for (int c = 0; c < d; ++c) dst[c] = 0.0f;
    for (int j = 0; j < plan.k; ++j) {
      const int64_t a = int64_t{t} * plan.k + j;
      const int32_t s = plan.assignment_to_slot[a];
      if (s < 0) continue;
      const float w = weights[a];
      const float* src = ys + int64_t{s} * d;
#pragma omp simd
      for (int c = 0; c < d; ++c) dst[c] += w * src[c];
    }
  }
}

void UnpermuteBackward(float* dys, float* dweights, const float* dout, const float* ys,
                       const float* weights, const RoutingPlan& plan, int d) {
#pragma omp parallel for schedule(static)
  for (int t = 0; t < plan.n; ++t) {
    const float* g = dout + int64_t{t} * d;
    for (int j = 0; j < plan.k; ++j) {
      const int64_t a = int64_t{t} * plan.k + j;
      const int32_t s = plan.assignment_to_slot[a];
      if (s < 0) continue;  // dropped: contributes nothing, so no gradient
      if (dys != nullptr) {
        const float w = weights[a];
        float* dst = dys + int64_t{s} * d;
#pragma omp simd
        for (int c = 0; c < d; ++c) dst[c] += w * g[c];
      }
      if (dweights != nullptr) {
        const float* y = ys + int64_t{s} * d;
        float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
        for (int c = 0; c < d; ++c) dot += g[c] * y[c];
        dweights[a] += dot;
      }
    }
  }
}

}  // namespace moe::kernels
