#include "worker/checkpoint/safetensors.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <memory>
#include <set>
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

std::string ShapeString(const std::vector<int64_t>& shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

absl::Status WriteAll(int fd, const void* data, size_t n, const std::string& path) {
  const char* p = static_cast<const char*>(data);
  while (n > 0) {
    ssize_t w = ::write(fd, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      return absl::InternalError(absl::StrCat("cannot write ", path, ": ", std::strerror(errno)));
    }
    p += w;
    n -= static_cast<size_t>(w);
  }
  return absl::OkStatus();
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

absl::Status ParseJsonObject(std::string_view json_in, google::protobuf::Struct* out) {
  absl::string_view json(json_in.data(), json_in.size());
  // protobuf would report a top-level array or scalar without a position; say it here.
  size_t first = json.find_first_not_of(" \t\r\n");
  if (first == absl::string_view::npos || json[first] != '{') {
    return absl::InvalidArgumentError(absl::StrCat(
        "JSON error at byte ", first == absl::string_view::npos ? json.size() : first,
        ": expected a JSON object"));
  }
  out->Clear();
  auto st = google::protobuf::util::JsonStringToMessage(
      google::protobuf::StringPiece(json.data(), json.size()), out);
  if (st.ok()) return absl::OkStatus();
  // Syntax errors read "<what>\n<up to 20 bytes either side>\n<spaces>^". Locate the context in
  // the input to name the byte; if it is not unique, show it with the caret inline instead.
  const std::string msg_text(st.message().data(), st.message().size());
  absl::string_view msg = msg_text;
  size_t nl1 = msg.find('\n'), nl2 = msg.rfind('\n');
  if (nl1 == nl2 || msg.back() != '^') {
    return absl::InvalidArgumentError(absl::StrCat("JSON error: ", msg));
  }
  absl::string_view what = msg.substr(0, nl1);
  absl::string_view context = msg.substr(nl1 + 1, nl2 - nl1 - 1);  // may hold newlines itself
  size_t caret = std::min(msg.size() - nl2 - 2, context.size());
  size_t at = context.empty() ? json.size() : json.find(context);
  if (at != absl::string_view::npos && (context.empty() || json.rfind(context) == at)) {
    return absl::InvalidArgumentError(absl::StrCat("JSON error at byte ", at + caret, ": ", what));
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "JSON error: ", what, " (at the ^ in \"", absl::CEscape(context.substr(0, caret)), "^",
      absl::CEscape(context.substr(caret)), "\")"));
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

absl::Status WriteSafetensors(const std::string& path, const std::vector<NamedTensor>& tensors,
                              const std::map<std::string, std::string>& metadata) {
  std::vector<const NamedTensor*> ptrs;
  for (const NamedTensor& t : tensors) ptrs.push_back(&t);
  return WriteSafetensors(path, ptrs, metadata);
}

absl::Status WriteSafetensors(const std::string& path, const std::vector<const NamedTensor*>& tensors,
                              const std::map<std::string, std::string>& metadata, TensorDtype dtype) {
  const bool bf16 = dtype == TensorDtype::kBF16;
  const size_t elem_bytes = bf16 ? 2 : sizeof(float);
  std::string header = "{";
  if (!metadata.empty()) {
    header += "\"__metadata__\":{";
    bool first = true;
    for (const auto& [k, v] : metadata) {
      absl::StrAppend(&header, first ? "" : ",", JsonQuote(k), ":", JsonQuote(v));
      first = false;
    }
    header += "}";
  }
  uint64_t offset = 0;
  std::set<std::string> names;
  for (const NamedTensor* tp : tensors) {
    const NamedTensor& t = *tp;
    int64_t elems = 1;
    for (int64_t d : t.shape) elems = d < 0 ? -1 : elems * d;
    if (t.name.empty() || t.name == "__metadata__" || !names.insert(t.name).second) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": tensor name \"", t.name, "\" is empty, reserved or repeated"));
    }
    if (elems < 0 || static_cast<uint64_t>(elems) != t.data.size()) {
      return absl::InvalidArgumentError(absl::StrCat(path, ": tensor ", t.name, " has shape ",
                                                     ShapeString(t.shape), " but ", t.data.size(),
                                                     " values"));
    }
    uint64_t bytes = t.data.size() * elem_bytes;
    absl::StrAppend(&header, header.size() > 1 ? "," : "", JsonQuote(t.name),
                    ":{\"dtype\":\"", bf16 ? "BF16" : "F32", "\",\"shape\":", ShapeString(t.shape),
                    ",\"data_offsets\":[", offset, ",", offset + bytes, "]}");
    offset += bytes;
  }
  header += "}";
  // Pad so the data starts 8-byte aligned, as the reference writer does.
  while ((8 + header.size()) % 8 != 0) header.push_back(' ');

  std::string dir = std::filesystem::path(path).parent_path().string();
  std::string tmp = absl::StrCat(path, ".tmp.", ::getpid());
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fd < 0) {
    return absl::InternalError(absl::StrCat("cannot create ", tmp, ": ", std::strerror(errno)));
  }
  uint64_t header_len = header.size();
  absl::Status st = WriteAll(fd, &header_len, 8, tmp);
  if (st.ok()) st = WriteAll(fd, header.data(), header.size(), tmp);
  std::vector<uint16_t> half;
  for (const NamedTensor* t : tensors) {
    if (!st.ok()) break;
    if (!bf16) {
      st = WriteAll(fd, t->data.data(), t->data.size() * sizeof(float), tmp);
      continue;
    }
    // In pieces, so a large tensor needs no second full-size buffer.
    constexpr size_t kPiece = 1 << 20;
    for (size_t i = 0; i < t->data.size() && st.ok(); i += kPiece) {
      const size_t n = std::min(kPiece, t->data.size() - i);
      half.resize(n);
      for (size_t j = 0; j < n; ++j) half[j] = FloatToBf16(t->data[i + j]);
      st = WriteAll(fd, half.data(), n * 2, tmp);
    }
  }
  if (st.ok() && ::fsync(fd) != 0) {
    st = absl::InternalError(absl::StrCat("cannot fsync ", tmp, ": ", std::strerror(errno)));
  }
  if (::close(fd) != 0 && st.ok()) {
    st = absl::InternalError(absl::StrCat("cannot close ", tmp, ": ", std::strerror(errno)));
  }
  if (st.ok() && ::rename(tmp.c_str(), path.c_str()) != 0) {
    st = absl::InternalError(absl::StrCat("cannot rename ", tmp, " to ", path, ": ",
                                          std::strerror(errno)));
  }
  if (!st.ok()) {
    ::unlink(tmp.c_str());
    return st;
  }
  return SyncDir(dir);
}

