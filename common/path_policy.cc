// Path policy: realpath of the longest existing prefix, then a prefix test per root.
#include "common/path_policy.h"

#include <glob.h>
#include <limits.h>
#include <stdlib.h>

#include <cstdlib>
#include <filesystem>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "common/files.h"

namespace moe {
namespace {

constexpr const char* kSystemDirs[] = {"/etc",  "/proc", "/sys",  "/dev",   "/boot",
                                       "/root", "/usr",  "/bin",  "/sbin",  "/lib",
                                       "/lib32", "/lib64", "/libx32", "/var/lib", "/run"};

bool Under(const std::string& path, const std::string& root) {
  if (root == "/") return true;
  return path == root || absl::StartsWith(path, root + "/");
}

std::vector<std::string> Split(const char* value) {
  std::vector<std::string> out;
  if (value == nullptr) return out;
  for (absl::string_view r : absl::StrSplit(value, ':', absl::SkipEmpty())) {
    out.push_back(ResolvePath(std::string(r)));
  }
  return out;
}

absl::Status Check(const std::vector<std::string>& roots, const char* flag,
                   const std::string& field, const std::string& path, bool checkpoint) {
  if (path.empty()) return absl::OkStatus();
  const std::string real = ResolvePath(path);
  const std::string shown =
      real == path ? absl::StrCat(field, ": ", path)
                   : absl::StrCat(field, ": ", path, " (which resolves to ", real, ")");
  if (!roots.empty()) {
    for (const std::string& root : roots) {
      if (Under(real, ResolvePath(root))) return absl::OkStatus();
    }
    return absl::PermissionDeniedError(absl::StrCat(
        shown, " is outside the directories moed allows (", flag, " ",
        absl::StrJoin(roots, ", "), "); move the files there, or ask the operator to add a ",
        flag));
  }
  if (checkpoint && real == "/") {
    return absl::PermissionDeniedError(absl::StrCat(
        shown, " is the root directory; give a directory of your own (or leave it empty for "
               "moed's job directory)"));
  }
  for (const char* dir : kSystemDirs) {
    if (Under(real, dir)) {
      return absl::PermissionDeniedError(absl::StrCat(
          shown, " is inside the system directory ", dir,
          ", which jobs may not read or write; use your own files (moed ", flag,
          " limits jobs to chosen directories)"));
    }
  }
  return absl::OkStatus();
}

}  // namespace

std::string ResolvePath(const std::string& path) {
  std::string abs = path;
  if (abs.empty() || abs[0] != '/') {
    char cwd[PATH_MAX];
    if (getcwd(cwd, sizeof(cwd)) != nullptr) abs = absl::StrCat(cwd, "/", path);
  }
  // realpath of the longest prefix that exists, the rest appended as written.
  std::string head = abs, tail;
  while (true) {
    char buf[PATH_MAX];
    if (realpath(head.c_str(), buf) != nullptr) {
      std::string out = buf;
      if (!tail.empty()) out = out == "/" ? tail : out + tail;
      return out;
    }
    size_t slash = head.rfind('/');
    if (slash == std::string::npos || head == "/") return abs;
    tail = head.substr(slash) + tail;
    head = slash == 0 ? "/" : head.substr(0, slash);
  }
}

PathPolicy PathPolicy::FromEnvironment() {
  PathPolicy p;
  p.data_roots = Split(std::getenv("MOE_DATA_ROOTS"));
  p.checkpoint_roots = Split(std::getenv("MOE_CHECKPOINT_ROOTS"));
  return p;
}

std::string PathPolicy::DataRootsEnv() const { return absl::StrJoin(data_roots, ":"); }
std::string PathPolicy::CheckpointRootsEnv() const {
  return absl::StrJoin(checkpoint_roots, ":");
}

absl::Status CheckDataPath(const PathPolicy& policy, const std::string& field,
                           const std::string& path) {
  return Check(policy.data_roots, "--data-root", field, path, /*checkpoint=*/false);
}

absl::Status CheckCheckpointPath(const PathPolicy& policy, const std::string& field,
                                 const std::string& path) {
  return Check(policy.checkpoint_roots, "--checkpoint-root", field, path, /*checkpoint=*/true);
}

namespace {

// The token shards a pretokenized data.path names beside itself, as the worker finds them (a
// glob's matches, a directory's *.bin entries): the pattern or the directory passing the check
// says nothing of where "dir/*/../../elsewhere/*.bin" or a symlink inside the directory leads.
std::vector<std::string> ShardsBeyondThePath(const std::string& path) {
  std::vector<std::string> files;
  std::error_code ec;
  if (path.find_first_of("*?[") != std::string::npos) {
    if (WildcardDirectories(path) > kMaxWildcardDirectories) return files;  // the spec checks refuse it
    glob_t g{};
    if (::glob(path.c_str(), 0, nullptr, &g) == 0) {
      for (size_t i = 0; i < g.gl_pathc; ++i) files.emplace_back(g.gl_pathv[i]);
    }
    globfree(&g);
  } else if (std::filesystem::is_directory(path, ec)) {
    for (const auto& e : std::filesystem::directory_iterator(path, ec)) {
      if (e.path().extension() == ".bin") files.push_back(e.path().string());
    }
  }
  return files;
}

// What the worker opens inside a directory-valued field (a tokenizer's files; an init_from
// model's files, or its checkpoints' files one level down): each entry, so that one that is a
// symlink out of the allowed directories (tok/vocab.bpe -> /etc/passwd) is caught.
void EntriesOf(const std::string& dir, int depth, std::vector<std::string>* out) {
  std::error_code ec;
  if (depth == 0 || !std::filesystem::is_directory(dir, ec)) return;
  for (const auto& e : std::filesystem::directory_iterator(dir, ec)) {
    out->push_back(e.path().string());
    if (!e.is_symlink(ec)) EntriesOf(e.path().string(), depth - 1, out);
  }
}

}  // namespace

absl::Status CheckSpecPaths(const PathPolicy& policy, const moe::v1::JobSpec& spec) {
  const moe::v1::DataSpec& d = spec.data();
  for (const auto& [field, path] : {std::pair<const char*, const std::string*>{"data.path", &d.path()},
                                    {"data.tokenizer_dir", &d.tokenizer_dir()},
                                    {"data.cache_dir", &d.cache_dir()}}) {
    if (absl::Status s = CheckDataPath(policy, field, *path); !s.ok()) return s;
  }
  if (d.tokenizer() == moe::v1::TOKENIZER_PRETOKENIZED) {
    for (const std::string& shard : ShardsBeyondThePath(d.path())) {
      if (absl::Status s = CheckDataPath(policy, absl::StrCat("data.path ", d.path(), " takes"), shard); !s.ok()) {
        return s;
      }
    }
  }
  // A tokenizer's files are read; a token cache's are read and written (meta.txt, tokenizer.txt,
  // train.bin, val.bin): a symlink among them must not lead out of the allowed directories.
  for (const auto& [field, dir] : {std::pair<const char*, const std::string*>{"data.tokenizer_dir holds",
                                                                              &d.tokenizer_dir()},
                                   {"data.cache_dir holds", &d.cache_dir()}}) {
    std::vector<std::string> files;
    EntriesOf(*dir, 1, &files);
    for (const std::string& f : files) {
      if (absl::Status s = CheckDataPath(policy, field, f); !s.ok()) return s;
    }
  }
  // Weights to start from are read: under a data root or a checkpoint root.
  if (const std::string& init = spec.model().init_from(); !init.empty()) {
    std::vector<std::string> paths = {init};
    EntriesOf(init, 2, &paths);
    for (const std::string& path : paths) {
      const std::string field = path == init ? "model.init_from" : "model.init_from holds";
      absl::Status as_data = CheckDataPath(policy, field, path);
      if (!as_data.ok() && !CheckCheckpointPath(policy, field, path).ok()) return as_data;
    }
  }
  return CheckCheckpointPath(policy, "checkpoint.dir", spec.checkpoint().dir());
}

}  // namespace moe
