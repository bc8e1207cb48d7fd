#include "daemon/control_server.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <system_error>

#include "io/log.h"
#include "io/unix_socket.h"

namespace ioband::daemon {

namespace {

std::string refusal(const std::string& why) {
  return R"({"ok":false,"kind":"refused","error":")" + why + "\"}\n";
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
  std::string error = io::listen_unix_socket(
      path, 128, 0177, [](int probe) { return io::answers(probe, "{\"command\":\"targets\"}\n"); }, fd);
  if (!error.empty()) return error;
  listen_fd_ = fd;
  path_ = path;
  const int flags = fcntl(listen_fd_, F_GETFL);
  if (flags < 0 || fcntl(listen_fd_, F_SETFL, flags | O_NONBLOCK) != 0) {
    return path + ": " + std::strerror(errno);
  }
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
  if (wake_fd_ >= 0) {
    const uint64_t one = 1;
    (void)write(wake_fd_, &one, sizeof one);
  }
}

void ControlServer::stop() {
  stop_accepting();
  if (thread_.joinable()) thread_.join();
  unlink_socket();
  path_.clear();
}

void ControlServer::unlink_socket() noexcept {
  if (!path_.empty()) unlink(path_.c_str());
}

void ControlServer::arm_deadline(Client& client) {
  // One deadline at a time: a reply being sent, else a line begun, else
  // silence. A parked client waits for its command, not for itself.
  if (!client.out.empty()) {
    client.waiting_for = "did not read its reply";
  } else if (!client.in.empty()) {
    client.waiting_for = "sent no complete request line";
  } else {
    client.waiting_for = "sent nothing";
  }
  client.deadline = Clock::now() + timeout_;
}

void ControlServer::run() {
  std::vector<pollfd> fds;
  while (!stopping_) {
    fds.clear();
    Clock::time_point next = Clock::now() + std::chrono::milliseconds(500);
    // Out of descriptors: the backlog waits rather than the thread spinning.
    const bool accepting = !accept_pause_.paused(Clock::now());
    if (!accepting) next = std::min(next, accept_pause_.until());
    if (tick_) next = std::min(next, next_tick_);
    fds.push_back({listen_fd_, static_cast<short>(accepting ? POLLIN : 0), 0});
    fds.push_back({wake_fd_, POLLIN, 0});
    for (const auto& c : clients_) {
      short events = 0;
      if (!c->out.empty()) {
        events = POLLOUT;
      } else if (!c->parked) {
        events = POLLIN;
      }
      fds.push_back({c->fd, events, 0});
      if (!c->parked) next = std::min(next, c->deadline);
    }
    const auto wait = std::chrono::duration_cast<std::chrono::milliseconds>(next - Clock::now()).count();
    const int ready = poll(fds.data(), fds.size(), static_cast<int>(std::max<int64_t>(wait, 0) + 1));
    if (ready < 0 && errno != EINTR) {
      log_line(std::string("control: poll: ") + std::strerror(errno));
      break;
    }
    if (stopping_) break;
    if (fds[1].revents & POLLIN) {
      uint64_t count = 0;
      (void)read(wake_fd_, &count, sizeof count);
      resume_parked();
    }
    // Clients first, in the order they were polled; a client accepted now
    // is polled on the next round.
    const Clock::time_point now = Clock::now();
    if (tick_ && now >= next_tick_ && !stopping_) {
      tick_();
      next_tick_ = now + tick_every_;
    }
    const size_t polled = fds.size() - 2;
    for (size_t i = 0; i < polled && i < clients_.size(); ++i) {
      Client& c = *clients_[i];
      if (c.fd != fds[i + 2].fd) continue;  // the list changed under a resumed client
      const short revents = fds[i + 2].revents;
      bool alive = true;
      if (revents & POLLOUT) {
        alive = send_some(c);
      } else if (revents & (POLLIN | POLLHUP | POLLERR)) {
        alive = c.out.empty() && !c.parked ? receive(c) : !(revents & (POLLHUP | POLLERR));
      }
      if (!alive) {
        drop(c, nullptr);
        continue;
      }
      answer(c);
      if (c.fd >= 0 && !c.parked && now >= c.deadline) drop(c, c.waiting_for);
    }
    std::erase_if(clients_, [this](const std::unique_ptr<Client>& c) {
      return c->fd < 0 && std::none_of(parked_.begin(), parked_.end(),
                                       [&](const Parked& p) { return p.client == c.get(); });
    });
    if (fds[0].revents & POLLIN) accept_clients();
  }
  // Cancelled by stop_accepting, or bounded waits. Their answers are not
  // made: the reactors that would apply them may be gone, and nobody waits.
  for (Parked& parked : parked_) parked.worker.join();
  parked_.clear();
  for (auto& c : clients_) {
    if (c->fd >= 0) close(c->fd);
  }
  clients_.clear();
}

void ControlServer::accept_clients() {
  for (int accepted = 0; accepted < 64; ++accepted) {
    const int fd = accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK);
    if (fd < 0) {
      if (io::AcceptPause::applies(errno)) accept_pause_.pause(errno, "control");
      return;
    }
    if (clients_.size() >= kMaxControlClients) {
      // Told why, in one non-blocking send, rather than left hanging.
      const std::string line = refusal("iobandd serves at most " + std::to_string(kMaxControlClients) +
                                       " control clients at once; try again later");
      (void)send(fd, line.data(), line.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
      close(fd);
      ++refused_;
      refusal_log_.log("control: a client refused: " + std::to_string(kMaxControlClients) +
                       " control clients already (" + std::to_string(refused_) + " refused so far)");
      continue;
    }
    ucred cred{};
    socklen_t len = sizeof cred;
    const bool known = getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) == 0;
    auto client = std::make_unique<Client>();
    client->fd = fd;
    client->may_change = known && cred.uid == geteuid();
    arm_deadline(*client);
    clients_.push_back(std::move(client));
  }
}

