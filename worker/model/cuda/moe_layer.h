// One MoE feed-forward layer on a GPU, the twin of model/cpu/moe_layer.h, in the same pieces:
// router (fp32 product, softmax or sigmoid, top-k with the balancing bias, the routing plan with
// its capacity and expert dropout) -> statistics (the
// RouterStatsSlots of model/moe_bookkeeping.h, summed over GPUs) -> permute -> token
// dispatcher (to the experts' GPUs, token_dispatcher.h) -> experts -> dispatcher back ->
// unpermute and weight. Backward mirrors it. In bf16 the experts run on the fast path of
// kernels/cuda (cuBLAS over the padded or chunked layout), in fp32 on the simple grouped
// kernels (one GPU). A dense model (E = 1) runs its one expert over every token, no router.
#pragma once

#ifdef MOE_WITH_CUDA

#include <cstdint>
#include <memory>
#include <vector>

#include "kernels/cuda/moe.h"
#include "worker/model/cuda/cuda_context.h"
#include "worker/model/cuda/device_arena.h"
#include "worker/model/cuda/token_dispatcher.h"
#include "worker/model/model_config.h"
#include "worker/model/moe_bookkeeping.h"
#include "worker/model/param_layout.h"
#include "worker/model/train_model.h"

namespace moe {

// What every MoE layer of a model shares: the experts' cuBLAS handle, the event of the count
// copy, and scratch that only one layer uses at a time. Rows of the experts (`rows`) depend on
// the routing, so those buffers grow on demand; the others are per batch (n tokens).
class MoeScratch {
 public:
  // exchanges: the MoE layers' rows travel between GPUs (an ExpertExchange, and not dense); only
  // then are the plan-order and wire copies of the rows and the compact gradient needed.
  // shared_experts, shared_ffn: model.moe's shared experts (S, F_s; S 0: none).
  MoeScratch(const MoeShape& shape, bool bf16, bool exchanges, int shared_experts, int shared_ffn,
             DeviceMemory* memory);
  ~MoeScratch();

  // The per-batch buffers, for n tokens, into the model's activation table.
  void AddTo(BufferTable* table, int64_t n);
  // Makes the expert-row scratch hold `rows` rows (waits for ctx's stream before it reallocates).
  void ReserveExpertRows(int64_t rows, const CudaContext& ctx);

  std::unique_ptr<cuda::GroupedBlas> grouped;  // bf16
  cudaEvent_t counts_ready = nullptr;          // bf16
  // Per batch (r = n k expert rows, n when dense).
  // (r, D) plan order. dys: fp32 mode only. d_expert_in: the input rows' gradient, and on several
  // GPUs the forward's permuted rows; null for one GPU's bf16 layers (the layout's gather and
  // add-back instead).
  float *dys = nullptr, *d_expert_in = nullptr;
  float *dweights = nullptr, *drouter = nullptr;  // (n, k), (n, E)
  float* fp32_scratch = nullptr;                 // (2 r F) fp32 experts' backward
  int32_t* dense_offsets = nullptr;              // (2) {0, n}: a dense model's one expert, fp32
  cuda::bf16* plan16 = nullptr;                  // (r, D) bf16 rows in plan order (exchanges only)
  // The shared experts', per batch: one expert's output (n, D); bf16: the layer's input and
  // output gradient in the experts' layout (lrows, D: the backward makes the input again) and
  // the fast path's scratch; fp32: the backward's scratch (2 n F_s) and offsets {0, n}.
  float *shared_y = nullptr, *shared_scratch = nullptr;
  int32_t* shared_offsets = nullptr;
  cuda::bf16 *shared_x16 = nullptr, *shared_dy16 = nullptr, *shared_scratch16 = nullptr;
  // Expert rows (capacity of them), bf16 mode: dys16 (layout) and the experts' scratch; on one
  // GPU x16, the experts' input in the layout (each layer's forward, and its backward again);
  // when the rows travel between GPUs wire (wire order), ys, dx16 (compact bf16) and dxs.
  int64_t capacity = 0;
  cuda::bf16 *wire = nullptr, *ys = nullptr, *dys16 = nullptr, *dx16 = nullptr, *backward = nullptr;
  cuda::bf16* x16 = nullptr;
  float* dxs = nullptr;  // (capacity, D) fp32 gradient of the experts' input
  DispatchScratch dispatch() const { return {wire, plan16}; }

