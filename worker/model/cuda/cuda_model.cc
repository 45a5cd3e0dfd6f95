#include "worker/model/cuda/cuda_model.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <memory>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"

#ifdef MOE_WITH_CUDA
#include "kernels/cuda/attention.h"
#include "kernels/cuda/common.h"
#include "kernels/cuda/matmul.h"
#include "kernels/cuda/moe.h"
#include "kernels/cuda/nn.h"
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

// A device allocation of `count` T, freed with the model.
class DeviceArena {
 public:
  ~DeviceArena() {
    for (void* p : ptrs_) cudaFree(p);
  }
  template <typename T>
  T* Alloc(int64_t count) {
    void* p = nullptr;
    if (count > 0) {
      MOE_CUDA_CHECK(cudaMalloc(&p, sizeof(T) * count));
      ptrs_.push_back(p);
      bytes_ += static_cast<int64_t>(sizeof(T)) * count;
    }
    return static_cast<T*>(p);
  }
  void FreeAll() {
    for (void* p : ptrs_) MOE_CUDA_CHECK(cudaFree(p));
    ptrs_.clear();
    bytes_ = 0;
  }
  int64_t bytes() const { return bytes_; }

 private:
  std::vector<void*> ptrs_;
  int64_t bytes_ = 0;
};

// One MoE layer's route between GPUs (MODEL.md "Parallel layout"), fixed by the forward's counts
// and reused by its backward. Rows leave in plan order (grouped by global expert, so by owner
// rank), arrive in wire order ([from rank 0: local experts 0, 1, ...][from rank 1: ...]) and
// are read by the experts in expert order ([local expert 0: from rank 0, 1, ...][...]).
struct Route {
  std::vector<int64_t> send, recv;    // (W) elements (rows * D) to / from each peer
  std::vector<int32_t> local_counts;  // (E_local) rows per local expert, over all peers
  int64_t rows = 0;                   // rows this rank's experts take
  cuda::ExpertLayout layout;          // the experts' layout of their rows (kernels/cuda/moe.h)
  // Wire order to the experts' layout, and compact expert order back to wire order; no blocks
  // when E_local is 1.
  cuda::RowBlocks to_expert, to_wire;
};

// bf16 expert rows kept from the forward for the backward: input x (rows, D) in expert order
// and g, u, h (rows, F), in the experts' layout of the fast path (kernels/cuda/moe.h: padded
// per expert, or compact). Reallocated (larger) when a step routes more rows here than fit.
struct ExpertRowBuffers {
  int64_t capacity = 0;  // rows
  bf16 *x = nullptr, *g = nullptr, *u = nullptr, *h = nullptr;
  std::shared_ptr<DeviceArena> mem;
};

class CudaModel final : public TrainModel {
 public:
  // dcomm: the NCCL communicator when the job has several ranks (null for one).
  CudaModel(const ModelConfig& cfg, Communicator* comm, std::unique_ptr<DeviceCommunicator> dcomm,
            bool use_bf16);
  ~CudaModel() override;

  const ModelConfig& config() const override { return cfg_; }
  const ParamLayout& layout() const override { return layout_; }
  void InitParams(uint64_t seed) override;
  void ZeroGrads() override;
  ForwardResult Forward(const int32_t* idx, const int32_t* targets, int b,
                        const BatchContext& ctx) override;
  void Backward() override;
  CommSeconds ReduceGrads() override;
  void GradSquaredNorms(double* dense_sq, double* expert_sq) override;
  void AdamWStep(int64_t step, double lr, double weight_decay, float clip_scale) override;
  void CopyToHost(ParamSet set, std::vector<float>* out) override;
  void CopyFromHost(ParamSet set, const std::vector<float>& in) override;
  const std::vector<float>& params() override;

  double PeakFlopsPerSecond() const override { return peak_flops_; }
  int64_t PeakMemoryBytes() const override { return peak_bytes_; }

  int64_t device_bytes() const {
    int64_t bytes = weights_.bytes() + acts_.bytes() + scratch16_.bytes();
    for (const BlockActs& a : blocks_) bytes += a.saved16.mem != nullptr ? a.saved16.mem->bytes() : 0;
    return bytes;
  }

 private:
  // Saved by Forward for Backward, per block. n = b T tokens, r = n k expert rows (n when dense).
  struct BlockActs {
    float *x_in, *attn_in, *attn_rstd, *qkv, *attn_y, *attn_lse;  // (n,D) (n,D) (n) (n,C3) (n,D) (b,H,T)
    bf16* qkv16;                                                   // (n,C3) bf16 mode: qkv in bf16
    float *x_mid, *moe_in, *moe_rstd;                              // (n,D) (n,D) (n)
    float *router_logits, *probs, *router_lse, *weights;           // (n,E) (n,E) (n) (n,k)
    int32_t *expert_idx, *a2s, *s2a;                               // (n,k) (n k) (n k)
    int32_t *counts, *routed, *offsets;                            // (E) (E) (E+1)
    float* aux_grad;                                               // (E)
    double* stats;  // (2E+3): routed, prob_sum, z_sum, entropy_sum, kept
    float *xs, *ys;                                                // (r,D) (r,D) plan order
    float *g, *u, *h;                                              // (r,F) x3 fp32 mode
    int32_t* counts_host;  // (E) pinned: this layer's counts, the one count exchange per layer
    // bf16 mode: the experts' input in expert order and what their backward needs, for the rows
    // this rank's experts take (on several GPUs, that depends on the routing: grown on demand).
    ExpertRowBuffers saved16;
    Route route;  // several GPUs: the forward's route, reused by the backward
  };

  float* Buffer(ParamSet set) {
    switch (set) {
      case ParamSet::kParams: return params_;
      case ParamSet::kAdamM: return adam_m_;
      case ParamSet::kAdamV: return adam_v_;
      case ParamSet::kGrads: return grads_;
    }
    return nullptr;
  }
  const bf16* Bf16Of(const float* w) const { return params16_ + (w - params_); }
  void RefreshBf16();
  void EnsureActivations(int b);
  int ExpertRows(int n) const { return cfg_.is_moe() ? n * cfg_.top_k : n; }

  // out (n, oc) = inp (n, c) @ w^T ; dinp = dout @ w (dinp += when add_to_dinp) ;
  // dw += dout^T @ inp. fp32 = the fp32 product even in bf16 mode (the router). dout16: dout
  // already in bf16 (or null).
  void Linear(float* out, const float* inp, const float* w, int n, int c, int oc, bool fp32);
  void LinearBackward(float* dinp, float* dw, const float* dout, const bf16* dout16, const float* inp,
                      const float* w, int n, int c, int oc, bool fp32, bool add_to_dinp);

