#include "worker/data/token_split.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"

namespace moe {

absl::StatusOr<std::shared_ptr<const MappedFile>> MappedFile::Open(const std::string& path) {
  const int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    const int err = errno;
    const std::string why = absl::StrCat("cannot open ", path, ": ", std::strerror(err));
    if (err == ENOENT) return absl::NotFoundError(why);
    if (err == EACCES || err == EPERM) return absl::PermissionDeniedError(why);
    return absl::InternalError(why);
  }
  struct stat st {};
  if (fstat(fd, &st) == 0 && S_ISDIR(st.st_mode)) {
    close(fd);
    return absl::InvalidArgumentError(absl::StrCat(path, " is a directory, not a file"));
  }
  if (fstat(fd, &st) != 0) {
    const std::string why = absl::StrCat(path, ": ", std::strerror(errno));
    close(fd);
    return absl::InternalError(why);
  }
  const size_t size = static_cast<size_t>(st.st_size);
  void* p = nullptr;
  if (size > 0) {
    p = mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) {
      const std::string why = absl::StrCat(path, ": cannot map ", size, " bytes: ", std::strerror(errno));
      close(fd);
      return absl::ResourceExhaustedError(why);
    }
  }
  close(fd);  // the mapping stays
  return std::shared_ptr<const MappedFile>(new MappedFile(static_cast<const unsigned char*>(p), size));
}

MappedFile::~MappedFile() {
  if (size_ > 0) munmap(const_cast<unsigned char*>(data_), size_);
}

TokenSplit::TokenSplit(std::vector<uint16_t> tokens) {
  auto owned = std::make_shared<const std::vector<uint16_t>>(std::move(tokens));
  if (!owned->empty()) {
    starts_.push_back(0);
    pieces_.push_back({owned->data(), owned->size()});
    size_ = owned->size();
  }
  owned_.push_back(std::move(owned));
}

void TokenSplit::Append(std::shared_ptr<const MappedFile> file, size_t byte_offset, size_t count) {
  if (count == 0) return;
  starts_.push_back(size_);
  // Shards are read in the machine's order, as the raw files were always read (little-endian).
  pieces_.push_back({reinterpret_cast<const uint16_t*>(file->data() + byte_offset), count});
  size_ += count;
  files_.push_back(std::move(file));
}

void TokenSplit::Append(const TokenSplit& other) {
  for (size_t i = 0; i < other.pieces_.size(); ++i) {
    starts_.push_back(size_);
    pieces_.push_back(other.pieces_[i]);
    size_ += other.pieces_[i].count;
  }
  files_.insert(files_.end(), other.files_.begin(), other.files_.end());
  owned_.insert(owned_.end(), other.owned_.begin(), other.owned_.end());
}

uint16_t TokenSplit::operator[](size_t i) const {
  const size_t p = static_cast<size_t>(std::upper_bound(starts_.begin(), starts_.end(), i) - starts_.begin()) - 1;
  return pieces_[p].data[i - starts_[p]];
}

TokenSplit TokenSplit::Slice(size_t begin, size_t end) const {
  TokenSplit out;
  out.files_ = files_;
  out.owned_ = owned_;
  end = std::min(end, size_);
  for (size_t p = 0; p < pieces_.size() && begin < end; ++p) {
    const size_t first = starts_[p], last = first + pieces_[p].count;
    if (last <= begin || first >= end) continue;
    const size_t from = std::max(begin, first), to = std::min(end, last);
    out.starts_.push_back(out.size_);
    out.pieces_.push_back({pieces_[p].data + (from - first), to - from});
    out.size_ += to - from;
  }
  return out;
}

const uint16_t* TokenSplit::Read(size_t begin, size_t count, std::vector<uint16_t>* scratch) const {
  size_t p = static_cast<size_t>(std::upper_bound(starts_.begin(), starts_.end(), begin) - starts_.begin()) - 1;
  size_t at = begin - starts_[p];
  if (at + count <= pieces_[p].count) return pieces_[p].data + at;
  scratch->resize(count);
  for (size_t done = 0; done < count; ++p, at = 0) {
    const size_t n = std::min(count - done, pieces_[p].count - at);
    std::memcpy(scratch->data() + done, pieces_[p].data + at, n * sizeof(uint16_t));
    done += n;
  }
  return scratch->data();
}

std::vector<uint16_t> TokenSplit::ToVector() const {
  std::vector<uint16_t> out;
  out.reserve(size_);
  for (const Piece& p : pieces_) out.insert(out.end(), p.data, p.data + p.count);
  return out;
}

bool TokenSplit::mapped() const {
  for (const auto& o : owned_) {
    if (!o->empty()) return false;
  }
  return true;
}

bool TokenSplit::operator==(const TokenSplit& other) const {
  if (size_ != other.size_) return false;
  std::vector<uint16_t> a_scratch, b_scratch;
  constexpr size_t kChunk = 1 << 16;
  for (size_t i = 0; i < size_; i += kChunk) {
    const size_t n = std::min(kChunk, size_ - i);
    if (std::memcmp(Read(i, n, &a_scratch), other.Read(i, n, &b_scratch), n * sizeof(uint16_t)) != 0) return false;
  }
  return true;
}

}  // namespace moe