 private:
  MoeShape shape_;
  bool bf16_, exchanges_;
  int shared_experts_, shared_ffn_;
  DeviceArena rows_mem_;
};

// What one layer's Forward saves for its Backward (n tokens, r = n k rows), and its per-batch
// scratch: one set per layer, or with train.recompute full one set that every layer fills in
// turn (CudaMoeLayer::ShareSaved), since each block then runs again right before its backward.
struct MoeSaved {
  float *router_logits = nullptr, *probs = nullptr, *router_lse = nullptr, *weights = nullptr;  // (n,E) (n,E) (n) (n,k)
  int32_t *expert_idx = nullptr, *a2s = nullptr, *s2a = nullptr;     // (n,k) (n k) (n k)
  int32_t *counts = nullptr, *routed = nullptr, *offsets = nullptr;  // (E) (E) (E+1)
  uint8_t* expert_off = nullptr;  // (E) expert dropout's switched-off experts, when the job has it
  float *xs = nullptr, *ys = nullptr;             // (r, D) plan order, fp32 mode
  cuda::bf16* ys16 = nullptr;  // (r, D) plan order, bf16 mode on several GPUs: the experts' bf16 output
  float *g = nullptr, *u = nullptr, *h = nullptr;  // (r, F) fp32 mode
  // Shared experts (S of hidden F_s; their scratch is MoeScratch's). fp32: g, u, h (S, n, F_s);
  // bf16: g, u (S, lrows, F_s) in the experts' layout (h = act(g, u) is computed again in the
  // backward, kernels/cuda/experts.h). u only for swiglu.
  float *shared_g = nullptr, *shared_u = nullptr, *shared_h = nullptr;
  cuda::bf16 *shared_g16 = nullptr, *shared_u16 = nullptr;
  // bf16: the experts' input and what their backward needs, in the experts' layout, for the
  // rows this rank's experts take (on several GPUs that depends on the routing: grown on demand).
  // h = act(g, u) too (computing it again in the backward cost more than 2% of a step on an
  // H100: medium 128,398 against 131,137 tokens/s kept). u only for swiglu. x
  // only when the rows travel between GPUs: on one GPU the backward makes the layout's input
  // again from the layer's input m (the forward's gather into the layout, in MoeScratch::x16).
  // y: on one GPU (routed experts), the experts' output where the last product wrote it, read
  // by the combine (CombineFromExpertLayout) and the routing weights' gradient in place of ys16.
  struct Rows {
    int64_t capacity = 0;  // rows
    cuda::bf16 *x = nullptr, *g = nullptr, *u = nullptr, *h = nullptr, *y = nullptr;
    std::unique_ptr<DeviceArena> mem;
  } rows;
};

class CudaMoeLayer {
 public:
  // exchange: null on one GPU. layer: the block's index (expert dropout's draws).
  CudaMoeLayer(const ModelConfig& cfg, const MoeShape& shape, const CudaContext* ctx, MoeScratch* scratch,
               ExpertExchange* exchange, DeviceMemory* memory, int layer = 0);
  ~CudaMoeLayer();

  // train.recompute full: this layer saves into first's set (call before AddTo).
  void ShareSaved(CudaMoeLayer* first) { a_ = first->a_; }
  // This layer's per-batch buffers for n tokens, into the model's activation table (its saved
  // set only when it owns it).
  void AddTo(BufferTable* table, int64_t n);
  // m (n, D) -> out (n, D) (overwritten). The layer's statistics (RouterStatsSlots, summed
  // over GPUs) are then in stats() on the device; its aux gradient is already computed there.
  // rerun: train.recompute full's second run of the micro-batch inside the backward; it routes
  // the same way and keeps the first run's statistics and aux gradient (no sum over GPUs, nothing
  // counted twice).
  // residual (n, D), when given: out = residual + the layer's output (added as the routed
  // combine writes it when there are no shared experts). m16, when given: m rounded to bf16 (the
  // RMSNorm's second output), which the experts' input rows are gathered from instead of m on
  // one GPU (the same bits, half the bytes read).
  void Forward(const float* m, const BlockTensors& w, int n, const BatchContext& ctx, float* out,
               bool rerun = false, const float* residual = nullptr, const cuda::bf16* m16 = nullptr);
  // dout (n, D) -> dm (n, D) +=, parameter gradients += into g. m: the forward's input.
  // expert_grads_unwritten: the routed experts' weight gradients hold nothing yet (the model did
  // not clear them): they are written, not added to.
  void Backward(const float* dout, const float* m, const BlockTensors& w, const BlockTensors& g, int n,
                float loss_scale, float* dm, bool expert_grads_unwritten = false, const cuda::bf16* m16 = nullptr);

