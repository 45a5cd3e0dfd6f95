// Inside the checkpoint library: a checkpoint directory's layout (file names, MANIFEST, step_
// and temp dir names) and the test hook, shared by the writer, the reader and the finders.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace moe::checkpoint_dir {

constexpr absl::string_view kManifestHeader = "moe-checkpoint v1";
constexpr char kManifest[] = "MANIFEST";
constexpr char kModelFile[] = "model.safetensors";
constexpr char kOptimizerFile[] = "optimizer.safetensors";
constexpr char kSpecFile[] = "spec.json";
constexpr char kTokenizerFile[] = "tokenizer.txt";
constexpr char kMetaFile[] = "meta.json";
constexpr absl::string_view kOptimizerPrefix = "adam_";
constexpr absl::string_view kTempPrefix = ".tmp-step_";

// Calls the test hook (SetCheckpointTestHook) with stage, if one is set.
void Stage(absl::string_view stage);
void SetHook(void (*hook)(std::string_view stage));

struct FileDigest {
  uint64_t size = 0;
  uint64_t hash = 0;
};
// DataLoss naming what path is when it exists and is no regular file (a device, a pipe, a
// directory; through symbolic links): read, /dev/zero never ends and a pipe blocks. OK otherwise.
absl::Status CheckRegularFile(const std::string& path);
// Size and XXH64 of a file, read once through a fixed buffer; refuses what CheckRegularFile does.
absl::StatusOr<FileDigest> DigestFile(const std::string& path);

std::string StepDirName(int64_t step);           // 123 -> "step_00000123"
int64_t ParseStepDirName(absl::string_view name);  // "step_00000123" -> 123; -1 for other names

struct ManifestEntry {
  std::string name;
  uint64_t size = 0;
  uint64_t hash = 0;
};
struct Manifest {
  int64_t step = -1;
  std::vector<ManifestEntry> files;
};
// Parses ckpt_dir/MANIFEST; DataLoss naming the line when it is missing, corrupt or foreign.
absl::StatusOr<Manifest> ReadManifest(const std::string& ckpt_dir);

// Parses a checkpoint's meta.json (text, read from `file`): one JSON object of string values,
// as the trainer writes it. Anything else is DataLoss naming the file: only damage or an edit
// makes one so.
absl::StatusOr<std::map<std::string, std::string>> ParseCheckpointMeta(const std::string& file, std::string_view text);

// (step, path) of complete-looking checkpoints under dir (manifest parses, files have their
// listed sizes), newest first.
std::vector<std::pair<int64_t, std::string>> CompleteCheckpoints(const std::string& dir);

std::string HostName();
// Removes ".tmp-step_X.<host>.<pid>" dirs of this host whose writer process is gone.
void RemoveDeadTempDirs(const std::string& dir);

// InternalError "<what> <path>: <strerror(errno)>".
absl::Status Errno(absl::string_view what, const std::string& path);
std::string ShapeString(const std::vector<int64_t>& shape);

}  // namespace moe::checkpoint_dir
