#include "worker/checkpoint/checkpoint.h"

#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <set>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "common/files.h"

namespace moe {
namespace fs = std::filesystem;
namespace {

constexpr absl::string_view kManifestHeader = "moe-checkpoint v1";
constexpr char kManifest[] = "MANIFEST";
constexpr char kModelFile[] = "model.safetensors";
constexpr char kOptimizerFile[] = "optimizer.safetensors";
constexpr char kSpecFile[] = "spec.json";
constexpr char kTokenizerFile[] = "tokenizer.txt";
constexpr char kMetaFile[] = "meta.json";
constexpr absl::string_view kOptimizerPrefix = "adam_";
constexpr absl::string_view kTempPrefix = ".tmp-step_";

void (*g_test_hook)(std::string_view stage) = nullptr;
void Stage(absl::string_view stage) {
  if (g_test_hook) g_test_hook(std::string_view(stage.data(), stage.size()));
}

// XXH64, streaming (the reference algorithm by Yann Collet), so a file of any size is hashed
// through a fixed buffer.
constexpr uint64_t kP1 = 0x9E3779B185EBCA87ull, kP2 = 0xC2B2AE3D27D4EB4Full,
                   kP3 = 0x165667B19E3779F9ull, kP4 = 0x85EBCA77C2B2AE63ull,
                   kP5 = 0x27D4EB2F165667C5ull;
inline uint64_t Rotl(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }
inline uint64_t Read64(const unsigned char* p) {
  uint64_t v;
  std::memcpy(&v, p, 8);
  return v;
}
inline uint32_t Read32(const unsigned char* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}
inline uint64_t Round(uint64_t acc, uint64_t input) {
  acc += input * kP2;
  return Rotl(acc, 31) * kP1;
}
inline uint64_t MergeRound(uint64_t acc, uint64_t val) {
  acc ^= Round(0, val);
  return acc * kP1 + kP4;
}

class Xxh64Hasher {
 public:
  explicit Xxh64Hasher(uint64_t seed = 0)
      : seed_(seed), v_{seed + kP1 + kP2, seed + kP2, seed, seed - kP1} {}

  void Update(const void* data, size_t len) {
    const unsigned char* p = static_cast<const unsigned char*>(data);
    total_ += len;
    if (buf_len_ + len < 32) {
      std::memcpy(buf_ + buf_len_, p, len);
      buf_len_ += len;
      return;
    }
    if (buf_len_ > 0) {
      size_t fill = 32 - buf_len_;
      std::memcpy(buf_ + buf_len_, p, fill);
      Stripe(buf_);
      p += fill;
      len -= fill;
      buf_len_ = 0;
    }
    for (; len >= 32; p += 32, len -= 32) Stripe(p);
    std::memcpy(buf_, p, len);
    buf_len_ = len;
  }

  uint64_t Digest() const {
    uint64_t h;
    if (total_ >= 32) {
      h = Rotl(v_[0], 1) + Rotl(v_[1], 7) + Rotl(v_[2], 12) + Rotl(v_[3], 18);
      for (uint64_t v : v_) h = MergeRound(h, v);
    } else {
      h = seed_ + kP5;
    }
    h += total_;
    const unsigned char* p = buf_;
    size_t len = buf_len_;
    for (; len >= 8; p += 8, len -= 8) h = Rotl(h ^ Round(0, Read64(p)), 27) * kP1 + kP4;
    if (len >= 4) {
      h = Rotl(h ^ (static_cast<uint64_t>(Read32(p)) * kP1), 23) * kP2 + kP3;
      p += 4;
      len -= 4;
    }
    for (; len > 0; ++p, --len) h = Rotl(h ^ (*p * kP5), 11) * kP1;
    h ^= h >> 33;
    h *= kP2;
    h ^= h >> 29;
    h *= kP3;
    h ^= h >> 32;
    return h;
  }

