// moed's service edge through the real binaries: bad requests get the most specific gRPC code
// with a clear message, the token is enforced, the worker report path stores metrics (and not
// duplicate log lines), moectl speaks one clear line, and /metrics is valid Prometheus text.
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/job_spec.h"
#include "common/metrics_spill.h"
#include "daemon/local_launcher.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"
#include "gtest/gtest.h"
#include "moe/v1/worker.grpc.pb.h"
#include "tests/support/daemon_harness.h"
#include "tests/support/paths.h"
#include "worker/report/reporter.h"

namespace moe::testing {
namespace {

using moe::v1::Job;

std::string HttpGet(int port, const std::string& path) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr = {};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(static_cast<uint16_t>(port));
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    close(fd);
    return "";
  }
  std::string req = "GET " + path + " HTTP/1.1\r\nHost: localhost\r\n\r\n";
  (void)!write(fd, req.data(), req.size());
  std::string resp;
  char buf[4096];
  ssize_t n;
  while ((n = read(fd, buf, sizeof(buf))) > 0) resp.append(buf, static_cast<size_t>(n));
  close(fd);
  return resp;
}

HarnessOptions SlowFake() {
  HarnessOptions o;
  o.worker_bin = FakeWorkerPath();
  o.cancel_grace_s = 5;
  o.env = {{"FAKE_STEPS", "100000"}, {"FAKE_STEP_SECONDS", "0.2"}};
  return o;
}

TEST(DaemonService, BadRequestsGetSpecificCodes) {
  DaemonHarness h(SlowFake());
  ASSERT_TRUE(h.Start()) << h.MoedLog();
  auto stub = h.Stub();
  {
    // An invalid spec straight over gRPC: the validator's own messages.
    moe::v1::SubmitJobRequest req;
    req.mutable_spec()->set_name("Bad Name!");
    req.mutable_spec()->mutable_model()->set_d_model(-3);
    grpc::ClientContext ctx;
    Job job;
    grpc::Status s = stub->SubmitJob(&ctx, req, &job);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    std::string expected = FormatSpecErrors(ValidateJobSpec(req.spec()));
    ASSERT_FALSE(expected.empty());
    EXPECT_TRUE(absl::StrContains(s.error_message(), expected)) << s.error_message();
  }
  for (const char* id : {"j-999999", "nope"}) {
    grpc::ClientContext ctx;
    moe::v1::GetJobRequest req;
    req.set_id(id);
    Job job;
    grpc::Status s = stub->GetJob(&ctx, req, &job);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::NOT_FOUND);
    EXPECT_TRUE(absl::StrContains(s.error_message(), id));
  }
  // An id no job can have: 20000 bytes came back as "received initial metadata size exceeds
  // limit" (RESOURCE_EXHAUSTED), the id echoed into a status larger than gRPC's metadata.
  for (const std::string& id : {std::string(20000, 'a'), std::string("j-00\n0001")}) {
    grpc::ClientContext ctx;
    moe::v1::GetJobRequest req;
    req.set_id(id);
    Job job;
    grpc::Status s = stub->GetJob(&ctx, req, &job);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << s.error_message().substr(0, 200);
    EXPECT_TRUE(absl::StrContains(s.error_message(), "not a job id")) << s.error_message().substr(0, 200);
  }
  {
    grpc::ClientContext ctx;
    moe::v1::CancelJobRequest req;
    req.set_id("j-999999");
    Job job;
    EXPECT_EQ(stub->CancelJob(&ctx, req, &job).error_code(), grpc::StatusCode::NOT_FOUND);
  }
  {
    grpc::ClientContext ctx;
    moe::v1::StreamLogsRequest req;
    req.set_id("j-999999");
    req.set_rank(-1);
    auto reader = stub->StreamLogs(&ctx, req);
    moe::v1::LogLine line;
    EXPECT_FALSE(reader->Read(&line));
    EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::NOT_FOUND);
  }
  // Cancel of a finished job: FAILED_PRECONDITION (a cancelled queued job has ended too).
  CommandResult sub = h.Moectl({"submit", h.WriteJob("c", 2, 5)});
  ASSERT_EQ(sub.exit_code, 0) << sub.err;
  const std::string id = sub.out.substr(0, sub.out.find('\n'));
  ASSERT_EQ(h.Moectl({"cancel", id}).exit_code, 0);
  {
    grpc::ClientContext ctx;
    moe::v1::CancelJobRequest req;
    req.set_id(id);
    Job job;
    grpc::Status s = stub->CancelJob(&ctx, req, &job);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
    EXPECT_TRUE(absl::StrContains(s.error_message(), "already ended")) << s.error_message();
  }
  // moectl shows one line, not gRPC internals.
  CommandResult unknown = h.Moectl({"status", "j-999999"});
  EXPECT_EQ(unknown.exit_code, 1);
  EXPECT_EQ(unknown.err, "moectl: no job 'j-999999' (moectl list shows the jobs moed knows)\n");
}

