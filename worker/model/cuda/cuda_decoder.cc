#include "worker/model/cuda/cuda_decoder.h"

#include <algorithm>
#include <stdexcept>

#include "absl/strings/str_cat.h"
#include "kernels/rope.h"
#include "kernels/router.h"
#include "worker/model/moe_bookkeeping.h"

#ifdef MOE_WITH_CUDA
#include "kernels/cuda/decode.h"
#include "kernels/cuda/elementwise.h"
#include "kernels/cuda/rmsnorm.h"
#include "kernels/cuda/rope.h"
#endif

namespace moe {

#ifndef MOE_WITH_CUDA

absl::StatusOr<std::unique_ptr<TokenDecoder>> MakeCudaDecoder(const ModelConfig&, const ParamLayout&,
                                                              const std::vector<float>&, const std::vector<float>&) {
  return absl::UnavailableError("this build has no CUDA");
}

#else

namespace {

// A device buffer of floats, freed with its owner.
struct DeviceFloats {
  float* p = nullptr;
  DeviceFloats() = default;
  explicit DeviceFloats(size_t n) { MOE_CUDA_CHECK(cudaMalloc(&p, std::max<size_t>(n, 1) * sizeof(float))); }
  ~DeviceFloats() { cudaFree(p); }
  DeviceFloats(const DeviceFloats&) = delete;
  DeviceFloats& operator=(const DeviceFloats&) = delete;
};

class CudaDecoder final : public TokenDecoder {
 public:
  CudaDecoder(const ModelConfig& cfg, const ParamLayout& layout, const std::vector<float>& params,
              const std::vector<float>& router_biases)
      : cfg_(cfg), layout_(layout), biases_(router_biases) {
    MOE_CUDA_CHECK(cudaStreamCreate(&stream_));
    gemv_ = std::make_unique<cuda::Gemv>(stream_);
    const int T = cfg.seq_len, D = cfg.d, hd = cfg.head_dim;
    const int F = std::max(cfg.ffn, cfg.shared_ffn);
    weights_ = std::make_unique<DeviceFloats>(params.size());
    MOE_CUDA_CHECK(cudaMemcpy(weights_->p, params.data(), params.size() * sizeof(float), cudaMemcpyHostToDevice));
    w_ = layout_.Bind(weights_->p);
    std::vector<float> cos(static_cast<size_t>(T) * hd / 2), sin(cos.size());
    kernels::RopeTables(cos.data(), sin.data(), T, hd, cfg.rope_theta);
    cos_ = std::make_unique<DeviceFloats>(cos.size());
    sin_ = std::make_unique<DeviceFloats>(sin.size());
    MOE_CUDA_CHECK(cudaMemcpy(cos_->p, cos.data(), cos.size() * sizeof(float), cudaMemcpyHostToDevice));
    MOE_CUDA_CHECK(cudaMemcpy(sin_->p, sin.data(), sin.size() * sizeof(float), cudaMemcpyHostToDevice));
    row_ = static_cast<size_t>(cfg.kv_heads) * hd;
    k_cache_ = std::make_unique<DeviceFloats>(static_cast<size_t>(cfg.layers) * T * row_);
    v_cache_ = std::make_unique<DeviceFloats>(static_cast<size_t>(cfg.layers) * T * row_);
    x_ = std::make_unique<DeviceFloats>(D);
    a_ = std::make_unique<DeviceFloats>(D);
    m_ = std::make_unique<DeviceFloats>(D);
    rstd_ = std::make_unique<DeviceFloats>(std::max(cfg.heads, 1));
    qkv_ = std::make_unique<DeviceFloats>(cfg.qkv_dim());
    qn_ = std::make_unique<DeviceFloats>(static_cast<size_t>(cfg.heads) * hd);
    y_ = std::make_unique<DeviceFloats>(static_cast<size_t>(cfg.heads) * hd);
    gate_ = std::make_unique<DeviceFloats>(static_cast<size_t>(cfg.heads) * hd);
    scores_ = std::make_unique<DeviceFloats>(static_cast<size_t>(cfg.heads) * T);
    g_ = std::make_unique<DeviceFloats>(F);
    u_ = std::make_unique<DeviceFloats>(F);
    h_ = std::make_unique<DeviceFloats>(F);
    router_ = std::make_unique<DeviceFloats>(std::max(cfg.experts, 1));
    logits_dev_ = std::make_unique<DeviceFloats>(cfg.vocab);
    logits_.resize(cfg.vocab);
  }
  ~CudaDecoder() override {
    gemv_.reset();
    cudaStreamDestroy(stream_);
  }

