#include "worker/model/moe_bookkeeping.h"

#include <cmath>

namespace moe {

MoeShape MoeShape::Of(const ModelConfig& cfg, int world) {
  MoeShape s;
  s.experts = cfg.experts;
  s.dense = !cfg.is_moe();
  s.experts_local = s.dense ? 1 : cfg.experts / world;
  s.top_k = s.dense ? 1 : cfg.top_k;
  s.world = world;
  s.d = cfg.d;
  s.ffn = cfg.ffn;
  return s;
}

int64_t ExpertCapacity(double capacity_factor, int64_t n, int k, int e) {
  if (capacity_factor <= 0.0) return 0;
  return static_cast<int64_t>(std::ceil(capacity_factor * static_cast<double>(n) * k / e));
}

MoeLayerForwardStats ReduceRouterStats(const double* summed, const MoeShape& shape, int64_t global_tokens,
                                       double aux_coef, double z_coef) {
  const RouterStatsSlots slot{shape.experts};
  const int E = shape.experts, k = shape.top_k;
  const double n_global = static_cast<double>(global_tokens);
  MoeLayerForwardStats s;
  s.routed.assign(E, 0);
  double aux = 0;
  for (int e = 0; e < E; ++e) {
    const double f_e = summed[slot.routed() + e] / (n_global * k);
    const double p_e = summed[slot.prob_sum() + e] / n_global;
    aux += f_e * p_e;
    s.routed[e] = static_cast<int64_t>(summed[slot.routed() + e]);
  }
  s.aux_loss = aux_coef * E * aux;
  s.z_loss = z_coef * summed[slot.z_sum()] / n_global;
  s.entropy_sum = summed[slot.entropy_sum()];
  s.dropped = static_cast<int64_t>(summed[slot.dropped()]);
  s.assignments = global_tokens * k;
  return s;
}

std::vector<float> AuxLossGradient(const double* summed, const MoeShape& shape, int64_t global_tokens,
                                   double aux_coef, float loss_scale) {
  const RouterStatsSlots slot{shape.experts};
  const int E = shape.experts;
  const double n_global = static_cast<double>(global_tokens);
  std::vector<float> grad(E);
  for (int e = 0; e < E; ++e) {
    const double f_e = summed[slot.routed() + e] / (n_global * shape.top_k);
    grad[e] = static_cast<float>(aux_coef * E * f_e * loss_scale);
  }
  return grad;
}

ExchangePlan PlanExchange(const MoeShape& shape, const int64_t* send_counts, const int64_t* recv_counts) {
  const int W = shape.world, L = shape.experts_local;
  ExchangePlan plan;
  plan.send_rows.assign(W, 0);
  plan.recv_rows.assign(W, 0);
  plan.local_counts.assign(L, 0);
  std::vector<int64_t> wire_row(static_cast<size_t>(W) * L + 1, 0);  // block (p, j) at index p L + j
  for (int p = 0; p < W; ++p) {
    for (int j = 0; j < L; ++j) {
      const size_t b = static_cast<size_t>(p) * L + j;
      plan.send_rows[p] += send_counts[b];
      plan.recv_rows[p] += recv_counts[b];
      plan.local_counts[j] += static_cast<int32_t>(recv_counts[b]);
      wire_row[b + 1] = wire_row[b] + recv_counts[b];
    }
    plan.rows_in += plan.recv_rows[p];
    plan.rows_out += plan.send_rows[p];
  }
  int64_t expert_row = 0;
  for (int j = 0; j < L; ++j) {
    for (int p = 0; p < W; ++p) {
      const size_t b = static_cast<size_t>(p) * L + j;
      plan.blocks.push_back({j, p, wire_row[b], expert_row, recv_counts[b]});
      expert_row += recv_counts[b];
    }
  }
  return plan;
}

}  // namespace moe
