// Our weights (MODEL.md names and layouts) <-> Hugging Face's Mixtral and Mistral tensors, and
// the config.json that describes them. The math is the same (RMSNorm eps model.norm_eps,
// half-split RoPE as HF's rotate_half, softmax router with renormalised top-k, SwiGLU
// w1/w3/w2, no biases, GQA with query head h on kv head h / (H / H_kv)), so the conversion is
// renaming, splitting and transposing, never arithmetic:
//   wte.weight (V, D)                      -> model.embed_tokens.weight (V, D)
//   blocks.i.attn_norm.weight (D)          -> model.layers.i.input_layernorm.weight
//   blocks.i.attn.wqkv.weight ((H+2Hkv)hd, D), rows q heads | k heads | v heads
//                                          -> self_attn.{q_proj (H hd, D), k_proj, v_proj (Hkv hd, D)}
//   blocks.i.attn.wo.weight (D, D)         -> self_attn.o_proj.weight (same [out, in])
//   blocks.i.moe_norm.weight (D)           -> post_attention_layernorm.weight
//   blocks.i.moe.router.weight (E, D)      -> block_sparse_moe.gate.weight (E, D)
//   blocks.i.moe.w1, w3 (E, D, F) [in, out] -> block_sparse_moe.experts.e.w1, w3 .weight (F, D): transposed
//   blocks.i.moe.w2 (E, F, D) [in, out]     -> block_sparse_moe.experts.e.w2.weight (D, F): transposed
//   final_norm.weight                      -> model.norm.weight
//   lm_head.weight (untied only)           -> lm_head.weight (tied: absent, HF ties it on load)
// A dense model (E = 1) is MistralForCausalLM: mlp.gate_proj = w1^T, up_proj = w3^T, down_proj = w2^T.
// With QK-norm (model.attention.qk_norm) the model is Qwen3MoeForCausalLM (Qwen3ForCausalLM when
// dense): the same attention plus self_attn.q_norm / k_norm.weight (hd) = attn.q_norm / k_norm,
// the router mlp.gate.weight, experts mlp.experts.e.{gate_proj, up_proj, down_proj} (w1, w3, w2
// transposed), config num_experts / moe_intermediate_size / norm_topk_prob true.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "moe/v1/job.pb.h"
#include "worker/checkpoint/safetensors.h"

namespace moe {

// The model's shape as the conversion needs it (the fields of ModelConfig that name tensors).
struct HfShape {
  int vocab = 0, d = 0, layers = 0, heads = 0, kv_heads = 0, head_dim = 0;
  int experts = 1, top_k = 1, ffn = 0;
  bool tied = true;
  int seq_len = 0;
  double aux_coef = 0;
  double rope_theta = 10000;  // model.attention.rope_theta
  double norm_eps = 1e-5;     // model.norm_eps: config.json's rms_norm_eps
  bool qk_norm = false;       // model.attention.qk_norm: Qwen3's naming and config
  // Our tensors by MODEL.md name and global shape, every recipe option's included (from the
  // job's ParamLayout when the caller has one; else OurTensorShapes' base model + QK-norm).
  std::vector<std::pair<std::string, std::vector<int64_t>>> ours;
  std::vector<std::string> unrepresentable;  // HfUnrepresentable of the spec
  bool is_moe() const { return experts > 1; }
  // vocab: the spec's, or the tokenizer's when the spec leaves it 0.
  static HfShape FromSpec(const moe::v1::JobSpec& spec, int vocab);
};

// The recipe options of a job that no stock architecture represents (gated attention, relu2 /
// gelu experts, shared experts without a gate, sigmoid routers, a router temperature, router
// biases), each named with its key; empty when the job exports as Mixtral / Mistral, or as
// Qwen3-MoE / Qwen3 with QK-norm.
std::vector<std::string> HfUnrepresentable(const moe::v1::JobSpec& spec);

// Our tensors by MODEL.md name with their global shapes, in checkpoint order.
std::vector<std::pair<std::string, std::vector<int64_t>>> OurTensorShapes(const HfShape& s);
// The Hugging Face tensors of the same model, in file order.
std::vector<std::pair<std::string, std::vector<int64_t>>> HfTensorShapes(const HfShape& s);

// ours: every tensor of OurTensorShapes (others, e.g. adam_*, are ignored). Returns HF's tensors
// in HfTensorShapes order. Moves the data out of ours where it can.
absl::StatusOr<std::vector<NamedTensor>> ToHfTensors(const HfShape& s, std::vector<NamedTensor> ours);
// The inverse: hf by HF name. Every tensor missing, unexpected or of the wrong shape is one line
// of the InvalidArgument error ("model.layers.0.self_attn.q_proj.weight: shape [8, 16] in the
// checkpoint, the job needs [16, 16]"). HF's stray rotary_emb.inv_freq buffers are ignored.
absl::StatusOr<std::vector<NamedTensor>> FromHfTensors(const HfShape& s,
                                                       std::map<std::string, NamedTensor> hf);

struct HfConfigExtras {
  std::string torch_dtype = "float32";  // "float32" | "bfloat16"
  double rope_theta = 10000;
  int bos_token_id = -1, eos_token_id = -1;  // -1: null
};
// config.json of MixtralForCausalLM (E > 1) or MistralForCausalLM (E = 1).
std::string HfConfigJson(const HfShape& s, const HfConfigExtras& extras);

// Reads a config.json and checks it describes a model of shape s that our math computes: one
// line per difference ("hidden_size is 128 in config.json, the job's model.d_model is 64"), and
// anything we cannot represent (rope_theta other than ours, rms_norm_eps, hidden_act, biases,
// rope scaling, a sliding window shorter than seq_len). notes gets what is allowed but differs
// (num_experts_per_tok).
absl::Status CheckHfConfig(const std::string& json, const std::string& what, const HfShape& s,
                           double rope_theta, std::vector<std::string>* notes);

// The problems found with a model's files, one a line: the first 64 and a count of the rest (a
// file of 200,000 foreign tensors made as many lines).
std::string JoinProblems(const std::vector<std::string>& problems);

}  // namespace moe
