// JobStore: ids, state events, log seqs contiguous per rank with capture offsets moved in the
// same transaction, reporter resends skipped, metric resends ignored (a late batch of points never
// moves the latest back), all surviving a reopen; a file it cannot use says why and what to do.
#include "daemon/job_store.h"

#include <sqlite3.h>

#include <filesystem>
#include <fstream>

#include "daemon/job_cleanup.h"
#include "daemon/launcher.h"
#include "daemon/prometheus.h"
#include "daemon/scheduler.h"
#include "daemon/scheduler_internal.h"
#include "absl/strings/match.h"
#include "gtest/gtest.h"
#include "tests/support/paths.h"

namespace moe::daemon {
namespace {

moe::v1::JobSpec Spec(const std::string& name) {
  moe::v1::JobSpec s;
  s.set_name(name);
  s.mutable_resources()->set_ranks(2);
  s.mutable_train()->set_steps(10);
  return s;
}

TEST(JobStore, JobsLogsMetricsSurviveReopen) {
  const std::string dir = moe::testing::MakeTempDir("moe-store-");
  const std::string db = dir + "/moed.db";
  {
    auto store = JobStore::Open(db);
    ASSERT_TRUE(store.ok()) << store.status();
    auto a = (*store)->CreateJob(Spec("a"), "name: a\n", dir + "/jobs", "queued");
    auto b = (*store)->CreateJob(Spec("b"), "", dir + "/jobs", "queued");
    ASSERT_TRUE(a.ok() && b.ok());
    EXPECT_EQ(a->job.id(), "j-000001");
    EXPECT_EQ(b->job.id(), "j-000002");
    EXPECT_EQ(a->checkpoint_dir, dir + "/jobs/j-000001/checkpoints");
    EXPECT_EQ((*store)->GetJob("j-000009").status().code(), absl::StatusCode::kNotFound);

    JobRecord r = *a;
    r.job.set_state(moe::v1::JOB_STATE_RUNNING);
    r.launch_handle = "pid=1 start=2 dir=/x";
    ASSERT_TRUE((*store)->UpdateJob(r).ok());

    ASSERT_TRUE((*store)->AppendCapturedLines("j-000001", 0, {"x", "y"}, 5, "/f0", 4).ok());
    ASSERT_TRUE((*store)->AppendCapturedLines("j-000001", 1, {"z"}, 6, "/f1", 2).ok());
    ASSERT_TRUE((*store)->AppendCapturedLines("j-000001", 0, {"w"}, 7, "/f0e", 2).ok());

    moe::v1::LogLine l1, l2;
    l1.set_rank(1);
    l1.set_seq(1);
    l1.set_text("reported 1");
    l2 = l1;
    l2.set_seq(2);
    l2.set_text("reported 2");
    ASSERT_TRUE((*store)->AppendReportedLines("j-000002", 0, {l1, l2}).ok());
    ASSERT_TRUE((*store)->AppendReportedLines("j-000002", 0, {l1, l2}).ok());  // a resend
    auto cursor = (*store)->GetReportCursor("j-000002", 1, 0);
    ASSERT_TRUE(cursor.ok());
    EXPECT_EQ(cursor->last_src_seq, 2);

    moe::v1::MetricPoint p;
    p.set_step(5);
    p.set_loss(3.0);
    p.set_has_val_loss(true);
    p.set_val_loss(3.5);
    ASSERT_TRUE((*store)->AddMetric("j-000001", 0, p).ok());
    ASSERT_TRUE((*store)->AddMetric("j-000001", 0, p).ok());  // a resend
    p.set_step(6);
    p.set_val_loss(3.25);
    ASSERT_TRUE((*store)->AddMetric("j-000001", 0, p).ok());
  }
  auto store = JobStore::Open(db);
  ASSERT_TRUE(store.ok());
  auto a = (*store)->GetJob("j-000001");
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(a->job.state(), moe::v1::JOB_STATE_RUNNING);
  EXPECT_EQ(a->launch_handle, "pid=1 start=2 dir=/x");
  EXPECT_EQ(a->job.latest().step(), 6);
  EXPECT_DOUBLE_EQ(a->job.best_val_loss(), 3.25);
  auto events = (*store)->Events("j-000001");
  ASSERT_TRUE(events.ok());
  ASSERT_EQ(events->size(), 2u);
  EXPECT_EQ((*events)[1].state, moe::v1::JOB_STATE_RUNNING);

  auto lines = (*store)->ReadLogs("j-000001", 0, 100);
  ASSERT_TRUE(lines.ok());
  ASSERT_EQ(lines->size(), 4u);
  EXPECT_EQ((*lines)[0].line.text(), "x");
  EXPECT_EQ((*lines)[0].line.seq(), 1);
  EXPECT_EQ((*lines)[1].line.seq(), 2);
  EXPECT_EQ((*lines)[2].line.rank(), 1);
  EXPECT_EQ((*lines)[2].line.seq(), 1);
  EXPECT_EQ((*lines)[3].line.text(), "w");
  EXPECT_EQ((*lines)[3].line.seq(), 3);  // rank 0's stderr joins rank 0's seq space
  auto after = (*store)->ReadLogs("j-000001", (*lines)[1].rowid, 100);
  ASSERT_TRUE(after.ok());
  EXPECT_EQ(after->size(), 2u);
  auto offsets = (*store)->CaptureOffsets("j-000001");
  ASSERT_TRUE(offsets.ok());
  EXPECT_EQ((*offsets)["/f0"], 4);
  EXPECT_EQ((*offsets)["/f0e"], 2);
  auto reported = (*store)->ReadLogs("j-000002", 0, 100);
  ASSERT_TRUE(reported.ok());
  EXPECT_EQ(reported->size(), 2u);
  auto metrics = (*store)->ReadMetrics("j-000001", 0, 100);
  ASSERT_TRUE(metrics.ok());
  EXPECT_EQ(metrics->size(), 2u);
  auto last = (*store)->LastSeqs("j-000001");
  ASSERT_TRUE(last.ok());
  EXPECT_EQ((*last)[0], 3);
  EXPECT_EQ((*last)[1], 1);
}

// A store moved aside (what moed says to do with a damaged one) or restored from a backup starts
// its ids over; a new job never gets a folder left on disk by a job of the old store (moed read
// that job's exit_status and called the new one SUCCEEDED without running it).
TEST(JobStore, ANewJobNeverGetsAFolderThatIsOnDisk) {
  const std::string dir = moe::testing::MakeTempDir("moe-store-folders-");
  std::filesystem::create_directories(dir + "/jobs/j-000001/attempt-0");
  std::ofstream(dir + "/jobs/j-000001/attempt-0/exit_status") << "0\n";
  std::filesystem::create_directory_symlink("/nonexistent", dir + "/jobs/j-000002");  // dangling
  std::ofstream(dir + "/jobs/j-000004") << "a file";
  auto store = JobStore::Open(dir + "/moed.db");
  ASSERT_TRUE(store.ok()) << store.status();
  auto a = (*store)->CreateJob(Spec("a"), "", dir + "/jobs", "queued");
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(a->job.id(), "j-000003");
  auto b = (*store)->CreateJob(Spec("b"), "", dir + "/jobs", "queued");
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_EQ(b->job.id(), "j-000005");
}

// A spill file's points come late, maybe after a later attempt's: each (attempt, step) is stored
// once, and the latest point moves only forward in (attempt, step).
TEST(JobStore, AddMetricsSkipsStoredPointsAndNeverMovesTheLatestBack) {
  const std::string dir = moe::testing::MakeTempDir("moe-store-metrics-");
  auto store = JobStore::Open(dir + "/moed.db");
  ASSERT_TRUE(store.ok()) << store.status();
  auto job = (*store)->CreateJob(Spec("m"), "", dir + "/jobs", "queued");
  ASSERT_TRUE(job.ok());
  const std::string id = job->job.id();
  auto points = [](std::vector<int64_t> steps) {
    std::vector<moe::v1::MetricPoint> out;
    for (int64_t s : steps) {
      out.emplace_back().set_step(s);
      out.back().set_loss(10.0 - static_cast<double>(s));
    }
    return out;
  };
  ASSERT_TRUE((*store)->AddMetric(id, 1, points({3})[0]).ok());
  auto latest = [&] { return (*store)->GetJob(id)->job.latest(); };
  EXPECT_EQ(latest().step(), 3);

  absl::StatusOr<int> added = (*store)->AddMetrics(id, 0, points({4, 5, 6}));  // an older attempt
  ASSERT_TRUE(added.ok()) << added.status();
  EXPECT_EQ(*added, 3);
  EXPECT_EQ(latest().step(), 3);
  EXPECT_DOUBLE_EQ(latest().loss(), 7.0);

  added = (*store)->AddMetrics(id, 1, points({2, 3, 4}));  // 3 was stored live
  ASSERT_TRUE(added.ok());
  EXPECT_EQ(*added, 2);
  EXPECT_EQ(latest().step(), 4);
  added = (*store)->AddMetrics(id, 1, points({2, 3, 4}));  // the same file again
  ASSERT_TRUE(added.ok());
  EXPECT_EQ(*added, 0);
  EXPECT_EQ(latest().step(), 4);

  auto stored = (*store)->ReadMetrics(id, 0, 100);
  ASSERT_TRUE(stored.ok());
  EXPECT_EQ(stored->size(), 6u);  // attempt 0: 4 5 6; attempt 1: 3 2 4
}

TEST(JobStore, OpenFailsClearlyOnAnUnwritablePath) {
  auto store = JobStore::Open("/proc/no-such-dir/moed.db");
  ASSERT_FALSE(store.ok());
  EXPECT_TRUE(absl::StrContains(store.status().message(), "--state-dir")) << store.status();
}

TEST(JobStore, ADamagedOrForeignFileSaysHowToGoOn) {
  const std::string dir = moe::testing::MakeTempDir("moe-store-damaged-");
  const std::string path = dir + "/moed.db";
  std::ofstream(path) << std::string(8192, 'x');  // not SQLite at all
  auto store = JobStore::Open(path);
  ASSERT_FALSE(store.ok());
  const std::string message(store.status().message());
  EXPECT_TRUE(absl::StrContains(message, path + " is damaged or is not moed's database"))
      << message;
  EXPECT_TRUE(absl::StrContains(message, "move it aside")) << message;
  EXPECT_TRUE(absl::StrContains(message, "sqlite3 " + path + " .recover")) << message;
}

// delete --checkpoints with a checkpoint.dir of the job's choosing removes what the job wrote
// there and nothing else: other files stay (and so the directory), a directory another owner
// took over stays whole, and a link's target loses the checkpoints while the link stays.
TEST(JobCleanup, DeleteRemovesOnlyTheJobsOwnCheckpoints) {
  namespace fs = std::filesystem;
  const std::string dir = moe::testing::MakeTempDir("moe-cleanup-");
  auto store = JobStore::Open(dir + "/moed.db");
  ASSERT_TRUE(store.ok()) << store.status();
  auto finished = [&](const std::string& ckpt) {
    moe::v1::JobSpec spec = Spec("c");
    spec.mutable_checkpoint()->set_dir(ckpt);
    JobRecord r = *(*store)->CreateJob(spec, "", dir + "/jobs", "queued");
    ApplyState(r, moe::v1::JOB_STATE_SUCCEEDED, "done");
    EXPECT_TRUE((*store)->UpdateJob(r).ok());
    fs::create_directories(ckpt + "/step_00000004");
    std::ofstream(ckpt + "/step_00000004/MANIFEST") << "x";
    fs::create_directories(ckpt + "/.tmp-step_00000005.host.1");
    std::ofstream(ckpt + "/.moe-owner") << "job " << r.job.id() << " of " << r.job.state_dir() << "\n";
    return r.job.id();
  };
  auto joined = [](const google::protobuf::RepeatedPtrField<std::string>& paths) {
    std::string all;
    for (const std::string& p : paths) all += p + "\n";
    return all;
  };

  // Another file there: the checkpoints go, the file and the directory stay.
  const std::string mixed = dir + "/mixed";
  const std::string id1 = finished(mixed);
  std::ofstream(mixed + "/notes.txt") << "mine";
  auto d1 = DeleteFinishedJob(**store, dir + "/jobs", id1, /*checkpoints=*/true);
  ASSERT_TRUE(d1.ok()) << d1.status();
  EXPECT_FALSE(fs::exists(mixed + "/step_00000004"));
  EXPECT_FALSE(fs::exists(mixed + "/.tmp-step_00000005.host.1"));
  EXPECT_FALSE(fs::exists(mixed + "/.moe-owner"));
  EXPECT_TRUE(fs::exists(mixed + "/notes.txt"));
  EXPECT_TRUE(absl::StrContains(joined(d1->removed_paths()), mixed + "/step_00000004")) << joined(d1->removed_paths());
  EXPECT_TRUE(absl::StrContains(joined(d1->kept_paths()), "holds files this job did not write"))
      << joined(d1->kept_paths());

  // Taken over by a run by hand: everything stays.
  const std::string taken = dir + "/taken";
  const std::string id2 = finished(taken);
  std::ofstream(taken + "/.moe-owner") << "standalone job other\n";
  auto d2 = DeleteFinishedJob(**store, dir + "/jobs", id2, true);
  ASSERT_TRUE(d2.ok()) << d2.status();
  EXPECT_TRUE(fs::exists(taken + "/step_00000004/MANIFEST"));
  EXPECT_TRUE(absl::StrContains(joined(d2->kept_paths()), "names standalone job other")) << joined(d2->kept_paths());

  // No marker names the job (it never claimed the directory): everything stays.
  const std::string unmarked = dir + "/unmarked";
  const std::string id5 = finished(unmarked);
  fs::remove(unmarked + "/.moe-owner");
  auto d5 = DeleteFinishedJob(**store, dir + "/jobs", id5, true);
  ASSERT_TRUE(d5.ok()) << d5.status();
  EXPECT_TRUE(fs::exists(unmarked + "/step_00000004/MANIFEST"));
  EXPECT_TRUE(absl::StrContains(joined(d5->kept_paths()), "no .moe-owner names this job")) << joined(d5->kept_paths());

  // Only the job's own files: the directory goes too.
  const std::string own = dir + "/own";
  auto d3 = DeleteFinishedJob(**store, dir + "/jobs", finished(own), true);
  ASSERT_TRUE(d3.ok()) << d3.status();
  EXPECT_FALSE(fs::exists(own));

  // Another stored job names the same directory, spelled with a trailing "/": everything stays.
  const std::string both = dir + "/both";
  const std::string id6 = finished(both);
  moe::v1::JobSpec later = Spec("c");
  later.mutable_checkpoint()->set_dir(both + "/");
  ASSERT_TRUE((*store)->CreateJob(later, "", dir + "/jobs", "queued").ok());
  auto d6 = DeleteFinishedJob(**store, dir + "/jobs", id6, true);
  ASSERT_TRUE(d6.ok()) << d6.status();
  EXPECT_TRUE(fs::exists(both + "/step_00000004/MANIFEST"));
  EXPECT_TRUE(absl::StrContains(joined(d6->kept_paths()), "shared with another job")) << joined(d6->kept_paths());

  // A queued job starts from the checkpoints (model.init_from, moectl submit --from; here from
  // one step of them): they stay while it has not ended (before, they went and it failed at its
  // start).
  const std::string from = dir + "/from";
  const std::string id7 = finished(from);
  moe::v1::JobSpec next = Spec("c");
  next.mutable_model()->set_init_from(from + "/step_00000004");
  absl::StatusOr<JobRecord> reader = (*store)->CreateJob(next, "", dir + "/jobs", "queued");
  ASSERT_TRUE(reader.ok());
  auto d7 = DeleteFinishedJob(**store, dir + "/jobs", id7, true);
  ASSERT_TRUE(d7.ok()) << d7.status();
  EXPECT_TRUE(fs::exists(from + "/step_00000004/MANIFEST"));
  EXPECT_TRUE(absl::StrContains(joined(d7->kept_paths()), "job " + reader->job.id() + " starts from it"))
      << joined(d7->kept_paths());
  // Asked about later, the deleted job says what it left behind (it said only "was deleted").
  const std::string gone((*store)->GetJob(id7).status().message());
  EXPECT_TRUE(absl::StrContains(gone, "was deleted at")) << gone;
  EXPECT_TRUE(absl::StrContains(gone, "; it kept " + from + " (job " + reader->job.id())) << gone;
  EXPECT_TRUE(absl::StrContains(gone, "remove them by hand when done with them")) << gone;

  // Ended before its first checkpoint (its own checkpoints folder empty but for the marker):
  // without --checkpoints nothing is kept, so the job folder goes whole.
  {
    moe::v1::JobSpec spec = Spec("c");
    JobRecord r = *(*store)->CreateJob(spec, "", dir + "/jobs", "queued");
    ApplyState(r, moe::v1::JOB_STATE_CANCELLED, "cancelled");
    ASSERT_TRUE((*store)->UpdateJob(r).ok());
    fs::create_directories(r.checkpoint_dir);
    std::ofstream(r.checkpoint_dir + "/.moe-owner") << "job " << r.job.id() << "\n";
    auto d = DeleteFinishedJob(**store, dir + "/jobs", r.job.id(), /*checkpoints=*/false);
    ASSERT_TRUE(d.ok()) << d.status();
    EXPECT_FALSE(fs::exists(r.job.state_dir())) << r.job.state_dir();
    EXPECT_EQ(d->kept_paths_size(), 0) << joined(d->kept_paths());
  }

  // Through a link: the target is emptied, both stay.
  const std::string target = dir + "/target", link = dir + "/link";
  fs::create_directories(target);
  fs::create_directory_symlink(target, link);
  auto d4 = DeleteFinishedJob(**store, dir + "/jobs", finished(link), true);
  ASSERT_TRUE(d4.ok()) << d4.status();
  EXPECT_FALSE(fs::exists(target + "/step_00000004"));
  EXPECT_TRUE(fs::is_symlink(link));
  EXPECT_TRUE(fs::is_directory(target));
}

// A restart from an earlier checkpoint logs steps again: the step and token counters stay at
// the furthest step (a counter that went down would read as a reset), and ids are job_id labels.
TEST(Prometheus, CountersNeverGoDownWhenARestartRepeatsSteps) {
  const std::string dir = moe::testing::MakeTempDir("moe-prom-");
  auto store = JobStore::Open(dir + "/moed.db");
  ASSERT_TRUE(store.ok()) << store.status();
  moe::v1::JobSpec spec = Spec("prom");
  spec.mutable_train()->set_batch_size(4);
  spec.mutable_model()->set_seq_len(16);
  JobRecord r = *(*store)->CreateJob(spec, "", dir + "/jobs", "queued");
  PrometheusExporter exporter(store->get(), std::chrono::hours(1));
  auto point = [](int step) {
    moe::v1::MetricPoint p;
    p.set_step(step);
    p.set_loss(3.0);
    return p;
  };
  const std::string labels = absl::StrCat("{job_id=\"", r.job.id(), "\",name=\"prom\"}");
  for (int step = 1; step <= 8; ++step) ASSERT_TRUE((*store)->AddMetric(r.job.id(), 0, point(step)).ok());
  std::string first = exporter.Render();
  EXPECT_TRUE(absl::StrContains(first, "moe_job_steps_total" + labels + " 8\n")) << first;
  EXPECT_TRUE(absl::StrContains(first, "moe_job_tokens_total" + labels + " 512\n")) << first;
  EXPECT_FALSE(absl::StrContains(first, "moe_job_mfu_ratio" + labels)) << first;  // none reported
  // Attempt 1 resumes from step 5's checkpoint.
  for (int step = 6; step <= 7; ++step) ASSERT_TRUE((*store)->AddMetric(r.job.id(), 1, point(step)).ok());
  std::string second = exporter.Render();
  EXPECT_TRUE(absl::StrContains(second, "moe_job_steps_total" + labels + " 8\n")) << second;
  EXPECT_TRUE(absl::StrContains(second, "moe_job_tokens_total" + labels + " 512\n")) << second;
  for (int step = 8; step <= 10; ++step) ASSERT_TRUE((*store)->AddMetric(r.job.id(), 1, point(step)).ok());
  std::string third = exporter.Render();
  EXPECT_TRUE(absl::StrContains(third, "moe_job_steps_total" + labels + " 10\n")) << third;
  EXPECT_TRUE(absl::StrContains(third, "moe_job_tokens_total" + labels + " 640\n")) << third;
}

// A failed job's reason: a worker's long list of problems keeps its head (what failed), not its
// last detail line.
TEST(LastStderrMessage, ALongErrorKeepsItsHeadAndCountsTheRest) {
  const std::string dir = moe::testing::MakeTempDir("moe-stderr-");
  const std::string path = dir + "/rank0.err";
  {
    std::ofstream out(path);
    out << "moe-worker: job x, 1 rank(s)\nmoe-worker rank 0: model.init_from: the tensors do not fit:\n";
    for (int i = 0; i < 20; ++i) out << "blocks." << i << ".w: shape [4] in the checkpoint\n";
  }
  const std::string got = LastStderrMessage(path);
  EXPECT_TRUE(absl::StartsWith(got, "moe-worker rank 0: model.init_from: the tensors do not fit: | blocks.0.w")) << got;
  EXPECT_TRUE(absl::EndsWith(got, " | (9 more lines in " + path + ") | blocks.19.w: shape [4] in the checkpoint"))
      << got;
  EXPECT_TRUE(absl::StrContains(got, "blocks.9.w")) << got;
  EXPECT_FALSE(absl::StrContains(got, "blocks.10.w")) << got;
  {
    std::ofstream out(path);
    out << "a line\nthe last line\n";
  }
  EXPECT_EQ(LastStderrMessage(path), "the last line");
}

// A store an older moed wrote (no report secret, no deleted jobs' kept paths, no submit request
// ids) opens, keeps its jobs, and takes the new columns and table: a job submitted with a request
// id is found by it afterwards, and another spec under it is refused.
TEST(JobStore, AnOlderStoreIsUpgradedInPlace) {
  const std::string dir = moe::testing::MakeTempDir("moe-store-old-");
  const std::string db = dir + "/moed.db";
  {
    sqlite3* raw = nullptr;
    ASSERT_EQ(sqlite3_open(db.c_str(), &raw), SQLITE_OK);
    const std::string spec = Spec("old").SerializeAsString();
    sqlite3_stmt* st = nullptr;
    ASSERT_EQ(sqlite3_exec(raw,
                           "CREATE TABLE jobs(num INTEGER PRIMARY KEY, id TEXT UNIQUE NOT NULL, spec BLOB NOT NULL, "
                           "spec_yaml TEXT NOT NULL DEFAULT '', state INTEGER NOT NULL, reason TEXT NOT NULL DEFAULT '', "
                           "created_ms INTEGER NOT NULL, started_ms INTEGER NOT NULL DEFAULT 0, ended_ms INTEGER NOT "
                           "NULL DEFAULT 0, restarts INTEGER NOT NULL DEFAULT 0, attempt INTEGER NOT NULL DEFAULT 0, "
                           "latest BLOB, best_val_loss REAL NOT NULL DEFAULT 0, job_dir TEXT NOT NULL, checkpoint_dir "
                           "TEXT NOT NULL, launch_handle TEXT NOT NULL DEFAULT '', cancel_requested INTEGER NOT NULL "
                           "DEFAULT 0);"
                           "CREATE TABLE deleted_jobs(num INTEGER PRIMARY KEY, id TEXT NOT NULL, deleted_ms INTEGER "
                           "NOT NULL);",
                           nullptr, nullptr, nullptr),
              SQLITE_OK)
        << sqlite3_errmsg(raw);
    ASSERT_EQ(sqlite3_prepare_v2(raw,
                                 "INSERT INTO jobs(num, id, spec, state, created_ms, job_dir, checkpoint_dir) "
                                 "VALUES(1, 'j-000001', ?, 5, 1, 'd', 'c')",
                                 -1, &st, nullptr),
              SQLITE_OK);
    sqlite3_bind_blob(st, 1, spec.data(), static_cast<int>(spec.size()), SQLITE_TRANSIENT);
    ASSERT_EQ(sqlite3_step(st), SQLITE_DONE);
    sqlite3_finalize(st);
    sqlite3_close(raw);
  }
  auto store = JobStore::Open(db);
  ASSERT_TRUE(store.ok()) << store.status();
  auto old = (*store)->GetJob("j-000001");
  ASSERT_TRUE(old.ok()) << old.status();
  EXPECT_EQ(old->job.spec().name(), "old");
  EXPECT_EQ(old->report_secret, "");
  auto none = (*store)->FindSubmit("ci-7", Spec("new"));
  ASSERT_TRUE(none.ok()) << none.status();
  EXPECT_FALSE(none->has_value());
  auto made = (*store)->CreateJob(Spec("new"), "", dir + "/jobs", "queued", "ci-7");
  ASSERT_TRUE(made.ok()) << made.status();
  EXPECT_EQ(made->job.id(), "j-000002");
  auto found = (*store)->FindSubmit("ci-7", Spec("new"));
  ASSERT_TRUE(found.ok() && found->has_value());
  EXPECT_EQ((*found)->job.id(), "j-000002");
  auto other = (*store)->FindSubmit("ci-7", Spec("other"));
  EXPECT_TRUE(absl::IsAlreadyExists(other.status())) << other.status();
  // The store keeps each request id once.
  EXPECT_FALSE((*store)->CreateJob(Spec("new"), "", dir + "/jobs", "queued", "ci-7").ok());
}

TEST(SanitizeUtf8, KeepsValidTextAndReplacesBadBytes) {
  EXPECT_EQ(SanitizeUtf8("plain ascii"), "plain ascii");
  EXPECT_EQ(SanitizeUtf8("caf\xc3\xa9"), "caf\xc3\xa9");
  EXPECT_EQ(SanitizeUtf8("bad\xff\xfe."), "bad??.");
  EXPECT_EQ(SanitizeUtf8("cut\xe2\x82"), "cut??");
}

}  // namespace
}  // namespace moe::daemon
