// The moectl commands; each takes its own argv (argv[0] = command name) and returns the exit code:
// 0 success, 1 an error from moed (or a job that did not succeed), 2 bad usage or a bad file.
#pragma once

#include <string>

namespace moe::client {

// validate JOB.yaml: exit 0 and a description of the job, or exit 2 and every error.
int RunValidate(int argc, char** argv);

// submit JOB.yaml [--follow]: validates locally, submits, prints the job id.
int RunSubmit(int argc, char** argv);
// list: every job moed knows, one line each.
int RunList(int argc, char** argv);
// status [JOB]: one job in detail, or a line per job with progress and ETA.
int RunStatus(int argc, char** argv);
// cancel JOB [--no-wait] [--wait SECS]: stops the job and waits until it is CANCELLED.
int RunCancel(int argc, char** argv);
// logs JOB [-f] [--rank N] [--tail N]: prints (and follows) the job's log lines.
int RunLogs(int argc, char** argv);
// metrics JOB [--format table|json|csv]: the job's metric points, with a loss plot.
int RunMetrics(int argc, char** argv);

// Prints a job's lines from moed and, with follow, keeps going until the job ends, reconnecting
// when moed restarts. Returns 0 only if the job SUCCEEDED (with follow), 1 otherwise.
int FollowLogs(const std::string& job_id, int rank, int64_t tail, bool follow);

}  // namespace moe::client
