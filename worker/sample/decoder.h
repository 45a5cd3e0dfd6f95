// Token-by-token inference with a KV cache on the CPU: each new token runs the blocks on one
// row, its keys and values appended to a per-layer cache, attention reading the cache. The
// same math as Model::Forward (MODEL.md, with the recipe options: QK-norm, gated attention,
// the MoE layer's activation, shared experts and router options through MoeLayer itself).
// Model::Forward over the whole context stays the oracle (tests/sample_test.cc).
#pragma once

#include <cstdint>
#include <vector>

#include "worker/model/cpu/model.h"
#include "worker/model/token_decoder.h"

namespace moe {

class CpuDecoder final : public TokenDecoder {
 public:
  // model holds the weights (read, never written) and runs the MoE layers (their router biases
  // included); build it on a one-rank communicator with dropout off.
  explicit CpuDecoder(Model* model);

  void Reset() override;
  const std::vector<float>& Step(int32_t token) override;
  int length() const override { return length_; }
  const char* device() const override { return "cpu"; }

 private:
  Model* model_;
  ModelConfig cfg_;
  std::vector<float> cos_, sin_;     // (T, hd/2) RoPE tables
  std::vector<float> k_cache_, v_cache_;  // (L, T, H_kv * hd)
  int length_ = 0;
  // Scratch for one row.
  std::vector<float> x_, a_, qkv_, y_, gate_, tmp_, rstd_, scores_, logits_;
};

}  // namespace moe
