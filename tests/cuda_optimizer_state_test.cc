// train.optimizer_state bf16 / int8 and train.master_weights bf16 on the GPU (issue 17) against
// the CPU: the fused AdamW kernel and Muon's momentum through the codec give the CPU's codes,
// scales and stochastically rounded weights bit for bit (kernels/cuda/state_codec.h uses the
// CPU's order of operations, never fused multiply-adds); the CUDA model's optimizer step equals
// the CPU model's, its state moves between the backends through fp32 as checkpoints move it, a
// few training steps follow the CPU's curve with each option, and the device memory shrinks by
// what the formats say. Skips without a GPU.
#include <cmath>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/adamw.h"
#include "kernels/dropout.h"
#include "kernels/muon.h"
#include "kernels/state_codec.h"
#include "tests/support/paths.h"
#include "tests/support/test_jobs.h"
#include "tests/support/training_runs.h"
#include "worker/data/dataset.h"
#include "worker/model/cpu/model.h"
#include "worker/model/cuda/cuda_model.h"
#include "worker/model/optimizer_state.h"
#include "worker/parallel/comm_single.h"
#include "worker/train/trainer.h"

#ifdef MOE_WITH_CUDA
#include "kernels/cuda/muon.h"
#include "kernels/cuda/state_codec.h"
#include "tests/support/cuda_ops.h"
#endif

