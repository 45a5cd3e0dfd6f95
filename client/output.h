// moectl's machine-readable output: jobs and metric points as JSON a script can read (numbers
// as numbers, absent values absent, snake_case names) and as CSV rows; and table helpers.
#pragma once

#include <string>
#include <vector>

#include "common/number_text.h"
#include "moe/v1/control.pb.h"
#include "nlohmann/json.hpp"

namespace moe::client {

using Json = nlohmann::ordered_json;

// id, name, state, reason, step, steps, loss, val_loss, best_val_loss, tokens_per_s, eta_s,
// restarts, max_restarts, ranks, device, launcher, gpus, slurm_job_id, node_list,
// created/started/ended_unix_ms, state_dir; a field the job does not have is left out.
Json JobToJson(const moe::v1::Job& job);
// step, loss, val_loss, aux_loss, z_loss, lr, grad_norm, tokens_per_s, mfu, step_ms, times,
// peak_memory_mb, unix_ms, layers [{layer, tokens_per_expert, load_imbalance, drop_rate,
// router_entropy, and router_bias_spread, expert_dropout_rate where the job has them}].
Json PointToJson(const moe::v1::MetricPoint& point);

// One CSV field, quoted when it needs to be.
std::string CsvField(const std::string& v);
std::vector<std::string> JobCsvHeader();
std::vector<std::string> JobCsvRow(const moe::v1::Job& job);
std::string CsvLine(const std::vector<std::string>& fields);

// At most width characters, "..." at the end when cut (long reasons in tables).
std::string Clip(const std::string& text, size_t width);

}  // namespace moe::client
