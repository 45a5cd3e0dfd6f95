// What the checkpoint tools (moe-worker --sample, --score, --export) and the worker's flags do with
// input a user got wrong: a checkpoint whose spec.json was damaged or edited (its manifest made
// to match, so only the contents are wrong), a path that is no checkpoint, data that changed
// since the job trained, flag values out of range. Each is refused with the checkpoint or flag and
// what is wrong (exit 1 or 2), never a crash (SIGFPE, abort) nor a silent export of a model that
// its tensors do not make.
#include <sys/wait.h>

#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "common/files.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/support/daemon_harness.h"
#include "tests/support/paths.h"
#include "tests/support/test_jobs.h"
#include "tests/support/training_runs.h"
#include "worker/checkpoint/checkpoint.h"
#include "worker/data/dataset.h"

namespace moe {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;
using ::testing::Not;
using testing::CommandResult;
using testing::RunCommand;

std::string Worker() { return testing::BinDir() + "/moe-worker"; }

// A checkpoint of SmallShakespeareSpec (d 64, 2 layers, 4 heads, 2 kv heads, seq 32, 4 experts
// top-2, hidden 96) after one step, made once.
class CheckpointInputs : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    moe::v1::JobSpec spec = testing::SmallShakespeareSpec();
    spec.set_name("ckpt-inputs");
    spec.mutable_train()->set_steps(1);
    spec.mutable_train()->set_warmup_steps(0);
    spec.mutable_train()->set_eval_every(1);
    spec.mutable_train()->set_eval_batches(1);
    Dataset data = *LoadDataset(spec.data());
    const std::string dir = testing::MakeTempDir("ckpt-inputs-");
    TrainerOptions opts;
    opts.checkpoint_dir = dir;
    ASSERT_NE(testing::TrainOnOneRank(spec, &data, opts).trainer, nullptr);
    absl::StatusOr<std::string> latest = LatestCheckpoint(dir);
    ASSERT_TRUE(latest.ok()) << latest.status();
    *good_ = *latest;
  }

  // A copy of the good checkpoint with from -> to in its spec.json, the manifest rewritten to
  // match (sizes and checksums), so that only the spec is wrong.
  static std::string WithSpecEdit(const std::string& from, const std::string& to,
                                  const std::string& file = "spec.json") {
    const std::string dir = testing::MakeTempDir("ckpt-edited-") + "/step_00000001";
    fs::copy(*good_, dir, fs::copy_options::recursive);
    std::string spec = *ReadFile(dir + "/" + file);
    const size_t at = spec.find(from);
    EXPECT_NE(at, std::string::npos) << from << " is not in " << spec;
    if (at != std::string::npos) spec.replace(at, from.size(), to);
    EXPECT_TRUE(WriteFileAtomic(dir + "/" + file, spec).ok());
    std::string manifest;
    for (absl::string_view line : absl::StrSplit(*ReadFile(dir + "/MANIFEST"), '\n', absl::SkipEmpty())) {
      std::vector<std::string> f = absl::StrSplit(line, ' ');
      if (f.size() == 4 && f[0] == "file") {
        const std::string bytes = *ReadFile(dir + "/" + f[1]);
        absl::StrAppendFormat(&manifest, "file %s %d %016x\n", f[1], bytes.size(), Xxh64(bytes.data(), bytes.size()));
      } else {
        absl::StrAppend(&manifest, line, "\n");
      }
    }
    EXPECT_TRUE(WriteFileAtomic(dir + "/MANIFEST", manifest).ok());
    return dir;
  }

  static CommandResult Sample(const std::string& ckpt) {
    return RunCommand({Worker(), "--sample", ckpt, "--prompt", "ROMEO", "--tokens", "3", "--device", "cpu"}, {}, 120);
  }
  static CommandResult Score(const std::string& ckpt) {
    return RunCommand({Worker(), "--score", ckpt, "--batch-out", testing::MakeTempDir("score-") + "/batch.bin"}, {},
                      120);
  }
  static CommandResult Export(const std::string& ckpt) {
    return RunCommand({Worker(), "--export", ckpt, "--format", "hf", "--out", testing::MakeTempDir("export-") + "/hf"},
                      {}, 120);
  }

  static inline std::unique_ptr<std::string> good_ = std::make_unique<std::string>();
};

TEST_F(CheckpointInputs, TheGoodCheckpointSamplesScoresAndExports) {
  for (const CommandResult& r : {Sample(*good_), Score(*good_), Export(*good_)}) {
    EXPECT_EQ(r.exit_code, 0) << r.err;
  }
}

