// Dataset: nanoGPT-compatible char data and splits, the token cache (reuse, invalidation,
// concurrent builders), pretokenized shards (raw and FineWeb), their errors, and SampleBatch.
#include "worker/data/dataset.h"

#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/match.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "common/files.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/support/paths.h"

namespace moe {
namespace {

namespace fs = std::filesystem;
using ::testing::ElementsAre;

using ::testing::HasSubstr;

struct FileId {
  ino_t ino = 0;
  int64_t mtime_ns = 0;
  bool operator==(const FileId& o) const { return ino == o.ino && mtime_ns == o.mtime_ns; }
};
FileId Stat(const std::string& path) {
  struct stat st {};
  EXPECT_EQ(::stat(path.c_str(), &st), 0) << path;
  return {st.st_ino, static_cast<int64_t>(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec};
}

class DatasetTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = testing::MakeTempDir("dataset_test_");
    setenv("MOE_CACHE_DIR", (dir_ + "/cache").c_str(), 1);  // the default cache root
  }
  void TearDown() override {
    unsetenv("MOE_CACHE_DIR");
    fs::remove_all(dir_);
  }

  // The default cache folder of the one text loaded so far: MOE_CACHE_DIR/<name>-<hash>/<kind>.
  std::string DefaultCache(const std::string& kind) {
    for (const auto& e : fs::directory_iterator(dir_ + "/cache")) return e.path().string() + "/" + kind;
    return "";
  }

  // Tiny shakespeare copied into the temp dir.
  std::string CopyShakespeare() {
    std::string path = dir_ + "/input.txt";
    fs::copy_file(testing::ShakespearePath(), path);
    return path;
  }
  static moe::v1::DataSpec Spec(const std::string& path, moe::v1::Tokenizer tok,
                                double val_fraction = 0.1) {
    moe::v1::DataSpec spec;
    spec.set_path(path);
    spec.set_tokenizer(tok);
    spec.set_val_fraction(val_fraction);
    return spec;
  }
  void WriteTokens(const std::string& path, const std::vector<uint16_t>& tokens, bool fineweb) {
    std::string bytes;
    if (fineweb) {
      std::vector<int32_t> header(256, 0);
      header[0] = 20240520;
      header[1] = 1;
      header[2] = static_cast<int32_t>(tokens.size());
      bytes.assign(reinterpret_cast<const char*>(header.data()), header.size() * 4);
    }
    bytes.append(reinterpret_cast<const char*>(tokens.data()), tokens.size() * 2);
    ASSERT_TRUE(WriteFileAtomic(path, bytes).ok());
  }

