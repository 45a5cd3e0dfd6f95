#include "worker/model/cuda/cuda_model.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <memory>
#include <stdexcept>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/backend_limits.h"
#include "common/memory_estimate.h"

#ifdef MOE_WITH_CUDA
#include "kernels/rope.h"
#include "kernels/state_codec.h"
#include "kernels/cuda/attention.h"
#include "kernels/cuda/attention_options.h"
#include "kernels/cuda/common.h"
#include "kernels/cuda/matmul.h"
#include "kernels/cuda/nn.h"
#include "kernels/cuda/reduce.h"
#include "worker/model/cuda/cuda_context.h"
#include "worker/model/cuda/device_arena.h"
#include "worker/model/cuda/device_optimizer.h"
#include "worker/model/cuda/device_weights.h"
#include "worker/model/cuda/device_grads.h"
#include "worker/model/cuda/grad_reducer.h"
#include "worker/model/cuda/moe_layer.h"
#include "worker/model/moe_bookkeeping.h"
#include "worker/parallel/comm_nccl.h"
#endif

namespace moe {

#ifndef MOE_WITH_CUDA

absl::StatusOr<std::unique_ptr<TrainModel>> MakeCudaModel(const ModelConfig&, Communicator*, bool) {
  return absl::FailedPreconditionError(
      "resources.device is cuda but this moe-worker was built without CUDA (no nvcc at build "
      "time); rebuild on a machine with the CUDA toolkit or use device: cpu");
}

int64_t CudaModelDeviceBytes(const TrainModel&) { return 0; }

#else

namespace {

using cuda::bf16;

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
    float *x_in, *attn_in, *attn_rstd, *qkv, *attn_y, *attn_lse;  // (n,D) (n,D) (n) (n,C3) (n,D) (b,H,T)
    // (n,C3) bf16 mode: qkv in bf16. On tensor-core attention (CudaAttentionOnTensorCores) the
    // backward reads only these, and every block's qkv is dqkv_ (free until the backward).
    bf16* qkv16;
    // (n,D) bf16 mode: attn_in in bf16 alone (attn_in null), the operand of the qkv and gate
    // products and of their weight gradients, written so by the RMSNorm.
    bf16* attn_in16;
    float *x_mid, *moe_in, *moe_rstd;                              // (n,D) (n,D) (n)
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
  double peak_flops_ = 0;
  BatchContext ctx_batch_;  // the last forward's
  int b_ = 0;
};

CudaModel::CudaModel(const ModelConfig& cfg, Communicator* comm, std::unique_ptr<DeviceCommunicator> dcomm,
                     bool use_bf16)
    : cfg_(cfg),
      comm_(comm),
      layout_(cfg, comm->rank(), comm->world_size()),
      shape_(MoeShape::Of(cfg, comm->world_size())),
      bf16_(use_bf16),
      dcomm_(std::move(dcomm)) {
  MOE_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
  blas_ = std::make_unique<cuda::Blas>();
  peak_flops_ = cuda::PeakDenseFlops(use_bf16);
  params_ = std::make_unique<DeviceWeights>(layout_, bf16_, cfg.bf16_master, &weights_);
  // bf16 gradients with bf16 master weights and products on one GPU (several GPUs sum the
  // replicated ones in fp32: bf16 values in fp32 storage there).
  const bool bf16_grads = cfg.bf16_master && bf16_ && comm->world_size() == 1;
  grads_ = std::make_unique<DeviceGrads>(layout_, bf16_grads, cfg.bf16_master, &weights_);
  optimizer_ = std::make_unique<DeviceOptimizer>(cfg, layout_, bf16_, &weights_, stream_);
  ctx_.stream = stream_;
  ctx_.blas = blas_.get();
  ctx_.bf16 = bf16_;
  ctx_.params = params_->handles();
  ctx_.params16 = params_->bf16();
  if (bf16_grads) {
    ctx_.grads = grads_->handles();
    ctx_.grads_total = layout_.total();
    ctx_.grads16 = grads_->bf16();
  }

  const int half = cfg.head_dim / 2;
  std::vector<float> cos_t(static_cast<size_t>(cfg.seq_len) * half), sin_t(cos_t.size());
  kernels::RopeTables(cos_t.data(), sin_t.data(), cfg.seq_len, cfg.head_dim, cfg.rope_theta);
  rope_cos_ = weights_.Alloc<float>(cos_t.size());
  rope_sin_ = weights_.Alloc<float>(sin_t.size());
  // Every copy goes on stream_: a cudaMemcpy from pageable memory may return before its data
  // has landed, and stream_ (non-blocking) would not wait for it.
  MOE_CUDA_CHECK(
      cudaMemcpyAsync(rope_cos_, cos_t.data(), sizeof(float) * cos_t.size(), cudaMemcpyHostToDevice, stream_));
  MOE_CUDA_CHECK(
      cudaMemcpyAsync(rope_sin_, sin_t.data(), sizeof(float) * sin_t.size(), cudaMemcpyHostToDevice, stream_));
  norms_ = weights_.Alloc<double>(2);
  // The deterministic sums' scratch (kernels/cuda/reduce.h): the norms' weight gradients over D
  // columns (QK-norm's over 2 hd), the squared norms' and the loss's kPartialBlocks doubles.
  partials_ = weights_.Alloc<float>(cuda::PartialsFloats(std::max(cfg.d, 2 * cfg.head_dim)));
  const int per_layer = RouterStatsSlots{cfg.experts}.size();
  MOE_CUDA_CHECK(cudaMallocHost(&host_stats_, sizeof(double) * (1 + cfg.layers * per_layer)));

  if (dcomm_ != nullptr) {
    exchange_ = std::make_unique<ExpertExchange>(comm_, dcomm_.get(), shape_);
    reducer_ = std::make_unique<DenseGradReducer>(dcomm_.get(), layout_, cfg.layers, grads_->fp32(), stream_);
  }
  moe_scratch_ = std::make_unique<MoeScratch>(shape_, bf16_, exchange_ != nullptr, cfg.shared_experts, cfg.shared_ffn,
                                              &memory_);
  for (int l = 0; l < cfg.layers; ++l) {
    moe_.push_back(
        std::make_unique<CudaMoeLayer>(cfg, shape_, &ctx_, moe_scratch_.get(), exchange_.get(), &memory_,
                                       static_cast<int>(moe_.size())));
    if (cfg.recompute && l > 0) moe_[l]->ShareSaved(moe_[0].get());
  }
  ZeroGrads();
}

CudaModel::~CudaModel() {
  cudaStreamSynchronize(stream_);
  reducer_.reset();
  cudaFreeHost(host_stats_);
  moe_.clear();
  moe_scratch_.reset();
  optimizer_.reset();
  params_.reset();
  blas_.reset();
  cudaStreamDestroy(stream_);
}

void CudaModel::InitParams(uint64_t seed) {
  // The host init of ParamLayout, then one copy: the same weights as the CPU model (which
  // rounds them to the nearest bf16 values for bf16 master weights).
  std::vector<float> host(layout_.total(), 0.f);
  layout_.Initialize(host.data(), seed);
  if (cfg_.bf16_master) kernels::RoundToBf16Values(host.data(), static_cast<int64_t>(host.size()));
  params_->Upload(host, stream_);
  optimizer_->Zero();
}

void CudaModel::ZeroGrads() {
  grads_->Zero(stream_);
  comm_at_step_start_ = CommClocks();
}

CommSeconds CudaModel::CommClocks() const {
  CommSeconds c{comm_->all_to_all_seconds(), comm_->all_reduce_seconds()};
  if (dcomm_ != nullptr) {
    c.all_to_all += dcomm_->all_to_all_seconds();
    c.all_reduce += dcomm_->all_reduce_seconds();
  }
  return c;
}

void CudaModel::EnsureActivations(int b) {
  if (b <= b_cap_) return;
  MOE_CUDA_CHECK(cudaStreamSynchronize(stream_));
  acts_.FreeAll();
  b_cap_ = b;
  const int64_t n = int64_t{b} * cfg_.seq_len, D = cfg_.d, C3 = cfg_.qkv_dim(), V = cfg_.vocab, H = cfg_.heads;
  BufferTable t;
  blocks_.assign(cfg_.layers, BlockActs{});
  const bool qkv_in_scratch = bf16_ && CudaAttentionOnTensorCores(cfg_.head_dim);
  for (int l = 0; l < cfg_.layers; ++l) t.Add(&blocks_[l].x_in, n * D);
  for (int l = 0; l < cfg_.layers; ++l) {
    BlockActs& a = blocks_[l];
    t.Add(&a.attn_in, bf16_ ? 0 : n * D);
    t.Add(&a.attn_in16, bf16_ ? n * D : 0);
    t.Add(&a.attn_rstd, n);
    t.Add(&a.qkv, qkv_in_scratch ? 0 : n * C3);
    t.Add(&a.qkv16, bf16_ ? n * C3 : 0);
    t.Add(&a.attn_y, n * D);
    t.Add(&a.attn_lse, n * H);
    t.Add(&a.x_mid, n * D);
    t.Add(&a.moe_in, n * D);
    t.Add(&a.moe_rstd, n);
    const int64_t qk_heads = cfg_.qk_norm ? cfg_.heads + cfg_.kv_heads : 0;
    t.Add(&a.qk_raw, n * qk_heads * cfg_.head_dim);
    t.Add(&a.qk_rstd, n * qk_heads);
    t.Add(&a.gate, cfg_.attn_gate ? n * D : 0);
    moe_[l]->AddTo(&t, n);  // recompute full: the first layer's set only
    if (cfg_.recompute) break;
  }
  for (int l = 1; l < cfg_.layers && cfg_.recompute; ++l) moe_[l]->AddTo(&t, n);
  t.Add(&tmp_, n * D);
  t.Add(&x_final_, n * D);
  t.Add(&final_out_, bf16_ ? 0 : n * D);
  t.Add(&final_out16_, bf16_ ? n * D : 0);
  t.Add(&final_rstd_, n);
  head_rows_ = n;
  if (bf16_) {
    head_rows_ = cfg_.head_chunk_rows > 0 ? std::min<int64_t>(n, cfg_.head_chunk_rows) : CudaHeadChunkRows(n, V);
  }
  t.Add(&logits_, head_rows_ * V);
  t.Add(&dlogits16_, bf16_ ? n * V : 0);
  t.Add(&ce_lse_, n);
  t.Add(&ce_losses_, n);
  t.Add(&idx_, n);
  t.Add(&targets_, n);
  t.Add(&run_order_, n);
  t.Add(&run_starts_, n + 1);
  t.Add(&run_ids_, n);
  t.Add(&ce_sum_, 1);
  t.Add(&dx_, n * D);
  t.Add(&dtmp_, n * D);
  t.Add(&dnorm_, n * D);
  t.Add(&dqkv_, n * C3);
  t.Add(&att_scratch_, n * H);
  t.Add(&gated_, cfg_.attn_gate && !bf16_ ? n * D : 0);
  t.Add(&dgate_, cfg_.attn_gate ? n * D : 0);
  const int64_t widest = std::max(D, C3);  // the head's dlogits have their own buffer
  t.Add(&ctx_.s16a, bf16_ ? n * widest : 0);
  t.Add(&ctx_.s16b, bf16_ ? n * D : 0);
  ctx_.s16b_size = bf16_ ? n * D : 0;
  moe_scratch_->AddTo(&t, n);
  acts_.Allocate(t);
  for (int l = 1; l < cfg_.layers && cfg_.recompute; ++l) {  // every block points at block 0's set
    float* x_in = blocks_[l].x_in;
    blocks_[l] = blocks_[0];
    blocks_[l].x_in = x_in;
  }
  if (qkv_in_scratch) {
    // The tensor-core path needs 16-byte aligned rows (the table aligns every buffer to 256).
    if (reinterpret_cast<uintptr_t>(dqkv_) % 16 != 0 || reinterpret_cast<uintptr_t>(ctx_.s16b) % 16 != 0) {
      throw std::logic_error("CudaModel: attention buffers not 16-byte aligned");
    }
    for (BlockActs& a : blocks_) a.qkv = dqkv_;
  }
}

void CudaModel::BlockForward(int l, float* out, bool rerun) {
  const int b = b_, T = cfg_.seq_len, D = cfg_.d, H = cfg_.heads, Hkv = cfg_.kv_heads;
  const int hd = cfg_.head_dim, C3 = cfg_.qkv_dim();
  const int n = b * T;
  const int64_t nd = int64_t{n} * D;
  const BatchContext& ctx = ctx_batch_;
  const float p_drop = ctx.train ? cfg_.dropout : 0.f;
  const uint64_t offset = static_cast<uint64_t>(ctx.first_token) * D;
  ModelTensors w = params_->Bind();
  BlockActs& a = blocks_[l];
  const BlockTensors& bw = w.blocks[l];
  // Attention: x_mid = x_in + dropout(attn(RMSNorm(x_in)) @ wo^T)
  if (bf16_) {  // attn_in in bf16 alone, for qkv's product and the gate's
    cuda::RmsNormForwardBf16(a.attn_in16, a.attn_rstd, a.x_in, bw.attn_norm, n, D, stream_);
    ctx_.Linear16(a.qkv, a.attn_in16, bw.wqkv, n, D, C3);
    if (cfg_.attn_gate) ctx_.Linear16(a.gate, a.attn_in16, bw.wg, n, D, D);
  } else {
    cuda::RmsNormForward(a.attn_in, a.attn_rstd, a.x_in, bw.attn_norm, n, D, stream_);
    ctx_.Linear(a.qkv, a.attn_in, bw.wqkv, n, D, C3, false);
    if (cfg_.attn_gate) ctx_.Linear(a.gate, a.attn_in, bw.wg, n, D, D, false);
  }
  if (cfg_.qk_norm) cuda::QkNormForward(a.qkv, a.qk_rstd, a.qk_raw, bw.q_norm, bw.k_norm, n, H, Hkv, hd, stream_);
  cuda::RopeForward(a.qkv, rope_cos_, rope_sin_, b, T, H, Hkv, hd, stream_);
  if (bf16_) {
    // Tensor cores, reading q, k, v in bf16 (kept for the backward).
    cuda::CastToBf16(a.qkv16, a.qkv, int64_t{n} * C3, stream_);
    cuda::AttentionForwardBf16(a.attn_y, a.attn_lse, a.qkv, a.qkv16, b, T, H, Hkv, hd, AttnDropout(ctx, l), stream_);
  } else {
    cuda::AttentionForward(a.attn_y, a.attn_lse, a.qkv, b, T, H, Hkv, hd, AttnDropout(ctx, l), stream_);
  }
  if (!cfg_.attn_gate) {
    ctx_.Linear(tmp_, a.attn_y, bw.wo, n, D, D, false);
  } else if (bf16_) {  // wo reads y * sigmoid(gate logits), written in bf16; the backward recomputes it
    cuda::AttentionGateForwardBf16(ctx_.s16a, a.gate, a.attn_y, nd, stream_);
    ctx_.Linear16(tmp_, ctx_.s16a, bw.wo, n, D, D);
  } else {
    cuda::AttentionGateForward(gated_, a.gate, a.attn_y, nd, stream_);
    ctx_.Linear(tmp_, gated_, bw.wo, n, D, D, false);
  }
  cuda::DropoutForward(tmp_, tmp_, nd, p_drop, DropoutSiteSeed(ctx.dropout_seed, 1 + 2 * l), offset, stream_);
  cuda::AddOut(a.x_mid, a.x_in, tmp_, nd, stream_);
  // MoE: the next block's x_in (or x_final_) = x_mid + dropout(MoE(RMSNorm(x_mid)))
  cuda::RmsNormForward(a.moe_in, a.moe_rstd, a.x_mid, bw.moe_norm, n, D, stream_);
  moe_[l]->Forward(a.moe_in, bw, n, ctx, tmp_, rerun);
  if (rerun) return;  // the backward reads the saved activations, not the block's output
  cuda::DropoutForward(tmp_, tmp_, nd, p_drop, DropoutSiteSeed(ctx.dropout_seed, 2 + 2 * l), offset, stream_);
  cuda::AddOut(out, a.x_mid, tmp_, nd, stream_);
}

ForwardResult CudaModel::Forward(const int32_t* idx, const int32_t* targets, int b, const BatchContext& ctx) {
  EnsureActivations(b);
  const int T = cfg_.seq_len, D = cfg_.d, V = cfg_.vocab;
  const int n = b * T;
  const int64_t nd = int64_t{n} * D;
  const float p_drop = ctx.train ? cfg_.dropout : 0.f;
  const uint64_t offset = static_cast<uint64_t>(ctx.first_token) * D;
  ModelTensors w = params_->Bind();
  ctx_batch_ = ctx;
  b_ = b;
  MOE_CUDA_CHECK(cudaMemcpyAsync(idx_, idx, sizeof(int32_t) * n, cudaMemcpyHostToDevice, stream_));
  MOE_CUDA_CHECK(cudaMemcpyAsync(targets_, targets, sizeof(int32_t) * n, cudaMemcpyHostToDevice, stream_));
  if (ctx.train) {
    token_runs_ = cuda::GroupTokensById(idx, n, V);
    const cuda::TokenRuns& r = token_runs_;
    MOE_CUDA_CHECK(cudaMemcpyAsync(run_order_, r.order.data(), sizeof(int32_t) * n, cudaMemcpyHostToDevice, stream_));
    MOE_CUDA_CHECK(cudaMemcpyAsync(run_starts_, r.starts.data(), sizeof(int32_t) * r.starts.size(),
                                   cudaMemcpyHostToDevice, stream_));
    MOE_CUDA_CHECK(
        cudaMemcpyAsync(run_ids_, r.ids.data(), sizeof(int32_t) * r.ids.size(), cudaMemcpyHostToDevice, stream_));
  }

  // The residual stream lives in the buffers the backward reads: block l's input x_in, its
  // middle x_mid (after attention), and x_final_ after the last block.
  float* x = cfg_.layers > 0 ? blocks_[0].x_in : x_final_;
  if (params_->bf16_only()) {
    cuda::EmbeddingForwardBf16(x, idx_, ctx_.Bf16Of(w.wte), n, D, stream_);
  } else {
    cuda::EmbeddingForward(x, idx_, w.wte, n, D, stream_);
  }
  cuda::DropoutForward(x, x, nd, p_drop, DropoutSiteSeed(ctx.dropout_seed, 0), offset, stream_);
  for (int l = 0; l < cfg_.layers; ++l) {
    BlockForward(l, l + 1 < cfg_.layers ? blocks_[l + 1].x_in : x_final_, /*rerun=*/false);
  }
  if (bf16_) {
    cuda::RmsNormForwardBf16(final_out16_, final_rstd_, x_final_, w.final_norm, n, D, stream_);
  } else {
    cuda::RmsNormForward(final_out_, final_rstd_, x_final_, w.final_norm, n, D, stream_);
  }
  // The head, head_rows_ rows at a time: logits, their cross-entropy and (bf16 products) the
  // bf16 dlogits = loss_scale * (softmax - onehot) of the backward, so that only one chunk of
  // fp32 logits is ever alive. (An evaluation's dlogits go unread.)
  for (int64_t r0 = 0; r0 < n; r0 += head_rows_) {
    const int rows = static_cast<int>(std::min<int64_t>(head_rows_, n - r0));
    if (bf16_) {
      ctx_.Linear16(logits_, final_out16_ + r0 * D, w.lm_head, rows, D, V);
    } else {
      ctx_.Linear(logits_, final_out_ + r0 * D, w.lm_head, rows, D, V, false);
    }
    if (bf16_) {
      cuda::CrossEntropyForwardBackwardBf16(ce_losses_ + r0, ce_lse_ + r0, dlogits16_ + r0 * V, logits_,
                                            targets_ + r0, ctx.loss_scale, rows, V, stream_);
    } else {
      cuda::CrossEntropyForward(ce_losses_ + r0, ce_lse_ + r0, logits_, targets_ + r0, rows, V, stream_);
    }
  }
  MOE_CUDA_CHECK(cudaMemsetAsync(ce_sum_, 0, sizeof(double), stream_));
  cuda::Sum(ce_sum_, ce_losses_, n, reinterpret_cast<double*>(partials_), stream_);

  // The one device-to-host copy of the forward pass: CE sum and every layer's router stats.
  const int per_layer = RouterStatsSlots{cfg_.experts}.size();
  MOE_CUDA_CHECK(cudaMemcpyAsync(host_stats_, ce_sum_, sizeof(double), cudaMemcpyDeviceToHost, stream_));
  if (!shape_.dense) {
    for (int l = 0; l < cfg_.layers; ++l) {
      MOE_CUDA_CHECK(cudaMemcpyAsync(host_stats_ + 1 + l * per_layer, moe_[l]->stats(), sizeof(double) * per_layer,
                                     cudaMemcpyDeviceToHost, stream_));
    }
  }
  MOE_CUDA_CHECK(cudaStreamSynchronize(stream_));

  ForwardResult result;
  result.ce_sum = host_stats_[0];
  for (int l = 0; l < cfg_.layers; ++l) {
    MoeLayerForwardStats s;
    if (!shape_.dense) {
      s = ReduceRouterStats(host_stats_ + 1 + l * per_layer, shape_, ctx.global_tokens, cfg_.aux_coef, cfg_.z_coef);
    }
    result.aux_loss += s.aux_loss;
    result.z_loss += s.z_loss;
    result.layers.push_back(std::move(s));
  }
  return result;
}

void CudaModel::Backward() {
  const int b = b_, T = cfg_.seq_len, D = cfg_.d, V = cfg_.vocab, H = cfg_.heads;
  const int Hkv = cfg_.kv_heads, hd = cfg_.head_dim, C3 = cfg_.qkv_dim();
  const int n = b * T;
  const int64_t nd = int64_t{n} * D;
  const BatchContext& ctx = ctx_batch_;
  const float p_drop = ctx.train ? cfg_.dropout : 0.f;
  const uint64_t offset = static_cast<uint64_t>(ctx.first_token) * D;
  ModelTensors w = params_->Bind();
  ModelTensors g = grads_->Bind();
  auto zero = [&](float* p, int64_t count) { MOE_CUDA_CHECK(cudaMemsetAsync(p, 0, sizeof(float) * count, stream_)); };
  // The gradient through dropout site `site` of dx_: dx_ itself when dropout is off.
  auto through_dropout = [&](int site) -> const float* {
    if (p_drop == 0.f) return dx_;
    zero(dtmp_, nd);
    cuda::DropoutBackward(dtmp_, dx_, nd, p_drop, DropoutSiteSeed(ctx.dropout_seed, site), offset, stream_);
    return dtmp_;
  };
  // Several GPUs: the dense gradients are summed bucket by bucket during the backward of the
  // step's last micro-batch (earlier ones only accumulate); ReduceGrads then waits.
  const bool reduce_now = reducer_ != nullptr && ctx.last_micro_step && cfg_.layers > 0;

  // Head: dlogits in place in fp32, or the bf16 ones the forward wrote (bf16 products).
  const bf16* dlogits16 = nullptr;
  if (bf16_) {
    dlogits16 = dlogits16_;
  } else {
    cuda::CrossEntropyBackward(logits_, logits_, ce_lse_, targets_, ctx.loss_scale, n, V, stream_);
  }
  zero(dx_, nd);
  ctx_.LinearBackward(dnorm_, g.lm_head, logits_, dlogits16, final_out_, w.lm_head, n, D, V, false,
                      /*add_to_dinp=*/false, final_out16_);
  cuda::RmsNormBackward(dx_, g.final_norm, dnorm_, x_final_, w.final_norm, final_rstd_, n, D, partials_, stream_);

  for (int l = cfg_.layers - 1; l >= 0; --l) {
    if (cfg_.recompute) BlockForward(l, nullptr, /*rerun=*/true);  // refills the shared set
    BlockActs& a = blocks_[l];
    const BlockTensors& bw = w.blocks[l];
    const BlockTensors& bg = g.blocks[l];
    const float* dmoe = through_dropout(2 + 2 * l);
    zero(dnorm_, nd);
    moe_[l]->Backward(dmoe, a.moe_in, bw, bg, n, ctx.loss_scale, dnorm_);
    cuda::RmsNormBackward(dx_, bg.moe_norm, dnorm_, a.x_mid, bw.moe_norm, a.moe_rstd, n, D, partials_, stream_);

    const float* dattn_out = through_dropout(1 + 2 * l);
    float* dattn_y = dnorm_;
    if (cfg_.attn_gate) {  // wo's input gradient splits into y's and the gate logits'
      // (dattn_out may be dtmp_: the gated output's gradient goes to dgate_, turned in place
      // into the gate logits' gradient.) bf16: the gated output recomputed in bf16 in s16b.
      if (bf16_) {
        cuda::AttentionGateApplyBf16(ctx_.s16b, a.attn_y, a.gate, nd, stream_);
        ctx_.LinearBackward(dgate_, bg.wo, dattn_out, nullptr, nullptr, bw.wo, n, D, D, false, /*add_to_dinp=*/false,
                            ctx_.s16b);
      } else {
        cuda::AttentionGateApply(gated_, a.attn_y, a.gate, nd, stream_);
        ctx_.LinearBackward(dgate_, bg.wo, dattn_out, nullptr, gated_, bw.wo, n, D, D, false, /*add_to_dinp=*/false);
      }
      cuda::AttentionGateBackward(dattn_y, dgate_, dgate_, a.attn_y, a.gate, nd, stream_, /*accumulate=*/false);
    } else {
      ctx_.LinearBackward(dattn_y, bg.wo, dattn_out, nullptr, a.attn_y, bw.wo, n, D, D, false, /*add_to_dinp=*/false);
    }
    zero(dqkv_, int64_t{n} * C3);
    if (bf16_) {
      cuda::CastToBf16(ctx_.s16b, dattn_y, nd, stream_);  // s16b is free until the next product
      cuda::AttentionBackwardBf16(dqkv_, dattn_y, ctx_.s16b, a.attn_y, a.attn_lse, a.qkv, a.qkv16, b, T, H, Hkv, hd,
                                  att_scratch_, AttnDropout(ctx, l), stream_);
    } else {
      cuda::AttentionBackward(dqkv_, dattn_y, a.attn_y, a.attn_lse, a.qkv, b, T, H, Hkv, hd, att_scratch_,
                              AttnDropout(ctx, l), stream_);
    }
    cuda::RopeBackward(dqkv_, rope_cos_, rope_sin_, b, T, H, Hkv, hd, stream_);
    if (cfg_.qk_norm) {
      cuda::QkNormBackward(dqkv_, bg.q_norm, bg.k_norm, a.qk_raw, a.qk_rstd, bw.q_norm, bw.k_norm, n, H, Hkv, hd,
                           partials_, stream_);
    }
    // bf16: both weight gradients read the forward's bf16 attn_in.
    ctx_.LinearBackward(dtmp_, bg.wqkv, dqkv_, nullptr, a.attn_in, bw.wqkv, n, D, C3, false, /*add_to_dinp=*/false,
                        a.attn_in16);
    if (cfg_.attn_gate) {
      ctx_.LinearBackward(dtmp_, bg.wg, dgate_, nullptr, a.attn_in, bw.wg, n, D, D, false, /*add_to_dinp=*/true,
                          a.attn_in16);
    }
    cuda::RmsNormBackward(dx_, bg.attn_norm, dtmp_, a.x_in, bw.attn_norm, a.attn_rstd, n, D, partials_, stream_);
    // Block l's replicated gradients are final (on the last micro-step): sum them over GPUs
    // while the blocks below run their backward.
    if (reduce_now) reducer_->BlockDone(l);
  }
  cuda::EmbeddingBackward(g.wte, through_dropout(0), run_order_, run_starts_, run_ids_, token_runs_.runs(), D,
                          stream_);
  if (reduce_now) reducer_->BackwardDone();
  // Synchronous at the end so that the trainer's forward / backward / optimizer times are real.
  MOE_CUDA_CHECK(cudaStreamSynchronize(stream_));
}

CommSeconds CudaModel::ReduceGrads() {
  // One GPU: the sum over ranks is the identity.
  if (reducer_ != nullptr) reducer_->Finish();
  // bf16 values in fp32 storage (train.master_weights bf16 with fp32 products or several GPUs):
  // the step's summed gradients rounded once, as the CPU model does (queued on stream_, before
  // whatever reads them next).
  grads_->RoundToBf16Values(stream_);
  const CommSeconds now = CommClocks();
  return {now.all_to_all - comm_at_step_start_.all_to_all, now.all_reduce - comm_at_step_start_.all_reduce};
}

void CudaModel::GradSquaredNorms(double* dense_sq, double* expert_sq) {
  MOE_CUDA_CHECK(cudaMemsetAsync(norms_, 0, 2 * sizeof(double), stream_));
  grads_->SquaredNorms(norms_, reinterpret_cast<double*>(partials_), stream_);
  MOE_CUDA_CHECK(cudaMemcpyAsync(host_stats_, norms_, 2 * sizeof(double), cudaMemcpyDeviceToHost, stream_));
  MOE_CUDA_CHECK(cudaStreamSynchronize(stream_));
  *dense_sq = host_stats_[0];
  *expert_sq = host_stats_[1];
}

void CudaModel::OptimizerStep(int64_t step, double lr, double muon_lr, double weight_decay, float clip_scale) {
  optimizer_->Step(*params_, *grads_, blas_.get(), step, lr, muon_lr, weight_decay, clip_scale);
}

std::vector<float> CudaModel::RouterBiases() {
  if (!cfg_.balances_by_bias()) return {};
  std::vector<float> out;
  for (const auto& layer : moe_) out.insert(out.end(), layer->router_bias().begin(), layer->router_bias().end());
  return out;
}

void CudaModel::SetRouterBiases(const std::vector<float>& biases) {
  if (!cfg_.balances_by_bias()) return;
  const size_t E = static_cast<size_t>(cfg_.experts);
  if (biases.size() != E * moe_.size()) {
    throw std::invalid_argument(absl::StrCat("SetRouterBiases: ", biases.size(), " values for ", moe_.size(),
                                             " layers of ", E, " experts"));
  }
  for (size_t l = 0; l < moe_.size(); ++l) moe_[l]->SetRouterBias(biases.data() + l * E);
}

void CudaModel::CopyToHost(ParamSet set, std::vector<float>* out) {
  MOE_CUDA_CHECK(cudaStreamSynchronize(stream_));
  switch (set) {
    case ParamSet::kParams: params_->Download(out, stream_); return;
    case ParamSet::kAdamM: optimizer_->CopyToHost(/*is_m=*/true, out); return;
    case ParamSet::kAdamV: optimizer_->CopyToHost(/*is_m=*/false, out); return;
    case ParamSet::kGrads: break;
  }
  grads_->Download(out, stream_);
}

void CudaModel::CopyFromHost(ParamSet set, const std::vector<float>& in) {
  MOE_CUDA_CHECK(cudaStreamSynchronize(stream_));
  switch (set) {
    case ParamSet::kParams: {
      // On stream_, so that the bf16 copy made from them reads the new values (a plain cudaMemcpy
      // from pageable memory may return before its data lands, and stream_ does not wait for it).
      // A full set (a resume) goes up as it is, with no second host copy.
      if (static_cast<int64_t>(in.size()) >= layout_.total()) {
        params_->Upload(in, stream_);
        return;
      }
      std::vector<float> full(in.begin(), in.end()), now;  // a prefix: the tail keeps its values
      params_->Download(&now, stream_);
      full.insert(full.end(), now.begin() + full.size(), now.end());
      params_->Upload(full, stream_);
      return;
    }
    case ParamSet::kAdamM: optimizer_->CopyFromHost(/*is_m=*/true, in); return;
    case ParamSet::kAdamV: optimizer_->CopyFromHost(/*is_m=*/false, in); return;
    case ParamSet::kGrads: break;
  }
  grads_->Upload(in, stream_);
}

const std::vector<float>& CudaModel::params() {
  CopyToHost(ParamSet::kParams, &host_params_);
  return host_params_;
}

}  // namespace