// Each edit makes a spec no model can be built from; before, --sample and --score died of it
// (SIGFPE on 0 heads, an abort on seq_len 0 or top_k above the experts) and --export wrote it.
TEST_F(CheckpointInputs, ASpecNoModelCanBeBuiltFromIsRefusedByEveryTool) {
  struct Case {
    const char* from;
    const char* to;
    const char* field;
  };
  for (const Case& c : {Case{"\"nHeads\":4", "\"nHeads\":0", "model.n_heads"},
                        Case{"\"seqLen\":32", "\"seqLen\":0", "model.seq_len"},
                        Case{"\"topK\":2", "\"topK\":5", "model.moe.top_k"},
                        Case{"\"nKvHeads\":2", "\"nKvHeads\":3", "model.n_kv_heads"}}) {
    const std::string ckpt = WithSpecEdit(c.from, c.to);
    for (const CommandResult& r : {Sample(ckpt), Score(ckpt), Export(ckpt)}) {
      EXPECT_EQ(r.exit_code, 1) << c.to << ": " << r.err;
      EXPECT_THAT(r.err, HasSubstr(ckpt)) << c.to;
      EXPECT_THAT(r.err, HasSubstr("spec.json")) << c.to;
      EXPECT_THAT(r.err, HasSubstr(c.field)) << c.to;
    }
  }
}

// meta.json's vocab_size edited to no number, or to no string at all (its manifest made to
// match): damage, named, in every tool (a resume said "model.vocab_size: 0" or a wrapped-around
// number; a value other than a string, only the JSON error).
TEST_F(CheckpointInputs, AMetaValueThatIsNoNumberOrNoStringIsDamage) {
  struct Edit {
    const char *to, *said;
  };
  for (const Edit& e : {Edit{"\"vocab_size\": \"abc\"", "meta.json: vocab_size is"},
                        Edit{"\"vocab_size\": \"99999999999999\"", "meta.json: vocab_size is"},
                        Edit{"\"vocab_size\": 65", "is not a string"},
                        Edit{"\"vocab_size\": [\"65\"]", "is not a string"}}) {
    const std::string ckpt = WithSpecEdit("\"vocab_size\": \"65\"", e.to, "meta.json");
    for (const CommandResult& r : {Sample(ckpt), Export(ckpt)}) {
      EXPECT_EQ(r.exit_code, 1) << e.to << ": " << r.err;
      EXPECT_THAT(r.err, HasSubstr("meta.json: ")) << r.err;
      EXPECT_THAT(r.err, HasSubstr(e.said)) << r.err;
      EXPECT_THAT(r.err, HasSubstr("the checkpoint is damaged")) << r.err;
    }
  }
}

// A spec of one layer over a checkpoint of two: before, the export wrote a one-layer model and
// said nothing of the second layer's tensors.
TEST_F(CheckpointInputs, TensorsTheSpecLacksAreNotLeftOutOfAnExportSilently) {
  const std::string ckpt = WithSpecEdit("\"nLayers\":2", "\"nLayers\":1");
  CommandResult r = Export(ckpt);
  EXPECT_EQ(r.exit_code, 1) << r.out;
  EXPECT_THAT(r.err, HasSubstr("blocks.1.attn.wqkv.weight: in the checkpoint, not a weight of its spec's model"));
  EXPECT_EQ(Sample(ckpt).exit_code, 1);
}

// A valid spec far larger than the tensors: the shapes are compared before a model of that size
// is allocated (before, --sample aborted on the allocation).
TEST_F(CheckpointInputs, AHugeSpecOverSmallTensorsIsAMismatchNotAnAllocation) {
  // d_model 65536 passes the spec's rules, and a model of it needs about half a terabyte.
  const std::string ckpt = WithSpecEdit("\"dModel\":64", "\"dModel\":65536");
  for (const CommandResult& r : {Sample(ckpt), Score(ckpt)}) {
    EXPECT_EQ(r.exit_code, 1) << r.err;
    EXPECT_THAT(r.err, HasSubstr("different model"));
  }
}

