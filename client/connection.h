// How moectl finds and talks to moed: server address and token from flags, environment and
// ~/.config/moe/config.yaml; a stub; and gRPC errors turned into one clear line.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "grpcpp/client_context.h"
#include "grpcpp/support/status.h"
#include "moe/v1/control.grpc.pb.h"

namespace moe::client {

struct ClientConfig {
  std::string server = "127.0.0.1:50051";
  std::string token;  // "" = no authorization header
};

// --server given before the command (main.cc); wins over MOE_SERVER and the config file.
void SetServerOverride(const std::string& server);
// What is wrong with a server address (--server, MOE_SERVER, `server:`), or "": HOST:PORT with a
// port from 1 to 65535, or a gRPC target such as unix:/path or dns:///host:port; a URL
// (http://...) or a host without a port is named as such.
std::string ServerAddressProblem(const std::string& server);

// Order: --server, MOE_SERVER, config `server:`; MOE_TOKEN, config `token_file:`. The config
// file is MOE_CONFIG or ~/.config/moe/config.yaml (absent is fine; unreadable or bad is an error).
absl::StatusOr<ClientConfig> LoadClientConfig();

std::unique_ptr<moe::v1::JobService::Stub> NewJobStub(const ClientConfig& config);
// Whether the channel connects within `seconds`; false at once when moed's port refuses (the
// first try fails), so that "cannot reach moed" comes as fast as a call's own failure.
bool Connect(grpc::Channel& channel, double seconds);
// Adds the token and, when deadline_s > 0, a deadline.
void PrepareContext(grpc::ClientContext& ctx, const ClientConfig& config, double deadline_s);

// "cannot reach moed at ADDR (is it running? set --server or MOE_SERVER)" and the like.
std::string DescribeError(const grpc::Status& status, const ClientConfig& config);

// Prints "moectl: <message>" on stderr; returns 1 (or 2 for usage errors from callers).
int Fail(const std::string& message);
// LoadClientConfig's error: "moectl: <message>" on stderr; returns 2, bad input as a bad flag is
// (the config file, MOE_CONFIG, MOE_SERVER, MOE_TOKEN or the token file is wrong, not moed).
int FailConfig(const absl::Status& status);

// fflush(stdout), remembering why the first failed write failed (stdio forgets it: a failed
// flush discards the buffer and only the error flag stays). False on a failure.
bool FlushStdout();
// "" while everything written to stdout went out; else why not ("No space left on device", or
// "a write failed" when stdio's own flush failed unseen).
std::string StdoutError();
// Whether stdout failed because its reader went away (`moectl logs -f | head -1`: a closed pipe;
// moectl ignores SIGPIPE): not a failure of the command, so moectl stops quietly.
bool StdoutReaderGone();
// Forgets a failure already reported (StdoutError is "" again).
void ClearStdoutError();

// One GetJob call (10 s deadline): the job, or an error whose status is in *status.
absl::StatusOr<moe::v1::Job> GetJob(moe::v1::JobService::Stub& stub, const ClientConfig& config,
                                    const std::string& id, grpc::Status* status);

std::string StateName(moe::v1::JobState state);
std::string FormatDuration(double seconds);  // "1h02m", "3m05s", "12s"
// Seconds left, or a negative number when unknown.
double EstimateSecondsLeft(const moe::v1::Job& job);

}  // namespace moe::client
