// Runs the real `moectl validate` on the bad-job corpus (tests/jobs/bad/NAME.yaml, each with the
// error lines it must print in NAME.expect) and on the examples/, checking exit codes, messages
// and that nothing crashes.
#include <fcntl.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "common/files.h"
#include "common/backend_limits.h"
#include "tests/support/paths.h"
#include "tests/support/tiny_gpt2.h"

extern char** environ;

namespace moe {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;
using ::testing::Not;

struct RunResult {
  bool exited = false;  // false: killed by a signal (a crash)
  int exit_code = -1;
  int signal = 0;
  std::string out;
  std::string err;
};

std::string ReadAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Runs moectl with args, stdout and stderr captured through files in a temp dir.
RunResult RunMoectl(const std::vector<std::string>& args) {
  const std::string dir = moe::testing::MakeTempDir("moectl_validate_test_");
  const std::string out_path = dir + "/out";
  const std::string err_path = dir + "/err";
  const std::string bin = moe::testing::BinDir() + "/moectl";
  std::vector<std::string> argv_store = {bin};
  argv_store.insert(argv_store.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (std::string& a : argv_store) argv.push_back(a.data());
  argv.push_back(nullptr);

  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 1, out_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC,
                                   0644);
  posix_spawn_file_actions_addopen(&actions, 2, err_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC,
                                   0644);
  pid_t pid = 0;
  int rc = posix_spawn(&pid, bin.c_str(), &actions, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  RunResult r;
  if (rc != 0) {
    ADD_FAILURE() << "cannot start " << bin << ": " << std::strerror(rc);
    fs::remove_all(dir);
    return r;
  }
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  r.exited = WIFEXITED(status);
  r.exit_code = r.exited ? WEXITSTATUS(status) : -1;
  r.signal = WIFSIGNALED(status) ? WTERMSIG(status) : 0;
  r.out = ReadAll(out_path);
  r.err = ReadAll(err_path);
  fs::remove_all(dir);
  return r;
}

std::vector<std::string> Lines(const std::string& text) {
  std::vector<std::string> lines;
  for (absl::string_view line : absl::StrSplit(text, '\n', absl::SkipEmpty())) {
    lines.emplace_back(line);
  }
  return lines;
}

std::string BadDir() { return moe::testing::SourceDir() + "/tests/jobs/bad"; }

// Where the bad jobs' relative data path (../../../../shared/...) lands.
std::string SharedFromBadDir() {
  return (fs::path(BadDir()) / "../../../../shared").lexically_normal().string();
}

std::vector<std::string> BadJobNames() {
  std::vector<std::string> names;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(BadDir(), ec)) {
    if (entry.path().extension() == ".expect") names.push_back(entry.path().stem().string());
  }
  std::sort(names.begin(), names.end());
  return names;
}

TEST(BadJobCorpus, HasAtLeastThirtyPairedFiles) {
  std::vector<std::string> names = BadJobNames();
  EXPECT_GE(names.size(), 30u);
  for (const std::string& name : names) {
    EXPECT_TRUE(fs::is_regular_file(BadDir() + "/" + name + ".yaml"))
        << name << ".expect has no .yaml";
  }
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(BadDir(), ec)) {
    if (entry.path().extension() == ".yaml") {
      EXPECT_TRUE(fs::is_regular_file(fs::path(entry.path()).replace_extension(".expect")))
          << entry.path() << " has no .expect";
    }
  }
}

class BadJobTest : public ::testing::TestWithParam<std::string> {};

