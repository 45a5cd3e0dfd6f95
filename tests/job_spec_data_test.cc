// Unit tests of a job spec's data rules (common/job_spec_data.cc, job_spec_checks.cc): the
// vocabulary against the tokenizer's ids, model.init_from's files, data paths, token shards and
// their splits. The other rules: job_spec_checks_test.cc.
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/files.h"
#include "common/json_object.h"
#include "common/job_spec.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/support/job_spec_fixture.h"
#include "tests/support/paths.h"
#include "tests/support/tiny_gpt2.h"

namespace moe {
namespace {

namespace fs = std::filesystem;
using ::moe::testing::JobSpecTest;
using ::moe::testing::kMinimal;
using ::moe::testing::WithExtra;
using ::moe::testing::WriteText;
using ::testing::HasSubstr;
using ::testing::IsEmpty;

// The worker refused a vocabulary short of the data's token ids only once the job started ("the
// data has 93 token ids"): char's are the text's distinct bytes, a BPE's its encoder.json entries.
TEST_F(JobSpecTest, AVocabularyShortOfTheTokenizersIdsIsRefused) {
  const absl::StatusOr<std::string> text = ReadFile(dir_ + "/input.txt");
  ASSERT_TRUE(text.ok());
  int distinct = 0;
  bool seen[256] = {};
  for (unsigned char c : *text) distinct += seen[c] ? 0 : 1, seen[c] = true;
  ASSERT_GT(distinct, 10);
  SpecError e = OnlyError(WithExtra("  seq_len: 32", "  vocab_size: 10\n"));
  EXPECT_EQ(e.field, "model.vocab_size");
  EXPECT_EQ(e.line, 7);
  EXPECT_EQ(e.message, absl::StrCat("is 10, but the char tokenizer makes ", distinct, " token ids of ", dir_,
                                    "/input.txt (one per distinct byte value); raise model.vocab_size to at least ",
                                    distinct, ", or remove it to use the text's own"));
  ValidSpec(WithExtra("  seq_len: 32", absl::StrCat("  vocab_size: ", distinct, "\n")));

  // A BPE of 50300 tokens (the 256 bytes and 50044 more): 50257 is too few, 50304 enough.
  testing::TinyGpt2 big;
  big.tokens.clear();
  for (int i = 0; i < 50300 - 256; ++i) {
    std::string letters = "t";
    for (int n = i; n > 0 || letters.size() == 1; n /= 26) letters.push_back(static_cast<char>('a' + n % 26));
    big.tokens.push_back(letters);
  }
  big.Write(dir_ + "/bpe");
  auto bpe = [](std::string y) {
    return y.insert(y.find("  path: input.txt\n") + 18, "  tokenizer: gpt2\n  tokenizer_dir: bpe\n");
  };
  e = OnlyError(bpe(WithExtra("  seq_len: 32", "  vocab_size: 50257\n")));
  EXPECT_EQ(e.field, "model.vocab_size");
  EXPECT_EQ(e.message, absl::StrCat("is 50257, but the BPE in ", dir_,
                                    "/bpe has 50300 tokens (encoder.json); raise model.vocab_size to at least "
                                    "50300 (a multiple of 64 is the usual padding), or remove it"));
  EXPECT_EQ(ValidSpec(bpe(kMinimal)).model().vocab_size(), 50304);
}

// A gpt2 job's encoder.json that is no JSON (cut short, empty, random bytes) passed validate and
// submit, and the job failed when it started ("cannot load data: ...: JSON error at byte 7"):
// validate loads the BPE with the worker's loader (common/tokenizer.h) and says what it says.
TEST_F(JobSpecTest, ABpeTheWorkerCannotLoadIsRefused) {
  const std::string yaml = WithExtra("  path: input.txt", "  tokenizer: gpt2\n  tokenizer_dir: gpt2\n");
  ValidSpec(yaml);
  const std::string encoder = dir_ + "/gpt2/encoder.json";
  std::string random(300, '\0');
  for (size_t i = 0; i < random.size(); ++i) random[i] = static_cast<char>((i * 2654435761u) >> 13);
  struct Case {
    std::string bytes, message;
  };
  for (const Case& c : {Case{"{\"a\": ", encoder + ": JSON error at byte 6: "},
                        Case{"", encoder + ": JSON error at byte 0: "},
                        Case{random, encoder + ": JSON error at byte 0: "},
                        Case{"{\"a\": 0}", encoder + ": no token for byte 0; a byte-level BPE needs all 256"}}) {
    WriteText(encoder, c.bytes);
    SpecError e = OnlyError(yaml);
    EXPECT_EQ(e.field, "data.tokenizer_dir");
    EXPECT_EQ(e.line, 10);
    EXPECT_THAT(e.message, ::testing::StartsWith(c.message)) << ::testing::PrintToString(c.bytes);
  }
  // The same for the BPE a pretokenized job names (the worker loads it at start too).
  std::string shards = WithExtra("  path: input.txt", "  tokenizer_dir: gpt2\n");
  shards.replace(shards.find("path: input.txt"), 15, "path: shards\n  tokenizer: pretokenized");
  shards.insert(shards.find("data:"), "  vocab_size: 1024\n");
  EXPECT_THAT(OnlyError(shards).message, HasSubstr("no token for byte 0"));
  testing::TinyGpt2 tiny;
  tiny.merges = {{"t", "h"}, {"bad", ""}};
  tiny.Write(dir_ + "/gpt2");
  EXPECT_THAT(OnlyError(yaml).message,
              HasSubstr("/gpt2/vocab.bpe:3: expected \"left right\", got \"bad \"; re-fetch it"));
}

// GPT-2's own files (about 1 MB of encoder.json) load in a fraction of a second, moectl's and moed's
// check at submit included.
TEST_F(JobSpecTest, TheRealGpt2BpeValidatesQuickly) {
  const std::string gpt2 = testing::SourceDir() + "/data/gpt2";
  if (!fs::exists(gpt2 + "/encoder.json") || !fs::exists(gpt2 + "/vocab.bpe")) {
    GTEST_SKIP() << gpt2 << " has no encoder.json/vocab.bpe; run scripts/fetch_data.sh";
  }
  const auto start = std::chrono::steady_clock::now();
  ValidSpec(WithExtra("  path: input.txt", "  tokenizer: gpt2\n  tokenizer_dir: " + gpt2 + "\n"));
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_LT(seconds, 10.0);  // about 0.2 s on one core: this catches a load gone quadratic, not noise
}

// A path behind a directory this user may not search (EACCES from stat) was "does not exist" (data.path,
// model.init_from), "is not a directory" (data.tokenizer_dir) or passed (checkpoint.dir, and the
// worker failed at start): each now says it cannot be reached and why.
TEST_F(JobSpecTest, APathThisUserCannotReachIsNamedSo) {
  const std::string locked = dir_ + "/locked";
  WriteText(locked + "/input.txt", ReadFile(dir_ + "/input.txt").value());
  testing::TinyGpt2().Write(locked + "/gpt2");
  fs::create_directories(locked + "/hf");
  // Root searches every directory: the checks then run as nobody, with only locked/ closed to it.
  const bool root = geteuid() == 0;
  ASSERT_EQ(chmod(dir_.c_str(), 0711), 0);
  ASSERT_EQ(chmod(locked.c_str(), root ? 0700 : 0), 0);
  if (root && seteuid(65534) != 0) {
    GTEST_SKIP() << "cannot take uid 65534 to look as another user";
  }
  struct Case {
    std::string yaml, field, path;
  };
  auto at_path = [](const std::string& path) {
    std::string y = kMinimal;
    return y.replace(y.find("path: input.txt"), 15, "path: " + path);
  };
  std::string shards = at_path("locked/input.txt\n  tokenizer: pretokenized");
  shards.insert(shards.find("data:"), "  vocab_size: 1024\n");
  const std::vector<Case> cases = {
      {at_path("locked/input.txt"), "data.path", locked + "/input.txt"},
      {shards, "data.path", locked + "/input.txt"},
      {WithExtra("  path: input.txt", "  tokenizer: gpt2\n  tokenizer_dir: locked/gpt2\n"), "data.tokenizer_dir",
       locked + "/gpt2"},
      {WithExtra("  seq_len: 32", "  init_from: locked/hf\n"), "model.init_from", locked + "/hf"},
      {std::string(kMinimal) + "checkpoint: {dir: locked/ckpt}\n", "checkpoint.dir", locked + "/ckpt"},
  };
  std::vector<ParsedSpec> parsed;
  for (const Case& c : cases) parsed.push_back(Parse(c.yaml));
  if (root) {
    ASSERT_EQ(seteuid(0), 0);
  }
  ASSERT_EQ(chmod(locked.c_str(), 0700), 0);
  for (size_t i = 0; i < cases.size(); ++i) {
    ASSERT_EQ(parsed[i].errors.size(), 1u) << cases[i].path << "\n" << FormatSpecErrors(parsed[i].errors);
    EXPECT_EQ(parsed[i].errors[0].field, cases[i].field);
    EXPECT_THAT(parsed[i].errors[0].message,
                ::testing::StartsWith(cases[i].path + " cannot be reached: permission denied (a directory on its way "
                                                      "does not let user "));
  }
}

// Binary data under the char tokenizer (a token shard, a program) trained without a word ("char
// (65 symbols)"): a warning names the NUL byte or the .bin name and the pretokenized fix; text
// gets none, and pretokenized shards are not read as text at all.
TEST_F(JobSpecTest, BinaryDataUnderATextTokenizerIsAWarning) {
  std::string bytes = std::string(5000, 'a') + std::string(1, '\0') + "tail";
  WriteText(dir_ + "/data.raw", bytes);
  auto at = [](const std::string& path) {
    std::string y = kMinimal;
    return y.replace(y.find("path: input.txt"), 15, "path: " + path);
  };
  ParsedSpec p = Parse(at("data.raw"));
  ASSERT_TRUE(p.errors.empty()) << p.errors[0].message;
  ASSERT_EQ(p.warnings.size(), 1u);
  EXPECT_EQ(p.warnings[0].field, "data.path");
  EXPECT_THAT(p.warnings[0].message, HasSubstr("data.raw holds a NUL byte at offset 5000"));
  EXPECT_THAT(p.warnings[0].message, HasSubstr("set data.tokenizer: pretokenized"));
  WriteText(dir_ + "/text.bin", std::string(5000, 'b'));
  p = Parse(at("text.bin"));
  ASSERT_EQ(p.warnings.size(), 1u);
  EXPECT_THAT(p.warnings[0].message, HasSubstr("is named like a token shard (.bin)"));
  EXPECT_TRUE(Parse(kMinimal).warnings.empty());
}

// model.init_from was checked only for being a directory: one without config.json, or without
// the safetensors the worker reads, passed and the job failed when it started.
TEST_F(JobSpecTest, InitFromMustHoldWhatTheWorkerReads) {
  const std::string hf = dir_ + "/hf";
  const std::string yaml = WithExtra("  seq_len: 32", "  init_from: hf\n");
  auto error = [&]() {
    SpecError e = OnlyError(yaml);
    EXPECT_EQ(e.field, "model.init_from");
    EXPECT_EQ(e.line, 7);
    return e.message;
  };
  fs::create_directories(hf);
  EXPECT_THAT(error(), HasSubstr(hf + " is neither a Hugging Face model directory (no config.json) nor one of our "
                                      "checkpoints (no MANIFEST, no step_XXXXXXXX directory)"));
  WriteText(hf + "/model.safetensors", "weights");
  EXPECT_THAT(error(), HasSubstr(hf + " has safetensors weights but no config.json"));
  fs::remove(hf + "/model.safetensors");
  WriteText(hf + "/config.json", "[]");
  EXPECT_THAT(error(), HasSubstr(hf + "/config.json is not a JSON object"));
  WriteText(hf + "/config.json", "{\"hidden_size\": ");
  EXPECT_THAT(error(), HasSubstr(hf + "/config.json is not valid JSON ("));
  WriteText(hf + "/config.json", "{\"hidden_size\": 64}");
  EXPECT_THAT(error(), HasSubstr(hf + " has config.json but neither model.safetensors nor "
                                      "model.safetensors.index.json (PyTorch .bin files are not read"));
  WriteText(hf + "/model-00001-of-00002.safetensors", "weights");
  EXPECT_THAT(error(), HasSubstr("(it has model-00001-of-00002.safetensors: shards need the index that names them)"));
  WriteText(hf + "/model.safetensors.index.json",
            "{\"weight_map\": {\"a\": \"model-00001-of-00002.safetensors\", "
            "\"b\": \"model-00002-of-00002.safetensors\"}}");
  EXPECT_THAT(error(), HasSubstr("model.safetensors.index.json names model-00002-of-00002.safetensors, which is "
                                 "not in " + hf));
  WriteText(hf + "/model-00002-of-00002.safetensors", "weights");
  ValidSpec(yaml);  // the tensors themselves are the worker's to check
  WriteText(hf + "/model.safetensors.index.json", "{\"weight_map\": {\"a\": \"../x.safetensors\"}}");
  EXPECT_THAT(error(), HasSubstr("weight_map[\"a\"] is not a file name in this directory"));
  fs::remove(hf + "/model.safetensors.index.json");
  WriteText(hf + "/model.safetensors", "weights");
  ValidSpec(yaml);

  // Our checkpoints: a step directory (MANIFEST) or a directory of them.
  fs::remove_all(hf);
  WriteText(hf + "/step_00000002/MANIFEST", "");
  ValidSpec(yaml);
  ValidSpec(WithExtra("  seq_len: 32", "  init_from: hf/step_00000002\n"));
}

TEST_F(JobSpecTest, DataPathMustExistAndFitTheTokenizer) {
  auto with_path = [](const std::string& path, const std::string& extra = "") {
    std::string y = kMinimal;
    y.replace(y.find("path: input.txt"), 15, "path: " + path + extra);
    return y.insert(y.find("data:"), "  vocab_size: 1024\n");  // the shards' ids are 257 and 771
  };
  const std::string pre = "\n  tokenizer: pretokenized";
  SpecError e = OnlyError(with_path("nope.txt"));
  EXPECT_EQ(e.field, "data.path");
  EXPECT_EQ(e.message, dir_ + "/nope.txt does not exist; give the training text file");
  EXPECT_EQ(e.line, 9);
  EXPECT_EQ(e.column, 9);
  EXPECT_THAT(OnlyError(with_path("shards")).message, HasSubstr("is not a regular file"));
  WriteText(dir_ + "/empty.txt", "");
  EXPECT_THAT(OnlyError(with_path("empty.txt")).message, HasSubstr("is empty"));
  EXPECT_THAT(OnlyError(with_path("~/input.txt")).message, HasSubstr("'~' is not expanded"));
  // 300 bytes are at most 300 tokens: 30 in the val split, short of seq_len 32 + 1.
  WriteText(dir_ + "/short.txt", std::string(300, 'a'));
  e = OnlyError(with_path("short.txt"));
  EXPECT_EQ(e.field, "data.path");
  EXPECT_THAT(e.message, HasSubstr("short.txt has 300 bytes, so its val split (data.val_fraction 0.1) holds "
                                   "at most 30 tokens, but sampling sequences of model.seq_len = 32 needs 33; "
                                   "use more data, a shorter seq_len or a larger data.val_fraction"));
  EXPECT_THAT(OnlyError(with_path("short.txt", "\n  val_fraction: 0.95")).message,
              HasSubstr("its train split (data.val_fraction 0.95) holds at most 15 tokens"));
  // The fraction as written (%g said 1), and the fix for a train split too short.
  EXPECT_THAT(OnlyError(with_path("input.txt", "\n  val_fraction: 0.9999999")).message,
              HasSubstr("its train split (data.val_fraction 0.9999999) holds at most 0 tokens, but sampling sequences "
                        "of model.seq_len = 32 needs 33; use more data, a shorter seq_len or a smaller "
                        "data.val_fraction"));
  WriteText(dir_ + "/enough.txt", std::string(330, 'a'));
  ValidSpec(with_path("enough.txt"));

  ValidSpec(with_path("shards", pre));
  ValidSpec(with_path("shards/train_000.bin", pre));
  // An id past model.vocab_size: the worker refused it once the job started.
  std::string small_vocab = with_path("shards", pre);
  small_vocab.replace(small_vocab.find("vocab_size: 1024"), 16, "vocab_size: 512");
  e = OnlyError(small_vocab);
  EXPECT_EQ(e.field, "model.vocab_size");
  EXPECT_EQ(e.message, absl::StrCat("is 512, but ", dir_, "/shards/train_001.bin holds token id 771 (its token 0); "
                                    "the largest id in the shards' first 800 tokens is 771: raise model.vocab_size "
                                    "to at least 772 (the vocabulary the shards were made with, e.g. 50304 for "
                                    "GPT-2's)"));
  small_vocab.replace(small_vocab.find("vocab_size: 512"), 15, "vocab_size: 772");
  ValidSpec(small_vocab);
  v1::JobSpec glob = ValidSpec(with_path("\"shards/train_*.bin\"", pre));
  EXPECT_EQ(glob.data().path(), dir_ + "/shards/train_*.bin");
  EXPECT_THAT(OnlyError(with_path("\"shards/val_*.bin\"", pre)).message,
              HasSubstr("matches no .bin shard"));
  EXPECT_THAT(OnlyError(with_path("gpt2", pre)).message, HasSubstr("holds no .bin shard"));
  EXPECT_THAT(OnlyError(with_path("input.txt", pre)).message,
              HasSubstr("is not a .bin token shard"));
  EXPECT_THAT(OnlyError(with_path("none.bin", pre)).message, HasSubstr("does not exist"));
  // A wildcard in one directory is read; in more, the check would walk the filesystem.
  ValidSpec(with_path("\"sh*/train_*.bin\"", pre));
  e = OnlyError(with_path("\"/*/*/*/*/*/*/*.bin\"", pre));
  EXPECT_EQ(e.field, "data.path");
  EXPECT_THAT(e.message, HasSubstr("has wildcards in 6 directories; at most 1 directory"));
}

// Validate reads every shard's header as the worker will (common/token_shards.h): a damaged shard
// and a split shorter than one sequence are refused before the job runs.
TEST_F(JobSpecTest, ShardHeadersAndSplitsAreCheckedAtValidate) {
  auto with_path = [](const std::string& path, const std::string& extra = "") {
    std::string y = kMinimal;
    y.replace(y.find("path: input.txt"), 15, "path: " + path + "\n  tokenizer: pretokenized" + extra);
    return y.insert(y.find("data:"), "  vocab_size: 512\n");
  };
  auto fineweb = [](int32_t claimed, size_t tokens) {
    std::string s(1024 + 2 * tokens, '\x01');
    const int32_t header[3] = {20240520, 1, claimed};
    s.replace(0, sizeof(header), reinterpret_cast<const char*>(header), sizeof(header));
    return s;
  };
  WriteText(dir_ + "/fw/train_000.bin", fineweb(400, 400));
  ValidSpec(with_path("fw"));
  // Cut short: the header says more tokens than the file holds.
  WriteText(dir_ + "/fw/train_001.bin", fineweb(500, 400));
  SpecError e = OnlyError(with_path("fw"));
  EXPECT_EQ(e.field, "data.path");
  EXPECT_THAT(e.message, HasSubstr("train_001.bin: header says 500 tokens (2024 bytes with the header) but the "
                                   "file has 1824 bytes; it is truncated, download it again"));
  fs::remove(dir_ + "/fw/train_001.bin");
  WriteText(dir_ + "/fw/train_002.bin", std::string(7, '\x01'));
  EXPECT_THAT(OnlyError(with_path("\"fw/train_*.bin\"")).message, HasSubstr("train_002.bin: 7 bytes is odd"));
  fs::remove(dir_ + "/fw/train_002.bin");

  // One shard of 40 tokens: 36 train and 4 val, short of seq_len 32 + 1.
  WriteText(dir_ + "/small.bin", std::string(80, '\x01'));
  EXPECT_THAT(OnlyError(with_path("small.bin")).message,
              HasSubstr("small.bin: the val split (data.val_fraction 0.1 of 40 tokens) holds 4 tokens, but sampling "
                        "sequences of model.seq_len = 32 needs 33; use more shards, a shorter seq_len or a larger "
                        "data.val_fraction"));
  // Shards named val are the val split, whatever val_fraction says.
  WriteText(dir_ + "/split/train_000.bin", std::string(800, '\x01'));
  WriteText(dir_ + "/split/val_000.bin", std::string(20, '\x01'));
  EXPECT_THAT(OnlyError(with_path("split")).message,
              HasSubstr("the val split (1 shard(s) with \"val\" in the name) holds 10 tokens"));
  WriteText(dir_ + "/split/val_001.bin", std::string(60, '\x01'));
  ValidSpec(with_path("split"));
  EXPECT_THAT(OnlyError(with_path("\"split/val_*.bin\"")).message,
              HasSubstr("every shard has \"val\" in its name, so there is no training split"));
}

TEST(WildcardDirectoriesTest, CountsTheDirectoriesOnly) {
  EXPECT_EQ(WildcardDirectories("train_*.bin"), 0);
  EXPECT_EQ(WildcardDirectories("shards/train_*.bin"), 0);
  EXPECT_EQ(WildcardDirectories("/data/run?/x.bin"), 1);
  EXPECT_EQ(WildcardDirectories("/*/*/*.bin"), 2);
  EXPECT_EQ(WildcardDirectories("a/[0-9]/b/*/c.bin"), 2);
  EXPECT_EQ(WildcardDirectories("//x/*.bin"), 0);
}

// config.json (init_from), safetensors headers and spec.json go through ParseJsonObject: nesting
// past kMaxJsonDepth is refused at once, at its byte (200,000 levels took protobuf minutes; 40
// read as "invalid protobuf output"); brackets inside strings do not count.
TEST(ParseJsonObject, DeepNestingIsRefusedAtOnceAtItsByte) {
  google::protobuf::Struct out;
  EXPECT_TRUE(ParseJsonObject(R"({"a": [[{"b": "[[[[{{{{"}]], "c\"[": 1})", &out).ok());
  std::string ok = "{\"deep\": " + std::string(kMaxJsonDepth - 1, '[') + std::string(kMaxJsonDepth - 1, ']') + "}";
  EXPECT_TRUE(ParseJsonObject(ok, &out).ok());
  // A quote of the other kind inside a string hides nothing ('"' opened no string).
  const std::string hidden = "{'\"': " + std::string(40, '[') + std::string(40, ']') + "}";
  EXPECT_THAT(std::string(ParseJsonObject(hidden, &out).message()), ::testing::HasSubstr("nested more than"));
  const std::string deep = "{\"deep\": " + std::string(200000, '[') + std::string(200000, ']') + "}";
  absl::Status s = ParseJsonObject(deep, &out);
  EXPECT_THAT(std::string(s.message()),
              ::testing::HasSubstr(absl::StrCat("JSON error at byte ", 9 + kMaxJsonDepth - 1,
                                                ": objects and arrays nested more than ", kMaxJsonDepth)));
}

}  // namespace
}  // namespace moe
