// The MoE GPT of MODEL.md on one rank: parameters, gradients, forward and backward over this
// rank's share of a micro-batch. Expert-parallel layers talk to other ranks through the
// Communicator; everything else is local. The trainer owns the optimizer and the reductions.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "worker/comm.h"
#include "worker/model_config.h"
#include "worker/moe_layer.h"
#include "worker/param_layout.h"

namespace moe {

// Where this rank's micro-batch sits in the step, for loss scaling and dropout counters.
struct BatchContext {
  bool train = true;            // dropout on, activations kept for Backward
  uint64_t dropout_seed = 0;    // per step and micro-step
  int64_t first_token = 0;      // global index of this rank's first token (dropout counters)
  int64_t global_tokens = 0;    // tokens of this micro-batch over all ranks
  float loss_scale = 0;         // 1 / tokens in the whole step (all ranks, all micro-steps)
};

struct ForwardResult {
  double ce_sum = 0;        // sum over this rank's tokens of the CE loss
  double aux_loss = 0;      // summed over layers, global for this micro-batch
  double z_loss = 0;        // summed over layers, global for this micro-batch
  std::vector<MoeLayerForwardStats> layers;
};

class Model {
 public:
  Model(const ModelConfig& cfg, Communicator* comm);

  const ModelConfig& config() const { return cfg_; }
  const ParamLayout& layout() const { return layout_; }
  std::vector<float>& params() { return params_; }
  std::vector<float>& grads() { return grads_; }
  void InitParams(uint64_t seed) { layout_.Initialize(params_.data(), seed); }
  void ZeroGrads();

  // idx, targets (b, T) token ids of this rank's sequences.
  ForwardResult Forward(const int32_t* idx, const int32_t* targets, int b, const BatchContext& ctx);
  // Accumulates parameter gradients of ce * loss_scale + aux + z for the last Forward.
  void Backward();
  // Logits (b*T, V) of the last forward pass (valid until Backward, which overwrites them).
  const std::vector<float>& logits() const { return logits_; }

 private:
  struct BlockActs {
    std::vector<float> x_in, attn_in, attn_rstd, qkv, attn_y, attn_lse;
    std::vector<float> x_mid, moe_in, moe_rstd;
  };

  ModelConfig cfg_;
  Communicator* comm_;
  ParamLayout layout_;
  std::vector<float> params_, grads_;
  std::vector<std::unique_ptr<MoeLayer>> moe_layers_;

  // Saved by Forward for Backward.
  BatchContext ctx_;
  int b_ = 0;
  std::vector<int32_t> idx_, targets_;
  std::vector<BlockActs> acts_;
  std::vector<float> x_final_, final_out_, final_rstd_, logits_, ce_lse_, ce_losses_;
};

}  // namespace moe
