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
  bool loopback = false;  // TCP on a loopback address
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

namespace {

bool is_loopback(const sockaddr* address) noexcept {
  if (address->sa_family == AF_INET) {
    return (ntohl(reinterpret_cast<const sockaddr_in*>(address)->sin_addr.s_addr) >> 24) == 127;
  }
  if (address->sa_family != AF_INET6) return false;
  const in6_addr& a = reinterpret_cast<const sockaddr_in6*>(address)->sin6_addr;
  return IN6_IS_ADDR_LOOPBACK(&a) || (IN6_IS_ADDR_V4MAPPED(&a) && a.s6_addr[12] == 127);
}

std::string numeric_address(const sockaddr* address, socklen_t length) {
  char host[NI_MAXHOST] = "?", port[NI_MAXSERV] = "?";
  getnameinfo(address, length, host, sizeof host, port, sizeof port, NI_NUMERICHOST | NI_NUMERICSERV);
  return address->sa_family == AF_INET6 ? "[" + std::string(host) + "]:" + port : std::string(host) + ":" + port;
}

}  // namespace

// "HOST:PORT", "[IPV6]:PORT", or without a host (":PORT", "PORT") the
// loopback addresses only: serving the network is a choice to spell out.
// Every address the host resolves to gets a listener (localhost: 127.0.0.1
// and ::1), IPv6 ones then IPv6-only so that both can bind the port.
std::string Server::listen_tcp(const std::string& host_port) {
  std::string host, port;
  const auto colon = host_port.rfind(':');
  if (colon == std::string::npos) {
    port = host_port;
  } else {
    host = host_port.substr(0, colon);
    port = host_port.substr(colon + 1);
  }
  if (port.empty()) return host_port + ": expected [HOST:]PORT";
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICSERV;  // no host and no AI_PASSIVE: the loopback addresses
  addrinfo* result = nullptr;
  int rc = getaddrinfo(host.empty() ? nullptr : host.c_str(), port.c_str(), &hints, &result);
  if (rc != 0) return host_port + ": " + gai_strerror(rc);
  bool v4 = false, v6 = false;
  for (addrinfo* ai = result; ai; ai = ai->ai_next) {
    v4 |= ai->ai_family == AF_INET;
    v6 |= ai->ai_family == AF_INET6;
  }
  std::vector<std::unique_ptr<Listener>> bound;
  std::string error;
  for (addrinfo* ai = result; ai && error.empty(); ai = ai->ai_next) {
    const std::string where = numeric_address(ai->ai_addr, ai->ai_addrlen);
    bool duplicate = false;
    for (const auto& l : bound) duplicate |= l->where == where;
    if (duplicate) continue;
    const int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
    if (fd < 0) {
      if (errno != EAFNOSUPPORT) error = where + ": " + std::strerror(errno);
      continue;
    }
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (ai->ai_family == AF_INET6 && v4 && v6) setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
    if (bind(fd, ai->ai_addr, ai->ai_addrlen) != 0 || listen(fd, 1024) != 0) {
      // A host without IPv6 (or IPv4) has no such loopback address: skip it.
      if (errno != EADDRNOTAVAIL && errno != EAFNOSUPPORT) error = where + ": " + std::strerror(errno);
      close(fd);
      continue;
    }
    auto l = std::make_unique<Listener>();
    l->server = this;
    l->fd = fd;
    l->where = where;
    l->loopback = is_loopback(ai->ai_addr);
    bound.push_back(std::move(l));
  }
  freeaddrinfo(result);
  if (!error.empty()) return error;  // the listeners bound so far close with `bound`
  if (bound.empty()) return host_port + ": no usable address";
  for (auto& l : bound) listeners_.push_back(std::move(l));
  return {};
}

std::vector<std::string> Server::tcp_listeners(bool exposed_only) const {
  std::vector<std::string> out;
  for (const auto& l : listeners_) {
    if (!l->unix_socket && !(exposed_only && l->loopback)) out.push_back(l->where);
  }
  return out;
}

void Server::start() {
  for (auto& l : listeners_) l->arm(*reactors_[0].reactor);
  for (size_t i = 0; i < reactors_.size(); ++i) {
    PerReactor* pr = &reactors_[i];
    // Reactor 0 runs the stop's timers: it is the last to stop.
    pr->reactor->set_idle_check([this, pr, i] { return pr->sessions.empty() && (i != 0 || live_sessions_ == 0); });
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
      peer.has_credentials = true;
    }
    // Supplementary groups, for gid: access rules (ERANGE gives the size needed).
    std::vector<gid_t> groups(32);
    for (int tries = 0; tries < 3; ++tries) {
      socklen_t bytes = static_cast<socklen_t>(groups.size() * sizeof(gid_t));
      if (getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS, groups.data(), &bytes) == 0) {
        groups.resize(bytes / sizeof(gid_t));
        peer.groups.assign(groups.begin(), groups.end());
        break;
      }
      if (errno != ERANGE) break;
      groups.resize(bytes / sizeof(gid_t) + 1);
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
    if (ss.ss_family == AF_INET) {
      const in_addr a = reinterpret_cast<sockaddr_in*>(&ss)->sin_addr;
      peer.ipv4 = ntohl(a.s_addr);
      peer.ip[10] = peer.ip[11] = 0xff;
      std::memcpy(&peer.ip[12], &a, 4);
      peer.has_ip = true;
    } else if (ss.ss_family == AF_INET6) {
      const in6_addr& a = reinterpret_cast<sockaddr_in6*>(&ss)->sin6_addr;
      std::memcpy(peer.ip.data(), &a, 16);
      peer.has_ip = true;
      // An IPv4 client of a dual-stack socket is classified as IPv4 too.
      if (IN6_IS_ADDR_V4MAPPED(&a)) {
        uint32_t v4;
        std::memcpy(&v4, &peer.ip[12], 4);
        peer.ipv4 = ntohl(v4);
      }
    }
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
  // Reactor 0 stops only when no session is left anywhere: wake it for the last.
  if (live_sessions_.fetch_sub(1) == 1 && shutting_down_ && index != 0) reactors_[0].reactor->post([] {});
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

void Server::abort_all() {
  for (auto& pr : reactors_) {
    PerReactor* p = &pr;
    pr.reactor->post([p] {
      std::vector<Session*> sessions(p->sessions.begin(), p->sessions.end());
      for (Session* s : sessions) s->abort();
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
