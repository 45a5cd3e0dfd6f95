// Unit tests of the job-spec validator (common/job_spec.h) and the model arithmetic
// (common/model_stats.h): defaults, every rule, positions, suggestions, paths, gRPC specs.
#include "common/job_spec.h"

#include <sys/stat.h>

#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "common/model_stats.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/support/paths.h"

namespace moe {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;
using ::testing::IsEmpty;

void WriteText(const std::string& path, const std::string& text) {
  fs::create_directories(fs::path(path).parent_path());
  std::ofstream(path, std::ios::binary) << text;
}

// A temp directory holding what the jobs refer to: a text file, GPT-2 tokenizer files and
// token shards.
class JobSpecTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = moe::testing::MakeTempDir("job_spec_test_");
    WriteText(dir_ + "/input.txt",
              "First Citizen:\nBefore we proceed any further, hear me speak.\n");
    WriteText(dir_ + "/gpt2/encoder.json", "{}");
    WriteText(dir_ + "/gpt2/vocab.bpe", "#version: 0.2\n");
    WriteText(dir_ + "/shards/train_000.bin", "\x01\x02");
    WriteText(dir_ + "/shards/train_001.bin", "\x03\x04");
  }
  void TearDown() override { fs::remove_all(dir_); }

  ParsedSpec Parse(const std::string& yaml) { return ParseJobSpec(yaml, "job.yaml", dir_); }

  // The one error of a parse that must fail with exactly one.
  SpecError OnlyError(const std::string& yaml) {
    ParsedSpec p = Parse(yaml);
    EXPECT_EQ(p.errors.size(), 1u) << FormatSpecErrors(p.errors);
    return p.errors.empty() ? SpecError{} : p.errors[0];
  }

  // A valid spec with every default applied.
  v1::JobSpec ValidSpec(const std::string& yaml) {
    ParsedSpec p = Parse(yaml);
    EXPECT_TRUE(p.ok()) << FormatSpecErrors(p.errors);
    return p.spec;
  }

  std::string dir_;
};

// The required keys only; line numbers below refer to this layout.
constexpr char kMinimal[] = R"(name: tiny
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

std::string WithExtra(const std::string& section_line, const std::string& extra) {
  std::string yaml = kMinimal;
  size_t at = yaml.find(section_line);
  EXPECT_NE(at, std::string::npos) << section_line;
  at = yaml.find('\n', at) + 1;
  return yaml.insert(at, extra);
}

