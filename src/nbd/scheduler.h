#pragma once
// Drives one qos::DeviceGroup on its reactor: requests go in with enqueue(),
// come out of the scheduler's next() to the storage, and report back with
// complete(). When the scheduler says "nothing before t" a ring timer is
// armed for t. The scheduler itself stays pure; this is the only place where
// its decisions meet the clock and the ring (STYLE.md point 1).

#include <atomic>
#include <chrono>

#include "io/reactor.h"
#include "qos/device_group.h"

namespace ioband::nbd {

struct NbdRequest;

class DeviceGroupDriver final : public io::Completion {
 public:
  DeviceGroupDriver(qos::DeviceGroup& group, io::Reactor& reactor) : group_(group), reactor_(reactor) {}
  ~DeviceGroupDriver();

  void enqueue(NbdRequest& request) noexcept;
  // failed: the storage answered with an error (counted per operation).
  void complete(NbdRequest& request, bool failed = false) noexcept;
  bool retired() const noexcept { return retired_.load(std::memory_order_acquire); }
  // Dispatches what the scheduler releases now; call after any change of
  // the device group's settings too.
  void pump() noexcept;
  void pump(qos::TimePoint now) noexcept;

  // The device group is going away: from now on the driver does nothing
  // (a timer of it may still fire). Thread-safe.
  void retire() noexcept { retired_.store(true, std::memory_order_release); }

  qos::DeviceGroup& group() noexcept { return group_; }
  io::Reactor& reactor() noexcept { return reactor_; }

  void on_complete(int32_t result, uint32_t flags) noexcept override;  // the timer

 private:
  void arm_timer(qos::TimePoint at) noexcept;

  qos::DeviceGroup& group_;
  io::Reactor& reactor_;
  std::atomic<bool> retired_{false};
  bool pumping_ = false;
  bool pump_again_ = false;
  bool timer_armed_ = false;
  qos::TimePoint timer_at_{};
  __kernel_timespec timer_spec_{};
};

}  // namespace ioband::nbd