  std::string dir_;
};

TEST_F(DatasetTest, CharShakespeareMatchesNanoGpt) {
  std::string path = CopyShakespeare();
  auto data = LoadDataset(Spec(path, moe::v1::TOKENIZER_CHAR));
  ASSERT_TRUE(data.ok()) << data.status();
  EXPECT_EQ(data->vocab_size, 65);
  ASSERT_NE(data->tokenizer, nullptr);
  // nanoGPT's prepare.py: n = 1115394 characters, train = data[:int(n*0.9)].
  EXPECT_EQ(data->train.size(), 1003854u);
  EXPECT_EQ(data->val.size(), 111540u);
  const std::vector<uint16_t> train = data->train.ToVector();
  std::vector<uint16_t> head(train.begin(), train.begin() + 13);
  EXPECT_THAT(head, ElementsAre(18, 47, 56, 57, 58, 1, 15, 47, 58, 47, 64, 43, 52));  // First Citizen
  EXPECT_THAT(data->source, HasSubstr("tokenized into"));
  // The cache is under MOE_CACHE_DIR, never beside the text (whose folder may be read-only).
  EXPECT_FALSE(fs::exists(path + ".moe-cache"));
  ASSERT_TRUE(fs::exists(DefaultCache("char") + "/train.bin"));
  EXPECT_EQ(fs::file_size(DefaultCache("char") + "/train.bin"), 2 * 1003854u);
  EXPECT_TRUE(CheckSplits(*data, 256).ok());
}

TEST_F(DatasetTest, CacheIsReusedThenInvalidatedWhenTheTextChanges) {
  std::string path = CopyShakespeare();
  auto first = LoadDataset(Spec(path, moe::v1::TOKENIZER_CHAR));
  ASSERT_TRUE(first.ok()) << first.status();
  std::string cache = DefaultCache("char");
  std::vector<std::string> files = {cache + "/train.bin", cache + "/val.bin", cache + "/meta.txt",
                                    cache + "/tokenizer.txt"};
  std::vector<FileId> before;
  for (const auto& f : files) before.push_back(Stat(f));

  auto second = LoadDataset(Spec(path, moe::v1::TOKENIZER_CHAR));
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_THAT(second->source, HasSubstr("cached in"));
  for (size_t i = 0; i < files.size(); ++i) EXPECT_EQ(Stat(files[i]), before[i]) << files[i];
  // Written as mkstemp makes them (0600): the worker's umask(077) is not widened for the cache.
  for (const auto& f : files) {
    struct stat st {};
    ASSERT_EQ(::stat(f.c_str(), &st), 0) << f;
    EXPECT_EQ(st.st_mode & 077, 0u) << f << " is readable by others";
  }
  EXPECT_EQ(second->train, first->train);
  EXPECT_EQ(second->val, first->val);
  EXPECT_EQ(second->vocab_size, 65);
  EXPECT_EQ(second->tokenizer->Serialize(), first->tokenizer->Serialize());

  // Same size, one character changed: the content hash notices.
  std::string text = *ReadFile(path);
  text[0] = 'f';
  ASSERT_TRUE(WriteFileAtomic(path, text).ok());
  auto third = LoadDataset(Spec(path, moe::v1::TOKENIZER_CHAR));
  ASSERT_TRUE(third.ok()) << third.status();
  EXPECT_THAT(third->source, HasSubstr("tokenized into"));
  EXPECT_FALSE(Stat(files[0]) == before[0]);
  EXPECT_EQ(third->train[0], third->tokenizer->Encode("f")[0]);
  EXPECT_EQ(third->train.size(), first->train.size());

  // A different val_fraction is a different cache too.
  auto fourth = LoadDataset(Spec(path, moe::v1::TOKENIZER_CHAR, 0.2));
  ASSERT_TRUE(fourth.ok()) << fourth.status();
  EXPECT_THAT(fourth->source, HasSubstr("tokenized into"));
  EXPECT_EQ(fourth->val.size(), 1115394u - static_cast<size_t>(1115394 * 0.8));
}

TEST_F(DatasetTest, DamagedCacheIsRebuilt) {
  std::string path = dir_ + "/small.txt";
  ASSERT_TRUE(WriteFileAtomic(path, "to be or not to be, that is the question\n").ok());
  moe::v1::DataSpec spec = Spec(path, moe::v1::TOKENIZER_CHAR);
  spec.set_cache_dir(dir_ + "/my_cache");
  auto first = LoadDataset(spec);
  ASSERT_TRUE(first.ok()) << first.status();
  ASSERT_TRUE(fs::exists(dir_ + "/my_cache/train.bin"));
  std::string bin = *ReadFile(dir_ + "/my_cache/train.bin");
  bin[4] ^= 0x01;
  ASSERT_TRUE(WriteFileAtomic(dir_ + "/my_cache/train.bin", bin).ok());
  auto second = LoadDataset(spec);
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_THAT(second->source, HasSubstr("tokenized into"));
  EXPECT_EQ(second->train, first->train);
}

TEST_F(DatasetTest, ConcurrentLoadersAgreeAndLeaveAValidCache) {
  std::string path = CopyShakespeare();
  auto tok = BuildCharTokenizer(*ReadFile(path));
  ASSERT_TRUE(tok.ok());
  std::vector<int32_t> expect = (*tok)->Encode(*ReadFile(path));
  std::vector<pid_t> kids;
  for (int k = 0; k < 4; ++k) {
    pid_t pid = ::fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      auto data = LoadDataset(Spec(path, moe::v1::TOKENIZER_CHAR));
      bool ok = data.ok() && data->train.size() + data->val.size() == expect.size();
      if (ok) {
        const std::vector<uint16_t> train = data->train.ToVector(), val = data->val.ToVector();
        ok = std::equal(train.begin(), train.end(), expect.begin()) &&
             std::equal(val.begin(), val.end(), expect.begin() + static_cast<std::ptrdiff_t>(train.size()));
      }
      ::_exit(ok ? 0 : 1);
    }
    kids.push_back(pid);
  }
  for (pid_t pid : kids) {
    int status = 0;
    ASSERT_EQ(::waitpid(pid, &status, 0), pid);
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "a concurrent loader failed";
  }
  auto after = LoadDataset(Spec(path, moe::v1::TOKENIZER_CHAR));
  ASSERT_TRUE(after.ok()) << after.status();
  EXPECT_THAT(after->source, HasSubstr("cached in"));
  EXPECT_EQ(after->train.size() + after->val.size(), expect.size());
  for (const auto& e : fs::directory_iterator(DefaultCache("char"))) {
    EXPECT_THAT(e.path().filename().string(), ::testing::Not(HasSubstr(".tmp."))) << "temp left";
  }
}

