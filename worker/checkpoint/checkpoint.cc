#include "worker/checkpoint/checkpoint.h"

#include <algorithm>
#include <filesystem>
#include <map>
#include <optional>
#include <set>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/files.h"
#include "worker/checkpoint/checkpoint_dir.h"

namespace moe {
namespace fs = std::filesystem;
using namespace checkpoint_dir;  // NOLINT: the checkpoint directory's own names

namespace {

using Shapes = std::vector<std::pair<std::string, std::vector<int64_t>>>;

// CheckCompatible on a checkpoint's (name, shape) list.
absl::Status CheckShapes(int64_t step, const std::vector<std::pair<absl::string_view, const std::vector<int64_t>*>>& have,
                         const Shapes& expected) {
  std::map<absl::string_view, const std::vector<int64_t>*> by_name(have.begin(), have.end());
  std::set<absl::string_view> wanted;
  for (const auto& [name, shape] : expected) {
    wanted.insert(name);
    auto it = by_name.find(name);
    if (it == by_name.end()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "checkpoint (step ", step, ") has no tensor ", name, "; this model expects shape ",
          ShapeString(shape), ": the checkpoint was written for a different model"));
    }
    if (*it->second != shape) {
      return absl::InvalidArgumentError(absl::StrCat(
          "tensor ", name, ": checkpoint has shape ", ShapeString(*it->second),
          ", this model expects ", ShapeString(shape),
          ": the checkpoint was written for a different model config"));
    }
  }
  for (const auto& [name, shape] : have) {
    if (!absl::StartsWith(name, kOptimizerPrefix) &&
        !wanted.count(name)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "checkpoint has tensor ", name, " ", ShapeString(*shape),
          " that this model does not have: the checkpoint was written for a different model"));
    }
  }
  return absl::OkStatus();
}

}  // namespace

void SetCheckpointTestHook(void (*hook)(std::string_view stage)) { SetHook(hook); }

absl::Status WriteCheckpoint(const std::string& dir, const Checkpoint& ckpt, int keep) {
  // The weights first, then the adam_* tensors, each in their order here.
  std::vector<const NamedTensor*> order;
  for (bool optimizer : {false, true}) {
    for (const NamedTensor& t : ckpt.tensors) {
      if (absl::StartsWith(t.name, kOptimizerPrefix) == optimizer) order.push_back(&t);
    }
  }
  std::vector<TensorSpec> specs;
  for (const NamedTensor* t : order) specs.push_back({t->name, t->shape});
  absl::StatusOr<std::unique_ptr<CheckpointWriter>> w =
      CheckpointWriter::Start(dir, static_cast<const CheckpointInfo&>(ckpt), specs, keep);
  if (!w.ok()) return w.status();
  for (const NamedTensor* t : order) {
    if (absl::Status st = (*w)->Write(t->name, t->data.data(), t->data.size()); !st.ok()) return st;
  }
  return (*w)->Finish();
}

absl::Status CheckCheckpointArgument(const std::string& path) {
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec)) return absl::OkStatus();
  return absl::NotFoundError(absl::StrCat(path, std::filesystem::exists(path, ec) ? " is not a directory" : " does not exist",
                                          "; give a checkpoint (step_XXXXXXXX) or a directory of them, e.g. a "
                                          "job's checkpoints"));
}

absl::StatusOr<std::string> LatestCheckpoint(const std::string& dir) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) {
    return absl::NotFoundError(absl::StrCat("no checkpoint: directory ", dir, " does not exist"));
  }
  std::vector<std::pair<int64_t, std::string>> complete = CompleteCheckpoints(dir);
  if (complete.empty()) {
    return absl::NotFoundError(absl::StrCat("no complete checkpoint (step_XXXXXXXX with a ",
                                            kManifest, ") under ", dir));
  }
  return complete.front().second;
}

namespace {

// The newest step_ directory under dir that passes every check, each damaged newer one reported
// and listed in *damaged; nullopt when none is good (or there is none: *damaged stays empty).
std::optional<CheckpointReader> FindNewestGood(const std::string& dir,
                                               const std::function<void(const std::string&)>& report,
                                               std::vector<std::string>* damaged) {
  // Every step_ directory counts, complete-looking or not: a wrong size is damage too.
  std::vector<std::pair<int64_t, std::string>> all;
  std::error_code ec;
  for (const fs::directory_entry& entry : fs::directory_iterator(dir, ec)) {
    int64_t step = ParseStepDirName(entry.path().filename().string());
    if (step < 0) continue;
    std::error_code dir_ec;
    if (entry.is_directory(dir_ec)) {
      all.emplace_back(step, entry.path().string());
    } else if (report) {
      // A step name that is no directory (a file, a link to nothing or to itself): said, not used.
      report(absl::StrCat("skipping ", entry.path().string(), ": not a checkpoint directory (",
                          dir_ec ? dir_ec.message() : "not a directory", ")"));
    }
  }
  std::sort(all.begin(), all.end(), std::greater<>());
  for (const auto& [step, path] : all) {
    // A streaming verify: every byte is checked, no tensor is loaded.
    absl::StatusOr<CheckpointReader> ckpt = CheckpointReader::Open(path);
    absl::Status st = ckpt.ok() && ckpt->info().step != step
                          ? absl::DataLossError(absl::StrCat("its manifest says step ", ckpt->info().step))
                          : ckpt.status();
    if (st.ok()) return std::move(*ckpt);
    damaged->push_back(absl::StrCat(path, ": ", st.message()));
    if (report) {
      report(absl::StrCat("skipping damaged checkpoint ", path, ": ", st.message(), "; trying an older one"));
    }
  }
  return std::nullopt;
}

}  // namespace