// Each line of NAME.expect must be part of the matching stderr line, in order, and stderr has
// exactly that many lines: every error is reported, and nothing else. {SRC} and {SRC_PARENT}
// stand for the repository and the folder above it (absolute paths in messages).
TEST_P(BadJobTest, FailsWithTheExpectedErrors) {
  const std::string name = GetParam();
  if (!fs::is_regular_file(SharedFromBadDir() + "/data/tinyshakespeare/input.txt")) {
    GTEST_SKIP() << "the bad jobs name " << SharedFromBadDir()
                 << "/data/tinyshakespeare/input.txt, which is absent in this checkout";
  }
  const std::string src = fs::path(moe::testing::SourceDir()).lexically_normal().string();
  const std::string src_parent = fs::path(src).parent_path().string();
  std::vector<std::string> expected;
  for (const std::string& line : Lines(ReadAll(BadDir() + "/" + name + ".expect"))) {
    expected.push_back(absl::StrReplaceAll(line, {{"{SRC_PARENT}", src_parent}, {"{SRC}", src}}));
  }
  ASSERT_FALSE(expected.empty()) << name << ".expect is empty";

  RunResult r = RunMoectl({"validate", BadDir() + "/" + name + ".yaml"});
  ASSERT_TRUE(r.exited) << "moectl was killed by signal " << r.signal << "\n" << r.err;
  EXPECT_EQ(r.exit_code, 2) << r.err;
  EXPECT_EQ(r.out, "");
  std::vector<std::string> got = Lines(r.err);
  ASSERT_EQ(got.size(), expected.size()) << "stderr:\n" << r.err;
  for (size_t i = 0; i < got.size(); ++i) {
    EXPECT_THAT(got[i], HasSubstr(expected[i])) << "line " << i + 1;
    // Every line names the job file, so a user knows which file is wrong.
    EXPECT_THAT(got[i], HasSubstr(name + ".yaml"));
  }
}

INSTANTIATE_TEST_SUITE_P(Corpus, BadJobTest, ::testing::ValuesIn(BadJobNames()),
                         [](const ::testing::TestParamInfo<std::string>& info) {
                           std::string id = info.param;
                           std::replace(id.begin(), id.end(), '-', '_');
                           return id;
                         });

TEST(MoectlValidate, MissingFileAndDirectoryAreClearErrors) {
  const std::string dir = moe::testing::MakeTempDir("moectl_validate_dir_");
  RunResult missing = RunMoectl({"validate", dir + "/nope.yaml"});
  ASSERT_TRUE(missing.exited);
  EXPECT_EQ(missing.exit_code, 2);
  EXPECT_EQ(missing.err,
            dir + "/nope.yaml: does not exist; give the path of a job file (e.g. job.yaml)\n");

  RunResult directory = RunMoectl({"validate", dir});
  ASSERT_TRUE(directory.exited);
  EXPECT_EQ(directory.exit_code, 2);
  EXPECT_EQ(directory.err, dir + ": is a directory; give the path of a job file (e.g. job.yaml)\n");

  // A link to itself exists but cannot be opened (before: "does not exist").
  fs::create_symlink(dir + "/loop.yaml", dir + "/loop.yaml");
  RunResult loop = RunMoectl({"validate", dir + "/loop.yaml"});
  ASSERT_TRUE(loop.exited);
  EXPECT_EQ(loop.exit_code, 2);
  EXPECT_THAT(loop.err, HasSubstr(dir + "/loop.yaml: cannot be opened ("));  // the OS's words for a link loop
  EXPECT_THAT(loop.err, HasSubstr("); give the path of a job file (e.g. job.yaml)\n"));
  fs::remove_all(dir);
}

TEST(MoectlValidate, WrongArgumentsPrintUsage) {
  for (const std::vector<std::string>& args :
       std::vector<std::vector<std::string>>{{"validate"},
                                             {"validate", "a.yaml", "b.yaml"},
                                             {"validate", "--strict"},
                                             {"validate", ""}}) {
    RunResult r = RunMoectl(args);
    ASSERT_TRUE(r.exited);
    EXPECT_EQ(r.exit_code, 2) << args.size();
    EXPECT_THAT(r.err, HasSubstr("usage: moectl validate JOB.yaml"));
  }
  RunResult help = RunMoectl({"validate", "--help"});
  EXPECT_EQ(help.exit_code, 0);
  EXPECT_THAT(help.out, HasSubstr("usage: moectl validate JOB.yaml"));
}

