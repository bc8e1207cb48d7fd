#include "io/unix_socket.h"

#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace ioband::io {

bool answers(int probe, std::string_view ask) noexcept {
  char answer[1];
  return send(probe, ask.data(), ask.size(), MSG_NOSIGNAL) > 0 && recv(probe, answer, 1, 0) == 1;
}

std::string listen_unix_socket(const std::string& path, int backlog, mode_t mode_mask,
                               const std::function<bool(int)>& is_live, int& fd) {
  sockaddr_un addr{};
  if (path.size() >= sizeof addr.sun_path) return path + ": socket path too long";
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);

  struct stat st{};
  if (lstat(path.c_str(), &st) == 0) {
    if (!S_ISSOCK(st.st_mode)) return path + ": exists and is not a socket";
    int probe = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    bool live = false;
    if (probe >= 0 && connect(probe, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0) {
      timeval tv{1, 0};
      setsockopt(probe, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
      live = is_live(probe);
    }
    if (probe >= 0) close(probe);
    if (live) return path + ": another server is listening there";
    unlink(path.c_str());
  }
  int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (s < 0) return std::string("socket: ") + std::strerror(errno);
  const mode_t old = mode_mask ? umask(mode_mask) : 0;
  const int rc = bind(s, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
  const int bind_errno = errno;
  if (mode_mask) umask(old);
  if (rc != 0 || listen(s, backlog) != 0) {
    std::string error = path + ": " + std::strerror(rc != 0 ? bind_errno : errno);
    close(s);
    return error;
  }
  fd = s;
  return {};
}

}  // namespace ioband::io
