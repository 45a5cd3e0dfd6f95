#include "worker/checkpoint/safetensors.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <memory>
#include <set>
#include <string_view>
#include <tuple>
#include <utility>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/files.h"
#include "google/protobuf/struct.pb.h"
#include "google/protobuf/util/json_util.h"

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
              "safetensors and token shards are little-endian; this code copies bytes as is");

namespace moe {
namespace {

// Headers beyond this are refused before parsing (the Rust reader's limit too).
constexpr uint64_t kMaxHeaderBytes = 100'000'000;

// JSON numbers arrive as double: a non-negative integer below 2^53 converts exactly.
bool AsUint(const google::protobuf::Value& v, uint64_t* out) {
  if (v.kind_case() != google::protobuf::Value::kNumberValue) return false;
  double d = v.number_value();
  if (!(d >= 0 && d < 9007199254740992.0) || std::trunc(d) != d) return false;
  *out = static_cast<uint64_t>(d);
  return true;
}

// A header value as it reads in JSON, for the messages.
std::string JsonText(const google::protobuf::Value& v) {
  std::string out;
  if (!google::protobuf::util::MessageToJsonString(v, &out).ok()) return "(unprintable)";
  return out.size() > 80 ? absl::StrCat(out.substr(0, 77), "...") : out;
}

std::string ShapeString(const std::vector<int64_t>& shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

// Bytes per element of a dtype this reader takes; 0 for one it does not.
size_t ElementBytes(const std::string& dtype, const SafetensorsReadOptions& options) {
  if (dtype == "F32") return 4;
  if (options.widen_to_f32 && (dtype == "BF16" || dtype == "F16")) return 2;
  return 0;
}

}  // namespace

uint16_t FloatToBf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40);  // quiet NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

float Bf16ToFloat(uint16_t h) {
  uint32_t u = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

float F16ToFloat(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const int exp = (h >> 10) & 0x1f;
  const uint32_t mant = h & 0x3ffu;
  float f;
  if (exp == 0) {  // zero or subnormal: mant * 2^-24
    f = std::ldexp(static_cast<float>(mant), -24);
    return sign ? -f : f;
  }
  uint32_t u = exp == 31 ? sign | 0x7f800000u | (mant << 13)
                         : sign | (static_cast<uint32_t>(exp - 15 + 127) << 23) | (mant << 13);
  std::memcpy(&f, &u, 4);
  return f;
}

std::string JsonQuote(std::string_view s) {
  std::string out = "\"";
  for (char c : s) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          absl::StrAppendFormat(&out, "\\u%04x", static_cast<unsigned char>(c));
        } else {
          out.push_back(c);
        }
    }
  }
  out.push_back('"');
  return out;
}

absl::StatusOr<std::map<std::string, std::string>> ParseJsonStringMap(std::string_view json) {
  google::protobuf::Struct doc;
  if (absl::Status st = ParseJsonObject(json, &doc); !st.ok()) return st;
  std::map<std::string, std::string> out;
  for (const auto& [key, value] : doc.fields()) {
    if (value.kind_case() != google::protobuf::Value::kStringValue) {
      return absl::InvalidArgumentError(absl::StrCat("value of \"", key, "\" is not a string"));
    }
    out[key] = value.string_value();
  }
  return out;
}

namespace {

// The 8-byte header length, checked against the file's size.
absl::StatusOr<uint64_t> HeaderLength(std::string_view first8, uint64_t file_size,
                                      const std::string& what) {
  if (file_size < 8 || first8.size() < 8) {
    return absl::DataLossError(absl::StrCat(
        what, ": file is ", file_size, " bytes, shorter than the 8-byte header length (truncated?)"));
  }
  uint64_t header_len;
  std::memcpy(&header_len, first8.data(), 8);
  if (header_len > file_size - 8) {
    return absl::DataLossError(absl::StrCat(what, ": header length ", header_len,
                                            " exceeds the file (", file_size,
                                            " bytes); truncated or not a safetensors file"));
  }
  if (header_len > kMaxHeaderBytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        what, ": its JSON header is ", header_len, " bytes, over the limit of ", kMaxHeaderBytes,
        " (a header that size is metadata, not tensors: save the file without it)"));
  }
  return header_len;
}

