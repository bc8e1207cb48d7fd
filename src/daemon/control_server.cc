#include "daemon/control_server.h"

#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "io/log.h"
#include "io/unix_socket.h"

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
  // A live daemon answers a request; the socket is 0600 from the start.
  int fd = -1;
  std::string error = io::listen_unix_socket(path, 16, 0177, [](int probe) {
    const char ask[] = "{\"command\":\"targets\"}\n";
    char answer[1];
    return send(probe, ask, sizeof ask - 1, MSG_NOSIGNAL) > 0 && recv(probe, answer, 1, 0) == 1;
  }, fd);
  if (!error.empty()) return error;
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