// A duration flag that is not a count of seconds: before, NaN, 1e300 and 1e17 went through an
// undefined cast and came out as "must be positive" or "must not be negative".
TEST(DaemonService, DurationFlagsThatAreNoSecondsSaySo) {
  for (const std::string flag : {"--heartbeat-timeout=nan", "--heartbeat-timeout=1e300", "--cancel-grace=1e17",
                                 "--metrics-retention=-inf"}) {
    CommandResult r = RunCommand({BinDir() + "/moed", "--allow-root", "--state-dir", MakeTempDir("moed-flags-"), flag},
                                 {}, 30);
    EXPECT_EQ(r.exit_code, 2) << flag;
    EXPECT_TRUE(absl::StrContains(r.err, "is not a number of seconds")) << flag << ": " << r.err;
  }
}

// Values that are numbers but do not fit, and words that are no flag: named for what is wrong with
// them (before: a tenth of a millisecond was refused as "must be positive", a count past 2^31 as
// "not a whole number", --max-ranks 0 taken as "every core").
TEST(DaemonService, FlagsTooSmallOrTooLargeSaySo) {
  struct Case {
    const char* flag;
    const char* expect;
  };
  for (const Case& c : {Case{"--heartbeat-timeout=0.0001", "is under a millisecond; give 0.001 or more seconds"},
                        Case{"--max-ranks=99999999999", "99999999999 is too large (at most 2147483647)"},
                        Case{"--gpus=x", "'x' is not a whole number"},
                        Case{"--max-ranks=0", "must be at least 1, got 0 (leave it out to use every core)"},
                        // Before: "flag --bogus needs a value", "flag extra needs a value".
                        Case{"--bogus", "unknown flag --bogus"},
                        Case{"extra", "unexpected argument 'extra': moed takes only flags"},
                        // Before: moed started, and every job then failed at launch.
                        Case{"--worker-bin=/nonexistent/moe-worker", "--worker-bin: /nonexistent/moe-worker is missing"},
                        Case{"--mpirun=/nonexistent/mpirun", "--mpirun: /nonexistent/mpirun is missing"},
                        Case{"--data-root=/nonexistent/data", "--data-root: '/nonexistent/data' is not an existing directory"},
                        // Before: a directory has the x bit, and every job failed at launch.
                        Case{"--worker-bin=/tmp", "--worker-bin: /tmp is a directory, not an executable"},
                        Case{"--mpirun=/tmp", "--mpirun: /tmp is a directory, not an executable"},
                        // Before: -1 was taken as "count the GPUs".
                        Case{"--gpus=-1", "--gpus: must be 0 or more, got -1"},
                        // Before: moed started, and every slurm job failed at launch.
                        Case{"--slurm-template=/nonexistent/moe.sbatch.tmpl",
                             "--slurm-template: cannot open /nonexistent/moe.sbatch.tmpl: No such file"},
                        Case{"--slurm-template=/tmp", "--slurm-template: /tmp is a directory, not a file"}}) {
    CommandResult r = RunCommand({BinDir() + "/moed", "--allow-root", "--state-dir", MakeTempDir("moed-flags-"), c.flag},
                                 {}, 30);
    EXPECT_EQ(r.exit_code, 2) << c.flag;
    EXPECT_TRUE(absl::StrContains(r.err, c.expect)) << c.flag << ": " << r.err;
  }
}

