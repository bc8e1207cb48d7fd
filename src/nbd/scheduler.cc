#include "nbd/scheduler.h"

#include <cerrno>

#include "nbd/session.h"

namespace ioband::nbd {

DeviceGroupDriver::~DeviceGroupDriver() = default;

// Every call uses the reactor's time of the current batch: the scheduler sees
// time that never runs backwards, and a request that can go at once is
// dispatched at the instant it arrived, so it does not count as delayed.
void DeviceGroupDriver::enqueue(NbdRequest& request) noexcept {
  const qos::TimePoint now = reactor_.now();
  group_.enqueue(&request, now);
  pump(now);
}

void DeviceGroupDriver::complete(NbdRequest& request, bool failed) noexcept {
  const qos::TimePoint now = reactor_.now();
  // A backend that did more than the request (qcow2: metadata, copy-on-write)
  // says what; the group's share is charged for it.
  if (const io::IoOp::DeviceIo& io = request.storage_io; io.set) {
    group_.charge_device_io(&request, {io.reads, io.writes, io.syncs, io.read_bytes, io.write_bytes}, now);
  }
  group_.complete(&request, now, failed);
  pump(now);
}

void DeviceGroupDriver::pump() noexcept { pump(reactor_.now()); }

void DeviceGroupDriver::pump(qos::TimePoint now) noexcept {
  // A storage op may finish inside submit (an early error): its complete()
  // lands here again; let the outer loop pick the change up instead of
  // recursing.
  if (retired_.load(std::memory_order_acquire)) return;
  if (pumping_) {
    pump_again_ = true;
    return;
  }
  pumping_ = true;
  do {
    pump_again_ = false;
    for (;;) {
      const qos::Decision d = group_.next(now);
      if (d.kind == qos::Decision::Kind::dispatch) {
        auto* request = static_cast<NbdRequest*>(d.request);
        request->session->submit_io(*request);
        continue;
      }
      if (d.kind == qos::Decision::Kind::wait && d.until != qos::TimePoint::max()) arm_timer(d.until);
      break;
    }

  } while (pump_again_);
  pumping_ = false;
}

void DeviceGroupDriver::arm_timer(qos::TimePoint at) noexcept {
  if (timer_armed_ && timer_at_ <= at) return;  // an earlier wake-up is set; it will ask again
  const auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(at.time_since_epoch()).count();
  timer_spec_.tv_sec = ns / 1000000000;
  timer_spec_.tv_nsec = ns % 1000000000;
  timer_at_ = at;
  // steady_clock is CLOCK_MONOTONIC, the clock of ring timeouts.
  if (timer_armed_) {
    io_uring_prep_timeout_update(reactor_.prepare(nullptr), &timer_spec_, reinterpret_cast<__u64>(this),
                                 IORING_TIMEOUT_ABS);
    return;
  }
  io_uring_prep_timeout(reactor_.prepare(this), &timer_spec_, 0, IORING_TIMEOUT_ABS);
  timer_armed_ = true;
}

void DeviceGroupDriver::on_complete(int32_t result, uint32_t) noexcept {
  if (result == -ECANCELED) return;  // replaced by an update; the timer lives on
  timer_armed_ = false;
  pump();
}

}  // namespace ioband::nbd
