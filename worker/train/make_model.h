// The one place a backend is chosen: the job's resources.device picks the CPU Model or the
// CUDA model behind the TrainModel seam.
#pragma once

#include <memory>

#include "absl/status/statusor.h"
#include "moe/v1/job.pb.h"
#include "worker/model/model_config.h"
#include "worker/model/train_model.h"
#include "worker/parallel/comm.h"

namespace moe {

// DEVICE_CUDA gives the CUDA model (an error where this build has no CUDA or the machine no
// GPU), anything else the CPU model.
absl::StatusOr<std::unique_ptr<TrainModel>> MakeTrainModel(const moe::v1::JobSpec& spec,
                                                           const ModelConfig& cfg,
                                                           Communicator* comm);

}  // namespace moe