// --mpirun NAME is looked up on PATH as execvp looks: a directory of that name earlier on PATH (it
// has the x bit too) is passed over for the program after it, not taken (every job failed at
// launch) nor a reason to refuse a PATH that runs it.
TEST(DaemonService, MpirunNameOnPathPassesOverADirectoryOfThatName) {
  const std::string first = MakeTempDir("moed-path-dir-"), second = MakeTempDir("moed-path-exe-");
  std::filesystem::create_directory(first + "/mpirun-x");
  std::ofstream(second + "/mpirun-x") << "#!/bin/sh\n";
  std::filesystem::permissions(second + "/mpirun-x", std::filesystem::perms::owner_all);
  const char* old = std::getenv("PATH");
  const std::string saved = old != nullptr ? old : "";
  setenv("PATH", (first + ":" + second).c_str(), 1);
  EXPECT_EQ(moe::daemon::ResolveOnPath("mpirun-x"), second + "/mpirun-x");
  setenv("PATH", first.c_str(), 1);
  EXPECT_EQ(moe::daemon::ResolveOnPath("mpirun-x"), "");
  setenv("PATH", saved.c_str(), 1);
}

// An address gRPC cannot parse is refused as --listen bogus is, before gRPC sees it: ":PORT" gave a
// line of gRPC's internals and then "cannot listen ... (is another moed running there?)".
TEST(DaemonService, ListenWithoutAHostIsNoAddress) {
  for (const std::string& listen : std::vector<std::string>{absl::StrCat(":", FreePort()), "::1:50051", "[::1:50051", "bogus"}) {
    CommandResult r = RunCommand(
        {BinDir() + "/moed", "--allow-root", "--state-dir", MakeTempDir("moed-flags-"), "--listen", listen}, {}, 30);
    EXPECT_EQ(r.exit_code, 2) << listen;
    EXPECT_EQ(r.err, absl::StrCat("moed: --listen: '", listen,
                                  "' is not HOST:PORT with a port 1-65535 (e.g. 127.0.0.1:50051)\n"));
  }
}

// A Slurm batch template moed cannot read refuses slurm jobs at submit, with the flag that fixes
// it; before, the job was accepted and FAILED at its launch.
TEST(DaemonService, SlurmJobWithoutTemplateIsRefusedAtSubmit) {
  const std::string dir = MakeTempDir("moed-slurm-template-");
  const std::string tmpl = dir + "/moe.sbatch.tmpl";
  std::filesystem::copy_file(SourceDir() + "/deploy/slurm/moe-job.sbatch.tmpl", tmpl);
  HarnessOptions o;
  o.extra_args = {"--slurm-template", tmpl};
  DaemonHarness h(o);
  ASSERT_TRUE(h.Start()) << h.MoedLog();
  std::filesystem::remove(tmpl);  // gone after the start: the check at start let it through
  const std::string job = h.WriteJob("slurm-job", 2, 5);
  std::string text;
  {
    std::ifstream in(job);
    text.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  }
  const size_t at = text.find("launcher: local");
  ASSERT_NE(at, std::string::npos);
  text.replace(at, std::string("launcher: local").size(), "launcher: slurm\n  slurm: {partition: debug}");
  std::ofstream(job) << text;
  CommandResult r = h.Moectl({"submit", job});
  EXPECT_EQ(r.exit_code, 1) << r.err;
  EXPECT_EQ(r.out, "");
  EXPECT_TRUE(absl::StrContains(r.err, "resources.launcher: slurm jobs cannot run on this moed: cannot read the "
                                       "Slurm batch template (cannot open " + tmpl + ": No such file"))
      << r.err;
  EXPECT_TRUE(absl::StrContains(r.err, "start moed with --slurm-template FILE")) << r.err;
  CommandResult list = h.Moectl({"list", "-o", "json"});
  EXPECT_EQ(list.out, "[]\n") << list.err;
}

