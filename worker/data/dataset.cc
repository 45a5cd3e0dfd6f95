#include "worker/data/dataset.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <map>
#include <string_view>
#include <utility>
#include <vector>

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
#include "worker/checkpoint/xxh64.h"

namespace moe {
namespace fs = std::filesystem;
namespace {

constexpr absl::string_view kCacheHeader = "moe-token-cache v1";

constexpr size_t kTextChunk = size_t{4} << 20;     // bytes of text per scan or encode step
constexpr size_t kTokenChunk = size_t{16} << 20;   // tokens per hash or write step

std::string HumanBytes(double n) {
  if (n >= 1e9) return absl::StrFormat("%.1f GB", n / 1e9);
  if (n >= 1e6) return absl::StrFormat("%.1f MB", n / 1e6);
  if (n >= 1e3) return absl::StrFormat("%.1f kB", n / 1e3);
  return absl::StrFormat("%.0f bytes", n);
}

std::string HumanCount(double n) {
  if (n >= 1e9) return absl::StrFormat("%.2f G", n / 1e9);
  if (n >= 1e6) return absl::StrFormat("%.1f M", n / 1e6);
  if (n >= 1e3) return absl::StrFormat("%.1f k", n / 1e3);
  return absl::StrFormat("%.0f", n);
}

absl::Status Stopped() { return absl::CancelledError(kDataLoadStopped); }

// The stop polls and progress lines of one load.
class Progress {
 public:
  using Clock = std::chrono::steady_clock;
  explicit Progress(const DataLoadOptions& opts) : opts_(opts), start_(Clock::now()), last_(start_) {}
  bool Stop() const { return opts_.stop_requested && opts_.stop_requested(); }
  void Log(const std::string& line) const {
    if (opts_.on_log) opts_.on_log(line);
  }
  // line() when progress_every_s have passed since the start or the last such line.
  template <typename F>
  void Every(F line) {
    if (!opts_.on_log) return;
    const Clock::time_point now = Clock::now();
    if (std::chrono::duration<double>(now - last_).count() < opts_.progress_every_s) return;
    last_ = now;
    Log(line());
  }
  double Seconds() const { return std::chrono::duration<double>(Clock::now() - start_).count(); }

