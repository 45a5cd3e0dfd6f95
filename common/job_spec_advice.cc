// Advice on a valid job: values inside their ranges that are almost surely a mistake. moectl
// validate and submit print each as a warning and go on (the job is still valid).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/expert_capacity.h"
#include "common/job_spec_internal.h"
#include "common/number_text.h"
#include "common/schedule.h"

namespace moe::job_spec_internal {

namespace {

// Above this AdamW learning rate a run of any model we train diverges within a few steps.
constexpr double kHighLearningRate = 0.1;

// Whether the schedule of t lowers the lr below its peak at any step past the warm-up: the last
// step's lr, from the schedule code itself (every schedule is lowest at the last step). Below the
// peak by more than rounding: a decay that happens ends at least half way to min_lr.
bool Decays(const moe::v1::TrainSpec& t) {
  return LearningRateAt(t, t.steps() - 1) < t.lr() - 1e-6 * (t.lr() - t.min_lr());
}

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
  // Capacity: each rank routes its micro-batch (batch_size / (grad_accum * ranks) sequences of
  // seq_len tokens) with a capacity per expert; even routing that is perfectly balanced (n k / E
  // assignments an expert) keeps at most E * capacity of the n k assignments.
  const auto& router = spec.model().moe();
  const int64_t ranks_accum = int64_t{spec.resources().ranks()} * t.grad_accum();
  if (router.num_experts() > 1 && router.top_k() >= 1 && router.capacity_factor() > 0 && ranks_accum > 0 &&
      t.batch_size() >= ranks_accum && spec.model().seq_len() > 0) {
    const int64_t n = t.batch_size() / ranks_accum * int64_t{spec.model().seq_len()};
    const int k = router.top_k(), e = router.num_experts();
    const double assignments = static_cast<double>(n) * k;
    const int64_t capacity = ExpertCapacity(router.capacity_factor(), n, k, e);
    const double kept = std::min(1.0, static_cast<double>(capacity) * e / assignments);
    const double per_expert = assignments / e;
    // Most assignments dropped, or a capacity under one token rounded up to one that drops some.
    if (kept < 0.5 || (router.capacity_factor() * per_expert < 1 && kept < 1)) {
      warn("model.moe.capacity_factor",
           absl::StrCat(FormatDouble(router.capacity_factor()), " lets each expert take only ", capacity,
                        capacity == 1 ? " token" : " tokens", " of a rank's micro-batch (ceil(",
                        FormatDouble(router.capacity_factor()), " * ", n, " tokens * top_k ", k, " / ", e,
                        " experts)", router.capacity_factor() * per_expert < 1 ? ", rounded up from below 1" : "",
                        ") where an even split gives each ", Significant(per_expert, 4),
                        ": even perfectly balanced routing drops ", Significant(100 * (1 - kept), 3),
                        "% of the tokens' expert assignments; use 1 (no drops when balanced; 1.25 leaves room "
                        "for imbalance) or 0 for dropless"));
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
  // A decaying schedule whose warm-up takes every step (warmup_steps >= steps; cosine's first
  // step past the warm-up is still at the peak, so steps - 1 there too): the last step trains at
  // the peak lr and min_lr is never reached. Said when the file asks for a decay (a schedule,
  // min_lr, warmup_steps or decay_fraction written); a short job of steps alone keeps its
  // default warm-up (min(100, steps)) quietly.
  const auto& t = spec.train();
  const bool asks_decay = present.count("train.schedule") || present.count("train.min_lr") ||
                          present.count("train.warmup_steps") || present.count("train.decay_fraction");
  if (asks_decay && t.schedule() != moe::v1::SCHEDULE_CONSTANT && t.steps() >= 1 && t.min_lr() < t.lr() &&
      !Decays(t)) {
    // What a usual warm-up (a tenth of the steps) would do: when even that does not decay (one
    // step of cosine), the warm-up is not what stops it.
    moe::v1::TrainSpec usual = t;
    usual.set_warmup_steps(t.steps() / 10);
    if (Decays(usual)) {
      SpecError e;
      e.field = "train.warmup_steps";
      e.message = absl::StrCat(
          present.count("train.warmup_steps") ? "the warm-up (" : "the default warm-up (min(100, train.steps): ",
          t.warmup_steps(), " of the ", t.steps(), " steps) leaves the ",
          EnumName(moe::v1::Schedule_descriptor(), t.schedule()),
          " schedule no step to decay in: the last step trains at the peak lr ", FormatDouble(t.lr()),
          " and never reaches min_lr ", FormatDouble(t.min_lr()), "; lower train.warmup_steps (a tenth of the steps, ",
          usual.warmup_steps(), ", is usual) or raise train.steps, or set train.schedule: constant for a constant lr");
      out.push_back(std::move(e));
    }
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
