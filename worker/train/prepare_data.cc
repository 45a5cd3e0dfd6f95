#include "worker/train/prepare_data.h"

#include <utility>

#include "worker/train/signals.h"

namespace moe {

absl::StatusOr<Dataset> PrepareData(const moe::v1::DataSpec& spec, Communicator* comm,
                                    std::function<void(const std::string&)> on_log,
                                    std::function<bool()> stop_requested) {
  if (!stop_requested) stop_requested = [] { return StopRequested(); };
  const bool logs = comm->rank() == 0 && on_log != nullptr;
  DataLoadOptions opts;
  opts.stop_requested = stop_requested;
  if (logs) opts.on_log = on_log;
  absl::StatusOr<Dataset> data = LoadDataset(spec, opts);
  // A failure that is no stop (the text missing on this node, say) is returned at once, without
  // the agreement: the other ranks may tokenize for longer than the communication timeout, and
  // the caller prints it and ends the job (Communicator::Abort).
  if (!data.ok() && !absl::IsCancelled(data.status()) && !stop_requested()) return data;
  // Every rank gets the signal (moed and Slurm send it to each), but not at the same moment: one
  // that finished loading first still stops with the others instead of waiting for them in the
  // first step's collectives.
  double stop = absl::IsCancelled(data.status()) || stop_requested() ? 1.0 : 0.0;
  if (comm->world_size() > 1) comm->AllReduceSum(&stop, 1);
  if (stop > 0) {
    if (logs) on_log(kStoppedWhilePreparingData);
    return absl::CancelledError(kStoppedWhilePreparingData);
  }
  return data;
}

}  // namespace moe