// The benchmark's and the device scripts' job files (bench/sweep for scripts/device_sweep.sh,
// bench/shapes for scripts/device_shapes.sh) stay valid: each validates in place (their data is
// this repository's README, tiny's the 4 KiB text beside it), with nothing on stderr.
TEST(MoectlValidate, BenchJobFilesValidate) {
  int files = 0;
  for (const char* dir : {"bench/sweep", "bench/shapes"}) {
    for (const auto& entry : fs::directory_iterator(moe::testing::SourceDir() + "/" + dir)) {
      const std::string path = entry.path().string();
      if (entry.path().extension() != ".yaml" || entry.path().filename().string()[0] == '.') continue;
      RunResult r = RunMoectl({"validate", path});
      ASSERT_TRUE(r.exited) << path;
      EXPECT_EQ(r.exit_code, 0) << path << "\n" << r.err;
      EXPECT_EQ(r.err, "") << path;
      ++files;
    }
  }
  EXPECT_GE(files, 15);
}

// Each example, copied beside stand-ins for the data that scripts/setup.sh fetches, so the test
// does not depend on the download; the file itself is validated unchanged.
class ExampleTest : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = moe::testing::MakeTempDir("moectl_examples_");
    fs::create_directories(root_ + "/examples");
    fs::create_directories(root_ + "/data/gpt2");
    // As long as the real text (4.4 MB): validate refuses a text shorter than two sequences.
    std::ofstream bible(root_ + "/data/bible-kjv.txt");
    for (int i = 0; i < 80000; ++i) bible << "In the beginning God created the heaven and the earth.\n";
    bible.close();
    moe::testing::TinyGpt2().Write(root_ + "/data/gpt2");  // validate loads it as the worker does
  }
  void TearDown() override { fs::remove_all(root_); }

  // The line of validate's fit advice that starts with `lever` ("train.recompute: full saves
  // about "), or "" when there is none.
  static std::string LeverLine(const std::string& out, const std::string& lever) {
    const size_t at = out.find(lever);
    return at == std::string::npos ? "" : out.substr(at, out.find('\n', at) - at);
  }

  RunResult ValidateCopy(const std::string& example) {
    std::string copy = root_ + "/examples/" + example;
    fs::copy_file(moe::testing::SourceDir() + "/examples/" + example, copy);
    return RunMoectl({"validate", copy});
  }

  std::string root_;
};

TEST_F(ExampleTest, SmallMediumAndCpuDemoValidate) {
  struct Case {
    std::string file;
    std::string params;
  };
  for (const Case& c : std::vector<Case>{{"small.yaml", "407M total, 152M active"},
                                         {"medium.yaml", "1.73B total, 321M active"},
                                         {"cpu-demo.yaml", "total, "}}) {
    RunResult r = ValidateCopy(c.file);
    ASSERT_TRUE(r.exited) << c.file;
    EXPECT_EQ(r.exit_code, 0) << c.file << "\n" << r.err;
    EXPECT_EQ(r.err, "");
    EXPECT_THAT(r.out, HasSubstr(c.params)) << r.out;
    EXPECT_THAT(r.out, HasSubstr(root_ + "/data/bible-kjv.txt"));
    EXPECT_THAT(r.out, HasSubstr("FLOPs/token"));
    EXPECT_THAT(r.out, HasSubstr("memory/rank  weights"));
  }
  // cpu-demo: the char vocabulary is counted from the text (18 distinct bytes in the stand-in).
  RunResult demo = RunMoectl({"validate", root_ + "/examples/cpu-demo.yaml"});
  EXPECT_THAT(demo.out, HasSubstr("vocab 18 (byte values in the text)"));
  EXPECT_THAT(demo.out, HasSubstr("E 4, top-2, hidden 256, dropless, 2 per rank"));
}

