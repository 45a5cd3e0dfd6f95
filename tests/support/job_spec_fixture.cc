#include "tests/support/job_spec_fixture.h"

#include <filesystem>
#include <fstream>

#include "gmock/gmock.h"
#include "tests/support/paths.h"
#include "tests/support/tiny_gpt2.h"

namespace moe::testing {

namespace fs = std::filesystem;

void WriteText(const std::string& path, const std::string& text) {
  fs::create_directories(fs::path(path).parent_path());
  std::ofstream(path, std::ios::binary) << text;
}

std::string WithExtra(const std::string& section_line, const std::string& extra) {
  std::string yaml = kMinimal;
  size_t at = yaml.find(section_line);
  EXPECT_NE(at, std::string::npos) << section_line;
  at = yaml.find('\n', at) + 1;
  return yaml.insert(at, extra);
}

void JobSpecTest::SetUp() {
  dir_ = MakeTempDir("job_spec_test_");
  // Long enough for the specs' seq_len in both splits (validate refuses a text too short for it).
  std::string text;
  for (int i = 0; i < 80; ++i) text += "First Citizen:\nBefore we proceed any further, hear me speak.\n";
  WriteText(dir_ + "/input.txt", text);
  TinyGpt2().Write(dir_ + "/gpt2");  // validate loads a gpt2 job's BPE as the worker does
  // Raw uint16 token shards of 400 tokens each: either alone fills both splits of seq_len 32.
  WriteText(dir_ + "/shards/train_000.bin", std::string(800, '\x01'));
  WriteText(dir_ + "/shards/train_001.bin", std::string(800, '\x03'));
}

void JobSpecTest::TearDown() { fs::remove_all(dir_); }

ParsedSpec JobSpecTest::Parse(const std::string& yaml) {
  return ParseJobSpec(yaml, "job.yaml", dir_);
}

SpecError JobSpecTest::OnlyError(const std::string& yaml) {
  ParsedSpec p = Parse(yaml);
  EXPECT_EQ(p.errors.size(), 1u) << FormatSpecErrors(p.errors);
  return p.errors.empty() ? SpecError{} : p.errors[0];
}

moe::v1::JobSpec JobSpecTest::ValidSpec(const std::string& yaml) {
  ParsedSpec p = Parse(yaml);
  EXPECT_TRUE(p.ok()) << FormatSpecErrors(p.errors);
  return p.spec;
}

void JobSpecTest::ExpectOnlyErrors(const std::vector<OneErrorCase>& cases) {
  for (const OneErrorCase& c : cases) {
    SpecError e = OnlyError(WithExtra(c.section_line, c.extra));
    EXPECT_EQ(e.field, c.field) << c.extra;
    EXPECT_THAT(e.message, ::testing::HasSubstr(c.message)) << c.extra;
  }
}

}  // namespace moe::testing
