// MoE bookkeeping that is not math, written once for every backend (model/cpu/ and model/cuda/
// call it): the experts' shape on a rank and the dense case, the capacity rule, the layout of
// the router statistics every rank sums and their reduction into MoeLayerForwardStats, and the
// exchange plan of expert parallelism (who sends how many rows to whom, and where each
// (peer, local expert) block lies on the wire and in expert order), and the expert options of
// MODEL.md that are bookkeeping too: the router's scoring, which experts expert dropout switches
// off, and loss-free balancing's bias update.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "common/expert_capacity.h"  // ExpertCapacity, MODEL.md's capacity rule
#include "kernels/experts.h"
#include "kernels/router.h"
#include "worker/model/model_config.h"
#include "worker/model/train_model.h"

namespace moe {

// The experts of one MoE layer as one rank sees them.
struct MoeShape {
  int experts = 1;        // E, over all ranks
  int experts_local = 1;  // E / W on this rank (1 when dense: the one expert is replicated)
  int top_k = 1;
  int world = 1;
  int d = 0, ffn = 0;
  // E = 1: one replicated expert takes every token; no router, no router losses, no exchange.
  bool dense = true;

  static MoeShape Of(const ModelConfig& cfg, int world);
  // Rows the experts of this rank see before any exchange: n k routed assignments, n when dense.
  int64_t ExpertRows(int64_t n) const { return dense ? n : n * top_k; }
};

// One layer's router statistics, as one buffer of doubles that every rank fills with its own
// tokens' values and that is summed over ranks:
//   [routed (E) | prob_sum (E) | z_sum | entropy_sum | dropped | expert_dropped]
// routed: assignments per expert before drops; prob_sum: sum over tokens of the router
// probabilities (normalised per token); z_sum: sum of lse^2; entropy_sum: sum of the router
// entropies (nats); dropped: assignments the capacity rule dropped; expert_dropped: assignments
// to experts that expert dropout switched off.
struct RouterStatsSlots {
  int experts = 1;
  int size() const { return 2 * experts + 4; }
  int routed() const { return 0; }
  int prob_sum() const { return experts; }
  int z_sum() const { return 2 * experts; }
  int entropy_sum() const { return 2 * experts + 1; }
  int dropped() const { return 2 * experts + 2; }
  int expert_dropped() const { return 2 * experts + 3; }
};

// The layer's losses and statistics from the summed buffer (global_tokens: tokens of the
// micro-batch over all ranks): aux = aux_coef E sum_e f_e P_e with f_e = routed_e / (N k) and
// P_e = prob_sum_e / N; z = z_coef z_sum / N.
MoeLayerForwardStats ReduceRouterStats(const double* summed, const MoeShape& shape, int64_t global_tokens,
                                       double aux_coef, double z_coef);
// d(aux) / d(p_te) for every token's probability of expert e, times loss_scale:
// aux_coef E f_e loss_scale (e = 0..E-1), from the summed buffer.
std::vector<float> AuxLossGradient(const double* summed, const MoeShape& shape, int64_t global_tokens,
                                   double aux_coef, float loss_scale);

// The experts' activation of the job (model.moe.activation).
kernels::ExpertActivation ExpertActivationOf(const ModelConfig& cfg);

// The router's scoring of the job (router_score, router_temperature), with bias (E) in the
// choice when the job balances by bias (else ignored, may be null).
kernels::RouterScoring RouterScoringOf(const ModelConfig& cfg, const float* bias);

// Expert dropout of one layer in one micro-step (MODEL.md, model.moe.expert_dropout): expert e
// is off when kernels::CounterUniform(seed, e) < p; seed is ExpertDropoutSeed(micro-step seed,
// layer), so every rank draws the same. (E) bytes, 1 = off; empty when p is 0.
std::vector<uint8_t> ExpertsSwitchedOff(uint64_t seed, float p, int experts);

// Loss-free balancing's update after an optimizer step (DeepSeek-V3): for each layer l,
// b[l E + e] += u * sign(mean(c) - c_e), with c_e = layers[l].routed[e], the step's
// assignments over all ranks and micro-steps (the router's choices, before any drop).
// biases: L x E, layer-major.
void UpdateRouterBiases(std::vector<float>* biases, const std::vector<MoeLayerForwardStats>& layers,
                        float rate, int experts);
// max - min of one layer's biases (E); the metric of how far balancing has pushed.
double RouterBiasSpread(const float* bias, int experts);
// The checkpoint name of layer l's router bias (E, fp32), as bench/reference_recipes.py reads it.
std::string RouterBiasName(int layer);

// The route of one MoE layer between ranks (MODEL.md "Parallel layout"), from this rank's
// rows per global expert and what every peer sends to this rank's experts. Rows leave in plan
// order (grouped by global expert, so by owner rank), arrive in wire order ([from rank 0:
// local experts 0, 1, ...][from rank 1: ...]...) and are read by the experts in expert order
// ([local expert 0: from rank 0, rank 1, ...][local expert 1: ...]), which keeps each
// expert's rows in global token order, as one rank would see them.
struct ExchangePlan {
  // One (peer, local expert) block: where it lies in wire order and in (compact) expert order.
  struct Block {
    int expert = 0;  // local expert j
    int peer = 0;
    int64_t wire_row = 0, expert_row = 0, rows = 0;
  };
  std::vector<int64_t> send_rows;     // (W) rows to each peer
  std::vector<int64_t> recv_rows;     // (W) rows from each peer
  std::vector<int32_t> local_counts;  // (E_local) rows per local expert, over all peers
  int64_t rows_in = 0;                // rows this rank's experts take (sum of recv_rows)
  int64_t rows_out = 0;               // rows this rank sends (sum of send_rows)
  std::vector<Block> blocks;          // in expert order (j, then p)
};

// send_counts (E): this rank's rows per global expert; recv_counts (W, E_local): rows peer p
// sends to local expert j (what the count exchange brought).
ExchangePlan PlanExchange(const MoeShape& shape, const int64_t* send_counts, const int64_t* recv_counts);

}  // namespace moe
