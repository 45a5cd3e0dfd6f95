// What a job id may be, checked where one comes in (moectl, gRPC, the dashboard's /jobs/ID) before any
// lookup, so no answer echoes an id that would overflow gRPC's metadata or is not text.
#pragma once

#include <string>

#include "absl/status/status.h"

namespace moe {

// INVALID_ARGUMENT unless id could be a job id (j-000001): not empty, at most 64 bytes,
// printable ASCII.
absl::Status CheckJobId(const std::string& id);

// INVALID_ARGUMENT unless request_id (SubmitJobRequest's, moectl submit --request-id) is 1 to 128
// of the characters A-Z a-z 0-9 . _ : -; `where` names it in the message ("request_id").
absl::Status CheckRequestId(const std::string& request_id, const std::string& where);

}  // namespace moe
