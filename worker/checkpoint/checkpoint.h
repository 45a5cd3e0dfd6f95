// Checkpoints: dir/step_<8-digit step>/ written atomically (temp dir + rename, manifest with
// per-file size and XXH64 checksum), found again after a crash, read back with every byte checked.
// Files of one checkpoint:
//   model.safetensors      weights (MODEL.md names), loadable by safetensors.torch.load_file
//   optimizer.safetensors  every "adam_*" tensor (AdamW m and v)
//   spec.json              the JobSpec it was trained with (protobuf JSON)
//   tokenizer.txt          Tokenizer::Serialize(), empty for pretokenized data
//   meta.json              Checkpoint::meta as a JSON object of strings
//   MANIFEST               written last: format, step, and "file <name> <size> <xxh64>" lines
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "worker/checkpoint/safetensors.h"
#include "worker/checkpoint/xxh64.h"

namespace moe {

// A checkpoint's small files.
struct CheckpointInfo {
  int64_t step = 0;                 // optimizer steps done
  std::string spec_json;            // the JobSpec (protobuf JSON) it was trained with
  std::string tokenizer;            // Tokenizer::Serialize(), "" for pretokenized
  std::map<std::string, std::string> meta;  // anything else (e.g. rng, world size, best val loss)
};

// A whole checkpoint in memory.
struct Checkpoint : CheckpointInfo {
  // Model weights by MODEL.md names, plus "adam_m.<name>", "adam_v.<name>". ReadCheckpoint
  // returns the weights first (in written order), then the adam_* tensors (in written order).
  std::vector<NamedTensor> tensors;
};

// Writes dir/step_<8-digit step>/ as WriteCheckpoint does, one tensor at a time: each goes
// into its safetensors file (hashed on the way) as it arrives.
class CheckpointWriter {
 public:
  // Creates the temp dir. tensors: every tensor's name and shape; Write takes the weights in
  // their order here, then the "adam_*" tensors in theirs. keep as for WriteCheckpoint.
  static absl::StatusOr<std::unique_ptr<CheckpointWriter>> Start(
      const std::string& dir, CheckpointInfo info, const std::vector<TensorSpec>& tensors, int keep);
  ~CheckpointWriter();  // an unfinished checkpoint's temp dir is removed
  CheckpointWriter(const CheckpointWriter&) = delete;
  CheckpointWriter& operator=(const CheckpointWriter&) = delete;

  // The next tensor, whole (count = prod(shape)).
  absl::Status Write(std::string_view name, const float* data, size_t count);
  // After the last tensor: the small files, the manifest, the rename into place, pruning.
  absl::Status Finish();

 private:
  struct State;
  explicit CheckpointWriter(std::unique_ptr<State> state);
  absl::Status Advance();  // finishes a file whose tensors are all written, opens the next
  absl::Status Fail(const absl::Status& st);
  std::unique_ptr<State> s_;
};

// An open checkpoint: Open verifies it all (manifest, each file's size and checksum read once
// through a fixed buffer, small files, safetensors headers, moment shapes) and keeps only the
// headers; Read then fetches one tensor, or a slice of one, at a time.
class CheckpointReader {
 public:
  // Errors as ReadCheckpoint's.
  static absl::StatusOr<CheckpointReader> Open(const std::string& path);

  const CheckpointInfo& info() const { return info_; }
  const std::string& path() const { return path_; }
  // The weights in file order, then the adam_* tensors in file order.
  const std::vector<TensorEntry>& tensors() const { return tensors_; }
  const TensorEntry* Find(std::string_view name) const;  // nullptr if absent
  // Elements [first, first + count) of t (one of tensors()) into out.
  absl::Status Read(const TensorEntry& t, size_t first, size_t count, float* out) const;

