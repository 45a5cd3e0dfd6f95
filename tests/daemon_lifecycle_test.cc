// moed and moectl under unlucky timing, through the real binaries: a second moed on a state
// directory that one already uses, a cancel that reaches a job as it finishes, and a moed slow to
// accept a connection.
#include <arpa/inet.h>
#include <civetweb.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/support/daemon_harness.h"
#include "tests/support/paths.h"

namespace moe::testing {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

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

TEST(DaemonLifecycle, ASecondMoedOnTheSamePortIsRefused) {
  DaemonHarness h(Fake({}));
  ASSERT_TRUE(h.Start()) << h.MoedLog();
  std::vector<std::string> second = {BinDir() + "/moed", "--state-dir", MakeTempDir("moed-port-"),
                                     "--listen", h.address(), "--metrics-listen", ""};
  if (geteuid() == 0) second.push_back("--allow-root");
  CommandResult r = RunCommand(second, {}, 10);
  EXPECT_EQ(r.exit_code, 2) << r.err;
  EXPECT_THAT(r.err, HasSubstr(absl::StrCat("--listen: cannot listen on ", h.address(), ": the port is in use")));
  EXPECT_THAT(r.err, ::testing::Not(HasSubstr("chttp2")));  // no dump of gRPC's internals
  // An address of no interface here is named as such.
  std::vector<std::string> foreign = {BinDir() + "/moed", "--state-dir", MakeTempDir("moed-addr-"),
                                      "--listen", "192.0.2.1:50051", "--metrics-listen", ""};
  if (geteuid() == 0) foreign.push_back("--allow-root");
  r = RunCommand(foreign, {}, 10);
  EXPECT_EQ(r.exit_code, 2) << r.err;
  EXPECT_THAT(r.err, HasSubstr("192.0.2.1 is not an address of this machine")) << r.err;
  // Every request still reaches the first one.
  for (int i = 0; i < 4; ++i) EXPECT_EQ(h.Moectl({"list"}).exit_code, 0);
}

// --metrics-listen: a host that does not resolve, or an IPv6 address the HTTP library cannot
// serve, stops moed at start with what to give instead (not "is another moed running there?").
TEST(DaemonLifecycle, AMetricsAddressItCannotServeIsNamed) {
  for (const auto& [listen, want] :
       {std::pair<std::string, std::string>{"nohost.invalid:9464", "host 'nohost.invalid' has no IPv4 address"},
        {"[::1]:9464", "IPv6"}}) {
    std::vector<std::string> args = {BinDir() + "/moed", "--state-dir", MakeTempDir("moed-http-"), "--listen",
                                     absl::StrCat("127.0.0.1:", FreePort()), "--metrics-listen", listen};
    if (geteuid() == 0) args.push_back("--allow-root");
    if (want == "IPv6" && mg_check_feature(8) != 0) continue;  // a civetweb built with IPv6 serves it
    CommandResult r = RunCommand(args, {}, 20);
    EXPECT_EQ(r.exit_code, 2) << listen << ": " << r.err;
    EXPECT_THAT(r.err, HasSubstr(want)) << r.err;
    EXPECT_THAT(r.err, HasSubstr("127.0.0.1:9464")) << r.err;
  }
}

// --metrics-listen on the port of the same moed's --listen (the same HOST:PORT, or the port with
// a wildcard host on either side): refused before anything binds, naming the flag to change.
// It was "the port is taken, e.g. by another moed", taken by this moed's own gRPC port.
TEST(DaemonLifecycle, MetricsOnItsOwnListenPortIsNamed) {
  const std::string port = std::to_string(FreePort());
  for (const auto& [listen, metrics] :
       {std::pair<std::string, std::string>{"127.0.0.1:" + port, "127.0.0.1:" + port},
        {"127.0.0.1:" + port, "0.0.0.0:" + port},
        {"0.0.0.0:" + port, "127.0.0.1:" + port},
        {"127.0.0.1:" + port, "localhost:" + port}}) {
    const std::string state = MakeTempDir("moed-ports-");
    std::vector<std::string> args = {BinDir() + "/moed", "--state-dir", state, "--listen", listen,
                                     "--metrics-listen", metrics};
    if (geteuid() == 0) args.push_back("--allow-root");
    CommandResult r = RunCommand(args, {}, 20);
    EXPECT_EQ(r.exit_code, 2) << listen << " " << metrics << ": " << r.err;
    EXPECT_THAT(r.err, HasSubstr(absl::StrCat("--metrics-listen: ", metrics, " is the port of this moed's own "
                                              "--listen ", listen)));
    EXPECT_THAT(r.err, HasSubstr("give --metrics-listen another port")) << r.err;
    EXPECT_THAT(r.err, Not(HasSubstr("another moed"))) << r.err;
    EXPECT_FALSE(std::ifstream(state + "/moed.db").good()) << "checked before the store is opened";
  }
}

TEST(DaemonLifecycle, ACancelThatArrivesAsTheJobFinishesLeavesItSucceeded) {
  // The ranks ignore SIGTERM, as ranks past their last step do: they finish every step.
  DaemonHarness h(Fake({{"FAKE_STEPS", "4"}, {"FAKE_STEP_SECONDS", "0.3"},
                        {"FAKE_IGNORE_TERM", "1"}}));
  ASSERT_TRUE(h.Start()) << h.MoedLog();
  CommandResult sub = h.Moectl({"submit", h.WriteJob("ends", 1, 4)});
  ASSERT_EQ(sub.exit_code, 0) << sub.err;
  const std::string id = sub.out.substr(0, sub.out.find('\n'));
  h.WaitForState(id, moe::v1::JOB_STATE_RUNNING, 30);
  CommandResult cancel = h.Moectl({"cancel", id});
  EXPECT_EQ(cancel.exit_code, 1);  // not cancelled
  EXPECT_EQ(cancel.out,
            absl::StrCat(id, " SUCCEEDED (finished all its steps before the cancel reached it)\n"));
  const moe::v1::Job job = h.WaitFor(id, [](const moe::v1::Job& j) {
    return j.state() == moe::v1::JOB_STATE_SUCCEEDED || j.state() == moe::v1::JOB_STATE_CANCELLED;
  }, 30);
  EXPECT_EQ(job.state(), moe::v1::JOB_STATE_SUCCEEDED) << job.reason();
  EXPECT_THAT(job.reason(), HasSubstr("before the cancel reached it"));
}

TEST(DaemonLifecycle, DeletingAJobBeingCancelledSaysToWaitNotToCancel) {
  DaemonHarness h(Fake({{"FAKE_STEPS", "100000"}, {"FAKE_IGNORE_TERM", "1"}}));
  ASSERT_TRUE(h.Start()) << h.MoedLog();
  CommandResult sub = h.Moectl({"submit", h.WriteJob("stopping", 1, 100000)});
  ASSERT_EQ(sub.exit_code, 0) << sub.err;
  const std::string id = sub.out.substr(0, sub.out.find('\n'));
  h.WaitForState(id, moe::v1::JOB_STATE_RUNNING, 30);
  ASSERT_EQ(h.Moectl({"cancel", id, "--no-wait"}).exit_code, 0);
  // Was "moectl cancel j-000001 first", for a job whose cancel was under way.
  CommandResult del = h.Moectl({"delete", id});
  EXPECT_EQ(del.exit_code, 1);
  EXPECT_THAT(del.err, HasSubstr(absl::StrCat(
                           "it is being cancelled: its ranks are stopping; delete it once it is "
                           "CANCELLED, which moectl cancel ", id, " waits for")));
}

// moed killed while `cancel` waits for the job to stop: moectl says it lost moed, and at its
// deadline that the cancel is recorded for the next moed (it said "moed keeps stopping it").
TEST(DaemonLifecycle, ACancelWaitingOnAMoedThatDiedSaysSo) {
  DaemonHarness h(Fake({{"FAKE_STEPS", "100000"}, {"FAKE_IGNORE_TERM", "1"}}));
  ASSERT_TRUE(h.Start()) << h.MoedLog();
  CommandResult sub = h.Moectl({"submit", h.WriteJob("orphaned", 1, 100000)});
  ASSERT_EQ(sub.exit_code, 0) << sub.err;
  const std::string id = sub.out.substr(0, sub.out.find('\n'));
  h.WaitForState(id, moe::v1::JOB_STATE_RUNNING, 30);
  CommandResult cancel;
  std::thread waiter([&] { cancel = h.Moectl({"cancel", id, "--wait", "4"}); });
  // The cancel taken (its ranks ignore it), then moed gone.
  h.WaitFor(id, [](const moe::v1::Job& j) { return absl::StrContains(j.reason(), "cancelling"); }, 30);
  h.Kill9();
  waiter.join();
  EXPECT_EQ(cancel.exit_code, 1);
  EXPECT_THAT(cancel.err, HasSubstr("moectl: lost moed at"));
  EXPECT_THAT(cancel.err, HasSubstr("is still unreachable after 4 s, with " + id +
                                    " last seen RUNNING; the cancel is recorded"));
}

// A TCP relay to moed that holds each new connection for delay before it passes bytes on: a moed
// that is busy, or far away, as a client sees it. With cut_after, a connection is closed once
// more than that many bytes went from the client to moed (a moed that stops mid-call).
class SlowRelay {
 public:
  SlowRelay(int target_port, std::chrono::milliseconds delay, size_t cut_after = 0)
      : target_(target_port), delay_(delay), cut_after_(cut_after) {
    listen_fd_ = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in addr = {};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof(addr);
    bind(listen_fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
    listen(listen_fd_, 16);
    getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&addr), &len);
    port_ = ntohs(addr.sin_port);
    acceptor_ = std::thread([this] { Accept(); });
  }
  ~SlowRelay() {
    stop_ = true;
    shutdown(listen_fd_, SHUT_RDWR);
    acceptor_.join();
    for (std::thread& t : pipes_) t.join();
    close(listen_fd_);
  }
  int port() const { return port_; }

