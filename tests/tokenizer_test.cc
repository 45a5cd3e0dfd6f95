// Tokenizers: nanoGPT char ids, GPT-2 BPE ids (checked against the gpt-3-encoder reference),
// round trips, serialization, the errors bad input gets, and what a resume's check finds
// different between two tokenizers (the files' content, not their formatting).
#include "common/tokenizer.h"

#include <filesystem>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "common/files.h"
#include "common/json_object.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/support/paths.h"
#include "tests/support/tiny_gpt2.h"

namespace moe {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

std::string Shakespeare() {
  absl::StatusOr<std::string> text = ReadFile(testing::ShakespearePath());
  EXPECT_TRUE(text.ok()) << text.status();
  return text.ok() ? *text : "";
}

TEST(CharTokenizer, TinyShakespeareMatchesNanoGpt) {
  auto tok = BuildCharTokenizer(Shakespeare());
  ASSERT_TRUE(tok.ok()) << tok.status();
  EXPECT_EQ((*tok)->vocab_size(), 65);
  EXPECT_EQ((*tok)->Describe(), "char (65 symbols)");
  // nanoGPT shakespeare_char: stoi over sorted(set(text)); '\n' = 0, ' ' = 1, 'A' = 13, 'a' = 39.
  EXPECT_THAT((*tok)->Encode("First Citizen"),
              ElementsAre(18, 47, 56, 57, 58, 1, 15, 47, 58, 47, 64, 43, 52));
  EXPECT_THAT((*tok)->Encode("\n !A a"), ElementsAre(0, 1, 2, 13, 1, 39));
  EXPECT_EQ((*tok)->Decode({18, 47, 56, 57, 58}), "First");
}

TEST(CharTokenizer, RoundTripsAndSerializes) {
  auto tok = BuildCharTokenizer("hello, world\n\xC3\xA9");  // é is two byte-symbols
  ASSERT_TRUE(tok.ok());
  EXPECT_EQ((*tok)->vocab_size(), 12);
  std::string text = "world, hello\n\xC3\xA9";
  auto ids = (*tok)->TryEncode(text);
  ASSERT_TRUE(ids.ok()) << ids.status();
  EXPECT_EQ((*tok)->Decode(*ids), text);

  auto back = DeserializeTokenizer((*tok)->Serialize());
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ((*back)->vocab_size(), 12);
  EXPECT_EQ((*back)->Encode(text), *ids);
  EXPECT_EQ((*back)->Serialize(), (*tok)->Serialize());
}

TEST(CharTokenizer, UnknownCharacterIsNamed) {
  auto tok = BuildCharTokenizer("abc");
  ASSERT_TRUE(tok.ok());
  auto ids = (*tok)->TryEncode("abz");
  ASSERT_FALSE(ids.ok());
  EXPECT_EQ(ids.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(ids.status().message(), HasSubstr("'z'"));
  EXPECT_THAT(ids.status().message(), HasSubstr("byte 2"));
  EXPECT_THAT((*tok)->Encode("abz"), ElementsAre(0, 1));  // lenient form drops it
  EXPECT_EQ((*tok)->Decode({0, 7}), "a\xEF\xBF\xBD");     // bad id -> U+FFFD
  EXPECT_FALSE(BuildCharTokenizer("").ok());
}

TEST(Tokenizer, DeserializeRejectsGarbage) {
  for (std::string blob : {"", "hello", "moe-tokenizer char v1\nzz", "moe-tokenizer char v1\n6261",
                           "moe-tokenizer gpt2 v1\nencoder.json 99\n{}"}) {
    auto tok = DeserializeTokenizer(blob);
    ASSERT_FALSE(tok.ok()) << blob;
    EXPECT_EQ(tok.status().code(), absl::StatusCode::kInvalidArgument) << blob;
  }
}

TEST(JsonStringIntMap, ParsesEscapes) {
  auto m = ParseJsonStringIntMap(
      R"( {"a": 1, "\"q\\": 2 , "\u0120x": 3, "\ud83d\ude00": 4, "\n\t\/": -5} )");
  ASSERT_TRUE(m.ok()) << m.status();
  ASSERT_EQ(m->size(), 5u);
  EXPECT_EQ(m->at("a"), 1);
  EXPECT_EQ(m->at("\"q\\"), 2);
  EXPECT_EQ(m->at("\xC4\xA0x"), 3);         // U+0120 in UTF-8
  EXPECT_EQ(m->at("\xF0\x9F\x98\x80"), 4);  // surrogate pair -> U+1F600
  EXPECT_EQ(m->at("\n\t/"), -5);
  EXPECT_TRUE(ParseJsonStringIntMap("{}").ok());
}

TEST(JsonStringIntMap, ReportsWhereItBroke) {
  for (const char* bad : {"", "[]", "{\"a\" 1}", "{\"a\": x}", "{\"a\": 1", "{\"\\ud800\": 1}",
                          "{\"a\": 1} x"}) {
    auto m = ParseJsonStringIntMap(bad);
    ASSERT_FALSE(m.ok()) << bad;
    EXPECT_THAT(m.status().message(), HasSubstr("at byte")) << bad;
  }
  auto fraction = ParseJsonStringIntMap("{\"a\": 1.5}");
  ASSERT_FALSE(fraction.ok());
  EXPECT_THAT(fraction.status().message(), HasSubstr("\"a\" is not an integer"));
  // protobuf's JSON reader (the project's one) accepts a trailing comma and drops the backslash
  // of an unknown escape; the hand parser it replaced refused both.
  EXPECT_TRUE(ParseJsonStringIntMap("{\"a\": 1,}").ok());
  EXPECT_TRUE(ParseJsonStringIntMap("{\"\\q\": 1}").ok());
}

class Gpt2Test : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = testing::SourceDir() + "/data/gpt2";
    if (!std::filesystem::exists(dir_ + "/encoder.json") ||
        !std::filesystem::exists(dir_ + "/vocab.bpe")) {
      GTEST_SKIP() << dir_ << " has no encoder.json/vocab.bpe; run scripts/fetch_data.sh";
    }
    auto tok = LoadGpt2Tokenizer(dir_);
    ASSERT_TRUE(tok.ok()) << tok.status();
    tok_ = *std::move(tok);
  }
  std::string dir_;
  std::unique_ptr<Tokenizer> tok_;
};