 private:
  CheckpointReader() = default;
  std::string path_;
  CheckpointInfo info_;
  std::vector<SafetensorsReader> files_;  // model, optimizer
  std::vector<TensorEntry> tensors_;
  size_t weights_ = 0;                    // tensors_[0, weights_) live in the model file
};

// Writes dir/step_<8-digit step>/ atomically: files into a temp dir, fsync, manifest last, then
// rename the directory into place (replacing an older checkpoint of the same step atomically).
// Keeps the newest `keep` complete checkpoints up to this step and deletes older ones (keep <= 0
// keeps all; later steps, e.g. a damaged one a resume skipped, are left alone), and
// removes temp dirs that crashed writers of this host left behind.
absl::Status WriteCheckpoint(const std::string& dir, const Checkpoint& ckpt, int keep);

// For tools that read a checkpoint a user names (sampling, scoring, export): NotFound saying
// that `path` does not exist or is not a directory, with what to give instead; OK when it is a
// directory (a step_XXXXXXXX one or a directory of them).
absl::Status CheckCheckpointArgument(const std::string& path);

// The checkpoint a tool was given (sampling, scoring, export, model.init_from), open and verified
// once (ReadCheckpointWeights(reader) then reads its weights without a second pass): `path` itself
// when it is one (step_XXXXXXXX with a MANIFEST), else the newest good one under it, damaged newer
// ones skipped and reported as NewestGoodCheckpoint does. NotFound (CheckCheckpointArgument's, or
// "holds no complete checkpoint"), DataLoss listing each damaged one, or Open's error for `path`.
absl::StatusOr<CheckpointReader> ResolveCheckpointArgument(const std::string& path,
                                                           const std::function<void(const std::string&)>& report);

// Newest complete checkpoint under dir (NotFound if none): a step_XXXXXXXX directory whose
// manifest parses and whose files exist with the listed sizes. Temp dirs are ignored.
absl::StatusOr<std::string> LatestCheckpoint(const std::string& dir);

// Where a resume starts: the newest checkpoint under dir that passes every check of
// ReadCheckpoint (manifest, sizes, checksums, headers), skipping damaged ones, each reported
// through report ("skipping damaged checkpoint DIR: why; trying an older one"). NotFound when
// dir holds no checkpoint (a fresh start). When checkpoints exist but none is good: DataLoss
// naming each and what is wrong, unless start_over, which reports that and returns NotFound
// (train from step 0).
absl::StatusOr<std::string> NewestGoodCheckpoint(
    const std::string& dir, bool start_over,
    const std::function<void(const std::string&)>& report);
// The same, the checkpoint left open (verified once: a resume reads its tensors from it). When
// none_there is given, it says which NotFound this is: true when dir holds no checkpoint at all
// (damaged or not), false otherwise (start_over passing over damaged ones, or a checkpoint found).
absl::StatusOr<CheckpointReader> NewestGoodCheckpointReader(
    const std::string& dir, bool start_over,
    const std::function<void(const std::string&)>& report, bool* none_there = nullptr);

// Meta key of a checkpoint at the job's last step (train.steps) written by a stop (SIGTERM, a
// cancel, preemption) before the final evaluation ran: the step's MetricPoint as protobuf JSON,
// so a resume runs just that evaluation and emits the point with its val_loss. Absent otherwise
// (and in checkpoints from before it existed).
constexpr char kFinalEvalPendingMeta[] = "final_eval_pending";

// A checkpoint's meta.json alone, its size and checksum checked against the MANIFEST (no other
// file is read): for moed, which looks at a job's newest checkpoint without verifying its tensors.
// DataLoss naming what is wrong.
absl::StatusOr<std::map<std::string, std::string>> ReadCheckpointMeta(const std::string& path);

// Reads and verifies (manifest, sizes, checksums, safetensors headers, shapes); a corrupt,
// truncated or foreign file is InvalidArgument/DataLoss naming the file and what is wrong.
// Holds the whole checkpoint: for small models and tools; training reads a CheckpointReader.
absl::StatusOr<Checkpoint> ReadCheckpoint(const std::string& path);
// The same checks, holding only the weights (no adam_* tensors): a third of the memory, for the
// tools that only read the model (export, import, sampling, scoring).
absl::StatusOr<Checkpoint> ReadCheckpointWeights(const std::string& path);
// The weights of a checkpoint already open (and so verified).
absl::StatusOr<Checkpoint> ReadCheckpointWeights(const CheckpointReader& reader);

// OK when every expected (name, shape) is in the checkpoint with that shape and the checkpoint
// holds no other weight (adam_* tensors aside); otherwise names the first mismatch and both shapes.
absl::Status CheckCompatible(const Checkpoint& ckpt,
                             const std::vector<std::pair<std::string, std::vector<int64_t>>>& expected);
absl::Status CheckCompatible(const CheckpointReader& ckpt,
                             const std::vector<std::pair<std::string, std::vector<int64_t>>>& expected);

// Test hook: called with the name of each stage WriteCheckpoint reaches ("temp_dir",
// "file:<name>" after each file, "manifest", "renamed"), so a test can kill the writer there.
void SetCheckpointTestHook(void (*hook)(std::string_view stage));

}  // namespace moe
