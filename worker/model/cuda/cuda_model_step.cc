// CudaModel's forward and backward passes (the class: cuda_model_impl.h).
#include "worker/model/cuda/cuda_model_impl.h"

#ifdef MOE_WITH_CUDA

#include <algorithm>
#include <cstdint>

namespace moe {

using cuda::bf16;

void CudaModel::AttnNorm(int l, const float* gain) {
  const int n = b_ * cfg_.seq_len;
  const BlockActs& a = blocks_[l];
  if (bf16_) {
    cuda::RmsNormForwardBf16(attn_in16_, a.attn_rstd, a.x_in, gain, n, cfg_.d, cfg_.norm_eps, stream_);
  } else {
    cuda::RmsNormForward(attn_in_, a.attn_rstd, a.x_in, gain, n, cfg_.d, cfg_.norm_eps, stream_);
  }
}

void CudaModel::MoeNorm(int l, const float* gain) {
  const int n = b_ * cfg_.seq_len;
  const BlockActs& a = blocks_[l];
  cuda::RmsNormForward(moe_in_, a.moe_rstd, a.x_mid, gain, n, cfg_.d, cfg_.norm_eps, stream_, moe_in16_);
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
  optimizer_->WaitForBlock(stream_, l);  // the last step's update of this block, when still in flight
  // Attention: x_mid = x_in + dropout(attn(RMSNorm(x_in)) @ wo^T)
  AttnNorm(l, bw.attn_norm);
  if (bf16_) {  // attn_in in bf16 alone, for qkv's product and the gate's
    ctx_.Linear16(a.qkv, attn_in16_, bw.wqkv, n, D, C3);
    if (cfg_.attn_gate) ctx_.Linear16(a.gate, attn_in16_, bw.wg, n, D, D);
  } else {
    ctx_.Linear(a.qkv, attn_in_, bw.wqkv, n, D, C3, false);
    if (cfg_.attn_gate) ctx_.Linear(a.gate, attn_in_, bw.wg, n, D, D, false);
  }
  if (cfg_.qk_norm) {
    cuda::QkNormForward(a.qkv, a.qk_rstd, a.qk_raw, bw.q_norm, bw.k_norm, n, H, Hkv, hd, cfg_.norm_eps, stream_);
  }
  if (bf16_ && CudaAttentionOnTensorCores(hd)) {
    // Tensor cores, reading q, k, v in bf16 alone (kept for the backward): RoPE writes them so.
    cuda::RopeForwardToBf16(a.qkv16, a.qkv, rope_cos_, rope_sin_, b, T, H, Hkv, hd, stream_);
  } else {
    cuda::RopeForward(a.qkv, rope_cos_, rope_sin_, b, T, H, Hkv, hd, stream_);
    if (bf16_) cuda::CastToBf16(a.qkv16, a.qkv, int64_t{n} * C3, stream_);
  }
  // bf16 without the gate: the output also in bf16, wo's product input (s16a: free at this point
  // of the forward; the gate path below writes it itself).
  cuda::bf16* y16 = bf16_ && !cfg_.attn_gate ? ctx_.s16a : nullptr;
  if (bf16_) {
    cuda::AttentionForwardBf16(a.attn_y, a.attn_lse, a.qkv, a.qkv16, b, T, H, Hkv, hd, AttnDropout(ctx, l), stream_,
                               y16);
  } else {
    cuda::AttentionForward(a.attn_y, a.attn_lse, a.qkv, b, T, H, Hkv, hd, AttnDropout(ctx, l), stream_);
  }
  // Without dropout the residual is added as each output is written (wo's product epilogue, the
  // MoE's combine): the same sums, no separate pass.
  const bool fuse = p_drop == 0.f;
  float* wo_out = fuse ? a.x_mid : tmp_;
  const float* wo_add = fuse ? a.x_in : nullptr;
  if (!cfg_.attn_gate && bf16_) {
    ctx_.Linear16(wo_out, y16, bw.wo, n, D, D, wo_add);
  } else if (!cfg_.attn_gate) {
    ctx_.Linear(wo_out, a.attn_y, bw.wo, n, D, D, false, wo_add);
  } else if (bf16_) {  // wo reads y * sigmoid(gate logits), written in bf16; the backward recomputes it
    cuda::AttentionGateForwardBf16(ctx_.s16a, a.gate, a.attn_y, nd, stream_);
    ctx_.Linear16(wo_out, ctx_.s16a, bw.wo, n, D, D, wo_add);
  } else {
    cuda::AttentionGateForward(gated_, a.gate, a.attn_y, nd, stream_);
    ctx_.Linear(wo_out, gated_, bw.wo, n, D, D, false, wo_add);
  }
  if (!fuse) {
    cuda::DropoutAddOut(a.x_mid, a.x_in, tmp_, nd, p_drop, DropoutSiteSeed(ctx.dropout_seed, 1 + 2 * l), offset,
                        stream_);
  }
  // MoE: the next block's x_in (or x_final_) = x_mid + dropout(MoE(RMSNorm(x_mid))). A rerun
  // (recomputation) needs only the saved activations, not the block's output.
  MoeNorm(l, bw.moe_norm);
  if (fuse && !rerun) {
    moe_[l]->Forward(moe_in_, bw, n, ctx, out, rerun, /*residual=*/a.x_mid, moe_in16_);
    return;
  }
  moe_[l]->Forward(moe_in_, bw, n, ctx, tmp_, rerun, /*residual=*/nullptr, moe_in16_);
  if (rerun) return;
  cuda::DropoutAddOut(out, a.x_mid, tmp_, nd, p_drop, DropoutSiteSeed(ctx.dropout_seed, 2 + 2 * l), offset, stream_);
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
  optimizer_->WaitForEmbedding(stream_);
  if (params_->bf16_only()) {
    cuda::EmbeddingForwardBf16(x, idx_, ctx_.Bf16Of(w.wte), n, D, stream_);
  } else {
    cuda::EmbeddingForward(x, idx_, w.wte, n, D, stream_);
  }
  cuda::DropoutForward(x, x, nd, p_drop, DropoutSiteSeed(ctx.dropout_seed, 0), offset, stream_);
  for (int l = 0; l < cfg_.layers; ++l) {
    BlockForward(l, l + 1 < cfg_.layers ? blocks_[l + 1].x_in : x_final_, /*rerun=*/false);
  }
  optimizer_->WaitForHead(stream_);
  if (bf16_) {
    cuda::RmsNormForwardBf16(final_out16_, final_rstd_, x_final_, w.final_norm, n, D, cfg_.norm_eps, stream_);
  } else {
    cuda::RmsNormForward(final_out_, final_rstd_, x_final_, w.final_norm, n, D, cfg_.norm_eps, stream_);
  }
  // The head, head_rows_ rows at a time: logits, their cross-entropy and (bf16 products) the
  // bf16 dlogits = loss_scale * (softmax - onehot) of the backward, so that only one chunk of
  // fp32 logits is ever alive. (An evaluation's dlogits go unread.)
  for (int64_t r0 = 0; r0 < n; r0 += head_rows_) {
    const int rows = static_cast<int>(std::min<int64_t>(head_rows_, n - r0));
    if (bf16_) {
      ctx_.Linear16(logits_, final_out16_ + r0 * D, w.lm_head, rows, D, V);
      cuda::CrossEntropyForwardBackwardBf16(ce_losses_ + r0, ce_lse_ + r0, dlogits16_ + r0 * V, logits_,
                                            targets_ + r0, ctx.loss_scale, rows, V, stream_);
    } else {
      ctx_.Linear(logits_, final_out_ + r0 * D, w.lm_head, rows, D, V, false);
      cuda::CrossEntropyForward(ce_losses_ + r0, ce_lse_ + r0, logits_, targets_ + r0, rows, V, stream_);
    }
  }
  MOE_CUDA_CHECK(cudaMemsetAsync(ce_sum_, 0, sizeof(double), stream_));
  cuda::Sum(ce_sum_, ce_losses_, n, reinterpret_cast<double*>(partials_), stream_);
  optimizer_->Join(stream_);  // the update and the gradients' zeroing: the backward writes them

  // The one device-to-host copy of the forward pass: CE sum and every layer's router stats.
  const int per_layer = RouterStatsSlots{cfg_.experts}.size();
  MOE_CUDA_CHECK(cudaMemcpyAsync(host_stats_, ce_sum_, sizeof(double), cudaMemcpyDeviceToHost, stream_));
  if (!shape_.dense) {
    for (int l = 0; l < cfg_.layers; ++l) {
      MOE_CUDA_CHECK(cudaMemcpyAsync(host_stats_ + 1 + l * per_layer, moe_[l]->stats(), sizeof(double) * per_layer,
                                     cudaMemcpyDeviceToHost, stream_));
    }
  }
  ctx_.Sync("the forward's loss and router statistics");

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
    cuda::DropoutBackwardTo(dtmp_, dx_, nd, p_drop, DropoutSiteSeed(ctx.dropout_seed, site), offset, stream_);
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
    if (!cfg_.recompute) MoeNorm(l, bw.moe_norm);  // (the rerun just wrote it)
    moe_[l]->Backward(dmoe, moe_in_, bw, bg, n, ctx.loss_scale, dnorm_, expert_grads_unwritten_, moe_in16_);
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
    // bf16 without QK-norm: the attention backward and RoPE's write the qkv product's bf16 output
    // gradient (s16a, the cast the product would make), in the attention kernels' stores where
    // they can; dqkv_ (fp32) is then not needed.
    const bf16* dqkv16 = nullptr;
    if (bf16_) cuda::CastToBf16(ctx_.s16b, dattn_y, nd, stream_);  // s16b is free until the next product
    if (bf16_ && !cfg_.qk_norm) {
      cuda::AttentionRopeBackwardBf16(ctx_.s16a, dqkv_, dattn_y, ctx_.s16b, a.attn_y, a.attn_lse, a.qkv, a.qkv16,
                                      rope_cos_, rope_sin_, b, T, H, Hkv, hd, att_scratch_, AttnDropout(ctx, l),
                                      stream_);
      dqkv16 = ctx_.s16a;
    } else {
      if (bf16_) {  // writes dqkv_ (no clearing first)
        cuda::AttentionBackwardBf16(dqkv_, dattn_y, ctx_.s16b, a.attn_y, a.attn_lse, a.qkv, a.qkv16, b, T, H, Hkv,
                                    hd, att_scratch_, AttnDropout(ctx, l), stream_, /*overwrite=*/true);
      } else {
        zero(dqkv_, int64_t{n} * C3);
        cuda::AttentionBackward(dqkv_, dattn_y, a.attn_y, a.attn_lse, a.qkv, b, T, H, Hkv, hd, att_scratch_,
                                AttnDropout(ctx, l), stream_);
      }
      cuda::RopeBackward(dqkv_, rope_cos_, rope_sin_, b, T, H, Hkv, hd, stream_);
    }
    if (cfg_.qk_norm) {
      cuda::QkNormBackward(dqkv_, bg.q_norm, bg.k_norm, a.qk_raw, a.qk_rstd, bw.q_norm, bw.k_norm, n, H, Hkv, hd,
                           partials_, stream_);
    }
    // Both weight gradients read attn_in (bf16: in bf16 alone), written again here.
    if (!cfg_.recompute) AttnNorm(l, bw.attn_norm);
    ctx_.LinearBackward(dtmp_, bg.wqkv, dqkv_, dqkv16, attn_in_, bw.wqkv, n, D, C3, false, /*add_to_dinp=*/false,
                        attn_in16_);
    if (cfg_.attn_gate) {
      ctx_.LinearBackward(dtmp_, bg.wg, dgate_, nullptr, attn_in_, bw.wg, n, D, D, false, /*add_to_dinp=*/true,
                          attn_in16_);
    }
    cuda::RmsNormBackward(dx_, bg.attn_norm, dtmp_, a.x_in, bw.attn_norm, a.attn_rstd, n, D, partials_, stream_);
    // Block l's replicated gradients are final (on the last micro-step): sum them over GPUs
    // while the blocks below run their backward.
    if (reduce_now) reducer_->BlockDone(l);
  }
  cuda::EmbeddingBackward(g.wte, through_dropout(0), run_order_, run_starts_, run_ids_, token_runs_.runs(), D,
                          stream_);
  expert_grads_unwritten_ = false;  // every layer wrote its experts' gradients
  if (reduce_now) reducer_->BackwardDone();
  // Synchronous at the end so that the trainer's forward / backward / optimizer times are real.
  ctx_.Sync("the backward");
}

}  // namespace moe

#endif  // MOE_WITH_CUDA
