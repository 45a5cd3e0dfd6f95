// common/files.h's ReadFile, and what reads /proc through it: a read error is a status, never an
// exception (moed read /proc/PID/stat through a stream and aborted when the process exited between
// the open and the read: libstdc++'s stream buffer throws ESRCH as std::ios_base::failure).
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <filesystem>
#include <string>
#include <thread>
#include <vector>

#include "common/files.h"
#include "daemon/local_launcher.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/support/paths.h"

namespace moe {
namespace {

using ::testing::HasSubstr;

TEST(ReadFile, ReadsWhatWasWrittenLargeOrEmpty) {
  const std::string dir = testing::MakeTempDir("moe-files-");
  std::string big(200000, 'x');
  for (size_t i = 0; i < big.size(); i += 997) big[i] = static_cast<char>('a' + i % 26);
  ASSERT_TRUE(WriteFileAtomic(dir + "/big", big).ok());
  ASSERT_TRUE(WriteFileAtomic(dir + "/empty", "").ok());
  absl::StatusOr<std::string> got = ReadFile(dir + "/big");
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(*got, big);
  got = ReadFile(dir + "/empty");
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(*got, "");
  EXPECT_TRUE(absl::IsNotFound(ReadFile(dir + "/missing").status()));
  EXPECT_THAT(std::string(ReadFile(dir).status().message()), HasSubstr("is a directory"));
}

// A write that cannot start names the path the caller gave, not the temporary beside it; a
// directory that cannot be made because a file is in the way says which file.
TEST(WriteFileAtomic, AFailureNamesTheCallersPath) {
  const std::string dir = testing::MakeTempDir("moe-files-");
  absl::Status st = WriteFileAtomic(dir + "/missing/x.bin", "a");
  ASSERT_FALSE(st.ok());
  EXPECT_THAT(std::string(st.message()), HasSubstr("cannot write " + dir + "/missing/x.bin (no new file can be made in " +
                                                   dir + "/missing, which does not exist)"));
  EXPECT_THAT(std::string(st.message()), ::testing::Not(HasSubstr(".tmp.")));
  ASSERT_TRUE(WriteFileAtomic(dir + "/plain", "a").ok());
  st = MakeDirs(dir + "/plain/sub");
  ASSERT_FALSE(st.ok());
  EXPECT_THAT(std::string(st.message()), HasSubstr(dir + "/plain exists and is not a directory; give a directory"));
}

// Threads writing one path at once each write their own temporary file: the file is always one
// writer's contents whole (a shared temporary name interleaved and cut them), and none of the
// temporary files is left behind.
TEST(WriteFileAtomic, ConcurrentWritersNeverMixTheirContents) {
  const std::string dir = testing::MakeTempDir("moe-files-");
  const std::string path = dir + "/shared.json";
  constexpr int kThreads = 8, kRounds = 40;
  std::vector<std::string> contents;
  for (int t = 0; t < kThreads; ++t) contents.push_back(std::string(1000 + 4096 * t, static_cast<char>('a' + t)));
  std::atomic<int> failures{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int r = 0; r < kRounds; ++r) {
        if (!WriteFileAtomic(path, contents[t]).ok()) failures.fetch_add(1);
        absl::StatusOr<std::string> got = ReadFile(path);
        if (!got.ok() || std::find(contents.begin(), contents.end(), *got) == contents.end()) failures.fetch_add(1);
      }
    });
  }
  for (std::thread& th : threads) th.join();
  EXPECT_EQ(failures.load(), 0);
  int files = 0;
  for (const auto& e : std::filesystem::directory_iterator(dir)) {
    ++files;
    EXPECT_EQ(e.path().filename().string(), "shared.json") << "left behind";
  }
  EXPECT_EQ(files, 1);
}

// A file that opens and then fails to read: /proc/self/mem at offset 0 (unmapped) gives EIO.
TEST(ReadFile, AReadErrorIsAStatusNotAnException) {
  absl::StatusOr<std::string> got = ReadFile("/proc/self/mem");
  ASSERT_FALSE(got.ok());
  EXPECT_THAT(std::string(got.status().message()), HasSubstr("cannot read /proc/self/mem"));
}

// A path a user names for output (moectl metrics --svg): a device, a pipe or a read-only file is
// refused and left as it was; a symbolic link has its target written (before, each was replaced by
// a rename: /dev/full became a regular file).
TEST(WriteUserFile, ReplacesRegularFilesOnlyAndWritesThroughLinks) {
  namespace fs = std::filesystem;
  const std::string dir = testing::MakeTempDir("moe-userfile-");
  ASSERT_TRUE(WriteUserFile(dir + "/new.svg", "a").ok());
  ASSERT_TRUE(WriteUserFile(dir + "/new.svg", "b").ok());
  EXPECT_EQ(*ReadFile(dir + "/new.svg"), "b");
  fs::create_symlink("new.svg", dir + "/link.svg");
  ASSERT_TRUE(WriteUserFile(dir + "/link.svg", "c").ok());
  EXPECT_TRUE(fs::is_symlink(dir + "/link.svg"));
  EXPECT_EQ(*ReadFile(dir + "/new.svg"), "c");
  fs::create_symlink("missing/x.svg", dir + "/dangling.svg");
  EXPECT_THAT(std::string(WriteUserFile(dir + "/dangling.svg", "d").message()), HasSubstr("symbolic link"));
  ASSERT_EQ(::mkfifo((dir + "/fifo").c_str(), 0600), 0);
  EXPECT_THAT(std::string(WriteUserFile(dir + "/fifo", "e").message()), HasSubstr("is a named pipe"));
  EXPECT_TRUE(fs::is_fifo(dir + "/fifo"));
  EXPECT_THAT(std::string(WriteUserFile(dir, "f").message()), HasSubstr("is a directory"));
  if (fs::is_character_file("/dev/null")) {
    EXPECT_THAT(std::string(WriteUserFile("/dev/null", "g").message()), HasSubstr("is a character device"));
    EXPECT_TRUE(fs::is_character_file("/dev/null"));
  }
  fs::permissions(dir + "/new.svg", fs::perms::owner_read | fs::perms::group_read);
  EXPECT_THAT(std::string(WriteUserFile(dir + "/new.svg", "h").message()), HasSubstr("is read-only (mode 0440)"));
  EXPECT_EQ(*ReadFile(dir + "/new.svg"), "c");
  for (const auto& e : fs::directory_iterator(dir)) {
    EXPECT_EQ(e.path().string().find(".tmp."), std::string::npos) << e.path();  // nothing half-written
  }
}

