// The learning-rate schedules (common/schedule.h): warm-up, then cosine, wsd or constant.
#include <cmath>

#include "common/schedule.h"
#include "gtest/gtest.h"

namespace moe {
namespace {

TEST(Schedule, CosineIsTheDefaultAndItsClosedForm) {
  const int steps = 50, warmup = 5;
  const double lr = 1e-3, min_lr = 1e-4;
  for (int s = 0; s < steps; ++s) {
    double want = 0;
    if (s < warmup) {
      want = lr * (s + 1) / warmup;
    } else {
      const double ratio = static_cast<double>(s - warmup) / (steps - warmup);
      want = min_lr + 0.5 * (1 + std::cos(M_PI * ratio)) * (lr - min_lr);
    }
    // Bit for bit: the default path is the schedule every earlier job trained with.
    EXPECT_EQ(LearningRateAt(s, steps, lr, min_lr, warmup), want) << s;
    EXPECT_EQ(LearningRateAt(s, steps, lr, min_lr, warmup, v1::SCHEDULE_COSINE, 0.2), want) << s;
  }
}

TEST(Schedule, WsdHoldsThenDecaysLinearlyToMinLrAtTheLastStep) {
  const int steps = 100, warmup = 10;
  const double lr = 1.0, min_lr = 0.1;
  auto at = [&](int s) { return LearningRateAt(s, steps, lr, min_lr, warmup, v1::SCHEDULE_WSD, 0.2); };
  EXPECT_DOUBLE_EQ(at(0), 0.1);  // warm-up as before
  EXPECT_DOUBLE_EQ(at(9), 1.0);
  for (int s = 10; s <= 80; ++s) EXPECT_DOUBLE_EQ(at(s), lr) << s;  // stable
  // The last 20 steps (80..99) decay from lr to min_lr.
  EXPECT_DOUBLE_EQ(at(99), min_lr);
  for (int s = 81; s < 99; ++s) {
    EXPECT_LT(at(s), at(s - 1)) << s;
    EXPECT_NEAR(at(s), lr + (min_lr - lr) * (s - 80) / 19.0, 1e-12) << s;
  }
  // A decay longer than what follows the warm-up starts right after it.
  EXPECT_DOUBLE_EQ(LearningRateAt(10, steps, lr, min_lr, warmup, v1::SCHEDULE_WSD, 1.0), lr);
  EXPECT_DOUBLE_EQ(LearningRateAt(99, steps, lr, min_lr, warmup, v1::SCHEDULE_WSD, 1.0), min_lr);
  // One step of decay: min_lr at the last step only.
  EXPECT_DOUBLE_EQ(LearningRateAt(98, steps, lr, min_lr, warmup, v1::SCHEDULE_WSD, 0.001), lr);
  EXPECT_DOUBLE_EQ(LearningRateAt(99, steps, lr, min_lr, warmup, v1::SCHEDULE_WSD, 0.001), min_lr);
}

TEST(Schedule, ConstantHoldsAfterTheWarmup) {
  for (int s = 3; s < 20; ++s) {
    EXPECT_EQ(LearningRateAt(s, 20, 0.5, 0.05, 3, v1::SCHEDULE_CONSTANT, 0.2), 0.5);
  }
  EXPECT_DOUBLE_EQ(LearningRateAt(0, 20, 0.5, 0.05, 3, v1::SCHEDULE_CONSTANT, 0.2), 0.5 / 3);
}

TEST(Schedule, TrainSpecReadsItsScheduleAndDefaultsAnUnsetDecayFraction) {
  v1::TrainSpec t;
  t.set_steps(100);
  t.set_lr(1.0);
  t.set_min_lr(0.0);
  t.set_warmup_steps(0);
  t.set_schedule(v1::SCHEDULE_WSD);  // decay_fraction 0: 0.2
  EXPECT_DOUBLE_EQ(LearningRateAt(t, 80), 1.0);
  EXPECT_LT(LearningRateAt(t, 81), 1.0);
  t.set_schedule(v1::SCHEDULE_UNSPECIFIED);  // cosine
  EXPECT_EQ(LearningRateAt(t, 40), LearningRateAt(40, 100, 1.0, 0.0, 0));
}

}  // namespace
}  // namespace moe
