// Hugging Face interchange on the CPU, no PyTorch: a tiny job trained 2 steps, exported (fp32)
// and used as model.init_from gives its weights back bit for bit; bf16 exports round each weight
// once; a sharded directory (written here: tensors split over two files with an index) reads
// back the same; mismatched shapes are reported one line per tensor; config keys our math cannot
// follow are refused by name, and so is another head split in one of our checkpoints; a dense
// model goes out as Mistral; a checkpoint directory owned by another job is refused with the path
// and the fix.
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "common/files.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kernels/threads.h"
#include "tests/support/paths.h"
#include "tests/support/test_jobs.h"
#include "tests/support/training_runs.h"
#include "worker/checkpoint/checkpoint.h"
#include "worker/data/dataset.h"
#include "worker/interchange/hf_export.h"
#include "worker/interchange/hf_import.h"
#include "worker/interchange/hf_layout.h"
#include "worker/parallel/comm_single.h"
#include "worker/train/trainer.h"

namespace moe {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;
using ::testing::Not;

// A 2-step run of the small test job (untied head, so lm_head goes through too), checkpointed.
class HfInterchange : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    kernels::SetNumThreads(1);
    spec_ = new moe::v1::JobSpec(testing::SmallShakespeareSpec());
    spec_->set_name("hf-roundtrip");
    spec_->mutable_model()->set_tie_embeddings(false);
    spec_->mutable_train()->set_steps(2);
    spec_->mutable_train()->set_eval_every(2);
    spec_->mutable_train()->set_eval_batches(1);
    data_ = new Dataset(*LoadDataset(spec_->data()));
    ckpt_dir_ = new std::string(testing::MakeTempDir("hf-ckpt-"));
    auto comm = CreateSingleProcessCommunicator();
    TrainerOptions opts;
    opts.checkpoint_dir = *ckpt_dir_;
    std::unique_ptr<Trainer> t = testing::NewTrainer(*spec_, comm.get(), data_, opts);
    ASSERT_NE(t, nullptr);
    TrainOutcome outcome;
    ASSERT_TRUE(t->Run(&outcome).ok());
  }

  // The weights a job with init_from = dir starts with (every MODEL.md tensor, flat).
  static absl::StatusOr<std::vector<float>> StartingWeights(const std::string& dir, moe::v1::JobSpec spec) {
    spec.mutable_model()->set_init_from(dir);
    auto comm = CreateSingleProcessCommunicator();
    TrainerOptions opts;
    opts.max_steps = 0;  // Run only initialises
    auto t = Trainer::Create(spec, comm.get(), data_, opts);
    if (!t.ok()) return t.status();
    TrainOutcome outcome;
    if (absl::Status st = (*t)->Run(&outcome); !st.ok()) return st;
    std::vector<float> w;
    (*t)->model().CopyToHost(ParamSet::kParams, &w);
    return w;
  }

  // The checkpoint's weights in the model's flat layout.
  static std::vector<float> CheckpointWeights(const std::function<float(float)>& f = nullptr) {
    absl::StatusOr<std::string> latest = LatestCheckpoint(*ckpt_dir_);
    EXPECT_TRUE(latest.ok());
    absl::StatusOr<Checkpoint> ckpt = ReadCheckpoint(*latest);
    EXPECT_TRUE(ckpt.ok()) << ckpt.status();
    auto comm = CreateSingleProcessCommunicator();
    auto t = Trainer::Create(*spec_, comm.get(), data_, {});
    std::vector<float> w;
    (*t)->model().CopyToHost(ParamSet::kParams, &w);
    for (const ParamInfo& info : (*t)->model().layout().params()) {
      for (const NamedTensor& nt : ckpt->tensors) {
        if (nt.name != info.name) continue;
        for (int64_t i = 0; i < info.size; ++i) w[info.offset + i] = f ? f(nt.data[i]) : nt.data[i];
      }
    }
    return w;
  }

  static moe::v1::JobSpec* spec_;
  static Dataset* data_;
  static std::string* ckpt_dir_;
};
moe::v1::JobSpec* HfInterchange::spec_ = nullptr;
Dataset* HfInterchange::data_ = nullptr;
std::string* HfInterchange::ckpt_dir_ = nullptr;

