// A plain HTTP/1.1 GET over a socket for the tests of moed's HTTP port (no library in between,
// so the test sees exactly what moed sends), and slow clients that hold connections open.
#pragma once

#include <string>
#include <vector>

namespace moe::testing {

struct HttpResponse {
  int status = 0;  // 0 when nothing came back
  std::string headers, body;
};

// GET path on 127.0.0.1:port with extra header lines ("Authorization: Bearer x").
HttpResponse HttpGet(int port, const std::string& path,
                     const std::vector<std::string>& headers = {}, double timeout_s = 10);

// `request` sent as it is (request line, headers and the blank line), the answer read to the end.
HttpResponse HttpRaw(int port, const std::string& request, double timeout_s = 10);

// GET path as HttpGet does (Connection: close), from a client with a small receive buffer that
// reads nothing for delay_s first, as over a slow network: most of the answer still waits in
// moed's socket when moed closes it.
HttpResponse HttpGetReadingLate(int port, const std::string& path, double delay_s);

// Connections that sent part of a request and then nothing: each holds one of the server's
// workers until its deadline.
class SlowClients {
 public:
  SlowClients(int port, int count);
  ~SlowClients();
  int connected() const { return static_cast<int>(fds_.size()); }

 private:
  std::vector<int> fds_;
};

}  // namespace moe::testing
