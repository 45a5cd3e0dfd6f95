// Unit tests of reading a job file (common/job_spec_read.cc): YAML -> JobSpec, required keys,
// types, enums, unknown keys, FILE:LINE:COL positions, broken files, paths, LoadJobSpecFile, and
// that docs/job-spec.md lists exactly the keys a file may hold.
#include <fstream>
#include <iterator>
#include <regex>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/expert_capacity.h"
#include "common/job_spec.h"
#include "common/schedule.h"
#include "moe/v1/job.pb.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/support/job_spec_fixture.h"
#include "tests/support/paths.h"

namespace moe {
namespace {

using ::moe::testing::JobSpecTest;
using ::moe::testing::kMinimal;
using ::moe::testing::WithExtra;
using ::moe::testing::WriteText;
using ::testing::HasSubstr;

TEST_F(JobSpecTest, EachMissingRequiredKeyIsReportedAtItsParent) {
  struct Case {
    std::string line;  // removed from kMinimal
    std::string field;
    int line_no;  // where the parent mapping's key is (1 = the document)
  };
  const std::vector<Case> cases = {
      {"name: tiny\n", "name", 1},  // the document mapping, which now starts at 'model:'
      {"  d_model: 64\n", "model.d_model", 2},
      {"  n_layers: 2\n", "model.n_layers", 2},
      {"  n_heads: 4\n", "model.n_heads", 2},
      {"  seq_len: 32\n", "model.seq_len", 2},
      {"  path: input.txt\n", "data.path", 7},
      {"  steps: 5000\n", "train.steps", 9},
      {"  batch_size: 8\n", "train.batch_size", 9},
  };
  for (const Case& c : cases) {
    std::string yaml = kMinimal;
    yaml.erase(yaml.find(c.line), c.line.size());
    if (c.field == "data.path") yaml.insert(yaml.find("data:") + 5, "\n  val_fraction: 0.1");
    SpecError e = OnlyError(yaml);
    EXPECT_EQ(e.field, c.field);
    EXPECT_THAT(e.message, HasSubstr("required key missing"));
    EXPECT_EQ(e.line, c.line_no) << c.field;
    EXPECT_EQ(e.column, 1) << c.field;
  }
}

TEST_F(JobSpecTest, MissingSectionIsOneError) {
  SpecError e = OnlyError(
      "name: x\nmodel: {d_model: 64, n_layers: 2, n_heads: 4, seq_len: 32}\n"
      "data: {path: input.txt}\n");
  EXPECT_EQ(e.field, "train");
  EXPECT_THAT(e.message, HasSubstr("add 'train:' with steps, batch_size"));
}

TEST_F(JobSpecTest, TypeErrorsSayWhatWasExpectedAndGot) {
  struct Case {
    std::string value;
    std::string want;
  };
  for (const Case& c :
       std::vector<Case>{{"abc", "must be an integer, got 'abc'"},
                         {"1.5", "must be an integer, got 1.5"},
                         {"[1, 2]", "must be an integer, got a list"},
                         {"{a: 1}", "must be an integer, got a mapping"},
                         {"\"64\"", "must be an integer, got the quoted string \"64\""},
                         {"99999999999", "is too large: an integer here is at most 2147483647"},
                         // A core tag of another type is not read as the integer it spells.
                         {"!!float 32", "must be an integer, got !!float 32"},
                         {"!!null 32", "must be an integer, got !!null 32"},
                         {"!!bool 32", "must be an integer, got !!bool 32"}}) {
    std::string yaml = kMinimal;
    yaml.replace(yaml.find("d_model: 64"), 11, "d_model: " + c.value);
    SpecError e = OnlyError(yaml);
    EXPECT_EQ(e.field, "model.d_model");
    EXPECT_THAT(e.message, HasSubstr(c.want)) << c.value;
    EXPECT_EQ(e.line, 3);
    EXPECT_EQ(e.column, 12);
  }
  EXPECT_THAT(OnlyError(WithExtra("  seq_len: 32", "  dropout: high\n")).message,
              HasSubstr("must be a number, got 'high'"));
  EXPECT_THAT(OnlyError(WithExtra("  seq_len: 32", "  tie_embeddings: yes\n")).message,
              HasSubstr("must be true or false, got 'yes'"));
  EXPECT_THAT(OnlyError(WithExtra("  batch_size: 8", "  lr: .inf\n")).message,
              HasSubstr("must be a finite number"));
  EXPECT_THAT(OnlyError(WithExtra("  batch_size: 8", "  seed: -3\n")).message,
              HasSubstr("must be a non-negative integer"));
  EXPECT_THAT(OnlyError(WithExtra("  batch_size: 8", "  steps_extra:\n")).message,
              HasSubstr("unknown key"));
  // Every message of a parse, one a line.
  auto all_errors = [](const std::string& yaml) {
    std::string out;
    for (const SpecError& e : ParseJobSpec(yaml, "job.yaml", ".").errors) out += e.ToString() + "\n";
    return out;
  };
  EXPECT_THAT(all_errors(WithExtra("  seq_len: 32", "  dropout: !!int 0\n")), Not(HasSubstr("model.dropout")));
  EXPECT_THAT(OnlyError(WithExtra("  seq_len: 32", "  tie_embeddings: !!int 1\n")).message,
              HasSubstr("must be true or false, got !!int 1"));
  {
    std::string yaml = kMinimal;
    yaml.replace(yaml.find("d_model: 64"), 11, "<<: {d_model: 64}");
    EXPECT_THAT(all_errors(yaml), HasSubstr("job.yaml:3:3: model.<<: YAML merge keys (<<) are not read"));
  }
  // Below fp32's normal range: "greater than 0" held, and training ran with a rate of 0.
  EXPECT_THAT(all_errors(WithExtra("  batch_size: 8", "  lr: 1e-320\n")),
              HasSubstr("job.yaml:12:7: train.lr: is below fp32's smallest normal number"));
  // Past even double's range it read as 0, and said "must be greater than 0, got 0".
  EXPECT_EQ(OnlyError(WithExtra("  batch_size: 8", "  lr: 1e-99999999999\n")).ToString(),
            "job.yaml:12:7: train.lr: is below fp32's smallest normal number (about 1.2e-38), the precision "
            "training uses, where it would be 0 or lose its digits; got 1e-99999999999");
  ValidSpec(WithExtra("  batch_size: 8", "  weight_decay: 0.0e-99999999999\n"));  // a 0 that is one
  // Past fp32 (the precision training uses): was taken, and the worker diverged on infinity.
  for (const char* extra : {"  grad_clip: 1e300\n", "  weight_decay: 4e38\n"}) {
    SpecError big = OnlyError(WithExtra("  batch_size: 8", extra));
    EXPECT_THAT(big.message, HasSubstr("is beyond fp32's range (at most about 3.4e38)")) << extra;
  }
  EXPECT_EQ(ValidSpec(WithExtra("  batch_size: 8", "  grad_clip: 3e38\n")).train().grad_clip(), 3e38);
  SpecError null_value = OnlyError(WithExtra("  batch_size: 8", "  grad_clip:\n"));
  EXPECT_EQ(null_value.field, "train.grad_clip");
  EXPECT_THAT(null_value.message, HasSubstr("has no value"));
}

TEST_F(JobSpecTest, EnumsListTheirChoices) {
  SpecError e = OnlyError(WithExtra("  path: input.txt", "  tokenizer: bpe\n"));
  EXPECT_EQ(e.field, "data.tokenizer");
  EXPECT_EQ(e.message, "must be one of char, gpt2, pretokenized, got 'bpe'");
  EXPECT_THAT(OnlyError(WithExtra("  batch_size: 8", "  precision: BF16\n")).message,
              HasSubstr("did you mean 'bf16'?"));
  EXPECT_THAT(OnlyError(kMinimal + std::string("resources: {device: gpu}\n")).message,
              HasSubstr("must be one of cpu, cuda, got 'gpu'; did you mean 'cuda'?"));  // it said 'cpu'
  // A tab as indentation: yaml-cpp's words ("illegal map value") get the reason beside them.
  SpecError tab = OnlyError(WithExtra("train:", "\tsteps: 4\n"));
  EXPECT_THAT(tab.message, HasSubstr("is indented with a tab; YAML indents with spaces only")) << tab.message;
  EXPECT_THAT(OnlyError(kMinimal + std::string("resources: {launcher: k8s}\n")).message,
              HasSubstr("must be one of local, slurm"));
}

TEST_F(JobSpecTest, UnknownKeysSuggestTheNearestKnownOne) {
  std::string yaml = kMinimal;
  yaml.replace(yaml.find("n_layers"), 8, "n_layer");
  SpecError e = OnlyError(yaml);  // no "n_layers missing" on top
  EXPECT_EQ(e.ToString(), "job.yaml:4:3: model.n_layer: unknown key; did you mean 'n_layers'?");

  // A key with spaces around it is quoted: "train.steps : unknown key" hid the space.
  e = OnlyError(WithExtra("  batch_size: 8", "  \"warmup_steps \": 10\n"));
  EXPECT_EQ(e.ToString(), "job.yaml:12:3: train.\"warmup_steps \": unknown key; did you mean 'warmup_steps'?");
  EXPECT_EQ(OnlyError(WithExtra("  batch_size: 8", "  \" lr\": 0.1\n")).field, "train.\" lr\"");

  e = OnlyError(WithExtra("  batch_size: 8", "  warmup: 10\n"));
  EXPECT_THAT(e.message, HasSubstr("unknown key"));

  e = OnlyError(WithExtra("  batch_size: 8", "  wieght_decay: 0.1\n"));
  EXPECT_EQ(e.message, "unknown key; did you mean 'weight_decay'?");
  EXPECT_EQ(e.line, 12);
  EXPECT_EQ(e.column, 3);

  e = OnlyError(WithExtra("  seq_len: 32", "  steps: 10\n"));
  EXPECT_EQ(e.field, "model.steps");
  EXPECT_EQ(e.message, "unknown key under 'model'; 'steps' belongs at train.steps");

  e = OnlyError(kMinimal + std::string("epochs: 3\n"));
  EXPECT_THAT(e.message, HasSubstr("the keys at the top level are: name, model, data"));

  e = OnlyError(WithExtra("  seq_len: 32", "  d_model: 128\n"));
  EXPECT_EQ(e.field, "model.d_model");
  EXPECT_EQ(e.message, "duplicate key (first given on line 3); keep one");
}

TEST_F(JobSpecTest, AllErrorsOfAFileAreReportedInFileOrder) {
  ParsedSpec p = Parse(R"(name: Bad Name
model:
  d_model: 64
  n_layers: 0
  n_heads: 4
  seq_len: 32
  moe: {num_experts: 4, top_k: 5}
data:
  path: input.txt
  tokenizer: Char
train:
  steps: 10
  batch_size: 8
  lr: abc
  warmup_steps: 20
)");
  ASSERT_EQ(p.errors.size(), 6u) << FormatSpecErrors(p.errors);
  EXPECT_FALSE(p.ok());
  EXPECT_EQ(FormatSpecErrors(p.errors),
            "job.yaml:1:7: name: must be 1 to 63 characters from a-z, 0-9 and '-', got 'Bad Name'\n"
            "job.yaml:4:13: model.n_layers: must be between 1 and 4096, got 0\n"
            "job.yaml:7:32: model.moe.top_k: must be between 1 and num_experts (4), got 5\n"
            "job.yaml:10:14: data.tokenizer: must be one of char, gpt2, pretokenized, got 'Char'; "
            "did you mean 'char'?\n"
            "job.yaml:14:7: train.lr: must be a number, got 'abc'\n"
            "job.yaml:15:17: train.warmup_steps: must be between 0 and train.steps (10), got 20");
  EXPECT_EQ(p.spec.ByteSizeLong(), 0u);  // nothing half-validated escapes
}

TEST_F(JobSpecTest, OneMistakeGivesOneError) {
  // A section that is not a mapping does not also report its keys as missing or wrong.
  SpecError e =
      OnlyError("name: x\nmodel: 64\ndata: {path: input.txt}\ntrain: {steps: 1, batch_size: 1}\n");
  EXPECT_EQ(e.field, "model");
  EXPECT_THAT(e.message, HasSubstr("must be a mapping"));
  // A bad value does not break the rules that use it (or the defaults derived from it).
  std::string yaml = kMinimal;
  yaml.replace(yaml.find("n_heads: 4"), 10, "n_heads: four");
  EXPECT_EQ(OnlyError(yaml).field, "model.n_heads");
  yaml = kMinimal;
  yaml.replace(yaml.find("steps: 5000"), 11, "steps: many");
  EXPECT_EQ(OnlyError(yaml).field, "train.steps");
  EXPECT_EQ(OnlyError(WithExtra("  batch_size: 8", "  lr: -1\n")).field, "train.lr");
  EXPECT_EQ(OnlyError(kMinimal + std::string("resources: {ranks: x}\n")).field, "resources.ranks");
}

TEST_F(JobSpecTest, BrokenFilesGiveOneClearError) {
  SpecError e = OnlyError("name: x\nmodel: {d_model: 64\ndata: 1\n");
  EXPECT_EQ(e.line, 3);
  EXPECT_THAT(e.message, HasSubstr("invalid YAML"));
  EXPECT_EQ(e.field, "");

  EXPECT_THAT(OnlyError("").message, HasSubstr("is empty"));
  EXPECT_THAT(OnlyError("# nothing\n").message, HasSubstr("is empty"));
  EXPECT_THAT(OnlyError("---\n...\n").message, HasSubstr("is empty"));
  EXPECT_THAT(OnlyError("- a\n- b\n").message, HasSubstr("must be a YAML mapping"));
  EXPECT_THAT(OnlyError("name: x\n---\nname: y\n").message,
              HasSubstr("more than one YAML document"));

  e = OnlyError(std::string("name: x\nmo\0del: 1\n", 18));
  EXPECT_EQ(
      e.ToString(),
      "job.yaml:2:3: is not a UTF-8 text file: found a NUL byte here; a job file is YAML text");
  EXPECT_THAT(OnlyError("name: caf\xe9\n").message,
              HasSubstr("byte 0xE9 here, which is not valid UTF-8"));
  EXPECT_THAT(OnlyError("name: " + std::string(600, '[') + std::string(600, ']')).message,
              HasSubstr("nested too deeply"));
  EXPECT_THAT(OnlyError(std::string(2 << 20, '#')).message, HasSubstr("too large"));
  ValidSpec(std::string(kMinimal) + "# UTF-8 is fine: caf\xc3\xa9\n");
}

// Only well-formed UTF-8 is text (RFC 3629): an encoded UTF-16 surrogate (ED A0 80, what a UTF-16
// file converted byte by byte holds) passed as a name and reached the terminal; overlong forms
// and code points past U+10FFFF are refused the same way, each where it is.
TEST_F(JobSpecTest, IllFormedUtf8IsNotText) {
  struct Case {
    std::string bytes;
    std::string what;
  };
  for (const Case& c : std::vector<Case>{
           {"\xed\xa0\x80", "byte 0xED here, which is not valid UTF-8 (it starts an encoded UTF-16 surrogate"},
           {"\xed\xbf\xbf", "byte 0xED here, which is not valid UTF-8 (it starts an encoded UTF-16 surrogate"},
           {"\xc0\xaf", "byte 0xC0 here, which is not valid UTF-8 (it starts an overlong encoding)"},
           {"\xe0\x80\xaf", "byte 0xE0 here, which is not valid UTF-8 (it starts an overlong encoding)"},
           {"\xf0\x80\x80\xaf", "byte 0xF0 here, which is not valid UTF-8 (it starts an overlong encoding)"},
           {"\xf4\x90\x80\x80", "byte 0xF4 here, which is not valid UTF-8 (past U+10FFFF"},
           {"\xf5\x80\x80\x80", "byte 0xF5 here, which is not valid UTF-8 (past U+10FFFF"},
       }) {
    SpecError e = OnlyError("name: pro" + c.bytes + "be\n");
    EXPECT_THAT(e.message, HasSubstr("is not a UTF-8 text file: found " + c.what)) << e.ToString();
    EXPECT_EQ(e.line, 1);
    EXPECT_EQ(e.column, 10);
  }
  // The characters next to them are well-formed: U+D7FF, U+E000, U+10FFFF, U+0800.
  ValidSpec(std::string(kMinimal) + "# \xed\x9f\xbf \xee\x80\x80 \xf4\x8f\xbf\xbf \xe0\xa0\x80\n");
}

// A value or key with an escape sequence (YAML's "\x1b" or "\x9b", C1's CSI) was echoed raw by a
// second error on the same value, turning the terminal red; now the control character is one
// error, and no error's text holds a control character or ill-formed UTF-8 (they are \xNN).
TEST_F(JobSpecTest, ErrorsNeverEchoControlCharacters) {
  std::string yaml = kMinimal;
  yaml.replace(0, 10, "name: \"pro\\x1b[31mbe\"\n");
  ParsedSpec p = Parse(yaml);
  ASSERT_EQ(p.errors.size(), 1u) << FormatSpecErrors(p.errors);
  EXPECT_EQ(p.errors[0].ToString(), "job.yaml:1:7: name: holds the control character 0x1B; names and paths may not");

  p = Parse(WithExtra("  path: input.txt", "  cache_dir: \"c\\x9b31m\"\n") + "\"k\\x1b[31m\\x9b\": 1\n");
  const std::string all = FormatSpecErrors(p.errors);
  EXPECT_THAT(all, HasSubstr("data.cache_dir: holds the control character U+009B")) << all;
  EXPECT_THAT(all, HasSubstr("k\\x1b[31m\\u009b: unknown key")) << all;
  for (char c : all) EXPECT_TRUE(c == '\n' || (static_cast<unsigned char>(c) >= 0x20 && c != 0x7f)) << all;
  EXPECT_EQ(all.find("\xc2\x9b"), std::string::npos) << all;

  // ToString makes whatever it is given printable, ill-formed UTF-8 included; a cut never splits
  // a character.
  SpecError e{"j\x1b.yaml", 1, 2, "name", "got 'a\xed\xa0\x80\xff\x7f \xc3\xa9'"};
  EXPECT_EQ(e.ToString(), "j\\x1b.yaml:1:2: name: got 'a\\xed\\xa0\\x80\\xff\\x7f \xc3\xa9'");
  moe::v1::JobSpec spec = ValidSpec(kMinimal);
  spec.set_name(std::string(36, 'a') + "\xc3\xa9\xc3\xa9\xc3\xa9");
  const std::string name_error = FormatSpecErrors(ValidateJobSpec(spec));
  EXPECT_THAT(name_error, HasSubstr("got '" + std::string(36, 'a') + "...'")) << name_error;
}

// A value of 100000 characters went into std::regex, which recursed once per character and
// overflowed the stack: moectl validate (and moed, for a spec over gRPC) died of SIGSEGV.
TEST_F(JobSpecTest, AValueLongerThanAnyNumberIsAnErrorNotAStackOverflow) {
  const std::string digits(100000, '7');
  ExpectOnlyErrors({
      {"  d_model: 64", "  dropout: " + digits + "\n", "model.dropout", "a value 100000 characters long"},
      {"  batch_size: 8", "  seed: " + digits + "\n", "train.seed", "a value 100000 characters long"},
      {"  batch_size: 8", "  lr: 1" + digits + "\n", "train.lr", "must be a number"},
  });
  SpecError e = OnlyError(std::string(kMinimal) + "max_restarts: " + digits + "\n");
  EXPECT_EQ(e.field, "max_restarts");
  EXPECT_THAT(e.message, HasSubstr("must be an integer, got a value 100000 characters long ('777"));
  moe::v1::JobSpec spec = ValidSpec(kMinimal);
  spec.mutable_resources()->set_launcher(moe::v1::LAUNCHER_SLURM);
  spec.mutable_resources()->mutable_slurm()->set_partition("p");
  spec.mutable_resources()->mutable_slurm()->set_time_limit(digits);
  spec.set_name(std::string(100000, 'a'));
  const std::string errors = FormatSpecErrors(ValidateJobSpec(spec));
  EXPECT_THAT(errors, HasSubstr("resources.slurm.time_limit: must be a Slurm time"));
  EXPECT_THAT(errors, HasSubstr("name: must be 1 to 63 characters"));
}

// A valid file with values that are almost surely a mistake: each is a warning at its value's
// position, and the spec stays valid; a file with errors gets the errors alone.
TEST_F(JobSpecTest, LikelyMistakesAreWarningsAtTheirPositions) {
  EXPECT_TRUE(Parse(kMinimal).warnings.empty());
  const std::string yaml = WithExtra("train:", "  lr: 5\n  eval_every: 1\n  eval_batches: 500\n");
  ParsedSpec p = Parse(yaml);
  ASSERT_TRUE(p.ok()) << FormatSpecErrors(p.errors);
  ASSERT_EQ(p.warnings.size(), 2u);
  EXPECT_EQ(p.warnings[0].field, "train.lr");
  EXPECT_THAT(p.warnings[0].message, HasSubstr("5 is far above what AdamW trains with"));
  EXPECT_THAT(p.warnings[0].message, HasSubstr("did you mean 0.005?"));
  // A computed guess is printed to 6 digits, not as the double it is (0.000119999...).
  ParsedSpec p12 = Parse(WithExtra("train:", "  lr: 0.12\n"));
  ASSERT_TRUE(p12.ok()) << FormatSpecErrors(p12.errors);
  ASSERT_FALSE(p12.warnings.empty());
  EXPECT_THAT(p12.warnings[0].message, HasSubstr("0.12 is far above what AdamW trains with"));
  EXPECT_THAT(p12.warnings[0].message, HasSubstr("did you mean 0.00012?"));
  EXPECT_EQ(p.warnings[1].field, "train.eval_batches");
  EXPECT_THAT(p.warnings[1].message, HasSubstr("500 batches every step: evaluation would take about"));
  EXPECT_THAT(p.warnings[1].message, HasSubstr("times as long as the training itself"));
  for (const SpecError& w : p.warnings) {
    EXPECT_GT(w.line, 9) << w.ToString();
    EXPECT_GT(w.column, 1) << w.ToString();
  }
  // The most steps there are: counting the evaluations overflowed int and the warning went away.
  std::string most = WithExtra("train:", "  eval_every: 1\n  eval_batches: 4\n");
  p = Parse(most.replace(most.find("steps: 5000"), 11, "steps: 2147483647"));
  ASSERT_TRUE(p.ok()) << FormatSpecErrors(p.errors);
  ASSERT_EQ(p.warnings.size(), 1u);
  EXPECT_THAT(p.warnings[0].message, HasSubstr("4 batches every step: evaluation would take about 1.3 times as long"));
  // A guess only where it lands in the usual range (1e30 -> 1e27 was no help).
  p = Parse(WithExtra("train:", "  lr: 1.0e+30\n"));
  ASSERT_EQ(p.warnings.size(), 1u);
  EXPECT_THAT(p.warnings[0].message, HasSubstr("ends FAILED; give a value in that range"));
  // Evaluation shorter than training is fine: 1 batch at every one of the 5000 steps.
  EXPECT_TRUE(Parse(WithExtra("train:", "  eval_every: 1\n  eval_batches: 1\n")).warnings.empty());
  ParsedSpec bad = Parse(WithExtra("train:", "  lr: 5\n  grad_clip: -1\n"));
  EXPECT_FALSE(bad.ok());
  EXPECT_TRUE(bad.warnings.empty());
}

// Keys the job would not read are warnings at their place (the job stays valid): decay_fraction
// without wsd, the router's losses and capacity on a dense model. Before, they were taken silently
// while muon_lr without muon and the router options on a dense model are errors.
TEST_F(JobSpecTest, KeysTheJobDoesNotReadAreWarnings) {
  ParsedSpec cosine = Parse(WithExtra("train:", "  decay_fraction: 0.3\n"));
  ASSERT_TRUE(cosine.ok()) << FormatSpecErrors(cosine.errors);
  ASSERT_EQ(cosine.warnings.size(), 1u);
  EXPECT_EQ(cosine.warnings[0].field, "train.decay_fraction");
  EXPECT_THAT(cosine.warnings[0].message, HasSubstr("only schedule wsd reads it"));
  EXPECT_TRUE(Parse(WithExtra("train:", "  schedule: wsd\n  decay_fraction: 0.3\n")).warnings.empty());
  ParsedSpec dense = Parse(WithExtra("  seq_len: 32", "  moe: {aux_loss_coef: 0.02, capacity_factor: 1.5}\n"));
  ASSERT_TRUE(dense.ok()) << FormatSpecErrors(dense.errors);
  ASSERT_EQ(dense.warnings.size(), 2u);
  EXPECT_EQ(dense.warnings[0].field, "model.moe.aux_loss_coef");
  EXPECT_THAT(dense.warnings[1].message, HasSubstr("has no effect on a dense model"));
  EXPECT_GT(dense.warnings[0].line, 5);
  EXPECT_TRUE(Parse(WithExtra("  seq_len: 32", "  moe: {num_experts: 4, top_k: 2, aux_loss_coef: 0.02}\n"))
                  .warnings.empty());
}

// A decaying schedule (cosine, wsd) whose warm-up leaves it no step to decay in: the last step
// trains at the peak lr, min_lr is never reached. A warning at train.warmup_steps when the file
// asks for a decay; each verdict agrees with the schedule code's lr at the last step.
TEST_F(JobSpecTest, AWarmUpThatLeavesNoDecayIsAWarning) {
  struct Case {
    std::string extra;  // under train:
    int steps;
    std::string want;   // "" = no warning
  };
  const std::vector<Case> cases = {
      {"  warmup_steps: 5000\n  schedule: wsd\n", 5000,
       "the warm-up (5000 of the 5000 steps) leaves the wsd schedule no step to decay in: the last step trains "
       "at the peak lr 0.001 and never reaches min_lr 0.0001; lower train.warmup_steps (a tenth of the steps, 500, "
       "is usual)"},
      {"  warmup_steps: 5000\n", 5000, "leaves the cosine schedule no step to decay in"},
      // Cosine's first step past the warm-up is at the peak: one step left is none to decay in.
      {"  warmup_steps: 4999\n", 5000, "the warm-up (4999 of the 5000 steps) leaves the cosine schedule"},
      // wsd's one decay step is the last, at min_lr; cosine's second step is half way down.
      {"  warmup_steps: 4999\n  schedule: wsd\n  decay_fraction: 0.5\n", 5000, ""},
      {"  warmup_steps: 4998\n", 5000, ""},
      // Nothing to decay: a constant schedule, or min_lr = lr.
      {"  warmup_steps: 5000\n  schedule: constant\n", 5000, ""},
      {"  warmup_steps: 5000\n  min_lr: 1.0e-3\n", 5000, ""},
      // The default warm-up, min(100, steps), takes a short job whole: said when the file asks
      // for a decay, not for a job of steps alone.
      {"  schedule: cosine\n", 50, "the default warm-up (min(100, train.steps): 50 of the 50 steps)"},
      {"  min_lr: 1.0e-5\n", 50, "never reaches min_lr 1e-05"},
      {"", 50, ""},
      // One step of cosine never decays, whatever the warm-up: nothing to fix there.
      {"  warmup_steps: 1\n  eval_batches: 1\n", 1, ""},
  };
  for (const Case& c : cases) {
    std::string yaml = WithExtra("train:", c.extra);
    yaml.replace(yaml.find("steps: 5000"), 11, absl::StrCat("steps: ", c.steps));
    ParsedSpec p = Parse(yaml);
    ASSERT_TRUE(p.ok()) << c.extra << FormatSpecErrors(p.errors);
    const moe::v1::TrainSpec& t = p.spec.train();
    const bool at_peak = LearningRateAt(t, t.steps() - 1) >= t.lr() * (1 - 1e-9);
    if (c.want.empty()) {
      EXPECT_TRUE(p.warnings.empty()) << c.extra << p.warnings[0].ToString();
      continue;
    }
    ASSERT_EQ(p.warnings.size(), 1u) << c.extra;
    EXPECT_EQ(p.warnings[0].field, "train.warmup_steps");
    EXPECT_THAT(p.warnings[0].message, HasSubstr(c.want));
    EXPECT_THAT(p.warnings[0].message, HasSubstr("or raise train.steps, or set train.schedule: constant"));
    EXPECT_TRUE(at_peak) << c.extra;
    EXPECT_GE(p.warnings[0].line, 9);  // at warmup_steps, or at train: when it is the default
  }
}

// A capacity_factor whose capacity (ExpertCapacity of each rank's micro-batch: batch_size /
// (grad_accum * ranks) sequences of seq_len tokens) drops most assignments even when the
// routing is perfectly balanced, or is under one token and drops some: a warning that says
// how much is dropped at best and what to use.
TEST_F(JobSpecTest, ACapacityThatDropsMostTokensIsAWarning) {
  const std::string moe_line = "  moe: {num_experts: 8, top_k: 2, capacity_factor: 0.0125}\n";
  ParsedSpec p = Parse(WithExtra("  seq_len: 32", moe_line));
  ASSERT_TRUE(p.ok()) << FormatSpecErrors(p.errors);
  ASSERT_EQ(p.warnings.size(), 1u);
  EXPECT_EQ(p.warnings[0].field, "model.moe.capacity_factor");
  EXPECT_EQ(p.warnings[0].line, 7);
  // 8 sequences of 32 tokens, top-2 over 8 experts: 64 assignments an expert when balanced.
  ASSERT_EQ(ExpertCapacity(0.0125, 256, 2, 8), 1);
  EXPECT_THAT(p.warnings[0].message,
              HasSubstr("0.0125 lets each expert take only 1 token of a rank's micro-batch (ceil(0.0125 * 256 "
                        "tokens * top_k 2 / 8 experts), rounded up from below 1) where an even split gives each 64: "
                        "even perfectly balanced routing drops 98.4% of the tokens' expert assignments; use 1"));
  struct Case {
    std::string moe;
    std::string train;  // under train:
    std::string want;   // "" = no warning
  };
  const std::vector<Case> cases = {
      // ceil(0.3 * 256 * 2 / 8) = 20 of 64.
      {"{num_experts: 8, top_k: 2, capacity_factor: 0.3}", "", "take only 20 tokens"},
      {"{num_experts: 8, top_k: 2, capacity_factor: 0.3}", "", "drops 68.8%"},
      // Half kept is not most dropped; 1 and more keep all when balanced; 0 is dropless.
      {"{num_experts: 8, top_k: 2, capacity_factor: 0.5}", "", ""},
      {"{num_experts: 8, top_k: 2, capacity_factor: 1.25}", "", ""},
      {"{num_experts: 8, top_k: 2, capacity_factor: 0}", "", ""},
      // Per rank's micro-batch: 8 micro-batches of 1 sequence, 32 tokens, top-3 over 64 experts
      // is 1.5 assignments an expert; 0.5 of that rounds up to 1 and drops a third. The same
      // factor on one micro-batch of 256 tokens keeps half.
      {"{num_experts: 64, top_k: 3, capacity_factor: 0.5}", "  grad_accum: 8\n", "drops 33.3%"},
      {"{num_experts: 64, top_k: 3, capacity_factor: 0.5}", "  grad_accum: 8\n", "rounded up from below 1"},
      {"{num_experts: 64, top_k: 3, capacity_factor: 0.5}", "", ""},
      // Fewer assignments than experts: a capacity of 1 drops nothing when balanced.
      {"{num_experts: 64, top_k: 1, capacity_factor: 0.5}", "  grad_accum: 8\n", ""},
  };
  for (const Case& c : cases) {
    std::string yaml = WithExtra("train:", c.train);
    yaml.insert(yaml.find("data:"), absl::StrCat("  moe: ", c.moe, "\n"));
    ParsedSpec q = Parse(yaml);
    ASSERT_TRUE(q.ok()) << c.moe << FormatSpecErrors(q.errors);
    if (c.want.empty()) {
      EXPECT_TRUE(q.warnings.empty()) << c.moe << c.train << q.warnings[0].ToString();
      continue;
    }
    ASSERT_EQ(q.warnings.size(), 1u) << c.moe << c.train;
    EXPECT_THAT(q.warnings[0].message, HasSubstr(c.want));
  }
}

TEST_F(JobSpecTest, LoadJobSpecFileReadsFilesAndRefusesOthers) {
  WriteText(dir_ + "/job.yaml", kMinimal);
  ParsedSpec p = LoadJobSpecFile(dir_ + "/job.yaml");
  ASSERT_TRUE(p.ok()) << FormatSpecErrors(p.errors);
  EXPECT_EQ(p.spec.data().path(), dir_ + "/input.txt");

  for (const std::string& bad : {dir_ + "/missing.yaml", dir_ + "/gpt2"}) {
    ParsedSpec q = LoadJobSpecFile(bad);
    ASSERT_EQ(q.errors.size(), 1u);
    EXPECT_EQ(q.errors[0].file, bad);
    EXPECT_THAT(q.errors[0].ToString(),
                HasSubstr(bad == dir_ + "/gpt2" ? "is a directory" : "does not exist"));
  }
  ParsedSpec dev = LoadJobSpecFile("/dev/null");
  ASSERT_EQ(dev.errors.size(), 1u);
  EXPECT_THAT(dev.errors[0].message, HasSubstr("not a regular file"));

  absl::StatusOr<v1::JobSpec> ok = LoadJobSpec(dir_ + "/job.yaml");
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_EQ(ok->name(), "tiny");
  WriteText(dir_ + "/bad.yaml", std::string(kMinimal) + "epochs: 1\nmax_restarts: -1\n");
  absl::StatusOr<v1::JobSpec> bad = LoadJobSpec(dir_ + "/bad.yaml");
  ASSERT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(bad.status().message()), HasSubstr("bad.yaml:12:1: epochs: unknown key"));
  EXPECT_THAT(std::string(bad.status().message()), HasSubstr("\n"));
}

TEST_F(JobSpecTest, RelativePathsResolveAgainstTheBaseDir) {
  std::string yaml = WithExtra("  path: input.txt", "  cache_dir: cache/../tokens\n") +
                     "checkpoint: {dir: ckpt}\n";
  v1::JobSpec s = ValidSpec(yaml);
  EXPECT_EQ(s.data().path(), dir_ + "/input.txt");
  EXPECT_EQ(s.data().cache_dir(), dir_ + "/tokens");
  EXPECT_EQ(s.checkpoint().dir(), dir_ + "/ckpt");

  std::string abs = kMinimal;
  abs.replace(abs.find("path: input.txt"), 15, "path: " + dir_ + "/./input.txt");
  EXPECT_EQ(ParseJobSpec(abs, "job.yaml", "/nonexistent").spec.data().path(),
            dir_ + "/./input.txt");

  // The checkpoint dir may not exist yet, but must not be a file.
  SpecError e = OnlyError(kMinimal + std::string("checkpoint: {dir: input.txt}\n"));
  EXPECT_EQ(e.field, "checkpoint.dir");
  EXPECT_THAT(e.message, HasSubstr("is not a directory"));
  EXPECT_THAT(OnlyError(WithExtra("  path: input.txt", "  tokenizer_dir: gpt2\n")).message,
              HasSubstr("only used with tokenizer gpt2"));
}

// docs/job-spec.md documents every key a job file may hold, and no key it may not: each "###"
// section names its mapping (`model.moe`, or "Top level"), each table row's first column its
// keys. The keys come from the JobSpec message, as the reader takes them.
void SpecPaths(const google::protobuf::Descriptor* d, const std::string& prefix, std::set<std::string>* out) {
  for (int i = 0; i < d->field_count(); ++i) {
    const google::protobuf::FieldDescriptor* f = d->field(i);
    const std::string path = prefix.empty() ? f->name() : prefix + "." + f->name();
    out->insert(path);
    if (f->cpp_type() == google::protobuf::FieldDescriptor::CPPTYPE_MESSAGE) SpecPaths(f->message_type(), path, out);
  }
}

TEST(JobSpecDocs, EveryKeyIsDocumentedAndEveryDocumentedKeyExists) {
  std::set<std::string> keys;
  SpecPaths(moe::v1::JobSpec::descriptor(), "", &keys);
  std::ifstream in(testing::SourceDir() + "/docs/job-spec.md");
  ASSERT_TRUE(in) << "docs/job-spec.md";
  std::set<std::string> documented;
  std::string section, line;
  bool in_keys = false;
  const std::regex heading("^### (?:`([a-z_.]+)`|Top level)");
  const std::regex key("`([a-z_0-9]+)`");
  while (std::getline(in, line)) {
    if (absl::StartsWith(line, "## ")) in_keys = line == "## Keys";
    std::smatch m;
    if (in_keys && std::regex_search(line, m, heading)) section = m[1].str();
    if (!in_keys || !absl::StartsWith(line, "| ") || absl::StartsWith(line, "| key") || absl::StartsWith(line, "| ---")) {
      continue;
    }
    const std::string first = line.substr(2, line.find(" |", 2) - 2);
    for (auto it = std::sregex_iterator(first.begin(), first.end(), key); it != std::sregex_iterator(); ++it) {
      documented.insert(section.empty() ? (*it)[1].str() : section + "." + (*it)[1].str());
    }
  }
  for (const std::string& k : keys) EXPECT_TRUE(documented.count(k)) << k << " is not in docs/job-spec.md";
  for (const std::string& d : documented) EXPECT_TRUE(keys.count(d)) << d << " is documented but no job file key";
}

// The README's job.yaml reference is a valid job file (its data path is the shared text beside
// the repository, as the README says).
TEST(JobSpecDocs, TheReadmeExampleIsAValidJob) {
  std::ifstream in(testing::SourceDir() + "/README.md");
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const std::string start = "## job.yaml\n\n```yaml\n";
  const size_t at = text.find(start);
  ASSERT_NE(at, std::string::npos) << "the README has no job.yaml block";
  const size_t begin = at + start.size();
  const std::string yaml = text.substr(begin, text.find("```", begin) - begin);
  ParsedSpec p = ParseJobSpec(yaml, "README.md", testing::SourceDir());
  EXPECT_TRUE(p.ok()) << FormatSpecErrors(p.errors);
  EXPECT_TRUE(p.warnings.empty());
}

}  // namespace
}  // namespace moe
