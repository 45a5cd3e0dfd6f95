#include "bench/trace/cupti_trace.h"

#include <cupti.h>

#include <cstdlib>
#include <mutex>

namespace moe::trace {
namespace {

constexpr size_t kBufferBytes = size_t{8} << 20;

std::mutex mu;
Recording* active = nullptr;  // where completed buffers go (guarded by mu)

std::string Why(CUptiResult r, const char* what) {
  const char* text = nullptr;
  cuptiGetResultString(r, &text);
  return std::string(what) + ": " + (text != nullptr ? text : "CUPTI error " + std::to_string(static_cast<int>(r)));
}

const char* CopyName(uint8_t kind) {
  switch (kind) {
    case CUPTI_ACTIVITY_MEMCPY_KIND_HTOD: return "memcpy HtoD";
    case CUPTI_ACTIVITY_MEMCPY_KIND_DTOH: return "memcpy DtoH";
    case CUPTI_ACTIVITY_MEMCPY_KIND_DTOD: return "memcpy DtoD";
    default: return "memcpy other";
  }
}

void CUPTIAPI BufferRequested(uint8_t** buffer, size_t* size, size_t* max_records) {
  *buffer = static_cast<uint8_t*>(std::aligned_alloc(8, kBufferBytes));
  *size = *buffer != nullptr ? kBufferBytes : 0;
  *max_records = 0;
}

void CUPTIAPI BufferCompleted(CUcontext, uint32_t, uint8_t* buffer, size_t, size_t valid) {
  std::lock_guard<std::mutex> lock(mu);
  CUpti_Activity* record = nullptr;
  while (active != nullptr && cuptiActivityGetNextRecord(buffer, valid, &record) == CUPTI_SUCCESS) {
    switch (record->kind) {
      case CUPTI_ACTIVITY_KIND_KERNEL:
      case CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL: {
        const auto* k = reinterpret_cast<const CUpti_ActivityKernel10*>(record);
        active->activities.push_back({ActivityKind::kKernel, ShortKernelName(k->name != nullptr ? k->name : "?"),
                                      k->start, k->end, k->correlationId});
        break;
      }
      case CUPTI_ACTIVITY_KIND_MEMCPY: {
        const auto* c = reinterpret_cast<const CUpti_ActivityMemcpy6*>(record);
        active->activities.push_back({ActivityKind::kMemcpy, CopyName(c->copyKind), c->start, c->end,
                                      c->correlationId});
        break;
      }
      case CUPTI_ACTIVITY_KIND_MEMSET: {
        const auto* m = reinterpret_cast<const CUpti_ActivityMemset4*>(record);
        active->activities.push_back({ActivityKind::kMemset, "memset", m->start, m->end, m->correlationId});
        break;
      }
      case CUPTI_ACTIVITY_KIND_RUNTIME:
      case CUPTI_ACTIVITY_KIND_DRIVER: {
        const auto* a = reinterpret_cast<const CUpti_ActivityAPI*>(record);
        const char* name = nullptr;
        cuptiGetCallbackName(record->kind == CUPTI_ACTIVITY_KIND_RUNTIME ? CUPTI_CB_DOMAIN_RUNTIME_API
                                                                         : CUPTI_CB_DOMAIN_DRIVER_API,
                             a->cbid, &name);
        active->calls.push_back({CallBaseName(name != nullptr ? name : "?"), a->start, a->end, a->correlationId});
        break;
      }
      default: break;
    }
  }
  std::free(buffer);
}

constexpr CUpti_ActivityKind kKinds[] = {CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL, CUPTI_ACTIVITY_KIND_MEMCPY,
                                         CUPTI_ACTIVITY_KIND_MEMSET, CUPTI_ACTIVITY_KIND_RUNTIME,
                                         CUPTI_ACTIVITY_KIND_DRIVER};

}  // namespace

std::string StartRecording() {
  static Recording pending;  // records arriving between Start and Stop
  {
    std::lock_guard<std::mutex> lock(mu);
    if (active != nullptr) return "a recording is already running";
    pending = Recording{};
    active = &pending;
  }
  auto undo = [](const std::string& why) {
    for (CUpti_ActivityKind k : kKinds) cuptiActivityDisable(k);
    std::lock_guard<std::mutex> lock(mu);
    active = nullptr;
    return why;
  };
  if (CUptiResult r = cuptiActivityRegisterCallbacks(BufferRequested, BufferCompleted); r != CUPTI_SUCCESS) {
    return undo(Why(r, "cuptiActivityRegisterCallbacks"));
  }
  for (CUpti_ActivityKind k : kKinds) {
    if (CUptiResult r = cuptiActivityEnable(k); r != CUPTI_SUCCESS) return undo(Why(r, "cuptiActivityEnable"));
  }
  uint64_t now = 0;
  cuptiGetTimestamp(&now);
  std::lock_guard<std::mutex> lock(mu);
  active->start = now;
  return "";
}

std::string StopRecording(Recording* out) {
  uint64_t now = 0;
  cuptiGetTimestamp(&now);
  const CUptiResult flushed = cuptiActivityFlushAll(CUPTI_ACTIVITY_FLAG_FLUSH_FORCED);
  for (CUpti_ActivityKind k : kKinds) cuptiActivityDisable(k);
  std::lock_guard<std::mutex> lock(mu);
  if (active == nullptr) return "no recording is running";
  active->end = now;
  *out = std::move(*active);
  active = nullptr;
  return flushed == CUPTI_SUCCESS ? "" : Why(flushed, "cuptiActivityFlushAll");
}

}  // namespace moe::trace
