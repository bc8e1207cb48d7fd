#pragma once
// The NBD server: listening sockets, and the sessions of every reactor.
// Connections are accepted and negotiated on reactor 0 and then live on the
// reactor that owns their export.

#include <atomic>
#include <memory>
#include <string>
#include <unordered_set>
#include <vector>

#include "io/reactor.h"
#include "nbd/export.h"
#include "nbd/session.h"

namespace ioband::nbd {

class Server {
 public:
  Server(std::vector<io::Reactor*> reactors, ExportRegistry& exports);
  ~Server();

  // Both return an empty string or a sentence saying what failed.
  std::string listen_unix(const std::string& path);
  std::string listen_tcp(const std::string& host_port);

  // Starts accepting; call from reactor 0's thread or before it runs.
  void start();
  // Graceful stop: no new connections; every session finishes its requests
  // and closes; then each reactor stops. Call on reactor 0.
  void shutdown();
  // Ends every session of export name at once (remove --force). Thread-safe.
  void disconnect_export(const std::string& name);

  int sessions() const noexcept { return live_sessions_.load(); }
  // TLS for every connection from now on (nullptr: off); tls outlives the server.
  void set_tls(const net::TlsContext* tls) noexcept { tls_ = tls; }

 private:
  struct Listener;
  struct PerReactor {
    io::Reactor* reactor;
    std::unordered_set<Session*> sessions;  // touched only on reactor's thread
  };

  void accepted(Listener& listener, int fd) noexcept;
  SessionHost host_for(size_t index);
  void adopt(size_t index, Session* session);
  void closed(size_t index, Session* session);
  size_t index_of(io::Reactor* reactor) const;

  std::vector<PerReactor> reactors_;
  ExportRegistry& exports_;
  std::vector<std::unique_ptr<Listener>> listeners_;
  std::atomic<int> live_sessions_{0};
  uint64_t next_id_ = 1;
  std::atomic<bool> shutting_down_{false};
  const net::TlsContext* tls_ = nullptr;
};

}  // namespace ioband::nbd
