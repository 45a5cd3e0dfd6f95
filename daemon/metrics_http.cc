// MetricsHttpServer and the exposition rendering.
#include "daemon/metrics_http.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <map>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace moe::daemon {
namespace {

std::string Escape(const std::string& v) {
  std::string out;
  for (char c : v) {
    if (c == '\\' || c == '"') {
      out.push_back('\\');
      out.push_back(c);
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out.push_back(c);
    }
  }
  return out;
}

std::string Num(double v) { return absl::StrFormat("%.10g", v); }

void Family(std::string& out, const char* name, const char* type, const char* help) {
  absl::StrAppend(&out, "# HELP ", name, " ", help, "\n# TYPE ", name, " ", type, "\n");
}

bool SendAll(int fd, const std::string& data) {
  size_t sent = 0;
  while (sent < data.size()) {
    ssize_t n = send(fd, data.data() + sent, data.size() - sent, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    sent += static_cast<size_t>(n);
  }
  return true;
}

}  // namespace

std::string RenderPrometheusMetrics(JobStore& store) {
  std::string out;
  absl::StatusOr<std::vector<JobRecord>> jobs = store.ListJobs();
  std::map<moe::v1::JobState, int> counts;
  for (int s = moe::v1::JOB_STATE_QUEUED; s <= moe::v1::JOB_STATE_CANCELLED; ++s) {
    counts[static_cast<moe::v1::JobState>(s)] = 0;
  }
  std::vector<const JobRecord*> running;
  if (jobs.ok()) {
    for (const JobRecord& r : *jobs) {
      counts[r.job.state()]++;
      if (r.job.state() == moe::v1::JOB_STATE_RUNNING) running.push_back(&r);
    }
  }
  Family(out, "moe_up", "gauge", "1 when moed can read its job store.");
  absl::StrAppend(&out, "moe_up ", jobs.ok() ? 1 : 0, "\n");
  Family(out, "moe_jobs", "gauge", "Jobs known to moed, by state.");
  for (const auto& [state, n] : counts) {
    std::string name = StateName(state);
    absl::AsciiStrToLower(&name);
    absl::StrAppend(&out, "moe_jobs{state=\"", name, "\"} ", n, "\n");
  }
  struct Gauge {
    const char* name;
    const char* help;
    double (*get)(const moe::v1::MetricPoint&);
  };
  const Gauge gauges[] = {
      {"moe_job_step", "Latest step of a running job.",
       [](const moe::v1::MetricPoint& p) { return static_cast<double>(p.step()); }},
      {"moe_job_loss", "Latest train cross-entropy loss of a running job.",
       [](const moe::v1::MetricPoint& p) { return p.loss(); }},
      {"moe_job_tokens_per_second", "Latest training throughput of a running job.",
       [](const moe::v1::MetricPoint& p) { return p.tokens_per_s(); }},
  };
  for (const Gauge& g : gauges) {
    Family(out, g.name, "gauge", g.help);
    for (const JobRecord* r : running) {
      if (!r->job.has_latest()) continue;
      absl::StrAppend(&out, g.name, "{job=\"", Escape(r->job.id()), "\",name=\"",
                      Escape(r->job.spec().name()), "\"} ", Num(g.get(r->job.latest())), "\n");
    }
  }
  Family(out, "moe_job_expert_tokens", "gauge",
         "Token assignments routed to each expert at the latest logged step of a running job.");
  for (const JobRecord* r : running) {
    for (const moe::v1::MoeLayerStats& l : r->job.latest().layers()) {
      for (int e = 0; e < l.tokens_per_expert_size(); ++e) {
        absl::StrAppend(&out, "moe_job_expert_tokens{job=\"", Escape(r->job.id()), "\",layer=\"",
                        l.layer(), "\",expert=\"", e, "\"} ", l.tokens_per_expert(e), "\n");
      }
    }
  }
  Family(out, "moe_job_expert_load_imbalance", "gauge",
         "Max over mean of tokens per expert, per MoE layer, of a running job.");
  for (const JobRecord* r : running) {
    for (const moe::v1::MoeLayerStats& l : r->job.latest().layers()) {
      absl::StrAppend(&out, "moe_job_expert_load_imbalance{job=\"", Escape(r->job.id()),
                      "\",layer=\"", l.layer(), "\"} ", Num(l.load_imbalance()), "\n");
    }
  }
  return out;
}

absl::StatusOr<std::unique_ptr<MetricsHttpServer>> MetricsHttpServer::Start(
    const std::string& listen, std::function<std::string()> render) {
  size_t colon = listen.rfind(':');
  int port = -1;
  if (colon == std::string::npos || !absl::SimpleAtoi(listen.substr(colon + 1), &port) ||
      port < 0 || port > 65535) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--metrics-listen: '", listen, "' is not HOST:PORT (e.g. 127.0.0.1:9464)"));
  }
  std::string host = listen.substr(0, colon);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }
  addrinfo hints = {};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
  addrinfo* res = nullptr;
  std::string port_text = std::to_string(port);
  if (int rc = getaddrinfo(host.empty() ? nullptr : host.c_str(), port_text.c_str(), &hints, &res);
      rc != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("--metrics-listen: cannot resolve '", host, "': ", gai_strerror(rc)));
  }
  int fd = socket(res->ai_family, res->ai_socktype | SOCK_CLOEXEC, 0);
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  if (fd < 0 || bind(fd, res->ai_addr, res->ai_addrlen) != 0 || ::listen(fd, 16) != 0) {
    int err = errno;
    freeaddrinfo(res);
    if (fd >= 0) close(fd);
    return absl::UnavailableError(absl::StrCat("--metrics-listen: cannot listen on ", listen,
                                               ": ", std::strerror(err)));
  }
  freeaddrinfo(res);
  sockaddr_storage bound = {};
  socklen_t len = sizeof(bound);
  getsockname(fd, reinterpret_cast<sockaddr*>(&bound), &len);
  int bound_port = bound.ss_family == AF_INET6
                       ? ntohs(reinterpret_cast<sockaddr_in6*>(&bound)->sin6_port)
                       : ntohs(reinterpret_cast<sockaddr_in*>(&bound)->sin_port);
  return std::unique_ptr<MetricsHttpServer>(
      new MetricsHttpServer(fd, bound_port, std::move(render)));
}

