// The fixture of the job-spec tests (job_spec_read_test.cc, job_spec_checks_test.cc): a temp
// directory with what jobs refer to, the minimal job file, and parse-and-expect helpers.
#pragma once

#include <string>
#include <vector>

#include "common/job_spec.h"
#include "gtest/gtest.h"
#include "moe/v1/job.pb.h"

namespace moe::testing {

// Writes text to path, creating its directories.
void WriteText(const std::string& path, const std::string& text);

// The required keys only; line numbers in the tests refer to this layout.
inline constexpr char kMinimal[] = R"(name: tiny
model:
  d_model: 64
  n_layers: 2
  n_heads: 4
  seq_len: 32
data:
  path: input.txt
train:
  steps: 5000
  batch_size: 8
)";

// kMinimal with `extra` inserted after the line that holds section_line.
std::string WithExtra(const std::string& section_line, const std::string& extra);

// Lines added to kMinimal (WithExtra) and the one error they must give.
struct OneErrorCase {
  std::string section_line;
  std::string extra;
  std::string field;
  std::string message;  // a part of the error's message
};

// A temp directory holding what the jobs refer to: a text file, GPT-2 tokenizer files and
// token shards.
class JobSpecTest : public ::testing::Test {
 protected:
  void SetUp() override;
  void TearDown() override;

  ParsedSpec Parse(const std::string& yaml);
  // The one error of a parse that must fail with exactly one.
  SpecError OnlyError(const std::string& yaml);
  // A valid spec with every default applied.
  moe::v1::JobSpec ValidSpec(const std::string& yaml);
  // For each case: exactly one error, on its field, with its message.
  void ExpectOnlyErrors(const std::vector<OneErrorCase>& cases);

  std::string dir_;
};

}  // namespace moe::testing
