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
#include "worker/model/cuda/cuda_model_impl.h"
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

using cuda::bf16;

// The class: cuda_model_impl.h; its forward and backward passes: cuda_model_step.cc.

CudaModel::CudaModel(const ModelConfig& cfg, Communicator* comm, std::unique_ptr<DeviceCommunicator> dcomm,
                     bool use_bf16)
    : cfg_(cfg),
      comm_(comm),
      layout_(cfg, comm->rank(), comm->world_size()),
      shape_(MoeShape::Of(cfg, comm->world_size())),
      bf16_(use_bf16),
      dcomm_(std::move(dcomm)) {
  stream_ = cuda::NewStream(cuda::StreamPriority::kCompute);
  blas_ = std::make_unique<cuda::Blas>();
  peak_flops_ = cuda::PeakDenseFlops(use_bf16);
  params_ = std::make_unique<DeviceWeights>(layout_, bf16_, cfg.bf16_master, &weights_);
  // bf16 gradients with bf16 master weights and products on one GPU (several GPUs sum the
  // replicated ones in fp32: bf16 values in fp32 storage there).
  const bool bf16_grads = cfg.bf16_master && bf16_ && comm->world_size() == 1;
  grads_ = std::make_unique<DeviceGrads>(layout_, bf16_grads, cfg.bf16_master, &weights_);
  optimizer_ = std::make_unique<DeviceOptimizer>(cfg, layout_, bf16_, &weights_, stream_);
  ctx_.stream = stream_;
  ctx_.dcomm = dcomm_.get();
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
  optimizer_->Join(stream_);
  params_->Upload(host, stream_);
  optimizer_->Zero();
}

void CudaModel::ZeroGrads() {
  // The bf16 experts' weight-gradient products write their gradients on the step's first
  // Backward (beta 0): the expert shard, most of an MoE model's gradients, is not cleared first.
  expert_grads_unwritten_ = bf16_ && cfg_.is_moe() && layout_.total() > layout_.dense_size();
  // After an update still in flight (which reads them), on its stream.
  optimizer_->AfterUpdate(stream_, [&](cudaStream_t s) { grads_->Zero(s, /*experts=*/!expert_grads_unwritten_); });
  comm_at_step_start_ = CommClocks();
}

void CudaModel::WriteUnwrittenGrads() {
  if (!expert_grads_unwritten_) return;
  grads_->ZeroExperts(stream_);
  expert_grads_unwritten_ = false;
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
  ctx_.Sync("growing the activations");
  acts_.FreeAll();
  b_cap_ = b;
  const int64_t n = int64_t{b} * cfg_.seq_len, D = cfg_.d, C3 = cfg_.qkv_dim(), V = cfg_.vocab, H = cfg_.heads;
  BufferTable t;
  blocks_.assign(cfg_.layers, BlockActs{});
  const bool qkv_in_scratch = bf16_ && CudaAttentionOnTensorCores(cfg_.head_dim);
  for (int l = 0; l < cfg_.layers; ++l) t.Add(&blocks_[l].x_in, n * D);
  for (int l = 0; l < cfg_.layers; ++l) {
    BlockActs& a = blocks_[l];
    t.Add(&a.attn_rstd, n);
    t.Add(&a.qkv, qkv_in_scratch ? 0 : n * C3);
    t.Add(&a.qkv16, bf16_ ? n * C3 : 0);
    t.Add(&a.attn_y, n * D);
    t.Add(&a.attn_lse, n * H);
    t.Add(&a.x_mid, n * D);
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
  t.Add(&attn_in_, bf16_ ? 0 : n * D);
  t.Add(&attn_in16_, bf16_ ? n * D : 0);
  t.Add(&moe_in_, n * D);
  t.Add(&moe_in16_, MoeInputInBf16() ? n * D : 0);
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
    // (s16a: the backward's bf16 qkv gradient, written by the attention kernels themselves.)
    if (reinterpret_cast<uintptr_t>(dqkv_) % 16 != 0 || reinterpret_cast<uintptr_t>(ctx_.s16b) % 16 != 0 ||
        reinterpret_cast<uintptr_t>(ctx_.s16a) % 16 != 0) {
      throw std::logic_error("CudaModel: attention buffers not 16-byte aligned");
    }
    for (BlockActs& a : blocks_) a.qkv = dqkv_;
  }
}

CommSeconds CudaModel::ReduceGrads() {
  optimizer_->Join(stream_);  // (no Forward since the last step: the gradients' zeroing)
  WriteUnwrittenGrads();  // (no Backward since ZeroGrads)
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
  WriteUnwrittenGrads();
  MOE_CUDA_CHECK(cudaMemsetAsync(norms_, 0, 2 * sizeof(double), stream_));
  grads_->SquaredNorms(norms_, reinterpret_cast<double*>(partials_), stream_);
  MOE_CUDA_CHECK(cudaMemcpyAsync(host_stats_, norms_, 2 * sizeof(double), cudaMemcpyDeviceToHost, stream_));
  ctx_.Sync("the gradient norms");
  *dense_sq = host_stats_[0];
  *expert_sq = host_stats_[1];
}

void CudaModel::OptimizerStep(int64_t step, double lr, double muon_lr, double weight_decay, float clip_scale) {
  WriteUnwrittenGrads();
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
  optimizer_->Join(stream_);
  ctx_.Sync("copying parameters between host and GPU");
  switch (set) {
    case ParamSet::kParams: params_->Download(out, stream_); return;
    case ParamSet::kAdamM: optimizer_->CopyToHost(/*is_m=*/true, out); return;
    case ParamSet::kAdamV: optimizer_->CopyToHost(/*is_m=*/false, out); return;
    case ParamSet::kGrads: break;
  }
  WriteUnwrittenGrads();
  grads_->Download(out, stream_);
}

void CudaModel::CopyFromHost(ParamSet set, const std::vector<float>& in) {
  optimizer_->Join(stream_);
  ctx_.Sync("copying parameters between host and GPU");
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
  WriteUnwrittenGrads();  // a short input keeps the rest
  grads_->Upload(in, stream_);
}

const std::vector<float>& CudaModel::params() {
  CopyToHost(ParamSet::kParams, &host_params_);
  return host_params_;
}


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
    CommOptions device_opts;
    device_opts.timeout_seconds = comm->timeout_seconds();  // the job's --comm-timeout, as MPI's
    absl::StatusOr<std::unique_ptr<DeviceCommunicator>> made = DeviceCommunicator::Create(comm, device_opts);
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
