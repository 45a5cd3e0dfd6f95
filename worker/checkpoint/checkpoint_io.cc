// CheckpointWriter and CheckpointReader: one checkpoint's files written and read a tensor at a
// time, so host memory holds one tensor (plus a 1 MiB buffer), never the whole checkpoint.
#include <fcntl.h>
#include <stdio.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <filesystem>
#include <map>
#include <set>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/strip.h"
#include "common/files.h"
#include "worker/checkpoint/checkpoint.h"
#include "worker/checkpoint/checkpoint_dir.h"

namespace moe {
namespace fs = std::filesystem;
using namespace checkpoint_dir;  // NOLINT: this file is the checkpoint directory's writer

namespace {

bool IsOptimizer(std::string_view name) {
  return absl::StartsWith(absl::string_view(name.data(), name.size()), kOptimizerPrefix);
}

}  // namespace

struct CheckpointWriter::State {
  std::string dir, final_dir, tmp;
  CheckpointInfo info;
  int keep = 0;
  std::vector<TensorSpec> files[2];  // model.safetensors, optimizer.safetensors
  size_t file = 0;                   // the file being written; 2 when both are done
  size_t written = 0;                // tensors of that file written
  std::unique_ptr<SafetensorsWriter> out;
  FileDigest digests[2];
  absl::Status failed;
  bool renamed = false;
};

CheckpointWriter::CheckpointWriter(std::unique_ptr<State> state) : s_(std::move(state)) {}

CheckpointWriter::~CheckpointWriter() {
  s_->out.reset();
  std::error_code ec;
  if (!s_->renamed) fs::remove_all(s_->tmp, ec);
}

absl::Status CheckpointWriter::Fail(const absl::Status& st) {
  if (s_->failed.ok()) {
    s_->failed = absl::Status(st.code(), absl::StrCat("writing checkpoint ", s_->final_dir, ": ",
                                                      st.message()));
  }
  s_->out.reset();
  std::error_code ec;
  fs::remove_all(s_->tmp, ec);
  return s_->failed;
}

absl::StatusOr<std::unique_ptr<CheckpointWriter>> CheckpointWriter::Start(
    const std::string& dir, CheckpointInfo info, const std::vector<TensorSpec>& tensors, int keep) {
  if (info.step < 0) {
    return absl::InvalidArgumentError(absl::StrCat("checkpoint step must be >= 0, got ", info.step));
  }
  if (absl::Status st = MakeDirs(dir); !st.ok()) return st;
  auto s = std::make_unique<State>();
  s->dir = dir;
  s->final_dir = absl::StrCat(dir, "/", StepDirName(info.step));
  s->tmp = absl::StrCat(dir, "/.tmp-", StepDirName(info.step), ".", HostName(), ".", ::getpid());
  s->keep = keep;
  for (const TensorSpec& t : tensors) s->files[IsOptimizer(t.name) ? 1 : 0].push_back(t);
  s->info = std::move(info);
  std::error_code ec;
  fs::remove_all(s->tmp, ec);
  if (!fs::create_directory(s->tmp, ec)) {
    return absl::InternalError(absl::StrCat("cannot create ", s->tmp, ": ", ec.message()));
  }
  std::unique_ptr<CheckpointWriter> w(new CheckpointWriter(std::move(s)));
  Stage("temp_dir");
  if (absl::Status st = w->Advance(); !st.ok()) return st;
  return w;
}

absl::Status CheckpointWriter::Advance() {
  State& s = *s_;
  while (s.file < 2) {
    const char* name = s.file == 0 ? kModelFile : kOptimizerFile;
    if (s.out == nullptr) {
      // "format": "pt" is what transformers/safetensors write for PyTorch tensors.
      std::map<std::string, std::string> metadata = {{"format", "pt"}};
      if (s.file == 0) metadata["step"] = absl::StrCat(s.info.step);
      absl::StatusOr<std::unique_ptr<SafetensorsWriter>> out = SafetensorsWriter::Create(
          absl::StrCat(s.tmp, "/", name), s.files[s.file], metadata);
      if (!out.ok()) return Fail(out.status());
      s.out = *std::move(out);
      s.written = 0;
    }
    if (s.written < s.files[s.file].size()) return absl::OkStatus();
    if (absl::Status st = s.out->Finish(); !st.ok()) return Fail(st);
    s.digests[s.file] = {s.out->size(), s.out->xxh64()};
    s.out.reset();
    Stage(absl::StrCat("file:", name));
    ++s.file;
  }
  return absl::OkStatus();
}

absl::Status CheckpointWriter::Write(std::string_view name, const float* data, size_t count) {
  State& s = *s_;
  if (!s.failed.ok()) return s.failed;
  if (s.out == nullptr) {
    return Fail(absl::FailedPreconditionError(absl::StrCat("tensor ", absl::string_view(name.data(), name.size()), " after the last one")));
  }
  // Values that are no numbers (a run that diverged) make a checkpoint nothing can train or
  // sample from, and keeping it would rotate a good one out: it is not written.
  for (size_t i = 0; i < count; ++i) {
    if (!std::isfinite(data[i])) {
      return Fail(absl::FailedPreconditionError(absl::StrCat(
          "tensor ", absl::string_view(name.data(), name.size()), " holds ", data[i], " at element ", i,
          ", not a finite number (the training diverged); this checkpoint is not written and the "
          "older ones are kept")));
    }
  }
  if (absl::Status st = s.out->Write(name, data, count); !st.ok()) return Fail(st);
  ++s.written;
  return Advance();
}

absl::Status CheckpointWriter::Finish() {
  State& s = *s_;
  if (!s.failed.ok()) return s.failed;
  if (s.file < 2) {
    return Fail(absl::FailedPreconditionError(absl::StrCat(
        "finished with tensors missing (", s.written, " of ", s.files[s.file].size(), " in ",
        s.file == 0 ? kModelFile : kOptimizerFile, ")")));
  }
  std::string meta = "{";
  for (const auto& [k, v] : s.info.meta) {
    absl::StrAppend(&meta, meta.size() > 1 ? ",\n" : "\n", JsonQuote(k), ": ", JsonQuote(v));
  }
  meta += "\n}\n";
  // The manifest goes last: its presence means every file it lists is complete.
  std::string manifest = absl::StrCat(kManifestHeader, "\nstep ", s.info.step, "\n");
  for (int i = 0; i < 2; ++i) {
    absl::StrAppendFormat(&manifest, "file %s %d %016x\n", i == 0 ? kModelFile : kOptimizerFile,
                          s.digests[i].size, s.digests[i].hash);
  }
  for (auto [name, contents] : {std::pair<const char*, std::string_view>{kSpecFile, s.info.spec_json},
                                {kTokenizerFile, s.info.tokenizer},
                                {kMetaFile, meta}}) {
    if (absl::Status st = WriteFileAtomic(absl::StrCat(s.tmp, "/", name), contents); !st.ok()) {
      return Fail(st);
    }
    Stage(absl::StrCat("file:", name));
    absl::StrAppendFormat(&manifest, "file %s %d %016x\n", name, contents.size(),
                          Xxh64(contents.data(), contents.size()));
  }
  manifest += "end\n";
  if (absl::Status st = WriteFileAtomic(absl::StrCat(s.tmp, "/", kManifest), manifest); !st.ok()) {
    return Fail(st);
  }
  Stage("manifest");
  if (absl::Status st = SyncDir(s.tmp); !st.ok()) return Fail(st);

  // Into place. A checkpoint of the same step (a rerun after a restart) is swapped out
  // atomically, so some complete copy of it exists at every moment.
  std::error_code ec;
  if (::rename(s.tmp.c_str(), s.final_dir.c_str()) != 0) {
    if (errno != ENOTEMPTY && errno != EEXIST) return Fail(Errno("cannot rename into", s.final_dir));
    if (::renameat2(AT_FDCWD, s.tmp.c_str(), AT_FDCWD, s.final_dir.c_str(), RENAME_EXCHANGE) != 0) {
      return Fail(Errno("cannot replace", s.final_dir));
    }
    fs::remove_all(s.tmp, ec);  // now the old copy
  }
  s.renamed = true;
  if (absl::Status st = SyncDir(s.dir); !st.ok()) return st;
  Stage("renamed");

  if (s.keep > 0) {
    // Counted from this one down: one of a later step is what a resume skipped as damaged (or a
    // run before this one left), and keeping it instead would delete the checkpoint just written.
    std::vector<std::pair<int64_t, std::string>> complete = CompleteCheckpoints(s.dir);
    complete.erase(std::remove_if(complete.begin(), complete.end(),
                                  [&](const auto& c) { return c.first > s.info.step; }),
                   complete.end());
    for (size_t i = static_cast<size_t>(s.keep); i < complete.size(); ++i) {
      fs::remove_all(complete[i].second, ec);
      if (ec) {
        return absl::InternalError(
            absl::StrCat("cannot delete old checkpoint ", complete[i].second, ": ", ec.message()));
      }
    }
    // A step folder older than every kept one that is not complete: a deletion a killed run left
    // half done (or one damaged since). Nothing resumes from it, and no rotation would see it.
    if (!complete.empty()) {
      const int64_t oldest_kept = complete[std::min(complete.size(), static_cast<size_t>(s.keep)) - 1].first;
      for (const fs::directory_entry& e : fs::directory_iterator(s.dir, ec)) {
        const int64_t step = ParseStepDirName(e.path().filename().string());
        if (step >= 0 && step < oldest_kept && e.is_directory(ec)) fs::remove_all(e.path(), ec);
      }
    }
  }
  RemoveDeadTempDirs(s.dir);
  return absl::OkStatus();
}

absl::StatusOr<CheckpointReader> CheckpointReader::Open(const std::string& path) {
  absl::StatusOr<Manifest> manifest = ReadManifest(path);
  if (!manifest.ok()) return manifest.status();
  CheckpointReader r;
  r.path_ = path;
  r.info_.step = manifest->step;
  std::string meta_json;
  for (const ManifestEntry& e : manifest->files) {
    const std::string file = absl::StrCat(path, "/", e.name);
    if (absl::Status s = checkpoint_dir::CheckRegularFile(file); !s.ok()) return s;
    std::error_code ec;
    const uintmax_t size = fs::file_size(file, ec);
    // A wrong size is damage, told before a byte is read (and again if it changed meanwhile).
    auto wrong_size = [&](uint64_t got) {
      return absl::DataLossError(absl::StrCat(file, " is ", got, " bytes, the manifest says ", e.size,
                                              got < e.size ? " (truncated)" : "",
                                              "; the checkpoint is damaged, use an older one"));
    };
    if (!ec && size != e.size) return wrong_size(size);
    // The small files are read whole and hashed; the rest stream through DigestFile.
    std::string* small = e.name == kSpecFile        ? &r.info_.spec_json
                         : e.name == kTokenizerFile ? &r.info_.tokenizer
                         : e.name == kMetaFile      ? &meta_json
                                                    : nullptr;
    absl::StatusOr<FileDigest> d;
    if (small != nullptr) {
      absl::StatusOr<std::string> bytes = ReadFile(file);
      if (bytes.ok()) {
        *small = *std::move(bytes);
        d = FileDigest{small->size(), Xxh64(small->data(), small->size())};
      } else {
        d = bytes.status();
      }
    } else {
      d = DigestFile(file);
    }
    if (!d.ok()) {
      return absl::DataLossError(absl::StrCat(file, " is listed in the manifest but cannot be read: ",
                                              d.status().message()));
    }
    if (d->size != e.size) return wrong_size(d->size);
    if (d->hash != e.hash) {
      return absl::DataLossError(absl::StrFormat(
          "%s: checksum %016x differs from the manifest's %016x (corrupted bytes); the checkpoint "
          "is damaged, use an older one", file, d->hash, e.hash));
    }
  }
  absl::StatusOr<std::map<std::string, std::string>> meta =
      ParseCheckpointMeta(absl::StrCat(path, "/", kMetaFile), meta_json);
  if (!meta.ok()) return meta.status();
  // Its numbers are read as numbers (atoi): one that is not is damage, said here.
  if (auto it = meta->find("vocab_size"); it != meta->end()) {
    int vocab = 0;
    if (!absl::SimpleAtoi(it->second, &vocab) || vocab < 1) {
      return absl::DataLossError(absl::StrCat(path, "/", kMetaFile, ": vocab_size is \"", it->second,
                                              "\", not a whole number of at least 1 that fits an int; the "
                                              "checkpoint is damaged, use an older one"));
    }
  }
  r.info_.meta = *std::move(meta);

  for (const char* name : {kModelFile, kOptimizerFile}) {
    absl::StatusOr<SafetensorsReader> st = SafetensorsReader::Open(absl::StrCat(path, "/", name));
    if (!st.ok()) return st.status();
    for (const TensorEntry& t : st->header().tensors) {
      if (IsOptimizer(t.name) != (std::string(name) == kOptimizerFile)) {
        return absl::DataLossError(absl::StrCat(path, "/", name, ": tensor ", t.name,
                                                " does not belong in this file"));
      }
      r.tensors_.push_back(t);
    }
    if (r.files_.empty()) r.weights_ = r.tensors_.size();
    r.files_.push_back(*std::move(st));
  }
  // Optimizer moments must have their weight's shape.
  for (const TensorEntry& t : r.tensors_) {
    for (absl::string_view prefix : {"adam_m.", "adam_v."}) {
      absl::string_view weight = t.name;
      if (!absl::ConsumePrefix(&weight, prefix)) continue;
      const TensorEntry* w = r.Find(std::string_view(weight.data(), weight.size()));
      if (w != nullptr && w->shape != t.shape) {
        return absl::DataLossError(absl::StrCat(
            path, "/", kOptimizerFile, ": ", t.name, " has shape ", ShapeString(t.shape),
            " but weight ", weight, " has ", ShapeString(w->shape)));
      }
    }
  }
  return r;
}

const TensorEntry* CheckpointReader::Find(std::string_view name) const {
  const bool opt = IsOptimizer(name);
  const size_t begin = opt ? weights_ : 0, end = opt ? tensors_.size() : weights_;
  for (size_t i = begin; i < end; ++i) {
    if (tensors_[i].name == name) return &tensors_[i];
  }
  return nullptr;
}

absl::Status CheckpointReader::Read(const TensorEntry& t, size_t first, size_t count,
                                    float* out) const {
  const size_t file = IsOptimizer(t.name) ? 1 : 0;
  if (absl::Status st = files_[file].Read(t, first, count, out); !st.ok()) return st;
  // The writer refuses values that are not numbers, so one here was put in after the checksums
  // were (a hand edit that re-hashed the files); training, sampling or exporting it spreads it.
  // One pass over what was just read, beside the read itself.
  for (size_t i = 0; i < count; ++i) {
    if (!std::isfinite(out[i])) {
      return absl::DataLossError(absl::StrCat(
          path_, "/", file == 0 ? kModelFile : kOptimizerFile, ": tensor ", t.name, " holds ", out[i],
          " at element ", first + i, " (flat index), not a finite number; a checkpoint never holds one "
          "(the writer refuses them), so this file was altered after it was written: use an older checkpoint"));
    }
  }
  return absl::OkStatus();
}

}  // namespace moe
