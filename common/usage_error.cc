#include "common/usage_error.h"

#include <utility>

#include "absl/strings/cord.h"

namespace moe {
namespace {

constexpr char kUsagePayload[] = "moe.worker/usage";

}  // namespace

absl::Status UsageError(absl::Status status) {
  status.SetPayload(kUsagePayload, absl::Cord());
  return status;
}

bool IsUsageError(const absl::Status& status) { return status.GetPayload(kUsagePayload).has_value(); }

}  // namespace moe
