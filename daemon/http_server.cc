// HttpServer: civetweb's context with one request handler that checks the token and routes.
#include "daemon/http_server.h"

#include <civetweb.h>
#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <mutex>
#include <thread>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "daemon/dashboard.h"
#include "common/job_id.h"
#include "daemon/prometheus.h"

namespace moe::daemon {
namespace {

bool ConstantTimeEquals(absl::string_view a, absl::string_view b) {
  unsigned char diff = a.size() == b.size() ? 0 : 1;
  for (size_t i = 0; i < a.size(); ++i) {
    diff |= static_cast<unsigned char>(a[i] ^ (i < b.size() ? b[i] : 0));
  }
  return diff == 0;
}

// Set as a connection's user data once it has an answer, so that AnswerUnrouted knows which
// requests civetweb left unanswered (it resets the data as the connection closes).
char answered_mark;

void Reply(mg_connection* conn, int code, const char* reason, const char* type,
           const std::string& body, const std::string& extra_headers = "") {
  mg_set_user_connection_data(conn, &answered_mark);
  const mg_request_info* ri = mg_get_request_info(conn);
  const bool head = ri != nullptr && ri->request_method != nullptr && std::strcmp(ri->request_method, "HEAD") == 0;
  std::string head_text = absl::StrCat("HTTP/1.1 ", code, " ", reason, "\r\nContent-Type: ", type,
                                       "\r\nContent-Length: ", body.size(),
                                       "\r\nCache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\nConnection: close\r\n",
                                       extra_headers, "\r\n");
  mg_write(conn, head_text.data(), head_text.size());
  if (!head) mg_write(conn, body.data(), body.size());
}

// civetweb wants "PORT" for every interface and "HOST:PORT" or "[V6]:PORT" otherwise.
absl::StatusOr<std::string> ListeningPorts(const std::string& listen) {
  const size_t colon = listen.rfind(':');
  int port = -1;
  if (colon == std::string::npos || !absl::SimpleAtoi(listen.substr(colon + 1), &port) ||
      port < 0 || port > 65535) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--metrics-listen: '", listen, "' is not HOST:PORT (e.g. 127.0.0.1:9464)"));
  }
  const std::string host = listen.substr(0, colon);
  if (host.empty() || host == "0.0.0.0") return std::to_string(port);
  if (host == "localhost") return absl::StrCat("127.0.0.1:", port);
  if (host.front() == '[') {
    // Debian's civetweb is built without IPv6 (feature 8): mg_start would only fail.
    if (mg_check_feature(8) == 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "--metrics-listen: '", listen, "' is an IPv6 address, and this build's HTTP library (civetweb) has no "
          "IPv6; give an IPv4 one (127.0.0.1:", port, ", or 0.0.0.0:", port, " for every interface)"));
    }
    return absl::StrCat(host, ":", port);
  }
  // civetweb takes a numeric address: a host name is resolved here to its first IPv4 address.
  addrinfo hints = {};
  hints.ai_family = AF_INET;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* found = nullptr;
  if (const int rc = getaddrinfo(host.c_str(), nullptr, &hints, &found); rc != 0 || found == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--metrics-listen: host '", host, "' has no IPv4 address (", rc != 0 ? gai_strerror(rc) : "none found",
        "); give an address of this machine, e.g. 127.0.0.1:", port, " or 0.0.0.0:", port));
  }
  char text[INET_ADDRSTRLEN] = {};
  inet_ntop(AF_INET, &reinterpret_cast<sockaddr_in*>(found->ai_addr)->sin_addr, text, sizeof(text));
  freeaddrinfo(found);
  return absl::StrCat(text, ":", port);
}

int QuietLog(const mg_connection*, const char*) { return 1; }

// The pages this port serves, for the messages that name them.
constexpr const char* kPages = "/, /jobs/ID, /jobs/ID/charts.svg, /metrics and /healthz";
constexpr const char* kText = "text/plain; charset=utf-8";

// Whether the request may have had header lines past the 64 (MG_MAX_HEADERS) civetweb keeps: it
// stops there, drops the rest unread and reports 64 either way. So a request that filled all 64 is
// refused (64 exactly included): no client needs that many, and telling 64 from 65 would mean
// reading civetweb's buffer past what it parsed.
bool DroppedHeaders(const mg_request_info* ri) { return ri->num_headers >= MG_MAX_HEADERS; }

int HeaderCount(const mg_request_info* ri, const char* name) {
  int n = 0;
  for (int i = 0; i < ri->num_headers; ++i) n += absl::EqualsIgnoreCase(ri->http_headers[i].name, name);
  return n;
}

