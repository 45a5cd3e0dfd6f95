// safetensors files (written F32 or BF16; read F32, and BF16/F16 widened to F32 on request): the format Python's safetensors.torch.load_file reads, and the
// JSON helpers its header needs (reading is protobuf's JSON parser, the project's one reader).
// Layout: u64 little-endian header length N, N bytes of JSON header (padded with spaces to a
// multiple of 8), then the tensors' raw little-endian bytes back to back. Header:
//   {"__metadata__": {"k": "v"}, "name": {"dtype": "F32", "shape": [..], "data_offsets": [b, e]}}
// with offsets relative to the start of the data.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace google::protobuf {
class Struct;
}  // namespace google::protobuf

namespace moe {

struct NamedTensor {
  std::string name;
  std::vector<int64_t> shape;
  std::vector<float> data;  // row-major, prod(shape) elements
};

// How tensors are stored in a file; in memory they are always float.
enum class TensorDtype { kF32, kBF16 };

struct SafetensorsFile {
  std::vector<NamedTensor> tensors;             // in file (data offset) order
  std::map<std::string, std::string> metadata;  // "__metadata__", {} if absent
};

// Writes path atomically (temp file, fsync, rename). Tensors are stored in the given order.
// A tensor whose data size is not prod(shape), or a repeated or empty name, is InvalidArgument.
absl::Status WriteSafetensors(const std::string& path, const std::vector<NamedTensor>& tensors,
                              const std::map<std::string, std::string>& metadata = {});
// The same, for tensors held elsewhere (no copy of the data), stored as dtype (BF16: rounded to
// nearest even, as torch's .to(torch.bfloat16) does; NaN stays NaN).
absl::Status WriteSafetensors(const std::string& path, const std::vector<const NamedTensor*>& tensors,
                              const std::map<std::string, std::string>& metadata = {},
                              TensorDtype dtype = TensorDtype::kF32);

struct SafetensorsReadOptions {
  // Also accept BF16 and F16 tensors (other people's checkpoints), widened exactly to float.
  bool widen_to_f32 = false;
};

// Reads and validates: header length and JSON, dtype F32, shape vs byte length, offsets that
// tile the data exactly. Errors name the file (`what`) and the problem.
absl::StatusOr<SafetensorsFile> ReadSafetensors(const std::string& path,
                                                const SafetensorsReadOptions& options = {});
absl::StatusOr<SafetensorsFile> ParseSafetensors(std::string_view bytes, const std::string& what,
                                                 const SafetensorsReadOptions& options = {});

// The 16-bit float formats, one value at a time.
uint16_t FloatToBf16(float f);  // round to nearest even
float Bf16ToFloat(uint16_t h);
float F16ToFloat(uint16_t h);

// The JSON helpers the header, the checkpoint metadata and GPT-2's encoder.json use.
std::string JsonQuote(std::string_view s);  // "..." with the escapes JSON requires
// Parses a JSON document whose top level is an object into *out (numbers become doubles).
// A syntax error is InvalidArgument "JSON error at byte N: <protobuf's reason>" (or with the
// context around the failure when protobuf's report does not pin the byte).
absl::Status ParseJsonObject(std::string_view json, google::protobuf::Struct* out);
// A JSON object whose values are all strings.
absl::StatusOr<std::map<std::string, std::string>> ParseJsonStringMap(std::string_view json);

}  // namespace moe