absl::StatusOr<CheckpointReader> NewestGoodCheckpointReader(
    const std::string& dir, bool start_over,
    const std::function<void(const std::string&)>& report, bool* none_there) {
  std::vector<std::string> damaged;
  if (none_there != nullptr) *none_there = false;
  if (std::optional<CheckpointReader> good = FindNewestGood(dir, report, &damaged)) return std::move(*good);
  if (damaged.empty()) {
    if (none_there != nullptr) *none_there = true;
    return absl::NotFoundError(absl::StrCat("no checkpoint under ", dir));
  }
  std::string why = absl::StrCat("every checkpoint under ", dir, " is damaged (",
                                 absl::StrJoin(damaged, "; "), ")");
  if (start_over) {
    if (report) {
      report(absl::StrCat(why, "; starting over from step 0 (checkpoint.start_over_if_damaged)"));
    }
    return absl::NotFoundError(why);
  }
  return absl::DataLossError(absl::StrCat(
      why, "; the job stops rather than silently train from step 0: restore a checkpoint, or "
           "set checkpoint.start_over_if_damaged: true to start over"));
}

absl::StatusOr<CheckpointReader> ResolveCheckpointArgument(const std::string& path,
                                                           const std::function<void(const std::string&)>& report) {
  if (absl::Status st = CheckCheckpointArgument(path); !st.ok()) return st;
  std::error_code ec;
  if (fs::exists(fs::path(path) / kManifest, ec)) return CheckpointReader::Open(path);
  std::vector<std::string> damaged;
  if (std::optional<CheckpointReader> good = FindNewestGood(path, report, &damaged)) return std::move(*good);
  if (damaged.empty()) {
    return absl::NotFoundError(absl::StrCat(path, " holds no complete checkpoint (step_XXXXXXXX with a ", kManifest,
                                            ")"));
  }
  return absl::DataLossError(absl::StrCat("every checkpoint under ", path, " is damaged (",
                                          absl::StrJoin(damaged, "; "),
                                          "); restore one from a copy, or give another checkpoint"));
}

absl::StatusOr<std::string> NewestGoodCheckpoint(
    const std::string& dir, bool start_over,
    const std::function<void(const std::string&)>& report) {
  absl::StatusOr<CheckpointReader> r = NewestGoodCheckpointReader(dir, start_over, report);
  if (!r.ok()) return r.status();
  return r->path();
}

absl::StatusOr<std::map<std::string, std::string>> ReadCheckpointMeta(const std::string& path) {
  absl::StatusOr<Manifest> manifest = ReadManifest(path);
  if (!manifest.ok()) return manifest.status();
  const std::string file = absl::StrCat(path, "/", kMetaFile);
  for (const ManifestEntry& e : manifest->files) {
    if (e.name != kMetaFile) continue;
    if (absl::Status s = CheckRegularFile(file); !s.ok()) return s;
    absl::StatusOr<std::string> text = ReadFile(file);
    if (!text.ok()) {
      return absl::DataLossError(absl::StrCat(file, " is listed in the manifest but cannot be read: ",
                                              text.status().message()));
    }
    if (text->size() != e.size || Xxh64(text->data(), text->size()) != e.hash) {
      return absl::DataLossError(absl::StrCat(file, " differs from the manifest (size or checksum); the "
                                              "checkpoint is damaged"));
    }
    return ParseCheckpointMeta(file, *text);
  }
  return absl::DataLossError(absl::StrCat(path, "/", kManifest, " lists no ", kMetaFile));
}

namespace {

absl::StatusOr<Checkpoint> ReadTensors(const CheckpointReader& reader, bool with_optimizer) {
  Checkpoint ckpt;
  static_cast<CheckpointInfo&>(ckpt) = reader.info();
  for (const TensorEntry& t : reader.tensors()) {
    if (!with_optimizer && absl::StartsWith(t.name, "adam_")) continue;
    NamedTensor nt{t.name, t.shape, std::vector<float>(t.elements())};
    if (absl::Status st = reader.Read(t, 0, nt.data.size(), nt.data.data()); !st.ok()) return st;
    ckpt.tensors.push_back(std::move(nt));
  }
  return ckpt;
}

absl::StatusOr<Checkpoint> ReadTensors(const std::string& path, bool with_optimizer) {
  absl::StatusOr<CheckpointReader> reader = CheckpointReader::Open(path);
  if (!reader.ok()) return reader.status();
  return ReadTensors(*reader, with_optimizer);
}

}  // namespace

absl::StatusOr<Checkpoint> ReadCheckpoint(const std::string& path) { return ReadTensors(path, true); }

absl::StatusOr<Checkpoint> ReadCheckpointWeights(const std::string& path) { return ReadTensors(path, false); }

absl::StatusOr<Checkpoint> ReadCheckpointWeights(const CheckpointReader& reader) { return ReadTensors(reader, false); }

absl::Status CheckCompatible(const Checkpoint& ckpt, const Shapes& expected) {
  std::vector<std::pair<absl::string_view, const std::vector<int64_t>*>> have;
  for (const NamedTensor& t : ckpt.tensors) have.emplace_back(t.name, &t.shape);
  return CheckShapes(ckpt.step, have, expected);
}

absl::Status CheckCompatible(const CheckpointReader& ckpt, const Shapes& expected) {
  std::vector<std::pair<absl::string_view, const std::vector<int64_t>*>> have;
  for (const TensorEntry& t : ckpt.tensors()) have.emplace_back(t.name, &t.shape);
  return CheckShapes(ckpt.info().step, have, expected);
}

}  // namespace moe