// moed with no --worker-bin runs the moe-worker beside it: missing there, every job failed at its
// launch; now moed does not start, and says where it looked.
TEST(DaemonService, NoWorkerBesideMoedIsRefusedAtStart) {
  const std::string dir = MakeTempDir("moed-alone-");
  std::filesystem::copy_file(BinDir() + "/moed", dir + "/moed");
  std::filesystem::permissions(dir + "/moed", std::filesystem::perms::owner_all);
  CommandResult r = RunCommand({dir + "/moed", "--allow-root", "--state-dir", MakeTempDir("moed-flags-")}, {}, 30);
  EXPECT_EQ(r.exit_code, 2) << r.err;
  EXPECT_TRUE(absl::StrContains(r.err, "no moe-worker beside moed (" + dir + "/moe-worker is missing")) << r.err;
  EXPECT_TRUE(absl::StrContains(r.err, "--worker-bin PATH")) << r.err;
}

// moed copied out of its build tree with its worker (no deploy/ above it, no share/moe): it starts
// and serves; before, the default batch template path its first check filled in was taken by the
// second as one given by hand, and moed refused to start over a --slurm-template nobody gave.
TEST(DaemonService, MoedOutsideItsBuildTreeStarts) {
  const std::string dir = MakeTempDir("moed-copied-");
  for (const char* bin : {"moed", "moe-worker"}) {
    std::filesystem::copy_file(BinDir() + "/" + bin, dir + "/" + bin);
    std::filesystem::permissions(dir + "/" + bin, std::filesystem::perms::owner_all);
  }
  // Killed after 6 s: enough to start on a loaded machine (no GPUs to look for).
  CommandResult r = RunCommand({dir + "/moed", "--allow-root", "--state-dir", MakeTempDir("moed-copied-state-"),
                                "--listen", absl::StrCat("127.0.0.1:", FreePort()), "--metrics-listen", "",
                                "--gpus", "0"},
                               {}, 6);
  EXPECT_TRUE(absl::StrContains(r.err, "moed: serving on")) << r.err;
  EXPECT_FALSE(absl::StrContains(r.err, "--slurm-template")) << r.err;
}

TEST(DaemonService, BadFileIsRefusedLocally) {
  // No moed at all: the file never leaves the terminal.
  const std::string dir = MakeTempDir("moe-badfile-");
  const std::string path = dir + "/bad.yaml";
  std::ofstream(path) << "name: x\nmodel:\n  d_model: -1\n";
  CommandResult r = RunCommand({BinDir() + "/moectl", "submit", path},
                               {{"MOE_SERVER", absl::StrCat("127.0.0.1:", FreePort())},
                                {"MOE_CONFIG", "/dev/null"}},
                               30);
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_TRUE(absl::StrContains(r.err, "bad.yaml:")) << r.err;
  EXPECT_TRUE(absl::StrContains(r.err, "nothing was submitted")) << r.err;
  EXPECT_TRUE(r.out.empty());
  // And an unreachable moed reads as one line.
  CommandResult down = RunCommand(
      {BinDir() + "/moectl", "list"},
      {{"MOE_SERVER", absl::StrCat("127.0.0.1:", FreePort())}, {"MOE_CONFIG", "/dev/null"}}, 30);
  EXPECT_EQ(down.exit_code, 1);
  EXPECT_TRUE(absl::StartsWith(down.err, "moectl: cannot reach moed at 127.0.0.1:")) << down.err;
  EXPECT_EQ(std::count(down.err.begin(), down.err.end(), '\n'), 1);
}