TEST_F(DatasetTest, Gpt2TextIsTokenizedAndCached) {
  std::string gpt2 = testing::SourceDir() + "/data/gpt2";
  if (!fs::exists(gpt2 + "/encoder.json")) {
    GTEST_SKIP() << gpt2 << " has no encoder.json/vocab.bpe; run scripts/fetch_data.sh";
  }
  std::string path = dir_ + "/hello.txt";
  std::string text;
  for (int i = 0; i < 50; ++i) text += "Hello world, the quick brown fox.\n";
  ASSERT_TRUE(WriteFileAtomic(path, text).ok());
  moe::v1::DataSpec spec = Spec(path, moe::v1::TOKENIZER_GPT2);
  spec.set_tokenizer_dir(gpt2);
  for (const char* expect : {"tokenized into", "cached in"}) {
    auto data = LoadDataset(spec);
    ASSERT_TRUE(data.ok()) << data.status();
    EXPECT_THAT(data->source, HasSubstr(expect));
    EXPECT_EQ(data->vocab_size, 50257);
    const std::vector<uint16_t> train = data->train.ToVector(), val = data->val.ToVector();
    EXPECT_THAT(std::vector<uint16_t>(train.begin(), train.begin() + 2), ElementsAre(15496, 995));
    std::vector<int32_t> all(train.begin(), train.end());
    all.insert(all.end(), val.begin(), val.end());
    EXPECT_EQ(data->tokenizer->Decode(all), text);
  }
}

TEST_F(DatasetTest, RawBinSplitsByFraction) {
  std::vector<uint16_t> tokens(1000);
  for (size_t i = 0; i < tokens.size(); ++i) tokens[i] = static_cast<uint16_t>(i % 300);
  WriteTokens(dir_ + "/tokens.bin", tokens, /*fineweb=*/false);
  auto data = LoadDataset(Spec(dir_ + "/tokens.bin", moe::v1::TOKENIZER_PRETOKENIZED));
  ASSERT_TRUE(data.ok()) << data.status();
  EXPECT_EQ(data->tokenizer, nullptr);
  EXPECT_EQ(data->vocab_size, 300);
  EXPECT_EQ(data->train.size(), 900u);
  EXPECT_EQ(data->val.size(), 100u);
  EXPECT_EQ(data->val[0], 900 % 300);
}