TEST_F(JobSpecTest, MinimalSpecGetsEveryDefault) {
  v1::JobSpec s = ValidSpec(kMinimal);
  EXPECT_EQ(s.name(), "tiny");
  EXPECT_EQ(s.model().d_model(), 64);
  EXPECT_EQ(s.model().n_kv_heads(), 4);  // = n_heads
  EXPECT_EQ(s.model().vocab_size(), 0);  // char: fixed by the text
  EXPECT_TRUE(s.model().tie_embeddings());
  EXPECT_EQ(s.model().dropout(), 0.0);
  EXPECT_EQ(s.model().moe().num_experts(), 1);
  EXPECT_EQ(s.model().moe().top_k(), 1);
  EXPECT_EQ(s.model().moe().expert_hidden(), 256);  // 4 * d_model
  EXPECT_EQ(s.model().moe().capacity_factor(), 0.0);
  EXPECT_DOUBLE_EQ(s.model().moe().aux_loss_coef(), 0.01);
  EXPECT_DOUBLE_EQ(s.model().moe().z_loss_coef(), 0.001);
  EXPECT_EQ(s.data().path(), dir_ + "/input.txt");
  EXPECT_EQ(s.data().tokenizer(), v1::TOKENIZER_CHAR);
  EXPECT_DOUBLE_EQ(s.data().val_fraction(), 0.1);
  EXPECT_EQ(s.data().tokenizer_dir(), "");
  EXPECT_EQ(s.data().cache_dir(), "");
  EXPECT_EQ(s.train().steps(), 5000);
  EXPECT_EQ(s.train().batch_size(), 8);
  EXPECT_EQ(s.train().grad_accum(), 1);
  EXPECT_DOUBLE_EQ(s.train().lr(), 1e-3);
  EXPECT_DOUBLE_EQ(s.train().min_lr(), 1e-4);
  EXPECT_EQ(s.train().warmup_steps(), 100);
  EXPECT_DOUBLE_EQ(s.train().weight_decay(), 0.1);
  EXPECT_DOUBLE_EQ(s.train().grad_clip(), 1.0);
  EXPECT_EQ(s.train().seed(), 1337u);
  EXPECT_EQ(s.train().precision(), v1::PRECISION_FP32);
  EXPECT_EQ(s.train().eval_every(), 250);
  EXPECT_EQ(s.train().eval_batches(), 20);
  EXPECT_EQ(s.train().log_every(), 10);
  EXPECT_EQ(s.resources().ranks(), 1);
  EXPECT_EQ(s.resources().device(), v1::DEVICE_CPU);
  EXPECT_EQ(s.resources().launcher(), v1::LAUNCHER_LOCAL);
  EXPECT_EQ(s.resources().threads_per_rank(), 0);
  EXPECT_FALSE(s.resources().has_slurm());
  EXPECT_EQ(s.checkpoint().dir(), "");
  EXPECT_EQ(s.checkpoint().every(), 1000);
  EXPECT_EQ(s.checkpoint().keep(), 3);
  EXPECT_EQ(s.max_restarts(), 0);
  EXPECT_THAT(ValidateJobSpec(s), IsEmpty());
}

TEST_F(JobSpecTest, DerivedDefaultsFollowTheGivenValues) {
  std::string yaml = WithExtra("  batch_size: 8", "  lr: 3.0e-4\n");
  yaml.replace(yaml.find("steps: 5000"), 11, "steps: 40");
  yaml.replace(yaml.find("d_model: 64"), 11, "d_model: 96");
  yaml.replace(yaml.find("n_heads: 4"), 10, "n_heads: 3");
  v1::JobSpec s = ValidSpec(yaml);
  EXPECT_DOUBLE_EQ(s.train().min_lr(), 3e-5);          // lr / 10
  EXPECT_EQ(s.train().warmup_steps(), 40);             // 100, capped at steps
  EXPECT_EQ(s.model().n_kv_heads(), 3);                // n_heads
  EXPECT_EQ(s.model().moe().expert_hidden(), 4 * 96);  // 4 * d_model
}

TEST_F(JobSpecTest, Gpt2DefaultsVocabAndTokenizerDir) {
  std::string yaml = kMinimal;
  yaml.replace(yaml.find("input.txt"), 9, "input.txt\n  tokenizer: gpt2");
  // The tokenizer files sit in gpt2/, not beside input.txt: the default dir lacks them.
  ParsedSpec p = Parse(yaml);
  ASSERT_EQ(p.errors.size(), 1u) << FormatSpecErrors(p.errors);
  EXPECT_EQ(p.errors[0].field, "data.tokenizer_dir");
  EXPECT_THAT(p.errors[0].message, HasSubstr("lacks encoder.json and vocab.bpe"));
  EXPECT_EQ(p.errors[0].line, 7);  // 'data:' holds the defaulted key

  WriteText(dir_ + "/encoder.json", "{}");
  WriteText(dir_ + "/vocab.bpe", "");
  v1::JobSpec s = ValidSpec(yaml);
  EXPECT_EQ(s.model().vocab_size(), 50304);
  EXPECT_EQ(s.data().tokenizer_dir(), dir_);

  v1::JobSpec t = ValidSpec(yaml.insert(yaml.find("  tokenizer: gpt2"), "  tokenizer_dir: gpt2\n"));
  EXPECT_EQ(t.data().tokenizer_dir(), dir_ + "/gpt2");
}

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
                         {"99999999999", "must be an integer between"}}) {
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
              HasSubstr("must be one of cpu, cuda"));
  EXPECT_THAT(OnlyError(kMinimal + std::string("resources: {launcher: k8s}\n")).message,
              HasSubstr("must be one of local, slurm"));
}