  void MoeForward(BlockActs& a, const BlockTensors& w, int n, const BatchContext& ctx, float* out);
  void MoeBackward(BlockActs& a, const BlockTensors& w, const BlockTensors& gw, int n,
                   const float* dout, float* dm);
  // bf16 experts of one MoE layer on the permuted rows a.xs (kept of them): the exchange to the
  // experts' GPUs (none on one GPU), the experts' products, the exchange back into a.ys.
  void ExpertsForward16(BlockActs& a, const BlockTensors& w, int64_t kept);
  // Their backward: dys_ (kept, D) plan order -> weight gradients, d_expert_in_ (kept, D).
  void ExpertsBackward16(BlockActs& a, const BlockTensors& w, const BlockTensors& gw, int64_t kept);

  // Several GPUs. The route of a layer from this rank's counts per global expert (host), by
  // the one count exchange over the host communicator.
  void PlanRoute(Route& r, const int32_t* counts);
  // Rows between plan order (src or dst, `plan`) and expert order (`experts`), bf16, through
  // wire order in scratch16_.wire: ToExperts sends, FromExperts brings back.
  void ToExperts(const Route& r, const bf16* plan, bf16* experts);
  void FromExperts(const Route& r, const bf16* experts, bf16* plan);
  // Makes the bf16 scratch and a layer's saved buffers hold `rows` expert rows.
  void ReserveExpertRows(BlockActs& a, int64_t rows);
  // The dense gradient all-reduce of one bucket [begin, end) of the flat buffer, on
  // reduce_stream_ once stream_ has produced it.
  void ReduceDenseBucket(int64_t begin, int64_t end);

  ModelConfig cfg_;
  Communicator* comm_;
  ParamLayout layout_;
  bool bf16_;
  cudaStream_t stream_ = nullptr;
  std::unique_ptr<cuda::Blas> blas_;
  DeviceArena weights_, acts_;
  float *params_ = nullptr, *grads_ = nullptr, *adam_m_ = nullptr, *adam_v_ = nullptr;  // (total)
  bf16* params16_ = nullptr;  // (total) bf16 mode only
  float *rope_cos_ = nullptr, *rope_sin_ = nullptr;  // (T, hd/2)
  double* norms_ = nullptr;   // (2) device
  double* host_stats_ = nullptr;  // pinned: ce_sum, then each layer's 2E+3 stats
  std::vector<float> host_params_;

  // Activations, sized for b_cap_ sequences.
  int b_cap_ = 0;
  std::vector<BlockActs> blocks_;
  float *tmp_, *x_final_, *final_out_, *final_rstd_, *logits_, *ce_lse_, *ce_losses_;
  int32_t *idx_, *targets_;
  double* ce_sum_;  // (1)
  // Backward scratch.
  float *dx_, *dtmp_, *dnorm_, *dqkv_, *att_scratch_, *dys_, *dweights_, *d_expert_in_, *drouter_,
      *expert_scratch_;
  bf16 *s16a_, *s16b_;  // bf16 casts of product operands (n * max(D, C3, F, V))
  int32_t* dense_offsets_ = nullptr;  // {0, n} for a dense model's one expert
  // bf16 mode: the experts' products through cuBLAS (kernels/cuda/moe.h's fast path).
  std::unique_ptr<cuda::GroupedBlas> grouped_;
  int32_t* counts_host_ = nullptr;  // pinned (L, E)
  cudaEvent_t counts_ready_ = nullptr;
  bf16* plan16_ = nullptr;  // (r, D): a.xs or dys_ in bf16, plan order
  // bf16 scratch for the expert rows of any layer (capacity rows, grown like saved16).
  struct {
    int64_t capacity = 0;
    bf16 *wire = nullptr, *ys = nullptr, *dys = nullptr, *dx = nullptr, *backward = nullptr;
    float* dxs = nullptr;  // (capacity, D) fp32 gradient of the experts' input
  } expert16_;
  DeviceArena scratch16_;

  // Several GPUs: NCCL, and the dense gradient all-reduce, queued bucket by bucket on its own
  // stream during the last micro-step's backward (dense_queued_) so that it overlaps the
  // backward of the blocks below.
  std::unique_ptr<DeviceCommunicator> dcomm_;
  cudaStream_t reduce_stream_ = nullptr;
  cudaEvent_t bucket_ready_ = nullptr, reduce_done_ = nullptr;
  bool dense_queued_ = false;
  std::vector<std::pair<int64_t, int64_t>> block_buckets_;  // per block, its dense [begin, end)

  // The clocks of every collective this rank runs (host and device), at ZeroGrads.
  CommSeconds CommClocks() const;
  CommSeconds comm_at_step_start_;
  double peak_flops_ = 0;
  int64_t peak_bytes_ = 0;  // high-water mark of device_bytes()

  // The last forward.
  BatchContext ctx_;
  int b_ = 0;
};

CudaModel::CudaModel(const ModelConfig& cfg, Communicator* comm, std::unique_ptr<DeviceCommunicator> dcomm,
                     bool use_bf16)
    : cfg_(cfg),
      comm_(comm),
      layout_(cfg, comm->rank(), comm->world_size()),
      bf16_(use_bf16),
      dcomm_(std::move(dcomm)) {
  MOE_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
  if (dcomm_ != nullptr) {
    MOE_CUDA_CHECK(cudaStreamCreateWithFlags(&reduce_stream_, cudaStreamNonBlocking));
    MOE_CUDA_CHECK(cudaEventCreateWithFlags(&bucket_ready_, cudaEventDisableTiming));
    MOE_CUDA_CHECK(cudaEventCreateWithFlags(&reduce_done_, cudaEventDisableTiming));
    // Block l's replicated parameters ("blocks.l.*") are contiguous in the layout: one bucket.
    block_buckets_.assign(cfg.layers, {0, 0});
    for (const ParamInfo& info : layout_.params()) {
      int l = -1;
      if (info.expert || std::sscanf(info.name.c_str(), "blocks.%d.", &l) != 1) continue;
      auto& [begin, end] = block_buckets_[l];
      if (end == 0) begin = info.offset;
      end = info.offset + info.size;
    }
  }
  blas_ = std::make_unique<cuda::Blas>();
  peak_flops_ = cuda::PeakDenseFlops(use_bf16);
  const int64_t total = layout_.total();
  params_ = weights_.Alloc<float>(total);
  grads_ = weights_.Alloc<float>(total);
  adam_m_ = weights_.Alloc<float>(total);
  adam_v_ = weights_.Alloc<float>(total);
  if (bf16_) params16_ = weights_.Alloc<bf16>(total);
  MOE_CUDA_CHECK(cudaMemsetAsync(params_, 0, sizeof(float) * total, stream_));
  const int half = cfg.head_dim / 2;
  std::vector<float> cos_t(static_cast<size_t>(cfg.seq_len) * half), sin_t(cos_t.size());
  cuda::RopeTablesHost(cos_t.data(), sin_t.data(), cfg.seq_len, cfg.head_dim);
  rope_cos_ = weights_.Alloc<float>(cos_t.size());
  rope_sin_ = weights_.Alloc<float>(sin_t.size());
  // Every copy goes on stream_: a cudaMemcpy from pageable memory may return before its data
  // has landed, and stream_ (non-blocking) would not wait for it.
  MOE_CUDA_CHECK(cudaMemcpyAsync(rope_cos_, cos_t.data(), sizeof(float) * cos_t.size(), cudaMemcpyHostToDevice,
                                 stream_));
  MOE_CUDA_CHECK(cudaMemcpyAsync(rope_sin_, sin_t.data(), sizeof(float) * sin_t.size(), cudaMemcpyHostToDevice,
                                 stream_));
  norms_ = weights_.Alloc<double>(2);
  const int per_layer = 2 * cfg.experts + 3;
  MOE_CUDA_CHECK(cudaMallocHost(&host_stats_, sizeof(double) * (1 + cfg.layers * per_layer)));
  if (bf16_) {
    grouped_ = std::make_unique<cuda::GroupedBlas>();
    MOE_CUDA_CHECK(cudaMallocHost(&counts_host_, sizeof(int32_t) * cfg.layers * std::max(1, cfg.experts)));
    MOE_CUDA_CHECK(cudaEventCreateWithFlags(&counts_ready_, cudaEventDisableTiming));
  }
  ZeroGrads();
}

