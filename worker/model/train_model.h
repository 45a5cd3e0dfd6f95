// The seam between the trainer and a backend: what one optimizer step needs from a model
// (forward, backward, the gradient reduction, the gradient norms, the optimizer, host copies for
// checkpoints). The CPU Model (model/cpu/) and the CUDA CudaModel (model/cuda/) implement it;
// MakeTrainModel (train/make_model.h) picks one from the job's resources.device.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "kernels/dropout.h"
#include "moe/v1/job.pb.h"
#include "worker/parallel/comm.h"
#include "worker/model/model_config.h"
#include "worker/model/param_layout.h"

namespace moe {

// Where this rank's micro-batch sits in the step, for loss scaling and dropout counters.
struct BatchContext {
  bool train = true;            // dropout on, activations kept for Backward
  uint64_t dropout_seed = 0;    // per step and micro-step
  int64_t first_token = 0;      // global index of this rank's first token (dropout counters)
  int64_t global_tokens = 0;    // tokens of this micro-batch over all ranks
  float loss_scale = 0;         // 1 / tokens in the whole step (all ranks, all micro-steps)
  bool last_micro_step = true;  // the step's gradients are final after this Backward
};

// What one MoE layer measured in one forward pass, already reduced over ranks.
struct MoeLayerForwardStats {
  double aux_loss = 0;  // aux_coef * E * sum_e f_e P_e
  double z_loss = 0;    // z_coef * mean_t lse_t^2
  std::vector<int64_t> routed;  // (E) assignments per expert, before drops, all ranks
  int64_t dropped = 0;          // all ranks, by the capacity rule
  int64_t expert_dropped = 0;   // all ranks, sent to experts expert dropout switched off
  int64_t assignments = 0;      // N_global * k
  double entropy_sum = 0;       // sum over all tokens of the router entropy (nats)

  // Adds another forward pass of the same layer (a later micro-step of the step): counts and
  // the entropy sum become the step's totals; aux_loss and z_loss the micro-steps' sum.
  void Add(const MoeLayerForwardStats& other) {
    aux_loss += other.aux_loss;
    z_loss += other.z_loss;
    if (routed.size() < other.routed.size()) routed.resize(other.routed.size(), 0);
    for (size_t e = 0; e < other.routed.size(); ++e) routed[e] += other.routed[e];
    dropped += other.dropped;
    expert_dropped += other.expert_dropped;
    assignments += other.assignments;
    entropy_sum += other.entropy_sum;
  }
};

// Seconds one rank spent in collectives (wall time on CPUs, GPU time on GPUs).
struct CommSeconds {
  double all_to_all = 0;
  double all_reduce = 0;
};

struct ForwardResult {
  double ce_sum = 0;        // sum over this rank's tokens of the CE loss
  double aux_loss = 0;      // summed over layers, global for this micro-batch
  double z_loss = 0;        // summed over layers, global for this micro-batch
  std::vector<MoeLayerForwardStats> layers;
};

// The seed of one dropout site for one micro-step: 0 = embedding, 1 + 2l = attention output of
// block l, 2 + 2l = MoE output. Every backend draws its masks from this.
inline uint64_t DropoutSiteSeed(uint64_t seed, int site) {
  return kernels::SplitMix64(seed + 0x9E3779B97F4A7C15ull * static_cast<uint64_t>(site));
}
// The seed of block l's attention-probability dropout (model.attention.dropout) for one
// micro-step; kernels::AttentionDropoutCounter numbers its draws.
inline uint64_t AttentionDropoutSeed(uint64_t seed, int layer) { return DropoutSiteSeed(seed, -1 - layer); }
// The seed of block l's expert dropout for one micro-step: expert e of the layer is off when
// kernels::CounterUniform(seed, e) < expert_dropout, the same draw on every rank.
inline uint64_t ExpertDropoutSeed(uint64_t seed, int layer) { return DropoutSiteSeed(seed, -1000001 - layer); }

// The flat buffers of a model, all in ParamLayout's layout: a checkpoint holds the first three;
// gradients are there for tests.
enum class ParamSet { kParams, kAdamM, kAdamV, kGrads };

class TrainModel {
 public:
  virtual ~TrainModel() = default;

  virtual const ModelConfig& config() const = 0;
  virtual const ParamLayout& layout() const = 0;

  // Weights per MODEL.md's init (ParamLayout::Initialize on the host, then copied where they
  // live); AdamW moments zeroed.
  virtual void InitParams(uint64_t seed) = 0;
  // Starts a step: gradients to zero, and the clock of the step's collectives (ReduceGrads).
  virtual void ZeroGrads() = 0;

  // idx, targets (b, T) host token ids of this rank's sequences.
  virtual ForwardResult Forward(const int32_t* idx, const int32_t* targets, int b,
                                const BatchContext& ctx) = 0;
  // Accumulates parameter gradients of ce * loss_scale + aux + z for the last Forward.
  virtual void Backward() = 0;

  // The step's reduce, one call on every backend: the replicated ("dense") gradient range
  // [0, dense_size) summed over ranks (or the sum the backward already queued, waited for),
  // so that the gradients are final on return; expert gradients need no reduction (each
  // expert's already holds every rank's tokens). Returns the seconds this rank spent in
  // collectives since ZeroGrads (the exchanges of the forward and backward, and this).
  virtual CommSeconds ReduceGrads() = 0;
  // Squared L2 norms of the dense range and of this rank's expert range (double).
  virtual void GradSquaredNorms(double* dense_sq, double* expert_sq) = 0;
  // The optimizer step: AdamW at lr on every parameter (ParamInfo::decay picks weight_decay or
  // 0), except with train.optimizer muon the ParamInfo::muon matrices, which take Muon at muon_lr
  // (kernels/muon.h; its momentum in AdamW's m). grads are multiplied by clip_scale first. step
  // is 1-based.
  virtual void OptimizerStep(int64_t step, double lr, double muon_lr, double weight_decay, float clip_scale) = 0;

  // Loss-free balancing's router biases (model.moe.bias_update_rate, MODEL.md "Options:
  // Experts"): L x E fp32 (layer-major), the same on every rank, no gradient, saved in
  // checkpoints as blocks.{i}.moe.router_bias. Empty when the job does not balance by bias.
  virtual std::vector<float> RouterBiases() { return {}; }
  virtual void SetRouterBiases(const std::vector<float>& biases) { (void)biases; }

  // Dense FLOP/s of one device of this backend at its precision (for MFU), 0 when unknown.
  virtual double PeakFlopsPerSecond() const { return 0; }
  // The high-water mark of this rank's memory so far: the device's peak allocation on GPUs,
  // the process's peak resident set on CPUs.
  virtual int64_t PeakMemoryBytes() const = 0;

  // Host copies of a whole flat buffer (total() floats), for checkpoints and tests.
  virtual void CopyToHost(ParamSet set, std::vector<float>* out) = 0;
  virtual void CopyFromHost(ParamSet set, const std::vector<float>& in) = 0;

  // The weights as a host vector: the CPU model's own buffer; device backends copy down into
  // a host mirror first (so it is a snapshot, and writing to it changes nothing on the device).
  virtual const std::vector<float>& params() = 0;
};

}  // namespace moe
