// Export of one of our checkpoints as a Hugging Face model directory that
// transformers.AutoModelForCausalLM.from_pretrained loads with no custom code:
//   config.json                      MixtralForCausalLM (E > 1) or MistralForCausalLM (dense)
//   model.safetensors                or model-0000i-of-0000n.safetensors + model.safetensors.index.json
//                                    when the weights pass max_shard_bytes (5 GB, as HF's default)
//   generation_config.json
//   vocab.json, merges.txt, tokenizer_config.json, special_tokens_map.json   GPT-2 BPE jobs only
// A char tokenizer has no Hugging Face class: the export says so and has no tokenizer files.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "worker/checkpoint/safetensors.h"

namespace moe {

struct HfExportOptions {
  TensorDtype dtype = TensorDtype::kF32;
  int64_t max_shard_bytes = 5'000'000'000;  // HF's "5GB"
};

struct HfExportResult {
  std::string checkpoint;          // the step directory exported
  int64_t step = 0;
  std::string architecture;        // "MixtralForCausalLM"
  std::vector<std::string> files;  // written, relative to the output directory
  std::vector<std::string> notes;  // what the user should know (tokenizer, capacity)
};

// checkpoint: a step_XXXXXXXX directory or a directory of them (the newest complete one that
// passes its checks). out_dir must not exist or be empty, and the directory it is in must exist;
// it is written as a temp sibling and renamed into place, so it is whole or absent. Errors that are
// the caller's input (out_dir's name or place, a checkpoint argument that names none) carry the
// mark of common/usage_error.h (moe-worker --export exits 2 for them).
absl::StatusOr<HfExportResult> ExportHf(const std::string& checkpoint, const std::string& out_dir,
                                        const HfExportOptions& options);

// OUT_DIR as a name, before any file is looked at: InvalidArgument for an empty one or one with
// control bytes (shown escaped). ExportHf checks it first; moectl export makes it a usage error.
absl::Status CheckExportOutDirName(const std::string& out_dir);

// What moe-worker --export and moectl export print: the source, the files, the notes.
std::string DescribeExport(const HfExportResult& result, const std::string& out_dir);

// "fp32" | "bf16" (also "float32", "bfloat16").
absl::StatusOr<TensorDtype> ParseExportDtype(const std::string& name);

}  // namespace moe
