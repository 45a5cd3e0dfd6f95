// The model of MODEL.md on GPUs: the CUDA twin of Model (model/cpu/model.h) behind the same
// TrainModel seam, and like it a block loop that calls attention and the MoE layer
// (moe_layer.h). fp32 master weights, gradients and AdamW moments live on the device; in bf16
// mode the matrix products read bf16 operands (a bf16 weight copy refreshed by every AdamW
// step) with fp32 accumulation, while the router, norms, softmax, attention and loss stay fp32.
// Several ranks (bf16 only): one GPU per rank, experts split E / W per GPU; each MoE layer's
// rows go to their experts' GPUs and back (token_dispatcher.h), and the replicated gradients
// are summed in per-block buckets that overlap the backward (grad_reducer.h).
#pragma once

#include <memory>

#include "absl/status/statusor.h"
#include "worker/model/model_config.h"
#include "worker/model/train_model.h"
#include "worker/parallel/comm.h"

namespace moe {

// The CUDA model, or why it cannot run here (no CUDA in this build, no GPU, fp32 on several
// GPUs, a shape the kernels do not take). Several ranks: collective (sets up NCCL).
absl::StatusOr<std::unique_ptr<TrainModel>> MakeCudaModel(const ModelConfig& cfg, Communicator* comm,
                                                          bool bf16);

// Bytes of device memory the CUDA model holds now (0 for any other model).
int64_t CudaModelDeviceBytes(const TrainModel& model);

}  // namespace moe
