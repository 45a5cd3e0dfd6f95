// What a job id may be, checked where one comes in (moectl, gRPC, the dashboard's /jobs/ID) before any
// lookup, so no answer echoes an id that would overflow gRPC's metadata or is not text.
#pragma once

#include <string>

#include "absl/status/status.h"

namespace moe {

// INVALID_ARGUMENT unless id could be a job id (j-000001): not empty, at most 64 bytes,
// printable ASCII.
absl::Status CheckJobId(const std::string& id);

}  // namespace moe
