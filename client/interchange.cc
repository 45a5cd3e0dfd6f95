// moectl export: a job's newest checkpoint (or any checkpoint directory) as a Hugging Face model,
// with the conversion moe-worker --export runs (worker/interchange).
#include <cstdio>
#include <filesystem>

#include "absl/strings/str_cat.h"
#include "client/commands.h"
#include "client/connection.h"
#include "worker/interchange/hf_export.h"

namespace moe::client {

int RunExport(const ExportOptions& o) {
  absl::StatusOr<TensorDtype> dtype = ParseExportDtype(o.dtype);
  if (!dtype.ok()) {
    std::fprintf(stderr, "moectl export: %s\n", std::string(dtype.status().message()).c_str());
    return 2;
  }
  if (absl::Status st = CheckExportOutDirName(o.out_dir); !st.ok()) {
    std::fprintf(stderr, "moectl export: %s\nusage: moectl export JOB_OR_CHECKPOINT_DIR --format hf OUT_DIR [--dtype fp32|bf16]\n",
                 std::string(st.message()).c_str());
    return 2;
  }
  std::string dir = o.source;
  std::error_code ec;
  if (!std::filesystem::is_directory(dir, ec)) {
    // Not a directory here: a job id, whose checkpoint directory moed knows.
    absl::StatusOr<ClientConfig> config = LoadClientConfig();
    if (!config.ok()) return FailConfig(config.status());
    auto stub = NewJobStub(*config);
    grpc::Status s;
    absl::StatusOr<moe::v1::Job> got = GetJob(*stub, *config, o.source, &s);
    if (!got.ok()) {
      return Fail(absl::StrCat(o.source, " is not a directory here, and as a job id: ", DescribeError(s, *config)));
    }
    dir = got->checkpoint_dir();
    if (!std::filesystem::is_directory(dir, ec)) {
      return Fail(absl::StrCat("job ", o.source, " keeps its checkpoints in ", dir,
                               ", which is not a directory here (run moectl export on moed's host, or give "
                               "the checkpoint directory)"));
    }
  }
  HfExportOptions opts;
  opts.dtype = *dtype;
  absl::StatusOr<HfExportResult> r = ExportHf(dir, o.out_dir, opts);
  if (!r.ok()) return Fail(std::string(r.status().message()));
  std::printf("%s", DescribeExport(*r, o.out_dir).c_str());
  return 0;
}

}  // namespace moe::client
