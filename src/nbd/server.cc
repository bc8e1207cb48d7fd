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

#include "io/accept_pause.h"
#include "io/log.h"
#include "io/unix_socket.h"

namespace ioband::nbd {

namespace {

// Clients decide how often these happen: one line per kind per interval.
RateLimitedLog refusal_log, timeout_log;

__kernel_timespec timespec_of(std::chrono::nanoseconds d) {
  __kernel_timespec ts{};
  ts.tv_sec = d.count() / 1000000000;
  ts.tv_nsec = d.count() % 1000000000;
  return ts;
}

}  // namespace

struct Server::Ticker final : io::Completion {
  Server* server = nullptr;
  size_t index = 0;
  __kernel_timespec ts{};
  void on_complete(int32_t result, uint32_t) noexcept override {
    if (result != -ECANCELED) server->tick(index);
  }
};

struct Server::Listener final : io::Completion {
  Server* server = nullptr;
  int fd = -1;
  bool unix_socket = false;
  bool loopback = false;  // TCP on a loopback address
  bool multishot = true;
  bool armed = false;
  std::string where;
  // Accept paused for want of descriptors or memory (io/accept_pause.h): a
  // timer arms it again.
  io::AcceptPause pause;
  struct Resume final : io::Completion {
    Listener* listener = nullptr;
    __kernel_timespec ts{};
    void on_complete(int32_t result, uint32_t) noexcept override {
      Server* server = listener->server;
      if (result != -ECANCELED && !server->shutting_down_) listener->arm(*server->reactors_[0].reactor);
    }
  } resume;
  bool paused = false;

  void arm(io::Reactor& reactor) noexcept {
    paused = false;
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
    } else if (io::AcceptPause::applies(-result)) {
      if (armed) return;  // multishot still armed: it reports the next one
      server->limits_.counters.accept_pauses.fetch_add(1, std::memory_order_relaxed);
      pause.pause(-result, where, " with " + std::to_string(server->live_sessions_.load()) + " connections open");
      paused = true;
      resume.listener = this;
      resume.ts = timespec_of(io::AcceptPause::kInterval);
      server->reactors_[0].reactor->arm_timer(&resume, &resume.ts);
      return;
    } else if (result != -EAGAIN && result != -EINTR && result != -ECONNABORTED) {
      log_line("accept on " + where + " failed: " + std::strerror(-result));
    }
    // Multishot ends after an error or an overflow: arm it again.
    if (!armed && !paused && !server->shutting_down_) arm(*server->reactors_[0].reactor);
  }

  ~Listener() {
    if (fd >= 0) close(fd);
  }
};