CudaModel::~CudaModel() {
  cudaStreamSynchronize(stream_);
  if (reduce_stream_ != nullptr) {
    cudaStreamSynchronize(reduce_stream_);
    cudaStreamDestroy(reduce_stream_);
    cudaEventDestroy(bucket_ready_);
    cudaEventDestroy(reduce_done_);
  }
  cudaFreeHost(host_stats_);
  if (counts_host_ != nullptr) cudaFreeHost(counts_host_);
  if (counts_ready_ != nullptr) cudaEventDestroy(counts_ready_);
  grouped_.reset();
  blas_.reset();
  cudaStreamDestroy(stream_);
}

void CudaModel::RefreshBf16() {
  if (bf16_) cuda::CastToBf16(params16_, params_, layout_.total(), stream_);
}

void CudaModel::InitParams(uint64_t seed) {
  // The host init of ParamLayout, then one copy: the same weights as the CPU model.
  std::vector<float> host(layout_.total(), 0.f);
  layout_.Initialize(host.data(), seed);
  MOE_CUDA_CHECK(cudaMemcpyAsync(params_, host.data(), sizeof(float) * host.size(), cudaMemcpyHostToDevice, stream_));
  MOE_CUDA_CHECK(cudaMemsetAsync(adam_m_, 0, sizeof(float) * host.size(), stream_));
  MOE_CUDA_CHECK(cudaMemsetAsync(adam_v_, 0, sizeof(float) * host.size(), stream_));
  RefreshBf16();
  MOE_CUDA_CHECK(cudaStreamSynchronize(stream_));
}

void CudaModel::ZeroGrads() {
  MOE_CUDA_CHECK(cudaMemsetAsync(grads_, 0, sizeof(float) * layout_.total(), stream_));
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
  const int64_t n = int64_t{b} * cfg_.seq_len, D = cfg_.d, C3 = cfg_.qkv_dim(), E = cfg_.experts;
  const int64_t k = cfg_.top_k, F = cfg_.ffn, V = cfg_.vocab, H = cfg_.heads;
  const int64_t r = ExpertRows(static_cast<int>(n));
  blocks_.assign(cfg_.layers, BlockActs{});
  for (int l = 0; l < cfg_.layers; ++l) {
    BlockActs& a = blocks_[l];
    a.x_in = acts_.Alloc<float>(n * D);
    a.attn_in = acts_.Alloc<float>(n * D);
    a.attn_rstd = acts_.Alloc<float>(n);
    a.qkv = acts_.Alloc<float>(n * C3);
    a.qkv16 = bf16_ ? acts_.Alloc<bf16>(n * C3) : nullptr;
    a.attn_y = acts_.Alloc<float>(n * D);
    a.attn_lse = acts_.Alloc<float>(n * H);
    a.x_mid = acts_.Alloc<float>(n * D);
    a.moe_in = acts_.Alloc<float>(n * D);
    a.moe_rstd = acts_.Alloc<float>(n);
    if (cfg_.is_moe()) {
      a.router_logits = acts_.Alloc<float>(n * E);
      a.probs = acts_.Alloc<float>(n * E);
      a.router_lse = acts_.Alloc<float>(n);
      a.weights = acts_.Alloc<float>(n * k);
      a.expert_idx = acts_.Alloc<int32_t>(n * k);
      a.a2s = acts_.Alloc<int32_t>(n * k);
      a.s2a = acts_.Alloc<int32_t>(n * k);
      a.counts = acts_.Alloc<int32_t>(E);
      a.routed = acts_.Alloc<int32_t>(E);
      a.offsets = acts_.Alloc<int32_t>(E + 1);
      a.aux_grad = acts_.Alloc<float>(E);
      a.stats = acts_.Alloc<double>(2 * E + 3);
      a.xs = acts_.Alloc<float>(r * D);
      a.ys = acts_.Alloc<float>(r * D);
    }
    if (bf16_) {
      a.counts_host = counts_host_ + int64_t{l} * std::max(1, cfg_.experts);
      ReserveExpertRows(a, r);
    } else {
      a.g = acts_.Alloc<float>(r * F);
      a.u = acts_.Alloc<float>(r * F);
      a.h = acts_.Alloc<float>(r * F);
    }
  }
  tmp_ = acts_.Alloc<float>(n * D);
  x_final_ = acts_.Alloc<float>(n * D);
  final_out_ = acts_.Alloc<float>(n * D);
  final_rstd_ = acts_.Alloc<float>(n);
  logits_ = acts_.Alloc<float>(n * V);
  ce_lse_ = acts_.Alloc<float>(n);
  ce_losses_ = acts_.Alloc<float>(n);
  idx_ = acts_.Alloc<int32_t>(n);
  targets_ = acts_.Alloc<int32_t>(n);
  ce_sum_ = acts_.Alloc<double>(1);
  dx_ = acts_.Alloc<float>(n * D);
  dtmp_ = acts_.Alloc<float>(n * D);
  dnorm_ = acts_.Alloc<float>(n * D);
  dqkv_ = acts_.Alloc<float>(n * C3);
  att_scratch_ = acts_.Alloc<float>(n * H);
  if (cfg_.is_moe()) {
    dys_ = acts_.Alloc<float>(r * D);
    dweights_ = acts_.Alloc<float>(n * k);
    d_expert_in_ = acts_.Alloc<float>(r * D);
    drouter_ = acts_.Alloc<float>(n * E);
  }
  if (!bf16_) expert_scratch_ = acts_.Alloc<float>(2 * r * F);
  if (bf16_) {
    const int64_t widest = std::max({D, C3, V});
    s16a_ = acts_.Alloc<bf16>(n * widest);
    s16b_ = acts_.Alloc<bf16>(n * widest);
    plan16_ = acts_.Alloc<bf16>(r * D);
  }
  dense_offsets_ = acts_.Alloc<int32_t>(2);
}

