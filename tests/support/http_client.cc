// HttpGet and SlowClients on raw sockets.
#include "tests/support/http_client.h"

#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include "absl/strings/numbers.h"

namespace moe::testing {
namespace {

// receive_buffer > 0 sets SO_RCVBUF (before connect, so the window is small from the start).
int Connect(int port, int receive_buffer = 0) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (receive_buffer > 0) {
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &receive_buffer, sizeof(receive_buffer));
  }
  sockaddr_in addr = {};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(static_cast<uint16_t>(port));
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    close(fd);
    return -1;
  }
  return fd;
}

HttpResponse Send(int port, const std::string& req, double timeout_s, int receive_buffer, double delay_s) {
  HttpResponse r;
  int fd = Connect(port, receive_buffer);
  if (fd < 0) return r;
  timeval tv = {static_cast<time_t>(timeout_s), 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  (void)!write(fd, req.data(), req.size());
  if (delay_s > 0) usleep(static_cast<useconds_t>(delay_s * 1e6));
  std::string resp;
  char buf[8192];
  ssize_t n;
  while ((n = read(fd, buf, sizeof(buf))) > 0) resp.append(buf, static_cast<size_t>(n));
  close(fd);
  const size_t end = resp.find("\r\n\r\n");
  if (resp.rfind("HTTP/1.", 0) != 0 || end == std::string::npos) return r;
  (void)absl::SimpleAtoi(resp.substr(9, 3), &r.status);
  r.headers = resp.substr(0, end);
  r.body = resp.substr(end + 4);
  return r;
}

HttpResponse Get(int port, const std::string& path, const std::vector<std::string>& headers,
                 double timeout_s, int receive_buffer, double delay_s) {
  std::string req = "GET " + path + " HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n";
  for (const std::string& h : headers) req += h + "\r\n";
  req += "\r\n";
  return Send(port, req, timeout_s, receive_buffer, delay_s);
}

}  // namespace

HttpResponse HttpRaw(int port, const std::string& request, double timeout_s) {
  return Send(port, request, timeout_s, 0, 0);
}

HttpResponse HttpGet(int port, const std::string& path, const std::vector<std::string>& headers,
                     double timeout_s) {
  return Get(port, path, headers, timeout_s, 0, 0);
}

HttpResponse HttpGetReadingLate(int port, const std::string& path, double delay_s) {
  return Get(port, path, {}, 10, 1, delay_s);  // the kernel's smallest buffer
}

SlowClients::SlowClients(int port, int count) {
  for (int i = 0; i < count; ++i) {
    int fd = Connect(port);
    if (fd < 0) continue;
    const std::string part = "GET /metrics HTTP/1.1\r\nHost: loc";
    (void)!write(fd, part.data(), part.size());
    fds_.push_back(fd);
  }
}

SlowClients::~SlowClients() {
  for (int fd : fds_) close(fd);
}

}  // namespace moe::testing
