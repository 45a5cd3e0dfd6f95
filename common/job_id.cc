// CheckJobId: the length and byte checks, with a message that says what ids look like.
#include "common/job_id.h"

#include <algorithm>

#include "absl/strings/str_cat.h"

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

}  // namespace moe
