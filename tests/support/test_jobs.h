// Small, complete job specs for tests, built directly as protos (defaults filled in as the
// validator would), so training tests do not depend on YAML parsing.
#pragma once

#include <string>

#include "moe/v1/job.pb.h"
#include "worker/model/model_config.h"

namespace moe::testing {

// A small char-level MoE on the shakespeare corpus that trains in seconds on one core:
// D 64, 2 layers, 4 heads (2 kv heads), T 32, 4 experts top-2, F 96, batch 16.
moe::v1::JobSpec SmallShakespeareSpec(int ranks = 1);

// A model shape for gradient and parity tests: MoE settings, heads, capacity, head, dropout.
struct ModelCase {
  const char* name;
  int experts, top_k, heads, kv_heads;
  double capacity;
  bool tied;
  float dropout;
};

// A 2-layer ModelConfig of the case with the given sizes (aux 0.01 and z 0.001 when MoE).
ModelConfig CaseConfig(const ModelCase& c, int vocab, int d, int seq_len, int ffn);

// Writes text to a file under a temp dir and returns its path.
std::string WriteTempText(const std::string& text);

}  // namespace moe::testing
