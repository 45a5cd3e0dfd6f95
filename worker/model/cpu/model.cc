#include "worker/model/cpu/model.h"

#include <sys/resource.h>

#include <algorithm>
#include <new>
#include <stdexcept>

#include "absl/strings/str_cat.h"
#include "common/model_stats.h"

#include "kernels/adamw.h"
#include "kernels/attention.h"
#include "kernels/attention_gate.h"
#include "kernels/cross_entropy.h"
#include "kernels/dropout.h"
#include "kernels/embedding.h"
#include "kernels/matmul.h"
#include "kernels/muon.h"
#include "kernels/qk_norm.h"
#include "kernels/rmsnorm.h"
#include "kernels/rope.h"
#include "kernels/state_codec.h"
#include "worker/model/allocation_error.h"

namespace moe {
namespace {

void Add(float* x, const float* y, size_t n) {
  for (size_t i = 0; i < n; ++i) x[i] += y[i];
}

// Rounds n weights to bf16 values, stochastically (train.master_weights bf16): the draw of
// element i of tensor `name` at `step` is the same on every rank.
void RoundToBf16(float* w, int64_t n, const std::string& name, int64_t first, int64_t step) {
  const uint64_t key = StochasticRoundKey(name, step);
  for (int64_t i = 0; i < n; ++i) {
    const uint32_t r = static_cast<uint32_t>(kernels::CounterUniform(key, static_cast<uint64_t>(first + i)) * 16777216.0f);
    w[i] = kernels::FromBf16Bits(kernels::Bf16BitsStochastic(w[i], r));
  }
}

// Block l's attention-probability dropout (model.attention.dropout) for this micro-batch: p 0
// outside training.
kernels::AttentionDropout AttnDropout(const ModelConfig& cfg, const BatchContext& ctx, int l) {
  kernels::AttentionDropout d;
  d.p = ctx.train ? cfg.attn_dropout : 0.f;
  d.seed = AttentionDropoutSeed(ctx.dropout_seed, l);
  d.first_token = ctx.first_token;
  return d;
}

}  // namespace

Model::Model(const ModelConfig& cfg, Communicator* comm)
    : cfg_(cfg), comm_(comm), layout_(cfg, comm->rank(), comm->world_size()),
      adam_m_(layout_, StateFormatOf(cfg.optimizer_state), /*is_signed=*/true),
      adam_v_(layout_, StateFormatOf(cfg.optimizer_state), /*is_signed=*/false) {
  // Weights and gradients: two fp32 copies of this rank's parameters; AdamW's m and v as
  // train.optimizer_state says.
  try {
    params_.assign(layout_.total(), 0.f);
    if (!cfg.inference_only) {
      grads_.assign(layout_.total(), 0.f);
      adam_m_.Allocate();
      adam_v_.Allocate();
    }
  } catch (const std::bad_alloc&) {
    const double bytes = cfg.inference_only ? 4.0 * static_cast<double>(layout_.total())
                                            : 8.0 * static_cast<double>(layout_.total()) +
                                                  static_cast<double>(adam_m_.BytesNeeded()) +
                                                  static_cast<double>(adam_v_.BytesNeeded());
    throw AllocationError(absl::StrCat("could not allocate ", FormatBytes(bytes),
                                       cfg.inference_only ? " for the model's parameters"
                                                          : " for the model's parameters, gradients and AdamW moments"));
  } catch (const std::length_error&) {
    throw AllocationError(absl::StrCat("could not allocate ", layout_.total(),
                                       " parameters: more than one buffer can hold"));
  }
  for (int l = 0; l < cfg.layers; ++l) moe_layers_.push_back(std::make_unique<MoeLayer>(cfg, comm));
  acts_.resize(cfg.layers);
}

void Model::RequireTraining(const char* what) const {
  if (cfg_.inference_only) {
    throw std::logic_error(absl::StrCat(what, " on an inference-only model (ModelConfig::inference_only)"));
  }
}

void Model::InitParams(uint64_t seed) {
  layout_.Initialize(params_.data(), seed);
  if (cfg_.bf16_master) {  // the weights start as bf16 values (nearest)
    kernels::RoundToBf16Values(params_.data(), static_cast<int64_t>(params_.size()));
  }
  adam_m_.Zero();
  adam_v_.Zero();
}

void Model::ZeroGrads() {
  RequireTraining("ZeroGrads");
  std::fill(grads_.begin(), grads_.end(), 0.f);
  comm_at_step_start_ = {comm_->all_to_all_seconds(), comm_->all_reduce_seconds()};
}

CommSeconds Model::ReduceGrads() {
  comm_->AllReduceSum(grads_.data(), layout_.dense_size());
  if (cfg_.bf16_master) {
    // The step's gradients, summed over micro-batches and ranks: the blocks' matrices' become bf16
    // values (nearest), once, so that W ranks give the same values as one.
    for (const ParamInfo& info : layout_.params()) {
      if (Bf16Gradient(info)) kernels::RoundToBf16Values(grads_.data() + info.offset, info.size);
    }
  }
  return {comm_->all_to_all_seconds() - comm_at_step_start_.all_to_all,
          comm_->all_reduce_seconds() - comm_at_step_start_.all_reduce};
}

int64_t Model::PeakMemoryBytes() const {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return static_cast<int64_t>(usage.ru_maxrss) * 1024;  // Linux reports kilobytes
}

void Model::GradSquaredNorms(double* dense_sq, double* expert_sq) {
  const int64_t dense = layout_.dense_size();
  *dense_sq = kernels::SquaredNorm(grads_.data(), dense);
  *expert_sq = kernels::SquaredNorm(grads_.data() + dense, layout_.total() - dense);
}

void Model::OptimizerStep(int64_t step, double lr, double muon_lr, double weight_decay, float clip_scale) {
  RequireTraining("OptimizerStep");
  // Compact moments (train.optimizer_state bf16 / int8) are decoded a chunk of whole state
  // blocks at a time, updated in fp32 and encoded again; fp32 moments are updated in place.
  constexpr int64_t kChunk = 64 * kernels::kStateBlock;
  std::vector<float> m, v;
  for (const ParamInfo& info : layout_.params()) {
    if (cfg_.muon && info.muon) {
      MuonTensorStep(info, step, muon_lr, weight_decay, clip_scale);
      continue;
    }
    kernels::AdamWConfig c;
    c.lr = static_cast<float>(lr);
    c.beta1 = cfg_.adam_beta1;
    c.beta2 = cfg_.adam_beta2;
    c.weight_decay = info.decay ? static_cast<float>(weight_decay) : 0.f;
    for (int64_t begin = 0; begin < info.size; begin += kChunk) {
      const int64_t n = std::min(kChunk, info.size - begin);
      const int64_t at = info.offset + begin;
      float* mp = adam_m_.fp32() ? adam_m_.fp32() + at : nullptr;
      float* vp = adam_v_.fp32() ? adam_v_.fp32() + at : nullptr;
      if (mp == nullptr) {
        m.resize(n);
        v.resize(n);
        adam_m_.Read(info, begin, n, m.data());
        adam_v_.Read(info, begin, n, v.data());
        mp = m.data();
        vp = v.data();
      }
      kernels::AdamWUpdate(params_.data() + at, grads_.data() + at, mp, vp, n, c, step, clip_scale);
      if (adam_m_.fp32() == nullptr) {
        adam_m_.Write(info, begin, n, mp);
        adam_v_.Write(info, begin, n, vp);
      }
      if (cfg_.bf16_master) RoundToBf16(params_.data() + at, n, info.name, layout_.GlobalFirst(info) + begin, step);
    }
  }
}

void Model::MuonTensorStep(const ParamInfo& info, int64_t step, double lr, double weight_decay, float clip_scale) {
  // Newton-Schulz needs a whole matrix, so the momentum of the whole tensor is decoded at once
  // (compact formats) and encoded again after; AdamW's v stays unused (zero) here. Expert
  // matrices are stored (in, out), not MODEL.md's [out, in]: Newton-Schulz of a transpose is the
  // transpose of Newton-Schulz (the tall one is worked on transposed anyway) and the scale takes
  // max(r, c), so the stored orientation gives the same update.
  const int rank = static_cast<int>(info.shape.size());
  const int rows = static_cast<int>(info.shape[rank - 2]), cols = static_cast<int>(info.shape[rank - 1]);
  const int64_t batch = info.size / (int64_t{rows} * cols);
  std::vector<float> decoded;
  float* mp = adam_m_.fp32() ? adam_m_.fp32() + info.offset : nullptr;
  if (mp == nullptr) {
    decoded.resize(info.size);
    adam_m_.Read(info, 0, info.size, decoded.data());
    mp = decoded.data();
  }
  kernels::MuonConfig c;
  c.lr = static_cast<float>(lr);
  c.weight_decay = info.decay ? static_cast<float>(weight_decay) : 0.f;
  kernels::MuonUpdate(params_.data() + info.offset, grads_.data() + info.offset, mp, batch, rows, cols, c, clip_scale);
  if (adam_m_.fp32() == nullptr) adam_m_.Write(info, 0, info.size, mp);
  if (cfg_.bf16_master) RoundToBf16(params_.data() + info.offset, info.size, info.name, layout_.GlobalFirst(info), step);
}

std::vector<float> Model::RouterBiases() {
  if (!cfg_.balances_by_bias()) return {};
  std::vector<float> out;
  out.reserve(static_cast<size_t>(cfg_.layers) * cfg_.experts);
  for (const auto& layer : moe_layers_) out.insert(out.end(), layer->router_bias().begin(), layer->router_bias().end());
  return out;
}

void Model::SetRouterBiases(const std::vector<float>& biases) {
  if (!cfg_.balances_by_bias()) return;
  const size_t E = static_cast<size_t>(cfg_.experts);
  if (biases.size() != E * cfg_.layers) {
    throw std::invalid_argument(absl::StrCat("SetRouterBiases: ", biases.size(), " values for ", cfg_.layers,
                                             " layers of ", E, " experts"));
  }
  for (int l = 0; l < cfg_.layers; ++l) {
    std::copy(biases.begin() + l * E, biases.begin() + (l + 1) * E, moe_layers_[l]->router_bias().begin());
  }
}

void Model::CopyToHost(ParamSet set, std::vector<float>* out) {
  switch (set) {
    case ParamSet::kParams: *out = params_; break;
    case ParamSet::kAdamM: adam_m_.ReadAll(out); break;
    case ParamSet::kAdamV: adam_v_.ReadAll(out); break;
    case ParamSet::kGrads: *out = grads_; break;
  }
}

void Model::CopyFromHost(ParamSet set, const std::vector<float>& in) {
  if (set == ParamSet::kAdamM || set == ParamSet::kAdamV) {
    OptimizerStateBuffer& state = set == ParamSet::kAdamM ? adam_m_ : adam_v_;
    // A padded copy only for a short input: a resume's full set goes straight in (no second
    // host copy of a whole set).
    if (static_cast<int64_t>(in.size()) >= layout_.total()) {
      state.WriteAll(in);
      return;
    }
    std::vector<float> full(in);
    full.resize(layout_.total(), 0.f);
    state.WriteAll(full);
    return;
  }
  std::vector<float>& dst = set == ParamSet::kParams ? params_ : grads_;
  std::copy(in.begin(), in.begin() + std::min(in.size(), dst.size()), dst.begin());
}

void Model::BlockForward(int l, BlockActs* ap, std::vector<float>* xp, bool rerun, MoeLayerForwardStats* stats) {
  const int T = cfg_.seq_len, D = cfg_.d, H = cfg_.heads, Hkv = cfg_.kv_heads;
  const int hd = cfg_.head_dim, C3 = cfg_.qkv_dim();
  const int b = b_, n = b * T;
  const size_t nd = static_cast<size_t>(n) * D;
  const BatchContext& ctx = ctx_;
  const float p_drop = ctx.train ? cfg_.dropout : 0.f;
  const uint64_t offset = static_cast<uint64_t>(ctx.first_token) * D;
  ModelTensors w = layout_.Bind(params_.data());
  BlockActs& a = *ap;
  std::vector<float>& x = *xp;
  std::vector<float>& tmp = block_tmp_;
  std::vector<float>& gated = block_gated_;
  tmp.resize(nd);
  gated.resize(cfg_.attn_gate ? nd : 0);
  const BlockTensors& bw = w.blocks[l];
  // Attention: x += dropout(attn(RMSNorm(x)) @ wo^T)
  a.x_in = x;
  a.attn_in.resize(nd);
  a.attn_rstd.resize(n);
  kernels::RmsNormForward(a.attn_in.data(), a.attn_rstd.data(), x.data(), bw.attn_norm, n, D, cfg_.norm_eps);
  a.qkv.resize(static_cast<size_t>(n) * C3);
  kernels::LinearForward(a.qkv.data(), a.attn_in.data(), bw.wqkv, n, D, C3);
  if (cfg_.qk_norm) {
    a.qk_raw.resize(static_cast<size_t>(n) * (H + Hkv) * hd);
    a.qk_rstd.resize(static_cast<size_t>(n) * (H + Hkv));
    kernels::QkNormForward(a.qkv.data(), a.qk_rstd.data(), a.qk_raw.data(), bw.q_norm, bw.k_norm, n, H, Hkv, hd,
                           cfg_.norm_eps);
  }
  kernels::RopeForward(a.qkv.data(), b, T, H, Hkv, hd, cfg_.rope_theta);
  a.attn_y.resize(nd);
  a.attn_lse.resize(static_cast<size_t>(b) * H * T);
  kernels::AttentionForward(a.attn_y.data(), a.attn_lse.data(), a.qkv.data(), b, T, H, Hkv, hd,
                            AttnDropout(cfg_, ctx, l));
  const float* wo_in = a.attn_y.data();
  if (cfg_.attn_gate) {  // the gated output goes to wo; the backward recomputes it
    a.gate.resize(nd);
    kernels::LinearForward(a.gate.data(), a.attn_in.data(), bw.wg, n, D, D);
    kernels::AttentionGateForward(gated.data(), a.gate.data(), a.attn_y.data(), nd);
    wo_in = gated.data();
  }
  kernels::LinearForward(tmp.data(), wo_in, bw.wo, n, D, D);
  kernels::DropoutForward(tmp.data(), tmp.data(), nd, p_drop, DropoutSiteSeed(ctx.dropout_seed, 1 + 2 * l), offset);
  Add(x.data(), tmp.data(), nd);

  // MoE: x += dropout(MoE(RMSNorm(x)))
  a.x_mid = x;
  a.moe_in.resize(nd);
  a.moe_rstd.resize(n);
  kernels::RmsNormForward(a.moe_in.data(), a.moe_rstd.data(), x.data(), bw.moe_norm, n, D, cfg_.norm_eps);
  moe_layers_[l]->Forward(a.moe_in.data(), bw, n, ctx.global_tokens, ctx.loss_scale, tmp.data(), stats,
                          MoeLayerStep{ctx.train, ExpertDropoutSeed(ctx.dropout_seed, l), rerun});
  if (rerun) return;  // the backward reads the saved activations, not the block's output
  kernels::DropoutForward(tmp.data(), tmp.data(), nd, p_drop, DropoutSiteSeed(ctx.dropout_seed, 2 + 2 * l), offset);
  Add(x.data(), tmp.data(), nd);
}

ForwardResult Model::Forward(const int32_t* idx, const int32_t* targets, int b,
                             const BatchContext& ctx) {
  const int T = cfg_.seq_len, D = cfg_.d, V = cfg_.vocab;
  const int n = b * T;
  const size_t nd = static_cast<size_t>(n) * D;
  const float p_drop = ctx.train ? cfg_.dropout : 0.f;
  const uint64_t offset = static_cast<uint64_t>(ctx.first_token) * D;
  ModelTensors w = layout_.Bind(params_.data());
  ctx_ = ctx;
  b_ = b;
  idx_.assign(idx, idx + n);
  targets_.assign(targets, targets + n);

  ForwardResult result;
  std::vector<float> x(nd);
  kernels::EmbeddingForward(x.data(), idx, w.wte, n, D);
  kernels::DropoutForward(x.data(), x.data(), nd, p_drop, DropoutSiteSeed(ctx.dropout_seed, 0), offset);

  for (int l = 0; l < cfg_.layers; ++l) {
    MoeLayerForwardStats stats;
    // Recompute full: the block's activations go to the one shared set, and all but its input
    // are dropped once the next block starts (the backward runs the block again).
    BlockForward(l, cfg_.recompute ? &rerun_acts_ : &acts_[l], &x, /*rerun=*/false, &stats);
    if (cfg_.recompute) {
      acts_[l].x_in.swap(rerun_acts_.x_in);
      moe_layers_[l]->ReleaseSaved();
    }
    result.aux_loss += stats.aux_loss;
    result.z_loss += stats.z_loss;
    result.layers.push_back(std::move(stats));
  }

  // Head: logits = RMSNorm(x) @ wte^T (or lm_head^T), then CE.
  x_final_ = std::move(x);
  final_out_.resize(nd);
  final_rstd_.resize(n);
  kernels::RmsNormForward(final_out_.data(), final_rstd_.data(), x_final_.data(), w.final_norm, n, D, cfg_.norm_eps);
  logits_.resize(static_cast<size_t>(n) * V);
  kernels::LinearForward(logits_.data(), final_out_.data(), w.lm_head, n, D, V);
  ce_losses_.resize(n);
  ce_lse_.resize(n);
  result.ce_sum = kernels::CrossEntropyForward(ce_losses_.data(), ce_lse_.data(), logits_.data(),
                                               targets, n, V);
  return result;
}

void Model::Backward() {
  RequireTraining("Backward");
  const int b = b_, T = cfg_.seq_len, D = cfg_.d, V = cfg_.vocab, H = cfg_.heads;
  const int Hkv = cfg_.kv_heads, hd = cfg_.head_dim, C3 = cfg_.qkv_dim();
  const int n = b * T;
  const size_t nd = static_cast<size_t>(n) * D;
  const float p_drop = ctx_.train ? cfg_.dropout : 0.f;
  const uint64_t offset = static_cast<uint64_t>(ctx_.first_token) * D;
  ModelTensors w = layout_.Bind(params_.data());
  ModelTensors g = layout_.Bind(grads_.data());

  // Head: dlogits overwrite the logits in place.
  kernels::CrossEntropyBackward(logits_.data(), logits_.data(), ce_lse_.data(), targets_.data(),
                                ctx_.loss_scale, n, V);
  std::vector<float> dnorm(nd, 0.f), dx(nd, 0.f), dtmp(nd);
  kernels::LinearBackward(dnorm.data(), g.lm_head, logits_.data(), final_out_.data(), w.lm_head, n, D, V);
  kernels::RmsNormBackward(dx.data(), g.final_norm, dnorm.data(), x_final_.data(), w.final_norm,
                           final_rstd_.data(), n, D);

  std::vector<float> dqkv, gated, dgated, dgate;  // the last three for the attention gate
  for (int l = cfg_.layers - 1; l >= 0; --l) {
    if (cfg_.recompute) {  // the block runs again from its input, into rerun_acts_
      std::vector<float> x = acts_[l].x_in;
      BlockForward(l, &rerun_acts_, &x, /*rerun=*/true, nullptr);
    }
    BlockActs& a = cfg_.recompute ? rerun_acts_ : acts_[l];
    const BlockTensors& bw = w.blocks[l];
    const BlockTensors& bg = g.blocks[l];
    // MoE branch: dx flows to the residual unchanged and through dropout -> MoE -> RMSNorm.
    std::fill(dtmp.begin(), dtmp.end(), 0.f);
    kernels::DropoutBackward(dtmp.data(), dx.data(), nd, p_drop, DropoutSiteSeed(ctx_.dropout_seed, 2 + 2 * l), offset);
    std::fill(dnorm.begin(), dnorm.end(), 0.f);
    moe_layers_[l]->Backward(dtmp.data(), a.moe_in.data(), bw, bg, dnorm.data());
    kernels::RmsNormBackward(dx.data(), bg.moe_norm, dnorm.data(), a.x_mid.data(), bw.moe_norm,
                             a.moe_rstd.data(), n, D);

    // Attention branch.
    std::fill(dtmp.begin(), dtmp.end(), 0.f);
    kernels::DropoutBackward(dtmp.data(), dx.data(), nd, p_drop, DropoutSiteSeed(ctx_.dropout_seed, 1 + 2 * l), offset);
    std::vector<float>& dattn_y = dnorm;  // reuse: (n, D)
    std::fill(dattn_y.begin(), dattn_y.end(), 0.f);
    if (cfg_.attn_gate) {
      // wo saw y * gate: its gradient splits into y's and the gate logits' (dgate).
      gated.resize(nd);
      for (size_t i = 0; i < nd; ++i) gated[i] = a.attn_y[i] * a.gate[i];
      dgated.assign(nd, 0.f);
      dgate.resize(nd);
      kernels::LinearBackward(dgated.data(), bg.wo, dtmp.data(), gated.data(), bw.wo, n, D, D);
      kernels::AttentionGateBackward(dattn_y.data(), dgate.data(), dgated.data(), a.attn_y.data(), a.gate.data(), nd);
    } else {
      kernels::LinearBackward(dattn_y.data(), bg.wo, dtmp.data(), a.attn_y.data(), bw.wo, n, D, D);
    }
    dqkv.assign(static_cast<size_t>(n) * C3, 0.f);
    kernels::AttentionBackward(dqkv.data(), dattn_y.data(), a.attn_y.data(), a.attn_lse.data(),
                               a.qkv.data(), b, T, H, Hkv, hd, AttnDropout(cfg_, ctx_, l));
    kernels::RopeBackward(dqkv.data(), b, T, H, Hkv, hd, cfg_.rope_theta);
    if (cfg_.qk_norm) {
      kernels::QkNormBackward(dqkv.data(), bg.q_norm, bg.k_norm, a.qk_raw.data(), a.qk_rstd.data(), bw.q_norm,
                              bw.k_norm, n, H, Hkv, hd);
    }
    std::fill(dtmp.begin(), dtmp.end(), 0.f);
    kernels::LinearBackward(dtmp.data(), bg.wqkv, dqkv.data(), a.attn_in.data(), bw.wqkv, n, D, C3);
    if (cfg_.attn_gate) kernels::LinearBackward(dtmp.data(), bg.wg, dgate.data(), a.attn_in.data(), bw.wg, n, D, D);
    kernels::RmsNormBackward(dx.data(), bg.attn_norm, dtmp.data(), a.x_in.data(), bw.attn_norm,
                             a.attn_rstd.data(), n, D);
    if (cfg_.recompute) moe_layers_[l]->ReleaseSaved();
  }
  std::fill(dtmp.begin(), dtmp.end(), 0.f);
  kernels::DropoutBackward(dtmp.data(), dx.data(), nd, p_drop, DropoutSiteSeed(ctx_.dropout_seed, 0), offset);
  kernels::EmbeddingBackward(g.wte, dtmp.data(), idx_.data(), n, D);
}

}  // namespace moe
