// MODEL.md's capacity rule, in one home: the worker's routing (worker/model/moe_bookkeeping.h)
// and the job file's advice (common/job_spec_advice.cc) both use it.
#pragma once

#include <cstdint>

namespace moe {

// ceil(c * n * k / e) kept assignments per expert, first come by token order; c <= 0 means
// dropless (0 = unlimited). At most n * k, the assignments there are.
int64_t ExpertCapacity(double capacity_factor, int64_t n, int k, int e);

}  // namespace moe
