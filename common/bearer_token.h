// The bearer token moed and its clients share (moed --token-file; MOE_TOKEN or token_file for
// moectl): what gRPC can carry in an 'authorization' header.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

namespace moe {

// gRPC refuses a header larger than its metadata limit (8 KiB by default) with an error that
// names no header; a token this long is a mistake anyway.
inline constexpr size_t kMaxBearerTokenBytes = 4096;

// Why `token` cannot be sent as 'Bearer TOKEN' (a byte that is not printable ASCII: gRPC aborts
// the process on such a header; or more than kMaxBearerTokenBytes), or "" when it can.
std::string BearerTokenProblem(std::string_view token);

}  // namespace moe