// The checkpoint argument is the caller's input: --sample and --score exit 2 for one that names no
// checkpoint, as for a bad flag (they exited 1, a failure's code).
TEST_F(CheckpointInputs, APathThatIsNoCheckpointIsNamedAsSuch) {
  const std::string missing = testing::MakeTempDir("no-ckpt-") + "/absent";
  CommandResult r = Sample(missing);
  EXPECT_EQ(r.exit_code, 2) << r.err;
  EXPECT_THAT(r.err, HasSubstr(missing + " does not exist"));
  EXPECT_EQ(r.out, "") << "the prompt is echoed only once the checkpoint and the prompt are accepted";
  // Export says the same (it said "holds no complete checkpoint" of a path that is not there), with
  // exit 2 too (it was 1).
  CommandResult x = RunCommand({Worker(), "--export", missing, "--format", "hf", "--out", missing + "-hf"}, {}, 60);
  EXPECT_EQ(x.exit_code, 2) << x.err;
  EXPECT_THAT(x.err, HasSubstr(missing + " does not exist"));
  EXPECT_FALSE(fs::exists(missing + "-hf"));
  const std::string empty = testing::MakeTempDir("empty-ckpt-");
  for (const CommandResult& e : {Sample(empty), Score(empty)}) {
    EXPECT_EQ(e.exit_code, 2) << e.err;
    EXPECT_THAT(e.err, HasSubstr(empty + " holds no complete checkpoint"));
    EXPECT_THAT(e.err, Not(HasSubstr("writer crashed")));
  }
}

// A directory of checkpoints whose newest is damaged: every tool takes the newest good one and
// says which it skipped (before, sampling and scoring took the newest complete-looking one and
// failed on it). When every one is damaged the tools say so without a training-only remedy.
TEST_F(CheckpointInputs, ToolsSkipADamagedNewestCheckpoint) {
  const std::string dir = testing::MakeTempDir("ckpt-damaged-");
  fs::copy(*good_, dir + "/step_00000001", fs::copy_options::recursive);
  const std::string bad = dir + "/step_00000002";
  fs::copy(*good_, bad, fs::copy_options::recursive);
  std::string weights = *ReadFile(bad + "/model.safetensors");
  weights[weights.size() - 3] ^= 0x40;  // a tensor byte: the checksum no longer matches
  ASSERT_TRUE(WriteFileAtomic(bad + "/model.safetensors", weights).ok());
  for (const CommandResult& r : {Sample(dir), Score(dir), Export(dir)}) {
    EXPECT_EQ(r.exit_code, 0) << r.err;
    EXPECT_THAT(r.out + r.err, HasSubstr("skipping damaged checkpoint " + bad));
  }
  fs::remove_all(dir + "/step_00000001");
  for (const CommandResult& r : {Sample(dir), Score(dir), Export(dir)}) {
    EXPECT_EQ(r.exit_code, 1) << r.err;
    EXPECT_THAT(r.err, HasSubstr("every checkpoint under " + dir + " is damaged"));
    EXPECT_THAT(r.err, HasSubstr("restore one from a copy"));
    EXPECT_THAT(r.err, Not(HasSubstr("start_over_if_damaged")));
  }
}

// A prompt with a character the char vocabulary lacks: the error names it (exit 2: the caller's
// input), and stdout stays empty (the prompt was echoed before the refusal).
TEST_F(CheckpointInputs, APromptOutsideTheVocabularyPrintsNothing) {
  CommandResult r =
      RunCommand({Worker(), "--sample", *good_, "--prompt", "ROMEO \xE2\x82\xAC", "--tokens", "3", "--device", "cpu"},
                 {}, 120);
  EXPECT_EQ(r.exit_code, 2) << r.err;
  EXPECT_THAT(r.err, HasSubstr("is not in the char vocabulary"));
  EXPECT_EQ(r.out, "");
  CommandResult ok = Sample(*good_);
  EXPECT_EQ(ok.exit_code, 0) << ok.err;
  EXPECT_THAT(ok.out, ::testing::StartsWith("ROMEO"));
}

