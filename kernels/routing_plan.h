// Routing bookkeeping shared by every backend: which assignment (token t, choice j) goes to
// which slot of the expert-grouped buffer, and which are dropped by the capacity rule of
// MODEL.md (capacity kept assignments per expert, first come by token order; 0: dropless). The
// capacity itself comes from ExpertCapacity (common/expert_capacity.h). Expert dropout
// (model.moe.expert_dropout) switches whole experts off: their assignments are dropped before
// the capacity rule, take no capacity, and are counted apart.
#pragma once

#include <cstdint>
#include <vector>

namespace moe::kernels {

struct RoutingPlan {
  int n = 0, k = 0, e = 0;
  int64_t capacity = 0;                 // per expert; 0 = unlimited
  std::vector<int32_t> counts;          // (e) kept assignments per expert
  std::vector<int32_t> offsets;         // (e + 1) exclusive prefix sum of counts
  std::vector<int32_t> slot_to_assignment;  // (kept) slot -> t * k + j, grouped by expert, token order
  std::vector<int32_t> assignment_to_slot;  // (n * k) -> slot, or -1 when dropped
  std::vector<int64_t> routed;          // (e) assignments before drops (expert dropout's too)
  int64_t dropped = 0;                  // by the capacity rule
  int64_t expert_dropped = 0;           // sent to a switched-off expert
  int kept() const { return offsets.empty() ? 0 : offsets.back(); }
};

// expert_off (e): nonzero for an expert switched off by expert dropout; null = none.
RoutingPlan BuildRoutingPlan(const int32_t* expert_idx, int n, int k, int e, int64_t capacity,
                             const uint8_t* expert_off = nullptr);

// xs (kept, d): xs[slot] = x[token of slot] ; x (n, d).
void PermuteForward(float* xs, const float* x, const RoutingPlan& plan, int d);
// dx (n, d) += scatter of dxs (kept, d).
void PermuteBackward(float* dx, const float* dxs, const RoutingPlan& plan, int d);
// out (n, d) = sum over kept j of weights[t, j] * ys[slot(t, j)] (overwrites out; a token whose
// assignments were all dropped gets zeros).
void UnpermuteForward(float* out, const float* ys, const float* weights, const RoutingPlan& plan,
                      int d);
// dys (kept, d) += weights * dout[token] ; dweights (n, k) += dot(dout[t], ys[slot]).
void UnpermuteBackward(float* dys, float* dweights, const float* dout, const float* ys,
                       const float* weights, const RoutingPlan& plan, int d);

}  // namespace moe::kernels
