// What the parts of the CUDA model share on one GPU: its stream, cuBLAS(Lt), the precision,
// the weights with their bf16 copy, and the two bf16 scratch buffers of the operand casts;
// and the one linear product both the model and its MoE layers use (fp32, or bf16 operands
// with fp32 accumulation).
#pragma once

#ifdef MOE_WITH_CUDA

#include <cstdint>

#include "kernels/cuda/common.h"
#include "kernels/cuda/matmul.h"

namespace moe {

class DeviceCommunicator;

struct CudaContext {
  cudaStream_t stream = nullptr;
  cuda::Blas* blas = nullptr;
  bool bf16 = false;           // bf16 operands for the products (else fp32 throughout)
  const float* params = nullptr;      // (total) fp32 master weights
  const cuda::bf16* params16 = nullptr;  // (total) their bf16 copy (bf16 mode)
  // bf16 casts of product operands (bf16 mode): s16a the forward's inputs and the backward's
  // output gradients, n * max(D, C3); s16b the backward's inputs (every product's input is D
  // wide), n * D, s16b_size elements (LinearBackward refuses a wider cast).
  cuda::bf16 *s16a = nullptr, *s16b = nullptr;
  int64_t s16b_size = 0;

  // train.master_weights bf16 on one GPU (DeviceGrads): the gradients' handles (grads_total
  // floats, an unmapped range) and the bf16 gradients behind them; else null.
  const float* grads = nullptr;
  int64_t grads_total = 0;
  cuda::bf16* grads16 = nullptr;

  // The NCCL communicator when the job has several GPUs, else null. Waits on the host for work
  // that may sit behind a collective go through it: a peer that stopped ends the job after the
  // job's --comm-timeout (comm_nccl.h) instead of blocking this rank forever.
  DeviceCommunicator* dcomm = nullptr;

  // Blocks until `stream` (the context's own by default) is done; `what` names the wait.
  void Sync(const char* what) const { SyncStream(stream, what); }
  void SyncStream(cudaStream_t s, const char* what) const;
  // Blocks until `event` has completed.
  void WaitEvent(cudaEvent_t event, const char* what) const;

  // The bf16 copy of a weight tensor that lives at `w` in params.
  const cuda::bf16* Bf16Of(const float* w) const { return params16 + (w - params); }
  // The bf16 gradient behind handle `dw`, or null when that gradient is fp32.
  cuda::bf16* Bf16GradOf(const float* dw) const {
    const auto at = reinterpret_cast<uintptr_t>(dw), begin = reinterpret_cast<uintptr_t>(grads);
    if (grads16 == nullptr || at < begin || at >= begin + sizeof(float) * grads_total) return nullptr;
    return grads16 + (dw - grads);
  }

  // out (n, oc) = inp (n, c) @ w^T (+ add, read in the product's epilogue: a residual added as
  // the output is written). fp32: the fp32 product even in bf16 mode (the router).
  void Linear(float* out, const float* inp, const float* w, int n, int c, int oc, bool fp32,
              const float* add = nullptr) const;
  // The same in bf16 mode with the input already in bf16 (one cast shared by two products).
  void Linear16(float* out, const cuda::bf16* inp16, const float* w, int n, int c, int oc,
                const float* add = nullptr) const;
  // dinp = dout @ w (+= when add_to_dinp; skipped when null); dw += dout^T @ inp (skipped when
  // null; into its bf16 gradient where Bf16GradOf has one). dout16: dout already in bf16, or null;
  // inp16: inp already in bf16 (bf16 mode; not s16a when dout16 is null, which casts dout there), or
  // null.
  void LinearBackward(float* dinp, float* dw, const float* dout, const cuda::bf16* dout16, const float* inp,
                      const float* w, int n, int c, int oc, bool fp32, bool add_to_dinp,
                      const cuda::bf16* inp16 = nullptr) const;
};

}  // namespace moe

#endif  // MOE_WITH_CUDA