TEST_F(HfInterchange, Fp32RoundTripIsBitIdentical) {
  const std::string out = testing::MakeTempDir("hf-out-") + "/model";
  absl::StatusOr<HfExportResult> r = ExportHf(*ckpt_dir_, out, {});
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->step, 2);
  EXPECT_EQ(r->architecture, "MixtralForCausalLM");
  for (const char* f : {"config.json", "generation_config.json", "model.safetensors"}) {
    EXPECT_TRUE(fs::exists(out + "/" + f)) << f;
  }
  EXPECT_FALSE(fs::exists(out + "/vocab.json"));  // char: not representable, and said so
  ASSERT_FALSE(r->notes.empty());
  EXPECT_THAT(r->notes[0], HasSubstr("no Hugging Face equivalent"));
  const std::string config = *ReadFile(out + "/config.json");
  for (const char* want : {"\"MixtralForCausalLM\"", "\"model_type\": \"mixtral\"", "\"hidden_size\": 64",
                           "\"num_key_value_heads\": 2", "\"num_local_experts\": 4", "\"num_experts_per_tok\": 2",
                           "\"intermediate_size\": 96", "\"tie_word_embeddings\": false", "\"rope_theta\": 10000.0",
                           "\"eos_token_id\": null"}) {
    EXPECT_THAT(config, HasSubstr(want));
  }
  absl::StatusOr<SafetensorsFile> st = ReadSafetensors(out + "/model.safetensors");
  ASSERT_TRUE(st.ok()) << st.status();
  EXPECT_EQ(st->metadata.at("format"), "pt");  // transformers refuses files without it
  std::map<std::string, std::vector<int64_t>> shapes;
  for (const NamedTensor& t : st->tensors) shapes[t.name] = t.shape;
  EXPECT_EQ(shapes["model.layers.1.self_attn.q_proj.weight"], (std::vector<int64_t>{64, 64}));
  EXPECT_EQ(shapes["model.layers.1.self_attn.k_proj.weight"], (std::vector<int64_t>{32, 64}));
  EXPECT_EQ(shapes["model.layers.1.block_sparse_moe.experts.3.w1.weight"], (std::vector<int64_t>{96, 64}));
  EXPECT_EQ(shapes["model.layers.1.block_sparse_moe.experts.3.w2.weight"], (std::vector<int64_t>{64, 96}));
  EXPECT_EQ(shapes["lm_head.weight"], (std::vector<int64_t>{65, 64}));

  absl::StatusOr<std::vector<float>> got = StartingWeights(out, *spec_);
  ASSERT_TRUE(got.ok()) << got.status();
  const std::vector<float> want = CheckpointWeights();
  ASSERT_EQ(got->size(), want.size());
  EXPECT_EQ(std::memcmp(got->data(), want.data(), want.size() * sizeof(float)), 0);
  // Our own checkpoint directory works as init_from too.
  got = StartingWeights(*ckpt_dir_, *spec_);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(std::memcmp(got->data(), want.data(), want.size() * sizeof(float)), 0);
}

TEST_F(HfInterchange, Bf16ExportRoundsEachWeightOnce) {
  const std::string out = testing::MakeTempDir("hf-bf16-") + "/model";
  HfExportOptions o;
  o.dtype = TensorDtype::kBF16;
  absl::StatusOr<HfExportResult> r = ExportHf(*ckpt_dir_, out, o);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_THAT(*ReadFile(out + "/config.json"), HasSubstr("\"torch_dtype\": \"bfloat16\""));
  absl::StatusOr<std::vector<float>> got = StartingWeights(out, *spec_);
  ASSERT_TRUE(got.ok()) << got.status();
  const std::vector<float> want = CheckpointWeights([](float x) { return Bf16ToFloat(FloatToBf16(x)); });
  EXPECT_EQ(std::memcmp(got->data(), want.data(), want.size() * sizeof(float)), 0);
}

TEST_F(HfInterchange, ReadsAShardedDirectory) {
  // The exporter's own sharding (a tiny shard limit).
  const std::string root = testing::MakeTempDir("hf-shard-");
  HfExportOptions o;
  o.max_shard_bytes = 200'000;
  absl::StatusOr<HfExportResult> r = ExportHf(*ckpt_dir_, root + "/ours", o);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_TRUE(fs::exists(root + "/ours/model.safetensors.index.json"));
  EXPECT_FALSE(fs::exists(root + "/ours/model.safetensors"));
  int shards = 0;
  for (const auto& e : fs::directory_iterator(root + "/ours")) {
    shards += absl::StartsWith(e.path().filename().string(), "model-0000");
  }
  EXPECT_GT(shards, 1);
  EXPECT_EQ(static_cast<size_t>(shards) + 3, r->files.size());  // config, generation config, index
  const std::vector<float> want = CheckpointWeights();
  absl::StatusOr<std::vector<float>> got = StartingWeights(root + "/ours", *spec_);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(std::memcmp(got->data(), want.data(), want.size() * sizeof(float)), 0);

  // One written by hand, as another tool would: tensors alternate between two files (the
  // second in BF16), an index maps them, in an order unlike ours.
  ASSERT_TRUE(ExportHf(*ckpt_dir_, root + "/single", {}).ok());
  absl::StatusOr<SafetensorsFile> all = ReadSafetensors(root + "/single/model.safetensors");
  ASSERT_TRUE(all.ok());
  const std::string dir = root + "/hand";
  fs::create_directories(dir);
  fs::copy_file(root + "/single/config.json", dir + "/config.json");
  std::vector<const NamedTensor*> a, b;
  std::string map;
  for (size_t i = 0; i < all->tensors.size(); ++i) {
    const NamedTensor& t = all->tensors[all->tensors.size() - 1 - i];
    (i % 2 == 0 ? a : b).push_back(&t);
    absl::StrAppend(&map, map.empty() ? "" : ",", JsonQuote(t.name), ":",
                    i % 2 == 0 ? "\"part-a.safetensors\"" : "\"part-b.safetensors\"");
  }
  ASSERT_TRUE(WriteSafetensors(dir + "/part-a.safetensors", a, {{"format", "pt"}}).ok());
  ASSERT_TRUE(WriteSafetensors(dir + "/part-b.safetensors", b, {{"format", "pt"}}, TensorDtype::kBF16).ok());
  ASSERT_TRUE(WriteFileAtomic(dir + "/model.safetensors.index.json",
                              absl::StrCat("{\"metadata\": {\"total_size\": 1}, \"weight_map\": {", map, "}}"))
                  .ok());
  const HfShape shape = HfShape::FromSpec(*spec_, 65);
  absl::StatusOr<PretrainedWeights> w = LoadPretrained(dir, shape);
  ASSERT_TRUE(w.ok()) << w.status();
  EXPECT_THAT(w->source, HasSubstr("2 safetensors files"));
  got = StartingWeights(dir, *spec_);
  ASSERT_TRUE(got.ok()) << got.status();
  // Half the tensors went through bf16: every weight equals the fp32 one or its bf16 rounding.
  int64_t exact = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    const float r16 = Bf16ToFloat(FloatToBf16(want[i]));
    ASSERT_TRUE((*got)[i] == want[i] || (*got)[i] == r16) << i;
    exact += (*got)[i] == want[i];
  }
  EXPECT_GT(exact, 0);

  // An index naming a file that lacks its tensor is refused, naming the tensor.
  std::string bad = *ReadFile(dir + "/model.safetensors.index.json");
  bad = absl::StrReplaceAll(bad, {{"\"model.norm.weight\":\"part-a.safetensors\"", "\"model.norm.weight\":\"part-b.safetensors\""},
                                  {"\"model.norm.weight\":\"part-b.safetensors\"", "\"model.norm.weight\":\"part-a.safetensors\""}});
  ASSERT_TRUE(WriteFileAtomic(dir + "/model.safetensors.index.json", bad).ok());
  w = LoadPretrained(dir, shape);
  ASSERT_FALSE(w.ok());
  EXPECT_THAT(std::string(w.status().message()), HasSubstr("model.norm.weight: in part-"));
}