// Shards made with GPT-2's BPE may name it (data.tokenizer_dir): the dataset carries the
// tokenizer, so checkpoints of the job can sample text; without it there is none.
TEST_F(DatasetTest, PretokenizedShardsMayNameTheirTokenizer) {
  std::vector<uint16_t> tokens(1000);
  for (size_t i = 0; i < tokens.size(); ++i) tokens[i] = static_cast<uint16_t>(i % 3);
  WriteTokens(dir_ + "/tokens.bin", tokens, /*fineweb=*/false);
  const std::string bpe = dir_ + "/bpe";
  fs::create_directories(bpe);
  // A byte-level BPE of 257 tokens: "a", "b", "ab", then the other 253 bytes in GPT-2's
  // byte-to-character map (printable bytes stand for themselves, the rest for U+0100 on).
  std::string encoder = "{\"a\": 0, \"b\": 1, \"ab\": 2";
  int next_id = 3, shifted = 0;
  for (int byte = 0; byte < 256; ++byte) {
    const bool printable = (byte >= 33 && byte <= 126) || (byte >= 161 && byte <= 172) || byte >= 174;
    const int code = printable ? byte : 256 + shifted++;
    if (byte == 'a' || byte == 'b') continue;
    std::string utf8 = code < 0x80 ? std::string(1, static_cast<char>(code))
                                   : std::string{static_cast<char>(0xC0 | (code >> 6)),
                                                 static_cast<char>(0x80 | (code & 0x3F))};
    if (utf8 == "\"" || utf8 == "\\") utf8 = "\\" + utf8;
    encoder += ", \"" + utf8 + "\": " + std::to_string(next_id++);
  }
  encoder += "}";
  ASSERT_TRUE(WriteFileAtomic(bpe + "/encoder.json", encoder).ok());
  ASSERT_TRUE(WriteFileAtomic(bpe + "/vocab.bpe", "#version: 0.2\na b\n").ok());
  moe::v1::DataSpec spec = Spec(dir_ + "/tokens.bin", moe::v1::TOKENIZER_PRETOKENIZED);
  auto plain = LoadDataset(spec);
  ASSERT_TRUE(plain.ok()) << plain.status();
  EXPECT_EQ(plain->tokenizer, nullptr);
  spec.set_tokenizer_dir(bpe);
  auto named = LoadDataset(spec);
  ASSERT_TRUE(named.ok()) << named.status();
  ASSERT_NE(named->tokenizer, nullptr);
  EXPECT_EQ(named->tokenizer->Decode({2, 0, 1}), "abab");
  EXPECT_EQ(named->train, plain->train);
  spec.set_tokenizer_dir(dir_ + "/missing");
  EXPECT_FALSE(LoadDataset(spec).ok());
}

TEST_F(DatasetTest, FineWebShardsWithValFiles) {
  std::string shards = dir_ + "/fineweb10B";
  fs::create_directory(shards);
  std::vector<uint16_t> val(300, 7), train1(500, 1), train2(400, 50256);
  WriteTokens(shards + "/fineweb_val_000000.bin", val, true);
  WriteTokens(shards + "/fineweb_train_000001.bin", train1, true);
  WriteTokens(shards + "/fineweb_train_000002.bin", train2, false);  // raw mixes in fine
  ASSERT_TRUE(WriteFileAtomic(shards + "/README.txt", "not a shard").ok());
  for (std::string path : {shards, shards + "/fineweb_*.bin"}) {
    auto data = LoadDataset(Spec(path, moe::v1::TOKENIZER_PRETOKENIZED));
    ASSERT_TRUE(data.ok()) << path << ": " << data.status();
    EXPECT_EQ(data->val.ToVector(), val);
    ASSERT_EQ(data->train.size(), 900u);
    EXPECT_EQ(data->train.front(), 1);
    EXPECT_EQ(data->train.back(), 50256);
    EXPECT_EQ(data->vocab_size, 50257);
  }
  // A single FineWeb file splits by fraction.
  auto one = LoadDataset(Spec(shards + "/fineweb_train_000001.bin", moe::v1::TOKENIZER_PRETOKENIZED, 0.2));
  ASSERT_TRUE(one.ok()) << one.status();
  EXPECT_EQ(one->train.size(), 400u);
  EXPECT_EQ(one->val.size(), 100u);
}

