// The experts' gradient norms queued layer by layer during the backward
// (worker/model/cuda/expert_grad_norms.h) against one pass over the same gradients and a double
// sum on the host: fp32 and bf16 storage, layers in order only, stale after Forget, off where the
// gradients change after the backward. Skips without a GPU.
#include <cmath>
#include <vector>

#include "gtest/gtest.h"
#include "worker/model/model_config.h"
#include "worker/model/param_layout.h"

#ifdef MOE_WITH_CUDA
#include "kernels/cuda/reduce.h"
#include "tests/support/cuda_ops.h"
#include "worker/model/cuda/device_arena.h"
#include "worker/model/cuda/device_grads.h"
#include "worker/model/cuda/expert_grad_norms.h"
#endif

namespace moe {
namespace {

#ifndef MOE_WITH_CUDA

TEST(ExpertGradNormsTest, NeedsCuda) { GTEST_SKIP() << "built without CUDA: no GPU gradients to test"; }

#else

using testing::Dev;

ModelConfig Moe(int layers) {
  ModelConfig c;
  c.vocab = 64;
  c.d = 32;
  c.layers = layers;
  c.heads = 4;
  c.kv_heads = 4;
  c.head_dim = 8;
  c.seq_len = 16;
  c.experts = 4;
  c.top_k = 2;
  c.ffn = 24;
  return c;
}

// Fills every gradient with random values (through the host copy), queues each layer's norm
// from the last down, and returns the slots' sum in layer order; *collected says whether
// Collect had them. *want: the experts' squared norm from the host copy (the stored values).
double RunLayers(const ParamLayout& layout, DeviceGrads* grads, ExpertGradNorms* norms, int layers,
                 const std::vector<int>& order, bool* collected, double* want, double* one_pass) {
  cudaStream_t s = cuda::NewStream(cuda::StreamPriority::kCompute);
  grads->Upload(testing::Randn(layout.total(), 7), s);
  std::vector<float> stored;
  grads->Download(&stored, s);
  *want = 0;
  for (int64_t i = layout.dense_size(); i < layout.total(); ++i) *want += double{stored[i]} * stored[i];
  for (int l : order) norms->AfterLayer(l, s);
  const double* slots = nullptr;
  *collected = norms->Collect(s, &slots);
  double sum = 0;
  if (*collected) {
    std::vector<double> host(layers);
    MOE_CUDA_CHECK(cudaMemcpyAsync(host.data(), slots, sizeof(double) * layers, cudaMemcpyDeviceToHost, s));
    MOE_CUDA_CHECK(cudaStreamSynchronize(s));
    for (double v : host) sum += v;
  }
  Dev<double> both(2, 0.0), partials(cuda::kPartialBlocks);
  grads->SquaredNorms(both.get(), partials.get(), s);
  MOE_CUDA_CHECK(cudaStreamSynchronize(s));
  *one_pass = both.Host()[1];
  cudaStreamDestroy(s);
  return sum;
}

TEST(ExpertGradNormsTest, LayerSumsMatchOnePass) {
  SKIP_WITHOUT_GPU();
  const int layers = 3;
  const ModelConfig cfg = Moe(layers);
  const ParamLayout layout(cfg, 0, 1);
  for (bool bf16_storage : {false, true}) {
    DeviceMemory memory;
    DeviceArena arena(&memory);
    DeviceGrads grads(layout, bf16_storage, /*bf16_values=*/bf16_storage, &arena);
    ExpertGradNorms norms(layout, layers, grads, /*rounded_later=*/false, &arena);
    ASSERT_TRUE(norms.enabled());
    bool collected = false;
    double want = 0, one_pass = 0;
    const double got = RunLayers(layout, &grads, &norms, layers, {2, 1, 0}, &collected, &want, &one_pass);
    ASSERT_TRUE(collected) << "bf16 storage " << bf16_storage;
    EXPECT_GT(want, 0);
    EXPECT_NEAR(got, want, 1e-12 * want) << "bf16 storage " << bf16_storage;
    EXPECT_NEAR(one_pass, want, 1e-12 * want);
    // Again: the same bits.
    double again_want = 0, again_pass = 0;
    const double again = RunLayers(layout, &grads, &norms, layers, {2, 1, 0}, &collected, &again_want, &again_pass);
    EXPECT_EQ(again, got);
  }
}

TEST(ExpertGradNormsTest, OnlyWholeBackwardsInOrderCount) {
  SKIP_WITHOUT_GPU();
  const int layers = 3;
  const ModelConfig cfg = Moe(layers);
  const ParamLayout layout(cfg, 0, 1);
  DeviceMemory memory;
  DeviceArena arena(&memory);
  DeviceGrads grads(layout, false, false, &arena);
  ExpertGradNorms norms(layout, layers, grads, false, &arena);
  bool collected = true;
  double want = 0, one_pass = 0;
  RunLayers(layout, &grads, &norms, layers, {2, 1}, &collected, &want, &one_pass);
  EXPECT_FALSE(collected) << "layer 0 missing";
  RunLayers(layout, &grads, &norms, layers, {2, 0, 1}, &collected, &want, &one_pass);
  EXPECT_FALSE(collected) << "out of order";
  RunLayers(layout, &grads, &norms, layers, {1, 0}, &collected, &want, &one_pass);
  EXPECT_FALSE(collected) << "did not start at the last layer";
  // A new backward after a broken one counts again; Forget drops a whole one.
  const double got = RunLayers(layout, &grads, &norms, layers, {2, 1, 2, 1, 0}, &collected, &want, &one_pass);
  EXPECT_TRUE(collected);
  EXPECT_NEAR(got, want, 1e-12 * want);
  cudaStream_t s = cuda::NewStream(cuda::StreamPriority::kCompute);
  for (int l : {2, 1, 0}) norms.AfterLayer(l, s);
  norms.Forget();
  const double* slots = nullptr;
  EXPECT_FALSE(norms.Collect(s, &slots));
  EXPECT_FALSE(norms.Collect(s, &slots)) << "a Collect takes them once";
  cudaStreamSynchronize(s);
  cudaStreamDestroy(s);
}

TEST(ExpertGradNormsTest, OffWithoutExpertsOrWhenRoundedLater) {
  SKIP_WITHOUT_GPU();
  DeviceMemory memory;
  DeviceArena arena(&memory);
  ModelConfig dense = Moe(2);
  dense.experts = 1;
  dense.top_k = 1;
  const ParamLayout dense_layout(dense, 0, 1);
  DeviceGrads dense_grads(dense_layout, false, false, &arena);
  if (dense_layout.total() == dense_layout.dense_size()) {
    EXPECT_FALSE(ExpertGradNorms(dense_layout, 2, dense_grads, false, &arena).enabled());
  }
  const ParamLayout layout(Moe(2), 0, 1);
  DeviceGrads grads(layout, false, true, &arena);
  ExpertGradNorms rounded(layout, 2, grads, /*rounded_later=*/true, &arena);
  EXPECT_FALSE(rounded.enabled());
  const double* slots = nullptr;
  rounded.AfterLayer(1, nullptr);
  rounded.AfterLayer(0, nullptr);
  EXPECT_FALSE(rounded.Collect(nullptr, &slots));
}

#endif  // MOE_WITH_CUDA

}  // namespace
}  // namespace moe