TEST_F(HfInterchange, ShapeMismatchesAreReportedPerTensor) {
  const std::string out = testing::MakeTempDir("hf-mis-") + "/model";
  ASSERT_TRUE(ExportHf(*ckpt_dir_, out, {}).ok());
  // The config describes the export; make the files disagree with the job instead.
  moe::v1::JobSpec other = *spec_;
  other.mutable_model()->mutable_moe()->set_expert_hidden(80);
  absl::StatusOr<std::vector<float>> got = StartingWeights(out, other);
  ASSERT_FALSE(got.ok());
  const std::string msg(got.status().message());
  EXPECT_THAT(msg, HasSubstr("model.init_from"));
  EXPECT_THAT(msg, HasSubstr("intermediate_size is 96 in config.json, the job's model.moe.expert_hidden is 80"));
  // With a config that agrees, the tensors themselves are named one per line.
  std::string config = *ReadFile(out + "/config.json");
  ASSERT_TRUE(WriteFileAtomic(out + "/config.json",
                              absl::StrReplaceAll(config, {{"\"intermediate_size\": 96", "\"intermediate_size\": 80"}}))
                  .ok());
  got = StartingWeights(out, other);
  ASSERT_FALSE(got.ok());
  const std::string lines(got.status().message());
  EXPECT_THAT(lines, HasSubstr("model.layers.0.block_sparse_moe.experts.0.w1.weight: shape [96, 64] in the "
                               "checkpoint, the job needs [80, 64]"));
  EXPECT_THAT(lines, HasSubstr("model.layers.1.block_sparse_moe.experts.3.w2.weight: shape [64, 96] in the "
                               "checkpoint, the job needs [64, 80]"));
  std::vector<std::string> per_tensor = absl::StrSplit(lines, "in the checkpoint, the job needs");
  EXPECT_EQ(per_tensor.size() - 1, 2u * 4 * 3);  // 2 layers x 4 experts x w1, w2, w3
}

TEST_F(HfInterchange, OurCheckpointWithAnotherHeadSplitIsRefused) {
  // 8 heads of 8 with 4 kv heads: every tensor has the shape of 4 heads of 16 with 2, so only the
  // checkpoint's spec tells (a Hugging Face config.json's num_attention_heads does the same).
  moe::v1::JobSpec other = *spec_;
  other.mutable_model()->set_n_heads(8);
  other.mutable_model()->set_n_kv_heads(4);
  absl::StatusOr<std::vector<float>> got = StartingWeights(*ckpt_dir_, other);
  ASSERT_FALSE(got.ok());
  const std::string msg(got.status().message());
  EXPECT_THAT(msg, HasSubstr("model.init_from: the tensors of checkpoint "));
  EXPECT_THAT(msg, HasSubstr("model.n_heads is 4 in the checkpoint, 8 in this job\n"
                             "model.n_kv_heads is 2 in the checkpoint, 4 in this job"));
  EXPECT_THAT(msg, Not(HasSubstr("shape ")));
}

// A file of 200,000 foreign tensors made an error of as many lines: 64 and a count.
TEST(HfProblems, ALongListIsCutWithACount) {
  std::vector<std::string> problems;
  for (int i = 0; i < 200000; ++i) problems.push_back(absl::StrCat("t", i, ": not a weight of the job's model"));
  const std::string text = JoinProblems(problems);
  EXPECT_EQ(std::count(text.begin(), text.end(), '\n'), 64);
  EXPECT_THAT(text, HasSubstr("t63: not a weight"));
  EXPECT_THAT(text, Not(HasSubstr("t64:")));
  EXPECT_THAT(text, ::testing::EndsWith("... and 199936 more (200000 in all)"));
  problems.resize(64);
  EXPECT_EQ(JoinProblems(problems), absl::StrJoin(problems, "\n"));
}

