// moed's HTTP port: the token guards every path but /healthz (401 without it, Bearer or Basic
// with it), a path that can name no job or does not decode is a 400, a request with more headers
// than civetweb keeps is a 431, every request target gets an answer, and slow clients holding
// connections cannot delay a scrape.
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <utility>

#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "tests/support/daemon_harness.h"
#include "tests/support/http_client.h"
#include "tests/support/paths.h"

namespace moe::testing {
namespace {

HarnessOptions Fake() {
  HarnessOptions o;
  o.worker_bin = FakeWorkerPath();
  o.cancel_grace_s = 5;
  return o;
}

// Fake() with the token "http-s3cret" in a file only its owner reads (moed refuses one that
// others can read).
HarnessOptions WithToken(const std::string& temp_prefix) {
  HarnessOptions o = Fake();
  o.token_file = MakeTempDir(temp_prefix) + "/token";
  std::ofstream(o.token_file) << "http-s3cret\n";
  std::filesystem::permissions(o.token_file, std::filesystem::perms::owner_read | std::filesystem::perms::owner_write,
                               std::filesystem::perm_options::replace);
  return o;
}

TEST(DashboardHttp, TokenIsRequiredExceptOnHealthz) {
  HarnessOptions o = WithToken("moe-http-token-");
  DaemonHarness h(o);
  ASSERT_TRUE(h.Start()) << h.MoedLog();
  const int port = h.metrics_port();
  for (const char* path : {"/metrics", "/", "/jobs/j-000001", "/jobs/j-000001/charts.svg"}) {
    HttpResponse none = HttpGet(port, path);
    EXPECT_EQ(none.status, 401) << path << none.headers;
    EXPECT_TRUE(absl::StrContains(none.headers, "WWW-Authenticate")) << none.headers;
    EXPECT_EQ(HttpGet(port, path, {"Authorization: Bearer wrong"}).status, 401) << path;
  }
  EXPECT_EQ(HttpGet(port, "/healthz").status, 200);
  HttpResponse bearer = HttpGet(port, "/metrics", {"Authorization: Bearer http-s3cret"});
  EXPECT_EQ(bearer.status, 200);
  EXPECT_TRUE(absl::StrContains(bearer.body, "moe_up 1")) << bearer.body;
  // A browser asks for a user and password: any user, the token as the password.
  HttpResponse basic = HttpGet(
      port, "/", {"Authorization: Basic " + absl::Base64Escape("me:http-s3cret")});
  EXPECT_EQ(basic.status, 200);
  EXPECT_TRUE(absl::StrContains(basic.body, "<table id=\"jobs\">")) << basic.body;
  EXPECT_EQ(HttpGet(port, "/jobs/j-999999", {"Authorization: Bearer http-s3cret"}).status, 404);
  // The scheme's name is case-insensitive (RFC 7235).
  EXPECT_EQ(HttpGet(port, "/metrics", {"Authorization: bearer http-s3cret"}).status, 200);
  EXPECT_EQ(HttpGet(port, "/", {"Authorization: BASIC " + absl::Base64Escape("me:http-s3cret")}).status, 200);
  EXPECT_EQ(HttpGet(port, "/metrics", {"Authorization: Bearerhttp-s3cret"}).status, 401);
  EXPECT_EQ(HttpGet(port, "/metrics", {"Authorization: Bearer   http-s3cret"}).status, 200);  // 1*SP
  // The token twice, or a right and a wrong one in either order: refused, whichever comes first.
  for (const auto& [first, second] : {std::pair{"Bearer http-s3cret", "Bearer wrong"},
                                      std::pair{"Bearer wrong", "Bearer http-s3cret"},
                                      std::pair{"Bearer http-s3cret", "Bearer http-s3cret"}}) {
    HttpResponse twice = HttpGet(port, "/metrics",
                                 {absl::StrCat("Authorization: ", first), absl::StrCat("authorization: ", second)});
    EXPECT_EQ(twice.status, 400) << first << " / " << second;
    EXPECT_TRUE(absl::StrContains(twice.body, "more than one Authorization header")) << twice.body;
  }
}

TEST(DashboardHttp, APathThatCanNameNoJobIsABadRequest) {
  DaemonHarness h(Fake());
  ASSERT_TRUE(h.Start()) << h.MoedLog();
  CommandResult sub = h.Moectl({"submit", h.WriteJob("http", 1, 2)});
  ASSERT_EQ(sub.exit_code, 0) << sub.err;
  const int port = h.metrics_port();
  EXPECT_EQ(HttpGet(port, "/jobs/j-000001").status, 200);
  // Bytes that are not text were echoed back in a UTF-8 body, and an id of any length in full.
  for (const std::string& path :
       {std::string("/jobs/%ff%fe"), std::string("/jobs/j-0%0a1/charts.svg"),
        "/jobs/" + std::string(100, 'a')}) {
    HttpResponse r = HttpGet(port, path);
    EXPECT_EQ(r.status, 400) << path << r.body;
    EXPECT_TRUE(absl::StrContains(r.body, "not a job id")) << path << r.body;
  }
  // A trailing slash names the same page; a deeper path is no page of a job.
  EXPECT_EQ(HttpGet(port, "/jobs/j-000001/").status, 200);
  HttpResponse deeper = HttpGet(port, "/jobs/j-000001/other");
  EXPECT_EQ(deeper.status, 404);
  EXPECT_EQ(deeper.body, "not found: a job's pages are /jobs/ID and /jobs/ID/charts.svg\n");
  HttpResponse missing = HttpGet(port, "/jobs/j-999999");
  EXPECT_EQ(missing.status, 404);
  EXPECT_EQ(missing.body, "no job j-999999 (see /)\n");
}

TEST(DashboardHttp, ANulOrABrokenEscapeInThePathIsABadRequest) {
  DaemonHarness h(Fake());
  ASSERT_TRUE(h.Start()) << h.MoedLog();
  CommandResult sub = h.Moectl({"submit", h.WriteJob("http", 1, 2)});
  ASSERT_EQ(sub.exit_code, 0) << sub.err;
  const int port = h.metrics_port();
  // civetweb's decoding ended the path at %00: /jobs/%00 was the job list, /metrics%00 /metrics.
  for (const char* path :
       {"/jobs/%00", "/jobs/j-000001%00", "/metrics%00", "/jobs/j-000001/charts.svg%00"}) {
    HttpResponse r = HttpGet(port, path);
    EXPECT_EQ(r.status, 400) << path << r.body;
    EXPECT_TRUE(absl::StartsWith(r.body, "bad path: %00 (a NUL byte) at byte ")) << path << r.body;
    EXPECT_TRUE(absl::StrContains(r.body, "/jobs/ID/charts.svg, /metrics and /healthz")) << r.body;
  }
  // A '%' that starts no escape was passed on as it was: "no job %zz".
  for (const char* path : {"/jobs/%zz", "/jobs/%", "/jobs/%4", "/metrics%g0"}) {
    HttpResponse r = HttpGet(port, path);
    EXPECT_EQ(r.status, 400) << path << r.body;
    EXPECT_TRUE(absl::StrContains(r.body, "starts no %XX escape")) << path << r.body;
  }
  EXPECT_EQ(
      HttpGet(port, "/jobs/%zz").body,
      "bad path: the '%' at byte 6 starts no %XX escape (two hex digits; '%' itself is %25)\n");
  // Escapes that decode to text still name the page.
  EXPECT_EQ(HttpGet(port, "/jobs/j-00000%31").status, 200);
  EXPECT_EQ(HttpGet(port, "/%6Detrics").status, 200);
}

TEST(DashboardHttp, OneRequestAConnectionAndTheAnswerArrivesWhole) {
  DaemonHarness h(Fake());
  ASSERT_TRUE(h.Start()) << h.MoedLog();
  CommandResult sub = h.Moectl({"submit", h.WriteJob("http", 1, 2)});
  ASSERT_EQ(sub.exit_code, 0) << sub.err;
  const int port = h.metrics_port();
  // Closing with linger 0 reset the connection with most of a page still in moed's socket, so a
  // client that read late (a slow network) got a cut page and ECONNRESET.
  for (const char* path : {"/", "/jobs/j-000001", "/jobs/j-000001/charts.svg", "/metrics"}) {
    HttpResponse r = HttpGetReadingLate(port, path, 0.5);
    ASSERT_EQ(r.status, 200) << path;
    EXPECT_TRUE(absl::StrContains(r.headers, absl::StrCat("Content-Length: ", r.body.size())))
        << path << " came with " << r.body.size() << " bytes of\n" << r.headers;
  }
  // A client that sent requests ahead and read no answer held its thread for the deadline once
  // per request; now the connection ends after the first answer.
  HttpResponse two = HttpGet(port, "/healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /healthz", {}, 10);
  EXPECT_EQ(two.status, 200);
  EXPECT_TRUE(absl::StrContains(two.headers, "Connection: close")) << two.headers;
  EXPECT_EQ(two.body, "ok\n");
  // An absolute-form target naming this port is served (it was closed unanswered).
  HttpResponse absolute = HttpGet(port, absl::StrCat("http://127.0.0.1:", port, "/healthz"));
  EXPECT_EQ(absolute.status, 200);
  EXPECT_EQ(absolute.body, "ok\n");
}

// What civetweb refuses before moed's handler sees it (an unknown method, a request line past its
// buffer, HTTP/2.0) is answered with what the port serves, not a bare "Bad request".
TEST(DashboardHttp, RequestsCivetwebRefusesSayWhatThePortServes) {
  DaemonHarness h(Fake());
  ASSERT_TRUE(h.Start()) << h.MoedLog();
  const int port = h.metrics_port();
  const std::string long_path = "/jobs/" + std::string(20000, 'a');
  for (const std::string& request :
       {std::string("FOO /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
        "GET " + long_path + " HTTP/1.1\r\nHost: x\r\n\r\n", std::string("GET /metrics HTTP/2.0\r\n\r\n")}) {
    HttpResponse r = HttpRaw(port, request);
    EXPECT_GE(r.status, 400) << request.substr(0, 40);
    EXPECT_TRUE(absl::StrContains(r.body, "serves GET and HEAD of /, /jobs/ID")) << request.substr(0, 40) << "\n"
                                                                               << r.body;
  }
  EXPECT_EQ(HttpGet(port, "/healthz").status, 200);  // and the port still serves
}

// A request line and `count` header lines (Host first, then fillers, then `last` if any), each
// ended by `eol`, and the blank line.
std::string RequestWithHeaders(const std::string& target, int count, const std::string& last,
                               const std::string& eol = "\r\n", const std::string& method = "GET") {
  std::string req = absl::StrCat(method, " ", target, " HTTP/1.1", eol, "Host: x", eol);
  const int fillers = count - 1 - (last.empty() ? 0 : 1);
  for (int i = 0; i < fillers; ++i) absl::StrAppend(&req, "X-Filler-", i, ": ", i, eol);
  if (!last.empty()) absl::StrAppend(&req, last, eol);
  return req + eol;
}

// civetweb keeps the first 64 header lines (MG_MAX_HEADERS) and dropped the rest without a word:
// an Authorization after the 64th was a 401 that blamed the token. Now 64 or more (civetweb
// reports 64 for 65 and more) are a 431 that says so, whatever the path, and 63 are served.
TEST(DashboardHttp, MoreThan64HeadersAreRefusedNotServedWithSomeDropped) {
  HarnessOptions o = WithToken("moe-http-headers-");
  DaemonHarness h(o);
  ASSERT_TRUE(h.Start()) << h.MoedLog();
  const int port = h.metrics_port();
  const std::string auth = "Authorization: Bearer http-s3cret";
  for (const char* eol : {"\r\n", "\n"}) {
    const std::string eol_name = eol[0] == '\r' ? "CRLF" : "LF";
    HttpResponse at_limit = HttpRaw(port, RequestWithHeaders("/metrics", 63, auth, eol));
    EXPECT_EQ(at_limit.status, 200) << eol_name << "\n" << at_limit.headers << at_limit.body;
    for (int count : {64, 65, 66, 200}) {
      for (const char* path : {"/metrics", "/healthz", "/jobs/j-000001", "*"}) {
        HttpResponse r = HttpRaw(port, RequestWithHeaders(path, count, auth, eol), 3);
        EXPECT_EQ(r.status, 431) << count << " headers, " << eol_name << ", " << path << "\n" << r.headers << r.body;
        EXPECT_TRUE(absl::StrContains(r.body, "has 64 or more header lines")) << r.body;
        EXPECT_TRUE(absl::StrContains(r.body, "send at most 63")) << r.body;
      }
    }
    // With the token among the first 64 the request is still refused, not served without the
    // lines past the 64th.
    std::string auth_first = RequestWithHeaders("/metrics", 64, "", eol);
    auth_first.insert(auth_first.find(eol) + std::strlen(eol), auth + eol);
    HttpResponse r = HttpRaw(port, auth_first, 3);
    EXPECT_EQ(r.status, 431) << eol_name << "\n" << r.headers << r.body;
  }
  // A HEAD gets the status line and no body.
  HttpResponse head = HttpRaw(port, RequestWithHeaders("/metrics", 65, auth, "\r\n", "HEAD"), 3);
  EXPECT_EQ(head.status, 431) << head.headers;
  EXPECT_EQ(head.body, "");
  EXPECT_EQ(HttpGet(port, "/metrics", {auth}).status, 200);  // and the port still serves
}

// civetweb takes no request with an asterisk-form target (GET *), or an absolute-form one naming
// another port, to moed's handler, and such a connection was closed unanswered. Now each is
// answered at once, with the pages the port serves.
TEST(DashboardHttp, AsteriskAndOddTargetsAreAnsweredAtOnce) {
  DaemonHarness h(Fake());
  ASSERT_TRUE(h.Start()) << h.MoedLog();
  const int port = h.metrics_port();
  const auto raw = [&](const std::string& request_line) {
    const auto start = std::chrono::steady_clock::now();
    HttpResponse r = HttpRaw(port, request_line + "\r\nHost: x\r\n\r\n", 3);
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    EXPECT_LT(s, 1.0) << request_line << " took " << s << " s";
    return r;
  };
  for (const char* line : {"GET * HTTP/1.1", "GET * HTTP/1.0"}) {
    HttpResponse r = raw(line);
    EXPECT_EQ(r.status, 400) << line << "\n" << r.headers << r.body;
    EXPECT_TRUE(absl::StrContains(r.body, "'*'")) << line << "\n" << r.body;
    EXPECT_TRUE(absl::StrContains(r.body, "/jobs/ID/charts.svg, /metrics and /healthz")) << line << "\n" << r.body;
  }
  HttpResponse head = raw("HEAD * HTTP/1.1");
  EXPECT_EQ(head.status, 400) << head.headers;
  EXPECT_EQ(head.body, "");
  // OPTIONS * asks what the server does: GET and HEAD, as for any other method on any path.
  for (const char* line : {"OPTIONS * HTTP/1.1", "OPTIONS /metrics HTTP/1.1"}) {
    HttpResponse r = raw(line);
    EXPECT_EQ(r.status, 405) << line << "\n" << r.headers << r.body;
    EXPECT_TRUE(absl::StrContains(r.headers, "Allow: GET, HEAD")) << line << "\n" << r.headers;
  }
  // A browser's CORS preflight gets the same 405: civetweb's default answered it 200 with
  // "Access-Control-Allow-Origin: *", before moed (and its token check) saw it.
  {
    HttpResponse r = HttpRaw(port,
                             "OPTIONS /metrics HTTP/1.1\r\nHost: x\r\nOrigin: http://elsewhere.example\r\n"
                             "Access-Control-Request-Method: GET\r\n\r\n",
                             3);
    EXPECT_EQ(r.status, 405) << r.headers << r.body;
    EXPECT_FALSE(absl::StrContains(r.headers, "Access-Control-Allow")) << r.headers;
  }
  // An absolute-form target naming another port (80 when it names none) is not this server's.
  for (const std::string& target : {std::string("http://host/"), std::string("http://host/metrics"),
                                    absl::StrCat("http://127.0.0.1:", port == 1 ? 2 : 1, "/healthz"),
                                    std::string("https://host/healthz")}) {
    HttpResponse r = raw("GET " + target + " HTTP/1.1");
    EXPECT_EQ(r.status, 400) << target << "\n" << r.headers << r.body;
    EXPECT_TRUE(absl::StrContains(r.body, target)) << target << "\n" << r.body;
    EXPECT_TRUE(absl::StrContains(r.body, absl::StrCat("port ", port))) << target << "\n" << r.body;
    EXPECT_TRUE(absl::StrContains(r.body, "/jobs/ID/charts.svg, /metrics and /healthz")) << r.body;
  }
  // Targets civetweb refuses itself, or that name no page, are answered too.
  for (const std::string& line :
       {std::string("GET  HTTP/1.1"), std::string("GET HTTP/1.1"), std::string("GET ?x=1 HTTP/1.1"),
        absl::StrCat("GET http://127.0.0.1:", port, " HTTP/1.1"), std::string("GET http:// HTTP/1.1"),
        std::string("GET /* HTTP/1.1"), std::string("GET *x HTTP/1.1")}) {
    HttpResponse r = raw(line);
    EXPECT_GE(r.status, 400) << "'" << line << "'\n" << r.headers << r.body;
    EXPECT_LT(r.status, 500) << "'" << line << "'\n" << r.headers << r.body;
  }
  EXPECT_EQ(HttpGet(port, "/healthz").status, 200);  // and nothing crashed
  EXPECT_EQ(HttpGet(port, absl::StrCat("http://127.0.0.1:", port, "/healthz")).status, 200);
}

TEST(DashboardHttp, TwentySlowClientsDoNotDelayAScrape) {
  DaemonHarness h(Fake());
  ASSERT_TRUE(h.Start()) << h.MoedLog();
  SlowClients slow(h.metrics_port(), 20);
  ASSERT_EQ(slow.connected(), 20);
  for (const char* path : {"/metrics", "/", "/healthz"}) {
    const auto start = std::chrono::steady_clock::now();
    HttpResponse r = HttpGet(h.metrics_port(), path, {}, 5);
    const double s =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    EXPECT_EQ(r.status, 200) << path;
    EXPECT_LT(s, 1.0) << path << " took " << s << " s with 20 slow clients connected";
  }
}

}  // namespace
}  // namespace moe::testing