TEST_F(JobSpecTest, RangesAreChecked) {
  struct Case {
    std::string section_line;
    std::string extra;
    std::string field;
    std::string message;
  };
  const std::vector<Case> cases = {
      {"  seq_len: 32", "  dropout: 1\n", "model.dropout",
       "must be at least 0 and less than 1, got 1"},
      {"  seq_len: 32", "  dropout: -0.5\n", "model.dropout", "must be at least 0 and less than 1"},
      {"  seq_len: 32", "  vocab_size: -1\n", "model.vocab_size", "must be between 0 and"},
      {"  seq_len: 32", "  n_kv_heads: 0\n", "model.n_kv_heads", "must be between 1 and"},
      {"  seq_len: 32", "  moe: {num_experts: 0}\n", "model.moe.num_experts",
       "must be between 1 and"},
      {"  seq_len: 32", "  moe: {top_k: 0}\n", "model.moe.top_k", "must be at least 1, got 0"},
      {"  seq_len: 32", "  moe: {expert_hidden: -1}\n", "model.moe.expert_hidden",
       "must be between 1"},
      {"  seq_len: 32", "  moe: {capacity_factor: -1}\n", "model.moe.capacity_factor",
       "must be at least 0"},
      {"  seq_len: 32", "  moe: {aux_loss_coef: -1}\n", "model.moe.aux_loss_coef",
       "must be at least 0"},
      {"  seq_len: 32", "  moe: {z_loss_coef: -1}\n", "model.moe.z_loss_coef",
       "must be at least 0"},
      {"  path: input.txt", "  val_fraction: 0\n", "data.val_fraction",
       "greater than 0 and less than 1"},
      {"  path: input.txt", "  val_fraction: 1\n", "data.val_fraction",
       "greater than 0 and less than 1"},
      {"  batch_size: 8", "  grad_accum: 0\n", "train.grad_accum", "must be at least 1, got 0"},
      {"  batch_size: 8", "  lr: 0\n", "train.lr", "must be greater than 0, got 0"},
      {"  batch_size: 8", "  min_lr: -1e-5\n", "train.min_lr", "must be at least 0"},
      {"  batch_size: 8", "  warmup_steps: -1\n", "train.warmup_steps",
       "must be at least 0, got -1"},
      {"  batch_size: 8", "  weight_decay: -0.1\n", "train.weight_decay", "must be at least 0"},
      {"  batch_size: 8", "  grad_clip: -1\n", "train.grad_clip", "must be at least 0"},
      {"  batch_size: 8", "  eval_every: 0\n", "train.eval_every", "must be at least 1"},
      {"  batch_size: 8", "  eval_batches: 0\n", "train.eval_batches", "must be at least 1"},
      {"  batch_size: 8", "  log_every: 0\n", "train.log_every", "must be at least 1"},
  };
  for (const Case& c : cases) {
    SpecError e = OnlyError(WithExtra(c.section_line, c.extra));
    EXPECT_EQ(e.field, c.field) << c.extra;
    EXPECT_THAT(e.message, HasSubstr(c.message)) << c.extra;
  }
  std::string zero_steps = kMinimal;
  zero_steps.replace(zero_steps.find("steps: 5000"), 11, "steps: 0");
  EXPECT_EQ(OnlyError(zero_steps).field, "train.steps");  // and no warm-up error on top
  EXPECT_EQ(OnlyError(kMinimal + std::string("resources: {ranks: 0}\n")).field, "resources.ranks");
  EXPECT_EQ(OnlyError(kMinimal + std::string("resources: {threads_per_rank: -1}\n")).field,
            "resources.threads_per_rank");
  EXPECT_EQ(OnlyError(kMinimal + std::string("checkpoint: {keep: 0}\n")).field, "checkpoint.keep");
  EXPECT_EQ(OnlyError(kMinimal + std::string("checkpoint: {every: -1}\n")).field,
            "checkpoint.every");
  EXPECT_EQ(OnlyError(kMinimal + std::string("max_restarts: -1\n")).field, "max_restarts");
}