 private:
  void Stripe(const unsigned char* p) {
    for (int i = 0; i < 4; ++i) v_[i] = Round(v_[i], Read64(p + 8 * i));
  }
  uint64_t seed_;
  uint64_t v_[4];
  uint64_t total_ = 0;
  unsigned char buf_[32];
  size_t buf_len_ = 0;
};

struct FileDigest {
  uint64_t size = 0;
  uint64_t hash = 0;
};

absl::StatusOr<FileDigest> DigestFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open ", path));
  Xxh64Hasher hasher;
  std::vector<char> buf(1 << 20);
  FileDigest d;
  while (in) {
    in.read(buf.data(), buf.size());
    std::streamsize n = in.gcount();
    if (n <= 0) break;
    hasher.Update(buf.data(), static_cast<size_t>(n));
    d.size += static_cast<uint64_t>(n);
  }
  if (in.bad()) return absl::InternalError(absl::StrCat("cannot read ", path));
  d.hash = hasher.Digest();
  return d;
}

std::string StepDirName(int64_t step) { return absl::StrFormat("step_%08d", step); }

// "step_00000123" -> 123; -1 for any other name.
int64_t ParseStepDirName(absl::string_view name) {
  if (!absl::ConsumePrefix(&name, "step_") || name.size() < 8 ||
      !std::all_of(name.begin(), name.end(), [](char c) { return c >= '0' && c <= '9'; })) {
    return -1;
  }
  int64_t step;
  return absl::SimpleAtoi(name, &step) ? step : -1;
}

struct ManifestEntry {
  std::string name;
  uint64_t size = 0;
  uint64_t hash = 0;
};
struct Manifest {
  int64_t step = -1;
  std::vector<ManifestEntry> files;
};

absl::StatusOr<Manifest> ReadManifest(const std::string& ckpt_dir) {
  std::string path = absl::StrCat(ckpt_dir, "/", kManifest);
  absl::StatusOr<std::string> text = ReadFile(path);
  if (!text.ok()) {
    return absl::DataLossError(absl::StrCat(
        path, " is missing or unreadable (", text.status().message(),
        "): the checkpoint is incomplete, e.g. its writer crashed; use an older checkpoint"));
  }
  auto bad = [&](size_t line, absl::string_view what) {
    return absl::DataLossError(absl::StrCat(path, ":", line, ": ", what,
                                            "; the manifest is corrupt or not a moe checkpoint"));
  };
  std::vector<absl::string_view> lines = absl::StrSplit(*text, '\n');
  if (lines.empty() || lines[0] != kManifestHeader) {
    return bad(1, absl::StrCat("expected \"", kManifestHeader, "\""));
  }
  Manifest m;
  bool ended = false;
  std::set<std::string> names;
  for (size_t i = 1; i < lines.size() && !ended; ++i) {
    std::vector<absl::string_view> f = absl::StrSplit(lines[i], ' ');
    if (f.size() == 2 && f[0] == "step") {
      if (!absl::SimpleAtoi(f[1], &m.step) || m.step < 0) return bad(i + 1, "bad step");
    } else if (f.size() == 4 && f[0] == "file") {
      ManifestEntry e;
      e.name = std::string(f[1]);
      if (e.name.empty() || absl::StrContains(e.name, '/') || e.name == kManifest ||
          !names.insert(e.name).second || !absl::SimpleAtoi(f[2], &e.size) ||
          !absl::SimpleHexAtoi(f[3], &e.hash)) {
        return bad(i + 1, "bad file line");
      }
      m.files.push_back(std::move(e));
    } else if (lines[i] == "end") {
      ended = true;
    } else {
      return bad(i + 1, absl::StrCat("unexpected line \"", lines[i].substr(0, 80), "\""));
    }
  }
  if (!ended) return bad(lines.size(), "no \"end\" line (truncated manifest)");
  if (m.step < 0) return bad(lines.size(), "no step line");
  for (const char* required : {kModelFile, kOptimizerFile, kSpecFile, kTokenizerFile, kMetaFile}) {
    if (!names.count(required)) return bad(lines.size(), absl::StrCat("does not list ", required));
  }
  return m;
}

// Cheap completeness check for LatestCheckpoint: manifest parses, files exist with their sizes.
bool LooksComplete(const std::string& ckpt_dir, int64_t step) {
  absl::StatusOr<Manifest> m = ReadManifest(ckpt_dir);
  if (!m.ok() || m->step != step) return false;
  for (const ManifestEntry& e : m->files) {
    std::error_code ec;
    uintmax_t size = fs::file_size(absl::StrCat(ckpt_dir, "/", e.name), ec);
    if (ec || size != e.size) return false;
  }
  return true;
}

// (step, path) of complete checkpoints under dir, newest first.
std::vector<std::pair<int64_t, std::string>> CompleteCheckpoints(const std::string& dir) {
  std::vector<std::pair<int64_t, std::string>> out;
  std::error_code ec;
  for (const fs::directory_entry& entry : fs::directory_iterator(dir, ec)) {
    int64_t step = ParseStepDirName(entry.path().filename().string());
    if (step < 0 || !entry.is_directory(ec)) continue;
    if (LooksComplete(entry.path().string(), step)) out.emplace_back(step, entry.path().string());
  }
  std::sort(out.begin(), out.end(), std::greater<>());
  return out;
}

std::string HostName() {
  char buf[256] = {};
  if (::gethostname(buf, sizeof(buf) - 1) != 0) return "unknown";
  return buf;
}

// Removes ".tmp-step_X.<host>.<pid>" dirs of this host whose writer process is gone.
void RemoveDeadTempDirs(const std::string& dir) {
  std::string host = HostName();
  std::error_code ec;
  std::vector<fs::path> dead;
  for (const fs::directory_entry& entry : fs::directory_iterator(dir, ec)) {
    std::string name = entry.path().filename().string();
    if (!absl::StartsWith(name, kTempPrefix)) continue;
    std::vector<std::string> parts = absl::StrSplit(name, '.');
    // "", "tmp-step_X", host pieces..., pid
    if (parts.size() < 4) continue;
    int pid;
    if (!absl::SimpleAtoi(parts.back(), &pid) || pid <= 0) continue;
    std::string name_host = absl::StrJoin(parts.begin() + 2, parts.end() - 1, ".");
    if (name_host != host) continue;
    if (pid != ::getpid() && ::kill(pid, 0) != 0 && errno == ESRCH) dead.push_back(entry.path());
  }
  for (const fs::path& p : dead) fs::remove_all(p, ec);
}

absl::Status Errno(absl::string_view what, const std::string& path) {
  return absl::InternalError(absl::StrCat(what, " ", path, ": ", std::strerror(errno)));
}

std::string ShapeString(const std::vector<int64_t>& shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

absl::Status WriteInto(const std::string& tmp, const Checkpoint& ckpt) {
  std::vector<const NamedTensor*> weights, optimizer;
  for (const NamedTensor& t : ckpt.tensors) {
    (absl::StartsWith(t.name, kOptimizerPrefix) ? optimizer : weights).push_back(&t);
  }
  // "format": "pt" is what transformers/safetensors write for PyTorch tensors.
  absl::Status st = WriteSafetensors(absl::StrCat(tmp, "/", kModelFile), weights,
                                     {{"format", "pt"}, {"step", absl::StrCat(ckpt.step)}});
  if (!st.ok()) return st;
  Stage(absl::StrCat("file:", kModelFile));
  st = WriteSafetensors(absl::StrCat(tmp, "/", kOptimizerFile), optimizer, {{"format", "pt"}});
  if (!st.ok()) return st;
  Stage(absl::StrCat("file:", kOptimizerFile));
  std::string meta = "{";
  for (const auto& [k, v] : ckpt.meta) {
    absl::StrAppend(&meta, meta.size() > 1 ? ",\n" : "\n", JsonQuote(k), ": ", JsonQuote(v));
  }
  meta += "\n}\n";
  for (auto [name, contents] : {std::pair<const char*, std::string_view>{kSpecFile, ckpt.spec_json},
                                {kTokenizerFile, ckpt.tokenizer},
                                {kMetaFile, meta}}) {
    st = WriteFileAtomic(absl::StrCat(tmp, "/", name), contents);
    if (!st.ok()) return st;
    Stage(absl::StrCat("file:", name));
  }
  // The manifest goes last: its presence means every file it lists is complete.
  std::string manifest = absl::StrCat(kManifestHeader, "\nstep ", ckpt.step, "\n");
  for (const char* name : {kModelFile, kOptimizerFile, kSpecFile, kTokenizerFile, kMetaFile}) {
    absl::StatusOr<FileDigest> d = DigestFile(absl::StrCat(tmp, "/", name));
    if (!d.ok()) return d.status();
    absl::StrAppendFormat(&manifest, "file %s %d %016x\n", name, d->size, d->hash);
  }
  manifest += "end\n";
  st = WriteFileAtomic(absl::StrCat(tmp, "/", kManifest), manifest);
  if (!st.ok()) return st;
  Stage("manifest");
  return SyncDir(tmp);
}

}  // namespace

uint64_t Xxh64(const void* data, size_t len, uint64_t seed) {
  Xxh64Hasher h(seed);
  h.Update(data, len);
  return h.Digest();
}

void SetCheckpointTestHook(void (*hook)(std::string_view stage)) { g_test_hook = hook; }

absl::Status WriteCheckpoint(const std::string& dir, const Checkpoint& ckpt, int keep) {
  if (ckpt.step < 0) {
    return absl::InvalidArgumentError(absl::StrCat("checkpoint step must be >= 0, got ", ckpt.step));
  }
  if (absl::Status st = MakeDirs(dir); !st.ok()) return st;
  const std::string final_dir = absl::StrCat(dir, "/", StepDirName(ckpt.step));
  const std::string tmp = absl::StrCat(dir, "/.tmp-", StepDirName(ckpt.step),
                                       ".", HostName(), ".", ::getpid());
  std::error_code ec;
  fs::remove_all(tmp, ec);
  if (!fs::create_directory(tmp, ec)) {
    return absl::InternalError(absl::StrCat("cannot create ", tmp, ": ", ec.message()));
  }
  Stage("temp_dir");
  if (absl::Status st = WriteInto(tmp, ckpt); !st.ok()) {
    fs::remove_all(tmp, ec);
    return absl::Status(st.code(), absl::StrCat("writing checkpoint ", final_dir, ": ", st.message()));
  }

  // Into place. A checkpoint of the same step (a rerun after a restart) is swapped out
  // atomically, so some complete copy of it exists at every moment.
  if (::rename(tmp.c_str(), final_dir.c_str()) != 0) {
    if (errno != ENOTEMPTY && errno != EEXIST) {
      absl::Status st = Errno("cannot rename into", final_dir);
      fs::remove_all(tmp, ec);
      return st;
    }
    if (::renameat2(AT_FDCWD, tmp.c_str(), AT_FDCWD, final_dir.c_str(), RENAME_EXCHANGE) != 0) {
      absl::Status st = Errno("cannot replace", final_dir);
      fs::remove_all(tmp, ec);
      return st;
    }
    fs::remove_all(tmp, ec);  // now the old copy
  }
  if (absl::Status st = SyncDir(dir); !st.ok()) return st;
  Stage("renamed");

  if (keep > 0) {
    std::vector<std::pair<int64_t, std::string>> complete = CompleteCheckpoints(dir);
    for (size_t i = static_cast<size_t>(keep); i < complete.size(); ++i) {
      fs::remove_all(complete[i].second, ec);
      if (ec) {
        return absl::InternalError(
            absl::StrCat("cannot delete old checkpoint ", complete[i].second, ": ", ec.message()));
      }
    }
  }
  RemoveDeadTempDirs(dir);
  return absl::OkStatus();
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

absl::StatusOr<std::string> NewestGoodCheckpoint(
    const std::string& dir, bool start_over,
    const std::function<void(const std::string&)>& report) {
  // Every step_ directory counts, complete-looking or not: a wrong size is damage too.
  std::vector<std::pair<int64_t, std::string>> all;
  std::error_code ec;
  for (const fs::directory_entry& entry : fs::directory_iterator(dir, ec)) {
    int64_t step = ParseStepDirName(entry.path().filename().string());
    if (step >= 0 && entry.is_directory(ec)) all.emplace_back(step, entry.path().string());
  }
  if (all.empty()) {
    return absl::NotFoundError(absl::StrCat("no checkpoint under ", dir));
  }
  std::sort(all.begin(), all.end(), std::greater<>());
  std::vector<std::string> damaged;
  for (const auto& [step, path] : all) {
    absl::StatusOr<Checkpoint> ckpt = ReadCheckpoint(path);
    absl::Status st = ckpt.ok() && ckpt->step != step
                          ? absl::DataLossError(absl::StrCat("its manifest says step ", ckpt->step))
                          : ckpt.status();
    if (st.ok()) return path;
    damaged.push_back(absl::StrCat(path, ": ", st.message()));
    if (report) {
      report(absl::StrCat("skipping damaged checkpoint ", path, ": ", st.message(),
                          "; trying an older one"));
    }
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

absl::StatusOr<Checkpoint> ReadCheckpoint(const std::string& path) {
  absl::StatusOr<Manifest> manifest = ReadManifest(path);
  if (!manifest.ok()) return manifest.status();
  std::map<std::string, std::string> contents;
  for (const ManifestEntry& e : manifest->files) {
    std::string file = absl::StrCat(path, "/", e.name);
    absl::StatusOr<std::string> bytes = ReadFile(file);
    if (!bytes.ok()) {
      return absl::DataLossError(absl::StrCat(file, " is listed in the manifest but cannot be read: ",
                                              bytes.status().message()));
    }
    if (bytes->size() != e.size) {
      return absl::DataLossError(absl::StrCat(file, " is ", bytes->size(), " bytes, the manifest says ",
                                              e.size, bytes->size() < e.size ? " (truncated)" : "",
                                              "; the checkpoint is damaged, use an older one"));
    }
    uint64_t hash = Xxh64(bytes->data(), bytes->size());
    if (hash != e.hash) {
      return absl::DataLossError(absl::StrFormat(
          "%s: checksum %016x differs from the manifest's %016x (corrupted bytes); the checkpoint "
          "is damaged, use an older one", file, hash, e.hash));
    }
    contents[e.name] = *std::move(bytes);
  }

  Checkpoint ckpt;
  ckpt.step = manifest->step;
  ckpt.spec_json = std::move(contents[kSpecFile]);
  ckpt.tokenizer = std::move(contents[kTokenizerFile]);
  absl::StatusOr<std::map<std::string, std::string>> meta = ParseJsonStringMap(contents[kMetaFile]);
  if (!meta.ok()) {
    return absl::DataLossError(absl::StrCat(path, "/", kMetaFile, ": ", meta.status().message()));
  }
  ckpt.meta = *std::move(meta);

  for (const char* name : {kModelFile, kOptimizerFile}) {
    absl::StatusOr<SafetensorsFile> st = ParseSafetensors(contents[name], absl::StrCat(path, "/", name));
    contents[name].clear();
    contents[name].shrink_to_fit();
    if (!st.ok()) return st.status();
    for (NamedTensor& t : st->tensors) {
      bool is_optimizer = absl::StartsWith(t.name, kOptimizerPrefix);
      if (is_optimizer != (std::string(name) == kOptimizerFile)) {
        return absl::DataLossError(absl::StrCat(path, "/", name, ": tensor ", t.name,
                                                " does not belong in this file"));
      }
      ckpt.tensors.push_back(std::move(t));
    }
  }
  // Optimizer moments must have their weight's shape.
  std::map<std::string, const NamedTensor*> by_name;
  for (const NamedTensor& t : ckpt.tensors) by_name[t.name] = &t;
  for (const NamedTensor& t : ckpt.tensors) {
    for (absl::string_view prefix : {"adam_m.", "adam_v."}) {
      absl::string_view weight = t.name;
      if (!absl::ConsumePrefix(&weight, prefix)) continue;
      auto it = by_name.find(std::string(weight));
      if (it != by_name.end() && it->second->shape != t.shape) {
        return absl::DataLossError(absl::StrCat(
            path, "/", kOptimizerFile, ": ", t.name, " has shape ", ShapeString(t.shape),
            " but weight ", weight, " has ", ShapeString(it->second->shape)));
      }
    }
  }
  return ckpt;
}

absl::Status CheckCompatible(
    const Checkpoint& ckpt,
    const std::vector<std::pair<std::string, std::vector<int64_t>>>& expected) {
  std::map<std::string, const NamedTensor*> by_name;
  for (const NamedTensor& t : ckpt.tensors) by_name[t.name] = &t;
  std::set<std::string> wanted;
  for (const auto& [name, shape] : expected) {
    wanted.insert(name);
    auto it = by_name.find(name);
    if (it == by_name.end()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "checkpoint (step ", ckpt.step, ") has no tensor ", name, "; this model expects shape ",
          ShapeString(shape), ": the checkpoint was written for a different model"));
    }
    if (it->second->shape != shape) {
      return absl::InvalidArgumentError(absl::StrCat(
          "tensor ", name, ": checkpoint has shape ", ShapeString(it->second->shape),
          ", this model expects ", ShapeString(shape),
          ": the checkpoint was written for a different model config"));
    }
  }
  for (const NamedTensor& t : ckpt.tensors) {
    if (!absl::StartsWith(t.name, kOptimizerPrefix) && !wanted.count(t.name)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "checkpoint has tensor ", t.name, " ", ShapeString(t.shape),
          " that this model does not have: the checkpoint was written for a different model"));
    }
  }
  return absl::OkStatus();
}

}  // namespace moe
