// A JSON object read with the byte of its first error: for safetensors headers, Hugging Face
// config.json and index files, checkpoints' spec.json (worker/) and moectl validate's checks of
// model.init_from (common/job_spec_data.cc).
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "google/protobuf/struct.pb.h"

namespace moe {

// Parses a JSON document whose top level is an object into *out (numbers become doubles).
// A syntax error is InvalidArgument "JSON error at byte N: <protobuf's reason>" (or with the
// context around the failure when protobuf's report does not pin the byte).
// Objects and arrays nested deeper than kMaxJsonDepth are InvalidArgument at the byte where the
// nesting passes it (protobuf's parser slows with depth and stops near 40 levels).
inline constexpr int kMaxJsonDepth = 32;
absl::Status ParseJsonObject(std::string_view json, google::protobuf::Struct* out);

// A JSON object of string -> integer (GPT-2's encoder.json) through ParseJsonObject; a value that
// is no integer below 2^53 in magnitude is InvalidArgument naming its key.
absl::StatusOr<std::map<std::string, int64_t>> ParseJsonStringIntMap(std::string_view json);

}  // namespace moe
