// How the GPU's Muon (kernels/cuda/muon.h) batches its Newton-Schulz runs: the Muon tensors of a
// step grouped by wide shape (min(rows, cols), max(rows, cols)) and cut into chunks that fit one
// workspace, and that workspace's size. Plain C++: the CUDA optimizer plans with it and the
// memory estimate (common/memory_estimate.cc) counts the same bytes.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

namespace moe::kernels {

// The workspace holds at most this many fp32 elements of X (512 MiB) unless one tensor needs
// more: the largest configs cannot afford a second copy of all their matrices.
inline constexpr int64_t kMuonWorkspaceCapElements = int64_t{128} << 20;
// Elements of a matrix that one block of the squared-norm reduction sums (a fixed order).
inline constexpr int64_t kMuonNormChunk = 16384;

// Elements from one matrix of `size` elements to the next: 64 (256 bytes of fp32) apart, so that
// every matrix of the strided products is as aligned as the buffer (cuBLASLt picks kernels by it).
inline int64_t MuonStride(int64_t size) { return (size + 63) / 64 * 64; }

// A Muon tensor: `batch` (rows, cols) matrices.
struct MuonTensorShape {
  int64_t batch = 0, rows = 0, cols = 0;
  int64_t Wide() const { return std::min(rows, cols); }
  int64_t Long() const { return std::max(rows, cols); }
  int64_t Elements() const { return batch * MuonStride(rows * cols); }  // in the workspace
};

// Sizes of the workspace's buffers, in elements (partials: squared-norm partial sums).
struct MuonWorkspaceSize {
  int64_t elements = 0, gram = 0, batch = 0, partials = 0;
  // Grows to hold `batch` (rows, cols) matrices at once.
  void Fit(int64_t batch_count, int64_t rows, int64_t cols) {
    const int64_t r = std::min(rows, cols), size = rows * cols;
    elements = std::max(elements, batch_count * MuonStride(size));
    gram = std::max(gram, batch_count * MuonStride(r * r));
    batch = std::max(batch, batch_count);
    partials = std::max(partials, batch_count * ((size + kMuonNormChunk - 1) / kMuonNormChunk));
  }
  // Device bytes: x in fp32 and its operand copy, the Gram matrices and polynomials in the
  // product type (bf16 or fp32), the norms and their partials in double.
  int64_t Bytes(bool bf16_products) const {
    const int64_t op = bf16_products ? 2 : 4;
    return (4 + op) * elements + 2 * op * gram + 8 * (batch + partials);
  }
};

// One Newton-Schulz run: tensors (indices into the planned list, in order) of one wide shape.
struct MuonChunk {
  std::vector<size_t> tensors;
  int64_t batch = 0;  // their matrices
};

// The tensors grouped by wide shape (groups in order of first appearance, tensors in order), each
// group cut greedily into chunks of at most max(kMuonWorkspaceCapElements, the largest tensor's)
// workspace elements; a tensor is never split. *size: the workspace all chunks fit.
inline std::vector<MuonChunk> PlanMuonChunks(const std::vector<MuonTensorShape>& tensors, MuonWorkspaceSize* size) {
  int64_t cap = kMuonWorkspaceCapElements;
  for (const MuonTensorShape& t : tensors) cap = std::max(cap, t.Elements());
  std::vector<MuonChunk> chunks;
  std::vector<bool> planned(tensors.size(), false);
  for (size_t first = 0; first < tensors.size(); ++first) {
    if (planned[first]) continue;
    const MuonTensorShape& key = tensors[first];
    int64_t used = 0;
    chunks.emplace_back();
    for (size_t t = first; t < tensors.size(); ++t) {
      const MuonTensorShape& s = tensors[t];
      if (planned[t] || s.Wide() != key.Wide() || s.Long() != key.Long()) continue;
      if (used > 0 && used + s.Elements() > cap) {
        chunks.emplace_back();
        used = 0;
      }
      chunks.back().tensors.push_back(t);
      chunks.back().batch += s.batch;
      used += s.Elements();
      planned[t] = true;
    }
  }
  *size = MuonWorkspaceSize();
  for (const MuonChunk& c : chunks) {
    const MuonTensorShape& s = tensors[c.tensors.front()];
    size->Fit(c.batch, s.Wide(), s.Long());
  }
  return chunks;
}

}  // namespace moe::kernels
