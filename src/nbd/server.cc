#include "nbd/server.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "io/log.h"
#include "io/unix_socket.h"

namespace ioband::nbd {

struct Server::Listener final : io::Completion {
  Server* server = nullptr;
  int fd = -1;
  bool unix_socket = false;
  bool multishot = true;
  bool armed = false;
  std::string where;

  void arm(io::Reactor& reactor) noexcept {
    io_uring_sqe* sqe = reactor.prepare(this);
    if (multishot) {
      io_uring_prep_multishot_accept(sqe, fd, nullptr, nullptr, SOCK_CLOEXEC);
    } else {
      io_uring_prep_accept(sqe, fd, nullptr, nullptr, SOCK_CLOEXEC);
    }
    armed = true;
  }

  void on_complete(int32_t result, uint32_t flags) noexcept override {
    const bool more = multishot && (flags & IORING_CQE_F_MORE);
    if (!more) armed = false;
    if (result >= 0) {
      server->accepted(*this, result);
    } else if (result == -EINVAL && multishot) {
      multishot = false;  // kernel without multishot accept: one at a time
    } else if (result == -ECANCELED) {
      return;
    } else if (result != -EAGAIN && result != -EINTR && result != -ECONNABORTED) {
      log_line("accept on " + where + " failed: " + std::strerror(-result));
    }
    // Multishot ends after an error or an overflow: arm it again.
    if (!armed && !server->shutting_down_) arm(*server->reactors_[0].reactor);
  }

  ~Listener() {
    if (fd >= 0) close(fd);
  }
};

Server::Server(std::vector<io::Reactor*> reactors, ExportRegistry& exports) : exports_(exports) {
  for (io::Reactor* r : reactors) reactors_.push_back(PerReactor{r, {}});
}

Server::~Server() {
  for (auto& pr : reactors_) {
    for (Session* s : pr.sessions) delete s;
  }
}

std::string Server::listen_unix(const std::string& path) {
  // A live NBD server greets at once.
  int fd = -1;
  std::string error = io::listen_unix_socket(path, 1024, 0, [](int probe) {
    uint8_t greeting[8];
    return recv(probe, greeting, sizeof greeting, MSG_WAITALL) == sizeof greeting;
  }, fd);
  if (!error.empty()) return error;
  auto l = std::make_unique<Listener>();
  l->server = this;
  l->fd = fd;
  l->unix_socket = true;
  l->where = path;
  listeners_.push_back(std::move(l));
  return {};
}

std::string Server::listen_tcp(const std::string& host_port) {
  const auto colon = host_port.rfind(':');
  if (colon == std::string::npos || colon + 1 == host_port.size()) return host_port + ": expected HOST:PORT";
  std::string host = host_port.substr(0, colon);
  const std::string port = host_port.substr(colon + 1);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
  addrinfo* result = nullptr;
  int rc = getaddrinfo(host.empty() ? nullptr : host.c_str(), port.c_str(), &hints, &result);
  if (rc != 0) return host_port + ": " + gai_strerror(rc);
  std::string error;
  int fd = -1;
  for (addrinfo* ai = result; ai; ai = ai->ai_next) {
    fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
    if (fd < 0) continue;
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(fd, ai->ai_addr, ai->ai_addrlen) == 0 && listen(fd, 1024) == 0) break;
    error = host_port + ": " + std::strerror(errno);
    close(fd);
    fd = -1;
  }
  freeaddrinfo(result);
  if (fd < 0) return error.empty() ? host_port + ": no usable address" : error;
  auto l = std::make_unique<Listener>();
  l->server = this;
  l->fd = fd;
  l->where = host_port;
  listeners_.push_back(std::move(l));
  return {};
}

void Server::start() {
  for (auto& l : listeners_) l->arm(*reactors_[0].reactor);
  for (size_t i = 0; i < reactors_.size(); ++i) {
    PerReactor* pr = &reactors_[i];
    pr->reactor->set_idle_check([pr] { return pr->sessions.empty(); });
  }
}