TEST(DaemonService, TokenIsRequiredWhenConfigured) {
  HarnessOptions o = SlowFake();
  const std::string dir = MakeTempDir("moe-token-");
  o.token_file = dir + "/token";
  std::ofstream(o.token_file) << "s3cret-token\n";
  chmod(o.token_file.c_str(), 0600);  // moed refuses a token file others can read
  DaemonHarness h(o);
  ASSERT_TRUE(h.Start()) << h.MoedLog();
  auto stub = h.Stub();
  for (const char* header : {"", "Bearer wrong", "s3cret-token"}) {
    grpc::ClientContext ctx;
    if (*header != '\0') ctx.AddMetadata("authorization", header);
    moe::v1::ListJobsResponse resp;
    EXPECT_EQ(stub->ListJobs(&ctx, moe::v1::ListJobsRequest(), &resp).error_code(),
              grpc::StatusCode::UNAUTHENTICATED)
        << header;
  }
  // RFC 7235: the scheme in any case, one or more spaces after it.
  for (const char* header : {"Bearer s3cret-token", "bearer s3cret-token", "Bearer   s3cret-token"}) {
    grpc::ClientContext ctx;
    ctx.AddMetadata("authorization", header);
    moe::v1::ListJobsResponse resp;
    EXPECT_TRUE(stub->ListJobs(&ctx, moe::v1::ListJobsRequest(), &resp).ok()) << header;
  }
  CommandResult ok = h.Moectl({"list"});  // the harness passes MOE_TOKEN
  EXPECT_EQ(ok.exit_code, 0) << ok.err;
  CommandResult no = h.Moectl({"list"}, 30, {{"MOE_TOKEN", ""}});
  EXPECT_EQ(no.exit_code, 1);
  EXPECT_TRUE(absl::StrContains(no.err, "missing token")) << no.err;
  // The token file named in moectl's config works as well as MOE_TOKEN.
  std::ofstream(dir + "/config.yaml") << "server: " << h.address() << "\ntoken_file: "
                                      << o.token_file << "\n";
  CommandResult cfg = RunCommand({BinDir() + "/moectl", "list"},
                                 {{"MOE_CONFIG", dir + "/config.yaml"}, {"MOE_SERVER", ""},
                                  {"MOE_TOKEN", ""}},
                                 30);
  EXPECT_EQ(cfg.exit_code, 0) << cfg.err;
  // The worker report service wants the token too.
  grpc::ClientContext ctx;
  moe::v1::WorkerHello hello;
  hello.set_job_id("j-000001");
  moe::v1::ReportAck ack;
  auto report = moe::v1::WorkerReportService::NewStub(
      grpc::CreateChannel(h.address(), grpc::InsecureChannelCredentials()));
  EXPECT_EQ(report->LastLogSeq(&ctx, hello, &ack).error_code(),
            grpc::StatusCode::UNAUTHENTICATED);
}

