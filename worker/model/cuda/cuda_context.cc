#include "worker/model/cuda/cuda_context.h"

#include <stdexcept>
#include <string>

#ifdef MOE_WITH_CUDA

#include "kernels/cuda/matmul.h"
#include "worker/parallel/comm_nccl.h"

namespace moe {

void CudaContext::SyncStream(cudaStream_t s, const char* what) const {
  if (dcomm != nullptr) {
    dcomm->Wait(s, what);
  } else {
    MOE_CUDA_CHECK(cudaStreamSynchronize(s));
  }
}

void CudaContext::WaitEvent(cudaEvent_t event, const char* what) const {
  if (dcomm != nullptr) {
    dcomm->WaitEvent(event, what);
  } else {
    MOE_CUDA_CHECK(cudaEventSynchronize(event));
  }
}

void CudaContext::Linear(float* out, const float* inp, const float* w, int n, int c, int oc, bool fp32,
                         const float* add) const {
  const float beta = add != nullptr ? 1.0f : 0.0f;
  if (!bf16 || fp32) {
    blas->Gemm(false, true, n, oc, c, 1.0f, inp, c, w, c, beta, out, oc, cuda::DType::kF32, stream, add);
    return;
  }
  cuda::CastToBf16(s16a, inp, int64_t{n} * c, stream);
  blas->Gemm(false, true, n, oc, c, 1.0f, s16a, c, Bf16Of(w), c, beta, out, oc, cuda::DType::kBF16, stream, add);
}

void CudaContext::Linear16(float* out, const cuda::bf16* inp16, const float* w, int n, int c, int oc,
                           const float* add) const {
  blas->Gemm(false, true, n, oc, c, 1.0f, inp16, c, Bf16Of(w), c, add != nullptr ? 1.0f : 0.0f, out, oc,
             cuda::DType::kBF16, stream, add);
}

void CudaContext::LinearBackward(float* dinp, float* dw, const float* dout, const cuda::bf16* dout16,
                                 const float* inp, const float* w, int n, int c, int oc, bool fp32,
                                 bool add_to_dinp, const cuda::bf16* inp16) const {
  const float dinp_beta = add_to_dinp ? 1.0f : 0.0f;
  if (!bf16 || fp32) {
    if (dinp != nullptr) {
      blas->Gemm(false, false, n, c, oc, 1.0f, dout, oc, w, c, dinp_beta, dinp, c, cuda::DType::kF32, stream);
    }
    if (dw != nullptr) {
      blas->Gemm(true, false, oc, c, n, 1.0f, dout, oc, inp, c, 1.0f, dw, c, cuda::DType::kF32, stream);
    }
    return;
  }
  if (dout16 == nullptr) {
    cuda::CastToBf16(s16a, dout, int64_t{n} * oc, stream);
    dout16 = s16a;
  }
  if (dinp != nullptr) {
    blas->Gemm(false, false, n, c, oc, 1.0f, dout16, oc, Bf16Of(w), c, dinp_beta, dinp, c, cuda::DType::kBF16,
               stream);
  }
  if (dw == nullptr) return;
  if (inp16 == nullptr) {
    if (int64_t{n} * c > s16b_size) {
      throw std::logic_error("CudaContext::LinearBackward: an input of " + std::to_string(int64_t{n} * c) +
                             " values is wider than the cast scratch (" + std::to_string(s16b_size) + ")");
    }
    cuda::CastToBf16(s16b, inp, int64_t{n} * c, stream);
    inp16 = s16b;
  }
  if (cuda::bf16* dw16 = Bf16GradOf(dw)) {  // accumulated in fp32, added and rounded as it is stored
    if (n > 0) {
      blas->GemmBatched(true, false, oc, c, n, 1.0f, dout16, oc, 0, inp16, c, 0, 1.0f, dw16, c, 0, 1,
                        cuda::DType::kBF16, cuda::DType::kBF16, stream);
    }
  } else {
    blas->Gemm(true, false, oc, c, n, 1.0f, dout16, oc, inp16, c, 1.0f, dw, c, cuda::DType::kBF16, stream);
  }
}

}  // namespace moe

#endif  // MOE_WITH_CUDA
