// Token-by-token inference with a KV cache on one GPU: the weights copied to the device once
// (fp32), each new token one row through the blocks (cuBLAS gemv for every product), its keys
// and values appended to a per-layer cache, attention of the one query over the cache; the
// router's logits come to the host, where the experts are picked as on the CPU (softmax or
// sigmoid of logits / tau, top-k of p + bias, renormalised), and the picked experts run on the
// device. The same math as Model::Forward (tests/cuda_decoder_test.cc checks it).
#pragma once

#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "worker/model/model_config.h"
#include "worker/model/param_layout.h"
#include "worker/model/token_decoder.h"

namespace moe {

// params: the weights in layout's flat order (one rank's: layout must be a one-rank layout);
// router_biases: L x E (loss-free balancing), empty when none. Unavailable when this build has
// no CUDA or the machine no GPU.
absl::StatusOr<std::unique_ptr<TokenDecoder>> MakeCudaDecoder(const ModelConfig& cfg, const ParamLayout& layout,
                                                              const std::vector<float>& params,
                                                              const std::vector<float>& router_biases);

}  // namespace moe
