// Text generation from a checkpoint: load the weights into a one-rank model, then sample token
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

// Returns the prompt followed by the generated text.
absl::StatusOr<std::string> GenerateText(const SampleOptions& opts);

}  // namespace moe