 private:
  const DataLoadOptions& opts_;
  Clock::time_point start_, last_;
};

// Lets the kernel drop the pages of [from, to) of a mapping (read-only, file-backed: they come
// back from the file if read again), so a text read once does not stay in the process's memory.
void DropPages(const unsigned char* base, size_t from, size_t to) {
  static const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  const size_t a = (from + page - 1) / page * page, b = to / page * page;
  if (b > a) ::madvise(const_cast<unsigned char*>(base) + a, b - a, MADV_DONTNEED);
}

// XXH64 of the tokens' bytes (as if concatenated), a chunk at a time; Cancelled on a stop.
absl::StatusOr<uint64_t> HashTokens(const TokenSplit& tokens, Progress* progress, absl::string_view what) {
  Xxh64Hasher hasher;
  size_t done = 0;
  for (const TokenSplit::Piece& p : tokens.pieces()) {
    for (size_t i = 0; i < p.count; i += kTokenChunk) {
      if (progress->Stop()) return Stopped();
      const size_t n = std::min(kTokenChunk, p.count - i);
      hasher.Update(p.data + i, n * sizeof(uint16_t));
      done += n;
      progress->Every([&] {
        return absl::StrCat(what, ": ", done * 100 / std::max<size_t>(1, tokens.size()), "% of ",
                            HumanCount(static_cast<double>(tokens.size())), " tokens, ",
                            static_cast<int>(progress->Seconds()), " s");
      });
    }
  }
  return hasher.Digest();
}

// A new file beside path for writing it: "<path>.tmp.<host>.<pid>.XXXXXX", created exclusively
// (mkstemp), so writers on other nodes that share the folder (NFS) and happen to have the same
// pid never share one. Its descriptor, the name in *tmp. Its mode is mkstemp's 0600, left so: the
// worker's umask(077) keeps what it writes to the job's owner alone (worker/main.cc).
absl::StatusOr<int> CreateTemp(const std::string& path, std::string* tmp) {
  char host[256] = {};
  if (::gethostname(host, sizeof(host) - 1) != 0 || host[0] == '\0') std::strcpy(host, "host");
  for (char* c = host; *c != '\0'; ++c) {
    if (*c == '/') *c = '_';
  }
  std::string name = absl::StrCat(path, ".tmp.", host, ".", ::getpid(), ".XXXXXX");
  const int fd = ::mkstemp(name.data());
  if (fd < 0) return absl::InternalError(absl::StrCat("cannot write ", path, ": ", std::strerror(errno)));
  ::fcntl(fd, F_SETFD, FD_CLOEXEC);
  *tmp = std::move(name);
  return fd;
}

// Writes the chunks (in order) to path through a temporary name of its own (CreateTemp) and a
// rename. A stop (polled between chunks and before the rename) or a failure removes the temporary
// file (Cancelled on a stop). sync: the file and the folder are synced too (meta.txt, the
// tokenizer); the shards are not: meta.txt holds their hashes, and a reader trusts them only when
// they hash to those.
absl::Status WriteChunksAtomic(const std::string& path, const std::vector<std::string_view>& chunks, bool sync,
                               Progress* progress) {
  std::string tmp;
  absl::StatusOr<int> opened = CreateTemp(path, &tmp);
  if (!opened.ok()) return opened.status();
  const int fd = *opened;
  auto give_up = [&](absl::Status st) {
    ::close(fd);
    ::unlink(tmp.c_str());
    return st;
  };
  for (std::string_view chunk : chunks) {
    if (progress->Stop()) return give_up(Stopped());
    while (!chunk.empty()) {
      const ssize_t n = ::write(fd, chunk.data(), chunk.size());
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) return give_up(absl::InternalError(absl::StrCat("cannot write ", tmp, ": ", std::strerror(errno))));
      chunk.remove_prefix(static_cast<size_t>(n));
    }
  }
  if (sync && ::fsync(fd) != 0) {
    return give_up(absl::InternalError(absl::StrCat("cannot flush ", tmp, ": ", std::strerror(errno))));
  }
  if (::close(fd) != 0) {
    const int err = errno;
    ::unlink(tmp.c_str());
    return absl::InternalError(absl::StrCat("cannot write ", tmp, ": ", std::strerror(err)));
  }
  if (progress->Stop()) {
    ::unlink(tmp.c_str());
    return Stopped();
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    const int err = errno;
    ::unlink(tmp.c_str());
    return absl::InternalError(absl::StrCat("cannot rename into ", path, ": ", std::strerror(err)));
  }
  return sync ? SyncDir(fs::path(path).parent_path().string()) : absl::OkStatus();
}

// The tokens' bytes, kTokenChunk tokens a chunk.
std::vector<std::string_view> TokenChunks(const TokenSplit& tokens) {
  std::vector<std::string_view> chunks;
  for (const TokenSplit::Piece& p : tokens.pieces()) {
    for (size_t i = 0; i < p.count; i += kTokenChunk) {
      chunks.emplace_back(reinterpret_cast<const char*>(p.data + i), std::min(kTokenChunk, p.count - i) * sizeof(uint16_t));
    }
  }
  return chunks;
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

// Maps path as raw uint16 tokens when it has `count` tokens hashing to `hash` (a meta.txt without
// the hash never matches): true and *out set, else false; Cancelled on a stop.
absl::StatusOr<bool> ReadCachedTokens(const std::string& path, const std::string& count, const std::string& hash,
                                      Progress* progress, TokenSplit* out) {
  uint64_t n;
  if (hash.empty() || !absl::SimpleAtoi(count, &n)) return false;
  absl::StatusOr<std::shared_ptr<const MappedFile>> file = MappedFile::Open(path);
  if (!file.ok() || (*file)->size() != n * sizeof(uint16_t)) return false;
  TokenSplit tokens;
  tokens.Append(*file, 0, n);
  absl::StatusOr<uint64_t> h = HashTokens(tokens, progress, "checking the token cache");
  if (!h.ok()) return h.status();
  if (absl::StrFormat("%016x", *h) != hash) return false;
  *out = std::move(tokens);
  return true;
}

// Whether path holds `count` tokens hashing to `hash`, read (not mapped: a file another writer
// replaces meanwhile, on NFS, then fails a read instead of raising SIGBUS); Cancelled on a stop.
absl::StatusOr<bool> FileHoldsTokens(const std::string& path, const std::string& count, const std::string& hash,
                                     Progress* progress) {
  uint64_t n;
  if (hash.empty() || !absl::SimpleAtoi(count, &n)) return false;
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return false;
  Xxh64Hasher hasher;
  std::vector<char> buf(kTokenChunk / 4 * sizeof(uint16_t));
  uint64_t total = 0;
  for (;;) {
    if (progress->Stop()) {
      ::close(fd);
      return Stopped();
    }
    const ssize_t got = ::read(fd, buf.data(), buf.size());
    if (got < 0 && errno == EINTR) continue;
    if (got < 0) {
      ::close(fd);
      return false;
    }
    if (got == 0) break;
    hasher.Update(buf.data(), static_cast<size_t>(got));
    total += static_cast<uint64_t>(got);
  }
  ::close(fd);
  return total == n * sizeof(uint16_t) && absl::StrFormat("%016x", hasher.Digest()) == hash;
}

// Whether cache_dir already holds the cache `meta` describes, complete (another rank or job
// tokenized the same text meanwhile): its meta.txt has every key of meta with the same value, its
// tokenizer.txt is `tokenizer` and its shards hash as meta says. Cancelled on a stop.
absl::StatusOr<bool> CacheHolds(const std::string& cache_dir, const CacheMeta& meta, const std::string& tokenizer,
                                Progress* progress) {
  absl::StatusOr<std::string> text = ReadFile(cache_dir + "/meta.txt");
  if (!text.ok()) return false;
  absl::StatusOr<CacheMeta> have = ParseMeta(*text);
  if (!have.ok()) return false;
  for (const auto& [k, v] : meta) {
    auto it = have->find(k);
    if (it == have->end() || it->second != v) return false;
  }
  absl::StatusOr<std::string> blob = ReadFile(cache_dir + "/tokenizer.txt");
  if (!blob.ok() || *blob != tokenizer) return false;
  for (const char* split : {"train", "val"}) {
    absl::StatusOr<bool> ok =
        FileHoldsTokens(absl::StrCat(cache_dir, "/", split, ".bin"), meta.at(absl::StrCat(split, "_tokens")),
                        meta.at(absl::StrCat(split, "_xxh64")), progress);
    if (!ok.ok() || !*ok) return ok;
  }
  return true;
}

// XXH64 of the text and, when symbols is given, its distinct bytes in order (what the char
// tokenizer is built from), a chunk at a time; Cancelled on a stop.
absl::Status ScanText(const MappedFile& text, Progress* progress, uint64_t* hash, std::string* symbols) {
  Xxh64Hasher hasher;
  std::array<bool, 256> present{};
  const unsigned char* data = text.data();
  for (size_t pos = 0; pos < text.size(); pos += kTextChunk) {
    if (progress->Stop()) return Stopped();
    const size_t n = std::min(kTextChunk, text.size() - pos);
    hasher.Update(data + pos, n);
    if (symbols != nullptr) {
      for (size_t i = 0; i < n; ++i) present[data[pos + i]] = true;
    }
    DropPages(data, pos, pos + n);
    progress->Every([&] {
      return absl::StrCat("reading the text: ", (pos + n) * 100 / text.size(), "% of ",
                          HumanBytes(static_cast<double>(text.size())), ", ", static_cast<int>(progress->Seconds()),
                          " s");
    });
  }
  *hash = hasher.Digest();
  if (symbols != nullptr) {
    symbols->clear();
    for (int b = 0; b < 256; ++b) {
      if (present[b]) symbols->push_back(static_cast<char>(b));
    }
  }
  return absl::OkStatus();
}

void Split(TokenSplit tokens, double val_fraction, Dataset* data) {
  const size_t n_train = TrainSplitTokens(tokens.size(), val_fraction);
  data->val = tokens.Slice(n_train, tokens.size());
  data->train = tokens.Slice(0, n_train);
}

absl::StatusOr<Dataset> LoadText(const moe::v1::DataSpec& spec, Progress* progress) {
  const std::string kind = TokenizerName(spec.tokenizer());
  absl::StatusOr<std::shared_ptr<const MappedFile>> file = MappedFile::Open(spec.path());
  if (!file.ok()) {
    return absl::Status(file.status().code(), absl::StrCat("data.path: ", file.status().message()));
  }
  const MappedFile& text = **file;
  if (text.size() == 0) {
    return absl::InvalidArgumentError(absl::StrCat("data.path: ", spec.path(), " is empty"));
  }

  std::unique_ptr<Tokenizer> gpt2;
  CacheMeta want;
  want["tokenizer"] = kind;
  want["source"] = fs::absolute(spec.path()).string();
  want["source_size"] = absl::StrCat(text.size());
  uint64_t text_hash = 0;
  std::string symbols;  // char: the text's distinct bytes
  const bool is_char = spec.tokenizer() == moe::v1::TOKENIZER_CHAR;
  if (absl::Status st = ScanText(text, progress, &text_hash, is_char ? &symbols : nullptr); !st.ok()) return st;
  want["source_xxh64"] = absl::StrFormat("%016x", text_hash);
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
      absl::StatusOr<bool> train_ok = false, val_ok = false;
      if (tok.ok()) {
        train_ok = ReadCachedTokens(cache_dir + "/train.bin", (*have)["train_tokens"], (*have)["train_xxh64"],
                                    progress, &data.train);
        if (!train_ok.ok()) return train_ok.status();
      }
      if (tok.ok() && *train_ok) {
        val_ok = ReadCachedTokens(cache_dir + "/val.bin", (*have)["val_tokens"], (*have)["val_xxh64"], progress,
                                  &data.val);
        if (!val_ok.ok()) return val_ok.status();
      }
      if (tok.ok() && *train_ok && *val_ok) {
        data.tokenizer = *std::move(tok);
        data.vocab_size = data.tokenizer->vocab_size();
        data.source = absl::StrCat(spec.path(), " (", data.tokenizer->Describe(), ", ",
                                   data.train.size(), " train + ", data.val.size(),
                                   " val tokens, cached in ", cache_dir, ")");
        return data;
      }
    }
  }