// What the caller gave --score and --sample wrong exits 2, as a bad flag does (it was 1): outputs
// that name one file, an output that is a directory, a --greedy that leaves no prompt,
// --no-kv-cache with --device cuda. Nothing is written first. Failures while running stay 1 (the
// damaged and changed inputs above).
TEST_F(CheckpointInputs, ScoreAndSampleUsageErrorsExitTwo) {
  const std::string out = testing::MakeTempDir("score-usage-");
  struct Case {
    std::vector<std::string> args;
    std::string expect;
  };
  for (const Case& c : std::vector<Case>{
           {{"--score", *good_, "--batch-out", out + "/a.bin", "--logits-out", out + "/./a.bin"},
            "--batch-out and --logits-out both name " + out + "/./a.bin; give each output its own file"},
           {{"--score", *good_, "--batch-out", out}, out + " is a directory, which moe does not replace"},
           {{"--score", *good_, "--batch-out", out + "/a.bin", "--greedy", "32", "--greedy-out", out + "/g.bin"},
            "--greedy 32 leaves no prompt in seq_len 32: give at most 31"},
           {{"--sample", *good_, "--no-kv-cache", "--device", "cuda"}, "--no-kv-cache runs on the CPU"}}) {
    std::vector<std::string> argv = {Worker()};
    argv.insert(argv.end(), c.args.begin(), c.args.end());
    CommandResult r = RunCommand(argv, {}, 120);
    EXPECT_EQ(r.exit_code, 2) << c.expect << ": " << r.err;
    EXPECT_THAT(r.err, HasSubstr(c.expect));
    EXPECT_EQ(r.out, "") << c.expect;
  }
  EXPECT_FALSE(fs::exists(out + "/a.bin"));
  EXPECT_FALSE(fs::exists(out + "/g.bin"));
}

// --export's --out names the directory to create, not its parents: a missing parent is refused
// (exit 2) and nothing is made (it created the whole tree and exited 0). Its other usage errors
// exit 2 as --score's and --sample's do (they were 1): an --out that is not empty, no checkpoint
// path. The final directory itself is still created.
TEST_F(CheckpointInputs, ExportRefusesAMissingParentAndExitsTwoForUsage) {
  const std::string root = testing::MakeTempDir("export-usage-");
  struct Case {
    std::vector<std::string> args;
    std::string expect;
  };
  std::ofstream(root + "/file") << "x";
  for (const Case& c : std::vector<Case>{
           {{"--export", *good_, "--format", "hf", "--out", root + "/a/b/c"},
            "cannot export to " + root + "/a/b/c: " + root + "/a/b does not exist"},
           {{"--export", *good_, "--format", "hf", "--out", root + "/file/m"}, root + "/file is not a directory"},
           {{"--export", *good_, "--format", "hf", "--out", root}, root + " exists and is not empty"},
           {{"--export", "", "--format", "hf", "--out", root + "/m"}, "--export needs a checkpoint directory"},
           {{"--export", *good_, "--format", "gguf", "--out", root + "/m"}, "--export needs --format hf"},
           {{"--export", *good_, "--format", "hf", "--out", root + "/m", "--dtype", "fp8"}, "--dtype must be fp32 or bf16"}}) {
    std::vector<std::string> argv = {Worker()};
    argv.insert(argv.end(), c.args.begin(), c.args.end());
    CommandResult r = RunCommand(argv, {}, 120);
    EXPECT_EQ(r.exit_code, 2) << c.expect << ": " << r.err;
    EXPECT_THAT(r.err, HasSubstr(c.expect));
    EXPECT_EQ(r.out, "") << c.expect;
  }
  EXPECT_FALSE(fs::exists(root + "/a"));
  EXPECT_FALSE(fs::exists(root + "/m"));
  CommandResult ok = RunCommand({Worker(), "--export", *good_, "--format", "hf", "--out", root + "/m"}, {}, 120);
  EXPECT_EQ(ok.exit_code, 0) << ok.err;
  EXPECT_TRUE(fs::exists(root + "/m/config.json"));
}

// --threads N applies to --sample and --score (they ran on OpenMP's default, every core, whatever
// N was given); --export takes no --threads.
TEST_F(CheckpointInputs, SampleAndScoreRunOnTheThreadsGiven) {
  for (const char* n : {"1", "3"}) {
    CommandResult r = RunCommand(
        {Worker(), "--sample", *good_, "--prompt", "ROMEO", "--tokens", "3", "--device", "cpu", "--threads", n}, {}, 120);
    EXPECT_EQ(r.exit_code, 0) << r.err;
    EXPECT_THAT(r.err, HasSubstr(absl::StrCat("with a kv cache, ", n, " CPU thread(s)"))) << r.err;
  }
  CommandResult score = RunCommand(
      {Worker(), "--score", *good_, "--batch-out", testing::MakeTempDir("score-threads-") + "/b.bin", "--threads", "1"},
      {}, 120);
  EXPECT_EQ(score.exit_code, 0) << score.err;
}

// The job's text file is now shorter than one sequence: before, --score aborted in SampleBatch.
TEST_F(CheckpointInputs, ScoringDataThatShrankSinceTrainingIsAnError) {
  const std::string text = testing::WriteTempText("First Citizen:\nBefore we proceed");
  const std::string ckpt = WithSpecEdit(testing::ShakespearePath(), text);
  CommandResult r = Score(ckpt);
  EXPECT_EQ(r.exit_code, 1) << r.err;
  EXPECT_THAT(r.err, HasSubstr("seq_len"));
}

