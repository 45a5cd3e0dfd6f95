// The learning-rate schedule of MODEL.md, shared by every backend: linear warm-up over
// warmup_steps (step s gets lr * (s+1)/warmup), then cosine decay to min_lr at the last step.
#pragma once

namespace moe {

double LearningRateAt(int step, int total_steps, double lr, double min_lr, int warmup_steps);

}  // namespace moe
