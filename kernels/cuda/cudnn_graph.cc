// cuDNN's graph API through dlopen (cudnn_graph.h says why). Descriptors are created, given
// their attributes and finalized in the order the backend API asks: tensors, then the operations
// that name them, then the operation graph, its heuristics, the execution plan; a variant pack
// binds memory at each run.
#include "kernels/cuda/cudnn_graph.h"

#if __has_include(<cudnn_graph.h>) && !defined(MOE_NO_CUDNN)  // MOE_NO_CUDNN: build as if absent
#define MOE_HAVE_CUDNN_HEADERS 1
#include <cudnn_graph.h>
#include <dlfcn.h>
#endif

#include <cmath>
#include <cstdio>
#include <mutex>

namespace moe::cuda::cudnn {

#ifndef MOE_HAVE_CUDNN_HEADERS

bool Available(std::string* why) {
  if (why != nullptr) *why = "this build had no cuDNN headers (cudnn_graph.h)";
  return false;
}
int64_t Version() { return 0; }
struct GraphState {};
Graph::Graph() = default;
Graph::~Graph() = default;
TensorRef Graph::Tensor(std::vector<int64_t>, std::vector<int64_t>, Type, bool) { return {}; }
TensorRef Graph::Scalar(float) { return {}; }
TensorRef Graph::Like(const TensorRef&, Type) { return {}; }
TensorRef Graph::Pointwise(Pw, const TensorRef&, Type, Type) { return {}; }
TensorRef Graph::Pointwise(Pw, const TensorRef&, const TensorRef&, Type, Type) { return {}; }
void Graph::PointwiseTo(Pw, const TensorRef&, const TensorRef*, const TensorRef*, const TensorRef&, Type, int64_t) {}
TensorRef Graph::GenIndex(const TensorRef&, int64_t) { return {}; }
void Graph::Matmul(const TensorRef&, const TensorRef&, const TensorRef&) {}
void Graph::Reduction(Reduce, const TensorRef&, const TensorRef&) {}
void Graph::Reshape(const TensorRef&, const TensorRef&) {}
bool Graph::Finish(std::string* why) { return Available(why); }
bool Graph::Run(const std::map<int64_t, void*>&, void*, cudaStream_t, std::string* why) { return Available(why); }

#else

namespace {

// The entry points used, looked up in libcudnn.so.9.
struct Api {
  decltype(&cudnnGetVersion) get_version = nullptr;
  decltype(&cudnnCreate) create = nullptr;
  decltype(&cudnnSetStream) set_stream = nullptr;
  decltype(&cudnnGetErrorString) error_string = nullptr;
  decltype(&cudnnGetLastErrorString) last_error = nullptr;
  decltype(&cudnnBackendCreateDescriptor) create_desc = nullptr;
  decltype(&cudnnBackendDestroyDescriptor) destroy_desc = nullptr;
  decltype(&cudnnBackendSetAttribute) set_attr = nullptr;
  decltype(&cudnnBackendGetAttribute) get_attr = nullptr;
  decltype(&cudnnBackendFinalize) finalize = nullptr;
  decltype(&cudnnBackendExecute) execute = nullptr;
  cudnnHandle_t handle = nullptr;  // one per process (a worker drives one GPU)
  std::string why;                 // why not, when unavailable
};

template <typename F>
bool Find(void* lib, const char* name, F& f, std::string& why) {
  f = reinterpret_cast<F>(dlsym(lib, name));
  if (f == nullptr && why.empty()) why = std::string("libcudnn has no ") + name;
  return f != nullptr;
}

const Api& TheApi() {
  static Api api;
  static std::once_flag once;
  std::call_once(once, [] {
    void* lib = dlopen("libcudnn.so.9", RTLD_NOW | RTLD_LOCAL);
    if (lib == nullptr) lib = dlopen("libcudnn.so", RTLD_NOW | RTLD_LOCAL);
    if (lib == nullptr) {
      const char* err = dlerror();
      api.why = std::string("libcudnn.so.9 did not open: ") + (err != nullptr ? err : "not found");
      return;
    }
    std::string& why = api.why;
    bool ok = Find(lib, "cudnnGetVersion", api.get_version, why) && Find(lib, "cudnnCreate", api.create, why) &&
              Find(lib, "cudnnSetStream", api.set_stream, why) &&
              Find(lib, "cudnnGetErrorString", api.error_string, why) &&
              Find(lib, "cudnnGetLastErrorString", api.last_error, why) &&
              Find(lib, "cudnnBackendCreateDescriptor", api.create_desc, why) &&
              Find(lib, "cudnnBackendDestroyDescriptor", api.destroy_desc, why) &&
              Find(lib, "cudnnBackendSetAttribute", api.set_attr, why) &&
              Find(lib, "cudnnBackendGetAttribute", api.get_attr, why) &&
              Find(lib, "cudnnBackendFinalize", api.finalize, why) &&
              Find(lib, "cudnnBackendExecute", api.execute, why);
    if (!ok) return;
    if (api.get_version() < 90000) {
      why = "libcudnn is version " + std::to_string(api.get_version()) + ", the graph attention needs 9.0 or later";
      return;
    }
    const cudnnStatus_t st = api.create(&api.handle);
    if (st != CUDNN_STATUS_SUCCESS) {
      why = std::string("cudnnCreate failed: ") + api.error_string(st);
      api.handle = nullptr;
    }
  });
  return api;
}

// cuDNN's reason for the last failure, with the status's name.
std::string Reason(const Api& api, cudnnStatus_t st) {
  char buf[512] = {0};
  api.last_error(buf, sizeof(buf));
  std::string r = api.error_string(st);
  if (buf[0] != '\0') r += std::string(" (") + buf + ")";
  return r;
}

cudnnDataType_t ToCudnn(Type t) {
  switch (t) {
    case Type::kFloat: return CUDNN_DATA_FLOAT;
    case Type::kBf16: return CUDNN_DATA_BFLOAT16;
    case Type::kInt32: return CUDNN_DATA_INT32;
    case Type::kBool: return CUDNN_DATA_BOOLEAN;
  }
  return CUDNN_DATA_FLOAT;
}

cudnnPointwiseMode_t ToCudnn(Pw op) {
  switch (op) {
    case Pw::kMul: return CUDNN_POINTWISE_MUL;
    case Pw::kSub: return CUDNN_POINTWISE_SUB;
    case Pw::kDiv: return CUDNN_POINTWISE_DIV;
    case Pw::kAdd: return CUDNN_POINTWISE_ADD;
    case Pw::kExp: return CUDNN_POINTWISE_EXP;
    case Pw::kLog: return CUDNN_POINTWISE_LOG;
    case Pw::kGenIndex: return CUDNN_POINTWISE_GEN_INDEX;
    case Pw::kCmpGe: return CUDNN_POINTWISE_CMP_GE;
    case Pw::kBinarySelect: return CUDNN_POINTWISE_BINARY_SELECT;
    case Pw::kIdentity: return CUDNN_POINTWISE_IDENTITY;
  }
  return CUDNN_POINTWISE_IDENTITY;
}

// One backend descriptor, destroyed with its owner.
class Desc {
 public:
  Desc() = default;
  Desc(const Api& api, cudnnBackendDescriptorType_t type, std::string& error) : api_(&api) {
    const cudnnStatus_t st = api.create_desc(type, &d_);
    if (st != CUDNN_STATUS_SUCCESS) {
      d_ = nullptr;
      if (error.empty()) error = "creating descriptor type " + std::to_string(type) + ": " + Reason(api, st);
    }
  }
  ~Desc() {
    if (d_ != nullptr) api_->destroy_desc(d_);
  }
  Desc(Desc&& o) noexcept : api_(o.api_), d_(o.d_) { o.d_ = nullptr; }
  Desc& operator=(Desc&& o) noexcept {
    std::swap(api_, o.api_);
    std::swap(d_, o.d_);
    return *this;
  }
  cudnnBackendDescriptor_t get() const { return d_; }