void CudaModel::Linear(float* out, const float* inp, const float* w, int n, int c, int oc, bool fp32) {
  if (!bf16_ || fp32) {
    blas_->Gemm(false, true, n, oc, c, 1.0f, inp, c, w, c, 0.0f, out, oc, cuda::DType::kF32, stream_);
    return;
  }
  cuda::CastToBf16(s16a_, inp, int64_t{n} * c, stream_);
  blas_->Gemm(false, true, n, oc, c, 1.0f, s16a_, c, Bf16Of(w), c, 0.0f, out, oc, cuda::DType::kBF16, stream_);
}

void CudaModel::LinearBackward(float* dinp, float* dw, const float* dout, const bf16* dout16,
                               const float* inp, const float* w, int n, int c, int oc, bool fp32,
                               bool add_to_dinp) {
  const float dinp_beta = add_to_dinp ? 1.0f : 0.0f;
  if (!bf16_ || fp32) {
    if (dinp != nullptr) {
      blas_->Gemm(false, false, n, c, oc, 1.0f, dout, oc, w, c, dinp_beta, dinp, c, cuda::DType::kF32, stream_);
    }
    if (dw != nullptr) {
      blas_->Gemm(true, false, oc, c, n, 1.0f, dout, oc, inp, c, 1.0f, dw, c, cuda::DType::kF32, stream_);
    }
    return;
  }
  if (dout16 == nullptr) {
    cuda::CastToBf16(s16a_, dout, int64_t{n} * oc, stream_);
    dout16 = s16a_;
  }
  if (dinp != nullptr) {
    blas_->Gemm(false, false, n, c, oc, 1.0f, dout16, oc, Bf16Of(w), c, dinp_beta, dinp, c, cuda::DType::kBF16,
                stream_);
  }
  if (dw != nullptr) {
    cuda::CastToBf16(s16b_, inp, int64_t{n} * c, stream_);
    blas_->Gemm(true, false, oc, c, n, 1.0f, dout16, oc, s16b_, c, 1.0f, dw, c, cuda::DType::kBF16, stream_);
  }
}

ForwardResult CudaModel::Forward(const int32_t* idx, const int32_t* targets, int b,
                                 const BatchContext& ctx) {
  EnsureActivations(b);
  const int T = cfg_.seq_len, D = cfg_.d, V = cfg_.vocab, H = cfg_.heads, Hkv = cfg_.kv_heads;
  const int hd = cfg_.head_dim, C3 = cfg_.qkv_dim();
  const int n = b * T;
  const int64_t nd = int64_t{n} * D;
  const float p_drop = ctx.train ? cfg_.dropout : 0.f;
  const uint64_t offset = static_cast<uint64_t>(ctx.first_token) * D;
  ModelTensors w = layout_.Bind(params_);
  ctx_ = ctx;
  b_ = b;
  MOE_CUDA_CHECK(cudaMemcpyAsync(idx_, idx, sizeof(int32_t) * n, cudaMemcpyHostToDevice, stream_));
  MOE_CUDA_CHECK(cudaMemcpyAsync(targets_, targets, sizeof(int32_t) * n, cudaMemcpyHostToDevice, stream_));

  // The residual stream lives in the buffers the backward reads: block l's input x_in, its
  // middle x_mid (after attention), and x_final_ after the last block.
  float* x = cfg_.layers > 0 ? blocks_[0].x_in : x_final_;
  cuda::EmbeddingForward(x, idx_, w.wte, n, D, stream_);
  cuda::DropoutForward(x, x, nd, p_drop, DropoutSiteSeed(ctx.dropout_seed, 0), offset, stream_);
  for (int l = 0; l < cfg_.layers; ++l) {
    BlockActs& a = blocks_[l];
    const BlockTensors& bw = w.blocks[l];
    // Attention: x_mid = x_in + dropout(attn(RMSNorm(x_in)) @ wo^T)
    cuda::RmsNormForward(a.attn_in, a.attn_rstd, a.x_in, bw.attn_norm, n, D, stream_);
    Linear(a.qkv, a.attn_in, bw.wqkv, n, D, C3, false);
    cuda::RopeForward(a.qkv, rope_cos_, rope_sin_, b, T, H, Hkv, hd, stream_);
    if (bf16_) {
      // Tensor cores, reading q, k, v in bf16 (kept for the backward).
      cuda::CastToBf16(a.qkv16, a.qkv, int64_t{n} * C3, stream_);
      cuda::AttentionForwardBf16(a.attn_y, a.attn_lse, a.qkv, a.qkv16, b, T, H, Hkv, hd, stream_);
    } else {
      cuda::AttentionForward(a.attn_y, a.attn_lse, a.qkv, b, T, H, Hkv, hd, stream_);
    }
    Linear(tmp_, a.attn_y, bw.wo, n, D, D, false);
    cuda::DropoutForward(tmp_, tmp_, nd, p_drop, DropoutSiteSeed(ctx.dropout_seed, 1 + 2 * l), offset, stream_);
    cuda::AddOut(a.x_mid, a.x_in, tmp_, nd, stream_);
    // MoE: the next block's x_in (or x_final_) = x_mid + dropout(MoE(RMSNorm(x_mid)))
    cuda::RmsNormForward(a.moe_in, a.moe_rstd, a.x_mid, bw.moe_norm, n, D, stream_);
    MoeForward(a, bw, n, ctx, tmp_);
    cuda::DropoutForward(tmp_, tmp_, nd, p_drop, DropoutSiteSeed(ctx.dropout_seed, 2 + 2 * l), offset, stream_);
    cuda::AddOut(l + 1 < cfg_.layers ? blocks_[l + 1].x_in : x_final_, a.x_mid, tmp_, nd, stream_);
  }
  cuda::RmsNormForward(final_out_, final_rstd_, x_final_, w.final_norm, n, D, stream_);
  Linear(logits_, final_out_, w.lm_head, n, D, V, false);
  cuda::CrossEntropyForward(ce_losses_, ce_lse_, logits_, targets_, n, V, stream_);
  MOE_CUDA_CHECK(cudaMemsetAsync(ce_sum_, 0, sizeof(double), stream_));
  cuda::Sum(ce_sum_, ce_losses_, n, stream_);

  // The one device-to-host copy of the forward pass: CE sum and every layer's router stats.
  const int E = cfg_.experts, per_layer = 2 * E + 3;
  MOE_CUDA_CHECK(cudaMemcpyAsync(host_stats_, ce_sum_, sizeof(double), cudaMemcpyDeviceToHost, stream_));
  if (cfg_.is_moe()) {
    for (int l = 0; l < cfg_.layers; ++l) {
      MOE_CUDA_CHECK(cudaMemcpyAsync(host_stats_ + 1 + l * per_layer, blocks_[l].stats,
                                     sizeof(double) * per_layer, cudaMemcpyDeviceToHost, stream_));
    }
  }
  MOE_CUDA_CHECK(cudaStreamSynchronize(stream_));
  peak_bytes_ = std::max(peak_bytes_, device_bytes());

  ForwardResult result;
  result.ce_sum = host_stats_[0];
  const double n_global = static_cast<double>(ctx.global_tokens);
  const int k = cfg_.top_k;
  for (int l = 0; l < cfg_.layers; ++l) {
    MoeLayerForwardStats s;
    if (cfg_.is_moe()) {
      // The formulas of MoeLayer::Forward, on the reduced [routed | prob_sum | z, H | kept].
      const double* red = host_stats_ + 1 + l * per_layer;
      s.routed.assign(E, 0);
      double aux = 0, routed_total = 0;
      for (int e = 0; e < E; ++e) {
        const double f_e = red[e] / (n_global * k);
        const double p_e = red[E + e] / n_global;
        aux += f_e * p_e;
        s.routed[e] = static_cast<int64_t>(red[e]);
        routed_total += red[e];
      }
      s.aux_loss = cfg_.aux_coef * E * aux;
      s.z_loss = cfg_.z_coef * red[2 * E] / n_global;
      s.entropy_sum = red[2 * E + 1];
      s.dropped = static_cast<int64_t>(routed_total - red[2 * E + 2]);
      s.assignments = static_cast<int64_t>(n_global) * k;
    }
    result.aux_loss += s.aux_loss;
    result.z_loss += s.z_loss;
    result.layers.push_back(std::move(s));
  }
  return result;
}