TEST(WorkerFlags, OutOfRangeValuesAreRefusedAtTheCommandLine) {
  const std::string ckpt = testing::MakeTempDir("flags-");
  struct Case {
    std::vector<std::string> args;
    const char* expect;
  };
  for (const Case& c :
       {Case{{"--sample", ckpt, "--temperature", "nan"}, "--temperature needs a number greater than 0"},
        Case{{"--sample", ckpt, "--temperature", "inf"}, "--temperature needs a number greater than 0"},
        Case{{"--sample", ckpt, "--top-k", "-3"}, "--top-k must be 0 or more, got -3"},
        Case{{"--sample", ckpt, "--seed", "-1"}, "--seed needs a whole number, 0 or more"},
        Case{{"--score", ckpt, "--batch-out", "b", "--greedy", "-1"}, "--greedy must be 0 or more"},
        Case{{"--job", "job.yaml", "--max-steps", "-5"}, "--max-steps must be at least 1 (the steps this run trains), got -5"},
        Case{{"--job", "job.yaml", "--max-steps", "0"}, "--max-steps must be at least 1 (the steps this run trains), got 0"},
        Case{{"--job", "job.yaml", "--threads", "-2"}, "--threads must be 0 or more"},
        Case{{"--job", "job.yaml", "--threads", "100000"}, "--threads must be at most 1024"},
        Case{{"--sample", ckpt, "--tokens", "99999999999"}, "--tokens is out of range (at most 2147483647)"},
        Case{{"--job", "job.yaml", "--checkpoint-dir", ""}, "--checkpoint-dir needs a directory"},
        Case{{"--job", "job.yaml", "--comm-timeout", "nan"}, "--comm-timeout needs a positive number"},
        // Before: moed's --spec flags beside --job, and --job beside --sample, were ignored without a
        // word; --job "" said "give exactly one of --job or --spec".
        Case{{"--job", "job.yaml", "--moed", "127.0.0.1:1"}, "--moed is for moed's --spec runs (a --job run by "
                                                             "hand reports to no moed); leave it out"},
        Case{{"--job", "job.yaml", "--job-id", "j-000001"}, "--job-id is for moed's --spec runs"},
        Case{{"--job", "job.yaml", "--sample", ckpt}, "--job and --sample are two runs of moe-worker; give one "
                                                      "(--sample, --score and --export read the job from the "
                                                      "checkpoint)"},
        Case{{"--sample", ckpt, "--spec", "spec.json"}, "--sample and --spec are two runs of moe-worker"},
        Case{{"--job", ""}, "--job needs a file"},
        Case{{"--spec", ""}, "--spec needs a file"}}) {
    std::vector<std::string> argv = {Worker()};
    argv.insert(argv.end(), c.args.begin(), c.args.end());
    CommandResult r = RunCommand(argv, {}, 60);
    EXPECT_EQ(r.exit_code, 2) << c.expect << ": " << r.err;
    EXPECT_THAT(r.err, HasSubstr(c.expect));
  }
}

