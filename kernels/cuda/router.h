// The router on the GPU, twin of kernels/router.h: softmax (or sigmoid, of logits / temperature)
// and top-k (of the scores plus the balancing bias), the statistics the aux and z losses need, the
// aux-loss gradient from the global counts, and the backward. e <= 512, k <= 8.
#pragma once

#include <cstdint>

#include "kernels/cuda/common.h"
#include "kernels/router.h"

namespace moe::cuda {

// logits (n, e) -> probs (n, e), lse (n), expert_idx (n, k), weights (n, k). e <= 512, k <= 8.
void RouterForward(float* probs, float* lse, int32_t* expert_idx, float* weights, const float* logits,
                   int n, int e, int k, cudaStream_t stream);
// As kernels::RouterForward with scoring; scoring.bias is a device pointer (e), may be null.
void RouterForward(float* probs, float* lse, int32_t* expert_idx, float* weights, const float* logits,
                   int n, int e, int k, const kernels::RouterScoring& scoring, cudaStream_t stream);
// prob_sum (e) += , z_sum (1) += sum lse^2, entropy_sum (1) += ; device doubles. normalize: each
// token's scores over their sum first (sigmoid), as kernels::RouterStats.
void RouterStats(double* prob_sum, double* z_sum, double* entropy_sum, const float* probs,
                 const float* lse, int n, int e, cudaStream_t stream);
void RouterStats(double* prob_sum, double* z_sum, double* entropy_sum, const float* probs,
                 const float* lse, int n, int e, bool normalize, cudaStream_t stream);
// As kernels::RouterBackward; aux_grad (e) device, may be null; dweights may be null.
void RouterBackward(float* dlogits, const float* dweights, const float* probs, const float* lse,
                    const int32_t* expert_idx, const float* aux_grad, float z_scale, int n, int e, int k,
                    cudaStream_t stream);
// With scoring (kernels::RouterBackward's second form); logits (n, e) device, read when the
// scoring is not plain.
void RouterBackward(float* dlogits, const float* dweights, const float* probs, const float* lse,
                    const int32_t* expert_idx, const float* aux_grad, float z_scale, int n, int e, int k,
                    const kernels::RouterScoring& scoring, const float* logits, cudaStream_t stream);
// This rank's count stats of one layer, in the RouterStatsSlots layout (worker/model/
// moe_bookkeeping.h): stats[x] = routed[x] (x < e), stats[2e + 2] = assignments the capacity
// dropped, stats[2e + 3] = assignments to experts expert dropout switched off (expert_off (e),
// device bytes, 1 = off; null = none) (the other entries are RouterStats'). Summed over ranks,
// they are the global ones.
void RouterCountStats(double* stats, const int32_t* routed, const int32_t* counts, int e, cudaStream_t stream);
void RouterCountStats(double* stats, const int32_t* routed, const int32_t* counts, int e, const uint8_t* expert_off,
                      cudaStream_t stream);
// aux_grad[x] = coef_e * (stats[x] / (n_global * k)) * loss_scale (in double, then float), from
// the global routed counts in stats. coef_e is aux_coef * E.
void RouterAuxGrad(float* aux_grad, const double* stats, int e, double n_global, int k, double coef_e,
                   float loss_scale, cudaStream_t stream);

}  // namespace moe::cuda
