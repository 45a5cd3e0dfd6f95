// moectl as a script sees it: --help on every command and --version on every program exit 0;
// list/status -o json parse and carry every field; the filters; a rank the job lacks is a usage
// error; delete and prune remove finished jobs end to end and refuse a running one; `logs -f`
// with no moed to reach says so at once.
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <fstream>
#include <iterator>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "common/files.h"
#include "gtest/gtest.h"
#include "moe_version.h"
#include "nlohmann/json.hpp"
#include "tests/support/daemon_harness.h"
#include "tests/support/paths.h"

namespace moe::testing {
namespace {

using moe::v1::Job;
using Json = nlohmann::json;

bool Exists(const std::string& path) {
  struct stat st;
  return stat(path.c_str(), &st) == 0;
}

HarnessOptions Fake(const std::string& steps, const std::string& step_s) {
  HarnessOptions o;
  o.worker_bin = FakeWorkerPath();
  o.cancel_grace_s = 5;
  o.env = {{"FAKE_STEPS", steps}, {"FAKE_STEP_SECONDS", step_s}};
  return o;
}

TEST(MoectlCli, HelpAndVersionExitZero) {
  for (const char* cmd : {"validate", "submit", "list", "status", "logs", "cancel", "metrics",
                          "delete", "prune", "completion"}) {
    CommandResult r = RunCommand({BinDir() + "/moectl", cmd, "--help"}, {}, 10);
    EXPECT_EQ(r.exit_code, 0) << cmd << r.err;
    EXPECT_TRUE(absl::StrContains(r.out, std::string("usage: moectl ") + cmd)) << r.out;
  }
  EXPECT_EQ(RunCommand({BinDir() + "/moectl", "--help"}, {}, 10).exit_code, 0);
  for (const char* prog : {"moectl", "moed", "moe-worker"}) {
    CommandResult r = RunCommand({BinDir() + "/" + prog, "--version"}, {}, 10);
    EXPECT_EQ(r.exit_code, 0) << prog << r.err;
    EXPECT_EQ(r.out, std::string(prog) + " " + moe::kMoeVersion + "\n");
  }
  CommandResult bad = RunCommand({BinDir() + "/moectl", "list", "-o", "yaml"}, {}, 10);
  EXPECT_EQ(bad.exit_code, 2);
  EXPECT_TRUE(absl::StrContains(bad.err, "usage: moectl list")) << bad.err;
  CommandResult completion = RunCommand({BinDir() + "/moectl", "completion", "bash"}, {}, 10);
  EXPECT_EQ(completion.exit_code, 0);
  EXPECT_TRUE(absl::StrContains(completion.out, "complete -o filenames -F _moectl moectl"));
  EXPECT_TRUE(absl::StrContains(completion.out, "--older-than")) << completion.out;
  CommandResult syntax = RunCommand({"/bin/bash", "-n", "-c", completion.out}, {}, 10);
  EXPECT_EQ(syntax.exit_code, 0) << syntax.err;
}

// The README's moectl table has a row for every subcommand `moectl --help` lists, and no other.
TEST(MoectlCli, TheReadmeTableListsEverySubcommand) {
  CommandResult help = RunCommand({BinDir() + "/moectl", "--help"}, {}, 10);
  ASSERT_EQ(help.exit_code, 0);
  std::set<std::string> commands;
  bool listing = false;
  std::istringstream lines(help.out);
  for (std::string line; std::getline(lines, line);) {
    if (line == "Subcommands:") listing = true;
    // "  validate    usage: ..." (the description lines are indented further)
    if (listing && line.size() > 2 && line[0] == ' ' && line[1] == ' ' && line[2] != ' ') {
      commands.insert(line.substr(2, line.find(' ', 2) - 2));
    }
  }
  ASSERT_GE(commands.size(), 10u) << help.out;
  std::ifstream in(moe::testing::SourceDir() + "/README.md");
  std::set<std::string> rows;
  bool table = false;
  for (std::string line; std::getline(in, line);) {
    if (absl::StartsWith(line, "### ")) table = line == "### moectl";
    if (table && absl::StartsWith(line, "| `")) rows.insert(line.substr(3, line.find_first_of(" `", 3) - 3));
  }
  EXPECT_EQ(rows, commands);
}

TEST(MoectlCli, FollowingLogsWithNoMoedToReachSaysSoAtOnce) {
  const std::string server = "127.0.0.1:" + std::to_string(FreePort());  // nothing listens there
  const std::string dir = MakeTempDir("moe-logs-nomoed-");
  std::ofstream(dir + "/config.yaml") << "{}\n";
  // Was "lost moed at ..., reconnecting..." and two minutes of retries for a moed never reached.
  CommandResult r = RunCommand({BinDir() + "/moectl", "logs", "j-000001", "-f"},
                               {{"MOE_SERVER", server}, {"MOE_CONFIG", dir + "/config.yaml"}}, 10);
  EXPECT_EQ(r.exit_code, 1) << r.err;
  EXPECT_EQ(r.err, "moectl: cannot reach moed at " + server +
                       " (is it running? set --server or MOE_SERVER)\n");
}

// A number out of range names the range, not CLI11's 'not in range 0.000000 to 1797693134862...'
// (a 300-digit double); NaN seconds and an age past int64 milliseconds are refused, not cast.
TEST(MoectlCli, OutOfRangeNumbersNameTheRange) {
  struct Case {
    std::vector<std::string> args;
    const char* expect;
  };
  for (const Case& c : {Case{{"list", "--limit", "-1"}, "not in range 1 to 2147483647"},
                        Case{{"logs", "j-000001", "--tail", "-1"}, "not in range 1 to 9223372036854775807"},
                        Case{{"resume", "j-000001", "--steps", "0"}, "not in range 1 to 2147483647"},
                        Case{{"cancel", "j-000001", "--wait", "nan"}, "'nan' is not a number of seconds"},
                        Case{{"cancel", "j-000001", "--wait", "inf"}, "'inf' is not a number of seconds"},
                        Case{{"prune", "--older-than", "15250284453w"}, "'15250284453w' is too large an age"},
                        Case{{"prune", "--older-than", "999999999999d"}, "too large an age (beyond 290 million"},
                        // Each unit once, larger first: 1d1d was taken as 2 days.
                        Case{{"prune", "--older-than", "1d1d"}, "'1d1d' is not an age: 'd' comes twice"},
                        Case{{"prune", "--older-than", "30m1h"}, "'h' comes after a smaller unit"},
                        Case{{"prune", "--older-than", "7y"}, "'y' is no unit; an age is like 7d"},
                        // Empty values that were taken as not given (submit --from '' ran a fresh job).
                        Case{{"submit", "job.yaml", "--from", ""}, "--from: is empty; give a job id"},
                        Case{{"metrics", "j-000001", "--svg", ""}, "--svg: is empty; give a file name"},
                        Case{{"validate", "job.yaml", "--gpu-memory", ""}, "is empty; give a size"},
                        Case{{"--server", "", "list"}, "--server: is empty; give HOST:PORT"},
                        // CLI11's own words, in moectl's.
                        Case{{"list", "--limit", "abc"}, "--limit: 'abc' is not a whole number; give one from 1 to"},
                        Case{{"list", "-o", "json", "-o", "csv"}, "--output: given 2 times; give it once"}}) {
    std::vector<std::string> argv = {BinDir() + "/moectl"};
    argv.insert(argv.end(), c.args.begin(), c.args.end());
    CommandResult r = RunCommand(argv, {{"MOE_SERVER", "127.0.0.1:1"}}, 10);
    EXPECT_EQ(r.exit_code, 2) << c.args[0] << ": " << r.err;
    EXPECT_TRUE(absl::StrContains(r.err, c.expect)) << c.args[0] << ": " << r.err;
    EXPECT_FALSE(absl::StrContains(r.err, "179769")) << r.err;
  }
}

// Words that cannot be what they stand for are usage errors before any RPC (exit 2): a job id
// that is no id (one not UTF-8 could not be sent: it read "the server ... is not a moed"), a
// server address that is a URL or lacks a port (they read "cannot reach moed"), a mistyped
// command (it read "A subcommand is required").
TEST(MoectlCli, WordsThatCannotBeWhatTheyNameAreUsageErrors) {
  struct Case {
    std::vector<std::string> args;
    const char* expect;
  };
  for (const Case& c :
       {Case{{"status", "j-000001", "\xff\xfe"}, "not a job id (2 bytes, with control characters or non-ASCII"},
        Case{{"logs", ""}, "the job id is empty"},
        Case{{"cancel", std::string(65, 'j')}, "not a job id (65 bytes)"},
        Case{{"delete", "j-000001", "j-\x1b[31m"}, "not a job id"},
        Case{{"submit", "job.yaml", "--from", "j\n1"}, "not a job id"},
        Case{{"--server", "http://127.0.0.1:50051", "list"}, "is a URL; moed's gRPC address is HOST:PORT"},
        Case{{"--server", "bogus", "list"}, "'bogus' has no port; give HOST:PORT"},
        Case{{"--server", "127.0.0.1:99999", "list"}, "the port '99999' is not a number from 1 to 65535"},
        Case{{"valdiate", "job.yaml"}, "unknown command 'valdiate'; did you mean 'validate'?"},
        Case{{"--server", "127.0.0.1:1", "frobnicate"}, "unknown command 'frobnicate'\n"},
        // Before: 0 printed every line / listed every job.
        Case{{"logs", "j-000001", "--tail", "0"}, "--tail"},
        Case{{"list", "--limit", "0"}, "--limit"},
        // Before: a glob fnmatch cannot read matched no job, without a word.
        Case{{"list", "--name", "["}, "--name: '[' is not a glob: the '[' at character 1 opens a set of characters "
                                      "that no ']' closes"},
        Case{{"list", "--name", "alpha\\"}, "--name: 'alpha\\' is not a glob: it ends in a lone '\\'"},
        Case{{"cancel", "j-000001", "--no-wait", "--wait", "5"}, "excludes"}}) {
    std::vector<std::string> argv = {BinDir() + "/moectl"};
    argv.insert(argv.end(), c.args.begin(), c.args.end());
    CommandResult r = RunCommand(argv, {{"MOE_SERVER", "127.0.0.1:1"}}, 10);
    EXPECT_EQ(r.exit_code, 2) << c.args[0] << ": " << r.err;
    EXPECT_TRUE(absl::StrContains(r.err, c.expect)) << c.args[0] << ": " << r.err;
    EXPECT_FALSE(absl::StrContains(r.err, "\x1b")) << r.err;
  }
  // MOE_SERVER is checked as --server is, and is bad input as a flag is (exit 2).
  CommandResult env = RunCommand({BinDir() + "/moectl", "list"}, {{"MOE_SERVER", "https://moed:50051"}}, 10);
  EXPECT_EQ(env.exit_code, 2) << env.err;
  EXPECT_TRUE(absl::StrContains(env.err, "MOE_SERVER: 'https://moed:50051' is a URL")) << env.err;
  // gRPC's own target names pass.
  CommandResult unix_target = RunCommand({BinDir() + "/moectl", "--server", "unix:/nonexistent/moed.sock", "list"}, {}, 10);
  EXPECT_EQ(unix_target.exit_code, 1) << unix_target.err;
  EXPECT_TRUE(absl::StrContains(unix_target.err, "cannot reach moed at unix:/nonexistent/moed.sock")) << unix_target.err;
}

// A token gRPC cannot carry in a header, and a config path that is a directory: before, moectl
// aborted (gRPC's 'Illegal header value' assertion; an uncaught std::ios_failure). A bad
// configuration is bad input: exit 2, as a bad flag (it was 1, moed's errors' code).
TEST(MoectlCli, AnUnsendableTokenOrADirectoryAsConfigIsAnError) {
  const std::string dir = MakeTempDir("moectl-config-");
  for (const std::string& token : {std::string("abc\x01" "def"), std::string("caf\xc3\xa9"), std::string(5000, 't')}) {
    CommandResult r = RunCommand({BinDir() + "/moectl", "list"}, {{"MOE_SERVER", "127.0.0.1:1"}, {"MOE_TOKEN", token}}, 10);
    EXPECT_EQ(r.exit_code, 2) << r.err;
    EXPECT_TRUE(absl::StrContains(r.err, "moectl: MOE_TOKEN ")) << r.err;
  }
  std::ofstream(dir + "/token") << "t\x7fk\n";
  std::ofstream(dir + "/config.yaml") << "token_file: " << dir << "/token\n";
  CommandResult r = RunCommand({BinDir() + "/moectl", "list"},
                               {{"MOE_SERVER", "127.0.0.1:1"}, {"MOE_CONFIG", dir + "/config.yaml"}}, 10);
  EXPECT_EQ(r.exit_code, 2) << r.err;
  EXPECT_TRUE(absl::StrContains(r.err, "the token in " + dir + "/token holds the byte 0x7F at offset 1")) << r.err;
  r = RunCommand({BinDir() + "/moectl", "list"}, {{"MOE_SERVER", "127.0.0.1:1"}, {"MOE_CONFIG", dir}}, 10);
  EXPECT_EQ(r.exit_code, 2) << r.err;
  EXPECT_TRUE(absl::StrContains(r.err, "config " + dir + " is a directory")) << r.err;
  std::ofstream(dir + "/list.yaml") << "- server\n- token_file\n";
  r = RunCommand({BinDir() + "/moectl", "list"}, {{"MOE_CONFIG", dir + "/list.yaml"}}, 10);
  EXPECT_EQ(r.exit_code, 2) << r.err;
  EXPECT_TRUE(absl::StrContains(r.err, "not a mapping of keys")) << r.err;
  // A misspelt key: before, ignored (moectl went to the default server without a word).
  std::ofstream(dir + "/typo.yaml") << "sever: moed:50051\n";
  r = RunCommand({BinDir() + "/moectl", "list"}, {{"MOE_CONFIG", dir + "/typo.yaml"}}, 10);
  EXPECT_EQ(r.exit_code, 2) << r.err;
  EXPECT_TRUE(absl::StrContains(r.err, "unknown key 'sever'")) << r.err;
  // A MOE_CONFIG that names no file, and a token_file that cannot be read: what, where, the fix.
  r = RunCommand({BinDir() + "/moectl", "status"}, {{"MOE_CONFIG", dir + "/absent.yaml"}}, 10);
  EXPECT_EQ(r.exit_code, 2) << r.err;
  EXPECT_EQ(r.err, "moectl: MOE_CONFIG names " + dir + "/absent.yaml, which cannot be read (No such file or "
                   "directory); point MOE_CONFIG at a readable YAML file with `server: HOST:PORT` and "
                   "`token_file: PATH` (/dev/null for none), or unset it to read ~/.config/moe/config.yaml\n");
  std::ofstream(dir + "/lost-token.yaml") << "token_file: " << dir << "/no-token\n";
  r = RunCommand({BinDir() + "/moectl", "logs", "j-000001"},
                 {{"MOE_SERVER", "127.0.0.1:1"}, {"MOE_CONFIG", dir + "/lost-token.yaml"}, {"MOE_TOKEN", ""}}, 10);
  EXPECT_EQ(r.exit_code, 2) << r.err;
  EXPECT_TRUE(absl::StrContains(r.err, "token_file " + dir + "/no-token (from " + dir + "/lost-token.yaml) cannot be read"))
      << r.err;
  EXPECT_TRUE(absl::StrContains(r.err, "; fix `token_file:` there, or set MOE_TOKEN")) << r.err;
}

// The config file gets the job file's checks: before, bytes that are not UTF-8 made it an empty
// config (the default server, without a word), a NUL byte gave yaml-cpp's "unknown escape
// character", and a list for server: its "bad conversion".
TEST(MoectlCli, AConfigThatIsNoTextOrHasAListForAStringSaysWhere) {
  const std::string dir = MakeTempDir("moectl-config-");
  struct Case {
    std::string text, expect;
  };
  for (const Case& c : std::vector<Case>{
           {"server: 127.0.0.1:1\n\xff\xfe\n",
            ".yaml:2:1: is not a UTF-8 text file: found byte 0xFF here, which is not valid UTF-8"},
           {std::string("server: \"a\0b\"\n", 14), ".yaml:1:11: is not a UTF-8 text file: found a NUL byte here"},
           {"server: [a, b]\n", ".yaml:1:9: server: must be a string HOST:PORT, got a list"},
           {"token_file: {a: 1}\n", ".yaml:1:13: token_file: must be a string PATH, got a mapping"}}) {
    std::ofstream(dir + "/config.yaml", std::ios::binary | std::ios::trunc) << c.text;
    CommandResult r = RunCommand({BinDir() + "/moectl", "list"}, {{"MOE_CONFIG", dir + "/config.yaml"}}, 10);
    EXPECT_EQ(r.exit_code, 2) << r.err;
    EXPECT_TRUE(absl::StartsWith(r.err, "moectl: config " + dir + "/config" + c.expect)) << r.err;
    EXPECT_TRUE(absl::StrContains(r.err, "(expected `server: HOST:PORT` and `token_file: PATH`)")) << r.err;
    EXPECT_FALSE(absl::StrContains(r.err, "yaml-cpp")) << r.err;
  }
}

// moe-worker --no-checkpoint (benchmarks and trials by hand): trains and writes no checkpoint, not
// even at the end, where the same run without it writes one; refused beside --resume or
// --checkpoint-dir, and for moed's --spec runs.
TEST(MoeWorkerCli, NoCheckpointWritesNoneAndRefusesWhatNeedsOne) {
  const std::string dir = moe::testing::MakeTempDir("moe-worker-nockpt-");
  std::ofstream(dir + "/text.txt") << std::string(4000, 'a') + "the quick brown fox jumps over the lazy dog\n";
  const std::string ck = dir + "/ck";
  std::ofstream(dir + "/job.yaml")
      << "name: nockpt\n"
         "model: {d_model: 16, n_layers: 1, n_heads: 2, seq_len: 8, dropout: 0.0,\n"
         "        moe: {num_experts: 2, top_k: 1, expert_hidden: 16}}\n"
         "data: {path: " << dir << "/text.txt, tokenizer: char}\n"
         "train: {steps: 4, batch_size: 2, eval_every: 100, eval_batches: 1}\n"
         "resources: {device: cpu}\n"
         "checkpoint: {dir: " << ck << "}\n";
  const std::string worker = BinDir() + "/moe-worker", job = dir + "/job.yaml";
  CommandResult none = RunCommand({worker, "--job", job, "--max-steps", "2", "--no-checkpoint", "--threads", "1"}, {}, 120);
  ASSERT_EQ(none.exit_code, 0) << none.out << none.err;
  EXPECT_TRUE(absl::StrContains(none.out, "checkpoints none (--no-checkpoint)")) << none.out;
  struct stat st;
  EXPECT_NE(stat(ck.c_str(), &st), 0) << "--no-checkpoint wrote " << ck;
  CommandResult with = RunCommand({worker, "--job", job, "--max-steps", "2", "--threads", "1"}, {}, 120);
  ASSERT_EQ(with.exit_code, 0) << with.out << with.err;
  EXPECT_EQ(stat(ck.c_str(), &st), 0) << "the same run without the flag wrote no checkpoint";
  {
    // Another run training into the directory (here: this test holding its lock): refused at
    // start, where both ran and one's checkpoints replaced the other's.
    absl::StatusOr<moe::DirectoryLock> held = moe::DirectoryLock::Take(ck);
    ASSERT_TRUE(held.ok()) << held.status();
    CommandResult busy = RunCommand({worker, "--job", job, "--max-steps", "3", "--resume", "--threads", "1"}, {}, 120);
    EXPECT_NE(busy.exit_code, 0) << busy.out << busy.err;
    EXPECT_TRUE(absl::StrContains(busy.out + busy.err, "is in use: another run is training into it now"))
        << busy.out << busy.err;
  }
  CommandResult resumed = RunCommand({worker, "--job", job, "--max-steps", "3", "--resume", "--threads", "1"}, {}, 120);
  EXPECT_EQ(resumed.exit_code, 0) << resumed.out << resumed.err;
  for (const std::vector<std::string>& bad :
       {std::vector<std::string>{worker, "--job", job, "--no-checkpoint", "--resume"},
        std::vector<std::string>{worker, "--job", job, "--no-checkpoint", "--checkpoint-dir", ck},
        std::vector<std::string>{worker, "--spec", dir + "/spec.json", "--no-checkpoint"}}) {
    CommandResult r = RunCommand(bad, {}, 30);
    EXPECT_EQ(r.exit_code, 2) << r.out << r.err;
    EXPECT_TRUE(absl::StrContains(r.err, "--no-checkpoint")) << r.err;
  }
}

// MOE_SERVER at a port that answers in HTTP/1.1 (moed's --metrics-listen port, say): moectl says
// the address answers but is not moed's gRPC port, not "cannot reach moed ... (is it running?)".
TEST(MoectlCli, AnHttpPortIsNamedAsNotMoedsGrpcPort) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  ASSERT_GE(fd, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  ASSERT_EQ(listen(fd, 16), 0);
  socklen_t len = sizeof(addr);
  ASSERT_EQ(getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len), 0);
  const std::string server = "127.0.0.1:" + std::to_string(ntohs(addr.sin_port));
  std::thread http([fd] {  // answers every connection as an HTTP/1.1 server, until shut down
    for (int c; (c = accept(fd, nullptr, nullptr)) >= 0; close(c)) {
      const char reply[] = "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
      (void)!write(c, reply, sizeof(reply) - 1);
    }
  });
  CommandResult r = RunCommand({BinDir() + "/moectl", "list"}, {{"MOE_SERVER", server}}, 30);
  shutdown(fd, SHUT_RDWR);
  http.join();
  close(fd);
  EXPECT_EQ(r.exit_code, 1) << r.err;
  EXPECT_TRUE(absl::StrContains(r.err, server + " answers, but not as moed's gRPC port")) << r.err;
  EXPECT_TRUE(absl::StrContains(r.err, "--metrics-listen")) << r.err;
  EXPECT_FALSE(absl::StrContains(r.err, "is it running")) << r.err;
}

TEST(MoectlCli, ListJsonCarriesEveryFieldAndFilters) {
  DaemonHarness h(Fake("2", "0.05"));
  ASSERT_TRUE(h.Start()) << h.MoedLog();
  std::vector<std::string> ids;
  for (const char* name : {"alpha-1", "beta-1", "alpha-2"}) {
    CommandResult r = h.Moectl({"submit", h.WriteJob(name, 1, 2), "--follow"}, 60);
    ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
    ids.push_back(r.out.substr(0, r.out.find('\n')));
  }
  CommandResult list = h.Moectl({"list", "-o", "json"});
  ASSERT_EQ(list.exit_code, 0) << list.err;
  Json jobs = Json::parse(list.out);
  ASSERT_EQ(jobs.size(), 3u);
  auto stub = h.Stub();
  for (const Json& j : jobs) {
    grpc::ClientContext ctx;
    moe::v1::GetJobRequest req;
    req.set_id(j.at("id").get<std::string>());
    Job job;
    ASSERT_TRUE(stub->GetJob(&ctx, req, &job).ok());
    EXPECT_EQ(j.at("name"), job.spec().name());
    EXPECT_EQ(j.at("state"), "SUCCEEDED");
    EXPECT_TRUE(j.at("steps").is_number_integer());
    EXPECT_EQ(j.at("steps").get<int64_t>(), job.spec().train().steps());
    EXPECT_EQ(j.at("ranks").get<int>(), 1);
    EXPECT_EQ(j.at("restarts").get<int>(), job.restarts());
    EXPECT_EQ(j.at("max_restarts").get<int>(), job.spec().max_restarts());
    EXPECT_EQ(j.at("device"), "cpu");
    EXPECT_EQ(j.at("launcher"), "local");
    EXPECT_EQ(j.at("created_unix_ms").get<int64_t>(), job.created_unix_ms());
    EXPECT_EQ(j.at("started_unix_ms").get<int64_t>(), job.started_unix_ms());
    EXPECT_EQ(j.at("ended_unix_ms").get<int64_t>(), job.ended_unix_ms());
    EXPECT_EQ(j.at("state_dir"), job.state_dir());
    // The stand-in worker reports no metrics: no step, loss or ETA, rather than zeros.
    EXPECT_FALSE(j.contains("step") || j.contains("loss") || j.contains("val_loss") ||
                 j.contains("eta_s") || j.contains("reason"))
        << j.dump();
  }
  CommandResult filtered =
      h.Moectl({"list", "--state", "succeeded", "--name", "alpha-*", "--limit", "1", "-o", "json"});
  ASSERT_EQ(filtered.exit_code, 0) << filtered.err;
  Json one = Json::parse(filtered.out);
  ASSERT_EQ(one.size(), 1u);
  EXPECT_EQ(one[0].at("id"), ids[2]);
  EXPECT_EQ(Json::parse(h.Moectl({"list", "--state", "FAILED", "-o", "json"}).out).size(), 0u);
  CommandResult status = h.Moectl({"status", ids[0], ids[1], "-o", "json"});
  ASSERT_EQ(status.exit_code, 0) << status.err;
  Json two = Json::parse(status.out);
  ASSERT_EQ(two.size(), 2u);
  EXPECT_EQ(two[1].at("id"), ids[1]);
  CommandResult csv = h.Moectl({"status", "-o", "csv"});
  EXPECT_TRUE(absl::StartsWith(csv.out, "id,name,state,")) << csv.out;
  CommandResult rank = h.Moectl({"logs", ids[0], "--rank", "7"});
  EXPECT_EQ(rank.exit_code, 2);
  EXPECT_TRUE(absl::StrContains(rank.err, "there is no rank 7")) << rank.err;
}

// `logs -f` into a pipe or a file sends each line as it comes: before, stdio held them in its
// 4 KiB buffer (a sparse log showed nothing for minutes) and a stopped moectl lost them. Output
// that cannot be written (a full disk) is an error, not exit 0 with a truncated table.
TEST(MoectlCli, FollowedLinesGoOutAtOnceAndUnwritableOutputFails) {
  DaemonHarness h(Fake("100000", "0.1"));
  ASSERT_TRUE(h.Start()) << h.MoedLog();
  CommandResult sub = h.Moectl({"submit", h.WriteJob("chatty", 1, 100000)});
  ASSERT_EQ(sub.exit_code, 0) << sub.err;
  const std::string id = sub.out.substr(0, sub.out.find('\n'));
  ASSERT_EQ(h.WaitForState(id, moe::v1::JOB_STATE_RUNNING, 30).state(), moe::v1::JOB_STATE_RUNNING);
  const std::string file = MakeTempDir("moectl-follow-") + "/lines.txt";
  const std::string moectl = BinDir() + "/moectl";
  // A file as stdout, moectl stopped by SIGTERM after 3 s: the lines it had are in the file.
  // (The stand-in worker prints a line every 0.1 s.)
  RunCommand({"/bin/sh", "-c", "timeout -s TERM 3 " + moectl + " logs " + id + " -f > " + file},
             {{"MOE_SERVER", h.address()}, {"MOE_CONFIG", "/dev/null"}}, 30);
  std::ifstream in(file);
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT_GE(std::count(text.begin(), text.end(), '\n'), 5) << "logs -f wrote only: " << text;
  // A reader that stops reading (`| head -n 1`): moectl stops quietly, exit 0 (SIGPIPE killed it:
  // exit 141, which pipefail passes on).
  CommandResult head = RunCommand({"/bin/bash", "-c", "set -o pipefail; " + moectl + " logs " + id + " -f | head -n 1"},
                                  {{"MOE_SERVER", h.address()}, {"MOE_CONFIG", "/dev/null"}}, 30);
  EXPECT_EQ(head.exit_code, 0) << head.err;
  EXPECT_EQ(std::count(head.out.begin(), head.out.end(), '\n'), 1) << head.out;
  EXPECT_EQ(head.err, "");
  struct stat st;
  if (stat("/dev/full", &st) == 0 && S_ISCHR(st.st_mode)) {
    CommandResult full = RunCommand({"/bin/sh", "-c", moectl + " list > /dev/full"},
                                    {{"MOE_SERVER", h.address()}, {"MOE_CONFIG", "/dev/null"}}, 30);
    EXPECT_EQ(full.exit_code, 1) << full.err;
    EXPECT_TRUE(absl::StrContains(
        full.err, "the command succeeded, but its output could not be written (No space left on device)"))
        << full.err;
  }
  h.Moectl({"cancel", id});
}

TEST(MoectlCli, DeleteAndPruneRemoveFinishedJobsOnly) {
  DaemonHarness h(Fake("100000", "0.2"));
  ASSERT_TRUE(h.Start()) << h.MoedLog();
  CommandResult sub = h.Moectl({"submit", h.WriteJob("keep-running", 1, 100)});
  ASSERT_EQ(sub.exit_code, 0) << sub.err;
  const std::string id = sub.out.substr(0, sub.out.find('\n'));
  ASSERT_EQ(h.WaitForState(id, moe::v1::JOB_STATE_RUNNING, 30).state(), moe::v1::JOB_STATE_RUNNING);
  CommandResult refused = h.Moectl({"delete", id});
  EXPECT_EQ(refused.exit_code, 1);
  EXPECT_TRUE(absl::StrContains(refused.err, "is RUNNING; only a finished job can be deleted"))
      << refused.err;
  CommandResult prune_running = h.Moectl({"prune", "--older-than", "0s"});
  EXPECT_EQ(prune_running.exit_code, 0) << prune_running.err;
  EXPECT_TRUE(absl::StrContains(prune_running.out, "pruned 0 jobs")) << prune_running.out;
  ASSERT_EQ(h.Moectl({"cancel", id}).exit_code, 0);

  // Deleted without --checkpoints: rows and rank output gone, the checkpoints stay.
  const Job job = h.WaitForState(id, moe::v1::JOB_STATE_CANCELLED, 30);
  const std::string dir = job.state_dir();
  ASSERT_TRUE(Exists(dir + "/checkpoints")) << dir;
  CommandResult del = h.Moectl({"delete", id, id});  // named twice: deleted once, exit 0
  EXPECT_EQ(del.exit_code, 0) << del.err;
  EXPECT_TRUE(absl::StrContains(del.out, "deleted " + id)) << del.out;
  EXPECT_TRUE(absl::StrContains(del.out, "kept " + dir + "/checkpoints")) << del.out;
  EXPECT_TRUE(Exists(dir + "/checkpoints"));
  EXPECT_FALSE(Exists(dir + "/spec.json"));
  CommandResult gone = h.Moectl({"status", id});
  EXPECT_EQ(gone.exit_code, 1);
  EXPECT_TRUE(absl::StrContains(gone.err, "job " + id + " was deleted at ")) << gone.err;
  EXPECT_TRUE(absl::StrContains(h.Moectl({"logs", id}).err, "was deleted")) << id;
  EXPECT_EQ(h.Moectl({"delete", id}).exit_code, 1);

  // Two more jobs, cancelled; prune by state and age, dry run first; ids are never reused.
  std::vector<std::string> ids;
  for (const char* name : {"p-1", "p-2"}) {
    CommandResult r = h.Moectl({"submit", h.WriteJob(name, 1, 1)});
    ids.push_back(r.out.substr(0, r.out.find('\n')));
    ASSERT_EQ(h.WaitForState(ids.back(), moe::v1::JOB_STATE_RUNNING, 30).state(),
              moe::v1::JOB_STATE_RUNNING);
    ASSERT_EQ(h.Moectl({"cancel", ids.back()}).exit_code, 0);
  }
  ASSERT_NE(ids[0], id);
  EXPECT_TRUE(absl::StrContains(h.Moectl({"prune", "--older-than", "1h"}).out, "pruned 0 jobs"));
  CommandResult dry = h.Moectl({"prune", "--older-than", "0s", "--state", "cancelled", "--dry-run"});
  EXPECT_TRUE(absl::StrContains(dry.out, "would prune 2 jobs")) << dry.out << dry.err;
  // The dry run names what would go (each job's folder, its checkpoints inside).
  EXPECT_TRUE(absl::StrContains(dry.out, "  would remove " + h.state_dir() + "/jobs/" + ids[0])) << dry.out;
  EXPECT_EQ(Json::parse(h.Moectl({"list", "-o", "json"}).out).size(), 2u);
  CommandResult pruned =
      h.Moectl({"prune", "--older-than", "0s", "--state", "CANCELLED", "--checkpoints"});
  EXPECT_EQ(pruned.exit_code, 0) << pruned.err;
  EXPECT_TRUE(absl::StrContains(pruned.out, "pruned 2 jobs")) << pruned.out;
  EXPECT_EQ(Json::parse(h.Moectl({"list", "-o", "json"}).out).size(), 0u);
  EXPECT_EQ(h.Moectl({"prune", "--older-than", "soon"}).exit_code, 2);
  EXPECT_EQ(h.Moectl({"prune", "--older-than", "1d", "--state", "RUNNING"}).exit_code, 2);
}

}  // namespace
}  // namespace moe::testing