  // Tokenize, a chunk at a time (cut where the tokenizer says the parts encode as the whole).
  if (is_char) {
    absl::StatusOr<std::unique_ptr<Tokenizer>> t = BuildCharTokenizer(symbols);
    if (!t.ok()) return t.status();
    data.tokenizer = *std::move(t);
  } else {
    data.tokenizer = std::move(gpt2);
  }
  if (data.tokenizer->vocab_size() > 65536) {
    return absl::InvalidArgumentError(absl::StrCat(data.tokenizer->Describe(),
                                                   " does not fit uint16 token shards"));
  }
  const std::string text_size = HumanBytes(static_cast<double>(text.size()));
  progress->Log(absl::StrCat("tokenizing ", text_size, " of text (", spec.path(), ", ", data.tokenizer->Describe(),
                             ") into the token cache ", cache_dir));
  const std::string_view all(reinterpret_cast<const char*>(text.data()), text.size());
  std::vector<uint16_t> tokens;
  tokens.reserve(is_char ? text.size() : text.size() / 4 + 1024);
  for (size_t pos = 0; pos < text.size();) {
    if (progress->Stop()) return Stopped();
    const size_t end = pos + kTextChunk >= text.size() ? text.size() : data.tokenizer->CutPoint(all, pos + kTextChunk);
    absl::StatusOr<std::vector<int32_t>> ids = data.tokenizer->TryEncode(all.substr(pos, end - pos));
    if (!ids.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("data.path: ", spec.path(), ": ", ids.status().message(),
                                                     " (counted from byte ", pos, ")"));
    }
    tokens.insert(tokens.end(), ids->begin(), ids->end());
    DropPages(text.data(), pos, end);
    pos = end;
    progress->Every([&] {
      return absl::StrCat("tokenizing: ", pos * 100 / text.size(), "% of ", text_size, ", ",
                          HumanCount(static_cast<double>(tokens.size())), " tokens so far, ",
                          static_cast<int>(progress->Seconds()), " s");
    });
  }
  tokens.shrink_to_fit();
  Split(TokenSplit(std::move(tokens)), spec.val_fraction(), &data);
  data.vocab_size = data.tokenizer->vocab_size();

  // Write the cache, unless another rank or job (they may share the folder, over NFS) has just
  // written the same one: rewriting it would take its meta.txt away for a while and replace shards
  // that others may have mapped. Otherwise the old meta goes first and the new one comes last, so a
  // cache is complete exactly when its meta is there: a stop or a failure in between leaves none
  // (and each file is written under a temp name of its own and renamed). Ranks racing here write
  // identical bytes, so any winner is correct. This rank trains from the tokens in memory, never
  // from the shards it wrote (another writer may replace them).
  CacheMeta meta = want;
  absl::StatusOr<uint64_t> train_hash = HashTokens(data.train, progress, "hashing the tokens");
  if (!train_hash.ok()) return train_hash.status();
  absl::StatusOr<uint64_t> val_hash = HashTokens(data.val, progress, "hashing the tokens");
  if (!val_hash.ok()) return val_hash.status();
  meta["train_tokens"] = absl::StrCat(data.train.size());
  meta["train_xxh64"] = absl::StrFormat("%016x", *train_hash);
  meta["val_tokens"] = absl::StrCat(data.val.size());
  meta["val_xxh64"] = absl::StrFormat("%016x", *val_hash);
  const std::string tokenizer_blob = data.tokenizer->Serialize();
  absl::StatusOr<bool> cached = CacheHolds(cache_dir, meta, tokenizer_blob, progress);
  if (!cached.ok()) return cached.status();
  absl::Status st = absl::OkStatus();
  if (!*cached) {
    const std::string meta_text = FormatMeta(meta);
    st = MakeDirs(cache_dir);
    if (st.ok() && ::unlink(meta_path.c_str()) != 0 && errno != ENOENT) {
      st = absl::InternalError(absl::StrCat("cannot remove the old ", meta_path, ": ", std::strerror(errno)));
    }
    if (st.ok()) st = WriteChunksAtomic(cache_dir + "/train.bin", TokenChunks(data.train), false, progress);
    if (st.ok()) st = WriteChunksAtomic(cache_dir + "/val.bin", TokenChunks(data.val), false, progress);
    if (st.ok()) st = WriteChunksAtomic(cache_dir + "/tokenizer.txt", {tokenizer_blob}, true, progress);
    if (st.ok()) st = WriteChunksAtomic(meta_path, {meta_text}, true, progress);
    if (absl::IsCancelled(st)) return st;
  }
  progress->Log(absl::StrCat("tokenized ", text_size, " of text in ", static_cast<int>(progress->Seconds() + 0.5),
                             " s: ", HumanCount(static_cast<double>(data.train.size() + data.val.size())),
                             " tokens (", data.train.size(), " train + ", data.val.size(), " val), ",
                             st.ok() ? absl::StrCat("cached in ", cache_dir)
                                     : absl::StrCat("not cached: ", st.message())));
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