// Parses the JSON header and checks its tensors tile data_size bytes of data exactly.
absl::StatusOr<SafetensorsHeader> ParseHeader(absl::string_view header, uint64_t data_size,
                                              const std::string& what,
                                              const SafetensorsReadOptions& options) {
  auto bad = [&](const std::string& msg) {
    return absl::DataLossError(absl::StrCat(what, ": ", msg));
  };
  google::protobuf::Struct doc;
  if (absl::Status st = ParseJsonObject(std::string_view(header.data(), header.size()), &doc);
      !st.ok()) {
    return bad(absl::StrCat("bad header: ", st.message()));
  }
  SafetensorsHeader out;
  out.data_start = 8 + header.size();
  // Repeated keys are refused by the JSON reader; fields() is a map, so order comes from offsets.
  for (const auto& [name, value] : doc.fields()) {
    if (name == "__metadata__") {
      if (!value.has_struct_value()) return bad("__metadata__ is not an object");
      for (const auto& [k, v] : value.struct_value().fields()) {
        if (v.kind_case() != google::protobuf::Value::kStringValue) {
          return bad(absl::StrCat("__metadata__.", k, " not a string"));
        }
        out.metadata[k] = v.string_value();
      }
      continue;
    }
    auto field = [&](const std::string& key) -> const google::protobuf::Value* {
      if (!value.has_struct_value()) return nullptr;
      auto it = value.struct_value().fields().find(key);
      return it == value.struct_value().fields().end() ? nullptr : &it->second;
    };
    const google::protobuf::Value* dtype = field("dtype");
    const google::protobuf::Value* shape = field("shape");
    const google::protobuf::Value* offsets = field("data_offsets");
    TensorEntry t;
    const std::string tensor = absl::StrCat("tensor \"", absl::CHexEscape(name), "\"");
    if (!value.has_struct_value()) {
      return bad(absl::StrCat(tensor, ": header entry is ", JsonText(value),
                              ", not an object with dtype, shape and data_offsets [begin, end]"));
    }
    for (const auto& [key, v, ok] : {std::make_tuple("dtype", dtype, dtype && dtype->has_string_value()),
                                     std::make_tuple("shape", shape, shape && shape->has_list_value()),
                                     std::make_tuple("data_offsets", offsets, offsets && offsets->has_list_value() &&
                                                                                   offsets->list_value().values_size() == 2)}) {
      if (ok) continue;
      const char* want = std::string_view(key) == "dtype" ? "a string such as \"F32\""
                         : std::string_view(key) == "shape" ? "a list of dimensions"
                                                            : "[begin, end], the tensor's byte range in the data";
      return bad(v == nullptr ? absl::StrCat(tensor, ": header entry has no ", key, " (", want, ")")
                              : absl::StrCat(tensor, ": ", key, " is ", JsonText(*v), "; expected ", want));
    }
    for (int i = 0; i < 2; ++i) {
      const google::protobuf::Value& v = offsets->list_value().values(i);
      if (AsUint(v, i == 0 ? &t.begin : &t.end)) continue;
      const double d = v.number_value();
      const char* why = v.kind_case() != google::protobuf::Value::kNumberValue ? "not a number"
                        : d < 0                                               ? "negative"
                        : std::trunc(d) != d                                  ? "not a whole number"
                                                                              : "past 2^53, beyond any file";
      return bad(absl::StrCat(tensor, ": data_offsets ", JsonText(*offsets), ": ", i == 0 ? "begin " : "end ",
                              JsonText(v), " is ", why, "; each offset is a byte position in the data"));
    }
    const size_t elem_bytes = ElementBytes(dtype->string_value(), options);
    if (elem_bytes == 0) {
      return bad(absl::StrCat("tensor \"", name, "\" has dtype ", dtype->string_value(), "; only ",
                              options.widen_to_f32 ? "F32, BF16 and F16 are" : "F32 is",
                              " supported (convert with tensor.float())"));
    }
    t.name = name;
    t.dtype = dtype->string_value();
    // At most 2^60 elements, so that their byte count (elements * 8 at most) cannot wrap: a
    // wrapped count of 0 would pass the offsets check below and ask for 2^62 floats.
    uint64_t elems = 1;
    for (const google::protobuf::Value& d : shape->list_value().values()) {
      uint64_t dim;
      if (!AsUint(d, &dim) || dim > (1ull << 40) || (elems > 0 && dim > (1ull << 60) / elems)) {
        return bad(absl::StrCat("tensor \"", name, "\": bad shape entry (each dimension a whole number, "
                                "at most 2^60 elements in all)"));
      }
      t.shape.push_back(static_cast<int64_t>(dim));
      elems *= dim;
    }
    if (t.end < t.begin || t.end - t.begin != elems * elem_bytes) {
      return bad(absl::StrCat(tensor, ": shape ", ShapeString(t.shape), " needs ", elems * elem_bytes,
                              " bytes but data_offsets [", t.begin, ", ", t.end, "] span ",
                              t.end >= t.begin ? t.end - t.begin : 0));
    }
    if (t.end > data_size) {
      return bad(absl::StrCat(tensor, ": data_offsets [", t.begin, ", ", t.end, "] end past the ", data_size,
                              " data bytes the file holds (truncated file, or a wrong offset)"));
    }
    out.tensors.push_back(std::move(t));
  }
  // The tensors must tile the data exactly: no gap, no overlap, nothing missing at the end.
  // Sorting by offset gives the written order. Zero-byte tensors can share an offset, so for
  // those use where the name's entry appears in the header (written "name":{ by this writer and
  // the reference one; __metadata__'s values are strings), then the name.
  auto key_pos = [&](const TensorEntry& t) { return header.find(JsonQuote(t.name) + ":{"); };
  std::sort(out.tensors.begin(), out.tensors.end(), [&](const TensorEntry& a, const TensorEntry& b) {
    if (a.begin != b.begin || a.end != b.end) {
      return a.begin < b.begin || (a.begin == b.begin && a.end < b.end);
    }
    return std::make_pair(key_pos(a), a.name) < std::make_pair(key_pos(b), b.name);
  });
  uint64_t pos = 0;
  const TensorEntry* prev = nullptr;
  for (const TensorEntry& t : out.tensors) {
    const std::string tensor = absl::StrCat("tensor \"", absl::CHexEscape(t.name), "\"");
    if (t.begin > pos) {
      return bad(absl::StrCat("data bytes [", pos, ", ", t.begin, ") belong to no tensor (a gap before ", tensor,
                              " at [", t.begin, ", ", t.end, "]): a tensor is missing from the header, or ",
                              "a tensor's data_offsets are wrong"));
    }
    if (t.begin < pos) {
      return bad(absl::StrCat(tensor, " at data_offsets [", t.begin, ", ", t.end, "] overlaps tensor \"",
                              absl::CHexEscape(prev->name), "\" at [", prev->begin, ", ", prev->end,
                              "]: one of their data_offsets is wrong"));
    }
    pos = t.end;
    prev = &t;
  }
  if (pos != data_size) {
    return bad(absl::StrCat("tensors cover ", pos, " data bytes but the file holds ", data_size,
                            pos > data_size ? " (truncated file)" : " (trailing bytes)"));
  }
  return out;
}

