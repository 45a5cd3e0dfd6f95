// How a multi-rank job ends when one rank dies or hangs: runs comm_mpi_test's
// FailureInjection.ExchangeLoop under mpirun -np 3 with one rank made to fail, and checks
// that the job ends by itself within a bound, non-zero, with a message naming that rank.
// Also runs comm_mpi_test without mpirun, as the single rank a plain start gives.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <string>

namespace moe {
namespace {

using ::testing::ContainsRegex;
using ::testing::HasSubstr;
using ::testing::Not;

// The job must end on its own well before `timeout` (which would exit 124) kills it.
constexpr int kBoundSeconds = 60;

struct JobResult {
  int exit_code = -1;  // 128 + signal when killed by a signal
  double seconds = 0;
  std::string output;  // stdout and stderr of every rank and of mpirun
};

// comm_mpi_test is built into the same directory as this binary.
std::string CommTestBinary() {
  char path[4096];
  const ssize_t length = readlink("/proc/self/exe", path, sizeof(path) - 1);
  if (length <= 0) return "comm_mpi_test";
  std::string self(path, length);
  return self.substr(0, self.rfind('/') + 1) + "comm_mpi_test";
}

JobResult RunCommand(const std::string& command) {
  const std::string line =
      "timeout -k 5 " + std::to_string(kBoundSeconds) + " " + command + " </dev/null 2>&1";
  JobResult result;
  const auto start = std::chrono::steady_clock::now();
  FILE* pipe = popen(line.c_str(), "r");
  if (pipe == nullptr) {
    result.output = "popen failed for: " + line;
    return result;
  }
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof(buf), pipe)) > 0) result.output.append(buf, n);
  const int status = pclose(pipe);
  result.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  if (WIFEXITED(status)) {
    result.exit_code = WEXITSTATUS(status);
  } else if (WIFSIGNALED(status)) {
    result.exit_code = 128 + WTERMSIG(status);
  }
  return result;
}

// Three ranks (oversubscribed on small machines) running the failure loop with `env`
// (-x NAME=VALUE ...) set in every rank.
JobResult RunFailingJob(const std::string& env) {
  return RunCommand("mpirun --oversubscribe --allow-run-as-root --bind-to none -np 3 " + env + " " +
                    CommTestBinary() + " --gtest_filter=FailureInjection.ExchangeLoop");
}

// Not 124/137 from `timeout`: the job must have ended on its own, within the bound.
void ExpectEndedByItself(const JobResult& job) {
  EXPECT_NE(job.exit_code, 0) << job.output;
  EXPECT_LT(job.seconds, kBoundSeconds)
      << "the job had to be killed after " << kBoundSeconds << " s\n"
      << job.output;
}

TEST(RankFailure, KilledRankEndsTheJobAndIsNamed) {
  const JobResult job = RunFailingJob("-x MOE_TEST_DIE_RANK=1");
  ExpectEndedByItself(job);
  // Open MPI's mpirun reports the lost process and kills the others itself.
  EXPECT_THAT(job.output, HasSubstr("process rank 1 ")) << job.output;
  EXPECT_THAT(job.output, HasSubstr("signal 9")) << job.output;
}

TEST(RankFailure, HungRankInAllToAllEndsTheJobAndIsNamed) {
  const JobResult job = RunFailingJob("-x MOE_TEST_HANG_RANK=1 -x MOE_COMM_TIMEOUT_S=3");
  ExpectEndedByItself(job);
  // Ranks 0 and 2 both wait for rank 1's counts; whichever times out first says so and
  // aborts the job, which may kill the other before it speaks.
  EXPECT_THAT(job.output, ContainsRegex("moe-worker rank [02] \\([^)]+\\): no data from "
                                        "rank\\(s\\) 1 for 3 s in all-to-all \\(counts\\); "
                                        "aborting the job"))
      << job.output;
}

TEST(RankFailure, HungRankInAllReduceEndsTheJob) {
  const JobResult job = RunFailingJob(
      "-x MOE_TEST_HANG_RANK=1 -x MOE_TEST_HANG_IN=all-reduce -x MOE_COMM_TIMEOUT_S=3");
  ExpectEndedByItself(job);
  // A collective cannot tell which peer is missing.
  EXPECT_THAT(job.output, HasSubstr("a peer rank did not take part for 3 s in all-reduce (float); "
                                    "aborting the job"))
      << job.output;
  EXPECT_THAT(job.output, Not(HasSubstr("moe-worker rank 1 ("))) << job.output;
}

TEST(RankFailure, MpiErrorIsReportedWithRankAndPlace) {
  const JobResult job = RunFailingJob("-x MOE_TEST_LIE_RANK=0");
  ExpectEndedByItself(job);
  // Rank 1 posted a receive for fewer floats than rank 0 sent: MPI reports a truncation.
  EXPECT_THAT(job.output, HasSubstr("moe-worker rank 1 (")) << job.output;
  EXPECT_THAT(job.output, HasSubstr("worker/parallel/comm_mpi.cc:")) << job.output;
  EXPECT_THAT(job.output, HasSubstr("in all-to-all (payload) with rank 0: ")) << job.output;
  EXPECT_THAT(job.output, HasSubstr("MPI_ERR_TRUNCATE")) << job.output;
}

TEST(RankFailure, RunsAsOneRankWithoutMpirun) {
  const JobResult job = RunCommand("env MOE_TEST_STANDALONE=1 " + CommTestBinary() +
                                   " --gtest_filter=CommStandalone.*");
  EXPECT_EQ(job.exit_code, 0) << job.output;
  EXPECT_THAT(job.output, HasSubstr("[  PASSED  ] 1 test")) << job.output;
  EXPECT_THAT(job.output, Not(HasSubstr("SKIPPED"))) << job.output;
}

}  // namespace
}  // namespace moe
