#include "common/files.h"

#include <fcntl.h>
#include <pwd.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <climits>
#include <cstdint>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace moe {
namespace {

absl::Status ErrnoStatus(const std::string& what, const std::string& path) {
  int err = errno;
  std::string msg = absl::StrCat(what, " ", path, ": ", std::strerror(err));
  if (err == ENOENT) return absl::NotFoundError(msg);
  if (err == EACCES || err == EPERM) return absl::PermissionDeniedError(msg);
  return absl::InternalError(msg);
}

}  // namespace

absl::StatusOr<std::string> ReadFile(const std::string& path) {
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec)) {
    return absl::InvalidArgumentError(absl::StrCat(path, " is a directory, not a file"));
  }
  // read(2), not a stream: a read error (a /proc file whose process just exited gives ESRCH)
  // is an error status here, where libstdc++'s stream buffer throws it or drops it.
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return ErrnoStatus("cannot open", path);
  std::string out;
  struct stat st;
  if (::fstat(fd, &st) == 0 && st.st_size > 0) out.reserve(static_cast<size_t>(st.st_size));
  char buf[1 << 16];
  for (;;) {
    const ssize_t n = ::read(fd, buf, sizeof(buf));
    if (n == 0) break;
    if (n < 0) {
      if (errno == EINTR) continue;
      absl::Status status = ErrnoStatus("cannot read", path);
      ::close(fd);
      return status;
    }
    out.append(buf, static_cast<size_t>(n));
  }
  ::close(fd);
  return out;
}

absl::Status SyncDir(const std::string& dir) {
  int fd = ::open(dir.empty() ? "." : dir.c_str(), O_RDONLY | O_DIRECTORY);
  if (fd < 0) return ErrnoStatus("cannot open directory", dir);
  ::fsync(fd);
  ::close(fd);
  return absl::OkStatus();
}