absl::StatusOr<Dataset> LoadPretokenized(const moe::v1::DataSpec& spec, Progress* progress) {
  absl::StatusOr<std::vector<std::string>> files = ShardFiles(spec.path());
  if (!files.ok()) return files.status();
  Dataset data;
  TokenSplit all;
  int n_val_files = 0;
  for (const std::string& f : *files) {
    if (progress->Stop()) return Stopped();
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
      for (size_t i = 0; i < p.count; ++i) {
        if (i % kTokenChunk == 0 && progress->Stop()) return Stopped();
        max_id = std::max<int>(max_id, p.data[i]);
      }
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

absl::StatusOr<Dataset> LoadDataset(const moe::v1::DataSpec& spec, const DataLoadOptions& opts) {
  Progress progress(opts);
  if (spec.path().empty()) return absl::InvalidArgumentError("data.path is empty");
  if (!(spec.val_fraction() >= 0.0 && spec.val_fraction() < 1.0)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "data.val_fraction must be in [0, 1), got ", spec.val_fraction()));
  }
  switch (spec.tokenizer()) {
    case moe::v1::TOKENIZER_CHAR:
    case moe::v1::TOKENIZER_GPT2:
      return LoadText(spec, &progress);
    case moe::v1::TOKENIZER_PRETOKENIZED: {
      absl::StatusOr<Dataset> data = LoadPretokenized(spec, &progress);
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
