#pragma once
// The byte stream under an NBD session: a connection that receives and
// sends bytes, plain or TLS. nbd::Session reads and writes only through
// this interface, so nothing above it knows whether TLS is on (nbdkit keeps
// the same split with its conn->recv/send).
//
// The calls mirror how the session drives a plain socket, which stays
// zero-copy: a receive is started and completes later on the reactor (an
// io_uring recv straight into the caller's buffer); a send is a direct
// non-blocking call that takes what it can, and when it can take nothing a
// ring poll waits for room; a file's data goes out with sendfile(). The TLS
// transport (tls.h) keeps this contract with buffers of its own.

#include <sys/types.h>
#include <sys/uio.h>

#include <cstdint>
#include <memory>

#include "io/reactor.h"

namespace ioband::net {

class Transport {
 public:
  virtual ~Transport() = default;

  // Receives up to length bytes into buffer; owner->on_complete(n) later,
  // on the reactor's thread: n > 0 bytes arrived, 0 the peer closed the
  // stream, or -errno. One receive at a time; buffer lives until then.
  virtual void recv(io::Reactor& reactor, io::Completion* owner, uint8_t* buffer, uint32_t length) noexcept = 0;
  // Ends what is pending at once: its completion follows with -ECANCELED
  // (or the result it already had).
  virtual void cancel(io::Reactor& reactor) noexcept = 0;

  // Takes bytes without waiting: how many (> 0), -EAGAIN when it can take
  // none now (wait_writable, then call again), or -errno.
  virtual ssize_t send(const iovec* iov, int count) noexcept = 0;
  // The same for length bytes of file fd from offset.
  virtual ssize_t send_file(int fd, uint64_t offset, size_t length) noexcept = 0;
  // Bytes taken but not yet handed to the kernel go now: 0 when none is
  // left, -EAGAIN (wait_writable, then call again), or -errno.
  virtual int flush() noexcept = 0;
  // owner->on_complete() when a send may take bytes again (or the socket
  // has failed: the next send says how).
  virtual void wait_writable(io::Reactor& reactor, io::Completion* owner) noexcept = 0;

  // send_file() sends from the page cache without reading the data into
  // memory; when false a reader should fill buffers instead.
  virtual bool zero_copy_files() const noexcept = 0;
};

// The socket itself. fd stays the caller's to close.
std::unique_ptr<Transport> plain_transport(int fd);

}  // namespace ioband::net