TEST_F(DatasetTest, BadShardsAreExplained) {
  std::vector<uint16_t> tokens(100, 3);
  std::string shard = dir_ + "/shard.bin";
  WriteTokens(shard, tokens, true);
  std::string bytes = *ReadFile(shard);

  auto expect_error = [&](const std::string& contents, const std::string& what) {
    ASSERT_TRUE(WriteFileAtomic(shard, contents).ok());
    auto data = LoadDataset(Spec(shard, moe::v1::TOKENIZER_PRETOKENIZED));
    ASSERT_FALSE(data.ok()) << what;
    EXPECT_THAT(data.status().message(), HasSubstr(shard)) << what;
    EXPECT_THAT(data.status().message(), HasSubstr(what));
  };
  expect_error(bytes.substr(0, bytes.size() - 10), "truncated");
  expect_error(bytes.substr(0, 1000), "header is cut short");
  std::string v2 = bytes;
  v2[4] = 2;
  expect_error(v2, "version 2 is not supported");
  expect_error(bytes + "xx", "trailing bytes");
  expect_error("abc", "odd");
  expect_error("", "");

  auto missing = LoadDataset(Spec(dir_ + "/nope/*.bin", moe::v1::TOKENIZER_PRETOKENIZED));
  ASSERT_FALSE(missing.ok());
  EXPECT_THAT(missing.status().message(), HasSubstr("matches no files"));
  fs::create_directory(dir_ + "/empty");
  auto empty = LoadDataset(Spec(dir_ + "/empty", moe::v1::TOKENIZER_PRETOKENIZED));
  ASSERT_FALSE(empty.ok());
  EXPECT_THAT(empty.status().message(), HasSubstr("no .bin shards"));
  auto no_text = LoadDataset(Spec(dir_ + "/absent.txt", moe::v1::TOKENIZER_CHAR));
  ASSERT_FALSE(no_text.ok());
  EXPECT_EQ(no_text.status().code(), absl::StatusCode::kNotFound);
  auto bad_fraction = LoadDataset(Spec(shard, moe::v1::TOKENIZER_PRETOKENIZED, 1.0));
  ASSERT_FALSE(bad_fraction.ok());
  EXPECT_THAT(bad_fraction.status().message(), HasSubstr("val_fraction"));
}

TEST_F(DatasetTest, ShortSplitIsAnErrorNamingSizes) {
  std::vector<uint16_t> tokens(100, 1);
  WriteTokens(dir_ + "/t.bin", tokens, false);
  auto data = LoadDataset(Spec(dir_ + "/t.bin", moe::v1::TOKENIZER_PRETOKENIZED));
  ASSERT_TRUE(data.ok());
  EXPECT_TRUE(CheckSplits(*data, 9).ok());  // val has 10 tokens: enough for seq_len 9
  absl::Status st = CheckSplits(*data, 10);
  ASSERT_FALSE(st.ok());
  EXPECT_THAT(st.message(), HasSubstr("val split"));
  EXPECT_THAT(st.message(), HasSubstr("has 10 tokens"));
  EXPECT_THAT(st.message(), HasSubstr("at least 11"));
}

// Bytes of this process's anonymous memory (heap, not file pages), from /proc/self/status.
int64_t AnonymousBytes() {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("RssAnon:", 0) == 0) return std::stoll(line.substr(8)) * 1024;  // kB
  }
  return -1;
}

