// An error that is the caller's input (a flag's value, an output path, a checkpoint argument
// that names none), as opposed to a failure while running: moe-worker's --score, --sample and
// --export exit 2 for the first and 1 for the second. The mark is a payload on the status, so
// it survives being passed up unchanged.
#pragma once

#include "absl/status/status.h"

namespace moe {

// `status` marked as the caller's input.
absl::Status UsageError(absl::Status status);
// Whether `status` carries that mark.
bool IsUsageError(const absl::Status& status);

}  // namespace moe
