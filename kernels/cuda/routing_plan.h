// The routing plan on the GPU, twin of kernels/routing_plan.h: a stable counting sort of the
// assignments by expert, with capacity drops (first come by token order).
#pragma once

#include <cstdint>

#include "kernels/cuda/common.h"

namespace moe::cuda {

// The routing plan of kernels::BuildRoutingPlan on the device: counts (e) kept per expert,
// routed (e) before drops, offsets (e + 1), assignment_to_slot (n k) (-1 when dropped),
// slot_to_assignment (n k; the first offsets[e] entries are valid). capacity 0 = unlimited.
void BuildRoutingPlan(int32_t* counts, int32_t* routed, int32_t* offsets, int32_t* assignment_to_slot,
                      int32_t* slot_to_assignment, const int32_t* expert_idx, int n, int k, int e,
                      int64_t capacity, cudaStream_t stream);
// With expert dropout: expert_off (e) device bytes, nonzero for an expert switched off (its
// assignments dropped before the capacity rule, counts[x] = 0, routed[x] still counts them), as
// kernels::BuildRoutingPlan; null = none.
void BuildRoutingPlan(int32_t* counts, int32_t* routed, int32_t* offsets, int32_t* assignment_to_slot,
                      int32_t* slot_to_assignment, const int32_t* expert_idx, int n, int k, int e,
                      int64_t capacity, const uint8_t* expert_off, cudaStream_t stream);

}  // namespace moe::cuda