TEST_F(HfInterchange, ConfigKeysOurMathCannotFollowAreRefusedByName) {
  const std::string out = testing::MakeTempDir("hf-cfg-") + "/model";
  ASSERT_TRUE(ExportHf(*ckpt_dir_, out, {}).ok());
  const std::string config = *ReadFile(out + "/config.json");
  ASSERT_TRUE(WriteFileAtomic(out + "/config.json",
                              absl::StrReplaceAll(config, {{"\"rope_theta\": 10000.0", "\"rope_theta\": 1000000.0"},
                                                           {"\"hidden_act\": \"silu\"", "\"hidden_act\": \"gelu\""}}))
                  .ok());
  absl::StatusOr<PretrainedWeights> w = LoadPretrained(out, HfShape::FromSpec(*spec_, 65));
  ASSERT_FALSE(w.ok());
  EXPECT_THAT(std::string(w.status().message()), HasSubstr("rope_theta is 1e+06 in config.json"));
  EXPECT_THAT(std::string(w.status().message()), HasSubstr("hidden_act is \"gelu\""));
}

// A Mixtral config.json without rope_theta means transformers' default for Mixtral, 1e6 (before,
// taken as 10000 and accepted for a job at 10000); weights holding a NaN are refused by name
// (before, loaded, and the run diverged at step 1 with advice to lower the learning rate).
TEST_F(HfInterchange, AbsentRopeThetaAndNonFiniteWeightsAreRefused) {
  const std::string out = testing::MakeTempDir("hf-theta-") + "/model";
  ASSERT_TRUE(ExportHf(*ckpt_dir_, out, {}).ok());
  const std::string config = *ReadFile(out + "/config.json");
  ASSERT_THAT(config, HasSubstr("\"model_type\": \"mixtral\""));
  const std::string edited = absl::StrReplaceAll(config, {{"\"rope_theta\": 10000.0,", ""}});
  ASSERT_NE(edited, config);
  ASSERT_TRUE(WriteFileAtomic(out + "/config.json", edited).ok());
  absl::StatusOr<PretrainedWeights> w = LoadPretrained(out, HfShape::FromSpec(*spec_, 65));
  ASSERT_FALSE(w.ok());
  EXPECT_THAT(std::string(w.status().message()), HasSubstr("rope_theta is 1e+06 in config.json"));
  // A string where the number goes: named once, with no default's value said beside it.
  ASSERT_TRUE(WriteFileAtomic(out + "/config.json",
                              absl::StrReplaceAll(config, {{"\"rope_theta\": 10000.0", "\"rope_theta\": \"10000\""}}))
                  .ok());
  w = LoadPretrained(out, HfShape::FromSpec(*spec_, 65));
  ASSERT_FALSE(w.ok());
  EXPECT_THAT(std::string(w.status().message()), HasSubstr("rope_theta is \"10000\" in config.json, not a number"));
  EXPECT_THAT(std::string(w.status().message()), Not(HasSubstr("1e+06")));

  const std::string nan_dir = testing::MakeTempDir("hf-nan-") + "/model";
  ASSERT_TRUE(ExportHf(*ckpt_dir_, nan_dir, {}).ok());
  absl::StatusOr<SafetensorsFile> file = ReadSafetensors(nan_dir + "/model.safetensors", {});
  ASSERT_TRUE(file.ok()) << file.status();
  std::vector<NamedTensor> tensors = file->tensors;
  tensors[0].data[1] = std::nanf("");
  ASSERT_TRUE(WriteSafetensors(nan_dir + "/model.safetensors", tensors, {{"format", "pt"}}).ok());
  w = LoadPretrained(nan_dir, HfShape::FromSpec(*spec_, 65));
  ASSERT_FALSE(w.ok());
  EXPECT_THAT(std::string(w.status().message()),
              HasSubstr(tensors[0].name + " in model.safetensors: element 1 is NaN")) << w.status();
}

// Keys with the wrong kind of value: before, "hidden_size": "64" read as missing, a string
// rms_norm_eps as the default (accepted), and "tie_word_embeddings": "yes" as false.
TEST_F(HfInterchange, ConfigValuesOfTheWrongKindAreNamedAsSuch) {
  const std::string out = testing::MakeTempDir("hf-kind-") + "/model";
  ASSERT_TRUE(ExportHf(*ckpt_dir_, out, {}).ok());
  const std::string config = *ReadFile(out + "/config.json");
  const std::string edited = absl::StrReplaceAll(config, {{"\"hidden_size\": 64", "\"hidden_size\": \"64\""},
                                                          {"\"rms_norm_eps\": 1e-05", "\"rms_norm_eps\": \"x\""},
                                                          {"\"tie_word_embeddings\": false", "\"tie_word_embeddings\": \"yes\""}});
  ASSERT_NE(edited, config);
  ASSERT_TRUE(WriteFileAtomic(out + "/config.json", edited).ok());
  absl::StatusOr<PretrainedWeights> w = LoadPretrained(out, HfShape::FromSpec(*spec_, 65));
  ASSERT_FALSE(w.ok());
  const std::string message(w.status().message());
  EXPECT_THAT(message, HasSubstr("hidden_size is \"64\" in config.json, not a number"));
  EXPECT_THAT(message, HasSubstr("rms_norm_eps is \"x\" in config.json, not a number"));
  EXPECT_THAT(message, HasSubstr("tie_word_embeddings is \"yes\" in config.json, not true or false"));
  EXPECT_THAT(message, ::testing::Not(HasSubstr("hidden_size is missing")));
}

