#include "worker/train/make_model.h"

#include "worker/model/cuda/cuda_model.h"
#include "worker/model/cpu/model.h"

namespace moe {

absl::StatusOr<std::unique_ptr<TrainModel>> MakeTrainModel(const moe::v1::JobSpec& spec,
                                                           const ModelConfig& cfg,
                                                           Communicator* comm) {
  if (spec.resources().device() == moe::v1::DEVICE_CUDA) {
    return MakeCudaModel(cfg, comm, spec.train().precision() == moe::v1::PRECISION_BF16);
  }
  return std::unique_ptr<TrainModel>(std::make_unique<Model>(cfg, comm));
}

}  // namespace moe
