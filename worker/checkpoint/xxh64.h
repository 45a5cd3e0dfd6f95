// XXH64 (the reference algorithm by Yann Collet): the checkpoint manifest's checksum, also used
// by the dataset token cache. Streaming, so a file of any size is hashed through a fixed buffer.
#pragma once

#include <cstddef>
#include <cstdint>

namespace moe {

class Xxh64Hasher {
 public:
  explicit Xxh64Hasher(uint64_t seed = 0);
  void Update(const void* data, size_t len);
  uint64_t Digest() const;  // of everything so far; Update may go on after it
  uint64_t total() const { return total_; }  // bytes hashed

 private:
  void Stripe(const unsigned char* p);
  uint64_t seed_;
  uint64_t v_[4];
  uint64_t total_ = 0;
  unsigned char buf_[32];
  size_t buf_len_ = 0;
};

// XXH64 of one buffer.
uint64_t Xxh64(const void* data, size_t len, uint64_t seed = 0);

}  // namespace moe