TEST(SameDirectory, ComparesResolvedPathsNotStrings) {
  const std::string dir = testing::MakeTempDir("moe-same-dir-");
  ASSERT_TRUE(MakeDirs(dir + "/real").ok());
  std::filesystem::create_directory_symlink(dir + "/real", dir + "/link");
  EXPECT_TRUE(SameDirectory(dir + "/real", dir + "/real/"));
  EXPECT_TRUE(SameDirectory(dir + "/real", dir + "/./real/."));
  EXPECT_TRUE(SameDirectory(dir + "/link", dir + "/real"));
  EXPECT_TRUE(SameDirectory(dir + "/real/../new", dir + "/new/"));  // neither has to exist
  EXPECT_FALSE(SameDirectory(dir + "/real", dir + "/other"));
  EXPECT_FALSE(SameDirectory(dir + "/real/sub", dir + "/real"));
  EXPECT_FALSE(SameDirectory("", ""));
  EXPECT_FALSE(SameDirectory(dir + "/real", ""));
  std::filesystem::remove_all(dir);
}

// DirectoryLock on a lock file (moed's <state-dir>/moed.lock): created 0600, one holder at a time
// (flock is per open file, so a second take in this process is refused as another process's is),
// writable by its holder, free again once the holder is gone; a directory that cannot hold the
// file is "cannot open", not "locked".
TEST(DirectoryLock, TakeFileLocksAFileItsHolderCanWrite) {
  const std::string dir = testing::MakeTempDir("moe-lock-file-");
  const std::string path = dir + "/moed.lock";
  {
    absl::StatusOr<DirectoryLock> first = DirectoryLock::TakeFile(path);
    ASSERT_TRUE(first.ok()) << first.status();
    EXPECT_TRUE(first->held());
    struct stat st {};
    ASSERT_EQ(stat(path.c_str(), &st), 0);
    EXPECT_EQ(st.st_mode & 0777, 0600u);
    ASSERT_EQ(write(first->fd(), "pid 1\n", 6), 6);
    EXPECT_EQ(*ReadFile(path), "pid 1\n");
    absl::StatusOr<DirectoryLock> second = DirectoryLock::TakeFile(path);
    ASSERT_FALSE(second.ok());
    EXPECT_EQ(second.status().code(), absl::StatusCode::kFailedPrecondition) << second.status();
    EXPECT_THAT(second.status().message(), HasSubstr(path + " is locked by another process"));
  }
  EXPECT_TRUE(DirectoryLock::TakeFile(path).ok());
  absl::StatusOr<DirectoryLock> missing = DirectoryLock::TakeFile(dir + "/absent/moed.lock");
  ASSERT_FALSE(missing.ok());
  EXPECT_NE(missing.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(missing.status().message(), HasSubstr("cannot open " + dir + "/absent/moed.lock: No such file"));
  std::filesystem::remove_all(dir);
}

// moed lists a job's processes by reading every /proc/PID/stat while processes come and go. The
// session listed is a child's own (setsid), as moed's ranks are: this process's session leader may
// live outside a container's PID namespace, where getsid() gives 0.
TEST(LocalLauncher, ListingSessionsWhileProcessesExitNeverThrows) {
  int ready[2];
  ASSERT_EQ(pipe(ready), 0);
  const pid_t leader = fork();
  ASSERT_GE(leader, 0);
  if (leader == 0) {
    close(ready[0]);
    const char ok = setsid() > 0 ? 'y' : 'n';
    if (write(ready[1], &ok, 1) != 1) _exit(1);
    for (;;) pause();
  }
  close(ready[1]);
  char ok = 0;
  ASSERT_EQ(read(ready[0], &ok, 1), 1);
  close(ready[0]);
  ASSERT_EQ(ok, 'y');

  std::atomic<bool> stop{false};
  std::thread churn([&] {
    while (!stop.load()) {
      const pid_t pid = fork();
      if (pid == 0) _exit(0);
      if (pid > 0) waitpid(pid, nullptr, 0);
    }
  });
  const auto end = std::chrono::steady_clock::now() + std::chrono::milliseconds(700);
  int listings = 0;
  bool always_found = true;
  while (std::chrono::steady_clock::now() < end) {
    std::vector<int> members;
    EXPECT_NO_THROW(members = daemon::LocalLauncher::SessionMembers(leader));
    always_found = always_found && members == std::vector<int>{leader};
    ++listings;
  }
  stop = true;
  churn.join();
  EXPECT_GT(listings, 0);
  // The session holds its leader alone, in every listing; once reaped, nothing.
  EXPECT_TRUE(always_found);
  kill(leader, SIGKILL);
  waitpid(leader, nullptr, 0);
  EXPECT_TRUE(daemon::LocalLauncher::SessionMembers(leader).empty());
}

}  // namespace
}  // namespace moe
