#include "io/reactor.h"

#include <sys/eventfd.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <system_error>

namespace ioband::io {

class Reactor::WakeReader final : public Completion {
 public:
  explicit WakeReader(Reactor* reactor) : reactor_(reactor) {}
  void on_complete(int32_t, uint32_t) noexcept override {
    reactor_->drain_posted();
    reactor_->arm_wake();
  }

 private:
  Reactor* reactor_;
};

namespace {

// Newer setup flags cut the cost of completions on a single-threaded ring;
// older kernels reject them with -EINVAL, so fall back step by step. A
// single-issuer ring belongs to the thread that enables it, so it starts
// disabled and run() enables it on the reactor's own thread.
int init_ring(io_uring* ring, unsigned entries, bool& disabled) {
  const unsigned attempts[] = {
      IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN | IORING_SETUP_SUBMIT_ALL | IORING_SETUP_R_DISABLED,
      IORING_SETUP_COOP_TASKRUN | IORING_SETUP_SUBMIT_ALL,
      0,
  };
  int rc = -EINVAL;
  for (unsigned flags : attempts) {
    io_uring_params params{};
    params.flags = flags;
    rc = io_uring_queue_init_params(entries, ring, &params);
    disabled = flags & IORING_SETUP_R_DISABLED;
    if (rc != -EINVAL) return rc;
  }
  return rc;
}

}  // namespace

Reactor::Reactor(unsigned entries, int index) : index_(index) {
  int rc = init_ring(&ring_, entries, disabled_);
  if (rc < 0) throw std::system_error(-rc, std::generic_category(), "io_uring_queue_init");
  wake_fd_ = eventfd(0, EFD_CLOEXEC);
  if (wake_fd_ < 0) {
    io_uring_queue_exit(&ring_);
    throw std::system_error(errno, std::generic_category(), "eventfd");
  }
  wake_reader_ = new WakeReader(this);
  arm_wake();
}

Reactor::~Reactor() {
  io_uring_queue_exit(&ring_);
  close(wake_fd_);
  delete wake_reader_;
}

io_uring_sqe* Reactor::prepare(Completion* owner) noexcept {
  io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
  while (sqe == nullptr) {
    // Full submission queue: hand what we have to the kernel and retry.
    io_uring_submit(&ring_);
    sqe = io_uring_get_sqe(&ring_);
  }
  io_uring_sqe_set_data(sqe, owner);
  return sqe;
}

void Reactor::arm_wake() noexcept {
  io_uring_sqe* sqe = prepare(wake_reader_);
  io_uring_prep_read(sqe, wake_fd_, &wake_value_, sizeof wake_value_, 0);
}

void Reactor::arm_timer(Completion* owner, __kernel_timespec* ts) noexcept {
  io_uring_sqe* sqe = prepare(owner);
  io_uring_prep_timeout(sqe, ts, 0, 0);
}

void Reactor::cancel(Completion* owner) noexcept {
  io_uring_sqe* sqe = prepare(nullptr);
  io_uring_prep_cancel(sqe, owner, 0);
}

void Reactor::post(std::function<void()> fn) {
  {
    std::lock_guard lock(posted_mutex_);
    posted_.push_back(std::move(fn));
  }
  uint64_t one = 1;
  [[maybe_unused]] ssize_t n = write(wake_fd_, &one, sizeof one);
}

void Reactor::stop() {
  post([this] { stopping_ = true; });
}

void Reactor::drain_posted() {
  std::vector<std::function<void()>> batch;
  {
    std::lock_guard lock(posted_mutex_);
    batch.swap(posted_);
  }
  for (auto& fn : batch) fn();
}

// Two vectors swapped back and forth keep their capacity: no allocation per
// iteration. What fn adds to queue runs in the same call.
void Reactor::run_all(std::vector<std::function<void()>>& queue) {
  while (!queue.empty()) {
    running_.swap(queue);
    for (auto& fn : running_) fn();
    running_.clear();
  }
}

// Waiting for the next completion: submit and look; then poll the ring for
// up to poll_ns_; then sleep. Falling asleep and being woken costs tens of
// microseconds in a virtual machine (the idle vCPU halts; the wake-up is an
// inter-processor interrupt through the hypervisor), and a client with one
// request in flight pays it on both sides of every request. poll_ns_ adapts
// as QEMU's event loop does (util/aio-posix.c): it stays while polls find
// the completion, grows while sleeps end within kPollMaxNs and shrinks when
// they are longer. Unlike there, polling also starts when a probe finds the
// completion: without polling a quick client's round trip here is longer
// than kPollMaxNs (both sides sleep), so growth alone would never start it.
// While a connection holds replies for its client (Reactor::hold_begin)
// the next event is that client reading its backlog: no polling then.
// While the storage has a deep queue (kDeepStorage operations or more on
// the ring) the reactor polls up to storage_poll_ns_ (256 us unless
// iobandd --poll-max-us says otherwise): a disk behind a hypervisor
// completes such a queue in bursts hundreds of microseconds apart, and a
// reactor asleep then answers the burst only once its vCPU has been woken,
// which delays every reply of the burst and with them the client's next
// requests, so the device runs with a shallower queue. On this machine's
// virtio disk, 4k random reads at QD32 went from 0.65-0.73x of fio's own
// io_uring engine on the file to 0.80-0.90x; the price is CPU, about 8 us
// more per request there (15-17 against 7; qemu-nbd uses 15-17 without
// polling). A shallow queue (QD1 on a disk) does not poll for the storage.
// So a daemon whose waits are long (idle, a disk with a shallow queue,
// replies held for a deep client) polls once per kProbeEvery sleeps, one
// answering a quick client back and forth polls at most kPollMaxNs before
// each sleep, and one with a deep queue on the storage up to
// storage_poll_ns_.
int Reactor::wait() {
  const auto start = std::chrono::steady_clock::now();
  int rc = io_uring_submit_and_get_events(&ring_);
  if (io_uring_cq_ready(&ring_) != 0 || rc < 0) return rc;
  int64_t budget = 0;
  bool probe = false;
  if (holding_) {
    // the client's reading is next: sleep
  } else if (storage_ >= kDeepStorage) {
    budget = storage_poll_ns_;
  } else {
    budget = poll_ns_;  // stays 0, as does a probe's, with polling off
    if (budget == 0 && ++sleeps_since_probe_ >= kProbeEvery) {
      sleeps_since_probe_ = 0;
      budget = poll_max_ns_;
      probe = true;
    }
  }
  if (budget > 0) {
    const auto until = start + std::chrono::nanoseconds(budget);
    do {
      rc = io_uring_get_events(&ring_);
      if (io_uring_cq_ready(&ring_) != 0 || rc < 0) {
        if (probe) poll_ns_ = budget;
        return rc;
      }
    } while (std::chrono::steady_clock::now() < until);
  }
  rc = io_uring_submit_and_wait(&ring_, 1);
  const int64_t waited =
      std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - start).count();
  if (waited > poll_max_ns_) {
    poll_ns_ = poll_ns_ / 2 < kPollStartNs ? 0 : poll_ns_ / 2;
  } else if (poll_ns_ < poll_max_ns_) {
    poll_ns_ = poll_ns_ == 0 ? std::min(kPollStartNs, poll_max_ns_) : std::min(poll_ns_ * 2, poll_max_ns_);
  }
  return rc;
}

