// moed and moectl under unlucky timing, through the real binaries: a second moed on a state
// directory that one already uses.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/support/daemon_harness.h"
#include "tests/support/paths.h"

namespace moe::testing {
namespace {

using ::testing::HasSubstr;

HarnessOptions Fake(std::map<std::string, std::string> env) {
  HarnessOptions o;
  o.worker_bin = FakeWorkerPath();
  o.cancel_grace_s = 10;
  o.env = std::move(env);
  return o;
}

TEST(DaemonLifecycle, ASecondMoedOnTheSameStateDirIsRefused) {
  DaemonHarness h(Fake({{"FAKE_STEPS", "100000"}}));
  ASSERT_TRUE(h.Start()) << h.MoedLog();
  std::vector<std::string> second = {BinDir() + "/moed", "--state-dir", h.state_dir(),
                                     "--listen", absl::StrCat("127.0.0.1:", FreePort()),
                                     "--metrics-listen", ""};
  if (geteuid() == 0) second.push_back("--allow-root");
  CommandResult r = RunCommand(second, {}, 10);
  EXPECT_EQ(r.exit_code, 2) << r.err;
  EXPECT_THAT(r.err, HasSubstr(absl::StrCat(h.state_dir(), " is in use by another moed (pid ",
                                            h.pid(), ", --listen ", h.address(), ")")));
  EXPECT_THAT(r.err, HasSubstr("give this one its own --state-dir"));
  // The first one goes on; once it is gone (even by SIGKILL) the directory is free again.
  EXPECT_EQ(h.Moectl({"list"}).exit_code, 0);
  h.Kill9();
  ASSERT_TRUE(h.Start()) << h.MoedLog();
}

}  // namespace
}  // namespace moe::testing
