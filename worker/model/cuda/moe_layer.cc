#include "worker/model/cuda/moe_layer.h"

#ifdef MOE_WITH_CUDA

#include <algorithm>
#include <chrono>
#include <stdexcept>

#include "common/memory_estimate.h"
#include "kernels/cuda/elementwise.h"
#include "kernels/cuda/expert_layout.h"
#include "kernels/cuda/matmul.h"
#include "kernels/cuda/router_product.h"
#include "worker/model/cuda/host_waits.h"

namespace moe {
namespace {

// The experts' weight gradients at handles w1, w3, w2 (each may be null): bf16 where the
// context keeps them so (train.master_weights bf16), else fp32.
cuda::ExpertGrads GradsAt(const CudaContext& ctx, float* w1, float* w3, float* w2) {
  cuda::ExpertGrads g;
  g.w1 = w1;
  g.w3 = w3;
  g.w2 = w2;
  g.w1_bf16 = ctx.Bf16GradOf(w1);
  g.w3_bf16 = ctx.Bf16GradOf(w3);
  g.w2_bf16 = ctx.Bf16GradOf(w2);
  return g;
}

}  // namespace

MoeScratch::MoeScratch(const MoeShape& shape, bool bf16, bool exchanges, int shared_experts, int shared_ffn,
                       DeviceMemory* memory)
    : shape_(shape),
      bf16_(bf16),
      exchanges_(exchanges && !shape.dense),
      shared_experts_(shared_experts),
      shared_ffn_(shared_ffn),
      rows_mem_(memory) {
  if (bf16_) {
    grouped = std::make_unique<cuda::GroupedBlas>();
    MOE_CUDA_CHECK(cudaEventCreateWithFlags(&counts_ready, cudaEventDisableTiming));
  }
}

MoeScratch::~MoeScratch() {
  if (counts_ready != nullptr) cudaEventDestroy(counts_ready);
}

void MoeScratch::AddTo(BufferTable* table, int64_t n) {
  const int64_t D = shape_.d, r = shape_.ExpertRows(n);
  if (!shape_.dense) {
    table->Add(&dys, bf16_ ? 0 : r * D);  // bf16: straight into the layout (CudaMoeLayer::Backward)
    table->Add(&dweights, n * shape_.top_k);
    table->Add(&d_expert_in, bf16_ && !exchanges_ ? 0 : r * D);  // (none: one GPU's bf16 layers)
    table->Add(&drouter, n * shape_.experts);
  }
  if (!bf16_) table->Add(&fp32_scratch, 2 * r * shape_.ffn);
  if (bf16_ && exchanges_) table->Add(&plan16, r * D);
  table->Add(&dense_offsets, 2);
  if (shared_experts_ > 0) {
    const int64_t Fs = shared_ffn_;
    table->Add(&shared_y, n * D);
    if (bf16_) {
      const int32_t count = static_cast<int32_t>(n);
      const int64_t lrows = cuda::ExpertLayoutRows(&count, 1);
      table->Add(&shared_x16, lrows * D);
      table->Add(&shared_dy16, lrows * D);
      table->Add(&shared_scratch16, cuda::ExpertsBf16Scratch(lrows, 1, D, Fs));
    } else {
      table->Add(&shared_scratch, 2 * n * Fs);
      table->Add(&shared_offsets, 2);
    }
  }
}

void MoeScratch::ReserveExpertRows(int64_t rows, const CudaContext& ctx) {
  rows = std::max<int64_t>(rows, 1);
  if (rows <= capacity) return;
  ctx.Sync("growing the expert rows' scratch");
  rows_mem_.FreeAll();
  capacity = CudaGrownRows(rows, capacity);
  const int64_t D = shape_.d;
  dys16 = rows_mem_.Alloc<cuda::bf16>(capacity * D);
  if (!exchanges_) x16 = rows_mem_.Alloc<cuda::bf16>(capacity * D);
  if (exchanges_) {
    wire = rows_mem_.Alloc<cuda::bf16>(capacity * D);
    ys = rows_mem_.Alloc<cuda::bf16>(capacity * D);
    dx16 = rows_mem_.Alloc<cuda::bf16>(capacity * D);
    dxs = rows_mem_.Alloc<float>(capacity * D);
  }
  backward = rows_mem_.Alloc<cuda::bf16>(cuda::ExpertsBf16Scratch(capacity, shape_.experts_local, D, shape_.ffn));
}

CudaMoeLayer::CudaMoeLayer(const ModelConfig& cfg, const MoeShape& shape, const CudaContext* ctx,
                           MoeScratch* scratch, ExpertExchange* exchange, DeviceMemory* memory, int layer)
    : cfg_(cfg),
      shape_(shape),
      layer_(layer),
      act_(ExpertActivationOf(cfg)),
      ctx_(ctx),
      scratch_(scratch),
      exchange_(shape.dense ? nullptr : exchange),
      dispatcher_(shape, exchange_),
      memory_(memory) {
  if (ctx_->bf16 && !shape_.dense) {
    MOE_CUDA_CHECK(cudaMallocHost(&counts_host_, sizeof(int32_t) * shape_.experts));
  }
  if (cfg_.balances_by_bias()) {
    bias_host_.assign(shape_.experts, 0.f);
    MOE_CUDA_CHECK(cudaMalloc(&bias_, sizeof(float) * shape_.experts));
    MOE_CUDA_CHECK(cudaMemset(bias_, 0, sizeof(float) * shape_.experts));
  }
}

CudaMoeLayer::~CudaMoeLayer() {
  if (counts_host_ != nullptr) cudaFreeHost(counts_host_);
  if (bias_ != nullptr) cudaFree(bias_);
}

void CudaMoeLayer::SetRouterBias(const float* bias) {
  if (bias_ == nullptr) return;
  std::copy(bias, bias + shape_.experts, bias_host_.begin());
  // Between steps: the stream's earlier work may still read the old bias.
  MOE_CUDA_CHECK(cudaMemcpyAsync(bias_, bias_host_.data(), sizeof(float) * shape_.experts, cudaMemcpyHostToDevice,
                                 ctx_->stream));
  ctx_->Sync("the router bias update");
}

void CudaMoeLayer::AddTo(BufferTable* table, int64_t n) {
  const int64_t D = shape_.d, F = shape_.ffn, E = shape_.experts, k = shape_.top_k, r = shape_.ExpertRows(n);
  const int64_t S = cfg_.shared_experts, Fs = cfg_.shared_ffn;
  const int32_t count = static_cast<int32_t>(n);
  shared_rows_ = S > 0 && ctx_->bf16 ? cuda::ExpertLayoutRows(&count, 1) : 0;
  if (!shape_.dense) {
    table->Add(&aux_grad_, E);
    table->Add(&stats_, RouterStatsSlots{shape_.experts}.size());
  }
  if (a_ != &own_) return;  // the first layer's set, filled in turn
  if (!shape_.dense) {
    table->Add(&a_->router_logits, n * E);
    table->Add(&a_->probs, n * E);
    table->Add(&a_->router_lse, n);
    table->Add(&a_->weights, n * k);
    table->Add(&a_->expert_idx, n * k);
    table->Add(&a_->a2s, n * k);
    table->Add(&a_->s2a, n * k);
    table->Add(&a_->counts, E);
    table->Add(&a_->routed, E);
    table->Add(&a_->offsets, E + 1);
    if (cfg_.expert_dropout > 0) table->Add(&a_->expert_off, E);
    // xs: only the fp32 experts' backward reads it; with bf16 products the forward's rows go
    // into the bf16 layout (FillInputRows).
    // ys: the experts' output, for the weights' gradient; bf16 values with bf16 products.
    if (!ctx_->bf16) table->Add(&a_->xs, r * D);
    if (!ctx_->bf16) table->Add(&a_->ys, r * D);
    if (ctx_->bf16 && dispatcher_.exchanges()) table->Add(&a_->ys16, r * D);  // one GPU: Rows::y
  }
  if (!ctx_->bf16) {
    table->Add(&a_->g, r * F);
    table->Add(&a_->u, r * F);
    table->Add(&a_->h, r * F);
  }
  if (S > 0) {
    const bool gated = act_ == kernels::ExpertActivation::kSwiglu;
    if (ctx_->bf16) {
      const int64_t lrows = shared_rows_;
      table->Add(&a_->shared_g16, S * lrows * Fs);
      if (gated) table->Add(&a_->shared_u16, S * lrows * Fs);
    } else {
      table->Add(&a_->shared_g, S * n * Fs);
      if (gated) table->Add(&a_->shared_u, S * n * Fs);
      table->Add(&a_->shared_h, S * n * Fs);
    }
  }
}

void CudaMoeLayer::SharedForward(const float* m, const BlockTensors& w, int n, float* out) {
  const int S = cfg_.shared_experts, D = shape_.d, Fs = cfg_.shared_ffn;
  if (S == 0 || n <= 0) return;
  cudaStream_t stream = ctx_->stream;
  const bool gated = act_ == kernels::ExpertActivation::kSwiglu;
  const int64_t wsize = int64_t{D} * Fs;  // one shared expert's W1, W3 or W2
  MoeScratch& sc = *scratch_;
  shared_count_ = n;
  if (ctx_->bf16) {
    const int64_t lf = shared_rows_ * Fs;
    cuda::ToExpertLayout(sc.shared_x16, m, &shared_count_, 1, D, stream);
    for (int s = 0; s < S; ++s) {
      cuda::ExpertsForwardBf16(*sc.grouped, &shared_count_, sc.shared_y, nullptr, a_->shared_g16 + s * lf,
                               gated ? a_->shared_u16 + s * lf : nullptr, nullptr, sc.shared_x16,
                               ctx_->Bf16Of(w.shared_w1 + s * wsize),
                               gated ? ctx_->Bf16Of(w.shared_w3 + s * wsize) : nullptr,
                               ctx_->Bf16Of(w.shared_w2 + s * wsize), 1, D, Fs, sc.shared_scratch16, stream, act_);
      cuda::AddInPlace(out, sc.shared_y, int64_t{n} * D, stream);
    }
    return;
  }
  const int32_t offsets[2] = {0, n};
  MOE_CUDA_CHECK(cudaMemcpyAsync(sc.shared_offsets, offsets, sizeof(offsets), cudaMemcpyHostToDevice, stream));
  const int64_t nf = int64_t{n} * Fs;
  for (int s = 0; s < S; ++s) {
    cuda::ExpertsForward(sc.shared_y, a_->shared_g + s * nf, gated ? a_->shared_u + s * nf : nullptr,
                         a_->shared_h + s * nf, m, w.shared_w1 + s * wsize, gated ? w.shared_w3 + s * wsize : nullptr,
                         w.shared_w2 + s * wsize, sc.shared_offsets, n, 1, D, Fs, false, stream, act_);
    cuda::AddInPlace(out, sc.shared_y, int64_t{n} * D, stream);
  }
}

void CudaMoeLayer::SharedBackward(const float* dout, const float* m, const BlockTensors& w, const BlockTensors& g,
                                  int n, float* dm) {
  const int S = cfg_.shared_experts, D = shape_.d, Fs = cfg_.shared_ffn;
  if (S == 0 || n <= 0) return;
  cudaStream_t stream = ctx_->stream;
  const bool gated = act_ == kernels::ExpertActivation::kSwiglu;
  const int64_t wsize = int64_t{D} * Fs;
  MoeScratch& sc = *scratch_;
  if (ctx_->bf16) {
    const int64_t lf = shared_rows_ * Fs;
    // The input in the layout again (other layers used the scratch since), as the forward made it.
    cuda::ToExpertLayout(sc.shared_x16, m, &shared_count_, 1, D, stream);
    cuda::ToExpertLayout(sc.shared_dy16, dout, &shared_count_, 1, D, stream);
    for (int s = 0; s < S; ++s) {
      const cuda::ExpertGrads dw = GradsAt(*ctx_, g.shared_w1 + s * wsize, gated ? g.shared_w3 + s * wsize : nullptr,
                                           g.shared_w2 + s * wsize);
      cuda::ExpertsBackwardBf16(*sc.grouped, &shared_count_, dm, dw, sc.shared_dy16, sc.shared_x16,
                                a_->shared_g16 + s * lf, gated ? a_->shared_u16 + s * lf : nullptr, nullptr,
                                ctx_->Bf16Of(w.shared_w1 + s * wsize),
                                gated ? ctx_->Bf16Of(w.shared_w3 + s * wsize) : nullptr,
                                ctx_->Bf16Of(w.shared_w2 + s * wsize), 1, D, Fs, sc.shared_scratch16, stream, act_);
    }
    return;
  }
  const int64_t nf = int64_t{n} * Fs;
  for (int s = 0; s < S; ++s) {
    cuda::ExpertsBackward(dm, g.shared_w1 + s * wsize, gated ? g.shared_w3 + s * wsize : nullptr,
                          g.shared_w2 + s * wsize, dout, m, a_->shared_g + s * nf,
                          gated ? a_->shared_u + s * nf : nullptr, a_->shared_h + s * nf, w.shared_w1 + s * wsize,
                          gated ? w.shared_w3 + s * wsize : nullptr, w.shared_w2 + s * wsize, sc.shared_offsets, n, 1,
                          D, Fs, sc.shared_scratch, false, stream, act_);
  }
}

void CudaMoeLayer::ReserveSaved() {
  const int64_t rows = std::max<int64_t>(dispatcher_.layout().rows, 1);
  scratch_->ReserveExpertRows(rows, *ctx_);
  if (rows <= a_->rows.capacity) return;
  ctx_->Sync("growing the layer's saved expert rows");
  const int64_t D = shape_.d, F = shape_.ffn;
  a_->rows.capacity = CudaGrownRows(rows, a_->rows.capacity);
  a_->rows.mem = std::make_unique<DeviceArena>(memory_);
  a_->rows.x = dispatcher_.exchanges() ? a_->rows.mem->Alloc<cuda::bf16>(a_->rows.capacity * D) : nullptr;
  a_->rows.g = a_->rows.mem->Alloc<cuda::bf16>(a_->rows.capacity * F);
  const bool gated = act_ == kernels::ExpertActivation::kSwiglu;
  a_->rows.u = gated ? a_->rows.mem->Alloc<cuda::bf16>(a_->rows.capacity * F) : nullptr;
  const bool in_layout = !dispatcher_.exchanges() && !shape_.dense;
  a_->rows.y = in_layout ? a_->rows.mem->Alloc<cuda::bf16>(a_->rows.capacity * D) : nullptr;
  a_->rows.h = a_->rows.mem->Alloc<cuda::bf16>(a_->rows.capacity * F);
}

void CudaMoeLayer::Route(const float* m, const BlockTensors& w, int n, const BatchContext& ctx, bool rerun) {
  const int D = shape_.d, E = shape_.experts, k = shape_.top_k;
  cudaStream_t stream = ctx_->stream;
  // fp32 router product, softmax, top-k, renormalised weights; the plan (capacity). The product
  // of a narrow router by RouterProduct (kernels/cuda/router_product.h says what was measured),
  // wider ones through cuBLAS.
  if (E <= cuda::kRouterProductMaxExperts) {
    cuda::RouterProduct(a_->router_logits, m, w.router, n, D, E, stream);
  } else {
    ctx_->Linear(a_->router_logits, m, w.router, n, D, E, /*fp32=*/true);
  }
  cuda::RouterForward(a_->probs, a_->router_lse, a_->expert_idx, a_->weights, a_->router_logits, n, E, k,
                      RouterScoringOf(cfg_, bias_), stream);
  // Expert dropout: the same draws as the CPU's (moe_bookkeeping.h), in training only.
  const uint8_t* off = nullptr;
  if (ctx.train && a_->expert_off != nullptr) {
    off_host_ = ExpertsSwitchedOff(ExpertDropoutSeed(ctx.dropout_seed, layer_), cfg_.expert_dropout, E);
    MOE_CUDA_CHECK(cudaMemcpyAsync(a_->expert_off, off_host_.data(), E, cudaMemcpyHostToDevice, stream));
    off = a_->expert_off;
  }
  cuda::BuildRoutingPlan(a_->counts, a_->routed, a_->offsets, a_->a2s, a_->s2a, a_->expert_idx, n, k, E,
                         ExpertCapacity(cfg_.capacity_factor, n, k, E), off, stream);
  if (ctx_->bf16) {
    // The counts' copy to the host: the experts' products (and the route between GPUs) need
    // each expert's rows there. Waited on only once the statistics and the permute are queued.
    MOE_CUDA_CHECK(cudaMemcpyAsync(counts_host_, a_->counts, sizeof(int32_t) * E, cudaMemcpyDeviceToHost, stream));
    MOE_CUDA_CHECK(cudaEventRecord(scratch_->counts_ready, stream));
  }
  // The layer's statistics, summed over GPUs before the aux gradient reads the global counts (a
  // rerun keeps the first run's: the same routing, and no collective of its own).
  if (rerun) return;
  const RouterStatsSlots slot{E};
  MOE_CUDA_CHECK(cudaMemsetAsync(stats_, 0, sizeof(double) * slot.size(), stream));
  cuda::RouterStats(stats_ + slot.prob_sum(), stats_ + slot.z_sum(), stats_ + slot.entropy_sum(), a_->probs,
                    a_->router_lse, n, E, /*normalize=*/cfg_.router_sigmoid, stream);
  cuda::RouterCountStats(stats_, a_->routed, a_->counts, E, off, stream);
  if (exchange_ != nullptr) exchange_->SumStats(stats_, slot.size(), stream);
  cuda::RouterAuxGrad(aux_grad_, stats_ + slot.routed(), E, static_cast<double>(ctx.global_tokens), k,
                      cfg_.aux_coef * E, ctx.loss_scale, stream);
}

void CudaMoeLayer::Forward(const float* m, const BlockTensors& w, int n, const BatchContext& ctx, float* out,
                           bool rerun, const float* residual, const cuda::bf16* m16) {
  const int D = shape_.d, F = shape_.ffn, E = shape_.experts, k = shape_.top_k;
  cudaStream_t stream = ctx_->stream;
  if (shape_.dense) {
    // One replicated expert takes every token: no routing, no exchange.
    if (ctx_->bf16) {
      const int32_t counts[1] = {n};
      dispatcher_.Preprocess(counts);
      FillInputRows(m, m16, n);
      ExpertsForward16(w, out, nullptr);
    } else {
      const int32_t offsets[2] = {0, n};
      MOE_CUDA_CHECK(
          cudaMemcpyAsync(scratch_->dense_offsets, offsets, sizeof(offsets), cudaMemcpyHostToDevice, stream));
      cuda::ExpertsForward(out, a_->g, a_->u, a_->h, m, w.w1, w.w3, w.w2, scratch_->dense_offsets, n, 1, D, F, false,
                           stream, act_);
    }
    SharedForward(m, w, n, out);
    if (residual != nullptr) cuda::AddInPlace(out, residual, int64_t{n} * D, stream);
    return;
  }
  Route(m, w, n, ctx, rerun);
  // The residual goes into the combine unless shared experts add to its output afterwards.
  const float* combine_residual = cfg_.shared_experts == 0 ? residual : nullptr;
  // Permute -> experts -> unpermute (bf16: the permute goes into the experts' layout, through
  // the dispatcher).
  if (ctx_->bf16) {
    const auto wait = std::chrono::steady_clock::now();
    ctx_->WaitEvent(scratch_->counts_ready, "the expert counts");
    CountsWaitSeconds() += std::chrono::duration<double>(std::chrono::steady_clock::now() - wait).count();
    dispatcher_.Preprocess(counts_host_);
    FillInputRows(m, m16, n);
    if (dispatcher_.exchanges()) {
      ExpertsForward16(w, nullptr, a_->ys16);
      cuda::UnpermuteForward(out, a_->ys16, a_->weights, a_->a2s, n, k, D, stream, combine_residual);
    } else {  // one GPU: combined straight out of the layout
      ExpertsForward16(w, nullptr, nullptr);
      cuda::CombineFromExpertLayout(out, a_->rows.y, a_->weights, a_->a2s, a_->expert_idx, n, k,
                                    dispatcher_.local_counts(), shape_.experts_local, D, stream, combine_residual);
    }
  } else {
    cuda::PermuteForward(a_->xs, m, a_->a2s, n, k, D, stream);
    cuda::ExpertsForward(a_->ys, a_->g, a_->u, a_->h, a_->xs, w.w1, w.w3, w.w2, a_->offsets, n * k, E, D, F, false,
                         stream, act_);
    cuda::UnpermuteForward(out, a_->ys, a_->weights, a_->a2s, n, k, D, stream, combine_residual);
  }
  SharedForward(m, w, n, out);
  if (residual != nullptr && combine_residual == nullptr) cuda::AddInPlace(out, residual, int64_t{n} * D, stream);
}

void CudaMoeLayer::FillInputRows(const float* m, const cuda::bf16* m16, int n) {
  const int D = shape_.d, k = shape_.top_k;
  cudaStream_t stream = ctx_->stream;
  ReserveSaved();
  MoeScratch& s = *scratch_;
  if (shape_.dense) {  // plan order is token order
    dispatcher_.Dispatch(m, InputRows(), s.dispatch(), stream);
  } else if (dispatcher_.exchanges()) {  // plan order, then the exchange
    cuda::PermuteForward(s.d_expert_in, m, a_->a2s, n, k, D, stream);
    dispatcher_.Dispatch(s.d_expert_in, InputRows(), s.dispatch(), stream);
  } else if (m16 != nullptr) {  // one GPU: plan order is the layout's order, one gather
    cuda::GatherToExpertLayout(InputRows(), m16, a_->s2a, k, dispatcher_.local_counts(), shape_.experts_local, D,
                               stream);
  } else {
    cuda::GatherToExpertLayout(InputRows(), m, nullptr, a_->s2a, k, dispatcher_.local_counts(), shape_.experts_local,
                               D, stream);
  }
}

void CudaMoeLayer::ExpertsForward16(const BlockTensors& w, float* out, cuda::bf16* out16) {
  const int D = shape_.d, F = shape_.ffn, L = shape_.experts_local;
  cudaStream_t stream = ctx_->stream;
  MoeScratch& s = *scratch_;
  cuda::bf16* x = InputRows();
  const int32_t* counts = dispatcher_.local_counts();
  const cuda::bf16 *w1 = ctx_->Bf16Of(w.w1), *w3 = w.w3 != nullptr ? ctx_->Bf16Of(w.w3) : nullptr,
                   *w2 = ctx_->Bf16Of(w.w2);
  if (!dispatcher_.exchanges()) {
    // Plan order is expert order: the experts write the output directly.
    cuda::ExpertsForwardBf16(*s.grouped, counts, out, out16, a_->rows.g, a_->rows.u, a_->rows.h, x, w1, w3, w2, L, D,
                             F, s.backward, stream, act_, a_->rows.y);
    return;
  }
  cuda::ExpertsForwardBf16(*s.grouped, counts, nullptr, s.ys, a_->rows.g, a_->rows.u, a_->rows.h, x, w1, w3, w2, L, D,
                           F, s.backward, stream, act_);
  if (out != nullptr) dispatcher_.Combine(s.ys, out, s.dispatch(), stream);
  if (out16 != nullptr) dispatcher_.Combine(s.ys, out16, s.dispatch(), stream);
}

void CudaMoeLayer::Backward(const float* dout, const float* m, const BlockTensors& w, const BlockTensors& g, int n,
                            float loss_scale, float* dm, bool expert_grads_unwritten, const cuda::bf16* m16) {
  if (expert_grads_unwritten && (!ctx_->bf16 || shape_.dense)) {
    throw std::logic_error("CudaMoeLayer::Backward: unwritten expert gradients need routed bf16 experts");
  }
  const int D = shape_.d, F = shape_.ffn, E = shape_.experts, k = shape_.top_k;
  cudaStream_t stream = ctx_->stream;
  MoeScratch& s = *scratch_;
  if (shape_.dense) {
    if (ctx_->bf16) {
      RedoInputRows(m, m16, n);
      ExpertsBackward16(dout, w, g, dm);
    } else {
      cuda::ExpertsBackward(dm, g.w1, g.w3, g.w2, dout, m, a_->g, a_->u, a_->h, w.w1, w.w3, w.w2, s.dense_offsets, n, 1,
                            D, F, s.fp32_scratch, false, stream, act_);
    }
    SharedBackward(dout, m, w, g, n, dm);
    return;
  }
  const int rows = n * k;
  // The experts' output rows' gradient (rows, D): weights[a] * dout[token] at slot a2s[a]. bf16:
  // into the layout (MoeScratch::dys16); on one GPU gathered there, with the forward's input rows
  // again; on several through d_expert_in (plan order) and the exchange (the forward's route).
  // One GPU, bf16: plan order is the layout's order, so rows go into and out of it directly.
  const bool in_layout = ctx_->bf16 && !dispatcher_.exchanges();
  MOE_CUDA_CHECK(cudaMemsetAsync(s.dweights, 0, sizeof(float) * rows, stream));
  if (in_layout) {
    // The routing weights' gradient (dout . the experts' output row) in the same pass.
    cuda::GatherToExpertLayout(s.dys16, dout, a_->weights, a_->s2a, k, dispatcher_.local_counts(),
                               shape_.experts_local, D, stream, a_->rows.y, s.dweights);
    RedoInputRows(m, m16, n);
  } else if (ctx_->bf16) {
    MOE_CUDA_CHECK(cudaMemsetAsync(s.d_expert_in, 0, sizeof(float) * rows * D, stream));
    cuda::UnpermuteBackward(s.d_expert_in, s.dweights, dout, a_->ys16, a_->weights, a_->a2s, n, k, D, stream);
    dispatcher_.Dispatch(s.d_expert_in, s.dys16, s.dispatch(), stream);
  } else {
    MOE_CUDA_CHECK(cudaMemsetAsync(s.dys, 0, sizeof(float) * rows * D, stream));
    cuda::UnpermuteBackward(s.dys, s.dweights, dout, a_->ys, a_->weights, a_->a2s, n, k, D, stream);
  }
  if (in_layout) {
    // One GPU: the input rows' gradient stays in the layout (bf16), summed per token into dm (a
    // layer whose experts kept no rows has nothing to add, and unwritten gradients get zeros).
    const cuda::bf16* dx = nullptr;
    ExpertsBackward16(nullptr, w, g, nullptr, &dx, expert_grads_unwritten);
    if (dispatcher_.rows_in() > 0) {
      cuda::AddFromExpertLayout(dm, dx, a_->a2s, a_->expert_idx, n, k, dispatcher_.local_counts(),
                                shape_.experts_local, D, stream);
    }
  } else {
    MOE_CUDA_CHECK(cudaMemsetAsync(s.d_expert_in, 0, sizeof(float) * rows * D, stream));
    if (ctx_->bf16) {
      ExpertsBackward16(nullptr, w, g, s.d_expert_in, nullptr, expert_grads_unwritten);
    } else {
      cuda::ExpertsBackward(s.d_expert_in, g.w1, g.w3, g.w2, s.dys, a_->xs, a_->g, a_->u, a_->h, w.w1, w.w3, w.w2,
                            a_->offsets, rows, E, D, F, s.fp32_scratch, false, stream, act_);
    }
    cuda::PermuteBackward(dm, s.d_expert_in, a_->a2s, n, k, D, stream);
  }
  MOE_CUDA_CHECK(cudaMemsetAsync(s.drouter, 0, sizeof(float) * n * E, stream));
  cuda::RouterBackward(s.drouter, s.dweights, a_->probs, a_->router_lse, a_->expert_idx, aux_grad_,
                       static_cast<float>(cfg_.z_coef * loss_scale), n, E, k, RouterScoringOf(cfg_, bias_),
                       a_->router_logits, stream);
  ctx_->LinearBackward(dm, g.router, s.drouter, nullptr, m, w.router, n, D, E, /*fp32=*/true, /*add_to_dinp=*/true);
  SharedBackward(dout, m, w, g, n, dm);
}

void CudaMoeLayer::RedoInputRows(const float* m, const cuda::bf16* m16, int n) {
  if (!dispatcher_.exchanges()) FillInputRows(m, m16, n);
}

void CudaMoeLayer::ExpertsBackward16(const float* dout, const BlockTensors& w, const BlockTensors& g, float* din,
                                     const cuda::bf16** din_layout, bool unwritten) {
  const int D = shape_.d, F = shape_.ffn, L = shape_.experts_local;
  cudaStream_t stream = ctx_->stream;
  MoeScratch& s = *scratch_;
  const int32_t* counts = dispatcher_.local_counts();
  const cuda::bf16 *w1 = ctx_->Bf16Of(w.w1), *w3 = w.w3 != nullptr ? ctx_->Bf16Of(w.w3) : nullptr,
                   *w2 = ctx_->Bf16Of(w.w2);
  cuda::ExpertGrads dw = GradsAt(*ctx_, g.w1, g.w3, g.w2);
  dw.unwritten = unwritten;
  // The gradient of the experts' output goes where their rows went (bf16, like the activations).
  if (dout != nullptr) dispatcher_.Dispatch(dout, s.dys16, s.dispatch(), stream);
  if (!dispatcher_.exchanges()) {
    cuda::ExpertsBackwardBf16(*s.grouped, counts, din, dw, s.dys16, InputRows(), a_->rows.g, a_->rows.u, a_->rows.h,
                              w1, w3, w2, L, D, F, s.backward, stream, act_, din_layout);
    return;
  }
  const int64_t rows = dispatcher_.rows_in();
  MOE_CUDA_CHECK(cudaMemsetAsync(s.dxs, 0, sizeof(float) * rows * D, stream));
  cuda::ExpertsBackwardBf16(*s.grouped, counts, s.dxs, dw, s.dys16, InputRows(), a_->rows.g, a_->rows.u, a_->rows.h,
                            w1, w3, w2, L, D, F, s.backward, stream, act_);
  cuda::CastToBf16(s.dx16, s.dxs, rows * D, stream);
  dispatcher_.Combine(s.dx16, din, s.dispatch(), stream);
}

}  // namespace moe

#endif  // MOE_WITH_CUDA