namespace {

// All of contents to fd (path names it in the error); the caller closes fd.
absl::Status WriteAll(int fd, std::string_view contents, const std::string& path) {
  size_t done = 0;
  while (done < contents.size()) {
    const ssize_t n = ::write(fd, contents.data() + done, contents.size() - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoStatus("cannot write", path);
    }
    done += static_cast<size_t>(n);
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status WriteFileAtomic(const std::string& path, std::string_view contents) {
  // A temporary name no other writer holds: this process's id and a count of its writes (two
  // threads writing one path each get their own file; the last rename wins, whole), made with
  // O_EXCL so that a leftover of a dead process with the same id is passed over, not shared.
  static std::atomic<uint64_t> writes{0};
  std::string tmp;
  int fd = -1;
  for (int attempt = 0; attempt < 100; ++attempt) {
    tmp = absl::StrCat(path, ".tmp.", ::getpid(), ".", writes.fetch_add(1));
    fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd >= 0 || errno != EEXIST) break;
  }
  if (fd < 0) {
    // Named by the file the caller asked for: the temporary name is this function's own.
    const int err = errno;
    const std::string dir = std::filesystem::path(path).parent_path().string();
    errno = err;
    return ErrnoStatus("cannot write", absl::StrCat(path, " (no new file can be made in ", dir.empty() ? "." : dir,
                                                    err == ENOENT ? ", which does not exist)" : ")"));
  }
  if (absl::Status st = WriteAll(fd, contents, tmp); !st.ok()) {
    ::close(fd);
    ::unlink(tmp.c_str());
    return st;
  }
  if (::fsync(fd) != 0 || ::close(fd) != 0) {
    absl::Status st = ErrnoStatus("cannot flush", tmp);
    ::unlink(tmp.c_str());
    return st;
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    absl::Status st = ErrnoStatus("cannot rename into", path);
    ::unlink(tmp.c_str());
    return st;
  }
  return SyncDir(std::filesystem::path(path).parent_path().string());
}

absl::Status AppendFile(const std::string& path, std::string_view contents) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
  if (fd < 0) return ErrnoStatus("cannot open", path);
  absl::Status st = WriteAll(fd, contents, path);
  if (::close(fd) != 0 && st.ok()) st = ErrnoStatus("cannot close", path);
  return st;
}

const char* NonRegularKind(unsigned mode) {
  return S_ISDIR(mode)    ? "a directory"
         : S_ISCHR(mode)  ? "a character device"
         : S_ISBLK(mode)  ? "a block device"
         : S_ISFIFO(mode) ? "a named pipe"
         : S_ISSOCK(mode) ? "a socket"
                          : "not a regular file";
}

absl::Status WriteUserFile(const std::string& path, std::string_view contents) {
  std::string target = path;
  struct stat st;
  if (::lstat(path.c_str(), &st) == 0 && S_ISLNK(st.st_mode)) {
    // Through the link: the file it names gets the contents, the link stays.
    char buf[PATH_MAX];
    if (::realpath(path.c_str(), buf) == nullptr) {
      return absl::FailedPreconditionError(absl::StrCat(
          path, " is a symbolic link to a file that does not exist or cannot be reached (",
          std::strerror(errno), "); give a file path"));
    }
    target = buf;
  }
  if (::stat(target.c_str(), &st) == 0) {
    if (!S_ISREG(st.st_mode)) {
      return absl::FailedPreconditionError(absl::StrCat(path, " is ", NonRegularKind(st.st_mode),
                                                        ", which moe does not replace; give a new file name or a "
                                                        "regular file's"));
    }
    if ((st.st_mode & S_IWUSR) == 0) {
      return absl::FailedPreconditionError(absl::StrCat(
          path, " is read-only (mode ", absl::StrFormat("%04o", st.st_mode & 07777),
          "), which moe does not replace; give another name, or chmod u+w it first"));
    }
  }
  return WriteFileAtomic(target, contents);
}

namespace {

// flock(LOCK_EX | LOCK_NB) on fd, open on path: OK with the lock held; else fd is closed and the
// status is FailedPrecondition when another process holds the lock, Unimplemented when the
// filesystem has no flock, the errno's otherwise (those two say "<what> <path>: <why>").
absl::Status LockExclusive(int fd, const std::string& what, const std::string& path) {
  if (::flock(fd, LOCK_EX | LOCK_NB) == 0) return absl::OkStatus();
  const int err = errno;
  ::close(fd);
  if (err == EWOULDBLOCK) {
    return absl::FailedPreconditionError(absl::StrCat(path, " is locked by another process"));
  }
  if (err == ENOLCK || err == EOPNOTSUPP || err == ENOSYS || err == EINVAL) {
    return absl::UnimplementedError(absl::StrCat(what, " ", path, ": ", std::strerror(err)));
  }
  errno = err;
  return ErrnoStatus(what, path);
}

}  // namespace

absl::StatusOr<DirectoryLock> DirectoryLock::Take(const std::string& dir) {
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return ErrnoStatus("cannot open directory", dir);
  const absl::Status st = LockExclusive(fd, "cannot lock directory", dir);
  if (st.ok()) return DirectoryLock(fd);
  if (st.code() == absl::StatusCode::kUnimplemented) return DirectoryLock(-1);  // held() says so
  return st;
}

absl::StatusOr<DirectoryLock> DirectoryLock::TakeFile(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (fd < 0) return ErrnoStatus("cannot open", path);
  if (absl::Status st = LockExclusive(fd, "cannot lock", path); !st.ok()) return st;
  return DirectoryLock(fd);
}

DirectoryLock& DirectoryLock::operator=(DirectoryLock&& other) noexcept {
  if (this != &other) {
    if (fd_ >= 0) ::close(fd_);
    fd_ = other.fd_;
    other.fd_ = -1;
  }
  return *this;
}

DirectoryLock::~DirectoryLock() {
  if (fd_ >= 0) ::close(fd_);  // the lock goes with the descriptor
}

absl::Status MakeDirs(const std::string& path) {
  std::error_code ec;
  std::filesystem::create_directories(path, ec);
  if (ec) {
    std::error_code ec2;
    // The path or a folder on the way is a file: said so, with the way out.
    for (std::filesystem::path p = path; !p.empty() && p != p.parent_path(); p = p.parent_path()) {
      if (std::filesystem::exists(p, ec2) && !std::filesystem::is_directory(p, ec2)) {
        return absl::FailedPreconditionError(absl::StrCat("cannot create directory ", path, ": ", p.string(),
                                                          " exists and is not a directory; give a directory"));
      }
    }
    return absl::InternalError(absl::StrCat("cannot create directory ", path, ": ", ec.message()));
  }
  return absl::OkStatus();
}

bool SameDirectory(const std::string& a, const std::string& b) {
  namespace fs = std::filesystem;
  if (a.empty() || b.empty()) return false;
  std::error_code ec_a, ec_b;
  // weakly_canonical keeps the trailing "/" of a path whose end does not exist yet.
  auto resolve = [](const std::string& path, std::error_code& ec) {
    fs::path p = fs::weakly_canonical(path, ec);
    return p.has_filename() ? p : p.parent_path();
  };
  const fs::path ra = resolve(a, ec_a), rb = resolve(b, ec_b);
  if (ec_a || ec_b) return a == b;  // unresolvable: only the same spelling
  return ra == rb;
}

int WildcardDirectories(std::string_view pattern) {
  const size_t last = pattern.rfind('/');
  if (last == std::string_view::npos) return 0;
  int n = 0;
  size_t start = 0;
  while (start < last) {
    const size_t end = pattern.find('/', start);
    if (pattern.substr(start, end - start).find_first_of("*?[") != std::string_view::npos) ++n;
    start = end + 1;
  }
  return n;
}

PathLookup LookUpPath(const std::string& path, std::string* why) {
  struct stat st;
  if (::stat(path.c_str(), &st) == 0) return PathLookup::kThere;
  const int err = errno;
  if (err == ENOENT || err == ENOTDIR) return PathLookup::kMissing;
  if (err == EACCES) {
    std::string user = absl::StrCat("uid ", geteuid());
    // getpwuid_r: moed validates on several gRPC threads at once.
    passwd pw{};
    passwd* found = nullptr;
    std::vector<char> buf(16384);
    if (getpwuid_r(geteuid(), &pw, buf.data(), buf.size(), &found) == 0 && found != nullptr &&
        found->pw_name != nullptr) {
      user = found->pw_name;
    }
    *why = absl::StrCat("cannot be reached: permission denied (a directory on its way does not let user ", user,
                        " search it)");
  } else {
    *why = absl::StrCat("cannot be reached: ", std::strerror(err));
  }
  return PathLookup::kUnreachable;
}

}  // namespace moe
