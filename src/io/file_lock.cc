#include "io/file_lock.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <span>
#include <sstream>

namespace ioband::io {

namespace {

// QEMU's permission bits (block.h) and where their locks sit.
constexpr off_t kPermissionBase = 100;
constexpr off_t kUnsharedBase = 200;
constexpr int kConsistentRead = 0;
constexpr int kWrite = 1;
constexpr int kWriteUnchanged = 2;
constexpr int kResize = 3;

struct flock one_byte(short type, off_t byte) {
  struct flock lock{};
  lock.l_type = type;
  lock.l_whence = SEEK_SET;
  lock.l_start = byte;
  lock.l_len = 1;
  return lock;
}

bool lock_byte(int fd, off_t byte) {
  struct flock lock = one_byte(F_RDLCK, byte);
  return fcntl(fd, F_OFD_SETLK, &lock) == 0;
}

// Any lock of another open file on the byte conflicts with a write lock.
bool byte_locked_by_other(int fd, off_t byte) {
  struct flock lock = one_byte(F_WRLCK, byte);
  return fcntl(fd, F_OFD_GETLK, &lock) == 0 && lock.l_type != F_UNLCK;
}

// A process (not this one) with the file open and an OFD lock on it: found
// by its descriptors, since OFD locks carry no pid.
pid_t ofd_holder(const struct stat& file) {
  DIR* proc = opendir("/proc");
  if (!proc) return 0;
  pid_t found = 0;
  const pid_t self = getpid();
  while (dirent* entry = readdir(proc)) {
    char* end = nullptr;
    const long pid = std::strtol(entry->d_name, &end, 10);
    if (*end != '\0' || pid <= 0 || pid == self) continue;
    const std::string base = "/proc/" + std::string(entry->d_name);
    DIR* fds = opendir((base + "/fd").c_str());
    if (!fds) continue;
    while (dirent* fd = readdir(fds)) {
      if (fd->d_name[0] == '.') continue;
      struct stat st{};
      if (stat((base + "/fd/" + fd->d_name).c_str(), &st) != 0 || st.st_dev != file.st_dev ||
          st.st_ino != file.st_ino) {
        continue;
      }
      std::ifstream info(base + "/fdinfo/" + fd->d_name);
      std::string line;
      while (std::getline(info, line)) {
        if (line.starts_with("lock:") && line.find("OFDLCK") != std::string::npos) found = static_cast<pid_t>(pid);
      }
      if (found) break;
    }
    closedir(fds);
    if (found) break;
  }
  closedir(proc);
  return found;
}

}  // namespace

std::string describe_process(pid_t pid) {
  std::ifstream comm("/proc/" + std::to_string(pid) + "/comm");
  std::string name;
  std::getline(comm, name);
  return "pid " + std::to_string(pid) + (name.empty() ? std::string() : " (" + name + ")");
}

pid_t flock_holder(int fd) {
  struct stat st{};
  if (fstat(fd, &st) != 0) return 0;
  std::ifstream locks("/proc/locks");
  std::string line;
  while (std::getline(locks, line)) {
    // "1: FLOCK  ADVISORY  WRITE 1234 08:02:131 0 EOF"; waiters have "->".
    std::istringstream words(line);
    std::string id, kind, advisory, mode, where;
    long pid = 0;
    if (!(words >> id >> kind >> advisory >> mode >> pid >> where) || kind != "FLOCK") continue;
    unsigned major_number = 0, minor_number = 0;
    unsigned long inode = 0;
    if (std::sscanf(where.c_str(), "%x:%x:%lu", &major_number, &minor_number, &inode) != 3) continue;
    if (makedev(major_number, minor_number) == st.st_dev && inode == st.st_ino && pid > 0) {
      return static_cast<pid_t>(pid);
    }
  }
  return 0;
}

std::string lock_image(int fd, const std::string& path, bool writable) {
  if (flock(fd, (writable ? LOCK_EX : LOCK_SH) | LOCK_NB) != 0) {
    if (errno != EWOULDBLOCK) return {};  // a file system without flock: QEMU's locks still apply
    const pid_t holder = flock_holder(fd);
    const std::string who = holder == getpid() ? "this iobandd (another of its exports)"
                            : holder > 0       ? describe_process(holder)
                                               : std::string("another process");
    return writable ? path + " is open in " + who + "; refused to write it at the same time"
                    : path + " is written by " + who + "; refused to read it at the same time";
  }
  // QEMU's scheme: the permissions held, then those not shared.
  const int held_writable[] = {kConsistentRead, kWrite, kWriteUnchanged};
  const int held_read_only[] = {kConsistentRead};
  const int unshared[] = {kWrite, kResize};
  bool locked = true;
  for (int p : writable ? std::span<const int>(held_writable) : std::span<const int>(held_read_only)) {
    locked = locked && lock_byte(fd, kPermissionBase + p);
  }
  for (int p : unshared) locked = locked && lock_byte(fd, kUnsharedBase + p);
  if (!locked) return {};  // no OFD locks here (some network file systems)
  // Locked first, then checked, as QEMU does: of two that race, neither
  // goes on with the other unseen.
  bool conflict = byte_locked_by_other(fd, kPermissionBase + kWrite);  // somebody writes
  for (int p : writable ? std::span<const int>(held_writable) : std::span<const int>(held_read_only)) {
    conflict = conflict || byte_locked_by_other(fd, kUnsharedBase + p);  // somebody forbids what we do
  }
  if (!conflict) return {};
  flock(fd, LOCK_UN);
  struct stat st{};
  const pid_t holder = fstat(fd, &st) == 0 ? ofd_holder(st) : 0;
  return path + " is in use by " + (holder > 0 ? describe_process(holder) : std::string("another program")) +
         ", which holds QEMU-style locks on it that forbid " + (writable ? "writing" : "reading") +
         " it meanwhile";
}

}  // namespace ioband::io