void ReplyTooManyHeaders(mg_connection* conn) {
  Reply(conn, 431, "Request Header Fields Too Large", kText,
        absl::StrCat("this request has ", MG_MAX_HEADERS, " or more header lines, and moed's "
                     "HTTP port takes at most ", MG_MAX_HEADERS - 1, " (civetweb keeps ", MG_MAX_HEADERS,
                     " and drops the rest unread, so an Authorization among them would look "
                     "missing); send at most ", MG_MAX_HEADERS - 1,
                     " (leave out ones the request does not need)\n"));
}

void ReplyMethodNotAllowed(mg_connection* conn) {
  Reply(conn, 405, "Method Not Allowed", kText, "only GET and HEAD are served\n",
        "Allow: GET, HEAD\r\n");
}

// civetweb's own answers, to requests it could not take to the handler (a method it does not
// know, a request line or headers past its 16 KiB buffer, another protocol version): its bare
// "Bad request" or "Malformed message", with what this port does serve.
int CivetwebError(mg_connection* conn, int status, const char* errmsg) {
  const char* reason = mg_get_response_code_text(conn, status);
  Reply(conn, status, reason != nullptr ? reason : "Error", kText,
        absl::StrCat(status, " ", reason != nullptr ? reason : "", ": ", errmsg != nullptr ? errmsg : "",
                     "\nmoed's HTTP port serves GET and HEAD of ", kPages,
                     " over HTTP/1.0 or 1.1, one request a connection, its request line and headers under 16 KiB\n"));
  return 0;
}

// civetweb's connection_close callback, the last look at a connection while its socket is open.
// civetweb takes a request whose target is no path on this server to no handler and closes it
// unanswered, leaving the client to wait for an answer that never comes: the asterisk form
// (GET *, OPTIONS *) and an absolute form naming another port (http://HOST/ is port 80). This
// answers them. civetweb's header marks the connection const here (it would rather no one
// writes), but in 1.15 (and its master of April 2026) close_connection calls this before it
// closes the socket.
void AnswerUnrouted(const mg_connection* closing) {
  auto* conn = const_cast<mg_connection*>(closing);
  const mg_request_info* ri = mg_get_request_info(conn);
  if (ri == nullptr || mg_get_user_connection_data(conn) != nullptr ||
      ri->request_method == nullptr || ri->request_uri == nullptr || ri->local_uri != nullptr) {
    return;  // answered, or no request came, or civetweb routed it
  }
  if (DroppedHeaders(ri)) {
    ReplyTooManyHeaders(conn);
    return;
  }
  const std::string method = ri->request_method;
  if (method != "GET" && method != "HEAD") {
    ReplyMethodNotAllowed(conn);
    return;
  }
  // The target as sent, with bytes that are not printable ASCII as %XX (the body is UTF-8).
  std::string target;
  for (const char* c = ri->request_uri; *c != '\0'; ++c) {
    const unsigned char byte = static_cast<unsigned char>(*c);
    if (byte > 0x20 && byte < 0x7f) {
      target.push_back(*c);
    } else {
      absl::StrAppend(&target, "%", absl::Hex(byte, absl::kZeroPad2));
    }
  }
  if (target == "*") {
    Reply(conn, 400, "Bad Request", kText,
          absl::StrCat("bad request target '*': the asterisk form names the server, not a page; "
                       "ask for one of the pages: ", kPages, "\n"));
    return;
  }
  Reply(conn, 400, "Bad Request", kText,
        absl::StrCat("bad request target '", target, "': it names another server than this port ",
                     ri->server_port, " (with no port, http:// is 80 and https:// 443), and moed "
                     "is no proxy; send the path alone (GET /metrics) or name port ",
                     ri->server_port, "; the pages are ", kPages, "\n"));
}

// The path with its %XX escapes decoded, or a 400's message. civetweb's own decoding (turned off)
// ended the path at a %00 (/jobs/%00 served the job list) and passed a '%' that starts no escape
// on as it was (/jobs/%zz was "no job %zz").
absl::StatusOr<std::string> DecodePath(absl::string_view raw) {
  const auto hex = [](char c) {
    return absl::ascii_isdigit(c) ? c - '0'
           : absl::ascii_isxdigit(c) ? absl::ascii_tolower(c) - 'a' + 10
                                     : -1;
  };
  std::string path;
  for (size_t i = 0; i < raw.size(); ++i) {
    if (raw[i] != '%') {
      path.push_back(raw[i]);
      continue;
    }
    const int hi = i + 2 < raw.size() ? hex(raw[i + 1]) : -1;
    const int lo = i + 2 < raw.size() ? hex(raw[i + 2]) : -1;
    if (hi < 0 || lo < 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "bad path: the '%' at byte ", i, " starts no %XX escape (two hex digits; '%' itself is "
          "%25)"));
    }
    if (hi == 0 && lo == 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "bad path: %00 (a NUL byte) at byte ", i, "; the pages are ", kPages));
    }
    path.push_back(static_cast<char>(hi * 16 + lo));
    i += 2;
  }
  return path;
}