  void Reset() override { length_ = 0; }
  int length() const override { return length_; }
  const char* device() const override { return "cuda"; }

  const std::vector<float>& Step(int32_t token) override {
    const int D = cfg_.d, H = cfg_.heads, Hkv = cfg_.kv_heads, hd = cfg_.head_dim, T = cfg_.seq_len;
    const int pos = length_;
    if (pos >= T) throw std::logic_error("CudaDecoder::Step past seq_len; Reset and feed a shorter context");
    if (token < 0 || token >= cfg_.vocab) throw std::out_of_range("token id outside the vocabulary");
    float* x = x_->p;
    MOE_CUDA_CHECK(cudaMemcpyAsync(x, w_.wte + static_cast<size_t>(token) * D, D * sizeof(float),
                                   cudaMemcpyDeviceToDevice, stream_));
    for (int l = 0; l < cfg_.layers; ++l) {
      const BlockTensors& bw = w_.blocks[l];
      cuda::RmsNormForward(a_->p, rstd_->p, x, bw.attn_norm, 1, D, cfg_.norm_eps, stream_);
      gemv_->OutIn(qkv_->p, bw.wqkv, a_->p, cfg_.qkv_dim(), D);
      float* q = qkv_->p;
      float* k = q + static_cast<size_t>(H) * hd;
      float* v = k + static_cast<size_t>(Hkv) * hd;
      if (cfg_.qk_norm) {  // each head vector is one RMSNorm row of hd
        cuda::RmsNormForward(qn_->p, rstd_->p, q, bw.q_norm, H, hd, cfg_.norm_eps, stream_);
        MOE_CUDA_CHECK(cudaMemcpyAsync(q, qn_->p, sizeof(float) * H * hd, cudaMemcpyDeviceToDevice, stream_));
        cuda::RmsNormForward(qn_->p, rstd_->p, k, bw.k_norm, Hkv, hd, cfg_.norm_eps, stream_);
        MOE_CUDA_CHECK(cudaMemcpyAsync(k, qn_->p, sizeof(float) * Hkv * hd, cudaMemcpyDeviceToDevice, stream_));
      }
      // One row at position pos: the tables from that row on.
      const size_t at = static_cast<size_t>(pos) * hd / 2;
      cuda::RopeForward(qkv_->p, cos_->p + at, sin_->p + at, 1, 1, H, Hkv, hd, stream_);
      float* kc = k_cache_->p + static_cast<size_t>(l) * T * row_;
      float* vc = v_cache_->p + static_cast<size_t>(l) * T * row_;
      MOE_CUDA_CHECK(cudaMemcpyAsync(kc + pos * row_, k, row_ * sizeof(float), cudaMemcpyDeviceToDevice, stream_));
      MOE_CUDA_CHECK(cudaMemcpyAsync(vc + pos * row_, v, row_ * sizeof(float), cudaMemcpyDeviceToDevice, stream_));
      cuda::DecodeAttention(y_->p, q, kc, vc, scores_->p, pos + 1, H, Hkv, hd, stream_);
      if (cfg_.attn_gate) {
        gemv_->OutIn(gate_->p, bw.wg, a_->p, H * hd, D);
        cuda::SigmoidGateInPlace(y_->p, gate_->p, H * hd, stream_);
      }
      gemv_->OutIn(x, bw.wo, y_->p, D, H * hd, 1.f, 1.f);  // x += y wo^T
      cuda::RmsNormForward(m_->p, rstd_->p, x, bw.moe_norm, 1, D, cfg_.norm_eps, stream_);
      MoeRow(l, bw);
    }
    cuda::RmsNormForward(a_->p, rstd_->p, x, w_.final_norm, 1, D, cfg_.norm_eps, stream_);
    gemv_->OutIn(logits_dev_->p, w_.lm_head, a_->p, cfg_.vocab, D);
    MOE_CUDA_CHECK(cudaMemcpyAsync(logits_.data(), logits_dev_->p, sizeof(float) * cfg_.vocab,
                                   cudaMemcpyDeviceToHost, stream_));
    MOE_CUDA_CHECK(cudaStreamSynchronize(stream_));
    ++length_;
    return logits_;
  }