void Reactor::run() {
  if (disabled_) {
    // Debian's liburing 2.3 declares io_uring_enable_rings but does not export it.
    if (syscall(__NR_io_uring_register, ring_.ring_fd, IORING_REGISTER_ENABLE_RINGS, nullptr, 0) < 0) {
      throw std::system_error(errno, std::generic_category(), "IORING_REGISTER_ENABLE_RINGS");
    }
    disabled_ = false;
  }
  unsigned busy_turns = 0;
  while (!(stopping_ && (!idle_check_ || idle_check_()))) {
    // With work for the idle point pending, only look for what is there.
    int rc = idle_deferred_.empty() ? wait() : io_uring_submit_and_get_events(&ring_);
    if (rc < 0 && rc != -EINTR && rc != -EAGAIN && rc != -EBUSY) {
      throw std::system_error(-rc, std::generic_category(), "io_uring_submit_and_wait");
    }
    ++iterations_;
    now_ = std::chrono::steady_clock::now();
    io_uring_cqe* cqe;
    unsigned reaped = 0;
    while (io_uring_peek_cqe(&ring_, &cqe) == 0) {
      auto* owner = static_cast<Completion*>(io_uring_cqe_get_data(cqe));
      int32_t res = cqe->res;
      uint32_t flags = cqe->flags;
      // Mark it seen before the callback, which may submit many operations.
      io_uring_cqe_seen(&ring_, cqe);
      ++reaped;
      if (owner != nullptr) owner->on_complete(res, flags);
    }
    run_all(deferred_);
    const bool more = expect_more_;
    expect_more_ = false;
    if (!idle_deferred_.empty() && (!more || reaped == 0 || ++busy_turns >= kMaxBusyTurns)) {
      busy_turns = 0;
      run_all(idle_deferred_);
      run_all(deferred_);
    }
  }
  io_uring_submit(&ring_);
}

}  // namespace ioband::io
