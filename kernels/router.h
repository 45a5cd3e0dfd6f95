// The router: fp32 softmax over E experts, top-k, renormalised weights, and the gradients of
// the load-balancing (aux) and z losses. The loss values themselves are formed by the caller
// from RouterStats, because with several ranks f_e and P_e are global (reduced) quantities.
#pragma once

#include <cstdint>

namespace moe::kernels {

// logits (n, e) -> probs (n, e), lse (n), expert_idx (n, k) (descending prob, ties to the lower
// index), weights (n, k) = top-k probs / their sum.
void RouterForward(float* probs, float* lse, int32_t* expert_idx, float* weights,
                   const float* logits, int n, int e, int k);

// prob_sum (e) += sum over tokens of probs ; z_sum += sum over tokens of lse^2 ;
// entropy_sum += sum over tokens of -sum_e p log p. Double accumulators.
void RouterStats(double* prob_sum, double* z_sum, double* entropy_sum, const float* probs,
                 const float* lse, int n, int e);

// dlogits (n, e) += gradient of
//   sum_{t,j} dweights[t,j] * weights[t,j]            (through renormalisation and softmax)
// + sum_{t,e} aux_grad[e] * probs[t,e]                 (aux loss; aux_grad[e] = coef*E*f_e/N_global)
// + z_scale * sum_t lse_t^2                            (z loss; z_scale = z_coef/N_global)
// dweights may be null (no gradient through the combine), aux_grad may be null.
void RouterBackward(float* dlogits, const float* dweights, const float* probs, const float* lse,
                    const int32_t* expert_idx, const float* aux_grad, float z_scale, int n, int e,
                    int k);

}  // namespace moe::kernels