// The description says the values as written (%g showed beta1 0.9999999, which the range allows,
// as 1, which it does not) and the optimizer's storage options (they were left out).
TEST_F(ExampleTest, TheDescriptionSaysValuesAsWrittenAndTheStorageOptions) {
  ASSERT_EQ(ValidateCopy("cpu-demo.yaml").exit_code, 0);
  std::string yaml = *ReadFile(root_ + "/examples/cpu-demo.yaml");
  const size_t train = yaml.find("\ntrain:");
  ASSERT_NE(train, std::string::npos);
  yaml.insert(train + 7, "\n  beta1: 0.9999999\n  optimizer_state: int8\n  master_weights: bf16");
  const std::string path = root_ + "/examples/described.yaml";
  ASSERT_TRUE(WriteFileAtomic(path, yaml).ok());
  RunResult r = RunMoectl({"validate", path});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_THAT(r.out, HasSubstr("AdamW betas (0.9999999, "));
  EXPECT_THAT(r.out, HasSubstr("optimizer state int8, bf16 master weights (stochastic rounding)"));
}

// --gpu-memory: whether a cuda job fits GPUs of that size. MODEL.md's "small" on one GPU needs
// about 16 GiB: it fits 141GB (exit 0), not 14GiB (exit 2, by how much and the levers); a bad
// size is exit 2 with the accepted forms; a cpu job is not checked.
TEST_F(ExampleTest, GpuMemorySaysWhetherACudaJobFits) {
  RunResult fits = ValidateCopy("small.yaml");
  ASSERT_EQ(fits.exit_code, 0) << fits.err;
  const std::string small = root_ + "/examples/small.yaml";
  RunResult big = RunMoectl({"validate", small, "--gpu-memory", "141GB"});
  EXPECT_EQ(big.exit_code, 0) << big.err;
  EXPECT_THAT(big.out, HasSubstr("gpu memory   fits: needs about "));
  EXPECT_THAT(big.out, HasSubstr(" of the GPU's 131 GiB"));

  // Not fitting is a failed validation: nothing on stdout (it printed "valid job" and exited 2),
  // the failure and what would make it fit on stderr.
  RunResult tight = RunMoectl({"validate", small, "--gpu-memory", "14GiB"});
  EXPECT_EQ(tight.exit_code, 2);
  EXPECT_EQ(tight.out, "");
  EXPECT_THAT(tight.err, HasSubstr("small.yaml: resources: the job needs about "));
  EXPECT_THAT(tight.err, HasSubstr("more than the 14 GiB of --gpu-memory"));
  EXPECT_THAT(tight.err, HasSubstr("resources.allow_oversubscribe_memory: true"));
  EXPECT_THAT(tight.err, HasSubstr("\n  what would make it fit (estimated savings per GPU):\n"));
  EXPECT_THAT(tight.err, HasSubstr("\n    resources.ranks: 2 (GPUs) saves about "));
  EXPECT_THAT(tight.err, HasSubstr("train.optimizer_state: int8 saves about "));
  EXPECT_THAT(tight.err, HasSubstr("train.recompute: full saves about "));
  EXPECT_THAT(tight.err, Not(HasSubstr("valid job")));
  // allow_oversubscribe_memory: valid (moed runs it), so the description and the advice on stdout.
  std::string yaml = ReadAll(small);
  yaml.replace(yaml.find("resources:"), 10, "resources:\n  allow_oversubscribe_memory: true");
  std::ofstream(root_ + "/examples/small-over.yaml") << yaml;
  RunResult over = RunMoectl({"validate", root_ + "/examples/small-over.yaml", "--gpu-memory", "14GiB"});
  EXPECT_EQ(over.exit_code, 0) << over.err;
  EXPECT_THAT(over.out, HasSubstr("valid job"));
  EXPECT_THAT(over.out, HasSubstr("gpu memory   does not fit: needs about "));
  EXPECT_THAT(over.out, HasSubstr("the GPU has 14 GiB"));
  EXPECT_THAT(over.out, HasSubstr("\n                 train.recompute: full saves about "));
  EXPECT_THAT(over.out, HasSubstr("resources.allow_oversubscribe_memory is true: moed will run it anyway"));

  RunResult bad = RunMoectl({"validate", small, "--gpu-memory", "24 gigs"});
  EXPECT_EQ(bad.exit_code, 2);
  EXPECT_THAT(bad.err, HasSubstr("moectl validate: --gpu-memory: '24 gigs': unknown unit 'gigs'"));
  EXPECT_THAT(bad.err, HasSubstr("e.g. 80GiB, 141GB"));

  RunResult cpu = ValidateCopy("cpu-demo.yaml");
  ASSERT_EQ(cpu.exit_code, 0) << cpu.err;
  RunResult cpu_gpu = RunMoectl({"validate", root_ + "/examples/cpu-demo.yaml", "--gpu-memory", "1GiB"});
  EXPECT_EQ(cpu_gpu.exit_code, 0) << cpu_gpu.err;
  EXPECT_THAT(cpu_gpu.out, HasSubstr("not checked: --gpu-memory is for device cuda jobs"));
}

