#include "nbd_driver.h"

#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <csignal>
#include <memory>

#include "fuzz_check.h"
#include "io/backend.h"
#include "io/reactor.h"
#include "nbd/export.h"
#include "nbd/protocol.h"
#include "nbd/scheduler.h"
#include "nbd/session.h"
#include "qos/device_group.h"

namespace ioband::fuzz {
namespace {

// The client's end: one poll at a time on the ring, sending the input as
// room allows, then shutdown(SHUT_WR), and reading everything until EOF.
struct Client final : io::Completion {
  io::Reactor* reactor = nullptr;
  int fd = -1;
  const uint8_t* data = nullptr;
  size_t size = 0;
  size_t sent = 0;
  bool write_closed = false;
  bool eof = false;
  bool session_closed = false;
  std::string output;

  void arm() noexcept {
    io_uring_sqe* sqe = reactor->prepare(this);
    io_uring_prep_poll_add(sqe, fd, POLLIN | (write_closed ? 0 : POLLOUT));
  }
  void pump() noexcept {
    while (sent < size) {
      const ssize_t n = ::send(fd, data + sent, size - sent, MSG_NOSIGNAL | MSG_DONTWAIT);
      if (n <= 0) break;  // full (or the server hung up: its reading is over)
      sent += static_cast<size_t>(n);
    }
    if (!write_closed && sent == size) {
      ::shutdown(fd, SHUT_WR);
      write_closed = true;
    }
    char buffer[65536];
    for (;;) {
      const ssize_t n = ::recv(fd, buffer, sizeof buffer, MSG_DONTWAIT);
      if (n > 0) {
        output.append(buffer, static_cast<size_t>(n));
        continue;
      }
      if (n == 0 || (errno != EAGAIN && errno != EINTR)) {
        eof = true;
        // The server stopped reading: what it did not read never will be.
        write_closed = true;
      }
      break;
    }
  }
  void on_complete(int32_t, uint32_t) noexcept override {
    pump();
    if (!eof) {
      arm();
    } else if (session_closed) {
      reactor->stop();
    }
  }
};

std::string be32(uint32_t v) {
  std::string s(4, '\0');
  nbd::store32(reinterpret_cast<uint8_t*>(s.data()), v);
  return s;
}

}  // namespace

ServerShape shape_from_byte(uint8_t byte) {
  ServerShape shape;
  shape.read_only = byte & 1;
  shape.faults = byte & 2;
  shape.scheduled = byte & 4;
  shape.two_exports = byte & 8;
  shape.tcp_peer = byte & 16;
  return shape;
}

SessionRun run_session(const ServerShape& shape, const uint8_t* input, size_t size) {
  static const bool once = [] {
    std::signal(SIGPIPE, SIG_IGN);  // sendfile() has no MSG_NOSIGNAL; iobandd blocks SIGPIPE too
    return true;
  }();
  (void)once;

  int fds[2];
  FUZZ_CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) == 0, "socketpair");
  Client client;
  client.fd = fds[1];
  client.data = input;
  client.size = size;

  qos::DeviceGroup group;
  if (shape.scheduled) FUZZ_CHECK(group.add_device(0).ok(), "add_device");
  nbd::ExportRegistry exports;
  {
    io::Reactor reactor(64);
    client.reactor = &reactor;
    nbd::DeviceGroupDriver driver(group, reactor);
    auto make_export = [&](const std::string& name) {
      std::string error;
      auto backend = io::open_memory_backend(kExportSize, error);
      FUZZ_CHECK(backend, error);
      if (shape.faults) {
        io::FaultOptions faults;
        faults.error_number = EIO;
        faults.rate = 0.5;
        backend = io::wrap_fault_backend(std::move(backend), faults);
      }
      auto e = std::make_shared<nbd::Export>();
      e->name = name;
      e->description = "fuzzing export";
      e->backend = std::move(backend);
      e->read_only = shape.read_only;
      e->reactor = &reactor;
      if (shape.scheduled) {
        e->scheduling.driver = &driver;
        e->scheduling.device = 0;
      }
      FUZZ_CHECK(exports.add(std::move(e)), "export added");
    };
    make_export(kExportName);
    if (shape.two_exports) make_export("other");

    bool closed = false;
    nbd::SessionHost host;
    host.reactor = &reactor;
    host.exports = &exports;
    host.on_closed = [&closed, &client](nbd::Session* session) {
      // The session owns this function: take what it needs before deleting it.
      bool* closed_flag = &closed;
      Client* peer = &client;
      delete session;
      *closed_flag = true;
      peer->session_closed = true;
      if (peer->eof) peer->reactor->stop();
    };
    host.migrate = [](nbd::Session*, io::Reactor*) { FUZZ_CHECK(false, "one reactor: nothing migrates"); };
    // The server's limits with their defaults (a 1 MiB export never reaches
    // the memory cap, so nothing waits for memory).
    nbd::Limits limits;
    limits.memory.set_cap(limits.config.max_request_memory);
    host.limits = &limits;
    host.wait_memory = [](nbd::Session*) { FUZZ_CHECK(false, "a 1 MiB export never waits for request memory"); };
    nbd::PeerIdentity peer;
    peer.unix_socket = !shape.tcp_peer;
    peer.address = shape.tcp_peer ? "127.0.0.1:10809" : "unix";
    auto* session = new nbd::Session(host, fds[0], peer, 1);
    session->start();
    client.arm();
    if (!closed) reactor.run();
    FUZZ_CHECK(closed, "the session closed once its client had sent everything");
    // Every buffer counted in the request memory (staging included) was given back.
    FUZZ_CHECK(limits.memory.used() == 0 && limits.memory.staging() == 0,
               "the closed session gave back all its request memory");
    ::close(fds[1]);
    return SessionRun{std::move(client.output), closed};
  }
}

std::string client_flags(uint32_t flags) { return be32(flags); }

std::string option(uint32_t which, const std::string& data) {
  std::string s(8, '\0');
  nbd::store64(reinterpret_cast<uint8_t*>(s.data()), nbd::kOptionMagic);
  return s + be32(which) + be32(static_cast<uint32_t>(data.size())) + data;
}

std::string go_option(uint32_t which, const std::string& name, const std::string& info_requests) {
  std::string requests(2, '\0');
  nbd::store16(reinterpret_cast<uint8_t*>(requests.data()), static_cast<uint16_t>(info_requests.size() / 2));
  return option(which, be32(static_cast<uint32_t>(name.size())) + name + requests + info_requests);
}

std::string meta_context_option(uint32_t which, const std::string& name, const std::vector<std::string>& queries) {
  std::string data = be32(static_cast<uint32_t>(name.size())) + name + be32(static_cast<uint32_t>(queries.size()));
  for (const auto& q : queries) data += be32(static_cast<uint32_t>(q.size())) + q;
  return option(which, data);
}

}  // namespace ioband::fuzz