Server::Server(std::vector<io::Reactor*> reactors, ExportRegistry& exports) : exports_(exports) {
  for (io::Reactor* r : reactors) {
    reactors_.emplace_back();
    reactors_.back().reactor = r;
  }
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

void Server::set_limits(const LimitsConfig& config) {
  limits_.config = config;
  limits_.memory.set_cap(config.max_request_memory);
}

void Server::start() {
  for (auto& l : listeners_) l->arm(*reactors_[0].reactor);
  for (size_t i = 0; i < reactors_.size(); ++i) {
    PerReactor* pr = &reactors_[i];
    // Reactor 0 runs the stop's timers: it is the last to stop.
    pr->reactor->set_idle_check([this, pr, i] { return pr->sessions.empty() && (i != 0 || live_sessions_ == 0); });
    pr->ticker = std::make_unique<Ticker>();
    pr->ticker->server = this;
    pr->ticker->index = i;
    pr->reactor->post([this, i] { arm_tick(i); });
  }
}

void Server::arm_tick(size_t index) noexcept {
  PerReactor& pr = reactors_[index];
  pr.ticker->ts = timespec_of(pr.memory_waiters.empty() ? std::chrono::nanoseconds(std::chrono::seconds(1))
                                                        : std::chrono::nanoseconds(RequestMemory::kRetryInterval));
  pr.reactor->arm_timer(pr.ticker.get(), &pr.ticker->ts);
}

void Server::tick(size_t index) noexcept {
  PerReactor& pr = reactors_[index];
  const auto now = pr.reactor->now();
  if (!pr.memory_waiters.empty()) {
    std::vector<Session*> waiting(pr.memory_waiters.begin(), pr.memory_waiters.end());
    pr.memory_waiters.clear();
    for (Session* s : waiting) {
      if (!pr.sessions.count(s)) continue;
      s->retry_memory();
      if (pr.sessions.count(s) && s->waiting_for_memory()) pr.memory_waiters.insert(s);
    }
  }
  if (now - pr.last_sweep >= std::chrono::seconds(1)) {
    pr.last_sweep = now;
    std::vector<std::pair<Session*, Expiry>> expired;
    for (Session* s : pr.sessions) {
      if (const Expiry why = s->expired(now, limits_.config); why != Expiry::kNone) {
        expired.emplace_back(s, why);
      } else {
        s->release_idle_input(now);
      }
    }
    LimitCounters& counters = limits_.counters;
    for (const auto& [s, why] : expired) {
      if (!pr.sessions.count(s)) continue;
      std::chrono::seconds limit{};
      switch (why) {
        case Expiry::kHandshake:
          counters.handshake_timeouts.fetch_add(1, std::memory_order_relaxed);
          limit = limits_.config.handshake_timeout;
          break;
        case Expiry::kIdle:
          counters.idle_timeouts.fetch_add(1, std::memory_order_relaxed);
          limit = limits_.config.idle_timeout;
          break;
        case Expiry::kSlowReader:
          counters.slow_readers_closed.fetch_add(1, std::memory_order_relaxed);
          limit = limits_.config.send_timeout;
          break;
        case Expiry::kNone: break;
      }
      timeout_log.log("connection " + std::to_string(s->id()) + " from " + s->peer().address + " closed: " +
                      expiry_reason(why) + " (" + std::to_string(limit.count()) + " s)");
      s->expire(why);
    }
  }
  arm_tick(index);
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

std::string Server::admit(const PeerIdentity& peer, std::string& key) {
  const LimitsConfig& config = limits_.config;
  LimitCounters& counters = limits_.counters;
  const int admitted = live_sessions_.load() - refusing_.load();
  if (config.max_connections && admitted >= static_cast<int64_t>(config.max_connections)) {
    counters.refused_max_connections.fetch_add(1, std::memory_order_relaxed);
    return "the server has reached its limit of " + std::to_string(config.max_connections) +
           " connections (iobandd --max-connections); try again later";
  }
  const std::string identity = client_key(peer.unix_socket, peer.uid, peer.address);
  std::lock_guard lock(clients_mutex_);
  uint32_t& count = clients_[identity];
  if (config.max_connections_per_client && count >= config.max_connections_per_client) {
    if (count == 0) clients_.erase(identity);
    counters.refused_per_client.fetch_add(1, std::memory_order_relaxed);
    return identity + " has reached its limit of " + std::to_string(config.max_connections_per_client) +
           " connections (iobandd --max-connections-per-client); try again later";
  }
  ++count;
  key = identity;
  return {};
}

void Server::accepted(Listener& listener, int fd) noexcept {
  if (shutting_down_) {
    close(fd);
    return;
  }
  PeerIdentity peer = identify(fd, listener.unix_socket);
  std::string key;
  std::string refusal = admit(peer, key);
  if (!refusal.empty()) {
    refusal_log.log("refused a connection from " + peer.address + ": " + refusal);
    if (refusing_.load() >= kMaxRefusing) {
      close(fd);
      return;
    }
  }
  auto* session = new (std::nothrow) Session(host_for(0), fd, std::move(peer), next_id_++);
  if (!session) {
    close(fd);
    if (!key.empty()) {
      std::lock_guard lock(clients_mutex_);
      if (--clients_[key] == 0) clients_.erase(key);
    }
    return;
  }
  session->client_key = std::move(key);
  if (!refusal.empty()) {
    session->refuse(std::move(refusal));
    refusing_.fetch_add(1);
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
  host.limits = &limits_;
  host.wait_memory = [this, index](Session* s) { reactors_[index].memory_waiters.insert(s); };
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
  reactors_[index].memory_waiters.erase(session);
  if (!session->client_key.empty()) {
    std::lock_guard lock(clients_mutex_);
    if (--clients_[session->client_key] == 0) clients_.erase(session->client_key);
  }
  if (session->refusing()) refusing_.fetch_sub(1);
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