void CudaModel::MoeForward(BlockActs& a, const BlockTensors& w, int n, const BatchContext& ctx,
                           float* out) {
  const int D = cfg_.d, F = cfg_.ffn, E = cfg_.experts, k = cfg_.top_k;
  const bool tc = bf16_;
  if (!cfg_.is_moe()) {
    // One replicated expert takes every token: no routing, no exchange.
    if (bf16_) {
      a.counts_host[0] = n;
      ReserveExpertRows(a, cuda::ExpertLayoutRows(a.counts_host, 1));
      cuda::ToExpertLayout(a.saved16.x, a.moe_in, a.counts_host, 1, D, stream_);
      cuda::ExpertsForwardBf16(*grouped_, a.counts_host, out, nullptr, a.saved16.g, a.saved16.u, a.saved16.h,
                               a.saved16.x, Bf16Of(w.w1), Bf16Of(w.w3), Bf16Of(w.w2), 1, D, F, expert16_.backward,
                               stream_);
      return;
    }
    const int32_t offsets[2] = {0, n};
    MOE_CUDA_CHECK(cudaMemcpyAsync(dense_offsets_, offsets, sizeof(offsets), cudaMemcpyHostToDevice, stream_));
    cuda::ExpertsForward(out, a.g, a.u, a.h, a.moe_in, w.w1, w.w3, w.w2, dense_offsets_, n, 1, D, F, tc, stream_);
    return;
  }
  // Route: fp32 router product, softmax, top-k, renormalised weights; the plan (capacity).
  Linear(a.router_logits, a.moe_in, w.router, n, D, E, /*fp32=*/true);
  cuda::RouterForward(a.probs, a.router_lse, a.expert_idx, a.weights, a.router_logits, n, E, k, stream_);
  const int64_t capacity =
      cfg_.capacity_factor > 0.0 ? static_cast<int64_t>(std::ceil(cfg_.capacity_factor * n * k / E)) : 0;
  cuda::BuildRoutingPlan(a.counts, a.routed, a.offsets, a.a2s, a.s2a, a.expert_idx, n, k, E, capacity, stream_);
  if (bf16_) {
    // The count exchange: the experts' products (and the route between GPUs) need each
    // expert's rows on the host. Waited on only once the stats and the permute are queued.
    MOE_CUDA_CHECK(cudaMemcpyAsync(a.counts_host, a.counts, sizeof(int32_t) * E, cudaMemcpyDeviceToHost, stream_));
    MOE_CUDA_CHECK(cudaEventRecord(counts_ready_, stream_));
  }
  // The layer's stats [routed | prob_sum | z, H | kept], summed over GPUs before the aux
  // gradient reads the global routed counts.
  MOE_CUDA_CHECK(cudaMemsetAsync(a.stats, 0, sizeof(double) * (2 * E + 3), stream_));
  cuda::RouterStats(a.stats + E, a.stats + 2 * E, a.stats + 2 * E + 1, a.probs, a.router_lse, n, E, stream_);
  cuda::RouterCountStats(a.stats, a.routed, a.counts, E, stream_);
  if (dcomm_ != nullptr) dcomm_->AllReduceSum(a.stats, 2 * E + 3, DeviceDType::kF64, stream_);
  cuda::RouterAuxGrad(a.aux_grad, a.stats, E, static_cast<double>(ctx.global_tokens), k, cfg_.aux_coef * E,
                      ctx.loss_scale, stream_);
  // Permute -> experts (bf16: through the exchange) -> unpermute.
  const int rows = n * k;
  cuda::PermuteForward(a.xs, a.moe_in, a.a2s, n, k, D, stream_);
  if (bf16_) {
    MOE_CUDA_CHECK(cudaEventSynchronize(counts_ready_));
    int64_t kept = 0;
    for (int e = 0; e < E; ++e) kept += a.counts_host[e];
    ExpertsForward16(a, w, kept);
  } else {
    cuda::ExpertsForward(a.ys, a.g, a.u, a.h, a.xs, w.w1, w.w3, w.w2, a.offsets, rows, E, D, F, tc, stream_);
  }
  cuda::UnpermuteForward(out, a.ys, a.weights, a.a2s, n, k, D, stream_);
}

void CudaModel::ExpertsForward16(BlockActs& a, const BlockTensors& w, int64_t kept) {
  const int D = cfg_.d, F = cfg_.ffn, E_local = layout_.experts_local();
  if (dcomm_ == nullptr) {
    // One GPU: plan order is expert order.
    ReserveExpertRows(a, cuda::ExpertLayoutRows(a.counts_host, E_local));
    cuda::ToExpertLayout(a.saved16.x, a.xs, a.counts_host, E_local, D, stream_);
    cuda::ExpertsForwardBf16(*grouped_, a.counts_host, a.ys, nullptr, a.saved16.g, a.saved16.u, a.saved16.h,
                             a.saved16.x, Bf16Of(w.w1), Bf16Of(w.w3), Bf16Of(w.w2), E_local, D, F,
                             expert16_.backward, stream_);
    return;
  }
  Route& r = a.route;
  PlanRoute(r, a.counts_host);
  ReserveExpertRows(a, cuda::ExpertLayoutRows(r.local_counts.data(), E_local));
  cuda::CastToBf16(plan16_, a.xs, kept * D, stream_);
  ToExperts(r, plan16_, a.saved16.x);
  cuda::ExpertsForwardBf16(*grouped_, r.local_counts.data(), nullptr, expert16_.ys, a.saved16.g, a.saved16.u,
                           a.saved16.h, a.saved16.x, Bf16Of(w.w1), Bf16Of(w.w3), Bf16Of(w.w2), E_local, D, F,
                           expert16_.backward, stream_);
  FromExperts(r, expert16_.ys, plan16_);
  cuda::CastToFloat(a.ys, plan16_, kept * D, stream_);
}

