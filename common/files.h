// Small file helpers shared by the programs: whole-file reads and atomic writes
// (temp file + fsync + rename), so a crash never leaves a half-written file under the real name.
#pragma once

#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace moe {

absl::StatusOr<std::string> ReadFile(const std::string& path);
// Writes path.tmp.<pid>.<n> (a name no other write holds, even another thread's), fsyncs it,
// renames it over path and fsyncs the directory.
absl::Status WriteFileAtomic(const std::string& path, std::string_view contents);
// Adds contents at the end of path (created if absent); no temp file, so a write cut short
// leaves a partial tail.
absl::Status AppendFile(const std::string& path, std::string_view contents);
// What a file of this st_mode is, for a message about one that is no regular file: "a directory",
// "a character device", "a block device", "a named pipe", "a socket", else "not a regular file".
const char* NonRegularKind(unsigned mode);
// WriteFileAtomic for a path a user named (an output flag): a regular file is replaced, a
// symbolic link has the file it names replaced (the link stays), a new name is created; anything
// else (a directory, a device such as /dev/full, a pipe, a socket, a dangling link) and a
// read-only file are refused with FailedPrecondition saying what the path is.
absl::Status WriteUserFile(const std::string& path, std::string_view contents);
// An exclusive flock (LOCK_EX | LOCK_NB) on a directory, held while the object lives and dropped by
// the kernel when the process dies (kill -9 included): one writer at a time, e.g. one run training
// into a checkpoint directory (Take: no file is created in it), or one moed on a state directory
// (TakeFile on its moed.lock).
class DirectoryLock {
 public:
  // FailedPrecondition when another process holds it; NotFound when dir does not exist. On a
  // filesystem without flock (some NFS mounts) the result holds no lock and says so (held()).
  static absl::StatusOr<DirectoryLock> Take(const std::string& dir);
  // The same lock through a lock file at path (created 0600 when missing; close-on-exec), opened
  // read-write so that the holder can write who it is in it (fd()). FailedPrecondition when
  // another process holds it; else "cannot open PATH: ..." or "cannot lock PATH: ...", a
  // filesystem without flock included (the caller needs the lock, not a lock that holds nothing).
  static absl::StatusOr<DirectoryLock> TakeFile(const std::string& path);
  DirectoryLock(DirectoryLock&& other) noexcept : fd_(other.fd_) { other.fd_ = -1; }
  DirectoryLock& operator=(DirectoryLock&& other) noexcept;
  DirectoryLock(const DirectoryLock&) = delete;
  DirectoryLock& operator=(const DirectoryLock&) = delete;
  ~DirectoryLock();
  bool held() const { return fd_ >= 0; }
  int fd() const { return fd_; }  // the locked descriptor; -1 when !held()

 private:
  explicit DirectoryLock(int fd) : fd_(fd) {}
  int fd_ = -1;
};

// fsync a directory, so a rename inside it survives a crash.
absl::Status SyncDir(const std::string& dir);
// mkdir -p.
absl::Status MakeDirs(const std::string& path);

// What stat(2) finds at path: kThere; kMissing (nothing by that name: ENOENT, ENOTDIR); or
// kUnreachable, with *why saying so: "cannot be reached: permission denied (a directory on its
// way does not let user NAME search it)" for EACCES, stat's own reason for the rest (a link
// loop, a name too long). A path checked for existence alone called the last "does not exist".
enum class PathLookup { kThere, kMissing, kUnreachable };
PathLookup LookUpPath(const std::string& path, std::string* why);

// Whether two paths name the same directory, once symbolic links, "." and ".." are resolved and a
// trailing "/" dropped ("d", "d/", "./d/." and a link to d agree). Neither has to exist yet; two
// empty paths never match, and paths that cannot be resolved only when spelled the same.
bool SameDirectory(const std::string& a, const std::string& b);

// How many directory components of a glob pattern hold a wildcard (* ? [), the file name not
// counted: "shards/train_*.bin" 0, "runs/*/train_*.bin" 1, "/*/*/*.bin" 2. Each one multiplies
// the directories a match reads; the job-spec checks allow at most kMaxWildcardDirectories.
int WildcardDirectories(std::string_view pattern);
inline constexpr int kMaxWildcardDirectories = 1;

}  // namespace moe