// The seed recipes (issue 16): each validates, counts its options' parameters (MODEL.md
// "Counting") and names them in the recipe line -- once the GPU backend runs every option the
// recipe sets; until then validate refuses it, naming the first option the GPU does not run.
// train.recompute: full (issue 17) validates for the cuda example, says so on the memory line, and
// the estimate is smaller; with it on, the fit advice no longer offers it.
TEST_F(ExampleTest, RecomputeFullValidatesAndShrinksTheEstimate) {
  RunResult plain = ValidateCopy("small.yaml");
  ASSERT_EQ(plain.exit_code, 0) << plain.err;
  std::string yaml = ReadAll(moe::testing::SourceDir() + "/examples/small.yaml");
  const size_t train = yaml.find("\ntrain:\n");
  ASSERT_NE(train, std::string::npos);
  yaml.insert(train + 8, "  recompute: full\n");
  const std::string path = root_ + "/examples/small-recompute.yaml";
  std::ofstream(path) << yaml;
  RunResult full = RunMoectl({"validate", path});
  EXPECT_EQ(full.exit_code, 0) << full.err;
  EXPECT_EQ(full.err, "");
  EXPECT_THAT(full.out, HasSubstr("recompute full: each block's input and one block's activations"));
  EXPECT_THAT(plain.out, Not(HasSubstr("recompute full")));
  RunResult tight = RunMoectl({"validate", path, "--gpu-memory", "16GiB"});
  EXPECT_THAT(tight.out + tight.err, Not(HasSubstr("train.recompute: full saves")));
}

