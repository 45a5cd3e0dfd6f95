// The CUDA model's class (cuda_model.h's MakeCudaModel builds it), for its two source files:
// cuda_model.cc (construction, the activation table, the optimizer step, host copies) and
// cuda_model_step.cc (the forward and backward passes). Not for other includers.
#pragma once

#ifdef MOE_WITH_CUDA

#include <cstdint>
#include <memory>
#include <vector>

#include "common/backend_limits.h"
#include "kernels/rope.h"
#include "kernels/state_codec.h"
#include "kernels/cuda/attention.h"
#include "kernels/cuda/attention_options.h"
#include "kernels/cuda/common.h"
#include "kernels/cuda/matmul.h"
#include "kernels/cuda/nn.h"
#include "kernels/cuda/reduce.h"
#include "kernels/cuda/rope.h"
#include "worker/model/cuda/cuda_context.h"
#include "worker/model/cuda/device_arena.h"
#include "worker/model/cuda/device_optimizer.h"
#include "worker/model/cuda/device_weights.h"
#include "worker/model/cuda/device_grads.h"
#include "worker/model/cuda/grad_reducer.h"
#include "worker/model/cuda/moe_layer.h"
#include "worker/model/moe_bookkeeping.h"
#include "worker/parallel/comm_nccl.h"
#include "worker/model/cuda/cuda_model.h"

namespace moe {

class CudaModel final : public TrainModel {
 public:
  // dcomm: the NCCL communicator when the job has several ranks (null for one).
  CudaModel(const ModelConfig& cfg, Communicator* comm, std::unique_ptr<DeviceCommunicator> dcomm, bool use_bf16);
  ~CudaModel() override;

  const ModelConfig& config() const override { return cfg_; }
  const ParamLayout& layout() const override { return layout_; }
  void InitParams(uint64_t seed) override;
  void ZeroGrads() override;
  ForwardResult Forward(const int32_t* idx, const int32_t* targets, int b, const BatchContext& ctx) override;
  void Backward() override;
  CommSeconds ReduceGrads() override;
  void GradSquaredNorms(double* dense_sq, double* expert_sq) override;
  void OptimizerStep(int64_t step, double lr, double muon_lr, double weight_decay, float clip_scale) override;
  void CopyToHost(ParamSet set, std::vector<float>* out) override;
  void CopyFromHost(ParamSet set, const std::vector<float>& in) override;
  const std::vector<float>& params() override;
  std::vector<float> RouterBiases() override;
  void SetRouterBiases(const std::vector<float>& biases) override;
  double PeakFlopsPerSecond() const override { return peak_flops_; }
  int64_t PeakMemoryBytes() const override { return memory_.peak; }

  int64_t device_bytes() const { return memory_.now; }

 private:
  // Saved by Forward for Backward, per block (the MoE layer keeps its own). n = b T tokens.
  // train.recompute full: each block's own x_in, and one set of the rest that every block
  // points at and fills in turn (the backward runs each block again right before its own).
  struct BlockActs {
    // attn_y: the attention's output in fp32, which the backward's row sums dsum = rowsum(dout *
    // attn_y) read (from its bf16 rounding instead, as FlashAttention-2 does, shakespeare-moe's
    // best val loss was 0.005 and 0.010 worse on its two seeds: README). wo's forward reads the
    // bf16 copy the tensor-core attention writes beside it into the context's scratch (s16a).
    float *x_in, *attn_rstd, *qkv, *attn_y, *attn_lse;  // (n,D) (n) (n,C3) (n,D) (b,H,T)
    // (n,C3) bf16 mode: qkv in bf16. On tensor-core attention (CudaAttentionOnTensorCores) the
    // backward reads only these, and every block's qkv is dqkv_ (free until the backward).
    cuda::bf16* qkv16;
    float *x_mid, *moe_rstd;  // (n,D) (n)
    // Attention options (null when off): q, k before QK-norm (n,(H+Hkv)hd) and their rstd
    // (n,H+Hkv); the gate sigmoid(attn_in @ wg^T) (n,D). attn_y stays ungated.
    float *qk_raw, *qk_rstd, *gate;
  };

  // Block l's attention dropout for this micro-batch (model.attention.dropout): off outside
  // training; the masks are keyed by global token, head and layer as on the CPU.
  cuda::AttentionDropout AttnDropout(const BatchContext& ctx, int l) const {
    cuda::AttentionDropout d;
    if (ctx.train && cfg_.attn_dropout > 0.f) {
      d.p = cfg_.attn_dropout;
      d.seed = AttentionDropoutSeed(ctx.dropout_seed, l);
      d.first_token = ctx.first_token;
    }
    return d;
  }
  // Every activation buffer for b sequences, from one table of shapes.
  void EnsureActivations(int b);
  // Block l of the last Forward (b_, ctx_batch_) from its input blocks_[l].x_in, saving what its
  // backward reads into blocks_[l] and its MoE layer; out (n, D): the block's output. rerun:
  // train.recompute full's second run inside the backward, for the saved activations alone (out
  // unused; the same masks, routing and drops; no statistics).
  void BlockForward(int l, float* out, bool rerun);
  // Block l's two RMSNorms (gain: its attn_norm / moe_norm) into attn_in_ (or attn_in16_) and
  // moe_in_, and their rstd into blocks_[l]: in the forward, and again in the backward.
  void AttnNorm(int l, const float* gain);
  void MoeNorm(int l, const float* gain);
  // The clocks of every collective this rank runs (host and device).
  CommSeconds CommClocks() const;

