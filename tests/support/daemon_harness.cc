// DaemonHarness: process plumbing (fork/exec, output capture, /proc scans) for the moed tests.
#include "tests/support/daemon_harness.h"

#include <dirent.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <fstream>
#include <sstream>
#include <thread>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "common/files.h"
#include "daemon/job_store.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"
#include "tests/support/paths.h"

extern char** environ;

namespace moe::testing {
namespace {

using Clock = std::chrono::steady_clock;

std::string Slurp(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

pid_t Spawn(const std::vector<std::string>& argv, const std::map<std::string, std::string>& env,
            const std::string& out_path, const std::string& err_path, bool new_session) {
  std::vector<std::string> envs;
  for (char** e = environ; *e != nullptr; ++e) {
    std::string kv = *e;
    std::string key = kv.substr(0, kv.find('='));
    if (env.count(key) == 0) envs.push_back(kv);
  }
  for (const auto& [k, v] : env) envs.push_back(k + "=" + v);
  std::vector<char*> args, envp;
  std::vector<std::string> argv_copy = argv;
  for (std::string& a : argv_copy) args.push_back(a.data());
  args.push_back(nullptr);
  for (std::string& e : envs) envp.push_back(e.data());
  envp.push_back(nullptr);
  int out = open(out_path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  int err = open(err_path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  int in = open("/dev/null", O_RDONLY | O_CLOEXEC);
  pid_t pid = fork();
  if (pid == 0) {
    if (new_session) setsid();
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, nullptr);
    dup2(in, 0);
    dup2(out, 1);
    dup2(err, 2);
    execve(args[0], args.data(), envp.data());
    _exit(127);
  }
  close(out);
  close(err);
  close(in);
  return pid;
}

}  // namespace

int FreePort() {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr = {};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
  socklen_t len = sizeof(addr);
  getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  int port = ntohs(addr.sin_port);
  close(fd);
  return port;
}

std::vector<int> ProcessesMentioning(const std::string& needle) {
  std::vector<int> out;
  DIR* d = opendir("/proc");
  if (d == nullptr) return out;
  while (dirent* e = readdir(d)) {
    int pid = 0;
    if (!absl::SimpleAtoi(e->d_name, &pid) || pid == getpid()) continue;
    std::string stat = Slurp(absl::StrCat("/proc/", pid, "/stat"));
    size_t close_paren = stat.rfind(')');
    if (close_paren == std::string::npos || close_paren + 2 >= stat.size()) continue;
    char state = stat[close_paren + 2];
    if (state == 'Z' || state == 'X') continue;
    std::string cmd = Slurp(absl::StrCat("/proc/", pid, "/cmdline"));
    for (char& c : cmd) {
      if (c == '\0') c = ' ';
    }
    if (cmd.find(needle) != std::string::npos) out.push_back(pid);
  }
  closedir(d);
  return out;
}

std::string FakeWorkerPath() { return SourceDir() + "/tests/tools/fake_worker.sh"; }

CommandResult RunCommand(const std::vector<std::string>& argv,
                         const std::map<std::string, std::string>& env, double timeout_s) {
  std::string dir = MakeTempDir("moe-cmd-");
  std::string out_path = dir + "/out", err_path = dir + "/err";
  pid_t pid = Spawn(argv, env, out_path, err_path, /*new_session=*/false);
  CommandResult r;
  const auto deadline = Clock::now() + std::chrono::milliseconds(static_cast<int>(timeout_s * 1000));
  int status = 0;
  while (true) {
    pid_t w = waitpid(pid, &status, WNOHANG);
    if (w == pid) break;
    if (Clock::now() > deadline) {
      kill(pid, SIGKILL);
      waitpid(pid, &status, 0);
      r.err = "(killed after timeout) ";
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  r.out = Slurp(out_path);
  r.err += Slurp(err_path);
  unlink(out_path.c_str());
  unlink(err_path.c_str());
  rmdir(dir.c_str());
  return r;
}

DaemonHarness::DaemonHarness(HarnessOptions options) : options_(std::move(options)) {
  work_dir_ = MakeTempDir("moe-daemon-test-");
  state_dir_ = work_dir_ + "/state";
  port_ = FreePort();
  metrics_port_ = FreePort();
  address_ = absl::StrCat("127.0.0.1:", port_);
  if (options_.worker_bin.empty()) options_.worker_bin = BinDir() + "/moe-worker";
}

DaemonHarness::~DaemonHarness() {
  Stop();
  // Whatever a test left running: every process of its jobs mentions the state dir.
  for (int attempt = 0; attempt < 50; ++attempt) {
    std::vector<int> left = ProcessesMentioning(state_dir_);
    if (left.empty()) break;
    for (int p : left) kill(p, SIGKILL);
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
}

bool DaemonHarness::Start() {
  std::vector<std::string> argv = {BinDir() + "/moed",
                                   "--state-dir", state_dir_,
                                   "--listen", address_,
                                   "--metrics-listen", absl::StrCat("127.0.0.1:", metrics_port_),
                                   "--max-ranks", absl::StrCat(options_.max_ranks),
                                   "--worker-bin", options_.worker_bin,
                                   "--heartbeat-timeout", absl::StrCat(options_.heartbeat_timeout_s),
                                   "--cancel-grace", absl::StrCat(options_.cancel_grace_s)};
  if (!options_.token_file.empty()) {
    argv.insert(argv.end(), {"--token-file", options_.token_file});
  }
  // CI runs as root; moed refuses root without --allow-root (tested on its own).
  if (geteuid() == 0 && options_.allow_root) argv.push_back("--allow-root");
  argv.insert(argv.end(), options_.extra_args.begin(), options_.extra_args.end());
  pid_ = Spawn(argv, options_.env, work_dir_ + "/moed.out", work_dir_ + "/moed.log",
               /*new_session=*/true);
  // Ready once ListJobs answers (UNAUTHENTICATED counts: the server is up).
  const auto deadline = Clock::now() + std::chrono::seconds(20);
  while (Clock::now() < deadline) {
    auto stub = Stub();  // a fresh channel: a failed one would wait out its reconnect backoff
    int status;
    if (waitpid(pid_, &status, WNOHANG) == pid_) {
      pid_ = -1;
      start_exit_code_ = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
      return false;
    }
    grpc::ClientContext ctx;
    std::string t = token();
    if (!t.empty()) ctx.AddMetadata("authorization", "Bearer " + t);
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(500));
    moe::v1::ListJobsResponse resp;
    grpc::Status s = stub->ListJobs(&ctx, moe::v1::ListJobsRequest(), &resp);
    if (s.ok() || s.error_code() == grpc::StatusCode::UNAUTHENTICATED) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return false;
}

void DaemonHarness::Kill9() {
  if (pid_ <= 0) return;
  kill(pid_, SIGKILL);
  int status;
  waitpid(pid_, &status, 0);
  pid_ = -1;
}

void DaemonHarness::Stop() {
  if (pid_ <= 0) return;
  kill(pid_, SIGTERM);
  const auto deadline = Clock::now() + std::chrono::seconds(10);
  int status;
  while (waitpid(pid_, &status, WNOHANG) != pid_) {
    if (Clock::now() > deadline) {
      kill(pid_, SIGKILL);
      waitpid(pid_, &status, 0);
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  pid_ = -1;
}

std::string DaemonHarness::token() const {
  if (options_.token_file.empty()) return "";
  std::string t = Slurp(options_.token_file);
  while (!t.empty() && (t.back() == '\n' || t.back() == ' ')) t.pop_back();
  return t;
}

std::string DaemonHarness::ReportSecret(const std::string& id) const {
  auto store = moe::daemon::JobStore::Open(state_dir_ + "/moed.db");
  if (!store.ok()) return "";
  absl::StatusOr<moe::daemon::JobRecord> rec = (*store)->GetJob(id);
  return rec.ok() ? rec->report_secret : "";
}

CommandResult DaemonHarness::Moectl(const std::vector<std::string>& args, double timeout_s,
                                    const std::map<std::string, std::string>& env) {
  std::vector<std::string> argv = {BinDir() + "/moectl"};
  argv.insert(argv.end(), args.begin(), args.end());
  std::map<std::string, std::string> e = {{"MOE_SERVER", address_},
                                          {"MOE_CONFIG", work_dir_ + "/no-config.yaml"}};
  if (!token().empty()) e["MOE_TOKEN"] = token();
  for (const auto& [k, v] : env) e[k] = v;
  // An absent MOE_CONFIG file is an error for moectl; give it an empty one.
  if (access((work_dir_ + "/no-config.yaml").c_str(), F_OK) != 0) {
    std::ofstream(work_dir_ + "/no-config.yaml") << "{}\n";
  }
  return RunCommand(argv, e, timeout_s);
}

std::unique_ptr<moe::v1::JobService::Stub> DaemonHarness::Stub() {
  return moe::v1::JobService::NewStub(
      grpc::CreateChannel(address_, grpc::InsecureChannelCredentials()));
}

std::string DaemonHarness::WriteJob(const std::string& name, int ranks, int steps,
                                    int max_restarts, const std::string& extra_yaml) {
  std::string path = work_dir_ + "/" + name + ".yaml";
  std::ofstream out(path);
  out << "name: " << name << R"(
model:
  d_model: 64
  n_layers: 2
  n_heads: 4
  n_kv_heads: 2
  seq_len: 32
  moe:
    num_experts: 4
    top_k: 2
    expert_hidden: 64
data:
  path: )" << ShakespearePath()
      << R"(
  tokenizer: char
train:
  steps: )" << steps
      << R"(
  batch_size: 4
  lr: 1.0e-3
  warmup_steps: 1
  log_every: 1
  eval_every: 5
  eval_batches: 1
resources:
  ranks: )" << ranks
      << R"(
  device: cpu
  launcher: local
max_restarts: )" << max_restarts
      << "\n"
      << extra_yaml;
  return path;
}

moe::v1::Job DaemonHarness::WaitFor(const std::string& id,
                                    const std::function<bool(const moe::v1::Job&)>& pred,
                                    double timeout_s) {
  auto stub = Stub();
  moe::v1::Job job;
  const auto deadline = Clock::now() + std::chrono::milliseconds(static_cast<int>(timeout_s * 1000));
  while (true) {
    grpc::ClientContext ctx;
    std::string t = token();
    if (!t.empty()) ctx.AddMetadata("authorization", "Bearer " + t);
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(2));
    moe::v1::GetJobRequest req;
    req.set_id(id);
    moe::v1::Job got;
    if (stub->GetJob(&ctx, req, &got).ok()) {
      job = got;
      if (pred(job)) return job;
    }
    if (Clock::now() > deadline) return job;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
}

moe::v1::Job DaemonHarness::WaitForState(const std::string& id, moe::v1::JobState state,
                                         double timeout_s) {
  return WaitFor(id, [state](const moe::v1::Job& j) { return j.state() == state; }, timeout_s);
}

std::vector<moe::v1::LogLine> DaemonHarness::AllLogs(const std::string& id) {
  auto stub = Stub();
  grpc::ClientContext ctx;
  std::string t = token();
  if (!t.empty()) ctx.AddMetadata("authorization", "Bearer " + t);
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(20));
  moe::v1::StreamLogsRequest req;
  req.set_id(id);
  req.set_rank(-1);
  auto reader = stub->StreamLogs(&ctx, req);
  std::vector<moe::v1::LogLine> out;
  moe::v1::LogLine line;
  while (reader->Read(&line)) out.push_back(line);
  reader->Finish();
  return out;
}

std::vector<moe::v1::MetricPoint> DaemonHarness::AllMetrics(const std::string& id) {
  auto stub = Stub();
  grpc::ClientContext ctx;
  std::string t = token();
  if (!t.empty()) ctx.AddMetadata("authorization", "Bearer " + t);
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(20));
  moe::v1::StreamMetricsRequest req;
  req.set_id(id);
  req.set_after_step(-1);
  auto reader = stub->StreamMetrics(&ctx, req);
  std::vector<moe::v1::MetricPoint> out;
  moe::v1::MetricPoint p;
  while (reader->Read(&p)) out.push_back(p);
  EXPECT_TRUE(reader->Finish().ok());
  return out;
}

std::string DaemonHarness::MoedLog() const { return Slurp(work_dir_ + "/moed.log"); }

}  // namespace moe::testing
