#include "common/bearer_token.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace moe {

std::string BearerTokenProblem(std::string_view token) {
  if (token.size() > kMaxBearerTokenBytes) {
    return absl::StrCat("is ", token.size(), " bytes, more than the ", kMaxBearerTokenBytes,
                        " a request header can carry");
  }
  for (size_t i = 0; i < token.size(); ++i) {
    const auto c = static_cast<unsigned char>(token[i]);
    if (c < 0x21 || c > 0x7e) {
      return absl::StrFormat(
          "holds the byte 0x%02X at offset %d; a token is printable ASCII without spaces "
          "(letters, digits, punctuation), e.g. from: openssl rand -hex 32",
          c, i);
    }
  }
  return "";
}

}  // namespace moe
