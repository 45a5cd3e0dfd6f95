// The learning-rate schedules of MODEL.md, shared by every backend: linear warm-up over
// warmup_steps (step s gets lr * (s+1)/warmup), then cosine decay to min_lr at the last step
// (the default), wsd (hold lr, then linear to min_lr over the last decay_fraction of the steps,
// reaching it at the last step), or constant (hold lr).
#pragma once

#include "moe/v1/job.pb.h"

namespace moe {

double LearningRateAt(int step, int total_steps, double lr, double min_lr, int warmup_steps,
                      moe::v1::Schedule schedule = moe::v1::SCHEDULE_COSINE, double decay_fraction = 0.2);

// A train spec's decay_fraction (wsd), its default (0.2) when unset.
double DecayFraction(const moe::v1::TrainSpec& train);

// Muon's peak learning rate: muon_lr, or lr when muon_lr is 0 (unset).
double MuonPeakLr(const moe::v1::TrainSpec& train);

// The schedule of a train spec (step is 0-based).
double LearningRateAt(const moe::v1::TrainSpec& train, int step);

// Muon's learning rate (train.optimizer muon): the same schedule scaled by muon_lr / lr, so it
// peaks at muon_lr (lr when muon_lr is 0, unset).
double MuonLearningRateAt(const moe::v1::TrainSpec& train, int step);

}  // namespace moe
