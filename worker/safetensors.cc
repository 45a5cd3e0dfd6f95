#include "worker/safetensors.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <memory>
#include <set>
#include <tuple>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/files.h"

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
              "safetensors and token shards are little-endian; this code copies bytes as is");

namespace moe {
namespace {

// Headers beyond this are refused before parsing (the Rust reader's limit too).
constexpr uint64_t kMaxHeaderBytes = 100'000'000;

// A minimal JSON value: enough for safetensors headers (objects, arrays, strings, integers).
struct Json {
  enum Type { kNull, kBool, kNumber, kString, kArray, kObject } type = kNull;
  bool boolean = false;
  bool is_uint = false;  // number is a non-negative integer that fits uint64
  uint64_t uint = 0;
  std::string str;
  std::vector<Json> items;                            // array
  std::vector<std::pair<std::string, Json>> fields;  // object, in order
};

class JsonParser {
 public:
  explicit JsonParser(absl::string_view s) : s_(s) {}

  absl::StatusOr<Json> ParseDocument() {
    Json v;
    if (absl::Status st = Value(&v, 0); !st.ok()) return st;
    SkipWs();
    if (i_ != s_.size()) return Error("trailing data after the JSON value");
    return v;
  }

 private:
  absl::Status Error(absl::string_view what) const {
    return absl::InvalidArgumentError(absl::StrCat("JSON error at byte ", i_, ": ", what));
  }
  void SkipWs() {
    while (i_ < s_.size() && (s_[i_] == ' ' || s_[i_] == '\n' || s_[i_] == '\r' || s_[i_] == '\t'))
      ++i_;
  }
  bool Hex4(uint32_t* v) {
    if (i_ + 4 > s_.size()) return false;
    *v = 0;
    for (int k = 0; k < 4; ++k) {
      char c = s_[i_ + k];
      int d = (c >= '0' && c <= '9')   ? c - '0'
              : (c >= 'a' && c <= 'f') ? c - 'a' + 10
              : (c >= 'A' && c <= 'F') ? c - 'A' + 10
                                       : -1;
      if (d < 0) return false;
      *v = *v * 16 + d;
    }
    i_ += 4;
    return true;
  }
  static void AppendUtf8(uint32_t cp, std::string* out) {
    if (cp < 0x80) {
      out->push_back(static_cast<char>(cp));
    } else if (cp < 0x800) {
      out->push_back(static_cast<char>(0xC0 | (cp >> 6)));
      out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    } else if (cp < 0x10000) {
      out->push_back(static_cast<char>(0xE0 | (cp >> 12)));
      out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
      out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    } else {
      out->push_back(static_cast<char>(0xF0 | (cp >> 18)));
      out->push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
      out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
      out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    }
  }
  absl::Status String(std::string* out) {
    ++i_;  // opening quote
    while (true) {
      if (i_ >= s_.size()) return Error("unterminated string");
      char c = s_[i_++];
      if (c == '"') return absl::OkStatus();
      if (static_cast<unsigned char>(c) < 0x20) return Error("control character in string");
      if (c != '\\') {
        out->push_back(c);
        continue;
      }
      if (i_ >= s_.size()) return Error("unterminated escape");
      char e = s_[i_++];
      switch (e) {
        case '"': out->push_back('"'); break;
        case '\\': out->push_back('\\'); break;
        case '/': out->push_back('/'); break;
        case 'b': out->push_back('\b'); break;
        case 'f': out->push_back('\f'); break;
        case 'n': out->push_back('\n'); break;
        case 'r': out->push_back('\r'); break;
        case 't': out->push_back('\t'); break;
        case 'u': {
          uint32_t cp;
          if (!Hex4(&cp)) return Error("bad \\u escape");
          if (cp >= 0xD800 && cp <= 0xDBFF) {
            uint32_t lo;
            if (i_ + 2 > s_.size() || s_[i_] != '\\' || s_[i_ + 1] != 'u') {
              return Error("unpaired surrogate");
            }
            i_ += 2;
            if (!Hex4(&lo) || lo < 0xDC00 || lo > 0xDFFF) return Error("bad low surrogate");
            cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
          }
          AppendUtf8(cp, out);
          break;
        }
        default:
          return Error("unknown escape");
      }
    }
  }
  absl::Status Value(Json* v, int depth) {
    if (depth > 64) return Error("nesting too deep");
    SkipWs();
    if (i_ >= s_.size()) return Error("unexpected end of input");
    char c = s_[i_];
    if (c == '"') {
      v->type = Json::kString;
      return String(&v->str);
    }
    if (c == '{' || c == '[') {
      bool object = c == '{';
      v->type = object ? Json::kObject : Json::kArray;
      ++i_;
      SkipWs();
      if (i_ < s_.size() && s_[i_] == (object ? '}' : ']')) {
        ++i_;
        return absl::OkStatus();
      }
      while (true) {
        SkipWs();
        std::string key;
        if (object) {
          if (i_ >= s_.size() || s_[i_] != '"') return Error("expected a string key");
          if (absl::Status st = String(&key); !st.ok()) return st;
          SkipWs();
          if (i_ >= s_.size() || s_[i_] != ':') return Error("expected ':'");
          ++i_;
        }
        Json item;
        if (absl::Status st = Value(&item, depth + 1); !st.ok()) return st;
        if (object) {
          v->fields.emplace_back(std::move(key), std::move(item));
        } else {
          v->items.push_back(std::move(item));
        }
        SkipWs();
        if (i_ < s_.size() && s_[i_] == ',') {
          ++i_;
          continue;
        }
        if (i_ < s_.size() && s_[i_] == (object ? '}' : ']')) {
          ++i_;
          return absl::OkStatus();
        }
        return Error(object ? "expected ',' or '}'" : "expected ',' or ']'");
      }
    }
    for (auto [word, type, b] : {std::tuple{"true", Json::kBool, true},
                                 std::tuple{"false", Json::kBool, false},
                                 std::tuple{"null", Json::kNull, false}}) {
      if (s_.substr(i_, std::strlen(word)) == word) {
        i_ += std::strlen(word);
        v->type = type;
        v->boolean = b;
        return absl::OkStatus();
      }
    }
    // Number: record whether it is a plain non-negative integer; other numbers are accepted
    // syntactically but carry no value (safetensors headers only use integers).
    size_t start = i_;
    if (s_[i_] == '-') ++i_;
    while (i_ < s_.size() && (std::isdigit(static_cast<unsigned char>(s_[i_])) || s_[i_] == '.' ||
                              s_[i_] == 'e' || s_[i_] == 'E' || s_[i_] == '+' || s_[i_] == '-'))
      ++i_;
    absl::string_view num = s_.substr(start, i_ - start);
    if (num.empty() || num == "-") return Error("unexpected character");
    v->type = Json::kNumber;
    v->is_uint = std::all_of(num.begin(), num.end(), [](char d) { return d >= '0' && d <= '9'; }) &&
                 num.size() <= 19;
    if (v->is_uint) {
      for (char d : num) v->uint = v->uint * 10 + (d - '0');
    }
    return absl::OkStatus();
  }

