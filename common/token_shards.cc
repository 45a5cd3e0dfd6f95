#include "common/token_shards.h"

#include <glob.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace moe {
namespace fs = std::filesystem;

absl::StatusOr<std::vector<std::string>> ShardFiles(const std::string& path) {
  std::vector<std::string> files;
  std::error_code ec;
  if (fs::is_directory(path, ec)) {
    for (const fs::directory_entry& e : fs::directory_iterator(path, ec)) {
      if (e.is_regular_file(ec) && e.path().extension() == ".bin") files.push_back(e.path().string());
    }
    if (files.empty()) {
      return absl::NotFoundError(absl::StrCat("data.path: directory ", path, " holds no .bin shards"));
    }
  } else if (path.find_first_of("*?[") != std::string::npos) {
    glob_t g{};
    const int rc = ::glob(path.c_str(), 0, nullptr, &g);
    if (rc == 0) {
      for (size_t i = 0; i < g.gl_pathc; ++i) {
        if (fs::is_regular_file(g.gl_pathv[i], ec)) files.push_back(g.gl_pathv[i]);
      }
    }
    globfree(&g);
    if (files.empty()) {
      return absl::NotFoundError(absl::StrCat("data.path: glob ", path, " matches no files"));
    }
  } else {
    if (!fs::is_regular_file(path, ec)) {
      return absl::NotFoundError(absl::StrCat("data.path: ", path, " is not a file, directory or glob "
                                              "of .bin token shards"));
    }
    files.push_back(path);
  }
  std::sort(files.begin(), files.end());
  return files;
}

absl::StatusOr<ShardExtent> ShardExtentOf(const std::string& path, const char* head, size_t head_bytes,
                                          uint64_t size) {
  int32_t header[3] = {0, 0, 0};
  if (head_bytes > 0) std::memcpy(header, head, std::min<size_t>(head_bytes, sizeof(header)));
  ShardExtent extent;
  if (size >= 4 && header[0] == kShardMagic) {
    if (size < kShardHeaderBytes) {
      return absl::DataLossError(absl::StrCat(path, ": FineWeb shard header is cut short (", size, " of ",
                                              kShardHeaderBytes, " bytes); the file is truncated, download it again"));
    }
    if (header[1] != kShardVersion) {
      return absl::InvalidArgumentError(absl::StrCat(path, ": FineWeb shard version ", header[1],
                                                     " is not supported (only version ", kShardVersion,
                                                     ": uint16 GPT-2 tokens)"));
    }
    if (header[2] < 0) return absl::DataLossError(absl::StrCat(path, ": negative token count ", header[2]));
    const uint64_t want = kShardHeaderBytes + 2ull * static_cast<uint64_t>(header[2]);
    if (size != want) {
      return absl::DataLossError(absl::StrCat(path, ": header says ", header[2], " tokens (", want,
                                              " bytes with the header) but the file has ", size, " bytes",
                                              size < want ? "; it is truncated, download it again" : "; trailing bytes"));
    }
    extent.offset = kShardHeaderBytes;
  } else if (size % 2 != 0) {
    return absl::DataLossError(absl::StrCat(path, ": ", size,
                                            " bytes is odd: not raw uint16 tokens (truncated?) and no FineWeb "
                                            "header (magic 20240520)"));
  }
  if (size == extent.offset) return absl::InvalidArgumentError(absl::StrCat(path, ": holds no tokens"));
  extent.tokens = static_cast<size_t>((size - extent.offset) / 2);
  return extent;
}

absl::StatusOr<ShardExtent> ReadShardExtent(const std::string& path) {
  std::error_code ec;
  const uintmax_t size = fs::file_size(path, ec);
  if (ec) return absl::NotFoundError(absl::StrCat(path, ": cannot read its size: ", ec.message()));
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::PermissionDeniedError(absl::StrCat(path, " is not readable; check its permissions"));
  char head[3 * sizeof(int32_t)] = {};
  in.read(head, sizeof(head));
  return ShardExtentOf(path, head, static_cast<size_t>(in.gcount()), size);
}

bool IsValShard(const std::string& file, size_t shard_count) {
  return shard_count > 1 && absl::StrContains(fs::path(file).filename().string(), "val");
}

}  // namespace moe
