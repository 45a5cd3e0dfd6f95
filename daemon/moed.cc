// Moed: wiring and config validation. The only place that builds the concrete launchers.
#include "daemon/moed.h"

#include <dirent.h>
#include <netdb.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "common/files.h"
#include "common/path_policy.h"
#include "daemon/auth.h"
#include "daemon/follow_hub.h"
#include "daemon/gpu_memory.h"
#include "daemon/job_service.h"
#include "daemon/job_store.h"
#include "daemon/local_launcher.h"
#include "daemon/dashboard.h"
#include "daemon/http_server.h"
#include "daemon/prometheus.h"
#include "daemon/report_service.h"
#include "daemon/scheduler.h"
#include "daemon/slurm_launcher.h"
#include "daemon/state_dir_lock.h"
#include "grpcpp/ext/proto_server_reflection_plugin.h"
#include "grpcpp/health_check_service_interface.h"
#include "grpcpp/security/server_credentials.h"
#include "grpcpp/server.h"
#include "grpcpp/server_builder.h"

namespace moe::daemon {
namespace {

// The GPUs a device: cuda job may use: the entries of CUDA_VISIBLE_DEVICES when moed runs with
// it set (the ranks inherit it, so they see the same set), else the /dev/nvidiaN devices.
int CountGpus() {
  if (const char* visible = std::getenv("CUDA_VISIBLE_DEVICES"); visible != nullptr) {
    return static_cast<int>(
        std::vector<std::string>(absl::StrSplit(visible, ',', absl::SkipWhitespace())).size());
  }
  int n = 0;
  DIR* d = opendir("/dev");
  if (d == nullptr) return 0;
  while (dirent* e = readdir(d)) {
    absl::string_view name = e->d_name;
    int idx;
    if (absl::ConsumePrefix(&name, "nvidia") && absl::SimpleAtoi(name, &idx)) ++n;
  }
  closedir(d);
  return n;
}

std::string SelfDir() {
  char buf[4096];
  ssize_t n = readlink("/proc/self/exe", buf, sizeof(buf) - 1);
  if (n <= 0) return ".";
  std::string path(buf, static_cast<size_t>(n));
  return path.substr(0, path.rfind('/'));
}

// Workers on this machine reach a wildcard listener through loopback.
std::string ReportAddress(const std::string& listen) {
  size_t colon = listen.rfind(':');
  std::string host = listen.substr(0, colon), port = listen.substr(colon + 1);
  if (host.empty() || host == "0.0.0.0" || host == "[::]" || host == "::") host = "127.0.0.1";
  return absl::StrCat(host, ":", port);
}

// Slurm ranks run on other nodes: a wildcard listener is reached through this host's name.
std::string SlurmReportAddress(const std::string& listen) {
  size_t colon = listen.rfind(':');
  std::string host = listen.substr(0, colon), port = listen.substr(colon + 1);
  if (host.empty() || host == "0.0.0.0" || host == "[::]" || host == "::") {
    char name[256] = {};
    if (gethostname(name, sizeof(name) - 1) == 0) host = name;
  }
  return absl::StrCat(host, ":", port);
}

// Why HOST:PORT cannot be bound, in words ("" when a socket binds there): gRPC's own failure
// says only that it failed, after a dump of its internals.
std::string BindProblem(const std::string& listen) {
  const size_t colon = listen.rfind(':');
  std::string host = listen.substr(0, colon);
  const std::string port = listen.substr(colon + 1);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
  addrinfo hints{};
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE;
  addrinfo* found = nullptr;
  if (const int rc = getaddrinfo(host.empty() ? nullptr : host.c_str(), port.c_str(), &hints, &found); rc != 0) {
    return absl::StrCat("'", host, "' is no address or host name this machine can resolve (", gai_strerror(rc), ")");
  }
  std::string problem;  // "" when no address could even be tried: gRPC decides
  for (addrinfo* a = found; a != nullptr; a = a->ai_next) {
    const int fd = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
    if (fd < 0) continue;  // (an address family this kernel lacks)
    const int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    const int rc = bind(fd, a->ai_addr, a->ai_addrlen), err = errno;
    close(fd);
    if (rc == 0) {
      problem.clear();
      break;
    }
    problem = err == EADDRINUSE      ? "the port is in use (is another moed running there?)"
              : err == EADDRNOTAVAIL ? absl::StrCat(host, " is not an address of this machine")
              : err == EACCES        ? "the port needs privileges (ports below 1024)"
                                     : std::string(std::strerror(err));
  }
  freeaddrinfo(found);
  return problem;
}

}  // namespace

absl::Status MoedConfig::Validate() {
  size_t colon = listen.rfind(':');
  int port = 0;
  // gRPC parses the host too: an empty one (":50051") or an IPv6 address without its brackets
  // fails there with a log line of its internals and no word on the address.
  const std::string host = colon == std::string::npos ? "" : listen.substr(0, colon);
  const bool bracketed = host.size() >= 2 && host.front() == '[' && host.back() == ']';
  if (colon == std::string::npos || !absl::SimpleAtoi(listen.substr(colon + 1), &port) ||
      port <= 0 || port > 65535 || host.empty() ||
      (!bracketed && host.find_first_of(":[]") != std::string::npos) ||
      (bracketed && host.find_first_of("[]", 1) != host.size() - 1)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--listen: '", listen, "' is not HOST:PORT with a port 1-65535 (e.g. 127.0.0.1:50051)"));
  }
  // Both ports on one HOST:PORT (or one port where either host is a wildcard, which covers every
  // address): the HTTP port's bind, which comes second, failed with "the port is taken, e.g. by
  // another moed", taken by this moed's own --listen.
  if (const size_t mcolon = metrics_listen.rfind(':'); mcolon != std::string::npos) {
    int metrics_port = 0;
    auto wildcard = [](const std::string& h) { return h.empty() || h == "0.0.0.0" || h == "[::]" || h == "::"; };
    auto same_host = [](std::string a, std::string b) {
      for (std::string* h : {&a, &b}) {
        if (absl::EqualsIgnoreCase(*h, "localhost")) *h = "127.0.0.1";
      }
      return absl::EqualsIgnoreCase(a, b);
    };
    const std::string metrics_host = metrics_listen.substr(0, mcolon);
    if (absl::SimpleAtoi(metrics_listen.substr(mcolon + 1), &metrics_port) && metrics_port == port &&
        (wildcard(host) || wildcard(metrics_host) || same_host(host, metrics_host))) {
      const int other = port < 65535 ? port + 1 : port - 1;
      return absl::InvalidArgumentError(absl::StrCat(
          "--metrics-listen: ", metrics_listen, " is the port of this moed's own --listen ", listen,
          " (gRPC); the HTTP port (/metrics, dashboard) needs another one: give --metrics-listen another port, e.g. ",
          wildcard(metrics_host) ? "0.0.0.0" : metrics_host, ":", other,
          ", or \"\" to turn it off (or move --listen; --metrics-listen defaults to 127.0.0.1:9464)"));
    }
  }
  if (geteuid() == 0 && !allow_root) {
    return absl::FailedPreconditionError(
        "refusing to run as root: every job moed launches would run as root and could read or "
        "write any file of this machine. Run moed as an unprivileged user (e.g. the 'moe' user "
        "of deploy/systemd/moed.service), or pass --allow-root to accept that risk (containers "
        "and test machines where root is the only user)");
  }
  for (std::vector<std::string>* roots : {&data_roots, &checkpoint_roots}) {
    for (std::string& root : *roots) {
      if (root.empty() || root[0] != '/') {
        return absl::InvalidArgumentError(absl::StrCat(
            roots == &data_roots ? "--data-root" : "--checkpoint-root", ": '", root,
            "' is not an absolute directory"));
      }
      root = ResolvePath(root);
      std::error_code ec;
      if (!std::filesystem::is_directory(root, ec)) {
        return absl::InvalidArgumentError(absl::StrCat(
            roots == &data_roots ? "--data-root" : "--checkpoint-root", ": '", root,
            "' is not an existing directory (create it first, or give another); every job would be refused"));
      }
    }
  }
  if (min_free_bytes < 0) {
    return absl::InvalidArgumentError("--min-free-space: must not be negative");
  }
  if (state_dir.empty()) {
    return absl::InvalidArgumentError(
        "--state-dir: required (a directory for moed's database and job files, e.g. "
        "/var/lib/moed)");
  }
  if (max_ranks < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("--max-ranks: must be at least 1, got ", max_ranks));
  }
  if (max_ranks == 0) {
    max_ranks = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  }
  if (gpus < -1) {
    return absl::InvalidArgumentError(absl::StrCat("--gpus: must be 0 or more, got ", gpus));
  }
  if (gpus == -1) gpus = CountGpus();
  if (gpu_memory_bytes < -1) {
    return absl::InvalidArgumentError("--gpu-memory: must be a size such as 80GiB or 141GB");
  }
  if (gpu_memory_bytes == -1) gpu_memory_bytes = gpus > 0 ? QueryGpuMemory() : 0;
  if (worker_bin.empty()) worker_bin = SelfDir() + "/moe-worker";
  if (slurm_mpi != "pmix" && slurm_mpi != "mpirun") {
    return absl::InvalidArgumentError(absl::StrCat(
        "--slurm-mpi: '", slurm_mpi, "' is neither pmix (srun --mpi=pmix) nor mpirun"));
  }
  if (!slurm_template.empty() && !slurm_template_defaulted) {
    // Given by hand, it is meant to be used: unreadable, every slurm job would be refused.
    if (absl::StatusOr<std::string> t = ReadFile(slurm_template); !t.ok()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "--slurm-template: ", t.status().message(),
          " (give a readable batch template, e.g. deploy/slurm/moe-job.sbatch.tmpl of moe's source, or leave the "
          "flag out)"));
    }
  } else {
    // Installed (<prefix>/bin/moed -> <prefix>/share/moe), else a build tree inside the source.
    slurm_template = SelfDir() + "/../share/moe/slurm/moe-job.sbatch.tmpl";
    const std::string in_source = SelfDir() + "/../../deploy/slurm/moe-job.sbatch.tmpl";
    if (access(slurm_template.c_str(), R_OK) != 0 && access(in_source.c_str(), R_OK) == 0) {
      slurm_template = in_source;
    }
    slurm_template_defaulted = true;
  }
  if (heartbeat_timeout.count() <= 0) {
    return absl::InvalidArgumentError("--heartbeat-timeout: must be positive (seconds)");
  }
  if (metrics_retention.count() < 0) {
    return absl::InvalidArgumentError("--metrics-retention: must not be negative (seconds)");
  }
  if (cancel_grace.count() < 0) {
    return absl::InvalidArgumentError("--cancel-grace: must not be negative (seconds)");
  }
  return absl::OkStatus();
}

