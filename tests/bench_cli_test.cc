// moe_bench's command line: each wrong argument is named with what to give instead (exit 2),
// before anything is built or a GPU is looked for.
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/support/daemon_harness.h"
#include "tests/support/paths.h"

namespace moe {
namespace {

using ::testing::HasSubstr;

TEST(MoeBenchFlags, EachWrongArgumentIsNamed) {
  struct Case {
    std::vector<std::string> args;
    const char* expect;
  };
  for (const Case& c :
       {Case{{"--config", "huge"}, "--config huge: not a configuration; use one of tiny, tiny-dense, small, medium"},
        Case{{"--config", "tiny", "--steps", "0"}, "--steps must be at least 1"},
        Case{{"--config", "tiny", "--warmup", "-1"}, "--warmup at least 0"},
        Case{{"--precision", "fp16"}, "--precision fp16: use bf16 or fp32"},
        Case{{"--device", "tpu"}, "--device tpu: use cuda or cpu"},
        Case{{"--steps", "many"}, "--steps many: not an option, or not a whole number"},
        Case{{"--steps"}, "--steps: not an option, or it needs a value"},
        Case{{"tiny"}, "unexpected argument 'tiny'"},
        Case{{"--trace", "-2"}, "--trace takes the number of steps"},
        Case{{"--job", "/nonexistent/job.yaml"}, "/nonexistent/job.yaml: does not exist"}}) {
    std::vector<std::string> argv = {testing::BinDir() + "/moe_bench"};
    argv.insert(argv.end(), c.args.begin(), c.args.end());
    testing::CommandResult r = testing::RunCommand(argv, {}, 60);
    EXPECT_EQ(r.exit_code, 2) << c.expect << ": " << r.err;
    EXPECT_THAT(r.err, HasSubstr(c.expect));
  }
}

}  // namespace
}  // namespace moe
