// A small builder for cuDNN's graph (backend) API, loaded at run time: libcudnn is opened with
// dlopen, so a build needs only cuDNN's headers and a machine without the library runs the
// project's own kernels (cudnn::Available says false, and why). Used by cudnn_sdpa.cc, which
// writes the fused attention graphs; nothing here knows about attention.
//
// A graph is built once per shape: tensors (dims and strides beside each, a unique id each, the
// graph's inner ones virtual), operations on them, then Finish() asks cuDNN's heuristics for
// engine configurations and keeps the first whose execution plan builds. Run() binds device
// pointers to the non-virtual ids and runs the plan on the handle's stream. Every failure is a
// message naming the step and cuDNN's own reason (cudnnGetLastErrorString), never an abort: the
// caller falls back to its own kernels.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "kernels/cuda/common.h"

namespace moe::cuda::cudnn {

// Whether cuDNN 9's graph API is here (the library opens and has every entry point used).
bool Available(std::string* why = nullptr);

// The cuDNN version the opened library reports (e.g. 91900), 0 when unavailable.
int64_t Version();

// Data and operation kinds the attention graphs use (the cuDNN enums behind them stay in the .cc).
enum class Type { kFloat, kBf16, kInt32, kBool };
enum class Pw { kMul, kSub, kDiv, kAdd, kExp, kLog, kGenIndex, kCmpGe, kBinarySelect, kIdentity };
enum class Reduce { kMax, kAdd };

struct TensorRef {
  int64_t uid = -1;
  std::vector<int64_t> dims, strides;
  Type type = Type::kFloat;
};

struct GraphState;  // the cuDNN descriptors (cudnn_graph.cc)

class Graph {
 public:
  Graph();
  ~Graph();
  Graph(const Graph&) = delete;
  Graph& operator=(const Graph&) = delete;

  // A tensor of the graph: non-virtual ones are bound to memory at Run().
  TensorRef Tensor(std::vector<int64_t> dims, std::vector<int64_t> strides, Type type, bool is_virtual);
  // A float scalar passed by value (kept here; Run() binds it).
  TensorRef Scalar(float value);
  // A virtual tensor of x's dims and strides, of the given type.
  TensorRef Like(const TensorRef& x, Type type);

  // y = op(x [, b [, t]]); axis for kGenIndex; math: the precision the op computes in.
  TensorRef Pointwise(Pw op, const TensorRef& x, Type out_type, Type math = Type::kFloat);
  TensorRef Pointwise(Pw op, const TensorRef& x, const TensorRef& b, Type out_type, Type math = Type::kFloat);
  void PointwiseTo(Pw op, const TensorRef& x, const TensorRef* b, const TensorRef* t, const TensorRef& y,
                   Type math = Type::kFloat, int64_t axis = -1);
  TensorRef GenIndex(const TensorRef& x, int64_t axis);
  // c = a @ b over the last two dims (batched over the others), fp32 accumulation.
  void Matmul(const TensorRef& a, const TensorRef& b, const TensorRef& c);
  // y = reduction of x over the dims where y has size 1.
  void Reduction(Reduce op, const TensorRef& x, const TensorRef& y);
  // y: x seen with other dims and strides (a transpose of the view, no data moved).
  void Reshape(const TensorRef& x, const TensorRef& y);

  // Builds the operation graph and the first execution plan that cuDNN accepts. False (with
  // *why) when the graph, its heuristics or every plan is refused.
  bool Finish(std::string* why);
  int64_t workspace_bytes() const { return workspace_bytes_; }
  // Runs the plan: ptrs maps each non-virtual, non-scalar uid to its device memory.
  bool Run(const std::map<int64_t, void*>& ptrs, void* workspace, cudaStream_t stream, std::string* why);

 private:
  std::unique_ptr<GraphState> s_;
  int64_t next_uid_ = 1;
  int64_t workspace_bytes_ = 0;
  std::string error_;  // the first failure while building, reported by Finish
};

}  // namespace moe::cuda::cudnn