// Shards are mapped, not read: the train and val splits point into the files, and the batches
// are bit for bit those of the same tokens in memory, also for sequences that cross from one
// shard into the next.
TEST_F(DatasetTest, ShardsAreMappedAndSampleTheSameBatchesAsInMemory) {
  const std::string shards = dir_ + "/shards";
  fs::create_directory(shards);
  std::vector<uint16_t> all;
  uint32_t v = 1;
  for (int f = 0; f < 3; ++f) {
    std::vector<uint16_t> tokens(static_cast<size_t>(37 + 29 * f));
    for (uint16_t& t : tokens) t = static_cast<uint16_t>((v = v * 1103515245u + 12345u) >> 16);
    WriteTokens(shards + "/part_" + std::to_string(f) + ".bin", tokens, /*fineweb=*/f == 1);
    all.insert(all.end(), tokens.begin(), tokens.end());
  }
  auto data = LoadDataset(Spec(shards, moe::v1::TOKENIZER_PRETOKENIZED, 0.1));
  ASSERT_TRUE(data.ok()) << data.status();
  EXPECT_TRUE(data->train.mapped());
  EXPECT_TRUE(data->val.mapped());
  EXPECT_EQ(data->train.pieces().size(), 3u);
  const size_t n_train = static_cast<size_t>(static_cast<double>(all.size()) * 0.9);
  const TokenSplit train(std::vector<uint16_t>(all.begin(), all.begin() + static_cast<std::ptrdiff_t>(n_train)));
  const TokenSplit val(std::vector<uint16_t>(all.begin() + static_cast<std::ptrdiff_t>(n_train), all.end()));
  EXPECT_EQ(data->train, train);
  EXPECT_EQ(data->val, val);
  const int b = 32, t = 16;
  std::vector<int32_t> x(b * t), y(b * t), mx(b * t), my(b * t);
  for (int64_t step = 0; step < 5; ++step) {
    SampleBatch(train, 7, 0, step, 0, b, t, x.data(), y.data());
    SampleBatch(data->train, 7, 0, step, 0, b, t, mx.data(), my.data());
    EXPECT_EQ(mx, x) << "step " << step;
    EXPECT_EQ(my, y) << "step " << step;
  }
}

TEST_F(DatasetTest, LoadingShardsDoesNotCopyThemIntoMemory) {
  // 48 MiB of tokens: read into memory (as they once were, twice over) they would show.
  std::vector<uint16_t> tokens(size_t{24} << 20);
  for (size_t i = 0; i < tokens.size(); ++i) tokens[i] = static_cast<uint16_t>(i % 50000);
  WriteTokens(dir_ + "/big.bin", tokens, /*fineweb=*/true);
  tokens.clear();
  tokens.shrink_to_fit();
  const int64_t before = AnonymousBytes();
  ASSERT_GT(before, 0);
  auto data = LoadDataset(Spec(dir_ + "/big.bin", moe::v1::TOKENIZER_PRETOKENIZED, 0.1));
  ASSERT_TRUE(data.ok()) << data.status();
  EXPECT_EQ(data->train.size() + data->val.size(), size_t{24} << 20);
  EXPECT_EQ(data->vocab_size, 50000);
  EXPECT_LT(AnonymousBytes() - before, int64_t{8} << 20);
}

TEST_F(DatasetTest, CachedTextTokensAreMapped) {
  std::string path = dir_ + "/small.txt";
  ASSERT_TRUE(WriteFileAtomic(path, "to be or not to be, that is the question\n").ok());
  moe::v1::DataSpec spec = Spec(path, moe::v1::TOKENIZER_CHAR);
  auto first = LoadDataset(spec);
  ASSERT_TRUE(first.ok()) << first.status();
  // Just tokenized: the tokens in memory, never the shards it wrote (another rank or job writing
  // the same cache may replace them; on NFS a mapped file replaced so can raise SIGBUS).
  EXPECT_FALSE(first->train.mapped());
  auto second = LoadDataset(spec);
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_THAT(second->source, HasSubstr("cached in"));
  EXPECT_TRUE(second->train.mapped());
  EXPECT_TRUE(second->val.mapped());
  EXPECT_EQ(second->train, first->train);
  EXPECT_EQ(second->val, first->val);
}

