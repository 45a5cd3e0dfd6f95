// The Prometheus endpoint: a tiny HTTP/1.1 server (one thread, one request per connection)
// answering GET /metrics with the text exposition format rendered from the job store.
#pragma once

#include <atomic>
#include <functional>
#include <memory>
#include <string>
#include <thread>

#include "absl/status/statusor.h"
#include "daemon/job_store.h"

namespace moe::daemon {

// Job counts by state, and per running job its latest step, loss, tokens/s and per-expert load.
std::string RenderPrometheusMetrics(JobStore& store);

class MetricsHttpServer {
 public:
  // listen is HOST:PORT (port 0 picks a free one).
  static absl::StatusOr<std::unique_ptr<MetricsHttpServer>> Start(
      const std::string& listen, std::function<std::string()> render);
  ~MetricsHttpServer();
  int port() const { return port_; }

 private:
  MetricsHttpServer(int fd, int port, std::function<std::string()> render);
  void Serve();
  void Handle(int client);

  int fd_;
  int port_;
  std::function<std::string()> render_;
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

}  // namespace moe::daemon
