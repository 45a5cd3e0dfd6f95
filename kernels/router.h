// The router: fp32 scores over E experts (softmax, or sigmoid, of logits / temperature), top-k
// (of the scores plus loss-free balancing's bias, when given), renormalised weights, and the
// gradients of the load-balancing (aux) and z losses. The loss values themselves are formed by the caller
// from RouterStats, because with several ranks f_e and P_e are global (reduced) quantities.
#pragma once

#include <cstdint>

namespace moe::kernels {

// model.moe.router_score, router_temperature and the bias of bias_update_rate (MODEL.md
// "Options: Experts"). The default is the base model: softmax(logits), top-k of the probs.
struct RouterScoring {
  bool sigmoid = false;         // p = sigmoid(logits / tau) instead of softmax(logits / tau)
  float temperature = 1.0f;     // tau
  const float* bias = nullptr;  // (e) added to p only to choose the top k; null = 0
  // The base model's arithmetic, bit for bit (the paths below take this one when it holds).
  bool plain() const { return !sigmoid && temperature == 1.0f; }
};

// The same, with scoring: probs (n, e) are the scores p (at least the smallest normal float, so
// that no weight below is 0 / 0 when the bias picks underflowed scores); weights = p of the picks / their sum;
// lse (n) is logsumexp of the raw logits (the z loss's), whatever the scoring.
void RouterForward(float* probs, float* lse, int32_t* expert_idx, float* weights,
                   const float* logits, int n, int e, int k, const RouterScoring& scoring);

// logits (n, e) -> probs (n, e), lse (n), expert_idx (n, k) (descending prob, ties to the lower
// index), weights (n, k) = top-k probs / their sum.
void RouterForward(float* probs, float* lse, int32_t* expert_idx, float* weights,
                   const float* logits, int n, int e, int k);

// prob_sum (e) += sum over tokens of probs ; z_sum += sum over tokens of lse^2 ;
// entropy_sum += sum over tokens of -sum_e p log p. Double accumulators.
void RouterStats(double* prob_sum, double* z_sum, double* entropy_sum, const float* probs,
                 const float* lse, int n, int e);
// The same for scores that need not sum to 1 (sigmoid): each token's scores are normalised,
// p / sum_e p, before they enter prob_sum and the entropy (MODEL.md's P_e of the aux loss).
void RouterStats(double* prob_sum, double* z_sum, double* entropy_sum, const float* probs,
                 const float* lse, int n, int e, bool normalize);

// dlogits (n, e) += gradient of
//   sum_{t,j} dweights[t,j] * weights[t,j]            (through renormalisation and softmax)
// + sum_{t,e} aux_grad[e] * probs[t,e]                 (aux loss; aux_grad[e] = coef*E*f_e/N_global)
// + z_scale * sum_t lse_t^2                            (z loss; z_scale = z_coef/N_global)
// dweights may be null (no gradient through the combine), aux_grad may be null.
void RouterBackward(float* dlogits, const float* dweights, const float* probs, const float* lse,
                    const int32_t* expert_idx, const float* aux_grad, float z_scale, int n, int e,
                    int k);
// The same for RouterForward with scoring: the aux term is through the normalised scores
// (sum_e aux_grad[e] * p[t,e] / sum p[t,:]), the z term through the raw logits (n, e), which
// only a non-plain scoring reads (may be null when plain).
void RouterBackward(float* dlogits, const float* dweights, const float* probs, const float* lse,
                    const int32_t* expert_idx, const float* aux_grad, float z_scale, int n, int e,
                    int k, const RouterScoring& scoring, const float* logits);

}  // namespace moe::kernels
