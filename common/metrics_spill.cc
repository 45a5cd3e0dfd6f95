#include "common/metrics_spill.h"

#include <algorithm>
#include <cstdint>
#include <filesystem>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "common/files.h"
#include "google/protobuf/io/coded_stream.h"
#include "google/protobuf/io/zero_copy_stream_impl_lite.h"

namespace moe {
namespace {

constexpr char kPrefix[] = "unsent-metrics.rank";
constexpr char kSuffix[] = ".pb";

bool AllDigits(absl::string_view s) {
  return !s.empty() && std::all_of(s.begin(), s.end(), absl::ascii_isdigit);
}

// unsent-metrics.rank<digits>.pb and its parts, unsent-metrics.rank<digits>.part<digits>.pb (not
// the writer's temp files, path.tmp.<pid>.<n>).
bool IsSpillName(absl::string_view name) {
  if (!absl::ConsumePrefix(&name, kPrefix) || !absl::ConsumeSuffix(&name, kSuffix)) return false;
  const size_t dot = name.find(".part");
  if (dot == absl::string_view::npos) return AllDigits(name);
  return AllDigits(name.substr(0, dot)) && AllDigits(name.substr(dot + 5));
}

}  // namespace

std::string MetricsSpillPath(const std::string& attempt_dir, int rank) {
  return absl::StrCat(attempt_dir, "/", kPrefix, rank, kSuffix);
}

std::string MetricsSpillPartPath(const std::string& spill_path, int part) {
  absl::string_view base = spill_path;
  absl::ConsumeSuffix(&base, kSuffix);
  return absl::StrCat(base, ".part", part, kSuffix);
}

std::vector<std::string> MetricsSpillFiles(const std::string& attempt_dir) {
  std::vector<std::string> out;
  std::error_code ec;
  for (std::filesystem::directory_iterator it(attempt_dir, ec), end; !ec && it != end;
       it.increment(ec)) {
    if (IsSpillName(it->path().filename().string())) out.push_back(it->path().string());
  }
  std::sort(out.begin(), out.end());
  return out;
}

namespace {

std::string SpillBytes(const std::vector<moe::v1::MetricPoint>& points) {
  std::string bytes;
  {
    google::protobuf::io::StringOutputStream stream(&bytes);
    google::protobuf::io::CodedOutputStream out(&stream);
    for (const moe::v1::MetricPoint& p : points) {
      out.WriteVarint32(static_cast<uint32_t>(p.ByteSizeLong()));
      p.SerializeWithCachedSizes(&out);
    }
  }  // the coded stream flushes into bytes here
  return bytes;
}

}  // namespace

absl::Status WriteMetricsSpill(const std::string& path,
                               const std::vector<moe::v1::MetricPoint>& points) {
  return WriteFileAtomic(path, SpillBytes(points));
}

absl::Status AppendMetricsSpill(const std::string& path, const std::vector<moe::v1::MetricPoint>& points) {
  return AppendFile(path, SpillBytes(points));
}

absl::StatusOr<MetricsSpill> ReadMetricsSpill(const std::string& path) {
  absl::StatusOr<std::string> bytes = ReadFile(path);
  if (!bytes.ok()) return bytes.status();
  MetricsSpill spill;
  const int size = static_cast<int>(std::min<size_t>(bytes->size(), INT32_MAX));
  google::protobuf::io::CodedInputStream in(reinterpret_cast<const uint8_t*>(bytes->data()), size);
  std::string record;
  while (true) {
    const int at = in.CurrentPosition();
    if (at >= size) break;
    uint32_t length = 0;
    if (!in.ReadVarint32(&length)) {
      spill.damage = absl::StrCat("the record at byte ", at, " has no readable length");
      break;
    }
    if (static_cast<int64_t>(length) > size - in.CurrentPosition()) {
      spill.damage = absl::StrCat("the record at byte ", at, " is cut short (", length,
                                  " bytes announced, ", size - in.CurrentPosition(), " left)");
      break;
    }
    moe::v1::MetricPoint p;
    if (!in.ReadString(&record, static_cast<int>(length)) || !p.ParseFromString(record)) {
      spill.damage = absl::StrCat("the record at byte ", at, " is not a metric point");
      break;
    }
    spill.points.push_back(std::move(p));
  }
  return spill;
}

}  // namespace moe
