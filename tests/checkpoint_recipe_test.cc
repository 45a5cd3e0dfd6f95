// Checkpoints and the expert options: loss-free balancing's router biases are saved with the
// weights (blocks.{i}.moe.router_bias), sampled with, and left behind by model.init_from; a
// checkpoint is refused, with the options that differ named, by a job of another recipe or
// model shape, whether or not the tensors would fit, or by data whose tokenizer maps ids otherwise.
#include <algorithm>
#include <memory>
#include <string>
#include <vector>

#include "common/files.h"
#include "gtest/gtest.h"
#include "kernels/threads.h"
#include "tests/support/paths.h"
#include "tests/support/test_jobs.h"
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

  // A resume of dir_ by a job with spec: the status of its run.
  absl::Status Resume(const moe::v1::JobSpec& spec) {
    TrainerOptions opts;
    opts.checkpoint_dir = dir_;
    opts.resume = true;
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
  EXPECT_TRUE(Resume(more).ok());
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
}

}  // namespace
}  // namespace moe
