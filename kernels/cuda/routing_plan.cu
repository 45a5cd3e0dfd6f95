#include "kernels/cuda/routing_plan.h"

#include <algorithm>
#include <cstdint>

#include "kernels/cuda/device.cuh"
#include "kernels/cuda/moe_internal.h"

namespace moe::cuda {
namespace {

using internal::CheckExperts;
using internal::kMaxExperts;
using internal::kThreads;

// One block of 1024 threads per expert: the rank of each of its assignments among the
// assignments to it, in assignment order (t, then j), by a block-wide prefix sum per chunk.
__global__ void __launch_bounds__(1024) PlanRankKernel(int32_t* assignment_to_slot, int32_t* counts,
                                                       int32_t* routed, const int32_t* expert_idx,
                                                       int nk, int64_t capacity, const uint8_t* expert_off) {
  __shared__ int warp_total[32];
  const int x = blockIdx.x, lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const bool off = expert_off != nullptr && expert_off[x] != 0;
  int base = 0;
  for (int a0 = 0; a0 < nk; a0 += 1024) {
    const int a = a0 + threadIdx.x;
    const int flag = (a < nk && expert_idx[a] == x) ? 1 : 0;
    int v = flag;  // inclusive scan within the warp
    for (int o = 1; o < 32; o <<= 1) {
      const int y = __shfl_up_sync(0xffffffffu, v, o);
      if (lane >= o) v += y;
    }
    if (lane == 31) warp_total[warp] = v;
    __syncthreads();
    if (warp == 0) {
      int w = warp_total[lane];
      for (int o = 1; o < 32; o <<= 1) {
        const int y = __shfl_up_sync(0xffffffffu, w, o);
        if (lane >= o) w += y;
      }
      warp_total[lane] = w;  // inclusive over warps
    }
    __syncthreads();
    if (flag) {
      const int rank = base + v - 1 + (warp > 0 ? warp_total[warp - 1] : 0);
      assignment_to_slot[a] = (off || (capacity > 0 && rank >= capacity)) ? -1 : rank;
    }
    base += warp_total[31];
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    routed[x] = base;
    counts[x] = off ? 0 : capacity > 0 ? static_cast<int>(min(static_cast<int64_t>(base), capacity)) : base;
  }
}

// Rank within expert -> global slot; offsets from the counts (every block recomputes them).
__global__ void PlanSlotKernel(int32_t* assignment_to_slot, int32_t* slot_to_assignment, int32_t* offsets,
                               const int32_t* counts, const int32_t* expert_idx, int nk, int e) {
  __shared__ int off[kMaxExperts + 1];
  if (threadIdx.x == 0) {
    off[0] = 0;
    for (int x = 0; x < e; ++x) off[x + 1] = off[x] + counts[x];
  }
  __syncthreads();
  if (blockIdx.x == 0) {
    for (int x = threadIdx.x; x <= e; x += blockDim.x) offsets[x] = off[x];
  }
  const int a = blockIdx.x * blockDim.x + threadIdx.x;
  if (a >= nk) return;
  const int r = assignment_to_slot[a];
  if (r < 0) return;
  const int slot = off[expert_idx[a]] + r;
  assignment_to_slot[a] = slot;
  slot_to_assignment[slot] = a;
}

}  // namespace

void BuildRoutingPlan(int32_t* counts, int32_t* routed, int32_t* offsets, int32_t* assignment_to_slot,
                      int32_t* slot_to_assignment, const int32_t* expert_idx, int n, int k, int e,
                      int64_t capacity, cudaStream_t stream) {
  BuildRoutingPlan(counts, routed, offsets, assignment_to_slot, slot_to_assignment, expert_idx, n, k, e, capacity,
                   /*expert_off=*/nullptr, stream);
}

void BuildRoutingPlan(int32_t* counts, int32_t* routed, int32_t* offsets, int32_t* assignment_to_slot,
                      int32_t* slot_to_assignment, const int32_t* expert_idx, int n, int k, int e,
                      int64_t capacity, const uint8_t* expert_off, cudaStream_t stream) {
  CheckExperts(e);
  const int nk = n * k;
  PlanRankKernel<<<e, 1024, 0, stream>>>(assignment_to_slot, counts, routed, expert_idx, nk, capacity, expert_off);
  MOE_CUDA_LAUNCH_CHECK();
  PlanSlotKernel<<<std::max(1u, BlocksFor(nk, kThreads)), kThreads, 0, stream>>>(
      assignment_to_slot, slot_to_assignment, offsets, counts, expert_idx, nk, e);
  MOE_CUDA_LAUNCH_CHECK();
}

}  // namespace moe::cuda
