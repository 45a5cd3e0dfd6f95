// moectl's configuration, connection and error wording.
#include "client/connection.h"

#include <poll.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <optional>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/bearer_token.h"
#include "common/files.h"
#include "common/job_spec.h"
#include "common/moed_channel.h"
#include "yaml-cpp/yaml.h"

namespace moe::client {
namespace {

std::string& ServerOverride() {
  static std::string* value = new std::string();
  return *value;
}

std::string ExpandHome(const std::string& path) {
  if (path.rfind("~/", 0) == 0) {
    const char* home = std::getenv("HOME");
    return std::string(home ? home : "") + path.substr(1);
  }
  return path;
}

}  // namespace

void SetServerOverride(const std::string& server) { ServerOverride() = server; }

std::string ServerAddressProblem(const std::string& server) {
  const absl::string_view s = server;
  if (absl::StartsWithIgnoreCase(s, "http://") || absl::StartsWithIgnoreCase(s, "https://")) {
    return absl::StrCat("'", absl::CHexEscape(server),
                        "' is a URL; moed's gRPC address is HOST:PORT, without http:// (the dashboard's "
                        "HTTP port is another one)");
  }
  // gRPC's own target names (unix:/path, dns:///host:port, ipv4:..., ipv6:...) pass as they are.
  for (absl::string_view scheme : {"unix:", "unix-abstract:", "dns:", "ipv4:", "ipv6:"}) {
    if (absl::StartsWith(s, scheme)) return "";
  }
  const size_t colon = s.rfind(':');
  if (colon == absl::string_view::npos || colon == 0) {
    return absl::StrCat("'", absl::CHexEscape(server), "' has ", colon == 0 ? "no host" : "no port",
                        "; give HOST:PORT, e.g. 127.0.0.1:50051");
  }
  int port = 0;
  if (!absl::SimpleAtoi(s.substr(colon + 1), &port) || port < 1 || port > 65535) {
    return absl::StrCat("'", absl::CHexEscape(server), "': the port '", absl::CHexEscape(s.substr(colon + 1)),
                        "' is not a number from 1 to 65535; give HOST:PORT, e.g. 127.0.0.1:50051");
  }
  return "";
}

absl::StatusOr<ClientConfig> LoadClientConfig() {
  ClientConfig c;
  std::string config_path;
  bool explicit_config = false;
  if (const char* env = std::getenv("MOE_CONFIG"); env != nullptr && *env != '\0') {
    config_path = env;
    explicit_config = true;
  } else if (const char* home = std::getenv("HOME")) {
    config_path = std::string(home) + "/.config/moe/config.yaml";
  }
  std::string token_file;
  if (!config_path.empty()) {
    std::ifstream probe(config_path);
    std::error_code ec;
    if (std::filesystem::is_directory(config_path, ec)) {  // /dev/null is fine: an empty config
      return absl::InvalidArgumentError(
          absl::StrCat("config ", config_path, " is a directory (expected a YAML file with `server: HOST:PORT` "
                       "and `token_file: PATH`)"));
    }
    if (probe.good()) {
      constexpr char kExpected[] = " (expected `server: HOST:PORT` and `token_file: PATH`)";
      absl::StatusOr<std::string> text = ReadFile(config_path);
      if (!text.ok()) {
        return absl::Status(text.status().code(), absl::StrCat("config ", config_path, ": ", text.status().message()));
      }
      // As a job file's reader does: yaml-cpp read a file of other bytes as empty, and a NUL byte as
      // an escape it did not know.
      if (std::optional<NonTextByte> bad = FindNonTextByte(*text)) {
        return absl::InvalidArgumentError(absl::StrCat("config ", config_path, ":", bad->line, ":", bad->column,
                                                       ": is not a UTF-8 text file: found ", bad->what,
                                                       "; a config file is YAML text", kExpected));
      }
      try {
        YAML::Node root = YAML::Load(*text);
        if (!root.IsMap() && !root.IsNull()) throw YAML::Exception(root.Mark(), "not a mapping of keys");
        // A key moectl does not know is a typo it would otherwise follow silently (to the default
        // server): refused, with the keys it knows.
        if (root.IsMap()) {
          for (const auto& kv : root) {
            if (!kv.first.IsScalar()) {
              throw YAML::Exception(kv.first.Mark(), "keys must be plain names, got " + DescribeYamlValue(kv.first));
            }
            const std::string key = kv.first.Scalar();
            if (key != "server" && key != "token_file") {
              throw YAML::Exception(kv.first.Mark(), "unknown key '" + key + "'");
            }
          }
        }
        // A string each: `server: [a, b]` was yaml-cpp's "bad conversion".
        auto text_of = [](const YAML::Node& value, const char* key, const char* what) {
          if (!value.IsScalar()) {
            throw YAML::Exception(value.Mark(), absl::StrCat(key, ": must be a string ", what, ", got ",
                                                             DescribeYamlValue(value)));
          }
          return value.Scalar();
        };
        if (root["server"]) c.server = text_of(root["server"], "server", "HOST:PORT");
        if (root["token_file"]) token_file = ExpandHome(text_of(root["token_file"], "token_file", "PATH"));
      } catch (const YAML::Exception& e) {
        const std::string at =
            e.mark.is_null() ? "" : absl::StrCat(":", e.mark.line + 1, ":", e.mark.column + 1);
        return absl::InvalidArgumentError(absl::StrCat("config ", config_path, at, ": ", e.msg, kExpected));
      }
    } else if (explicit_config) {
      const int err = access(config_path.c_str(), R_OK) == 0 ? 0 : errno;
      return absl::NotFoundError(absl::StrCat(
          "MOE_CONFIG names ", config_path, ", which cannot be read",
          err == 0 ? "" : absl::StrCat(" (", std::strerror(err), ")"),
          "; point MOE_CONFIG at a readable YAML file with `server: HOST:PORT` and `token_file: PATH` "
          "(/dev/null for none), or unset it to read ~/.config/moe/config.yaml"));
    }
  }
  if (const char* env = std::getenv("MOE_SERVER"); env != nullptr && *env != '\0') c.server = env;
  if (!ServerOverride().empty()) c.server = ServerOverride();
  if (std::string why = ServerAddressProblem(c.server); !why.empty()) {
    const char* from = !ServerOverride().empty()                                  ? "--server"
                       : std::getenv("MOE_SERVER") != nullptr && *std::getenv("MOE_SERVER") != '\0' ? "MOE_SERVER"
                                                                                    : "`server:` in the config";
    return absl::InvalidArgumentError(absl::StrCat(from, ": ", why));
  }
  if (const char* env = std::getenv("MOE_TOKEN"); env != nullptr && *env != '\0') {
    c.token = env;
  } else if (!token_file.empty()) {
    absl::StatusOr<std::string> text = ReadFile(token_file);
    if (!text.ok()) {
      return absl::NotFoundError(absl::StrCat("token_file ", token_file, " (from ", config_path,
                                              ") cannot be read: ", text.status().message(),
                                              "; fix `token_file:` there, or set MOE_TOKEN"));
    }
    std::string first = text->substr(0, text->find('\n'));
    c.token = std::string(absl::StripAsciiWhitespace(first));
  }
  if (std::string why = BearerTokenProblem(c.token); !why.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        std::getenv("MOE_TOKEN") != nullptr && *std::getenv("MOE_TOKEN") != '\0' ? "MOE_TOKEN"
                                                                                : "the token in " + token_file,
        " ", why));
  }
  return c;
}

