// The fused attention graphs handed to cuDNN (cudnn_sdpa.h). cuDNN's runtime fusion engines
// recognise flash attention by the shape of the graph, so the graphs below are written op by op
// in the order those engines expect (the order cuDNN's frontend builds, whose operation list is
// public): forward S = Q K^T, scale, causal mask, softmax with its statistics, O = P V; backward
// D = rowsum(dO * O), P again from the statistics, dV = P^T dO, dS = P * (dO V^T - D) * scale,
// dK = dS^T Q, dQ = dS K. Built once per shape and kept; the workspace is one buffer that grows.
#include "kernels/cuda/cudnn_sdpa.h"

#include <atomic>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <tuple>

#include "kernels/cuda/cudnn_graph.h"

namespace moe::cuda {
namespace {

using cudnn::Graph;
using cudnn::Pw;
using cudnn::Reduce;
using cudnn::TensorRef;
using cudnn::Type;

struct Shape {
  int b, t, h, hkv, hd;
  bool backward, atomic_dq;
  bool operator<(const Shape& o) const {
    return std::tie(b, t, h, hkv, hd, backward, atomic_dq) <
           std::tie(o.b, o.t, o.h, o.hkv, o.hd, o.backward, o.atomic_dq);
  }
};

// A built graph and the tensors a run binds.
struct Plan {
  Graph graph;
  TensorRef q, k, v, o, stats, dout, dq, dk, dv, dsum, dq_acc;
  int64_t extra_bytes = 0;  // D (and dq's fp32 accumulator) after cuDNN's own workspace
};

// Q, K^T and V of the fused qkv rows as cuDNN views (b, heads, rows, cols): no copies.
struct QkvViews {
  int64_t b, t, h, hkv, hd, row, seq;  // row: one token's qkv width; seq: one sequence's
  explicit QkvViews(const Shape& s)
      : b(s.b), t(s.t), h(s.h), hkv(s.hkv), hd(s.hd), row(int64_t{s.h + 2 * s.hkv} * s.hd), seq(s.t * row) {}
  std::vector<int64_t> HeadsDims(int64_t heads) const { return {b, heads, t, hd}; }
  std::vector<int64_t> RowStrides() const { return {seq, hd, row, 1}; }        // q, k, v (and their gradients)
  std::vector<int64_t> TransposedStrides() const { return {seq, hd, 1, row}; }  // k^T, v^T
  std::vector<int64_t> OutStrides() const { return {t * h * hd, hd, h * hd, 1}; }  // out, dout (b, t, h*hd)
  std::vector<int64_t> ScoreDims() const { return {b, h, t, t}; }
  std::vector<int64_t> ScoreStrides() const { return {h * t * t, t * t, t, 1}; }
  std::vector<int64_t> ScoreTStrides() const { return {h * t * t, t * t, 1, t}; }
  std::vector<int64_t> RowStatDims() const { return {b, h, t, 1}; }
  std::vector<int64_t> RowStatStrides() const { return {h * t, t, 1, 1}; }
};

// Scores scaled and masked causally (query i sees keys j <= i).
TensorRef ScaledMasked(Graph& g, const TensorRef& s, const TensorRef& scale, const TensorRef* stats) {
  TensorRef x = g.Pointwise(Pw::kMul, s, scale, Type::kFloat);
  if (stats != nullptr) x = g.Pointwise(Pw::kSub, x, *stats, Type::kFloat);
  const TensorRef row = g.GenIndex(x, 2), col = g.GenIndex(x, 3);
  const TensorRef keep = g.Pointwise(Pw::kCmpGe, row, col, Type::kBool, Type::kBool);
  const TensorRef neg = g.Scalar(-std::numeric_limits<float>::infinity());
  TensorRef y = g.Like(x, Type::kFloat);
  g.PointwiseTo(Pw::kBinarySelect, x, &neg, &keep, y);
  return y;
}

void BuildForward(Plan& p, const Shape& s) {
  Graph& g = p.graph;
  const QkvViews v(s);
  p.q = g.Tensor(v.HeadsDims(v.h), v.RowStrides(), Type::kBf16, false);
  p.k = g.Tensor({v.b, v.hkv, v.hd, v.t}, v.TransposedStrides(), Type::kBf16, false);
  p.v = g.Tensor(v.HeadsDims(v.hkv), v.RowStrides(), Type::kBf16, false);
  const TensorRef scores = g.Tensor(v.ScoreDims(), v.ScoreStrides(), Type::kFloat, true);
  g.Matmul(p.q, p.k, scores);
  const TensorRef scale = g.Scalar(1.0f / std::sqrt(static_cast<float>(s.hd)));
  const TensorRef x = ScaledMasked(g, scores, scale, nullptr);
  // Softmax, keeping max + log(sum) per row as the statistics.
  const TensorRef mx = g.Tensor(v.RowStatDims(), v.RowStatStrides(), Type::kFloat, true);
  g.Reduction(Reduce::kMax, x, mx);
  const TensorRef e = g.Pointwise(Pw::kExp, g.Pointwise(Pw::kSub, x, mx, Type::kFloat), Type::kFloat);
  const TensorRef sum = g.Tensor(v.RowStatDims(), v.RowStatStrides(), Type::kFloat, true);
  g.Reduction(Reduce::kAdd, e, sum);
  const TensorRef lg = g.Pointwise(Pw::kLog, sum, Type::kFloat);
  p.stats = g.Tensor(v.RowStatDims(), v.RowStatStrides(), Type::kFloat, false);
  g.PointwiseTo(Pw::kAdd, mx, &lg, nullptr, p.stats);
  const TensorRef probs = g.Like(e, Type::kBf16);
  g.PointwiseTo(Pw::kDiv, e, &sum, nullptr, probs);
  p.o = g.Tensor(v.HeadsDims(v.h), v.OutStrides(), Type::kBf16, false);
  g.Matmul(probs, p.v, p.o);
}

// c = a @ b into `out`, which has hkv heads: where hkv < h the product runs per query head into
// a virtual full-head tensor, then the heads of each group are summed.
void GroupedProduct(Graph& g, const QkvViews& v, const TensorRef& a, const TensorRef& b, const TensorRef& out) {
  if (v.hkv == v.h) {
    g.Matmul(a, b, out);
    return;
  }
  const TensorRef full = g.Tensor(v.HeadsDims(v.h), {v.h * v.t * v.hd, v.t * v.hd, v.hd, 1}, Type::kBf16, true);
  g.Matmul(a, b, full);
  g.Reduction(Reduce::kAdd, full, out);
}

void BuildBackward(Plan& p, const Shape& s) {
  Graph& g = p.graph;
  const QkvViews v(s);
  p.q = g.Tensor(v.HeadsDims(v.h), v.RowStrides(), Type::kBf16, false);
  p.k = g.Tensor({v.b, v.hkv, v.hd, v.t}, v.TransposedStrides(), Type::kBf16, false);
  p.v = g.Tensor({v.b, v.hkv, v.hd, v.t}, v.TransposedStrides(), Type::kBf16, false);
  p.o = g.Tensor(v.HeadsDims(v.h), v.OutStrides(), Type::kBf16, false);
  p.dout = g.Tensor(v.HeadsDims(v.h), v.OutStrides(), Type::kBf16, false);
  p.stats = g.Tensor(v.RowStatDims(), v.RowStatStrides(), Type::kFloat, false);
  p.dq = g.Tensor(v.HeadsDims(v.h), v.RowStrides(), Type::kBf16, false);
  p.dk = g.Tensor(v.HeadsDims(v.hkv), v.RowStrides(), Type::kBf16, false);
  p.dv = g.Tensor(v.HeadsDims(v.hkv), v.RowStrides(), Type::kBf16, false);
  // D = rowsum(dO * O), in the workspace.
  const TensorRef prod = g.Tensor(v.HeadsDims(v.h), v.OutStrides(), Type::kFloat, true);
  g.PointwiseTo(Pw::kMul, p.dout, &p.o, nullptr, prod);
  const TensorRef rs = g.Tensor(v.RowStatDims(), v.RowStatStrides(), Type::kFloat, true);
  g.Reduction(Reduce::kAdd, prod, rs);
  const TensorRef one = g.Scalar(1.0f);
  p.dsum = g.Tensor(v.RowStatDims(), v.RowStatStrides(), Type::kFloat, false);
  g.PointwiseTo(Pw::kMul, rs, &one, nullptr, p.dsum);
  // P = exp(scale * Q K^T - stats), masked.
  const TensorRef scores = g.Tensor(v.ScoreDims(), v.ScoreStrides(), Type::kFloat, true);
  g.Matmul(p.q, p.k, scores);
  const TensorRef scale = g.Scalar(1.0f / std::sqrt(static_cast<float>(s.hd)));
  const TensorRef probs = g.Pointwise(Pw::kExp, ScaledMasked(g, scores, scale, &p.stats), Type::kFloat);
  // dV = P^T dO.
  const TensorRef probs_t = g.Tensor(v.ScoreDims(), v.ScoreTStrides(), Type::kBf16, true);
  g.Reshape(probs, probs_t);
  GroupedProduct(g, v, probs_t, p.dout, p.dv);
  // dS = P * (dO V^T - D) * scale.
  const TensorRef dp = g.Tensor(v.ScoreDims(), v.ScoreStrides(), Type::kFloat, true);
  g.Matmul(p.dout, p.v, dp);
  const TensorRef centered = g.Pointwise(Pw::kSub, dp, p.dsum, Type::kFloat);
  const TensorRef ds = g.Pointwise(Pw::kMul, g.Pointwise(Pw::kMul, centered, probs, Type::kFloat), scale, Type::kFloat);
  // dK = dS^T Q.
  const TensorRef ds_t = g.Tensor(v.ScoreDims(), v.ScoreTStrides(), Type::kBf16, true);
  g.Reshape(ds, ds_t);
  GroupedProduct(g, v, ds_t, p.q, p.dk);
  // dQ = dS K: straight into dq (deterministic), or through an fp32 accumulator (atomics).
  const TensorRef k_rows = g.Tensor(v.HeadsDims(v.hkv), v.RowStrides(), Type::kBf16, true);
  g.Reshape(p.k, k_rows);
  if (!s.atomic_dq) {
    g.Matmul(ds, k_rows, p.dq);
  } else {
    p.dq_acc = g.Tensor(v.HeadsDims(v.h), {v.h * v.t * v.hd, v.t * v.hd, v.hd, 1}, Type::kFloat, false);
    g.Matmul(ds, k_rows, p.dq_acc);
    g.PointwiseTo(Pw::kIdentity, p.dq_acc, nullptr, nullptr, p.dq);
  }
  p.extra_bytes = v.b * v.h * v.t * int64_t{sizeof(float)};
  if (s.atomic_dq) p.extra_bytes += v.b * v.h * v.t * v.hd * int64_t{sizeof(float)};
}

constexpr int64_t kAlign = 256;
int64_t RoundUp(int64_t n) { return (n + kAlign - 1) / kAlign * kAlign; }

// Plans by shape (null: refused, said once), and the one workspace, grown as shapes need.
struct Cache {
  std::mutex mu;
  std::map<Shape, std::unique_ptr<Plan>> plans;
  void* workspace = nullptr;
  int64_t workspace_bytes = 0;
};

Cache& TheCache() {
  static Cache* cache = new Cache;  // never destroyed: plans may outlive static destruction order
  return *cache;
}

bool EnvFlag(const char* name, const char* value) {
  const char* v = std::getenv(name);
  return v != nullptr && std::strcmp(v, value) == 0;
}

// The plan for s, built at its first use; null where cuDNN refuses it (*why set).
Plan* PlanFor(const Shape& s, std::string* why) {
  Cache& c = TheCache();
  auto it = c.plans.find(s);
  if (it != c.plans.end()) {
    if (it->second == nullptr && why != nullptr) *why = "refused earlier";
    return it->second.get();
  }
  auto p = std::make_unique<Plan>();
  if (s.backward) {
    BuildBackward(*p, s);
  } else {
    BuildForward(*p, s);
  }
  std::string err;
  bool built = p->graph.Finish(&err);
  if (built) {
    // The deterministic backward's workspace grows with b h t^2 and sits outside the model's
    // accounted memory: past a quarter of what the GPU has free, the project's kernels run it.
    const int64_t need = RoundUp(p->graph.workspace_bytes()) + RoundUp(p->extra_bytes);
    size_t free_b = 0, total_b = 0;
    if (need > c.workspace_bytes && cudaMemGetInfo(&free_b, &total_b) == cudaSuccess &&
        need > c.workspace_bytes + static_cast<int64_t>(free_b / 4)) {
      err = "its workspace of " + std::to_string(need >> 20) + " MiB is over a quarter of the " +
            std::to_string(free_b >> 20) + " MiB the GPU has free";
      built = false;
    }
  }
  if (!built) {
    std::fprintf(stderr,
                 "moe: cuDNN attention %s off for b %d t %d heads %d kv heads %d head size %d: %s; the project's "
                 "kernels run it\n",
                 s.backward ? "backward" : "forward", s.b, s.t, s.h, s.hkv, s.hd, err.c_str());
    if (why != nullptr) *why = err;
    c.plans.emplace(s, nullptr);
    return nullptr;
  }
  return c.plans.emplace(s, std::move(p)).first->second.get();
}

// The workspace for p: cuDNN's own bytes, then p's extra tensors. Null on allocation failure.
char* WorkspaceFor(const Plan& p, std::string* why) {
  Cache& c = TheCache();
  const int64_t need = RoundUp(p.graph.workspace_bytes()) + RoundUp(p.extra_bytes);
  if (need > c.workspace_bytes) {
    if (c.workspace != nullptr) {
      MOE_CUDA_CHECK(cudaDeviceSynchronize());  // earlier runs may still use the old buffer
      MOE_CUDA_CHECK(cudaFree(c.workspace));
      c.workspace = nullptr;
      c.workspace_bytes = 0;
    }
    if (cudaMalloc(&c.workspace, static_cast<size_t>(need)) != cudaSuccess) {
      (void)cudaGetLastError();
      c.workspace = nullptr;
      if (why != nullptr) *why = "no GPU memory for cuDNN's workspace (" + std::to_string(need) + " bytes)";
      return nullptr;
    }
    c.workspace_bytes = need;
  }
  return static_cast<char*>(c.workspace);
}

bool Supported(int b, int t, int h, int hkv, int hd, std::initializer_list<const void*> ptrs, std::string* why) {
  std::string reason;
  if (b <= 0 || t <= 0) {
    reason = "an empty batch";
  } else if (hd % 8 != 0 || hd > 256) {
    reason = "head size " + std::to_string(hd) + " (cuDNN's attention takes multiples of 8 up to 256)";
  } else if (hkv <= 0 || h % hkv != 0) {
    reason = "kv heads not dividing the heads";
  } else if (!Aligned(16, ptrs)) {
    reason = "a buffer not 16-byte aligned";
  } else if (!cudnn::Available(&reason)) {
    static std::once_flag said;  // once a process: every call would ask again
    std::call_once(said, [&] {
      std::fprintf(stderr, "moe: cuDNN's attention is unavailable (%s); the project's kernels run it\n",
                   reason.c_str());
    });
  } else {
    return true;
  }
  if (why != nullptr) *why = reason;
  return false;
}

}  // namespace

static std::atomic<int>& WantedFlag() {  // -1: not read yet, else 0 or 1
  static std::atomic<int> flag{-1};
  return flag;
}

bool CudnnAttentionWanted() {
  std::atomic<int>& flag = WantedFlag();
  int v = flag.load();
  if (v < 0) {
    // On by default: on an H100 it ran small 2.8% and medium 3.2% faster end to end, the same
    // bits every run (README, the thirty-second session). MOE_ATTENTION=ours turns it off.
    const char* e = std::getenv("MOE_ATTENTION");
    v = e != nullptr && std::strcmp(e, "ours") == 0 ? 0 : 1;
    if (v == 1 && e != nullptr && std::strcmp(e, "cudnn") != 0) {
      std::fprintf(stderr, "moe: MOE_ATTENTION=%s is neither 'ours' nor 'cudnn'; cuDNN's attention runs\n", e);
    }
    flag.store(v);
  }
  return v == 1;
}

void SetCudnnAttentionWanted(bool wanted) { WantedFlag().store(wanted ? 1 : 0); }

bool CudnnAttentionForward(bf16* out16, float* lse, const bf16* qkv16, int b, int t, int h, int hkv, int hd,
                           cudaStream_t stream, std::string* why) {
  if (!Supported(b, t, h, hkv, hd, {out16, qkv16}, why)) return false;
  Cache& c = TheCache();
  std::lock_guard<std::mutex> lock(c.mu);
  Plan* p = PlanFor(Shape{b, t, h, hkv, hd, false, false}, why);
  if (p == nullptr) return false;
  char* ws = WorkspaceFor(*p, why);
  if (p->graph.workspace_bytes() > 0 && ws == nullptr) return false;
  bf16* qkv = const_cast<bf16*>(qkv16);
  const std::map<int64_t, void*> ptrs = {{p->q.uid, qkv},
                                         {p->k.uid, qkv + int64_t{h} * hd},
                                         {p->v.uid, qkv + int64_t{h + hkv} * hd},
                                         {p->o.uid, out16},
                                         {p->stats.uid, lse}};
  return p->graph.Run(ptrs, ws, stream, why);
}

bool CudnnAttentionBackward(bf16* dqkv16, const bf16* qkv16, const bf16* out16, const bf16* dout16, const float* lse,
                            int b, int t, int h, int hkv, int hd, cudaStream_t stream, std::string* why) {
  if (!Supported(b, t, h, hkv, hd, {dqkv16, qkv16, out16, dout16}, why)) return false;
  Cache& c = TheCache();
  std::lock_guard<std::mutex> lock(c.mu);
  static const bool atomic = EnvFlag("MOE_CUDNN_ATOMIC_DQ", "1");  // read once, not at every backward
  Plan* p = PlanFor(Shape{b, t, h, hkv, hd, true, atomic}, why);
  if (p == nullptr) return false;
  char* ws = WorkspaceFor(*p, why);
  if (ws == nullptr) return false;
  char* extra = ws + RoundUp(p->graph.workspace_bytes());
  bf16* qkv = const_cast<bf16*>(qkv16);
  std::map<int64_t, void*> ptrs = {{p->q.uid, qkv},
                                   {p->k.uid, qkv + int64_t{h} * hd},
                                   {p->v.uid, qkv + int64_t{h + hkv} * hd},
                                   {p->o.uid, const_cast<bf16*>(out16)},
                                   {p->dout.uid, const_cast<bf16*>(dout16)},
                                   {p->stats.uid, const_cast<float*>(lse)},
                                   {p->dq.uid, dqkv16},
                                   {p->dk.uid, dqkv16 + int64_t{h} * hd},
                                   {p->dv.uid, dqkv16 + int64_t{h + hkv} * hd},
                                   {p->dsum.uid, extra}};
  if (atomic) {
    void* acc = extra + RoundUp(int64_t{b} * h * t * int64_t{sizeof(float)});
    // cuDNN before 9.6 expected the accumulator cleared; clearing costs one pass, so always.
    MOE_CUDA_CHECK(cudaMemsetAsync(acc, 0, sizeof(float) * int64_t{b} * h * t * hd, stream));
    ptrs[p->dq_acc.uid] = acc;
  }
  return p->graph.Run(ptrs, ws, stream, why);
}

}  // namespace moe::cuda
