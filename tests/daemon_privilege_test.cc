// Least privilege: moed refuses root without --allow-root; a job's paths are checked against
// the data and checkpoint roots (symlinks resolved) by moed at submit and by the worker when it
// opens them; NUL bytes are refused; nothing moed or a worker creates is readable by others.
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/path_policy.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"
#include "gtest/gtest.h"
#include "tests/support/daemon_harness.h"
#include "tests/support/paths.h"

namespace moe::testing {
namespace {

namespace fs = std::filesystem;

TEST(DaemonPrivilege, RootWithoutAllowRootIsRefused) {
  if (geteuid() != 0) GTEST_SKIP() << "needs root";
  HarnessOptions o;
  o.allow_root = false;
  DaemonHarness h(o);
  EXPECT_FALSE(h.Start());
  EXPECT_EQ(h.start_exit_code(), 2);
  EXPECT_TRUE(absl::StrContains(h.MoedLog(), "refusing to run as root")) << h.MoedLog();
  EXPECT_TRUE(absl::StrContains(h.MoedLog(), "--allow-root")) << h.MoedLog();
}

TEST(DaemonPrivilege, TokenFileReadableByOthersIsRefusedWithTheFix) {
  HarnessOptions o;
  const std::string dir = MakeTempDir("moe-token-");
  o.token_file = dir + "/token";
  std::ofstream(o.token_file) << "t0ken\n";
  chmod(o.token_file.c_str(), 0644);
  DaemonHarness h(o);
  EXPECT_FALSE(h.Start());
  EXPECT_TRUE(absl::StrContains(h.MoedLog(), "readable by others")) << h.MoedLog();
  EXPECT_TRUE(absl::StrContains(h.MoedLog(), "chmod 600 " + o.token_file)) << h.MoedLog();
}

TEST(DaemonPrivilege, ATokenFileThatIsADirectoryIsNamedAsSuch) {
  const std::string dir = MakeTempDir("moe-token-");
  CommandResult r = RunCommand({BinDir() + "/moed", "--allow-root", "--state-dir", dir + "/state", "--listen",
                                absl::StrCat("127.0.0.1:", FreePort()), "--metrics-listen", "",
                                "--token-file", dir},
                               {}, 30);
  EXPECT_EQ(r.exit_code, 2) << r.err;
  EXPECT_TRUE(absl::StrContains(r.err, "token file " + dir + " is a directory")) << r.err;
  EXPECT_FALSE(absl::StrContains(r.err, "chmod")) << r.err;
}

// A token gRPC cannot send (a byte outside printable ASCII): before, moed started with it, and
// every client and worker sending it aborted on gRPC's 'Illegal header value' assertion.
TEST(DaemonPrivilege, ATokenNoHeaderCanCarryIsRefusedAtStart) {
  const std::string dir = MakeTempDir("moe-token-");
  std::ofstream(dir + "/token") << "t\xc3\xb6ken\n";
  chmod((dir + "/token").c_str(), 0600);
  CommandResult r = RunCommand({BinDir() + "/moed", "--allow-root", "--state-dir", dir + "/state", "--listen",
                                absl::StrCat("127.0.0.1:", FreePort()), "--metrics-listen", "",
                                "--token-file", dir + "/token"},
                               {}, 30);
  EXPECT_EQ(r.exit_code, 2) << r.err;
  EXPECT_TRUE(absl::StrContains(r.err, "the token in " + dir + "/token holds the byte 0xC3 at offset 1")) << r.err;
}

// Two jobs given the same (empty) checkpoint.dir: the second was accepted and failed at its start
// ("belongs to job ..."), or both wrote there. Now refused at submit while the first is unfinished
// (here queued behind a job holding moed's one rank), however the path is spelled; free again once
// it ended without writing there.
TEST(DaemonPrivilege, ACheckpointDirAnUnfinishedJobNamesIsRefused) {
  HarnessOptions o;
  o.worker_bin = FakeWorkerPath();
  o.cancel_grace_s = 5;
  o.env = {{"FAKE_STEPS", "100000"}, {"FAKE_STEP_SECONDS", "0.2"}};
  o.extra_args = {"--max-ranks", "1"};
  DaemonHarness h(o);
  ASSERT_TRUE(h.Start()) << h.MoedLog();
  const std::string ckpt = MakeTempDir("moe-shared-ckpt-");
  auto submit = [&](const std::string& name, const std::string& dir) {
    std::string path = h.work_dir() + "/" + name + ".yaml";
    std::ofstream(path) << "name: " << name << "\nmodel: {d_model: 64, n_layers: 2, n_heads: 4, "
                        << "seq_len: 32, moe: {num_experts: 4, top_k: 2, expert_hidden: 64}}\n"
                        << "data: {path: \"" << ShakespearePath() << "\", tokenizer: char}\n"
                        << "train: {steps: 2, batch_size: 4}\n"
                        << "resources: {ranks: 1, device: cpu, launcher: local}\n"
                        << (dir.empty() ? "" : "checkpoint: {dir: \"" + dir + "\"}\n");
    CommandResult r = h.Moectl({"submit", path});
    r.out = r.out.substr(0, r.out.find('\n'));  // the job id
    return r;
  };
  CommandResult blocker = submit("blocker", "");
  ASSERT_EQ(blocker.exit_code, 0) << blocker.err;
  CommandResult first = submit("first", ckpt);
  ASSERT_EQ(first.exit_code, 0) << first.err;
  EXPECT_EQ(h.WaitForState(first.out, moe::v1::JOB_STATE_QUEUED, 10).state(), moe::v1::JOB_STATE_QUEUED);
  for (const std::string& spelling : {ckpt, ckpt + "/", ckpt + "/../" + std::filesystem::path(ckpt).filename().string()}) {
    CommandResult second = submit("second", spelling);
    EXPECT_EQ(second.exit_code, 1) << spelling;
    EXPECT_TRUE(absl::StrContains(second.err, "is the checkpoint directory of job " + first.out + " (QUEUED)"))
        << second.err;
  }
  // A directory the worker has not made yet (the usual case), spelled with and without "/".
  const std::string fresh = ckpt + "/not-yet";
  CommandResult third = submit("third", fresh);
  ASSERT_EQ(third.exit_code, 0) << third.err;
  for (const std::string& spelling : {fresh + "/", fresh + "/.", fresh}) {
    CommandResult again = submit("again", spelling);
    EXPECT_EQ(again.exit_code, 1) << spelling;
    EXPECT_TRUE(absl::StrContains(again.err, "is the checkpoint directory of job " + third.out)) << again.err;
  }
  h.Moectl({"cancel", third.out});
  h.Moectl({"cancel", first.out});
  ASSERT_TRUE(std::filesystem::is_empty(ckpt));
  CommandResult after = submit("after", ckpt);
  EXPECT_EQ(after.exit_code, 0) << after.err;
  h.Moectl({"cancel", after.out});
  h.Moectl({"cancel", blocker.out});
}

TEST(DaemonPrivilege, RefusedPathsSayWhy) {
  const std::string root = MakeTempDir("moe-data-root-");
  std::filesystem::copy_file(ShakespearePath(), root + "/input.txt");
  // A link inside the root to a file outside it.
  ASSERT_EQ(symlink(ShakespearePath().c_str(), (root + "/escape.txt").c_str()), 0);
  HarnessOptions o;
  o.worker_bin = FakeWorkerPath();
  o.extra_args = {"--data-root", root};
  DaemonHarness h(o);
  ASSERT_TRUE(h.Start()) << h.MoedLog();
  auto job_with = [&](const std::string& name, const std::string& data_path,
                      const std::string& ckpt_dir) {
    std::string path = h.work_dir() + "/" + name + ".yaml";
    std::ofstream(path) << "name: " << name << "\nmodel: {d_model: 64, n_layers: 2, n_heads: 4, "
                        << "seq_len: 32, moe: {num_experts: 4, top_k: 2, expert_hidden: 64}}\n"
                        << "data: {path: \"" << data_path << "\", tokenizer: char}\n"
                        << "train: {steps: 2, batch_size: 4}\n"
                        << "resources: {ranks: 1, device: cpu, launcher: local}\n"
                        << "checkpoint: {dir: \"" << ckpt_dir << "\"}\n";
    return h.Moectl({"submit", path});
  };
  // moectl warns by the rule of a moed without roots (it does not know this one's); moed decides.
  CommandResult r = job_with("shadow", "/etc/shadow", "");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_TRUE(absl::StrContains(r.err, "warning: " + h.work_dir() + "/shadow.yaml:3:14: data.path: /etc/shadow is "
                                       "inside the system directory /etc")) << r.err;
  EXPECT_TRUE(absl::StrContains(r.err, "data.path: /etc/shadow is outside the directories moed "
                                       "allows (--data-root " + root + ")")) << r.err;
  r = job_with("escape", root + "/escape.txt", "");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_TRUE(absl::StrContains(r.err, "(which resolves to " + ResolvePath(ShakespearePath()) + ")"))
      << r.err;
  EXPECT_TRUE(absl::StrContains(r.err, "outside the directories moed allows")) << r.err;
  r = job_with("ok", root + "/input.txt", "");
  EXPECT_EQ(r.exit_code, 0) << r.err;

  // checkpoint.dir "/" (no --checkpoint-root: anything but / and the system directories).
  r = job_with("slash", root + "/input.txt", "/");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_TRUE(absl::StrContains(r.err, "checkpoint.dir: / is the root directory")) << r.err;

  // A NUL byte in a path, straight over gRPC (YAML cannot carry it past moectl).
  moe::v1::SubmitJobRequest req;
  moe::v1::JobSpec* spec = req.mutable_spec();
  spec->set_name("nul");
  spec->mutable_data()->set_path(std::string("/tmp/x\0/etc/shadow", 18));
  auto stub = h.Stub();
  grpc::ClientContext ctx;
  moe::v1::Job job;
  grpc::Status s = stub->SubmitJob(&ctx, req, &job);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_TRUE(absl::StrContains(s.error_message(), "data.path: holds a NUL byte"))
      << s.error_message();
}

TEST(DaemonPrivilege, PolicyWithoutRootsAndInTheWorker) {
  PathPolicy none;
  absl::Status s = CheckDataPath(none, "data.path", "/etc/shadow");
  EXPECT_EQ(s.code(), absl::StatusCode::kPermissionDenied);
  EXPECT_TRUE(absl::StrContains(s.message(), "inside the system directory /etc")) << s;
  EXPECT_TRUE(CheckDataPath(none, "data.path", ShakespearePath()).ok());
  EXPECT_FALSE(CheckCheckpointPath(none, "checkpoint.dir", "/").ok());
  EXPECT_FALSE(CheckCheckpointPath(none, "checkpoint.dir", "/usr/lib/x").ok());

  // The worker checks again when it opens the files (MOE_DATA_ROOTS from moed).
  const std::string dir = MakeTempDir("moe-worker-policy-");
  const std::string job = dir + "/job.yaml";
  std::ofstream(job) << "name: w\nmodel: {d_model: 64, n_layers: 2, n_heads: 4, seq_len: 32}\n"
                     << "data: {path: \"" << ShakespearePath() << "\", tokenizer: char}\n"
                     << "train: {steps: 1, batch_size: 4}\n";
  CommandResult r = RunCommand({BinDir() + "/moe-worker", "--job", job},
                               {{"MOE_DATA_ROOTS", dir}}, 120);
  EXPECT_EQ(r.exit_code, 1) << r.out << r.err;
  EXPECT_TRUE(absl::StrContains(r.err, "outside the directories moed allows")) << r.err;
}

// Token shards named by a glob or a directory: each shard the worker would open is checked, not
// the pattern. Before, "allowed/*/../../secret/*.bin" and a symlink inside an allowed directory
// passed (the pattern and the directory are under the root) and the worker read secret/s.bin.
TEST(DaemonPrivilege, ShardsAGlobOrADirectoryTakesAreCheckedOneByOne) {
  const std::string root = MakeTempDir("moe-shard-policy-");
  fs::create_directories(root + "/allowed/sub");
  fs::create_directories(root + "/secret");
  std::ofstream(root + "/secret/s.bin") << std::string(400, 'x');
  std::ofstream(root + "/allowed/ok.bin") << std::string(400, '\0');
  PathPolicy policy;
  policy.data_roots = {root + "/allowed"};
  moe::v1::JobSpec spec;
  spec.mutable_data()->set_tokenizer(moe::v1::TOKENIZER_PRETOKENIZED);
  spec.mutable_data()->set_path(root + "/allowed/*.bin");
  EXPECT_TRUE(CheckSpecPaths(policy, spec).ok()) << CheckSpecPaths(policy, spec);
  spec.mutable_data()->set_path(root + "/allowed");
  EXPECT_TRUE(CheckSpecPaths(policy, spec).ok()) << CheckSpecPaths(policy, spec);

  spec.mutable_data()->set_path(root + "/allowed/*/../../secret/*.bin");
  absl::Status s = CheckSpecPaths(policy, spec);
  EXPECT_EQ(s.code(), absl::StatusCode::kPermissionDenied) << s;
  EXPECT_TRUE(absl::StrContains(s.message(), "resolves to " + root + "/secret/s.bin")) << s;
  fs::create_symlink(root + "/secret/s.bin", root + "/allowed/link.bin");
  spec.mutable_data()->set_path(root + "/allowed");
  s = CheckSpecPaths(policy, spec);
  EXPECT_EQ(s.code(), absl::StatusCode::kPermissionDenied) << s;
  EXPECT_TRUE(absl::StrContains(s.message(), "link.bin (which resolves to " + root + "/secret/s.bin)")) << s;

  // A tokenizer's files and an init_from model's: before, tok/vocab.bpe -> secret was read, and a
  // parse error quoted its first line into the job's log.
  spec.mutable_data()->set_path(root + "/allowed/ok.bin");
  fs::create_directories(root + "/allowed/tok");
  fs::create_symlink(root + "/secret/s.bin", root + "/allowed/tok/vocab.bpe");
  spec.mutable_data()->set_tokenizer_dir(root + "/allowed/tok");
  s = CheckSpecPaths(policy, spec);
  EXPECT_TRUE(absl::StrContains(s.message(), "data.tokenizer_dir holds: " + root + "/allowed/tok/vocab.bpe")) << s;
  spec.mutable_data()->clear_tokenizer_dir();
  // A token cache's files are read and written: one linked out is refused too.
  fs::create_directories(root + "/allowed/cache");
  fs::create_symlink(root + "/secret/s.bin", root + "/allowed/cache/train.bin");
  spec.mutable_data()->set_cache_dir(root + "/allowed/cache");
  s = CheckSpecPaths(policy, spec);
  EXPECT_EQ(s.code(), absl::StatusCode::kPermissionDenied) << s;
  EXPECT_TRUE(absl::StrContains(s.message(), "data.cache_dir holds: " + root + "/allowed/cache/train.bin")) << s;
  spec.mutable_data()->clear_cache_dir();
  fs::create_directories(root + "/allowed/model/step_00000001");
  fs::create_symlink(root + "/secret/s.bin", root + "/allowed/model/step_00000001/model.safetensors");
  policy.checkpoint_roots = {root + "/checkpoints"};  // else any path but the system's is fine
  spec.mutable_model()->set_init_from(root + "/allowed/model");
  s = CheckSpecPaths(policy, spec);
  EXPECT_TRUE(absl::StrContains(s.message(), "model.init_from holds: " + root + "/allowed/model/step_00000001")) << s;
}

TEST(DaemonPrivilege, NothingMoedOrAWorkerCreatesIsReadableByOthers) {
  HarnessOptions o;
  DaemonHarness h(o);
  ASSERT_TRUE(h.Start()) << h.MoedLog();
  CommandResult r = h.Moectl({"submit", h.WriteJob("perm", 1, 2), "--follow"}, 300);
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  int files = 0;
  for (const auto& e : std::filesystem::recursive_directory_iterator(h.state_dir())) {
    struct stat st;
    ASSERT_EQ(lstat(e.path().c_str(), &st), 0);
    if (S_ISLNK(st.st_mode)) continue;
    ++files;
    // Open MPI makes its per-rank output directories 0750 itself; they sit inside the 0700
    // attempt directory. Everything else is the owner's alone.
    const bool open_mpi = absl::StrContains(e.path().string(), "/ranks");
    EXPECT_EQ(st.st_mode & (open_mpi ? 007 : 077), 0u)
        << e.path() << " has mode " << std::oct << (st.st_mode & 0777);
  }
  EXPECT_GT(files, 10);
}

}  // namespace
}  // namespace moe::testing
