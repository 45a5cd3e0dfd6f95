// Weights to start a job from (model.init_from): one of our checkpoints, or a Hugging Face
// Mixtral / Mistral directory (ours from ExportHf, or anyone's of a matching shape), in one
// model.safetensors or sharded with model.safetensors.index.json, F32, BF16 or F16.
#pragma once

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "worker/checkpoint/safetensors.h"
#include "worker/interchange/hf_layout.h"

namespace moe {

struct PretrainedWeights {
  std::string source;                // what was read, e.g. "checkpoint DIR/step_00000002 (step 2)"
  std::vector<NamedTensor> tensors;  // every weight by MODEL.md name and global shape
  std::vector<std::string> notes;
};

// dir: a Hugging Face directory (has config.json), a step_XXXXXXXX checkpoint, or a directory of
// checkpoints (the newest that passes its checks). Every shape mismatch is one line of the error.
absl::StatusOr<PretrainedWeights> LoadPretrained(const std::string& dir, const HfShape& shape);

}  // namespace moe
