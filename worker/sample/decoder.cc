#include "worker/sample/decoder.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>

#include "kernels/attention_gate.h"
#include "kernels/embedding.h"
#include "kernels/matmul.h"
#include "kernels/qk_norm.h"
#include "kernels/rmsnorm.h"
#include "kernels/rope.h"

namespace moe {
namespace {

// RoPE on one head vector at the position whose (hd/2) table rows are cos, sin.
void RotateHead(float* v, const float* cos, const float* sin, int hd) {
  const int h = hd / 2;
  for (int i = 0; i < h; ++i) {
    const float a = v[i], b = v[i + h];
    v[i] = a * cos[i] - b * sin[i];
    v[i + h] = a * sin[i] + b * cos[i];
  }
}

}  // namespace

CpuDecoder::CpuDecoder(Model* model) : model_(model), cfg_(model->config()) {
  const int T = cfg_.seq_len, hd = cfg_.head_dim;
  cos_.resize(static_cast<size_t>(T) * hd / 2);
  sin_.resize(cos_.size());
  kernels::RopeTables(cos_.data(), sin_.data(), T, hd, cfg_.rope_theta);
  const size_t kv = static_cast<size_t>(cfg_.layers) * T * cfg_.kv_heads * hd;
  k_cache_.assign(kv, 0.f);
  v_cache_.assign(kv, 0.f);
  x_.resize(cfg_.d);
  a_.resize(cfg_.d);
  qkv_.resize(cfg_.qkv_dim());
  y_.resize(static_cast<size_t>(cfg_.heads) * hd);
  gate_.resize(y_.size());
  tmp_.resize(cfg_.d);
  rstd_.resize(cfg_.heads + cfg_.kv_heads);  // QK-norm's per head vector; 1 for an RMSNorm row
  scores_.resize(T);
  logits_.resize(cfg_.vocab);
}

void CpuDecoder::Reset() { length_ = 0; }

const std::vector<float>& CpuDecoder::Step(int32_t token) {
  const int D = cfg_.d, H = cfg_.heads, Hkv = cfg_.kv_heads, hd = cfg_.head_dim, T = cfg_.seq_len;
  const int pos = length_;
  if (pos >= T) throw std::logic_error("CpuDecoder::Step past seq_len; Reset and feed a shorter context");
  if (token < 0 || token >= cfg_.vocab) throw std::out_of_range("token id outside the vocabulary");
  const ModelTensors w = model_->layout().Bind(model_->params().data());
  const float* cos = cos_.data() + static_cast<size_t>(pos) * hd / 2;
  const float* sin = sin_.data() + static_cast<size_t>(pos) * hd / 2;
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
  const int group = H / Hkv;

  kernels::EmbeddingForward(x_.data(), &token, w.wte, 1, D);
  for (int l = 0; l < cfg_.layers; ++l) {
    const BlockTensors& bw = w.blocks[l];
    kernels::RmsNormForward(a_.data(), rstd_.data(), x_.data(), bw.attn_norm, 1, D, cfg_.norm_eps);
    kernels::LinearForward(qkv_.data(), a_.data(), bw.wqkv, 1, D, cfg_.qkv_dim());
    float* q = qkv_.data();
    float* k = q + static_cast<size_t>(H) * hd;
    float* v = k + static_cast<size_t>(Hkv) * hd;
    if (cfg_.qk_norm) {
      kernels::QkNormForward(qkv_.data(), rstd_.data(), nullptr, bw.q_norm, bw.k_norm, 1, H, Hkv, hd, cfg_.norm_eps);
    }
    for (int h = 0; h < H; ++h) RotateHead(q + static_cast<size_t>(h) * hd, cos, sin, hd);
    for (int h = 0; h < Hkv; ++h) RotateHead(k + static_cast<size_t>(h) * hd, cos, sin, hd);
    const size_t row = static_cast<size_t>(Hkv) * hd;
    float* kc = k_cache_.data() + static_cast<size_t>(l) * T * row;
    float* vc = v_cache_.data() + static_cast<size_t>(l) * T * row;
    std::copy(k, k + row, kc + pos * row);
    std::copy(v, v + row, vc + pos * row);
    // Causal attention of this one query over positions 0..pos of the cache.
    for (int h = 0; h < H; ++h) {
      const float* qh = q + static_cast<size_t>(h) * hd;
      const size_t off = static_cast<size_t>(h / group) * hd;
      float mx = -INFINITY;
      for (int j = 0; j <= pos; ++j) {
        const float* kj = kc + j * row + off;
        float s = 0;
        for (int i = 0; i < hd; ++i) s += qh[i] * kj[i];
        scores_[j] = s * scale;
        mx = std::max(mx, scores_[j]);
      }
      float sum = 0;
      for (int j = 0; j <= pos; ++j) sum += (scores_[j] = std::exp(scores_[j] - mx));
      float* yh = y_.data() + static_cast<size_t>(h) * hd;
      std::fill(yh, yh + hd, 0.f);
      for (int j = 0; j <= pos; ++j) {
        const float p = scores_[j] / sum;
        const float* vj = vc + j * row + off;
        for (int i = 0; i < hd; ++i) yh[i] += p * vj[i];
      }
    }
    if (cfg_.attn_gate) {
      kernels::LinearForward(gate_.data(), a_.data(), bw.wg, 1, D, H * hd);
      kernels::AttentionGateForward(y_.data(), gate_.data(), y_.data(), static_cast<int64_t>(y_.size()));
    }
    kernels::LinearForward(tmp_.data(), y_.data(), bw.wo, 1, H * hd, D);
    for (int i = 0; i < D; ++i) x_[i] += tmp_[i];

    kernels::RmsNormForward(a_.data(), rstd_.data(), x_.data(), bw.moe_norm, 1, D, cfg_.norm_eps);
    MoeLayerForwardStats stats;
    model_->moe_layer(l)->Forward(a_.data(), bw, 1, /*global_tokens=*/1, /*loss_scale=*/1.f, tmp_.data(), &stats);
    for (int i = 0; i < D; ++i) x_[i] += tmp_[i];
  }
  kernels::RmsNormForward(a_.data(), rstd_.data(), x_.data(), w.final_norm, 1, D, cfg_.norm_eps);
  kernels::LinearForward(logits_.data(), a_.data(), w.lm_head, 1, D, cfg_.vocab);
  ++length_;
  return logits_;
}

}  // namespace moe
