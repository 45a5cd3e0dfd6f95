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
  double capacity_factor = 0;  // 0 = dropless
  double aux_coef = 0;
  double z_coef = 0;

  int qkv_dim() const { return (heads + 2 * kv_heads) * head_dim; }
  bool is_moe() const { return experts > 1; }

  // vocab_size: the spec's, or the tokenizer's when the spec leaves it 0.
  static ModelConfig FromSpec(const moe::v1::JobSpec& spec, int vocab_size);
};

}  // namespace moe
