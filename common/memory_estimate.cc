#include "common/memory_estimate.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "common/backend_limits.h"
#include "kernels/muon_plan.h"

namespace moe {
namespace {

int64_t Bytes(double v) {
  if (!(v > 0)) return 0;
  if (v >= static_cast<double>(std::numeric_limits<int64_t>::max())) return std::numeric_limits<int64_t>::max();
  return static_cast<int64_t>(std::llround(v));
}

// One optimizer-state buffer of `count` values (worker/model/optimizer_state.h): fp32, bf16, or
// int8 blocks of at most 2048 values that never cross a tensor, one fp32 scale each.
double StateBytes(v1::StateStorage storage, double count, double tensors) {
  switch (storage) {
    case v1::STATE_BF16: return 2 * count;
    case v1::STATE_INT8: return count + 4 * (std::ceil(count / 2048) + tensors);
    default: return 4 * count;
  }
}

// The shape of one rank's micro-batch, in the names of MODEL.md.
struct Shape {
  double V, D, L, H, Hkv, hd, T, E, k, F, W;
  double n;        // tokens of one micro-batch on this rank: batch / W / grad_accum * T
  double kept;     // assignments this rank routes and keeps (capacity drops the rest)
  double e_local;  // experts on this rank
  double glu;      // hidden activations per row: 3 for swiglu (gate, up, product), else 2 (bf16 CUDA's shared
                   // experts save all but h)
  double S, Fs;    // shared experts and their hidden size
  bool dense;
  double C3() const { return (H + 2 * Hkv) * hd; }
};

Shape ShapeOf(const v1::JobSpec& spec) {
  const v1::ModelSpec& m = spec.model();
  const v1::MoeSpec& e = m.moe();
  Shape s{};
  s.V = m.vocab_size();
  s.D = m.d_model();
  s.L = m.n_layers();
  s.H = m.n_heads();
  s.Hkv = m.n_kv_heads() > 0 ? m.n_kv_heads() : m.n_heads();
  s.hd = m.n_heads() > 0 ? s.D / s.H : 0;
  s.T = m.seq_len();
  s.E = std::max(1, e.num_experts());
  s.k = std::max(1, e.top_k());
  s.F = e.expert_hidden();
  s.W = std::max(1, spec.resources().ranks());
  s.dense = s.E <= 1;
  const double accum = std::max(1, spec.train().grad_accum());
  s.n = static_cast<double>(spec.train().batch_size()) / s.W / accum * s.T;
  s.kept = s.dense ? s.n : s.n * s.k;
  if (!s.dense && e.capacity_factor() > 0) {
    s.kept = std::min(s.kept, s.E * std::ceil(e.capacity_factor() * s.n * s.k / s.E));
  }
  s.e_local = s.dense ? 1 : s.E / s.W;
  s.glu = e.activation() == v1::ACTIVATION_RELU2 || e.activation() == v1::ACTIVATION_GELU ? 2 : 3;
  s.S = std::max(0, e.shared_experts());
  s.Fs = e.shared_expert_hidden() > 0 ? e.shared_expert_hidden() : s.F;
  return s;
}

// Elements of one block's attention half that the forward keeps (both backends): x_in, attn_in,
// attn_y, x_mid, moe_in (n, D) each, two RMSNorm rstd (n), q k v (n, C3) and the attention's
// log-sum-exp (n, H): neither backend stores the H x T probabilities (flash-style). QK-norm
// keeps q and k before their norm and their rstd; the gate keeps its logits and the ungated y.
double AttentionElements(const Shape& s, const v1::AttentionSpec& a) {
  double e = 5 * s.n * s.D + 2 * s.n + s.n * s.C3() + s.n * s.H;
  if (a.qk_norm()) e += s.n * (s.H + s.Hkv) * (s.hd + 1);
  if (a.gate()) e += s.n * s.H * s.hd + s.n * s.D;
  return e;
}

// The CPU reference (worker/model/cpu): everything fp32 (ints are 4 bytes too).
void CpuActivations(const Shape& s, const v1::JobSpec& spec, MemoryEstimate* out) {
  const double n = s.n, D = s.D, r = s.kept;
  // moe_layer.h: router logits and probabilities (n, E), lse (n), weights and expert ids (n, k),
  // the routing plan's two index tables (kept, n k), permuted rows xs and ys (kept, D), the
  // expert rows in, out and the dispatcher's wire copy (r, D), and the experts' hidden
  // activations (r, F) each. Dense: the one expert's hidden activations over every token.
  const double moe = s.dense ? s.glu * n * s.F
                             : 2 * n * s.E + n + 2 * n * s.k + s.kept + n * s.k + 2 * s.kept * D + 3 * r * D +
                                   s.glu * r * s.F;
  const double shared = s.S * s.glu * n * s.Fs;
  const double block = AttentionElements(s, spec.model().attention()) + moe + shared;
  // After the blocks: x_final, final_out (n, D), rstd, CE lse and losses (n), logits (n, V), the
  // token ids and targets (model and trainer, n each).
  const double head = 2 * n * D + 3 * n + n * s.V + 4 * n;
  const bool recompute = spec.train().recompute() == v1::RECOMPUTE_FULL;
  // Recompute full (Model::BlockForward's rerun) keeps each block's input, and one block's
  // activations while it runs again, with that run's residual and branch output (n, D) each.
  const double kept_blocks = recompute ? s.L * n * D + block + 2 * n * D : s.L * block;
  out->activations = Bytes(4 * (kept_blocks + head));
  // The backward's buffers (Model::Backward): dnorm, dx, dtmp (n, D), dqkv (n, C3); inside an
  // MoE layer's backward dys and dxs (kept, D), the expert rows' gradients (r, D) x 2, the
  // experts' scratch (r, 2F), the weights' and the router's gradients (n, k), (n, E).
  const double moe_bwd = s.dense ? 2 * n * s.F
                                 : 2 * s.kept * D + 2 * r * D + 2 * r * s.F + n * s.k + n * s.E;
  out->workspace = Bytes(4 * (3 * n * D + n * s.C3() + moe_bwd + (s.S > 0 ? 2 * n * s.Fs : 0)));
}

// train.optimizer muon: the Newton-Schulz workspace of worker/model/cuda/device_optimizer.cc, over
// the Muon tensors in ParamLayout's order (per block wqkv, wg, wo, a dense expert's w1 w3 w2, the
// shared experts'; then each block's expert tensors), planned by the same kernels/muon_plan.h.
double CudaMuonWorkspace(const Shape& s, const v1::JobSpec& spec) {
  if (spec.train().optimizer() != v1::OPTIMIZER_MUON) return 0;
  const double widest = std::max({s.D, s.F, s.Fs, s.C3(), s.H * s.hd});
  // Absurd specs saturate rather than overflow the plan's int64 arithmetic.
  if (!(widest * widest * std::max({s.e_local, s.S, 1.0}) * s.L < 1e15)) return std::numeric_limits<double>::infinity();
  const auto i64 = [](double v) { return static_cast<int64_t>(std::llround(v)); };
  const int64_t D = i64(s.D), F = i64(s.F), Fs = i64(s.Fs), S = i64(s.S), e_local = i64(s.e_local);
  const bool gated = s.glu == 3;
  std::vector<kernels::MuonTensorShape> tensors;
  auto experts = [&](int64_t batch, int64_t hidden) {
    tensors.push_back({batch, D, hidden});
    if (gated) tensors.push_back({batch, D, hidden});
    tensors.push_back({batch, hidden, D});
  };
  for (int64_t l = 0; l < i64(s.L); ++l) {
    tensors.push_back({1, i64(s.C3()), D});
    if (spec.model().attention().gate()) tensors.push_back({1, i64(s.H * s.hd), D});
    tensors.push_back({1, D, D});
    if (s.dense) experts(1, F);
    if (S > 0) experts(S, Fs);
  }
  if (!s.dense) {
    for (int64_t l = 0; l < i64(s.L); ++l) experts(e_local, F);
  }
  kernels::MuonWorkspaceSize size;
  kernels::PlanMuonChunks(tensors, &size);
  return static_cast<double>(size.Bytes(spec.train().precision() == v1::PRECISION_BF16));
}

// The CUDA backend (worker/model/cuda): cuda_model.cc's activation table, CudaMoeLayer's and
// MoeScratch's buffers; fp32 buffers plus bf16 copies for the tensor-core products in bf16.
void CudaActivations(const Shape& s, const v1::JobSpec& spec, MemoryEstimate* out) {
  const bool bf16 = spec.train().precision() == v1::PRECISION_BF16;
  const double n = s.n, D = s.D, F = s.F;
  const double rows = s.dense ? n : n * s.k;  // MoeShape::ExpertRows: the plan-order tables
  // The experts' layout (kernels/cuda/expert_layout): this rank's rows (as many as it routes,
  // when the routing is balanced), each expert padded to a multiple of 128 (64 rows on average).
  // Its buffers grow on demand to the rows a step needs plus a 32nd (CudaGrownRows), and
  // the padding changes with the routing from step to step: count them grown once.
  const double layout = (1.0 + 1.0 / kCudaRowsSlack) * (s.kept + 64 * s.e_local);
  // Whether the MoE layers' rows travel between GPUs (several GPUs, not dense).
  const bool exchanges = !s.dense && s.W > 1;
  // attn_in and moe_in, the two RMSNorms' outputs, are one buffer each for every block (the
  // backward writes them again): counted with the head below.
  double block = 4 * AttentionElements(s, spec.model().attention()) - 4 * 2 * n * D + (bf16 ? 2 * n * s.C3() : 0);
  // q, k, v in bf16 for the tensor-core attention, whose backward reads no fp32 copy: the fp32 one
  // is then the backward's dqkv scratch (counted in the workspace).
  if (bf16 && CudaAttentionOnTensorCores(static_cast<int>(s.hd))) block -= 4 * n * s.C3();
  if (!s.dense) {
    // Router logits, probabilities (n, E), lse (n), weights (n, k), expert ids and the two
    // slot maps (n k), the experts' output rows ys (rows, D: bf16 values, kept in bf16 with bf16
    // products; on one GPU in the layout, where the last product writes them), and on the fp32
    // path their input rows xs (bf16 products: those pass through the backward's scratch into
    // the bf16 rows).
    const double ys_rows = bf16 && !exchanges ? layout : rows;
    block += 4 * (2 * n * s.E + n + n * s.k + 3 * n * s.k + 4 * s.E) + (bf16 ? 2 : 2 * 4) * ys_rows * D;
  }
  // The experts' saved rows: bf16 hidden activations g, u, h in the layout (grown on demand),
  // and their input when it came from other GPUs (on one GPU the backward makes it again from
  // the layer's input, in MoeScratch); or fp32 g, u, h (rows, F) on the simple fp32 path. The
  // shared experts' hidden activations less h, which their backward computes again from g and u
  // (kernels/cuda/experts.h; their other buffers are MoeScratch's: the workspace).
  block += bf16 ? 2 * ((exchanges ? layout * D : 0) + s.glu * layout * F) : 4 * s.glu * rows * F;
  block += s.S * n * s.Fs * (bf16 ? 2 * (s.glu - 1) : 4 * s.glu);
  // tmp, x_final, final_out (n, D), rstd, lse, losses (n), ids and targets (n), and the logits:
  // fp32 (n, V), or with bf16 products one chunk of fp32 logits and the bf16 dlogits (n, V).
  const double logits = bf16 ? 4 * static_cast<double>(CudaHeadChunkRows(static_cast<int64_t>(n),
                                                                         static_cast<int64_t>(s.V))) * s.V +
                                   2 * n * s.V
                             : 4 * n * s.V;
  // (with bf16 products final_out, the head's input, in bf16 alone), and the embedding backward's
  // rows grouped by token id (3 n ints). And the blocks' shared moe_in (n, D; with bf16 products
  // on one GPU also in bf16, the experts' input rows' source) and attn_in (n, D; with bf16
  // products in bf16 alone, the qkv product's input written so by the RMSNorm).
  const double head = 4 * (3 * n * D + 3 * n + 2 * n + 3 * n) - (bf16 ? 2 * n * D : 0) + logits +
                      4 * n * D + (bf16 && !s.dense && !exchanges ? 2 * n * D : 0) + (bf16 ? 2 : 4) * n * D;
  const bool recompute = spec.train().recompute() == v1::RECOMPUTE_FULL;
  // Recompute full: each block's input x_in (n, D), and one set of the rest of a block's
  // activations that the blocks fill in turn (CudaModel::EnsureActivations, MoeSaved).
  const double kept_blocks = recompute ? s.L * 4 * n * D + (block - 4 * n * D) : s.L * block;
  out->activations = Bytes(kept_blocks + head);

  // dx, dtmp, dnorm (n, D), dqkv (n, C3), the attention backward's scratch (n, H), and in bf16
  // two cast buffers: (n, max(D, C3)) and (n, D).
  double ws = 4 * (3 * n * D + n * s.C3() + n * s.H) + (bf16 ? 2 * n * (std::max(D, s.C3()) + D) : 0);
  // MoeScratch per batch: d_expert_in (rows, D; not with bf16 products on one GPU, whose rows
  // are gathered into and summed out of the experts' layout) and on the fp32 path dys (rows, D),
  // dweights (n, k), drouter (n, E); fp32 experts' backward scratch (rows, 2F), or, when rows
  // travel between GPUs, the bf16 plan-order rows (rows, D).
  if (!s.dense) ws += 4 * ((bf16 ? (exchanges ? 1 : 0) : 2) * rows * D + n * s.k + n * s.E);
  ws += bf16 ? (exchanges ? 2 * rows * D : 0) : 4 * 2 * rows * F;
  if (bf16) {
    // MoeScratch's expert rows (ReserveExpertRows): dys16 (bf16); on one GPU x16 (bf16), with
    // rows between GPUs wire, ys, dx16 (bf16) and dxs (fp32); and the experts' scratch
    // (kernels::ExpertsBf16Scratch): (rows, F), 2 (rows, D), and where the layout can be compact
    // (more local experts than the backend runs, which validation refuses) three weight-sized products.
    ws += 2 * layout * D + (exchanges ? 2 * 3 * layout * D + 4 * layout * D : 2 * layout * D) +
          2 * (layout * F + 2 * layout * D + (s.e_local > kCudaMaxExperts ? 3 * s.e_local * D * F : 0));
  }
  if (s.S > 0) {
    // MoeScratch's for the shared experts, one layer at a time: one expert's output (n, D); bf16:
    // the input and output gradient in the layout (n, D) and the experts' scratch (as above, for
    // one expert of hidden F_s over n rows), fp32: the backward's scratch (n, 2 F_s).
    ws += 4 * n * D + (bf16 ? 2 * (2 * n * D + n * s.Fs + 2 * n * D) : 4 * 2 * n * s.Fs);
  }
  // The deterministic sums' per-block partials (kernels/cuda/reduce.h: 1024 x max(D, 2 hd) floats).
  ws += 4.0 * 1024 * std::max(D, 2 * s.hd);
  ws += CudaMuonWorkspace(s, spec);
  out->workspace = Bytes(ws);
  out->runtime = kCudaRuntimeBytes + (s.W > 1 ? kNcclBytes : 0);
}

}  // namespace

MemoryEstimate EstimateMemory(const v1::JobSpec& spec, const RankParams& p) {
  const v1::TrainSpec& t = spec.train();
  MemoryEstimate m;
  m.cuda = spec.resources().device() == v1::DEVICE_CUDA;
  const bool bf16_master = t.master_weights() == v1::PRECISION_BF16;
  if (m.cuda) {
    // fp32 master weights and, for bf16 products, their bf16 copy; bf16 master weights are
    // that copy alone (worker/model/cuda/device_weights.h; its fp32 copies of the norm gains and
    // routers are left out, a few per mille), or with fp32 products fp32 storage of bf16 values.
    const bool bf16_copy = t.precision() == v1::PRECISION_BF16;
    m.weights = Bytes(bf16_master && bf16_copy ? 2 * p.total : 4 * p.total + (bf16_copy ? 2 * p.total : 0));
  } else {
    // The CPU keeps its weights in fp32 even when they are rounded to bf16 values.
    m.weights = Bytes(4 * p.total);
  }
  // Gradients: fp32; with bf16 master weights and products on one GPU the blocks' matrices' in
  // bf16 (worker/model/cuda/device_grads.h: a bf16 buffer over the whole layout, the rest fp32).
  const bool bf16_grads = m.cuda && bf16_master && t.precision() == v1::PRECISION_BF16 &&
                          std::max(1, spec.resources().ranks()) == 1;
  m.grads = Bytes(bf16_grads ? 2 * p.total + 4 * (p.total - p.matrices) : 4 * p.total);
  // AdamW: m and v for every parameter. Muon needs only a momentum (m's slot) for the block
  // matrices, but both backends still allocate v over every parameter (the matrices' part unused),
  // so that is what is counted.
  m.optimizer = Bytes(2 * StateBytes(t.optimizer_state(), p.total, p.tensors));
  const Shape s = ShapeOf(spec);
  if (m.cuda) {
    CudaActivations(s, spec, &m);
  } else {
    CpuActivations(s, spec, &m);
  }
  const double total = static_cast<double>(m.weights) + static_cast<double>(m.grads) +
                       static_cast<double>(m.optimizer) + static_cast<double>(m.activations) +
                       static_cast<double>(m.workspace) + static_cast<double>(m.runtime);
  m.total = Bytes(total);
  return m;
}

}  // namespace moe