// config.json read as transformers reads it: transformers 5's rope_parameters object (before, its
// theta was not seen and the type's default stood in), an absent rms_norm_eps as the type's default
// (1e-6 but for Mixtral; before, 1e-5 for all), a value of the wrong kind for a string key, and a
// num_experts_per_tok below 1 (before, both passed).
TEST(HfConfigCheck, ReadsKeysAsTransformersDoes) {
  HfShape moe;
  moe.vocab = 65, moe.d = 64, moe.layers = 2, moe.heads = 4, moe.kv_heads = 4, moe.head_dim = 16;
  moe.experts = 4, moe.top_k = 2, moe.ffn = 96, moe.tied = false, moe.seq_len = 64;
  HfShape dense = moe;
  dense.experts = 1, dense.top_k = 1;
  auto check = [](const HfShape& s, const std::string& json) {
    std::vector<std::string> notes;
    return std::string(CheckHfConfig(json, "config.json", s, 10000, &notes).message());
  };
  const std::string mixtral = HfConfigJson(moe, {}), mistral = HfConfigJson(dense, {});
  ASSERT_EQ(check(moe, mixtral), "");
  ASSERT_EQ(check(dense, mistral), "");
  auto edit = [](const std::string& json, const std::string& from, const std::string& to) {
    std::string out = absl::StrReplaceAll(json, {{from, to}});
    EXPECT_NE(out, json) << from;
    return out;
  };
  auto with_rope = [&](const std::string& value) {
    return check(moe, edit(mixtral, "\"rope_theta\": 10000.0,", "\"rope_parameters\": " + value + ","));
  };
  EXPECT_EQ(with_rope("{\"rope_type\": \"default\", \"rope_theta\": 10000}"), "");
  EXPECT_THAT(with_rope("{\"rope_type\": \"default\", \"rope_theta\": 5e5}"),
              HasSubstr("rope_theta is 500000 in config.json"));
  EXPECT_THAT(with_rope("{\"rope_type\": \"yarn\", \"rope_theta\": 10000}"),
              HasSubstr("rope_parameters.rope_type is \"yarn\""));
  EXPECT_THAT(with_rope("7"), HasSubstr("rope_parameters is 7 in config.json, not an object"));

  const std::string eps = "\"rms_norm_eps\": 1e-05,";
  EXPECT_EQ(check(moe, edit(mixtral, eps, "")), "");
  EXPECT_THAT(check(dense, edit(mistral, eps, "")),
              HasSubstr("rms_norm_eps is 1e-06 (absent from config.json: transformers' default for mistral); this "
                        "job's RMSNorm uses 1e-05 (set model.norm_eps: 1e-06 to match)"));
  // A job with model.norm_eps 1e-6 (Qwen's, Llama 1's) reads such a config, absent or written.
  HfShape dense6 = dense;
  dense6.norm_eps = 1e-6;
  const std::string mistral6 = HfConfigJson(dense6, {});
  ASSERT_THAT(mistral6, HasSubstr("\"rms_norm_eps\": 1e-06,"));
  EXPECT_EQ(check(dense6, mistral6), "");
  EXPECT_EQ(check(dense6, edit(mistral6, "\"rms_norm_eps\": 1e-06,", "")), "");
  EXPECT_THAT(check(dense, mistral6), HasSubstr("rms_norm_eps is 1e-06 in config.json; this job's RMSNorm uses "
                                                "1e-05 (set model.norm_eps: 1e-06 to match)"));

  EXPECT_THAT(check(moe, edit(mixtral, "\"hidden_act\": \"silu\"", "\"hidden_act\": 1")),
              HasSubstr("hidden_act is 1 in config.json, not a string"));
  for (const std::string k : {"0", "-1", "1.5", "5"}) {
    EXPECT_THAT(check(moe, edit(mixtral, "\"num_experts_per_tok\": 2", "\"num_experts_per_tok\": " + k)),
                HasSubstr("not a whole number from 1 to its 4 experts")) << k;
  }
}

