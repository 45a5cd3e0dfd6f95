// Pretokenized training data (data.tokenizer: pretokenized): which files a data.path names, what
// each shard's header says, and which shards are the held-out split. One home for the worker's
// loader (worker/data/dataset.cc, which maps the tokens) and for moectl validate / submit (which
// read only the headers, so that a damaged or too-short shard is refused before the job runs).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace moe {

// modded-nanogpt / llm.c FineWeb shard: 256 int32 header (magic, version, token count), then
// uint16 tokens. A file without the magic is raw uint16 tokens.
inline constexpr int32_t kShardMagic = 20240520;
inline constexpr int32_t kShardVersion = 1;
inline constexpr size_t kShardHeaderBytes = 256 * sizeof(int32_t);

// The shard files of data.path, sorted: a directory's regular *.bin files, a glob's regular
// files, or the one file. NotFound (naming data.path) when there are none.
absl::StatusOr<std::vector<std::string>> ShardFiles(const std::string& path);

// Where a shard's tokens are: `offset` bytes from the start, `tokens` uint16 ids.
struct ShardExtent {
  size_t offset = 0;
  size_t tokens = 0;
};
// The extent of a shard of `size` bytes whose first bytes are `head` (at least the first 12, or
// all of a shorter file): DataLoss for a truncated or odd-sized file, InvalidArgument for another
// header version or no tokens, each naming `path` and what to do.
absl::StatusOr<ShardExtent> ShardExtentOf(const std::string& path, const char* head, size_t head_bytes,
                                          uint64_t size);
// The same, reading the header from the file (12 bytes of it, and its size).
absl::StatusOr<ShardExtent> ReadShardExtent(const std::string& path);

// Whether the shard `file` (a path) holds held-out tokens: with more than one shard, a file whose
// name contains "val" is the validation split and the others are training; one shard is split
// by data.val_fraction.
bool IsValShard(const std::string& file, size_t shard_count);

}  // namespace moe