TEST_F(Gpt2Test, KnownIds) {
  EXPECT_EQ(tok_->vocab_size(), 50257);
  EXPECT_THAT(tok_->Encode("Hello world"), ElementsAre(15496, 995));
  EXPECT_THAT(tok_->Encode(" the"), ElementsAre(262));
  // Expected ids below come from gpt-3-encoder's Encoder.js (the reference GPT-2 encoder).
  EXPECT_THAT(tok_->Encode("I'm here, they're ALL 123456 apples!!"),
              ElementsAre(40, 1101, 994, 11, 484, 821, 11096, 17031, 29228, 22514, 3228));
  EXPECT_THAT(tok_->Encode("  two  spaces\n\nnew\tline  "),
              ElementsAre(220, 734, 220, 9029, 198, 198, 3605, 197, 1370, 220, 220));
  EXPECT_THAT(tok_->Encode("naïve café — “quotes” 日本語 😀"),
              ElementsAre(2616, 38776, 40304, 851, 564, 250, 421, 6421, 447, 251, 10545, 245, 98,
                          17312, 105, 45739, 252, 30325, 222));
  EXPECT_THAT(tok_->Encode("In the beginning God created the heaven and the earth."),
              ElementsAre(818, 262, 3726, 1793, 2727, 262, 9538, 290, 262, 4534, 13));
  EXPECT_THAT(tok_->Encode("don't 'S 'll'd"), ElementsAre(9099, 470, 705, 50, 705, 297, 1549));
  EXPECT_THAT(tok_->Encode("x = foo(bar[3]) + 2.5e10;"),
              ElementsAre(87, 796, 22944, 7, 5657, 58, 18, 12962, 1343, 362, 13, 20, 68, 940, 26));
  EXPECT_THAT(tok_->Encode("   "), ElementsAre(220, 220, 220));
  EXPECT_THAT(tok_->Encode("a\u00a0b"), ElementsAre(64, 1849, 65));
  EXPECT_TRUE(tok_->Encode("").empty());
}

