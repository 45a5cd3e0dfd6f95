// Dataset preparation in chunks: a stop at any poll of the read, tokenization or cache write, and
// GPT-2 text tokenized in chunks (Tokenizer::CutPoint) as the whole text encoded at once.
#include <algorithm>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/files.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/support/paths.h"
#include "worker/data/dataset.h"

namespace moe {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

bool ReadFileTo(const std::string& path, std::string* out) {
  absl::StatusOr<std::string> text = ReadFile(path);
  if (!text.ok()) return false;
  *out = *std::move(text);
  return true;
}

class DatasetPrepareTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = testing::MakeTempDir("dataset_prepare_test_");
    setenv("MOE_CACHE_DIR", (dir_ + "/cache").c_str(), 1);  // the default cache root
  }
  void TearDown() override {
    unsetenv("MOE_CACHE_DIR");
    fs::remove_all(dir_);
  }
  static moe::v1::DataSpec Spec(const std::string& path, moe::v1::Tokenizer tok, double val_fraction = 0.1) {
    moe::v1::DataSpec spec;
    spec.set_path(path);
    spec.set_tokenizer(tok);
    spec.set_val_fraction(val_fraction);
    return spec;
  }

  std::string dir_;
};

// A stop while the text is read, tokenized or the cache written (each poll in turn, over a
// cache that held other tokens before) ends the load with kDataLoadStopped at that poll and
// leaves no cache that looks complete: no meta.txt of this load, no temp files. The next load
// builds it whole, with the tokens of a load never stopped; progress lines say what it did.
TEST_F(DatasetPrepareTest, AStopAtAnyPointLeavesNoCacheThatLooksComplete) {
  const std::string path = dir_ + "/text.txt";
  {
    std::string one;
    ASSERT_TRUE(ReadFileTo(testing::ShakespearePath(), &one));
    std::ofstream out(path, std::ios::binary);
    for (int i = 0; i < 8; ++i) out << one;  // 8.9 MB: 3 chunks of 4 MB to read and to tokenize
  }
  moe::v1::DataSpec spec = Spec(path, moe::v1::TOKENIZER_CHAR);
  spec.set_cache_dir(dir_ + "/cache-stop");
  moe::v1::DataSpec other = spec;
  other.set_val_fraction(0.2);

  // A load never stopped, counting its polls; progress lines at every chance.
  int polls = 0;
  std::vector<std::string> log;
  DataLoadOptions opts;
  opts.stop_requested = [&polls] { ++polls; return false; };
  opts.on_log = [&log](const std::string& line) { log.push_back(line); };
  opts.progress_every_s = 0;
  auto want = LoadDataset(spec, opts);
  ASSERT_TRUE(want.ok()) << want.status();
  const int all_polls = polls;
  ASSERT_GE(all_polls, 8);
  const std::string lines = absl::StrJoin(log, "\n");
  EXPECT_THAT(lines, HasSubstr("tokenizing 8.9 MB of text (" + path + ", char (65 symbols)) into the token cache " +
                               spec.cache_dir()));
  EXPECT_THAT(lines, HasSubstr("tokenizing: 100% of 8.9 MB, 8.9 M tokens so far"));
  EXPECT_THAT(lines, HasSubstr("tokenized 8.9 MB of text in "));
  EXPECT_THAT(lines, HasSubstr(absl::StrCat(" s: 8.9 M tokens (", want->train.size(), " train + ", want->val.size(),
                                            " val), cached in ", spec.cache_dir())));
  EXPECT_FALSE(want->train.mapped()) << "trains from its tokens in memory, not from the shards it wrote";

  for (int stop_at = 1; stop_at <= all_polls; ++stop_at) {
    SCOPED_TRACE(absl::StrCat("stop at poll ", stop_at, " of ", all_polls));
    ASSERT_TRUE(LoadDataset(other).ok());  // a complete cache of other tokens
    polls = 0;
    opts.stop_requested = [&polls, stop_at] { return ++polls >= stop_at; };
    auto data = LoadDataset(spec, opts);
    ASSERT_FALSE(data.ok());
    EXPECT_TRUE(absl::IsCancelled(data.status())) << data.status();
    EXPECT_EQ(data.status().message(), kDataLoadStopped);
    EXPECT_EQ(polls, stop_at) << "ends at the first poll that asks";
    std::string meta;
    if (ReadFileTo(spec.cache_dir() + "/meta.txt", &meta)) {
      EXPECT_THAT(meta, HasSubstr("val_fraction 0.2")) << "only the old cache's own meta may be left";
    }
    for (const auto& e : fs::directory_iterator(spec.cache_dir())) {
      EXPECT_THAT(e.path().filename().string(), ::testing::Not(HasSubstr(".tmp."))) << e.path();
    }
  }
  auto again = LoadDataset(spec);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_THAT(again->source, HasSubstr("tokenized into")) << "rebuilt, not reused";
  EXPECT_TRUE(again->train == want->train);
  EXPECT_TRUE(again->val == want->val);
  auto reused = LoadDataset(spec);
  ASSERT_TRUE(reused.ok()) << reused.status();
  EXPECT_THAT(reused->source, HasSubstr("cached in"));
  EXPECT_TRUE(reused->train == want->train);
}