size_t StoredBytes(const TensorEntry& t) { return t.dtype == "F32" ? 4 : 2; }

// count elements stored as dtype at bytes, as floats.
void Decode(const std::string& dtype, const char* bytes, size_t count, float* out) {
  if (dtype == "F32") {
    if (count > 0) std::memcpy(out, bytes, count * sizeof(float));
    return;
  }
  const bool bf16 = dtype == "BF16";
  for (size_t i = 0; i < count; ++i) {
    uint16_t h;
    std::memcpy(&h, bytes + 2 * i, 2);
    out[i] = bf16 ? Bf16ToFloat(h) : F16ToFloat(h);
  }
}

// Reads exactly n bytes at offset; a short read is the file having shrunk under us.
absl::Status PreadAll(int fd, void* buf, size_t n, uint64_t offset, const std::string& path) {
  char* p = static_cast<char*>(buf);
  while (n > 0) {
    ssize_t r = ::pread(fd, p, n, static_cast<off_t>(offset));
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) return absl::InternalError(absl::StrCat("cannot read ", path, ": ", std::strerror(errno)));
    if (r == 0) {
      return absl::DataLossError(absl::StrCat(path, ": ends at byte ", offset, " (truncated file)"));
    }
    p += r;
    n -= static_cast<size_t>(r);
    offset += static_cast<uint64_t>(r);
  }
  return absl::OkStatus();
}

}  // namespace

size_t TensorEntry::elements() const {
  size_t n = 1;
  for (int64_t d : shape) n *= static_cast<size_t>(d);
  return n;
}