TEST_F(Gpt2Test, RoundTripsAnyBytes) {
  std::string shakespeare = Shakespeare().substr(0, 20000);
  std::string binary;
  for (int i = 0; i < 512; ++i) binary.push_back(static_cast<char>((i * 37) & 0xFF));
  for (const std::string& text : {shakespeare, binary, std::string("\xC3(\xE2\x82 broken utf8\xFF"),
                                  std::string("<|endoftext|> tabs\t\t\tand CRLF\r\n")}) {
    std::vector<int32_t> ids = tok_->Encode(text);
    EXPECT_EQ(tok_->Decode(ids), text);
    auto checked = tok_->TryEncode(text);
    ASSERT_TRUE(checked.ok());
    EXPECT_EQ(*checked, ids);
  }
  // BPE compresses English: tiny shakespeare is ~3.3 characters per token with GPT-2.
  EXPECT_LT(tok_->Encode(shakespeare).size(), shakespeare.size() / 3);
}

// LoadDataset encodes a large text a few MB at a time, cut where CutPoint says: the parts must
// encode as the whole does, around contractions, runs of spaces and newlines, digits, Unicode
// spaces and letters, and bytes that are no UTF-8.
TEST_F(Gpt2Test, TextCutAtACutPointEncodesAsTheWhole) {
  const std::string text =
      "I'm here, they're ALL 123456 apples!!  two  spaces\n\nnew\tline  don' t 'll x'\n"
      "naïve café \xc2\xa0 nbsp\xe3\x80\x80ideo — “quotes” 日本語 😀 \xff\xfe bad\xe2 a 12 34\r\n"
      "end's   \n  ";
  const std::vector<int32_t> whole = tok_->Encode(text);
  int cuts = 0;
  for (size_t from = 0; from <= text.size(); ++from) {
    const size_t c = tok_->CutPoint(text, from);
    ASSERT_GE(c, from);
    ASSERT_LE(c, text.size());
    if (c == text.size()) continue;
    std::vector<int32_t> parts = tok_->Encode(std::string_view(text).substr(0, c));
    const std::vector<int32_t> rest = tok_->Encode(std::string_view(text).substr(c));
    parts.insert(parts.end(), rest.begin(), rest.end());
    EXPECT_EQ(parts, whole) << "cut at byte " << c;
    ++cuts;
  }
  EXPECT_GT(cuts, 50);
  auto chr = BuildCharTokenizer(text);
  ASSERT_TRUE(chr.ok());
  EXPECT_EQ((*chr)->CutPoint(text, 7), 7u);  // char: anywhere
}

TEST_F(Gpt2Test, SerializeRebuildsTheSameTokenizer) {
  auto back = DeserializeTokenizer(tok_->Serialize());
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ((*back)->vocab_size(), 50257);
  EXPECT_EQ((*back)->Describe(), tok_->Describe());
  EXPECT_THAT((*back)->Encode("Hello world"), ElementsAre(15496, 995));
}

TEST(Gpt2Tokenizer, BadFilesAreExplained) {
  std::string dir = testing::MakeTempDir("gpt2_bad_");
  auto missing = LoadGpt2Tokenizer(dir);
  ASSERT_FALSE(missing.ok());
  EXPECT_THAT(missing.status().message(), HasSubstr("encoder.json"));
  EXPECT_THAT(missing.status().message(), HasSubstr("fetch_data.sh"));

  ASSERT_TRUE(WriteFileAtomic(dir + "/encoder.json", "{\"a\": 0, \"b\" 1}").ok());
  ASSERT_TRUE(WriteFileAtomic(dir + "/vocab.bpe", "#version: 0.2\na b\n").ok());
  auto bad_json = LoadGpt2Tokenizer(dir);
  ASSERT_FALSE(bad_json.ok());
  EXPECT_THAT(bad_json.status().message(), HasSubstr("encoder.json"));
  EXPECT_THAT(bad_json.status().message(), HasSubstr("at byte"));

  ASSERT_TRUE(WriteFileAtomic(dir + "/encoder.json", "{\"a\": 0, \"b\": 1}").ok());
  auto too_few = LoadGpt2Tokenizer(dir);  // a byte-level BPE needs all 256 bytes
  ASSERT_FALSE(too_few.ok());
  EXPECT_THAT(too_few.status().message(), HasSubstr("no token for byte"));
  std::filesystem::remove_all(dir);
}

std::unique_ptr<Tokenizer> LoadTiny(const testing::TinyGpt2& tiny, const std::string& dir, bool reformatted = false) {
  tiny.Write(dir, reformatted);
  auto tok = LoadGpt2Tokenizer(dir);
  EXPECT_TRUE(tok.ok()) << tok.status();
  return tok.ok() ? *std::move(tok) : nullptr;
}