  absl::string_view s_;
  size_t i_ = 0;
};

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

}  // namespace

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
  absl::StatusOr<Json> doc = JsonParser(absl::string_view(json.data(), json.size())).ParseDocument();
  if (!doc.ok()) return doc.status();
  if (doc->type != Json::kObject) return absl::InvalidArgumentError("expected a JSON object");
  std::map<std::string, std::string> out;
  for (auto& [key, value] : doc->fields) {
    if (value.type != Json::kString) {
      return absl::InvalidArgumentError(absl::StrCat("value of \"", key, "\" is not a string"));
    }
    out[key] = value.str;
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
                              const std::map<std::string, std::string>& metadata) {
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
    uint64_t bytes = t.data.size() * sizeof(float);
    absl::StrAppend(&header, header.size() > 1 ? "," : "", JsonQuote(t.name),
                    ":{\"dtype\":\"F32\",\"shape\":", ShapeString(t.shape),
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
  for (const NamedTensor* t : tensors) {
    if (!st.ok()) break;
    st = WriteAll(fd, t->data.data(), t->data.size() * sizeof(float), tmp);
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

absl::StatusOr<SafetensorsFile> ParseSafetensors(std::string_view bytes_in, const std::string& what) {
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
  absl::StatusOr<Json> doc = JsonParser(header).ParseDocument();
  if (!doc.ok()) return bad(absl::StrCat("bad header: ", doc.status().message()));
  if (doc->type != Json::kObject) return bad("bad header: not a JSON object");

  SafetensorsFile out;
  struct Span {
    uint64_t begin, end;
    size_t index;
  };
  std::vector<Span> spans;
  std::vector<std::pair<std::string, const Json*>> entries;
  std::set<std::string> names;
  for (const auto& [name, value] : doc->fields) {
    if (!names.insert(name).second) return bad(absl::StrCat("tensor \"", name, "\" repeated"));
    if (name == "__metadata__") {
      if (value.type != Json::kObject) return bad("__metadata__ is not an object");
      for (const auto& [k, v] : value.fields) {
        if (v.type != Json::kString) return bad(absl::StrCat("__metadata__.", k, " not a string"));
        out.metadata[k] = v.str;
      }
      continue;
    }
    auto field = [&](absl::string_view key) -> const Json* {
      for (const auto& [k, v] : value.fields) {
        if (k == key) return &v;
      }
      return nullptr;
    };
    const Json* dtype = value.type == Json::kObject ? field("dtype") : nullptr;
    const Json* shape = value.type == Json::kObject ? field("shape") : nullptr;
    const Json* offsets = value.type == Json::kObject ? field("data_offsets") : nullptr;
    if (!dtype || dtype->type != Json::kString || !shape || shape->type != Json::kArray ||
        !offsets || offsets->type != Json::kArray || offsets->items.size() != 2 ||
        !offsets->items[0].is_uint || !offsets->items[1].is_uint) {
      return bad(absl::StrCat("tensor \"", name,
                              "\": header entry needs dtype, shape and data_offsets [begin, end]"));
    }
    if (dtype->str != "F32") {
      return bad(absl::StrCat("tensor \"", name, "\" has dtype ", dtype->str,
                              "; only F32 is supported (convert with tensor.float())"));
    }
    NamedTensor t;
    t.name = name;
    uint64_t elems = 1;
    for (const Json& d : shape->items) {
      if (!d.is_uint || d.uint > (1ull << 40) || (elems > 0 && d.uint > (1ull << 62) / elems)) {
        return bad(absl::StrCat("tensor \"", name, "\": bad shape entry"));
      }
      t.shape.push_back(static_cast<int64_t>(d.uint));
      elems *= d.uint;
    }
    uint64_t begin = offsets->items[0].uint, end = offsets->items[1].uint;
    if (end < begin || end - begin != elems * sizeof(float)) {
      return bad(absl::StrCat("tensor \"", name, "\": shape ", ShapeString(t.shape), " needs ",
                              elems * sizeof(float), " bytes but data_offsets [", begin, ", ",
                              end, "] span ", end >= begin ? end - begin : 0));
    }
    spans.push_back({begin, end, out.tensors.size()});
    out.tensors.push_back(std::move(t));
  }
  // The tensors must tile the data exactly: no gap, no overlap, nothing missing at the end.
  std::sort(spans.begin(), spans.end(),
            [](const Span& a, const Span& b) { return a.begin < b.begin || (a.begin == b.begin && a.end < b.end); });
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
    t.data.resize((s.end - s.begin) / sizeof(float));
    if (!t.data.empty()) std::memcpy(t.data.data(), data.data() + s.begin, s.end - s.begin);
    ordered.push_back(std::move(t));
  }
  out.tensors = std::move(ordered);
  return out;
}

absl::StatusOr<SafetensorsFile> ReadSafetensors(const std::string& path) {
  absl::StatusOr<std::string> bytes = ReadFile(path);
  if (!bytes.ok()) return bytes.status();
  return ParseSafetensors(*bytes, path);
}

}  // namespace moe