void CudaModel::MoeBackward(BlockActs& a, const BlockTensors& w, const BlockTensors& gw, int n,
                            const float* dout, float* dm) {
  const int D = cfg_.d, F = cfg_.ffn, E = cfg_.experts, k = cfg_.top_k;
  const bool tc = bf16_;
  if (!cfg_.is_moe()) {
    if (bf16_) {
      cuda::ToExpertLayout(expert16_.dys, dout, a.counts_host, 1, D, stream_);
      cuda::ExpertsBackwardBf16(*grouped_, a.counts_host, dm, gw.w1, gw.w3, gw.w2, expert16_.dys, a.saved16.x,
                                a.saved16.g, a.saved16.u, a.saved16.h, Bf16Of(w.w1), Bf16Of(w.w3), Bf16Of(w.w2), 1,
                                D, F, expert16_.backward, stream_);
      return;
    }
    cuda::ExpertsBackward(dm, gw.w1, gw.w3, gw.w2, dout, a.moe_in, a.g, a.u, a.h, w.w1, w.w3, w.w2,
                          dense_offsets_, n, 1, D, F, expert_scratch_, tc, stream_);
    return;
  }
  const int rows = n * k;
  MOE_CUDA_CHECK(cudaMemsetAsync(dys_, 0, sizeof(float) * rows * D, stream_));
  MOE_CUDA_CHECK(cudaMemsetAsync(dweights_, 0, sizeof(float) * rows, stream_));
  cuda::UnpermuteBackward(dys_, dweights_, dout, a.ys, a.weights, a.a2s, n, k, D, stream_);
  MOE_CUDA_CHECK(cudaMemsetAsync(d_expert_in_, 0, sizeof(float) * rows * D, stream_));
  if (bf16_) {
    // The plan and the route are the forward's: no count exchange here.
    int64_t kept = 0;
    for (int e = 0; e < E; ++e) kept += a.counts_host[e];
    ExpertsBackward16(a, w, gw, kept);
  } else {
    cuda::ExpertsBackward(d_expert_in_, gw.w1, gw.w3, gw.w2, dys_, a.xs, a.g, a.u, a.h, w.w1, w.w3, w.w2,
                          a.offsets, rows, E, D, F, expert_scratch_, tc, stream_);
  }
  cuda::PermuteBackward(dm, d_expert_in_, a.a2s, n, k, D, stream_);
  MOE_CUDA_CHECK(cudaMemsetAsync(drouter_, 0, sizeof(float) * n * E, stream_));
  cuda::RouterBackward(drouter_, dweights_, a.probs, a.router_lse, a.expert_idx, a.aux_grad,
                       static_cast<float>(cfg_.z_coef * ctx_.loss_scale), n, E, k, stream_);
  LinearBackward(dm, gw.router, drouter_, nullptr, a.moe_in, w.router, n, D, E, /*fp32=*/true,
                 /*add_to_dinp=*/true);
}

void CudaModel::ExpertsBackward16(BlockActs& a, const BlockTensors& w, const BlockTensors& gw, int64_t kept) {
  const int D = cfg_.d, F = cfg_.ffn, E_local = layout_.experts_local();
  if (dcomm_ == nullptr) {
    cuda::ToExpertLayout(expert16_.dys, dys_, a.counts_host, E_local, D, stream_);
    cuda::ExpertsBackwardBf16(*grouped_, a.counts_host, d_expert_in_, gw.w1, gw.w3, gw.w2, expert16_.dys, a.saved16.x,
                              a.saved16.g, a.saved16.u, a.saved16.h, Bf16Of(w.w1), Bf16Of(w.w3), Bf16Of(w.w2),
                              E_local, D, F, expert16_.backward, stream_);
    return;
  }
  // The route of the forward: dys to the experts, their input gradient back (bf16 both ways,
  // like the activations).
  const Route& r = a.route;
  cuda::CastToBf16(plan16_, dys_, kept * D, stream_);
  ToExperts(r, plan16_, expert16_.dys);
  MOE_CUDA_CHECK(cudaMemsetAsync(expert16_.dxs, 0, sizeof(float) * r.rows * D, stream_));
  cuda::ExpertsBackwardBf16(*grouped_, r.local_counts.data(), expert16_.dxs, gw.w1, gw.w3, gw.w2, expert16_.dys,
                            a.saved16.x, a.saved16.g, a.saved16.u, a.saved16.h, Bf16Of(w.w1), Bf16Of(w.w3),
                            Bf16Of(w.w2), E_local, D, F, expert16_.backward, stream_);
  cuda::CastToBf16(expert16_.dx, expert16_.dxs, r.rows * D, stream_);
  FromExperts(r, expert16_.dx, plan16_);
  cuda::CastToFloat(d_expert_in_, plan16_, kept * D, stream_);
}

void CudaModel::PlanRoute(Route& r, const int32_t* counts) {
  const int W = comm_->world_size(), E_local = layout_.experts_local(), E = cfg_.experts;
  std::vector<int64_t> send_counts(counts, counts + E), recv_counts(static_cast<size_t>(W) * E_local);
  comm_->AllToAllCounts(send_counts.data(), recv_counts.data(), E_local);
  r.send.assign(W, 0);
  r.recv.assign(W, 0);
  r.local_counts.assign(E_local, 0);
  r.rows = 0;
  for (int p = 0; p < W; ++p) {
    for (int j = 0; j < E_local; ++j) {
      const int64_t from_p = recv_counts[p * E_local + j];
      r.send[p] += send_counts[p * E_local + j] * cfg_.d;
      r.recv[p] += from_p * cfg_.d;
      r.local_counts[j] += static_cast<int32_t>(from_p);
      r.rows += from_p;
    }
  }
  r.layout = cuda::PlanExpertLayout(r.local_counts.data(), E_local);
  // Block (p, j): rows from peer p for local expert j. Wire order walks (p, j), expert order (j, p).
  r.to_expert.count = r.to_wire.count = 0;
  if (E_local == 1) return;
  std::vector<int64_t> wire_row(recv_counts.size() + 1, 0);
  for (size_t b = 0; b < recv_counts.size(); ++b) wire_row[b + 1] = wire_row[b] + recv_counts[b];
  int64_t expert_row = 0;  // compact
  for (int j = 0; j < E_local; ++j) {
    int64_t layout_row = r.layout.start[j];
    for (int p = 0; p < W; ++p) {
      const size_t b = static_cast<size_t>(p) * E_local + j;
      const int i = r.to_expert.count++;
      r.to_wire.count++;
      r.to_expert.src_row[i] = r.to_wire.dst_row[i] = wire_row[b];
      r.to_expert.dst_row[i] = layout_row;
      r.to_wire.src_row[i] = expert_row;
      r.to_expert.rows[i] = r.to_wire.rows[i] = recv_counts[b];
      expert_row += recv_counts[b];
      layout_row += recv_counts[b];
    }
  }
}