namespace {

PeerIdentity identify(int fd, bool unix_socket) {
  PeerIdentity peer;
  peer.unix_socket = unix_socket;
  if (unix_socket) {
    ucred cred{};
    socklen_t len = sizeof cred;
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) == 0) {
      peer.pid = cred.pid;
      peer.uid = cred.uid;
      peer.gid = cred.gid;
    }
    peer.address = "pid " + std::to_string(peer.pid) + " uid " + std::to_string(peer.uid);
    read_process_identity(peer);
    return peer;
  }
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  sockaddr_storage ss{};
  socklen_t len = sizeof ss;
  if (getpeername(fd, reinterpret_cast<sockaddr*>(&ss), &len) == 0) {
    char host[NI_MAXHOST] = "?", port[NI_MAXSERV] = "?";
    getnameinfo(reinterpret_cast<sockaddr*>(&ss), len, host, sizeof host, port, sizeof port,
                NI_NUMERICHOST | NI_NUMERICSERV);
    if (ss.ss_family == AF_INET) peer.ipv4 = ntohl(reinterpret_cast<sockaddr_in*>(&ss)->sin_addr.s_addr);
    peer.address = ss.ss_family == AF_INET6 ? "[" + std::string(host) + "]:" + port : std::string(host) + ":" + port;
  }
  return peer;
}

}  // namespace

void Server::accepted(Listener& listener, int fd) noexcept {
  if (shutting_down_) {
    close(fd);
    return;
  }
  auto* session = new (std::nothrow) Session(host_for(0), fd, identify(fd, listener.unix_socket), next_id_++);
  if (!session) {
    close(fd);
    return;
  }
  reactors_[0].sessions.insert(session);
  live_sessions_.fetch_add(1);
  session->start();
}

size_t Server::index_of(io::Reactor* reactor) const {
  for (size_t i = 0; i < reactors_.size(); ++i) {
    if (reactors_[i].reactor == reactor) return i;
  }
  return 0;
}

SessionHost Server::host_for(size_t index) {
  SessionHost host;
  host.reactor = reactors_[index].reactor;
  host.exports = &exports_;
  host.tls = tls_;
  host.on_closed = [this, index](Session* s) { closed(index, s); };
  host.migrate = [this, index](Session* s, io::Reactor* target) {
    reactors_[index].sessions.erase(s);
    const size_t to = index_of(target);
    target->post([this, to, s] { adopt(to, s); });
  };
  return host;
}

void Server::adopt(size_t index, Session* session) {
  reactors_[index].sessions.insert(session);
  session->set_host(host_for(index));
  session->resume_on(reactors_[index].reactor);
  if (shutting_down_) session->shutdown();
}

void Server::closed(size_t index, Session* session) {
  reactors_[index].sessions.erase(session);
  delete session;
  live_sessions_.fetch_sub(1);
}

void Server::shutdown() {
  shutting_down_ = true;
  for (auto& l : listeners_) {
    if (l->armed) reactors_[0].reactor->cancel(l.get());
  }
  for (auto& pr : reactors_) {
    PerReactor* p = &pr;
    pr.reactor->post([p] {
      // Copy: a session may close (and leave the set) during shutdown().
      std::vector<Session*> sessions(p->sessions.begin(), p->sessions.end());
      for (Session* s : sessions) s->shutdown();
    });
  }
}

void Server::disconnect_export(const std::string& name) {
  for (auto& pr : reactors_) {
    PerReactor* p = &pr;
    pr.reactor->post([p, name] {
      std::vector<Session*> sessions;
      for (Session* s : p->sessions) {
        if (s->exported() && s->exported()->name == name) sessions.push_back(s);
      }
      for (Session* s : sessions) s->abort();
    });
  }
}

}  // namespace ioband::nbd
