// The moectl commands. main.cc parses the command line (CLI11) into these option structs; each
// command returns the exit code: 0 success, 1 an error from moed (or a job that did not
// succeed), 2 bad usage, a bad file or a bad configuration (FailConfig).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace moe::client {

enum class OutputFormat { kTable, kJson, kCsv };

// validate JOB.yaml: exit 0 and a description of the job, or exit 2 and every error.
// gpu_memory ("80GiB", "" for none): also whether a cuda job fits GPUs of that size (exit 2 if
// it does not and the job does not allow oversubscribing).
int RunValidate(const std::string& file, const std::string& gpu_memory = "");

struct SubmitOptions {
  std::string file;
  bool follow = false;
  // --from JOB: start from that job's newest checkpoint (model.init_from = its checkpoint dir).
  std::string from_job;
  // --request-id ID (SubmitJobRequest.request_id); "" = moectl makes one up for its resends.
  std::string request_id;
};
int RunSubmit(const SubmitOptions& o);

struct ListOptions {
  OutputFormat output = OutputFormat::kTable;
  std::vector<std::string> states;  // upper case state names; empty = all
  std::string name_pattern;         // shell glob on the job name; "" = all
  int limit = 0;                    // the newest N; 0 = all
};
int RunList(const ListOptions& o);

struct StatusOptions {
  OutputFormat output = OutputFormat::kTable;
  std::vector<std::string> ids;  // empty = a line per job
};
int RunStatus(const StatusOptions& o);

struct CancelOptions {
  std::string id;
  bool no_wait = false;
  double wait_s = 300;
};
int RunCancel(const CancelOptions& o);

struct ResumeOptions {
  std::string id;
  int steps = 0;  // 0 = the job's train.steps
  bool follow = false;
};
// resume JOB: a finished job continues from its newest checkpoint (moed's ResumeJob).
int RunResume(const ResumeOptions& o);

struct LogsOptions {
  std::string id;
  bool follow = false;
  int rank = -1;
  int64_t tail = 0;
};
int RunLogs(const LogsOptions& o);

struct MetricsOptions {
  std::string id;
  OutputFormat output = OutputFormat::kTable;
  std::string svg_file;  // also write the charts as one SVG file
};
int RunMetrics(const MetricsOptions& o);

struct DeleteOptions {
  std::vector<std::string> ids;
  bool checkpoints = false;
};
int RunDelete(const DeleteOptions& o);

struct PruneOptions {
  int64_t older_than_ms = 0;
  std::vector<std::string> states;  // upper case; empty = every final state
  bool checkpoints = false;
  bool dry_run = false;
};
int RunPrune(const PruneOptions& o);

struct ExportOptions {
  std::string source;  // a job id (its checkpoint directory, from moed) or a checkpoint directory
  std::string format = "hf";
  std::string out_dir;
  std::string dtype = "fp32";
};
// Runs where the checkpoints are readable (moed's host, or a shared file system).
int RunExport(const ExportOptions& o);

// Prints a job's lines from moed and, with follow, keeps going until the job ends, reconnecting
// when moed restarts. Returns 0 only if the job SUCCEEDED (with follow), 1 otherwise.
int FollowLogs(const std::string& job_id, int rank, int64_t tail, bool follow);

}  // namespace moe::client
