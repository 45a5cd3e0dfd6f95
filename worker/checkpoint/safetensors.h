// safetensors files (written F32 or BF16; read F32, and BF16/F16 widened to F32 on request): the format Python's safetensors.torch.load_file reads, and the
// JSON helpers its header needs (reading is protobuf's JSON parser, the project's one reader).
// Layout: u64 little-endian header length N, N bytes of JSON header (padded with spaces to a
// multiple of 8), then the tensors' raw little-endian bytes back to back. Header:
//   {"__metadata__": {"k": "v"}, "name": {"dtype": "F32", "shape": [..], "data_offsets": [b, e]}}
// with offsets relative to the start of the data.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/json_object.h"

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

// Names and shapes of a file's tensors, known before their data.
struct TensorSpec {
  std::string name;
  std::vector<int64_t> shape;
};

// Writes one safetensors file tensor by tensor: the header (every tensor's dtype, shape and
// offsets) goes first, then each tensor's bytes as they arrive, hashed (XXH64) on the way, so
// no more than one tensor need be in memory. Into a temp file, renamed into place by Finish.
class SafetensorsWriter {
 public:
  // A repeated, empty or reserved name, or a negative dimension, is InvalidArgument.
  static absl::StatusOr<std::unique_ptr<SafetensorsWriter>> Create(
      const std::string& path, const std::vector<TensorSpec>& tensors,
      const std::map<std::string, std::string>& metadata = {}, TensorDtype dtype = TensorDtype::kF32);
  ~SafetensorsWriter();  // an unfinished file's temp file is removed
  SafetensorsWriter(const SafetensorsWriter&) = delete;
  SafetensorsWriter& operator=(const SafetensorsWriter&) = delete;

  // The next tensor in the order given to Create, whole: count must be prod(shape).
  absl::Status Write(std::string_view name, const float* data, size_t count);
  // After the last tensor: fsync, rename into place, fsync the directory.
  absl::Status Finish();
  uint64_t size() const;   // bytes written so far
  uint64_t xxh64() const;  // XXH64 (seed 0) of those bytes

 private:
  struct State;
  explicit SafetensorsWriter(std::unique_ptr<State> state);
  std::unique_ptr<State> s_;
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

// One tensor as a file's header lists it.
struct TensorEntry {
  std::string name;
  std::vector<int64_t> shape;
  std::string dtype;           // "F32", or "BF16"/"F16" when widening
  uint64_t begin = 0, end = 0;  // byte range, relative to the start of the data
  size_t elements() const;
};

// A file's header, validated against the file's size (offsets tile the data exactly).
struct SafetensorsHeader {
  std::vector<TensorEntry> tensors;             // in file (data offset) order
  std::map<std::string, std::string> metadata;  // "__metadata__", {} if absent
  uint64_t data_start = 0;                      // 8 + header length
};

// Reads a file's header only, then tensors (or slices of them) one at a time with pread, so a
// file of any size is read through the caller's buffer. Move-only; owns the open file.
class SafetensorsReader {
 public:
  static absl::StatusOr<SafetensorsReader> Open(const std::string& path,
                                                const SafetensorsReadOptions& options = {});
  SafetensorsReader(SafetensorsReader&& other) noexcept;
  SafetensorsReader& operator=(SafetensorsReader&& other) noexcept;
  ~SafetensorsReader();

  const SafetensorsHeader& header() const { return header_; }
  const std::string& path() const { return path_; }
  // Elements [first, first + count) of t into out (widened to float). Errors name the file.
  absl::Status Read(const TensorEntry& t, size_t first, size_t count, float* out) const;

 private:
  SafetensorsReader() = default;
  int fd_ = -1;
  std::string path_;
  SafetensorsHeader header_;
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
// ParseJsonObject: common/json_object.h.
// A JSON object whose values are all strings.
absl::StatusOr<std::map<std::string, std::string>> ParseJsonStringMap(std::string_view json);

}  // namespace moe
