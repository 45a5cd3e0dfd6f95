// Muon on the CPU (MODEL.md "Options: Optimizer and schedule"; issue 16): the Newton-Schulz
// kernel against an independent double-precision implementation and against its closed form on
// a matrix of known singular values, the update's momentum, decay and scale, the model's step
// (Muon on exactly the ParamInfo::muon tensors, AdamW on the rest and everywhere when the
// optimizer is adamw), Muon's schedule, and a small Shakespeare job that learns with Muon and
// resumes to the same curve with its momentum stored as int8.
#include "kernels/muon.h"

#include <cmath>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "common/schedule.h"
#include "gtest/gtest.h"
#include "kernels/adamw.h"
#include "kernels/threads.h"
#include "tests/support/paths.h"
#include "tests/support/test_jobs.h"
#include "tests/support/training_runs.h"
#include "worker/data/dataset.h"
#include "worker/model/cpu/model.h"
#include "worker/parallel/comm_single.h"
#include "worker/train/trainer.h"

namespace moe {
namespace {

using Mat = std::vector<double>;  // row-major

std::vector<float> Random(int64_t n, uint32_t seed, float scale = 1.0f) {
  std::mt19937 gen(seed);
  std::normal_distribution<float> dist(0.0f, scale);
  std::vector<float> v(n);
  for (float& x : v) x = dist(gen);
  return v;
}

// a (n, k) @ b (k, m), or a @ b^T when b_t (b then (m, k)).
Mat Mul(const Mat& a, const Mat& b, int n, int k, int m, bool b_t = false) {
  Mat c(static_cast<size_t>(n) * m, 0.0);
  for (int i = 0; i < n; ++i) {
    for (int j = 0; j < m; ++j) {
      double s = 0;
      for (int p = 0; p < k; ++p) s += a[i * k + p] * (b_t ? b[j * k + p] : b[p * m + j]);
      c[i * m + j] = s;
    }
  }
  return c;
}

Mat Transpose(const Mat& a, int n, int m) {
  Mat t(a.size());
  for (int i = 0; i < n; ++i) {
    for (int j = 0; j < m; ++j) t[j * n + i] = a[i * m + j];
  }
  return t;
}

// MODEL.md's Newton-Schulz written out plainly in double: normalise, transpose a tall matrix,
// five X = a X + (b A + c A^2) X with A = X X^T, transpose back.
Mat ReferenceNewtonSchulz(const Mat& u, int rows, int cols) {
  double sq = 0;
  for (double v : u) sq += v * v;
  Mat x(u.size());
  for (size_t i = 0; i < u.size(); ++i) x[i] = u[i] / (std::sqrt(sq) + 1e-7);
  const bool tall = rows > cols;
  int r = rows, c = cols;
  if (tall) {
    x = Transpose(x, rows, cols);
    std::swap(r, c);
  }
  for (int it = 0; it < 5; ++it) {
    const Mat a = Mul(x, x, r, c, r, /*b_t=*/true);
    const Mat aa = Mul(a, a, r, r, r);
    Mat poly(a.size());
    for (size_t i = 0; i < a.size(); ++i) poly[i] = -4.7750 * a[i] + 2.0315 * aa[i];
    const Mat px = Mul(poly, x, r, r, c);
    for (size_t i = 0; i < x.size(); ++i) x[i] = 3.4445 * x[i] + px[i];
  }
  return tall ? Transpose(x, r, c) : x;
}

double MaxAbsDiff(const float* a, const Mat& b) {
  double m = 0;
  for (size_t i = 0; i < b.size(); ++i) m = std::max(m, std::abs(a[i] - b[i]));
  return m;
}

TEST(NewtonSchulz, MatchesAPlainDoubleImplementation) {
  struct Shape {
    int batch, rows, cols;
  };
  for (const Shape s : {Shape{1, 3, 5}, Shape{3, 6, 4}, Shape{2, 8, 8}, Shape{4, 1, 7}, Shape{2, 16, 40}}) {
    const int64_t size = int64_t{s.rows} * s.cols;
    std::vector<float> x = Random(s.batch * size, 7 + s.rows, 0.3f);
    const std::vector<float> in = x;
    kernels::NewtonSchulz(x.data(), s.batch, s.rows, s.cols);
    for (int m = 0; m < s.batch; ++m) {
      const Mat u(in.begin() + m * size, in.begin() + (m + 1) * size);
      const Mat want = ReferenceNewtonSchulz(u, s.rows, s.cols);
      // fp32 through five cubic-in-X iterations: a few ulps of values near 1, far below the
      // changes a wrong coefficient, a missed transpose or a skipped iteration make.
      EXPECT_LT(MaxAbsDiff(x.data() + m * size, want), 2e-5)
          << s.batch << "x" << s.rows << "x" << s.cols << " matrix " << m;
    }
  }
}

// Orthonormal columns (n, k) from a random matrix by Gram-Schmidt in double.
Mat Orthonormal(int n, int k, uint32_t seed) {
  const std::vector<float> r = Random(int64_t{n} * k, seed);
  Mat q(r.begin(), r.end());
  for (int j = 0; j < k; ++j) {
    for (int p = 0; p < j; ++p) {
      double dot = 0;
      for (int i = 0; i < n; ++i) dot += q[i * k + j] * q[i * k + p];
      for (int i = 0; i < n; ++i) q[i * k + j] -= dot * q[i * k + p];
    }
    double norm = 0;
    for (int i = 0; i < n; ++i) norm += q[i * k + j] * q[i * k + j];
    for (int i = 0; i < n; ++i) q[i * k + j] /= std::sqrt(norm);
  }
  return q;
}

// The scalar map Newton-Schulz applies to every singular value: five s = a s + b s^3 + c s^5.
double NewtonSchulzScalar(double s) {
  for (int it = 0; it < 5; ++it) s = 3.4445 * s - 4.7750 * s * s * s + 2.0315 * s * s * s * s * s;
  return s;
}

TEST(NewtonSchulz, MapsSingularValuesNearOneAndKeepsSingularVectors) {
  // U = P diag(s) Q^T with orthonormal P (r, r), Q (c, r) and singular values s spread over a
  // factor of 20: NS(U) = P diag(f(s / ||s||)) Q^T, f the scalar iteration, and f lands in
  // [0.6, 1.25] for every one of them (what makes Muon's update an orthogonal matrix's).
  for (const bool tall : {false, true}) {
    const int r = 5, c = 12;
    const double s[r] = {3.0, 1.7, 0.9, 0.4, 0.15};
    double s_norm = 0;
    for (double v : s) s_norm += v * v;
    s_norm = std::sqrt(s_norm);
    const Mat p = Orthonormal(r, r, 11), q = Orthonormal(c, r, 12);
    Mat ps = p, pf = p;
    for (int i = 0; i < r; ++i) {
      for (int j = 0; j < r; ++j) {
        ps[i * r + j] *= s[j];
        const double f = NewtonSchulzScalar(s[j] / (s_norm + 1e-7));
        if (i == 0) {
          EXPECT_GT(f, 0.6) << "singular value " << s[j];
          EXPECT_LT(f, 1.25) << "singular value " << s[j];
        }
        pf[i * r + j] *= f;
      }
    }
    Mat u = Mul(ps, q, r, r, c, /*b_t=*/true);     // (r, c)
    Mat want = Mul(pf, q, r, r, c, /*b_t=*/true);  // (r, c)
    if (tall) {  // the same matrix stored (c, r): worked on transposed, returned as stored
      u = Transpose(u, r, c);
      want = Transpose(want, r, c);
    }
    std::vector<float> x(u.begin(), u.end());
    kernels::NewtonSchulz(x.data(), 1, tall ? c : r, tall ? r : c);
    EXPECT_LT(MaxAbsDiff(x.data(), want), 1e-4) << (tall ? "tall" : "wide");
  }
}

TEST(NewtonSchulz, OfATransposeIsTheTransposeExactly) {
  // Expert matrices are stored (in, out): the model relies on this to give MODEL.md's update of
  // the [out, in] matrix. A tall matrix is worked on as its wide transpose, so bit for bit.
  const int rows = 12, cols = 7;
  std::vector<float> tall = Random(rows * cols, 21), wide(tall.size());
  for (int i = 0; i < rows; ++i) {
    for (int j = 0; j < cols; ++j) wide[j * rows + i] = tall[i * cols + j];
  }
  kernels::NewtonSchulz(tall.data(), 1, rows, cols);
  kernels::NewtonSchulz(wide.data(), 1, cols, rows);
  for (int i = 0; i < rows; ++i) {
    for (int j = 0; j < cols; ++j) ASSERT_EQ(wide[j * rows + i], tall[i * cols + j]) << i << ", " << j;
  }
}

TEST(MuonUpdate, MomentumNesterovDecayAndScale) {
  const int batch = 2, rows = 6, cols = 4;
  const int64_t size = int64_t{rows} * cols, n = batch * size;
  std::vector<float> w = Random(n, 1, 0.02f), m(n, 0.f);
  Mat w_ref(w.begin(), w.end()), m_ref(n, 0.0);
  kernels::MuonConfig cfg;
  cfg.lr = 0.01f;
  cfg.weight_decay = 0.1f;
  const float grad_scale = 0.5f;
  for (int step = 0; step < 3; ++step) {
    const std::vector<float> g = Random(n, 100 + step);
    kernels::MuonUpdate(w.data(), g.data(), m.data(), batch, rows, cols, cfg, grad_scale);
    for (int b = 0; b < batch; ++b) {
      Mat u(size);
      for (int64_t i = 0; i < size; ++i) {
        const double gi = double{g[b * size + i]} * grad_scale;
        m_ref[b * size + i] = 0.95 * m_ref[b * size + i] + gi;
        u[i] = gi + 0.95 * m_ref[b * size + i];
      }
      const Mat x = ReferenceNewtonSchulz(u, rows, cols);
      for (int64_t i = 0; i < size; ++i) {
        double& wi = w_ref[b * size + i];
        wi = wi * (1.0 - 0.01 * 0.1) - 0.01 * 0.2 * std::sqrt(6.0) * x[i];
      }
    }
    EXPECT_LT(MaxAbsDiff(m.data(), m_ref), 1e-5) << "momentum after step " << step + 1;
    EXPECT_LT(MaxAbsDiff(w.data(), w_ref), 1e-6) << "weights after step " << step + 1;
  }
}

TEST(MuonSchedule, FollowsTheLrScheduleScaledToMuonLr) {
  moe::v1::TrainSpec t = testing::SmallShakespeareSpec().train();
  for (int step : {0, 5, 19, 20, 100, 199}) {
    EXPECT_DOUBLE_EQ(MuonLearningRateAt(t, step), LearningRateAt(t, step)) << "muon_lr unset: lr";
  }
  t.set_muon_lr(0.03);  // 10 x lr
  for (int step : {0, 5, 19, 20, 100, 199}) {
    EXPECT_NEAR(MuonLearningRateAt(t, step), 10 * LearningRateAt(t, step), 1e-12) << "step " << step;
  }
}

// One optimizer step of a Model on random gradients against the kernels applied tensor by
// tensor: AdamW everywhere for adamw (muon_lr ignored), Muon on exactly the muon tensors else;
// AdamW with the job's betas (train.beta1 / beta2).
void CheckModelStep(bool muon, int experts, float beta1 = 0.9f, float beta2 = 0.95f) {
  kernels::SetNumThreads(1);
  const testing::ModelCase c{"case", experts, experts > 1 ? 2 : 1, 4, 2, 0.0, false, 0.0f};
  ModelConfig cfg = testing::CaseConfig(c, 40, 32, 8, 24);
  cfg.muon = muon;
  cfg.adam_beta1 = beta1;
  cfg.adam_beta2 = beta2;
  auto comm = CreateSingleProcessCommunicator();
  Model model(cfg, comm.get());
  model.InitParams(5);
  model.grads() = Random(model.layout().total(), 9, 0.1f);
  const std::vector<float> w0 = model.params(), g = model.grads();
  model.OptimizerStep(1, 1e-3, 0.02, 0.1, 0.7f);
  model.OptimizerStep(2, 1e-3, 0.02, 0.1, 0.7f);  // the second step reads the stored momentum
  std::vector<float> m, v;
  model.CopyToHost(ParamSet::kAdamM, &m);
  model.CopyToHost(ParamSet::kAdamV, &v);

  int muon_tensors = 0;
  for (const ParamInfo& info : model.layout().params()) {
    std::vector<float> w(w0.begin() + info.offset, w0.begin() + info.offset + info.size);
    const float* gi = g.data() + info.offset;
    std::vector<float> em(info.size, 0.f), ev(info.size, 0.f);
    const bool by_muon = muon && info.muon;
    for (int64_t step = 1; step <= 2; ++step) {
      if (by_muon) {
        kernels::MuonConfig mc;
        mc.lr = 0.02f;
        mc.weight_decay = 0.1f;
        const int64_t rows = info.shape[info.shape.size() - 2], cols = info.shape.back();
        kernels::MuonUpdate(w.data(), gi, em.data(), info.size / (rows * cols), static_cast<int>(rows),
                            static_cast<int>(cols), mc, 0.7f);
      } else {
        kernels::AdamWConfig ac;
        ac.lr = 1e-3f;
        ac.beta1 = beta1;
        ac.beta2 = beta2;
        ac.weight_decay = info.decay ? 0.1f : 0.f;
        kernels::AdamWUpdate(w.data(), gi, em.data(), ev.data(), info.size, ac, step, 0.7f);
      }
    }
    muon_tensors += by_muon ? 1 : 0;
    for (int64_t i = 0; i < info.size; ++i) {
      ASSERT_EQ(model.params()[info.offset + i], w[i]) << info.name << " element " << i;
      ASSERT_EQ(m[info.offset + i], em[i]) << info.name << " m element " << i;
      ASSERT_EQ(v[info.offset + i], ev[i]) << info.name << " v element " << i;
    }
  }
  // Per block: wqkv, wo, w1, w3, w2 (a dense model's single expert too); none of wte, lm_head,
  // norms, routers.
  EXPECT_EQ(muon_tensors, muon ? 2 * 5 : 0);
}

TEST(MuonModel, AdamWJobsStepEveryTensorByAdamW) {
  CheckModelStep(/*muon=*/false, /*experts=*/4);
  CheckModelStep(/*muon=*/false, /*experts=*/1);
}
TEST(MuonModel, MuonStepsTheBlockMatricesAndAdamWTheRest) {
  CheckModelStep(/*muon=*/true, /*experts=*/4);
  CheckModelStep(/*muon=*/true, /*experts=*/1);
}
TEST(MuonModel, TheJobsBetasReachAdamW) {
  CheckModelStep(/*muon=*/false, /*experts=*/4, /*beta1=*/0.8f, /*beta2=*/0.99f);
  CheckModelStep(/*muon=*/true, /*experts=*/4, /*beta1=*/0.5f, /*beta2=*/0.999f);
  // Absent from a spec (one written before the keys existed): kernels::AdamWConfig's 0.9 / 0.95.
  moe::v1::JobSpec spec = testing::SmallShakespeareSpec();
  spec.mutable_train()->clear_beta1();
  spec.mutable_train()->clear_beta2();
  EXPECT_EQ(ModelConfig::FromSpec(spec, 65).adam_beta1, kernels::AdamWConfig{}.beta1);
  EXPECT_EQ(ModelConfig::FromSpec(spec, 65).adam_beta2, kernels::AdamWConfig{}.beta2);
  spec.mutable_train()->set_beta2(0.99);
  EXPECT_EQ(ModelConfig::FromSpec(spec, 65).adam_beta2, 0.99f);
}

moe::v1::JobSpec MuonSpec(int steps) {
  moe::v1::JobSpec spec = testing::SmallShakespeareSpec();
  spec.mutable_train()->set_steps(steps);
  spec.mutable_train()->set_eval_every(steps);
  spec.mutable_train()->set_eval_batches(1);
  spec.mutable_train()->set_log_every(1);
  spec.mutable_train()->set_optimizer(moe::v1::OPTIMIZER_MUON);
  spec.mutable_train()->set_muon_lr(0.02);
  return spec;
}

std::vector<double> Train(const moe::v1::JobSpec& spec, Dataset* data) {
  auto comm = CreateSingleProcessCommunicator();
  std::unique_ptr<Trainer> t = testing::NewTrainer(spec, comm.get(), data);
  if (t == nullptr) return {};
  TrainOutcome outcome;
  EXPECT_TRUE(t->Run(&outcome).ok());
  return testing::Losses(*t);
}

double MeanOfLast(const std::vector<double>& v, int n) {
  double s = 0;
  for (int i = 0; i < n; ++i) s += v[v.size() - 1 - i];
  return s / n;
}

TEST(MuonTraining, SmallShakespeareLearnsWithMuon) {
  kernels::SetNumThreads(1);
  const moe::v1::JobSpec spec = MuonSpec(40);
  Dataset data = *LoadDataset(spec.data());
  const std::vector<double> muon = Train(spec, &data);
  ASSERT_EQ(muon.size(), 40u);
  for (double l : muon) ASSERT_TRUE(std::isfinite(l));
  // Char-level Shakespeare starts at ln 65 ~ 4.2; 40 steps of either optimizer bring it well down.
  EXPECT_LT(MeanOfLast(muon, 5), muon.front() - 0.5);
  moe::v1::JobSpec adamw = spec;
  adamw.mutable_train()->set_optimizer(moe::v1::OPTIMIZER_ADAMW);
  adamw.mutable_train()->set_muon_lr(0);
  const std::vector<double> base = Train(adamw, &data);
  ASSERT_EQ(base.size(), muon.size());
  EXPECT_NE(base[5], muon[5]) << "the optimizer option changed nothing";
  // The momentum stored as int8 (train.optimizer_state): rounded differently, the same training
  // (memory_options_test's bar for AdamW's moments).
  moe::v1::JobSpec int8 = spec;
  int8.mutable_train()->set_optimizer_state(moe::v1::STATE_INT8);
  const std::vector<double> compact = Train(int8, &data);
  ASSERT_EQ(compact.size(), muon.size());
  EXPECT_NEAR(MeanOfLast(compact, 5), MeanOfLast(muon, 5), 0.04 * MeanOfLast(muon, 5));
  std::printf("mean of the last 5 losses: adamw %.4f muon %.4f muon int8 %.4f\n", MeanOfLast(base, 5),
              MeanOfLast(muon, 5), MeanOfLast(compact, 5));
}

TEST(MuonTraining, Int8MomentumResumesToTheSameCurve) {
  kernels::SetNumThreads(1);
  moe::v1::JobSpec spec = MuonSpec(10);
  spec.mutable_train()->set_optimizer_state(moe::v1::STATE_INT8);
  Dataset data = *LoadDataset(spec.data());
  const std::vector<double> straight = Train(spec, &data);
  auto comm = CreateSingleProcessCommunicator();
  const std::vector<double> halves =
      testing::TrainInTwoHalves(spec, comm.get(), &data, testing::MakeTempDir("muon-resume-"));
  ASSERT_EQ(halves.size(), straight.size());
  for (size_t i = 0; i < straight.size(); ++i) EXPECT_EQ(halves[i], straight[i]) << "step " << i + 1;
}

}  // namespace
}  // namespace moe
