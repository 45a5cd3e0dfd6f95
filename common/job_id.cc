// CheckJobId: the length and byte checks, with a message that says what ids look like.
#include "common/job_id.h"

#include <algorithm>
#include <cctype>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace moe {

// Job ids are j-NNNNNN. One far longer echoed into a NOT_FOUND message could pass gRPC's metadata
// limit (the client would read "received initial metadata size exceeds limit" instead), and
// control characters or bytes that are not text have no place in an answer.
absl::Status CheckJobId(const std::string& id) {
  constexpr size_t kMaxIdBytes = 64;
  if (id.empty()) {
    return absl::InvalidArgumentError("id: the job id is empty (moectl list shows the jobs)");
  }
  const bool odd = std::any_of(id.begin(), id.end(), [](char c) {
    return static_cast<unsigned char>(c) < 0x20 || static_cast<unsigned char>(c) >= 0x7f;
  });
  if (id.size() > kMaxIdBytes || odd) {
    return absl::InvalidArgumentError(
        absl::StrCat("id: not a job id (", id.size(), " bytes",
                     odd ? ", with control characters or non-ASCII bytes" : "",
                     "); job ids look like j-000001 (moectl list shows the jobs)"));
  }
  return absl::OkStatus();
}

// Request ids go into the store and into messages: a short plain name keeps both simple (a UUID,
// a CI build's id, a hash).
absl::Status CheckRequestId(const std::string& request_id, const std::string& where) {
  constexpr size_t kMaxBytes = 128;
  const auto bad = std::find_if(request_id.begin(), request_id.end(), [](char c) {
    return !std::isalnum(static_cast<unsigned char>(c)) && c != '.' && c != '_' && c != ':' && c != '-';
  });
  if (request_id.empty() || request_id.size() > kMaxBytes || bad != request_id.end()) {
    const std::string why =
        request_id.empty() ? "it is empty"
        : request_id.size() > kMaxBytes
            ? absl::StrCat("it is ", request_id.size(), " bytes long")
            : absl::StrCat("byte ", bad - request_id.begin() + 1, " (",
                           std::isprint(static_cast<unsigned char>(*bad))
                               ? absl::StrCat("'", std::string(1, *bad), "'")
                               : absl::StrFormat("0x%02x", static_cast<unsigned char>(*bad)),
                           ") is not one of them");
    return absl::InvalidArgumentError(absl::StrCat(
        where, ": a request id is 1 to 128 of the characters A-Z a-z 0-9 . _ : - (a UUID or a build's id), but ", why));
  }
  return absl::OkStatus();
}

}  // namespace moe
