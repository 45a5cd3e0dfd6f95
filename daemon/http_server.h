// HttpServer: moed's HTTP port on civetweb (a pool of worker threads, one request a connection,
// a deadline on every request): /metrics (Prometheus), /healthz, and the dashboard (/ and
// /jobs/ID). With a token every path but /healthz needs `Authorization: Bearer <token>` (or Basic
// auth with the token as the password, which a browser asks for), else 401. A request with 64
// or more headers (civetweb keeps 64 and drops the rest) is a 431; a target that is no path here
// (GET *, http://OTHER/) is a 400 naming the pages.
#pragma once

#include <atomic>
#include <chrono>
#include <functional>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

struct mg_context;
struct mg_connection;

namespace moe::daemon {

class Dashboard;
class PrometheusExporter;

struct HttpServerOptions {
  std::string listen;  // HOST:PORT; port 0 picks a free one
  std::string token;   // "" = no auth
  // Worker threads: each holds one connection, so this many slow clients fit before a new one
  // waits (for at most the request deadline).
  int threads = 32;
  // A request (its headers read, its answer written) gets this long, however slowly the client
  // sends; then the connection closes (no keep-alive).
  std::chrono::milliseconds request_deadline{5000};
  // What /healthz reports: OK, or why moed cannot take new jobs (503 with the reason).
  std::function<absl::Status()> health;
};

class HttpServer {
 public:
  static absl::StatusOr<std::unique_ptr<HttpServer>> Start(const HttpServerOptions& options,
                                                           PrometheusExporter* exporter,
                                                           Dashboard* dashboard);
  ~HttpServer();
  int port() const { return port_; }

 private:
  HttpServer(HttpServerOptions options, PrometheusExporter* exporter, Dashboard* dashboard)
      : options_(std::move(options)), exporter_(exporter), dashboard_(dashboard) {}
  static int HandleThunk(mg_connection* conn, void* self);
  // civetweb's begin_request: holds a request that came before the handler was set.
  static int WaitUntilRouted(mg_connection* conn);
  int Handle(mg_connection* conn);
  bool Authorized(mg_connection* conn) const;

  const HttpServerOptions options_;
  PrometheusExporter* const exporter_;
  Dashboard* const dashboard_;
  mg_context* ctx_ = nullptr;
  int port_ = 0;
  std::atomic<bool> routed_{false};  // the handler of "/" is set
};

}  // namespace moe::daemon