 private:
  void Accept() {
    while (!stop_) {
      int client = accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
      if (client < 0) return;
      pipes_.emplace_back([this, client] { Relay(client); });
    }
  }
  void Relay(int client) {
    std::this_thread::sleep_for(delay_);
    int server = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in addr = {};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = htons(static_cast<uint16_t>(target_));
    if (connect(server, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0) {
      pollfd fds[2] = {{client, POLLIN, 0}, {server, POLLIN, 0}};
      char buf[16384];
      size_t sent = 0;  // client to moed
      while (!stop_ && poll(fds, 2, 100) >= 0) {
        bool open = true;
        for (int i = 0; i < 2 && open; ++i) {
          if (fds[i].revents == 0) continue;
          ssize_t n = read(fds[i].fd, buf, sizeof(buf));
          open = n > 0 && write(fds[1 - i].fd, buf, static_cast<size_t>(n)) == n;
          if (open && i == 0) sent += static_cast<size_t>(n);
          if (cut_after_ > 0 && sent > cut_after_) open = false;
        }
        if (!open) break;
      }
    }
    close(server);
    close(client);
  }

  const int target_;
  const std::chrono::milliseconds delay_;
  const size_t cut_after_;
  int listen_fd_ = -1, port_ = 0;
  std::atomic<bool> stop_{false};
  std::thread acceptor_;
  std::vector<std::thread> pipes_;  // touched by the acceptor only, joined after it
};

TEST(DaemonLifecycle, MoectlWaitsForAMoedSlowToAcceptItsConnection) {
  DaemonHarness h(Fake({}));
  ASSERT_TRUE(h.Start()) << h.MoedLog();
  const int port = std::stoi(h.address().substr(h.address().rfind(':') + 1));
  // Half a second to connect: was "cannot reach moed" (gRPC gave a connection 100 ms).
  SlowRelay relay(port, std::chrono::milliseconds(500));
  CommandResult r =
      h.Moectl({"list"}, 30, {{"MOE_SERVER", absl::StrCat("127.0.0.1:", relay.port())}});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_THAT(r.out, HasSubstr("ID"));
}

// A submit whose connection drops after the job went out cannot know whether moed stored it:
// moectl said only "cannot reach moed (is it running?)", and users submitting again got the job
// twice. Without a connection at all, the request was never sent: no such hint.
TEST(DaemonLifecycle, ASubmitCutMidCallSaysTheJobMayHaveBeenQueued) {
  DaemonHarness h(Fake({}));
  ASSERT_TRUE(h.Start()) << h.MoedLog();
  const int port = std::stoi(h.address().substr(h.address().rfind(':') + 1));
  const std::string job = h.WriteJob("cut", 1, 5);
  std::ofstream(job, std::ios::app) << "# " << std::string(40000, 'x') << "\n";  // a request of 40 KB
  SlowRelay relay(port, std::chrono::milliseconds(0), /*cut_after=*/20000);
  CommandResult r = h.Moectl({"submit", job}, 30, {{"MOE_SERVER", absl::StrCat("127.0.0.1:", relay.port())}});
  EXPECT_EQ(r.exit_code, 1) << r.err;
  // (moectl sent it 3 times, each cut off, with one request id: the command again with it is safe.)
  EXPECT_THAT(r.err, HasSubstr("moed may have queued the job before the call ended: the same command with "
                               "--request-id moectl-"));
  EXPECT_THAT(r.err, HasSubstr(" answers with that job, or submits it if moed has none"));
  CommandResult none = h.Moectl({"submit", job}, 30, {{"MOE_SERVER", absl::StrCat("127.0.0.1:", FreePort())}});
  EXPECT_EQ(none.exit_code, 1) << none.err;
  EXPECT_THAT(none.err, HasSubstr("cannot reach moed"));
  EXPECT_THAT(none.err, Not(HasSubstr("may have queued")));
}

}  // namespace
}  // namespace moe::testing