bool ControlServer::receive(Client& client) {
  char chunk[4096];
  const bool had_line = client.in.find('\n') != std::string::npos;
  const bool was_empty = client.in.empty();
  for (;;) {
    const ssize_t n = recv(client.fd, chunk, sizeof chunk, 0);
    if (n > 0) {
      client.in.append(chunk, static_cast<size_t>(n));
      // No more than one line's worth is held for a client.
      if (client.in.size() > kMaxControlLine) break;
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
    // End of input: its complete lines are still answered.
    if (client.in.find('\n') == std::string::npos) return false;
    client.close_after_send = true;
    break;
  }
  // A line's deadline starts with its first byte.
  if (was_empty && !had_line && !client.in.empty()) arm_deadline(client);
  return true;
}

bool ControlServer::send_some(Client& client) {
  while (client.out_sent < client.out.size()) {
    const ssize_t n = send(client.fd, client.out.data() + client.out_sent, client.out.size() - client.out_sent,
                           MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n > 0) {
      client.out_sent += static_cast<size_t>(n);
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    return n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK);
  }
  client.out.clear();
  client.out_sent = 0;
  if (client.close_after_send && client.in.find('\n') == std::string::npos) return false;
  arm_deadline(client);
  return true;
}

void ControlServer::reply(Client& client, std::string line) {
  client.out = std::move(line);
  client.out += '\n';
  client.out_sent = 0;
  arm_deadline(client);
  if (!send_some(client)) drop(client, nullptr);
}

void ControlServer::answer(Client& client) {
  while (client.fd >= 0 && !client.parked && client.out.empty() && !stopping_) {
    const size_t newline = client.in.find('\n');
    if (newline == std::string::npos) {
      if (client.in.size() > kMaxControlLine) {
        client.in.clear();
        client.close_after_send = true;
        reply(client, R"({"ok":false,"kind":"usage","error":"request line longer than )" +
                          std::to_string(kMaxControlLine / 1024) + R"( KiB"})");
      }
      return;
    }
    std::string line = client.in.substr(0, newline);
    client.in.erase(0, newline + 1);
    if (line.empty()) continue;
    control::Engine::Answer answer = engine_.answer_line(line, client.may_change);
    if (!answer.work) {
      reply(client, std::move(answer.line));
      continue;
    }
    Parked& parked = parked_.emplace_back();
    parked.client = &client;
    parked.finish = answer.finish;
    try {
      parked.worker = std::thread([this, &parked, work = answer.work] {
        work();
        parked.done.store(true);
        const uint64_t one = 1;
        (void)write(wake_fd_, &one, sizeof one);
      });
      client.parked = true;
      continue;
    } catch (const std::system_error&) {  // no thread to be had: the work here, then
      parked_.pop_back();
    }
    answer.work();
    reply(client, answer.finish());
  }
}

// Parked commands whose work is done: their answers, then their clients' next lines.
void ControlServer::resume_parked() {
  for (auto it = parked_.begin(); it != parked_.end();) {
    if (!it->done.load()) {
      ++it;
      continue;
    }
    it->worker.join();
    std::string line = it->finish();
    Client& client = *it->client;
    it = parked_.erase(it);
    client.parked = false;
    if (client.fd < 0) continue;  // gone meanwhile: the answer was made, nobody reads it
    reply(client, std::move(line));
    answer(client);
  }
}

void ControlServer::drop(Client& client, const char* why) {
  if (client.fd < 0) return;
  if (why) {
    ucred cred{};
    socklen_t len = sizeof cred;
    const std::string who = getsockopt(client.fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) == 0
                                ? "pid " + std::to_string(cred.pid)
                                : std::string("unknown");
    char seconds[32];
    std::snprintf(seconds, sizeof seconds, "%g", static_cast<double>(timeout_.count()) / 1000);
    log_line("control client (" + who + ") " + why + " within " + seconds + " s: closed");
  }
  close(client.fd);
  client.fd = -1;
  client.in.clear();
  client.out.clear();
}

}  // namespace ioband::daemon
