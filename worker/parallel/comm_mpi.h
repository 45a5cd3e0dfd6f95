// The MPI Communicator for CPU tensors: point-to-point all-to-alls and non-blocking
// collectives, each polled against a deadline so that a silent peer aborts the job with a
// message naming it instead of hanging it.
#pragma once

#include <memory>

#include "worker/parallel/comm.h"

namespace moe {

// Initialises MPI if nobody has (MPI_Init_thread, FUNNELED: only the thread that made the
// communicator calls it) and finalises it in the destructor if it did. Works without
// mpirun as a single rank. Communicates on a duplicate of MPI_COMM_WORLD with
// MPI_ERRORS_RETURN, so its messages never mix with other code's and every MPI error is
// reported (rank, host, file:line, MPI's text) before MPI_Abort.
std::unique_ptr<Communicator> CreateMpiCommunicator(const CommOptions& opts);

}  // namespace moe