void CudaModel::ToExperts(const Route& r, const bf16* plan, bf16* experts) {
  const int64_t D = cfg_.d;
  // With one expert per GPU, wire order is expert order: receive in place.
  bf16* wire = r.to_expert.count > 0 ? expert16_.wire : experts;
  dcomm_->AllToAllV(plan, r.send.data(), wire, r.recv.data(), DeviceDType::kBF16, stream_);
  if (r.layout.chunk > 0) {
    // The layout's rows past each expert's count are zero.
    const int64_t from = r.to_expert.count > 0 ? 0 : r.rows, to = r.layout.rows;
    MOE_CUDA_CHECK(cudaMemsetAsync(experts + from * D, 0, sizeof(bf16) * (to - from) * D, stream_));
  }
  cuda::CopyRowBlocks(experts, wire, r.to_expert, D * sizeof(bf16), stream_);
}

void CudaModel::FromExperts(const Route& r, const bf16* experts, bf16* plan) {
  const int64_t D = cfg_.d;
  const bf16* wire = experts;
  if (r.to_wire.count > 0) {
    cuda::CopyRowBlocks(expert16_.wire, experts, r.to_wire, D * sizeof(bf16), stream_);
    wire = expert16_.wire;
  }
  // The reverse route: what came from peer p goes back to p.
  dcomm_->AllToAllV(wire, r.recv.data(), plan, r.send.data(), DeviceDType::kBF16, stream_);
}

void CudaModel::ReserveExpertRows(BlockActs& a, int64_t rows) {
  const int64_t D = cfg_.d, F = cfg_.ffn, E_local = cfg_.is_moe() ? layout_.experts_local() : 1;
  rows = std::max<int64_t>(rows, 1);
  // Grown by a quarter more than asked, so that routing that wobbles does not reallocate often.
  auto grown = [](int64_t need, int64_t have) { return need <= have ? have : std::max(need, have + have / 4); };
  if (rows > a.saved16.capacity) {
    MOE_CUDA_CHECK(cudaStreamSynchronize(stream_));
    ExpertRowBuffers& s = a.saved16;
    s.capacity = grown(rows, s.capacity);
    s.mem = std::make_shared<DeviceArena>();
    s.x = s.mem->Alloc<bf16>(s.capacity * D);
    s.g = s.mem->Alloc<bf16>(s.capacity * F);
    s.u = s.mem->Alloc<bf16>(s.capacity * F);
    s.h = s.mem->Alloc<bf16>(s.capacity * F);
  }
  if (rows > expert16_.capacity) {
    MOE_CUDA_CHECK(cudaStreamSynchronize(stream_));
    scratch16_.FreeAll();
    const int64_t c = grown(rows, expert16_.capacity);
    expert16_.capacity = c;
    expert16_.wire = scratch16_.Alloc<bf16>(c * D);
    expert16_.ys = scratch16_.Alloc<bf16>(c * D);
    expert16_.dys = scratch16_.Alloc<bf16>(c * D);
    expert16_.dx = scratch16_.Alloc<bf16>(c * D);
    expert16_.dxs = scratch16_.Alloc<float>(c * D);
    expert16_.backward =
        scratch16_.Alloc<bf16>(cuda::ExpertsBf16Scratch(c, static_cast<int>(E_local), static_cast<int>(D),
                                                                static_cast<int>(F)));
  }
}

void CudaModel::Backward() {
  const int b = b_, T = cfg_.seq_len, D = cfg_.d, V = cfg_.vocab, H = cfg_.heads;
  const int Hkv = cfg_.kv_heads, hd = cfg_.head_dim, C3 = cfg_.qkv_dim();
  const int n = b * T;
  const int64_t nd = int64_t{n} * D;
  const float p_drop = ctx_.train ? cfg_.dropout : 0.f;
  const uint64_t offset = static_cast<uint64_t>(ctx_.first_token) * D;
  ModelTensors w = layout_.Bind(params_);
  ModelTensors g = layout_.Bind(grads_);
  auto zero = [&](float* p, int64_t count) {
    MOE_CUDA_CHECK(cudaMemsetAsync(p, 0, sizeof(float) * count, stream_));
  };
  // The gradient through dropout site `site` of dx_: dx_ itself when dropout is off.
  auto through_dropout = [&](int site) -> const float* {
    if (p_drop == 0.f) return dx_;
    zero(dtmp_, nd);
    cuda::DropoutBackward(dtmp_, dx_, nd, p_drop, DropoutSiteSeed(ctx_.dropout_seed, site), offset, stream_);
    return dtmp_;
  };
  // Several GPUs: the dense gradients are reduced bucket by bucket during the backward of the
  // step's last micro-batch (earlier ones only accumulate); ReduceGrads then waits.
  const bool reduce_now = dcomm_ != nullptr && ctx_.last_micro_step && cfg_.layers > 0;

  // Head: dlogits (in place in fp32, or straight to bf16 for the bf16 products).
  const bf16* dlogits16 = nullptr;
  if (bf16_) {
    cuda::CrossEntropyBackwardBf16(s16b_, logits_, ce_lse_, targets_, ctx_.loss_scale, n, V, stream_);
    // s16b_ holds dlogits; LinearBackward's weight product casts its input into s16b_, so
    // move dlogits to s16a_'s role by swapping the two scratch buffers for this call.
    std::swap(s16a_, s16b_);
    dlogits16 = s16a_;
  } else {
    cuda::CrossEntropyBackward(logits_, logits_, ce_lse_, targets_, ctx_.loss_scale, n, V, stream_);
  }
  zero(dx_, nd);
  LinearBackward(dnorm_, g.lm_head, logits_, dlogits16, final_out_, w.lm_head, n, D, V, false,
                 /*add_to_dinp=*/false);
  cuda::RmsNormBackward(dx_, g.final_norm, dnorm_, x_final_, w.final_norm, final_rstd_, n, D, stream_);

  for (int l = cfg_.layers - 1; l >= 0; --l) {
    BlockActs& a = blocks_[l];
    const BlockTensors& bw = w.blocks[l];
    const BlockTensors& bg = g.blocks[l];
    const float* dmoe = through_dropout(2 + 2 * l);
    zero(dnorm_, nd);
    MoeBackward(a, bw, bg, n, dmoe, dnorm_);
    cuda::RmsNormBackward(dx_, bg.moe_norm, dnorm_, a.x_mid, bw.moe_norm, a.moe_rstd, n, D, stream_);

    const float* dattn_out = through_dropout(1 + 2 * l);
    float* dattn_y = dnorm_;
    LinearBackward(dattn_y, bg.wo, dattn_out, nullptr, a.attn_y, bw.wo, n, D, D, false, /*add_to_dinp=*/false);
    zero(dqkv_, int64_t{n} * C3);
    if (bf16_) {
      cuda::CastToBf16(s16b_, dattn_y, nd, stream_);  // s16b_ is free until the next product
      cuda::AttentionBackwardBf16(dqkv_, dattn_y, s16b_, a.attn_y, a.attn_lse, a.qkv, a.qkv16, b, T, H, Hkv, hd,
                                  att_scratch_, stream_);
    } else {
      cuda::AttentionBackward(dqkv_, dattn_y, a.attn_y, a.attn_lse, a.qkv, b, T, H, Hkv, hd, att_scratch_, stream_);
    }
    cuda::RopeBackward(dqkv_, rope_cos_, rope_sin_, b, T, H, Hkv, hd, stream_);
    LinearBackward(dtmp_, bg.wqkv, dqkv_, nullptr, a.attn_in, bw.wqkv, n, D, C3, false, /*add_to_dinp=*/false);
    cuda::RmsNormBackward(dx_, bg.attn_norm, dtmp_, a.x_in, bw.attn_norm, a.attn_rstd, n, D, stream_);
    // Block l's replicated gradients are final (on the last micro-step): reduce them over GPUs
    // while the blocks below run their backward.
    if (reduce_now) ReduceDenseBucket(block_buckets_[l].first, block_buckets_[l].second);
  }
  cuda::EmbeddingBackward(g.wte, through_dropout(0), idx_, n, D, stream_);
  if (reduce_now) {
    // The rest: the embedding before the first block, the final norm (and lm_head) after the last.
    ReduceDenseBucket(0, block_buckets_.front().first);
    ReduceDenseBucket(block_buckets_.back().second, layout_.dense_size());
    MOE_CUDA_CHECK(cudaEventRecord(reduce_done_, reduce_stream_));
    dense_queued_ = true;
  }
  // Synchronous at the end so that the trainer's forward / backward / optimizer times are real.
  MOE_CUDA_CHECK(cudaStreamSynchronize(stream_));
}

