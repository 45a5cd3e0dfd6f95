// The metrics spill file (common/metrics_spill.h): points read back as written; a file cut at
// any byte gives every whole record before the cut and says where it is damaged; garbage and an
// empty or missing file never crash the reader. The reporter writes it on Close() when moed
// cannot be reached, and writes nothing when it is disabled or has no spill path.
#include "common/metrics_spill.h"

#include <algorithm>
#include <fstream>
#include <thread>
#include <chrono>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/files.h"
#include "gtest/gtest.h"
#include "tests/support/daemon_harness.h"
#include "tests/support/paths.h"
#include "worker/report/reporter.h"

namespace moe {
namespace {

moe::v1::MetricPoint Point(int64_t step) {
  moe::v1::MetricPoint p;
  p.set_step(step);
  p.set_loss(5.0 - 0.25 * static_cast<double>(step));
  p.set_tokens_per_s(1000.0 * static_cast<double>(step));
  p.set_unix_ms(1700000000000 + step);
  moe::v1::MoeLayerStats* l = p.add_layers();
  l->set_layer(0);
  for (int e = 0; e < 4; ++e) l->add_tokens_per_expert(10 * step + e);
  return p;
}

std::vector<int64_t> Steps(const MetricsSpill& spill) {
  std::vector<int64_t> out;
  for (const auto& p : spill.points) out.push_back(p.step());
  return out;
}

TEST(MetricsSpill, PointsReadBackAsWritten) {
  const std::string dir = testing::MakeTempDir("moe-spill-");
  const std::string path = MetricsSpillPath(dir, 0);
  EXPECT_EQ(path, dir + "/unsent-metrics.rank0.pb");
  std::vector<moe::v1::MetricPoint> points = {Point(3), Point(4), Point(5)};
  points[1].set_has_val_loss(true);
  points[1].set_val_loss(2.5);
  ASSERT_TRUE(WriteMetricsSpill(path, points).ok());
  absl::StatusOr<MetricsSpill> spill = ReadMetricsSpill(path);
  ASSERT_TRUE(spill.ok()) << spill.status();
  EXPECT_EQ(spill->damage, "");
  ASSERT_EQ(spill->points.size(), points.size());
  for (size_t i = 0; i < points.size(); ++i) {
    EXPECT_EQ(spill->points[i].SerializeAsString(), points[i].SerializeAsString()) << i;
  }
}

TEST(MetricsSpill, ATruncatedFileGivesTheWholeRecordsBeforeTheCut) {
  const std::string dir = testing::MakeTempDir("moe-spill-cut-");
  const std::string whole_path = dir + "/whole.pb";
  ASSERT_TRUE(WriteMetricsSpill(whole_path, {Point(1), Point(2), Point(3)}).ok());
  absl::StatusOr<std::string> whole = ReadFile(whole_path);
  ASSERT_TRUE(whole.ok());
  // Where each record ends: every record here is the same size.
  const size_t record = whole->size() / 3;
  ASSERT_EQ(record * 3, whole->size());
  const std::string cut_path = MetricsSpillPath(dir, 0);
  for (size_t cut = 0; cut < whole->size(); ++cut) {
    std::ofstream(cut_path, std::ios::binary | std::ios::trunc) << whole->substr(0, cut);
    absl::StatusOr<MetricsSpill> spill = ReadMetricsSpill(cut_path);
    ASSERT_TRUE(spill.ok()) << "cut at " << cut << ": " << spill.status();
    std::vector<int64_t> expected;
    for (int64_t s = 1; s <= static_cast<int64_t>(cut / record); ++s) expected.push_back(s);
    EXPECT_EQ(Steps(*spill), expected) << "cut at " << cut;
    if (cut % record == 0) {
      EXPECT_EQ(spill->damage, "") << "cut at " << cut;
    } else {
      EXPECT_TRUE(absl::StrContains(spill->damage,
                                    absl::StrCat("the record at byte ", cut / record * record)))
          << "cut at " << cut << ": " << spill->damage;
    }
  }
}

TEST(MetricsSpill, GarbageEmptyAndMissingFilesNeverCrash) {
  const std::string dir = testing::MakeTempDir("moe-spill-bad-");
  const std::string path = MetricsSpillPath(dir, 0);
  EXPECT_TRUE(absl::IsNotFound(ReadMetricsSpill(path).status()));

  std::ofstream(path, std::ios::binary | std::ios::trunc) << "";
  absl::StatusOr<MetricsSpill> empty = ReadMetricsSpill(path);
  ASSERT_TRUE(empty.ok());
  EXPECT_TRUE(empty->points.empty());
  EXPECT_EQ(empty->damage, "");

  // A length that never ends (every byte has its continuation bit).
  std::ofstream(path, std::ios::binary | std::ios::trunc) << std::string(16, '\xff');
  absl::StatusOr<MetricsSpill> endless = ReadMetricsSpill(path);
  ASSERT_TRUE(endless.ok());
  EXPECT_TRUE(endless->points.empty());
  EXPECT_TRUE(absl::StrContains(endless->damage, "no readable length")) << endless->damage;

  // One good record, then a record whose bytes are no MetricPoint (field 1 with wire type 7).
  ASSERT_TRUE(WriteMetricsSpill(path, {Point(7)}).ok());
  absl::StatusOr<std::string> good = ReadFile(path);
  ASSERT_TRUE(good.ok());
  std::ofstream(path, std::ios::binary | std::ios::trunc)
      << *good << std::string("\x02\x0f\x00", 3);
  absl::StatusOr<MetricsSpill> mixed = ReadMetricsSpill(path);
  ASSERT_TRUE(mixed.ok());
  EXPECT_EQ(Steps(*mixed), std::vector<int64_t>{7});
  EXPECT_TRUE(absl::StrContains(mixed->damage, "is not a metric point")) << mixed->damage;
}

TEST(MetricsSpill, FilesListsEveryRanksSpillAndNothingElse) {
  const std::string dir = testing::MakeTempDir("moe-spill-list-");
  ASSERT_TRUE(WriteMetricsSpill(MetricsSpillPath(dir, 1), {Point(1)}).ok());
  ASSERT_TRUE(WriteMetricsSpill(MetricsSpillPath(dir, 0), {Point(1)}).ok());
  std::ofstream(MetricsSpillPath(dir, 2) + ".tmp.123") << "a writer that died";
  std::ofstream(dir + "/exit_status") << "0\n";
  std::ofstream(dir + "/unsent-metrics.rank0.partx.pb") << "not a part";
  ASSERT_TRUE(WriteMetricsSpill(MetricsSpillPartPath(MetricsSpillPath(dir, 0), 2), {Point(1)}).ok());
  EXPECT_EQ(MetricsSpillPartPath(MetricsSpillPath(dir, 0), 2), dir + "/unsent-metrics.rank0.part2.pb");
  EXPECT_EQ(MetricsSpillFiles(dir),
            (std::vector<std::string>{dir + "/unsent-metrics.rank0.part2.pb", MetricsSpillPath(dir, 0),
                                      MetricsSpillPath(dir, 1)}));
  EXPECT_TRUE(MetricsSpillFiles(dir + "/no-such-folder").empty());
}

TEST(ReporterSpill, CloseWithoutMoedLeavesEveryUnconfirmedPoint) {
  const std::string dir = testing::MakeTempDir("moe-spill-reporter-");
  ReporterOptions o;
  o.moed_address = absl::StrCat("127.0.0.1:", testing::FreePort());  // nobody listens
  o.job_id = "j-000001";
  o.world_size = 1;
  o.spill_path = MetricsSpillPath(dir, 0);
  auto reporter = Reporter::Create(o);
  for (int64_t step = 1; step <= 5; ++step) reporter->Metrics(Point(step));
  reporter->Close();  // gives up after its ~3 s deadline
  absl::StatusOr<MetricsSpill> spill = ReadMetricsSpill(o.spill_path);
  ASSERT_TRUE(spill.ok()) << spill.status();
  EXPECT_EQ(spill->damage, "");
  EXPECT_EQ(Steps(*spill), (std::vector<int64_t>{1, 2, 3, 4, 5}));
  EXPECT_DOUBLE_EQ(spill->points[2].loss(), Point(3).loss());
  reporter->Close();  // idempotent: writes nothing again
  EXPECT_EQ(MetricsSpillFiles(dir).size(), 1u);
}

// moed away for more points than the reporter's queue holds (2000): the older half of the full
// queue goes to a spill part while the run goes on, the rest to the spill at Close. Nothing lost.
TEST(ReporterSpill, AQueueThatFillsSpillsItsOlderHalfWhileTheRunGoesOn) {
  const std::string dir = testing::MakeTempDir("moe-spill-parts-");
  ReporterOptions o;
  o.moed_address = absl::StrCat("127.0.0.1:", testing::FreePort());  // nobody listens
  o.job_id = "j-000001";
  o.spill_path = MetricsSpillPath(dir, 0);
  auto reporter = Reporter::Create(o);
  constexpr int64_t kPoints = 4500;
  for (int64_t step = 1; step <= kPoints; ++step) reporter->Metrics(Point(step));
  // Full at points 2001, 3001 and 4001: three parts of 1000 before Close, 1500 left for it (the
  // outage's copy of the unconfirmed points may be there too: Close replaces it).
  std::vector<std::string> parts = MetricsSpillFiles(dir);
  parts.erase(std::remove_if(parts.begin(), parts.end(),
                             [](const std::string& p) { return !absl::StrContains(p, ".part"); }),
              parts.end());
  EXPECT_EQ(parts.size(), 3u);
  reporter->Close();
  std::vector<int64_t> steps;
  for (const std::string& path : MetricsSpillFiles(dir)) {
    absl::StatusOr<MetricsSpill> spill = ReadMetricsSpill(path);
    ASSERT_TRUE(spill.ok()) << path << ": " << spill.status();
    EXPECT_EQ(spill->damage, "") << path;
    const std::vector<int64_t> got = Steps(*spill);
    steps.insert(steps.end(), got.begin(), got.end());
  }
  std::sort(steps.begin(), steps.end());
  ASSERT_EQ(steps.size(), static_cast<size_t>(kPoints));
  for (int64_t i = 0; i < kPoints; ++i) ASSERT_EQ(steps[static_cast<size_t>(i)], i + 1);
}

// While moed is away the unconfirmed points are on disk already, not only at Close: a rank
// killed before it closes (mpirun ends the attempt after another rank fails) left none, and
// the points of the steps since moed went away were lost.
TEST(ReporterSpill, AnOutageWritesTheUnconfirmedPointsBeforeClose) {
  const std::string dir = testing::MakeTempDir("moe-spill-outage-");
  ReporterOptions o;
  o.moed_address = absl::StrCat("127.0.0.1:", testing::FreePort());  // nobody listens
  o.job_id = "j-000001";
  o.spill_path = MetricsSpillPath(dir, 0);
  auto reporter = Reporter::Create(o);
  for (int64_t step = 1; step <= 3; ++step) reporter->Metrics(Point(step));
  auto wait_for = [&](size_t n) {
    std::vector<int64_t> got;
    for (int i = 0; i < 100 && got.size() != n; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
      absl::StatusOr<MetricsSpill> spill = ReadMetricsSpill(o.spill_path);
      got = spill.ok() ? Steps(*spill) : std::vector<int64_t>{};
    }
    return got;
  };
  EXPECT_EQ(wait_for(3), (std::vector<int64_t>{1, 2, 3}));
  reporter->Metrics(Point(4));
  EXPECT_EQ(wait_for(4), (std::vector<int64_t>{1, 2, 3, 4}));  // rewritten as points come
  reporter->Close();
  absl::StatusOr<MetricsSpill> spill = ReadMetricsSpill(o.spill_path);
  ASSERT_TRUE(spill.ok()) << spill.status();
  EXPECT_EQ(Steps(*spill), (std::vector<int64_t>{1, 2, 3, 4}));
  EXPECT_EQ(MetricsSpillFiles(dir).size(), 1u);
}

TEST(ReporterSpill, ADisabledReporterWritesNothing) {
  const std::string dir = testing::MakeTempDir("moe-spill-off-");
  ReporterOptions o;  // no moed address: a standalone run
  o.spill_path = MetricsSpillPath(dir, 0);
  auto reporter = Reporter::Create(o);
  reporter->Metrics(Point(1));
  reporter->Close();
  EXPECT_TRUE(MetricsSpillFiles(dir).empty());
}

}  // namespace
}  // namespace moe
