#pragma once
// The NBD server: listening sockets, and the sessions of every reactor.
// Connections are accepted and negotiated on reactor 0 and then live on the
// reactor that owns their export.

#include <atomic>
#include <chrono>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "io/reactor.h"
#include "nbd/export.h"
#include "nbd/limits.h"
#include "nbd/session.h"

namespace ioband::nbd {

class Server {
 public:
  Server(std::vector<io::Reactor*> reactors, ExportRegistry& exports);
  ~Server();

  // Both return an empty string or a sentence saying what failed.
  std::string listen_unix(const std::string& path);
  // "HOST:PORT", "[IPV6]:PORT"; ":PORT" or "PORT": loopback only.
  std::string listen_tcp(const std::string& host_port);
  // The TCP addresses listened on ("127.0.0.1:10809", "[::1]:10809");
  // exposed_only: those other hosts can reach (not loopback).
  std::vector<std::string> tcp_listeners(bool exposed_only = false) const;

  // Starts accepting; call from reactor 0's thread or before it runs.
  void start();
  // Graceful stop: no new connections; every session finishes its requests
  // and closes; then each reactor stops. Call on reactor 0.
  void shutdown();
  // After shutdown(): ends every session still open at once, dropping
  // replies their clients do not read. Thread-safe.
  void abort_all();
  // Ends every session of export name at once (remove --force). Thread-safe.
  void disconnect_export(const std::string& name);

  int sessions() const noexcept { return live_sessions_.load(); }
  // TLS for every connection from now on (nullptr: off); tls outlives the server.
  void set_tls(const net::TlsContext* tls) noexcept { tls_ = tls; }

  // Before start(). The counters and memory use may be read at any time.
  void set_limits(const LimitsConfig& config);
  const Limits& limits() const noexcept { return limits_; }

  // Connections refused at a cap still get a handshake that says why; past
  // this many at once they are closed without a word.
  static constexpr int kMaxRefusing = 64;

 private:
  struct Listener;
  struct Ticker;
  struct PerReactor {
    io::Reactor* reactor = nullptr;
    std::unordered_set<Session*> sessions;  // touched only on reactor's thread
    std::unordered_set<Session*> memory_waiters;  // stopped reading for request memory
    std::unique_ptr<Ticker> ticker;
    std::chrono::steady_clock::time_point last_sweep{};
  };

  void accepted(Listener& listener, int fd) noexcept;
  SessionHost host_for(size_t index);
  void adopt(size_t index, Session* session);
  void closed(size_t index, Session* session);
  size_t index_of(io::Reactor* reactor) const;
  // Once a second per reactor (every RequestMemory::kRetryInterval while
  // sessions wait for memory): timeouts and memory waiters. See limits.h.
  void tick(size_t index) noexcept;
  void arm_tick(size_t index) noexcept;
  // The refusal message when a cap is reached, or empty (then counted).
  std::string admit(const PeerIdentity& peer, std::string& key);

  std::vector<PerReactor> reactors_;
  ExportRegistry& exports_;
  std::vector<std::unique_ptr<Listener>> listeners_;
  std::atomic<int> live_sessions_{0};
  uint64_t next_id_ = 1;
  std::atomic<bool> shutting_down_{false};
  Limits limits_;
  std::atomic<int> refusing_{0};
  std::mutex clients_mutex_;
  std::unordered_map<std::string, uint32_t> clients_;  // guarded by clients_mutex_
  const net::TlsContext* tls_ = nullptr;
};

}  // namespace ioband::nbd