TEST_F(HfInterchange, ExportRefusesANonEmptyDirectory) {
  const std::string out = testing::MakeTempDir("hf-full-");
  ASSERT_TRUE(WriteFileAtomic(out + "/keep.txt", "x").ok());
  absl::StatusOr<HfExportResult> r = ExportHf(*ckpt_dir_, out, {});
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("is not empty"));
  EXPECT_TRUE(fs::exists(out + "/keep.txt"));
  // A link to nothing is refused before anything is written (it failed at the end, at the move).
  fs::create_symlink(out + "/absent", out + "-dangling");
  r = ExportHf(*ckpt_dir_, out + "-dangling", {});
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("is a symbolic link to " + out + "/absent, which does not exist"));
  fs::remove(out + "-dangling");
  // An empty directory is fine, however it is named: written in place (before, "dir/." failed to
  // rename and a link was replaced by a new directory, its target left empty).
  const std::string empty = testing::MakeTempDir("hf-empty-");
  EXPECT_TRUE(ExportHf(*ckpt_dir_, empty, {}).ok());
  EXPECT_TRUE(fs::exists(empty + "/config.json"));
  const std::string dot = testing::MakeTempDir("hf-dot-");
  absl::StatusOr<HfExportResult> in_dot = ExportHf(*ckpt_dir_, dot + "/.", {});
  ASSERT_TRUE(in_dot.ok()) << in_dot.status();
  EXPECT_TRUE(fs::exists(dot + "/config.json"));
  const std::string target = testing::MakeTempDir("hf-target-"), link = target + "-link";
  fs::create_directory_symlink(target, link);
  ASSERT_TRUE(ExportHf(*ckpt_dir_, link, {}).ok());
  EXPECT_TRUE(fs::is_symlink(link));
  EXPECT_TRUE(fs::exists(target + "/config.json"));
  for (const fs::directory_entry& e : fs::directory_iterator(target)) {
    EXPECT_FALSE(absl::StartsWith(e.path().filename().string(), ".partial")) << e.path();
  }
}

// The pid of a process that has exited (and been waited for).
int DeadPid() {
  const pid_t child = ::fork();
  if (child == 0) ::_exit(0);
  ::waitpid(child, nullptr, 0);
  return child;
}

TEST_F(HfInterchange, ExportRemovesTheLeftoversOfAnExportThatDiedNotALiveOnes) {
  // A killed export into an existing directory left its hidden .partial-PID inside: the retry
  // said "not empty" for ever. A dead PID's folder goes (and one beside a new directory too).
  const std::string out = testing::MakeTempDir("hf-retry-");
  const std::string dead = absl::StrCat(out, "/.partial-", DeadPid());
  ASSERT_TRUE(MakeDirs(dead).ok());
  ASSERT_TRUE(WriteFileAtomic(dead + "/config.json", "{").ok());
  absl::StatusOr<HfExportResult> r = ExportHf(*ckpt_dir_, out, {});
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_FALSE(fs::exists(dead));
  EXPECT_TRUE(fs::exists(out + "/config.json"));
  // One left by an earlier export with this process's PID (containers reuse PIDs) goes too.
  const std::string same_pid = testing::MakeTempDir("hf-same-pid-");
  ASSERT_TRUE(MakeDirs(absl::StrCat(same_pid, "/.partial-", ::getpid())).ok());
  ASSERT_TRUE(ExportHf(*ckpt_dir_, same_pid, {}).ok());
  EXPECT_FALSE(fs::exists(absl::StrCat(same_pid, "/.partial-", ::getpid())));
  const std::string fresh = testing::MakeTempDir("hf-parent-") + "/model";
  const std::string beside = absl::StrCat(fresh, ".partial-", DeadPid());
  ASSERT_TRUE(MakeDirs(beside).ok());
  ASSERT_TRUE(ExportHf(*ckpt_dir_, fresh, {}).ok());
  EXPECT_FALSE(fs::exists(beside));
  // A live process's folder (pid 1 is alive) is another export under way: it stays, and the
  // directory is not empty.
  const std::string busy = testing::MakeTempDir("hf-busy-");
  ASSERT_TRUE(MakeDirs(busy + "/.partial-1").ok());
  absl::StatusOr<HfExportResult> refused = ExportHf(*ckpt_dir_, busy, {});
  ASSERT_FALSE(refused.ok());
  EXPECT_THAT(std::string(refused.status().message()), HasSubstr("is not empty"));
  EXPECT_TRUE(fs::exists(busy + "/.partial-1"));
}

// Trains spec (its steps) into a fresh checkpoint directory; *params: the weights it ends with.
std::string TrainCheckpoint(const moe::v1::JobSpec& spec, Dataset* data, std::vector<float>* params) {
  const std::string ckpt = testing::MakeTempDir(spec.name() + "-");
  auto comm = CreateSingleProcessCommunicator();
  TrainerOptions opts;
  opts.checkpoint_dir = ckpt;
  std::unique_ptr<Trainer> t = testing::NewTrainer(spec, comm.get(), data, opts);
  EXPECT_NE(t, nullptr);
  if (t == nullptr) return ckpt;
  TrainOutcome outcome;
  EXPECT_TRUE(t->Run(&outcome).ok());
  t->model().CopyToHost(ParamSet::kParams, params);
  return ckpt;
}

// A job of spec's shape initialised from the Hugging Face directory hf (no step taken): its weights.
std::vector<float> ImportedParams(moe::v1::JobSpec spec, Dataset* data, const std::string& hf) {
  spec.mutable_model()->set_init_from(hf);
  auto comm = CreateSingleProcessCommunicator();
  TrainerOptions opts;
  opts.max_steps = 0;
  std::vector<float> got;
  std::unique_ptr<Trainer> t = testing::NewTrainer(spec, comm.get(), data, opts);
  EXPECT_NE(t, nullptr);
  if (t == nullptr) return got;
  TrainOutcome outcome;
  EXPECT_TRUE(t->Run(&outcome).ok());
  t->model().CopyToHost(ParamSet::kParams, &got);
  return got;
}

