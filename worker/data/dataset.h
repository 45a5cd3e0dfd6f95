// Training data: text tokenized once into cached token shards (nanoGPT's raw uint16 train.bin /
// val.bin), or pretokenized shards (raw uint16 or modded-nanogpt FineWeb), split into train/val,
// and the stateless seeded batch sampler every rank shares. Token files are memory-mapped
// (token_split.h), never read whole into memory: pretokenized shards, and a token cache found
// complete. A rank that tokenizes the text trains from its own tokens in memory (about 2 bytes per
// token, for the whole run), never from the shards it wrote (another writer may replace them).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "moe/v1/job.pb.h"
#include "worker/data/token_split.h"
#include "common/tokenizer.h"

namespace moe {

struct Dataset {
  TokenSplit train;              // nanoGPT: first (1 - val_fraction) of the tokens
  TokenSplit val;                // last val_fraction
  std::unique_ptr<Tokenizer> tokenizer;   // null for pretokenized shards
  int vocab_size = 0;            // from the tokenizer, or max id + 1 of the shards
  std::string source;            // description for logs
};

// How a load reports and ends early.
struct DataLoadOptions {
  // Polled between chunks (a few MB) while the text is hashed and tokenized, the cache written
  // and the tokens hashed or scanned: true ends the load with a Cancelled status; a cache being
  // written is left without its meta.txt (and without half-written shards under their names), so
  // it never looks complete.
  std::function<bool()> stop_requested;
  // Lines that say what a long preparation is doing: when tokenizing starts (the text's size, the
  // cache), every progress_every_s while it runs, and when it ends (time, tokens).
  std::function<void(const std::string&)> on_log;
  double progress_every_s = 10;
};

// The status a stopped load returns (absl::IsCancelled).
inline constexpr char kDataLoadStopped[] = "stop requested while preparing the data";

// Loads spec.path as spec.tokenizer says:
//  char / gpt2: a text file, tokenized once and cached in spec.cache_dir (default
//    "<path>.moe-cache/<char|gpt2>/"): train.bin, val.bin (raw little-endian uint16),
//    tokenizer.txt (Tokenizer::Serialize()) and meta.txt (written last: source path, size and
//    XXH64, tokenizer hash, val_fraction, token counts and hashes). A cache that matches the
//    text, tokenizer and val_fraction is reused (its shards mapped, once they hash as meta.txt
//    says; a meta.txt without a hash never matches); otherwise it is rebuilt, each file through a
//    temp name of its own (host, pid, random) and a rename, so ranks loading the same data
//    concurrently never see a torn file. A rank that finds, once it has tokenized, that another
//    rank or job has written the same cache meanwhile leaves it alone.
//  The text is mapped and tokenized a few MB at a time (Tokenizer::CutPoint), so memory holds
//  the tokens (2 bytes per token) and one chunk's work; a rank that tokenized trains from those
//  tokens, never from the shards it wrote (another writer may replace them).
//  pretokenized: a .bin file, a directory of .bin files, or a glob, mapped. Each file is a FineWeb shard
//    (256 x int32 header: magic 20240520, version 1, token count; then uint16 tokens) or raw
//    uint16 tokens. Files whose name contains "val" are the validation split if there are any,
//    otherwise the concatenated tokens are split by val_fraction.
absl::StatusOr<Dataset> LoadDataset(const moe::v1::DataSpec& spec, const DataLoadOptions& opts = {});

// Where a gpt2 job reads encoder.json and vocab.bpe: data.tokenizer_dir, else data/gpt2.
std::string Gpt2TokenizerDir(const moe::v1::DataSpec& spec);

// A split can be sampled with seq_len when it holds at least seq_len + 1 tokens. The error names
// the split, its size and what is needed.
absl::Status CheckSplits(const Dataset& data, int seq_len);

// Stateless, seeded sampling: the batch of a step depends only on (seed, stream, step), so a
// resumed run draws the same batches and every rank can draw the same global batch and take its
// slice. (stream tells apart independent sequences of batches, e.g. 0 = train, 1 = val.)
// Fills x, y (count, seq_len) with sequences first_seq .. first_seq+count-1 of that global batch:
// sequence i starts at offset splitmix64-chain(seed, stream, step, i) % (len - seq_len), x holds
// tokens[off, off + seq_len) and y the same shifted by one. Requires len >= seq_len + 1 (check
// with CheckSplits at load time; a violation aborts the rank with the sizes).
void SampleBatch(const TokenSplit& tokens, uint64_t seed, uint64_t stream, int64_t step,
                 int first_seq, int count, int seq_len, int32_t* x, int32_t* y);

}  // namespace moe
