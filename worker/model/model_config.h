// The model's shape and loss settings, read once from a validated JobSpec.
#pragma once

#include "moe/v1/job.pb.h"

namespace moe {

struct ModelConfig {
  int vocab = 0;        // V
  int d = 0;            // D
  int layers = 0;       // L
  int heads = 0;        // H
  int kv_heads = 0;     // H_kv
  int head_dim = 0;     // hd = D / H
  int seq_len = 0;      // T
  int experts = 1;      // E (1 = dense: no router, no aux or z loss)
  int top_k = 1;        // k
  int ffn = 0;          // F
  bool tied = true;     // LM head shares wte
  float dropout = 0.f;
  float rope_theta = 10000.f;  // RoPE base (model.attention.rope_theta)
  float norm_eps = 1e-5f;      // RMSNorm's epsilon (model.norm_eps; NormEps in common/job_spec.h)
  double capacity_factor = 0;  // 0 = dropless
  double aux_coef = 0;
  double z_coef = 0;

  // The recipe options of MODEL.md ("Options: the seeds' recipes"); the defaults are the base
  // model.
  bool qk_norm = false;           // model.attention.qk_norm
  bool attn_gate = false;         // model.attention.gate
  float attn_dropout = 0.f;       // model.attention.dropout
  enum class Activation { kSwiglu, kRelu2, kGelu };
  Activation activation = Activation::kSwiglu;  // model.moe.activation
  int shared_experts = 0;         // S (model.moe.shared_experts)
  int shared_ffn = 0;             // F_s (model.moe.shared_expert_hidden)
  bool router_sigmoid = false;    // model.moe.router_score: sigmoid
  float router_temperature = 1.f; // tau
  float bias_update_rate = 0.f;   // u; 0 = no loss-free balancing
  float expert_dropout = 0.f;
  bool muon = false;              // train.optimizer: muon
  float adam_beta1 = 0.9f;        // train.beta1 / beta2 (kernels::AdamWConfig's defaults)
  float adam_beta2 = 0.95f;
  // Memory (MODEL.md "Memory"; train.recompute, optimizer_state, master_weights).
  bool recompute = false;         // full: keep block inputs only, recompute in the backward
  enum class State { kFp32, kBf16, kInt8 };
  State optimizer_state = State::kFp32;
  bool bf16_master = false;       // weights stored bf16, updates stochastically rounded
  // Sampling and scoring: the weights alone, no gradients or AdamW moments (a third of the
  // memory with fp32 moments); such a model runs Forward only.
  bool inference_only = false;
  // The CUDA head with bf16 products: rows per chunk; 0 = CudaHeadChunkRows (common/
  // memory_estimate.h). Tests set it small to cover several chunks.
  int head_chunk_rows = 0;

  int qkv_dim() const { return (heads + 2 * kv_heads) * head_dim; }
  bool is_moe() const { return experts > 1; }
  bool gated_experts() const { return activation == Activation::kSwiglu; }  // has W3
  bool balances_by_bias() const { return is_moe() && bias_update_rate > 0; }

  // vocab_size: the spec's, or the tokenizer's when the spec leaves it 0.
  static ModelConfig FromSpec(const moe::v1::JobSpec& spec, int vocab_size);
};

}  // namespace moe
