// Bearer-token auth for moed's RPCs: with --token-file every call must carry
// `authorization: Bearer <token>`; without it the check passes everything.
#pragma once

#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "grpcpp/server_context.h"

namespace moe::daemon {

// Reads a token file: the first line, surrounding whitespace removed; an empty token is an error.
absl::StatusOr<std::string> LoadTokenFile(const std::string& path);

class TokenAuth {
 public:
  explicit TokenAuth(std::string token) : token_(std::move(token)) {}
  bool enabled() const { return !token_.empty(); }
  const std::string& token() const { return token_; }
  // Unauthenticated, naming what is missing, unless the call carries the token.
  absl::Status Check(const grpc::ServerContextBase& context) const;

 private:
  std::string token_;
};

}  // namespace moe::daemon
