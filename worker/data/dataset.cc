#include "worker/data/dataset.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <map>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "common/files.h"
#include "common/job_spec.h"
#include "common/token_shards.h"
#include "kernels/dropout.h"
#include "worker/checkpoint/checkpoint.h"

namespace moe {
namespace fs = std::filesystem;
namespace {

constexpr absl::string_view kCacheHeader = "moe-token-cache v1";

std::string TokenBytes(const TokenSplit& tokens) {
  std::string out;
  out.reserve(tokens.size() * sizeof(uint16_t));
  for (const TokenSplit::Piece& p : tokens.pieces()) {
    out.append(reinterpret_cast<const char*>(p.data), p.count * sizeof(uint16_t));
  }
  return out;
}

uint64_t HashTokens(const TokenSplit& tokens) {
  if (tokens.pieces().size() == 1) {
    return Xxh64(tokens.pieces()[0].data, tokens.pieces()[0].count * sizeof(uint16_t));
  }
  const std::vector<uint16_t> all = tokens.ToVector();
  return Xxh64(all.data(), all.size() * sizeof(uint16_t));
}

std::string TokenizerName(moe::v1::Tokenizer t) {
  return t == moe::v1::TOKENIZER_CHAR ? "char" : "gpt2";
}

// The identity of a cache: everything the tokens depend on, plus what they are.
using CacheMeta = std::map<std::string, std::string>;

std::string FormatMeta(const CacheMeta& meta) {
  std::string out = absl::StrCat(kCacheHeader, "\n");
  for (const auto& [k, v] : meta) absl::StrAppend(&out, k, " ", v, "\n");
  return out;
}

absl::StatusOr<CacheMeta> ParseMeta(absl::string_view text) {
  std::vector<absl::string_view> lines = absl::StrSplit(text, '\n', absl::SkipEmpty());
  if (lines.empty() || lines[0] != kCacheHeader) {
    return absl::DataLossError("not a token cache meta file");
  }
  CacheMeta meta;
  for (size_t i = 1; i < lines.size(); ++i) {
    size_t sp = lines[i].find(' ');
    if (sp == absl::string_view::npos) return absl::DataLossError("bad meta line");
    meta[std::string(lines[i].substr(0, sp))] = std::string(lines[i].substr(sp + 1));
  }
  return meta;
}

// The default token cache: never beside the text (its folder may be read-only or shared), but
// under $MOE_CACHE_DIR, else $XDG_CACHE_HOME/moe/tokens, else ~/.cache/moe/tokens, in a folder
// named after the text file and a hash of its absolute path.
std::string DefaultCacheDir(const std::string& text_path, absl::string_view kind) {
  std::string root;
  if (const char* env = std::getenv("MOE_CACHE_DIR"); env != nullptr && *env != '\0') {
    root = env;
  } else if (const char* xdg = std::getenv("XDG_CACHE_HOME"); xdg != nullptr && *xdg != '\0') {
    root = absl::StrCat(xdg, "/moe/tokens");
  } else {
    const char* home = std::getenv("HOME");
    root = absl::StrCat(home != nullptr && *home != '\0' ? home : "/tmp", "/.cache/moe/tokens");
  }
  std::error_code ec;
  std::string abs = std::filesystem::absolute(text_path, ec).string();
  if (ec) abs = text_path;
  return absl::StrCat(root, "/", std::filesystem::path(abs).filename().string(), "-",
                      absl::StrFormat("%016x", Xxh64(abs.data(), abs.size())), "/", kind);
}

// Maps path as raw uint16 tokens when it has `count` tokens hashing to `hash`.
bool ReadCachedTokens(const std::string& path, const std::string& count, const std::string& hash,
                      TokenSplit* out) {
  absl::StatusOr<std::shared_ptr<const MappedFile>> file = MappedFile::Open(path);
  uint64_t n;
  if (!file.ok() || !absl::SimpleAtoi(count, &n) || (*file)->size() != n * sizeof(uint16_t)) {
    return false;
  }
  TokenSplit tokens;
  tokens.Append(*file, 0, n);
  if (absl::StrFormat("%016x", HashTokens(tokens)) != hash) return false;
  *out = std::move(tokens);
  return true;
}

void Split(TokenSplit tokens, double val_fraction, Dataset* data) {
  const size_t n_train = TrainSplitTokens(tokens.size(), val_fraction);
  data->val = tokens.Slice(n_train, tokens.size());
  data->train = tokens.Slice(0, n_train);
}

absl::StatusOr<Dataset> LoadText(const moe::v1::DataSpec& spec) {
  const std::string kind = TokenizerName(spec.tokenizer());
  absl::StatusOr<std::string> text = ReadFile(spec.path());
  if (!text.ok()) {
    return absl::Status(text.status().code(),
                        absl::StrCat("data.path: ", text.status().message()));
  }
  if (text->empty()) {
    return absl::InvalidArgumentError(absl::StrCat("data.path: ", spec.path(), " is empty"));
  }

  std::unique_ptr<Tokenizer> gpt2;
  CacheMeta want;
  want["tokenizer"] = kind;
  want["source"] = fs::absolute(spec.path()).string();
  want["source_size"] = absl::StrCat(text->size());
  want["source_xxh64"] = absl::StrFormat("%016x", Xxh64(text->data(), text->size()));
  want["val_fraction"] = absl::StrFormat("%.17g", spec.val_fraction());
  if (spec.tokenizer() == moe::v1::TOKENIZER_GPT2) {
    absl::StatusOr<std::unique_ptr<Tokenizer>> t = LoadGpt2Tokenizer(Gpt2TokenizerDir(spec));
    if (!t.ok()) return t.status();
    gpt2 = *std::move(t);
    std::string blob = gpt2->Serialize();
    want["tokenizer_xxh64"] = absl::StrFormat("%016x", Xxh64(blob.data(), blob.size()));
  }

  std::string cache_dir = spec.cache_dir().empty() ? DefaultCacheDir(spec.path(), kind) : spec.cache_dir();
  const std::string meta_path = cache_dir + "/meta.txt";
  Dataset data;

  // Reuse the cache when its meta matches on every key we want and the shards are intact.
  if (absl::StatusOr<std::string> meta_text = ReadFile(meta_path); meta_text.ok()) {
    absl::StatusOr<CacheMeta> have = ParseMeta(*meta_text);
    bool match = have.ok();
    for (const auto& [k, v] : want) {
      if (!match) break;
      auto it = have->find(k);
      match = it != have->end() && it->second == v;
    }
    if (match) {
      absl::StatusOr<std::string> blob = ReadFile(cache_dir + "/tokenizer.txt");
      absl::StatusOr<std::unique_ptr<Tokenizer>> tok =
          blob.ok() ? DeserializeTokenizer(*blob) : absl::StatusOr<std::unique_ptr<Tokenizer>>(blob.status());
      if (tok.ok() &&
          ReadCachedTokens(cache_dir + "/train.bin", (*have)["train_tokens"], (*have)["train_xxh64"],
                           &data.train) &&
          ReadCachedTokens(cache_dir + "/val.bin", (*have)["val_tokens"], (*have)["val_xxh64"],
                           &data.val)) {
        data.tokenizer = *std::move(tok);
        data.vocab_size = data.tokenizer->vocab_size();
        data.source = absl::StrCat(spec.path(), " (", data.tokenizer->Describe(), ", ",
                                   data.train.size(), " train + ", data.val.size(),
                                   " val tokens, cached in ", cache_dir, ")");
        return data;
      }
    }
  }

  // Tokenize.
  if (spec.tokenizer() == moe::v1::TOKENIZER_CHAR) {
    absl::StatusOr<std::unique_ptr<Tokenizer>> t = BuildCharTokenizer(*text);
    if (!t.ok()) return t.status();
    data.tokenizer = *std::move(t);
  } else {
    data.tokenizer = std::move(gpt2);
  }
  if (data.tokenizer->vocab_size() > 65536) {
    return absl::InvalidArgumentError(absl::StrCat(data.tokenizer->Describe(),
                                                   " does not fit uint16 token shards"));
  }
  absl::StatusOr<std::vector<int32_t>> ids = data.tokenizer->TryEncode(*text);
  if (!ids.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("data.path: ", spec.path(), ": ", ids.status().message()));
  }
  text->clear();
  text->shrink_to_fit();
  std::vector<uint16_t> tokens(ids->begin(), ids->end());
  ids->clear();
  ids->shrink_to_fit();
  Split(TokenSplit(std::move(tokens)), spec.val_fraction(), &data);
  data.vocab_size = data.tokenizer->vocab_size();