  const double* stats() const { return stats_; }  // device, RouterStatsSlots{E}.size()

  // Loss-free balancing's bias (E), 0 at the start: the host copy, and its upload to the device
  // (between steps; only when the job balances by bias).
  const std::vector<float>& router_bias() const { return bias_host_; }
  void SetRouterBias(const float* bias);

 private:
  // The router: logits, probabilities, top-k, the plan, the statistics and the aux gradient.
  void Route(const float* m, const BlockTensors& w, int n, const BatchContext& ctx, bool rerun);
  // The experts' bf16 input rows (InputRows) from the layer's input m (n, D), after the
  // dispatcher's Preprocess: dense, m's rows; one GPU, m's rows gathered into the layout
  // (GatherToExpertLayout, the permute and the cast in one pass; from m16 when given, a copy of
  // rows); several GPUs, permuted (d_expert_in, plan order) and sent.
  void FillInputRows(const float* m, const cuda::bf16* m16, int n);
  // The experts on the bf16 rows of FillInputRows: products, combine -> out16 (bf16, the saved
  // ys, plan order), or dense -> out (fp32, n rows); the other output null. One GPU, routed:
  // both null, the output stays in the layout (MoeSaved::Rows::y).
  void ExpertsForward16(const BlockTensors& w, float* out, cuda::bf16* out16);
  // dout: the output rows' gradient (fp32, plan order), or null when it is already in
  // MoeScratch::dys16. din: the input rows' gradient (fp32, plan order) +=; or, one GPU with a
  // strided or chunked layout, din_layout: where the experts leave it in the layout (bf16).
  // unwritten: g's routed expert gradients hold nothing yet (ExpertGrads::unwritten).
  void ExpertsBackward16(const float* dout, const BlockTensors& w, const BlockTensors& g, float* din,
                         const cuda::bf16** din_layout = nullptr, bool unwritten = false);
  // Makes the saved expert rows hold the dispatcher's layout.
  void ReserveSaved();
  // The experts' bf16 input rows in the layout: saved (rows travel between GPUs), or
  // MoeScratch::x16, which the forward fills and the backward fills again (RedoInputRows).
  cuda::bf16* InputRows() const { return dispatcher_.exchanges() ? a_->rows.x : scratch_->x16; }
  // One GPU: InputRows again from the layer's input m, as the forward made them. Nothing when
  // the rows travel between GPUs (saved).
  void RedoInputRows(const float* m, const cuda::bf16* m16, int n);
  // The shared experts (model.moe.shared_experts): out (n, D) += sum_s Shared_s(m), and back
  // (dm += ; their weights' gradients +=). Every token, like a dense model's expert.
  void SharedForward(const float* m, const BlockTensors& w, int n, float* out);
  void SharedBackward(const float* dout, const float* m, const BlockTensors& w, const BlockTensors& g, int n,
                      float* dm);

  ModelConfig cfg_;
  MoeShape shape_;
  int layer_ = 0;
  kernels::ExpertActivation act_;
  std::vector<float> bias_host_;  // (E) when balancing by bias
  float* bias_ = nullptr;         // (E) device copy
  const CudaContext* ctx_;
  MoeScratch* scratch_;
  ExpertExchange* exchange_;  // null on one GPU and when dense
  CudaTokenDispatcher dispatcher_;
  int32_t* counts_host_ = nullptr;  // (E) pinned: the plan's counts, the one count copy per layer
  std::vector<uint8_t> off_host_;   // (E) expert dropout's switched-off experts, host copy

  // The statistics and the aux gradient stay per layer: a rerun reuses them.
  float* aux_grad_ = nullptr;  // (E)
  double* stats_ = nullptr;    // (RouterStatsSlots)
  int64_t shared_rows_ = 0;    // lrows: the experts' layout rows of n tokens (shared experts, bf16)
  int32_t shared_count_ = 0;   // n, for the bf16 path's host counts
  MoeSaved own_;
  MoeSaved* a_ = &own_;  // own_, or the first layer's set with train.recompute full
  DeviceMemory* memory_;
};

}  // namespace moe

#endif  // MOE_WITH_CUDA
