#include "worker/train/step_metrics.h"

#include <algorithm>

namespace moe {

double ModelFlopsUtilization(double flops_per_token, double tokens_per_s, int world_size,
                             double peak_flops_per_device) {
  if (peak_flops_per_device <= 0 || world_size <= 0) return 0;
  return flops_per_token * tokens_per_s / (world_size * peak_flops_per_device);
}

moe::v1::MetricPoint BuildMetricPoint(const StepMeasurements& m) {
  moe::v1::MetricPoint p;
  p.set_step(m.step);
  p.set_loss(m.loss);
  p.set_aux_loss(m.aux_loss);
  p.set_z_loss(m.z_loss);
  p.set_lr(m.lr);
  p.set_grad_norm(m.grad_norm);
  p.set_step_ms(m.step_seconds * 1e3);
  const double tokens_per_s = m.tokens / m.step_seconds;
  p.set_tokens_per_s(tokens_per_s);
  if (m.peak_flops_per_device > 0) {
    p.set_mfu(ModelFlopsUtilization(m.flops_per_token, tokens_per_s, m.world_size, m.peak_flops_per_device));
  }
  p.set_peak_memory_mb(static_cast<double>(m.peak_memory_bytes) / (1 << 20));

  auto* times = p.mutable_times();
  const double a2a = m.comm.all_to_all, ar = m.comm.all_reduce;
  times->set_all_to_all_ms(a2a * 1e3);
  times->set_all_reduce_ms(ar * 1e3);
  times->set_compute_ms(std::max(0.0, m.step_seconds - a2a - ar) * 1e3);
  times->set_forward_ms(m.forward_seconds * 1e3);
  times->set_backward_ms(m.backward_seconds * 1e3);
  times->set_optimizer_ms(m.optimizer_seconds * 1e3);

  for (size_t l = 0; l < m.layers.size(); ++l) {
    const MoeLayerForwardStats& s = m.layers[l];
    auto* ls = p.add_layers();
    ls->set_layer(static_cast<int>(l));
    int64_t max_routed = 0, sum_routed = 0;
    for (int64_t c : s.routed) {
      ls->add_tokens_per_expert(c);
      max_routed = std::max(max_routed, c);
      sum_routed += c;
    }
    const double mean = static_cast<double>(sum_routed) / s.routed.size();
    ls->set_load_imbalance(mean > 0 ? max_routed / mean : 0);
    ls->set_drop_rate(s.assignments > 0 ? static_cast<double>(s.dropped) / s.assignments : 0);
    ls->set_expert_dropout_rate(s.assignments > 0 ? static_cast<double>(s.expert_dropped) / s.assignments : 0);
    if (l < m.router_bias_spread.size()) ls->set_router_bias_spread(m.router_bias_spread[l]);
    // assignments = tokens * k, so this is the mean entropy per token.
    ls->set_router_entropy(s.entropy_sum / (s.assignments / m.top_k));
  }
  return p;
}

}  // namespace moe
