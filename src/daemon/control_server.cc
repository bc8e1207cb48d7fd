#include "daemon/control_server.h"

#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <system_error>

#include "io/log.h"
#include "io/unix_socket.h"

namespace ioband::daemon {

namespace {

constexpr size_t kMaxLine = 1 << 20;
constexpr int kClientTimeoutMs = 10000;

bool send_all(int fd, const std::string& text) {
  size_t sent = 0;
  while (sent < text.size()) {
    const ssize_t n = send(fd, text.data() + sent, text.size() - sent, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    sent += static_cast<size_t>(n);
  }
  return true;
}

}  // namespace

ControlServer::~ControlServer() {
  stop();
  if (listen_fd_ >= 0) close(listen_fd_);
  if (wake_fd_ >= 0) close(wake_fd_);
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
  wake_fd_ = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (wake_fd_ < 0) return std::string("eventfd: ") + std::strerror(errno);
  return {};
}

void ControlServer::start() {
  thread_ = std::thread([this] { run(); });
}

void ControlServer::stop_accepting() noexcept {
  stopping_.store(true);
  engine_.cancel_calibration();
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
    pollfd p[2] = {{listen_fd_, POLLIN, 0}, {wake_fd_, POLLIN, 0}};
    if (poll(p, parked_ ? 2 : 1, 500) <= 0) continue;
    if (parked_ && (p[1].revents & POLLIN)) {
      resume_parked();
      continue;
    }
    if (!(p[0].revents & POLLIN)) continue;
    int fd = accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
    if (fd < 0) continue;
    ucred cred{};
    socklen_t len = sizeof cred;
    const bool known = getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) == 0;
    if (serve(fd, known && cred.uid == geteuid(), {}) == Served::closed) close(fd);
  }
  if (parked_) {
    // Cancelled by stop_accepting. Its answer is not made: the reactors that
    // would apply it may be gone, and nobody waits for it.
    parked_->worker.join();
    close(parked_->fd);
    parked_.reset();
  }
}

// The parked command's work is done: its answer, then the client's next lines.
void ControlServer::resume_parked() {
  uint64_t count = 0;
  (void)read(wake_fd_, &count, sizeof count);
  parked_->worker.join();
  Parked parked = std::move(*parked_);
  parked_.reset();
  if (!send_all(parked.fd, parked.finish() + "\n") ||
      serve(parked.fd, parked.may_change, std::move(parked.buffer)) == Served::closed) {
    close(parked.fd);
  }
}

// One client at a time: commands are applied in the order they arrive, and a
// client that stops talking is dropped after a timeout.
ControlServer::Served ControlServer::serve(int fd, bool may_change, std::string buffer) {
  char chunk[4096];
  while (!stopping_) {
    size_t newline;
    while ((newline = buffer.find('\n')) != std::string::npos) {
      std::string line = buffer.substr(0, newline);
      buffer.erase(0, newline + 1);
      if (line.empty()) continue;
      control::Engine::Answer answer = engine_.answer_line(line, may_change);
      if (answer.work) {
        if (parked_) {  // the engine runs one at a time; never here, but never lose an answer
          answer.work();
          if (!send_all(fd, answer.finish() + "\n")) return Served::closed;
          continue;
        }
        Parked& parked = parked_.emplace();
        parked.fd = fd;
        parked.may_change = may_change;
        parked.buffer = buffer;
        parked.finish = answer.finish;
        try {
          parked.worker = std::thread([this, work = answer.work] {
            work();
            const uint64_t one = 1;
            (void)write(wake_fd_, &one, sizeof one);
          });
        } catch (const std::system_error&) {  // no thread to be had: the work here, then
          parked_.reset();
          answer.work();
          if (!send_all(fd, answer.finish() + "\n")) return Served::closed;
          continue;
        }
        return Served::parked;
      }
      if (!send_all(fd, answer.line + "\n")) return Served::closed;
    }
    if (buffer.size() > kMaxLine) {
      const std::string error = R"({"ok":false,"kind":"usage","error":"request line longer than 1 MiB"})"
                                "\n";
      send(fd, error.data(), error.size(), MSG_NOSIGNAL);
      return Served::closed;
    }
    pollfd p{fd, POLLIN, 0};
    if (poll(&p, 1, kClientTimeoutMs) <= 0) return Served::closed;
    ssize_t n = recv(fd, chunk, sizeof chunk, 0);
    if (n <= 0) return Served::closed;
    buffer.append(chunk, static_cast<size_t>(n));
  }
  return Served::closed;
}

}  // namespace ioband::daemon
