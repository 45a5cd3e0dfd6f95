// resources.slurm.extra_sbatch_args against the allowlist: options that could change who a job
// runs as, its environment, where its output goes or its script are refused by name (at
// validate and submit, and again by the launcher), and the allowed ones never come after
// moed's own options.
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "common/sbatch_options.h"
#include "daemon/slurm_launcher.h"
#include "gtest/gtest.h"
#include "tests/support/job_spec_fixture.h"

namespace moe::testing {
namespace {

const std::vector<std::pair<std::string, std::string>> kRefused = {
    {"--export=ALL,BASH_ENV=/tmp/evil.sh", "environment"},
    {"--uid=0", "who the job runs as"},
    {"--chdir=/", "working directory"},
    {"--output=/anywhere", "output"},
    {"--wrap=id", "script"},
    {"--error=/anywhere", "output"},
    {"--get-user-env", "environment"},
    {"-o/anywhere", "output"},
    {"-D/", "working directory"},
    {"--out=/anywhere", "not on moed's list"},  // sbatch would take the prefix as --output
    {"--exp=ALL", "not on moed's list"},
    {"--gid=0", "who the job runs as"},
};

TEST(SbatchAllowlist, RefusesOptionsThatChangeIdentityEnvironmentOutputOrScript) {
  for (const auto& [arg, why] : kRefused) {
    std::string refused = RefusedSbatchOption(arg);
    EXPECT_TRUE(absl::StrContains(refused, "'" + arg + "' is refused")) << arg << ": " << refused;
    EXPECT_TRUE(absl::StrContains(refused, why)) << arg << ": " << refused;
  }
  for (const std::string ok : {"--exclusive", "--qos=high", "--signal=B:USR1@600", "-pgpu",
                               "--partition=cpu", "--time=10", "--mem=4G", "--constraint=a100"}) {
    EXPECT_EQ(RefusedSbatchOption(ok), "") << ok;
  }
  // The template's checkpoint signal may move, not change (the batch script traps USR1).
  // A lead of 300000 digits overflowed std::regex's recursion (SIGSEGV in moectl validate).
  for (const std::string& sig : {std::string("--signal=B:TERM@60"), std::string("--signal=USR1@600"),
                                std::string("--signal=R:USR1"), std::string("--signal"),
                                "--signal=B:USR1@" + std::string(300000, '9')}) {
    EXPECT_TRUE(absl::StrContains(RefusedSbatchOption(sig), "only when may change: --signal=B:USR1@SECONDS"))
        << sig.substr(0, 40) << ": " << RefusedSbatchOption(sig).substr(0, 200);
  }
  for (const std::string sig : {"--signal=B:USR1", "--signal=B:SIGUSR1@120", "--signal=B:10@90"}) {
    EXPECT_EQ(RefusedSbatchOption(sig), "") << sig;
  }
  EXPECT_TRUE(absl::StrContains(RefusedSbatchOption(std::string("--qos=a\0b", 9)),
                                "control character"));
}

class SbatchAllowlistSpec : public JobSpecTest {};

TEST_F(SbatchAllowlistSpec, ValidationNamesTheRefusedOption) {
  for (const auto& [arg, why] : kRefused) {
    const std::string yaml = std::string(kMinimal) +
                             "resources:\n  launcher: slurm\n  slurm: {partition: p, "
                             "extra_sbatch_args: [\"--exclusive\", \"" + arg + "\"]}\n";
    SpecError e = OnlyError(yaml);
    EXPECT_EQ(e.field, "resources.slurm.extra_sbatch_args[1]") << arg;
    EXPECT_TRUE(absl::StrContains(e.message, arg)) << e.message;
    // The same spec straight over gRPC (what moed's SubmitJob checks: INVALID_ARGUMENT).
    moe::v1::JobSpec spec = ValidSpec(std::string(kMinimal) +
                                      "resources:\n  launcher: slurm\n  slurm: {partition: p}\n");
    spec.mutable_resources()->mutable_slurm()->add_extra_sbatch_args(arg);
    std::vector<SpecError> errors = ValidateJobSpec(spec);
    ASSERT_EQ(errors.size(), 1u) << arg;
    EXPECT_TRUE(absl::StrContains(errors[0].message, arg)) << errors[0].message;
  }
}

TEST(SbatchAllowlistLaunch, JobOptionsComeBeforeMoedsOwnAndRefusedOnesNeverReachSbatch) {
  daemon::LaunchRequest req;
  req.job_id = "j-000001";
  req.job_dir = "/state/jobs/j-000001";
  req.spec.set_name("x");
  req.spec.mutable_resources()->set_ranks(2);
  moe::v1::SlurmSpec* sl = req.spec.mutable_resources()->mutable_slurm();
  sl->set_partition("gpu");
  sl->add_extra_sbatch_args("--exclusive");
  sl->add_extra_sbatch_args("--partition=other");
  absl::StatusOr<std::vector<std::string>> args = daemon::SlurmLauncher::SbatchArgs(req);
  ASSERT_TRUE(args.ok()) << args.status();
  ASSERT_GE(args->size(), 3u);
  EXPECT_EQ((*args)[0], "--exclusive");
  EXPECT_EQ((*args)[1], "--partition=other");
  // moed's own come after, so for an option given twice (--partition) moed's wins.
  auto pos = [&](const std::string& prefix) {
    for (size_t i = 0; i < args->size(); ++i) {
      if (absl::StartsWith((*args)[i], prefix)) return static_cast<int>(i);
    }
    return -1;
  };
  EXPECT_GT(pos("--output="), 1);
  EXPECT_GT(pos("--partition=gpu"), 1);
  for (const auto& [arg, why] : kRefused) {
    sl->clear_extra_sbatch_args();
    sl->add_extra_sbatch_args(arg);
    absl::StatusOr<std::vector<std::string>> refused = daemon::SlurmLauncher::SbatchArgs(req);
    ASSERT_FALSE(refused.ok()) << arg;
    EXPECT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_TRUE(absl::StrContains(refused.status().message(), arg)) << refused.status();
  }
}

}  // namespace
}  // namespace moe::testing