absl::StatusOr<SafetensorsFile> ParseSafetensors(std::string_view bytes_in, const std::string& what,
                                                 const SafetensorsReadOptions& options) {
  absl::string_view bytes(bytes_in.data(), bytes_in.size());
  absl::StatusOr<uint64_t> header_len = HeaderLength(bytes_in, bytes.size(), what);
  if (!header_len.ok()) return header_len.status();
  absl::StatusOr<SafetensorsHeader> header =
      ParseHeader(bytes.substr(8, *header_len), bytes.size() - 8 - *header_len, what, options);
  if (!header.ok()) return header.status();
  SafetensorsFile out;
  out.metadata = std::move(header->metadata);
  for (TensorEntry& t : header->tensors) {
    NamedTensor nt{std::move(t.name), std::move(t.shape), {}};
    nt.data.resize((t.end - t.begin) / StoredBytes(t));
    Decode(t.dtype, bytes.data() + header->data_start + t.begin, nt.data.size(), nt.data.data());
    out.tensors.push_back(std::move(nt));
  }
  return out;
}

absl::StatusOr<SafetensorsReader> SafetensorsReader::Open(const std::string& path,
                                                          const SafetensorsReadOptions& options) {
  SafetensorsReader r;
  r.path_ = path;
  r.fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (r.fd_ < 0) {
    return absl::NotFoundError(absl::StrCat("cannot open ", path, ": ", std::strerror(errno)));
  }
  struct stat sb;
  if (::fstat(r.fd_, &sb) != 0) {
    return absl::InternalError(absl::StrCat("cannot stat ", path, ": ", std::strerror(errno)));
  }
  const uint64_t size = static_cast<uint64_t>(sb.st_size);
  char first8[8] = {};
  if (size >= 8) {
    if (absl::Status st = PreadAll(r.fd_, first8, 8, 0, path); !st.ok()) return st;
  }
  absl::StatusOr<uint64_t> header_len =
      HeaderLength(std::string_view(first8, size >= 8 ? 8 : 0), size, path);
  if (!header_len.ok()) return header_len.status();
  std::string header(*header_len, '\0');
  if (absl::Status st = PreadAll(r.fd_, header.data(), header.size(), 8, path); !st.ok()) return st;
  absl::StatusOr<SafetensorsHeader> parsed = ParseHeader(header, size - 8 - *header_len, path, options);
  if (!parsed.ok()) return parsed.status();
  r.header_ = *std::move(parsed);
  return r;
}

SafetensorsReader::SafetensorsReader(SafetensorsReader&& other) noexcept
    : fd_(std::exchange(other.fd_, -1)),
      path_(std::move(other.path_)),
      header_(std::move(other.header_)) {}

SafetensorsReader& SafetensorsReader::operator=(SafetensorsReader&& other) noexcept {
  if (this != &other) {
    if (fd_ >= 0) ::close(fd_);
    fd_ = std::exchange(other.fd_, -1);
    path_ = std::move(other.path_);
    header_ = std::move(other.header_);
  }
  return *this;
}

SafetensorsReader::~SafetensorsReader() {
  if (fd_ >= 0) ::close(fd_);
}

absl::Status SafetensorsReader::Read(const TensorEntry& t, size_t first, size_t count,
                                     float* out) const {
  if (first > t.elements() || count > t.elements() - first) {
    return absl::OutOfRangeError(absl::StrCat(path_, ": tensor ", t.name, " has ", t.elements(),
                                              " elements; asked for [", first, ", ", first + count, ")"));
  }
  const size_t eb = StoredBytes(t);
  const uint64_t offset = header_.data_start + t.begin + first * eb;
  if (eb == sizeof(float)) return PreadAll(fd_, out, count * eb, offset, path_);
  // 16-bit values through a fixed buffer.
  constexpr size_t kPiece = 1 << 20;
  std::vector<char> buf(std::min(count, kPiece) * eb);
  for (size_t i = 0; i < count; i += kPiece) {
    const size_t n = std::min(kPiece, count - i);
    if (absl::Status st = PreadAll(fd_, buf.data(), n * eb, offset + i * eb, path_); !st.ok()) return st;
    Decode(t.dtype, buf.data(), n, out + i);
  }
  return absl::OkStatus();
}

absl::StatusOr<SafetensorsFile> ReadSafetensors(const std::string& path,
                                                const SafetensorsReadOptions& options) {
  absl::StatusOr<SafetensorsReader> reader = SafetensorsReader::Open(path, options);
  if (!reader.ok()) return reader.status();
  SafetensorsFile out;
  out.metadata = reader->header().metadata;
  for (const TensorEntry& t : reader->header().tensors) {
    NamedTensor nt{t.name, t.shape, std::vector<float>(t.elements())};
    if (absl::Status st = reader->Read(t, 0, nt.data.size(), nt.data.data()); !st.ok()) return st;
    out.tensors.push_back(std::move(nt));
  }
  return out;
}

}  // namespace moe