// Each run takes only its own flags (one table in worker/main.cc): another run's flag is refused
// with exit 2, naming the flag and the run. Before, --max-steps beside --sample, --tokens beside
// --export and --prompt beside --job were ignored without a word. A --spec without moed's
// --moed and --job-id trained standalone into ./checkpoints; it is moed's form, refused by hand.
TEST(WorkerFlags, EachRunRefusesAnotherRunsFlags) {
  const std::string dir = testing::MakeTempDir("run-flags-");
  struct Case {
    std::vector<std::string> args;
    std::string expect;
  };
  for (const Case& c : std::vector<Case>{
           {{"--sample", "CK", "--tokens", "3", "--max-steps", "5"}, "--max-steps is for training runs (--job, --spec), not --sample"},
           {{"--sample", "CK", "--resume"}, "--resume is for training runs (--job, --spec), not --sample"},
           {{"--sample", "CK", "--format", "hf"}, "--format is for --export, not --sample"},
           {{"--sample", "CK", "--batch-out", "x"}, "--batch-out is for --score, not --sample"},
           {{"--export", "CK", "--format", "hf", "--out", "D", "--tokens", "5"}, "--tokens is for --sample, not --export"},
           {{"--export", "CK", "--format", "hf", "--out", "D", "--comm-timeout", "1"}, "--comm-timeout is for training runs (--job, --spec), not --export"},
           {{"--score", "CK", "--batch-out", "b", "--device", "cpu"}, "--device is for --sample, not --score"},
           {{"--job", "t.yaml", "--prompt", "hi", "--max-steps", "1"}, "--prompt is for --sample, not --job"},
           {{"--spec", "s.json", "--no-checkpoint"}, "--no-checkpoint is for --job runs by hand"},
           {{"--sample", "CK", "--attempt", "1"}, "--attempt is for moed's --spec runs, not --sample"},
           {{"--spec", dir + "/spec.json"}, "--spec is moed's form of a run and needs --moed HOST:PORT and --job-id ID; "
                                            "to train by hand, give --job JOB.yaml"},
           {{"--spec", dir + "/spec.json", "--moed", "127.0.0.1:1"}, "--spec is moed's form of a run and needs --job-id ID"},
           {{"--tokens", "3"}, "give exactly one of --job or --spec (or --sample, --score, --export)"}}) {
    std::vector<std::string> argv = {Worker()};
    argv.insert(argv.end(), c.args.begin(), c.args.end());
    CommandResult r = RunCommand(argv, {}, 60);
    EXPECT_EQ(r.exit_code, 2) << c.expect << ": " << r.err;
    EXPECT_THAT(r.err, HasSubstr(c.expect));
    EXPECT_EQ(r.out, "") << c.expect;
  }
}

// A checkpoint directory given by hand meets the rule checkpoint.dir meets (no system directory).
TEST(WorkerFlags, CheckpointDirInASystemDirectoryIsRefused) {
  const std::string dir = testing::MakeTempDir("ckdir-");
  const std::string job = dir + "/job.yaml";
  ASSERT_TRUE(WriteFileAtomic(job, "name: ckdir\n"
                                   "model: {d_model: 32, n_layers: 1, n_heads: 2, seq_len: 16,\n"
                                   "        moe: {num_experts: 2, top_k: 1, expert_hidden: 32}}\n"
                                   "data: {path: " + testing::ShakespearePath() + "}\n"
                                   "train: {steps: 1, batch_size: 2}\n"
                                   "resources: {ranks: 1, device: cpu}\n")
                  .ok());
  CommandResult r = RunCommand({Worker(), "--job", job, "--checkpoint-dir", "/etc/moe-test-ck"}, {}, 60);
  EXPECT_NE(r.exit_code, 0) << r.out << r.err;
  EXPECT_THAT(r.err, HasSubstr("--checkpoint-dir"));
  EXPECT_FALSE(std::filesystem::exists("/etc/moe-test-ck"));
}

// Token shards with more ids than model.vocab_size: the size needed is named (before, it said to
// leave model.vocab_size out, which pretokenized data does not allow).
TEST(WorkerData, ShardIdsPastTheVocabularyNameTheSizeNeeded) {
  const std::string dir = testing::MakeTempDir("vocab-");
  std::vector<uint16_t> ids(20000);
  for (size_t i = 0; i < ids.size(); ++i) ids[i] = static_cast<uint16_t>(i % 1000);
  std::ofstream(dir + "/shard.bin", std::ios::binary)
      .write(reinterpret_cast<const char*>(ids.data()), static_cast<std::streamsize>(ids.size() * 2));
  const std::string job = dir + "/job.yaml";
  ASSERT_TRUE(WriteFileAtomic(job,
                              "name: vocab\n"
                              "model: {d_model: 32, n_layers: 1, n_heads: 2, seq_len: 16, vocab_size: 512,\n"
                              "        moe: {num_experts: 2, top_k: 1, expert_hidden: 32}}\n"
                              "data: {path: shard.bin, tokenizer: pretokenized}\n"
                              "train: {steps: 1, batch_size: 2}\n"
                              "resources: {ranks: 1, device: cpu}\n")
                  .ok());
  CommandResult r = RunCommand({Worker(), "--job", job, "--no-checkpoint"}, {}, 120);
  EXPECT_NE(r.exit_code, 0) << r.out << r.err;
  // The job file's check reads the shards' ids now (the worker's own check stays for what lies past
  // the first 256 MiB it reads): the size needed, before the job starts.
  EXPECT_THAT(r.err, HasSubstr("model.vocab_size: is 512, but " + dir + "/shard.bin holds token id 512 (its token "
                               "512); the largest id in the shards' first 20000 tokens is 999: raise "
                               "model.vocab_size to at least 1000"));
}

}  // namespace
}  // namespace moe
