#include "net/transport.h"

#include <poll.h>
#include <sys/sendfile.h>
#include <sys/socket.h>

#include <cerrno>

namespace ioband::net {

namespace {

class PlainTransport final : public Transport {
 public:
  explicit PlainTransport(int fd) : fd_(fd) {}

  void recv(io::Reactor& reactor, io::Completion* owner, uint8_t* buffer, uint32_t length) noexcept override {
    io_uring_prep_recv(reactor.prepare(owner), fd_, buffer, length, 0);
    owner_ = owner;
  }

  void cancel(io::Reactor& reactor) noexcept override {
    if (owner_) reactor.cancel(owner_);
  }

  ssize_t send(const iovec* iov, int count) noexcept override {
    msghdr msg{};
    msg.msg_iov = const_cast<iovec*>(iov);
    msg.msg_iovlen = static_cast<size_t>(count);
    const ssize_t n = ::sendmsg(fd_, &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
    return n >= 0 ? n : -errno;
  }

  ssize_t send_file(int fd, uint64_t offset, size_t length) noexcept override {
    off_t at = static_cast<off_t>(offset);
    const ssize_t n = ::sendfile(fd_, fd, &at, length);
    return n >= 0 ? n : -errno;
  }

  int flush() noexcept override { return 0; }

  void wait_writable(io::Reactor& reactor, io::Completion* owner) noexcept override {
    io_uring_prep_poll_add(reactor.prepare(owner), fd_, POLLOUT);
  }

  bool zero_copy_files() const noexcept override { return true; }

 private:
  int fd_;
  io::Completion* owner_ = nullptr;  // of the last recv, for cancel()
};

}  // namespace

std::unique_ptr<Transport> plain_transport(int fd) { return std::make_unique<PlainTransport>(fd); }

}  // namespace ioband::net