std::unique_ptr<moe::v1::JobService::Stub> NewJobStub(const ClientConfig& config) {
  // `logs -f` reconnects after a moed restart: the channel's reconnect backoff is short.
  return moe::v1::JobService::NewStub(NewMoedChannel(config.server));
}

bool Connect(grpc::Channel& channel, double seconds) {
  const auto deadline = std::chrono::system_clock::now() + std::chrono::milliseconds(static_cast<int64_t>(seconds * 1000));
  grpc_connectivity_state st = channel.GetState(/*try_to_connect=*/true);
  while (st != GRPC_CHANNEL_READY && st != GRPC_CHANNEL_TRANSIENT_FAILURE && st != GRPC_CHANNEL_SHUTDOWN) {
    if (!channel.WaitForStateChange(st, deadline)) return false;
    st = channel.GetState(false);
  }
  return st == GRPC_CHANNEL_READY;
}

void PrepareContext(grpc::ClientContext& ctx, const ClientConfig& config, double deadline_s) {
  if (!config.token.empty()) ctx.AddMetadata("authorization", "Bearer " + config.token);
  if (deadline_s > 0) {
    ctx.set_deadline(std::chrono::system_clock::now() +
                     std::chrono::milliseconds(static_cast<int64_t>(deadline_s * 1000)));
  }
}

