// The MoE layer's ops on the GPU. This header only includes the headers that own them, so that
// "kernels/cuda/moe.h" keeps giving all of them:
//   router.h         router softmax/top-k, statistics, aux gradient, backward
//   routing_plan.h   the routing plan: a stable counting sort by expert, capacity drops
//   permute.h        permute / unpermute, forward and backward
//   grouped_gemm.h   grouped products over all local experts, group sizes read on the device
//   expert_layout.h  the experts' row layouts of the fast path; RowBlocks / CopyRowBlocks
//   grouped_blas.h   the fast path's products: bf16 through cuBLAS, one call per product
//   experts.h        ExpertsForward / Backward (simple, fp32) and ...Bf16 (fast path)
// The fast path needs the per-expert counts on the host (the one device-to-host count exchange
// per layer); the simple kernels stay as its test oracle. CudaModel uses the fast path in bf16
// and the simple kernels in fp32.
#pragma once

#include "kernels/cuda/expert_layout.h"
#include "kernels/cuda/experts.h"
#include "kernels/cuda/grouped_blas.h"
#include "kernels/cuda/grouped_gemm.h"
#include "kernels/cuda/permute.h"
#include "kernels/cuda/router.h"
#include "kernels/cuda/routing_plan.h"
