// Using a trained checkpoint: scoring a held-out batch, and text generation: load the weights into a one-rank model, then sample token
// by token (temperature, top-k) from the last position's logits.
#pragma once

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"

namespace moe {

struct SampleOptions {
  std::string checkpoint;  // a checkpoint directory, or a directory of them (newest is used)
  std::string prompt;
  int tokens = 200;
  double temperature = 0.8;
  int top_k = 200;  // 0 = all
  uint64_t seed = 1337;
};

// CE of a checkpoint's one-rank model (fp32, dropout off) on the first held-out batch of its
// job (batch_size x seq_len); writes that batch to batch_out as int32 (inputs, then targets), so
// another implementation (reference_moe.py) can score the same tokens.
absl::StatusOr<double> ScoreCheckpoint(const std::string& checkpoint, const std::string& batch_out);

// Returns the prompt followed by the generated text.
absl::StatusOr<std::string> GenerateText(const SampleOptions& opts);

}  // namespace moe
