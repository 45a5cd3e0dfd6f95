// TokenSplit: the uint16 tokens of one split (train or val), as pieces that are either
// memory-mapped from token files (shards, the token cache: the kernel pages them in on demand,
// and they are never copied whole into the process's memory) or owned in memory (text just
// tokenized, tests). Pieces of several files read as one sequence of tokens, in order. A mapped
// file must not be rewritten in place while a job reads it (the token cache is replaced by
// rename, which keeps the old mapping valid).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace moe {

// A whole file mapped read-only; unmapped when the last split holding it goes.
class MappedFile {
 public:
  // The file's bytes; an empty file maps to no bytes.
  static absl::StatusOr<std::shared_ptr<const MappedFile>> Open(const std::string& path);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const unsigned char* data() const { return data_; }
  size_t size() const { return size_; }

 private:
  MappedFile(const unsigned char* data, size_t size) : data_(data), size_(size) {}
  const unsigned char* data_;
  size_t size_;
};

class TokenSplit {
 public:
  TokenSplit() = default;
  // Owns these tokens.
  explicit TokenSplit(std::vector<uint16_t> tokens);

  // Appends `count` tokens of `file` starting at byte `byte_offset` (even; little-endian uint16).
  void Append(std::shared_ptr<const MappedFile> file, size_t byte_offset, size_t count);
  // Appends another split's tokens (sharing what holds them).
  void Append(const TokenSplit& other);

  size_t size() const { return size_; }
  bool empty() const { return size_ == 0; }
  uint16_t operator[](size_t i) const;
  uint16_t front() const { return (*this)[0]; }
  uint16_t back() const { return (*this)[size_ - 1]; }
  // Tokens [begin, end) as a split of their own (sharing the files or the owned tokens).
  TokenSplit Slice(size_t begin, size_t end) const;
  // count tokens from begin: a pointer into a piece when they lie in one, else copied into
  // *scratch (they cross from one file into the next).
  const uint16_t* Read(size_t begin, size_t count, std::vector<uint16_t>* scratch) const;
  std::vector<uint16_t> ToVector() const;
  // Whether every token is in a mapped file (none owned in memory).
  bool mapped() const;

  // The contiguous pieces in order, for scans (hashes, the largest id).
  struct Piece {
    const uint16_t* data;
    size_t count;
  };
  const std::vector<Piece>& pieces() const { return pieces_; }

  bool operator==(const TokenSplit& other) const;

 private:
  std::vector<Piece> pieces_;
  std::vector<size_t> starts_;  // (pieces) index of each piece's first token
  size_t size_ = 0;
  // What keeps the pieces alive.
  std::vector<std::shared_ptr<const MappedFile>> files_;
  std::vector<std::shared_ptr<const std::vector<uint16_t>>> owned_;
};

}  // namespace moe
