// Writing safetensors files: the header first, then each tensor's bytes as they arrive.
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <set>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/files.h"
#include "worker/checkpoint/safetensors.h"
#include "worker/checkpoint/xxh64.h"

namespace moe {
namespace {

std::string ShapeString(const std::vector<int64_t>& shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

int64_t Elements(const std::vector<int64_t>& shape) {
  int64_t elems = 1;
  for (int64_t d : shape) elems = d < 0 ? -1 : elems * d;
  return elems;
}

}  // namespace

struct SafetensorsWriter::State {
  std::string path, tmp;
  std::vector<TensorSpec> tensors;
  size_t next = 0;  // index of the tensor Write expects
  bool bf16 = false;
  int fd = -1;
  bool finished = false;
  Xxh64Hasher hasher;
  std::vector<uint16_t> half;  // BF16 conversion, in pieces

  // Writes and hashes bytes.
  absl::Status Put(const void* data, size_t n) {
    hasher.Update(data, n);
    const char* p = static_cast<const char*>(data);
    while (n > 0) {
      ssize_t w = ::write(fd, p, n);
      if (w < 0) {
        if (errno == EINTR) continue;
        return absl::InternalError(absl::StrCat("cannot write ", tmp, ": ", std::strerror(errno)));
      }
      p += w;
      n -= static_cast<size_t>(w);
    }
    return absl::OkStatus();
  }
};

SafetensorsWriter::SafetensorsWriter(std::unique_ptr<State> state) : s_(std::move(state)) {}

SafetensorsWriter::~SafetensorsWriter() {
  if (s_->fd >= 0) ::close(s_->fd);
  if (!s_->finished) ::unlink(s_->tmp.c_str());
}

uint64_t SafetensorsWriter::size() const { return s_->hasher.total(); }
uint64_t SafetensorsWriter::xxh64() const { return s_->hasher.Digest(); }

absl::StatusOr<std::unique_ptr<SafetensorsWriter>> SafetensorsWriter::Create(
    const std::string& path, const std::vector<TensorSpec>& tensors,
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
  for (const TensorSpec& t : tensors) {
    const int64_t elems = Elements(t.shape);
    if (t.name.empty() || t.name == "__metadata__" || !names.insert(t.name).second) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": tensor name \"", t.name, "\" is empty, reserved or repeated"));
    }
    if (elems < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": tensor ", t.name, " has shape ", ShapeString(t.shape)));
    }
    const uint64_t bytes = static_cast<uint64_t>(elems) * elem_bytes;
    absl::StrAppend(&header, header.size() > 1 ? "," : "", JsonQuote(t.name),
                    ":{\"dtype\":\"", bf16 ? "BF16" : "F32", "\",\"shape\":", ShapeString(t.shape),
                    ",\"data_offsets\":[", offset, ",", offset + bytes, "]}");
    offset += bytes;
  }
  header += "}";
  // Pad so the data starts 8-byte aligned, as the reference writer does.
  while ((8 + header.size()) % 8 != 0) header.push_back(' ');

  auto s = std::make_unique<State>();
  s->path = path;
  s->tmp = absl::StrCat(path, ".tmp.", ::getpid());
  s->tensors = tensors;
  s->bf16 = bf16;
  s->fd = ::open(s->tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (s->fd < 0) {
    return absl::InternalError(absl::StrCat("cannot create ", s->tmp, ": ", std::strerror(errno)));
  }
  std::unique_ptr<SafetensorsWriter> w(new SafetensorsWriter(std::move(s)));
  const uint64_t header_len = header.size();
  absl::Status st = w->s_->Put(&header_len, 8);
  if (st.ok()) st = w->s_->Put(header.data(), header.size());
  if (!st.ok()) return st;
  return w;
}

