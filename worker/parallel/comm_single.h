// A Communicator for one process alone (world size 1) with no MPI underneath: exchanges are
// copies and reductions are no-ops. Used for sampling and as the one-rank oracle in the
// multi-rank equivalence tests (it can run inside any rank of an MPI job).
#pragma once

#include <memory>

#include "worker/parallel/comm.h"

namespace moe {

std::unique_ptr<Communicator> CreateSingleProcessCommunicator();

}  // namespace moe
