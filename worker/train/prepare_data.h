// The job's data for training, with a stop (SIGTERM/SIGINT) honoured while it is read and
// tokenized: a long tokenization no longer holds a cancel until moed's grace runs out.
#pragma once

#include <functional>
#include <string>

#include "absl/status/statusor.h"
#include "moe/v1/job.pb.h"
#include "worker/data/dataset.h"
#include "worker/parallel/comm.h"

namespace moe {

// What rank 0 logs when a stop ends the preparation (the worker then exits as stopped, 143).
inline constexpr char kStoppedWhilePreparingData[] =
    "stop requested while preparing the data: exiting, nothing to checkpoint";

// Loads spec on this rank (LoadDataset: each rank loads on its own, from the token cache or
// tokenizing into it), polling stop_requested (default: the signals, StopRequested()) between
// chunks; rank 0 passes on_log the preparation's lines (start, progress every ~10 s, end).
// A load that failed for another reason than a stop (and with no stop requested) returns its
// error at once, joining no collective: the caller must then end the job (print the error,
// Communicator::Abort), as the other ranks are left waiting in the agreement.
// Otherwise the ranks agree (a collective): when any rank saw a stop, every rank returns
// Cancelled and rank 0 has logged kStoppedWhilePreparingData. Otherwise this rank's own result.
absl::StatusOr<Dataset> PrepareData(const moe::v1::DataSpec& spec, Communicator* comm,
                                    std::function<void(const std::string&)> on_log,
                                    std::function<bool()> stop_requested = nullptr);

}  // namespace moe