absl::Status SafetensorsWriter::Write(std::string_view name, const float* data, size_t count) {
  State& s = *s_;
  if (s.fd < 0 || s.next >= s.tensors.size() || s.tensors[s.next].name != name) {
    return absl::FailedPreconditionError(absl::StrCat(
        s.path, ": tensor ", absl::string_view(name.data(), name.size()), " written out of order; expected ",
        s.next < s.tensors.size() ? s.tensors[s.next].name : std::string("no more tensors")));
  }
  const TensorSpec& t = s.tensors[s.next];
  if (static_cast<uint64_t>(Elements(t.shape)) != count) {
    return absl::InvalidArgumentError(absl::StrCat(s.path, ": tensor ", t.name, " has shape ",
                                                   ShapeString(t.shape), " but ", count, " values"));
  }
  ++s.next;
  if (!s.bf16) return s.Put(data, count * sizeof(float));
  // In pieces, so a large tensor needs no second full-size buffer.
  constexpr size_t kPiece = 1 << 20;
  for (size_t i = 0; i < count; i += kPiece) {
    const size_t n = std::min(kPiece, count - i);
    s.half.resize(n);
    for (size_t j = 0; j < n; ++j) s.half[j] = FloatToBf16(data[i + j]);
    if (absl::Status st = s.Put(s.half.data(), n * 2); !st.ok()) return st;
  }
  return absl::OkStatus();
}

absl::Status SafetensorsWriter::Finish() {
  State& s = *s_;
  if (s.fd < 0) return absl::FailedPreconditionError(absl::StrCat(s.path, ": already finished"));
  if (s.next != s.tensors.size()) {
    return absl::FailedPreconditionError(absl::StrCat(
        s.path, ": finished after ", s.next, " of ", s.tensors.size(), " tensors"));
  }
  absl::Status st;
  if (::fsync(s.fd) != 0) {
    st = absl::InternalError(absl::StrCat("cannot fsync ", s.tmp, ": ", std::strerror(errno)));
  }
  if (::close(s.fd) != 0 && st.ok()) {
    st = absl::InternalError(absl::StrCat("cannot close ", s.tmp, ": ", std::strerror(errno)));
  }
  s.fd = -1;
  if (st.ok() && ::rename(s.tmp.c_str(), s.path.c_str()) != 0) {
    st = absl::InternalError(absl::StrCat("cannot rename ", s.tmp, " to ", s.path, ": ",
                                          std::strerror(errno)));
  }
  if (!st.ok()) return st;  // the destructor removes the temp file
  s.finished = true;
  return SyncDir(std::filesystem::path(s.path).parent_path().string());
}

absl::Status WriteSafetensors(const std::string& path, const std::vector<NamedTensor>& tensors,
                              const std::map<std::string, std::string>& metadata) {
  std::vector<const NamedTensor*> ptrs;
  for (const NamedTensor& t : tensors) ptrs.push_back(&t);
  return WriteSafetensors(path, ptrs, metadata);
}

absl::Status WriteSafetensors(const std::string& path, const std::vector<const NamedTensor*>& tensors,
                              const std::map<std::string, std::string>& metadata, TensorDtype dtype) {
  std::vector<TensorSpec> specs;
  for (const NamedTensor* t : tensors) {
    const int64_t elems = Elements(t->shape);
    if (elems >= 0 && static_cast<uint64_t>(elems) != t->data.size()) {
      return absl::InvalidArgumentError(absl::StrCat(path, ": tensor ", t->name, " has shape ",
                                                     ShapeString(t->shape), " but ", t->data.size(),
                                                     " values"));
    }
    specs.push_back({t->name, t->shape});
  }
  absl::StatusOr<std::unique_ptr<SafetensorsWriter>> w =
      SafetensorsWriter::Create(path, specs, metadata, dtype);
  if (!w.ok()) return w.status();
  for (const NamedTensor* t : tensors) {
    if (absl::Status st = (*w)->Write(t->name, t->data.data(), t->data.size()); !st.ok()) return st;
  }
  return (*w)->Finish();
}

}  // namespace moe