TEST(DaemonService, ReportedMetricsReachStatusMetricsAndPrometheus) {
  DaemonHarness h(SlowFake());
  ASSERT_TRUE(h.Start()) << h.MoedLog();
  CommandResult sub = h.Moectl({"submit", h.WriteJob("rep", 2, 100)});
  ASSERT_EQ(sub.exit_code, 0) << sub.err;
  const std::string id = sub.out.substr(0, sub.out.find('\n'));
  ASSERT_EQ(h.WaitForState(id, moe::v1::JOB_STATE_RUNNING, 30).state(),
            moe::v1::JOB_STATE_RUNNING);
  // This test plays rank 0 of the job's attempt 0.
  ReporterOptions ro;
  ro.moed_address = h.address();
  ro.job_id = id;
  ro.rank = 0;
  ro.world_size = 2;
  ro.attempt = 0;
  ro.report_secret = h.ReportSecret(id);
  auto reporter = Reporter::Create(ro);
  for (int step = 1; step <= 3; ++step) {
    moe::v1::MetricPoint p;
    p.set_step(step);
    p.set_loss(4.0 - step * 0.5);
    p.set_tokens_per_s(1000 * step);
    p.set_step_ms(100);
    if (step == 3) {
      p.set_has_val_loss(true);
      p.set_val_loss(2.75);
    }
    moe::v1::MoeLayerStats* l = p.add_layers();
    l->set_layer(0);
    for (int e = 0; e < 4; ++e) l->add_tokens_per_expert(10 + e);
    l->set_load_imbalance(1.1);
    reporter->Metrics(p);
    reporter->SetStep(step);
  }
  reporter->Log("a line the local launcher already captures from stdout");
  reporter->Close();
  Job job = h.WaitFor(id, [](const Job& j) { return j.latest().step() == 3; }, 20);
  EXPECT_EQ(job.latest().step(), 3);
  EXPECT_DOUBLE_EQ(job.latest().loss(), 2.5);
  EXPECT_DOUBLE_EQ(job.best_val_loss(), 2.75);
  for (const auto& l : h.AllLogs(id)) EXPECT_FALSE(absl::StrContains(l.text(), "already captures"));

  CommandResult csv = h.Moectl({"metrics", id, "--format", "csv"});
  EXPECT_EQ(csv.exit_code, 0) << csv.err;
  EXPECT_TRUE(absl::StrContains(csv.out, "\n3,2.5,2.75,")) << csv.out;
  CommandResult table = h.Moectl({"metrics", id});
  EXPECT_TRUE(absl::StrContains(table.out, "* train   o val")) << table.out;
  CommandResult st = h.Moectl({"status", id});
  EXPECT_TRUE(absl::StrContains(st.out, "step      3/100")) << st.out;
  EXPECT_TRUE(absl::StrContains(st.out, "ETA       10s")) << st.out;  // 97 steps x 100 ms

  std::string resp = HttpGet(h.metrics_port(), "/metrics");
  EXPECT_TRUE(absl::StartsWith(resp, "HTTP/1.1 200 OK")) << resp;
  EXPECT_TRUE(absl::StrContains(resp, "\r\nX-Content-Type-Options: nosniff\r\n")) << resp;
  EXPECT_TRUE(absl::StrContains(resp, "moe_jobs{state=\"running\"} 1")) << resp;
  EXPECT_TRUE(absl::StrContains(resp, absl::StrCat("moe_job_loss{job_id=\"", id, "\",name=\"rep\"} 2.5")))
      << resp;
  // A counter over the logged steps (1, 2, 3: 13 each), labelled with the rank holding expert 3.
  EXPECT_TRUE(absl::StrContains(
      resp, absl::StrCat("moe_job_expert_tokens_total{job_id=\"", id,
                         "\",name=\"rep\",layer=\"0\",expert=\"3\",rank=\"1\"} 39")))
      << resp;
  EXPECT_TRUE(absl::StrContains(resp, absl::StrCat("moe_job_val_loss{job_id=\"", id, "\",name=\"rep\"} 2.75")))
      << resp;
  EXPECT_TRUE(absl::StartsWith(HttpGet(h.metrics_port(), "/nope"), "HTTP/1.1 404"));
  ASSERT_EQ(h.Moectl({"cancel", id}).exit_code, 0);
}

// A run that logs faster than the reporter's queue of 2000 points fills between its 5 s acks
// (here about 1000 points a second): before, it spilled parts to disk with moed right there, and
// moed said it "had not confirmed" them. A half-full queue now asks for acks every 200 ms.
TEST(DaemonService, AFastLoggingRunSpillsNothingWhileMoedIsThere) {
  DaemonHarness h(SlowFake());
  ASSERT_TRUE(h.Start()) << h.MoedLog();
  CommandResult sub = h.Moectl({"submit", h.WriteJob("fast", 1, 100000)});
  ASSERT_EQ(sub.exit_code, 0) << sub.err;
  const std::string id = sub.out.substr(0, sub.out.find('\n'));
  ASSERT_EQ(h.WaitForState(id, moe::v1::JOB_STATE_RUNNING, 30).state(), moe::v1::JOB_STATE_RUNNING);
  const std::string spill_dir = MakeTempDir("moe-fast-spill-");
  ReporterOptions ro;
  ro.moed_address = h.address();
  ro.job_id = id;
  ro.world_size = 1;
  ro.report_secret = h.ReportSecret(id);
  ro.spill_path = moe::MetricsSpillPath(spill_dir, 0);
  auto reporter = Reporter::Create(ro);
  constexpr int kPoints = 3000;
  for (int step = 1; step <= kPoints; ++step) {
    moe::v1::MetricPoint p;
    p.set_step(step);
    p.set_loss(1.0);
    reporter->Metrics(p);
    std::this_thread::sleep_for(std::chrono::microseconds(1000));
  }
  EXPECT_TRUE(moe::MetricsSpillFiles(spill_dir).empty()) << moe::MetricsSpillFiles(spill_dir).front();
  reporter->Close();
  EXPECT_TRUE(moe::MetricsSpillFiles(spill_dir).empty());
  EXPECT_EQ(h.WaitFor(id, [](const Job& j) { return j.latest().step() == kPoints; }, 20).latest().step(), kPoints);
  h.Moectl({"cancel", id});
}

