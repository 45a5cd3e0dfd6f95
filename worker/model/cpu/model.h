// The MoE GPT of MODEL.md on one rank: parameters, gradients, forward and backward over this
// rank's share of a micro-batch. Expert-parallel layers talk to other ranks through the
// Communicator; everything else is local. The trainer owns the optimizer and the reductions.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "worker/parallel/comm.h"
#include "worker/model/model_config.h"
#include "worker/model/cpu/moe_layer.h"
#include "worker/model/optimizer_state.h"
#include "worker/model/param_layout.h"
#include "worker/model/train_model.h"

namespace moe {

class Model final : public TrainModel {
 public:
  Model(const ModelConfig& cfg, Communicator* comm);

  const ModelConfig& config() const override { return cfg_; }
  const ParamLayout& layout() const override { return layout_; }
  std::vector<float>& params() override { return params_; }
  std::vector<float>& grads() { return grads_; }
  void InitParams(uint64_t seed) override;
  void ZeroGrads() override;

  // idx, targets (b, T) token ids of this rank's sequences.
  ForwardResult Forward(const int32_t* idx, const int32_t* targets, int b,
                        const BatchContext& ctx) override;
  // Accumulates parameter gradients of ce * loss_scale + aux + z for the last Forward.
  void Backward() override;

  CommSeconds ReduceGrads() override;
  int64_t PeakMemoryBytes() const override;
  void GradSquaredNorms(double* dense_sq, double* expert_sq) override;
  void OptimizerStep(int64_t step, double lr, double muon_lr, double weight_decay, float clip_scale) override;
  std::vector<float> RouterBiases() override;
  void SetRouterBiases(const std::vector<float>& biases) override;
  void CopyToHost(ParamSet set, std::vector<float>* out) override;
  void CopyFromHost(ParamSet set, const std::vector<float>& in) override;
  // Block l's MoE layer, for inference that runs it on its own rows (sample/decoder.h).
  MoeLayer* moe_layer(int l) { return moe_layers_[l].get(); }
  // Logits (b*T, V) of the last forward pass (valid until Backward, which overwrites them).
  const std::vector<float>& logits() const { return logits_; }

 private:
  void RequireTraining(const char* what) const;  // throws std::logic_error on an inference-only model
  // Muon on one ParamInfo::muon tensor: its matrices (the trailing two dimensions) as one batch.
  void MuonTensorStep(const ParamInfo& info, int64_t step, double lr, double weight_decay, float clip_scale);

  struct BlockActs {
    std::vector<float> x_in, attn_in, attn_rstd, qkv, attn_y, attn_lse;
    std::vector<float> x_mid, moe_in, moe_rstd;
    // Attention options (empty when off): q and k before QK-norm (n, (H + H_kv) hd) and their
    // rstd (n, H + H_kv); the gate sigmoid(attn_in @ wg^T) (n, H hd). attn_y is ungated.
    std::vector<float> qk_raw, qk_rstd, gate;
  };

  // Block l on the residual stream x (n, D), in place, saving what its backward reads into a
  // (and its MoE layer). rerun: train.recompute full's second run inside the backward, with the
  // saved batch context: the same masks, routing and drops; stats untouched (may be null).
  void BlockForward(int l, BlockActs* a, std::vector<float>* x, bool rerun, MoeLayerForwardStats* stats);

  ModelConfig cfg_;
  Communicator* comm_;
  ParamLayout layout_;
  std::vector<float> params_, grads_;
  // AdamW's m and v (Muon's momentum in m's place), same layout, stored as
  // train.optimizer_state says (fp32 by default).
  OptimizerStateBuffer adam_m_, adam_v_;
  std::vector<std::unique_ptr<MoeLayer>> moe_layers_;
  CommSeconds comm_at_step_start_;  // comm_'s clocks at ZeroGrads

  // Saved by Forward for Backward.
  BatchContext ctx_;
  int b_ = 0;
  std::vector<int32_t> idx_, targets_;
  // Per block; with train.recompute full only x_in (the block's input), while one block's
  // other activations at a time live in rerun_acts_ (and its MoE layer).
  std::vector<BlockActs> acts_;
  BlockActs rerun_acts_;
  std::vector<float> block_tmp_, block_gated_;  // (n, D) BlockForward's scratch, reused by every block
  std::vector<float> x_final_, final_out_, final_rstd_, logits_, ce_lse_, ce_losses_;
};

}  // namespace moe