absl::StatusOr<std::unique_ptr<TrainModel>> MakeCudaModel(const ModelConfig& cfg, Communicator* comm, bool use_bf16) {
  const int W = comm->world_size();
  // Checks of the job alone first: every rank takes the same branch, so none is left waiting
  // in the collective setup below.
  // The job-spec checks refuse these at validate and submit; a spec that skipped them stops here.
  if (!CudaRunsHeadSize(cfg.head_dim)) {
    return absl::UnimplementedError(absl::StrCat("device cuda: head size d_model / n_heads = ", cfg.head_dim,
                                                 "; it runs head sizes ", CudaHeadSizesText()));
  }
  if (cfg.experts > kCudaMaxExperts || cfg.top_k > kCudaMaxTopK) {
    return absl::UnimplementedError(absl::StrCat("device cuda: at most ", kCudaMaxExperts, " experts and top_k ",
                                                 kCudaMaxTopK, ", got ", cfg.experts, " and ", cfg.top_k));
  }
  if (W > 1 && !use_bf16) {
    return absl::UnimplementedError(absl::StrCat(
        "device cuda on several GPUs (ranks: ", W,
        ") runs in bf16 only; set train.precision: bf16, or ranks: 1 for fp32"));
  }
  std::unique_ptr<DeviceCommunicator> dcomm;
  if (W > 1) {
    // Picks this rank's GPU and connects the GPUs (collective; errors agree on every rank).
    absl::StatusOr<std::unique_ptr<DeviceCommunicator>> made = DeviceCommunicator::Create(comm, CommOptions{});
    if (!made.ok()) return made.status();
    dcomm = std::move(*made);
  } else if (!cuda::HaveGpu()) {
    return absl::FailedPreconditionError("resources.device is cuda but no CUDA GPU is visible to this process");
  }
  return std::unique_ptr<TrainModel>(std::make_unique<CudaModel>(cfg, comm, std::move(dcomm), use_bf16));
}

int64_t CudaModelDeviceBytes(const TrainModel& model) {
  const auto* m = dynamic_cast<const CudaModel*>(&model);
  return m != nullptr ? m->device_bytes() : 0;
}

#endif  // MOE_WITH_CUDA

}  // namespace moe
