// Checkpoints and the expert options: loss-free balancing's router biases are saved with the
// weights (blocks.{i}.moe.router_bias), sampled with, and left behind by model.init_from; a
// checkpoint is refused, with the options that differ named, by a job of another recipe, model
// shape or sequence length, whether or not the tensors would fit, or by data whose tokenizer maps
// ids otherwise (not by GPT-2 files formatted otherwise), and then not scored either; the
// training knobs may change, each change logged once at the resume.
#include <algorithm>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/files.h"
#include "gtest/gtest.h"
#include "kernels/threads.h"
#include "tests/support/paths.h"
#include "tests/support/test_jobs.h"
#include "tests/support/tiny_gpt2.h"
#include "tests/support/training_runs.h"
#include "worker/checkpoint/checkpoint.h"
#include "worker/data/dataset.h"
#include "worker/parallel/comm_single.h"
#include "worker/sample/generate.h"
#include "worker/train/checkpoint_recipe.h"
#include "worker/train/trainer.h"

namespace moe {
namespace {

TEST(RecipeDifference, NamesEachOptionThatDiffersAndReadsDefaults) {
  moe::v1::JobSpec a = testing::SmallShakespeareSpec();
  moe::v1::JobSpec b = a;
  EXPECT_EQ(RecipeDifference(a, b), "");
  b.mutable_model()->mutable_moe()->set_router_temperature(1.0);  // the default, spelled out
  b.mutable_model()->mutable_moe()->set_activation(moe::v1::ACTIVATION_SWIGLU);
  EXPECT_EQ(RecipeDifference(a, b), "");
  b.mutable_model()->mutable_moe()->set_activation(moe::v1::ACTIVATION_GELU);
  b.mutable_model()->mutable_moe()->set_router_score(moe::v1::SCORE_SIGMOID);
  EXPECT_EQ(RecipeDifference(a, b),
            "model.moe.activation: swiglu in the checkpoint, gelu in this job\n"
            "model.moe.router_score: softmax in the checkpoint, sigmoid in this job");
}

TEST(ModelShapeDifference, NamesEachShapeKeyAndReadsDefaults) {
  moe::v1::JobSpec a = testing::SmallShakespeareSpec();  // d 64, 4 heads of 16, 2 kv heads
  moe::v1::JobSpec b = a;
  EXPECT_EQ(ModelShapeDifference(a, 65, b, 65), "");
  a.mutable_model()->set_n_kv_heads(4);
  b.mutable_model()->set_n_kv_heads(0);  // its default: n_heads
  EXPECT_EQ(ModelShapeDifference(a, 65, b, 65), "");
  EXPECT_EQ(ModelShapeDifference(a, 65, b, 80), "model.vocab_size: 65 in the checkpoint, 80 in this job");
}

TEST(DataStreamDifference, NamesTheSequenceLength) {
  moe::v1::JobSpec a = testing::SmallShakespeareSpec();
  moe::v1::JobSpec b = a;
  b.mutable_model()->set_dropout(0.3);
  EXPECT_EQ(DataStreamDifference(a, b), "");
  b.mutable_model()->set_seq_len(64);
  EXPECT_EQ(DataStreamDifference(a, b), "model.seq_len: 32 in the checkpoint, 64 in this job");
}

TEST(ResumeChanges, NamesEachTrainingKnobOldToNewAndReadsDefaults) {
  moe::v1::JobSpec a = testing::SmallShakespeareSpec();
  moe::v1::JobSpec b = a;
  EXPECT_EQ(ResumeChanges(a, b), "");
  b.mutable_train()->set_beta2(0.95);                          // the default, spelled out
  b.mutable_train()->set_schedule(moe::v1::SCHEDULE_COSINE);   // likewise
  b.mutable_train()->set_decay_fraction(0.2);
  EXPECT_EQ(ResumeChanges(a, b), "");
  b.mutable_model()->set_dropout(0.1);
  b.mutable_model()->mutable_moe()->set_capacity_factor(1.25);
  b.mutable_train()->set_lr(1e-3);
  b.mutable_train()->set_beta2(0.99);
  b.mutable_train()->set_schedule(moe::v1::SCHEDULE_WSD);
  b.mutable_model()->set_seq_len(64);  // not a knob: refused apart (DataStreamDifference)
  EXPECT_EQ(ResumeChanges(a, b),
            "model.dropout 0 -> 0.1, model.moe.capacity_factor 0 -> 1.25, train.lr 0.003 -> 0.001, "
            "train.schedule cosine -> wsd, train.beta2 0.95 -> 0.99");
  // Dropout anywhere, the sampler's seed and batch, and how the step stores things: logged too.
  moe::v1::JobSpec c = a;
  c.mutable_model()->mutable_attention()->set_dropout(0.1);
  c.mutable_model()->mutable_moe()->set_expert_dropout(0.2);
  c.mutable_train()->set_seed(a.train().seed() + 1);
  c.mutable_train()->set_batch_size(a.train().batch_size() * 2);
  c.mutable_train()->set_precision(moe::v1::PRECISION_BF16);
  c.mutable_train()->set_optimizer_state(moe::v1::STATE_INT8);
  EXPECT_EQ(RecipeDifference(a, c), "");
  EXPECT_EQ(ResumeChanges(a, c),
            absl::StrCat("model.attention.dropout 0 -> 0.1, model.moe.expert_dropout 0 -> 0.2, train.seed ",
                         a.train().seed(), " -> ", a.train().seed() + 1, ", train.batch_size ", a.train().batch_size(),
                         " -> ", a.train().batch_size() * 2,
                         ", train.precision fp32 -> bf16, train.optimizer_state fp32 -> int8"));
}

class CheckpointRecipeTest : public ::testing::Test {
 protected:
  void SetUp() override {
    kernels::SetNumThreads(1);
    spec_ = testing::SmallShakespeareSpec();
    spec_.mutable_train()->set_steps(3);
    spec_.mutable_train()->set_eval_every(0);
    auto* e = spec_.mutable_model()->mutable_moe();
    e->set_bias_update_rate(0.01);
    e->set_shared_experts(1);
    auto data = LoadDataset(spec_.data());
    ASSERT_TRUE(data.ok()) << data.status();
    data_ = std::make_unique<Dataset>(std::move(*data));
    comm_ = CreateSingleProcessCommunicator();
    dir_ = testing::MakeTempDir("moe-recipe-");
    TrainerOptions opts;
    opts.checkpoint_dir = dir_;
    std::unique_ptr<Trainer> t = testing::NewTrainer(spec_, comm_.get(), data_.get(), opts);
    ASSERT_NE(t, nullptr);
    TrainOutcome outcome;
    ASSERT_TRUE(t->Run(&outcome).ok());
    biases_ = t->model().RouterBiases();
  }

