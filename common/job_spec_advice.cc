// Advice on a valid job: values inside their ranges that are almost surely a mistake. moectl
// validate and submit print each as a warning and go on (the job is still valid).
#include <cmath>
#include <cstdint>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/job_spec_internal.h"
#include "common/number_text.h"

namespace moe::job_spec_internal {

namespace {

// Above this AdamW learning rate a run of any model we train diverges within a few steps.
constexpr double kHighLearningRate = 0.1;

}  // namespace

std::vector<SpecError> AdviseJobSpec(const moe::v1::JobSpec& spec) {
  std::vector<SpecError> out;
  auto warn = [&](const std::string& field, std::string message) {
    SpecError e;
    e.field = field;
    e.message = std::move(message);
    out.push_back(std::move(e));
  };
  const auto& t = spec.train();
  if (t.lr() > kHighLearningRate) {
    // A guess only where it lands in the usual range (5 -> 0.005: a lost "e-3"); else the range.
    // The guess is computed, not written: 6 digits (0.12 / 1000 reads 0.00012, not 0.000119999...).
    const double guess = t.lr() / 1000;
    warn("train.lr", absl::StrCat(FormatDouble(t.lr()),
                                  " is far above what AdamW trains with (1e-4 to 1e-2 for most models): such a run "
                                  "usually diverges in its first steps and ends FAILED",
                                  guess >= 1e-5 && guess <= 1e-1
                                      ? absl::StrCat("; did you mean ", Significant(guess, 6), "?")
                                      : std::string("; give a value in that range")));
  }
  // Evaluation: eval_batches batches of batch_size sequences (grad_accum micro-batches each, a
  // forward each) at every eval_every-th step and at the last; training: grad_accum micro-batches
  // a step, each a forward and a backward (about three forwards).
  if (t.steps() > 0 && t.eval_every() > 0 && t.eval_batches() > 0 && t.grad_accum() > 0) {
    // In 64 bits: steps 2147483647 with eval_every 1 overflowed int and the warning went away.
    const double evals = static_cast<double>(int64_t{t.steps()} / t.eval_every() + 1);
    const double eval_forwards = evals * t.eval_batches() * t.grad_accum();
    const double train_forwards = 3.0 * static_cast<double>(t.steps()) * t.grad_accum();
    if (eval_forwards > train_forwards) {
      const double ratio = eval_forwards / train_forwards;
      warn("train.eval_batches",
           absl::StrCat(t.eval_batches(), " batches ",
                        t.eval_every() == 1 ? std::string("every step") : absl::StrCat("every ", t.eval_every(), " steps"),
                        ": evaluation would take about ",
                        ratio < 10 ? absl::StrFormat("%.1f", ratio) : absl::StrCat(std::llround(ratio)),
                        " times as long as the training itself; lower train.eval_batches or raise train.eval_every"));
    }
  }
  return out;
}

std::vector<SpecError> UnreadKeyWarnings(const moe::v1::JobSpec& spec, const std::set<std::string>& present) {
  std::vector<SpecError> out;
  auto warn = [&](const std::string& field, std::string message) {
    if (present.count(field) == 0) return;
    SpecError e;
    e.field = field;
    e.message = std::move(message);
    out.push_back(std::move(e));
  };
  if (spec.train().schedule() != moe::v1::SCHEDULE_WSD) {
    warn("train.decay_fraction", "has no effect: only schedule wsd reads it; remove it or set train.schedule: wsd");
  }
  if (spec.model().moe().num_experts() == 1) {
    for (const char* key : {"model.moe.aux_loss_coef", "model.moe.z_loss_coef", "model.moe.capacity_factor"}) {
      warn(key, "has no effect on a dense model (model.moe.num_experts 1 has no router); remove it or set "
                "num_experts above 1");
    }
  }
  return out;
}

}  // namespace moe::job_spec_internal