  ModelConfig cfg_;
  Communicator* comm_;
  ParamLayout layout_;
  MoeShape shape_;
  bool bf16_;
  DeviceMemory memory_;
  cudaStream_t stream_ = nullptr;
  std::unique_ptr<cuda::Blas> blas_;
  CudaContext ctx_;  // stream, cuBLAS, precision, weights and bf16 scratch for the products
  DeviceArena weights_{&memory_}, acts_{&memory_};
  std::unique_ptr<DeviceWeights> params_;            // fp32 and / or bf16 (train.master_weights)
  std::unique_ptr<DeviceGrads> grads_;               // fp32, or bf16 (train.master_weights)
  std::unique_ptr<DeviceOptimizer> optimizer_;       // AdamW's m and v as train.optimizer_state says
  float *rope_cos_ = nullptr, *rope_sin_ = nullptr;  // (T, hd/2)
  double* norms_ = nullptr;                          // (2) device
  float* partials_ = nullptr;                        // cuda::PartialsFloats(max(D, 2 hd))
  double* host_stats_ = nullptr;                     // pinned: ce_sum, then each layer's RouterStatsSlots
  std::vector<float> host_params_;

  // Several GPUs: NCCL, the MoE layers' exchange, the dense gradients' sum.
  std::unique_ptr<DeviceCommunicator> dcomm_;
  std::unique_ptr<ExpertExchange> exchange_;
  std::unique_ptr<DenseGradReducer> reducer_;
  std::unique_ptr<MoeScratch> moe_scratch_;
  std::vector<std::unique_ptr<CudaMoeLayer>> moe_;

  // Activations, sized for b_cap_ sequences (EnsureActivations).
  int b_cap_ = 0;
  std::vector<BlockActs> blocks_;
  float *tmp_, *x_final_, *final_out_, *final_rstd_, *ce_lse_, *ce_losses_;  // (n,D) x4, (n) x2
  // The two RMSNorms' outputs of the block that runs (n,D), one buffer for every block: the
  // backward writes them again from x_in / x_mid and the saved rstd (an elementwise pass, the
  // same values bit for bit) instead of keeping one per block. attn_in in bf16 alone with bf16
  // products (attn_in_ null), the operand of the qkv and gate products and their weight
  // gradients; moe_in fp32 (the router's product is fp32).
  float *attn_in_, *moe_in_;
  cuda::bf16* attn_in16_;
  // moe_in rounded to bf16 as well, written by the same RMSNorm pass (MoeInputInBf16: bf16
  // products, routed experts, one GPU): the experts' input rows are gathered from it (half the
  // bytes of moe_in's, the same bits).
  cuda::bf16* moe_in16_ = nullptr;
  bool MoeInputInBf16() const { return bf16_ && !shape_.dense && shape_.world == 1; }
  cuda::bf16* final_out16_;  // bf16 products: the head's input in bf16 alone (n,D; final_out_ null)
  // The head (Forward's last loop): fp32 logits (head_rows_, V), head_rows_ = n on the fp32
  // path (the backward turns them into dlogits in place); with bf16 products a chunk
  // (CudaHeadChunkRows), and the bf16 dlogits (n, V) the forward writes for the backward.
  int64_t head_rows_ = 0;
  float* logits_;
  cuda::bf16* dlogits16_;
  int32_t *idx_, *targets_;                                                           // (n)
  // The batch's rows grouped by token id for the embedding's backward (training forwards):
  // host (token_runs_) and device copies, (n), (n + 1), (n).
  cuda::TokenRuns token_runs_;
  int32_t *run_order_, *run_starts_, *run_ids_;
  double* ce_sum_;                                                                    // (1)
  float *dx_, *dtmp_, *dnorm_, *dqkv_, *att_scratch_;  // backward: (n,D) x3, (n,C3), (n,H)
  // Attention gate only: the gated output (n,D) on the fp32 path (bf16 products write it in bf16
  // into the cast scratch), the gate logits' gradient (n,D).
  float *gated_, *dgate_;

  CommSeconds comm_at_step_start_;  // CommClocks at ZeroGrads
  // The routed experts' gradients were not cleared by ZeroGrads (bf16 experts): the step's first
  // Backward writes them; whatever reads gradients before it clears them (WriteUnwrittenGrads).
  bool expert_grads_unwritten_ = false;
  void WriteUnwrittenGrads();
  double peak_flops_ = 0;
  BatchContext ctx_batch_;  // the last forward's
  int b_ = 0;
};

}  // namespace moe

#endif  // MOE_WITH_CUDA