// Issue 17's "80 GB configuration" (examples/moe-80gb.yaml): 9.3B parameters with recompute full.
// By our estimate it fits neither one 80 GB GPU nor one H200 with the options the cuda backend
// runs today; validate says so and names int8 optimizer state as enough alone for the H200. Once
// the cuda backend runs train.optimizer_state int8, the file with it fits 139 GiB.
TEST_F(ExampleTest, Moe80gbNamesWhatMakesItFit) {
  RunResult r = ValidateCopy("moe-80gb.yaml");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.err, "");
  EXPECT_THAT(r.out, HasSubstr("9.3B total, 2.8B active (9.3B on each rank)"));
  EXPECT_THAT(r.out, HasSubstr("E 8, top-2, hidden 5504"));
  EXPECT_THAT(r.out, HasSubstr("recompute full: each block's input and one block's activations"));
  EXPECT_THAT(r.out, HasSubstr("batch 8 (8 per rank, 2 micro-batches)"));
  const std::string path = root_ + "/examples/moe-80gb.yaml";
  RunResult gb80 = RunMoectl({"validate", path, "--gpu-memory", "80GB"});
  EXPECT_EQ(gb80.exit_code, 2) << gb80.out;
  EXPECT_EQ(gb80.out, "");
  EXPECT_THAT(gb80.err, HasSubstr("more than the 74.5 GiB of --gpu-memory"));
  EXPECT_THAT(gb80.err, Not(HasSubstr("train.recompute: full saves")));  // already on
  RunResult h200 = RunMoectl({"validate", path, "--gpu-memory", "139GiB"});
  EXPECT_THAT(LeverLine(h200.err, "train.optimizer_state: int8 saves about "), HasSubstr("(enough alone)"))
      << h200.err;

  // Without recompute full the estimate is larger: validate offers it as a lever.
  std::string yaml = ReadAll(moe::testing::SourceDir() + "/examples/moe-80gb.yaml");
  const size_t recompute = yaml.find("  recompute: full\n");
  ASSERT_NE(recompute, std::string::npos);
  std::string plain = yaml;
  plain.erase(recompute, std::string("  recompute: full\n").size());
  std::ofstream(root_ + "/examples/moe-80gb-plain.yaml") << plain;
  RunResult no_options = RunMoectl({"validate", root_ + "/examples/moe-80gb-plain.yaml", "--gpu-memory", "139GiB"});
  EXPECT_EQ(no_options.exit_code, 2);
  EXPECT_THAT(no_options.err, HasSubstr("train.recompute: full saves about "));

  std::string int8 = yaml;
  int8.insert(recompute, "  optimizer_state: int8\n");
  std::ofstream(root_ + "/examples/moe-80gb-int8.yaml") << int8;
  RunResult with_int8 = RunMoectl({"validate", root_ + "/examples/moe-80gb-int8.yaml", "--gpu-memory", "139GiB"});
  if (!moe::BackendRuns(/*cuda=*/true, moe::RecipeOption::kCompactState)) {
    EXPECT_EQ(with_int8.exit_code, 2);
    EXPECT_THAT(with_int8.err, HasSubstr("train.optimizer_state: is not run by device cuda yet"));
  } else {
    EXPECT_EQ(with_int8.exit_code, 0) << with_int8.out << with_int8.err;
    EXPECT_THAT(with_int8.out, HasSubstr("gpu memory   fits: needs about "));
  }
}

// The scale-out issue's 18B-class model (examples/seed-18b.yaml) on 8 GPUs, one expert each:
// counted as that issue sizes it, fits an H200 per GPU without memory options, and on 80 GB GPUs
// validate names recompute as enough alone.
TEST_F(ExampleTest, Seed18bSplitsOverEightGpus) {
  RunResult r = ValidateCopy("seed-18b.yaml");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.err, "");
  EXPECT_THAT(r.out, HasSubstr("32 heads (8 kv heads, head size 128)"));
  EXPECT_THAT(r.out, HasSubstr("17.9B total, 5.78B active (3.77B on each rank)"));
  EXPECT_THAT(r.out, HasSubstr("E 8, top-2, hidden 5120, dropless, 1 per rank"));
  EXPECT_THAT(r.out, HasSubstr("batch 32 (4 per rank, 1 micro-batch)"));
  const std::string path = root_ + "/examples/seed-18b.yaml";
  RunResult h200 = RunMoectl({"validate", path, "--gpu-memory", "139GiB"});
  EXPECT_EQ(h200.exit_code, 0) << h200.out << h200.err;
  EXPECT_THAT(h200.out, HasSubstr("gpu memory   fits: needs about "));
  RunResult gb80 = RunMoectl({"validate", path, "--gpu-memory", "80GB"});
  EXPECT_EQ(gb80.exit_code, 2) << gb80.out;
  EXPECT_THAT(LeverLine(gb80.err, "train.recompute: full saves about "), HasSubstr("(enough alone)")) << gb80.err;
}

