// Bearer-token check with a constant-time comparison.
#include "daemon/auth.h"

#include <sys/stat.h>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/string_view.h"
#include "common/bearer_token.h"
#include "common/files.h"

namespace moe::daemon {
namespace {

bool ConstantTimeEquals(absl::string_view a, absl::string_view b) {
  unsigned char diff = a.size() == b.size() ? 0 : 1;
  for (size_t i = 0; i < a.size(); ++i) {
    diff |= static_cast<unsigned char>(a[i] ^ (i < b.size() ? b[i] : 0));
  }
  return diff == 0;
}

}  // namespace

absl::StatusOr<std::string> LoadTokenFile(const std::string& path) {
  struct stat st;
  const bool exists = stat(path.c_str(), &st) == 0;  // absent: ReadFile below says so
  if (exists && !S_ISREG(st.st_mode)) {
    return absl::FailedPreconditionError(absl::StrCat(
        "token file ", path, " is ", S_ISDIR(st.st_mode) ? "a directory" : "not a regular file",
        "; give the file that holds the token on its first line"));
  }
  if (exists && (st.st_mode & 077) != 0) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "token file %s is readable by others (mode %04o): anyone on this machine could act as "
        "any user of moed; run chmod 600 %s", path, st.st_mode & 07777, path));
  }
  absl::StatusOr<std::string> text = ReadFile(path);
  if (!text.ok()) {
    return absl::FailedPreconditionError(
        absl::StrCat("cannot read token file ", path, ": ", text.status().message()));
  }
  absl::string_view first = *text;
  first = first.substr(0, first.find('\n'));
  std::string token(absl::StripAsciiWhitespace(first));
  if (token.empty()) {
    return absl::FailedPreconditionError(
        absl::StrCat("token file ", path, " is empty (write the token on its first line)"));
  }
  if (std::string why = BearerTokenProblem(token); !why.empty()) {
    return absl::FailedPreconditionError(absl::StrCat("the token in ", path, " ", why));
  }
  return token;
}

absl::Status TokenAuth::Check(const grpc::ServerContextBase& context) const {
  if (!enabled()) return absl::OkStatus();
  const auto& md = context.client_metadata();
  auto it = md.find("authorization");
  if (it == md.end()) {
    return absl::UnauthenticatedError(
        "missing token: moed requires 'authorization: Bearer <token>' (set MOE_TOKEN or "
        "token_file in the moectl config)");
  }
  absl::string_view value(it->second.data(), it->second.size());
  // The scheme's name is case-insensitive and one or more spaces follow it (RFC 7235): "bearer  x"
  // is "Bearer x".
  constexpr absl::string_view kBearer = "Bearer ";
  if (!absl::EqualsIgnoreCase(value.substr(0, kBearer.size()), kBearer) ||
      !ConstantTimeEquals(absl::StripLeadingAsciiWhitespace(value.substr(kBearer.size())), token_)) {
    return absl::UnauthenticatedError("invalid token: the bearer token does not match moed's");
  }
  return absl::OkStatus();
}

}  // namespace moe::daemon