TEST_F(JobSpecTest, NameMustBeALowercaseLabel) {
  for (const std::string& name :
       std::vector<std::string>{"Tiny", "my_job", "\"\"", std::string(64, 'a')}) {
    std::string yaml = kMinimal;
    yaml.replace(0, 10, "name: " + name);
    SpecError e = OnlyError(yaml);
    EXPECT_EQ(e.field, "name") << name;
    EXPECT_THAT(e.message, HasSubstr("1 to 63 characters from a-z, 0-9 and '-'"));
  }
  std::string yaml = kMinimal;
  yaml.replace(0, 10, "name: " + std::string(63, '7'));
  ValidSpec(yaml);
}

TEST_F(JobSpecTest, RelationsNameTheWrongFieldWithTheNumbers) {
  struct Case {
    std::string section_line;
    std::string extra;
    std::string field;
    std::string message;
  };
  const std::vector<Case> cases = {
      {"  seq_len: 32", "  moe: {num_experts: 8, top_k: 9}\n", "model.moe.top_k",
       "must be between 1 and num_experts (8), got 9"},
      {"  seq_len: 32", "  n_kv_heads: 3\n", "model.n_kv_heads", "must divide n_heads (4), got 3"},
      {"  seq_len: 32", "  n_kv_heads: 8\n", "model.n_kv_heads", "must divide n_heads (4), got 8"},
      {"  batch_size: 8", "  grad_accum: 3\n", "train.batch_size",
       "must be a multiple of resources.ranks * train.grad_accum (1 * 3 = 3), got 8"},
      {"  batch_size: 8", "  lr: 1.0e-3\n  min_lr: 2.0e-3\n", "train.min_lr",
       "must be between 0 and train.lr (0.001), got 0.002"},
      {"  batch_size: 8", "  warmup_steps: 5001\n", "train.warmup_steps",
       "must be between 0 and train.steps (5000), got 5001"},
      {"  batch_size: 8", "  precision: bf16\n", "train.precision",
       "bf16 needs resources.device cuda"},
  };
  for (const Case& c : cases) {
    SpecError e = OnlyError(WithExtra(c.section_line, c.extra));
    EXPECT_EQ(e.field, c.field) << c.extra;
    EXPECT_THAT(e.message, HasSubstr(c.message)) << c.extra;
  }

  std::string heads = kMinimal;
  heads.replace(heads.find("n_heads: 4"), 10, "n_heads: 5");
  SpecError e = OnlyError(heads);
  EXPECT_EQ(e.field, "model.d_model");
  EXPECT_EQ(e.message, "must be a multiple of n_heads (5), got 64");

  std::string odd = kMinimal;
  odd.replace(odd.find("n_heads: 4"), 10, "n_heads: 64");  // head size 1
  e = OnlyError(odd);
  EXPECT_EQ(e.field, "model.n_heads");
  EXPECT_THAT(e.message,
              HasSubstr("even head size d_model / n_heads for RoPE pairs, got 64 / 64 = 1"));

  std::string three_ranks = WithExtra("  seq_len: 32", "  moe: {num_experts: 8, top_k: 2}\n");
  three_ranks.replace(three_ranks.find("batch_size: 8"), 13, "batch_size: 24");
  e = OnlyError(three_ranks + "resources: {ranks: 3}\n");
  EXPECT_EQ(e.field, "resources.ranks");
  EXPECT_THAT(e.message, HasSubstr("must divide model.moe.num_experts (8)"));

  // Dense models (E = 1) are data parallel only: any rank count that divides the batch.
  std::string dense = kMinimal;
  dense.replace(dense.find("batch_size: 8"), 13, "batch_size: 9");
  ValidSpec(dense + "resources: {ranks: 3}\n");
}

