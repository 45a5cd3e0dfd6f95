// Using a trained checkpoint: scoring a held-out batch, and text generation: load the weights into a one-rank model, then sample token
// by token (temperature, top-k) from the last position's logits.
#pragma once

#include <cstdint>
#include <functional>
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
  // true: one row per new token, keys and values cached (sample/decoder.h); false: the whole
  // context through Model::Forward for every token (the oracle). The same tokens either way.
  bool kv_cache = true;
  // Where the cached sampler runs: "cpu", "cuda", or "auto" (the GPU when there is one).
  std::string device = "auto";
  std::string* device_used = nullptr;  // if set: "cpu" or "cuda", where the sampler ran
  // Called once the model is loaded, the prompt encoded and the decoder made for the device,
  // before the first token (may be null): a caller that echoes the prompt does it here, so a
  // refused prompt, checkpoint or device prints nothing.
  std::function<void()> on_ready;
  // Called with the text of each new token as it comes (may be null).
  std::function<void(const std::string&)> on_token;
};

// The context both samplers condition on: ids[start..). When it would pass seq_len tokens, it
// restarts from its last seq_len / 2 (recomputed from scratch), so the cache never overflows
// and both samplers see the same context at every step.
int64_t ContextStart(int64_t start, int64_t size, int seq_len);

// CE of a checkpoint's one-rank model (fp32, dropout off) on the first held-out batch of its
// job (batch_size x seq_len); writes that batch to batch_out as int32 (inputs, then targets), so
// another implementation (reference_moe.py) can score the same tokens.
absl::StatusOr<double> ScoreCheckpoint(const std::string& checkpoint, const std::string& batch_out);

// What else a score writes, for checking another implementation's outputs (bench/check_hf_export.py).
struct ScoreExtras {
  std::string logits_out;  // float32 logits (T, V) of the batch's first sequence
  int greedy_tokens = 0;   // > 0: greedy continuation of the first sequence's first P tokens,
  std::string greedy_out;  // P = min(32, T - greedy_tokens), written as int32: P prompt ids, then the new ones
};
absl::StatusOr<double> ScoreCheckpoint(const std::string& checkpoint, const std::string& batch_out,
                                       const ScoreExtras& extras);

// Returns the prompt followed by the generated text.
absl::StatusOr<std::string> GenerateText(const SampleOptions& opts);

// ScoreCheckpoint's and GenerateText's errors that are the caller's input carry
// common/usage_error.h's mark (moe-worker exits 2, as for a bad flag): an option value, outputs
// that name one file or an output that is no regular file, a checkpoint argument that names no
// checkpoint, a --greedy that leaves no prompt, --no-kv-cache with --device cuda, a prompt the
// tokenizer cannot write. Else (exit 1) a failure while running: memory, a damaged checkpoint,
// the job's data, no GPU for --device cuda, a write. ExportHf (worker/interchange/hf_export.h)
// marks its own the same way.

}  // namespace moe
