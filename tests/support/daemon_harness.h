// DaemonHarness: runs the real moed binary on a temp state dir and free ports, runs moectl
// against it, and polls job states with deadlines, for the control-plane and end-to-end tests.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "moe/v1/control.grpc.pb.h"

namespace moe::testing {

int FreePort();
// Pids of live (non-zombie) processes whose command line contains needle.
std::vector<int> ProcessesMentioning(const std::string& needle);
std::string FakeWorkerPath();  // tests/tools/fake_worker.sh

struct CommandResult {
  int exit_code = -1;
  std::string out;
  std::string err;
};
// Runs argv with extra environment, capturing stdout and stderr; kills it after timeout_s.
CommandResult RunCommand(const std::vector<std::string>& argv,
                         const std::map<std::string, std::string>& env, double timeout_s);

struct HarnessOptions {
  int max_ranks = 2;
  std::string worker_bin;  // "" = the real moe-worker in BinDir()
  std::string token_file;
  double heartbeat_timeout_s = 60;
  double cancel_grace_s = 10;
  std::map<std::string, std::string> env;  // for moed and so for the workers it launches
  bool allow_root = true;                  // pass --allow-root when the test runs as root
  std::vector<std::string> extra_args;     // more moed flags
};

class DaemonHarness {
 public:
  explicit DaemonHarness(HarnessOptions options);
  ~DaemonHarness();  // stops moed and kills every process of its jobs

  // Starts moed (again, on the same state dir and ports) and waits until it answers.
  bool Start();
  // moed's exit code when Start failed because moed exited (-1 otherwise).
  int start_exit_code() const { return start_exit_code_; }
  void Kill9();
  void Stop();  // SIGTERM and wait
  pid_t pid() const { return pid_; }

  const std::string& address() const { return address_; }
  int metrics_port() const { return metrics_port_; }
  const std::string& state_dir() const { return state_dir_; }
  const std::string& work_dir() const { return work_dir_; }

  CommandResult Moectl(const std::vector<std::string>& args, double timeout_s = 120,
                       const std::map<std::string, std::string>& env = {});
  std::unique_ptr<moe::v1::JobService::Stub> Stub();
  std::string token() const;
  // The report secret moed gave the job's current launch (read from its store), for a test
  // that plays one of the job's ranks.
  std::string ReportSecret(const std::string& id) const;

  // Writes a job file in the work dir and returns its path.
  std::string WriteJob(const std::string& name, int ranks, int steps, int max_restarts = 0,
                       const std::string& extra_yaml = "");
  // Polls GetJob until pred holds or the deadline passes; returns the last job seen.
  moe::v1::Job WaitFor(const std::string& id, const std::function<bool(const moe::v1::Job&)>& pred,
                       double timeout_s);
  moe::v1::Job WaitForState(const std::string& id, moe::v1::JobState state, double timeout_s);
  // All stored lines of a job (every rank), from moed.
  std::vector<moe::v1::LogLine> AllLogs(const std::string& id);
  // All stored metric points of a job, from moed.
  std::vector<moe::v1::MetricPoint> AllMetrics(const std::string& id);
  std::string MoedLog() const;

 private:
  HarnessOptions options_;
  std::string work_dir_, state_dir_, address_;
  int port_ = 0, metrics_port_ = 0;
  pid_t pid_ = -1;
  int start_exit_code_ = -1;
};

}  // namespace moe::testing