TEST_F(ExampleTest, SeedRecipesValidate) {
  struct Case {
    std::string file;
    std::string params;
    std::vector<std::string> recipe;
    std::vector<std::pair<std::string, moe::RecipeOption>> options;  // what the file sets
  };
  using O = moe::RecipeOption;
  for (const Case& c : std::vector<Case>{
           {"tutel-style.yaml", "235M total, 39.7M active",
            {"qk_norm (+1.02K params)", "gated attention (+2.1M params)"},
            {{"model.attention.qk_norm", O::kQkNorm}, {"model.attention.gate", O::kAttentionGate}}},
           {"modded-nanogpt-style.yaml", "332M total, 162M active",
            {"qk_norm (+1.54K params)", "relu2 experts (no w3)",
             "Muon for block matrices (lr 0.02), AdamW for the rest"},
            {{"model.attention.qk_norm", O::kQkNorm},
             {"model.moe.activation", O::kActivation},
             {"train.optimizer", O::kMuon}}}}) {
    RunResult r = ValidateCopy(c.file);
    ASSERT_TRUE(r.exited) << c.file;
    std::string refused;
    for (const auto& [key, option] : c.options) {
      if (refused.empty() && !moe::BackendRuns(/*cuda=*/true, option)) refused = key;
    }
    if (!refused.empty()) {
      EXPECT_EQ(r.exit_code, 2) << c.file << "\n" << r.out;
      EXPECT_THAT(r.err, HasSubstr(refused + ": is not run by device cuda yet")) << c.file;
      continue;
    }
    EXPECT_EQ(r.exit_code, 0) << c.file << "\n" << r.err;
    EXPECT_EQ(r.err, "");
    EXPECT_THAT(r.out, HasSubstr(c.params)) << r.out;
    for (const std::string& piece : c.recipe) EXPECT_THAT(r.out, HasSubstr(piece)) << r.out;
  }
}

TEST(MoectlValidateExamples, TinyShakespeareValidatesAgainstTheSharedData) {
  const std::string example = moe::testing::SourceDir() + "/examples/tiny-shakespeare.yaml";
  const std::string data =
      (fs::path(moe::testing::SourceDir()) / "../shared/data/tinyshakespeare/input.txt")
          .lexically_normal();
  if (!fs::is_regular_file(data)) GTEST_SKIP() << data << " is absent in this checkout";
  RunResult r = RunMoectl({"validate", example});
  ASSERT_TRUE(r.exited);
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.err, "");
  EXPECT_THAT(r.out, HasSubstr("tiny-shakespeare: valid job"));
  EXPECT_THAT(r.out, HasSubstr("31.9M total, 10.7M active"));
  EXPECT_THAT(r.out, HasSubstr("E 8, top-2, hidden 512, dropless, 8 per rank"));
  EXPECT_THAT(r.out, HasSubstr(data));
  EXPECT_THAT(r.out, HasSubstr("16.4K tokens/step"));
}

// Issue 21: examples/shakespeare-moe.yaml is the job the quality search trains as its "example"
// variant (bench/quality_search.py --dump example), so the recipe in the file is the one measured:
// both describe the same job, line for line, but for the name and the data path; and it stays
// within the 10.7M active parameters of the goal.
TEST(MoectlValidateExamples, ShakespeareMoeIsTheQualitySearchExample) {
  const std::string src = moe::testing::SourceDir();
  const std::string data = (fs::path(src) / "../shared/data/tinyshakespeare/input.txt").lexically_normal();
  if (!fs::is_regular_file(data)) GTEST_SKIP() << data << " is absent in this checkout";
  if (std::system("python3 -c 'import json' > /dev/null 2>&1") != 0) GTEST_SKIP() << "no python3";
  const std::string dir = moe::testing::MakeTempDir("shakespeare_moe_");
  const std::string dumped = dir + "/example.yaml";
  ASSERT_EQ(std::system(("python3 " + src + "/bench/quality_search.py --dump example --data " + data + " > " +
                         dumped)
                            .c_str()),
            0);
  RunResult file = RunMoectl({"validate", src + "/examples/shakespeare-moe.yaml"});
  RunResult search = RunMoectl({"validate", dumped});
  ASSERT_EQ(file.exit_code, 0) << file.err;
  ASSERT_EQ(search.exit_code, 0) << search.err;
  EXPECT_THAT(file.out, HasSubstr("31.9M total, 10.7M active"));
  EXPECT_THAT(file.out, HasSubstr("attention dropout 0.2, expert dropout 0.2"));
  auto description = [](const std::string& out) {
    std::vector<std::string> keep;
    for (absl::string_view line : absl::StrSplit(out, '\n')) {
      if (line.find("valid job") != absl::string_view::npos) continue;  // the name and the file
      if (absl::StartsWith(line, "  data ")) continue;                   // the path
      keep.emplace_back(line);
    }
    return keep;
  };
  EXPECT_EQ(description(file.out), description(search.out)) << file.out << "\n---\n" << search.out;
}