Moed::Moed(MoedConfig config) : config_(std::move(config)) {}

absl::StatusOr<std::unique_ptr<Moed>> Moed::Start(MoedConfig config) {
  if (absl::Status s = config.Validate(); !s.ok()) return s;
  // Job folders and checkpoint directories are stored under it and handed to jobs (init_from of
  // `moectl submit --from` must be absolute): an absolute path whatever moed's working directory.
  std::error_code ec;
  const std::filesystem::path absolute = std::filesystem::absolute(config.state_dir, ec);
  if (!ec) config.state_dir = absolute.lexically_normal().string();
  while (config.state_dir.size() > 1 && config.state_dir.back() == '/') config.state_dir.pop_back();
  std::unique_ptr<Moed> m(new Moed(std::move(config)));
  const MoedConfig& c = m->config_;
  if (absl::Status s = MakeDirs(c.state_dir + "/jobs"); !s.ok()) {
    return absl::FailedPreconditionError(
        absl::StrCat("--state-dir: cannot create ", c.state_dir, "/jobs: ", s.message()));
  }
  absl::StatusOr<std::unique_ptr<StateDirLock>> lock = StateDirLock::Acquire(c.state_dir, c.listen);
  if (!lock.ok()) return lock.status();
  m->state_lock_ = *std::move(lock);
  // The port before anything else: a moed that cannot serve must not recover (relaunch) jobs first.
  if (std::string why = BindProblem(c.listen); !why.empty()) {
    return absl::UnavailableError(
        absl::StrCat("--listen: cannot listen on ", c.listen, ": ", why, "; pick another HOST:PORT with --listen"));
  }
  absl::StatusOr<std::unique_ptr<JobStore>> store = JobStore::Open(c.state_dir + "/moed.db");
  if (!store.ok()) return store.status();
  m->store_ = *std::move(store);
  std::string token;
  if (!c.token_file.empty()) {
    absl::StatusOr<std::string> t = LoadTokenFile(c.token_file);
    if (!t.ok()) return t.status();
    token = *t;
  }
  m->auth_ = std::make_unique<TokenAuth>(token);
  m->local_launcher_ =
      std::make_unique<LocalLauncher>(LocalLauncherOptions{c.mpirun, c.worker_bin});
  SlurmLauncherOptions slurm;
  slurm.worker_bin = c.worker_bin;
  slurm.template_path = c.slurm_template;
  slurm.mpi = c.slurm_mpi;
  slurm.mpirun = c.mpirun;
  slurm.report_address = SlurmReportAddress(c.listen);
  m->slurm_launcher_ = std::make_unique<SlurmLauncher>(slurm);
  SchedulerOptions so;
  so.state_dir = c.state_dir;
  so.max_ranks = c.max_ranks;
  so.gpus = c.gpus;
  so.gpu_memory_bytes = c.gpu_memory_bytes;
  so.report_address = ReportAddress(c.listen);
  so.token = token;
  so.heartbeat_timeout = c.heartbeat_timeout;
  so.cancel_grace = c.cancel_grace;
  so.min_free_bytes = c.min_free_bytes;
  so.paths.data_roots = c.data_roots;
  so.paths.checkpoint_roots = c.checkpoint_roots;
  // Workers check the same roots when they open their files: they inherit these (mpirun,
  // sbatch --export=ALL).
  setenv("MOE_DATA_ROOTS", so.paths.DataRootsEnv().c_str(), 1);
  setenv("MOE_CHECKPOINT_ROOTS", so.paths.CheckpointRootsEnv().c_str(), 1);
  const Launchers launchers{m->local_launcher_.get(), m->slurm_launcher_.get()};
  m->scheduler_ = std::make_unique<Scheduler>(so, m->store_.get(), launchers);
  m->follow_hub_ = std::make_unique<FollowHub>(m->store_.get());
  m->job_service_ = std::make_unique<JobServiceImpl>(m->store_.get(), m->scheduler_.get(),
                                                     launchers, m->auth_.get(),
                                                     c.state_dir + "/jobs", m->follow_hub_.get());
  m->report_service_ =
      std::make_unique<ReportServiceImpl>(m->store_.get(), m->scheduler_.get(), m->auth_.get());
  if (absl::Status s = m->scheduler_->Recover(); !s.ok()) return s;

  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  int selected = 0;
  // gRPC binds with SO_REUSEPORT by default: a second moed on the same port would start and take
  // half of the connections (each its own store). Off, the bind fails and this moed says so.
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  builder.AddListeningPort(c.listen, grpc::InsecureServerCredentials(), &selected);
  builder.RegisterService(m->job_service_.get());
  builder.RegisterService(m->report_service_.get());
  m->server_ = builder.BuildAndStart();
  if (m->server_ == nullptr || selected == 0) {
    return absl::UnavailableError(absl::StrCat(
        "--listen: cannot listen on ", c.listen,
        " (is another moed running there? pick another port with --listen)"));
  }
  if (!c.metrics_listen.empty()) {
    m->exporter_ = std::make_unique<PrometheusExporter>(m->store_.get(), c.metrics_retention);
    m->dashboard_ = std::make_unique<Dashboard>(m->store_.get());
    HttpServerOptions ho;
    ho.listen = c.metrics_listen;
    ho.token = token;
    Moed* moed = m.get();
    ho.health = [moed] { return moed->Health(); };
    absl::StatusOr<std::unique_ptr<HttpServer>> http =
        HttpServer::Start(ho, m->exporter_.get(), m->dashboard_.get());
    if (!http.ok()) {
      m->server_->Shutdown();
      return http.status();
    }
    m->http_ = *std::move(http);
  }
  m->scheduler_->Start();
  return m;
}

Moed::~Moed() { Shutdown(); }

void Moed::Shutdown() {
  // Followers first: the hub finishes the streams it holds (UNAVAILABLE) and refuses the rest as
  // their writes complete. Then the server: unary calls get kShutdownGrace to answer; what is
  // still open after it (the workers' report streams) is cancelled, and their reactors finish.
  constexpr auto kShutdownGrace = std::chrono::milliseconds(200);
  if (follow_hub_) follow_hub_->Shutdown();
  if (server_) server_->Shutdown(std::chrono::system_clock::now() + kShutdownGrace);
  if (scheduler_) scheduler_->Stop();
  http_.reset();
}

void Moed::Wait() {
  if (server_) server_->Wait();
}

absl::Status Moed::Health() const {
  return scheduler_ ? scheduler_->CheckFreeSpace() : absl::OkStatus();
}

int Moed::metrics_port() const { return http_ ? http_->port() : 0; }

}  // namespace moe::daemon