// GPT-2 text tokenized in chunks gives the ids of the whole text encoded at once.
TEST_F(DatasetPrepareTest, Gpt2TextTokenizedInChunksMatchesTheWholeEncoded) {
  const std::string gpt2_dir = testing::SourceDir() + "/data/gpt2";
  if (!fs::exists(gpt2_dir + "/encoder.json")) GTEST_SKIP() << gpt2_dir << " has no GPT-2 files";
  std::string one;
  ASSERT_TRUE(ReadFileTo(testing::ShakespearePath(), &one));
  const std::string text = one + one.substr(0, 3 << 20) + one + one + one;  // 5.5 MB: 2 chunks
  const std::string path = dir_ + "/gpt2.txt";
  std::ofstream(path, std::ios::binary) << text;
  moe::v1::DataSpec spec = Spec(path, moe::v1::TOKENIZER_GPT2, 0.0);
  spec.set_tokenizer_dir(gpt2_dir);
  auto data = LoadDataset(spec);
  ASSERT_TRUE(data.ok()) << data.status();
  const std::vector<int32_t> ids = data->tokenizer->Encode(text);
  const std::vector<uint16_t> want(ids.begin(), ids.end());
  EXPECT_EQ(data->train.ToVector(), want);
}

// Text with no ASCII byte before its whitespace (CJK lines, Latin-1 bytes, emoji) is cut too,
// where the code point before an ASCII whitespace byte is none: the parts encode as the whole,
// around Unicode spaces (no cut after one), stray and cut-short UTF-8 bytes. Such a text of a few
// MB is tokenized in chunks (progress, stop polls), with the ids of the whole encoded at once.
TEST_F(DatasetPrepareTest, Gpt2TextWithNoAsciiBeforeItsSpacesIsCutAndEncodesAsTheWhole) {
  const std::string gpt2_dir = testing::SourceDir() + "/data/gpt2";
  if (!fs::exists(gpt2_dir + "/encoder.json")) GTEST_SKIP() << gpt2_dir << " has no GPT-2 files";
  auto tok = LoadGpt2Tokenizer(gpt2_dir);
  ASSERT_TRUE(tok.ok()) << tok.status();
  const std::string text =
      "日本語の文章です。\n東京\n  改行\r\n😀 emoji😀\tcaf\xe9\ncaf\xc3\xa9 \xc2\xa0 nbsp\xc2\xa0\n"
      "ideo\xe3\x80\x80\nstray\x80 cut\xe6\x97 over\xc0\x80 sur\xed\xa0\x80 \xff\n\xf0\x9f\x98\x80\n"
      "'s\xc3\xa9 12\xef\xbc\x91 end";
  const std::vector<int32_t> whole = (*tok)->Encode(text);
  std::vector<size_t> cut_at;
  for (size_t from = 0; from <= text.size(); ++from) {
    const size_t c = (*tok)->CutPoint(text, from);
    ASSERT_GE(c, from);
    ASSERT_LE(c, text.size());
    if (c == text.size()) continue;
    if (cut_at.empty() || cut_at.back() != c) cut_at.push_back(c);
    std::vector<int32_t> parts = (*tok)->Encode(std::string_view(text).substr(0, c));
    const std::vector<int32_t> rest = (*tok)->Encode(std::string_view(text).substr(c));
    parts.insert(parts.end(), rest.begin(), rest.end());
    EXPECT_EQ(parts, whole) << "cut at byte " << c;
  }
  auto cut_before = [&](const std::string& what) {
    const size_t at = text.find(what);
    EXPECT_NE(at, std::string::npos) << what;
    return std::find(cut_at.begin(), cut_at.end(), at + what.size() - 1) != cut_at.end();
  };
  EXPECT_TRUE(cut_before("です。\n"));
  EXPECT_TRUE(cut_before("東京\n"));
  EXPECT_TRUE(cut_before("😀 "));
  EXPECT_TRUE(cut_before("😀\t"));
  EXPECT_TRUE(cut_before("caf\xe9\n"));  // a Latin-1 byte: one "other" code point
  EXPECT_TRUE(cut_before("caf\xc3\xa9 "));
  EXPECT_TRUE(cut_before("\xff\n"));
  EXPECT_TRUE(cut_before("\xff\n\xf0\x9f\x98\x80\n"));  // after U+1F600
  EXPECT_FALSE(cut_before("\xc2\xa0 "));     // after U+00A0, a space
  EXPECT_FALSE(cut_before("\xc2\xa0\n"));
  EXPECT_FALSE(cut_before("\xe3\x80\x80\n"));  // after U+3000, a space
  EXPECT_FALSE(cut_before("stray\x80 "));    // no valid sequence ends there: not cut, to be safe
  EXPECT_FALSE(cut_before("\xe6\x97 "));
  EXPECT_FALSE(cut_before("\xc0\x80 "));

  // 5 MB of CJK lines, no ASCII byte but the newlines: tokenized in chunks, as the whole.
  std::string line = "吾輩は猫である。名前はまだ無い。どこで生れたかとんと見当がつかぬ。\n";
  std::string big;
  while (big.size() < (size_t{5} << 20)) big += line;
  const std::string path = dir_ + "/cjk.txt";
  std::ofstream(path, std::ios::binary) << big;
  moe::v1::DataSpec spec = Spec(path, moe::v1::TOKENIZER_GPT2, 0.0);
  spec.set_tokenizer_dir(gpt2_dir);
  std::vector<std::string> log;
  DataLoadOptions opts;
  opts.on_log = [&log](const std::string& l) { log.push_back(l); };
  opts.progress_every_s = 0;
  auto data = LoadDataset(spec, opts);
  ASSERT_TRUE(data.ok()) << data.status();
  int progress_lines = 0;
  for (const std::string& l : log) progress_lines += absl::StartsWith(l, "tokenizing: ") ? 1 : 0;
  EXPECT_GE(progress_lines, 2) << absl::StrJoin(log, "\n");
  const std::vector<int32_t> ids = (*tok)->Encode(big);
  const std::vector<uint16_t> want(ids.begin(), ids.end());
  EXPECT_TRUE(data->train.ToVector() == want);
}

}  // namespace
}  // namespace moe
