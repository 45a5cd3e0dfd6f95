// The metrics of one optimizer step: what the step measured (StepMeasurements) made into the
// MetricPoint that is logged and reported, and the MFU formula.
#pragma once

#include <cstdint>
#include <vector>

#include "moe/v1/metrics.pb.h"
#include "worker/model/train_model.h"

namespace moe {

// What one step measured on this rank, with the values the ranks agreed on at its end.
struct StepMeasurements {
  int64_t step = 0;       // 1-based: the step just taken
  double lr = 0;
  double loss = 0;        // train CE per token, over all ranks
  double aux_loss = 0;    // summed over layers, mean over micro-steps
  double z_loss = 0;      // summed over layers, mean over micro-steps
  double grad_norm = 0;   // global, before clipping
  double tokens = 0;      // tokens in the step over all ranks
  double step_seconds = 0;       // this rank, ZeroGrads to the end of AdamW
  double forward_seconds = 0;    // summed over micro-steps
  double backward_seconds = 0;   // summed over micro-steps
  double optimizer_seconds = 0;  // reduce, clip and update
  CommSeconds comm;              // this rank's collectives in the step
  int world_size = 1;
  double flops_per_token = 0;        // model FLOPs per token (common/model_stats.h)
  double peak_flops_per_device = 0;  // one device's peak FLOP/s; 0 = unknown, MFU not reported
  int64_t peak_memory_bytes = 0;     // high-water mark, the maximum over ranks
  int top_k = 1;
  std::vector<MoeLayerForwardStats> layers;  // (L) summed over micro-steps; empty = dense model
  std::vector<double> router_bias_spread;    // (L) after the step's bias update; empty = none
};

// Model FLOPs utilisation of one device: the global model FLOP/s over the peak of all
// world_size devices, so the same work per device gives the same MFU on any number of them.
// tokens_per_s counts every rank's tokens. 0 when the peak is unknown (<= 0).
double ModelFlopsUtilization(double flops_per_token, double tokens_per_s, int world_size,
                             double peak_flops_per_device);

// The step's MetricPoint (step, losses, lr, grad norm, throughput, MFU when the peak is known,
// peak memory in MiB, the time split, per-layer routing stats). unix_ms and val_loss are left
// to the caller.
moe::v1::MetricPoint BuildMetricPoint(const StepMeasurements& m);

}  // namespace moe