TEST(HfInterchangeDense, DenseModelGoesOutAsMistralAndComesBack) {
  kernels::SetNumThreads(1);
  moe::v1::JobSpec spec = testing::SmallShakespeareSpec();
  spec.set_name("hf-dense");
  spec.mutable_model()->mutable_moe()->set_num_experts(1);
  spec.mutable_model()->mutable_moe()->set_top_k(1);
  spec.mutable_train()->set_steps(1);
  spec.mutable_train()->set_eval_every(1);
  spec.mutable_train()->set_eval_batches(1);
  Dataset data = *LoadDataset(spec.data());
  std::vector<float> want;
  const std::string ckpt = TrainCheckpoint(spec, &data, &want);

  const std::string out = testing::MakeTempDir("hf-dense-out-") + "/m";
  absl::StatusOr<HfExportResult> r = ExportHf(ckpt, out, {});
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->architecture, "MistralForCausalLM");
  const std::string config = *ReadFile(out + "/config.json");
  EXPECT_THAT(config, HasSubstr("\"model_type\": \"mistral\""));
  EXPECT_THAT(config, Not(HasSubstr("num_local_experts")));
  absl::StatusOr<SafetensorsFile> st = ReadSafetensors(out + "/model.safetensors");
  ASSERT_TRUE(st.ok());
  bool has_gate_proj = false;
  for (const NamedTensor& nt : st->tensors) has_gate_proj |= nt.name == "model.layers.0.mlp.gate_proj.weight";
  EXPECT_TRUE(has_gate_proj);

  const std::vector<float> got = ImportedParams(spec, &data, out);
  ASSERT_EQ(got.size(), want.size());
  EXPECT_EQ(std::memcmp(got.data(), want.data(), want.size() * sizeof(float)), 0);
}

// QK-norm is Qwen3's attention: the export is Qwen3MoeForCausalLM with self_attn.q_norm /
// k_norm and Qwen3-MoE's expert names, and comes back bit for bit; a Mixtral directory is
// refused by a QK-norm job (and a Qwen3 one by a job without it); a recipe option no stock
// architecture represents is refused at export, naming the option.
TEST(HfInterchangeQwen3, QkNormJobGoesOutAsQwen3MoeAndComesBack) {
  kernels::SetNumThreads(1);
  moe::v1::JobSpec spec = testing::SmallShakespeareSpec();
  spec.set_name("hf-qwen3");
  spec.mutable_model()->mutable_attention()->set_qk_norm(true);
  spec.mutable_model()->mutable_attention()->set_rope_theta(1e6);
  spec.mutable_train()->set_steps(2);
  spec.mutable_train()->set_eval_every(2);
  spec.mutable_train()->set_eval_batches(1);
  Dataset data = *LoadDataset(spec.data());
  std::vector<float> want;
  const std::string ckpt = TrainCheckpoint(spec, &data, &want);

  const std::string out = testing::MakeTempDir("hf-qwen3-out-") + "/m";
  absl::StatusOr<HfExportResult> r = ExportHf(ckpt, out, {});
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->architecture, "Qwen3MoeForCausalLM");
  const std::string config = *ReadFile(out + "/config.json");
  EXPECT_THAT(config, HasSubstr("\"model_type\": \"qwen3_moe\""));
  EXPECT_THAT(config, HasSubstr("\"norm_topk_prob\": true"));
  EXPECT_THAT(config, HasSubstr("\"moe_intermediate_size\": 96"));
  EXPECT_THAT(config, HasSubstr("\"rope_theta\": 1000000.0"));
  absl::StatusOr<SafetensorsFile> st = ReadSafetensors(out + "/model.safetensors");
  ASSERT_TRUE(st.ok());
  std::map<std::string, std::vector<int64_t>> names;
  for (const NamedTensor& nt : st->tensors) names[nt.name] = nt.shape;
  EXPECT_EQ(names["model.layers.1.self_attn.q_norm.weight"], (std::vector<int64_t>{16}));
  EXPECT_EQ(names["model.layers.1.self_attn.k_norm.weight"], (std::vector<int64_t>{16}));
  EXPECT_EQ(names["model.layers.0.mlp.gate.weight"], (std::vector<int64_t>{4, 64}));
  EXPECT_EQ(names["model.layers.0.mlp.experts.3.down_proj.weight"], (std::vector<int64_t>{64, 96}));
  EXPECT_EQ(names.count("model.layers.0.block_sparse_moe.gate.weight"), 0u);

  const std::vector<float> got = ImportedParams(spec, &data, out);
  ASSERT_EQ(got.size(), want.size());
  EXPECT_EQ(std::memcmp(got.data(), want.data(), want.size() * sizeof(float)), 0);

  // The same directory, a job without QK-norm: refused with the fix.
  moe::v1::JobSpec plain = spec;
  plain.mutable_model()->set_init_from(out);
  plain.mutable_model()->mutable_attention()->set_qk_norm(false);
  auto comm = CreateSingleProcessCommunicator();
  TrainerOptions opts;
  opts.max_steps = 0;
  TrainOutcome outcome;
  auto refused = Trainer::Create(plain, comm.get(), &data, opts);
  if (refused.ok()) {
    absl::Status run = (*refused)->Run(&outcome);
    EXPECT_FALSE(run.ok());
    EXPECT_THAT(run.message(), HasSubstr("qwen3_moe has QK-norm"));
  } else {
    EXPECT_THAT(refused.status().message(), HasSubstr("qwen3_moe has QK-norm"));
  }
}