TEST(DaemonService, ReporterResendsAcrossAMoedRestart) {
  DaemonHarness h(SlowFake());
  ASSERT_TRUE(h.Start()) << h.MoedLog();
  CommandResult sub = h.Moectl({"submit", h.WriteJob("resend", 2, 100)});
  ASSERT_EQ(sub.exit_code, 0) << sub.err;
  const std::string id = sub.out.substr(0, sub.out.find('\n'));
  ASSERT_EQ(h.WaitForState(id, moe::v1::JOB_STATE_RUNNING, 30).state(),
            moe::v1::JOB_STATE_RUNNING);
  ReporterOptions ro;
  ro.moed_address = h.address();
  ro.job_id = id;
  ro.world_size = 2;
  ro.report_secret = h.ReportSecret(id);
  auto reporter = Reporter::Create(ro);
  auto send = [&](int step) {
    moe::v1::MetricPoint p;
    p.set_step(step);
    p.set_loss(10.0 - step);
    reporter->Metrics(p);
  };
  for (int step = 1; step <= 3; ++step) send(step);
  ASSERT_EQ(h.WaitFor(id, [](const Job& j) { return j.latest().step() == 3; }, 20).latest().step(), 3);
  h.Kill9();
  for (int step = 4; step <= 6; ++step) send(step);  // queued while moed is down
  ASSERT_TRUE(h.Start()) << h.MoedLog();
  for (int step = 7; step <= 9; ++step) send(step);
  Job job = h.WaitFor(id, [](const Job& j) { return j.latest().step() == 9; }, 30);
  EXPECT_EQ(job.latest().step(), 9);
  reporter->Close();
  EXPECT_EQ(reporter->dropped_lines(), 0);
  CommandResult csv = h.Moectl({"metrics", id, "--format", "csv"});
  for (int step = 1; step <= 9; ++step) {
    EXPECT_TRUE(absl::StrContains(csv.out, absl::StrCat("\n", step, ",", 10 - step, ",")))
        << step << "\n" << csv.out;
  }
  ASSERT_EQ(h.Moectl({"cancel", id}).exit_code, 0);
}

TEST(DaemonService, PromtoolAcceptsMetrics) {
  CommandResult which = RunCommand({"/bin/sh", "-c", "command -v promtool"}, {}, 10);
  if (which.exit_code != 0) {
    GTEST_SKIP() << "promtool not installed (Debian package 'prometheus'); skipping the check";
  }
  DaemonHarness h(SlowFake());
  ASSERT_TRUE(h.Start()) << h.MoedLog();
  std::string resp = HttpGet(h.metrics_port(), "/metrics");
  std::string body = resp.substr(resp.find("\r\n\r\n") + 4);
  std::string file = h.work_dir() + "/metrics.txt";
  std::ofstream(file) << body;
  CommandResult r = RunCommand({"/bin/sh", "-c", "promtool check metrics < " + file}, {}, 30);
  EXPECT_EQ(r.exit_code, 0) << r.out << r.err << body;
  EXPECT_EQ(r.out + r.err, "") << "promtool lint: " << r.out << r.err;
}

}  // namespace
}  // namespace moe::testing