  // A resume of dir_ by a job with spec: the status of its run (its log lines into logs).
  absl::Status Resume(const moe::v1::JobSpec& spec, std::vector<std::string>* logs = nullptr) {
    TrainerOptions opts;
    opts.checkpoint_dir = dir_;
    opts.resume = true;
    if (logs != nullptr) opts.on_log = [logs](const std::string& line) { logs->push_back(line); };
    std::unique_ptr<Trainer> t = testing::NewTrainer(spec, comm_.get(), data_.get(), opts);
    if (t == nullptr) return absl::InternalError("no trainer");
    TrainOutcome outcome;
    return t->Run(&outcome);
  }

  moe::v1::JobSpec spec_;
  std::unique_ptr<Dataset> data_;
  std::unique_ptr<Communicator> comm_;
  std::string dir_;
  std::vector<float> biases_;
};

TEST_F(CheckpointRecipeTest, RouterBiasesAreSavedWithTheWeightsAndSampledWith) {
  ASSERT_EQ(biases_.size(), 2u * 4u);
  float spread = 0;
  for (float b : biases_) spread = std::max(spread, std::abs(b));
  EXPECT_GT(spread, 0.f) << "three steps of balancing moved no bias";
  auto latest = LatestCheckpoint(dir_);
  ASSERT_TRUE(latest.ok()) << latest.status();
  auto ckpt = ReadCheckpoint(*latest);
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  int found = 0;
  for (const NamedTensor& t : ckpt->tensors) {
    for (int l = 0; l < 2; ++l) {
      if (t.name != "blocks." + std::to_string(l) + ".moe.router_bias") continue;
      ASSERT_EQ(t.shape, (std::vector<int64_t>{4}));
      EXPECT_EQ(t.data, std::vector<float>(biases_.begin() + 4 * l, biases_.begin() + 4 * (l + 1)));
      ++found;
    }
  }
  EXPECT_EQ(found, 2);
  // The scorer (and sampler) load the biases with the weights.
  absl::StatusOr<double> ce = ScoreCheckpoint(dir_, testing::MakeTempDir("moe-recipe-score-") + "/batch.bin");
  ASSERT_TRUE(ce.ok()) << ce.status();
  EXPECT_GT(*ce, 0.0);
}

TEST_F(CheckpointRecipeTest, ResumeUnderTheSameRecipeGoesOn) {
  moe::v1::JobSpec more = spec_;
  more.mutable_train()->set_steps(4);
  std::vector<std::string> logs;
  EXPECT_TRUE(Resume(more, &logs).ok());
  int changed = 0;
  for (const std::string& l : logs) changed += l.rfind("resume: settings changed", 0) == 0;
  EXPECT_EQ(changed, 1);
}

TEST_F(CheckpointRecipeTest, TrainingKnobsMayChangeAndAreLoggedOnceAtTheResume) {
  // Dropout, capacity and the optimizer's hyperparameters: a user's to turn between runs.
  moe::v1::JobSpec knobs = spec_;
  knobs.mutable_train()->set_steps(4);
  knobs.mutable_model()->set_dropout(0.1);
  knobs.mutable_model()->mutable_moe()->set_capacity_factor(1.5);
  auto* t = knobs.mutable_train();
  t->set_lr(1e-3);
  t->set_min_lr(1e-4);
  t->set_warmup_steps(0);
  t->set_schedule(moe::v1::SCHEDULE_CONSTANT);
  t->set_weight_decay(0.05);
  t->set_beta1(0.8);
  t->set_beta2(0.99);
  t->set_grad_clip(0.5);
  std::vector<std::string> logs;
  absl::Status st = Resume(knobs, &logs);
  ASSERT_TRUE(st.ok()) << st;
  std::vector<std::string> changed;
  for (const std::string& l : logs) {
    if (l.rfind("resume: settings changed", 0) == 0) changed.push_back(l);
  }
  ASSERT_EQ(changed.size(), 1u) << ::testing::PrintToString(logs);
  EXPECT_NE(changed[0].find(dir_ + "/step_00000003: model.dropout 0 -> 0.1, model.moe.capacity_factor 0 -> 1.5, "
                                   "train.steps 3 -> 4, train.lr 0.003 -> 0.001, train.min_lr 0.0003 -> 0.0001, "
                                   "train.warmup_steps 20 -> 0, train.schedule cosine -> constant, "
                                   "train.weight_decay 0.1 -> 0.05, train.beta1 0.9 -> 0.8, train.beta2 0.95 -> "
                                   "0.99, train.grad_clip 1 -> 0.5"),
            std::string::npos)
      << changed[0];
}

TEST_F(CheckpointRecipeTest, AnotherSequenceLengthIsRefusedNamingBothAndTheFixes) {
  // Every tensor fits (RoPE has no table), but the batches each step samples would not be the
  // ones of the run that made the checkpoint.
  moe::v1::JobSpec longer = spec_;
  longer.mutable_train()->set_steps(4);
  longer.mutable_model()->set_seq_len(64);
  absl::Status st = Resume(longer);
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  const std::string msg(st.message());
  EXPECT_NE(msg.find("another sequence length than this job's:\nmodel.seq_len: 32 in the checkpoint, 64 in this job\n"),
            std::string::npos)
      << msg;
  EXPECT_NE(msg.find("set model.seq_len back as the checkpoint has it"), std::string::npos) << msg;
  EXPECT_NE(msg.find("model.init_from: " + dir_ + "/step_00000003"), std::string::npos) << msg;
}

TEST_F(CheckpointRecipeTest, AnotherRecipeIsRefusedNamingTheOptions) {
  // Same tensors, other math: only the recipe check can tell.
  moe::v1::JobSpec sigmoid = spec_;
  sigmoid.mutable_train()->set_steps(4);
  sigmoid.mutable_model()->mutable_moe()->set_router_score(moe::v1::SCORE_SIGMOID);
  absl::Status st = Resume(sigmoid);
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  const std::string msg(st.message());
  EXPECT_NE(msg.find("was made with another recipe"), std::string::npos) << msg;
  EXPECT_NE(msg.find("model.moe.router_score: softmax in the checkpoint, sigmoid in this job"), std::string::npos) << msg;
  EXPECT_NE(msg.find("checkpoint.dir"), std::string::npos) << msg;

  // Balancing switched off, and another activation: both named.
  moe::v1::JobSpec plain = spec_;
  plain.mutable_train()->set_steps(4);
  plain.mutable_model()->mutable_moe()->set_bias_update_rate(0);
  plain.mutable_model()->mutable_moe()->set_activation(moe::v1::ACTIVATION_RELU2);
  st = Resume(plain);
  ASSERT_FALSE(st.ok());
  EXPECT_NE(std::string(st.message()).find("model.moe.activation: swiglu in the checkpoint, relu2 in this job"),
            std::string::npos)
      << st;
  EXPECT_NE(std::string(st.message()).find("model.moe.bias_update_rate: 0.01 in the checkpoint, 0 in this job"),
            std::string::npos)
      << st;
}

TEST_F(CheckpointRecipeTest, AnotherShapeWithTheSameTensorsIsRefusedNamingTheKeys) {
  // 8 heads of 8 with 4 kv heads give wqkv the shape of 4 heads of 16 with 2, and top_k no
  // tensor at all: only the spec can tell, and the keys are named before any tensor.
  moe::v1::JobSpec heads = spec_;
  heads.mutable_train()->set_steps(4);
  heads.mutable_model()->set_n_heads(8);
  heads.mutable_model()->set_n_kv_heads(4);
  heads.mutable_model()->mutable_moe()->set_top_k(1);
  absl::Status st = Resume(heads);
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  const std::string msg(st.message());
  EXPECT_NE(msg.find("does not fit this job's model:\n"
                     "model.n_heads: 4 in the checkpoint, 8 in this job\n"
                     "model.n_kv_heads: 2 in the checkpoint, 4 in this job\n"
                     "model.moe.top_k: 2 in the checkpoint, 1 in this job\n"),
            std::string::npos)
      << msg;
  EXPECT_NE(msg.find("checkpoint.dir"), std::string::npos) << msg;

  moe::v1::JobSpec wider = spec_;
  wider.mutable_train()->set_steps(4);
  wider.mutable_model()->set_d_model(32);
  st = Resume(wider);
  EXPECT_NE(std::string(st.message()).find("model.d_model: 64 in the checkpoint, 32 in this job"), std::string::npos)
      << st;
}

TEST_F(CheckpointRecipeTest, DataOfAnotherCharVocabularyIsRefusedNamingAToken) {
  // The same 65 byte values but 'a' spelled '~': every id from 'a' on means another character.
  std::string text = *ReadFile(testing::ShakespearePath());
  std::replace(text.begin(), text.end(), 'a', '~');
  const std::string path = testing::MakeTempDir("moe-recipe-text-") + "/input.txt";
  ASSERT_TRUE(WriteFileAtomic(path, text).ok());
  moe::v1::JobSpec other = spec_;
  other.mutable_train()->set_steps(4);
  other.mutable_data()->set_path(path);
  auto data = LoadDataset(other.data());
  ASSERT_TRUE(data.ok()) << data.status();
  ASSERT_EQ(data->vocab_size, data_->vocab_size);
  TrainerOptions opts;
  opts.checkpoint_dir = dir_;
  opts.resume = true;
  std::unique_ptr<Trainer> t = testing::NewTrainer(other, comm_.get(), &*data, opts);
  ASSERT_NE(t, nullptr);
  TrainOutcome outcome;
  absl::Status st = t->Run(&outcome);
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(std::string(st.message()).find("another tokenizer than this job's data gives (token id 39 is \"a\" in "
                                           "the checkpoint, \"b\" in this job's data)"),
            std::string::npos)
      << st;
}

// The scorer reads the data its checkpoint's spec.json names: when that file now maps ids
// otherwise (the same 65 byte values, 'a' spelled '~'), it refuses as a resume does instead of
// scoring another task.
TEST(ScoreCheckpoint, RefusesDataWhoseTokenizerChangedSinceTraining) {
  kernels::SetNumThreads(1);
  const std::string path = testing::MakeTempDir("moe-score-text-") + "/input.txt";
  std::string text = *ReadFile(testing::ShakespearePath());
  ASSERT_TRUE(WriteFileAtomic(path, text).ok());
  moe::v1::JobSpec spec = testing::SmallShakespeareSpec();
  spec.mutable_train()->set_steps(1);
  spec.mutable_train()->set_eval_every(0);
  spec.mutable_data()->set_path(path);
  auto data = LoadDataset(spec.data());
  ASSERT_TRUE(data.ok()) << data.status();
  TrainerOptions opts;
  opts.checkpoint_dir = testing::MakeTempDir("moe-score-ck-");
  ASSERT_NE(testing::TrainOnOneRank(spec, &*data, opts).trainer, nullptr);
  const std::string batch = testing::MakeTempDir("moe-score-out-") + "/batch.bin";
  absl::StatusOr<double> ce = ScoreCheckpoint(opts.checkpoint_dir, batch);
  ASSERT_TRUE(ce.ok()) << ce.status();
  std::replace(text.begin(), text.end(), 'a', '~');
  ASSERT_TRUE(WriteFileAtomic(path, text).ok());
  ce = ScoreCheckpoint(opts.checkpoint_dir, batch);
  ASSERT_FALSE(ce.ok());
  EXPECT_EQ(ce.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(std::string(ce.status().message()).find("now gives another tokenizer than checkpoint"), std::string::npos)
      << ce.status();
  EXPECT_NE(std::string(ce.status().message()).find("token id 39 is \"a\" in the checkpoint, \"b\" in this job's data"),
            std::string::npos)
      << ce.status();
}

// Flags that cannot work together are refused before anything is written: outputs that name
// one file, a greedy continuation that leaves no prompt in the context (with the largest that
// fits), and a sampler device that cannot run (the prompt is not echoed first).
TEST_F(CheckpointRecipeTest, ScorerAndSamplerRefuseBeforeWritingAnything) {
  const std::string out = testing::MakeTempDir("moe-score-flags-");
  ScoreExtras extras;
  extras.greedy_tokens = 5;
  extras.greedy_out = out + "/./a.bin";
  absl::StatusOr<double> ce = ScoreCheckpoint(dir_, out + "/a.bin", extras);
  ASSERT_FALSE(ce.ok());
  EXPECT_EQ(ce.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(std::string(ce.status().message()).find("--batch-out and --greedy-out both name"), std::string::npos)
      << ce.status();
  extras.greedy_out = out + "/g.bin";
  extras.greedy_tokens = 10000;
  ce = ScoreCheckpoint(dir_, out + "/a.bin", extras);
  ASSERT_FALSE(ce.ok());
  EXPECT_NE(std::string(ce.status().message()).find("--greedy 10000 leaves no prompt in seq_len 32: give at most 31"),
            std::string::npos)
      << ce.status();
  EXPECT_FALSE(std::filesystem::exists(out + "/a.bin")) << "nothing is written before the refusal";
  SampleOptions opts;
  opts.checkpoint = dir_;
  opts.prompt = "ROMEO:";
  opts.tokens = 2;
  bool ready = false;
  opts.on_ready = [&] { ready = true; };
  opts.kv_cache = false;
  opts.device = "cuda";
  absl::StatusOr<std::string> text = GenerateText(opts);
  ASSERT_FALSE(text.ok());
  EXPECT_EQ(text.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_FALSE(ready);
  opts.kv_cache = true;  // no GPU here: refused before the prompt; with one, it samples
  text = GenerateText(opts);
  EXPECT_EQ(ready, text.ok()) << text.status();
}

TEST_F(CheckpointRecipeTest, InitFromTakesTheWeightsAndBalancesAfresh) {
  // model.init_from: the weights, a fresh optimizer, and biases from 0 (the checkpoint's are
  // left behind, with a note).
  moe::v1::JobSpec fresh = spec_;
  fresh.mutable_model()->set_init_from(dir_);
  fresh.mutable_train()->set_steps(1);
  TrainerOptions opts;
  opts.checkpoint_dir = testing::MakeTempDir("moe-recipe-init-");
  std::vector<std::string> logs;
  opts.on_log = [&](const std::string& line) { logs.push_back(line); };
  std::unique_ptr<Trainer> t = testing::NewTrainer(fresh, comm_.get(), data_.get(), opts);
  ASSERT_NE(t, nullptr);
  ASSERT_TRUE(t->InitFrom(dir_).ok());
  for (float b : t->model().RouterBiases()) EXPECT_EQ(b, 0.f);
  bool noted = false;
  for (const std::string& l : logs) noted = noted || l.find("router biases") != std::string::npos;
  EXPECT_TRUE(noted) << "no note that the router biases were left behind";
  for (const std::string& l : logs) EXPECT_EQ(l.find("other recipe options"), std::string::npos) << l;

  // A sigmoid router from softmax weights: every shape fits, so the weights are taken, with a note.
  fresh.mutable_model()->mutable_moe()->set_router_score(moe::v1::SCORE_SIGMOID);
  logs.clear();
  std::unique_ptr<Trainer> sig = testing::NewTrainer(fresh, comm_.get(), data_.get(), opts);
  ASSERT_NE(sig, nullptr);
  ASSERT_TRUE(sig->InitFrom(dir_).ok());
  bool recipe_noted = false;
  for (const std::string& l : logs) {
    recipe_noted = recipe_noted || (l.find("other recipe options") != std::string::npos &&
                                    l.find("this job: model.moe.shared_experts (no gate on the shared expert), "
                                           "model.moe.router_score: sigmoid") != std::string::npos);
  }
  EXPECT_TRUE(recipe_noted) << "no note that the checkpoint's router scored otherwise";
}

TEST(CheckpointTokenizer, Gpt2FilesFormattedOtherwiseResumeAndOtherMergesAreRefusedNamingTheFile) {
  kernels::SetNumThreads(1);
  const testing::TinyGpt2 tiny;
  const std::string tokenizer_dir = testing::MakeTempDir("moe-recipe-gpt2-");
  tiny.Write(tokenizer_dir);
  moe::v1::JobSpec spec = testing::SmallShakespeareSpec();
  spec.mutable_train()->set_steps(3);
  spec.mutable_train()->set_eval_every(0);
  spec.mutable_data()->set_path(testing::WriteTempText(ReadFile(testing::ShakespearePath())->substr(0, 20000)));
  spec.mutable_data()->set_tokenizer(moe::v1::TOKENIZER_GPT2);
  spec.mutable_data()->set_tokenizer_dir(tokenizer_dir);
  std::unique_ptr<Communicator> comm = CreateSingleProcessCommunicator();
  TrainerOptions opts;
  opts.checkpoint_dir = testing::MakeTempDir("moe-recipe-gpt2-ckpt-");
  // A run of spec (its tokenizer files as they are now) over opts' directory.
  auto run = [&](const moe::v1::JobSpec& job) {
    absl::StatusOr<Dataset> data = LoadDataset(job.data());
    if (!data.ok()) return data.status();
    std::unique_ptr<Trainer> t = testing::NewTrainer(job, comm.get(), &*data, opts);
    if (t == nullptr) return absl::InternalError("no trainer");
    TrainOutcome outcome;
    return t->Run(&outcome);
  };
  ASSERT_TRUE(run(spec).ok());

  // The same tokens and merges, other bytes (key order, indentation, CRLF, a blank last line).
  tiny.Write(tokenizer_dir, /*reformatted=*/true);
  opts.resume = true;
  spec.mutable_train()->set_steps(4);
  absl::Status st = run(spec);
  EXPECT_TRUE(st.ok()) << st;

  // Two merges in the other order: the same vocabulary, other ids for some text.
  testing::TinyGpt2 swapped = tiny;
  std::swap(swapped.merges[2], swapped.merges[3]);
  swapped.Write(tokenizer_dir);
  spec.mutable_train()->set_steps(5);
  st = run(spec);
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  const std::string msg(st.message());
  EXPECT_NE(msg.find("another tokenizer than this job's data gives (" + tokenizer_dir +
                     "/vocab.bpe: merge 3 is \"e r\" in the checkpoint, \"i n\" in this job's (line 4))"),
            std::string::npos)
      << msg;
  EXPECT_NE(msg.find("Put back in data.tokenizer_dir (" + tokenizer_dir + ") the encoder.json and vocab.bpe"),
            std::string::npos)
      << msg;
}

}  // namespace
}  // namespace moe
