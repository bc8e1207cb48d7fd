#include "daemon/state_lock.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>

#include "io/file_lock.h"

namespace ioband::daemon {

StateLock::~StateLock() {
  if (fd_ < 0) return;
  // The pid is meaningful only while the lock is held.
  const int writable = open(path_.c_str(), O_WRONLY | O_TRUNC | O_CLOEXEC);
  if (writable >= 0) close(writable);
  close(fd_);
}

std::string StateLock::acquire(const std::string& state_dir) {
  const std::string path = state_dir + "/iobandd.lock";
  // Created if need be, but held through a read-only descriptor: a file
  // open for writing would keep the state directory's file system from
  // being remounted read-only.
  const int created = open(path.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
  if (created >= 0) close(created);
  const int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return path + ": " + std::strerror(errno);
  if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
    const int error = errno;
    std::string holder;
    if (error == EWOULDBLOCK) {
      char text[32] = {};
      const ssize_t n = pread(fd, text, sizeof text - 1, 0);
      const long pid = n > 0 ? std::strtol(text, nullptr, 10) : 0;
      const pid_t from_kernel = io::flock_holder(fd);
      holder = io::describe_process(from_kernel > 0 ? from_kernel : static_cast<pid_t>(pid));
    }
    close(fd);
    if (error != EWOULDBLOCK) return path + ": " + std::strerror(error);
    return state_dir + " is in use by another iobandd, " + holder + " (it holds " + path +
           "); one daemon per state directory";
  }
  // For the next one's message; /proc/locks names the holder too.
  const int writable = open(path.c_str(), O_WRONLY | O_TRUNC | O_CLOEXEC);
  if (writable >= 0) {
    const std::string pid = std::to_string(getpid()) + "\n";
    (void)write(writable, pid.data(), pid.size());
    close(writable);
  }
  fd_ = fd;
  path_ = path;
  return {};
}

}  // namespace ioband::daemon
