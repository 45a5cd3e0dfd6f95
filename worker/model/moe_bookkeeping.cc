#include "worker/model/moe_bookkeeping.h"

#include <algorithm>
#include <cmath>

#include "kernels/dropout.h"

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
  s.expert_dropped = static_cast<int64_t>(summed[slot.expert_dropped()]);
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

kernels::ExpertActivation ExpertActivationOf(const ModelConfig& cfg) {
  switch (cfg.activation) {
    case ModelConfig::Activation::kRelu2: return kernels::ExpertActivation::kRelu2;
    case ModelConfig::Activation::kGelu: return kernels::ExpertActivation::kGelu;
    case ModelConfig::Activation::kSwiglu: break;
  }
  return kernels::ExpertActivation::kSwiglu;
}

kernels::RouterScoring RouterScoringOf(const ModelConfig& cfg, const float* bias) {
  kernels::RouterScoring s;
  s.sigmoid = cfg.router_sigmoid;
  s.temperature = cfg.router_temperature;
  s.bias = cfg.balances_by_bias() ? bias : nullptr;
  return s;
}

std::vector<uint8_t> ExpertsSwitchedOff(uint64_t seed, float p, int experts) {
  if (p <= 0.0f) return {};
  std::vector<uint8_t> off(experts);
  for (int e = 0; e < experts; ++e) off[e] = kernels::CounterUniform(seed, static_cast<uint64_t>(e)) < p ? 1 : 0;
  return off;
}

void UpdateRouterBiases(std::vector<float>* biases, const std::vector<MoeLayerForwardStats>& layers,
                        float rate, int experts) {
  for (size_t l = 0; l < layers.size(); ++l) {
    const std::vector<int64_t>& c = layers[l].routed;
    if (static_cast<int>(c.size()) != experts) continue;
    // Integer comparison of c_e * E with sum(c): the sign of mean - c_e without rounding.
    int64_t total = 0;
    for (int64_t v : c) total += v;
    float* b = biases->data() + l * experts;
    for (int e = 0; e < experts; ++e) {
      const int64_t scaled = c[e] * experts;
      if (scaled < total) b[e] += rate;
      else if (scaled > total) b[e] -= rate;
    }
  }
}

double RouterBiasSpread(const float* bias, int experts) {
  if (experts <= 0) return 0;
  const auto [lo, hi] = std::minmax_element(bias, bias + experts);
  return static_cast<double>(*hi) - static_cast<double>(*lo);
}

std::string RouterBiasName(int layer) { return "blocks." + std::to_string(layer) + ".moe.router_bias"; }

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