TEST(HfInterchangeQwen3, OptionsNoStockArchitectureHoldsAreRefusedByName) {
  moe::v1::JobSpec spec = testing::SmallShakespeareSpec();
  EXPECT_TRUE(HfUnrepresentable(spec).empty());
  spec.mutable_model()->mutable_attention()->set_qk_norm(true);
  EXPECT_TRUE(HfUnrepresentable(spec).empty());
  spec.mutable_model()->mutable_attention()->set_gate(true);
  spec.mutable_model()->mutable_moe()->set_shared_experts(1);
  spec.mutable_model()->mutable_moe()->set_router_score(moe::v1::SCORE_SIGMOID);
  const std::vector<std::string> no = HfUnrepresentable(spec);
  ASSERT_EQ(no.size(), 3u);
  EXPECT_THAT(no[0], HasSubstr("model.attention.gate"));
  EXPECT_THAT(no[1], HasSubstr("model.moe.shared_experts"));
  EXPECT_THAT(no[2], HasSubstr("sigmoid"));
  // A Mixtral config.json read by a QK-norm job, and a Qwen3-MoE one by a plain job.
  HfShape qk = HfShape::FromSpec(spec, 65);
  HfShape base = HfShape::FromSpec(testing::SmallShakespeareSpec(), 65);
  std::vector<std::string> notes;
  absl::Status a = CheckHfConfig(HfConfigJson(base, {}), "mixtral", qk, qk.rope_theta, &notes);
  EXPECT_THAT(a.message(), HasSubstr("has no QK-norm"));
  absl::Status b = CheckHfConfig(HfConfigJson(qk, {}), "qwen", base, base.rope_theta, &notes);
  EXPECT_THAT(b.message(), HasSubstr("has QK-norm"));
  EXPECT_TRUE(CheckHfConfig(HfConfigJson(qk, {}), "qwen", qk, qk.rope_theta, &notes).ok());
}

TEST(CheckpointOwner, ADirectoryAnotherJobOwnsIsRefusedWithThePathAndTheFix) {
  kernels::SetNumThreads(1);
  moe::v1::JobSpec spec = testing::SmallShakespeareSpec();
  spec.mutable_train()->set_steps(1);
  spec.mutable_train()->set_eval_every(1);
  spec.mutable_train()->set_eval_batches(1);
  Dataset data = *LoadDataset(spec.data());
  const std::string dir = testing::MakeTempDir("owner-");
  auto comm = CreateSingleProcessCommunicator();
  auto run = [&](const std::string& owner, bool resume) {
    TrainerOptions opts;
    opts.checkpoint_dir = dir;
    opts.checkpoint_owner = owner;
    opts.resume = resume;
    auto t = Trainer::Create(spec, comm.get(), &data, opts);
    EXPECT_TRUE(t.ok());
    TrainOutcome outcome;
    return (*t)->Run(&outcome);
  };
  ASSERT_TRUE(run("job j-000001 of /state/jobs/j-000001", false).ok());
  EXPECT_EQ(*ReadFile(dir + "/.moe-owner"), "job j-000001 of /state/jobs/j-000001\n");
  // The owner again (a restart, or moectl resume): fine.
  EXPECT_TRUE(run("job j-000001 of /state/jobs/j-000001", true).ok());
  // The owner starting afresh over its earlier run's checkpoints: refused (it would overwrite some
  // and leave the newer ones for a later resume to take), naming the newest and the fixes.
  {
    absl::Status st = run("job j-000001 of /state/jobs/j-000001", false);
    ASSERT_FALSE(st.ok());
    EXPECT_EQ(st.code(), absl::StatusCode::kFailedPrecondition);
    EXPECT_THAT(std::string(st.message()),
                HasSubstr(absl::StrCat("holds this job's checkpoints of an earlier run (newest ", dir, "/step_")));
    EXPECT_THAT(std::string(st.message()), HasSubstr("--resume"));
  }
  // Another job, fresh or resuming: refused, naming the directory, the owner and the fixes.
  for (bool resume : {false, true}) {
    absl::Status st = run("job j-000002 of /state/jobs/j-000002", resume);
    ASSERT_FALSE(st.ok());
    EXPECT_EQ(st.code(), absl::StatusCode::kFailedPrecondition);
    const std::string msg(st.message());
    EXPECT_THAT(msg, HasSubstr(absl::StrCat("checkpoint directory ", dir, " belongs to job j-000001")));
    EXPECT_THAT(msg, HasSubstr("give this job its own checkpoint.dir"));
    EXPECT_THAT(msg, HasSubstr("model.init_from"));
  }
  // A directory with checkpoints and no marker (made before markers, or by hand): refused for a
  // fresh start, adopted by a resume.
  fs::remove(dir + "/.moe-owner");
  absl::Status st = run("standalone job test-small", false);
  ASSERT_FALSE(st.ok());
  EXPECT_THAT(std::string(st.message()), HasSubstr("is not empty and no job owns it"));
  EXPECT_TRUE(run("standalone job test-small", true).ok());
  EXPECT_EQ(*ReadFile(dir + "/.moe-owner"), "standalone job test-small\n");
}

}  // namespace
}  // namespace moe