// Opens and at once closes a connection to the listener at HOST:PORT (a wildcard host through
// loopback): civetweb's accept loop sleeps in poll() for up to 2 s between looks at its stop
// flag, and a connection ends that sleep.
void PokeListener(const std::string& listen, int port) {
  std::string host = listen.substr(0, listen.rfind(':'));
  if (host.size() >= 2 && host.front() == '[') host = host.substr(1, host.size() - 2);
  if (host.empty() || host == "0.0.0.0") host = "127.0.0.1";
  if (host == "::") host = "::1";
  addrinfo hints = {};
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* found = nullptr;
  if (getaddrinfo(host.c_str(), std::to_string(port).c_str(), &hints, &found) != 0) return;
  for (addrinfo* a = found; a != nullptr; a = a->ai_next) {
    int fd = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
    if (fd < 0) continue;
    const bool connected = connect(fd, a->ai_addr, a->ai_addrlen) == 0;
    close(fd);
    if (connected) break;
  }
  freeaddrinfo(found);
}

}  // namespace

absl::StatusOr<std::unique_ptr<HttpServer>> HttpServer::Start(const HttpServerOptions& options,
                                                              PrometheusExporter* exporter,
                                                              Dashboard* dashboard) {
  absl::StatusOr<std::string> ports = ListeningPorts(options.listen);
  if (!ports.ok()) return ports.status();
  static std::once_flag init;
  std::call_once(init, [] { mg_init_library(0); });
  std::unique_ptr<HttpServer> s(new HttpServer(options, exporter, dashboard));
  const std::string threads = std::to_string(options.threads);
  const std::string deadline = std::to_string(options.request_deadline.count());
  const char* opts[] = {"listening_ports", ports->c_str(),
                        "num_threads", threads.c_str(),
                        "request_timeout_ms", deadline.c_str(),
                        // The handler decodes the path (DecodePath).
                        "decode_url", "no",
                        // One request a connection: a client that sent requests ahead and read
                        // no answer held its thread for the deadline once per request. And no
                        // linger_timeout_ms: 0 reset the connection as it closed, cutting an
                        // answer the client had not yet taken in.
                        "enable_keep_alive", "no",
                        // An absolute-form target (GET http://HOST:PORT/metrics) on this port
                        // names this server whatever HOST says; the check closed it unanswered.
                        "enable_auth_domain_check", "no",
                        // No CORS: civetweb's defaults ("*") answered a browser's preflight
                        // OPTIONS itself, 200 with Access-Control-Allow-Origin: *, past the token.
                        "access_control_allow_origin", "",
                        "access_control_allow_methods", "",
                        nullptr};
  mg_callbacks callbacks = {};
  callbacks.log_message = QuietLog;
  callbacks.http_error = CivetwebError;
  callbacks.connection_close = AnswerUnrouted;
  // mg_start serves at once and the handler can only be set after it: a request in between was
  // civetweb's own 404 (a scrape at moed's start, seen in a test). Such a request waits for it.
  callbacks.begin_request = &HttpServer::WaitUntilRouted;
  s->ctx_ = mg_start(&callbacks, s.get(), opts);
  if (s->ctx_ == nullptr) {
    return absl::UnavailableError(absl::StrCat(
        "--metrics-listen: cannot listen on ", options.listen,
        " (the port is taken, e.g. by another moed, or the address is not one of this machine's; "
        "pick another port or address, or \"\" to turn it off)"));
  }
  mg_server_port bound[4] = {};
  if (mg_get_server_ports(s->ctx_, 4, bound) > 0) s->port_ = bound[0].port;
  mg_set_request_handler(s->ctx_, "/", &HttpServer::HandleThunk, s.get());
  s->routed_.store(true, std::memory_order_release);
  return s;
}

int HttpServer::WaitUntilRouted(mg_connection* conn) {
  const auto* self = static_cast<const HttpServer*>(mg_get_user_data(mg_get_context(conn)));
  while (!self->routed_.load(std::memory_order_acquire)) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return 0;  // civetweb goes on to the handler
}

HttpServer::~HttpServer() {
  if (ctx_ == nullptr) return;
  // mg_stop waits for the accept loop to see its stop flag; poke the listener until it has, so
  // moed stops in milliseconds rather than up to civetweb's 2 s poll.
  std::atomic<bool> stopped{false};
  std::thread poker([&] {
    while (!stopped) {
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
      if (!stopped) PokeListener(options_.listen, port_);
    }
  });
  mg_stop(ctx_);
  stopped = true;
  poker.join();
}

int HttpServer::HandleThunk(mg_connection* conn, void* self) {
  return static_cast<HttpServer*>(self)->Handle(conn);
}