absl::StatusOr<SafetensorsFile> ParseSafetensors(std::string_view bytes_in, const std::string& what,
                                                 const SafetensorsReadOptions& options) {
  absl::string_view bytes(bytes_in.data(), bytes_in.size());
  auto bad = [&](const std::string& msg) {
    return absl::DataLossError(absl::StrCat(what, ": ", msg));
  };
  if (bytes.size() < 8) {
    return bad(absl::StrCat("file is ", bytes.size(),
                            " bytes, shorter than the 8-byte header length (truncated?)"));
  }
  uint64_t header_len;
  std::memcpy(&header_len, bytes.data(), 8);
  if (header_len > kMaxHeaderBytes || header_len > bytes.size() - 8) {
    return bad(absl::StrCat("header length ", header_len, " exceeds the file (", bytes.size(),
                            " bytes); truncated or not a safetensors file"));
  }
  absl::string_view header = bytes.substr(8, header_len);
  absl::string_view data = bytes.substr(8 + header_len);
  google::protobuf::Struct doc;
  if (absl::Status st = ParseJsonObject(std::string_view(header.data(), header.size()), &doc);
      !st.ok()) {
    return bad(absl::StrCat("bad header: ", st.message()));
  }

  SafetensorsFile out;
  struct Span {
    uint64_t begin, end;
    size_t index;
    std::string dtype;
  };
  std::vector<Span> spans;
  // Repeated keys are refused by the JSON reader; fields() is a map, so order comes from spans.
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
    uint64_t begin = 0, end = 0;
    if (!dtype || !dtype->has_string_value() || !shape || !shape->has_list_value() ||
        !offsets || !offsets->has_list_value() || offsets->list_value().values_size() != 2 ||
        !AsUint(offsets->list_value().values(0), &begin) ||
        !AsUint(offsets->list_value().values(1), &end)) {
      return bad(absl::StrCat("tensor \"", name,
                              "\": header entry needs dtype, shape and data_offsets [begin, end]"));
    }
    const size_t elem_bytes = ElementBytes(dtype->string_value(), options);
    if (elem_bytes == 0) {
      return bad(absl::StrCat("tensor \"", name, "\" has dtype ", dtype->string_value(), "; only ",
                              options.widen_to_f32 ? "F32, BF16 and F16 are" : "F32 is",
                              " supported (convert with tensor.float())"));
    }
    NamedTensor t;
    t.name = name;
    uint64_t elems = 1;
    for (const google::protobuf::Value& d : shape->list_value().values()) {
      uint64_t dim;
      if (!AsUint(d, &dim) || dim > (1ull << 40) || (elems > 0 && dim > (1ull << 62) / elems)) {
        return bad(absl::StrCat("tensor \"", name, "\": bad shape entry"));
      }
      t.shape.push_back(static_cast<int64_t>(dim));
      elems *= dim;
    }
    if (end < begin || end - begin != elems * elem_bytes) {
      return bad(absl::StrCat("tensor \"", name, "\": shape ", ShapeString(t.shape), " needs ",
                              elems * elem_bytes, " bytes but data_offsets [", begin, ", ",
                              end, "] span ", end >= begin ? end - begin : 0));
    }
    spans.push_back({begin, end, out.tensors.size(), dtype->string_value()});
    out.tensors.push_back(std::move(t));
  }
  // The tensors must tile the data exactly: no gap, no overlap, nothing missing at the end.
  // Sorting by offset gives the written order. Zero-byte tensors can share an offset, so for
  // those use where the name's entry appears in the header (written "name":{ by this writer and
  // the reference one; __metadata__'s values are strings), then the name.
  auto key_pos = [&](const NamedTensor& t) { return header.find(JsonQuote(t.name) + ":{"); };
  std::sort(spans.begin(), spans.end(), [&](const Span& a, const Span& b) {
    if (a.begin != b.begin || a.end != b.end) {
      return a.begin < b.begin || (a.begin == b.begin && a.end < b.end);
    }
    const NamedTensor &ta = out.tensors[a.index], &tb = out.tensors[b.index];
    return std::make_pair(key_pos(ta), ta.name) < std::make_pair(key_pos(tb), tb.name);
  });
  uint64_t pos = 0;
  for (const Span& s : spans) {
    if (s.begin != pos) {
      return bad(absl::StrCat("tensor \"", out.tensors[s.index].name, "\" starts at data byte ",
                              s.begin, " but the previous tensor ends at ", pos,
                              " (overlap or gap)"));
    }
    pos = s.end;
  }
  if (pos != data.size()) {
    return bad(absl::StrCat("tensors cover ", pos, " data bytes but the file holds ", data.size(),
                            pos > data.size() ? " (truncated file)" : " (trailing bytes)"));
  }
  std::vector<NamedTensor> ordered;
  ordered.reserve(spans.size());
  for (const Span& s : spans) {
    NamedTensor& t = out.tensors[s.index];
    if (s.dtype == "F32") {
      t.data.resize((s.end - s.begin) / sizeof(float));
      if (!t.data.empty()) std::memcpy(t.data.data(), data.data() + s.begin, s.end - s.begin);
    } else {
      t.data.resize((s.end - s.begin) / 2);
      const bool bf16 = s.dtype == "BF16";
      for (size_t i = 0; i < t.data.size(); ++i) {
        uint16_t h;
        std::memcpy(&h, data.data() + s.begin + 2 * i, 2);
        t.data[i] = bf16 ? Bf16ToFloat(h) : F16ToFloat(h);
      }
    }
    ordered.push_back(std::move(t));
  }
  out.tensors = std::move(ordered);
  return out;
}

absl::StatusOr<SafetensorsFile> ReadSafetensors(const std::string& path,
                                                const SafetensorsReadOptions& options) {
  absl::StatusOr<std::string> bytes = ReadFile(path);
  if (!bytes.ok()) return bytes.status();
  return ParseSafetensors(*bytes, path, options);
}

}  // namespace moe