  // Write the cache; meta last, so a reader never trusts shards that are not all in place. Ranks
  // racing here write identical bytes through their own temp names, so any winner is correct.
  CacheMeta meta = want;
  meta["train_tokens"] = absl::StrCat(data.train.size());
  meta["train_xxh64"] = absl::StrFormat("%016x", HashTokens(data.train));
  meta["val_tokens"] = absl::StrCat(data.val.size());
  meta["val_xxh64"] = absl::StrFormat("%016x", HashTokens(data.val));
  absl::Status st = MakeDirs(cache_dir);
  if (st.ok()) st = WriteFileAtomic(cache_dir + "/train.bin", TokenBytes(data.train));
  if (st.ok()) st = WriteFileAtomic(cache_dir + "/val.bin", TokenBytes(data.val));
  if (st.ok()) st = WriteFileAtomic(cache_dir + "/tokenizer.txt", data.tokenizer->Serialize());
  if (st.ok()) st = WriteFileAtomic(meta_path, FormatMeta(meta));
  data.source = absl::StrCat(spec.path(), " (", data.tokenizer->Describe(), ", ", data.train.size(),
                             " train + ", data.val.size(), " val tokens, ",
                             st.ok() ? absl::StrCat("tokenized into ", cache_dir)
                                     : absl::StrCat("not cached: ", st.message()),
                             ")");
  return data;
}

// One shard, mapped: FineWeb (header + uint16) or raw uint16 (common/token_shards.h). Its tokens
// as a split.
absl::StatusOr<TokenSplit> MapShard(const std::string& path) {
  absl::StatusOr<std::shared_ptr<const MappedFile>> file = MappedFile::Open(path);
  if (!file.ok()) return file.status();
  const size_t size = (*file)->size();
  absl::StatusOr<ShardExtent> extent = ShardExtentOf(path, reinterpret_cast<const char*>((*file)->data()), size, size);
  if (!extent.ok()) return extent.status();
  TokenSplit tokens;
  tokens.Append(*std::move(file), extent->offset, extent->tokens);
  return tokens;
}

absl::StatusOr<Dataset> LoadPretokenized(const moe::v1::DataSpec& spec) {
  absl::StatusOr<std::vector<std::string>> files = ShardFiles(spec.path());
  if (!files.ok()) return files.status();
  Dataset data;
  TokenSplit all;
  int n_val_files = 0;
  for (const std::string& f : *files) {
    absl::StatusOr<TokenSplit> tokens = MapShard(f);
    if (!tokens.ok()) return tokens.status();
    const bool is_val = IsValShard(f, files->size());
    TokenSplit& dst = is_val ? data.val : all;
    n_val_files += is_val;
    dst.Append(*tokens);
  }
  if (n_val_files > 0) {
    if (all.empty()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "data.path: ", spec.path(), ": every shard has \"val\" in its name, so there is no "
          "training split; add train shards"));
    }
    data.train = std::move(all);
  } else {
    Split(std::move(all), spec.val_fraction(), &data);
  }
  int max_id = 0;
  for (const TokenSplit* split : {&data.train, &data.val}) {
    for (const TokenSplit::Piece& p : split->pieces()) {
      for (size_t i = 0; i < p.count; ++i) max_id = std::max<int>(max_id, p.data[i]);
    }
  }
  data.vocab_size = max_id + 1;
  data.source = absl::StrCat(spec.path(), " (", files->size(), " shard file(s), ", data.train.size(),
                             " train + ", data.val.size(), " val tokens",
                             n_val_files > 0 ? absl::StrCat(", ", n_val_files, " val file(s)") : "",
                             ", max token id ", max_id, ")");
  return data;
}

}  // namespace

