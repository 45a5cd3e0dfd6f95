#include "common/memory_fit.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <functional>
#include <string>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/backend_limits.h"

namespace moe {
namespace {

std::string Size(int64_t bytes) { return FormatBytes(static_cast<double>(bytes)); }

// A lever: spec with `change` applied, its saving against `need`, and whether it is enough.
MemoryLever Lever(const v1::JobSpec& changed, int64_t need, int64_t have, std::string change, std::string note) {
  const int64_t after = ComputeModelStats(changed).total_bytes;
  MemoryLever l;
  l.change = std::move(change);
  l.saving = std::max<int64_t>(0, need - after);
  l.enough = after <= have;
  l.note = std::move(note);
  return l;
}

std::string NotYet(RecipeOption option) {
  return BackendRuns(/*cuda=*/true, option) ? "" : "not yet run by the cuda backend";
}

}  // namespace

absl::StatusOr<int64_t> ParseMemorySize(absl::string_view text) {
  const std::string forms = "write it as a number and a unit, e.g. 80GiB, 141GB, 24GiB or 512MiB";
  std::string t(absl::StripAsciiWhitespace(text));
  size_t i = 0;
  while (i < t.size() && (std::isdigit(static_cast<unsigned char>(t[i])) || t[i] == '.')) ++i;
  const std::string number = t.substr(0, i);
  std::string unit(absl::StripAsciiWhitespace(absl::string_view(t).substr(i)));
  double value = 0;
  if (number.empty() || !absl::SimpleAtod(number, &value) || !std::isfinite(value)) {
    return absl::InvalidArgumentError(absl::StrCat("'", text, "' is not a memory size; ", forms));
  }
  const std::string u = absl::AsciiStrToLower(unit);
  double scale = 0;
  if (u.empty() || u == "b") {
    scale = 1;
  } else if (u == "kib" || u == "ki") {
    scale = 1024.0;
  } else if (u == "mib" || u == "mi") {
    scale = 1024.0 * 1024;
  } else if (u == "gib" || u == "gi") {
    scale = 1024.0 * 1024 * 1024;
  } else if (u == "tib" || u == "ti") {
    scale = 1024.0 * 1024 * 1024 * 1024;
  } else if (u == "kb" || u == "k") {
    scale = 1e3;
  } else if (u == "mb" || u == "m") {
    scale = 1e6;
  } else if (u == "gb" || u == "g") {
    scale = 1e9;
  } else if (u == "tb" || u == "t") {
    scale = 1e12;
  } else {
    return absl::InvalidArgumentError(absl::StrCat("'", text, "': unknown unit '", unit,
                                                   "' (B, kB, MB, GB, TB, KiB, MiB, GiB, TiB); ", forms));
  }
  const double bytes = value * scale;
  // A bare number is bytes, and no GPU has less than a MiB: "80" meant 80GiB or 80GB.
  if (u.empty() && bytes < (1 << 20)) {
    return absl::InvalidArgumentError(absl::StrCat("'", text, "' has no unit, so it is ", number,
                                                   " bytes: no GPU is that small (did you mean ", number, "GiB or ",
                                                   number, "GB?); ", forms));
  }
  if (!(bytes >= 1)) {
    return absl::InvalidArgumentError(absl::StrCat("'", text, "' is no memory at all; ", forms));
  }
  if (bytes > 1e18) {
    return absl::InvalidArgumentError(absl::StrCat("'", text, "' is more memory than any GPU has; ", forms));
  }
  return static_cast<int64_t>(std::llround(bytes));
}

MemoryFit CheckGpuFit(v1::JobSpec spec, int64_t gpu_bytes) {
  if (spec.model().vocab_size() == 0) spec.mutable_model()->set_vocab_size(256);
  spec.mutable_resources()->set_device(v1::DEVICE_CUDA);
  MemoryFit fit;
  fit.stats = ComputeModelStats(spec);
  fit.need = fit.stats.total_bytes;
  fit.have = gpu_bytes;
  fit.fits = fit.need <= fit.have;
  if (fit.fits) return fit;

  const v1::TrainSpec& t = spec.train();
  const int W = std::max(1, spec.resources().ranks());
  const int accum = std::max(1, t.grad_accum());
  const int E = spec.model().moe().num_experts();
  if (t.recompute() != v1::RECOMPUTE_FULL) {
    v1::JobSpec j = spec;
    j.mutable_train()->set_recompute(v1::RECOMPUTE_FULL);
    fit.levers.push_back(Lever(j, fit.need, fit.have, "train.recompute: full", NotYet(RecipeOption::kRecompute)));
  }
  if (t.optimizer_state() != v1::STATE_INT8) {
    v1::JobSpec j = spec;
    j.mutable_train()->set_optimizer_state(v1::STATE_INT8);
    fit.levers.push_back(
        Lever(j, fit.need, fit.have, "train.optimizer_state: int8", NotYet(RecipeOption::kCompactState)));
  }
  if (t.master_weights() != v1::PRECISION_BF16) {
    v1::JobSpec j = spec;
    j.mutable_train()->set_master_weights(v1::PRECISION_BF16);
    fit.levers.push_back(
        Lever(j, fit.need, fit.have, "train.master_weights: bf16", NotYet(RecipeOption::kBf16MasterWeights)));
  }
  // More ranks: the fewest that fit (experts and the batch still split evenly), else the most
  // that split evenly up to 64 times as many.
  {
    v1::JobSpec best;
    int best_w = 0;
    for (int w = W + 1; w <= W * 64 && w <= 65536; ++w) {
      if ((E > 1 && E % w != 0) || t.batch_size() % (w * accum) != 0) continue;
      v1::JobSpec j = spec;
      j.mutable_resources()->set_ranks(w);
      best = j;
      best_w = w;
      if (ComputeModelStats(j).total_bytes <= fit.have) break;
    }
    if (best_w > 0) {
      fit.levers.push_back(Lever(best, fit.need, fit.have, absl::StrCat("resources.ranks: ", best_w, " (GPUs)"),
                                 E > 1 ? absl::StrCat(E / best_w, " experts and ", t.batch_size() / best_w,
                                                      " sequences per GPU")
                                       : absl::StrCat(t.batch_size() / best_w, " sequences per GPU")));
    }
  }
  // A smaller micro-batch: the least grad_accum that fits, else a micro-batch of one sequence.
  {
    const int per_rank = t.batch_size() / W;
    v1::JobSpec best;
    int best_a = 0;
    for (int a = accum + 1; a <= per_rank; ++a) {
      if (per_rank % a != 0) continue;
      v1::JobSpec j = spec;
      j.mutable_train()->set_grad_accum(a);
      best = j;
      best_a = a;
      if (ComputeModelStats(j).total_bytes <= fit.have) break;
    }
    if (best_a > 0) {
      fit.levers.push_back(Lever(best, fit.need, fit.have, absl::StrCat("train.grad_accum: ", best_a),
                                 absl::StrCat("micro-batches of ", per_rank / best_a,
                                              per_rank / best_a == 1 ? " sequence" : " sequences",
                                              " per GPU, the same global batch")));
    }
  }
  // A change the estimate says saves nothing (more ranks that only add exchange buffers) is no
  // way to make the job fit: not offered.
  fit.levers.erase(std::remove_if(fit.levers.begin(), fit.levers.end(),
                                  [](const MemoryLever& l) { return l.saving <= 0; }),
                   fit.levers.end());
  std::stable_sort(fit.levers.begin(), fit.levers.end(),
                   [](const MemoryLever& a, const MemoryLever& b) { return a.saving > b.saving; });
  return fit;
}

std::string DescribeComponents(const ModelStats& s) {
  std::string out = absl::StrCat("weights ", Size(s.weight_bytes), ", grads ", Size(s.grad_bytes), ", optimizer ",
                                 Size(s.optimizer_bytes), ", activations ", Size(s.activation_bytes),
                                 ", workspace ", Size(s.workspace_bytes));
  if (s.runtime_bytes > 0) absl::StrAppend(&out, ", CUDA runtime ", Size(s.runtime_bytes));
  return out;
}

std::string DescribeFit(const MemoryFit& fit) {
  if (fit.fits) {
    std::string out = absl::StrCat("fits: needs about ", Size(fit.need), " of the GPU's ", Size(fit.have), " (",
                                   Size(fit.have - fit.need), " to spare)");
    if (static_cast<double>(fit.have - fit.need) < kCudaEstimateShortfall * static_cast<double>(fit.need)) {
      absl::StrAppend(&out, ", narrowly: a bf16 MoE job's peak has run up to ",
                      static_cast<int>(kCudaEstimateShortfall * 100 + 0.5),
                      "% over this estimate (the experts' rows grow with the first steps' uneven routing): "
                      "leave that much free, or check against a GPU that much smaller for what would lower it");
    }
    return out;
  }
  std::string out = absl::StrCat("does not fit: needs about ", Size(fit.need), " per GPU (",
                                 DescribeComponents(fit.stats), "), the GPU has ", Size(fit.have), ": ",
                                 Size(fit.need - fit.have), " over");
  if (fit.levers.empty()) {
    absl::StrAppend(&out, "; make the model smaller (model.d_model, n_layers, moe.expert_hidden)");
    return out;
  }
  std::vector<std::string> levers;
  for (const MemoryLever& l : fit.levers) levers.push_back(DescribeLever(l));
  absl::StrAppend(&out, "; what would make it fit: ", absl::StrJoin(levers, "; "));
  return out;
}

std::string DescribeLever(const MemoryLever& l) {
  std::string s = absl::StrCat(l.change, " saves about ", Size(l.saving), l.enough ? " (enough alone)" : "");
  if (!l.note.empty()) absl::StrAppend(&s, " [", l.note, "]");
  return s;
}

}  // namespace moe