std::string DescribeError(const grpc::Status& s, const ClientConfig& config) {
  switch (s.error_code()) {
    case grpc::StatusCode::UNAVAILABLE:
      // Something answered, but not in HTTP/2: no gRPC server (e.g. moed's --metrics-listen HTTP
      // port, which MOE_SERVER has been given by mistake); "is it running?" misled.
      if (absl::StrContains(s.error_message(), "http1.x server") ||
          absl::StrContains(s.error_message(), "Failed parsing HTTP/2") ||
          absl::StrContains(s.error_message(), "Expected SETTINGS frame")) {
        return absl::StrCat(config.server, " answers, but not as moed's gRPC port (it does not speak HTTP/2; "
                            "perhaps moed's --metrics-listen HTTP port): set --server or MOE_SERVER to moed's "
                            "--listen address (default 127.0.0.1:50051)");
      }
      return absl::StrCat("cannot reach moed at ", config.server,
                          " (is it running? set --server or MOE_SERVER)");
    case grpc::StatusCode::CANCELLED:
      return absl::StrCat("moed at ", config.server,
                          " ended the call (was it stopping or restarting?); run the command again");
    case grpc::StatusCode::DEADLINE_EXCEEDED:
      return absl::StrCat("moed at ", config.server, " did not answer in time");
    case grpc::StatusCode::UNAUTHENTICATED:
      return absl::StrCat("moed at ", config.server, " refused the request: ", s.error_message(),
                          config.token.empty() ? "" : " (check MOE_TOKEN / token_file)");
    case grpc::StatusCode::UNIMPLEMENTED:
      if (s.error_message().empty()) {
        return absl::StrCat("the server at ", config.server, " is not a moed");
      }
      return s.error_message();
    default:
      return s.error_message().empty() ? absl::StrCat("moed error (code ", s.error_code(), ")")
                                       : s.error_message();
  }
}

int Fail(const std::string& message) {
  std::fprintf(stderr, "moectl: %s\n", message.c_str());
  return 1;
}

int FailConfig(const absl::Status& status) {
  Fail(std::string(status.message()));
  return 2;
}

namespace {
int stdout_errno = 0;  // the first failed flush's errno
}  // namespace

bool FlushStdout() {
  errno = 0;
  if (std::fflush(stdout) == 0) return true;
  if (stdout_errno == 0) stdout_errno = errno != 0 ? errno : EIO;
  return false;
}

std::string StdoutError() {
  FlushStdout();
  if (stdout_errno != 0) return std::strerror(stdout_errno);
  return std::ferror(stdout) ? "a write failed" : "";
}

bool StdoutReaderGone() {
  if (StdoutError().empty()) return false;
  if (stdout_errno == EPIPE) return true;
  // A failure in one of stdio's own flushes left no errno: a pipe or socket whose reader closed
  // polls as an error on the writing end.
  struct stat st;
  if (fstat(STDOUT_FILENO, &st) != 0 || !(S_ISFIFO(st.st_mode) || S_ISSOCK(st.st_mode))) return false;
  struct pollfd p{STDOUT_FILENO, POLLOUT, 0};
  return poll(&p, 1, 0) == 1 && (p.revents & POLLERR) != 0;
}

void ClearStdoutError() {
  stdout_errno = 0;
  std::clearerr(stdout);
}

std::string StateName(moe::v1::JobState state) {
  std::string name = moe::v1::JobState_Name(state);
  constexpr char kPrefix[] = "JOB_STATE_";
  if (name.rfind(kPrefix, 0) == 0) name = name.substr(sizeof(kPrefix) - 1);
  return name.empty() ? "UNKNOWN" : name;
}

std::string FormatDuration(double seconds) {
  if (seconds < 0) return "-";
  int64_t s = static_cast<int64_t>(seconds + 0.5);
  if (s >= 3600) return absl::StrFormat("%dh%02dm", s / 3600, (s % 3600) / 60);
  if (s >= 60) return absl::StrFormat("%dm%02ds", s / 60, s % 60);
  return absl::StrFormat("%ds", s);
}

double EstimateSecondsLeft(const moe::v1::Job& job) {
  const int64_t total = job.spec().train().steps();
  const int64_t step = job.latest().step();
  if (!job.has_latest() || total <= 0 || step <= 0) return -1;
  if (step >= total) return 0;
  double per_step_s = job.latest().step_ms() / 1000.0;
  if (per_step_s <= 0 && job.started_unix_ms() > 0 && job.latest().unix_ms() > job.started_unix_ms()) {
    per_step_s = (job.latest().unix_ms() - job.started_unix_ms()) / 1000.0 / step;
  }
  return per_step_s > 0 ? per_step_s * (total - step) : -1;
}

absl::StatusOr<moe::v1::Job> GetJob(moe::v1::JobService::Stub& stub, const ClientConfig& config,
                                    const std::string& id, grpc::Status* status) {
  grpc::ClientContext ctx;
  PrepareContext(ctx, config, 10);
  moe::v1::GetJobRequest req;
  req.set_id(id);
  moe::v1::Job job;
  *status = stub.GetJob(&ctx, req, &job);
  if (!status->ok()) return absl::UnknownError(status->error_message());
  return job;
}

}  // namespace moe::client