 private:
  // x += the MoE layer of block l on the normalised row m_: the routed experts the host picks
  // (or the one expert of a dense model), then the shared experts.
  void MoeRow(int l, const BlockTensors& bw) {
    const int D = cfg_.d, F = cfg_.ffn, E = cfg_.experts, k = cfg_.top_k;
    const size_t df = static_cast<size_t>(D) * F;
    if (!cfg_.is_moe()) {
      ExpertRow(bw.w1, bw.w3, bw.w2, F, 1.f);
    } else {
      gemv_->OutIn(router_->p, bw.router, m_->p, E, D);
      std::vector<float> logits(E), probs(E), weights(k);
      std::vector<int32_t> picks(k);
      float lse = 0;
      MOE_CUDA_CHECK(cudaMemcpyAsync(logits.data(), router_->p, sizeof(float) * E, cudaMemcpyDeviceToHost, stream_));
      MOE_CUDA_CHECK(cudaStreamSynchronize(stream_));
      // The CPU router's scoring (sigmoid / temperature, and the balancing bias in the choice).
      const size_t first = static_cast<size_t>(l) * E;
      const float* bias = biases_.size() >= first + E ? biases_.data() + first : nullptr;
      kernels::RouterForward(probs.data(), &lse, picks.data(), weights.data(), logits.data(), 1, E, k,
                             RouterScoringOf(cfg_, bias));
      for (int j = 0; j < k; ++j) {
        const size_t e = static_cast<size_t>(picks[j]);
        ExpertRow(bw.w1 + e * df, bw.w3 ? bw.w3 + e * df : nullptr, bw.w2 + e * df, F, weights[j]);
      }
    }
    const size_t dfs = static_cast<size_t>(D) * cfg_.shared_ffn;
    for (int s = 0; s < cfg_.shared_experts; ++s) {
      ExpertRow(bw.shared_w1 + s * dfs, bw.shared_w3 ? bw.shared_w3 + s * dfs : nullptr, bw.shared_w2 + s * dfs,
                cfg_.shared_ffn, 1.f);
    }
  }

  // x += weight * Expert(m_) for the expert whose matrices start at w1 (D, f), w3 (null without
  // W3) and w2 (f, D), stored [in, out] as MODEL.md's experts are.
  void ExpertRow(const float* w1, const float* w3, const float* w2, int f, float weight) {
    const int D = cfg_.d;
    gemv_->InOut(g_->p, w1, m_->p, D, f);
    if (w3 != nullptr) gemv_->InOut(u_->p, w3, m_->p, D, f);
    const int kind = cfg_.activation == ModelConfig::Activation::kRelu2  ? 1
                     : cfg_.activation == ModelConfig::Activation::kGelu ? 2
                                                                         : 0;
    cuda::DecodeActivation(h_->p, g_->p, u_->p, f, kind, stream_);
    gemv_->InOut(x_->p, w2, h_->p, f, D, weight, 1.f);
  }

  ModelConfig cfg_;
  ParamLayout layout_;
  std::vector<float> biases_;
  cudaStream_t stream_ = nullptr;
  std::unique_ptr<cuda::Gemv> gemv_;
  std::unique_ptr<DeviceFloats> weights_, cos_, sin_, k_cache_, v_cache_;
  std::unique_ptr<DeviceFloats> x_, a_, m_, rstd_, qkv_, qn_, y_, gate_, scores_, g_, u_, h_,
      router_, logits_dev_;
  ModelTensors w_;
  size_t row_ = 0;
  int length_ = 0;
  std::vector<float> logits_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<TokenDecoder>> MakeCudaDecoder(const ModelConfig& cfg, const ParamLayout& layout,
                                                              const std::vector<float>& params,
                                                              const std::vector<float>& router_biases) {
  if (!cuda::HaveGpu()) return absl::UnavailableError("no GPU is visible to this process");
  if (static_cast<int64_t>(params.size()) != layout.total()) {
    return absl::InvalidArgumentError(absl::StrCat("MakeCudaDecoder: ", params.size(), " weights for a layout of ",
                                                   layout.total()));
  }
  return std::unique_ptr<TokenDecoder>(new CudaDecoder(cfg, layout, params, router_biases));
}

#endif

}  // namespace moe
