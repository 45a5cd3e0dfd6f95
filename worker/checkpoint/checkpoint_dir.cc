#include "worker/checkpoint/checkpoint_dir.h"

#include <signal.h>
#include <sys/stat.h>
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
#include "worker/checkpoint/safetensors.h"
#include "worker/checkpoint/xxh64.h"

namespace moe::checkpoint_dir {
namespace fs = std::filesystem;
namespace {

void (*g_test_hook)(std::string_view stage) = nullptr;

}  // namespace

void SetHook(void (*hook)(std::string_view stage)) { g_test_hook = hook; }

void Stage(absl::string_view stage) {
  if (g_test_hook) g_test_hook(std::string_view(stage.data(), stage.size()));
}

absl::Status CheckRegularFile(const std::string& path) {
  struct stat st;  // through symbolic links
  if (::stat(path.c_str(), &st) != 0 || S_ISREG(st.st_mode)) return absl::OkStatus();  // the read says why
  return absl::DataLossError(absl::StrCat(path, " is ", NonRegularKind(st.st_mode),
                                          ", not a checkpoint file; the checkpoint is damaged, use an older one"));
}

absl::StatusOr<FileDigest> DigestFile(const std::string& path) {
  if (absl::Status s = CheckRegularFile(path); !s.ok()) return s;
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

int64_t ParseStepDirName(absl::string_view name) {
  if (!absl::ConsumePrefix(&name, "step_") || name.size() < 8 ||
      !std::all_of(name.begin(), name.end(), [](char c) { return c >= '0' && c <= '9'; })) {
    return -1;
  }
  int64_t step;
  return absl::SimpleAtoi(name, &step) ? step : -1;
}

absl::StatusOr<Manifest> ReadManifest(const std::string& ckpt_dir) {
  std::string path = absl::StrCat(ckpt_dir, "/", kManifest);
  if (absl::Status s = CheckRegularFile(path); !s.ok()) return s;
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

namespace {

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

}  // namespace

absl::StatusOr<std::map<std::string, std::string>> ParseCheckpointMeta(const std::string& file, std::string_view text) {
  absl::StatusOr<std::map<std::string, std::string>> meta = ParseJsonStringMap(text);
  if (!meta.ok()) {
    return absl::DataLossError(absl::StrCat(file, ": ", meta.status().message(),
                                            " (meta.json holds one JSON object of string values); the checkpoint is "
                                            "damaged or was edited, use an older one"));
  }
  return meta;
}

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

}  // namespace moe::checkpoint_dir
