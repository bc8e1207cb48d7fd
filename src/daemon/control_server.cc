#include "daemon/control_server.h"

#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "io/log.h"

namespace ioband::daemon {

namespace {

constexpr size_t kMaxLine = 1 << 20;
constexpr int kClientTimeoutMs = 10000;

}  // namespace

ControlServer::~ControlServer() {
  stop();
  if (listen_fd_ >= 0) close(listen_fd_);
}

std::string ControlServer::listen(const std::string& path) {
  sockaddr_un addr{};
  if (path.size() >= sizeof addr.sun_path) return path + ": socket path too long";
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  struct stat st{};
  if (lstat(path.c_str(), &st) == 0) {
    if (!S_ISSOCK(st.st_mode)) return path + ": exists and is not a socket";
    // A live daemon answers; a socket of a killed one (kept a moment by the
    // kernel) may accept but never answers.
    int probe = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    bool live = false;
    if (probe >= 0 && connect(probe, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0) {
      timeval tv{1, 0};
      setsockopt(probe, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
      const char ask[] = "{\"command\":\"targets\"}\n";
      char answer[1];
      live = send(probe, ask, sizeof ask - 1, MSG_NOSIGNAL) > 0 && recv(probe, answer, 1, 0) == 1;
    }
    if (probe >= 0) close(probe);
    if (live) return path + ": another daemon is listening there";
    unlink(path.c_str());
  }
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return std::string("socket: ") + std::strerror(errno);
  // Created 0600 from the start: no window in which others may connect.
  const mode_t old = umask(0177);
  const int rc = bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
  umask(old);
  if (rc != 0 || ::listen(fd, 16) != 0) {
    std::string error = path + ": " + std::strerror(errno);
    close(fd);
    return error;
  }
  listen_fd_ = fd;
  path_ = path;
  return {};
}

void ControlServer::start() {
  thread_ = std::thread([this] { run(); });
}

void ControlServer::stop_accepting() noexcept {
  stopping_.store(true);
  if (listen_fd_ >= 0) ::shutdown(listen_fd_, SHUT_RDWR);
}

void ControlServer::stop() {
  stop_accepting();
  if (thread_.joinable()) thread_.join();
  if (!path_.empty()) {
    unlink(path_.c_str());
    path_.clear();
  }
}

void ControlServer::run() {
  while (!stopping_) {
    pollfd p{listen_fd_, POLLIN, 0};
    if (poll(&p, 1, 500) <= 0) continue;
    int fd = accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
    if (fd < 0) continue;
    serve(fd);
    close(fd);
  }
}

// One client at a time: commands are applied in the order they arrive, and a
// client that stops talking is dropped after a timeout.
void ControlServer::serve(int fd) {
  ucred cred{};
  socklen_t len = sizeof cred;
  const bool known = getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) == 0;
  const bool may_change = known && cred.uid == geteuid();
  std::string buffer;
  char chunk[4096];
  while (!stopping_) {
    size_t newline;
    while ((newline = buffer.find('\n')) != std::string::npos) {
      std::string line = buffer.substr(0, newline);
      buffer.erase(0, newline + 1);
      if (line.empty()) continue;
      std::string reply = engine_.handle_line(line, may_change) + "\n";
      size_t sent = 0;
      while (sent < reply.size()) {
        ssize_t n = send(fd, reply.data() + sent, reply.size() - sent, MSG_NOSIGNAL);
        if (n <= 0) return;
        sent += static_cast<size_t>(n);
      }
    }
    if (buffer.size() > kMaxLine) {
      const std::string error = R"({"ok":false,"kind":"usage","error":"request line longer than 1 MiB"})"
                                "\n";
      send(fd, error.data(), error.size(), MSG_NOSIGNAL);
      return;
    }
    pollfd p{fd, POLLIN, 0};
    if (poll(&p, 1, kClientTimeoutMs) <= 0) return;
    ssize_t n = recv(fd, chunk, sizeof chunk, 0);
    if (n <= 0) return;
    buffer.append(chunk, static_cast<size_t>(n));
  }
}

}  // namespace ioband::daemon