// bench/largest_model.py (issue 17 (b)) in its estimate-only mode on a tiny search: one JSON line
// per option combination (8), defaults first; every combination that fits holds at least the
// defaults' total parameters (an option never grows the estimate), a refused one names the option
// the cuda backend does not run yet, and the job file of each row validates and fits.
TEST(LargestModel, TinySearchKeepsTheTableInvariants) {
  if (std::system("python3 -c 'import json' > /dev/null 2>&1") != 0) GTEST_SKIP() << "no python3";
  const std::string src = moe::testing::SourceDir();
  const std::string dir = moe::testing::MakeTempDir("largest_model_");
  const std::string cmd = "python3 " + src + "/bench/largest_model.py --moectl " + moe::testing::BinDir() +
                          "/moectl --dir " + dir + " --gpu-memory 2GiB --d-model 256 --head-size 64" +
                          " --expert-hidden 512 --seq-len 256 --micro-batch 4 --vocab 512 --layers 2,4" +
                          " --max-experts 64 --data " + src + "/README.md > " + dir + "/out.txt";
  ASSERT_EQ(std::system(cmd.c_str()), 0) << ReadAll(dir + "/out.txt");
  const std::string out = ReadAll(dir + "/out.txt");
  std::vector<std::string> rows;
  for (absl::string_view line : absl::StrSplit(out, '\n')) {
    if (absl::StartsWith(line, "{")) rows.emplace_back(line);
  }
  ASSERT_EQ(rows.size(), 8u) << out;
  ASSERT_THAT(rows[0], HasSubstr("\"combination\": \"defaults\", \"status\": \"fits\"")) << out;
  auto number = [](const std::string& row, const std::string& key) {
    const size_t at = row.find("\"" + key + "\": ");
    return at == std::string::npos ? -1.0 : std::atof(row.c_str() + at + key.size() + 4);
  };
  auto text = [](const std::string& row, const std::string& key) {
    const size_t at = row.find("\"" + key + "\": \"");
    if (at == std::string::npos) return std::string();
    const size_t from = at + key.size() + 5;
    return row.substr(from, row.find('"', from) - from);
  };
  const double defaults = number(rows[0], "total_params");
  ASSERT_GT(defaults, 0) << rows[0];
  int fitting = 0;
  for (const std::string& row : rows) {
    const std::string status = text(row, "status");
    if (status == "refused") {
      EXPECT_THAT(text(row, "reason"), HasSubstr("is not run by device cuda yet")) << row;
      continue;
    }
    ASSERT_EQ(status, "fits") << row;
    ++fitting;
    EXPECT_GE(number(row, "total_params"), defaults) << row;
    EXPECT_GE(number(row, "total_params"), number(row, "active_params")) << row;
    EXPECT_LE(number(row, "estimate_gib"), 2.0) << row;
    const std::string job = text(row, "job");
    ASSERT_TRUE(fs::is_regular_file(job)) << row;
    RunResult v = RunMoectl({"validate", job, "--gpu-memory", "2GiB"});
    EXPECT_EQ(v.exit_code, 0) << job << "\n" << v.out << v.err;
    EXPECT_THAT(v.out, HasSubstr("gpu memory   fits: needs about "));
  }
  EXPECT_GE(fitting, 2) << out;  // defaults and recompute full run on cuda today
  EXPECT_THAT(out, HasSubstr("| combination | total params | active params |"));
  fs::remove_all(dir);
}

}  // namespace
}  // namespace moe