// A loader that finds, once it has tokenized, that another rank or job wrote the same cache
// meanwhile leaves it alone: meta.txt never goes away, no shard is replaced.
TEST_F(DatasetTest, ACacheWrittenMeanwhileByAnotherLoaderIsLeftAlone) {
  std::string path = CopyShakespeare();
  moe::v1::DataSpec spec = Spec(path, moe::v1::TOKENIZER_CHAR);
  spec.set_cache_dir(dir_ + "/shared");
  auto first = LoadDataset(spec);
  ASSERT_TRUE(first.ok()) << first.status();
  const std::string meta = dir_ + "/shared/meta.txt", aside = dir_ + "/meta.aside";
  std::vector<std::string> files = {dir_ + "/shared/train.bin", dir_ + "/shared/val.bin",
                                    dir_ + "/shared/tokenizer.txt"};
  // The second loader finds no meta.txt; it comes back (another writer finishing) once it has
  // started tokenizing.
  fs::rename(meta, aside);
  std::vector<FileId> before;
  for (const auto& f : files) before.push_back(Stat(f));
  bool restored = false;
  DataLoadOptions opts;
  opts.on_log = [&](const std::string& line) {
    if (!restored && absl::StartsWith(line, "tokenizing ")) {
      fs::rename(aside, meta);
      restored = true;
      before.push_back(Stat(meta));
    }
  };
  auto second = LoadDataset(spec, opts);
  ASSERT_TRUE(second.ok()) << second.status();
  ASSERT_TRUE(restored);
  EXPECT_THAT(second->source, HasSubstr("tokenized into"));
  EXPECT_FALSE(second->train.mapped());
  EXPECT_EQ(second->train, first->train);
  EXPECT_EQ(second->val, first->val);
  files.push_back(meta);
  for (size_t i = 0; i < files.size(); ++i) EXPECT_EQ(Stat(files[i]), before[i]) << files[i] << " was rewritten";

  // The same with a shard that no longer hashes as meta.txt says: that cache is rewritten.
  std::string bin = *ReadFile(files[0]);
  bin[4] ^= 0x01;
  ASSERT_TRUE(WriteFileAtomic(files[0], bin).ok());
  fs::rename(meta, aside);
  restored = false;
  auto third = LoadDataset(spec, opts);
  ASSERT_TRUE(third.ok()) << third.status();
  ASSERT_TRUE(restored);
  EXPECT_EQ(third->train, first->train);
  const std::vector<uint16_t> train = first->train.ToVector();
  EXPECT_TRUE(*ReadFile(files[0]) ==
              std::string(reinterpret_cast<const char*>(train.data()), train.size() * sizeof(uint16_t)))
      << "the damaged shard is rewritten";
  auto fourth = LoadDataset(spec);
  ASSERT_TRUE(fourth.ok()) << fourth.status();
  EXPECT_THAT(fourth->source, HasSubstr("cached in"));
}

// A meta.txt that lacks a shard's hash never matches (the shards' size alone proves nothing):
// the cache is rebuilt.
TEST_F(DatasetTest, AMetaWithoutAShardHashIsRebuilt) {
  std::string path = CopyShakespeare();
  moe::v1::DataSpec spec = Spec(path, moe::v1::TOKENIZER_CHAR);
  spec.set_cache_dir(dir_ + "/c");
  auto first = LoadDataset(spec);
  ASSERT_TRUE(first.ok()) << first.status();
  for (const char* key : {"train_xxh64", "val_xxh64"}) {
    SCOPED_TRACE(key);
    std::string meta = *ReadFile(dir_ + "/c/meta.txt");
    std::vector<std::string> kept;
    for (absl::string_view line : absl::StrSplit(meta, '\n', absl::SkipEmpty())) {
      if (!absl::StartsWith(line, absl::StrCat(key, " "))) kept.emplace_back(line);
    }
    ASSERT_LT(kept.size() + 1, meta.size());
    ASSERT_TRUE(WriteFileAtomic(dir_ + "/c/meta.txt", absl::StrCat(absl::StrJoin(kept, "\n"), "\n")).ok());
    auto again = LoadDataset(spec);
    ASSERT_TRUE(again.ok()) << again.status();
    EXPECT_THAT(again->source, HasSubstr("tokenized into"));
    EXPECT_EQ(again->train, first->train);
    EXPECT_THAT(*ReadFile(dir_ + "/c/meta.txt"), HasSubstr(key));
  }
}