std::string Gpt2TokenizerDir(const moe::v1::DataSpec& spec) {
  return spec.tokenizer_dir().empty() ? "data/gpt2" : spec.tokenizer_dir();
}

absl::StatusOr<Dataset> LoadDataset(const moe::v1::DataSpec& spec) {
  if (spec.path().empty()) return absl::InvalidArgumentError("data.path is empty");
  if (!(spec.val_fraction() >= 0.0 && spec.val_fraction() < 1.0)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "data.val_fraction must be in [0, 1), got ", spec.val_fraction()));
  }
  switch (spec.tokenizer()) {
    case moe::v1::TOKENIZER_CHAR:
    case moe::v1::TOKENIZER_GPT2:
      return LoadText(spec);
    case moe::v1::TOKENIZER_PRETOKENIZED: {
      absl::StatusOr<Dataset> data = LoadPretokenized(spec);
      if (!data.ok() || spec.tokenizer_dir().empty()) return data;
      // Shards made with GPT-2's BPE may name it, so that samples and exports can turn
      // tokens back into text: the tokenizer is kept with the data (and in checkpoints).
      absl::StatusOr<std::unique_ptr<Tokenizer>> tok = LoadGpt2Tokenizer(spec.tokenizer_dir());
      if (!tok.ok()) return tok.status();
      data->tokenizer = *std::move(tok);
      return data;
    }
    default:
      return absl::InvalidArgumentError(
          "data.tokenizer is unspecified; set it to char, gpt2 or pretokenized");
  }
}

