// Unit tests of the defaults and rules of a job spec (common/job_spec_defaults.cc and
// job_spec_checks.cc): every default, ranges, relations, Slurm, gRPC specs. The data rules (paths,
// shards, tokenizers, init_from): job_spec_data_test.cc.
#include <cstdint>
#include <limits>
#include <string>
#include <tuple>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "common/files.h"
#include "common/job_spec.h"
#include "common/sbatch_options.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/support/job_spec_fixture.h"
#include "tests/support/tiny_gpt2.h"

namespace moe {
namespace {

using ::moe::testing::JobSpecTest;
using ::moe::testing::kMinimal;
using ::moe::testing::WithExtra;
using ::moe::testing::WriteText;
using ::testing::HasSubstr;
using ::testing::IsEmpty;

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
  EXPECT_DOUBLE_EQ(s.train().beta1(), 0.9);
  EXPECT_DOUBLE_EQ(s.train().beta2(), 0.95);
  EXPECT_DOUBLE_EQ(s.train().grad_clip(), 1.0);
  EXPECT_EQ(s.train().seed(), 1337u);
  EXPECT_EQ(s.train().precision(), v1::PRECISION_FP32);
  EXPECT_EQ(s.train().eval_every(), 250);
  EXPECT_EQ(s.train().eval_batches(), 20);
  EXPECT_EQ(s.train().log_every(), 10);
  EXPECT_EQ(s.train().schedule(), v1::SCHEDULE_COSINE);
  EXPECT_DOUBLE_EQ(s.train().decay_fraction(), 0.2);
  EXPECT_DOUBLE_EQ(s.model().attention().rope_theta(), 10000);
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

TEST_F(JobSpecTest, ScheduleAndRopeThetaAreReadAndChecked) {
  v1::JobSpec s = ValidSpec(WithExtra("  batch_size: 8", "  schedule: wsd\n  decay_fraction: 0.3\n"));
  EXPECT_EQ(s.train().schedule(), v1::SCHEDULE_WSD);
  EXPECT_DOUBLE_EQ(s.train().decay_fraction(), 0.3);
  s = ValidSpec(WithExtra("  seq_len: 32", "  attention: {rope_theta: 1.0e6}\n"));
  EXPECT_DOUBLE_EQ(s.model().attention().rope_theta(), 1e6);
  ExpectOnlyErrors({
      {"  batch_size: 8", "  schedule: linear\n", "train.schedule", "must be one of cosine, wsd, constant"},
      {"  batch_size: 8", "  decay_fraction: 1.5\n", "train.decay_fraction", "at most 1"},
      {"  seq_len: 32", "  attention: {rope_theta: 0.5}\n", "model.attention.rope_theta", "greater than 1"},
      {"  seq_len: 32", "  attention: {rope_theta: -1}\n", "model.attention.rope_theta", "greater than 1"},
      {"  seq_len: 32", "  attention: {rope_theta: 1.0e39}\n", "model.attention.rope_theta", "at most 3.4e38"},
      {"  seq_len: 32", "  attention: {theta: 5}\n", "model.attention.theta", "unknown key"},
  });
}

// Keys whose 0 stands for "not set" in a gRPC spec: a file that writes 0 is refused at the value
// (wsd's decay_fraction: 0 became 0.2 without a word), while a spec over gRPC keeps the default.
TEST_F(JobSpecTest, AWrittenZeroIsNotTheDefault) {
  ExpectOnlyErrors({
      {"  batch_size: 8", "  schedule: wsd\n  decay_fraction: 0\n", "train.decay_fraction",
       "must be greater than 0 and at most 1 (the share of the steps that decays), got 0; remove the key for the "
       "default 0.2"},
      {"  batch_size: 8", "  decay_fraction: 0.0\n", "train.decay_fraction", "must be greater than 0"},
      {"  seq_len: 32", "  attention: {rope_theta: 0}\n", "model.attention.rope_theta",
       "must be greater than 1 (1e6 for Mixtral and Qwen), got 0; remove the key for the default 10000"},
      {"  seq_len: 32", "  moe: {router_temperature: 0}\n", "model.moe.router_temperature",
       "must be at least 1e-06"},
      {"  seq_len: 32", "  moe: {shared_experts: 2, shared_expert_hidden: 0}\n", "model.moe.shared_expert_hidden",
       "got 0; remove the key for the default, model.moe.expert_hidden"},
      {"  batch_size: 8", "  optimizer: muon\n  muon_lr: 0\n", "train.muon_lr",
       "got 0; remove the key for the default, train.lr"},
  });
  // One mistake, one error: min_lr's default (lr / 10) is not derived from an lr past fp32.
  EXPECT_EQ(OnlyError(WithExtra("  batch_size: 8", "  lr: 1e300\n")).field, "train.lr");
  SpecError e = OnlyError(WithExtra("  batch_size: 8", "  schedule: wsd\n  decay_fraction: 0\n"));
  EXPECT_EQ(e.line, 13);
  EXPECT_EQ(e.column, 19);
  // pretokenized: an explicit 0 is out of range, an absent key is missing; char's 0 is "count".
  auto pretokenized = [](std::string y) {
    return y.replace(y.find("path: input.txt"), 15, "path: shards\n  tokenizer: pretokenized");
  };
  e = OnlyError(pretokenized(WithExtra("  seq_len: 32", "  vocab_size: 0\n")));
  EXPECT_EQ(e.field, "model.vocab_size");
  EXPECT_EQ(e.message,
            "must be at least 1 with tokenizer pretokenized (the number of token ids the shards use: their "
            "largest id + 1), got 0");
  EXPECT_EQ(e.line, 7);
  EXPECT_THAT(OnlyError(pretokenized(kMinimal)).message, HasSubstr("is required with tokenizer pretokenized"));
  ValidSpec(WithExtra("  seq_len: 32", "  vocab_size: 0\n"));
  // Over gRPC, 0 is the default.
  v1::JobSpec grpc = ValidSpec(kMinimal);
  grpc.mutable_train()->set_schedule(v1::SCHEDULE_WSD);
  grpc.mutable_train()->set_decay_fraction(0);
  grpc.mutable_model()->mutable_attention()->set_rope_theta(0);
  grpc.mutable_model()->mutable_moe()->set_router_temperature(0);
  EXPECT_THAT(ValidateJobSpec(grpc), IsEmpty());
}

TEST_F(JobSpecTest, ShapesTheGpuBackendCannotRunAreRefusedAtValidate) {
  // Head sizes: multiples of 8 up to 256 run (128, Mixtral's; 256); 12 and 260 do not.
  auto with_heads = [&](const std::string& d_model, const std::string& device) {
    std::string y = WithExtra("  batch_size: 8", "");
    y.replace(y.find("d_model: 64"), 11, "d_model: " + d_model);
    return y + "resources: {device: " + device + "}\n";
  };
  EXPECT_THAT(Parse(with_heads("512", "cuda")).errors, IsEmpty());   // 128
  EXPECT_THAT(Parse(with_heads("1024", "cuda")).errors, IsEmpty());  // 256
  EXPECT_THAT(Parse(with_heads("320", "cuda")).errors, IsEmpty());   // 80
  for (const auto& [d_model, hd] : {std::pair{"1040", "260"}, std::pair{"48", "12"}}) {
    SpecError e = OnlyError(with_heads(d_model, "cuda"));
    EXPECT_EQ(e.field, "model.n_heads");
    EXPECT_THAT(e.message, HasSubstr(std::string("head size d_model / n_heads = ") + hd));
    EXPECT_THAT(e.message, HasSubstr("runs head sizes multiples of 8 up to 256"));
    EXPECT_THAT(Parse(with_heads(d_model, "cpu")).errors, IsEmpty());
  }
  const std::string cuda = "resources: {device: cuda}\n";
  std::string many = WithExtra("  seq_len: 32", "  moe: {num_experts: 600, top_k: 2}\n") + cuda;
  SpecError e = OnlyError(many);
  EXPECT_EQ(e.field, "model.moe.num_experts");
  EXPECT_THAT(e.message, HasSubstr("at most 512 experts per layer, got 600"));
  std::string most = WithExtra("  seq_len: 32", "  moe: {num_experts: 512, top_k: 8}\n") + cuda;
  EXPECT_THAT(Parse(most).errors, IsEmpty());
  std::string k9 = WithExtra("  seq_len: 32", "  moe: {num_experts: 16, top_k: 9}\n") + cuda;
  e = OnlyError(k9);
  EXPECT_EQ(e.field, "model.moe.top_k");
  EXPECT_THAT(e.message, HasSubstr("at most 8 experts, got 9"));
  std::string odd_f = WithExtra("  seq_len: 32", "  moe: {num_experts: 4, expert_hidden: 100}\n") + cuda;
  e = OnlyError(odd_f);
  EXPECT_EQ(e.field, "model.moe.expert_hidden");
  EXPECT_THAT(e.message, HasSubstr("multiples of 8, got 100 (use 104"));
  // The shared experts go through the same bf16 products: their hidden size too (it was accepted).
  std::string odd_fs = WithExtra("  seq_len: 32", "  moe: {num_experts: 4, shared_experts: 1, shared_expert_hidden: 12}\n");
  e = OnlyError(odd_fs + cuda);
  EXPECT_EQ(e.field, "model.moe.shared_expert_hidden");
  EXPECT_THAT(e.message, HasSubstr("multiples of 8 (the shared experts go through the routed experts' bf16 products), "
                                   "got 12 (use 16, or device: cpu)"));
  EXPECT_THAT(Parse(odd_fs).errors, IsEmpty());  // cpu
  std::string fs16 = WithExtra("  seq_len: 32", "  moe: {num_experts: 4, shared_experts: 1, shared_expert_hidden: 16}\n");
  EXPECT_THAT(Parse(fs16 + cuda).errors, IsEmpty());
  // One mistake, one error: a shared size that defaults to a bad expert_hidden is named once.
  e = OnlyError(WithExtra("  seq_len: 32", "  moe: {num_experts: 4, expert_hidden: 100, shared_experts: 2}\n") + cuda);
  EXPECT_EQ(e.field, "model.moe.expert_hidden");
}

// train.recompute: full runs on both backends (issue 17): accepted at validate for cpu and cuda.
TEST_F(JobSpecTest, RecomputeFullIsAcceptedOnBothBackends) {
  for (const std::string device : {"cpu", "cuda"}) {
    const std::string y =
        WithExtra("  batch_size: 8", "  recompute: full\n") + "resources: {device: " + device + "}\n";
    EXPECT_THAT(Parse(y).errors, IsEmpty()) << device;
    EXPECT_EQ(ValidSpec(y).train().recompute(), v1::RECOMPUTE_FULL) << device;
  }
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

  testing::TinyGpt2().Write(dir_);
  v1::JobSpec s = ValidSpec(yaml);
  EXPECT_EQ(s.model().vocab_size(), 50304);
  EXPECT_EQ(s.data().tokenizer_dir(), dir_);

  v1::JobSpec t = ValidSpec(yaml.insert(yaml.find("  tokenizer: gpt2"), "  tokenizer_dir: gpt2\n"));
  EXPECT_EQ(t.data().tokenizer_dir(), dir_ + "/gpt2");
}

TEST_F(JobSpecTest, RangesAreChecked) {
  ExpectOnlyErrors({
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
      {"  batch_size: 8", "  beta1: -0.1\n", "train.beta1", "must be at least 0 and less than 1"},
      {"  batch_size: 8", "  beta2: 1\n", "train.beta2", "must be at least 0 and less than 1 (AdamW's moment decay; 0.95"},
      {"  batch_size: 8", "  beta2: .nan\n", "train.beta2", "must be a finite number"},
      // Below 1, but 1 in the worker's fp32: AdamW's 1 - beta^t was 0 and the loss nan at step 2,
      // a dropout of 1 kept nothing; a temperature 0 in fp32 made the router's scores nan.
      {"  batch_size: 8", "  beta2: 0.99999999\n", "train.beta2",
       "is 1 in fp32, where the worker computes with it (0.99999999 rounds up); use 0.9999999 or less"},
      {"  batch_size: 8", "  beta1: 0.99999998\n", "train.beta1", "is 1 in fp32"},
      {"  seq_len: 32", "  dropout: 0.99999999\n", "model.dropout", "is 1 in fp32"},
      {"  seq_len: 32", "  attention: {dropout: 0.99999999}\n", "model.attention.dropout", "is 1 in fp32"},
      {"  seq_len: 32", "  moe: {num_experts: 4, top_k: 2, expert_dropout: 0.99999999}\n", "model.moe.expert_dropout",
       "is 1 in fp32"},
      // The bias enters only the choice of experts: with top_k = num_experts there is none.
      {"  seq_len: 32", "  moe: {num_experts: 4, top_k: 4, bias_update_rate: 0.1}\n", "model.moe.bias_update_rate",
       "has no choice to change when top_k (4) picks every one of the 4 experts; lower top_k or remove "
       "bias_update_rate"},
      {"  seq_len: 32", "  moe: {num_experts: 4, top_k: 4, expert_dropout: 0.1}\n", "model.moe.expert_dropout",
       "remove expert_dropout"},
      {"  seq_len: 32", "  moe: {num_experts: 4, router_temperature: 1.0e-300}\n", "model.moe.router_temperature",
       "must be at least 1e-06 (1 by default; below 1 sharpens the router, and the router divides the logits by it "
       "in fp32), got 1e-300"},
      {"  batch_size: 8", "  eval_every: 0\n", "train.eval_every", "must be at least 1"},
      {"  batch_size: 8", "  eval_batches: 0\n", "train.eval_batches", "must be at least 1"},
      {"  batch_size: 8", "  log_every: 0\n", "train.log_every", "must be at least 1"},
  });
  std::string zero_steps = kMinimal;
  zero_steps.replace(zero_steps.find("steps: 5000"), 11, "steps: 0");
  EXPECT_EQ(OnlyError(zero_steps).field, "train.steps");  // and no warm-up error on top
  EXPECT_EQ(OnlyError(kMinimal + std::string("resources: {ranks: 0}\n")).field, "resources.ranks");
  EXPECT_EQ(OnlyError(kMinimal + std::string("resources: {threads_per_rank: -1}\n")).field,
            "resources.threads_per_rank");
  EXPECT_EQ(OnlyError(kMinimal + std::string("resources: {threads_per_rank: 100000}\n")).message,
            "must be between 0 and 1024, got 100000");
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
  ExpectOnlyErrors({
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
  });

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
  // The short form with its value attached counts; a bare -p (which named no partition and
  // passed) and -p=NAME (sbatch reads "=NAME") are refused with the forms that work.
  ValidSpec(base + "resources:\n  launcher: slurm\n  slurm: {extra_sbatch_args: [\"-pdebug\"]}\n");
  for (const char* bad : {"-p", "--partition", "-p=debug"}) {
    const ParsedSpec p = Parse(absl::StrCat(base, "resources:\n  launcher: slurm\n  slurm: {extra_sbatch_args: [\"", bad,
                                            "\"]}\n"));
    ASSERT_FALSE(p.errors.empty()) << bad;
    EXPECT_THAT(FormatSpecErrors(p.errors), HasSubstr("-pNAME")) << bad;
  }

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
  EXPECT_THAT(OnlyError(base + "resources:\n  launcher: slurm\n  slurm: {partition: p, time_limit: "
                               "\"99999999999999999999\"}\n")
                  .message,
              HasSubstr("at most 7 digits of minutes or 6 of days"));
  EXPECT_EQ(ValidSpec(base + "resources:\n  launcher: slurm\n  slurm: {partition: p, time_limit: \"365-00:00:00\"}\n")
                .resources()
                .slurm()
                .time_limit(),
            "365-00:00:00");
  e = OnlyError(
      base + "resources:\n  launcher: slurm\n  slurm: {partition: p, extra_sbatch_args: [qos]}\n");
  EXPECT_EQ(e.field, "resources.slurm.extra_sbatch_args[0]");
  EXPECT_EQ(e.line, 14);
  EXPECT_EQ(OnlyError(base + "resources:\n  slurm: {partition: gpu}\n").field, "resources.slurm");
}

// Partition and account names that sbatch would refuse once the job is queued are refused here,
// naming the value and where to find good ones; a shell word in them is only ever a bad name.
TEST_F(JobSpecTest, SlurmNamesAreWhatSbatchTakes) {
  const std::string base = std::string(kMinimal) + "resources:\n  launcher: slurm\n  slurm: ";
  for (const std::string bad : {"gpu$(id)", "gpu`id`", "it's", "g\"pu", "gp\u00fc", "gpu;id",
                                "gpu rm", "gpu,", ",gpu", "--uid=0"}) {
    const std::string quoted = "\"" + absl::StrReplaceAll(bad, {{"\\", "\\\\"}, {"\"", "\\\""}}) + "\"";
    SpecError e = OnlyError(base + "{partition: " + quoted + "}\n");
    EXPECT_EQ(e.field, "resources.slurm.partition") << bad;
    EXPECT_THAT(e.message, HasSubstr("must be a Slurm partition name")) << bad;
    EXPECT_THAT(e.message, HasSubstr("got '" + bad + "'; sinfo lists the partitions")) << bad;
    e = OnlyError(base + "{partition: p, account: " + quoted + "}\n");
    EXPECT_EQ(e.field, "resources.slurm.account") << bad;
    EXPECT_THAT(e.message, HasSubstr("must be a Slurm account name")) << bad;
    EXPECT_THAT(e.message, HasSubstr("sacctmgr")) << bad;
  }
  v1::JobSpec s = ValidSpec(base + "{partition: \"gpu-a100,cpu_big.2\", account: proj-1.x_y}\n");
  EXPECT_EQ(s.resources().slurm().partition(), "gpu-a100,cpu_big.2");
  // More GPUs than any node holds failed only at sbatch (an invalid gres), once queued.
  SpecError g = OnlyError(base + "{partition: p, gpus_per_node: 100000}\n");
  EXPECT_EQ(g.field, "resources.slurm.gpus_per_node");
  EXPECT_THAT(g.message, HasSubstr("must be between 0 and 64, got 100000"));
  // sbatch takes the word for no limit in any case.
  for (const std::string t : {"unlimited", "Infinite", "UNLIMITED"}) {
    EXPECT_EQ(ValidSpec(base + "{partition: p, time_limit: " + t + "}\n").resources().slurm().time_limit(), t);
  }
}

// Slurm signals the batch script kSignalLeadSeconds before the limit (up to 60 s earlier) and it
// checkpoints and requeues: a limit within that signalled every run at its start, and the job
// requeued over and over. Such a limit is refused, unless a shorter --signal lead leaves time.
TEST_F(JobSpecTest, SlurmTimeLimitWithinTheCheckpointSignalIsRefused) {
  EXPECT_EQ(SlurmTimeLimitSeconds("5"), 300);
  EXPECT_EQ(SlurmTimeLimitSeconds("5:30"), 360);  // Slurm rounds up to minutes
  EXPECT_EQ(SlurmTimeLimitSeconds("1:00:00"), 3600);
  EXPECT_EQ(SlurmTimeLimitSeconds("1-2"), 93600);
  EXPECT_EQ(SlurmTimeLimitSeconds("1-0:10"), 87000);
  EXPECT_EQ(SlurmTimeLimitSeconds("0-0:0:30"), 60);
  EXPECT_EQ(SlurmTimeLimitSeconds("UNLIMITED"), 0);
  EXPECT_EQ(SlurmTimeLimitSeconds("0"), 0);
  // One parser reads --signal for the allowlist and this check: {present, checkpoint, lead}.
  using Read = std::tuple<std::string, bool, bool, int>;
  const std::string huge = "--signal=B:USR1@" + std::string(300000, '9');  // bounded, no crash
  for (const auto& [arg, present, checkpoint, lead] : std::vector<Read>{
           {"--signal=B:USR1@600", true, true, 600}, {"--signal=b:sigusr1", true, true, 60},
           {"--signal=USR1", true, false, 60}, {"--signal", true, false, -1},
           {huge, true, false, -1}, {"--qos=x", false, false, -1},
           {"--signals=B:USR1", false, false, -1}}) {
    const SbatchSignal sig = ParseSbatchSignal(arg);
    EXPECT_EQ(std::tie(sig.present, sig.checkpoint, sig.lead_seconds),
              std::tie(present, checkpoint, lead))
        << arg.substr(0, 40);
  }

  const std::string base = std::string(kMinimal) + "resources:\n  launcher: slurm\n  slurm: ";
  for (const std::string t : {"5", "6", "0:30", "0-0:06", "00:06:00"}) {
    SpecError e = OnlyError(base + "{partition: p, time_limit: \"" + t + "\"}\n");
    EXPECT_EQ(e.field, "resources.slurm.time_limit") << t;
    EXPECT_THAT(e.message, HasSubstr("'" + t + "' leaves no time to train")) << t;
    EXPECT_THAT(e.message, HasSubstr("give more than 6 minutes")) << t;
    EXPECT_THAT(e.message, HasSubstr("--signal=B:USR1@60")) << t;
  }
  for (const std::string t : {"7", "0", "unlimited", "1:00:00", "1-0"}) {
    EXPECT_EQ(ValidSpec(base + "{partition: p, time_limit: \"" + t + "\"}\n").resources().slurm().time_limit(), t);
  }
  // A job's own lead counts: 60 s leaves a 5-minute job time; 600 s does not leave 10 minutes.
  ValidSpec(base + "{partition: p, time_limit: \"5\", extra_sbatch_args: [\"--signal=B:USR1@60\"]}\n");
  SpecError e = OnlyError(base + "{partition: p, time_limit: \"10\", extra_sbatch_args: "
                                 "[\"--signal=B:USR1@600\"]}\n");
  EXPECT_THAT(e.message, HasSubstr("600 s before its limit"));
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

  // A number past fp32 (the precision training uses) that no other check bounds, once.
  s = CompleteSpec(dir_ + "/input.txt");
  s.mutable_model()->mutable_moe()->set_aux_loss_coef(1e300);
  s.mutable_train()->set_weight_decay(-std::numeric_limits<double>::infinity());
  errors = ValidateJobSpec(s);
  ASSERT_EQ(errors.size(), 2u) << FormatSpecErrors(errors);
  EXPECT_EQ(errors[0].ToString(), "train.weight_decay: must be at least 0, got -inf");  // its own check's
  EXPECT_EQ(errors[1].ToString(),
            "model.moe.aux_loss_coef: is beyond fp32's range (at most about 3.4e38), the precision training uses; "
            "got 1e+300");

  // A spec without defaults applied (all zeros) is refused field by field, never crashes.
  v1::JobSpec empty;
  errors = ValidateJobSpec(empty);
  EXPECT_GE(errors.size(), 15u);
  for (const SpecError& e : errors) EXPECT_FALSE(e.field.empty()) << e.message;
}

}  // namespace
}  // namespace moe