TokenSplit Ramp(size_t n) {
  std::vector<uint16_t> t(n);
  for (size_t i = 0; i < n; ++i) t[i] = static_cast<uint16_t>(i);
  return TokenSplit(std::move(t));
}

TEST(SampleBatch, DeterministicSliceableAndShifted) {
  const TokenSplit tokens = Ramp(5000);
  const int b = 8, t = 16;
  std::vector<int32_t> x(b * t), y(b * t), x2(b * t), y2(b * t);
  SampleBatch(tokens, 1234, 0, 7, 0, b, t, x.data(), y.data());
  SampleBatch(tokens, 1234, 0, 7, 0, b, t, x2.data(), y2.data());
  EXPECT_EQ(x, x2);
  EXPECT_EQ(y, y2);
  for (int r = 0; r < b; ++r) {
    for (int i = 0; i < t; ++i) {
      EXPECT_EQ(y[r * t + i], x[r * t + i] + 1);               // y is x shifted by one
      if (i + 1 < t) {
        EXPECT_EQ(x[r * t + i + 1], y[r * t + i]);
      }
    }
    EXPECT_LE(x[r * t + t - 1] + 1, 4999);                      // in range
  }
  // Slices of the global batch (what each rank draws) equal the rows of the full batch.
  std::vector<int32_t> xs(b * t), ys(b * t);
  SampleBatch(tokens, 1234, 0, 7, 0, 3, t, xs.data(), ys.data());
  SampleBatch(tokens, 1234, 0, 7, 3, 5, t, xs.data() + 3 * t, ys.data() + 3 * t);
  EXPECT_EQ(xs, x);
  EXPECT_EQ(ys, y);
  // Another step, seed or stream draws other offsets.
  for (auto [seed, stream, step] : {std::tuple<uint64_t, uint64_t, int64_t>{1234, 0, 8},
                                    {1235, 0, 7}, {1234, 1, 7}}) {
    SampleBatch(tokens, seed, stream, step, 0, b, t, x2.data(), y2.data());
    EXPECT_NE(x2, x) << seed << " " << stream << " " << step;
  }
}

TEST(SampleBatch, CoversAllOffsetsIncludingTheLast) {
  // len = seq_len + 3 leaves offsets 0, 1, 2; all must appear, none beyond.
  const TokenSplit tokens = Ramp(19);
  const int t = 16;
  std::vector<int> seen(3, 0);
  std::vector<int32_t> x(64 * t), y(64 * t);
  SampleBatch(tokens, 1, 0, 0, 0, 64, t, x.data(), y.data());
  for (int r = 0; r < 64; ++r) {
    ASSERT_GE(x[r * t], 0);
    ASSERT_LE(x[r * t], 2);
    ++seen[x[r * t]];
    EXPECT_EQ(y[r * t + t - 1], x[r * t] + t);
  }
  EXPECT_THAT(seen, ::testing::Each(::testing::Gt(5)));
}

TEST(SampleBatchDeathTest, TooFewTokensStopsWithTheSizes) {
  const TokenSplit tokens = Ramp(16);
  std::vector<int32_t> x(16), y(16);
  EXPECT_DEATH(SampleBatch(tokens, 1, 0, 0, 0, 1, 16, x.data(), y.data()),
               "16 tokens cannot hold a sequence of 16 \\+ 1");
}

}  // namespace
}  // namespace moe