bool HttpServer::Authorized(mg_connection* conn) const {
  if (options_.token.empty()) return true;
  const char* header = mg_get_header(conn, "Authorization");
  if (header == nullptr) return false;
  absl::string_view value = absl::StripAsciiWhitespace(header);
  // "SCHEME 1*SP credentials"; the scheme's name is case-insensitive (RFC 7235).
  const size_t space = value.find(' ');
  const absl::string_view scheme = value.substr(0, space);
  value = space == absl::string_view::npos ? absl::string_view()
                                           : absl::StripLeadingAsciiWhitespace(value.substr(space + 1));
  if (absl::EqualsIgnoreCase(scheme, "Bearer")) return ConstantTimeEquals(value, options_.token);
  // Basic USER:TOKEN (any user): what a browser sends after asking.
  std::string decoded;
  if (absl::EqualsIgnoreCase(scheme, "Basic") && absl::Base64Unescape(value, &decoded)) {
    const size_t colon = decoded.find(':');
    return colon != std::string::npos &&
           ConstantTimeEquals(absl::string_view(decoded).substr(colon + 1), options_.token);
  }
  return false;
}

int HttpServer::Handle(mg_connection* conn) {
  const mg_request_info* ri = mg_get_request_info(conn);
  // Before anything reads a header: one civetweb dropped may be the one that matters.
  if (DroppedHeaders(ri)) {
    ReplyTooManyHeaders(conn);
    return 431;
  }
  const std::string method = ri->request_method;
  if (method != "GET" && method != "HEAD") {
    ReplyMethodNotAllowed(conn);
    return 405;
  }
  absl::StatusOr<std::string> decoded = DecodePath(ri->local_uri != nullptr ? ri->local_uri : "/");
  if (!decoded.ok()) {
    Reply(conn, 400, "Bad Request", kText, absl::StrCat(decoded.status().message(), "\n"));
    return 400;
  }
  const std::string& path = *decoded;
  if (path == "/healthz") {
    const absl::Status health = options_.health ? options_.health() : absl::OkStatus();
    if (!health.ok()) {
      Reply(conn, 503, "Service Unavailable", kText, std::string(health.message()) + "\n");
      return 503;
    }
    Reply(conn, 200, "OK", kText, "ok\n");
    return 200;
  }
  // Two Authorization headers: which one counts would depend on the reader (civetweb takes the
  // first, a proxy in front may take the last). Refused rather than guessed.
  if (!options_.token.empty() && HeaderCount(ri, "Authorization") > 1) {
    Reply(conn, 400, "Bad Request", kText, "more than one Authorization header: send the token once\n");
    return 400;
  }
  if (!Authorized(conn)) {
    Reply(conn, 401, "Unauthorized", kText,
          "moed requires its token: 'Authorization: Bearer <token>' (or Basic auth with the "
          "token as the password)\n",
          "WWW-Authenticate: Basic realm=\"moed\", charset=\"UTF-8\"\r\n");
    return 401;
  }
  if (path == "/metrics") {
    Reply(conn, 200, "OK", "text/plain; version=0.0.4; charset=utf-8", exporter_->Render());
    return 200;
  }
  if (path == "/" || path == "/jobs" || path == "/jobs/") {
    Reply(conn, 200, "OK", "text/html; charset=utf-8", dashboard_->JobsPage());
    return 200;
  }
  absl::string_view rest = path;
  if (absl::ConsumePrefix(&rest, "/jobs/")) {
    const bool svg = absl::ConsumeSuffix(&rest, "/charts.svg");
    if (!svg) absl::ConsumeSuffix(&rest, "/");  // /jobs/ID/ is /jobs/ID
    if (rest.find('/') != absl::string_view::npos) {
      Reply(conn, 404, "Not Found", kText,
            "not found: a job's pages are /jobs/ID and /jobs/ID/charts.svg\n");
      return 404;
    }
    const std::string id(rest);
    if (absl::Status bad = CheckJobId(id); !bad.ok()) {
      Reply(conn, 400, "Bad Request", kText, absl::StrCat(bad.message(), "\n"));
      return 400;
    }
    absl::StatusOr<std::string> page = svg ? dashboard_->JobChartsSvg(id) : dashboard_->JobPage(id);
    if (page.ok()) {
      Reply(conn, 200, "OK", svg ? "image/svg+xml" : "text/html; charset=utf-8", *page);
      return 200;
    }
    if (absl::IsNotFound(page.status())) {
      Reply(conn, 404, "Not Found", kText, absl::StrCat("no job ", id, " (see /)\n"));
      return 404;
    }
    Reply(conn, 500, "Internal Server Error", kText,
          absl::StrCat(page.status().message(), "\n"));
    return 500;
  }
  Reply(conn, 404, "Not Found", kText, absl::StrCat("not found: this port serves ", kPages, "\n"));
  return 404;
}

}  // namespace moe::daemon