MetricsHttpServer::MetricsHttpServer(int fd, int port, std::function<std::string()> render)
    : fd_(fd), port_(port), render_(std::move(render)) {
  thread_ = std::thread([this] { Serve(); });
}

MetricsHttpServer::~MetricsHttpServer() {
  stop_ = true;
  if (thread_.joinable()) thread_.join();
  close(fd_);
}

void MetricsHttpServer::Serve() {
  while (!stop_) {
    pollfd p = {fd_, POLLIN, 0};
    if (poll(&p, 1, 200) <= 0) continue;
    int client = accept4(fd_, nullptr, nullptr, SOCK_CLOEXEC);
    if (client < 0) continue;
    Handle(client);
    close(client);
  }
}

void MetricsHttpServer::Handle(int client) {
  timeval tv = {2, 0};
  setsockopt(client, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  std::string req;
  char buf[4096];
  while (req.find("\r\n\r\n") == std::string::npos && req.size() < 16384) {
    ssize_t n = recv(client, buf, sizeof(buf), 0);
    if (n <= 0) break;
    req.append(buf, static_cast<size_t>(n));
  }
  const std::string line = req.substr(0, req.find("\r\n"));
  std::string status = "200 OK", type = "text/plain; version=0.0.4; charset=utf-8", body;
  const bool is_get = line.rfind("GET ", 0) == 0, is_head = line.rfind("HEAD ", 0) == 0;
  std::string path;
  if (is_get || is_head) {
    size_t start = line.find(' ') + 1;
    path = line.substr(start, line.find(' ', start) - start);
    path = path.substr(0, path.find('?'));
  }
  if (!is_get && !is_head) {
    status = "405 Method Not Allowed";
    type = "text/plain";
    body = "only GET /metrics is served\n";
  } else if (path == "/metrics") {
    body = render_();
  } else {
    status = "404 Not Found";
    type = "text/plain";
    body = "not found: try /metrics\n";
  }
  std::string head = absl::StrCat("HTTP/1.1 ", status, "\r\nContent-Type: ", type,
                                  "\r\nContent-Length: ", body.size(),
                                  "\r\nConnection: close\r\n\r\n");
  SendAll(client, is_head ? head : head + body);
}

}  // namespace moe::daemon