namespace moe {
namespace {

#ifndef MOE_WITH_CUDA

TEST(CudaOptimizerStateTest, NeedsCuda) { GTEST_SKIP() << "built without CUDA: no GPU optimizer state to test"; }

#else

using kernels::kStateBlock;
using kernels::StateFormat;
using testing::Dev;

const char* Name(StateFormat f) { return f == StateFormat::kInt8 ? "int8" : f == StateFormat::kBf16 ? "bf16" : "fp32"; }

// Bitwise equality of two float vectors (0.0 and -0.0 differ, NaN equals NaN), first difference
// reported.
::testing::AssertionResult SameBits(const std::vector<float>& a, const std::vector<float>& b) {
  if (a.size() != b.size()) return ::testing::AssertionFailure() << a.size() << " vs " << b.size() << " values";
  for (size_t i = 0; i < a.size(); ++i) {
    if (std::memcmp(&a[i], &b[i], 4) != 0) {
      return ::testing::AssertionFailure() << "value " << i << ": " << a[i] << " vs " << b[i];
    }
  }
  return ::testing::AssertionSuccess();
}

// One tensor's state as the CPU stores it (the layout OptimizerStateBuffer gives one tensor),
// encoded and decoded by the CPU codec.
struct HostState {
  HostState(StateFormat f, bool s, int64_t count) : format(f), is_signed(s), n(count) {
    const int64_t per = f == StateFormat::kFp32 ? 4 : f == StateFormat::kBf16 ? 2 : 1;
    bytes.assign(per * n, 0);
    scales.assign(f == StateFormat::kInt8 ? (n + kStateBlock - 1) / kStateBlock : 1, 0.f);
  }
  std::vector<float> Decode() const {
    std::vector<float> x(n);
    for (int64_t i = 0; i < n; ++i) {
      if (format == StateFormat::kFp32) std::memcpy(&x[i], &bytes[4 * i], 4);
      if (format == StateFormat::kBf16) {
        uint16_t b;
        std::memcpy(&b, &bytes[2 * i], 2);
        x[i] = kernels::FromBf16Bits(b);
      }
    }
    if (format == StateFormat::kInt8) {
      for (int64_t at = 0, b = 0; at < n; at += kStateBlock, ++b) {
        const int count = static_cast<int>(std::min<int64_t>(kStateBlock, n - at));
        kernels::DecodeInt8Block(bytes.data() + at, count, is_signed, scales[b], x.data() + at);
      }
    }
    return x;
  }
  void Encode(const std::vector<float>& x) {
    for (int64_t i = 0; i < n; ++i) {
      if (format == StateFormat::kFp32) std::memcpy(&bytes[4 * i], &x[i], 4);
      if (format == StateFormat::kBf16) {
        const uint16_t b = kernels::Bf16Bits(x[i]);
        std::memcpy(&bytes[2 * i], &b, 2);
      }
    }
    if (format == StateFormat::kInt8) {
      for (int64_t at = 0, b = 0; at < n; at += kStateBlock, ++b) {
        const int count = static_cast<int>(std::min<int64_t>(kStateBlock, n - at));
        kernels::EncodeInt8Block(x.data() + at, count, is_signed, bytes.data() + at, &scales[b]);
      }
    }
  }
  StateFormat format;
  bool is_signed;
  int64_t n;
  std::vector<uint8_t> bytes;
  std::vector<float> scales;
};

// Its device twin, same bytes.
struct DeviceState {
  explicit DeviceState(const HostState& h, float* codes) : values(h.bytes), scales(h.scales) {
    ref.format = h.format;
    ref.values = values.get();
    ref.scales = scales.get();
    ref.code = codes + (h.is_signed ? 0 : kernels::kInt8CodeSize);
  }
  Dev<uint8_t> values;
  Dev<float> scales;
  cuda::StateRef ref;
};

// The int8 code table on the device (signed, then unsigned).
struct DeviceCodes {
  DeviceCodes() : codes(2 * kernels::kInt8CodeSize) { cuda::UploadInt8Codes(codes.get(), nullptr); }
  Dev<float> codes;
};

// How a test tensor's weights are stored (DeviceWeights' cases).
enum class Master { kFp32, kFp32WithBf16Copy, kBf16Alone, kBf16ValuesInFp32 };
bool Stochastic(Master m) { return m == Master::kBf16Alone || m == Master::kBf16ValuesInFp32; }

// The CPU model's rounding of updated weights (RoundToBf16 in worker/model/cpu/model.cc).
void RoundLikeCpu(std::vector<float>* w, const std::string& name, int64_t first, int64_t step) {
  const uint64_t key = StochasticRoundKey(name, step);
  for (size_t i = 0; i < w->size(); ++i) {
    const uint32_t r = static_cast<uint32_t>(kernels::CounterUniform(key, first + i) * 16777216.0f);
    (*w)[i] = kernels::FromBf16Bits(kernels::Bf16BitsStochastic((*w)[i], r));
  }
}

// Device weights of one tensor in the given storage, initialised from w (bf16 values when
// stochastic), and back to fp32.
struct DeviceTensor {
  DeviceTensor(const std::vector<float>& w, Master master) : f32(w), b16(ToBf16(w)) { storage = master; }
  static std::vector<cuda::bf16> ToBf16(const std::vector<float>& w) {
    std::vector<cuda::bf16> out(w.size());
    for (size_t i = 0; i < w.size(); ++i) out[i] = __float2bfloat16(w[i]);
    return out;
  }
  cuda::WeightsRef Ref(const std::string& name, int64_t first, int64_t step) {
    cuda::WeightsRef r;
    if (storage != Master::kBf16Alone) r.f32 = f32.get();
    if (storage == Master::kFp32WithBf16Copy || storage == Master::kBf16Alone) r.b16 = b16.get();
    r.stochastic = Stochastic(storage);
    r.round_seed = kernels::SplitMix64(StochasticRoundKey(name, step));
    r.round_first = first;
    return r;
  }
  std::vector<float> Host() const { return storage == Master::kBf16Alone ? testing::ToFloat(b16.Host()) : f32.Host(); }
  Master storage;
  Dev<float> f32;
  Dev<cuda::bf16> b16;
};

const int64_t kSizes[] = {1, 300, kStateBlock, kStateBlock + 1, 3 * kStateBlock + 5};
const Master kMasters[] = {Master::kFp32, Master::kFp32WithBf16Copy, Master::kBf16Alone, Master::kBf16ValuesInFp32};

TEST(CudaOptimizerStateTest, AdamWThroughTheCodecMatchesCpuBitForBit) {
  SKIP_WITHOUT_GPU();
  DeviceCodes codes;
  const std::string name = "blocks.1.attn.wo.weight";
  const int64_t first = 12345;  // as an expert shard's first global element
  for (StateFormat format : {StateFormat::kFp32, StateFormat::kBf16, StateFormat::kInt8}) {
    for (Master master : kMasters) {
      for (int64_t n : kSizes) {
        const std::string what = std::string(Name(format)) + " master " + std::to_string(static_cast<int>(master)) +
                                 " n " + std::to_string(n);
        std::vector<float> w = testing::Randn(n, 7, 0.02f);
        if (Stochastic(master)) {
          for (float& x : w) x = kernels::FromBf16Bits(kernels::Bf16Bits(x));
        }
        HostState m(format, true, n), v(format, false, n);
        m.Encode(testing::Randn(n, 8, 1e-3f));
        std::vector<float> v0 = testing::Randn(n, 9, 1e-3f);
        for (float& x : v0) x = x * x;
        v.Encode(v0);
        DeviceState dm(m, codes.codes.get()), dv(v, codes.codes.get());
        DeviceTensor dw(w, master);
        kernels::AdamWConfig c;
        c.lr = 1e-2f;
        c.weight_decay = 0.1f;
        const float clip = 0.7f;
        for (int64_t step = 1; step <= 3; ++step) {
          const std::vector<float> g = testing::Randn(n, 100 + step, 0.05f);
          std::vector<float> hm = m.Decode(), hv = v.Decode();
          kernels::AdamWUpdate(w.data(), g.data(), hm.data(), hv.data(), n, c, step, clip);
          m.Encode(hm);
          v.Encode(hv);
          if (Stochastic(master)) RoundLikeCpu(&w, name, first, step);

          Dev<float> dg(g);
          cuda::AdamWArgs a{c.lr, c.beta1, c.beta2, c.eps, c.weight_decay,
                            static_cast<float>(1.0 - std::pow(double{c.beta1}, static_cast<double>(step))),
                            static_cast<float>(1.0 - std::pow(double{c.beta2}, static_cast<double>(step))), clip};
          cuda::AdamWUpdate(dw.Ref(name, first, step), dg.get(), dm.ref, dv.ref, n, a, nullptr);
        }
        EXPECT_EQ(dm.values.Host(), m.bytes) << what << ": m's codes";
        EXPECT_EQ(dv.values.Host(), v.bytes) << what << ": v's codes";
        EXPECT_TRUE(SameBits(dm.scales.Host(), m.scales)) << what << ": m's scales";
        EXPECT_TRUE(SameBits(dv.scales.Host(), v.scales)) << what << ": v's scales";
        EXPECT_TRUE(SameBits(dw.Host(), w)) << what << ": weights";
        if (master == Master::kFp32WithBf16Copy) {
          std::vector<float> nearest = w;
          for (float& x : nearest) x = kernels::FromBf16Bits(kernels::Bf16Bits(x));
          EXPECT_TRUE(SameBits(testing::ToFloat(dw.b16.Host()), nearest)) << what << ": the bf16 copy";
        }
      }
    }
  }
}

TEST(CudaOptimizerStateTest, MuonMomentumThroughTheCodecMatchesCpu) {
  SKIP_WITHOUT_GPU();
  DeviceCodes codes;
  cuda::Blas blas;
  struct Shape {
    int batch, rows, cols;
  };
  const std::string name = "blocks.0.moe.w1";
  for (const Shape& s : {Shape{4, 24, 16}, Shape{1, 64, 96}, Shape{2, 40, 50}}) {
    const int64_t n = int64_t{s.batch} * s.rows * s.cols;
    for (StateFormat format : {StateFormat::kBf16, StateFormat::kInt8}) {
      for (Master master : {Master::kFp32, Master::kBf16Alone}) {
        const std::string what = std::string(Name(format)) + (Stochastic(master) ? " bf16 weights " : " ") +
                                 std::to_string(s.batch) + "x" + std::to_string(s.rows) + "x" + std::to_string(s.cols);
        std::vector<float> w = testing::Randn(n, 11, 0.02f);
        if (Stochastic(master)) {
          for (float& x : w) x = kernels::FromBf16Bits(kernels::Bf16Bits(x));
        }
        HostState m(format, true, n);
        DeviceState dm(m, codes.codes.get());
        DeviceTensor dw(w, master);
        testing::MuonScratch scratch(testing::MuonScratch::For(s.batch, s.rows, s.cols));
        kernels::MuonConfig cfg;
        cfg.lr = 0.02f;
        cfg.weight_decay = 0.1f;
        for (int64_t step = 1; step <= 2; ++step) {
          const std::vector<float> g = testing::Randn(n, 200 + step);
          std::vector<float> hm = m.Decode();
          kernels::MuonUpdate(w.data(), g.data(), hm.data(), s.batch, s.rows, s.cols, cfg, 0.5f);
          m.Encode(hm);
          if (Stochastic(master)) RoundLikeCpu(&w, name, 0, step);
          Dev<float> dg(g);
          cuda::MuonUpdate(&blas, scratch.ws, cuda::DType::kF32, dw.Ref(name, 0, step), dg.get(), dm.ref, s.batch,
                           s.rows, s.cols, cfg.lr, cfg.weight_decay, 0.5f, nullptr);
        }
        // The momentum sees no products: bit for bit.
        EXPECT_EQ(dm.values.Host(), m.bytes) << what << ": momentum codes";
        EXPECT_TRUE(SameBits(dm.scales.Host(), m.scales)) << what << ": momentum scales";
        // The weights go through Newton-Schulz (another summation order, CudaMuonTest's 2e-4),
        // and bf16 weights may round the other way where the two updates straddle a draw: one
        // bf16 step (2^-8 of the weight) on a few elements.
        const std::vector<float> got = dw.Host();
        EXPECT_LT(testing::RelErr(got, w), Stochastic(master) ? 5e-3 : 2e-4) << what << ": weights";
        if (Stochastic(master)) {
          for (size_t i = 0; i < got.size(); ++i) {
            ASSERT_EQ(got[i], kernels::FromBf16Bits(kernels::Bf16Bits(got[i]))) << what << ": not a bf16 value";
          }
        }
      }
    }
  }
}

// The model tests' case: 2 layers, D 64, 4 experts top-2 (tensors of 12288 values: six int8
// blocks, and 64-value norms: one partial block).
struct MemoryCase {
  ModelConfig::State state;
  bool bf16_master;
};
const MemoryCase kMemories[] = {{ModelConfig::State::kBf16, false},
                            {ModelConfig::State::kInt8, false},
                            {ModelConfig::State::kFp32, true},
                            {ModelConfig::State::kBf16, true},
                            {ModelConfig::State::kInt8, true}};

ModelConfig SmallConfig(const MemoryCase& m, bool muon) {
  ModelConfig cfg = testing::CaseConfig(testing::ModelCase{"moe", 4, 2, 4, 2, 0.0, false, 0.0f}, 37, 64, 16, 48);
  cfg.optimizer_state = m.state;
  cfg.bf16_master = m.bf16_master;
  cfg.muon = muon;
  // Muon jobs with other AdamW betas than the defaults (train.beta1 / beta2), on the tensors AdamW steps.
  if (muon) {
    cfg.adam_beta1 = 0.8f;
    cfg.adam_beta2 = 0.99f;
  }
  return cfg;
}

std::string Describe(const MemoryCase& m, bool bf16_products, bool muon) {
  const char* state = m.state == ModelConfig::State::kInt8 ? "int8" : m.state == ModelConfig::State::kBf16 ? "bf16" : "fp32";
  return std::string("state ") + state + (m.bf16_master ? ", bf16 master" : "") +
         (bf16_products ? ", bf16 products" : ", fp32 products") + (muon ? ", muon" : ", adamw");
}

std::vector<float> Slice(const std::vector<float>& v, const ParamInfo& info) {
  return std::vector<float>(v.begin() + info.offset, v.begin() + info.offset + info.size);
}

// Both models take `steps` optimizer steps on the same gradients.
void StepBoth(Model* cpu, TrainModel* gpu, int64_t first_step, int64_t last_step) {
  for (int64_t step = first_step; step <= last_step; ++step) {
    cpu->grads() = testing::Randn(cpu->layout().total(), 30 + step, 0.05f);
    if (cpu->config().bf16_master) {  // the blocks' matrices' gradients are bf16 values there
      for (const ParamInfo& info : cpu->layout().params()) {
        if (!Bf16Gradient(info)) continue;
        for (int64_t i = info.offset; i < info.offset + info.size; ++i) {
          cpu->grads()[i] = kernels::FromBf16Bits(kernels::Bf16Bits(cpu->grads()[i]));
        }
      }
    }
    gpu->CopyFromHost(ParamSet::kGrads, cpu->grads());
    cpu->OptimizerStep(step, 1e-3, 0.02, 0.1, 0.8f);
    gpu->OptimizerStep(step, 1e-3, 0.02, 0.1, 0.8f);
  }
}

// Weights, m and v of both models: bit for bit for AdamW's tensors and every momentum; Muon's
// weights within Newton-Schulz's tolerance (CudaMuonTest's: 2e-4 with fp32 products, 3e-2 with
// bf16 ones), and bf16 weights may round a few elements the other way (one bf16 step, 2^-8).
void ExpectSameState(Model& cpu, TrainModel& gpu, bool bf16_products, const std::string& what) {
  std::vector<float> gw, gm, gv, cm, cv;
  gpu.CopyToHost(ParamSet::kParams, &gw);
  gpu.CopyToHost(ParamSet::kAdamM, &gm);
  gpu.CopyToHost(ParamSet::kAdamV, &gv);
  cpu.CopyToHost(ParamSet::kAdamM, &cm);
  cpu.CopyToHost(ParamSet::kAdamV, &cv);
  const ModelConfig& cfg = cpu.config();
  for (const ParamInfo& info : cpu.layout().params()) {
    EXPECT_TRUE(SameBits(Slice(gm, info), Slice(cm, info))) << what << " " << info.name << ": m";
    EXPECT_TRUE(SameBits(Slice(gv, info), Slice(cv, info))) << what << " " << info.name << ": v";
    if (cfg.muon && info.muon) {
      const double tol = (bf16_products ? 3e-2 : 2e-4) + (cfg.bf16_master ? 5e-3 : 0);
      EXPECT_LT(testing::RelErr(Slice(gw, info), Slice(cpu.params(), info)), tol) << what << " " << info.name;
    } else {
      EXPECT_TRUE(SameBits(Slice(gw, info), Slice(cpu.params(), info))) << what << " " << info.name << ": weights";
    }
  }
}

TEST(CudaOptimizerStateTest, ModelStepMatchesCpuModel) {
  SKIP_WITHOUT_GPU();
  for (const MemoryCase& mem : kMemories) {
    for (bool bf16_products : {false, true}) {
      for (bool muon : {false, true}) {
        const std::string what = Describe(mem, bf16_products, muon);
        const ModelConfig cfg = SmallConfig(mem, muon);
        auto comm = CreateSingleProcessCommunicator();
        Model cpu(cfg, comm.get());
        cpu.InitParams(42);
        auto made = MakeCudaModel(cfg, comm.get(), bf16_products);
        ASSERT_TRUE(made.ok()) << made.status();
        TrainModel& gpu = **made;
        gpu.InitParams(42);
        EXPECT_TRUE(SameBits(gpu.params(), cpu.params())) << what << ": initial weights";
        StepBoth(&cpu, &gpu, 1, 3);
        ExpectSameState(cpu, gpu, bf16_products, what);
      }
    }
  }
}

// A checkpoint holds fp32 weights, m and v (Trainer's checkpoint goes through CopyToHost and
// CopyFromHost): the GPU's state read out and written into a CPU model, and the other way,
// goes on exactly as the uninterrupted run.
TEST(CudaOptimizerStateTest, StateMovesBetweenBackendsThroughFp32) {
  SKIP_WITHOUT_GPU();
  for (const MemoryCase& mem : kMemories) {
    const std::string what = Describe(mem, true, false);
    const ModelConfig cfg = SmallConfig(mem, false);
    auto comm = CreateSingleProcessCommunicator();
    Model straight(cfg, comm.get()), resumed(cfg, comm.get());
    straight.InitParams(42);
    auto made = MakeCudaModel(cfg, comm.get(), /*use_bf16=*/true);
    ASSERT_TRUE(made.ok()) << made.status();
    TrainModel& gpu = **made;
    gpu.InitParams(42);
    StepBoth(&straight, &gpu, 1, 2);
    // GPU -> CPU.
    for (ParamSet set : {ParamSet::kParams, ParamSet::kAdamM, ParamSet::kAdamV}) {
      std::vector<float> v;
      gpu.CopyToHost(set, &v);
      resumed.CopyFromHost(set, v);
    }
    StepBoth(&straight, &gpu, 3, 3);
    resumed.grads() = straight.grads();
    resumed.OptimizerStep(3, 1e-3, 0.02, 0.1, 0.8f);
    ExpectSameState(resumed, gpu, true, what + " gpu -> cpu");
    // CPU -> GPU.
    auto fresh = MakeCudaModel(cfg, comm.get(), /*use_bf16=*/true);
    ASSERT_TRUE(fresh.ok()) << fresh.status();
    for (ParamSet set : {ParamSet::kParams, ParamSet::kAdamM, ParamSet::kAdamV}) {
      std::vector<float> v;
      straight.CopyToHost(set, &v);
      (*fresh)->CopyFromHost(set, v);
    }
    StepBoth(&straight, fresh->get(), 4, 5);
    ExpectSameState(straight, **fresh, true, what + " cpu -> gpu");
  }
}

moe::v1::JobSpec CurveSpec(moe::v1::StateStorage state, moe::v1::Precision master, bool bf16_products) {
  moe::v1::JobSpec spec = testing::SmallShakespeareSpec();
  spec.mutable_resources()->set_device(moe::v1::DEVICE_CUDA);
  spec.mutable_train()->set_precision(bf16_products ? moe::v1::PRECISION_BF16 : moe::v1::PRECISION_FP32);
  spec.mutable_train()->set_steps(20);
  spec.mutable_train()->set_log_every(1);
  spec.mutable_train()->set_eval_every(0);
  spec.mutable_train()->set_optimizer_state(state);
  spec.mutable_train()->set_master_weights(master);
  return spec;
}

std::vector<double> Curve(const moe::v1::JobSpec& spec, Dataset* data, TrainerOptions opts = {}) {
  auto comm = CreateSingleProcessCommunicator();
  std::unique_ptr<Trainer> t = testing::NewTrainer(spec, comm.get(), data, opts);
  if (t == nullptr) return {};
  TrainOutcome outcome;
  EXPECT_TRUE(t->Run(&outcome).ok());
  return testing::Losses(*t);
}

// Twenty steps of the small Shakespeare job with each option, GPU (fp32 products) against CPU:
// as CudaTrainerTest's fp32 curve (1e-3: the summation orders differ); bf16 weights may round
// an element the other way where the two updates straddle a draw, a little more.
TEST(CudaOptimizerStateTest, TrainingFollowsTheCpuCurve) {
  SKIP_WITHOUT_GPU();
  struct Case {
    moe::v1::StateStorage state;
    moe::v1::Precision master;
    double tol;
  };
  for (const Case& c : {Case{moe::v1::STATE_BF16, moe::v1::PRECISION_FP32, 1e-3},
                        Case{moe::v1::STATE_INT8, moe::v1::PRECISION_FP32, 1e-3},
                        Case{moe::v1::STATE_INT8, moe::v1::PRECISION_BF16, 5e-3}}) {
    const moe::v1::JobSpec spec = CurveSpec(c.state, c.master, /*bf16_products=*/false);
    auto data = LoadDataset(spec.data());
    ASSERT_TRUE(data.ok()) << data.status();
    moe::v1::JobSpec cpu_spec = spec;
    cpu_spec.mutable_resources()->set_device(moe::v1::DEVICE_CPU);
    const std::vector<double> g = Curve(spec, &*data), a = Curve(cpu_spec, &*data);
    ASSERT_EQ(g.size(), 20u);
    ASSERT_EQ(a.size(), 20u);
    for (size_t i = 0; i < a.size(); ++i) {
      EXPECT_NEAR(g[i], a[i], c.tol * a[i]) << "step " << i + 1 << " state " << c.state << " master " << c.master;
    }
  }
  // bf16 products with the bf16 weights alone and int8 moments, 40 steps: it learns as the
  // fp32-state, fp32-master bf16 run does (memory_options_test's bar on the CPU).
  moe::v1::JobSpec lean = CurveSpec(moe::v1::STATE_INT8, moe::v1::PRECISION_BF16, /*bf16_products=*/true);
  moe::v1::JobSpec full = CurveSpec(moe::v1::STATE_FP32, moe::v1::PRECISION_FP32, /*bf16_products=*/true);
  lean.mutable_train()->set_steps(40);
  full.mutable_train()->set_steps(40);
  auto data = LoadDataset(lean.data());
  ASSERT_TRUE(data.ok()) << data.status();
  const std::vector<double> l = Curve(lean, &*data), base = Curve(full, &*data);
  ASSERT_EQ(l.size(), 40u);
  ASSERT_EQ(base.size(), 40u);
  auto last5 = [](const std::vector<double>& v) { return (v[35] + v[36] + v[37] + v[38] + v[39]) / 5; };
  EXPECT_LT(last5(base), base.front() - 0.3) << "the baseline learns";
  EXPECT_NEAR(last5(l), last5(base), 0.05 * last5(base));
}

// A GPU run with int8 moments and bf16 weights stops at step 10 with a checkpoint; the CPU
// resumes it: the curve goes on as the CPU's own uninterrupted run.
TEST(CudaOptimizerStateTest, CheckpointResumesOnTheCpu) {
  SKIP_WITHOUT_GPU();
  moe::v1::JobSpec spec = CurveSpec(moe::v1::STATE_INT8, moe::v1::PRECISION_BF16, /*bf16_products=*/false);
  auto data = LoadDataset(spec.data());
  ASSERT_TRUE(data.ok()) << data.status();
  moe::v1::JobSpec cpu_spec = spec;
  cpu_spec.mutable_resources()->set_device(moe::v1::DEVICE_CPU);
  const std::vector<double> straight = Curve(cpu_spec, &*data);
  const std::string dir = testing::MakeTempDir("moe-cuda-state-resume-");
  TrainerOptions first;
  first.checkpoint_dir = dir;
  first.max_steps = 10;
  spec.mutable_checkpoint()->set_every(10);
  std::vector<double> curve = Curve(spec, &*data, first);
  TrainerOptions second;
  second.checkpoint_dir = dir;
  second.resume = true;
  cpu_spec.mutable_checkpoint()->set_every(10);
  const std::vector<double> rest = Curve(cpu_spec, &*data, second);
  curve.insert(curve.end(), rest.begin(), rest.end());
  ASSERT_EQ(curve.size(), straight.size());
  for (size_t i = 0; i < curve.size(); ++i) EXPECT_NEAR(curve[i], straight[i], 5e-3 * straight[i]) << "step " << i + 1;
}

// Device memory: the model's own count and the GPU's free memory (cudaMemGetInfo) before and
// after building each model, against the bytes the formats say.
TEST(CudaOptimizerStateTest, CompactStateAndBf16WeightsSaveDeviceMemory) {
  SKIP_WITHOUT_GPU();
  struct Built {
    int64_t counted = 0, used = 0;
  };
  auto comm = CreateSingleProcessCommunicator();
  auto build = [&](const MemoryCase& m) {
    ModelConfig cfg = testing::CaseConfig(testing::ModelCase{"moe", 8, 2, 4, 2, 0.0, false, 0.0f}, 512, 256, 64, 1024);
    cfg.optimizer_state = m.state;
    cfg.bf16_master = m.bf16_master;
    MOE_CUDA_CHECK(cudaDeviceSynchronize());
    size_t free0 = 0, free1 = 0, total = 0;
    MOE_CUDA_CHECK(cudaMemGetInfo(&free0, &total));
    Built b;
    {
      auto made = MakeCudaModel(cfg, comm.get(), /*use_bf16=*/true);
      EXPECT_TRUE(made.ok()) << made.status();
      if (!made.ok()) return b;
      (*made)->InitParams(1);
      MOE_CUDA_CHECK(cudaMemGetInfo(&free1, &total));
      b.counted = CudaModelDeviceBytes(**made);
      b.used = static_cast<int64_t>(free0) - static_cast<int64_t>(free1);
    }
    return b;
  };
  const ModelConfig shape =
      testing::CaseConfig(testing::ModelCase{"moe", 8, 2, 4, 2, 0.0, false, 0.0f}, 512, 256, 64, 1024);
  const ParamLayout layout(shape, 0, 1);
  const int64_t P = layout.total();
  int64_t blocks = 0, fp32_grads = 0;
  for (const ParamInfo& info : layout.params()) {
    blocks += (info.size + kStateBlock - 1) / kStateBlock;
    if (!Bf16Gradient(info)) fp32_grads += (info.size + 63) / 64 * 64;  // DeviceGrads' fp32 tensors
  }
  ASSERT_GT(P, 10'000'000);  // enough that the savings dwarf cudaMalloc's 2 MiB granularity

  build({ModelConfig::State::kFp32, false});  // warm-up: whatever the first model leaves loaded
  const Built fp32 = build({ModelConfig::State::kFp32, false});
  const Built bf16 = build({ModelConfig::State::kBf16, false});
  const Built int8 = build({ModelConfig::State::kInt8, false});
  const Built lean = build({ModelConfig::State::kInt8, true});
  struct Expect {
    const char* what;
    const Built& got;
    int64_t saving;
  };
  // m and v: 8 bytes a value in fp32, 4 in bf16, 2 plus 8 per block (and the 2 KiB code table)
  // in int8; bf16 master weights: the 4 fp32 bytes a value go (their norms' and routers' fp32
  // copies stay: under 0.1% of P here), and the gradients take 2 bytes a value plus fp32 ones for
  // the tensors outside the blocks' matrices (the embedding, norms, routers).
  const int64_t grads_saving = 4 * P - 2 * P - 4 * fp32_grads;
  for (const Expect& e : {Expect{"bf16 state", bf16, 4 * P}, Expect{"int8 state", int8, 6 * P - 8 * blocks - 2048},
                          Expect{"int8 state, bf16 weights", lean, 6 * P - 8 * blocks - 2048 + 4 * P + grads_saving}}) {
    const double counted = static_cast<double>(fp32.counted - e.got.counted);
    const double used = static_cast<double>(fp32.used - e.got.used);
    EXPECT_NEAR(counted, e.saving, 0.002 * e.saving) << e.what << ": the model's count";
    EXPECT_NEAR(used, e.saving, 0.02 * e.saving + (8 << 20)) << e.what << ": cudaMemGetInfo";
  }
}

#endif  // MOE_WITH_CUDA

}  // namespace
}  // namespace moe
