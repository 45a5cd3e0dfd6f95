#include "common/schedule.h"

#include <algorithm>
#include <cmath>

namespace moe {

double LearningRateAt(int step, int total_steps, double lr, double min_lr, int warmup_steps,
                      moe::v1::Schedule schedule, double decay_fraction) {
  if (step < warmup_steps) return lr * (step + 1) / warmup_steps;
  if (schedule == moe::v1::SCHEDULE_CONSTANT) return lr;
  if (schedule == moe::v1::SCHEDULE_WSD) {
    // The decay takes the last ceil(decay_fraction * steps) steps (at least one, and none of the
    // warm-up): lr at its first step, min_lr at the last step of the run.
    const int last = total_steps - 1;
    const int decay = std::clamp(static_cast<int>(std::ceil(decay_fraction * total_steps)), 1,
                                 std::max(1, total_steps - warmup_steps));
    const int start = total_steps - decay;
    if (step < start) return lr;
    if (decay == 1) return min_lr;
    const double ratio = std::min(1.0, static_cast<double>(step - start) / (last - start));
    return lr + (min_lr - lr) * ratio;
  }
  double ratio = static_cast<double>(step - warmup_steps) / std::max(1, total_steps - warmup_steps);
  ratio = std::min(ratio, 1.0);
  return min_lr + 0.5 * (1.0 + std::cos(M_PI * ratio)) * (lr - min_lr);
}

double DecayFraction(const moe::v1::TrainSpec& t) { return t.decay_fraction() > 0 ? t.decay_fraction() : 0.2; }

double MuonPeakLr(const moe::v1::TrainSpec& t) { return t.muon_lr() > 0 ? t.muon_lr() : t.lr(); }

double LearningRateAt(const moe::v1::TrainSpec& t, int step) {
  return LearningRateAt(step, t.steps(), t.lr(), t.min_lr(), t.warmup_steps(), t.schedule(), DecayFraction(t));
}

double MuonLearningRateAt(const moe::v1::TrainSpec& t, int step) {
  if (t.muon_lr() <= 0 || t.lr() <= 0) return LearningRateAt(t, step);
  return LearningRateAt(t, step) * (MuonPeakLr(t) / t.lr());
}

}  // namespace moe