 private:
  const Api* api_ = nullptr;
  cudnnBackendDescriptor_t d_ = nullptr;
};

}  // namespace

struct GraphState {
  const Api* api = nullptr;
  std::map<int64_t, Desc> tensors;      // by uid
  std::vector<Desc> ops, op_helpers;    // operations, and the pointwise/matmul/reduction descs they name
  std::map<int64_t, float> scalars;     // by-value tensors' values, by uid
  Desc graph, plan;

  // Sets one attribute, recording the first failure with `what` in `error`.
  template <typename T>
  void Set(cudnnBackendDescriptor_t d, cudnnBackendAttributeName_t name, cudnnBackendAttributeType_t type,
           int64_t count, const T* values, const char* what, std::string& error) {
    if (d == nullptr || !error.empty()) return;
    const cudnnStatus_t st = api->set_attr(d, name, type, count, values);
    if (st != CUDNN_STATUS_SUCCESS) error = std::string("setting ") + what + ": " + Reason(*api, st);
  }
  void Finalize(cudnnBackendDescriptor_t d, const char* what, std::string& error) {
    if (d == nullptr || !error.empty()) return;
    const cudnnStatus_t st = api->finalize(d);
    if (st != CUDNN_STATUS_SUCCESS) error = std::string("finalizing ") + what + ": " + Reason(*api, st);
  }
  cudnnBackendDescriptor_t T(const TensorRef& r) {
    auto it = tensors.find(r.uid);
    return it == tensors.end() ? nullptr : it->second.get();
  }
};

bool Available(std::string* why) {
  const Api& api = TheApi();
  if (api.handle == nullptr && why != nullptr) *why = api.why;
  return api.handle != nullptr;
}

int64_t Version() {
  const Api& api = TheApi();
  return api.handle != nullptr ? static_cast<int64_t>(api.get_version()) : 0;
}

Graph::Graph() : s_(std::make_unique<GraphState>()) {
  s_->api = &TheApi();
  if (s_->api->handle == nullptr) error_ = s_->api->why;
}

Graph::~Graph() = default;

TensorRef Graph::Tensor(std::vector<int64_t> dims, std::vector<int64_t> strides, Type type, bool is_virtual) {
  TensorRef r{next_uid_++, std::move(dims), std::move(strides), type};
  if (!error_.empty()) return r;
  Desc d(*s_->api, CUDNN_BACKEND_TENSOR_DESCRIPTOR, error_);
  const cudnnDataType_t dt = ToCudnn(type);
  const int64_t align = 16, n = static_cast<int64_t>(r.dims.size());
  const bool virt = is_virtual;
  s_->Set(d.get(), CUDNN_ATTR_TENSOR_DATA_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &dt, "a tensor's type", error_);
  s_->Set(d.get(), CUDNN_ATTR_TENSOR_DIMENSIONS, CUDNN_TYPE_INT64, n, r.dims.data(), "a tensor's dims", error_);
  s_->Set(d.get(), CUDNN_ATTR_TENSOR_STRIDES, CUDNN_TYPE_INT64, n, r.strides.data(), "a tensor's strides", error_);
  s_->Set(d.get(), CUDNN_ATTR_TENSOR_UNIQUE_ID, CUDNN_TYPE_INT64, 1, &r.uid, "a tensor's id", error_);
  s_->Set(d.get(), CUDNN_ATTR_TENSOR_BYTE_ALIGNMENT, CUDNN_TYPE_INT64, 1, &align, "a tensor's alignment", error_);
  s_->Set(d.get(), CUDNN_ATTR_TENSOR_IS_VIRTUAL, CUDNN_TYPE_BOOLEAN, 1, &virt, "a tensor's virtual flag", error_);
  s_->Finalize(d.get(), "a tensor", error_);
  s_->tensors.emplace(r.uid, std::move(d));
  return r;
}

TensorRef Graph::Scalar(float value) {
  TensorRef r{next_uid_++, {1, 1, 1, 1}, {1, 1, 1, 1}, Type::kFloat};
  if (!error_.empty()) return r;
  Desc d(*s_->api, CUDNN_BACKEND_TENSOR_DESCRIPTOR, error_);
  const cudnnDataType_t dt = CUDNN_DATA_FLOAT;
  const int64_t align = 16;
  const bool by_value = true;
  s_->Set(d.get(), CUDNN_ATTR_TENSOR_DATA_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &dt, "a scalar's type", error_);
  s_->Set(d.get(), CUDNN_ATTR_TENSOR_DIMENSIONS, CUDNN_TYPE_INT64, 4, r.dims.data(), "a scalar's dims", error_);
  s_->Set(d.get(), CUDNN_ATTR_TENSOR_STRIDES, CUDNN_TYPE_INT64, 4, r.strides.data(), "a scalar's strides", error_);
  s_->Set(d.get(), CUDNN_ATTR_TENSOR_UNIQUE_ID, CUDNN_TYPE_INT64, 1, &r.uid, "a scalar's id", error_);
  s_->Set(d.get(), CUDNN_ATTR_TENSOR_BYTE_ALIGNMENT, CUDNN_TYPE_INT64, 1, &align, "a scalar's alignment", error_);
  s_->Set(d.get(), CUDNN_ATTR_TENSOR_IS_BY_VALUE, CUDNN_TYPE_BOOLEAN, 1, &by_value, "a scalar's by-value flag",
          error_);
  s_->Finalize(d.get(), "a scalar", error_);
  s_->tensors.emplace(r.uid, std::move(d));
  s_->scalars[r.uid] = value;
  return r;
}

TensorRef Graph::Like(const TensorRef& x, Type type) { return Tensor(x.dims, x.strides, type, /*is_virtual=*/true); }

TensorRef Graph::Pointwise(Pw op, const TensorRef& x, Type out_type, Type math) {
  TensorRef y = Like(x, out_type);
  PointwiseTo(op, x, nullptr, nullptr, y, math);
  return y;
}

TensorRef Graph::Pointwise(Pw op, const TensorRef& x, const TensorRef& b, Type out_type, Type math) {
  TensorRef y = Like(x, out_type);
  PointwiseTo(op, x, &b, nullptr, y, math);
  return y;
}

TensorRef Graph::GenIndex(const TensorRef& x, int64_t axis) {
  TensorRef y = Like(x, Type::kInt32);
  PointwiseTo(Pw::kGenIndex, x, nullptr, nullptr, y, Type::kFloat, axis);
  return y;
}

void Graph::PointwiseTo(Pw op, const TensorRef& x, const TensorRef* b, const TensorRef* t, const TensorRef& y,
                        Type math, int64_t axis) {
  if (!error_.empty()) return;
  GraphState& s = *s_;
  Desc pw(*s.api, CUDNN_BACKEND_POINTWISE_DESCRIPTOR, error_);
  const cudnnPointwiseMode_t mode = ToCudnn(op);
  const cudnnDataType_t prec = ToCudnn(math);
  s.Set(pw.get(), CUDNN_ATTR_POINTWISE_MODE, CUDNN_TYPE_POINTWISE_MODE, 1, &mode, "a pointwise mode", error_);
  s.Set(pw.get(), CUDNN_ATTR_POINTWISE_MATH_PREC, CUDNN_TYPE_DATA_TYPE, 1, &prec, "a pointwise precision", error_);
  if (axis >= 0) s.Set(pw.get(), CUDNN_ATTR_POINTWISE_AXIS, CUDNN_TYPE_INT64, 1, &axis, "an index axis", error_);
  s.Finalize(pw.get(), "a pointwise descriptor", error_);
  Desc o(*s.api, CUDNN_BACKEND_OPERATION_POINTWISE_DESCRIPTOR, error_);
  cudnnBackendDescriptor_t pwd = pw.get(), xd = s.T(x), yd = s.T(y);
  s.Set(o.get(), CUDNN_ATTR_OPERATION_POINTWISE_PW_DESCRIPTOR, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &pwd,
        "a pointwise op's mode", error_);
  s.Set(o.get(), CUDNN_ATTR_OPERATION_POINTWISE_XDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &xd, "a pointwise input",
        error_);
  if (b != nullptr) {
    cudnnBackendDescriptor_t bd = s.T(*b);
    s.Set(o.get(), CUDNN_ATTR_OPERATION_POINTWISE_BDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &bd,
          "a pointwise second input", error_);
  }
  if (t != nullptr) {
    cudnnBackendDescriptor_t td = s.T(*t);
    s.Set(o.get(), CUDNN_ATTR_OPERATION_POINTWISE_TDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &td,
          "a pointwise third input", error_);
  }
  s.Set(o.get(), CUDNN_ATTR_OPERATION_POINTWISE_YDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &yd, "a pointwise output",
        error_);
  s.Finalize(o.get(), "a pointwise operation", error_);
  s.op_helpers.push_back(std::move(pw));
  s.ops.push_back(std::move(o));
}

void Graph::Matmul(const TensorRef& a, const TensorRef& b, const TensorRef& c) {
  if (!error_.empty()) return;
  GraphState& s = *s_;
  Desc mm(*s.api, CUDNN_BACKEND_MATMUL_DESCRIPTOR, error_);
  const cudnnDataType_t comp = CUDNN_DATA_FLOAT;
  s.Set(mm.get(), CUDNN_ATTR_MATMUL_COMP_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &comp, "a matmul's compute type", error_);
  s.Finalize(mm.get(), "a matmul descriptor", error_);
  Desc o(*s.api, CUDNN_BACKEND_OPERATION_MATMUL_DESCRIPTOR, error_);
  cudnnBackendDescriptor_t mmd = mm.get(), ad = s.T(a), bd = s.T(b), cd = s.T(c);
  s.Set(o.get(), CUDNN_ATTR_OPERATION_MATMUL_ADESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &ad, "a matmul's A", error_);
  s.Set(o.get(), CUDNN_ATTR_OPERATION_MATMUL_BDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &bd, "a matmul's B", error_);
  s.Set(o.get(), CUDNN_ATTR_OPERATION_MATMUL_CDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &cd, "a matmul's C", error_);
  s.Set(o.get(), CUDNN_ATTR_OPERATION_MATMUL_DESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &mmd, "a matmul's descriptor",
        error_);
  s.Finalize(o.get(), "a matmul operation", error_);
  s.op_helpers.push_back(std::move(mm));
  s.ops.push_back(std::move(o));
}

void Graph::Reduction(Reduce op, const TensorRef& x, const TensorRef& y) {
  if (!error_.empty()) return;
  GraphState& s = *s_;
  Desc rd(*s.api, CUDNN_BACKEND_REDUCTION_DESCRIPTOR, error_);
  const cudnnReduceTensorOp_t rop = op == Reduce::kMax ? CUDNN_REDUCE_TENSOR_MAX : CUDNN_REDUCE_TENSOR_ADD;
  const cudnnDataType_t comp = CUDNN_DATA_FLOAT;
  s.Set(rd.get(), CUDNN_ATTR_REDUCTION_OPERATOR, CUDNN_TYPE_REDUCTION_OPERATOR_TYPE, 1, &rop, "a reduction's operator",
        error_);
  s.Set(rd.get(), CUDNN_ATTR_REDUCTION_COMP_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &comp, "a reduction's type", error_);
  s.Finalize(rd.get(), "a reduction descriptor", error_);
  Desc o(*s.api, CUDNN_BACKEND_OPERATION_REDUCTION_DESCRIPTOR, error_);
  cudnnBackendDescriptor_t rdd = rd.get(), xd = s.T(x), yd = s.T(y);
  s.Set(o.get(), CUDNN_ATTR_OPERATION_REDUCTION_XDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &xd, "a reduction's input",
        error_);
  s.Set(o.get(), CUDNN_ATTR_OPERATION_REDUCTION_YDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &yd, "a reduction's output",
        error_);
  s.Set(o.get(), CUDNN_ATTR_OPERATION_REDUCTION_DESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &rdd,
        "a reduction's descriptor", error_);
  s.Finalize(o.get(), "a reduction operation", error_);
  s.op_helpers.push_back(std::move(rd));
  s.ops.push_back(std::move(o));
}

void Graph::Reshape(const TensorRef& x, const TensorRef& y) {
  if (!error_.empty()) return;
  GraphState& s = *s_;
  Desc o(*s.api, CUDNN_BACKEND_OPERATION_RESHAPE_DESCRIPTOR, error_);
  cudnnBackendDescriptor_t xd = s.T(x), yd = s.T(y);
  s.Set(o.get(), CUDNN_ATTR_OPERATION_RESHAPE_XDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &xd, "a reshape's input",
        error_);
  s.Set(o.get(), CUDNN_ATTR_OPERATION_RESHAPE_YDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &yd, "a reshape's output",
        error_);
  s.Finalize(o.get(), "a reshape operation", error_);
  s.ops.push_back(std::move(o));
}

bool Graph::Finish(std::string* why) {
  GraphState& s = *s_;
  auto fail = [&](const std::string& e) {
    if (why != nullptr) *why = e;
    return false;
  };
  if (!error_.empty()) return fail(error_);
  const Api& api = *s.api;
  s.graph = Desc(api, CUDNN_BACKEND_OPERATIONGRAPH_DESCRIPTOR, error_);
  std::vector<cudnnBackendDescriptor_t> ops;
  for (const Desc& d : s.ops) ops.push_back(d.get());
  cudnnHandle_t handle = api.handle;
  s.Set(s.graph.get(), CUDNN_ATTR_OPERATIONGRAPH_HANDLE, CUDNN_TYPE_HANDLE, 1, &handle, "the graph's handle", error_);
  s.Set(s.graph.get(), CUDNN_ATTR_OPERATIONGRAPH_OPS, CUDNN_TYPE_BACKEND_DESCRIPTOR, static_cast<int64_t>(ops.size()),
        ops.data(), "the graph's operations", error_);
  s.Finalize(s.graph.get(), "the operation graph", error_);
  if (!error_.empty()) return fail(error_);

  Desc heur(api, CUDNN_BACKEND_ENGINEHEUR_DESCRIPTOR, error_);
  cudnnBackendDescriptor_t g = s.graph.get();
  const cudnnBackendHeurMode_t mode = CUDNN_HEUR_MODE_A;
  s.Set(heur.get(), CUDNN_ATTR_ENGINEHEUR_OPERATION_GRAPH, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &g,
        "the heuristics' graph", error_);
  s.Set(heur.get(), CUDNN_ATTR_ENGINEHEUR_MODE, CUDNN_TYPE_HEUR_MODE, 1, &mode, "the heuristics' mode", error_);
  s.Finalize(heur.get(), "the heuristics", error_);
  if (!error_.empty()) return fail(error_);
  int64_t count = 0;
  cudnnStatus_t st = api.get_attr(heur.get(), CUDNN_ATTR_ENGINEHEUR_RESULTS, CUDNN_TYPE_BACKEND_DESCRIPTOR, 0, &count,
                                  nullptr);
  if (st != CUDNN_STATUS_SUCCESS) return fail("counting the heuristics' engine configs: " + Reason(api, st));
  if (count <= 0) return fail("cuDNN's heuristics found no engine for this graph");
  std::vector<Desc> cfgs;
  std::vector<cudnnBackendDescriptor_t> raw;
  for (int64_t i = 0; i < count; ++i) {
    cfgs.emplace_back(api, CUDNN_BACKEND_ENGINECFG_DESCRIPTOR, error_);
    raw.push_back(cfgs.back().get());
  }
  if (!error_.empty()) return fail(error_);
  int64_t got = 0;
  st = api.get_attr(heur.get(), CUDNN_ATTR_ENGINEHEUR_RESULTS, CUDNN_TYPE_BACKEND_DESCRIPTOR, count, &got, raw.data());
  if (st != CUDNN_STATUS_SUCCESS) return fail("reading the heuristics' engine configs: " + Reason(api, st));
  std::string last = "no engine config";
  for (int64_t i = 0; i < got; ++i) {
    std::string err;
    Desc plan(api, CUDNN_BACKEND_EXECUTION_PLAN_DESCRIPTOR, err);
    cudnnBackendDescriptor_t cfg = raw[static_cast<size_t>(i)];
    s.Set(plan.get(), CUDNN_ATTR_EXECUTION_PLAN_HANDLE, CUDNN_TYPE_HANDLE, 1, &handle, "the plan's handle", err);
    s.Set(plan.get(), CUDNN_ATTR_EXECUTION_PLAN_ENGINE_CONFIG, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &cfg,
          "the plan's engine config", err);
    s.Finalize(plan.get(), "an execution plan", err);
    if (!err.empty()) {
      last = err;
      continue;
    }
    int64_t ws = 0, n = 0;
    st = api.get_attr(plan.get(), CUDNN_ATTR_EXECUTION_PLAN_WORKSPACE_SIZE, CUDNN_TYPE_INT64, 1, &n, &ws);
    if (st != CUDNN_STATUS_SUCCESS) {
      last = "reading a plan's workspace size: " + Reason(api, st);
      continue;
    }
    workspace_bytes_ = ws;
    s.plan = std::move(plan);
    return true;
  }
  return fail("every engine config cuDNN offered (" + std::to_string(got) + ") was refused; the last: " + last);
}

bool Graph::Run(const std::map<int64_t, void*>& ptrs, void* workspace, cudaStream_t stream, std::string* why) {
  GraphState& s = *s_;
  auto fail = [&](const std::string& e) {
    if (why != nullptr) *why = e;
    return false;
  };
  if (s.plan.get() == nullptr) return fail("the graph has no execution plan (Finish failed or was not called)");
  const Api& api = *s.api;
  std::vector<int64_t> uids;
  std::vector<void*> data;
  for (const auto& [uid, p] : ptrs) {
    uids.push_back(uid);
    data.push_back(p);
  }
  for (auto& [uid, v] : s.scalars) {
    uids.push_back(uid);
    data.push_back(&v);
  }
  std::string err;
  Desc pack(api, CUDNN_BACKEND_VARIANT_PACK_DESCRIPTOR, err);
  const auto n = static_cast<int64_t>(uids.size());
  s.Set(pack.get(), CUDNN_ATTR_VARIANT_PACK_UNIQUE_IDS, CUDNN_TYPE_INT64, n, uids.data(), "the run's ids", err);
  s.Set(pack.get(), CUDNN_ATTR_VARIANT_PACK_DATA_POINTERS, CUDNN_TYPE_VOID_PTR, n, data.data(), "the run's pointers",
        err);
  s.Set(pack.get(), CUDNN_ATTR_VARIANT_PACK_WORKSPACE, CUDNN_TYPE_VOID_PTR, 1, &workspace, "the run's workspace", err);
  s.Finalize(pack.get(), "the variant pack", err);
  if (!err.empty()) return fail(err);
  cudnnStatus_t st = api.set_stream(api.handle, stream);
  if (st != CUDNN_STATUS_SUCCESS) return fail("cudnnSetStream: " + Reason(api, st));
  st = api.execute(api.handle, s.plan.get(), pack.get());
  if (st != CUDNN_STATUS_SUCCESS) return fail("running the plan: " + Reason(api, st));
  return true;
}

#endif  // MOE_HAVE_CUDNN_HEADERS

}  // namespace moe::cuda::cudnn