absl::Status CheckSplits(const Dataset& data, int seq_len) {
  for (const auto& [name, split] : {std::pair<const char*, const TokenSplit*>{"train", &data.train},
                                    {"val", &data.val}}) {
    if (split->size() < static_cast<size_t>(seq_len) + 1) {
      return absl::InvalidArgumentError(absl::StrCat(
          "the ", name, " split of ", data.source, " has ", split->size(),
          " tokens, but sampling sequences of model.seq_len = ", seq_len, " needs at least ",
          seq_len + 1, "; use more data, a shorter seq_len",
          absl::string_view(name) == "val" ? " or a larger data.val_fraction" : " or a smaller data.val_fraction"));
    }
  }
  return absl::OkStatus();
}

void SampleBatch(const TokenSplit& tokens, uint64_t seed, uint64_t stream, int64_t step,
                 int first_seq, int count, int seq_len, int32_t* x, int32_t* y) {
  if (seq_len <= 0 || tokens.size() < static_cast<size_t>(seq_len) + 1) {
    // A caller bug (CheckSplits catches short data at load time): stop with the sizes.
    std::fprintf(stderr, "%s:%d: SampleBatch: %zu tokens cannot hold a sequence of %d + 1\n",
                 __FILE__, __LINE__, tokens.size(), seq_len);
    std::abort();
  }
  const uint64_t starts = tokens.size() - static_cast<uint64_t>(seq_len);  // valid offsets
  using kernels::SplitMix64;
  const uint64_t base = SplitMix64(SplitMix64(SplitMix64(seed) ^ stream) ^ static_cast<uint64_t>(step));
  std::vector<uint16_t> scratch;  // a sequence that crosses from one shard into the next
  for (int r = 0; r < count; ++r) {
    uint64_t i = static_cast<uint64_t>(first_seq + r);
    size_t off = static_cast<size_t>(SplitMix64(base ^ i) % starts);
    const uint16_t* src = tokens.Read(off, static_cast<size_t>(seq_len) + 1, &scratch);
    int32_t* xr = x + static_cast<size_t>(r) * seq_len;
    int32_t* yr = y + static_cast<size_t>(r) * seq_len;
    for (int t = 0; t < seq_len; ++t) {
      xr[t] = src[t];
      yr[t] = src[t + 1];
    }
  }
}

}  // namespace moe
