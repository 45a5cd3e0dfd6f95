#include "worker/model/model_config.h"

#include "common/job_spec.h"

namespace moe {

ModelConfig ModelConfig::FromSpec(const moe::v1::JobSpec& spec, int vocab_size) {
  const auto& m = spec.model();
  ModelConfig c;
  c.vocab = m.vocab_size() > 0 ? m.vocab_size() : vocab_size;
  c.d = m.d_model();
  c.layers = m.n_layers();
  c.heads = m.n_heads();
  c.kv_heads = m.n_kv_heads() > 0 ? m.n_kv_heads() : m.n_heads();
  c.head_dim = c.d / c.heads;
  c.seq_len = m.seq_len();
  c.experts = m.moe().num_experts() > 0 ? m.moe().num_experts() : 1;
  c.top_k = c.experts > 1 ? m.moe().top_k() : 1;
  c.ffn = m.moe().expert_hidden() > 0 ? m.moe().expert_hidden() : 4 * c.d;
  c.tied = m.tie_embeddings();
  c.dropout = static_cast<float>(m.dropout());
  c.rope_theta = m.attention().rope_theta() > 0 ? static_cast<float>(m.attention().rope_theta()) : 10000.f;
  c.norm_eps = static_cast<float>(NormEps(m));
  c.capacity_factor = m.moe().capacity_factor();
  c.aux_coef = c.experts > 1 ? m.moe().aux_loss_coef() : 0;
  c.z_coef = c.experts > 1 ? m.moe().z_loss_coef() : 0;
  c.qk_norm = m.attention().qk_norm();
  c.attn_gate = m.attention().gate();
  c.attn_dropout = static_cast<float>(m.attention().dropout());
  switch (m.moe().activation()) {
    case moe::v1::ACTIVATION_RELU2: c.activation = Activation::kRelu2; break;
    case moe::v1::ACTIVATION_GELU: c.activation = Activation::kGelu; break;
    default: c.activation = Activation::kSwiglu; break;
  }
  c.shared_experts = m.moe().shared_experts();
  c.shared_ffn = m.moe().shared_expert_hidden() > 0 ? m.moe().shared_expert_hidden() : c.ffn;
  c.router_sigmoid = c.experts > 1 && m.moe().router_score() == moe::v1::SCORE_SIGMOID;
  c.router_temperature =
      m.moe().router_temperature() > 0 ? static_cast<float>(m.moe().router_temperature()) : 1.f;
  c.bias_update_rate = c.experts > 1 ? static_cast<float>(m.moe().bias_update_rate()) : 0.f;
  c.expert_dropout = c.experts > 1 ? static_cast<float>(m.moe().expert_dropout()) : 0.f;
  c.muon = spec.train().optimizer() == moe::v1::OPTIMIZER_MUON;
  if (spec.train().has_beta1()) c.adam_beta1 = static_cast<float>(spec.train().beta1());
  if (spec.train().has_beta2()) c.adam_beta2 = static_cast<float>(spec.train().beta2());
  c.recompute = spec.train().recompute() == moe::v1::RECOMPUTE_FULL;
  c.optimizer_state = spec.train().optimizer_state() == moe::v1::STATE_INT8   ? State::kInt8
                      : spec.train().optimizer_state() == moe::v1::STATE_BF16 ? State::kBf16
                                                                               : State::kFp32;
  c.bf16_master = spec.train().master_weights() == moe::v1::PRECISION_BF16;
  return c;
}

}  // namespace moe