TEST(TokenizerDifference, Gpt2FilesFormattedOtherwiseAreTheSameTokenizer) {
  // Another key order, indentation and spacing in encoder.json; CRLF and a blank last line in
  // vocab.bpe: other bytes, the same tokens and merges.
  const testing::TinyGpt2 tiny;
  const std::string plain = testing::MakeTempDir("gpt2_plain_"), other = testing::MakeTempDir("gpt2_other_");
  std::unique_ptr<Tokenizer> a = LoadTiny(tiny, plain), b = LoadTiny(tiny, other, /*reformatted=*/true);
  ASSERT_TRUE(a && b);
  ASSERT_NE(a->Serialize(), b->Serialize());
  EXPECT_EQ(b->vocab_size(), 260);
  EXPECT_EQ(TokenizerDifference(*a, *b, other), "");
  // As a checkpoint holds it: rebuilt from its Serialize() blob.
  auto saved = DeserializeTokenizer(a->Serialize());
  ASSERT_TRUE(saved.ok()) << saved.status();
  EXPECT_EQ(TokenizerDifference(**saved, *b, other), "");
}

TEST(TokenizerDifference, Gpt2NamesTheFileAndItsFirstTokenOrMergeThatDiffers) {
  const testing::TinyGpt2 tiny;
  std::unique_ptr<Tokenizer> saved = LoadTiny(tiny, testing::MakeTempDir("gpt2_saved_"));
  ASSERT_TRUE(saved);

  testing::TinyGpt2 merges = tiny;  // the same tokens, two merges in the other order
  std::swap(merges.merges[2], merges.merges[3]);
  const std::string dir = testing::MakeTempDir("gpt2_job_");
  std::unique_ptr<Tokenizer> job = LoadTiny(merges, dir, /*reformatted=*/true);
  ASSERT_TRUE(job);
  EXPECT_EQ(TokenizerDifference(*saved, *job, dir),
            dir + "/vocab.bpe: merge 3 is \"e r\" in the checkpoint, \"i n\" in this job's (line 4)");

  testing::TinyGpt2 ids = tiny;  // the same merges, two tokens' ids swapped
  std::swap(ids.tokens[2], ids.tokens[3]);
  job = LoadTiny(ids, dir);
  EXPECT_EQ(TokenizerDifference(*saved, *job, dir),
            dir + "/encoder.json: token id 258 is \"er\" in the checkpoint, \"in\" in this job's");

  testing::TinyGpt2 more = tiny;  // one token and its merge more: both files named
  more.tokens.push_back("on");
  more.merges.push_back({"o", "n"});
  job = LoadTiny(more, dir);
  EXPECT_EQ(TokenizerDifference(*saved, *job, dir),
            dir + "/encoder.json: 260 tokens in the checkpoint, 261 in this job's (id 260 \"on\" is not in the "
                  "checkpoint's); " +
                dir + "/vocab.bpe: 4 merges in the checkpoint, 5 in this job's (its merge 5 \"o n\", line 6, is "
                      "not in the checkpoint's)");
  EXPECT_EQ(TokenizerDifference(*job, *saved, ""),
            "encoder.json: 261 tokens in the checkpoint, 260 in this job's (id 260 \"on\" is not in this job's); "
            "vocab.bpe: 5 merges in the checkpoint, 4 in this job's (the checkpoint's merge 5 \"o n\" is not in "
            "this job's)");
}

TEST(TokenizerDifference, CharNamesTheFirstIdAndOtherKindsAreDescribed) {
  auto abc = BuildCharTokenizer("abc"), abd = BuildCharTokenizer("abd"), again = BuildCharTokenizer("cab");
  ASSERT_TRUE(abc.ok() && abd.ok() && again.ok());
  EXPECT_EQ(TokenizerDifference(**abc, **again, ""), "");
  EXPECT_EQ(TokenizerDifference(**abc, **abd, ""), "token id 2 is \"c\" in the checkpoint, \"d\" in this job's data");
  std::unique_ptr<Tokenizer> gpt2 = LoadTiny(testing::TinyGpt2(), testing::MakeTempDir("gpt2_kind_"));
  ASSERT_TRUE(gpt2);
  EXPECT_EQ(TokenizerDifference(**abc, *gpt2, ""),
            "char (3 symbols) in the checkpoint, gpt2 BPE (260 tokens, 4 merges) in this job's data");
}

}  // namespace
}  // namespace moe