TEST_F(JobSpecTest, VocabularyDependsOnTheTokenizer) {
  std::string gpt2 = WithExtra("  path: input.txt", "  tokenizer: gpt2\n  tokenizer_dir: gpt2\n");
  SpecError e = OnlyError(gpt2.insert(gpt2.find("data:"), "  vocab_size: 50000\n"));
  EXPECT_EQ(e.field, "model.vocab_size");
  EXPECT_EQ(
      e.message,
      "must be at least 50257 for tokenizer gpt2 (50304 is the usual padded size), got 50000");

  // char: any vocab (0 = counted from the text).
  ValidSpec(WithExtra("  seq_len: 32", "  vocab_size: 65\n"));

  std::string shards = kMinimal;
  shards.replace(shards.find("path: input.txt"), 15, "path: shards\n  tokenizer: pretokenized");
  e = OnlyError(shards);
  EXPECT_EQ(e.field, "model.vocab_size");
  EXPECT_THAT(e.message, HasSubstr("is required with tokenizer pretokenized"));
  ValidSpec(shards.insert(shards.find("data:"), "  vocab_size: 50304\n"));
}

TEST_F(JobSpecTest, DataPathMustExistAndFitTheTokenizer) {
  auto with_path = [](const std::string& path, const std::string& extra = "") {
    std::string y = kMinimal;
    y.replace(y.find("path: input.txt"), 15, "path: " + path + extra);
    return y.insert(y.find("data:"), "  vocab_size: 512\n");
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

  ValidSpec(with_path("shards", pre));
  ValidSpec(with_path("shards/train_000.bin", pre));
  v1::JobSpec glob = ValidSpec(with_path("\"shards/train_*.bin\"", pre));
  EXPECT_EQ(glob.data().path(), dir_ + "/shards/train_*.bin");
  EXPECT_THAT(OnlyError(with_path("\"shards/val_*.bin\"", pre)).message,
              HasSubstr("matches no .bin shard"));
  EXPECT_THAT(OnlyError(with_path("gpt2", pre)).message, HasSubstr("holds no .bin shard"));
  EXPECT_THAT(OnlyError(with_path("input.txt", pre)).message,
              HasSubstr("is not a .bin token shard"));
  EXPECT_THAT(OnlyError(with_path("none.bin", pre)).message, HasSubstr("does not exist"));
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

TEST_F(JobSpecTest, UnknownKeysSuggestTheNearestKnownOne) {
  std::string yaml = kMinimal;
  yaml.replace(yaml.find("n_layers"), 8, "n_layer");
  SpecError e = OnlyError(yaml);  // no "n_layers missing" on top
  EXPECT_EQ(e.ToString(), "job.yaml:4:3: model.n_layer: unknown key; did you mean 'n_layers'?");

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

TEST_F(JobSpecTest, SlurmLauncher) {
  const std::string base = std::string(kMinimal);
  SpecError e = OnlyError(base + "resources: {launcher: slurm}\n");
  EXPECT_EQ(e.field, "resources.slurm.partition");
  EXPECT_THAT(e.message, HasSubstr("is required with launcher slurm"));

  v1::JobSpec s = ValidSpec(base +
                            "resources:\n  ranks: 4\n  device: cuda\n  launcher: slurm\n"
                            "  slurm: {partition: gpu, nodes: 2, time_limit: \"1-02:00:00\"}\n");
  EXPECT_EQ(s.resources().slurm().ranks_per_node(), 2);
  EXPECT_EQ(s.resources().slurm().gpus_per_node(), 2);
  s = ValidSpec(
      base +
      "resources:\n  launcher: slurm\n  slurm: {extra_sbatch_args: [\"--partition=cpu\"]}\n");
  EXPECT_EQ(s.resources().slurm().nodes(), 1);
  EXPECT_EQ(s.resources().slurm().gpus_per_node(), 0);

  e = OnlyError(base +
                "resources:\n  ranks: 4\n  launcher: slurm\n  slurm: {partition: p, nodes: 2, "
                "ranks_per_node: 3}\n");
  EXPECT_EQ(e.message, "nodes (2) * ranks_per_node (3) must equal resources.ranks (4)");
  e = OnlyError(base +
                "resources:\n  ranks: 2\n  device: cuda\n  launcher: slurm\n  slurm: {partition: "
                "p, gpus_per_node: 1}\n");
  EXPECT_EQ(e.field, "resources.slurm.gpus_per_node");
  EXPECT_THAT(
      OnlyError(base + "resources:\n  launcher: slurm\n  slurm: {partition: p, time_limit: 2h}\n")
          .message,
      HasSubstr("must be a Slurm time"));
  e = OnlyError(
      base + "resources:\n  launcher: slurm\n  slurm: {partition: p, extra_sbatch_args: [qos]}\n");
  EXPECT_EQ(e.field, "resources.slurm.extra_sbatch_args[0]");
  EXPECT_EQ(e.line, 14);
  EXPECT_EQ(OnlyError(base + "resources:\n  slurm: {partition: gpu}\n").field, "resources.slurm");
}

// A complete spec as it would arrive over gRPC.
v1::JobSpec CompleteSpec(const std::string& data_path) {
  v1::JobSpec s;
  s.set_name("grpc-job");
  v1::ModelSpec* m = s.mutable_model();
  m->set_d_model(384);
  m->set_n_layers(6);
  m->set_n_heads(6);
  m->set_n_kv_heads(6);
  m->set_seq_len(256);
  m->set_vocab_size(65);
  m->set_tie_embeddings(true);
  m->mutable_moe()->set_num_experts(8);
  m->mutable_moe()->set_top_k(2);
  m->mutable_moe()->set_expert_hidden(512);
  s.mutable_data()->set_path(data_path);
  s.mutable_data()->set_tokenizer(v1::TOKENIZER_CHAR);
  s.mutable_data()->set_val_fraction(0.1);
  v1::TrainSpec* t = s.mutable_train();
  t->set_steps(5000);
  t->set_batch_size(64);
  t->set_grad_accum(1);
  t->set_lr(1e-3);
  t->set_min_lr(1e-4);
  t->set_warmup_steps(100);
  t->set_precision(v1::PRECISION_FP32);
  t->set_eval_every(250);
  t->set_eval_batches(20);
  t->set_log_every(10);
  s.mutable_resources()->set_ranks(2);
  s.mutable_resources()->set_device(v1::DEVICE_CPU);
  s.mutable_resources()->set_launcher(v1::LAUNCHER_LOCAL);
  s.mutable_checkpoint()->set_every(1000);
  s.mutable_checkpoint()->set_keep(3);
  return s;
}

TEST_F(JobSpecTest, ValidateJobSpecChecksAProtoWithFieldPathsOnly) {
  v1::JobSpec s = CompleteSpec(dir_ + "/input.txt");
  EXPECT_THAT(ValidateJobSpec(s), IsEmpty());

  s.mutable_model()->mutable_moe()->set_top_k(9);
  std::vector<SpecError> errors = ValidateJobSpec(s);
  ASSERT_EQ(errors.size(), 1u);
  EXPECT_EQ(errors[0].file, "");
  EXPECT_EQ(errors[0].line, 0);
  EXPECT_EQ(errors[0].ToString(), "model.moe.top_k: must be between 1 and num_experts (8), got 9");

  s = CompleteSpec("input.txt");
  s.mutable_train()->set_precision(v1::PRECISION_UNSPECIFIED);
  s.mutable_resources()->set_ranks(3);
  s.clear_name();
  errors = ValidateJobSpec(s);
  // (batch_size 64 is not checked against the 3 ranks: ranks is already reported wrong.)
  ASSERT_EQ(errors.size(), 4u) << FormatSpecErrors(errors);
  EXPECT_EQ(
      FormatSpecErrors(errors),
      "name: must be 1 to 63 characters from a-z, 0-9 and '-', got ''\n"
      "data.path: must be an absolute path (moectl resolves relative paths against the job "
      "file's directory), got input.txt\n"
      "train.precision: must be one of fp32, bf16, got unspecified (0)\n"
      "resources.ranks: must divide model.moe.num_experts (8) so that every rank holds the same "
      "number of experts, got 3");

  // A spec without defaults applied (all zeros) is refused field by field, never crashes.
  v1::JobSpec empty;
  errors = ValidateJobSpec(empty);
  EXPECT_GE(errors.size(), 15u);
  for (const SpecError& e : errors) EXPECT_FALSE(e.field.empty()) << e.message;
}

// ---------------------------------------------------------------------------------------------
// Model arithmetic, against docs/MODEL.md's table and reference_moe.py's active_params().

v1::JobSpec Reference(int vocab, int d, int layers, int heads, int experts, int k, int ffn, int seq,
                      int batch) {
  v1::JobSpec s;
  v1::ModelSpec* m = s.mutable_model();
  m->set_vocab_size(vocab);
  m->set_d_model(d);
  m->set_n_layers(layers);
  m->set_n_heads(heads);
  m->set_n_kv_heads(heads);
  m->set_seq_len(seq);
  m->set_tie_embeddings(true);
  m->mutable_moe()->set_num_experts(experts);
  m->mutable_moe()->set_top_k(k);
  m->mutable_moe()->set_expert_hidden(ffn);
  s.mutable_train()->set_batch_size(batch);
  s.mutable_train()->set_grad_accum(1);
  s.mutable_train()->set_precision(v1::PRECISION_FP32);
  s.mutable_resources()->set_ranks(1);
  return s;
}

// reference_moe.py: L * (4 d^2 + k 3 d f + d E + 2 d) + V d + d.
int64_t ReferenceActive(int64_t V, int64_t d, int64_t L, int64_t E, int64_t k, int64_t f) {
  return L * (4 * d * d + k * 3 * d * f + d * E + 2 * d) + V * d + d;
}

// Rounds to three significant figures, as the table prints.
double ThreeFigures(double v) {
  double scale = std::pow(10.0, std::floor(std::log10(v)) - 2);
  return std::round(v / scale) * scale;
}

TEST(ModelStatsTest, MatchesTheReferenceTable) {
  struct Row {
    v1::JobSpec spec;
    double active;  // MODEL.md, 3 significant figures
    double total;
    int64_t reference_active;
  };
  const std::vector<Row> rows = {
      {Reference(65, 384, 6, 6, 8, 2, 512, 256, 64), 10.7e6, 31.9e6,
       ReferenceActive(65, 384, 6, 8, 2, 512)},
      {Reference(50304, 768, 12, 12, 8, 2, 1536, 1024, 16), 152e6, 407e6,
       ReferenceActive(50304, 768, 12, 8, 2, 1536)},
      {Reference(50304, 1024, 16, 16, 32, 4, 1024, 1024, 16), 321e6, 1.73e9,
       ReferenceActive(50304, 1024, 16, 32, 4, 1024)},
  };
  for (const Row& r : rows) {
    ModelStats s = ComputeModelStats(r.spec);
    EXPECT_EQ(s.active_params, r.reference_active);
    EXPECT_DOUBLE_EQ(ThreeFigures(static_cast<double>(s.active_params)), r.active);
    EXPECT_DOUBLE_EQ(ThreeFigures(static_cast<double>(s.total_params)), r.total);
    const v1::ModelSpec& m = r.spec.model();
    EXPECT_DOUBLE_EQ(s.flops_per_token, 6.0 * static_cast<double>(s.active_params) +
                                            6.0 * m.n_layers() * m.d_model() * m.seq_len());
    EXPECT_EQ(s.params_per_rank, s.total_params);  // one rank holds every expert
    EXPECT_EQ(s.weight_bytes, 4 * s.total_params);
    EXPECT_EQ(s.grad_bytes, 4 * s.total_params);
    EXPECT_EQ(s.optimizer_bytes, 8 * s.total_params);
  }
  // Exact values for tiny: 8 experts of 3 * 384 * 512 per layer, 2 of them active.
  ModelStats tiny = ComputeModelStats(rows[0].spec);
  EXPECT_EQ(tiny.total_params, 31898880);
  EXPECT_EQ(tiny.active_params, 10665216);
}

TEST(ModelStatsTest, VariantsChangeTheCountsAsTheShapesSay) {
  const v1::JobSpec tiny = Reference(65, 384, 6, 6, 8, 2, 512, 256, 64);
  const ModelStats base = ComputeModelStats(tiny);

  v1::JobSpec untied = tiny;
  untied.mutable_model()->set_tie_embeddings(false);
  EXPECT_EQ(ComputeModelStats(untied).total_params - base.total_params, 65 * 384);
  EXPECT_EQ(ComputeModelStats(untied).active_params - base.active_params, 65 * 384);

  v1::JobSpec gqa = tiny;  // wqkv: (H + 2 Hkv) hd x D instead of 3 D x D
  gqa.mutable_model()->set_n_kv_heads(2);
  EXPECT_EQ(base.total_params - ComputeModelStats(gqa).total_params, 6 * 384 * (2 * 4 * 64));

  v1::JobSpec dense = Reference(65, 384, 6, 6, 1, 1, 1024, 256, 64);  // no router
  ModelStats d = ComputeModelStats(dense);
  EXPECT_EQ(d.total_params, d.active_params);
  EXPECT_EQ(d.total_params, 6 * (4 * 384 * 384 + 3 * 384 * 1024 + 2 * 384) + 65 * 384 + 384);

  // Two ranks: each holds half of the experts and the replicated rest.
  v1::JobSpec two = tiny;
  two.mutable_resources()->set_ranks(2);
  ModelStats t = ComputeModelStats(two);
  const int64_t experts = 6 * 8 * 3 * 384 * 512;
  EXPECT_EQ(t.params_per_rank, base.total_params - experts / 2);
  EXPECT_EQ(t.optimizer_bytes, 8 * t.params_per_rank);
  // ... and half of the batch: half of the activations; bf16 and grad_accum halve them again.
  EXPECT_EQ(t.activation_bytes * 2, base.activation_bytes);
  v1::JobSpec bf16 = two;
  bf16.mutable_train()->set_precision(v1::PRECISION_BF16);
  EXPECT_EQ(ComputeModelStats(bf16).activation_bytes * 2, t.activation_bytes);
  v1::JobSpec accum = two;
  accum.mutable_train()->set_grad_accum(2);
  EXPECT_EQ(ComputeModelStats(accum).activation_bytes * 2, t.activation_bytes);
  EXPECT_EQ(ComputeModelStats(accum).weight_bytes, t.weight_bytes);

  // The activation formula of model_stats.cc, for tiny on one rank.
  const int64_t tokens = 64 * 256;
  const int64_t per_block = 6 * 384 + 3 * 384 + 6 * 256 + 2 * 8 + 2 * (2 * 384 + 3 * 512);
  EXPECT_EQ(base.activation_bytes, tokens * (6 * per_block + 2 * 384 + 2 * 65) * 4);
}

}  // namespace
}  // namespace moe
