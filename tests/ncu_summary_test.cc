// bench/ncu_summary.py --by-kind (issue 15's profile table): an Nsight Compute CSV of a few of our
// kernels and a cuBLAS GEMM, summed by kind, with the idle rest of the step from --step-ms.
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/support/paths.h"

namespace {

using ::testing::HasSubstr;

std::string Slurp(const std::string& path) {
  std::ifstream f(path);
  std::stringstream s;
  s << f.rdbuf();
  return s.str();
}

// One row of ncu --csv --metrics gpu__time_duration.sum.
std::string Row(int id, const std::string& kernel, const std::string& unit, const std::string& value) {
  return "\"" + std::to_string(id) + "\",\"1\",\"moe_bench\",\"host\",\"" + kernel +
         "\",\"1\",\"7\",\"(128, 1, 1)\",\"(64, 1, 1)\",\"0\",\"9.0\",\"Command line profiler metrics\","
         "\"gpu__time_duration.sum\",\"" + unit + "\",\"" + value + "\"\n";
}

class NcuSummaryTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (std::system("python3 -c 'import csv' > /dev/null 2>&1") != 0) GTEST_SKIP() << "no python3";
    dir_ = moe::testing::MakeTempDir("ncu_summary_");
  }
  // Runs the script on `csv` with `args`; returns its exit status, output in out_.
  int Run(const std::string& csv, const std::string& args) {
    std::ofstream(dir_ + "/step.csv") << csv;
    const std::string cmd = "python3 " + moe::testing::SourceDir() + "/bench/ncu_summary.py " + dir_ +
                            "/step.csv " + args + " > " + dir_ + "/out.txt 2>&1";
    const int rc = std::system(cmd.c_str());
    out_ = Slurp(dir_ + "/out.txt");
    return rc;
  }
  std::string dir_, out_;
};

TEST_F(NcuSummaryTest, KernelTimeByKindWithTheIdleRest) {
  const std::string csv =
      "==PROF== Connected to process 1\n"
      "\"ID\",\"Process ID\",\"Process Name\",\"Host Name\",\"Kernel Name\",\"Context\",\"Stream\",\"Block Size\","
      "\"Grid Size\",\"Device\",\"CC\",\"Section Name\",\"Metric Name\",\"Metric Unit\",\"Metric Value\"\n" +
      Row(0, "sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x256x64", "msecond", "2.5") +
      Row(1, "GroupedGemmWmmaKernel", "usecond", "500") + Row(2, "void internal::<unnamed>::ForwardTcKernel<64, 0, 1>", "usecond", "1,000") +
      Row(3, "void internal::<unnamed>::DkvTcKernel<64, 0, 1>", "usecond", "400") + Row(4, "RouterForwardWarpKernel", "usecond", "100") +
      Row(5, "moe::<unnamed>::PermuteForwardKernel", "usecond", "60") + Row(6, "void moe::<unnamed>::RmsNormForwardVecKernel<6>", "usecond", "40") +
      Row(7, "QkNormBackwardKernel", "usecond", "40") + Row(8, "SwigluForwardBf16Vec8Kernel", "usecond", "200") +
      Row(9, "moe::<unnamed>::AdamWVec4Kernel", "usecond", "300") + Row(10, "moe::<unnamed>::CrossEntropyRowKernel<true, true>", "usecond", "100") +
      Row(11, "CastToBf16Vec4Kernel", "usecond", "60") + Row(12, "RmsNormForwardVecKernel", "usecond", "20");
  ASSERT_EQ(Run(csv, "--by-kind --step-ms 6"), 0) << out_;
  EXPECT_THAT(out_, HasSubstr("kernel time 5.32 ms over 13 launches")) << out_;
  EXPECT_THAT(out_, HasSubstr("| products | 3.00 | 2 | 50.0% |")) << out_;
  EXPECT_THAT(out_, HasSubstr("| attention | 1.40 | 2 | 23.3% |")) << out_;
  EXPECT_THAT(out_, HasSubstr("| router | 0.10 | 1 | 1.7% |")) << out_;
  EXPECT_THAT(out_, HasSubstr("| permute | 0.06 | 1 | 1.0% |")) << out_;
  EXPECT_THAT(out_, HasSubstr("| norms | 0.10 | 3 | 1.7% |")) << out_;
  EXPECT_THAT(out_, HasSubstr("| activations | 0.20 | 1 | 3.3% |")) << out_;
  EXPECT_THAT(out_, HasSubstr("| optimizer | 0.30 | 1 | 5.0% |")) << out_;
  EXPECT_THAT(out_, HasSubstr("| loss and embedding | 0.10 | 1 | 1.7% |")) << out_;
  EXPECT_THAT(out_, HasSubstr("| casts | 0.06 | 1 | 1.0% |")) << out_;
  EXPECT_THAT(out_, HasSubstr("| idle (step 6.00 ms - kernels 5.32 ms) | 0.68 | - | 11.3% |")) << out_;

  // Without --step-ms the shares are of the kernel time, and no idle row.
  ASSERT_EQ(Run(csv, "--by-kind"), 0) << out_;
  EXPECT_THAT(out_, HasSubstr("| products | 3.00 | 2 | 56.4% |")) << out_;
  EXPECT_THAT(out_, ::testing::Not(HasSubstr("idle"))) << out_;
}

TEST_F(NcuSummaryTest, BadInputIsExplained) {
  EXPECT_NE(Run("not a profile\n", "--by-kind"), 0);
  EXPECT_THAT(out_, HasSubstr("no 'Kernel Name' header: not an ncu --csv table")) << out_;
  const std::string csv = "\"Kernel Name\",\"Metric Unit\",\"Metric Value\"\n\"AdamWKernel\",\"usecond\",\"5\"\n";
  EXPECT_NE(Run(csv, "--by-kind --step-ms -1"), 0);
  EXPECT_THAT(out_, HasSubstr("--step-ms: must be at least 0")) << out_;
}

}  // namespace