void CudaModel::ReduceDenseBucket(int64_t begin, int64_t end) {
  if (end <= begin) return;
  MOE_CUDA_CHECK(cudaEventRecord(bucket_ready_, stream_));
  MOE_CUDA_CHECK(cudaStreamWaitEvent(reduce_stream_, bucket_ready_, 0));
  dcomm_->AllReduceSum(grads_ + begin, end - begin, DeviceDType::kF32, reduce_stream_);
}

CommSeconds CudaModel::ReduceGrads() {
  // One GPU: the sum over ranks is the identity.
  if (dcomm_ != nullptr) {
    if (dense_queued_) {
      MOE_CUDA_CHECK(cudaStreamWaitEvent(stream_, reduce_done_, 0));
      dense_queued_ = false;
    } else {
      dcomm_->AllReduceSum(grads_, layout_.dense_size(), DeviceDType::kF32, stream_);
    }
    dcomm_->Wait(stream_, "dense gradient all-reduce");
  }
  const CommSeconds now = CommClocks();
  return {now.all_to_all - comm_at_step_start_.all_to_all, now.all_reduce - comm_at_step_start_.all_reduce};
}

void CudaModel::GradSquaredNorms(double* dense_sq, double* expert_sq) {
  const int64_t dense = layout_.dense_size();
  MOE_CUDA_CHECK(cudaMemsetAsync(norms_, 0, 2 * sizeof(double), stream_));
  cuda::SquaredNorm(norms_, grads_, dense, stream_);
  cuda::SquaredNorm(norms_ + 1, grads_ + dense, layout_.total() - dense, stream_);
  MOE_CUDA_CHECK(cudaMemcpyAsync(host_stats_, norms_, 2 * sizeof(double), cudaMemcpyDeviceToHost, stream_));
  MOE_CUDA_CHECK(cudaStreamSynchronize(stream_));
  *dense_sq = host_stats_[0];
  *expert_sq = host_stats_[1];
}

void CudaModel::AdamWStep(int64_t step, double lr, double weight_decay, float clip_scale) {
  const float b1 = 0.9f, b2 = 0.95f, eps = 1e-8f;  // kernels::AdamWConfig's defaults
  const float bc1 = static_cast<float>(1.0 - std::pow(double{b1}, static_cast<double>(step)));
  const float bc2 = static_cast<float>(1.0 - std::pow(double{b2}, static_cast<double>(step)));
  for (const ParamInfo& info : layout_.params()) {
    const float wd = info.decay ? static_cast<float>(weight_decay) : 0.f;
    cuda::AdamWUpdate(params_ + info.offset, bf16_ ? params16_ + info.offset : nullptr,
                      grads_ + info.offset, adam_m_ + info.offset, adam_v_ + info.offset, info.size,
                      static_cast<float>(lr), b1, b2, eps, wd, bc1, bc2, clip_scale, stream_);
  }
  MOE_CUDA_CHECK(cudaStreamSynchronize(stream_));
}

void CudaModel::CopyToHost(ParamSet set, std::vector<float>* out) {
  out->resize(layout_.total());
  MOE_CUDA_CHECK(cudaStreamSynchronize(stream_));
  MOE_CUDA_CHECK(
      cudaMemcpyAsync(out->data(), Buffer(set), sizeof(float) * out->size(), cudaMemcpyDeviceToHost, stream_));
  MOE_CUDA_CHECK(cudaStreamSynchronize(stream_));
}

void CudaModel::CopyFromHost(ParamSet set, const std::vector<float>& in) {
  const size_t count = std::min<size_t>(in.size(), layout_.total());
  MOE_CUDA_CHECK(cudaStreamSynchronize(stream_));
  // On stream_, so that the bf16 cast below reads the new values: a plain cudaMemcpy from
  // pageable memory may return before its data lands, and stream_ does not wait for it (this
  // once fed stale expert weights, the tail of the buffer, to the bf16 products).
  MOE_CUDA_CHECK(cudaMemcpyAsync(Buffer(set), in.data(), sizeof(float) * count, cudaMemcpyHostToDevice, stream_));
  if (set == ParamSet::kParams) RefreshBf16();
  MOE_CUDA_CHECK(cudaStreamSynchronize(stream_));
}

const std::vector<float>& CudaModel::params() {
  CopyToHost(ParamSet::kParams, &host_params_);
  return host_params_;
}

}  // namespace

absl::StatusOr<std::unique_ptr<TrainModel>> MakeCudaModel(const ModelConfig& cfg, Communicator* comm,
                                                          bool use_bf16) {
  const int W = comm->world_size();
  // Checks of the job alone first: every rank takes the same branch, so none is left waiting
  // in the collective setup below.
  const int hd = cfg.head_dim;
  if (hd != 8 && hd != 16 && hd != 32 && hd != 64) {
    return absl::UnimplementedError(absl::StrCat("device cuda: head size d_model / n_heads = ", hd,
                                                 " is not one of 8, 16, 32, 64"));
  }
  if (cfg.experts > 64) {
    return absl::UnimplementedError(absl::StrCat("device cuda: at most 64 experts, got ", cfg.experts));
  }
  if (W > 1 && !use_bf16) {
    return absl::UnimplementedError(absl::StrCat(
        "device cuda on several GPUs (ranks: ", W, ") runs in bf16 only; set train.precision: bf16, "
        "or ranks: 1 for fp32"));
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
